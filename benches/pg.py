#!/usr/bin/env python3
"""percore on PostgreSQL against its peers: the TechEmpower database tests and the document GET/PUT.

Usage (from the repository root; run it alone on the machine):

    flock /tmp/percore-bench.lock python3 benches/pg.py [--rounds 3] [--duration 10]
        [--targets percore,axum-pg,xitca-pg] [--tests db,queries,fortunes,updates,doc-get,doc-put]
        [--connections 64] [--server-cpu 0] [--client-cpu 1] [--out benches/results/pg.json]
        [--rate R]

What it does:
  * (re)creates the database `percore_bench` on 127.0.0.1:5432 (user postgres, trust),
    lets percore create and seed its schema (world, fortune, percore_documents), and
    seeds 100,000 documents `bench/kNNNNNN` with SQL;
  * pins every PostgreSQL process of the machine (the postmaster and its backends;
    new backends inherit it) to --client-cpu, beside wrk, and the server under test
    to --server-cpu; restores PostgreSQL to every CPU at the end;
  * for each round, each test, each target in turn (rounds interleaved, starting
    target rotating): start the server, wait for /db, warm up 2 s, then
    `wrk -t1 -c64 -dDURs --latency` (the document tests with benches/docs_get.lua and
    docs_put.lua over the seeded keys), sampling before and after: the server's
    utime+stime (its process tree), every postgres process's utime+stime, and
    /proc/stat's steal; then stop it;
  * prints, per test, medians over the rounds: requests/s, p99, the server's CPU µs
    per request, PostgreSQL's CPU µs per request, wrk's (it shares PostgreSQL's CPU),
    the writes (data segments) into PostgreSQL per request, the server's sleeps per
    request (on loopback, whoever sends to it next pays for its wake-up), and
    percore's ratio of requests per server-CPU-second against each peer with
    PostgreSQL's and wrk's CPU per request beside, each with its per-round range;
    writes every run to --out.

With --rate R, every target gets the same load instead of all it can take: `percore
bench` (target/release/percore) in open loop at R requests/s, pinned where wrk would be,
for the tests without a script (the document tests sit out); --out defaults to
benches/results/pg-rate-R.json. At saturation a server that needs less CPU per request
sleeps more, and on loopback whoever sends to it pays for each wake-up (PostgreSQL for
its answers); at one rate every target serves the same requests.

Targets:
  percore    target/release/percore serve --cores 1 --store postgres, one shard
             (the document GET runs with --cache-bytes 0: every read goes to
             PostgreSQL, the "miss" case; the TechEmpower reads never cache)
  axum-pg    benches/peers/axum-pg: axum + tokio-postgres + deadpool (peer a)
  xitca-pg   benches/peers/xitca-pg: the xitca-web TechEmpower entry's approach on the
             crates.io releases (peer b; its header says what differs from the entry);
             it has no document routes and sits out doc-get and doc-put
A target whose binary is missing is reported and skipped.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402  (sampling, wrk parsing, server stop: one copy of each)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DB = "percore_bench"
URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
DOCS = 100_000
TESTS = {
    "db": ("/db", None),
    "queries": ("/queries?queries=20", None),
    "fortunes": ("/fortunes", None),
    "updates": ("/updates?queries=20", None),
    "doc-get": ("/", "docs_get.lua"),
    "doc-put": ("/", "docs_put.lua"),
}
DOC_TESTS = {"doc-get", "doc-put"}


def psql(sql, db=DB):
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-v", "ON_ERROR_STOP=1",
                    "-qtAc", sql], check=True, capture_output=True, text=True)


def binary(target):
    if target == "percore":
        return os.path.join(ROOT, "target", "release", "percore")
    return os.path.join(ROOT, "benches", "peers", "target", "release", target)


def server_argv(target, port, cpu, test):
    if target == "percore":
        argv = [binary(target), "serve", "--cores", "1", "--cpus", str(cpu),
                "--listen", f"127.0.0.1:{port}", "--store", "postgres", "--shard-url", URL]
        if test == "doc-get":
            argv += ["--cache-bytes", "0"]
        return ["taskset", "-c", str(cpu)] + argv
    return ["taskset", "-c", str(cpu), binary(target), "--listen", f"127.0.0.1:{port}",
            "--database-url", URL]


def postgres_pids():
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def pin_postgres(cpus):
    for pid in postgres_pids():
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(pid)], capture_output=True)


def sleeps(pid):
    """Voluntary context switches of every thread of `pid`: how often the server slept."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith("voluntary_ctxt_switches"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def postgres_segments():
    """TCP segments PostgreSQL's connections on port 5432 have received: all of them
    (acknowledgements too), and those carrying data, which is how many writes the
    server's queries arrive in (on loopback a write of up to 64 KiB is one segment)."""
    out = subprocess.run(["ss", "-tin", "state", "established", "( sport = :5432 )"],
                         capture_output=True, text=True).stdout
    total = {}
    for token in out.split():
        key, _, value = token.partition(":")
        if key in ("segs_in", "data_segs_in") and value.isdigit():
            total[key] = total.get(key, 0) + int(value)
    return total


def postgres_ticks():
    total = 0
    for pid in postgres_pids():
        try:
            f = cmp._stat_fields(pid)
            total += int(f[14 - 3]) + int(f[15 - 3])
        except OSError:
            pass
    return total


def prepare():
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)", db="postgres")
    psql(f"CREATE DATABASE {DB}", db="postgres")
    port = cmp.free_port()
    proc = subprocess.Popen(server_argv("percore", port, 0, "db"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    error = cmp.wait_ready(proc, port, "/db")
    cmp.stop(proc)
    if error:
        sys.exit(f"percore could not create the schema: {error}")
    # The documents docs_get.lua reads: bench/k000000 .. k099999, ~150 bytes each.
    psql("INSERT INTO percore_documents (collection, key, version, body) "
         "SELECT 'bench', 'k' || lpad(i::text, 6, '0'), nextval('percore_version'), "
         "json_build_object('id', 'k' || lpad(i::text, 6, '0'), 'name', 'user ' || i, "
         "'email', 'user' || i || '@example.com', 'age', 10 + i % 90, 'active', true, "
         "'tags', json_build_array('alpha', 'beta'), 'note', 'lorem ipsum dolor sit a') "
         f"FROM generate_series(0, {DOCS - 1}) AS i ON CONFLICT DO NOTHING")
    psql("VACUUM ANALYZE")


def wrk_argv(args, port, test, duration, latency=True):
    path, lua = TESTS[test]
    argv = ["taskset", "-c", str(args.client_cpu), "wrk", "-t1", f"-c{args.connections}",
            f"-d{duration}s"]
    if latency:
        argv.append("--latency")
    url = f"http://127.0.0.1:{port}{path}"
    if lua:
        argv += ["-s", os.path.join(ROOT, "benches", lua), url, "--", "bench", str(DOCS)]
    else:
        argv.append(url)
    return argv


def open_loop_argv(args, port, test, duration, json_path=None):
    """`percore bench` at --rate, one client core where wrk would run."""
    argv = ["taskset", "-c", str(args.client_cpu), binary("percore"), "bench",
            f"http://127.0.0.1:{port}{TESTS[test][0]}", "--cores", "1", "--cpus",
            str(args.client_cpu), "--connections", str(args.connections), "--duration",
            f"{duration}s", "--rate", str(args.rate)]
    if json_path:
        argv += ["--json", json_path]
    return argv


def run_one(args, target, test, rnd):
    port = cmp.free_port()
    argv = server_argv(target, port, args.server_cpu, test)
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = {"target": target, "test": test, "round": rnd}
    report = os.path.join("/tmp", f"percore-pg-bench-{os.getpid()}.json")
    try:
        error = cmp.wait_ready(proc, port, "/db" if target != "xitca-pg" else "/db")
        if error:
            run["error"] = error
            return run
        if args.rate:
            subprocess.run(open_loop_argv(args, port, test, 2), capture_output=True)
            load = open_loop_argv(args, port, test, args.duration, report)
        else:
            subprocess.run(wrk_argv(args, port, test, 2, latency=False), capture_output=True)
            load = wrk_argv(args, port, test, args.duration)
        stat0, server0, pg0 = cmp.stat_cpu_lines(), cmp.proc_cpu_ticks(proc.pid), postgres_ticks()
        segments0, slept0 = postgres_segments(), sleeps(proc.pid)
        client = subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  text=True)
        # Sampled while the load's connections are open (they close with it),
        # so only the server's connections to PostgreSQL are still there.
        time.sleep(args.duration - 0.5)
        segments1 = postgres_segments()
        out = client.stdout.read()
        _, _, wrk_usage = os.wait4(client.pid, 0)
        stat1, server1, pg1 = cmp.stat_cpu_lines(), cmp.proc_cpu_ticks(proc.pid), postgres_ticks()
        slept1 = sleeps(proc.pid)
        if args.rate:
            with open(report) as f:
                parsed = cmp.parse_bench(json.load(f))
        else:
            parsed = cmp.parse_wrk(out)
        run.update(parsed)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        requests = parsed["total_requests"] or 0
        if requests:
            run["server_cpu_us_per_req"] = (server1 - server0) * tick_us / requests
            run["pg_cpu_us_per_req"] = (pg1 - pg0) * tick_us / requests
            # wrk shares PostgreSQL's CPU: what it costs there is beside PostgreSQL's figure.
            # Each sleep is a wake-up that whoever sends to the server next pays
            # for in its own send (on loopback): wrk, or PostgreSQL.
            run["server_sleeps_per_req"] = (slept1 - slept0) / requests
            if not args.rate:
                run["client_cpu_us_per_req"] = ((wrk_usage.ru_utime + wrk_usage.ru_stime) * 1e6
                                                / requests)
            rate = requests / args.duration
            span = args.duration - 0.5
            for key in ("segs_in", "data_segs_in"):
                if key in segments1:
                    run[f"pg_{key}_per_req"] = (segments1[key] - segments0.get(key, 0)) / (rate * span)
        run["steal_pct"] = cmp.steal_pct(stat0, stat1, "cpu")
        errors = sum(parsed["socket_errors"].values()) + parsed["non_2xx_3xx"]
        if errors:
            run["flagged"] = f"{errors} errors or non-2xx answers"
    finally:
        cmp.stop(proc)
        if os.path.exists(report):
            os.remove(report)
    return run


def round_ratios(runs, test, peer, key, invert=False):
    """percore ÷ peer of `key` within each round (the runs nearest in time), as "lo–hi"."""
    ratios = []
    for rnd in sorted({r["round"] for r in runs}):
        pair = {r["target"]: r.get(key) for r in runs if r["round"] == rnd and r["test"] == test
                and "error" not in r and "flagged" not in r}
        if pair.get("percore") and pair.get(peer):
            ratio = pair["percore"] / pair[peer]
            ratios.append(1 / ratio if invert else ratio)
    if not ratios:
        return "—"
    return f"{min(ratios):.2f}–{max(ratios):.2f}"


def summarize(runs, tests, targets, client="wrk"):
    lines = []
    for test in tests:
        lines.append(f"\n### {test} ({TESTS[test][0] if not TESTS[test][1] else TESTS[test][1]})\n")
        lines.append("| target | req/s | p99 | server CPU µs/req | PostgreSQL CPU µs/req "
                     f"| {client} CPU µs/req | writes into PostgreSQL /req | server sleeps /req "
                     "| steal % |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        medians = {}
        for target in targets:
            good = [r for r in runs if r["target"] == target and r["test"] == test
                    and "error" not in r and "flagged" not in r and r.get("server_cpu_us_per_req")]
            if not good:
                bad = [r.get("error") or r.get("flagged") for r in runs
                       if r["target"] == target and r["test"] == test]
                lines.append(f"| {target} | — | — | — | — | — | {bad[:1]}")
                continue
            m = {k: statistics.median(r.get(k) or 0 for r in good)
                 for k in ("requests_per_s", "p99_us", "server_cpu_us_per_req", "pg_cpu_us_per_req",
                           "client_cpu_us_per_req", "pg_data_segs_in_per_req", "server_sleeps_per_req",
                           "steal_pct")}
            medians[target] = m
            lines.append(f"| {target} | {m['requests_per_s']:,.0f} | {m['p99_us'] / 1e3:.2f} ms | "
                         f"{m['server_cpu_us_per_req']:.1f} | {m['pg_cpu_us_per_req']:.2f} | "
                         f"{m['client_cpu_us_per_req']:.2f} | {m['pg_data_segs_in_per_req']:.2f} | "
                         f"{m['server_sleeps_per_req']:.3f} | "
                         f"{m['steal_pct']:.1f} |")
        if "percore" in medians:
            p = medians["percore"]
            for peer, m in medians.items():
                if peer == "percore":
                    continue
                server_rounds = round_ratios(runs, test, peer, "server_cpu_us_per_req", invert=True)
                pg_rounds = round_ratios(runs, test, peer, "pg_cpu_us_per_req")
                client_rounds = round_ratios(runs, test, peer, "client_cpu_us_per_req")
                lines.append(f"\npercore ÷ {peer}: requests per server-CPU-second "
                             f"{m['server_cpu_us_per_req'] / p['server_cpu_us_per_req']:.2f}× "
                             f"(rounds {server_rounds}), "
                             f"requests/s {p['requests_per_s'] / m['requests_per_s']:.2f}×, "
                             f"PostgreSQL CPU per request {p['pg_cpu_us_per_req'] / m['pg_cpu_us_per_req']:.2f}× "
                             f"(rounds {pg_rounds}; below 1 is less), "
                             f"{client} CPU per request on the same CPU {client_rounds}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--targets", default="percore,axum-pg,xitca-pg")
    ap.add_argument("--tests", default=",".join(TESTS))
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default=None,
                    help="default benches/results/pg.json (pg-rate-R.json with --rate)")
    ap.add_argument("--rate", type=int, default=0,
                    help="open loop at this many requests/s with `percore bench` (not wrk)")
    args = ap.parse_args()
    if args.out is None:
        name = f"pg-rate-{args.rate}.json" if args.rate else "pg.json"
        args.out = os.path.join(ROOT, "benches", "results", name)
    targets = [t for t in args.targets.split(",") if t]
    tests = [t for t in args.tests.split(",") if t]
    if args.rate:
        for test in [t for t in tests if TESTS[t][1]]:
            print(f"skipping {test} with --rate: it needs wrk's script")
            tests.remove(test)
        if not os.path.exists(binary("percore")):
            sys.exit(f"--rate needs {binary('percore')} (cargo build --release)")
    for target in list(targets):
        if not os.path.exists(binary(target)):
            print(f"skipping {target}: {binary(target)} is missing (build it first)")
            targets.remove(target)
    prepare()
    pin_postgres(str(args.client_cpu))
    runs = []
    try:
        for rnd in range(args.rounds):
            for test in tests:
                order = targets[rnd % len(targets):] + targets[:rnd % len(targets)]
                for target in order:
                    if target == "xitca-pg" and test in DOC_TESTS:
                        continue
                    run = run_one(args, target, test, rnd)
                    runs.append(run)
                    print(f"round {rnd + 1} {test:9} {target:9} "
                          f"{run.get('requests_per_s') or 0:>10,.0f} req/s  "
                          f"server {run.get('server_cpu_us_per_req') or 0:6.1f} µs/req  "
                          f"pg {run.get('pg_cpu_us_per_req') or 0:6.1f} µs/req  "
                          f"{run.get('error') or run.get('flagged') or ''}", flush=True)
    finally:
        pin_postgres(f"0-{os.cpu_count() - 1}")
    summary = summarize(runs, tests, targets, "percore bench" if args.rate else "wrk")
    if args.rate:
        summary = f"open loop, {args.rate:,} requests/s for every target\n" + summary
    print(summary)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(args), "runs": runs,
                   "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Document API benchmark: percore's /v1 documents against axum-docs (axum + moka + redb).

Usage (from the repository root):

    python3 benches/docs.py [--rounds 3] [--duration 10] [--connections 64]
        [--targets percore,axum-docs] [--tests get-hit,get-miss,put,json]
        [--json OUT] [--no-build] [--data-parent DIR] [--quiet-wait 60]

Targets:
  * percore: target/release/percore, started as
        taskset -c 0 percore serve --listen 127.0.0.1:PORT --cores 1 --cpus 0
            --data-dir DIR --cache-bytes N
    (the json test starts it without --data-dir and --cache-bytes);
  * axum-docs: benches/peers/target/release/axum-docs, the same API written
    the way a typical axum service is (benches/peers/axum-docs), started as
        taskset -c 0 axum-docs --listen 127.0.0.1:PORT --data-dir DIR --cache-bytes N
  * axum-docs-inline (not run unless named): axum-docs --read-inline, which
    reads redb on the tokio worker instead of the blocking pool; prices that
    choice in get-miss.

Tests (every server gets its own data directories; documents are ~150 bytes
of compact JSON in collection `bench`):
  * get-hit: GET of 64 seeded keys (k000000..k000063), all in the cache
    (--cache-bytes 64 MiB); each key is read once after seeding.
  * get-miss: GET uniformly over 20,000 seeded keys with --cache-bytes 4096,
    so nearly every GET misses the cache and reads the store.
  * put: PUT of 150-byte documents to random keys out of 100,000 (creates
    and replaces; every PUT is a durable commit), in a fresh data directory.
  * json: GET /json, the reference: percore's get-hit is meant to come within
    15 % of percore's own /json.

Each get test's data directory is seeded once per target per invocation (PUTs
from a Python client on 8 keep-alive connections) and then reused by every
round, a fresh server process on it each round. put runs in a new directory
every round. Before each run the harness waits (up to --quiet-wait s) until
the machine is quiet (at most --quiet-pct % busy over a second): on a shared
machine, a build or a test suite running beside the benchmark skews it.

Each run, like benches/compare.py (whose sampling helpers this imports):
start the server pinned to --server-cpu, wait for 200 on /json, seed if
needed, check one GET against the API (200, the seeded document, an ETag of
quoted lowercase hex; a server that fails it is not run), read every get-hit
key once, warm up with wrk for 2 s, then
    taskset -c 1 wrk -t1 -c64 -d10s --latency -s benches/docs_{get,put}.lua URL -- ARGS
sampling the server's utime+stime (/proc/PID/stat, all threads) and the
machine's steal time (/proc/stat) right before and after; SIGTERM (SIGKILL
after 5 s) ends the server. Rounds are interleaved (for each round, each
test, every target in turn, the first target rotating), so the drift of a
shared machine hits both alike.

Output: one Markdown table per test with the medians over the rounds
(req/s, server CPU µs per request, requests per server CPU-second, p99,
steal %) and percore's ratios to the peer, of requests per CPU-second and of
req/s; with --json OUT every raw run and the summary. Runs with socket
errors or non-2xx responses are flagged and left out of the medians.
CPU time comes in clock ticks (usually 10 ms): use 10 s runs for numbers you
mean to quote; --rounds 1 --duration 3 is a smoke test. The server's CPU time
is its own threads' (io, store and blocking-pool threads alike); the journal
work the kernel does for an fsync in its own threads (jbd2, kworkers) is not
in it, so put's CPU per request understates both servers alike, and put's
req/s is bound by fsync latency and how many commits share one fsync.
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402  (sampling, wrk parsing, server stop: one copy of each)

ROOT = cmp.ROOT
BENCHES = cmp.BENCHES
PEERS_DIR = cmp.PEERS_DIR
GET_LUA = os.path.join(BENCHES, "docs_get.lua")
PUT_LUA = os.path.join(BENCHES, "docs_put.lua")
ALL_TARGETS = ["percore", "axum-docs", "axum-docs-inline"]
DEFAULT_TARGETS = ["percore", "axum-docs"]
# Peer variants: a peer binary with extra flags.
PEER_VARIANTS = {"axum-docs": ("axum-docs", []), "axum-docs-inline": ("axum-docs", ["--read-inline"])}
COLLECTION = "bench"
MIB = 1024 * 1024
WARMUP_S = 2
SEED_CONNECTIONS = 8
CLIENT_BOUND_PCT = 95  # wrk's CPU this busy: req/s is the client's limit
WRK_SEED = 42  # math.randomseed of the lua scripts: every run draws the same keys


def test_specs(args):
    """name -> what the test needs: seeded keys (None: no data), cache bytes, wrk script and args."""
    return {
        "get-hit": {"keys": args.hit_keys, "cache_bytes": 64 * MIB, "warm_cache": True,
                    "lua": GET_LUA, "lua_args": [COLLECTION, str(args.hit_keys), str(WRK_SEED)]},
        "get-miss": {"keys": args.miss_keys, "cache_bytes": args.miss_cache_bytes, "warm_cache": False,
                     "lua": GET_LUA, "lua_args": [COLLECTION, str(args.miss_keys), str(WRK_SEED)]},
        "put": {"keys": None, "cache_bytes": 64 * MIB, "warm_cache": False,
                "lua": PUT_LUA, "lua_args": [COLLECTION, str(args.put_keys), str(WRK_SEED)]},
        "json": {"keys": None, "path": "/json", "cache_bytes": None, "warm_cache": False, "lua": None},
    }


TESTS = ["get-hit", "get-miss", "put", "json"]


def log(msg):
    cmp.log(msg)


# ---------------------------------------------------------------- targets

def binary(target):
    if target == "percore":
        return os.path.join(ROOT, "target", "release", "percore")
    return os.path.join(PEERS_DIR, "target", "release", PEER_VARIANTS[target][0])


def server_argv(target, port, server_cpu, data_dir, cache_bytes):
    """The server's argv (without taskset). cache_bytes None: the json test, no document flags for percore."""
    listen = f"127.0.0.1:{port}"
    if target == "percore":
        argv = [binary(target), "serve", "--listen", listen, "--cores", "1", "--cpus", str(server_cpu)]
        if cache_bytes is not None:
            argv += ["--data-dir", data_dir, "--cache-bytes", str(cache_bytes)]
        return argv
    argv = [binary(target), "--listen", listen, "--data-dir", data_dir] + PEER_VARIANTS[target][1]
    if cache_bytes is not None:
        argv += ["--cache-bytes", str(cache_bytes)]
    return argv


def build(targets):
    jobs = []
    if "percore" in targets:
        jobs.append(("percore", ["cargo", "build", "--release"], ROOT))
    for crate in sorted({PEER_VARIANTS[t][0] for t in targets if t != "percore"}):
        jobs.append((crate, ["cargo", "build", "--release", "-p", crate], PEERS_DIR))
    for name, argv, cwd in jobs:
        log(f"== building {name}: {shlex.join(argv)} (in {os.path.relpath(cwd, ROOT) or '.'})")
        r = subprocess.run(argv, cwd=cwd)
        if r.returncode != 0:
            log(f"!! build of {name} failed (exit {r.returncode}); a target without a binary is skipped")


# ---------------------------------------------------------------- documents

def seed_doc(prefix, n):
    """The ~150-byte document of key n; the same shape as docs_put.lua's bodies."""
    return (f'{{"id":"{prefix}{n:06d}","name":"user {n:06d}","email":"user{n:06d}@example.com",'
            f'"age":{n % 90 + 10},"active":true,"tags":["alpha","beta"],"note":"lorem ipsum dolor sit a"}}')


def doc_path(key):
    return f"/v1/{COLLECTION}/{key}"


def _client_worker(port, method, keys, body_of, ok_statuses, result, index):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    bad = []
    try:
        for key in keys:
            body = body_of(key) if body_of else None
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, doc_path(key), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status not in ok_statuses:
                bad.append(f"{method} {doc_path(key)}: HTTP {r.status} {data[:200]!r}")
                if len(bad) >= 3:
                    break
    except (OSError, http.client.HTTPException) as e:
        bad.append(f"{method}: {e}")
    finally:
        conn.close()
    result[index] = bad


def for_all_keys(port, method, nkeys, body_of, ok_statuses):
    """Sends one request per key k000000.. over SEED_CONNECTIONS keep-alive connections;
    returns a list of failures (empty when every answer was in ok_statuses)."""
    keys = [f"k{n:06d}" for n in range(nkeys)]
    chunks = [keys[i::SEED_CONNECTIONS] for i in range(SEED_CONNECTIONS)]
    result = [None] * len(chunks)
    threads = [threading.Thread(target=_client_worker, args=(port, method, c, body_of, ok_statuses, result, i))
               for i, c in enumerate(chunks) if c]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [b for bad in result if bad for b in bad]


def seed(port, nkeys):
    return for_all_keys(port, "PUT", nkeys, lambda key: seed_doc("k", int(key[1:])), (200, 201))


def check_doc(port):
    """One GET of k000000 checked against the API: 200, the seeded document, a quoted hex ETag.
    Returns what is wrong, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", doc_path("k000000"))
        r = conn.getresponse()
        body = r.read()
        etag = r.getheader("ETag") or ""
    except (OSError, http.client.HTTPException) as e:
        return f"GET {doc_path('k000000')}: {e}"
    finally:
        conn.close()
    if r.status != 200:
        return f"GET {doc_path('k000000')}: HTTP {r.status} {body[:200]!r}"
    try:
        same = json.loads(body) == json.loads(seed_doc("k", 0))
    except ValueError:
        same = False
    if not same:
        return f"GET {doc_path('k000000')}: body {body[:200]!r} is not the seeded document"
    if not re.fullmatch(r'"[0-9a-f]+"', etag):
        return f"GET {doc_path('k000000')}: ETag {etag!r} is not a quoted lowercase hex version"
    return None


def read_all(port, nkeys):
    return for_all_keys(port, "GET", nkeys, None, (200,))


# ---------------------------------------------------------------- one run

def wrk_argv(args, port, spec, duration, latency=True):
    argv = ["taskset", "-c", str(args.client_cpu), "wrk", f"-t{args.wrk_threads}",
            f"-c{args.connections}", f"-d{duration}s"]
    if latency:
        argv.append("--latency")
    if spec["lua"]:
        return argv + ["-s", spec["lua"], f"http://127.0.0.1:{port}", "--"] + spec["lua_args"]
    return argv + [f"http://127.0.0.1:{port}{spec['path']}"]


def data_dir_for(args, state, target, test, rnd, spec):
    """(directory, whether it still needs seeding). get tests: one per target, kept across rounds."""
    if spec["keys"] is None:
        d = os.path.join(state["parent"], f"{target}-{test}-r{rnd}")
        os.makedirs(d)
        return d, False
    key = (target, test)
    if key not in state["seeded"]:
        d = os.path.join(state["parent"], f"{target}-{test}")
        os.makedirs(d, exist_ok=True)  # a failed seeding is retried in the same directory
        return d, True
    return state["seeded"][key], False


def machine_busy_pct(interval=1.0):
    """How busy the whole machine is (% of all CPUs, idle and iowait excluded) over interval seconds."""
    before = cmp.stat_cpu_lines()
    time.sleep(interval)
    busy, total = cmp.busy_ticks(before, cmp.stat_cpu_lines(), "cpu")
    return 100.0 * busy / total if total else 0.0


def wait_quiet(limit_s, threshold_pct):
    """Waits (at most limit_s) until the machine is quiet before a run: on a shared machine a
    build or test suite next to the benchmark skews both targets. Returns (waited s, last busy %)."""
    t0 = time.monotonic()
    busy = machine_busy_pct()
    while busy > threshold_pct and time.monotonic() - t0 < limit_s:
        busy = machine_busy_pct()
    return time.monotonic() - t0, busy


def run_one(args, state, target, test, rnd):
    spec = state["specs"][test]
    if args.quiet_wait > 0:
        waited, busy = wait_quiet(args.quiet_wait, args.quiet_pct)
        if busy > args.quiet_pct:
            log(f"   machine still {busy:.0f}% busy after waiting {waited:.0f} s: running anyway")
    else:
        waited, busy = 0.0, None
    port = cmp.free_port()
    data_dir, needs_seed = data_dir_for(args, state, target, test, rnd, spec)
    argv = ["taskset", "-c", str(args.server_cpu)] + server_argv(
        target, port, args.server_cpu, data_dir, spec["cache_bytes"])
    logpath = os.path.join(state["logdir"], f"{target}-{test}-r{rnd}.log")
    run = {"round": rnd, "test": test, "target": target, "port": port, "data_dir": data_dir,
           "server_cmd": shlex.join(argv), "ok": False, "flags": [],
           "quiet_wait_s": waited, "machine_busy_pct_before": busy}
    with open(logpath, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        err = cmp.wait_ready(proc, port, "/json")
        if err:
            run["error"] = err
            run["server_log_tail"] = cmp.tail(logpath)
            return run
        if needs_seed:
            t0 = time.monotonic()
            bad = seed(port, spec["keys"])
            run["seed_s"] = time.monotonic() - t0
            log(f"   seeded {spec['keys']} documents in {run['seed_s']:.1f} s")
            if bad:
                run["error"] = f"seeding failed: {'; '.join(bad[:3])}"
                run["server_log_tail"] = cmp.tail(logpath)
                return run
            state["seeded"][(target, test)] = data_dir
        if spec["keys"] is not None:
            wrong = check_doc(port)
            if wrong:
                run["error"] = f"API check failed: {wrong}"
                return run
        if spec["warm_cache"]:
            bad = read_all(port, spec["keys"])
            if bad:
                run["error"] = f"warming read failed: {'; '.join(bad[:3])}"
                return run
        subprocess.run(wrk_argv(args, port, spec, WARMUP_S, latency=False), capture_output=True,
                       timeout=WARMUP_S + 60)
        if proc.poll() is not None:
            run["error"] = f"server exited with code {proc.returncode} during warm-up"
            run["server_log_tail"] = cmp.tail(logpath)
            return run
        stat0, ticks0 = cmp.stat_cpu_lines(), cmp.proc_cpu_ticks(proc.pid)
        t0 = time.monotonic()
        wargv = wrk_argv(args, port, spec, args.duration)
        w = subprocess.run(wargv, capture_output=True, text=True, timeout=args.duration + 60)
        t1 = time.monotonic()
        alive = proc.poll() is None
        ticks1 = cmp.proc_cpu_ticks(proc.pid) if alive else None
        stat1 = cmp.stat_cpu_lines()
        run["client_cmd"] = shlex.join(wargv)
    except subprocess.TimeoutExpired as e:
        run["error"] = f"timed out: {e}"
        return run
    finally:
        cmp.stop(proc)
    run["wall_s"] = t1 - t0
    run["client_output"] = w.stdout + (("\n[stderr]\n" + w.stderr) if w.stderr.strip() else "")
    if w.returncode != 0:
        run["error"] = f"wrk exited with code {w.returncode}: {w.stderr.strip()[:300]}"
        return run
    if not alive:
        run["error"] = f"server exited with code {proc.returncode} during the measured run"
        run["server_log_tail"] = cmp.tail(logpath)
        return run
    run.update(cmp.parse_wrk(w.stdout))
    run["steal_pct"] = cmp.steal_pct(stat0, stat1, "cpu")
    run["steal_pct_server_cpu"] = cmp.steal_pct(stat0, stat1, f"cpu{args.server_cpu}")
    run["server_cpu_s"] = (ticks1 - ticks0) / cmp.CLK_TCK
    busy, total = cmp.busy_ticks(stat0, stat1, f"cpu{args.server_cpu}")
    if total:
        run["server_cpu_busy_pct"] = 100.0 * busy / total
        run["server_cpu_other_busy_pct"] = max(0.0, 100.0 * (busy - (ticks1 - ticks0)) / total)
    busy, total = cmp.busy_ticks(stat0, stat1, f"cpu{args.client_cpu}")
    if total:
        run["client_cpu_busy_pct"] = 100.0 * busy / total
    n = run["total_requests"]
    if not n or run.get("requests_per_s") is None:
        run["error"] = "could not parse the wrk output"
        return run
    run["cpu_us_per_req"] = run["server_cpu_s"] / n * 1e6
    run["req_per_cpu_s"] = 1e6 / run["cpu_us_per_req"] if run["cpu_us_per_req"] > 0 else None
    if sum(run["socket_errors"].values()):
        run["flags"].append("socket errors " + ", ".join(f"{k} {v}" for k, v in run["socket_errors"].items() if v))
    if run["non_2xx_3xx"]:
        run["flags"].append(f"non-2xx/3xx {run['non_2xx_3xx']}")
    if run["req_per_cpu_s"] is None:
        run["flags"].append("server CPU time below one clock tick")
    run["ok"] = not run["flags"]
    return run


# ---------------------------------------------------------------- summary

def ratio(a, b):
    return a / b if a and b else None


def summarize(runs, tests, targets):
    """compare.py's medians and ratios, plus percore's ratio of req/s, under this file's names."""
    summary = cmp.summarize(runs, tests, targets)
    for test in tests:
        st = summary[test]
        pc = st.get("percore")
        for target in targets:
            if target == "percore" or not pc:
                continue
            s = st[target]
            s["percore_ratio_req_per_cpu_s"] = s.pop("percore_ratio_of_medians", None)
            s["percore_ratio_req_per_cpu_s_per_round"] = s.pop("percore_ratio_per_round", [])
            s["percore_ratio_req_per_s"] = ratio(pc["median_requests_per_s"], s["median_requests_per_s"])
    return summary


def table(test, st, targets):
    fmt, fmt_lat = cmp.fmt, cmp.fmt_lat
    lines = [f"### {test}", "",
             "| target | req/s | server CPU µs/req | req per CPU-s | p99 | steal % | "
             "percore ÷ target: req per CPU-s | percore ÷ target: req/s | runs |",
             "|---|---:|---:|---:|---:|---:|---|---:|---|"]
    for target in targets:
        s = st[target]
        steal = "—" if s["steal_pct_min"] is None else f"{s['steal_pct_min']:.1f}–{s['steal_pct_max']:.1f}"
        if target == "percore":
            r_cpu, r_rps = ("1.00 (itself)", "1.00") if s["median_req_per_cpu_s"] else ("—", "—")
        elif "percore_ratio_req_per_cpu_s" in s:
            r_cpu = fmt(s["percore_ratio_req_per_cpu_s"], ".2f") + ("×" if s["percore_ratio_req_per_cpu_s"] else "")
            rr = s["percore_ratio_req_per_cpu_s_per_round"]
            if rr:
                r_cpu += f" (rounds {min(rr):.2f}–{max(rr):.2f})"
            r_rps = fmt(s["percore_ratio_req_per_s"], ".2f") + ("×" if s["percore_ratio_req_per_s"] else "")
        else:
            r_cpu = r_rps = "— (percore not run)"
        nruns = f"{s['good_runs']}/{s['runs']} ok"
        if s["failed"]:
            nruns += " ⚠ " + "; ".join(s["failed"])
        lines.append(f"| {target} | {fmt(s['median_requests_per_s'], ',.0f')} | "
                     f"{fmt(s['median_cpu_us_per_req'], '.2f')} | {fmt(s['median_req_per_cpu_s'], ',.0f')} | "
                     f"{fmt_lat(s['median_p99_us'])} | {steal} | {r_cpu} | {r_rps} | {nruns} |")
    load = ", ".join(f"{t} {st[t]['median_server_cpu_busy_pct']:.0f}/{st[t]['median_client_cpu_busy_pct']:.0f}"
                     f" (other {st[t]['server_cpu_other_busy_pct_max']:.0f})"
                     for t in targets if st[t]["median_server_cpu_busy_pct"] is not None
                     and st[t]["median_client_cpu_busy_pct"] is not None
                     and st[t]["server_cpu_other_busy_pct_max"] is not None)
    if load:
        lines += ["", f"CPU busy % server/client (max % of the server CPU busy with anything else): {load}."]
    bound = [t for t in targets if (st[t]["median_client_cpu_busy_pct"] or 0) >= CLIENT_BOUND_PCT]
    if bound:
        lines += ["", f"Client-bound ({', '.join(bound)}): wrk kept its CPU ≥{CLIENT_BOUND_PCT}% busy, so "
                  "req/s there is wrk's ceiling, not the server's; compare server CPU µs/req."]
    return "\n".join(lines)


def hit_vs_json(summary):
    """percore's cache-hit GET against its own /json: the 'within 15 %' goal."""
    try:
        hit, js = summary["get-hit"]["percore"], summary["json"]["percore"]
    except KeyError:
        return None
    rps = ratio(hit["median_requests_per_s"], js["median_requests_per_s"])
    cpu = ratio(hit["median_req_per_cpu_s"], js["median_req_per_cpu_s"])
    if rps is None and cpu is None:
        return None
    return {"req_per_s": rps, "req_per_cpu_s": cpu}


# ---------------------------------------------------------------- main

def fs_type(path):
    r = subprocess.run(["findmnt", "-n", "-o", "FSTYPE", "-T", path], capture_output=True, text=True)
    return r.stdout.strip() or None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run (at most 10 here)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help=f"from {','.join(ALL_TARGETS)}")
    ap.add_argument("--tests", default=",".join(TESTS), help=f"from {','.join(TESTS)}")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--hit-keys", type=int, default=64, help="keys of get-hit")
    ap.add_argument("--miss-keys", type=int, default=20000, help="keys of get-miss")
    ap.add_argument("--miss-cache-bytes", type=int, default=4096, help="--cache-bytes of get-miss")
    ap.add_argument("--put-keys", type=int, default=100000, help="key space of put")
    ap.add_argument("--data-parent", default=None,
                    help="where the data directories go (default: the system temp dir); "
                         "a tmpfs makes fsync free, so keep it on a disk")
    ap.add_argument("--quiet-wait", type=float, default=60,
                    help="before each run, wait up to this many seconds for the machine to be quiet (0: don't)")
    ap.add_argument("--quiet-pct", type=float, default=10,
                    help="quiet means at most this %% of all CPUs busy over one second")
    ap.add_argument("--json", dest="json_out", default=None, help="write every raw run and the summary here")
    ap.add_argument("--no-build", action="store_true")
    args = ap.parse_args()

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    if [t for t in tests if t not in TESTS]:
        ap.error(f"unknown test(s) {[t for t in tests if t not in TESTS]}; known: {TESTS}")
    if [t for t in targets if t not in ALL_TARGETS]:
        ap.error(f"unknown target(s) {[t for t in targets if t not in ALL_TARGETS]}; known: {ALL_TARGETS}")
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")
    if not args.no_build:
        build(targets)
    present = [t for t in targets if os.access(binary(t), os.X_OK)]
    for t in targets:
        if t not in present:
            log(f"!! skipping {t}: binary {os.path.relpath(binary(t), ROOT)} is missing")
    if not present:
        sys.exit("no target binary found; nothing to run")

    cmdline = shlex.join([sys.executable] + sys.argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="percore-docs-", dir=args.data_parent) as parent:
        logdir = os.path.join(parent, "logs")
        os.makedirs(logdir)
        state = {"parent": parent, "logdir": logdir, "seeded": {}, "specs": test_specs(args)}
        meta = {
            "command": cmdline,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "uname_r": platform.release(),
            "nproc": os.cpu_count(),
            "clk_tck": cmp.CLK_TCK,
            "git_rev": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                      capture_output=True, text=True).stdout.strip() or None,
            "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines() or [""])[0],
            "data_fs": fs_type(parent),
            "settings": dict(vars(args)),
            "targets_run": present,
            "warmup_s": WARMUP_S,
            "tests": {t: {k: v for k, v in state["specs"][t].items()} for t in tests},
        }
        if meta["data_fs"] == "tmpfs":
            log("!! the data directories are on tmpfs: fsync costs nothing there (see --data-parent)")
        est = args.rounds * len(tests) * len(present) * (args.duration + WARMUP_S + 1)
        log(f"== {args.rounds} round(s) × {len(tests)} test(s) × {len(present)} target(s); "
            f"~{est // 60}m{est % 60:02d}s plus seeding")
        for rnd in range(1, args.rounds + 1):
            for test in tests:
                k = (rnd - 1) % len(present)
                for target in present[k:] + present[:k]:
                    log(f"-- round {rnd} {test:<9} {target:<10}")
                    r = run_one(args, state, target, test, rnd)
                    if r.get("error"):
                        log(f"   FAILED: {r['error']}")
                        if r.get("server_log_tail"):
                            log("   server log:\n" + r["server_log_tail"])
                    else:
                        log(f"   {r['requests_per_s']:,.0f} req/s  p99 {cmp.fmt_lat(r['p99_us'])}  "
                            f"{cmp.fmt(r['cpu_us_per_req'], '.2f')} CPU-µs/req  steal {r['steal_pct']:.1f}%"
                            + (f"  ⚠ {'; '.join(r['flags'])}" if r["flags"] else ""))
                    runs.append(r)

    summary = summarize(runs, tests, present)
    print(f"Command: `{cmdline}`")
    print(f"Date: {meta['date']}  ·  uname -r: {meta['uname_r']}  ·  nproc: {meta['nproc']}  ·  "
          f"git: {meta['git_rev']}  ·  {meta['wrk']}  ·  data on {meta['data_fs']}")
    print(f"Server on CPU {args.server_cpu}, wrk -t{args.wrk_threads} -c{args.connections} on CPU "
          f"{args.client_cpu}, {args.duration}s runs after {WARMUP_S}s warm-up, {args.rounds} round(s); "
          f"medians over the runs without errors.")
    for test in tests:
        print()
        print(table(test, summary[test], present))
    hj = hit_vs_json(summary)
    if hj:
        summary["percore_get_hit_vs_json"] = hj
        print()
        print(f"percore get-hit ÷ percore json: req/s {cmp.fmt(hj['req_per_s'], '.2f')}, "
              f"req per CPU-s {cmp.fmt(hj['req_per_cpu_s'], '.2f')} (goal: ≥ 0.85)")
    print()
    if args.json_out:
        os.makedirs(os.path.dirname(os.path.abspath(args.json_out)), exist_ok=True)
        with open(args.json_out, "w") as f:
            json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=2)
        print(f"Raw runs and summary: {os.path.relpath(os.path.abspath(args.json_out), os.getcwd())}")


if __name__ == "__main__":
    main()

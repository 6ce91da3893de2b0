#!/usr/bin/env python3
"""PostgreSQL's own instructions per request under each server, counted by callgrind: exact where CPU time is noisy.

Usage (from the repository root, as root, after `cargo build --release` and the peers'
build as for benches/pg.py; needs valgrind and PostgreSQL's server binaries):

    flock /tmp/percore-bench.lock python3 benches/pg_callgrind.py [--test fortunes]
        [--targets percore,xitca-pg] [--rate 100] [--short 5] [--long 45] [--functions 15]

What it does:
  * makes a PostgreSQL cluster of its own (port 5499, run as the `postgres` user, in a
    temporary directory), lets percore create and seed its schema there, and restarts the
    cluster under `valgrind --tool=callgrind`: every backend writes the instructions it
    executed when it exits;
  * for each target, serves the test at --rate requests/s (`percore bench`, open loop,
    8 connections, on CPU 1; the server on CPU 0) for --short and then --long seconds,
    each time with a fresh server and so a fresh backend;
  * the backend's instructions over the long run minus the short one, divided by the
    extra requests, are PostgreSQL's user-space instructions per request, with the
    connection's start-up (statements prepared, schema checks) cancelled out;
  * prints them per target, each target ÷ the first, and the functions whose
    instructions per request differ most; removes the cluster.

percore runs with `--cache-stale-bound 1h`, so at this low rate its polls for other
nodes' writes add no queries. valgrind sees user space only: a difference in PostgreSQL's
CPU per request that these counts do not show is kernel work done in its process.
"""

import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402
import pg  # noqa: E402

PORT = 5499
DB = "callgrind"


def pg_bin(tool):
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        sys.exit(f"{tool} not found under /usr/lib/postgresql (apt-get install postgresql)")
    return found[-1]


def as_postgres(argv, **kw):
    return subprocess.run(["runuser", "-u", "postgres", "--"] + argv, check=True,
                          capture_output=True, text=True, **kw)


def psql(sql, db="postgres"):
    return subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(PORT), "-U", "postgres", "-d", db,
                           "-v", "ON_ERROR_STOP=1", "-qtAc", sql],
                          check=True, capture_output=True, text=True).stdout


def wait_for_postgres(within=120):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            psql("SELECT 1")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.5)
    sys.exit("the cluster did not accept connections")


def url():
    return f"postgres://postgres@127.0.0.1:{PORT}/{DB}"


def server_argv(target, port):
    if target == "percore":
        return ["taskset", "-c", "0", pg.binary("percore"), "serve", "--cores", "1", "--cpus", "0",
                "--listen", f"127.0.0.1:{port}", "--store", "postgres", "--shard-url", url(),
                "--cache-stale-bound", "1h"]
    return ["taskset", "-c", "0", pg.binary(target), "--listen", f"127.0.0.1:{port}",
            "--database-url", url()]


def backends():
    out = psql(f"SELECT pid FROM pg_stat_activity WHERE datname = '{DB}' "
               "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    return [int(p) for p in out.split()]


def total_instructions(path):
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise SystemExit(f"{path} holds no instruction count")


def serve(args, target, seconds, outdir):
    """Serves the test for `seconds`; (requests answered, instructions, callgrind files)."""
    port = cmp.free_port()
    proc = subprocess.Popen(server_argv(target, port), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    path = pg.TESTS[args.test][0]
    report = os.path.join(outdir, "bench.json")
    try:
        error = cmp.wait_ready(proc, port, path, timeout=120)
        if error:
            sys.exit(f"{target}: {error}")
        pids = backends()
        subprocess.run(["taskset", "-c", "1", pg.binary("percore"), "bench",
                        f"http://127.0.0.1:{port}{path}", "--cores", "1", "--cpus", "1",
                        "--connections", "8", "--rate", str(args.rate), "--duration",
                        f"{seconds}s", "--json", report], capture_output=True, check=False)
    finally:
        cmp.stop(proc)
    # A backend writes its counts when it exits, after its client has gone.
    deadline = time.monotonic() + 60
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    with open(report) as f:
        bench = json.load(f)
    answered = bench["status"]["2xx"]
    if answered != bench["requests"]:
        sys.exit(f"{target}: {bench['requests'] - answered} of {bench['requests']} requests failed")
    files = [os.path.join(outdir, f"cg.{p}") for p in pids]
    return answered, sum(total_instructions(f) for f in files), files


def by_function(files):
    counts = collections.Counter()
    for path in files:
        out = subprocess.run(["callgrind_annotate", "--threshold=100", path],
                             capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            m = re.match(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*\S)", line)
            if m and "PROGRAM TOTALS" not in m.group(2):
                counts[m.group(2)] += int(m.group(1).replace(",", ""))
    return counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test", default="fortunes", choices=[t for t in pg.TESTS
                                                           if not pg.TESTS[t][1]])
    ap.add_argument("--targets", default="percore,xitca-pg")
    ap.add_argument("--rate", type=int, default=100)
    ap.add_argument("--short", type=int, default=5)
    ap.add_argument("--long", type=int, default=45)
    ap.add_argument("--functions", type=int, default=15)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    for target in targets + ["percore"]:
        if not os.path.exists(pg.binary(target)):
            sys.exit(f"{pg.binary(target)} is missing (build it first)")
    if not shutil.which("valgrind"):
        sys.exit("valgrind is not installed (apt-get install valgrind)")
    work = tempfile.mkdtemp(prefix="percore-callgrind-")
    os.chmod(work, 0o755)
    shutil.chown(work, "postgres", "postgres")
    data = os.path.join(work, "data")
    postmaster = None
    try:
        as_postgres([pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth=trust", "--no-sync"])
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            f.write(f"port = {PORT}\nlisten_addresses = '127.0.0.1'\n"
                    f"unix_socket_directories = '{work}'\nfsync = off\n"
                    "synchronous_commit = off\nshared_buffers = 32MB\nmax_connections = 20\n"
                    "autovacuum = off\n")
        ctl = [pg_bin("pg_ctl"), "-D", data, "-w", "-l", os.path.join(work, "log")]
        as_postgres(ctl + ["start"])
        psql(f"CREATE DATABASE {DB}")
        port = cmp.free_port()
        proc = subprocess.Popen(server_argv("percore", port), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        error = cmp.wait_ready(proc, port, "/db", timeout=60)
        cmp.stop(proc)
        if error:
            sys.exit(f"percore could not create the schema: {error}")
        as_postgres(ctl + ["stop"])
        postmaster = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", "valgrind", "--tool=callgrind",
             "--trace-children=yes", f"--callgrind-out-file={work}/cg.%p",
             pg_bin("postgres"), "-D", data],
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "valgrind.log"), "w"))
        wait_for_postgres()
        # The first backends after a start build the caches later ones reuse
        # (the relation cache's init file): one run of each target first, not counted.
        for target in targets:
            serve(args, target, 1, work)
        per_request, functions = {}, {}
        for target in targets:
            short = serve(args, target, args.short, work)
            long = serve(args, target, args.long, work)
            extra = long[0] - short[0]
            per_request[target] = (long[1] - short[1]) / extra
            a, b = by_function(short[2]), by_function(long[2])
            functions[target] = {k: (b[k] - a.get(k, 0)) / extra for k in set(a) | set(b)}
            print(f"{target:9} {short[0]:>6} and {long[0]:>6} requests: "
                  f"{per_request[target]:>9,.0f} instructions per request in PostgreSQL",
                  flush=True)
        first = targets[0]
        for target in targets[1:]:
            print(f"\n{first} ÷ {target}: {per_request[first] / per_request[target]:.4f}× "
                  f"({per_request[first] - per_request[target]:+,.0f} per request); "
                  "the functions that differ most, per request:")
            f0, f1 = functions[first], functions[target]
            rows = sorted(set(f0) | set(f1), key=lambda k: -abs(f0.get(k, 0) - f1.get(k, 0)))
            for k in rows[:args.functions]:
                print(f"  {f0.get(k, 0):>9,.1f} {f1.get(k, 0):>9,.1f} "
                      f"{f0.get(k, 0) - f1.get(k, 0):>+8.1f}  {k[:100]}")
    finally:
        if postmaster is not None:
            subprocess.run(["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", data, "-w",
                            "-m", "fast", "stop"], capture_output=True)
            postmaster.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

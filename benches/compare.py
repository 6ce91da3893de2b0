#!/usr/bin/env python3
"""Side-by-side benchmark: percore against its peers, on loopback, with wrk (or `percore bench`).

Usage (from the repository root):

    python3 benches/compare.py [--rounds 3] [--duration 10] [--connections 64]
        [--targets percore,hyper-min,epoll-floor,glommio-naive]
        [--tests json,plaintext-pipelined] [--pipeline-depth 16]
        [--server-cpu 0] [--client-cpu 1]
        [--out benches/results/latest.json] [--no-build]
        [--loadgen wrk|percore]

What it does:
  * builds percore (`cargo build --release` at the repo root) and the peers
    (`cargo build --release` in benches/peers), unless --no-build;
  * for each round, for each test, runs every target once in turn (interleaved,
    so slow drift of a shared, noisy machine hits all targets alike; the
    starting target rotates every round). Each run: start the server under
    `taskset -c SERVER_CPU` on a free port, wait until it answers, warm up with
    wrk for 2 s, then run
        taskset -c CLIENT_CPU wrk -t1 -cCONNS -dDURs --latency URL
    (plaintext-pipelined: /plaintext with benches/pipeline.lua, 16 requests per
    write, like TechEmpower's plaintext test), sampling the server's
    utime+stime (/proc/PID/stat) and the machine's steal time (/proc/stat)
    right before and after, then SIGTERM (SIGKILL after 5 s);
  * prints one Markdown table per test (medians over the rounds) with
    percore's requests-per-server-CPU-second ratio against each peer, and
    writes every raw run plus the summary to --out as JSON.

Targets: percore (and percore-ratelimited), the peers in benches/peers
(hyper-min, epoll-floor, glommio-naive, actix-web, may-minihttp) and nginx
(the system's /usr/sbin/nginx, not built here). The default --targets are the
first four; name the others to run them, e.g.
    python3 benches/compare.py --targets percore,nginx --tests static-1k,static-1m

Tests: json, plaintext, plaintext-pipelined, and static-1k / static-1m (GET
/static/1k.bin and /static/1m.bin). One static directory is made per
invocation in a temp dir, with 1k.bin (1024 random bytes) and 1m.bin (1 MiB
random bytes); percore always gets `--static-dir DIR` (harmless for the other
tests) and nginx serves the same directory at /static/. The peers in
benches/peers serve no files: they are left out of the static tests.

nginx runs from a config generated per run in a temp dir (see nginx_conf):
master process plus one worker, access log off, sendfile, open_file_cache;
it answers /plaintext and /json with `return 200`, so it runs those tests too.
It is started as `taskset -c SERVER_CPU nginx -p TMP/ -e TMP/error.log -c
TMP/nginx.conf` (the worker inherits the pinning), and its CPU time is the sum
over the master and its workers (children found by their ppid in /proc).

--loadgen percore drives the load with `percore bench` (target/release/percore,
built with the server) instead of wrk, with the same shape:
    taskset -c CLIENT_CPU percore bench --cores 1 --cpus CLIENT_CPU -cCONNS -dDURs
        [--pipeline DEPTH] URL --json FILE
Its percentiles are per request even when pipelining, and each run also records
the client's own CPU µs per request.

Runs whose client output shows socket errors or non-2xx/3xx responses are flagged
and left out of the medians. A target whose binary is missing is reported and
skipped. CPU time comes in clock ticks (usually 10 ms), so use 10 s runs for
numbers you mean to quote; --rounds 1 --duration 3 is a smoke test.
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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHES = os.path.join(ROOT, "benches")
PEERS_DIR = os.path.join(BENCHES, "peers")
PIPELINE_LUA = os.path.join(BENCHES, "pipeline.lua")
ALL_TARGETS = ["percore", "hyper-min", "epoll-floor", "glommio-naive", "percore-ratelimited",
               "percore-user", "percore-baseline", "actix-web", "may-minihttp", "nginx"]
DEFAULT_TARGETS = ["percore", "hyper-min", "epoll-floor", "glommio-naive"]
# percore variants: the same binary with extra flags, to price a feature.
PERCORE_VARIANTS = {
    "percore": [],
    # Every request checked by the limiter and allowed: its cost, not its refusals.
    "percore-ratelimited": ["--rate-limit", "1000000000/s"],
    # Another build of percore (PERCORE_BASELINE=path/to/percore, e.g. main before a change):
    # the no-regression check, side by side in the same run.
    "percore-baseline": [],
}
# percore as a library: examples/hello registers its own /json and /plaintext
# through the App builder (cargo build --release --examples). Its command line
# is percore serve's options without the subcommand.
LIBRARY_TARGETS = {"percore-user": "hello"}
TESTS = {
    # name: (path, pipelined?)
    "json": ("/json", False),
    "plaintext": ("/plaintext", False),
    "plaintext-pipelined": ("/plaintext", True),
    "static-1k": ("/static/1k.bin", False),
    "static-1m": ("/static/1m.bin", False),
}
# The files of the static directory every run serves: name -> size in bytes.
STATIC_FILES = {"1k.bin": 1024, "1m.bin": 1024 * 1024}
# Targets that are not built here: the system's binary.
SYSTEM_TARGETS = {"nginx": "/usr/sbin/nginx"}


def serves(target, test):
    """Whether the target can run the test at all (only percore and nginx serve files)."""
    return not test.startswith("static-") or target in PERCORE_VARIANTS or target == "nginx"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 2
NOISY_PCT = 20  # % of the server CPU busy with something else: noted in the table


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- targets

def binary(target):
    if target in SYSTEM_TARGETS:
        return shutil.which(target) or SYSTEM_TARGETS[target]
    if target == "percore-baseline":
        return os.environ.get("PERCORE_BASELINE", os.path.join(ROOT, "target", "baseline", "percore"))
    if target in PERCORE_VARIANTS:
        return os.path.join(ROOT, "target", "release", "percore")
    if target in LIBRARY_TARGETS:
        return os.path.join(ROOT, "target", "release", "examples", LIBRARY_TARGETS[target])
    return os.path.join(PEERS_DIR, "target", "release", target)


def server_argv(target, port, server_cpu, static_dir, rundir):
    """The server's argv (without taskset). rundir: a fresh directory for this run's own files."""
    listen = f"127.0.0.1:{port}"
    if target in PERCORE_VARIANTS:
        return ([binary(target), "serve", "--listen", listen, "--cores", "1", "--cpus", str(server_cpu),
                 "--static-dir", static_dir] + PERCORE_VARIANTS[target])
    if target in LIBRARY_TARGETS:
        return [binary(target), "--listen", listen, "--cores", "1", "--cpus", str(server_cpu)]
    if target == "nginx":
        conf = os.path.join(rundir, "nginx.conf")
        os.makedirs(os.path.join(rundir, "logs"), exist_ok=True)
        with open(conf, "w") as f:
            f.write(nginx_conf(rundir, port, static_dir))
        return [binary(target), "-p", rundir + "/", "-e", os.path.join(rundir, "error.log"), "-c", conf]
    return [binary(target), "--listen", listen]


def nginx_conf(rundir, port, static_dir):
    """One master, one worker, tuned the usual way for static files; every path under rundir."""
    return f"""# generated by benches/compare.py for one run
daemon off;
master_process on;
worker_processes 1;
pid {rundir}/nginx.pid;
error_log {rundir}/error.log;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    open_file_cache max=1000 inactive=60s;
    etag on;
    client_body_temp_path {rundir}/client_body;
    proxy_temp_path {rundir}/proxy;
    fastcgi_temp_path {rundir}/fastcgi;
    uwsgi_temp_path {rundir}/uwsgi;
    scgi_temp_path {rundir}/scgi;

    server {{
        listen 127.0.0.1:{port};
        location /static/ {{
            alias {static_dir}/;
        }}
        location = /plaintext {{
            default_type text/plain;
            return 200 "Hello, World!";
        }}
        location = /json {{
            default_type application/json;
            return 200 '{{"message":"Hello, World!"}}';
        }}
    }}
}}
"""


def make_static_dir(parent):
    """The directory every static test serves: 1k.bin and 1m.bin of random bytes, readable by
    nginx's unprivileged worker (nginx run as root drops its worker to `nobody`)."""
    d = os.path.join(parent, "static")
    os.makedirs(d)
    for name, size in STATIC_FILES.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(os.urandom(size))
        os.chmod(os.path.join(d, name), 0o644)
    os.chmod(parent, 0o755)
    os.chmod(d, 0o755)
    return d


def build(targets):
    jobs = []
    if any(t in PERCORE_VARIANTS or t in LIBRARY_TARGETS for t in targets):
        jobs.append(("percore", ROOT, ["--examples"] if any(t in LIBRARY_TARGETS for t in targets) else []))
    if any(t not in PERCORE_VARIANTS and t not in SYSTEM_TARGETS and t not in LIBRARY_TARGETS for t in targets):
        jobs.append(("peers", PEERS_DIR, []))
    for name, cwd, extra in jobs:
        log(f"== building {name}: cargo build --release (in {os.path.relpath(cwd, ROOT) or '.'})")
        r = subprocess.run(["cargo", "build", "--release", "--bins"] + extra if extra else ["cargo", "build", "--release"], cwd=cwd)
        if r.returncode != 0:
            log(f"!! build of {name} failed (exit {r.returncode}); targets without a binary will be skipped")


# ---------------------------------------------------------------- sampling

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_fields(pid):
    """/proc/PID/stat from field 3 (state) on, so fields[n - 3] is field n."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    return data[data.rindex(")") + 2:].split()


def descendants(pid):
    """Every live process below pid (children, their children, ...), by ppid in /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(entry)[4 - 3])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def proc_cpu_ticks(pid):
    """utime+stime of the server in clock ticks: the process (all threads) plus every live
    descendant (nginx's workers), plus cutime+cstime, where the time of children it already
    reaped goes (so a worker that exits between two samples is not lost)."""
    f = _stat_fields(pid)
    total = sum(int(f[n - 3]) for n in (14, 15, 16, 17))
    for child in descendants(pid):
        try:
            c = _stat_fields(child)
        except OSError:
            continue  # exited (and counted in our cutime once reaped)
        total += int(c[14 - 3]) + int(c[15 - 3])
    return total


def proc_sched_ns(pid):
    """On-CPU time summed over the threads of the process and its live descendants from
    schedstat (ns), or None."""
    total, seen = 0, False
    for p in [pid] + descendants(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
                    seen = True
            except (OSError, ValueError, IndexError):
                pass
    return total if seen else None


def stat_cpu_lines():
    """{'cpu': [user, nice, system, idle, iowait, irq, softirq, steal], 'cpu0': ...}"""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu"):
                break
            parts = line.split()
            vals = [int(x) for x in parts[1:9]]
            vals += [0] * (8 - len(vals))
            out[parts[0]] = vals
    return out


def busy_ticks(before, after, key):
    """(busy, total) jiffies of one /proc/stat cpu line over an interval; busy excludes idle+iowait."""
    if key not in before or key not in after:
        return None, None
    d = [a - b for a, b in zip(after[key], before[key])]
    return sum(d) - d[3] - d[4], sum(d)


def steal_pct(before, after, key):
    if key not in before or key not in after:
        return None
    d = [a - b for a, b in zip(after[key], before[key])]
    total = sum(d)  # guest time is already inside user
    return 100.0 * d[7] / total if total > 0 else 0.0


# ---------------------------------------------------------------- server lifecycle

def wait_ready(proc, port, path, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"server exited with code {proc.returncode} before answering"
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return None
            last = f"HTTP {r.status} on {path}"
        except (OSError, http.client.HTTPException) as e:
            last = str(e)
        time.sleep(0.05)
    return f"server did not answer 200 on {path} within {timeout:.0f}s ({last})"


def stop(proc):
    if proc.poll() is not None:
        return
    kids = descendants(proc.pid)  # nginx's workers: its master stops them on SIGTERM
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log(f"   server pid {proc.pid} ignored SIGTERM for 5 s: SIGKILL")
        proc.kill()
        proc.wait()
    for k in kids:  # only if its master died without taking it along
        try:
            if int(_stat_fields(k)[4 - 3]) in (1, proc.pid):
                os.kill(k, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass


def tail(path, n=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ---------------------------------------------------------------- wrk

_UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}


def to_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text.strip())
    return float(m.group(1)) * _UNITS_US[m.group(2)] if m else None


def parse_wrk(out):
    r = {"requests_per_s": None, "total_requests": None, "p99_us": None, "p50_us": None,
         "socket_errors": {}, "non_2xx_3xx": 0}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["requests_per_s"] = float(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+),", out)
    if m:
        r["total_requests"] = int(m.group(1))
        r["wrk_elapsed_us"] = to_us(m.group(2))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        if m:
            r[key] = to_us(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["non_2xx_3xx"] = int(m.group(1))
    return r


def bench_argv(args, port, test, duration, json_path=None):
    """`percore bench` with the same shape as wrk_argv: one client core on the client CPU."""
    path, pipelined = TESTS[test]
    argv = ["taskset", "-c", str(args.client_cpu), binary("percore"), "bench",
            f"http://127.0.0.1:{port}{path}", "--cores", "1", "--cpus", str(args.client_cpu),
            "--connections", str(args.connections), "--duration", f"{duration}s"]
    if pipelined:
        argv += ["--pipeline", str(args.pipeline_depth)]
    if json_path:
        argv += ["--json", json_path]
    return argv


def parse_bench(report):
    """The fields parse_wrk gives, from `percore bench --json`, plus the client's CPU per request."""
    e = report["errors"]
    status = report["status"]
    lat = report["latency_us"]
    return {
        "requests_per_s": report["requests_per_s"],
        "total_requests": report["requests"],
        "p50_us": lat["p50"] if report["requests"] else None,
        "p99_us": lat["p99"] if report["requests"] else None,
        "socket_errors": {"connect": e["connect"], "read": e["closed"] + e["malformed"],
                          "write": 0, "timeout": e["timeout"]},
        "non_2xx_3xx": e["non_2xx"] - status["3xx"],
        "client_cpu_us_per_req": report["client_cpu_us_per_request"],
        "bench_elapsed_s": report["duration_s"],
    }


def client_run(args, port, test, duration, logdir, tag, measured=True):
    """Runs the chosen load generator; returns (argv, completed process, parsed dict or None)."""
    if args.loadgen == "percore":
        json_path = os.path.join(logdir, f"{tag}.json") if measured else None
        argv = bench_argv(args, port, test, duration, json_path)
        p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        parsed = None
        if measured and os.path.exists(json_path):
            with open(json_path) as f:
                parsed = parse_bench(json.load(f))
        # Exit 1 means no 2xx response: flagged below through the error counts.
        if p.returncode == 1 and parsed is not None:
            p = subprocess.CompletedProcess(p.args, 0, p.stdout, p.stderr)
        return argv, p, parsed
    argv = wrk_argv(args, port, test, duration, latency=measured)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    return argv, p, parse_wrk(p.stdout) if measured else None


def wrk_argv(args, port, test, duration, latency=True):
    path, pipelined = TESTS[test]
    argv = ["taskset", "-c", str(args.client_cpu), "wrk", f"-t{args.wrk_threads}",
            f"-c{args.connections}", f"-d{duration}s"]
    if latency:
        argv.append("--latency")
    url = f"http://127.0.0.1:{port}{path}"
    if pipelined:
        argv += ["-s", PIPELINE_LUA, url, "--", str(args.pipeline_depth)]
    else:
        argv.append(url)
    return argv


# ---------------------------------------------------------------- one run

def run_one(args, target, test, rnd, logdir):
    port = free_port()
    path = TESTS[test][0]
    rundir = os.path.join(logdir, f"{target}-{test}-r{rnd}")
    os.makedirs(rundir)
    argv = ["taskset", "-c", str(args.server_cpu)] + server_argv(target, port, args.server_cpu,
                                                                 args.static_dir, rundir)
    logpath = os.path.join(logdir, f"{target}-{test}-r{rnd}.log")
    run = {"round": rnd, "test": test, "target": target, "port": port,
           "server_cmd": shlex.join(argv), "ok": False, "flags": []}
    with open(logpath, "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        err = wait_ready(proc, port, path)
        if err:
            run["error"] = err
            run["server_log_tail"] = tail(logpath) + tail(os.path.join(rundir, "error.log"))
            return run
        client_run(args, port, test, WARMUP_S, logdir, f"{target}-{test}-r{rnd}-warmup", measured=False)
        if proc.poll() is not None:
            run["error"] = f"server exited with code {proc.returncode} during warm-up"
            run["server_log_tail"] = tail(logpath)
            return run
        stat0, ticks0, sched0 = stat_cpu_lines(), proc_cpu_ticks(proc.pid), proc_sched_ns(proc.pid)
        t0 = time.monotonic()
        wargv, w, parsed = client_run(args, port, test, args.duration, logdir, f"{target}-{test}-r{rnd}")
        t1 = time.monotonic()
        run["client_cmd"] = shlex.join(wargv)
        alive = proc.poll() is None
        ticks1 = proc_cpu_ticks(proc.pid) if alive else None
        sched1 = proc_sched_ns(proc.pid) if alive else None
        stat1 = stat_cpu_lines()
    except subprocess.TimeoutExpired as e:
        run["error"] = f"timed out: {e}"
        return run
    finally:
        stop(proc)
    run["wall_s"] = t1 - t0
    run["client_output"] = w.stdout + (("\n[stderr]\n" + w.stderr) if w.stderr.strip() else "")
    if w.returncode != 0:
        run["error"] = f"{args.loadgen} exited with code {w.returncode}: {w.stderr.strip()[:300]}"
        return run
    if not alive:
        run["error"] = f"server exited with code {proc.returncode} during the measured run"
        run["server_log_tail"] = tail(logpath)
        return run
    run.update(parsed or {})
    if args.loadgen == "wrk" and TESTS[test][1] and not run["p99_us"]:
        # wrk records one latency per pipelined batch and its coordinated-omission
        # correction then breaks the percentiles (they read 0.00us; wg/wrk#236).
        run["p99_note"] = "wrk printed 0: no usable percentiles when pipelining (wg/wrk#236)"
        run["p99_us"] = None
    run["steal_pct"] = steal_pct(stat0, stat1, "cpu")
    run["steal_pct_server_cpu"] = steal_pct(stat0, stat1, f"cpu{args.server_cpu}")
    run["server_cpu_s"] = (ticks1 - ticks0) / CLK_TCK
    # Load check on a shared machine: busy time of the server's CPU that was not
    # the server's own (other processes, kworkers, ksoftirqd), and how busy the
    # client's CPU was (near 100 % means wrk, not the server, set the pace).
    busy, total = busy_ticks(stat0, stat1, f"cpu{args.server_cpu}")
    if total:
        run["server_cpu_other_busy_pct"] = max(0.0, 100.0 * (busy - (ticks1 - ticks0)) / total)
        run["server_cpu_busy_pct"] = 100.0 * busy / total
    busy, total = busy_ticks(stat0, stat1, f"cpu{args.client_cpu}")
    if total:
        run["client_cpu_busy_pct"] = 100.0 * busy / total
    if sched0 is not None and sched1 is not None:
        run["server_cpu_s_schedstat"] = (sched1 - sched0) / 1e9
    n = run["total_requests"]
    if not n or run.get("requests_per_s") is None:
        run["error"] = f"could not parse the {args.loadgen} output"
        return run
    run["cpu_us_per_req"] = run["server_cpu_s"] / n * 1e6
    run["req_per_cpu_s"] = 1e6 / run["cpu_us_per_req"] if run["cpu_us_per_req"] > 0 else None
    if "server_cpu_s_schedstat" in run:
        run["cpu_us_per_req_schedstat"] = run["server_cpu_s_schedstat"] / n * 1e6
    errs = sum(run["socket_errors"].values())
    if errs:
        run["flags"].append("socket errors " + ", ".join(f"{k} {v}" for k, v in run["socket_errors"].items() if v))
    if run["non_2xx_3xx"]:
        run["flags"].append(f"non-2xx/3xx {run['non_2xx_3xx']}")
    if run["req_per_cpu_s"] is None:
        run["flags"].append("server CPU time below one clock tick")
    run["ok"] = not run["flags"]
    return run


# ---------------------------------------------------------------- summary

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, spec):
    return "—" if x is None else format(x, spec)


def fmt_lat(us):
    if us is None:
        return "—"
    return f"{us:.0f} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def summarize(runs, tests, targets):
    """Medians per test and target; percore's ratio of requests per server CPU-second to each peer."""
    summary = {}
    for test in tests:
        st = summary[test] = {}
        for target in targets:
            rs = [r for r in runs if r["test"] == test and r["target"] == target]
            good = [r for r in rs if r["ok"]]
            steals = [r["steal_pct"] for r in rs if r.get("steal_pct") is not None]
            st[target] = {
                "runs": len(rs), "good_runs": len(good),
                "failed": [f"r{r['round']}: {r.get('error') or '; '.join(r['flags'])}" for r in rs if not r["ok"]],
                "median_requests_per_s": med(r["requests_per_s"] for r in good),
                "median_p99_us": med(r["p99_us"] for r in good),
                "median_cpu_us_per_req": med(r["cpu_us_per_req"] for r in good),
                "median_req_per_cpu_s": med(r["req_per_cpu_s"] for r in good),
                "median_client_cpu_us_per_req": med(r.get("client_cpu_us_per_req") for r in good),
                "median_cpu_us_per_req_schedstat": med(r.get("cpu_us_per_req_schedstat") for r in good),
                "server_cpu_other_busy_pct_max": max((r["server_cpu_other_busy_pct"] for r in rs
                                                      if r.get("server_cpu_other_busy_pct") is not None), default=None),
                "median_server_cpu_busy_pct": med(r.get("server_cpu_busy_pct") for r in good),
                "median_client_cpu_busy_pct": med(r.get("client_cpu_busy_pct") for r in good),
                "steal_pct_min": min(steals) if steals else None,
                "steal_pct_max": max(steals) if steals else None,
            }
        pc = st.get("percore")
        if pc:
            for target in targets:
                if target == "percore":
                    continue
                s = st[target]
                a, b = pc["median_req_per_cpu_s"], s["median_req_per_cpu_s"]
                s["percore_ratio_of_medians"] = a / b if a and b else None
                per_round = []
                for rnd in sorted({r["round"] for r in runs}):
                    p = [r for r in runs if r["test"] == test and r["target"] == "percore" and r["round"] == rnd and r["ok"]]
                    q = [r for r in runs if r["test"] == test and r["target"] == target and r["round"] == rnd and r["ok"]]
                    if p and q and p[0]["req_per_cpu_s"] and q[0]["req_per_cpu_s"]:
                        per_round.append(p[0]["req_per_cpu_s"] / q[0]["req_per_cpu_s"])
                s["percore_ratio_per_round"] = per_round
    return summary


def table(test, st, targets, runs):
    pipelined = TESTS[test][1]
    lines = [f"### {test}", "",
             "| target | req/s | p99 | server CPU µs/req | req per CPU-s | steal % | percore ÷ target (req per CPU-s) | runs |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for target in targets:
        s = st[target]
        if not s["runs"] and not serves(target, test):
            lines.append(f"| {target} | — | — | — | — | — | — | not run: serves no files |")
            continue
        steal = "—" if s["steal_pct_min"] is None else f"{s['steal_pct_min']:.1f}–{s['steal_pct_max']:.1f}"
        if target == "percore":
            ratio = "1.00 (itself)" if s["median_req_per_cpu_s"] else "—"
        elif "percore_ratio_of_medians" in s:
            rr = s["percore_ratio_per_round"]
            r0 = s["percore_ratio_of_medians"]
            ratio = "— (no percore or peer median)" if r0 is None else f"{r0:.2f}×"
            if rr:
                ratio += f" (rounds {min(rr):.2f}–{max(rr):.2f})"
        else:
            ratio = "— (percore not run)"
        nruns = f"{s['good_runs']}/{s['runs']} ok"
        noisy = [r for r in runs if r["test"] == test and r["target"] == target
                 and (r.get("server_cpu_other_busy_pct") or 0) >= NOISY_PCT]
        if noisy:
            nruns += f" (noisy: other load ≥{NOISY_PCT}% on the server CPU in {len(noisy)})"
        if s["failed"]:
            nruns += " ⚠ " + "; ".join(s["failed"])
        lines.append(f"| {target} | {fmt(s['median_requests_per_s'], ',.0f')} | {fmt_lat(s['median_p99_us'])} | "
                     f"{fmt(s['median_cpu_us_per_req'], '.2f')} | {fmt(s['median_req_per_cpu_s'], ',.0f')} | "
                     f"{steal} | {ratio} | {nruns} |")
    load = ", ".join(f"{t} {st[t]['median_server_cpu_busy_pct']:.0f}/{st[t]['median_client_cpu_busy_pct']:.0f}"
                     f" (other {st[t]['server_cpu_other_busy_pct_max']:.0f})"
                     for t in targets if st[t]["median_server_cpu_busy_pct"] is not None
                     and st[t]["median_client_cpu_busy_pct"] is not None
                     and st[t]["server_cpu_other_busy_pct_max"] is not None)
    if load:
        lines += ["", f"CPU busy % server/client (max % of the server CPU busy with anything else): {load}."]
    client_cpu = ", ".join(f"{t} {st[t]['median_client_cpu_us_per_req']:.2f}" for t in targets
                           if st[t].get("median_client_cpu_us_per_req") is not None)
    if client_cpu:
        lines += ["", f"Client (percore bench) CPU µs per request: {client_cpu}."]
    if pipelined and not client_cpu:
        lines += ["", "p99 when pipelining is indicative only: wrk records one latency per batch and its "
                  "percentiles often read 0 (wg/wrk#236); — means wrk printed 0."]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10, help="seconds per measured wrk run")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--wrk-threads", type=int, default=1)
    ap.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    ap.add_argument("--tests", default="json,plaintext-pipelined", help=f"from {','.join(TESTS)}")
    ap.add_argument("--pipeline-depth", type=int, default=16)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(BENCHES, "results", "latest.json"))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--loadgen", choices=["wrk", "percore"], default="wrk",
                    help="the client: wrk, or percore's own `percore bench` (one client core)")
    args = ap.parse_args()

    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    tests = [t.strip() for t in args.tests.split(",") if t.strip()]
    bad = [t for t in tests if t not in TESTS]
    if bad:
        ap.error(f"unknown test(s) {bad}; known: {list(TESTS)}")
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        log(f"note: {unknown} are not known targets; they will be run as peers from benches/peers/target/release")
    if args.loadgen == "percore" and "percore" not in targets and not args.no_build:
        build(["percore"])  # the client binary
    for tool in (["wrk"] if args.loadgen == "wrk" else []) + ["taskset"]:
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            sys.exit(f"{tool} not found (apt-get install -y {'wrk' if tool == 'wrk' else 'util-linux'})")

    if not args.no_build:
        build(targets)
    present = []
    for t in targets:
        if os.access(binary(t), os.X_OK):
            present.append(t)
        else:
            log(f"!! skipping {t}: binary {os.path.relpath(binary(t), ROOT)} is missing")
    if not present:
        sys.exit("no target binary found; nothing to run")

    cmdline = shlex.join([sys.executable] + sys.argv)
    meta = {
        "command": cmdline,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "uname_r": platform.release(),
        "nproc": os.cpu_count(),
        "clk_tck": CLK_TCK,
        "git_rev": subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                  capture_output=True, text=True).stdout.strip() or None,
        "wrk": (subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines() or [""])[0]
               if args.loadgen == "wrk" else None,
        "loadgen": args.loadgen,
        "settings": {k: v for k, v in vars(args).items()},
        "targets_run": present,
        "targets_skipped": [t for t in targets if t not in present],
        "warmup_s": WARMUP_S,
        "static_files": STATIC_FILES,
        "nginx": (subprocess.run([binary("nginx"), "-v"], capture_output=True, text=True).stderr.strip()
                  if "nginx" in present else None),
    }
    est = args.rounds * len(tests) * len(present) * (args.duration + WARMUP_S + 1)
    log(f"== {args.rounds} round(s) × {len(tests)} test(s) × {len(present)} target(s); ~{est // 60}m{est % 60:02d}s")

    runs = []
    with tempfile.TemporaryDirectory(prefix="percore-compare-") as logdir, \
            tempfile.TemporaryDirectory(prefix="percore-static-") as static_parent:
        args.static_dir = make_static_dir(static_parent)
        for rnd in range(1, args.rounds + 1):
            for test in tests:
                k = (rnd - 1) % len(present)
                for target in present[k:] + present[:k]:  # rotate the start each round
                    if not serves(target, test):
                        if rnd == 1:
                            log(f"-- {test}: {target} serves no files; left out")
                        continue
                    log(f"-- round {rnd} {test:<20} {target:<14}")
                    r = run_one(args, target, test, rnd, logdir)
                    if r.get("error"):
                        log(f"   FAILED: {r['error']}")
                        if r.get("server_log_tail"):
                            log("   server log:\n" + r["server_log_tail"])
                    else:
                        log(f"   {r['requests_per_s']:,.0f} req/s  p99 {fmt_lat(r['p99_us'])}  "
                            f"{fmt(r['cpu_us_per_req'], '.2f')} CPU-µs/req  steal {r['steal_pct']:.1f}%  "
                            f"other load on server CPU {fmt(r.get('server_cpu_other_busy_pct'), '.0f')}%"
                            + (f"  ⚠ {'; '.join(r['flags'])}" if r["flags"] else ""))
                    runs.append(r)

    summary = summarize(runs, tests, present)
    print(f"Command: `{cmdline}`")
    print(f"Date: {meta['date']}  ·  uname -r: {meta['uname_r']}  ·  nproc: {meta['nproc']}  ·  "
          f"git: {meta['git_rev']}  ·  {meta['wrk'] or 'client: percore bench'}")
    client = (f"wrk -t{args.wrk_threads}" if args.loadgen == "wrk" else "percore bench --cores 1")
    print(f"Server on CPU {args.server_cpu}, {client} -c{args.connections} on CPU "
          f"{args.client_cpu}, {args.duration}s runs after {WARMUP_S}s warm-up, {args.rounds} round(s); "
          f"medians over the runs without errors. Pipelined depth {args.pipeline_depth}.")
    if meta["targets_skipped"]:
        print(f"Skipped (binary missing): {', '.join(meta['targets_skipped'])}")
    for test in tests:
        print()
        print(table(test, summary[test], present, runs))
    print()

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs}, f, indent=2)
    print(f"Raw runs and summary: {os.path.relpath(os.path.abspath(args.out), os.getcwd())}")


if __name__ == "__main__":
    main()

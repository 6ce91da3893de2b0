#!/usr/bin/env python3
"""Soak: mixed traffic at a fixed open-loop rate for SOAK_MINUTES, reported per minute.

Usage (from the repository root; only under the shared benchmark lock):

    cargo build --release
    SOAK_MINUTES=30 flock /tmp/percore-bench.lock python3 benches/soak.py
        [--minutes N] [--server-cpu 0] [--client-cpu 1] [--out benches/results/soak.json]

One `percore serve --cores 1` with --data-dir, --static-dir and webhook jobs,
pinned to --server-cpu with taskset (its store, job manager and worker
threads too), finished jobs kept --job-retention (1m here: percore's 24h
default keeps every job of the run in memory, a growth by design that
would hide a leak). The load is six `percore bench` processes at once, each open
loop (`--rate`, latency counted from each request's intended send time),
pinned to --client-cpu, one traffic class each:

  read    GET /v1/items/r{0..}   (one key per process; a cache hit after the first)
  write   PUT /v1/items/w{minute} (durable: group-committed, fdatasync per batch)
  scan    GET /v1/items?limit=20&after=r100
  job     POST /v1/jobs/webhook  (delivered to a receiver this script runs on loopback)
  static  GET /static/page.html  (4 KiB, from memory)
  health  GET /healthz

Each minute is one 60 s run of all six, back to back. After each minute the
script reads the server's resident memory (VmRSS) and open descriptors
(/proc/PID/fd) and prints one row: requests, errors (timeouts, resets,
non-2xx: the target is 0), requests the load generator had due but never
sent (it fell behind, or the window closed on them: counted apart), p99 of
each class, RSS and descriptors. At the
end it waits (up to 120 s) for the job queue to drain and checks that jobs
accepted (202s counted by the load generator) = jobs finished (succeeded +
dead in /metrics), give or take submissions whose answer the client gave
up on (a timeout: the server may have accepted them), and that the
receiver saw each finished job (at least once).
Exit status 1 if any error was counted or the jobs do not add up.

Rates per class are flags (--read-rate ...); the defaults total 6,100
requests/s, well below what one core serves, so the run measures
steadiness, not capacity.
"""

import argparse
import http.client
import http.server
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "percore")
CLASSES = ["read", "write", "scan", "job", "static", "health"]


class Receiver(http.server.BaseHTTPRequestHandler):
    """The webhook receiver: counts each delivery by its job id, answers 200."""

    protocol_version = "HTTP/1.1"
    seen = {}
    lock = threading.Lock()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        job = self.headers.get("X-Percore-Job", "?")
        with Receiver.lock:
            Receiver.seen[job] = Receiver.seen.get(job, 0) + 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def call(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def metrics(port):
    _, text = call(port, "GET", "/metrics")
    values = {}
    for line in text.decode().splitlines():
        m = re.match(r"^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$", line)
        if m:
            values[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return values


def proc_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def proc_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def bench_argv(args, port, cls, minute, json_path):
    doc = json.dumps({"minute": minute, "text": "x" * 200})
    job = json.dumps({"url": f"http://127.0.0.1:{args.receiver_port}/hook",
                      "payload": {"minute": minute, "order": 42}})
    base = f"http://127.0.0.1:{port}"
    spec = {
        "read": (args.read_rate, 16, "GET", f"/v1/items/r{minute % 100}", None),
        "write": (args.write_rate, 16, "PUT", f"/v1/items/w{minute}", doc),
        "scan": (args.scan_rate, 8, "GET", "/v1/items?limit=20&after=r100", None),
        "job": (args.job_rate, 16, "POST", "/v1/jobs/webhook", job),
        "static": (args.static_rate, 8, "GET", "/static/page.html", None),
        "health": (args.health_rate, 4, "GET", "/healthz", None),
    }[cls]
    rate, conns, method, path, body = spec
    argv = ["taskset", "-c", str(args.client_cpu), BINARY, "bench", "--cores", "1",
            "--cpus", str(args.client_cpu), "-c", str(conns), "-R", str(rate),
            "-d", f"{args.minute_seconds}s", "-m", method, "--json", json_path,
            "--label", cls]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "--body", body]
    return argv + [base + path]


def run_minute(args, port, minute, logdir):
    procs = {}
    for cls in CLASSES:
        path = os.path.join(logdir, f"m{minute:03d}-{cls}.json")
        procs[cls] = (subprocess.Popen(bench_argv(args, port, cls, minute, path),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True), path)
    out = {}
    for cls, (proc, path) in procs.items():
        _, err = proc.communicate()
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, ValueError):
            sys.exit(f"bench for {cls} wrote no report (exit {proc.returncode}): {err.strip()}")
        status = report["status"]
        out[cls] = {
            "requests": report["requests"],
            "ok": status["2xx"],
            "non_2xx": report["requests"] - status["2xx"],
            "errors": report["errors"]["total"],
            "unsent": report["unsent"],
            "p99_us": report["latency_us"]["p99"],
            "max_us": report["latency_us"]["max"],
        }
    return out


def prepare(port):
    for i in range(200):
        status, body = call(port, "PUT", f"/v1/items/r{i}", json.dumps({"n": i, "text": "r" * 200}))
        if status not in (200, 201):
            sys.exit(f"seeding documents: HTTP {status} {body[:200]!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=int, default=int(os.environ.get("SOAK_MINUTES", "30")))
    parser.add_argument("--minute-seconds", type=int, default=60,
                        help="length of one reporting interval (60; shorter only to try the script)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--read-rate", type=int, default=3000)
    parser.add_argument("--write-rate", type=int, default=500)
    parser.add_argument("--scan-rate", type=int, default=300)
    parser.add_argument("--job-rate", type=int, default=200)
    parser.add_argument("--static-rate", type=int, default=2000)
    parser.add_argument("--health-rate", type=int, default=100)
    parser.add_argument("--job-retention", default="1m",
                        help="the server's --job-retention: finished jobs are kept in memory this "
                             "long (24h by default in percore, which at 200 jobs/s grows the RSS "
                             "~30 MiB a minute by design and hides a leak)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "soak.json"))
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit("build it first: cargo build --release")
    os.sched_setaffinity(0, {args.client_cpu})

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    args.receiver_port = receiver.server_address[1]
    threading.Thread(target=receiver.serve_forever, daemon=True).start()

    result = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "kernel": os.uname().release, "cpus": os.cpu_count(),
              "rates": {c: getattr(args, f"{c}_rate") for c in CLASSES},
              "job_retention": args.job_retention,
              "minutes": []}
    failed = False
    with tempfile.TemporaryDirectory(prefix="percore-soak-") as tmp:
        static = os.path.join(tmp, "static")
        os.makedirs(static)
        with open(os.path.join(static, "page.html"), "w") as f:
            f.write("<p>soak</p>\n" * 372)
        port = cmp.free_port()
        stderr = open(os.path.join(tmp, "server.log"), "w")
        argv = ["taskset", "-c", str(args.server_cpu), BINARY, "serve", "--cores", "1",
                "--cpus", str(args.server_cpu), "--listen", f"127.0.0.1:{port}",
                "--data-dir", os.path.join(tmp, "data"), "--static-dir", static,
                "--webhook-allow", "127.0.0.1/32", "--workers", "2",
                "--job-retention", args.job_retention]
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            error = cmp.wait_ready(server, port, "/healthz")
            if error:
                sys.exit(error)
            prepare(port)
            print(f"soak: {args.minutes} x {args.minute_seconds} s, rates/s {result['rates']}, "
                  f"--job-retention {args.job_retention}, "
                  f"server pid {server.pid} on CPU {args.server_cpu}, load on CPU {args.client_cpu}")
            print("| minute | requests | errors | unsent | p99 read | write | scan | job | static "
                  "| health | RSS MiB | fds |")
            print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for minute in range(1, args.minutes + 1):
                classes = run_minute(args, port, minute, tmp)
                if server.poll() is not None:
                    sys.exit(f"the server exited (code {server.returncode}) in minute {minute}")
                row = {"minute": minute, "classes": classes,
                       "requests": sum(c["requests"] for c in classes.values()),
                       "errors": sum(c["errors"] + c["non_2xx"] for c in classes.values()),
                       "unsent": sum(c["unsent"] for c in classes.values()),
                       "rss_kib": proc_rss_kib(server.pid), "fds": proc_fds(server.pid)}
                result["minutes"].append(row)
                failed |= row["errors"] > 0
                p99 = " | ".join(f"{classes[c]['p99_us'] / 1000:.2f} ms" for c in CLASSES)
                print(f"| {minute} | {row['requests']} | {row['errors']} | {row['unsent']} | {p99} "
                      f"| {row['rss_kib'] / 1024:.1f} | {row['fds']} |", flush=True)

            accepted = sum(m["classes"]["job"]["ok"] for m in result["minutes"])
            deadline = time.monotonic() + 120
            while True:
                m = metrics(port)
                if m.get("percore_jobs_waiting", 1) == 0 and m.get("percore_jobs_running", 1) == 0:
                    break
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            finished = m.get("percore_jobs_succeeded_total", 0) + m.get("percore_jobs_dead_total", 0)
            with Receiver.lock:
                delivered = len(Receiver.seen)
                redelivered = sum(n - 1 for n in Receiver.seen.values())
            result["jobs"] = {"accepted": accepted, "finished": int(finished),
                              "dead": int(m.get("percore_jobs_dead_total", 0)),
                              "waiting": int(m.get("percore_jobs_waiting", 0)),
                              "delivered": delivered, "redelivered": redelivered}
            rows = result["minutes"]
            result["summary"] = {
                "requests": sum(r["requests"] for r in rows),
                "errors": sum(r["errors"] for r in rows),
                "worst_p99_us": {c: max(r["classes"][c]["p99_us"] for r in rows) for c in CLASSES},
                "rss_kib_first_last": [rows[0]["rss_kib"], rows[-1]["rss_kib"]],
                "fds_first_last": [rows[0]["fds"], rows[-1]["fds"]],
            }
            j = result["jobs"]
            print(f"jobs: accepted {j['accepted']}, finished {j['finished']} "
                  f"(dead {j['dead']}, still waiting {j['waiting']}), receiver saw {j['delivered']} "
                  f"jobs ({j['redelivered']} delivered more than once)")
            s = result["summary"]
            print(f"total: {s['requests']} requests, {s['errors']} errors; RSS "
                  f"{s['rss_kib_first_last'][0] / 1024:.1f} -> {s['rss_kib_first_last'][1] / 1024:.1f} MiB, "
                  f"fds {s['fds_first_last'][0]} -> {s['fds_first_last'][1]}")
            # A submission the client gave up on (a timeout) may or may not
            # have been accepted: finished lies between the 202s seen and
            # those plus the job timeouts, and every finished job was delivered.
            timed_out = sum(m["classes"]["job"]["errors"] for m in result["minutes"])
            j["timed_out"] = timed_out
            print(f"jobs whose answer the client gave up on: {timed_out}; "
                  f"accepted by the server all the same: {j['finished'] - j['accepted']}")
            failed |= not (j["accepted"] <= j["finished"] <= j["accepted"] + timed_out)
            failed |= j["delivered"] != j["finished"]
        finally:
            cmp.stop(server)
            stderr.close()
            with open(os.path.join(tmp, "server.log")) as f:
                result["server_log"] = f.read().splitlines()[-20:]
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"written {os.path.relpath(args.out, ROOT)}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

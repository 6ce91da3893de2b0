#!/usr/bin/env python3
"""What authentication costs: /json open, behind an API key, and behind a JWT, in one run.

Usage (from the repository root; run it alone on the machine):

    cargo build --release
    flock /tmp/percore-bench.lock python3 benches/auth.py [--rounds 3] [--duration 10]
        [--connections 64] [--server-cpu 0] [--client-cpu 1] [--out benches/results/auth.json]

Variants (the same release binary, `percore serve --cores 1`):
  open      /json with no authentication configured, no credential sent
  api-key   --auth-keys with one key; a rule makes /json need the `read` scope;
            wrk sends `X-API-Key` on every request
  jwt       --jwt-hs256-secret-file; the same rule; wrk sends `Authorization:
            Bearer` with an HS256 token holding `read`

For each round, each variant in turn (rounds interleaved, the first variant
rotating): start the server pinned to --server-cpu, warm up 2 s, then
`wrk -t1 -cN -dDURs --latency` pinned to --client-cpu, sampling the server's
utime+stime and /proc/stat's steal around the run. Prints medians: requests/s,
p99, server CPU µs per request, and each variant's server CPU per request
against `open` (the issue's target: api-key at most 1.10x).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "percore")
KEY = "bench-key-5f1e9a0c2b7d4e6f8a1c3e5d7b9f0a2c"
SECRET = "an HS256 secret of at least thirty-two bytes, for the bench"
VARIANTS = ["open", "api-key", "jwt"]


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token():
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64url(json.dumps({"sub": "bench", "exp": int(time.time()) + 86400,
                                "scope": "read"}).encode())
    signing = f"{header}.{claims}".encode()
    signature = b64url(hmac.new(SECRET.encode(), signing, hashlib.sha256).digest())
    return f"{header}.{claims}.{signature}"


def files(tmp):
    keys = os.path.join(tmp, "keys.toml")
    with open(keys, "w") as f:
        digest = hashlib.sha256(KEY.encode()).hexdigest()
        f.write(f'[[keys]]\nname = "bench"\nsha256 = "{digest}"\nscopes = ["read"]\n')
    secret = os.path.join(tmp, "jwt.secret")
    with open(secret, "w") as f:
        f.write(SECRET)
    config = os.path.join(tmp, "auth.toml")
    with open(config, "w") as f:
        f.write('[[auth.rules]]\nmethod = "GET"\npath = "/json"\nrequire = "read"\n')
    return keys, secret, config


def server_argv(variant, port, cpu, paths):
    keys, secret, config = paths
    argv = ["taskset", "-c", str(cpu), BINARY, "serve", "--cores", "1", "--cpus", str(cpu),
            "--listen", f"127.0.0.1:{port}"]
    if variant == "api-key":
        argv += ["--config", config, "--auth-keys", keys]
    elif variant == "jwt":
        argv += ["--config", config, "--jwt-hs256-secret-file", secret]
    return argv


def wrk_argv(args, port, variant, duration, latency=True):
    argv = ["taskset", "-c", str(args.client_cpu), "wrk", "-t1", f"-c{args.connections}",
            f"-d{duration}s"]
    if latency:
        argv.append("--latency")
    if variant == "api-key":
        argv += ["-H", f"X-API-Key: {KEY}"]
    elif variant == "jwt":
        argv += ["-H", f"Authorization: Bearer {hs256_token()}"]
    return argv + [f"http://127.0.0.1:{port}/json"]


def run_one(args, variant, rnd, paths):
    port = cmp.free_port()
    proc = subprocess.Popen(server_argv(variant, port, args.server_cpu, paths),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = {"variant": variant, "round": rnd}
    try:
        error = cmp.wait_ready(proc, port, "/healthz")
        if error:
            run["error"] = error
            return run
        subprocess.run(wrk_argv(args, port, variant, 2, latency=False), capture_output=True)
        stat0, cpu0 = cmp.stat_cpu_lines(), cmp.proc_cpu_ticks(proc.pid)
        done = subprocess.run(wrk_argv(args, port, variant, args.duration), capture_output=True,
                              text=True)
        stat1, cpu1 = cmp.stat_cpu_lines(), cmp.proc_cpu_ticks(proc.pid)
        parsed = cmp.parse_wrk(done.stdout)
        run.update(parsed)
        requests = parsed["total_requests"] or 0
        if requests:
            run["server_cpu_us_per_req"] = (cpu1 - cpu0) * (1e6 / os.sysconf("SC_CLK_TCK")) / requests
        run["steal_pct"] = cmp.steal_pct(stat0, stat1, "cpu")
        errors = sum(parsed["socket_errors"].values()) + parsed["non_2xx_3xx"]
        if errors:
            run["flagged"] = f"{errors} errors or non-2xx answers"
    finally:
        cmp.stop(proc)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(ROOT, "benches", "results", "auth.json"))
    args = parser.parse_args()
    if not os.path.exists(BINARY):
        sys.exit("build it first: cargo build --release")
    runs = []
    with tempfile.TemporaryDirectory(prefix="percore-auth-bench-") as tmp:
        paths = files(tmp)
        for rnd in range(args.rounds):
            order = VARIANTS[rnd % len(VARIANTS):] + VARIANTS[:rnd % len(VARIANTS)]
            for variant in order:
                run = run_one(args, variant, rnd, paths)
                runs.append(run)
                print(f"round {rnd} {variant}: {run.get('requests_per_s', 0):,.0f} req/s, "
                      f"{run.get('server_cpu_us_per_req', 0):.2f} µs/req "
                      f"{run.get('error') or run.get('flagged') or ''}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(runs, f, indent=1)
    print("\n| variant | req/s | p99 | server CPU µs/req | ÷ open | steal % |")
    print("|---|---:|---:|---:|---:|---:|")
    medians = {}
    for variant in VARIANTS:
        good = [r for r in runs if r["variant"] == variant and "error" not in r
                and "flagged" not in r and r.get("server_cpu_us_per_req")]
        if not good:
            print(f"| {variant} | — | — | — | — | — |")
            continue
        medians[variant] = {k: statistics.median(r[k] for r in good)
                            for k in ("requests_per_s", "p99_us", "server_cpu_us_per_req",
                                      "steal_pct")}
    for variant, m in medians.items():
        ratio = (m["server_cpu_us_per_req"] / medians["open"]["server_cpu_us_per_req"]
                 if "open" in medians else float("nan"))
        print(f"| {variant} | {m['requests_per_s']:,.0f} | {m['p99_us'] / 1e3:.2f} ms | "
              f"{m['server_cpu_us_per_req']:.2f} | {ratio:.2f}x | {m['steal_pct']:.1f} |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Requests/s and p99 through HAProxy (deploy/haproxy.cfg) with one, two and three percore nodes on loopback, and the balancer's own CPU per request.

    flock /tmp/percore-bench.lock benches/multinode.py [--duration 10s] [--path /json]

Every node has one io core; nodes, HAProxy (one thread) and the load
generator share this machine's CPUs, so the numbers measure sharing as much
as scaling; the CPU per request of HAProxy and of the nodes is what carries
over to a machine of their own. A run straight to one node is the baseline.
Needs target/release/percore (cargo build --release) and haproxy.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PERCORE = os.path.join(ROOT, "target", "release", "percore")
CONFIG = os.path.join(ROOT, "deploy", "haproxy.cfg")
TICK = os.sysconf("SC_CLK_TCK")
LB = "127.0.0.1:18100"
NODES = ["127.0.0.1:18101", "127.0.0.1:18102", "127.0.0.1:18103"]


def cpu_seconds(pid):
    """utime + stime of a process and all its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def wait_ready(url, within=30):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    sys.exit(f"{url} never answered")


def bench(url, duration, connections, cpus, out):
    subprocess.run(
        [PERCORE, "bench", "-c", str(connections), "-d", duration, "--cores", "1",
         "--cpus", cpus, "--json", out, url],
        check=True, stdout=subprocess.DEVNULL,
    )
    with open(out) as f:
        return json.load(f)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", default="10s")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--path", default="/json")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="percore-multinode-bench-")
    rows = []
    for count in (0, 1, 2, 3):
        # count 0: straight to one node, no balancer.
        nodes = []
        for n, addr in enumerate(NODES[: max(count, 1)]):
            log = open(os.path.join(tmp, f"node{n}.log"), "w")
            nodes.append(subprocess.Popen(
                [PERCORE, "serve", "--listen", addr, "--cores", "1", "--cpus", str(n % 2),
                 "--steer", "off"],
                stdout=log, stderr=subprocess.STDOUT,
            ))
        haproxy = None
        try:
            for addr in NODES[: max(count, 1)]:
                wait_ready(f"http://{addr}/readyz")
            if count == 0:
                url = f"http://{NODES[0]}{args.path}"
            else:
                env = dict(os.environ, PERCORE_LB_BIND=LB)
                for n in range(3):
                    # Nodes not started point at a closed port: HAProxy marks them down.
                    env[f"PERCORE_NODE{n + 1}"] = NODES[n] if n < count else "127.0.0.1:9"
                haproxy = subprocess.Popen(
                    ["taskset", "-c", "0", "haproxy", "-db", "-f", CONFIG,
                     "-f", os.path.join(tmp, "threads.cfg")],
                    env=env, stdout=open(os.path.join(tmp, "haproxy.log"), "w"),
                    stderr=subprocess.STDOUT,
                ) if write_threads(tmp) else None
                url = f"http://{LB}{args.path}"
                wait_ready(f"http://{LB}/readyz")
                # Down servers leave the rotation after `fall` checks.
                time.sleep(3)
            bench(url, "2s", args.connections, "1", os.path.join(tmp, "warm.json"))
            pids = [p.pid for p in nodes] + ([haproxy.pid] if haproxy else [])
            before = {pid: cpu_seconds(pid) for pid in pids}
            started = time.time()
            report = bench(url, args.duration, args.connections, "1",
                           os.path.join(tmp, f"run{count}.json"))
            wall = time.time() - started
            spent = {pid: cpu_seconds(pid) - before[pid] for pid in pids}
            requests = report["requests"]
            node_cpu = sum(spent[p.pid] for p in nodes)
            lb_cpu = spent[haproxy.pid] if haproxy else 0.0
            rows.append({
                "nodes": count,
                "requests_per_s": report["requests_per_s"],
                "p99_us": report["latency_us"]["p99"] if isinstance(report["latency_us"], dict) else None,
                "errors": report["errors"],
                "node_cpu_us_per_request": node_cpu / requests * 1e6,
                "haproxy_cpu_us_per_request": lb_cpu / requests * 1e6,
                "haproxy_cpu_share": lb_cpu / wall,
                "client_cpu_us_per_request": report["client_cpu_us_per_request"],
            })
        finally:
            if haproxy:
                haproxy.kill()
                haproxy.wait()
            for p in nodes:
                p.terminate()
                p.wait()
    print(f"{'setup':<22} {'req/s':>10} {'p99':>9} {'node CPU/req':>13} {'HAProxy CPU/req':>16} {'HAProxy CPU':>12} {'errors':>7}")
    for row in rows:
        setup = "1 node, no balancer" if row["nodes"] == 0 else f"HAProxy + {row['nodes']} node{'s' if row['nodes'] > 1 else ''}"
        p99 = f"{row['p99_us'] / 1000:.2f} ms" if row["p99_us"] is not None else "-"
        errors = row["errors"]["total"]
        print(f"{setup:<22} {row['requests_per_s']:>10,.0f} {p99:>9} {row['node_cpu_us_per_request']:>10.2f} µs "
              f"{row['haproxy_cpu_us_per_request']:>13.2f} µs {row['haproxy_cpu_share'] * 100:>10.0f} % {errors:>7}")
    print(json.dumps(rows))


def write_threads(tmp):
    """One HAProxy thread, pinned with taskset: the balancer's share is then one CPU at most."""
    with open(os.path.join(tmp, "threads.cfg"), "w") as f:
        f.write("global\n    nbthread 1\n")
    return True


if __name__ == "__main__":
    main()

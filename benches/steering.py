#!/usr/bin/env python3
"""percore with and without reuseport CPU steering, side by side, interleaved.

    flock /tmp/percore-bench.lock python3 benches/steering.py [--rounds 3] [--duration 10] [--cpus 0-1]

The server runs one io core on each of --cpus (`--steer on`, then `--steer
off`, alternating each round), and `percore bench` runs one client core on
each of the same CPUs: on loopback the CPU that takes a connection's packets
is the sending client's, so this is the only way two CPUs can show
steering, and it is not a NIC (see the README's *Tuning a host*). Reports,
per run: requests/s, p99, server CPU per request (utime+stime of the server
over the run / requests), the machine's CPU per request (every task plus
interrupts and softirqs), connections accepted off their CPU
(percore_accepted_off_cpu_total), steal, interrupt and softirq time (not
charged to any task with IRQ time accounting), and task time of neither
server nor client (other work on the machine); and the on/off ratio per round.
Needs `cargo build --release` first.
"""

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PERCORE = os.path.join(ROOT, "target", "release", "percore")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def steal():
    """(steal, irq+softirq, busy in tasks, all) ticks over every CPU, from /proc/stat.

    With IRQ time accounting, interrupt and softirq time (most of loopback's
    TCP receive work) is not charged to the task it interrupted.
    """
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    v = [int(x) for x in cpu]
    user, nice, system, idle, iowait, irq, softirq, stolen = v[:8]
    return stolen, irq + softirq, user + nice + system, sum(v[:8])


def children_ticks():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (usage.ru_utime + usage.ru_stime) * TICK


def metric(url, name):
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(rf"^{name}{{[^}}]*}} (\S+)$", text, re.M))


def run(steer, args, port):
    server = subprocess.Popen(
        [PERCORE, "serve", "--listen", f"127.0.0.1:{port}", "--cpus", args.cpus, "--steer", steer],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = [server.stdout.readline() for _ in range(3)]
        if "listening" not in lines[0]:
            sys.exit(f"percore did not start: {lines}")
        base = f"http://127.0.0.1:{port}"
        off0, acc0 = metric(base + "/metrics", "percore_accepted_off_cpu_total"), metric(base + "/metrics", "percore_connections_accepted_total")
        t0, (s0, q0, b0, a0), c0 = cpu_ticks(server.pid), steal(), children_ticks()
        out = f"/tmp/percore-steering-{steer}.json"
        subprocess.run(
            [PERCORE, "bench", base + "/json", "--cpus", args.cpus, "--connections", str(args.connections),
             "--duration", f"{args.duration}s", "--json", out],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        t1, (s1, q1, b1, a1), c1 = cpu_ticks(server.pid), steal(), children_ticks()
        off1, acc1 = metric(base + "/metrics", "percore_accepted_off_cpu_total"), metric(base + "/metrics", "percore_connections_accepted_total")
        report = json.load(open(out))
        requests = report["requests"]
        return {
            "steer": steer,
            "rps": report["requests_per_s"],
            "p99_us": report["latency_us"]["p99"],
            "server_cpu_us_per_req": (t1 - t0) / TICK * 1e6 / requests,
            "client_cpu_us_per_req": report["client_cpu_us_per_request"],
            "accepted": int(acc1 - acc0 - 1),  # less the first scrape
            "off_cpu": int(off1 - off0),
            "steal_pct": 100 * (s1 - s0) / max(1, a1 - a0),
            "irq_pct": 100 * (q1 - q0) / max(1, a1 - a0),
            # Everything the machine spent per request: server, client, interrupts, softirqs (and other work).
            "machine_cpu_us_per_req": ((b1 - b0) + (q1 - q0)) / TICK * 1e6 / requests,
            # Task time of neither the server nor the load generator: other work on the machine.
            "other_pct": 100 * max(0, (b1 - b0) - (t1 - t0) - (c1 - c0)) / max(1, a1 - a0),
            "steering_line": lines[2].strip(),
        }
    finally:
        server.terminate()
        server.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--cpus", default="0-1")
    parser.add_argument("--port", type=int, default=18383)
    parser.add_argument("--json", default=os.path.join(ROOT, "benches", "results", "steering.json"))
    args = parser.parse_args()
    runs = []
    for r in range(args.rounds):
        pair = {}
        for steer in (("on", "off") if r % 2 == 0 else ("off", "on")):
            result = run(steer, args, args.port)
            result["round"] = r + 1
            runs.append(result)
            pair[steer] = result
            print(
                f"round {r + 1} steer {steer:>3}: {result['rps']:>9,.0f} req/s  p99 {result['p99_us']:>5.0f} us  "
                f"server {result['server_cpu_us_per_req']:.2f} CPU-us/req  client {result['client_cpu_us_per_req']:.2f}  machine {result['machine_cpu_us_per_req']:.2f}  "
                f"off-CPU {result['off_cpu']}/{result['accepted']} accepted  steal {result['steal_pct']:.1f}%  irq+softirq {result['irq_pct']:.0f}%  other {result['other_pct']:.0f}%",
                flush=True,
            )
            time.sleep(0.5)
        on, off = pair["on"], pair["off"]
        print(
            f"round {r + 1} on/off: req/s {on['rps'] / off['rps']:.3f}x, "
            f"server CPU per request {off['server_cpu_us_per_req'] / on['server_cpu_us_per_req']:.3f}x and machine CPU per request "
            f"{off['machine_cpu_us_per_req'] / on['machine_cpu_us_per_req']:.3f}x less with steering, p99 {off['p99_us'] / on['p99_us']:.1f}x lower",
            flush=True,
        )
    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump({"args": vars(args), "kernel": os.uname().release, "runs": runs}, f, indent=1)
    print(f"raw runs in {args.json}")


if __name__ == "__main__":
    main()

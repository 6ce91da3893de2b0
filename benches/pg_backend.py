#!/usr/bin/env python3
"""What PostgreSQL's backend does per query under percore and under xitca-pg: counted in the process.

Usage (from the repository root, after `benches/pg.py` has made its database once, the
binaries built as for it; run it alone on the machine; needs `perf`):

    flock /tmp/percore-bench.lock python3 benches/pg_backend.py [--tests db,fortunes]
        [--rounds 2] [--duration 8] [--targets percore,xitca-pg]

For each round, test and target (order alternating): start the server pinned to CPU 0 as
benches/pg.py does (PostgreSQL and wrk on CPU 1), warm up, find the backend serving it,
and over one wrk run count, per request, in that backend: its CPU (utime+stime, and the
scheduler's own clock beside it), voluntary context switches, and with `perf stat`
tracepoints its system calls (sends, receives, epoll waits), the packets it transmits and
receives through the kernel, the socket buffers it frees, the pages it allocates, the
wake-ups it makes, the interrupts it sends to another CPU and the softirqs it runs.
Differences in these between two clients that send the same queries are kernel work done
in PostgreSQL's process on their behalf: on loopback a send delivers into the client's
socket in the sender's process, and wakes the client there if it sleeps.
"""

import argparse
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare as cmp  # noqa: E402
import pg  # noqa: E402

EVENTS = {
    "syscalls:sys_enter_sendto": "sends",
    "syscalls:sys_enter_recvfrom": "receives",
    "syscalls:sys_enter_epoll_wait": "epoll waits",
    "net:net_dev_queue": "packets out",
    "net:netif_receive_skb": "packets in",
    "skb:consume_skb": "socket buffers freed",
    "kmem:mm_page_alloc": "pages allocated",
    "sched:sched_waking": "wake-ups it makes",
    "ipi:ipi_send_cpu": "interrupts it sends to another CPU",
    "irq:softirq_entry": "softirqs it runs",
}


def backend_pids():
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc",
                          f"SELECT pid FROM pg_stat_activity WHERE datname = '{pg.DB}' "
                          "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"],
                         capture_output=True, text=True, check=True).stdout
    return [int(p) for p in out.split()]


def ticks(pid):
    fields = cmp._stat_fields(pid)
    return int(fields[11]) + int(fields[12])


def runtime_ns(pid):
    """Time on CPU from the scheduler's clock, in ns: exact, where utime+stime are
    sampled at each tick (250 Hz here)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def one(args, target, test):
    port = cmp.free_port()
    proc = subprocess.Popen(pg.server_argv(target, port, args.server_cpu, test),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        error = cmp.wait_ready(proc, port, "/db")
        if error:
            return f"{target}: {error}"
        subprocess.run(pg.wrk_argv(args, port, test, 2, latency=False), capture_output=True)
        pids = backend_pids()
        cpu0 = sum(ticks(p) for p in pids)
        ran0 = sum(runtime_ns(p) for p in pids)
        slept0 = sum(pg.sleeps(p) for p in pids)
        perf = subprocess.Popen(["perf", "stat", "-x", ",", "-e", ",".join(EVENTS), "-p",
                                 ",".join(map(str, pids)), "--", "sleep", str(args.duration)],
                                stderr=subprocess.PIPE, text=True)
        wrk = subprocess.run(pg.wrk_argv(args, port, test, args.duration), capture_output=True,
                             text=True)
        counted = perf.communicate()[1]
        cpu1 = sum(ticks(p) for p in pids)
        ran1 = sum(runtime_ns(p) for p in pids)
        slept1 = sum(pg.sleeps(p) for p in pids)
        requests = cmp.parse_wrk(wrk.stdout)["total_requests"]
        if not requests:
            return f"{target}: wrk served nothing: {wrk.stderr.strip()}"
        counts = {}
        for line in counted.splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] in EVENTS and parts[0].replace(".", "").isdigit():
                counts[EVENTS[parts[2]]] = float(parts[0]) / requests
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        line = (f"{test:9} {target:9} {requests / args.duration:>9,.0f} req/s  backends {len(pids)}  "
                f"CPU {(cpu1 - cpu0) * tick_us / requests:5.2f} µs (scheduler's clock "
                f"{(ran1 - ran0) / 1e3 / requests:5.2f})  "
                f"sleeps {(slept1 - slept0) / requests:.3f}")
        return line + "\n    " + "  ".join(f"{k} {v:.3f}" for k, v in counts.items())
    finally:
        cmp.stop(proc)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tests", default="db,fortunes")
    ap.add_argument("--targets", default="percore,xitca-pg")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--client-cpu", type=int, default=1)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    print("per request, in the PostgreSQL backend serving the server:")
    pg.pin_postgres(str(args.client_cpu))
    try:
        for rnd in range(args.rounds):
            for test in args.tests.split(","):
                order = targets if rnd % 2 == 0 else targets[::-1]
                for target in order:
                    print(one(args, target, test), flush=True)
    finally:
        pg.pin_postgres(f"0-{os.cpu_count() - 1}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Tunes a Linux host for percore from one settings file: apply, check, revert.

    tuning/apply [--dry-run]   save every value it will change, then change it
    tuning/check               one line per setting; exit 1 on drift or an unmet need
    tuning/revert              restore exactly what apply saved, then forget it

Options (all commands): --iface IFACE (the NIC; default the default route's),
--cpus LIST (the io cores' CPUs, as `percore serve --cpus`; default every
online CPU), --max-connections-per-core N (as percore's, default 16384),
--settings FILE (default tuning/settings.toml).

Environment:
  PERCORE_TUNING_STATE  where apply saves what it changes
                        (default /var/lib/percore/tuning-saved.json)
  PERCORE_TUNING_ROOT   the root host-wide files are read and written under
                        (default /); for tests. Per-namespace network files
                        always are the caller's own. With a root other than /,
                        host-wide commands (systemctl, modprobe) are not run,
                        and apply and revert refuse to run outside a network
                        namespace of their own.

Statuses: ok; drift (apply changes it); need (percore needs it, apply does
not change it: the line says how); advice (a boot flag or a rule set: the
operator's call); n/a (this host has no such thing, or lacks the tool: never
an error).
"""

import argparse
import base64
import glob
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    sys.exit("tuning: needs Python 3.11+ (tomllib)")

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_STATE = "/var/lib/percore/tuning-saved.json"
# Full-size rings of one io core, charged to RLIMIT_MEMLOCK (README, Where it runs).
MEMLOCK_PER_CORE = 160 * 1024
# Descriptors beyond connections: listeners, rings, eventfds, files, stdio.
NOFILE_SLACK = 1024


class Item:
    """One line of check: a setting as found, and how apply would reach its target."""

    def __init__(self, name, current, target, status, purpose, change=None, note=""):
        self.name, self.current, self.target = name, current, target
        self.status, self.purpose, self.change, self.note = status, purpose, change, note


class FileChange:
    """Write `new` into `path`; revert writes back the bytes it held."""

    def __init__(self, path, new):
        self.path, self.new = path, new

    def describe(self):
        return f"write {self.new!r} to {self.path}"

    def save(self):
        with open(self.path, "rb") as f:
            return {"kind": "file", "path": self.path, "bytes": base64.b64encode(f.read()).decode()}

    def run(self):
        with open(self.path, "w") as f:
            f.write(self.new + "\n")


class CommandChange:
    """Run `argv`; revert runs `undo`."""

    def __init__(self, argv, undo):
        self.argv, self.undo = argv, undo

    def describe(self):
        return " ".join(self.argv)

    def save(self):
        return {"kind": "command", "argv": self.undo, "did": self.argv}

    def run(self):
        subprocess.run(self.argv, check=True, capture_output=True, text=True)


class Host:
    """Where settings live: the roots, the NIC, the io cores' CPUs, the tools."""

    def __init__(self, args):
        self.root = os.environ.get("PERCORE_TUNING_ROOT", "/") or "/"
        self.real = os.path.realpath(self.root) == "/"
        self.state = os.environ.get("PERCORE_TUNING_STATE", DEFAULT_STATE)
        self.iface = args.iface or os.environ.get("PERCORE_TUNING_IFACE") or default_iface()
        self.cpus = parse_cpu_list(args.cpus) if args.cpus else self.online_cpus()
        self.max_conn = args.max_connections_per_core

    def path(self, rel, scope):
        base = "/" if scope == "netns" else self.root
        return os.path.join(base, rel.format(iface=self.iface or "IFACE"))

    def read(self, path):
        try:
            with open(path, "rb") as f:
                return f.read().decode(errors="replace").strip()
        except OSError:
            return None

    def online_cpus(self):
        text = self.read(self.path("sys/devices/system/cpu/online", "host"))
        try:
            return parse_cpu_list(text) if text else sorted(os.sched_getaffinity(0))
        except ValueError:
            return sorted(os.sched_getaffinity(0))

    def tool(self, name):
        return shutil.which(name)

    def output(self, argv):
        """A command's stdout, or None if it is missing or fails."""
        if not self.tool(argv[0]):
            return None
        done = subprocess.run(argv, capture_output=True, text=True)
        return done.stdout if done.returncode == 0 else None


def parse_cpu_list(text):
    cpus = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        a, _, b = part.partition("-")
        cpus.extend(range(int(a), int(b or a) + 1))
    if not cpus:
        raise ValueError("empty CPU list")
    return cpus


def cpu_list(cpus):
    return ",".join(str(c) for c in cpus)


def default_iface():
    """The interface of the default route, in this network namespace."""
    try:
        with open("/proc/net/route") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if len(fields) > 1 and fields[1] == "00000000":
                    return fields[0]
    except OSError:
        pass
    return None


def compare(current, target, how):
    if how == "min":
        try:
            have = [int(x) for x in current.split()]
            want = [int(x) for x in str(target).split()]
        except ValueError:
            return False
        return len(have) >= len(want) and all(h >= w for h, w in zip(have, want))
    return current.split() == str(target).split()


# Each kind: setting, host -> [Item].

def kind_sysctl(s, host):
    pattern = host.path(s["path"], s.get("scope", "host"))
    paths = sorted(glob.glob(pattern)) if "*" in pattern else [pattern]
    paths = [p for p in paths if os.path.exists(p)]
    if not paths:
        return [Item(s["id"], "-", s["target"], "n/a", s["purpose"], note=f"{pattern} is not on this host")]
    items = []
    for path in paths:
        current = host.read(path)
        name = s["id"] if len(paths) == 1 else f"{s['id']} ({os.path.relpath(path, host.root)})"
        if compare(current, s["target"], s.get("compare", "eq")):
            items.append(Item(name, current, s["target"], "ok", s["purpose"]))
        elif not os.access(path, os.W_OK):
            items.append(Item(name, current, s["target"], "n/a", s["purpose"], note=f"{path} is read-only here"))
        else:
            items.append(Item(name, current, s["target"], "drift", s["purpose"], FileChange(path, str(s["target"]))))
    return items


def kind_boot(s, host):
    cmdline = (host.read(host.path("proc/cmdline", "host")) or "").split()
    sets = [s["flags"]] + s.get("also_ok", [])
    target = " ".join(s["flags"])
    line = f'add `{target}` to GRUB_CMDLINE_LINUX in /etc/default/grub, run update-grub, reboot'
    if any(all(flag in cmdline for flag in flags) for flags in sets):
        return [Item(s["id"], target, target, "ok", s["purpose"])]
    current = " ".join(w for w in cmdline if w.split("=")[0] in {f.split("=")[0] for f in s["flags"]}) or "(not set)"
    note = line
    if s["flags"] == ["mitigations=off"]:
        vulns = glob.glob(host.path("sys/devices/system/cpu/vulnerabilities/*", "host"))
        active = [os.path.basename(v) for v in vulns if (host.read(v) or "").startswith("Mitigation")]
        if vulns and not active:
            return [Item(s["id"], current, target, "ok", s["purpose"], note="this CPU needs no mitigation")]
        if active:
            note = f"mitigating {', '.join(sorted(active))}; {line}"
    if s["flags"] == ["audit=0"] and host.real:
        status = host.output(["auditctl", "-s"])
        if status is not None and re.search(r"^enabled 0$", status, re.M):
            return [Item(s["id"], "auditing off (auditctl)", target, "ok", s["purpose"])]
    return [Item(s["id"], current, target, "advice", s["purpose"], note=note)]


NETFILTER = re.compile(r"^(ip6?_tables|ip6?table_\w+|x_tables|nf_tables|nft_\w+|nf_conntrack\w*|nf_nat\w*|nf_defrag_\w+|xt_\w+|ipt_\w+|ebtables|ebtable_\w+|br_netfilter)$")


def kind_netfilter(s, host):
    modules_text = host.read(host.path("proc/modules", "host"))
    if modules_text is None:
        return [Item(s["id"], "-", "unloaded", "n/a", s["purpose"], note="no /proc/modules (a kernel without modules)")]
    loaded = [line.split()[0] for line in modules_text.splitlines() if line.split() and NETFILTER.match(line.split()[0])]
    if not loaded:
        return [Item(s["id"], "not loaded", "unloaded", "ok", s["purpose"])]
    current = ", ".join(loaded)
    if not host.real:
        return [Item(s["id"], current, "unloaded", "advice", s["purpose"], note="rules not inspected under PERCORE_TUNING_ROOT; nothing unloaded")]
    rules = 0
    nft = host.output(["nft", "list", "ruleset"])
    if nft:
        rules += sum(1 for line in nft.splitlines() if line.strip() and not line.strip().startswith(("table", "chain", "type", "}", "policy")))
    for save in (["iptables-save"], ["ip6tables-save"]):
        text = host.output(save)
        if text:
            rules += sum(1 for line in text.splitlines() if line.startswith("-A"))
    if rules:
        return [Item(s["id"], current, "unloaded", "advice", s["purpose"], note=f"{rules} rule(s) loaded: your firewall, left alone")]
    if not host.tool("modprobe"):
        return [Item(s["id"], current, "unloaded", "n/a", s["purpose"], note="modprobe is not installed")]
    change = CommandChange(["modprobe", "-r", "-a"] + loaded, ["modprobe", "-a"] + loaded)
    return [Item(s["id"], current, "unloaded", "drift", s["purpose"], change, note="no rule is loaded")]


def kind_service(s, host):
    name = s["service"]
    if not host.real:
        return [Item(s["id"], "-", "stopped", "n/a", s["purpose"], note="services are not inspected under PERCORE_TUNING_ROOT")]
    if not host.tool("systemctl"):
        return [Item(s["id"], "-", "stopped", "n/a", s["purpose"], note="no systemctl")]
    if not os.path.isdir("/run/systemd/system"):
        return [Item(s["id"], "-", "stopped", "n/a", s["purpose"], note="systemd is not running here")]
    state = subprocess.run(["systemctl", "is-active", name], capture_output=True, text=True).stdout.strip() or "unknown"
    if state != "active":
        return [Item(s["id"], state, "stopped", "ok", s["purpose"])]
    return [Item(s["id"], state, "stopped", "drift", s["purpose"], CommandChange(["systemctl", "stop", name], ["systemctl", "start", name]))]


def ethtool_fields(text):
    """`Key: value` lines of ethtool's output, by section for -l."""
    fields, section = {}, ""
    for line in text.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(("\t", " ")):
            section = line.strip().rstrip(":")
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[(section, key.strip())] = value.strip()
            fields.setdefault(("", key.strip()), value.strip())
    return fields


def need_iface(s, host, target, tool="ethtool"):
    if not host.iface:
        return Item(s["id"], "-", target, "n/a", s["purpose"], note="no NIC: pass --iface")
    if not os.path.exists(f"/sys/class/net/{host.iface}"):
        return Item(s["id"], "-", target, "n/a", s["purpose"], note=f"no interface {host.iface} in this namespace")
    if tool and not host.tool(tool):
        return Item(s["id"], "-", target, "n/a", s["purpose"], note=f"{tool} is not installed")
    return None


def kind_channels(s, host):
    want = len(host.cpus)
    missing = need_iface(s, host, f"combined {want}")
    if missing:
        return [missing]
    fields = ethtool_fields(host.output(["ethtool", "-l", host.iface]) or "")

    def channels(kinds):
        try:
            most = min(int(fields[("Pre-set maximums", k)]) for k in kinds)
            now = {k: int(fields[("Current hardware settings", k)]) for k in kinds}
        except (KeyError, ValueError):
            return None
        return most, now

    # Most NICs pair queues (combined); some, veth among them, count RX and TX apart.
    kinds = ["Combined"]
    found = channels(kinds)
    if found is None or found[0] == 0:
        kinds = ["RX", "TX"]
        found = channels(kinds)
    if found is None:
        return [Item(s["id"], "-", f"{want} queues", "n/a", s["purpose"], note=f"{host.iface} does not report its channels (single queue)")]
    most, now = found
    current = " ".join(f"{k.lower()} {n}" for k, n in now.items())
    target_n = min(want, most)
    target = " ".join(f"{k.lower()} {target_n}" for k in kinds)
    if most <= 1:
        return [Item(s["id"], current, target, "n/a", s["purpose"], note=f"{host.iface} is a single-queue NIC: locality comes from steering alone")]
    if current == target:
        return [Item(s["id"], current, target, "ok", s["purpose"])]
    change = CommandChange(["ethtool", "-L", host.iface] + target.split(), ["ethtool", "-L", host.iface] + current.split())
    return [Item(s["id"], current, target, "drift", s["purpose"], change)]


def nic_irqs(host):
    """The NIC's queue interrupts in /proc/interrupts order: [(irq, name)]."""
    names = {host.iface}
    device = f"/sys/class/net/{host.iface}/device"
    if os.path.islink(device):
        names.add(os.path.basename(os.readlink(device)))
    irqs = []
    for line in (host.read(host.path("proc/interrupts", "host")) or "").splitlines():
        fields = line.split()
        if not fields or not fields[0].rstrip(":").isdigit():
            continue
        label = fields[-1]
        if any(label == n or label.startswith((n + "-", n + "_")) for n in names) and not label.endswith(("config", "-ctrl")):
            irqs.append((int(fields[0].rstrip(":")), label))
    return irqs


def kind_irq_affinity(s, host):
    missing = need_iface(s, host, "one CPU per queue", tool=None)
    if missing:
        return [missing]
    irqs = nic_irqs(host)
    if not irqs:
        return [Item(s["id"], "-", "one CPU per queue", "n/a", s["purpose"], note=f"no interrupts of {host.iface} in /proc/interrupts (a virtual device)")]
    items = []
    for i, (irq, label) in enumerate(irqs):
        # A queue's interrupts (virtio's input.N and output.N, or one TxRx-N)
        # end in the queue's number; they all go to that queue's CPU.
        number = re.search(r"(\d+)$", label)
        queue = int(number.group(1)) if number else i
        cpu = str(host.cpus[queue % len(host.cpus)])
        path = host.path(f"proc/irq/{irq}/smp_affinity_list", "host")
        current = host.read(path)
        name = f"irq {irq} ({label})"
        if current is None:
            items.append(Item(name, "-", cpu, "n/a", s["purpose"], note=f"{path} is missing"))
        elif current == cpu:
            items.append(Item(name, current, cpu, "ok", s["purpose"]))
        else:
            items.append(Item(name, current, cpu, "drift", s["purpose"], FileChange(path, cpu)))
    return items


def mask_value(text):
    try:
        return int(text.replace(",", ""), 16)
    except (ValueError, AttributeError):
        return None


def queue_maps(s, host, direction, file, label, spread):
    """One CPU mask per queue of the NIC: `spread(q, queues)` gives queue q's mask."""
    missing = need_iface(s, host, "one queue per CPU", tool=None)
    if missing:
        return [missing]
    prefix = f"/sys/class/net/{host.iface}/queues/{direction}-"
    queues = sorted(glob.glob(f"{prefix}*/{file}"), key=lambda p: int(p[len(prefix):].split("/")[0]))
    if not queues:
        return [Item(s["id"], "-", "one queue per CPU", "n/a", s["purpose"], note=f"{host.iface} has no {file} (a kernel without it)")]
    items = []
    for q, path in enumerate(queues):
        mask = spread(q, len(queues))
        target = format(mask, "x")
        current = host.read(path)
        name = f"{label} {host.iface} {direction}-{q}"
        if current is None:
            items.append(Item(name, "-", target, "n/a", s["purpose"], note=f"{path} cannot be read here"))
        elif mask_value(current) == mask:
            items.append(Item(name, current, target, "ok", s["purpose"]))
        else:
            items.append(Item(name, current, target, "drift", s["purpose"], FileChange(path, target)))
    return items


def io_cpus_of_queue(host, q, queues):
    """The io cores' CPUs that queue q serves: core i's CPU goes to queue i mod queues."""
    return sum(1 << c for i, c in enumerate(host.cpus) if i % queues == q)


def kind_xps(s, host):
    return queue_maps(s, host, "tx", "xps_cpus", "xps", lambda q, n: io_cpus_of_queue(host, q, n))


def kind_rps(s, host):
    # With a queue per io core the NIC spreads flows itself (RSS): RPS off.
    # With fewer, RPS spreads each queue's flows over the io cores it
    # serves, so their softirq (and so steering) lands on every io core.
    def spread(q, queues):
        return 0 if queues >= len(host.cpus) else io_cpus_of_queue(host, q, queues)

    return queue_maps(s, host, "rx", "rps_cpus", "rps", spread)


def kind_coalesce(s, host):
    usecs = str(s["rx_usecs"])
    target = f"adaptive-rx off rx-usecs {usecs}"
    missing = need_iface(s, host, target)
    if missing:
        return [missing]
    fields = ethtool_fields(host.output(["ethtool", "-c", host.iface]) or "")
    adaptive = fields.get(("", "Adaptive RX"), "").split()
    now_usecs = fields.get(("", "rx-usecs"))
    if not adaptive or now_usecs in (None, "n/a"):
        return [Item(s["id"], "-", target, "n/a", s["purpose"], note=f"{host.iface} has no interrupt coalescing settings")]
    current = f"adaptive-rx {adaptive[0]} rx-usecs {now_usecs}"
    if current == target:
        return [Item(s["id"], current, target, "ok", s["purpose"])]
    change = CommandChange(
        ["ethtool", "-C", host.iface, "adaptive-rx", "off", "rx-usecs", usecs],
        ["ethtool", "-C", host.iface, "adaptive-rx", adaptive[0], "rx-usecs", now_usecs],
    )
    return [Item(s["id"], current, target, "drift", s["purpose"], change)]


def kind_feature(s, host):
    target = s["target"]
    missing = need_iface(s, host, target)
    if missing:
        return [missing]
    value = ethtool_fields(host.output(["ethtool", "-k", host.iface]) or "").get(("", s["feature"]))
    if value is None:
        return [Item(s["id"], "-", target, "n/a", s["purpose"], note=f"{host.iface} does not report {s['feature']}")]
    current = value.split()[0]
    if current == target:
        return [Item(s["id"], current, target, "ok", s["purpose"])]
    if "[fixed]" in value:
        return [Item(s["id"], value, target, "n/a", s["purpose"], note=f"fixed by the {host.iface} driver")]
    change = CommandChange(["ethtool", "-K", host.iface, s["short"], target], ["ethtool", "-K", host.iface, s["short"], current])
    return [Item(s["id"], current, target, "drift", s["purpose"], change)]


def kind_qdisc(s, host):
    target = s["target"]
    missing = need_iface(s, host, target, tool="tc")
    if missing:
        return [missing]
    text = host.output(["tc", "qdisc", "show", "dev", host.iface, "root"]) or ""
    words = text.split()
    current = words[1] if len(words) > 1 and words[0] == "qdisc" else "-"
    if current == target:
        return [Item(s["id"], current, target, "ok", s["purpose"])]
    # Only the kernel's own default (handle 0:) is replaced: deleting the
    # root qdisc brings exactly that back.
    if re.search(r"^qdisc \S+ 0: root", text, re.M) is None:
        return [Item(s["id"], current, target, "advice", s["purpose"], note="a qdisc someone configured: left alone")]
    change = CommandChange(["tc", "qdisc", "replace", "dev", host.iface, "root", target], ["tc", "qdisc", "del", "dev", host.iface, "root"])
    return [Item(s["id"], current, target, "drift", s["purpose"], change)]


def kind_napi(s, host):
    release = os.uname().release
    try:
        major, minor = (int(x) for x in re.match(r"(\d+)\.(\d+)", release).groups())
    except AttributeError:
        major, minor = 0, 0
    if (major, minor) >= (6, 9):
        return [Item(s["id"], f"Linux {release}: available", "registered per ring", "advice", s["purpose"], note="the kernel has it; percore does not register it yet")]
    return [Item(s["id"], f"Linux {release}: absent", "registered per ring", "n/a", s["purpose"], note="needs Linux 6.9+")]


def kind_note(s, host):
    return [Item(s["id"], "-", "-", "ok", s["purpose"])]


def kind_need_io_uring(s, host):
    path = host.path(s["path"], "host")
    current = host.read(path)
    if current is None:
        return [Item(s["id"], "-", "0", "ok", s["purpose"], note="this kernel has no such switch: allowed")]
    if current == "0":
        return [Item(s["id"], current, "0", "ok", s["purpose"])]
    return [Item(s["id"], current, "0", "need", s["purpose"], note="sysctl -w kernel.io_uring_disabled=0 (and in /etc/sysctl.d/ to keep it)")]


def kind_need_memlock(s, host):
    want = MEMLOCK_PER_CORE * len(host.cpus)
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    show = lambda v: "unlimited" if v == resource.RLIM_INFINITY else f"{v // 1024} KiB"
    current = f"{show(hard)} (hard)"
    target = f">= {want // 1024} KiB for {len(host.cpus)} io cores"
    cap_ipc_lock = False
    for line in (host.read("/proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            cap_ipc_lock = bool(int(line.split()[1], 16) & (1 << 14))
    if cap_ipc_lock:
        return [Item(s["id"], current + ", CAP_IPC_LOCK", target, "ok", s["purpose"], note="CAP_IPC_LOCK: not charged")]
    if hard == resource.RLIM_INFINITY or hard >= want:
        return [Item(s["id"], current, target, "ok", s["purpose"])]
    return [Item(s["id"], current, target, "need", s["purpose"], note="LimitMEMLOCK=infinity (systemd), ulimit -l unlimited, or docker --ulimit memlock=-1; percore shrinks its rings to fit otherwise")]


def kind_need_nofile(s, host):
    want = host.max_conn * len(host.cpus) + NOFILE_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = f">= {want} ({host.max_conn} x {len(host.cpus)} io cores + {NOFILE_SLACK})"
    if soft == resource.RLIM_INFINITY or soft >= want:
        return [Item(s["id"], str(soft), target, "ok", s["purpose"])]
    return [Item(s["id"], str(soft), target, "need", s["purpose"], note=f"ulimit -n {want} before percore serve, or LimitNOFILE={want} (systemd)")]


KINDS = {
    "sysctl": kind_sysctl,
    "boot": kind_boot,
    "netfilter": kind_netfilter,
    "service": kind_service,
    "channels": kind_channels,
    "irq-affinity": kind_irq_affinity,
    "xps": kind_xps,
    "rps": kind_rps,
    "coalesce": kind_coalesce,
    "feature": kind_feature,
    "qdisc": kind_qdisc,
    "napi": kind_napi,
    "note": kind_note,
    "need-io-uring": kind_need_io_uring,
    "need-memlock": kind_need_memlock,
    "need-nofile": kind_need_nofile,
}


def load_settings(path):
    with open(path, "rb") as f:
        settings = tomllib.load(f).get("setting", [])
    for s in settings:
        for key in ("id", "kind", "purpose", "source"):
            if key not in s:
                sys.exit(f"tuning: a setting in {path} has no `{key}`: {s}")
        if s["kind"] not in KINDS:
            sys.exit(f"tuning: setting `{s['id']}` has an unknown kind `{s['kind']}`")
    return settings


def survey(settings, host):
    items = []
    for s in settings:
        items.extend(KINDS[s["kind"]](s, host))
    return items


def line(item):
    text = f"{item.status:<6} {item.name}: {item.current} (target {item.target}) - {item.purpose}"
    return text + (f" [{item.note}]" if item.note else "")


def in_own_netns():
    """Whether this process runs in a network namespace other than the host's (init's)."""
    try:
        own = os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return False
    try:
        return own != os.stat("/proc/1/ns/net").st_ino
    except OSError:
        pass  # init's namespace may be hidden; a named namespace (ip netns) is not the host's
    try:
        return any(os.stat(os.path.join("/run/netns", n)).st_ino == own for n in os.listdir("/run/netns"))
    except OSError:
        return False


def guard(host):
    if not host.real and not in_own_netns():
        sys.exit("tuning: PERCORE_TUNING_ROOT is for tests: run inside a network namespace of your own (ip netns exec NAME ...), so the network settings changed are that namespace's")


def cmd_check(settings, host):
    items = survey(settings, host)
    for item in items:
        print(line(item))
    bad = [i for i in items if i.status in ("drift", "need")]
    counts = {s: sum(1 for i in items if i.status == s) for s in ("ok", "drift", "need", "advice", "n/a")}
    print("; ".join(f"{n} {s}" for s, n in counts.items()))
    return 1 if bad else 0


def cmd_apply(settings, host, dry_run):
    items = survey(settings, host)
    todo = [i for i in items if i.status == "drift" and i.change]
    if dry_run:
        for item in todo:
            print(f"would change {item.name}: {item.current} -> {item.target} ({item.change.describe()})")
        print(f"{len(todo)} change(s); nothing written")
        return 0
    guard(host)
    if not todo:
        print("nothing to change" + (f" (the earlier save in {host.state} is kept)" if os.path.exists(host.state) else ""))
        return 0
    if os.path.exists(host.state):
        print(f"tuning: an earlier save exists in {host.state} and {len(todo)} setting(s) drifted since; run tuning/revert first, or set PERCORE_TUNING_STATE to another file", file=sys.stderr)
        return 1
    saved = {"version": 1, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "root": host.root, "entries": []}
    failed, done = 0, set()
    # A change can reveal more to change (a NIC given more queues has new
    # XPS maps): survey again after each pass, at most three.
    for _ in range(3):
        todo = [i for i in todo if (i.name, i.target) not in done]
        if not todo:
            break
        for item in todo:
            entry = item.change.save()
            entry["name"] = item.name
            saved["entries"].append(entry)
        write_state(host.state, saved)
        for item in todo:
            done.add((item.name, item.target))
            try:
                item.change.run()
                print(f"changed {item.name}: {item.current} -> {item.target}")
            except (OSError, subprocess.CalledProcessError) as error:
                failed += 1
                detail = getattr(error, "stderr", "") or str(error)
                print(f"could not change {item.name}: {detail.strip()}", file=sys.stderr)
        todo = [i for i in survey(settings, host) if i.status == "drift" and i.change]
    print(f"saved the previous values in {host.state}; tuning/revert restores them")
    return 1 if failed else 0


def write_state(path, saved):
    """Writes the save durably: a temporary file, fsynced, renamed over."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(saved, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def cmd_revert(host):
    guard(host)
    try:
        with open(host.state) as f:
            saved = json.load(f)
    except FileNotFoundError:
        print(f"tuning: nothing saved in {host.state}: nothing to revert", file=sys.stderr)
        return 1
    failed = 0
    for entry in reversed(saved["entries"]):
        try:
            if entry["kind"] == "file":
                with open(entry["path"], "wb") as f:
                    f.write(base64.b64decode(entry["bytes"]))
            else:
                subprocess.run(entry["argv"], check=True, capture_output=True, text=True)
            print(f"restored {entry['name']}")
        except (OSError, subprocess.CalledProcessError) as error:
            failed += 1
            detail = getattr(error, "stderr", "") or str(error)
            print(f"could not restore {entry['name']}: {detail.strip()}", file=sys.stderr)
    if failed:
        print(f"tuning: {failed} value(s) not restored; {host.state} is kept", file=sys.stderr)
        return 1
    os.remove(host.state)
    print(f"restored {len(saved['entries'])} value(s) saved {saved['saved_at']}; removed {host.state}")
    return 0


def main(argv):
    parser = argparse.ArgumentParser(prog="tuning", description="Tune this host for percore: apply, check, revert.")
    parser.add_argument("command", choices=["apply", "check", "revert"])
    parser.add_argument("--dry-run", action="store_true", help="apply: show what would change, change nothing")
    parser.add_argument("--iface", help="the NIC (default: the default route's)")
    parser.add_argument("--cpus", help="the io cores' CPUs, e.g. 0-3 (default: every online CPU)")
    parser.add_argument("--max-connections-per-core", type=int, default=16384, metavar="N")
    parser.add_argument("--settings", default=os.path.join(HERE, "settings.toml"))
    args = parser.parse_args(argv)
    settings = load_settings(args.settings)
    host = Host(args)
    if args.command == "check":
        return cmd_check(settings, host)
    if args.command == "apply":
        return cmd_apply(settings, host, args.dry_run)
    return cmd_revert(host)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

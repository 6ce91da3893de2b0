//! tuning/ (apply, check, revert) run inside a network namespace this test makes, against a settings root it makes: it never changes this host.
//!
//! Network settings are per namespace, so they are the namespace's own;
//! host-wide ones (`fs.*`, the CPU governor, IRQ affinity, the boot line)
//! live under a fake root (`PERCORE_TUNING_ROOT`). Needs root and `ip`;
//! required when CI=true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TUNING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tuning");

/// A network namespace with a veth pair, deleted when dropped (even when the test fails).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Result<Self, String> {
        let name = format!("percore-{tag}-{}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let netns = Self { name };
        netns.run(&[
            "ip",
            "link",
            "add",
            "veth0",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
            "type",
            "veth",
            "peer",
            "name",
            "veth1",
            "numtxqueues",
            "2",
            "numrxqueues",
            "2",
        ])?;
        netns.run(&["ip", "link", "set", "veth0", "up"])?;
        netns.run(&["ip", "link", "set", "veth1", "up"])?;
        Ok(netns)
    }

    fn command(&self, argv: &[&str]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).args(argv);
        command
    }

    fn run(&self, argv: &[&str]) -> Result<String, String> {
        run_ok(&mut self.command(argv))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Whether this machine can run the test, or why not (a failure when CI=true).
fn can_run() -> Result<(), String> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Err("needs root for network namespaces".into());
    }
    let python = Command::new("python3")
        .args(["-c", "import tomllib"])
        .status()
        .map_err(|e| format!("no python3: {e}"))?;
    if !python.success() {
        return Err("needs python3 3.11+ (tomllib)".into());
    }
    Ok(())
}

fn skip_or_fail(why: String) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true requires the tuning test, but it {why}"
    );
    eprintln!("skipped: the tuning test {why}");
}

/// A fake root for host-wide settings, with values that drift from the targets.
fn fake_root(dir: &Path) {
    let files: &[(&str, &str)] = &[
        ("proc/sys/net/core/netdev_max_backlog", "1000\n"),
        ("proc/sys/fs/file-max", "100000\n"),
        ("proc/sys/fs/nr_open", "1048576\n"),
        ("proc/sys/kernel/io_uring_disabled", "0\n"),
        (
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "powersave\n",
        ),
        (
            "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor",
            "schedutil\n",
        ),
        ("sys/devices/system/cpu/online", "0-1\n"),
        (
            "sys/devices/system/cpu/vulnerabilities/spectre_v2",
            "Mitigation: Retpolines; STIBP: disabled\n",
        ),
        ("proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda1 ro quiet\n"),
        ("proc/modules", ""),
        (
            "proc/interrupts",
            "           CPU0       CPU1\n  40:        120         30   PCI-MSI 1-edge      veth0-TxRx-0\n  41:         80         95   PCI-MSI 2-edge      veth0-TxRx-1\n NMI:          0          0   Non-maskable interrupts\n",
        ),
        ("proc/irq/40/smp_affinity_list", "0-1\n"),
        ("proc/irq/41/smp_affinity_list", "0-1\n"),
    ];
    for (path, text) in files {
        let path = dir.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The namespace's side: its network sysctls, the veth's XPS and RPS maps, and what ethtool and tc say.
const NETNS_STATE: &str = r#"
for f in /proc/sys/net/core/somaxconn /proc/sys/net/core/rmem_max /proc/sys/net/core/wmem_max \
         /proc/sys/net/ipv4/tcp_max_syn_backlog /proc/sys/net/ipv4/ip_local_port_range \
         /proc/sys/net/ipv4/tcp_tw_reuse /proc/sys/net/ipv4/tcp_migrate_req \
         /proc/sys/net/ipv4/tcp_congestion_control \
         /sys/class/net/veth0/queues/tx-*/xps_cpus /sys/class/net/veth0/queues/rx-*/rps_cpus; do
  printf '%s=' "$f"; od -An -c "$f" | tr -s ' ' | tr -d '\n'; echo
done
if command -v ethtool >/dev/null; then ethtool -k veth0 | grep generic-receive; ethtool -l veth0; fi
tc qdisc show dev veth0
"#;

struct Run {
    netns: Netns,
    root: PathBuf,
    state: PathBuf,
    dir: PathBuf,
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Run {
    fn tune(&self, args: &[&str]) -> Output {
        let mut argv = vec![
            "env",
            "PERCORE_TUNING_ROOT",
            "PERCORE_TUNING_STATE",
            "python3",
        ];
        let root = format!("PERCORE_TUNING_ROOT={}", self.root.display());
        let state = format!("PERCORE_TUNING_STATE={}", self.state.display());
        argv[1] = &root;
        argv[2] = &state;
        let script = format!("{TUNING}/tune.py");
        argv.push(&script);
        argv.extend_from_slice(args);
        argv.extend_from_slice(&[
            "--iface",
            "veth0",
            "--cpus",
            "0-1",
            "--max-connections-per-core",
            "100",
        ]);
        self.netns.command(&argv).output().unwrap()
    }

    fn snapshot(&self) -> (BTreeMap<PathBuf, Vec<u8>>, String) {
        (
            files_under(&self.root),
            self.netns.run(&["sh", "-c", NETNS_STATE]).unwrap(),
        )
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn apply_check_revert_in_a_namespace_of_our_own() {
    if let Err(why) = can_run() {
        return skip_or_fail(why);
    }
    let netns = match Netns::new("tune") {
        Ok(netns) => netns,
        Err(why) => return skip_or_fail(format!("cannot make a network namespace: {why}")),
    };
    let dir = std::env::temp_dir().join(format!("percore-tuning-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    fake_root(&root);
    let run = Run {
        netns,
        root,
        state: dir.join("saved.json"),
        dir: dir.clone(),
    };
    let has_ethtool = run.netns.run(&["ethtool", "--version"]).is_ok();
    if has_ethtool {
        // Drift the NIC too: one queue each way, GRO on.
        run.netns
            .run(&["ethtool", "-L", "veth0", "rx", "1", "tx", "1"])
            .unwrap();
        run.netns
            .run(&["ethtool", "-K", "veth0", "gro", "on"])
            .unwrap();
    }
    // Network settings the namespace starts with; make one drift for sure.
    run.netns
        .run(&["sysctl", "-qw", "net.ipv4.tcp_max_syn_backlog=512"])
        .unwrap();
    let before = run.snapshot();

    // check: one line per setting, non-zero on drift.
    let check = run.tune(&["check"]);
    let out = text(&check);
    assert_eq!(
        check.status.code(),
        Some(1),
        "check on a drifted host: {out}"
    );
    for expected in [
        "drift  net.ipv4.tcp_max_syn_backlog: 512 (target 8192)",
        "drift  fs.file-max: 100000 (target 2097152)",
        "drift  irq 40 (veth0-TxRx-0): 0-1 (target 0)",
        "drift  irq 41 (veth0-TxRx-1): 0-1 (target 1)",
        "drift  xps veth0 tx-",
        "advice boot: mitigations: (not set) (target mitigations=off)",
        "mitigating spectre_v2",
        "ok     kernel.io_uring_disabled: 0",
        "ok     netfilter modules: not loaded",
    ] {
        assert!(out.contains(expected), "check lacks `{expected}`:\n{out}");
    }
    if has_ethtool {
        assert!(out.contains("drift  gro: on (target off)"), "{out}");
        // One RX queue for two io cores: RPS spreads it over both.
        assert!(out.contains("drift  rps veth0 rx-0: 0 (target 3)"), "{out}");
        assert!(
            out.contains("drift  nic queues: rx 1 tx 1 (target rx 2 tx 2)"),
            "{out}"
        );
    } else {
        assert!(out.contains("ethtool is not installed"), "{out}");
    }
    assert_eq!(run.snapshot(), before, "check changed something");

    // apply --dry-run: what would change, nothing written.
    let dry = run.tune(&["apply", "--dry-run"]);
    let out = text(&dry);
    assert!(dry.status.success(), "{out}");
    assert!(
        out.contains("would change fs.file-max: 100000 -> 2097152"),
        "{out}"
    );
    assert!(!run.state.exists(), "a dry run saved state");
    assert_eq!(run.snapshot(), before, "a dry run changed something");

    // Outside a namespace of its own, a test root is refused.
    let outside = Command::new("python3")
        .arg(format!("{TUNING}/tune.py"))
        .args(["apply", "--iface", "veth0", "--cpus", "0-1"])
        .env("PERCORE_TUNING_ROOT", &run.root)
        .env("PERCORE_TUNING_STATE", &run.state)
        .output()
        .unwrap();
    assert!(!outside.status.success(), "{}", text(&outside));
    assert!(
        text(&outside).contains("network namespace"),
        "{}",
        text(&outside)
    );
    assert_eq!(run.snapshot(), before, "a refused apply changed something");

    // apply: saves, changes, and check then passes.
    let apply = run.tune(&["apply"]);
    assert!(apply.status.success(), "apply: {}", text(&apply));
    assert!(run.state.exists(), "apply saved nothing");
    let applied = run.snapshot();
    assert_ne!(applied.0, before.0, "apply changed no host-wide file");
    assert_ne!(
        applied.1, before.1,
        "apply changed nothing in the namespace"
    );
    let read = |rel: &str| std::fs::read_to_string(run.root.join(rel)).unwrap();
    assert_eq!(read("proc/sys/fs/file-max"), "2097152\n");
    assert_eq!(
        read("sys/devices/system/cpu/cpu1/cpufreq/scaling_governor"),
        "performance\n"
    );
    assert_eq!(read("proc/irq/41/smp_affinity_list"), "1\n");
    assert_eq!(
        read("proc/cmdline"),
        before.0[&run.root.join("proc/cmdline")]
            .iter()
            .map(|&b| b as char)
            .collect::<String>(),
        "apply touched the boot line"
    );
    let check = run.tune(&["check"]);
    assert!(
        check.status.success(),
        "check after apply: {}",
        text(&check)
    );

    // Re-applying changes nothing, and keeps the save.
    let saved = std::fs::read(&run.state).unwrap();
    let again = run.tune(&["apply"]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("nothing to change"),
        "{}",
        text(&again)
    );
    assert_eq!(run.snapshot(), applied, "a second apply changed something");
    assert_eq!(std::fs::read(&run.state).unwrap(), saved);

    // With something drifted since, apply refuses to overwrite the earlier save.
    std::fs::write(run.root.join("proc/sys/fs/nr_open"), "1024\n").unwrap();
    let refused = run.tune(&["apply"]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("earlier save"),
        "{}",
        text(&refused)
    );
    assert_eq!(
        std::fs::read(&run.state).unwrap(),
        saved,
        "the save was overwritten"
    );
    assert_eq!(
        read("proc/sys/fs/nr_open"),
        "1024\n",
        "a refused apply wrote"
    );
    std::fs::write(run.root.join("proc/sys/fs/nr_open"), "1048576\n").unwrap();

    // revert: every value byte for byte, and the save is gone.
    let revert = run.tune(&["revert"]);
    assert!(revert.status.success(), "revert: {}", text(&revert));
    let after = run.snapshot();
    assert_eq!(after.0, before.0, "revert left host-wide files different");
    assert_eq!(after.1, before.1, "revert left the namespace different");
    assert!(!run.state.exists(), "revert kept the save");
    let nothing = run.tune(&["revert"]);
    assert!(
        !nothing.status.success(),
        "a second revert: {}",
        text(&nothing)
    );
}

//! bpf/: the XDP blocklist, built with clang and loaded on a veth between two network namespaces this test makes; a blocked network cannot connect to percore, another can.
//!
//! Needs root, clang, libbpf's headers, bpftool and an iproute2 built with
//! libbpf (Debian's): `.ci/run` installs them, and the test is required when
//! CI=true. Elsewhere it says why it was skipped, including when the kernel
//! refuses the program.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use common::netns::{self, ip, run, Netns};

const TEST: &str = "the XDP blocklist test";
const BLOCKLIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bpf/blocklist");
const SERVER: &str = "10.99.0.1";
const ALLOWED: &str = "10.99.0.2";
const BLOCKED: &str = "10.99.0.66";
const BLOCKED_NET: &str = "10.99.0.64/26";
const PORT: &str = "18080";

/// Two namespaces joined by a veth (`vs` in the server's, `vc` in the
/// client's), with the server process inside; all removed when dropped.
struct Pair {
    // Deleted when the pair is dropped, after its `Drop` has stopped the server.
    server_ns: Netns,
    client_ns: Netns,
    server: Option<Child>,
    /// Kept open: percore prints more after its first line.
    server_out: Option<BufReader<std::process::ChildStdout>>,
    dir: std::path::PathBuf,
}

impl Pair {
    fn new() -> Result<Self, String> {
        let pair = Self {
            server_ns: Netns::new("xdp-s")?,
            client_ns: Netns::new("xdp-c")?,
            server: None,
            server_out: None,
            dir: std::env::temp_dir().join(format!("percore-xdp-{}", std::process::id())),
        };
        let s = pair.server_ns.name.as_str();
        let c = pair.client_ns.name.as_str();
        ip(&[
            "link", "add", "vs", "netns", s, "type", "veth", "peer", "name", "vc", "netns", c,
        ])?;
        for argv in [
            ["-n", s, "addr", "add", "10.99.0.1/24", "dev", "vs"],
            ["-n", c, "addr", "add", "10.99.0.2/24", "dev", "vc"],
            ["-n", c, "addr", "add", "10.99.0.66/24", "dev", "vc"],
        ] {
            ip(&argv)?;
        }
        ip(&["-n", s, "link", "set", "vs", "up"])?;
        ip(&["-n", c, "link", "set", "vc", "up"])?;
        Ok(pair)
    }

    fn in_server(&self, argv: &[&str]) -> Result<String, String> {
        run(self.server_ns.command(argv[0]).args(&argv[1..]))
    }

    /// percore in the server namespace, on 10.99.0.1.
    fn serve(&mut self) {
        let mut child = self
            .server_ns
            .command(env!("CARGO_BIN_EXE_percore"))
            .args([
                "serve",
                "--listen",
                &format!("{SERVER}:{PORT}"),
                "--cores",
                "1",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start percore in the namespace");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "percore said {line:?}");
        self.server = Some(child);
        self.server_out = Some(out);
    }

    /// Whether a connection from `source` in the client namespace is answered (2 s to connect).
    fn connects_from(&self, source: &str) -> bool {
        let script = format!(
            "import socket\ns = socket.socket()\ns.settimeout(2)\ns.bind(('{source}', 0))\ns.connect(('{SERVER}', {PORT}))\ns.sendall(b'GET /healthz HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\nassert s.recv(64).startswith(b'HTTP/1.1 200')\n"
        );
        self.client_ns
            .command("python3")
            .args(["-c", &script])
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn missing_tool() -> Option<String> {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        return Some("it needs root (network namespaces, BPF)".into());
    }
    for tool in ["clang", "bpftool", "python3"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install clang libbpf-dev bpftool)"
            ));
        }
    }
    if !std::path::Path::new("/usr/include/bpf/bpf_helpers.h").exists() {
        return Some("libbpf's headers are not installed (apt-get install libbpf-dev)".into());
    }
    None
}

#[test]
fn a_blocked_network_cannot_connect_and_another_can() {
    if let Some(why) = missing_tool() {
        return netns::skip_or_fail(TEST, &why);
    }
    let mut pair = match Pair::new() {
        Ok(pair) => pair,
        Err(why) => {
            return netns::skip_or_fail(TEST, &format!("the namespaces could not be made: {why}"))
        }
    };
    let obj = pair.dir.join("xdp_blocklist.o");
    let obj = obj.to_str().unwrap();
    run(Command::new(BLOCKLIST).args(["build", "--out", obj])).expect("build the XDP program");
    pair.serve();
    assert!(pair.connects_from(ALLOWED), "no connection before XDP");
    assert!(pair.connects_from(BLOCKED), "no connection before XDP");

    if let Err(refusal) = pair.in_server(&[BLOCKLIST, "load", "vs", "--obj", obj]) {
        return netns::skip_or_fail(
            TEST,
            &format!("the kernel refused the XDP program: {refusal}"),
        );
    }
    let blocked = pair
        .in_server(&[BLOCKLIST, "block", "vs", BLOCKED_NET])
        .expect("block a network");
    assert!(blocked.contains("blocked 10.99.0.64/26"), "{blocked}");
    let list = pair.in_server(&[BLOCKLIST, "list", "vs"]).unwrap();
    assert!(list.contains("blocked 10.99.0.64/26"), "{list}");

    assert!(
        !pair.connects_from(BLOCKED),
        "{BLOCKED} connected though {BLOCKED_NET} is blocked"
    );
    assert!(
        pair.connects_from(ALLOWED),
        "{ALLOWED} could not connect, and it is not blocked"
    );
    let list = pair.in_server(&[BLOCKLIST, "list", "vs"]).unwrap();
    let dropped: u64 = list
        .lines()
        .find_map(|l| l.strip_prefix("dropped "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no drop count in {list}"));
    assert!(dropped > 0, "the program dropped nothing: {list}");

    // Unblocked, the network connects again; unloaded, the device has no program.
    pair.in_server(&[BLOCKLIST, "unblock", "vs", BLOCKED_NET])
        .expect("unblock");
    assert!(pair.connects_from(BLOCKED), "still blocked after unblock");
    pair.in_server(&[BLOCKLIST, "unload", "vs"])
        .expect("unload");
    let link = pair
        .in_server(&["ip", "link", "show", "dev", "vs"])
        .unwrap();
    assert!(!link.contains("prog/xdp"), "still loaded: {link}");
    assert!(pair.connects_from(BLOCKED), "no connection after unload");
}

//! Network namespaces a test makes for itself (needs root and `ip netns`), removed when dropped.

use std::os::fd::AsRawFd;
use std::process::Command;

/// Skips a test that cannot run here, saying why; fails it instead when `CI=true`.
pub fn skip_or_fail(test: &str, why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true requires {test}, but {why}"
    );
    eprintln!("skipped: {test}, because {why}");
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// Runs a command; its output, or what it said when it failed.
pub fn run(command: &mut Command) -> Result<String, String> {
    let out = command.output().map_err(|e| format!("{command:?}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{command:?}: {text}"))
    }
}

/// `ip` with these arguments.
pub fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// Why namespaces cannot be made here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !is_root() {
        return Some("it needs root to make network namespaces".into());
    }
    let probe = Netns::new("probe");
    match probe {
        Ok(_) => None,
        Err(e) => Some(format!("`ip netns add` failed: {e}")),
    }
}

/// One network namespace, named uniquely for this process, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `percore-{role}-{pid}-{n}` with loopback up.
    pub fn new(role: &str) -> Result<Self, String> {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pc-{role}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sets a sysctl of the namespace (`net.*` ones are per namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), String> {
        run(self
            .command("sysctl")
            .args(["-q", "-w", &format!("{key}={value}")]))
        .map(|_| ())
    }

    /// Moves the calling thread into the namespace: sockets it opens from now on live there.
    pub fn enter(&self) -> Result<(), String> {
        enter(&self.name)
    }
}

/// Moves the calling thread into the namespace `name`.
pub fn enter(name: &str) -> Result<(), String> {
    let file = std::fs::File::open(format!("/var/run/netns/{name}"))
        .map_err(|e| format!("open the namespace {name}: {e}"))?;
    // SAFETY: setns takes an open namespace descriptor and a flag; it
    // changes only the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("setns {name}: {}", std::io::Error::last_os_error()))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Whatever still runs inside goes with it: a process a test killed
        // may have left children (nginx's workers outlive a killed master).
        if let Ok(pids) = ip(&["netns", "pids", &self.name]) {
            for pid in pids.split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

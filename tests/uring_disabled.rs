//! io_uring switched off by the kernel: percore says so in one line with the fix.
//!
//! This flips `kernel.io_uring_disabled` for the fraction of a second the
//! server takes to fail, and restores it even if the test fails. It lives in
//! its own test binary because cargo runs test binaries one at a time, so no
//! other test of ours starts a server meanwhile.

use std::process::Command;

const SYSCTL: &str = "/proc/sys/kernel/io_uring_disabled";

struct Restore(String);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.0);
    }
}

#[test]
fn io_uring_disabled_by_the_kernel_is_one_clear_line() {
    let Ok(original) = std::fs::read_to_string(SYSCTL) else {
        eprintln!("skipped: this kernel has no {SYSCTL}");
        return;
    };
    if std::fs::write(SYSCTL, original.trim()).is_err() {
        eprintln!(
            "skipped: {SYSCTL} is not writable here (needs root outside a read-only /proc/sys)"
        );
        return;
    }
    let output = {
        let _restore = Restore(original.trim().to_owned());
        std::fs::write(SYSCTL, "2").unwrap();
        Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
            .output()
            .unwrap()
    };
    assert_eq!(
        std::fs::read_to_string(SYSCTL).unwrap().trim(),
        original.trim(),
        "sysctl restored"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is not available"), "{stderr}");
    assert!(stderr.contains("kernel.io_uring_disabled is 2"), "{stderr}");
    assert!(
        stderr.contains("sysctl -w kernel.io_uring_disabled=0"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
}

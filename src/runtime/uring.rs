//! Creating each core's io_uring, and turning the ways that fails into one line a user can act on.

use std::io;

use io_uring::IoUring;
use thiserror::Error;

/// Why io_uring could not be set up, with the fix.
#[derive(Debug, Error)]
pub enum UringError {
    #[error(
        "io_uring is not available to this process ({source}); kernel.io_uring_disabled is {sysctl}. \
         Fix: `sysctl -w kernel.io_uring_disabled=0` on the host, or run the container with a seccomp \
         profile that allows io_uring_setup, io_uring_enter and io_uring_register (Docker's default blocks them)"
    )]
    Unavailable { source: io::Error, sysctl: String },
    #[error(
        "io_uring could not pin {what}: the locked-memory limit is {limit} ({source}). \
         Fix: raise it (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`, docker `--ulimit memlock=-1`), \
         or run with fewer --cores"
    )]
    LockedMemory {
        what: &'static str,
        limit: String,
        source: io::Error,
    },
    #[error("io_uring setup failed: {0}")]
    Other(io::Error),
}

/// Submission queue depth per core; the completion queue is four times that.
pub const RING_ENTRIES: u32 = 1024;

/// Builds a ring for the calling thread, the only thread that will use it.
pub fn build_ring() -> Result<IoUring, UringError> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(RING_ENTRIES * 4)
        .build(RING_ENTRIES);
    match tuned {
        Ok(ring) => Ok(ring),
        // Older kernels reject the flags: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => IoUring::builder()
            .setup_cqsize(RING_ENTRIES * 4)
            .build(RING_ENTRIES)
            .map_err(classify),
        Err(e) => Err(classify(e)),
    }
}

/// Maps an io_uring_setup error to what the user must change.
pub fn classify(error: io::Error) -> UringError {
    match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::ENOSYS) | Some(libc::EACCES) => UringError::Unavailable {
            source: error,
            sysctl: std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map_or_else(|_| "not present".into(), |s| s.trim().to_owned()),
        },
        Some(libc::ENOMEM) => locked_memory("its rings", error),
        _ => UringError::Other(error),
    }
}

pub fn locked_memory(what: &'static str, source: io::Error) -> UringError {
    UringError::LockedMemory {
        what,
        limit: memlock_limit_text(),
        source,
    }
}

/// Raises the soft RLIMIT_MEMLOCK to the hard limit, as far as permitted.
pub fn raise_memlock_limit() {
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit);
        }
    }
}

fn memlock_limit_text() -> String {
    // SAFETY: as above.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit);
        limit.rlim_cur
    };
    if limit == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", limit / 1024)
    }
}

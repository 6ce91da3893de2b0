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
/// The smallest ring percore will settle for when locked memory is short.
pub const MIN_RING_ENTRIES: u32 = 32;

/// Builds a ring for the calling thread, the only thread that will use it.
///
/// Where the kernel charges ring memory to RLIMIT_MEMLOCK (no CAP_IPC_LOCK),
/// a short limit gets a smaller ring rather than a failure: a shallower
/// queue costs a few more `io_uring_enter` calls under load, nothing else.
pub fn build_ring(entries: u32) -> Result<IoUring, UringError> {
    let mut entries = entries;
    loop {
        match build_ring_with(entries) {
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && entries > MIN_RING_ENTRIES => {
                entries /= 2
            }
            result => return result.map_err(classify),
        }
    }
}

fn build_ring_with(entries: u32) -> io::Result<IoUring> {
    let tuned = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_coop_taskrun()
        .setup_cqsize(entries * 4)
        .build(entries);
    match tuned {
        // Older kernels reject the flags: fall back to a plain ring.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            IoUring::builder().setup_cqsize(entries * 4).build(entries)
        }
        result => result,
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

/// Packs what a completion must say about its operation into `user_data`:
/// the kind of operation (8 bits), the generation of the slot it belongs to
/// (24 bits, so a completion for a slot since reused is recognised) and the
/// slot (32 bits).
pub fn user_data(kind: u64, generation: u32, slot: u32) -> u64 {
    kind << 56 | u64::from(generation & 0x00ff_ffff) << 32 | u64::from(slot)
}

/// The generation after `generation`, within the 24 bits [`user_data`] keeps.
pub fn next_generation(generation: u32) -> u32 {
    generation.wrapping_add(1) & 0x00ff_ffff
}

/// The inverse of [`user_data`]: (kind, generation, slot).
pub fn split_user_data(data: u64) -> (u64, u32, u32) {
    (data >> 56, (data >> 32) as u32 & 0x00ff_ffff, data as u32)
}

/// How much io memory each core asks for: ring depth and receive buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoBudget {
    pub ring_entries: u32,
    pub recv_buffers: u16,
}

/// Receive buffers per core when memory is not short.
pub const RECV_BUFFERS: u16 = 1024;
const MIN_RECV_BUFFERS: u16 = 64;
const PAGE: u64 = 4096;

impl IoBudget {
    /// Bytes the kernel pins for one core: the SQEs, the CQ ring (four CQEs
    /// per SQE) with its index array, and the provided-buffer ring entries.
    pub fn pinned_bytes(&self) -> u64 {
        let entries = u64::from(self.ring_entries);
        let round = |b: u64| b.div_ceil(PAGE) * PAGE;
        round(64 * entries)
            + round(16 * 4 * entries + 4 * entries + 256)
            + round(16 * u64::from(self.recv_buffers))
    }

    /// The largest budget whose pinned memory, times `cores`, fits in
    /// `limit` bytes (`None`: no limit applies, as with CAP_IPC_LOCK).
    pub fn fitting(cores: usize, limit: Option<u64>) -> Self {
        let mut budget = Self {
            ring_entries: RING_ENTRIES,
            recv_buffers: RECV_BUFFERS,
        };
        let Some(limit) = limit else { return budget };
        let per_core = limit / cores.max(1) as u64;
        while budget.pinned_bytes() > per_core {
            if budget.ring_entries > MIN_RING_ENTRIES {
                budget.ring_entries /= 2;
            } else if budget.recv_buffers > MIN_RECV_BUFFERS {
                budget.recv_buffers /= 2;
            } else {
                break;
            }
        }
        budget
    }

    /// The budget for this process: limited by RLIMIT_MEMLOCK unless it holds CAP_IPC_LOCK.
    pub fn for_this_process(cores: usize) -> Self {
        Self::fitting(cores, memlock_limit_applies())
    }
}

/// The locked-memory limit in bytes, or `None` if it does not bind this process.
fn memlock_limit_applies() -> Option<u64> {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has_ipc_lock = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0);
    if has_ipc_lock {
        return None;
    }
    // SAFETY: getrlimit writes the struct we own.
    let limit = unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit);
        limit.rlim_cur
    };
    (limit != libc::RLIM_INFINITY).then_some(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_shrinks_to_fit_the_limit() {
        let full = IoBudget::fitting(2, None);
        assert_eq!(
            (full.ring_entries, full.recv_buffers),
            (RING_ENTRIES, RECV_BUFFERS)
        );
        assert_eq!(IoBudget::fitting(2, Some(8 << 20)), full);
        let small = IoBudget::fitting(2, Some(64 << 10));
        assert!(small.pinned_bytes() * 2 <= 64 << 10, "{small:?}");
        assert!(small.ring_entries >= MIN_RING_ENTRIES);
        let tiny = IoBudget::fitting(4, Some(0));
        assert_eq!(
            (tiny.ring_entries, tiny.recv_buffers),
            (MIN_RING_ENTRIES, MIN_RECV_BUFFERS)
        );
    }
}

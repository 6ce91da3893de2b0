//! One thread's io_uring and its submission discipline: a push never fails, and no completion is lost while making room for it.
//!
//! Both the server's io cores and the load generator's client cores drive
//! their operations through a [`Ring`]: they build entries (see
//! [`super::ops`]), [`Ring::push`] them, wait with [`Ring::submit_and_wait`]
//! and take what completed with [`Ring::drain`] until it yields nothing.
//!
//! A push into a full submission queue submits what is queued; if the
//! kernel refuses because the completion queue overflowed (EBUSY), the
//! completions are taken into a backlog to make room, and [`Ring::drain`]
//! hands the backlog out first, so completions keep their order.

use std::io;

use io_uring::{squeue, IoUring, Submitter};

use super::bufring::BufRing;
use crate::runtime::uring::{self, UringError};

/// A completion as the owner handles it: (`user_data`, result, flags).
pub type Cqe = (u64, i32, u32);

/// Fewest provided buffers [`register_buffers`] settles for when locked memory is short.
pub const MIN_BUFFERS: u16 = 16;

/// An io_uring used by the calling thread only, with the completions taken early.
pub struct Ring {
    ring: IoUring,
    /// Completions taken from the kernel while making room to submit.
    backlog: Vec<Cqe>,
}

impl Ring {
    /// A ring of up to `entries` submission entries for the calling thread
    /// (see [`uring::build_ring`]: fewer if locked memory is short).
    pub fn new(entries: u32) -> Result<Self, UringError> {
        Ok(Self::from_io_uring(uring::build_ring(entries)?))
    }

    /// Wraps a ring built elsewhere.
    pub fn from_io_uring(ring: IoUring) -> Self {
        Self {
            ring,
            backlog: Vec::new(),
        }
    }

    /// Queues `entry`; if the submission queue is full, first hands what is
    /// queued to the kernel (taking completions into the backlog if the
    /// completion queue overflowed). The entry reaches the kernel at the
    /// next submit at the latest.
    ///
    /// # Safety
    ///
    /// Everything the entry points to (buffers, socket addresses,
    /// timespecs, counters) must stay valid and unmoved, and what the kernel
    /// writes must not be read or written by anyone else, until the
    /// operation's last completion (for a multishot operation: the one
    /// without `IORING_CQE_F_MORE`) has been taken from this ring, or until
    /// the ring is dropped. The descriptor it names must not be closed and
    /// reused for another file before then. Memory an entry only passes in
    /// at submission (a timespec of `Timeout`) must live until the next
    /// submit, which a push may do at once.
    pub unsafe fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: the caller's contract above is io_uring's.
        while unsafe { self.ring.submission().push(entry) }.is_err() {
            // The submission queue is full: hand what is queued to the kernel.
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue overflowed: make room by taking its
                // completions now; drain() hands them out first.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => self.reap(),
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    /// Submits what is queued and waits until `want` completions are ready.
    ///
    /// Does not wait if completions are already in the backlog. An
    /// interrupted wait (EINTR), an overflowed completion queue (EBUSY) or a
    /// kernel short of memory for the moment (EAGAIN) count as a wake-up:
    /// the caller drains and comes back.
    pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        let want = if self.backlog.is_empty() { want } else { 0 };
        tolerate(self.ring.submit_and_wait(want))
    }

    /// Submits what is queued and lets the kernel post what has completed
    /// (its deferred task work), without waiting: for a caller that polls.
    pub fn submit_and_poll(&mut self) -> io::Result<()> {
        let pending = self.ring.submission().len() as u32;
        // SAFETY: no argument is passed; the flags only ask the kernel to
        // run completions before returning.
        tolerate(unsafe {
            self.ring.submitter().enter::<libc::sigset_t>(
                pending,
                0,
                io_uring::EnterFlags::GETEVENTS.bits(),
                None,
            )
        })
    }

    /// Appends every completion ready (the backlog first) to `into`, and
    /// returns how many. Allocates only if `into` must grow: keep one
    /// vector and clear it between calls.
    pub fn drain(&mut self, into: &mut Vec<Cqe>) -> usize {
        let before = into.len();
        into.append(&mut self.backlog);
        into.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        into.len() - before
    }

    /// For registrations (buffers, worker limits) and other direct calls.
    pub fn submitter(&self) -> Submitter<'_> {
        self.ring.submitter()
    }

    fn reap(&mut self) {
        let ring = &mut self.ring;
        self.backlog.extend(
            ring.completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
    }
}

/// The errors of `io_uring_enter` that only mean "come back".
fn tolerate(result: io::Result<usize>) -> io::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Registers `count` (a power of two) provided receive buffers of `size`
/// bytes under buffer group `group`, halving the count down to
/// [`MIN_BUFFERS`] while locked memory is short.
///
/// The buffers must outlive every receive that selects from them: drop the
/// [`BufRing`] after the ring (declare the ring field first).
pub fn register_buffers(
    ring: &Ring,
    count: u16,
    size: usize,
    group: u16,
) -> Result<BufRing, UringError> {
    let mut count = count;
    loop {
        match BufRing::register(&ring.submitter(), count, size, group) {
            Ok(buffers) => return Ok(buffers),
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && count > MIN_BUFFERS => count /= 2,
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(uring::locked_memory("its receive buffer ring", e))
            }
            Err(e) => return Err(uring::classify(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::ops;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    fn nop(data: u64) -> squeue::Entry {
        io_uring::opcode::Nop::new().build().user_data(data)
    }

    /// Drains until `n` completions arrived, waiting for them.
    fn collect(ring: &mut Ring, n: usize) -> Vec<Cqe> {
        let mut all = Vec::new();
        while all.len() < n {
            ring.submit_and_wait(1).unwrap();
            ring.drain(&mut all);
        }
        all
    }

    #[test]
    fn more_entries_than_the_queue_holds_all_complete() {
        let mut ring = Ring::new(32).unwrap();
        let n = 32 * 10;
        for i in 0..n {
            // SAFETY: a NOP refers to no memory.
            unsafe { ring.push(&nop(i)) };
        }
        let all = collect(&mut ring, n as usize);
        assert_eq!(all.len(), n as usize);
        let mut seen: Vec<u64> = all.iter().map(|c| c.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
        assert!(all.iter().all(|c| c.1 == 0));
    }

    #[test]
    fn an_overflowed_completion_queue_loses_nothing() {
        // CQ is four times the SQ: push 20 times the SQ without draining.
        let mut ring = Ring::new(32).unwrap();
        let n = 32 * 20;
        for i in 0..n {
            // SAFETY: a NOP refers to no memory.
            unsafe { ring.push(&nop(i)) };
        }
        ring.submit_and_wait(0).unwrap();
        let mut all = Vec::new();
        while all.len() < n as usize {
            ring.submit_and_wait(0).unwrap();
            if ring.drain(&mut all) == 0 {
                ring.submit_and_wait(1).unwrap();
            }
        }
        let mut seen: Vec<u64> = all.iter().map(|c| c.0).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..n).collect::<Vec<_>>());
    }

    #[test]
    fn eventfd_read_round_trip() {
        let mut ring = Ring::new(32).unwrap();
        // SAFETY: eventfd returns a new descriptor or -1 (checked).
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: the descriptor is fresh and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut counter = Box::new(0u64);
        // SAFETY: the counter and the eventfd live past the completion,
        // which collect() waits for.
        unsafe { ring.push(&ops::read_eventfd(fd.as_raw_fd(), &mut counter, 7)) };
        ring.submit_and_wait(0).unwrap();
        let add: u64 = 5;
        // SAFETY: writes 8 bytes from a u64 we own.
        let wrote = unsafe { libc::write(fd.as_raw_fd(), (&add as *const u64).cast(), 8) };
        assert_eq!(wrote, 8);
        let all = collect(&mut ring, 1);
        assert_eq!(all, vec![(7, 8, 0)]);
        assert_eq!(*counter, 5);
    }

    #[test]
    fn cancel_ends_a_pending_read() {
        let mut ring = Ring::new(32).unwrap();
        // SAFETY: as above.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut counter = Box::new(0u64);
        // SAFETY: as above; the cancel refers to no memory.
        unsafe {
            ring.push(&ops::read_eventfd(fd.as_raw_fd(), &mut counter, 1));
            ring.submit_and_wait(0).unwrap();
            ring.push(&ops::cancel(1, 2));
        }
        let mut all = collect(&mut ring, 2);
        all.sort_unstable();
        assert_eq!(all[0].0, 1);
        assert_eq!(all[0].1, -libc::ECANCELED);
        assert_eq!((all[1].0, all[1].1), (2, 0));
    }
}

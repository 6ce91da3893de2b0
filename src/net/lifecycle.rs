//! A node's shutdown state as every io core sees it: readiness, the draining flag and the cores that still have connections.
//!
//! Shutdown has two phases. First the node turns *unready*
//! ([`Lifecycle::mark_unready`]): `/readyz` fails so a balancer takes it out
//! of rotation, while it keeps accepting and serving as before
//! (`--drain-delay`). Then it *drains* ([`Lifecycle::start_draining`]):
//! listeners close and connections close after their current request.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Written rarely (a signal, a core's last connection closing), read on every request.
pub struct Lifecycle {
    /// `/readyz` fails; the node still accepts and serves.
    unready: AtomicBool,
    draining: AtomicBool,
    /// io cores that still have connections while draining.
    cores_with_connections: AtomicUsize,
}

impl Lifecycle {
    pub fn new(io_cores: usize) -> Self {
        Self {
            unready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            cores_with_connections: AtomicUsize::new(io_cores),
        }
    }

    /// True once shutdown has begun: `/readyz` fails and connections close after their current request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// False from the first phase of shutdown on: `/readyz` fails.
    #[inline]
    pub fn is_ready(&self) -> bool {
        !self.unready.load(Ordering::Relaxed) && !self.is_draining()
    }

    /// The first phase of shutdown: `/readyz` fails, everything else goes on.
    pub fn mark_unready(&self) {
        self.unready.store(true, Ordering::Relaxed);
    }

    /// The second phase: listeners close, connections finish their current request.
    pub fn start_draining(&self) {
        self.unready.store(true, Ordering::Relaxed);
        self.draining.store(true, Ordering::Relaxed);
    }

    /// A draining core has closed its last connection.
    pub fn core_drained(&self) {
        self.cores_with_connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Every core has closed its connections: none waits for another's answer.
    pub fn all_cores_drained(&self) -> bool {
        self.cores_with_connections.load(Ordering::Acquire) == 0
    }
}

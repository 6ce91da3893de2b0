//! A node's shutdown state as every io core sees it: the draining flag and the cores that still have connections.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Written rarely (a signal, a core's last connection closing), read on every request.
pub struct Lifecycle {
    draining: AtomicBool,
    /// io cores that still have connections while draining.
    cores_with_connections: AtomicUsize,
}

impl Lifecycle {
    pub fn new(io_cores: usize) -> Self {
        Self {
            draining: AtomicBool::new(false),
            cores_with_connections: AtomicUsize::new(io_cores),
        }
    }

    /// True once shutdown has begun: `/readyz` fails and connections close after their current request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
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

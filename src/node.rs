//! What every core of the node may read: the draining flag and the metrics registry.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::limit::Limiter;
use crate::metrics::Registry;
use crate::queue::Queues;
use crate::statics::Index;

/// Read-mostly state shared by all cores. Writes are rare (a signal) and
/// never on the hot path.
pub struct Node {
    draining: AtomicBool,
    pub metrics: Arc<Registry>,
    pub io_cores: usize,
    /// The rate limiter, when one is configured.
    pub limiter: Option<Arc<Limiter>>,
    /// The static file index, when `--static-dir` is set.
    pub statics: Option<Arc<Index>>,
    /// The job system, when `--data-dir` is set.
    pub queues: Option<Arc<Queues>>,
}

impl Node {
    pub fn new(
        io_cores: usize,
        metrics: Arc<Registry>,
        limiter: Option<Arc<Limiter>>,
        statics: Option<Arc<Index>>,
        queues: Option<Arc<Queues>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            metrics,
            io_cores,
            limiter,
            statics,
            queues,
        })
    }

    /// True once shutdown has begun: `/readyz` fails and connections close after their current request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

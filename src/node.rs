//! What every core of the node may read: the draining flag and the metrics registry.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::docs::DataShared;
use crate::limit::Limiter;
use crate::metrics::Registry;
use crate::queue::Queues;
use crate::statics::Index;

/// Read-mostly state shared by all cores. Writes are rare (a signal) and
/// never on the hot path.
pub struct Node {
    draining: AtomicBool,
    /// io cores that still have connections while draining.
    cores_with_connections: AtomicUsize,
    pub metrics: Arc<Registry>,
    pub io_cores: usize,
    /// The rate limiter, when one is configured.
    pub limiter: Option<Arc<Limiter>>,
    /// The static file index, when `--static-dir` is set.
    pub statics: Option<Arc<Index>>,
    /// The job system, when `--data-dir` is set.
    pub queues: Option<Arc<Queues>>,
    /// The document store's shard map, limits and counters.
    pub data: Option<Arc<DataShared>>,
}

impl Node {
    pub fn new(
        io_cores: usize,
        metrics: Arc<Registry>,
        limiter: Option<Arc<Limiter>>,
        statics: Option<Arc<Index>>,
        queues: Option<Arc<Queues>>,
        data: Option<Arc<DataShared>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            draining: AtomicBool::new(false),
            cores_with_connections: AtomicUsize::new(io_cores),
            metrics,
            io_cores,
            limiter,
            statics,
            queues,
            data,
        })
    }

    /// True once shutdown has begun: `/readyz` fails and connections close after their current request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A draining core has closed its last connection.
    pub fn core_drained(&self) {
        self.cores_with_connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Every core has closed its connections: none waits for another's answer.
    pub fn all_cores_drained(&self) -> bool {
        self.cores_with_connections.load(Ordering::Acquire) == 0
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

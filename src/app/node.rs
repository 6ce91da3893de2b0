//! What every core of the node may read: its lifecycle, the metrics registry, and the read-mostly tables of the built-in layers.

use std::sync::Arc;

use crate::auth::Auth;
use crate::config::Values;
use crate::documents::DataShared;
use crate::limit::Limiter;
use crate::metrics::Registry;
use crate::net::Lifecycle;
use crate::queue::Queues;
use crate::statics::Index;

/// Read-mostly state shared by all cores. Writes are rare (a signal) and
/// never on the hot path.
pub struct Node {
    pub lifecycle: Arc<Lifecycle>,
    pub metrics: Arc<Registry>,
    pub io_cores: usize,
    /// The application's name and the routes its public listener serves, as
    /// `(method, pattern)` in match order (for `/openapi.json`): with an
    /// admin listener, the operator calls are not among them.
    pub name: &'static str,
    pub routes: Vec<(&'static str, &'static str)>,
    /// Every option's resolved value, percore's and the application's.
    pub values: Values,
    /// The rate limiter, when one is configured.
    pub limiter: Option<Arc<Limiter>>,
    /// True with `--admin-listen`: operator calls are served there alone.
    pub admin_listener: bool,
    /// Authentication and per-route authorization, when configured.
    pub auth: Option<Arc<Auth>>,
    /// The static file index, when `--static-dir` is set.
    pub statics: Option<Arc<Index>>,
    /// The job system, when `--data-dir` or `--queue` is set.
    pub queues: Option<Arc<Queues>>,
    /// The document store's shard map, limits and counters.
    pub data: Option<Arc<DataShared>>,
}

impl Node {
    /// True once shutdown has begun: `/readyz` fails and connections close after their current request.
    #[inline]
    pub fn is_draining(&self) -> bool {
        self.lifecycle.is_draining()
    }

    /// `/metrics`: the request and connection series, then each layer's own.
    pub fn render_metrics(&self) -> String {
        let mut text = self.metrics.render();
        if let Some(limiter) = &self.limiter {
            self.metrics.render_rate_limit(limiter, &mut text);
        }
        if let Some(auth) = &self.auth {
            self.metrics.render_auth(auth.reload_counts(), &mut text);
        }
        if let Some(queues) = &self.queues {
            queues.render_metrics(&mut text);
        }
        if let Some(data) = &self.data {
            data.render_metrics(&mut text);
        }
        text
    }
}

//! Counters and latency histograms: recorded by the io core that owns them, published for `/metrics`.
//!
//! Each io core records into state it alone writes: plain atomics it updates
//! with a load and a store (no locked instruction: there is one writer), and
//! HdrHistograms it owns outright. Once per tick the core copies its
//! histograms into a published slot guarded by a mutex it only ever
//! `try_lock`s, so a scrape can delay a publication by a tick but never block
//! an io core. `/metrics` renders from what is published: counters are live,
//! latency quantiles are at most one tick old.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

const FIRST_STATUS: usize = 100;
const STATUS_SLOTS: usize = 500;
/// Latencies are recorded in nanoseconds, up to a minute, to two significant digits.
const LATENCY_MAX_NS: u64 = 60_000_000_000;
const LATENCY_SIGFIG: u8 = 2;

fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// Adds to a counter that only the calling core writes.
#[inline]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Relaxed).wrapping_add(by), Relaxed);
}

/// Picks one counter of a core, for rendering.
type CounterField = fn(&CoreShared) -> &AtomicU64;

/// What one core publishes. Aligned so two cores never share a cache line.
#[repr(align(128))]
struct CoreShared {
    requests_by_status: Box<[AtomicU64]>,
    open_connections: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    latency: Mutex<Vec<Histogram<u64>>>,
}

/// Every core's published metrics; rendered as Prometheus text by any core.
pub struct Registry {
    cores: Box<[CoreShared]>,
    routes: Vec<&'static str>,
}

impl Registry {
    /// `routes` names the latency series; requests that match no route are
    /// recorded under an extra `(unmatched)` series.
    pub fn new(cores: usize, routes: &[&'static str]) -> Arc<Self> {
        let mut routes = routes.to_vec();
        routes.push("(unmatched)");
        let cores = (0..cores)
            .map(|_| CoreShared {
                requests_by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
                open_connections: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                timed_out: AtomicU64::new(0),
                latency: Mutex::new(routes.iter().map(|_| new_latency_histogram()).collect()),
            })
            .collect();
        Arc::new(Self { cores, routes })
    }

    /// The recorder for core `core`; call once per core.
    pub fn recorder(self: &Arc<Self>, core: usize) -> CoreMetrics {
        CoreMetrics {
            core,
            latency: self
                .routes
                .iter()
                .map(|_| new_latency_histogram())
                .collect(),
            dirty: false,
            registry: Arc::clone(self),
        }
    }

    /// Total requests answered with `status` on every core.
    pub fn requests_with_status(&self, status: u16) -> u64 {
        let slot = usize::from(status).wrapping_sub(FIRST_STATUS);
        self.cores
            .iter()
            .filter_map(|c| c.requests_by_status.get(slot))
            .map(|c| c.load(Relaxed))
            .sum()
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP percore_requests_total Requests answered, by io core and status.\n");
        out.push_str("# TYPE percore_requests_total counter\n");
        for (core, shared) in self.cores.iter().enumerate() {
            for (slot, count) in shared.requests_by_status.iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    let status = slot + FIRST_STATUS;
                    let _ = writeln!(
                        out,
                        "percore_requests_total{{core=\"{core}\",status=\"{status}\"}} {count}"
                    );
                }
            }
        }
        let gauges: [(&str, &str, &str, CounterField); 4] = [
            (
                "percore_open_connections",
                "gauge",
                "Open client connections, by io core.",
                |c| &c.open_connections,
            ),
            (
                "percore_connections_accepted_total",
                "counter",
                "Connections accepted, by io core.",
                |c| &c.accepted,
            ),
            (
                "percore_connections_refused_total",
                "counter",
                "Connections refused at the per-core limit, by io core.",
                |c| &c.refused,
            ),
            (
                "percore_connections_timed_out_total",
                "counter",
                "Connections closed by the idle or header-read timeout, by io core.",
                |c| &c.timed_out,
            ),
        ];
        for (name, kind, help, field) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (core, shared) in self.cores.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}{{core=\"{core}\"}} {}",
                    field(shared).load(Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP percore_request_duration_seconds Time from a request's bytes arriving to its response being written to the connection's buffer, by route (HdrHistogram, all cores; at most one tick old).\n",
        );
        out.push_str("# TYPE percore_request_duration_seconds summary\n");
        let mut merged: Vec<Histogram<u64>> = self
            .routes
            .iter()
            .map(|_| new_latency_histogram())
            .collect();
        for shared in self.cores.iter() {
            let published = shared.latency.lock().unwrap_or_else(|p| p.into_inner());
            for (total, core) in merged.iter_mut().zip(published.iter()) {
                // Same bounds on both sides, so adding cannot fail.
                let _ = total.add(core);
            }
        }
        for (route, histogram) in self.routes.iter().zip(&merged) {
            for quantile in [0.5, 0.9, 0.99, 0.999] {
                let seconds = histogram.value_at_quantile(quantile) as f64 / 1e9;
                let _ = writeln!(
                    out,
                    "percore_request_duration_seconds{{route=\"{route}\",quantile=\"{quantile}\"}} {seconds:.9}"
                );
            }
            let sum = histogram.mean() * histogram.len() as f64 / 1e9;
            let _ = writeln!(
                out,
                "percore_request_duration_seconds_sum{{route=\"{route}\"}} {sum:.9}"
            );
            let _ = writeln!(
                out,
                "percore_request_duration_seconds_count{{route=\"{route}\"}} {}",
                histogram.len()
            );
        }
        out
    }
}

/// One core's recorder: the only writer of that core's metrics.
pub struct CoreMetrics {
    core: usize,
    latency: Vec<Histogram<u64>>,
    dirty: bool,
    registry: Arc<Registry>,
}

impl CoreMetrics {
    fn shared(&self) -> &CoreShared {
        &self.registry.cores[self.core]
    }

    /// Records one answered request. `route` is the router's index, or
    /// `None` when no route matched.
    #[inline]
    pub fn request(&mut self, route: Option<usize>, status: u16, nanos: u64) {
        let slot = usize::from(status).wrapping_sub(FIRST_STATUS);
        if let Some(counter) = self.shared().requests_by_status.get(slot) {
            bump(counter, 1);
        }
        let series = route.unwrap_or(self.latency.len() - 1);
        if let Some(histogram) = self.latency.get_mut(series) {
            histogram.saturating_record(nanos.max(1));
            self.dirty = true;
        }
    }

    pub fn connection_opened(&self) {
        let shared = self.shared();
        bump(&shared.accepted, 1);
        bump(&shared.open_connections, 1);
    }

    pub fn connection_closed(&self) {
        let open = &self.shared().open_connections;
        open.store(open.load(Relaxed).saturating_sub(1), Relaxed);
    }

    pub fn connection_refused(&self) {
        bump(&self.shared().refused, 1);
    }

    pub fn connection_timed_out(&self) {
        bump(&self.shared().timed_out, 1);
    }

    /// Copies this core's histograms to where `/metrics` reads them. Called
    /// once per tick; skips a beat rather than wait for a scrape in progress.
    pub fn publish(&mut self) {
        if !self.dirty {
            return;
        }
        let Ok(mut published) = self.registry.cores[self.core].latency.try_lock() else {
            return;
        };
        for (slot, local) in published.iter_mut().zip(&self.latency) {
            slot.reset();
            let _ = slot.add(local);
        }
        self.dirty = false;
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders_per_core() {
        let registry = Registry::new(2, &["/json"]);
        let mut core0 = registry.recorder(0);
        let mut core1 = registry.recorder(1);
        core0.request(Some(0), 200, 1_000);
        core0.request(Some(0), 200, 3_000);
        core1.request(None, 404, 2_000);
        core1.connection_opened();
        core0.publish();
        core1.publish();
        assert_eq!(registry.requests_with_status(200), 2);
        let text = registry.render();
        assert!(
            text.contains("percore_requests_total{core=\"0\",status=\"200\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("percore_requests_total{core=\"1\",status=\"404\"} 1\n"));
        assert!(text.contains("percore_open_connections{core=\"1\"} 1\n"));
        assert!(text.contains("percore_request_duration_seconds_count{route=\"/json\"} 2\n"));
        assert!(text.contains("percore_request_duration_seconds_count{route=\"(unmatched)\"} 1\n"));
    }
}

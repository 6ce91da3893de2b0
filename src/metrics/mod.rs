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
use std::time::Instant;

use hdrhistogram::Histogram;

use crate::limit::{Limiter, Outcome};

const DECISIONS: [&str; 4] = ["allowed", "limited", "shadow_limited", "overflow"];

fn decision_slot(outcome: Outcome) -> usize {
    match outcome {
        Outcome::Allowed => 0,
        Outcome::Limited => 1,
        Outcome::ShadowLimited => 2,
        Outcome::Overflow => 3,
    }
}

/// What authentication decided of a request, for `percore_auth_decisions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    /// A valid credential with what the route needs.
    Verified,
    /// No credential, on a public route.
    Anonymous,
    /// 401: none where one is needed.
    Missing,
    /// 401: a credential that failed verification.
    Invalid,
    /// 403: a valid credential without the route's scope.
    Forbidden,
}

const AUTH_DECISIONS: [&str; 5] = ["verified", "anonymous", "missing", "invalid", "forbidden"];

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
    requests_by_status: [AtomicU64; STATUS_SLOTS],
    open_connections: AtomicU64,
    accepted: AtomicU64,
    /// Accepted connections whose packets arrive on another CPU than the core's.
    accepted_off_cpu: AtomicU64,
    refused: AtomicU64,
    timed_out: AtomicU64,
    /// Rate-limit decisions, indexed by [`decision_slot`].
    rate_limit: [AtomicU64; 4],
    /// Authentication decisions, indexed by [`AuthDecision`].
    auth: [AtomicU64; 5],
    latency: Mutex<Vec<Histogram<u64>>>,
}

/// Every core's published metrics; rendered as Prometheus text by any core.
pub struct Registry {
    cores: Box<[Arc<CoreShared>]>,
    routes: Vec<&'static str>,
}

impl Registry {
    /// `routes` names the latency series; requests that match no route are
    /// recorded under an extra `(unmatched)` series.
    pub fn new(cores: usize, routes: &[&'static str]) -> Arc<Self> {
        let mut routes = routes.to_vec();
        routes.push("(unmatched)");
        let cores = (0..cores)
            .map(|_| {
                Arc::new(CoreShared {
                    requests_by_status: std::array::from_fn(|_| AtomicU64::new(0)),
                    open_connections: AtomicU64::new(0),
                    accepted: AtomicU64::new(0),
                    accepted_off_cpu: AtomicU64::new(0),
                    refused: AtomicU64::new(0),
                    timed_out: AtomicU64::new(0),
                    rate_limit: std::array::from_fn(|_| AtomicU64::new(0)),
                    auth: std::array::from_fn(|_| AtomicU64::new(0)),
                    latency: Mutex::new(routes.iter().map(|_| new_latency_histogram()).collect()),
                })
            })
            .collect();
        Arc::new(Self { cores, routes })
    }

    /// The recorder for core `core`; call once per core.
    pub fn recorder(self: &Arc<Self>, core: usize) -> CoreMetrics {
        CoreMetrics {
            shared: Arc::clone(&self.cores[core]),
            latency: self
                .routes
                .iter()
                .map(|_| new_latency_histogram())
                .collect(),
            batch_counts: vec![0; self.routes.len()],
            batch_series: Vec::with_capacity(self.routes.len()),
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

    /// Appends authentication's decisions by core, and the reloads of its
    /// files taken and refused.
    pub fn render_auth(&self, reloads: (u64, u64), out: &mut String) {
        out.push_str("# HELP percore_auth_decisions_total Authentication decisions, by io core.\n");
        out.push_str("# TYPE percore_auth_decisions_total counter\n");
        for (core, shared) in self.cores.iter().enumerate() {
            for (slot, decision) in AUTH_DECISIONS.iter().enumerate() {
                let count = shared.auth[slot].load(Relaxed);
                let _ = writeln!(
                    out,
                    "percore_auth_decisions_total{{core=\"{core}\",decision=\"{decision}\"}} {count}"
                );
            }
        }
        out.push_str(
            "# HELP percore_auth_reloads_total Reloads of the keys file or key set, by result.\n",
        );
        out.push_str("# TYPE percore_auth_reloads_total counter\n");
        let _ = writeln!(
            out,
            "percore_auth_reloads_total{{result=\"loaded\"}} {}",
            reloads.0
        );
        let _ = writeln!(
            out,
            "percore_auth_reloads_total{{result=\"refused\"}} {}",
            reloads.1
        );
    }

    /// Appends the rate limiter's decisions by core, its table size and evictions.
    pub fn render_rate_limit(&self, limiter: &Limiter, out: &mut String) {
        out.push_str(
            "# HELP percore_ratelimit_decisions_total Rate-limit decisions, by io core.\n",
        );
        out.push_str("# TYPE percore_ratelimit_decisions_total counter\n");
        for (core, shared) in self.cores.iter().enumerate() {
            for (slot, decision) in DECISIONS.iter().enumerate() {
                let count = shared.rate_limit[slot].load(Relaxed);
                let _ = writeln!(out, "percore_ratelimit_decisions_total{{core=\"{core}\",decision=\"{decision}\"}} {count}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP percore_ratelimit_keys Client keys the rate limiter tracks now.\n# TYPE percore_ratelimit_keys gauge\npercore_ratelimit_keys {}",
            limiter.tracked_keys()
        );
        let _ = writeln!(
            out,
            "# HELP percore_ratelimit_max_keys The cap on tracked keys.\n# TYPE percore_ratelimit_max_keys gauge\npercore_ratelimit_max_keys {}",
            limiter.rules.max_keys
        );
        let _ = writeln!(
            out,
            "# HELP percore_ratelimit_evictions_total Idle or excess keys dropped from the table.\n# TYPE percore_ratelimit_evictions_total counter\npercore_ratelimit_evictions_total {}",
            limiter.evictions()
        );
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
        let gauges: [(&str, &str, &str, CounterField); 5] = [
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
                "percore_accepted_off_cpu_total",
                "counter",
                "Connections accepted whose packets the kernel took on another CPU than their io core's (SO_INCOMING_CPU), by io core; CPU steering keeps it at 0.",
                |c| &c.accepted_off_cpu,
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
            "# HELP percore_request_duration_seconds Time from the io core taking a request's bytes from the kernel to the end of the event-loop turn that answered it, by route (HdrHistogram over all cores, at most one tick old).\n",
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
///
/// Latency is recorded per batch: every request answered in one turn of
/// the event loop shares the turn's start and end, which costs one clock read
/// per turn instead of one per request. That is also what the client sees:
/// no response of the turn reaches the kernel before the turn ends.
pub struct CoreMetrics {
    shared: Arc<CoreShared>,
    latency: Vec<Histogram<u64>>,
    /// Requests answered this turn, per latency series.
    batch_counts: Vec<u32>,
    /// The series with a non-zero count this turn.
    batch_series: Vec<usize>,
    dirty: bool,
    registry: Arc<Registry>,
}

impl CoreMetrics {
    fn shared(&self) -> &CoreShared {
        &self.shared
    }

    /// Counts one answered request. `route` is the router's index, or
    /// `None` when no route matched. Its latency is recorded by [`Self::finish_batch`].
    #[inline]
    pub fn request(&mut self, route: Option<usize>, status: u16) {
        let slot = usize::from(status).wrapping_sub(FIRST_STATUS);
        if let Some(counter) = self.shared.requests_by_status.get(slot) {
            bump(counter, 1);
        }
        let series = route.unwrap_or(self.latency.len() - 1);
        if let Some(count) = self.batch_counts.get_mut(series) {
            if *count == 0 {
                self.batch_series.push(series);
            }
            *count += 1;
        }
    }

    /// Ends a turn of the event loop that began at `started`: records its
    /// latency once for every request answered in it.
    pub fn finish_batch(&mut self, started: Instant) {
        if self.batch_series.is_empty() {
            return;
        }
        let nanos = (started.elapsed().as_nanos() as u64).max(1);
        for series in self.batch_series.drain(..) {
            let count = std::mem::take(&mut self.batch_counts[series]);
            self.latency[series].saturating_record_n(nanos, u64::from(count));
        }
        self.dirty = true;
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

    /// Counts an accepted connection whose packets arrive on another CPU than this core's.
    pub fn accepted_off_cpu(&self) {
        bump(&self.shared().accepted_off_cpu, 1);
    }

    pub fn connection_refused(&self) {
        bump(&self.shared().refused, 1);
    }

    /// Counts one rate-limit decision.
    pub fn rate_limit(&self, outcome: Outcome) {
        bump(&self.shared.rate_limit[decision_slot(outcome)], 1);
    }

    /// Counts one authentication decision.
    pub fn auth(&self, decision: AuthDecision) {
        bump(&self.shared.auth[decision as usize], 1);
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
        let Ok(mut published) = self.shared.latency.try_lock() else {
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
        let started = Instant::now();
        core0.request(Some(0), 200);
        core0.request(Some(0), 200);
        core1.request(None, 404);
        core0.finish_batch(started);
        core1.finish_batch(started);
        core1.connection_opened();
        core1.accepted_off_cpu();
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
        assert!(text.contains("percore_accepted_off_cpu_total{core=\"0\"} 0\n"));
        assert!(text.contains("percore_accepted_off_cpu_total{core=\"1\"} 1\n"));
        assert!(text.contains("percore_request_duration_seconds_count{route=\"/json\"} 2\n"));
        assert!(text.contains("percore_request_duration_seconds_count{route=\"(unmatched)\"} 1\n"));
    }
}

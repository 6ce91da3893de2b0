//! Route handlers and the per-core service that dispatches a parsed request to them.

pub mod docs;
pub mod jobs;
pub mod router;
pub mod techempower;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use httparse::Header;
use serde::Serialize;

use crate::docs::{DataRequest, Gathered, Plane};
use crate::http::date::DateCache;
use crate::http::response::FileBody;
use crate::http::{Head, HttpError, Persistence, Response, Version};
use crate::limit::{Limiter, Outcome};
use crate::metrics::CoreMetrics;
use crate::node::Node;
use crate::queue;
use crate::rng::Rng;
use crate::statics::{self, Index};
pub use router::{Match, Params, Router};

/// A request as handlers see it: everything borrows the connection's buffer.
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a [Header<'a>],
    pub params: Params<'a>,
    pub body: &'a [u8],
}

impl<'a> Request<'a> {
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// What a handler may use: its core's identity and the node's shared state.
pub struct Ctx {
    pub core: usize,
    pub node: Arc<Node>,
    /// A reusable buffer for serializing bodies before their length is known.
    pub scratch: Vec<u8>,
    /// Set by a handler whose answer another thread will give; it then writes no response.
    pub deferred: Option<Deferred>,
    /// This core's document plane: its cache partition and the way to every shard.
    pub plane: Plane,
    pub rng: Rng,
}

/// Work a handler leaves for another thread or core, answered later.
#[derive(Debug)]
pub enum Deferred {
    /// For the job manager.
    Job(queue::Deferred),
    /// For the document plane.
    Data(DataRequest),
}

/// A deferred answer, as it comes back.
#[derive(Debug)]
pub enum Answer {
    Job(queue::Answer),
    Data(Gathered),
}

/// A handler writes exactly one response.
pub type Handler = fn(&Request<'_>, &mut Ctx, &mut Response<'_>);

/// The route table every io core serves.
pub fn routes() -> Router<Handler> {
    let mut router: Router<Handler> = Router::default();
    router
        .add("GET", "/plaintext", plaintext)
        .add("GET", "/json", json)
        .add("GET", "/healthz", healthz)
        .add("GET", "/readyz", readyz)
        .add("GET", "/metrics", metrics)
        .add("POST", "/echo", echo)
        .add("POST", "/v1/jobs/:queue", jobs::submit)
        .add("GET", "/v1/jobs/:id", jobs::status)
        .add("POST", "/v1/jobs/:id/redrive", jobs::redrive)
        .add("GET", "/v1/dead", jobs::dead_letters)
        .add("GET", "/v1/:collection/:key", docs::get)
        .add("PUT", "/v1/:collection/:key", docs::put)
        .add("PATCH", "/v1/:collection/:key", docs::patch)
        .add("DELETE", "/v1/:collection/:key", docs::delete)
        .add("GET", "/v1/:collection", docs::scan)
        .add("GET", "/db", techempower::db)
        .add("GET", "/queries", techempower::queries)
        .add("GET", "/cached-queries", techempower::cached_queries)
        .add("GET", "/updates", techempower::updates)
        .add("GET", "/fortunes", techempower::fortunes);
    router
}

/// TechEmpower "plaintext": a fixed body, no serialization.
fn plaintext(_: &Request<'_>, _: &mut Ctx, response: &mut Response<'_>) {
    response.send(200, "text/plain", &[], b"Hello, World!");
}

/// TechEmpower "JSON serialization": a fresh object serialized per request.
fn json(_: &Request<'_>, ctx: &mut Ctx, response: &mut Response<'_>) {
    #[derive(Serialize)]
    struct Message {
        message: &'static str,
    }
    response.json(
        200,
        &Message {
            message: "Hello, World!",
        },
        &mut ctx.scratch,
    );
}

fn healthz(_: &Request<'_>, _: &mut Ctx, response: &mut Response<'_>) {
    response.send(200, "application/json", &[], br#"{"status":"ok"}"#);
}

fn readyz(_: &Request<'_>, ctx: &mut Ctx, response: &mut Response<'_>) {
    if ctx.node.is_draining() {
        response.send(
            503,
            "application/json",
            &[("Retry-After", "1")],
            br#"{"status":"draining"}"#,
        );
    } else {
        response.send(200, "application/json", &[], br#"{"status":"ready"}"#);
    }
}

fn metrics(_: &Request<'_>, ctx: &mut Ctx, response: &mut Response<'_>) {
    let mut text = ctx.node.metrics.render();
    if let Some(limiter) = &ctx.node.limiter {
        ctx.node.metrics.render_rate_limit(limiter, &mut text);
    }
    if let Some(queues) = &ctx.node.queues {
        render_queue_metrics(queues, &mut text);
    }
    if let Some(data) = &ctx.node.data {
        render_data_metrics(data, &mut text);
    }
    response.send(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        &[],
        text.as_bytes(),
    );
}

/// Answers with the request body: a benchmark target for upload paths.
fn echo(request: &Request<'_>, _: &mut Ctx, response: &mut Response<'_>) {
    let content_type = request
        .header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("application/octet-stream");
    response.send(200, content_type, &[], request.body);
}

/// How to write an answer that another thread gives later.
#[derive(Debug, Clone, Copy)]
pub struct Awaiting {
    pub keep_alive: bool,
    pub version: Version,
    pub head_only: bool,
    /// The route, for metrics.
    pub route: usize,
}

fn persistence(keep_alive: bool, version: Version) -> Persistence {
    match (keep_alive, version) {
        (false, _) => Persistence::Close,
        (true, Version::Http11) => Persistence::KeepAlive,
        (true, Version::Http10) => Persistence::KeepAliveHttp10,
    }
}

/// One io core's request dispatcher: its router, date, metrics and handler context.
pub struct Service {
    router: Router<Handler>,
    limiter: Option<Arc<Limiter>>,
    statics: Option<Arc<Index>>,
    /// A file body the last answer left to be sent after its head.
    pending_file: Option<FileBody>,
    /// The last request's answer was deferred: how to write it when it comes.
    awaiting: Option<Awaiting>,
    pub ctx: Ctx,
    pub date: DateCache,
    pub metrics: CoreMetrics,
}

impl Service {
    pub fn new(core: usize, node: Arc<Node>, plane: Plane) -> Self {
        let metrics = node.metrics.recorder(core);
        Self {
            router: routes(),
            limiter: node.limiter.clone(),
            statics: node.statics.clone(),
            pending_file: None,
            awaiting: None,
            ctx: Ctx {
                core,
                node,
                scratch: Vec::with_capacity(1024),
                deferred: None,
                plane,
                rng: Rng::new(core as u64),
            },
            date: DateCache::new(),
            metrics,
        }
    }

    /// Work the last handler deferred, to hand to the job manager.
    pub fn take_deferred(&mut self) -> Option<Deferred> {
        self.ctx.deferred.take()
    }

    /// The request whose answer was deferred, if the last one was.
    pub fn take_awaiting(&mut self) -> Option<Awaiting> {
        self.awaiting.take()
    }

    /// Writes the deferred answer for a request that was awaiting it.
    pub fn render_answer(
        &mut self,
        answer: Answer,
        awaiting: &Awaiting,
        headers: &[u8],
        out: &mut Vec<u8>,
    ) {
        let persistence = persistence(awaiting.keep_alive && !self.is_draining(), awaiting.version);
        let mut response = Response::new(out, self.date.get(), awaiting.head_only, persistence)
            .with_extra_headers(headers);
        let answer = match answer {
            Answer::Job(answer) => answer,
            Answer::Data(gathered) => {
                docs::render(gathered, &mut response, &mut self.ctx.scratch);
                self.metrics
                    .request(Some(awaiting.route), response.status());
                return;
            }
        };
        match answer {
            queue::Answer::Accepted {
                id,
                queue,
                replayed,
            } => {
                let location = format!("/v1/jobs/{id}");
                let body = serde_json::json!({ "id": id.to_string(), "queue": queue, "status": "queued", "location": location });
                let body = serde_json::to_vec(&body).expect("JSON values serialize");
                let mut headers = vec![("Location", location.as_str())];
                if replayed {
                    headers.push(("Idempotent-Replayed", "true"));
                }
                response.send(202, "application/json", &headers, &body);
            }
            queue::Answer::Redriven { id } => {
                let location = format!("/v1/jobs/{id}");
                let body = format!("{{\"id\":\"{id}\",\"status\":\"queued\"}}");
                response.send(
                    202,
                    "application/json",
                    &[("Location", location.as_str())],
                    body.as_bytes(),
                );
            }
            queue::Answer::Rejected(error) => response.error(&error, &mut self.ctx.scratch),
        }
        self.metrics
            .request(Some(awaiting.route), response.status());
    }

    /// The file body the last answer left to send, if any.
    pub fn take_file(&mut self) -> Option<FileBody> {
        self.pending_file.take()
    }

    pub fn is_draining(&self) -> bool {
        self.ctx.node.is_draining()
    }

    /// Checks a request's head against the rate limiter, as soon as the
    /// head is complete and before its body is read. Writes the rate-limit
    /// header lines for the response into `headers` (left empty when no
    /// limit applies). Errs with the seconds to wait if the request is over its limit.
    pub fn admit(
        &mut self,
        head: &Head<'_, '_>,
        peer: Option<IpAddr>,
        now: Instant,
        headers: &mut Vec<u8>,
    ) -> Result<(), u64> {
        headers.clear();
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        let Some(verdict) = limiter.check(head.method, head.path, head.headers, peer, now) else {
            return Ok(());
        };
        self.metrics.rate_limit(verdict.outcome);
        match verdict.outcome {
            // Shadow mode changes nothing a client can see.
            Outcome::ShadowLimited => Ok(()),
            Outcome::Allowed | Outcome::Overflow => {
                limiter.write_headers(&verdict, headers);
                Ok(())
            }
            Outcome::Limited => {
                limiter.write_headers(&verdict, headers);
                Err(verdict.retry_after_secs)
            }
        }
    }

    /// Answers 429 to a request [`Self::admit`] refused. `keep_alive` is
    /// false when its body was not read, so the connection must close.
    pub fn reject_limited(
        &mut self,
        head: &Head<'_, '_>,
        retry_after_secs: u64,
        headers: &[u8],
        keep_alive: bool,
        out: &mut Vec<u8>,
    ) {
        let keep_alive = keep_alive && head.keep_alive && !self.is_draining();
        let persistence = persistence(keep_alive, head.version);
        let mut response = Response::new(out, self.date.get(), head.method == "HEAD", persistence)
            .with_extra_headers(headers);
        response.error(
            &HttpError::RateLimited { retry_after_secs },
            &mut self.ctx.scratch,
        );
        self.metrics.request(None, 429);
    }

    /// Answers one complete request into `out`, with `headers` (pre-rendered
    /// header lines) added. Returns whether the connection stays open.
    pub fn handle(
        &mut self,
        head: &Head<'_, '_>,
        body: &[u8],
        headers: &[u8],
        out: &mut Vec<u8>,
    ) -> bool {
        let keep_alive = head.keep_alive && !self.is_draining();
        let persistence = persistence(keep_alive, head.version);
        let mut response = Response::new(out, self.date.get(), head.method == "HEAD", persistence)
            .with_extra_headers(headers);
        let path = head.path;
        if let Some(statics) = self
            .statics
            .as_ref()
            .filter(|s| path.starts_with(&s.options().prefix))
        {
            self.pending_file = statics::serve(statics, head, &mut response, &mut self.ctx.scratch);
            let status = response.status();
            // The static series sits after the router's, before "(unmatched)".
            self.metrics.request(Some(self.router.len()), status);
            return keep_alive;
        }
        let route = match self.router.route(head.method, path) {
            Match::Found {
                index,
                handler,
                params,
            } => {
                let request = Request {
                    method: head.method,
                    path,
                    query: head.query,
                    headers: head.headers,
                    params,
                    body,
                };
                handler(&request, &mut self.ctx, &mut response);
                if !response.is_written() && self.ctx.deferred.is_some() {
                    // Counted in metrics when the answer is written.
                    self.awaiting = Some(Awaiting {
                        keep_alive,
                        version: head.version,
                        head_only: head.method == "HEAD",
                        route: index,
                    });
                    return keep_alive;
                }
                if !response.is_written() {
                    response.error(
                        &HttpError::Internal("the handler wrote no response"),
                        &mut self.ctx.scratch,
                    );
                }
                Some(index)
            }
            Match::MethodNotAllowed { allow } => {
                let error = HttpError::MethodNotAllowed {
                    method: head.method.to_owned(),
                    allow,
                };
                response.error(&error, &mut self.ctx.scratch);
                None
            }
            Match::NotFound => {
                response.error(
                    &HttpError::NotFound {
                        path: path.to_owned(),
                    },
                    &mut self.ctx.scratch,
                );
                None
            }
        };
        let status = response.status();
        self.metrics.request(route, status);
        keep_alive
    }

    /// Answers a request that failed before it could be routed.
    pub fn reject(&mut self, error: &HttpError, out: &mut Vec<u8>) {
        let mut response = Response::new(out, self.date.get(), false, Persistence::Close);
        response.error(error, &mut self.ctx.scratch);
        self.metrics.request(None, error.status());
    }
}

/// Picks one counter out of a set of counters.
type Field<C> = fn(&C) -> &std::sync::atomic::AtomicU64;

/// One per-core metric: name, type, help, and which counter.
type Row<C> = (&'static str, &'static str, &'static str, Field<C>);

/// Writes each row's family with one sample per core.
fn render_per_core<C>(rows: &[Row<C>], counters: &[Arc<C>], out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    for (name, kind, help, field) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (core, c) in counters.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", field(c).load(Relaxed));
        }
    }
}

/// The document store's, cache partitions' and plane's counters, per core, in Prometheus text.
fn render_data_metrics(data: &crate::docs::DataShared, out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    const CACHE: [Row<crate::cache::CacheCounters>; 8] = [
        (
            "percore_cache_hits_total",
            "counter",
            "Reads answered from the core's cache partition.",
            |c| &c.hits,
        ),
        (
            "percore_cache_misses_total",
            "counter",
            "Reads the cache partition could not answer.",
            |c| &c.misses,
        ),
        (
            "percore_cache_inserts_total",
            "counter",
            "Documents put into the cache partition.",
            |c| &c.inserts,
        ),
        (
            "percore_cache_evictions_total",
            "counter",
            "Documents evicted to stay within --cache-bytes.",
            |c| &c.evictions,
        ),
        (
            "percore_cache_expirations_total",
            "counter",
            "Documents dropped after --cache-ttl.",
            |c| &c.expirations,
        ),
        (
            "percore_cache_invalidations_total",
            "counter",
            "Cached documents dropped by a delete, or replaced by a write too large to cache.",
            |c| &c.invalidations,
        ),
        (
            "percore_cache_bytes",
            "gauge",
            "Bytes the cache partition holds.",
            |c| &c.bytes,
        ),
        (
            "percore_cache_entries",
            "gauge",
            "Documents the cache partition holds.",
            |c| &c.entries,
        ),
    ];
    const STORE: [Row<crate::store::thread::StoreCounters>; 5] = [
        ("percore_store_commits_total", "counter", "Durable commits: one fdatasync of the core's write-ahead log per batch, for all its shards.", |c| &c.commits),
        ("percore_store_checkpoints_total", "counter", "Checkpoints: the core's shards made durable in their engines, an old write-ahead log removed.", |c| &c.checkpoints),
        ("percore_store_committed_writes_total", "counter", "Document writes and deletes made durable.", |c| &c.committed_writes),
        ("percore_store_failed_commits_total", "counter", "Commits that failed; their writes were refused.", |c| &c.failed_commits),
        ("percore_store_reads_total", "counter", "Documents read from the store (cache misses and uncached reads).", |c| &c.reads),
    ];
    const PLANE: [Row<crate::docs::PlaneCounters>; 3] = [
        (
            "percore_data_forwarded_total",
            "counter",
            "Document operations sent to the core that owns their shard.",
            |c| &c.forwarded,
        ),
        (
            "percore_data_coalesced_total",
            "counter",
            "Cache misses that joined a read already in flight (single flight).",
            |c| &c.coalesced,
        ),
        (
            "percore_data_store_ops_total",
            "counter",
            "Operations sent to the core's store thread.",
            |c| &c.store_ops,
        ),
    ];
    render_per_core(&CACHE, &data.cache_counters, out);
    render_per_core(&STORE, &data.store_counters, out);
    render_per_core(&PLANE, &data.plane_counters, out);
    let name = "percore_store_commit_seconds_total";
    let _ = writeln!(out, "# HELP {name} Time spent making batches durable (log append and fdatasync, engine apply).\n# TYPE {name} counter");
    for (core, c) in data.store_counters.iter().enumerate() {
        let seconds = c.commit_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}{{core=\"{core}\"}} {seconds:.6}");
    }
    let _ = writeln!(
        out,
        "# HELP percore_shard_map_version Version of the shard map in force.\n# TYPE percore_shard_map_version gauge\npercore_shard_map_version {}\n# HELP percore_shards Shards of the document store.\n# TYPE percore_shards gauge\npercore_shards {}",
        data.map.version,
        data.map.shards()
    );
}

/// The job system's gauges and counters in Prometheus text.
fn render_queue_metrics(queues: &crate::queue::Queues, out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    let m = &queues.metrics;
    let oldest_ms = m.oldest_waiting_ms.load(Relaxed);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let age = if oldest_ms == 0 {
        0.0
    } else {
        now_ms.saturating_sub(oldest_ms) as f64 / 1000.0
    };
    let rows: [(&str, &str, &str, String); 6] = [
        (
            "percore_jobs_waiting",
            "gauge",
            "Jobs waiting to run, queued or waiting to retry.",
            m.waiting.load(Relaxed).to_string(),
        ),
        (
            "percore_jobs_running",
            "gauge",
            "Jobs a worker is running now.",
            m.running.load(Relaxed).to_string(),
        ),
        (
            "percore_jobs_oldest_waiting_age_seconds",
            "gauge",
            "Age of the oldest waiting job.",
            format!("{age:.3}"),
        ),
        (
            "percore_jobs_succeeded_total",
            "counter",
            "Jobs that succeeded since start.",
            m.succeeded.load(Relaxed).to_string(),
        ),
        (
            "percore_jobs_retries_total",
            "counter",
            "Failed attempts scheduled for a retry since start.",
            m.retries.load(Relaxed).to_string(),
        ),
        (
            "percore_jobs_dead_total",
            "counter",
            "Jobs moved to the dead letters since start.",
            m.dead.load(Relaxed).to_string(),
        ),
    ];
    for (name, kind, help, value) in rows {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

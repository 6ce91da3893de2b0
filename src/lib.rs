//! percore: a thread-per-core, zero-copy HTTP/1.1 API server for Linux.
//!
//! # A library first
//! [`app::App`] is how a service is built on percore: routes of plain `fn`
//! handlers, each core's own state, job kinds, options and the built-in
//! layers, run on the io cores with `percore serve`'s command line.
//! `percore serve` itself is [`api::percore`], one such composition; its
//! endpoints are route groups any application mounts. The extension points:
//! [`app::Ctx`] (per-core state, [`app::Ctx::on_core`],
//! [`app::Ctx::spawn_blocking`], [`app::Ctx::defer_job`],
//! [`app::Ctx::defer_documents`], [`app::Ctx::option`]),
//! [`documents::Render`] for answers gathered from the document store,
//! [`queue::kinds::JobKind`], [`http::ApiError`] for errors with their own
//! status and code, and [`config::Opt`] for options. `examples/` has two
//! complete programs.
//!
//! # Layers
//! Lower layers never import higher ones. [`net`] (the io core) is generic
//! over a [`net::Service`] and its message type and imports only [`http`]
//! and [`runtime::uring`]; the store ([`store`]) and the job system
//! ([`queue`]) answer a core through an [`net::Outlet`] of their own
//! message type; the document plane ([`documents`]) renders nothing, its
//! callers' plans do; [`app`] composes them all and [`api`] is percore's own
//! application on top.
//!
//! # The model
//! Every io core is a thread pinned to one CPU that owns everything it
//! touches on the hot path: an io_uring, a `SO_REUSEPORT` listener (the
//! kernel spreads connections across cores), every connection that listener
//! accepts, and its metrics. Nothing on the request path takes a lock or
//! crosses cores. What every core must read lives in [`app::Node`]: the
//! draining flag, the metrics registry, and the read-mostly shared tables the
//! design allows (the rate limiter's, the static file index, job statuses),
//! each a lock-free `papaya` map.
//!
//! # The request path
//! multishot accept → multishot receive into a kernel-picked provided buffer
//! ([`net::bufring`]) → parse in place into a stack array (a strict fast path for the common head, `httparse` for the rest)
//! ([`http::parse`]) → route ([`app::router`]) → handler writes the response
//! straight into the connection's output buffer ([`http::response`]) → when
//! every request in the received bytes is answered, one send. Pipelined
//! requests are answered in order in one send. Only a request that spans two
//! receives is copied, into the connection's own buffer ([`net::session`]).
//!
//! # Why not glommio for the network path
//! The design started from glommio. Its `TcpStream` submits one receive and
//! one send per request and wakes a task for each; here each io core runs one
//! `io_uring_enter` per batch of completions across all its connections,
//! with receives that stay armed (multishot) and buffers the kernel picks.
//! `benches/compare.py` measures this core against a naive glommio server,
//! hyper and a raw epoll floor in the same run; the README has the numbers.
//! The runtime is behind [`runtime`] and [`net`], so it can be swapped. The
//! io core is monomorphized for its service ([`net::IoCore`]`<S>`), so the
//! seam between the network path and the application costs no virtual call.
//!
//! # Answers that come from another thread
//! Some answers cannot be written on the io core: a job is acknowledged only
//! once the job manager has fsynced it ([`queue`]). The handler then writes
//! nothing and leaves [`app::Deferred`] work, started with the connection's
//! address ([`net::ConnId`]); the connection's later pipelined requests
//! wait, in order; the manager answers through the core's mailbox (a
//! channel of the service's message type plus the core's eventfd,
//! [`net::Mailbox`]), and the core writes the response when it wakes; a
//! connection that closed meanwhile simply does not take it. Document
//! operations take the same road ([`documents`]): the handler leaves a
//! [`documents::DataRequest`], the operations go to the cores that own their
//! shards, and the parts come back to be rendered in order by the handler's
//! plan. Large static files are likewise
//! sent after their head, by splice ([`statics`], [`net::event_loop`]).
//!
//! # The layers inside one node
//! Load balancing: one `SO_REUSEPORT` listener per core ([`net::listener`]),
//! steered by CPU: a classic BPF program on the reuseport group hands each
//! new connection to the io core on the CPU whose softirq took its SYN
//! (`--steer`, [`runtime::steer`]), and `/metrics` counts connections
//! accepted off their core's CPU; `/healthz`, `/readyz`, drain on SIGTERM in
//! two phases, readiness first (`--drain-delay`, [`net::lifecycle`]), then
//! the listeners ([`runtime`]); a restart hands the listening sockets to
//! the new process, keyed by io core, so no connection is refused
//! (`--handover`, [`runtime::handover`]). The host around it is tuned by `tuning/` (apply, check,
//! revert) and `bpf/` drops blocked networks in XDP before TCP (README,
//! *Tuning a host*). Rate limiting:
//! GCRA per client across all cores ([`limit`]). Static content like a CDN
//! edge ([`statics`]). Async processing with a durable job log and worker
//! threads ([`queue`]). Lightweight payloads: in-place parsing, responses
//! written straight into the output buffer, no allocation per request
//! (`tests/alloc.rs`), `?fields=` masks ([`json`]). Sharding and caching:
//! documents live in shards ([`store`]), each owned by one io core, whose
//! store thread alone touches the shard's engine and whose cache partition
//! ([`cache`]) holds its documents; requests for another core's shard cross
//! as messages ([`documents`], [`net::mailbox`]), never through a lock. A store
//! thread makes each batch of writes durable with one fdatasync of its
//! core's write-ahead log ([`store::wal`]), whatever shards the batch touched.
//!
//! # When the disk fails
//! The job log ([`queue::log`]) and every store thread's write-ahead log
//! ([`store::wal`]) append through one [`durable::Appender`]: a batch is
//! acknowledged only after its fdatasync succeeded; a failed append (disk
//! full, an I/O error on the write or on the fdatasync) is cut back to the
//! last durable record, or, if even the cut fails, cut before the next
//! append, which writes nothing until it can. So a failed batch is refused
//! (503 with `Retry-After`: `store_unavailable`, `job_log_unavailable`)
//! and the next one is taken as soon as the disk takes it, with no
//! restart; reads go on. The job manager rebuilds its state from its log
//! after a failed commit and probes until a commit succeeds
//! ([`queue`]). A shard whose engine refuses writes its log already holds,
//! or fails a checkpoint (redb refuses everything after an I/O error),
//! owes those writes: it answers 503, reads included, and keeps every log,
//! while its store thread reopens the engine and replays the logs into it
//! ([`store::thread`]). Not recovered without an operator: an engine file
//! that cannot be opened again (while the disk still fails, the owing
//! shard refuses reads too; a file the engine finds corrupt never opens,
//! and a restart fails the same way). EIO is unit-tested through an
//! injectable file ([`durable::LogFile`]); a full disk end to end by
//! `tests/diskfaults.rs` on a tmpfs of its own.
//!
//! # Who may do what
//! With an API keys file or a JWT key configured, every request is checked
//! in [`net::Service::admit`], after its head and before its body, ahead of
//! the rate limiter ([`auth`]): the first rule matching its method and path
//! names the scope it needs; a missing or bad credential is a 401, a
//! missing scope a 403. Each core caches what it verified
//! ([`auth::cache`]), so a known key costs a hash and a compare, and no
//! allocation. The principal can be the rate limiter's key. Operator calls
//! can live on a listener of their own (`--admin-listen`: io core 0 accepts
//! on it, and [`net::Service::admit`] is told which listener a connection
//! came from). Outbound, webhooks connect only where the egress policy
//! allows ([`queue::egress`]: internal addresses refused on the address
//! actually connected to, https verified with rustls).
//!
//! # PostgreSQL shards
//! With `--store postgres` each shard is a PostgreSQL database
//! ([`store::pg`]). The owner core holds the shard's one connection on its
//! own ring: a service may drive outbound connections on the io core's
//! ring ([`net::Service::drive_outbound`], [`net::Service::on_outbound`],
//! [`net::OutboundIo`]), so a database socket costs no thread hop and its
//! completions come in the same `io_uring_enter` as the clients'. The
//! queries of one loop turn go out in one write, each with its own `Sync`;
//! the handshake runs off the core. Writes record their keys in a change
//! table in their own transaction, which every node polls; a cache hit is
//! served only while the shard's connection has proven, within
//! `--cache-stale-bound`, that it saw every earlier commit
//! ([`store::pg::shard::PgShards::fresh`]).
//!
//! # Several nodes
//! Nodes that share PostgreSQL shards and a JetStream stream can each serve
//! every key; a balancer in front (`deploy/`: HAProxy, nginx) hashes the
//! document path so each node's caches hold the keys it is sent, and checks
//! `/readyz`. A node drains in two phases (`--drain-delay`: readiness
//! fails first, listeners close later) and restarts without refusing a
//! connection by handing its listeners to its successor
//! ([`runtime::handover`]). `tests/multinode.rs` runs HAProxy and three
//! nodes as hosts in network namespaces.
//!
//! # Limits that matter at start-up
//! io_uring must be allowed (`kernel.io_uring_disabled=0`, no seccomp filter
//! blocking it). Without `CAP_IPC_LOCK` the kernel charges each core's rings
//! and provided-buffer ring to `RLIMIT_MEMLOCK`: percore raises the soft
//! limit to the hard one, sizes its rings to fit what is left
//! ([`runtime::uring::IoBudget`]), and otherwise exits with one line naming
//! the limit and the fix. Linux 6.0+ is needed for multishot receive.
//!
//! # The load generator
//! `percore bench` ([`loadgen`]) has the server's shape: pinned client cores,
//! each with its own io_uring and connections, closed loop or open loop
//! (`--rate`, latency from each request's intended send time).

pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod documents;
pub mod durable;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod json;
pub mod limit;
pub mod loadgen;
pub mod metrics;
pub mod net;
pub mod queue;
pub mod rng;
pub mod runtime;
pub mod statics;
pub mod store;

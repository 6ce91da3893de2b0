//! percore: a thread-per-core, zero-copy HTTP/1.1 API server for Linux.
//!
//! # The model
//! Every io core is a thread pinned to one CPU that owns everything it
//! touches on the hot path: an io_uring, a `SO_REUSEPORT` listener (the
//! kernel spreads connections across cores), every connection that listener
//! accepts, and its metrics. Nothing on the request path takes a lock or
//! crosses cores. What every core must read (the draining flag, the metrics
//! registry) lives in [`node::Node`].
//!
//! # The request path
//! multishot accept → multishot receive into a kernel-picked provided buffer
//! ([`net::bufring`]) → parse in place with `httparse` into a stack array
//! ([`http::parse`]) → route ([`api::router`]) → handler writes the response
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
//! The runtime is behind [`runtime`] and [`net`], so it can be swapped.
//!
//! # Limits that matter at start-up
//! io_uring must be allowed (`kernel.io_uring_disabled=0`, no seccomp filter
//! blocking it). Each core pins only its provided-buffer ring (16 KiB) in
//! locked memory; percore raises `RLIMIT_MEMLOCK` to its hard limit, halves
//! the ring if memory is still short, and otherwise exits with one line
//! naming the limit and the fix. Linux 6.0+ is needed for multishot receive.
//!
//! # The load generator
//! `percore bench` ([`loadgen`]) has the server's shape: pinned client cores,
//! each with its own io_uring and connections, closed loop or open loop
//! (`--rate`, latency from each request's intended send time).

pub mod api;
pub mod config;
pub mod http;
pub mod limit;
pub mod loadgen;
pub mod metrics;
pub mod net;
pub mod node;
pub mod queue;
pub mod runtime;
pub mod statics;

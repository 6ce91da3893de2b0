//! What a handler sees: the request, its core's context (own state, the document plane, the node), and the ways to answer later.

use std::borrow::Cow;
use std::sync::Arc;

use httparse::Header;
use serde::Serialize;

use super::node::Node;
use super::router::Params;
use crate::config::{Opt, Presence};
use crate::documents::{DataRequest, Plane};
use crate::http::{ApiError, Response};
use crate::queue;
use crate::rng::Rng;

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

    /// The path parameter `name` of the route's pattern (`:name`), as sent (not percent-decoded).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.get(name)
    }
}

/// Work that runs on another core, with that core's context, and answers with a [`Reply`].
pub type Call<S> = Box<dyn FnOnce(&mut Ctx<S>) -> Reply + Send>;

/// Blocking work for a worker thread, answered with a [`Reply`].
pub type Blocking = Box<dyn FnOnce() -> Reply + Send>;

/// Work a handler leaves instead of writing a response; the answer comes later, in order.
pub enum Deferred<S> {
    /// For the job manager: answered once the job is durable.
    Job(queue::Deferred),
    /// For the document plane: answered once every part is in.
    Data(DataRequest),
    /// For another core's context (its own state, its shards' cache).
    Call { core: usize, call: Call<S> },
    /// For a worker thread.
    Blocking(Blocking),
}

impl<S> std::fmt::Debug for Deferred<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Job(work) => f.debug_tuple("Job").field(work).finish(),
            Self::Data(request) => f.debug_tuple("Data").field(request).finish(),
            Self::Call { core, .. } => f.debug_struct("Call").field("core", core).finish(),
            Self::Blocking(_) => f.write_str("Blocking"),
        }
    }
}

/// One io core's context, handed to every handler that core runs. `S` is
/// the application's own per-core state: each core builds its own (see
/// [`super::App::with_state`]) and only that core touches it, so it needs
/// no lock.
pub struct Ctx<S> {
    core: usize,
    /// The application's state on this core.
    pub state: S,
    pub node: Arc<Node>,
    /// A reusable buffer for serializing bodies before their length is known.
    pub scratch: Vec<u8>,
    /// This core's document plane: its cache partition and the way to every shard.
    pub plane: Plane,
    pub rng: Rng,
    pub(super) deferred: Option<Deferred<S>>,
}

impl<S> Ctx<S> {
    pub(super) fn new(core: usize, state: S, node: Arc<Node>, plane: Plane) -> Self {
        Self {
            core,
            state,
            node,
            scratch: Vec::with_capacity(1024),
            plane,
            rng: Rng::new(core as u64),
            deferred: None,
        }
    }

    /// This io core's index, `0..cores()`.
    pub fn core(&self) -> usize {
        self.core
    }

    /// How many io cores the node runs.
    pub fn cores(&self) -> usize {
        self.node.io_cores
    }

    /// The core that owns `key` when an application partitions its own
    /// per-core state by key (FNV-1a, as the document store's default map).
    pub fn core_for(&self, key: &[u8]) -> usize {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for &byte in key {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        (hash % self.cores() as u64) as usize
    }

    pub fn is_draining(&self) -> bool {
        self.node.is_draining()
    }

    /// False once shutdown has begun, from its first phase (`--drain-delay`) on: `/readyz` fails.
    pub fn is_ready(&self) -> bool {
        self.node.lifecycle.is_ready()
    }

    /// The resolved value of an option (the application's own, declared
    /// with [`super::App::option`], or one of percore's).
    pub fn option<T: Clone + 'static, P: Presence>(&self, option: &Opt<T, P>) -> P::Out<T> {
        self.node.values.get(option)
    }

    /// Answers later, once the document plane has every part of `request`.
    pub fn defer_documents(&mut self, request: DataRequest) {
        self.deferred = Some(Deferred::Data(request));
    }

    /// Answers later, once the job manager has made `work` durable (202) or refused it.
    pub fn defer_job(&mut self, work: queue::Deferred) {
        self.deferred = Some(Deferred::Job(work));
    }

    /// Runs `call` on io core `core` with that core's context, and answers
    /// with what it returns. On this core it runs at once, after the handler.
    pub fn on_core(
        &mut self,
        core: usize,
        call: impl FnOnce(&mut Ctx<S>) -> Reply + Send + 'static,
    ) {
        self.deferred = Some(Deferred::Call {
            core: core % self.cores().max(1),
            call: Box::new(call),
        });
    }

    /// Runs `work` on a worker thread (it may block: a file, a DNS lookup,
    /// another service) and answers with what it returns. A full worker
    /// queue answers 503 at once.
    pub fn spawn_blocking(&mut self, work: impl FnOnce() -> Reply + Send + 'static) {
        self.deferred = Some(Deferred::Blocking(Box::new(work)));
    }

    /// True once the handler has deferred its answer.
    pub fn has_deferred(&self) -> bool {
        self.deferred.is_some()
    }
}

/// An owned response, for answers written later or on another thread
/// ([`Ctx::on_core`], [`Ctx::spawn_blocking`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    status: u16,
    content_type: Cow<'static, str>,
    headers: Vec<(Cow<'static, str>, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub fn new(
        status: u16,
        content_type: impl Into<Cow<'static, str>>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// `value` as JSON; a value that cannot be serialized answers 500.
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::new(status, "application/json", body),
            Err(_) => Self::new(
                500,
                "application/json",
                &br#"{"error":"internal","message":"response serialization failed"}"#[..],
            ),
        }
    }

    pub fn text(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body)
    }

    /// An error in the shape every error has: `{"error": code, "message": ...}`.
    pub fn error<E: ApiError + ?Sized>(error: &E) -> Self {
        let body = serde_json::json!({ "error": error.code(), "message": error.to_string() });
        let mut reply = Self::json(error.status(), &body);
        if let Some((name, value)) = error.header() {
            reply = reply.with_header(name, value);
        }
        reply
    }

    pub fn with_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Writes the reply as the response to the request that awaited it.
    pub fn write(&self, response: &mut Response<'_>) {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(name, value)| (name.as_ref(), value.as_str()))
            .collect();
        response.send(self.status, &self.content_type, &headers, &self.body);
    }
}

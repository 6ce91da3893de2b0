//! One io core's PostgreSQL shard connections on its own ring: queries of a loop turn pipelined in one write, replies matched in order, other nodes' changes polled, reconnection with backoff.
//!
//! Each operation becomes `Bind`, `Execute`, `Sync` of a prepared statement
//! (a read-modify-write, PATCH, becomes two in turn), appended to the
//! connection's pending bytes; at the end of the loop turn
//! ([`PgShards::drive`]) whatever is pending goes out in one send while no
//! other is in flight. Replies come back in order: an operation's outcome
//! is decided at its `CommandComplete` or `ErrorResponse`, and its
//! `ReadyForQuery` ends it. Outcomes, invalidations from other nodes'
//! changes (polled every half staleness bound, [`sql::POLL`]) and resets
//! leave as [`Event`]s in the order they came off the wire, which is what
//! keeps the cache partition right: a read's row and a later poll's
//! invalidation of it are applied in that order.
//!
//! A connection that fails (the server went away, a reset, a protocol
//! error) fails every operation in flight at once, and so does every new
//! one for the shard until a new connection is up: 503 with
//! `Retry-After`, for that shard's keys only. Reconnection runs the
//! handshake on a short-lived thread, with backoff from 100 ms to 5 s, and
//! the new socket is adopted by the ring when it is ready.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use postgres_protocol::types as pgtypes;
use postgres_protocol::IsNull;

use super::handshake::{self, error_fields, Ready, Setup};
use super::sql::{self, oid, Statement};
use super::url::PgUrl;
use super::PgError;
use crate::net::outbound::{Completion, Outbound, Recv, Sent, State};
use crate::net::{OutboundCompletion, OutboundIo, Outlet, OUTBOUND_KINDS};
use crate::store::thread::{patched, Precondition, StoreOp, StoreOutcome, TagSet};
use crate::store::{SqlOp, StoreError, Stored, SCAN_PART_BYTES};

/// What the shards tell the plane, in wire order.
#[derive(Debug)]
pub enum Event {
    /// The outcome of the operation with this ticket.
    Outcome { ticket: u64, outcome: StoreOutcome },
    /// Another node changed this storage key: drop it from the cache.
    Invalidate(Vec<u8>),
    /// Invalidations of this shard may have been missed: cache nothing of it.
    Reset(u32),
}

/// A handshake finished off the core, for the connection of `shard`.
#[derive(Debug)]
pub struct Opened {
    pub shard: u32,
    pub result: Result<Ready, PgError>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a connection deletes changes older than [`sql::CHANGES_KEPT_SECS`].
const FORGET_EVERY: Duration = Duration::from_secs(10);
/// Attempts of a PATCH whose document another writer changed between its read and its write.
const PATCH_ATTEMPTS: u32 = 8;
/// Most bytes one send carries; the rest follows in the next.
const MAX_SEND: usize = 1 << 20;
/// Sends whose queries are not all answered yet, at most: the batch
/// PostgreSQL is working through and the one queued behind it. What comes
/// meanwhile waits in `pending` and goes in the next send, so PostgreSQL
/// never idles for want of a query while each send carries more of them
/// (measured on `/db`: 0.05 writes into PostgreSQL per query instead of
/// 0.47, and 5–8 % less server CPU per request; PostgreSQL's CPU level).
const SENDS_UNANSWERED: usize = 2;

/// Which sends on one connection still wait for answers, and so whether
/// the next may go ([`SENDS_UNANSWERED`]).
#[derive(Debug, Default)]
struct SendGate {
    /// Queries queued and queries answered (ReadyForQuery), counted from
    /// the connection's start.
    queued: u64,
    answered: u64,
    /// For each send not yet answered in full, the count `queued` had
    /// when it went: it is answered when `answered` reaches that.
    unanswered: VecDeque<u64>,
    /// The last send carried only part of the pending bytes.
    split: bool,
}

impl SendGate {
    fn queued(&mut self) {
        self.queued += 1;
    }

    fn answered(&mut self) {
        self.answered += 1;
        while self
            .unanswered
            .front()
            .is_some_and(|&end| end <= self.answered)
        {
            self.unanswered.pop_front();
        }
    }

    /// Whether a send may go now, and if so notes it; `whole` says whether
    /// it carries every pending byte. The rest of a split send goes at once
    /// whatever the count: its last query cannot be answered before all of
    /// it is sent.
    fn send(&mut self, whole: bool) -> bool {
        if whole && !self.split && self.unanswered.len() >= SENDS_UNANSWERED {
            return false;
        }
        if whole {
            self.unanswered.push_back(self.queued);
        }
        self.split = !whole;
        true
    }
}

enum Link {
    /// No connection: operations fail at once. Reconnect at `retry_at`.
    Down {
        retry_at: Instant,
        backoff: Duration,
        error: String,
    },
    /// A handshake is running on its own thread.
    Opening {
        backoff: Duration,
    },
    Up,
}

/// What one `Sync`-terminated query was for.
enum Query {
    Get,
    /// The document writes of one loop turn, one statement ([`sql::WRITE`]).
    Writes(Vec<Write>),
    Scan {
        collection: Vec<u8>,
    },
    /// The read half of a PATCH.
    PatchRead {
        key: Vec<u8>,
        patch: Bytes,
        cond: Precondition,
        max_bytes: usize,
        attempt: u32,
    },
    World,
    Fortunes,
    /// A read of a row `/updates` writes; its answer is not needed.
    Discard,
    UpdateWorlds {
        rows: Vec<(i32, i32)>,
    },
    /// Other nodes' changes since the last poll ([`sql::POLL`]).
    Poll,
    /// Old changes forgotten ([`sql::FORGET_CHANGES`]).
    Forget,
}

/// A document write, held until the end of the loop turn and sent with
/// every other write of the turn for the same shard.
struct Write {
    ticket: u64,
    key: Vec<u8>,
    change: Change,
}

enum Change {
    Put {
        doc: Bytes,
        cond: Precondition,
    },
    Delete {
        cond: Precondition,
    },
    /// The write half of a PATCH: only if the document is still at the
    /// version its read saw (else it reads again).
    Patch {
        doc: Bytes,
        seen: u64,
        patch: Bytes,
        cond: Precondition,
        max_bytes: usize,
        attempt: u32,
    },
}

/// One row of [`sql::WRITE`]'s answer.
struct WriteResult {
    status: i32,
    version: Option<i64>,
    created: bool,
    error: String,
}

impl InFlight {
    /// Every request waiting on this query.
    fn waiting(&self) -> Vec<u64> {
        match &self.query {
            Query::Writes(writes) => writes.iter().map(|w| w.ticket).collect(),
            _ => self.ticket.into_iter().collect(),
        }
    }
}

struct InFlight {
    /// `None` for queries no one waits on.
    ticket: Option<u64>,
    query: Query,
    /// When it was queued: for a poll, every change committed before then
    /// is in its answer.
    queued_at: Instant,
    rows: Vec<DataRowBody>,
    /// The outcome went out already (at its completion or error).
    answered: bool,
}

struct ShardConn {
    shard: u32,
    url: Arc<PgUrl>,
    io: Outbound<Vec<u8>>,
    link: Link,
    /// Messages not sent yet.
    pending: BytesMut,
    /// Document writes of this loop turn, sent together at its end.
    writes: Vec<Write>,
    /// Queries sent or pending, in order.
    queue: VecDeque<InFlight>,
    received: BytesMut,
    /// The queue time of the latest poll whose answer came back: every
    /// change committed before then has been applied.
    synced_at: Option<Instant>,
    /// Where the next poll starts.
    horizon: i64,
    /// When the last poll was queued, and whether it is still out.
    polled_at: Option<Instant>,
    polling: bool,
    /// When old changes were last forgotten.
    forgot_at: Instant,
    /// A spare send buffer.
    spare: Vec<u8>,
    gate: SendGate,
}

/// Counters for `/metrics`, by shard.
#[derive(Debug, Default)]
pub struct PgCounters {
    pub queries: std::sync::atomic::AtomicU64,
    pub sends: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    pub reconnects: std::sync::atomic::AtomicU64,
    pub invalidations: std::sync::atomic::AtomicU64,
    pub up: std::sync::atomic::AtomicU64,
    /// Document writes, and the statements (commits) that carried them.
    pub writes: std::sync::atomic::AtomicU64,
    pub write_batches: std::sync::atomic::AtomicU64,
}

/// One io core's connections to the PostgreSQL shards it owns.
pub struct PgShards {
    conns: Vec<ShardConn>,
    by_shard: HashMap<u32, usize>,
    events: VecDeque<Event>,
    opened: Outlet<Opened>,
    stale_bound: Duration,
    /// A connection whose oldest query has had no answer this long is given
    /// up (a server that hangs must not hang requests): its queries fail
    /// with 503 and it reconnects.
    answer_timeout: Duration,
    counters: Arc<PgCounters>,
}

fn bump(counter: &std::sync::atomic::AtomicU64) {
    add(counter, 1);
}

fn add(counter: &std::sync::atomic::AtomicU64, n: u64) {
    use std::sync::atomic::Ordering::Relaxed;
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

impl PgShards {
    /// The connections of the shards this core owns: `(shard, url, ready
    /// connection or the error that kept it down)`. Handshakes of later
    /// reconnections post to `opened`, which must reach
    /// [`PgShards::on_opened`] on this core.
    pub fn new(
        shards: Vec<(u32, Arc<PgUrl>, Result<Ready, PgError>)>,
        opened: Outlet<Opened>,
        options: &super::PgOptions,
        counters: Arc<PgCounters>,
    ) -> Self {
        let now = Instant::now();
        let mut this = Self {
            conns: Vec::new(),
            by_shard: HashMap::new(),
            events: VecDeque::new(),
            opened,
            stale_bound: options.stale_bound,
            answer_timeout: options.answer_timeout,
            counters,
        };
        for (slot, (shard, url, ready)) in shards.into_iter().enumerate() {
            let mut conn = ShardConn {
                shard,
                url,
                io: Outbound::new(slot as u32, OUTBOUND_KINDS),
                link: Link::Down {
                    retry_at: now,
                    backoff: BACKOFF_MIN,
                    error: "not connected yet".into(),
                },
                pending: BytesMut::with_capacity(16 << 10),
                writes: Vec::new(),
                queue: VecDeque::new(),
                received: BytesMut::with_capacity(16 << 10),
                synced_at: None,
                horizon: 0,
                polled_at: None,
                polling: false,
                forgot_at: now,
                spare: Vec::new(),
                gate: SendGate::default(),
            };
            match ready {
                Ok(ready) => conn.adopt(ready, now, &this.counters),
                Err(error) => {
                    conn.link = Link::Down {
                        retry_at: now + BACKOFF_MIN,
                        backoff: BACKOFF_MIN,
                        error: error.to_string(),
                    }
                }
            }
            this.by_shard.insert(shard, slot);
            this.conns.push(conn);
        }
        this
    }

    /// Whether a cache hit for `shard` may be served at `now`: its
    /// connection is up and has applied the answer of a poll queued less
    /// than the staleness bound before `now`. That poll's snapshot saw every
    /// change committed before it was queued, so every write another node
    /// committed more than the bound before `now` has dropped its key.
    pub fn fresh(&self, shard: u32, now: Instant) -> bool {
        let Some(&slot) = self.by_shard.get(&shard) else {
            return false;
        };
        let conn = &self.conns[slot];
        matches!(conn.link, Link::Up)
            && conn
                .synced_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.stale_bound)
    }

    /// The next event, in wire order.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Queues `op` for `shard`'s connection; it goes out at the end of the turn.
    pub fn submit(&mut self, ticket: u64, shard: u32, op: StoreOp, now: Instant) {
        let Some(&slot) = self.by_shard.get(&shard) else {
            self.events.push_back(Event::Outcome {
                ticket,
                outcome: StoreOutcome::Failed(StoreError::Engine(format!(
                    "shard {shard} is not owned by this core"
                ))),
            });
            return;
        };
        let conn = &mut self.conns[slot];
        let down = match &conn.link {
            Link::Down { error, .. } => Some(error.clone()),
            Link::Opening { .. } => Some("reconnecting".to_owned()),
            Link::Up => None,
        };
        if let Some(reason) = down {
            let outcome = StoreOutcome::Failed(StoreError::Unavailable(format!(
                "PostgreSQL shard {shard} ({}) is down: {reason}",
                conn.url
            )));
            self.events.push_back(Event::Outcome { ticket, outcome });
            return;
        }
        bump(&self.counters.queries);
        if let Err(outcome) = conn.encode(ticket, op, now) {
            self.events.push_back(Event::Outcome { ticket, outcome });
        }
    }

    /// End of a loop turn: sends what is pending, keeps idle connections
    /// proving their freshness, starts reconnections that are due, adopts
    /// connections whose handshakes finished.
    pub fn drive(&mut self, io: &mut OutboundIo<'_>, now: Instant) {
        let hung: Vec<usize> = (0..self.conns.len())
            .filter(|&slot| {
                let conn = &self.conns[slot];
                matches!(conn.link, Link::Up)
                    && conn.queue.front().is_some_and(|q| {
                        now.saturating_duration_since(q.queued_at) > self.answer_timeout
                    })
            })
            .collect();
        for slot in hung {
            let reason = format!("no answer from PostgreSQL in {:?}", self.answer_timeout);
            self.fail(slot, io, reason, now);
        }
        for conn in &mut self.conns {
            match conn.link {
                Link::Up => {
                    let due = conn
                        .polled_at
                        .is_none_or(|at| now.saturating_duration_since(at) >= self.stale_bound / 2);
                    if due && !conn.polling {
                        let horizon = conn.horizon;
                        if conn.bind(&sql::POLL, &[Param::Int8(horizon)]).is_ok() {
                            conn.push(None, Query::Poll, now);
                            conn.polling = true;
                            conn.polled_at = Some(now);
                        }
                    }
                    if now.saturating_duration_since(conn.forgot_at) >= FORGET_EVERY {
                        let kept = sql::CHANGES_KEPT_SECS as i64;
                        if conn
                            .bind(&sql::FORGET_CHANGES, &[Param::Int8(kept)])
                            .is_ok()
                        {
                            conn.push(None, Query::Forget, now);
                        }
                        conn.forgot_at = now;
                    }
                    let gathered = conn.writes.len() as u64;
                    for (ticket, outcome) in conn.encode_writes(now) {
                        self.events.push_back(Event::Outcome { ticket, outcome });
                    }
                    if gathered > 0 && conn.writes.is_empty() {
                        add(&self.counters.writes, gathered);
                        bump(&self.counters.write_batches);
                    }
                    conn.io.arm_recv(io.ring, io.buffers);
                    conn.flush(io, &self.counters);
                }
                Link::Down {
                    retry_at, backoff, ..
                } if now >= retry_at && conn.io.state() == State::Idle => {
                    conn.link = Link::Opening { backoff };
                    bump(&self.counters.reconnects);
                    let url = Arc::clone(&conn.url);
                    let shard = conn.shard;
                    let opened = self.opened.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("percore-pg-{shard}"))
                        .spawn(move || {
                            let result = handshake::open(&url, &Setup::default());
                            // The core may have stopped meanwhile: nothing to tell then.
                            let _ = opened.post(Opened { shard, result });
                            opened.wake();
                        });
                    if let Err(error) = spawned {
                        conn.link = Link::Down {
                            retry_at: now + backoff,
                            backoff: (backoff * 2).min(BACKOFF_MAX),
                            error: format!("cannot start a connection thread: {error}"),
                        };
                    }
                }
                _ => {}
            }
        }
    }

    /// A handshake finished: adopt its socket, or wait longer before the next.
    pub fn on_opened(&mut self, opened: Opened, now: Instant) {
        let Some(&slot) = self.by_shard.get(&opened.shard) else {
            return;
        };
        let conn = &mut self.conns[slot];
        let Link::Opening { backoff } = conn.link else {
            return;
        };
        match opened.result {
            Ok(ready) if conn.io.state() == State::Idle => conn.adopt(ready, now, &self.counters),
            Ok(_) => {
                conn.link = Link::Down {
                    retry_at: now + backoff,
                    backoff,
                    error: "the previous connection is still closing".into(),
                }
            }
            Err(error) => {
                conn.link = Link::Down {
                    retry_at: now + backoff,
                    backoff: (backoff * 2).min(BACKOFF_MAX),
                    error: error.to_string(),
                }
            }
        }
    }

    /// A completion of one of the connections' operations.
    pub fn on_completion(
        &mut self,
        io: &mut OutboundIo<'_>,
        done: OutboundCompletion,
        now: Instant,
    ) {
        let Some(conn) = self.conns.get_mut(done.slot as usize) else {
            return;
        };
        let failure = match done.kind {
            k if k == OUTBOUND_KINDS.recv => {
                let received = &mut conn.received;
                match conn.io.on_recv(
                    io.buffers,
                    done.generation,
                    done.result,
                    done.flags,
                    |data| received.extend_from_slice(data),
                ) {
                    Completion::Live(Recv::Data(_)) => {
                        let result = conn.parse(&mut self.events, &self.counters, now);
                        if !conn.io.recv_armed() && result.is_ok() {
                            conn.io.arm_recv(io.ring, io.buffers);
                        }
                        result.err()
                    }
                    Completion::Live(Recv::NoBuffers) => {
                        conn.io.arm_recv(io.ring, io.buffers);
                        None
                    }
                    Completion::Live(Recv::Eof) => Some("PostgreSQL closed the connection".into()),
                    Completion::Live(Recv::Error(errno)) => Some(format!(
                        "receive failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )),
                    _ => None,
                }
            }
            k if k == OUTBOUND_KINDS.send => {
                match conn.io.on_send(io.ring, done.generation, done.result) {
                    Completion::Live(Sent::Done(mut buffer)) => {
                        buffer.clear();
                        conn.spare = buffer;
                        conn.flush(io, &self.counters);
                        None
                    }
                    Completion::Live(Sent::Sending) => None,
                    Completion::Live(Sent::Failed(errno)) => Some(format!(
                        "send failed: {}",
                        std::io::Error::from_raw_os_error(errno)
                    )),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(reason) = failure {
            self.fail(done.slot as usize, io, reason, now);
        }
    }

    /// The connection of `slot` is lost: fail what it carried, forget its
    /// cache, and reconnect after a backoff.
    fn fail(&mut self, slot: usize, io: &mut OutboundIo<'_>, reason: String, now: Instant) {
        let conn = &mut self.conns[slot];
        let error = format!("PostgreSQL shard {} ({}): {reason}", conn.shard, conn.url);
        let unsent = conn.writes.drain(..).map(|w| w.ticket);
        let waiting: Vec<u64> = conn
            .queue
            .drain(..)
            .filter(|q| !q.answered)
            .flat_map(|q| q.waiting())
            .chain(unsent)
            .collect();
        for ticket in waiting {
            self.events.push_back(Event::Outcome {
                ticket,
                outcome: StoreOutcome::Failed(StoreError::Unavailable(error.clone())),
            });
        }
        conn.pending.clear();
        conn.received.clear();
        conn.synced_at = None;
        conn.io.close(io.ring);
        conn.link = Link::Down {
            retry_at: now + BACKOFF_MIN,
            backoff: BACKOFF_MIN * 2,
            error: reason,
        };
        self.counters
            .up
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        self.events.push_back(Event::Reset(conn.shard));
    }

    /// Shards whose connection is down, with why: for `/readyz` and logs.
    pub fn down(&self) -> impl Iterator<Item = (u32, String)> + '_ {
        self.conns.iter().filter_map(|c| match &c.link {
            Link::Down { error, .. } => Some((c.shard, error.clone())),
            Link::Opening { .. } => Some((c.shard, "reconnecting".into())),
            Link::Up => None,
        })
    }
}

/// The wire form of a precondition: mode (0 none, 1 `*`, 2 list) and versions.
fn tags(tags: &Option<TagSet>) -> (i32, Vec<i64>) {
    match tags {
        None => (0, Vec::new()),
        Some(TagSet::Any) => (1, Vec::new()),
        Some(TagSet::Versions(versions)) => (2, versions.iter().map(|&v| v as i64).collect()),
    }
}

/// A bound parameter.
enum Param<'a> {
    Text(&'a [u8]),
    Int4(i32),
    Int8(i64),
    Int4Array(&'a [i32]),
    /// An array of `element`s given in their binary form (text and json are their bytes).
    Array(u32, &'a [Option<&'a [u8]>]),
}

fn serialize(
    param: &Param<'_>,
    buf: &mut BytesMut,
) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
    match param {
        Param::Text(bytes) => buf.extend_from_slice(bytes),
        Param::Int4(v) => pgtypes::int4_to_sql(*v, buf),
        Param::Int8(v) => pgtypes::int8_to_sql(*v, buf),
        Param::Int4Array(values) => array(oid::INT4, values, pgtypes::int4_to_sql, buf)?,
        Param::Array(element, values) => pgtypes::array_to_sql(
            Some(pgtypes::ArrayDimension {
                len: values.len() as i32,
                lower_bound: 1,
            }),
            *element,
            values.iter(),
            |value, buf| match value {
                Some(bytes) => {
                    buf.extend_from_slice(bytes);
                    Ok(IsNull::No)
                }
                None => Ok(IsNull::Yes),
            },
            buf,
        )?,
    }
    Ok(IsNull::No)
}

/// A one-dimensional array of `element`s in binary form.
fn array<T: Copy>(
    element: u32,
    values: &[T],
    write: impl Fn(T, &mut BytesMut),
    buf: &mut BytesMut,
) -> Result<(), Box<dyn std::error::Error + Sync + Send>> {
    pgtypes::array_to_sql(
        Some(pgtypes::ArrayDimension {
            len: values.len() as i32,
            lower_bound: 1,
        }),
        element,
        values.iter(),
        |v, buf| {
            write(*v, buf);
            Ok(IsNull::No)
        },
        buf,
    )
}

/// A list of versions as `percore_write` takes it: `1,2,3`.
fn version_list(versions: &[i64]) -> String {
    let mut text = String::new();
    for (n, v) in versions.iter().enumerate() {
        if n > 0 {
            text.push(',');
        }
        text.push_str(itoa::Buffer::new().format(*v));
    }
    text
}

/// Splits a storage key (`collection`, NUL, `key`) into its two parts.
fn split_key(storage: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = storage.iter().position(|&b| b == 0)?;
    Some((&storage[..at], &storage[at + 1..]))
}

impl ShardConn {
    fn adopt(&mut self, ready: Ready, now: Instant, counters: &PgCounters) {
        match self.io.adopt(ready.socket) {
            Ok(()) => {
                self.link = Link::Up;
                // The cache partition holds nothing of this shard yet, and
                // every change committed from here on is at or above the horizon.
                self.synced_at = Some(now);
                self.horizon = ready.horizon;
                self.polled_at = None;
                self.polling = false;
                self.pending.clear();
                self.received.clear();
                self.gate = SendGate::default();
                counters
                    .up
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => {
                self.link = Link::Down {
                    retry_at: now + BACKOFF_MIN,
                    backoff: BACKOFF_MIN,
                    error: "the previous connection is still closing".into(),
                }
            }
        }
    }

    fn bind(&mut self, statement: &Statement, params: &[Param<'_>]) -> Result<(), StoreOutcome> {
        // Binary everywhere; no parameter format at all for a statement
        // without parameters, which PostgreSQL would read and allocate for.
        let binary = [1i16];
        let param_formats = if params.is_empty() {
            &[][..]
        } else {
            &binary[..]
        };
        frontend::bind(
            "",
            statement.name,
            param_formats.iter().copied(),
            params.iter(),
            |param, buf| serialize(param, buf),
            binary.iter().copied(),
            &mut self.pending,
        )
        .map_err(|_| StoreOutcome::Failed(StoreError::Engine("cannot encode a query".into())))?;
        frontend::execute("", 0, &mut self.pending).map_err(|_| {
            StoreOutcome::Failed(StoreError::Engine("cannot encode a query".into()))
        })?;
        frontend::sync(&mut self.pending);
        Ok(())
    }

    fn push(&mut self, ticket: Option<u64>, query: Query, now: Instant) {
        self.gate.queued();
        self.queue.push_back(InFlight {
            ticket,
            query,
            queued_at: now,
            rows: Vec::new(),
            answered: ticket.is_none(),
        });
    }

    /// Appends the statements of `op` to the pending bytes.
    fn encode(&mut self, ticket: u64, op: StoreOp, now: Instant) -> Result<(), StoreOutcome> {
        let bad_key = || {
            StoreOutcome::Failed(StoreError::Engine(
                "a storage key without its collection".into(),
            ))
        };
        match op {
            StoreOp::Read { key } => {
                let (collection, name) = split_key(&key).ok_or_else(bad_key)?;
                if collection == crate::store::open::PG_WORLD.as_bytes() {
                    // A `world` row read through the cache (`/cached-queries`).
                    let id = std::str::from_utf8(name)
                        .ok()
                        .and_then(|id| id.parse().ok())
                        .ok_or_else(bad_key)?;
                    self.bind(&sql::WORLD, &[Param::Int4(id)])?;
                    self.push(Some(ticket), Query::World, now);
                } else {
                    self.bind(&sql::GET, &[Param::Text(collection), Param::Text(name)])?;
                    self.push(Some(ticket), Query::Get, now);
                }
            }
            StoreOp::Put { key, doc, cond } => self.writes.push(Write {
                ticket,
                key,
                change: Change::Put { doc, cond },
            }),
            StoreOp::Patch {
                key,
                patch,
                cond,
                max_bytes,
            } => self.read_for_patch(
                ticket,
                Query::PatchRead {
                    key,
                    patch,
                    cond,
                    max_bytes,
                    attempt: 1,
                },
                now,
            )?,
            StoreOp::Delete { key, cond } => self.writes.push(Write {
                ticket,
                key,
                change: Change::Delete { cond },
            }),
            StoreOp::Scan { from, to: _, limit } => {
                let (collection, after) = split_key(&from).ok_or_else(bad_key)?;
                // `from` is the collection's first key, or the key after `after` (`after`, NUL).
                let after = after.strip_suffix(&[0]).unwrap_or(after);
                self.bind(
                    &sql::SCAN,
                    &[
                        Param::Text(collection),
                        Param::Text(after),
                        Param::Int8(limit as i64),
                    ],
                )?;
                let collection = collection.to_vec();
                self.push(Some(ticket), Query::Scan { collection }, now);
            }
            StoreOp::Sql(SqlOp::World { id }) => {
                self.bind(&sql::WORLD, &[Param::Int4(id)])?;
                self.push(Some(ticket), Query::World, now);
            }
            StoreOp::Sql(SqlOp::Fortunes) => {
                self.bind(&sql::FORTUNES, &[])?;
                self.push(Some(ticket), Query::Fortunes, now);
            }
            StoreOp::Sql(SqlOp::UpdateWorlds { mut rows }) => {
                // Each row is read on its own, as the benchmark asks; the
                // reads and the one batch update go out in the same write.
                for &(id, _) in &rows {
                    self.bind(&sql::WORLD, &[Param::Int4(id)])?;
                    self.push(None, Query::Discard, now);
                }
                let mut sorted = rows.clone();
                sorted.sort_unstable();
                sorted.dedup_by_key(|row| row.0);
                let ids: Vec<i32> = sorted.iter().map(|r| r.0).collect();
                let numbers: Vec<i32> = sorted.iter().map(|r| r.1).collect();
                self.bind(
                    &sql::UPDATE_WORLDS,
                    &[Param::Int4Array(&ids), Param::Int4Array(&numbers)],
                )?;
                // A row asked for twice answers with the number written.
                let written: HashMap<i32, i32> = sorted.into_iter().collect();
                for row in &mut rows {
                    row.1 = written[&row.0];
                }
                self.push(Some(ticket), Query::UpdateWorlds { rows }, now);
            }
        }
        Ok(())
    }

    /// Queues the read half of a PATCH (`read` is a [`Query::PatchRead`]).
    fn read_for_patch(
        &mut self,
        ticket: u64,
        read: Query,
        now: Instant,
    ) -> Result<(), StoreOutcome> {
        let Query::PatchRead { key, .. } = &read else {
            return Err(StoreOutcome::Failed(malformed()));
        };
        let (collection, name) = split_key(key).ok_or_else(|| StoreOutcome::Failed(malformed()))?;
        let (collection, name) = (collection.to_vec(), name.to_vec());
        self.bind(&sql::GET, &[Param::Text(&collection), Param::Text(&name)])?;
        self.push(Some(ticket), read, now);
        Ok(())
    }

    /// Sends the document writes gathered so far as one statement, unless
    /// the previous batch has not committed yet: writes that arrive during a
    /// commit wait for it and go together in the next (group commit).
    fn encode_writes(&mut self, now: Instant) -> Vec<(u64, StoreOutcome)> {
        let committing = self
            .queue
            .iter()
            .any(|q| matches!(q.query, Query::Writes(_)) && !q.answered);
        if self.writes.is_empty() || committing {
            return Vec::new();
        }
        let writes = std::mem::take(&mut self.writes);
        let mut ops = Vec::with_capacity(writes.len());
        let mut collections = Vec::with_capacity(writes.len());
        let mut keys = Vec::with_capacity(writes.len());
        let mut bodies = Vec::with_capacity(writes.len());
        let (mut ims, mut imvs, mut inms, mut inmvs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for write in &writes {
            let Some((collection, key)) = split_key(&write.key) else {
                return writes
                    .iter()
                    .map(|w| (w.ticket, StoreOutcome::Failed(malformed())))
                    .collect();
            };
            collections.push(Some(collection));
            keys.push(Some(key));
            let (op, body, if_match, if_none_match) = match &write.change {
                Change::Put { doc, cond } => (
                    1,
                    Some(&doc[..]),
                    tags(&cond.if_match),
                    tags(&cond.if_none_match),
                ),
                Change::Delete { cond } => {
                    (2, None, tags(&cond.if_match), tags(&cond.if_none_match))
                }
                Change::Patch { doc, seen, .. } => {
                    (1, Some(&doc[..]), (2, vec![*seen as i64]), (0, Vec::new()))
                }
            };
            ops.push(op);
            bodies.push(body);
            ims.push(if_match.0);
            imvs.push(version_list(&if_match.1));
            inms.push(if_none_match.0);
            inmvs.push(version_list(&if_none_match.1));
        }
        let imvs: Vec<Option<&[u8]>> = imvs.iter().map(|v| Some(v.as_bytes())).collect();
        let inmvs: Vec<Option<&[u8]>> = inmvs.iter().map(|v| Some(v.as_bytes())).collect();
        let bound = self.bind(
            &sql::WRITE,
            &[
                Param::Int4Array(&ops),
                Param::Array(oid::TEXT, &collections),
                Param::Array(oid::TEXT, &keys),
                Param::Array(oid::JSON, &bodies),
                Param::Int4Array(&ims),
                Param::Array(oid::TEXT, &imvs),
                Param::Int4Array(&inms),
                Param::Array(oid::TEXT, &inmvs),
            ],
        );
        if let Err(outcome) = bound {
            return writes.iter().map(|w| (w.ticket, outcome.clone())).collect();
        }
        self.queue.push_back(InFlight {
            ticket: None,
            query: Query::Writes(writes),
            queued_at: now,
            rows: Vec::new(),
            answered: false,
        });
        Vec::new()
    }

    /// What became of each write of a batch, from its rows.
    fn complete_writes(
        &mut self,
        writes: Vec<Write>,
        rows: Vec<DataRowBody>,
        now: Instant,
        events: &mut VecDeque<Event>,
    ) {
        let mut results: Vec<Option<WriteResult>> = (0..writes.len()).map(|_| None).collect();
        for row in &rows {
            let Ok(cols) = columns(Some(row)) else {
                continue;
            };
            let (Some(n), Some(status)) = (int4(cols.first()), int4(cols.get(1))) else {
                continue;
            };
            let created = cols
                .get(3)
                .copied()
                .flatten()
                .and_then(|b| pgtypes::bool_from_sql(b).ok())
                .unwrap_or(false);
            let error = cols
                .get(4)
                .copied()
                .flatten()
                .map(|e| String::from_utf8_lossy(e).into_owned())
                .unwrap_or_default();
            if let Some(slot) = results.get_mut((n - 1) as usize) {
                *slot = Some(WriteResult {
                    status,
                    version: int8(cols.get(2)),
                    created,
                    error,
                });
            }
        }
        for (write, result) in writes.into_iter().zip(results) {
            let Some(WriteResult {
                status,
                version,
                created,
                error,
            }) = result
            else {
                events.push_back(Event::Outcome {
                    ticket: write.ticket,
                    outcome: StoreOutcome::Failed(malformed()),
                });
                continue;
            };
            let current = version.map(|v| v as u64);
            let outcome = match (write.change, status, current) {
                (_, 3, _) => {
                    StoreOutcome::Failed(StoreError::Engine(format!("PostgreSQL error {error}")))
                }
                (Change::Put { doc, .. }, 0, Some(version)) => StoreOutcome::Written {
                    stored: Stored { version, doc },
                    created,
                },
                (Change::Patch { doc, .. }, 0, Some(version)) => StoreOutcome::Written {
                    stored: Stored { version, doc },
                    created: false,
                },
                (Change::Delete { .. }, 0, _) => StoreOutcome::Deleted,
                (Change::Delete { .. }, 2, _) => StoreOutcome::Missing,
                // Another writer changed it between the PATCH's read and its write: read again.
                (
                    Change::Patch {
                        patch,
                        cond,
                        max_bytes,
                        attempt,
                        ..
                    },
                    1,
                    _,
                ) if attempt < PATCH_ATTEMPTS => {
                    let read = Query::PatchRead {
                        key: write.key,
                        patch,
                        cond,
                        max_bytes,
                        attempt: attempt + 1,
                    };
                    match self.read_for_patch(write.ticket, read, now) {
                        Ok(()) => continue,
                        Err(outcome) => outcome,
                    }
                }
                (Change::Patch { .. }, 1, _) => StoreOutcome::Failed(StoreError::Unavailable(
                    "the document changed under every attempt to patch it; try again".into(),
                )),
                (_, 1, current) => StoreOutcome::PreconditionFailed { current },
                _ => StoreOutcome::Failed(malformed()),
            };
            events.push_back(Event::Outcome {
                ticket: write.ticket,
                outcome,
            });
        }
    }

    /// Sends the pending bytes if no send is in flight and fewer than
    /// [`SENDS_UNANSWERED`] sends wait for answers; the answers that open
    /// the way come in a loop turn, whose end ([`PgShards::drive`]) flushes.
    fn flush(&mut self, io: &mut OutboundIo<'_>, counters: &PgCounters) {
        if self.pending.is_empty() || self.io.send_in_flight() || self.io.state() != State::Open {
            return;
        }
        let take = self.pending.len().min(MAX_SEND);
        if !self.gate.send(take == self.pending.len()) {
            return;
        }
        let mut buffer = std::mem::take(&mut self.spare);
        buffer.extend_from_slice(&self.pending[..take]);
        let _ = self.pending.split_to(take);
        bump(&counters.sends);
        if let Err(mut buffer) = self.io.send(io.ring, buffer) {
            // Not open after all: the failure shows on the receive side.
            buffer.clear();
            self.spare = buffer;
        }
    }

    /// Handles every complete message received.
    fn parse(
        &mut self,
        events: &mut VecDeque<Event>,
        counters: &PgCounters,
        now: Instant,
    ) -> Result<(), String> {
        loop {
            let message = match Message::parse(&mut self.received) {
                Ok(Some(message)) => message,
                Ok(None) => return Ok(()),
                Err(error) => return Err(format!("unreadable message from PostgreSQL: {error}")),
            };
            match message {
                Message::DataRow(row) => match self.queue.front_mut() {
                    Some(query) => query.rows.push(row),
                    None => return Err("a row for no query".into()),
                },
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {
                    let Some(query) = self.queue.front_mut() else {
                        return Err("a completion for no query".into());
                    };
                    if matches!(query.query, Query::Poll) {
                        let rows = std::mem::take(&mut query.rows);
                        let queued_at = query.queued_at;
                        self.apply_poll(rows, queued_at, events, counters)?;
                    } else if let (Query::Writes(_), false) = (&query.query, query.answered) {
                        query.answered = true;
                        let rows = std::mem::take(&mut query.rows);
                        if let Query::Writes(writes) =
                            std::mem::replace(&mut query.query, Query::Forget)
                        {
                            self.complete_writes(writes, rows, now, events);
                        }
                    } else if !query.answered {
                        query.answered = true;
                        let rows = std::mem::take(&mut query.rows);
                        let ticket = query.ticket.expect("unanswered queries have tickets");
                        let query = std::mem::replace(&mut query.query, Query::Forget);
                        if let Query::UpdateWorlds { rows: written } = &query {
                            // `/cached-queries` on this node must not serve the old numbers.
                            for (id, _) in written {
                                let mut key = Vec::with_capacity(16);
                                crate::store::storage_key(
                                    crate::store::open::PG_WORLD,
                                    itoa::Buffer::new().format(*id),
                                    &mut key,
                                );
                                events.push_back(Event::Invalidate(key));
                            }
                        }
                        if let Some(outcome) = self.complete(ticket, query, rows) {
                            events.push_back(Event::Outcome { ticket, outcome });
                        }
                    }
                }
                Message::ErrorResponse(body) => {
                    bump(&counters.errors);
                    let (code, message) = error_fields(&body);
                    let Some(query) = self.queue.front_mut() else {
                        // A fatal error outside any query (the server shutting down, say).
                        return Err(format!("PostgreSQL error {code}: {message}"));
                    };
                    if !query.answered {
                        query.answered = true;
                        // 57P01 admin_shutdown and friends: the server is going away.
                        let error = if code.starts_with("57") || code.starts_with("08") {
                            StoreError::Unavailable(format!("PostgreSQL error {code}: {message}"))
                        } else {
                            StoreError::Engine(format!("PostgreSQL error {code}: {message}"))
                        };
                        for ticket in query.waiting() {
                            events.push_back(Event::Outcome {
                                ticket,
                                outcome: StoreOutcome::Failed(error.clone()),
                            });
                        }
                    }
                }
                Message::ReadyForQuery(_) => {
                    let Some(query) = self.queue.pop_front() else {
                        return Err("ReadyForQuery for no query".into());
                    };
                    self.gate.answered();
                    if matches!(query.query, Query::Poll) {
                        self.polling = false;
                    }
                    if !query.answered {
                        for ticket in query.waiting() {
                            events.push_back(Event::Outcome {
                                ticket,
                                outcome: StoreOutcome::Failed(StoreError::Engine(
                                    "PostgreSQL answered a query with nothing".into(),
                                )),
                            });
                        }
                    }
                }
                Message::BindComplete
                | Message::NotificationResponse(_)
                | Message::ParseComplete
                | Message::NoticeResponse(_)
                | Message::ParameterStatus(_)
                | Message::NoData
                | Message::RowDescription(_)
                | Message::ParameterDescription(_)
                | Message::CloseComplete => {}
                _ => return Err("an unexpected message from PostgreSQL".into()),
            }
        }
    }

    /// Applies a poll's answer: its horizon, then every key another node
    /// changed, as invalidations; the poll's queue time becomes the proof of
    /// freshness. After a gap longer than half the time changes are kept,
    /// some may be gone: the cache partition starts over.
    fn apply_poll(
        &mut self,
        rows: Vec<DataRowBody>,
        queued_at: Instant,
        events: &mut VecDeque<Event>,
        counters: &PgCounters,
    ) -> Result<(), String> {
        let kept = Duration::from_secs(sql::CHANGES_KEPT_SECS);
        if self
            .synced_at
            .is_some_and(|at| queued_at.saturating_duration_since(at) > kept / 2)
        {
            events.push_back(Event::Reset(self.shard));
        }
        for row in &rows {
            let cols = columns(Some(row)).map_err(|e| e.to_string())?;
            match (
                cols.get(1).copied().flatten(),
                cols.get(2).copied().flatten(),
            ) {
                (None, None) => {
                    if let Some(horizon) = int8(cols.first()) {
                        self.horizon = horizon;
                    }
                }
                (Some(collection), Some(key)) => {
                    bump(&counters.invalidations);
                    let mut storage = Vec::with_capacity(collection.len() + 1 + key.len());
                    storage.extend_from_slice(collection);
                    storage.push(0);
                    storage.extend_from_slice(key);
                    events.push_back(Event::Invalidate(storage));
                }
                _ => return Err("a change without its key".into()),
            }
        }
        self.synced_at = Some(queued_at);
        Ok(())
    }

    /// The outcome of a query whose rows are all in; `None` when a next
    /// step was queued instead (a PATCH's write, or its retry).
    fn complete(
        &mut self,
        ticket: u64,
        query: Query,
        rows: Vec<DataRowBody>,
    ) -> Option<StoreOutcome> {
        let outcome = match query {
            Query::Get => match rows.first() {
                None => StoreOutcome::Found(None),
                Some(row) => match stored(row) {
                    Ok(stored) => StoreOutcome::Found(Some(stored)),
                    Err(error) => StoreOutcome::Failed(error),
                },
            },
            Query::Scan { collection } => {
                let mut items = Vec::with_capacity(rows.len());
                let mut bytes = 0;
                for row in &rows {
                    let Ok(cols) = columns(Some(row)) else {
                        return Some(StoreOutcome::Failed(malformed()));
                    };
                    let (Some(key), Some(version), Some(body)) = (
                        cols.first().copied().flatten(),
                        int8(cols.get(1)),
                        cols.get(2).copied().flatten(),
                    ) else {
                        return Some(StoreOutcome::Failed(malformed()));
                    };
                    let mut storage = Vec::with_capacity(collection.len() + 1 + key.len());
                    storage.extend_from_slice(&collection);
                    storage.push(0);
                    storage.extend_from_slice(key);
                    items.push((
                        storage,
                        Stored {
                            version: version as u64,
                            doc: Bytes::copy_from_slice(body),
                        },
                    ));
                    bytes += body.len();
                    if bytes >= SCAN_PART_BYTES {
                        break;
                    }
                }
                StoreOutcome::Scanned(items)
            }
            Query::PatchRead {
                key,
                patch,
                cond,
                max_bytes,
                attempt,
            } => {
                let current = match rows.first().map(stored).transpose() {
                    Ok(current) => current,
                    Err(error) => return Some(StoreOutcome::Failed(error)),
                };
                let Some(current) = current else {
                    return Some(if cond.if_match.is_some() {
                        StoreOutcome::PreconditionFailed { current: None }
                    } else {
                        StoreOutcome::Missing
                    });
                };
                let doc = match patched(&current, &patch, &cond, max_bytes) {
                    Ok(doc) => doc,
                    Err(outcome) => return Some(outcome),
                };
                self.writes.push(Write {
                    ticket,
                    key,
                    change: Change::Patch {
                        doc,
                        seen: current.version,
                        patch,
                        cond,
                        max_bytes,
                        attempt,
                    },
                });
                return None;
            }
            Query::World => match rows.first().map(|row| columns(Some(row))) {
                Some(Ok(cols)) => match (int4(cols.first()), int4(cols.get(1))) {
                    (Some(id), Some(number)) => StoreOutcome::Found(Some(Stored {
                        version: 0,
                        doc: world_json(id, number),
                    })),
                    _ => StoreOutcome::Failed(malformed()),
                },
                Some(Err(error)) => StoreOutcome::Failed(error),
                None => StoreOutcome::Found(None),
            },
            Query::Fortunes => {
                let mut items = Vec::with_capacity(rows.len());
                for row in &rows {
                    let Ok(cols) = columns(Some(row)) else {
                        return Some(StoreOutcome::Failed(malformed()));
                    };
                    let (Some(id), Some(message)) =
                        (int4(cols.first()), cols.get(1).copied().flatten())
                    else {
                        return Some(StoreOutcome::Failed(malformed()));
                    };
                    items.push((
                        itoa::Buffer::new().format(id).as_bytes().to_vec(),
                        Stored {
                            version: 0,
                            doc: Bytes::copy_from_slice(message),
                        },
                    ));
                }
                StoreOutcome::Scanned(items)
            }
            Query::UpdateWorlds { rows: written } => StoreOutcome::Scanned(
                written
                    .into_iter()
                    .map(|(id, number)| {
                        (
                            Vec::new(),
                            Stored {
                                version: 0,
                                doc: world_json(id, number),
                            },
                        )
                    })
                    .collect(),
            ),
            Query::Discard | Query::Poll | Query::Forget | Query::Writes(_) => return None,
        };
        Some(outcome)
    }
}

fn world_json(id: i32, number: i32) -> Bytes {
    let mut doc = Vec::with_capacity(40);
    doc.extend_from_slice(b"{\"id\":");
    doc.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    doc.extend_from_slice(b",\"randomNumber\":");
    doc.extend_from_slice(itoa::Buffer::new().format(number).as_bytes());
    doc.push(b'}');
    Bytes::from(doc)
}

fn malformed() -> StoreError {
    StoreError::Engine("PostgreSQL answered with a row percore cannot read".into())
}

fn columns(row: Option<&DataRowBody>) -> Result<Vec<Option<&[u8]>>, StoreError> {
    let row = row.ok_or_else(malformed)?;
    let buffer = row.buffer();
    row.ranges()
        .map(|range| Ok(range.map(|r| &buffer[r])))
        .collect()
        .map_err(|_| malformed())
}

fn int4(col: Option<&Option<&[u8]>>) -> Option<i32> {
    pgtypes::int4_from_sql(col.copied().flatten()?).ok()
}

fn int8(col: Option<&Option<&[u8]>>) -> Option<i64> {
    pgtypes::int8_from_sql(col.copied().flatten()?).ok()
}

fn stored(row: &DataRowBody) -> Result<Stored, StoreError> {
    let cols = columns(Some(row))?;
    match (int8(cols.first()), cols.get(1).copied().flatten()) {
        (Some(version), Some(body)) => Ok(Stored {
            version: version as u64,
            doc: Bytes::copy_from_slice(body),
        }),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Queues `n` queries and tries to send them all at once.
    fn queue_and_send(gate: &mut SendGate, n: usize) -> bool {
        for _ in 0..n {
            gate.queued();
        }
        gate.send(true)
    }

    #[test]
    fn two_sends_wait_for_answers_and_a_third_waits_for_the_first() {
        let mut gate = SendGate::default();
        assert!(queue_and_send(&mut gate, 3));
        assert!(queue_and_send(&mut gate, 2));
        // Both sends are unanswered: what comes now waits in pending.
        assert!(!queue_and_send(&mut gate, 4));
        gate.answered();
        gate.answered();
        assert!(
            !gate.send(true),
            "the first send is not answered in full yet"
        );
        gate.answered();
        assert!(gate.send(true), "the first send is answered: the next goes");
        // The second and third sends wait now.
        assert!(!gate.send(true));
        for _ in 0..6 {
            gate.answered();
        }
        assert!(gate.unanswered.is_empty());
        assert!(queue_and_send(&mut gate, 1));
    }

    #[test]
    fn the_rest_of_a_split_send_goes_whatever_the_count() {
        let mut gate = SendGate::default();
        assert!(queue_and_send(&mut gate, 1));
        assert!(queue_and_send(&mut gate, 1));
        gate.answered();
        for _ in 0..100 {
            gate.queued();
        }
        assert!(gate.send(false), "the first part of a large batch");
        // Two sends are counted unanswered (the split part is not), yet the
        // rest must follow: its last query is answered only once all of it is sent.
        assert!(gate.send(true));
        assert!(!queue_and_send(&mut gate, 1), "now the count holds again");
        for _ in 0..101 {
            gate.answered();
        }
        assert!(gate.send(true));
    }

    #[test]
    fn storage_keys_split_at_the_first_nul() {
        assert_eq!(split_key(b"c\0k\0x"), Some((&b"c"[..], &b"k\0x"[..])));
        assert_eq!(split_key(b"nokey"), None);
    }
}

//! One io core's document plane: sends each operation to its shard's owner core, answers reads from the owner's cache partition, and gathers multi-part answers.
//!
//! A request is parsed on whichever core accepted its connection (the
//! origin). Each of its operations goes to the core that owns the shard
//! (the owner), as a message unless that is the origin itself. The owner
//! answers a read from its cache partition, or asks its store thread once
//! for all concurrent readers of a missing key (single flight); writes go to
//! the store thread, and their outcomes update the cache before they are
//! answered. So a write acknowledged on any core is seen by every later read
//! on every core: all reads and writes of a key pass through its owner, in
//! the order the store thread applied them. Parts come back to the origin,
//! which renders the response once all of them are in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{
    bump, DataMsg, DataRequest, DataShared, Gathered, Op, Part, PartAddr, PlaneCounters, Render,
};
use crate::cache::Cache;
use crate::json::FieldMask;
use crate::net::{ConnId, Outlet};
use crate::net::{OutboundCompletion, OutboundIo};
use crate::store::pg;
use crate::store::thread::{StoreOp, StoreOutcome, StoreReply, StoreRequest};
use crate::store::{ShardMap, StoreLink, StoreOptions, Stored};

/// A document as the cache partition holds it, with projections already made.
struct CachedDoc {
    stored: Stored,
    /// `(canonical field mask, projected body)`.
    variants: Vec<(Box<str>, Bytes)>,
}

/// A few bytes of bookkeeping per cached document and projection.
const ENTRY_OVERHEAD: usize = 64;

impl CachedDoc {
    fn weight(&self) -> usize {
        self.stored.doc.len()
            + self
                .variants
                .iter()
                .map(|(mask, body)| mask.len() + body.len() + ENTRY_OVERHEAD)
                .sum::<usize>()
    }
}

struct Waiter {
    to: PartAddr,
    mask: Option<FieldMask>,
}

enum TicketKind {
    /// A cache fill for `key`: every reader that missed meanwhile waits on it.
    Fill {
        key: Box<[u8]>,
    },
    /// An uncached read.
    Read,
    /// A write of `key`: its outcome updates the cache.
    Write {
        key: Box<[u8]>,
    },
    Scan,
}

struct Ticket {
    kind: TicketKind,
    waiters: Vec<Waiter>,
}

/// One io core's document plane.
pub struct Plane {
    core: usize,
    shared: Arc<DataShared>,
    cache: Cache<CachedDoc>,
    store: StoreLink,
    /// The way to every core's plane, by core.
    peers: Vec<Outlet<DataMsg>>,
    /// Tickets the store thread will never answer (it stopped): failed on the next turn.
    unanswerable: Vec<u64>,
    /// Messages to other cores, sent together at the end of a loop turn.
    outbox: Vec<Vec<DataMsg>>,
    fills: HashMap<Box<[u8]>, u64>,
    tickets: HashMap<u64, Ticket>,
    next_ticket: u64,
    gathers: HashMap<u64, (ConnId, Gathering)>,
    next_gather: u64,
    /// Answers complete since the io loop last looked.
    finished: Vec<(ConnId, Gathered)>,
    counters: Arc<PlaneCounters>,
    scratch: Vec<u8>,
    mask_scratch: Vec<u8>,
}

struct Gathering {
    plan: Box<dyn Render>,
    parts: Vec<Option<Part>>,
    remaining: usize,
}

impl Plane {
    pub fn new(
        core: usize,
        shared: Arc<DataShared>,
        store: StoreLink,
        peers: Vec<Outlet<DataMsg>>,
    ) -> Self {
        let cores = peers.len();
        let cache = Cache::new(
            shared.options.cache_bytes,
            shared.options.cache_ttl,
            Arc::clone(&shared.cache_counters[core]),
        );
        let counters = Arc::clone(&shared.plane_counters[core]);
        Self {
            core,
            shared,
            cache,
            store,
            peers,
            unanswerable: Vec::new(),
            outbox: (0..cores).map(|_| Vec::new()).collect(),
            fills: HashMap::new(),
            tickets: HashMap::new(),
            next_ticket: 0,
            gathers: HashMap::new(),
            next_gather: 0,
            finished: Vec::new(),
            counters,
            scratch: Vec::with_capacity(256),
            mask_scratch: Vec::new(),
        }
    }

    /// A one-core, one-shard plane with its own store thread on `dir`, not
    /// part of a running server: for tests of the request path. The store
    /// thread's replies go to `store_replies`; messages for other cores to `peer`.
    pub fn standalone(
        dir: &std::path::Path,
        options: StoreOptions,
        store_replies: Outlet<StoreReply>,
        peer: Outlet<DataMsg>,
    ) -> Result<(Self, Arc<DataShared>), String> {
        let map = ShardMap::new(1, crate::store::ShardStrategy::Hash { shards: 1 }, 1);
        let shards_dir = dir.join("shards");
        std::fs::create_dir_all(&shards_dir).map_err(|e| e.to_string())?;
        let engine =
            crate::store::redb_engine::RedbEngine::open(&shards_dir.join("shard-0000.redb"))
                .map_err(|e| e.to_string())?;
        let last_version =
            crate::store::Engine::last_version(&engine).map_err(|e| e.to_string())?;
        let shared = Arc::new(DataShared {
            map,
            options,
            cache_counters: vec![Arc::default()],
            store_counters: vec![Arc::default()],
            plane_counters: vec![Arc::default()],
            pg_counters: Vec::new(),
        });
        let shard = crate::store::thread::OpenShard {
            shard: 0,
            engine: Box::new(engine),
            last_version,
        };
        let store = crate::store::thread::start(
            0,
            vec![shard],
            dir.join("wal"),
            store_replies,
            Arc::clone(&shared.store_counters[0]),
        )
        .map_err(|e| e.to_string())?;
        Ok((
            Self::new(0, Arc::clone(&shared), StoreLink::Thread(store), vec![peer]),
            shared,
        ))
    }

    pub fn map(&self) -> &ShardMap {
        &self.shared.map
    }

    pub fn core(&self) -> usize {
        self.core
    }

    pub fn options(&self) -> &StoreOptions {
        &self.shared.options
    }

    /// The fast path for a read of a key this core owns: a cache hit,
    /// projected if a mask is given, without any message.
    pub fn cached(
        &mut self,
        shard: u32,
        key: &[u8],
        mask: Option<&FieldMask>,
        now: Instant,
    ) -> Option<Stored> {
        if let StoreLink::Postgres(pg) = &self.store {
            // Another node may have changed it: only while every invalidation is heard.
            if !pg.fresh(shard, now) {
                return None;
            }
        }
        let entry = self.cache.get(key, now)?;
        let stored = match mask {
            None => entry.stored.clone(),
            Some(mask) => {
                let (body, grew) = project_cached(entry, mask, &mut self.mask_scratch);
                let version = entry.stored.version;
                if grew {
                    let weight = entry.weight();
                    self.cache.reweigh(key, weight);
                }
                Stored { version, doc: body }
            }
        };
        Some(stored)
    }

    /// Starts the operations of a request whose answer goes to `reply`.
    pub fn start(&mut self, request: DataRequest, reply: ConnId, now: Instant) {
        let gather = self.next_gather;
        self.next_gather += 1;
        let count = request.ops.len();
        self.gathers.insert(
            gather,
            (
                reply,
                Gathering {
                    plan: request.plan,
                    parts: (0..count).map(|_| None).collect(),
                    remaining: count,
                },
            ),
        );
        if count == 0 {
            self.fill_part(gather, 0, None);
            return;
        }
        for (index, op) in request.ops.into_iter().enumerate() {
            let to = PartAddr {
                core: self.core,
                gather,
                part: index as u32,
            };
            let owner = self.shared.map.owner(op.shard());
            if owner == self.core {
                self.execute(op, to, now);
            } else {
                bump(&self.counters.forwarded);
                self.outbox[owner].push(DataMsg::Op { to, op });
            }
        }
    }

    /// Answers that completed, for the io loop to write.
    pub fn take_finished(&mut self) -> Option<(ConnId, Gathered)> {
        self.finished.pop()
    }

    /// Handles one message from another core's plane.
    pub fn on_message(&mut self, msg: DataMsg, now: Instant) {
        match msg {
            DataMsg::Op { to, op } => self.execute(op, to, now),
            DataMsg::Part {
                gather,
                part,
                result,
            } => self.fill_part(gather, part, Some(result)),
        }
    }

    /// Handles what this core's store thread made of an operation.
    pub fn on_stored(&mut self, reply: StoreReply, now: Instant) {
        self.on_stored_outcome(reply.ticket, reply.outcome, now)
    }

    /// Sends the messages queued for other cores, waking each once. An
    /// operation for a core that has stopped (only while shutting down) fails
    /// at once instead of waiting for an answer that cannot come.
    pub fn flush_outbox(&mut self) {
        self.pump_postgres(Instant::now());
        for ticket in std::mem::take(&mut self.unanswerable) {
            let outcome = StoreOutcome::Failed(crate::store::StoreError::Engine(
                "the store thread stopped".into(),
            ));
            self.on_stored_outcome(ticket, outcome, Instant::now());
        }
        let mut failed = Vec::new();
        for (core, messages) in self.outbox.iter_mut().enumerate() {
            if messages.is_empty() {
                continue;
            }
            let peer = &self.peers[core];
            for msg in messages.drain(..) {
                let op_for = match &msg {
                    DataMsg::Op { to, .. } => Some(*to),
                    DataMsg::Part { .. } => None,
                };
                if peer.post(msg).is_err() {
                    failed.extend(op_for.map(|to| (core, to)));
                }
            }
            peer.wake();
        }
        for (core, to) in failed {
            let outcome = StoreOutcome::Failed(crate::store::StoreError::Engine(format!(
                "io core {core}, which owns the shard, has stopped"
            )));
            self.fill_part(to.gather, to.part, Some(Part::Store(outcome)));
        }
    }

    /// Runs an operation on the shard this core owns.
    fn execute(&mut self, op: Op, to: PartAddr, now: Instant) {
        match op {
            Op::Get {
                shard,
                key,
                mask,
                cached: true,
                missed,
            } => {
                if !missed {
                    if let Some(stored) = self.cached(shard, &key, mask.as_ref(), now) {
                        self.complete(to, Part::Doc(Some(stored)));
                        return;
                    }
                }
                if let Some(&ticket) = self.fills.get(key.as_slice()) {
                    bump(&self.counters.coalesced);
                    if let Some(ticket) = self.tickets.get_mut(&ticket) {
                        ticket.waiters.push(Waiter { to, mask });
                    }
                    return;
                }
                let key: Box<[u8]> = key.into_boxed_slice();
                let ticket = self.ask_store(shard, StoreOp::Read { key: key.to_vec() });
                self.fills.insert(key.clone(), ticket);
                self.tickets.insert(
                    ticket,
                    Ticket {
                        kind: TicketKind::Fill { key },
                        waiters: vec![Waiter { to, mask }],
                    },
                );
            }
            Op::Get {
                shard,
                key,
                mask,
                cached: false,
                ..
            } => {
                let ticket = self.ask_store(shard, StoreOp::Read { key });
                self.tickets.insert(
                    ticket,
                    Ticket {
                        kind: TicketKind::Read,
                        waiters: vec![Waiter { to, mask }],
                    },
                );
            }
            Op::Store { shard, op } => {
                let kind = match &op {
                    StoreOp::Put { key, .. }
                    | StoreOp::Patch { key, .. }
                    | StoreOp::Delete { key, .. } => TicketKind::Write {
                        key: key.clone().into_boxed_slice(),
                    },
                    StoreOp::Scan { .. } | StoreOp::Read { .. } | StoreOp::Sql(_) => {
                        TicketKind::Scan
                    }
                };
                let ticket = self.ask_store(shard, op);
                self.tickets.insert(
                    ticket,
                    Ticket {
                        kind,
                        waiters: vec![Waiter { to, mask: None }],
                    },
                );
            }
        }
    }

    fn ask_store(&mut self, shard: u32, op: StoreOp) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        bump(&self.counters.store_ops);
        match &mut self.store {
            StoreLink::Thread(store) => {
                if store.send(StoreRequest { ticket, shard, op }).is_err() {
                    // The store thread is gone: answer at once rather than never.
                    self.finish_failed(ticket);
                }
            }
            // Its outcome is an event, taken once the ticket is registered.
            StoreLink::Postgres(pg) => pg.submit(ticket, shard, op, Instant::now()),
        }
        ticket
    }

    /// Applies what the PostgreSQL connections reported, in wire order.
    fn pump_postgres(&mut self, now: Instant) {
        loop {
            let StoreLink::Postgres(pg) = &mut self.store else {
                return;
            };
            let Some(event) = pg.next_event() else {
                return;
            };
            match event {
                pg::Event::Outcome { ticket, outcome } => {
                    self.on_stored_outcome(ticket, outcome, now)
                }
                pg::Event::Invalidate(key) => {
                    self.cache.remove(&key);
                }
                // Whatever this core cached may have missed invalidations.
                pg::Event::Reset(_) => self.cache.clear(),
            }
        }
    }

    /// The end of a loop turn, with the ring: the PostgreSQL connections send what the turn queued.
    pub fn drive_outbound(&mut self, io: &mut OutboundIo<'_>, now: Instant) {
        if let StoreLink::Postgres(pg) = &mut self.store {
            pg.drive(io, now);
        }
    }

    /// A completion of one of the PostgreSQL connections.
    pub fn on_outbound(&mut self, io: &mut OutboundIo<'_>, done: OutboundCompletion, now: Instant) {
        if let StoreLink::Postgres(pg) = &mut self.store {
            pg.on_completion(io, done, now);
        }
        self.pump_postgres(now);
    }

    /// A PostgreSQL connection's handshake finished off the core.
    pub fn on_pg_opened(&mut self, opened: pg::shard::Opened, now: Instant) {
        if let StoreLink::Postgres(pg) = &mut self.store {
            pg.on_opened(opened, now);
        }
    }

    /// Whether this core's shards are on PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.store, StoreLink::Postgres(_))
    }

    /// Answers a ticket the store thread will never see, on this core's next
    /// turn (the ticket is not registered yet when the send fails).
    fn finish_failed(&mut self, ticket: u64) {
        self.unanswerable.push(ticket);
    }

    fn on_stored_outcome(&mut self, ticket: u64, outcome: StoreOutcome, now: Instant) {
        let Some(ticket) = self.tickets.remove(&ticket) else {
            return;
        };
        match ticket.kind {
            TicketKind::Fill { key } => {
                self.fills.remove(&key);
                match outcome {
                    StoreOutcome::Found(Some(stored)) => {
                        let entry = CachedDoc {
                            stored: stored.clone(),
                            variants: Vec::new(),
                        };
                        let weight = entry.weight();
                        self.cache.insert(&key, entry, weight, now);
                        for waiter in ticket.waiters {
                            let part = Part::Doc(Some(shaped(
                                &stored,
                                waiter.mask.as_ref(),
                                &mut self.mask_scratch,
                            )));
                            self.complete(waiter.to, part);
                        }
                    }
                    other => {
                        let part = match other {
                            StoreOutcome::Found(None) => Part::Doc(None),
                            failed => Part::Store(failed),
                        };
                        for waiter in ticket.waiters {
                            self.complete(waiter.to, part.clone());
                        }
                    }
                }
            }
            TicketKind::Read => {
                for waiter in ticket.waiters {
                    let part = match &outcome {
                        StoreOutcome::Found(found) => {
                            let scratch = &mut self.mask_scratch;
                            Part::Doc(
                                found
                                    .as_ref()
                                    .map(|stored| shaped(stored, waiter.mask.as_ref(), scratch)),
                            )
                        }
                        other => Part::Store(other.clone()),
                    };
                    self.complete(waiter.to, part);
                }
            }
            TicketKind::Write { key } => {
                match &outcome {
                    StoreOutcome::Written { stored, .. } => {
                        let entry = CachedDoc {
                            stored: stored.clone(),
                            variants: Vec::new(),
                        };
                        let weight = entry.weight();
                        if !self.cache.insert(&key, entry, weight, now) {
                            self.cache.remove(&key);
                        }
                    }
                    StoreOutcome::Deleted => {
                        self.cache.remove(&key);
                    }
                    _ => {}
                }
                for waiter in ticket.waiters {
                    self.complete(waiter.to, Part::Store(outcome.clone()));
                }
            }
            TicketKind::Scan => {
                for waiter in ticket.waiters {
                    self.complete(waiter.to, Part::Store(outcome.clone()));
                }
            }
        }
    }

    fn complete(&mut self, to: PartAddr, part: Part) {
        if to.core == self.core {
            self.fill_part(to.gather, to.part, Some(part));
        } else {
            self.outbox[to.core].push(DataMsg::Part {
                gather: to.gather,
                part: to.part,
                result: part,
            });
        }
    }

    fn fill_part(&mut self, gather: u64, index: u32, part: Option<Part>) {
        let Some((_, gathering)) = self.gathers.get_mut(&gather) else {
            return;
        };
        if let Some(part) = part {
            if let Some(slot) = gathering.parts.get_mut(index as usize) {
                if slot.is_none() {
                    gathering.remaining -= 1;
                }
                *slot = Some(part);
            }
        }
        if gathering.remaining > 0 {
            return;
        }
        let (reply, gathering) = self.gathers.remove(&gather).expect("present");
        let parts = gathering
            .parts
            .into_iter()
            .map(|p| p.expect("every part is in"))
            .collect();
        self.finished.push((
            reply,
            Gathered {
                plan: gathering.plan,
                parts,
            },
        ));
    }

    /// A read of `collection/key` for an application's handler: the
    /// document at once when this core owns its shard and holds it in its
    /// cache partition (projected by `mask`), else the operation to defer
    /// (through the cache of the owner core, with single flight on misses).
    pub fn read(
        &mut self,
        collection: &str,
        key: &str,
        mask: Option<FieldMask>,
    ) -> Result<Stored, Op> {
        let shard = self
            .shared
            .map
            .shard_of(collection.as_bytes(), key.as_bytes());
        let mut storage = std::mem::take(&mut self.scratch);
        crate::store::storage_key(collection, key, &mut storage);
        let owned_here = self.shared.map.owner(shard) == self.core;
        if owned_here {
            if let Some(stored) = self.cached(shard, &storage, mask.as_ref(), Instant::now()) {
                self.scratch = storage;
                return Ok(stored);
            }
        }
        let op = Op::Get {
            shard,
            key: storage.clone(),
            mask,
            cached: true,
            missed: owned_here,
        };
        self.scratch = storage;
        Err(op)
    }

    /// A write of `collection/key` for an application's handler: `doc`
    /// must be a compact JSON object ([`crate::json::parse_document`] makes one).
    pub fn write(&self, collection: &str, key: &str, doc: Bytes) -> Op {
        self.store_op(collection, key, |key| StoreOp::Put {
            key,
            doc,
            cond: Default::default(),
        })
    }

    /// A delete of `collection/key` for an application's handler.
    pub fn remove(&self, collection: &str, key: &str) -> Op {
        self.store_op(collection, key, |key| StoreOp::Delete {
            key,
            cond: Default::default(),
        })
    }

    fn store_op(&self, collection: &str, key: &str, make: impl FnOnce(Vec<u8>) -> StoreOp) -> Op {
        let shard = self
            .shared
            .map
            .shard_of(collection.as_bytes(), key.as_bytes());
        let mut storage = Vec::with_capacity(collection.len() + key.len() + 1);
        crate::store::storage_key(collection, key, &mut storage);
        Op::Store {
            shard,
            op: make(storage),
        }
    }
}

/// The projection of a cached document for `mask`, made once and kept as
/// a variant; `true` when the entry grew.
fn project_cached(entry: &mut CachedDoc, mask: &FieldMask, scratch: &mut Vec<u8>) -> (Bytes, bool) {
    let canonical = mask.canonical();
    if let Some((_, body)) = entry.variants.iter().find(|(m, _)| &**m == canonical) {
        return (body.clone(), false);
    }
    let projected = project(&entry.stored, mask, scratch).doc;
    // Bounded: a client cycling through masks must not grow one entry without end.
    if entry.variants.len() >= 8 {
        entry.variants.remove(0);
    }
    entry.variants.push((canonical.into(), projected.clone()));
    (projected, true)
}

/// A read's answer for one waiter: the whole document, or its projection.
fn shaped(stored: &Stored, mask: Option<&FieldMask>, scratch: &mut Vec<u8>) -> Stored {
    match mask {
        None => stored.clone(),
        Some(mask) => project(stored, mask, scratch),
    }
}

fn project(stored: &Stored, mask: &FieldMask, scratch: &mut Vec<u8>) -> Stored {
    let mut out = Vec::with_capacity(stored.doc.len().min(256));
    if mask.project(&stored.doc, scratch, &mut out).is_err() {
        // Stored documents are valid objects; an error here means a bug, and
        // answering with nothing is safer than answering with everything.
        out.clear();
        out.extend_from_slice(b"{}");
    }
    Stored {
        version: stored.version,
        doc: Bytes::from(out),
    }
}

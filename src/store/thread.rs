//! The store thread of one io core: applies its shards' operations in arrival order and makes each batch durable with one fdatasync.
//!
//! An io core never blocks on disk: it sends operations here and gets the
//! outcomes back in its mailbox, in the order they were applied. Every
//! outcome of a batch, reads included, is sent only after the batch's
//! writes are durable in the write-ahead log (one fdatasync for all of the
//! core's shards, [`super::wal`]), so nothing a client sees can be lost by a
//! crash. The engines take the writes without syncing; every second (or
//! 32 MiB of log) a checkpoint starts a new log and makes the shards durable
//! one per batch, after which the old log is deleted.
//!
//! Faults of the disk: a batch the log cannot take is refused (503,
//! `StoreError::Unavailable`) and the log is cut back, so the next batch
//! may succeed; the first failure and the recovery are logged, each once.
//! A shard whose engine refuses writes the log holds, or fails its
//! checkpoint, *owes* them: it answers 503 and no log is removed until its
//! engine is reopened and every logged write for it replayed
//! (`Worker::settle_owed`, after each batch and every idle second). That is
//! safe because a log goes only once every shard it touched made its writes
//! durable. Where it is not enough: an engine file that cannot be opened
//! keeps the shard at 503 (reads too) until it can; a corrupt one needs an
//! operator.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::engine::{Change, Engine, StoreError, Stored};
use super::wal::Wal;
use crate::net::Outlet;

/// Most operations applied in one commit.
const MAX_BATCH: usize = 1024;

/// A set of entity tags from `If-Match` or `If-None-Match`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSet {
    /// `*`: any current version.
    Any,
    /// These versions; tags that are not ours never match and are dropped.
    Versions(Vec<u64>),
}

impl TagSet {
    pub fn matches_version(&self, version: u64) -> bool {
        self.matches(Some(version))
    }

    fn matches(&self, current: Option<u64>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::Versions(versions), Some(v)) => versions.contains(&v),
        }
    }
}

/// The conditions a write was sent with (RFC 9110 §13.1.1, §13.1.2).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Precondition {
    pub if_match: Option<TagSet>,
    pub if_none_match: Option<TagSet>,
}

impl Precondition {
    pub fn allows(&self, current: Option<u64>) -> bool {
        if let Some(tags) = &self.if_match {
            if !tags.matches(current) {
                return false;
            }
        }
        if let Some(tags) = &self.if_none_match {
            if tags.matches(current) {
                return false;
            }
        }
        true
    }
}

/// A PATCH's new document: `patch` merged into `current` (RFC 7396) if
/// `cond` allows its version, within `max_bytes`; else the outcome that
/// refuses it. Every engine applies merge patches this one way.
pub fn patched(
    current: &Stored,
    patch: &[u8],
    cond: &Precondition,
    max_bytes: usize,
) -> Result<Bytes, StoreOutcome> {
    if !cond.allows(Some(current.version)) {
        return Err(StoreOutcome::PreconditionFailed {
            current: Some(current.version),
        });
    }
    let mut scratch = Vec::new();
    let merged = match crate::json::merge_patch(Some(&current.doc), patch, &mut scratch) {
        Ok(merged) => merged,
        // The stored document itself would not parse: the server's fault, not the client's.
        Err(error @ crate::json::JsonError::Stored { .. }) => {
            return Err(StoreOutcome::Failed(StoreError::Engine(error.to_string())))
        }
        Err(error) => return Err(StoreOutcome::Invalid(error.to_string())),
    };
    if merged.len() > max_bytes {
        return Err(StoreOutcome::TooLarge {
            size: merged.len(),
            limit: max_bytes,
        });
    }
    Ok(Bytes::from(merged))
}

fn fail(outcomes: &mut Outcomes, dependents: &[usize], error: &StoreError) {
    for &index in dependents {
        outcomes[index].1 = StoreOutcome::Failed(error.clone());
    }
}

/// One operation on one shard.
#[derive(Debug)]
pub enum StoreOp {
    Read {
        key: Vec<u8>,
    },
    Put {
        key: Vec<u8>,
        doc: Bytes,
        cond: Precondition,
    },
    /// A JSON merge patch (RFC 7396) on an existing document.
    Patch {
        key: Vec<u8>,
        patch: Bytes,
        cond: Precondition,
        max_bytes: usize,
    },
    Delete {
        key: Vec<u8>,
        cond: Precondition,
    },
    Scan {
        from: Vec<u8>,
        to: Vec<u8>,
        limit: usize,
    },
    /// A statement on the TechEmpower tables of a PostgreSQL shard.
    Sql(super::SqlOp),
}

#[derive(Debug)]
pub struct StoreRequest {
    pub ticket: u64,
    pub shard: u32,
    pub op: StoreOp,
}

/// What became of an operation, sent back once its batch is durable.
#[derive(Debug, Clone)]
pub enum StoreOutcome {
    Found(Option<Stored>),
    Written {
        stored: Stored,
        created: bool,
    },
    Deleted,
    /// PATCH or DELETE of a document that does not exist.
    Missing,
    PreconditionFailed {
        current: Option<u64>,
    },
    /// The patched document is not a valid document.
    Invalid(String),
    TooLarge {
        size: usize,
        limit: usize,
    },
    Scanned(Vec<(Vec<u8>, Stored)>),
    Failed(StoreError),
}

/// Counters the store threads publish for `/metrics`.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Durable commits: one fdatasync of the write-ahead log per batch.
    pub commits: AtomicU64,
    pub committed_writes: AtomicU64,
    pub commit_micros: AtomicU64,
    pub failed_commits: AtomicU64,
    /// Engine commits refused after the log had the writes; the shard owed them until reopened.
    pub engine_failures: AtomicU64,
    /// Checkpoints: durable engine commits of the shards, after which the log starts over.
    pub checkpoints: AtomicU64,
    pub reads: AtomicU64,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.store(counter.load(Relaxed) + n, Relaxed);
}

/// One shard's engine and the last version it issued.
pub struct OpenShard {
    pub shard: u32,
    pub engine: Box<dyn Engine>,
    pub last_version: u64,
}

/// A checkpoint is due after this long with unsynced shards, or idle that long.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// ... or once the log is this large.
const CHECKPOINT_ABOVE: u64 = 32 << 20;

/// What a store thread answers an operation with, on the owner core's own channel.
#[derive(Debug)]
pub struct StoreReply {
    pub ticket: u64,
    pub outcome: StoreOutcome,
}

/// Starts the store thread for one io core's shards; operations go in
/// through the returned sender, outcomes come back through `owner`.
pub fn start(
    core: usize,
    shards: Vec<OpenShard>,
    wal_dir: PathBuf,
    owner: Outlet<StoreReply>,
    counters: Arc<StoreCounters>,
) -> std::io::Result<Sender<StoreRequest>> {
    let generation = 0;
    let wal = Wal::create(&wal_dir, core, generation)?;
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name(format!("percore-store-{core}"))
        .spawn(move || {
            let mut worker = Worker {
                core,
                shards: shards.into_iter().map(|s| (s.shard, s)).collect(),
                wal,
                wal_dir,
                generation,
                unsynced: HashSet::new(),
                retiring: None,
                last_checkpoint: Instant::now(),
                owed: HashSet::new(),
                refused_batches: 0,
                owner,
                counters,
            };
            worker.run(rx);
        })?;
    Ok(tx)
}

struct Worker {
    core: usize,
    shards: HashMap<u32, OpenShard>,
    wal: Wal,
    wal_dir: PathBuf,
    generation: u64,
    /// Shards whose engine holds commits that are durable only in the log.
    unsynced: HashSet<u32>,
    /// A checkpoint in progress: the log it retires, and the shards still to
    /// make durable before that log may go.
    retiring: Option<(Wal, Vec<u32>)>,
    last_checkpoint: Instant,
    /// Shards whose engine refused writes the log already holds: such a
    /// shard answers 503 (its engine is behind the log) and no log is
    /// retired, until its storage is reopened and the logs replayed into
    /// it ([`Self::settle_owed`]), as a restart would do.
    owed: HashSet<u32>,
    /// Batches refused since the write-ahead log last took one: the first
    /// failure is logged, and so is the recovery, not every batch between.
    refused_batches: u64,
    owner: Outlet<StoreReply>,
    counters: Arc<StoreCounters>,
}

/// The writes of a batch not yet committed, per shard, and which outcomes depend on them.
#[derive(Default)]
struct Pending {
    overlay: HashMap<Vec<u8>, Option<Stored>>,
    order: Vec<Vec<u8>>,
    /// Indexes into the batch's outcomes that saw this shard's uncommitted state.
    dependents: Vec<usize>,
}

type Outcomes = [(u64, StoreOutcome)];

impl Worker {
    fn run(&mut self, rx: Receiver<StoreRequest>) {
        let mut batch = Vec::with_capacity(64);
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        let mut outcomes: Vec<(u64, StoreOutcome)> = Vec::with_capacity(64);
        loop {
            let first = match rx.recv_timeout(CHECKPOINT_EVERY) {
                Ok(first) => first,
                Err(RecvTimeoutError::Timeout) => {
                    // Idle: no batch waits, so finish a checkpoint at once.
                    self.settle_owed();
                    self.checkpoint_all();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.checkpoint_all();
                    return;
                }
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            for request in batch.drain(..) {
                let shard = request.shard;
                if matches!(request.op, StoreOp::Scan { .. }) {
                    // A scan reads the engine: commit what is pending first.
                    self.commit(&mut pending, &mut outcomes);
                }
                let outcome = if self.owed.contains(&shard) {
                    StoreOutcome::Failed(StoreError::Unavailable(format!(
                        "shard {shard} is recovering from a storage error; retry"
                    )))
                } else {
                    self.apply(shard, request.op, pending.entry(shard).or_default())
                };
                let index = outcomes.len();
                outcomes.push((request.ticket, outcome));
                if let Some(p) = pending.get_mut(&shard) {
                    p.dependents.push(index);
                }
            }
            self.commit(&mut pending, &mut outcomes);
            for (ticket, outcome) in outcomes.drain(..) {
                // A stopped core needs no answer.
                let _ = self.owner.post(StoreReply { ticket, outcome });
            }
            self.owner.wake();
            self.settle_owed();
            if self.retiring.is_none()
                && (self.wal.len() > CHECKPOINT_ABOVE
                    || self.last_checkpoint.elapsed() >= CHECKPOINT_EVERY)
            {
                self.start_checkpoint();
            }
            self.checkpoint_step();
        }
    }

    /// Makes every pending write of the batch durable with one append and
    /// fdatasync of the log, then hands the writes to the shards' engines
    /// (without syncing). On failure every outcome that saw them fails.
    fn commit(&mut self, pending: &mut HashMap<u32, Pending>, outcomes: &mut Outcomes) {
        let mut written: Vec<(u32, Vec<Change>, Vec<usize>)> = Vec::new();
        for (shard, mut p) in pending.drain() {
            if p.order.is_empty() {
                continue;
            }
            let Some(open) = self.shards.get(&shard) else {
                continue;
            };
            let changes: Vec<Change> = p
                .order
                .drain(..)
                .map(|key| {
                    let value = p.overlay.remove(&key).flatten();
                    (key, value)
                })
                .collect();
            for (key, value) in &changes {
                self.wal
                    .stage(shard, open.last_version, key, value.as_ref());
            }
            written.push((shard, changes, p.dependents));
        }
        if written.is_empty() {
            return;
        }
        let started = Instant::now();
        if let Err(error) = self.wal.commit() {
            // Nothing of the batch is durable, so nothing of it is
            // acknowledged, and the log was cut back to its last durable
            // record (or will be, before its next append): the next batch
            // may succeed as soon as the disk takes it. Reads go on.
            // The client is told what happened, not where the server keeps its files.
            let refused = StoreError::Unavailable(format!(
                "the write-ahead log cannot be written ({}); the write was not made, retry",
                error.kind()
            ));
            if self.refused_batches == 0 {
                eprintln!(
                    "percore: io core {}: the write-ahead log {} cannot be written: {error}; writes get 503 until the log takes them again",
                    self.core,
                    self.wal.path().display()
                );
            }
            let error = refused;
            self.refused_batches += 1;
            add(&self.counters.failed_commits, 1);
            for (_, _, dependents) in &written {
                fail(outcomes, dependents, &error);
            }
            return;
        }
        if self.refused_batches > 0 {
            eprintln!(
                "percore: io core {}: the write-ahead log {} takes writes again ({} batches were refused)",
                self.core,
                self.wal.path().display(),
                self.refused_batches
            );
            self.refused_batches = 0;
        }
        let mut writes = 0;
        for (shard, changes, _) in &written {
            let shard = *shard;
            writes += changes.len() as u64;
            let open = self.shards.get_mut(&shard).expect("checked above");
            if let Err(error) = open.engine.commit(changes, open.last_version, false) {
                // The writes are durable in the log, so their answers
                // stand; the engine owes them until it takes them again.
                eprintln!(
                    "percore: io core {}: shard {shard} refused writes its write-ahead log holds ({error}); \
                     the shard answers 503 until its storage is reopened and takes them",
                    self.core
                );
                add(&self.counters.engine_failures, 1);
                self.owed.insert(shard);
                continue;
            }
            self.unsynced.insert(shard);
        }
        let c = &self.counters;
        add(&c.commits, 1);
        add(&c.committed_writes, writes);
        add(&c.commit_micros, started.elapsed().as_micros() as u64);
    }

    /// Reopens the storage of every shard that owes writes and replays
    /// into it every write of the logs for it, in order. Reopening loses
    /// what the engine took since its last durable commit (a checkpoint),
    /// and the logs hold exactly that and more: writes the engine already
    /// has are written again, to the same values.
    fn settle_owed(&mut self) {
        if self.owed.is_empty() {
            return;
        }
        let records = match super::wal::read_all(&self.wal_dir) {
            Ok(records) => records,
            Err(error) => {
                eprintln!(
                    "percore: io core {}: cannot read the write-ahead logs back: {error}; trying again",
                    self.core
                );
                return;
            }
        };
        let owing: Vec<u32> = self.owed.iter().copied().collect();
        for shard in owing {
            let Some(open) = self.shards.get_mut(&shard) else {
                continue;
            };
            let changes: Vec<Change> = records
                .iter()
                .filter(|r| r.shard == shard)
                .map(|r| (r.key.clone(), r.value.clone()))
                .collect();
            let settled = open
                .engine
                .reopen()
                .and_then(|()| open.engine.commit(&changes, open.last_version, false));
            if settled.is_ok() {
                eprintln!(
                    "percore: io core {}: shard {shard} reopened and took its {} logged writes; it serves again",
                    self.core,
                    changes.len()
                );
                self.owed.remove(&shard);
                self.unsynced.insert(shard);
            }
        }
    }

    /// Starts a checkpoint: new writes go to a new log; the shards written
    /// so far are made durable one by one ([`Self::checkpoint_step`]).
    fn start_checkpoint(&mut self) {
        self.last_checkpoint = Instant::now();
        // A shard that owes writes has them in the log alone: keep every log.
        if self.unsynced.is_empty() || !self.owed.is_empty() {
            return;
        }
        let next = match Wal::create(&self.wal_dir, self.core, self.generation + 1) {
            Ok(next) => next,
            Err(error) => {
                eprintln!(
                    "percore: io core {}: cannot start a new write-ahead log, checkpoint put off: {error}",
                    self.core
                );
                return;
            }
        };
        self.generation += 1;
        let old = std::mem::replace(&mut self.wal, next);
        let shards = std::mem::take(&mut self.unsynced).into_iter().collect();
        self.retiring = Some((old, shards));
    }

    /// Makes one more shard of the checkpoint durable; once all are, the old log goes.
    fn checkpoint_step(&mut self) {
        let Some((_, shards)) = &mut self.retiring else {
            return;
        };
        if let Some(shard) = shards.pop() {
            if self.owed.contains(&shard) {
                // Its engine lacks writes only the old log holds (and may
                // be a closed stand-in): making it "durable" now and
                // removing the log would lose them. Wait for the reopen.
                shards.push(shard);
                return;
            }
            let Some(open) = self.shards.get_mut(&shard) else {
                return;
            };
            if let Err(error) = open.engine.commit(&[], open.last_version, true) {
                // The old log still holds every write: keep it, and try
                // again later. An engine may refuse everything after a
                // failed commit (redb does, until reopened): the shard owes
                // its logged writes until its storage is reopened.
                eprintln!(
                    "percore: io core {}: checkpoint of shard {shard} failed: {error}; \
                     the shard answers 503 until its storage is reopened and takes its logged writes",
                    self.core
                );
                add(&self.counters.engine_failures, 1);
                shards.push(shard);
                self.owed.insert(shard);
                return;
            }
            if !shards.is_empty() {
                return;
            }
        }
        let (old, _) = self.retiring.take().expect("checked above");
        let path = old.path().to_owned();
        if let Err(error) = old.remove() {
            eprintln!(
                "percore: io core {}: cannot remove {}: {error}",
                self.core,
                path.display()
            );
        }
        add(&self.counters.checkpoints, 1);
    }

    /// Finishes the checkpoint in progress and checkpoints everything else.
    fn checkpoint_all(&mut self) {
        for _ in 0..2 {
            if self.retiring.is_none() {
                self.start_checkpoint();
            }
            while self.retiring.is_some() {
                let before = self.retiring.as_ref().map_or(0, |(_, s)| s.len());
                self.checkpoint_step();
                let after = self.retiring.as_ref().map_or(0, |(_, s)| s.len());
                if self.retiring.is_some() && after >= before {
                    // A shard could not be made durable; the log is kept.
                    return;
                }
            }
        }
    }

    fn current(
        &self,
        shard: u32,
        key: &[u8],
        pending: &Pending,
    ) -> Result<Option<Stored>, StoreError> {
        if let Some(value) = pending.overlay.get(key) {
            return Ok(value.clone());
        }
        match self.shards.get(&shard) {
            Some(open) => open.engine.get(key),
            None => Err(StoreError::Engine(format!(
                "shard {shard} is not open on this core"
            ))),
        }
    }

    fn write(
        &mut self,
        shard: u32,
        key: Vec<u8>,
        doc: Option<Bytes>,
        pending: &mut Pending,
    ) -> Option<Stored> {
        let open = self.shards.get_mut(&shard)?;
        let stored = doc.map(|doc| {
            open.last_version += 1;
            Stored {
                version: open.last_version,
                doc,
            }
        });
        if pending
            .overlay
            .insert(key.clone(), stored.clone())
            .is_none()
        {
            pending.order.push(key);
        }
        stored
    }

    fn apply(&mut self, shard: u32, op: StoreOp, pending: &mut Pending) -> StoreOutcome {
        if !self.shards.contains_key(&shard) {
            return StoreOutcome::Failed(StoreError::Engine(format!(
                "shard {shard} is not open on this core"
            )));
        }
        match op {
            StoreOp::Read { key } => {
                add(&self.counters.reads, 1);
                match self.current(shard, &key, pending) {
                    Ok(found) => StoreOutcome::Found(found),
                    Err(error) => StoreOutcome::Failed(error),
                }
            }
            StoreOp::Scan { from, to, limit } => {
                match self.shards[&shard]
                    .engine
                    .scan(&from, &to, limit, super::SCAN_PART_BYTES)
                {
                    Ok(items) => StoreOutcome::Scanned(items),
                    Err(error) => StoreOutcome::Failed(error),
                }
            }
            StoreOp::Put { key, doc, cond } => {
                let current = match self.current(shard, &key, pending) {
                    Ok(current) => current,
                    Err(error) => return StoreOutcome::Failed(error),
                };
                let current_version = current.as_ref().map(|s| s.version);
                if !cond.allows(current_version) {
                    return StoreOutcome::PreconditionFailed {
                        current: current_version,
                    };
                }
                match self.write(shard, key, Some(doc), pending) {
                    Some(stored) => StoreOutcome::Written {
                        stored,
                        created: current.is_none(),
                    },
                    None => StoreOutcome::Failed(StoreError::Engine("shard vanished".into())),
                }
            }
            StoreOp::Patch {
                key,
                patch,
                cond,
                max_bytes,
            } => {
                let current = match self.current(shard, &key, pending) {
                    Ok(Some(current)) => current,
                    Ok(None) if cond.if_match.is_some() => {
                        return StoreOutcome::PreconditionFailed { current: None }
                    }
                    Ok(None) => return StoreOutcome::Missing,
                    Err(error) => return StoreOutcome::Failed(error),
                };
                let merged = match patched(&current, &patch, &cond, max_bytes) {
                    Ok(merged) => merged,
                    Err(outcome) => return outcome,
                };
                match self.write(shard, key, Some(merged), pending) {
                    Some(stored) => StoreOutcome::Written {
                        stored,
                        created: false,
                    },
                    None => StoreOutcome::Failed(StoreError::Engine("shard vanished".into())),
                }
            }
            StoreOp::Sql(op) => StoreOutcome::Failed(StoreError::Engine(format!(
                "{op:?} runs on PostgreSQL shards only"
            ))),
            StoreOp::Delete { key, cond } => {
                let current = match self.current(shard, &key, pending) {
                    Ok(current) => current.map(|s| s.version),
                    Err(error) => return StoreOutcome::Failed(error),
                };
                if !cond.allows(current) {
                    return StoreOutcome::PreconditionFailed { current };
                }
                if current.is_none() {
                    return StoreOutcome::Missing;
                }
                self.write(shard, key, None, pending);
                StoreOutcome::Deleted
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::Mutex;

    /// An in-memory engine that refuses commits, and stays refusing until
    /// reopened, while `failing` is set: redb's behaviour after an I/O error.
    struct Flaky {
        docs: Arc<Mutex<BTreeMap<Vec<u8>, Stored>>>,
        /// What the last durable commit left: all a reopen finds.
        durable: Arc<Mutex<BTreeMap<Vec<u8>, Stored>>>,
        failing: Arc<AtomicBool>,
        poisoned: bool,
        /// A reopen failed: the engine takes commits into nothing, the
        /// worst a failed reopen can leave (the store thread must never
        /// checkpoint such a shard and drop the log that holds its writes).
        closed: bool,
        reopens: Arc<AtomicU64>,
    }

    impl Engine for Flaky {
        fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
            if self.closed {
                return Ok(None);
            }
            if self.poisoned {
                return Err(StoreError::Engine("previous I/O error".into()));
            }
            Ok(self.docs.lock().unwrap().get(key).cloned())
        }
        fn scan(
            &self,
            _: &[u8],
            _: &[u8],
            _: usize,
            _: usize,
        ) -> Result<Vec<(Vec<u8>, Stored)>, StoreError> {
            Ok(Vec::new())
        }
        fn commit(&mut self, changes: &[Change], _: u64, durable: bool) -> Result<(), StoreError> {
            if self.closed {
                return Ok(());
            }
            if self.poisoned || self.failing.load(Relaxed) {
                self.poisoned = true;
                return Err(StoreError::Engine("disk I/O error".into()));
            }
            let mut docs = self.docs.lock().unwrap();
            for (key, value) in changes {
                match value {
                    Some(stored) => docs.insert(key.clone(), stored.clone()),
                    None => docs.remove(key),
                };
            }
            if durable {
                *self.durable.lock().unwrap() = docs.clone();
            }
            Ok(())
        }
        fn last_version(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn reopen(&mut self) -> Result<(), StoreError> {
            self.reopens.fetch_add(1, Relaxed);
            if self.failing.load(Relaxed) {
                self.poisoned = false;
                self.closed = true;
                return Err(StoreError::Engine("still failing".into()));
            }
            self.closed = false;
            self.poisoned = false;
            *self.docs.lock().unwrap() = self.durable.lock().unwrap().clone();
            Ok(())
        }
    }

    /// A store thread over one [`Flaky`] shard, in a directory of its own.
    struct Rig {
        store: Sender<StoreRequest>,
        inbox: crossbeam_channel::Receiver<StoreReply>,
        ticket: u64,
        dir: PathBuf,
        docs: Arc<Mutex<BTreeMap<Vec<u8>, Stored>>>,
        durable: Arc<Mutex<BTreeMap<Vec<u8>, Stored>>>,
        failing: Arc<AtomicBool>,
        reopens: Arc<AtomicU64>,
        counters: Arc<StoreCounters>,
    }

    impl Rig {
        fn start(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("percore-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let docs = Arc::new(Mutex::new(BTreeMap::new()));
            let durable = Arc::new(Mutex::new(BTreeMap::new()));
            let failing = Arc::new(AtomicBool::new(false));
            let reopens = Arc::new(AtomicU64::new(0));
            let engine = Flaky {
                docs: Arc::clone(&docs),
                durable: Arc::clone(&durable),
                failing: Arc::clone(&failing),
                poisoned: false,
                closed: false,
                reopens: Arc::clone(&reopens),
            };
            let (mailbox, inbox) = crate::net::Mailbox::<StoreReply>::detached().unwrap();
            let counters = Arc::new(StoreCounters::default());
            let store = start(
                0,
                vec![OpenShard {
                    shard: 0,
                    engine: Box::new(engine),
                    last_version: 0,
                }],
                dir.clone(),
                mailbox.outlet(|reply| reply),
                Arc::clone(&counters),
            )
            .unwrap();
            Self {
                store,
                inbox,
                ticket: 0,
                dir,
                docs,
                durable,
                failing,
                reopens,
                counters,
            }
        }

        fn ask(&mut self, op: StoreOp) -> StoreOutcome {
            self.ticket += 1;
            self.store
                .send(StoreRequest {
                    ticket: self.ticket,
                    shard: 0,
                    op,
                })
                .unwrap();
            let reply = self
                .inbox
                .recv_timeout(Duration::from_secs(10))
                .expect("an answer");
            assert_eq!(reply.ticket, self.ticket);
            reply.outcome
        }
    }

    impl Drop for Rig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn put(key: &str, body: &str) -> StoreOp {
        StoreOp::Put {
            key: key.as_bytes().to_vec(),
            doc: Bytes::from(body.to_owned()),
            cond: Precondition::default(),
        }
    }

    #[test]
    fn a_shard_whose_engine_fails_owes_its_writes_and_recovers_without_a_restart() {
        let mut rig = Rig::start("owed");
        let (docs, failing, reopens, counters) = (
            Arc::clone(&rig.docs),
            Arc::clone(&rig.failing),
            Arc::clone(&rig.reopens),
            Arc::clone(&rig.counters),
        );
        let mut ask = |op: StoreOp| rig.ask(op);
        assert!(matches!(
            ask(put("a", "{\"v\":1}")),
            StoreOutcome::Written { .. }
        ));
        failing.store(true, Relaxed);
        // The log has it, so the write stands; the engine owes it.
        assert!(matches!(
            ask(put("b", "{\"v\":2}")),
            StoreOutcome::Written { .. }
        ));
        assert_eq!(counters.engine_failures.load(Relaxed), 1);
        // Until the engine takes it, the shard answers 503 for everything.
        let read = ask(StoreOp::Read { key: b"a".to_vec() });
        assert!(
            matches!(read, StoreOutcome::Failed(StoreError::Unavailable(_))),
            "{read:?}"
        );
        let refused = ask(put("c", "{\"v\":3}"));
        assert!(
            matches!(refused, StoreOutcome::Failed(StoreError::Unavailable(_))),
            "{refused:?}"
        );
        assert!(reopens.load(Relaxed) > 0, "recovery was tried");
        // No log may be retired while the engine owes writes only the log holds.
        assert_eq!(counters.checkpoints.load(Relaxed), 0);
        failing.store(false, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match ask(StoreOp::Read { key: b"b".to_vec() }) {
                StoreOutcome::Found(found) => break found,
                StoreOutcome::Failed(StoreError::Unavailable(_)) => {
                    assert!(Instant::now() < deadline, "the shard never recovered");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            found.unwrap().doc.as_ref(),
            b"{\"v\":2}",
            "the owed write reached the engine"
        );
        // What the engine took without a durable commit before it failed
        // was lost by the reopen, and came back from the log.
        match ask(StoreOp::Read { key: b"a".to_vec() }) {
            StoreOutcome::Found(Some(a)) => assert_eq!(a.doc.as_ref(), b"{\"v\":1}"),
            other => panic!("a was lost: {other:?}"),
        }
        assert!(docs.lock().unwrap().contains_key(b"b".as_slice()));
        assert!(matches!(
            ask(put("c", "{\"v\":3}")),
            StoreOutcome::Written { .. }
        ));
    }

    #[test]
    fn a_failed_checkpoint_reopens_the_shard_and_keeps_its_logged_writes() {
        let mut rig = Rig::start("checkpoint");
        assert!(matches!(
            rig.ask(put("a", "{\"v\":1}")),
            StoreOutcome::Written { .. }
        ));
        rig.failing.store(true, Relaxed);
        // Idle, the store checkpoints within a second: the durable commit fails.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.counters.engine_failures.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "no checkpoint was tried");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rig.counters.checkpoints.load(Relaxed), 0);
        // The engine refuses everything now (redb does after an I/O error):
        // the shard answers 503 rather than an engine error.
        let read = rig.ask(StoreOp::Read { key: b"a".to_vec() });
        assert!(
            matches!(read, StoreOutcome::Failed(StoreError::Unavailable(_))),
            "{read:?}"
        );
        // Reopens fail while the disk does, each followed by an idle turn's
        // checkpoint: none may drop the log that alone holds the write.
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.reopens.load(Relaxed) < 3 {
            assert!(Instant::now() < deadline, "no reopen was tried");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(rig.counters.checkpoints.load(Relaxed), 0);
        rig.failing.store(false, Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        let found = loop {
            match rig.ask(StoreOp::Read { key: b"a".to_vec() }) {
                StoreOutcome::Found(found) => break found,
                StoreOutcome::Failed(StoreError::Unavailable(_)) => {
                    assert!(Instant::now() < deadline, "the shard never recovered");
                    std::thread::sleep(Duration::from_millis(20));
                }
                other => panic!("{other:?}"),
            }
        };
        // The reopen lost what the engine had not made durable; the log gave it back.
        assert_eq!(found.unwrap().doc.as_ref(), b"{\"v\":1}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while rig.counters.checkpoints.load(Relaxed) == 0 {
            assert!(Instant::now() < deadline, "the checkpoint never completed");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            rig.durable
                .lock()
                .unwrap()
                .get(b"a".as_slice())
                .map(|s| s.doc.clone()),
            Some(Bytes::from_static(b"{\"v\":1}")),
            "the checkpoint made the write durable in the engine"
        );
    }
}

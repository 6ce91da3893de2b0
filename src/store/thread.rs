//! The store thread of one io core: applies its shards' operations in arrival order and commits each batch with one fsync.
//!
//! An io core never blocks on disk: it sends operations here and gets the
//! outcomes back in its mailbox, in the order they were applied. Every
//! outcome of a batch, reads included, is sent only after the batch's
//! commit is durable, so nothing a client sees can be lost by a crash.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};

use super::engine::{Change, Engine, StoreError, Stored};
use crate::docs::DataMsg;
use crate::mailbox::{CoreMsg, Mailbox};

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
    pub commits: AtomicU64,
    pub committed_writes: AtomicU64,
    pub commit_micros: AtomicU64,
    pub failed_commits: AtomicU64,
    pub reads: AtomicU64,
}

/// One shard's engine and the last version it issued.
pub struct OpenShard {
    pub shard: u32,
    pub engine: Box<dyn Engine>,
    pub last_version: u64,
}

/// Starts the store thread for one io core's shards; operations go in
/// through the returned sender, outcomes come back through `owner`.
pub fn start(
    core: usize,
    shards: Vec<OpenShard>,
    owner: Mailbox,
    counters: Arc<StoreCounters>,
) -> std::io::Result<Sender<StoreRequest>> {
    let (tx, rx) = crossbeam_channel::unbounded();
    std::thread::Builder::new()
        .name(format!("percore-store-{core}"))
        .spawn(move || {
            let mut worker = Worker {
                shards: shards.into_iter().map(|s| (s.shard, s)).collect(),
                owner,
                counters,
            };
            worker.run(rx);
        })?;
    Ok(tx)
}

struct Worker {
    shards: HashMap<u32, OpenShard>,
    owner: Mailbox,
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

impl Worker {
    fn run(&mut self, rx: Receiver<StoreRequest>) {
        let mut batch = Vec::with_capacity(64);
        let mut pending: HashMap<u32, Pending> = HashMap::new();
        let mut outcomes: Vec<(u64, StoreOutcome)> = Vec::with_capacity(64);
        while let Ok(first) = rx.recv() {
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
                    // A scan reads committed state only: commit what is pending first.
                    self.commit(shard, &mut pending, &mut outcomes);
                }
                let outcome =
                    self.apply(request.shard, request.op, pending.entry(shard).or_default());
                let index = outcomes.len();
                outcomes.push((request.ticket, outcome));
                if let Some(p) = pending.get_mut(&shard) {
                    p.dependents.push(index);
                }
            }
            let shards: Vec<u32> = pending.keys().copied().collect();
            for shard in shards {
                self.commit(shard, &mut pending, &mut outcomes);
            }
            for (ticket, outcome) in outcomes.drain(..) {
                // A stopped core needs no answer.
                let _ = self
                    .owner
                    .post(CoreMsg::Data(DataMsg::Stored { ticket, outcome }));
            }
            self.owner.wake();
        }
    }

    /// Makes one shard's pending writes durable; on failure every outcome
    /// that saw them becomes a failure.
    fn commit(
        &mut self,
        shard: u32,
        pending: &mut HashMap<u32, Pending>,
        outcomes: &mut [(u64, StoreOutcome)],
    ) {
        let Some(mut p) = pending.remove(&shard) else {
            return;
        };
        if p.order.is_empty() {
            return;
        }
        let Some(open) = self.shards.get_mut(&shard) else {
            return;
        };
        let changes: Vec<Change> = p
            .order
            .drain(..)
            .map(|key| {
                let value = p.overlay.remove(&key).flatten();
                (key, value)
            })
            .collect();
        let started = Instant::now();
        match open.engine.commit(&changes, open.last_version) {
            Ok(()) => {
                let c = &self.counters;
                c.commits.store(c.commits.load(Relaxed) + 1, Relaxed);
                c.committed_writes.store(
                    c.committed_writes.load(Relaxed) + changes.len() as u64,
                    Relaxed,
                );
                c.commit_micros.store(
                    c.commit_micros.load(Relaxed) + started.elapsed().as_micros() as u64,
                    Relaxed,
                );
            }
            Err(error) => {
                eprintln!(
                    "percore: shard {shard}: commit failed, {} write(s) refused: {error}",
                    changes.len()
                );
                let c = &self.counters;
                c.failed_commits
                    .store(c.failed_commits.load(Relaxed) + 1, Relaxed);
                for &index in &p.dependents {
                    outcomes[index].1 = StoreOutcome::Failed(error.clone());
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
                let c = &self.counters;
                c.reads.store(c.reads.load(Relaxed) + 1, Relaxed);
                match self.current(shard, &key, pending) {
                    Ok(found) => StoreOutcome::Found(found),
                    Err(error) => StoreOutcome::Failed(error),
                }
            }
            StoreOp::Scan { from, to, limit } => {
                match self.shards[&shard].engine.scan(&from, &to, limit) {
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
                if !cond.allows(Some(current.version)) {
                    return StoreOutcome::PreconditionFailed {
                        current: Some(current.version),
                    };
                }
                let mut scratch = Vec::new();
                let merged =
                    match crate::json::merge_patch(Some(&current.doc), &patch, &mut scratch) {
                        Ok(merged) => merged,
                        // The stored document itself would not parse: the server's fault, not the client's.
                        Err(error @ crate::json::JsonError::Stored { .. }) => {
                            return StoreOutcome::Failed(StoreError::Engine(error.to_string()))
                        }
                        Err(error) => return StoreOutcome::Invalid(error.to_string()),
                    };
                if merged.len() > max_bytes {
                    return StoreOutcome::TooLarge {
                        size: merged.len(),
                        limit: max_bytes,
                    };
                }
                match self.write(shard, key, Some(Bytes::from(merged)), pending) {
                    Some(stored) => StoreOutcome::Written {
                        stored,
                        created: false,
                    },
                    None => StoreOutcome::Failed(StoreError::Engine("shard vanished".into())),
                }
            }
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

//! Documents kept in shards: the engine behind a trait, the shard map, and the store threads that make writes durable.
//!
//! Every shard is one engine instance (by default one redb file under
//! `--data-dir/shards/`). Shard `s` belongs to io core `s % cores`; that
//! core's store thread ([`thread`]) is the only one that touches the
//! shard's engine, so the order in which it applies a shard's operations is
//! the order of truth: it checks preconditions, applies merge patches and
//! makes a whole batch durable with one fdatasync of its write-ahead log
//! ([`wal`], group commit across all of its shards) before it answers any
//! operation of the batch, reads included, so no client ever sees a write
//! that could still be lost.

pub mod engine;
pub mod open;
pub mod pg;
pub mod redb_engine;
pub mod seed;
pub mod shardmap;
pub mod thread;
pub mod wal;

use std::path::PathBuf;
use std::time::Duration;

pub use engine::{Engine, StoreError, Stored};
pub use shardmap::{ShardMap, ShardStrategy};

/// Most document bytes one shard returns for one scan: a scan of large
/// documents pages by bytes as well as by count.
pub const SCAN_PART_BYTES: usize = 4 << 20;
/// Most document bytes in one scan response.
pub const SCAN_RESPONSE_BYTES: usize = 8 << 20;

/// Statements of the TechEmpower tests with the benchmark's own schema
/// (`world`, `fortune`): PostgreSQL shards only; the embedded store keeps
/// those tables as documents.
#[derive(Debug)]
pub enum SqlOp {
    /// One `world` row by id.
    World { id: i32 },
    /// Every `fortune` row.
    Fortunes,
    /// `/updates`: each row read on its own, then one batch update; `(id, new number)`.
    UpdateWorlds { rows: Vec<(i32, i32)> },
}

/// How an io core reaches the engines of the shards it owns.
pub enum StoreLink {
    /// Its store thread, which answers through the core's mailbox.
    Thread(crossbeam_channel::Sender<thread::StoreRequest>),
    /// Its PostgreSQL connections, on the core's own ring.
    Postgres(Box<pg::PgShards>),
}

/// Which engine holds the shards.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Backend {
    /// redb files under `--data-dir`, one store thread per io core.
    #[default]
    Embedded,
    /// PostgreSQL databases, one per shard.
    Postgres(pg::PgOptions),
}

/// Where documents live and how the per-core cache partitions are sized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreOptions {
    pub backend: Backend,
    /// The shard files' directory; `None` for a temporary one removed at exit.
    pub dir: Option<PathBuf>,
    /// The shard map asked for on the command line; `None` keeps the stored one (or the default).
    pub shard_map: Option<ShardStrategy>,
    /// Bytes of cached documents per io core.
    pub cache_bytes: usize,
    pub cache_ttl: Option<Duration>,
    pub max_document_bytes: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            dir: None,
            shard_map: None,
            cache_bytes: 64 << 20,
            cache_ttl: None,
            max_document_bytes: 1 << 20,
        }
    }
}

/// The storage key of a document: collection, NUL, key. Neither part may
/// contain NUL, so keys of one collection are one contiguous range.
pub fn storage_key(collection: &str, key: &str, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(collection.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
}

/// The storage-key range `[from, to)` of a collection's keys after `after`.
pub fn scan_range(collection: &str, after: Option<&str>) -> (Vec<u8>, Vec<u8>) {
    let mut from = Vec::with_capacity(collection.len() + 2 + after.map_or(0, str::len));
    from.extend_from_slice(collection.as_bytes());
    from.push(0);
    if let Some(after) = after {
        from.extend_from_slice(after.as_bytes());
        // The smallest key greater than `after`.
        from.push(0);
    }
    let mut to = collection.as_bytes().to_vec();
    to.push(1);
    (from, to)
}

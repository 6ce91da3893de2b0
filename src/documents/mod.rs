//! The document plane: each core's way to every shard, the owner core's cache partition, and multi-part answers gathered for the core that asked.
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

mod error;
mod metrics;
mod plane;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::cache::CacheCounters;
use crate::http::Response;
use crate::json::FieldMask;
use crate::store::thread::{StoreCounters, StoreOp, StoreOutcome};
use crate::store::{ShardMap, StoreOptions, Stored};

pub use error::DocError;
pub use plane::Plane;

/// Where one part of a gathered answer goes: the origin core, its gather, the part's index.
#[derive(Debug, Clone, Copy)]
pub struct PartAddr {
    pub core: usize,
    pub gather: u64,
    pub part: u32,
}

/// One operation on one shard, sent from the origin to the owner.
#[derive(Debug)]
pub enum Op {
    /// A read; `cached` answers from (and fills) the owner's cache partition,
    /// otherwise the store is read (the TechEmpower `/db` rules forbid caching).
    Get {
        shard: u32,
        key: Vec<u8>,
        mask: Option<FieldMask>,
        cached: bool,
        /// The origin is the owner and has just missed the cache: do not look again.
        missed: bool,
    },
    /// A write or a scan, applied by the owner's store thread.
    Store { shard: u32, op: StoreOp },
}

impl Op {
    pub fn shard(&self) -> u32 {
        match self {
            Self::Get { shard, .. } | Self::Store { shard, .. } => *shard,
        }
    }
}

/// A part of an answer.
#[derive(Debug, Clone)]
pub enum Part {
    /// A read: the document (projected if a mask was asked) with its version.
    Doc(Option<Stored>),
    /// What the store thread made of a write or scan.
    Store(StoreOutcome),
}

/// Messages between the planes of two io cores.
#[derive(Debug)]
pub enum DataMsg {
    Op {
        to: PartAddr,
        op: Op,
    },
    Part {
        gather: u64,
        part: u32,
        result: Part,
    },
}

/// What to render once every part of an answer is in; chosen by the
/// handler that started the operations, and run on its core. The document
/// routes' plans live with the document routes (`api::documents`), the
/// TechEmpower ones with those (`api::techempower`); an application's
/// handlers bring their own.
pub trait Render: Send + std::fmt::Debug + 'static {
    /// Writes the response from the parts, in the order the operations were given.
    fn render(
        self: Box<Self>,
        parts: Vec<Part>,
        response: &mut Response<'_>,
        scratch: &mut Vec<u8>,
    );
}

/// A document's collection and key, for the 404 that names them.
#[derive(Debug, Clone, Default)]
pub struct DocName {
    collection: Box<str>,
    key: Box<str>,
}

impl DocName {
    pub fn new(collection: &str, key: &str) -> Self {
        Self {
            collection: collection.into(),
            key: key.into(),
        }
    }

    pub fn not_found(&self) -> DocError {
        DocError::DocumentNotFound {
            collection: self.collection.to_string(),
            key: self.key.to_string(),
        }
    }
}

/// Work a handler leaves for the plane: the plan and its operations.
#[derive(Debug)]
pub struct DataRequest {
    pub plan: Box<dyn Render>,
    pub ops: Vec<Op>,
}

/// Every part of an answer, in order, with the plan to render them by.
#[derive(Debug)]
pub struct Gathered {
    pub plan: Box<dyn Render>,
    pub parts: Vec<Part>,
}

impl Gathered {
    pub fn render(self, response: &mut Response<'_>, scratch: &mut Vec<u8>) {
        self.plan.render(self.parts, response, scratch)
    }
}

/// Counters of the plane for `/metrics`, written by its core only.
#[derive(Debug, Default)]
pub struct PlaneCounters {
    /// Operations this core sent to another core.
    pub forwarded: AtomicU64,
    /// Cache misses that joined a read already in flight (single flight).
    pub coalesced: AtomicU64,
    /// Operations sent to the store thread.
    pub store_ops: AtomicU64,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.store(counter.load(Relaxed) + 1, Relaxed);
}

/// What every core's plane shares: the shard map and the limits.
pub struct DataShared {
    pub map: ShardMap,
    pub options: StoreOptions,
    pub cache_counters: Vec<Arc<CacheCounters>>,
    pub store_counters: Vec<Arc<StoreCounters>>,
    pub plane_counters: Vec<Arc<PlaneCounters>>,
    /// By core, with PostgreSQL shards (empty otherwise): their connections' counters.
    pub pg_counters: Vec<Arc<crate::store::pg::shard::PgCounters>>,
}

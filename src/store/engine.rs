//! The shard engine trait: what a storage engine must do for one shard.

use bytes::Bytes;
use thiserror::Error;

/// A document as stored: its version and its compact JSON.
///
/// Versions grow with every write in a shard and are never reused, so a
/// document deleted and created again never repeats an ETag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub version: u64,
    pub doc: Bytes,
}

impl Stored {
    /// The stored form: the version (8 bytes, little-endian), then the document.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.doc);
    }

    pub fn decode(raw: &[u8]) -> Result<Self, StoreError> {
        if raw.len() < 8 {
            return Err(StoreError::Corrupt(
                "a stored value is shorter than its version",
            ));
        }
        let (version, doc) = raw.split_at(8);
        Ok(Self {
            version: u64::from_le_bytes(version.try_into().expect("8 bytes")),
            doc: Bytes::copy_from_slice(doc),
        })
    }
}

/// A storage failure; nothing of the failed commit is acknowledged.
#[derive(Debug, Error, Clone)]
pub enum StoreError {
    #[error("storage engine error: {0}")]
    Engine(String),
    /// The shard cannot be reached now (its server is down or restarting); try again.
    #[error("{0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(&'static str),
}

/// One change of a commit: the new value, or `None` to delete.
pub type Change = (Vec<u8>, Option<Stored>);

/// One shard's storage. Only its store thread calls it.
pub trait Engine: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError>;
    /// Keys in `[from, to)` in byte order: at most `limit` of them, and
    /// none after the one that brings the documents to `max_bytes`.
    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, StoreError>;
    /// Applies every change in one commit, recording `last_version` as the
    /// highest version issued. With `durable` it returns only once this and
    /// every earlier commit is on disk; without, the caller keeps the changes
    /// durable elsewhere (the store thread's write-ahead log) until a durable
    /// commit (a checkpoint, which may carry no changes) follows.
    fn commit(
        &mut self,
        changes: &[Change],
        last_version: u64,
        durable: bool,
    ) -> Result<(), StoreError>;
    /// The highest version ever committed (0 for a new shard).
    fn last_version(&self) -> Result<u64, StoreError>;
    /// Opens the shard's storage again after a failed commit, as a restart
    /// would (redb refuses every operation after an I/O error until then).
    fn reopen(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

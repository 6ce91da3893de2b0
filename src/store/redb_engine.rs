//! The embedded default engine: one redb file per shard.
//!
//! redb commits copy-on-write B-tree pages and flips a checksummed commit
//! slot, with one fsync per commit at `Durability::Immediate`; a crash leaves
//! the last committed state.
//!
//! Why redb, measured against fjall (`benches/results/engine-choice.md`):
//! fjall made 1.5x (16 writes per commit) to 4x (128) more durable writes per
//! second, but redb read 3x faster and scanned 3-10x faster, runs no
//! background threads (fjall starts a flush/compaction pool per database,
//! which would compete with the pinned io cores), and adds one dependency
//! instead of 42. Most reads are answered by the cache partitions, so writes
//! matter more than reads here: for a write-heavy load fjall is the next
//! engine to put behind [`Engine`].

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::engine::{Change, Engine, StoreError, Stored};

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VERSION: &str = "last_version";

pub struct RedbEngine {
    db: Database,
    path: std::path::PathBuf,
    scratch: Vec<u8>,
}

fn engine_error(error: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(error.to_string())
}

impl RedbEngine {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path)
            .map_err(|e| StoreError::Engine(format!("cannot open {}: {e}", path.display())))?;
        // Create the tables once so readers never meet a missing table.
        let txn = db.begin_write().map_err(engine_error)?;
        {
            txn.open_table(DOCS).map_err(engine_error)?;
            txn.open_table(META).map_err(engine_error)?;
        }
        txn.commit().map_err(engine_error)?;
        Ok(Self {
            db,
            path: path.to_owned(),
            scratch: Vec::with_capacity(1024),
        })
    }
}

impl Engine for RedbEngine {
    fn reopen(&mut self) -> Result<(), StoreError> {
        // redb holds the file locked while open: the old handle goes first,
        // for a moment in its place an in-memory database that is never used.
        let standin = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(engine_error)?;
        drop(std::mem::replace(&mut self.db, standin));
        let reopened = Self::open(&self.path)?;
        self.db = reopened.db;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let txn = self.db.begin_read().map_err(engine_error)?;
        let table = txn.open_table(DOCS).map_err(engine_error)?;
        match table.get(key).map_err(engine_error)? {
            Some(raw) => Ok(Some(Stored::decode(raw.value())?)),
            None => Ok(None),
        }
    }

    fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(Vec<u8>, Stored)>, StoreError> {
        let txn = self.db.begin_read().map_err(engine_error)?;
        let table = txn.open_table(DOCS).map_err(engine_error)?;
        let mut items = Vec::new();
        let mut bytes = 0;
        for entry in table.range(from..to).map_err(engine_error)?.take(limit) {
            let (key, value) = entry.map_err(engine_error)?;
            let stored = Stored::decode(value.value())?;
            bytes += stored.doc.len();
            items.push((key.value().to_vec(), stored));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(items)
    }

    fn commit(
        &mut self,
        changes: &[Change],
        last_version: u64,
        durable: bool,
    ) -> Result<(), StoreError> {
        let mut txn = self.db.begin_write().map_err(engine_error)?;
        let durability = if durable {
            redb::Durability::Immediate
        } else {
            // Persisted by the next Immediate commit (the checkpoint); the
            // write-ahead log holds these changes until then.
            redb::Durability::None
        };
        txn.set_durability(durability).map_err(engine_error)?;
        {
            let mut docs = txn.open_table(DOCS).map_err(engine_error)?;
            for (key, value) in changes {
                match value {
                    Some(stored) => {
                        stored.encode(&mut self.scratch);
                        docs.insert(key.as_slice(), self.scratch.as_slice())
                            .map_err(engine_error)?;
                    }
                    None => {
                        docs.remove(key.as_slice()).map_err(engine_error)?;
                    }
                }
            }
            let mut meta = txn.open_table(META).map_err(engine_error)?;
            meta.insert(LAST_VERSION, last_version)
                .map_err(engine_error)?;
        }
        txn.commit().map_err(engine_error)
    }

    fn last_version(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(engine_error)?;
        let meta = txn.open_table(META).map_err(engine_error)?;
        Ok(meta
            .get(LAST_VERSION)
            .map_err(engine_error)?
            .map_or(0, |v| v.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_shard_keeps_what_it_had_and_takes_more() {
        let dir = std::env::temp_dir().join(format!("percore-redb-reopen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut engine = RedbEngine::open(&dir.join("shard.redb")).unwrap();
        let stored = |v: u64| Stored {
            version: v,
            doc: bytes::Bytes::from(format!("{{\"v\":{v}}}")),
        };
        engine
            .commit(&[(b"a".to_vec(), Some(stored(1)))], 1, true)
            .unwrap();
        engine
            .commit(&[(b"b".to_vec(), Some(stored(2)))], 2, false)
            .unwrap();
        engine.reopen().unwrap();
        assert_eq!(engine.get(b"a").unwrap(), Some(stored(1)));
        engine
            .commit(&[(b"c".to_vec(), Some(stored(3)))], 3, true)
            .unwrap();
        assert_eq!(engine.get(b"c").unwrap(), Some(stored(3)));
        assert_eq!(engine.last_version().unwrap(), 3);
        let _ = std::fs::remove_dir_all(dir);
    }
}

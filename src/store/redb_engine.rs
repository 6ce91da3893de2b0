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
//!
//! After an I/O error redb refuses every operation until the database is
//! opened again: [`Engine::reopen`] closes and opens the file, and while it
//! cannot be opened (the disk still full or failing; a corrupt file never)
//! the shard refuses everything, reads too, and its store thread keeps its
//! logs and tries again. That is the case a restart would not fix either.

use std::path::Path;

use redb::{Database, ReadableDatabase, TableDefinition};

use super::engine::{Change, Engine, StoreError, Stored};

const DOCS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("docs");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LAST_VERSION: &str = "last_version";

pub struct RedbEngine {
    /// `None` between closing the file after an I/O error and opening it
    /// again ([`Engine::reopen`]): every operation is refused meanwhile.
    db: Option<Database>,
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
            db: Some(db),
            path: path.to_owned(),
            scratch: Vec::with_capacity(1024),
        })
    }

    fn db(&self) -> Result<&Database, StoreError> {
        self.db.as_ref().ok_or_else(|| {
            StoreError::Engine(format!(
                "{} is closed after an I/O error and could not be opened again yet",
                self.path.display()
            ))
        })
    }
}

impl Engine for RedbEngine {
    /// redb refuses every operation after an I/O error until the database
    /// is opened again. The old handle goes first (redb locks the file);
    /// if the file cannot be opened now (the disk still full or failing),
    /// the shard stays closed, refusing everything, and the store thread
    /// tries again later.
    fn reopen(&mut self) -> Result<(), StoreError> {
        drop(self.db.take());
        let reopened = Self::open(&self.path)?;
        self.db = reopened.db;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Stored>, StoreError> {
        let txn = self.db()?.begin_read().map_err(engine_error)?;
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
        let txn = self.db()?.begin_read().map_err(engine_error)?;
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
        let mut txn = self.db()?.begin_write().map_err(engine_error)?;
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
        let txn = self.db()?.begin_read().map_err(engine_error)?;
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

    #[test]
    fn a_shard_that_cannot_be_reopened_refuses_everything_until_it_can() {
        let dir = std::env::temp_dir().join(format!("percore-redb-closed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("shard.redb");
        let mut engine = RedbEngine::open(&path).unwrap();
        let stored = Stored {
            version: 1,
            doc: bytes::Bytes::from_static(b"{}"),
        };
        engine
            .commit(&[(b"a".to_vec(), Some(stored.clone()))], 1, true)
            .unwrap();
        // The file cannot be opened where it was: a stand-in for a disk that still fails.
        std::fs::rename(&path, dir.join("aside")).unwrap();
        std::fs::create_dir(&path).unwrap();
        assert!(engine.reopen().is_err());
        let refused = engine.get(b"a").unwrap_err().to_string();
        assert!(refused.contains("closed after an I/O error"), "{refused}");
        assert!(
            engine.commit(&[], 1, true).is_err(),
            "a closed shard takes nothing"
        );
        std::fs::remove_dir(&path).unwrap();
        std::fs::rename(dir.join("aside"), &path).unwrap();
        engine.reopen().unwrap();
        assert_eq!(engine.get(b"a").unwrap(), Some(stored));
        let _ = std::fs::remove_dir_all(dir);
    }
}

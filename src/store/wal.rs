//! The write-ahead log of one store thread: every write of a batch, across all of the core's shards, made durable with one fdatasync.
//!
//! Without it a batch that touches sixteen shards costs sixteen durable
//! engine commits; with it the batch costs one log append and one
//! fdatasync, and the engines take the writes without syncing. To
//! checkpoint, the store thread starts a new log and then commits each shard
//! written since the old one was started durably, one shard between two
//! batches (so no batch waits for all of them); then the old log goes. At
//! start-up every log left by any core is replayed into the shards before
//! anything else runs, so a write acknowledged before a crash is in its
//! shard again, whichever core owns that shard now.
//!
//! A record is `[len: u32 LE][crc32: u32 LE][payload]`; a payload is
//! `shard u32 | last_version u64 | key_len u32 | key | 0` for a delete or
//! `... | 1 | version u64 | document` for a put. Replay stops at the first
//! torn or corrupt record: nothing at or after it was acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::engine::Stored;
use crate::durable::Appender;

/// One write as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    pub shard: u32,
    /// The shard's highest version issued when this write was made.
    pub last_version: u64,
    pub key: Vec<u8>,
    /// The new document, or `None` for a delete.
    pub value: Option<Stored>,
}

/// One store thread's open log.
pub struct Wal {
    /// The file, and the bytes known to be on disk (a failed commit is cut back to there).
    file: Appender,
    path: PathBuf,
    pending: Vec<u8>,
}

impl Wal {
    /// Creates an empty log for io core `core` in `dir`; `generation` grows
    /// with every rotation, and replay reads a core's logs in that order.
    pub fn create(dir: &Path, core: usize, generation: u64) -> io::Result<Self> {
        if !dir.exists() {
            fs::create_dir_all(dir)?;
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
        }
        let path = dir.join(format!("core-{core}-{generation:020}.wal"));
        // Appending: after `reset` cuts the file to nothing, the next record
        // lands at offset 0, not where the cursor was.
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        file.set_len(0)?;
        file.sync_all()?;
        File::open(dir)?.sync_all()?;
        Ok(Self {
            file: Appender::new(file, 0),
            path,
            pending: Vec::with_capacity(64 * 1024),
        })
    }

    /// Stages one write; nothing is durable until [`Self::commit`].
    pub fn stage(&mut self, shard: u32, last_version: u64, key: &[u8], value: Option<&Stored>) {
        let start = self.pending.len();
        self.pending.extend_from_slice(&[0; 8]);
        self.pending.extend_from_slice(&shard.to_le_bytes());
        self.pending.extend_from_slice(&last_version.to_le_bytes());
        self.pending
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.pending.extend_from_slice(key);
        match value {
            None => self.pending.push(0),
            Some(stored) => {
                self.pending.push(1);
                self.pending
                    .extend_from_slice(&stored.version.to_le_bytes());
                self.pending.extend_from_slice(&stored.doc);
            }
        }
        let payload = &self.pending[start + 8..];
        let len = (payload.len() as u32).to_le_bytes();
        let crc = crc32fast::hash(payload).to_le_bytes();
        self.pending[start..start + 4].copy_from_slice(&len);
        self.pending[start + 4..start + 8].copy_from_slice(&crc);
    }

    /// Writes every staged record and waits until the disk has them. On
    /// failure the file is cut back to its durable length, so no later
    /// record lands after a torn one.
    pub fn commit(&mut self) -> io::Result<()> {
        self.file.append_synced(&mut self.pending)
    }

    /// Deletes the log once every write in it is durable in its shard.
    pub fn remove(self) -> io::Result<()> {
        fs::remove_file(&self.path)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        File::open(dir)?.sync_all()
    }

    /// Bytes of the log on disk.
    pub fn len(&self) -> u64 {
        self.file.durable_len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.durable_len() == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every record of every log in `dir`, each core's logs oldest first.
pub fn read_all(dir: &Path) -> io::Result<Vec<WalRecord>> {
    let mut records = Vec::new();
    for path in logs(dir)? {
        decode_all(&fs::read(&path)?, &mut records);
    }
    Ok(records)
}

/// Removes every log in `dir` (after replay made their writes durable in
/// the shards), oldest first, each removal durable before the next: a crash
/// midway never leaves an older log without the newer ones, whose replay
/// alone would bring back overwritten values.
pub fn remove_all(dir: &Path) -> io::Result<()> {
    for path in logs(dir)? {
        fs::remove_file(&path)?;
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The logs in `dir`, oldest first within each core.
fn logs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    // Generations are zero-padded: name order is age order.
    paths.sort();
    Ok(paths)
}

fn decode_all(bytes: &[u8], records: &mut Vec<WalRecord>) {
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            return;
        };
        if crc32fast::hash(payload) != crc {
            return;
        }
        match decode(payload) {
            Some(record) => records.push(record),
            None => return,
        }
        at += 8 + len;
    }
}

fn decode(payload: &[u8]) -> Option<WalRecord> {
    let shard = u32::from_le_bytes(payload.get(0..4)?.try_into().ok()?);
    let last_version = u64::from_le_bytes(payload.get(4..12)?.try_into().ok()?);
    let key_len = u32::from_le_bytes(payload.get(12..16)?.try_into().ok()?) as usize;
    let key = payload.get(16..16 + key_len)?.to_vec();
    let rest = payload.get(16 + key_len..)?;
    let value = match rest.first()? {
        0 => None,
        1 => Some(Stored {
            version: u64::from_le_bytes(rest.get(1..9)?.try_into().ok()?),
            doc: Bytes::copy_from_slice(rest.get(9..)?),
        }),
        _ => return None,
    };
    Some(WalRecord {
        shard,
        last_version,
        key,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn records_come_back_in_order_and_a_torn_tail_is_ignored() {
        let dir = std::env::temp_dir().join(format!("percore-wal-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let mut wal = Wal::create(&dir, 3, 1).unwrap();
        let doc = Stored {
            version: 7,
            doc: Bytes::from_static(br#"{"a":1}"#),
        };
        wal.stage(2, 7, b"c\0k", Some(&doc));
        wal.stage(2, 7, b"c\0gone", None);
        wal.commit().unwrap();
        let mut file = OpenOptions::new().append(true).open(wal.path()).unwrap();
        file.write_all(&[40, 0, 0, 0, 1, 2, 3]).unwrap();
        let records = read_all(&dir).unwrap();
        assert_eq!(
            records,
            vec![
                WalRecord {
                    shard: 2,
                    last_version: 7,
                    key: b"c\0k".to_vec(),
                    value: Some(doc),
                },
                WalRecord {
                    shard: 2,
                    last_version: 7,
                    key: b"c\0gone".to_vec(),
                    value: None,
                },
            ]
        );
        // A rotation: the newer log's records come after the older one's,
        // and once the old log is removed only the new one's are left.
        let mut next = Wal::create(&dir, 3, 10).unwrap();
        next.stage(1, 9, b"c\0again", None);
        next.commit().unwrap();
        let records = read_all(&dir).unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[2].key, b"c\0again");
        wal.remove().unwrap();
        assert_eq!(read_all(&dir).unwrap().len(), 1);
        remove_all(&dir).unwrap();
        assert!(fs::read_dir(&dir).unwrap().next().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }
}

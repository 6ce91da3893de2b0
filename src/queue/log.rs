//! The durable job log: an append-only file of checksummed records, replayed at start-up.
//!
//! Each record is `[len: u32 LE][crc32: u32 LE][JSON]`. The manager thread
//! appends a batch and calls `fdatasync` once for the batch (group commit)
//! before any job in it is acknowledged. At start-up the log is replayed; a
//! torn record at the tail (the crash came mid-write, so nothing in it was
//! acknowledged) is cut off.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::durable::Appender;
use serde_json::Value;

/// One change to a job, as written to the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Record {
    Enqueued {
        id: u64,
        queue: String,
        payload: Value,
        idempotency_key: Option<String>,
        run_at_ms: u64,
        max_attempts: u32,
        created_ms: u64,
    },
    Started {
        id: u64,
        attempt: u32,
    },
    Succeeded {
        id: u64,
        result: Value,
        /// When it finished (Unix ms), for retention; 0 in logs written before it was kept.
        #[serde(default)]
        at_ms: u64,
    },
    Failed {
        id: u64,
        attempt: u32,
        error: String,
        retry_at_ms: u64,
    },
    Dead {
        id: u64,
        attempt: u32,
        error: String,
        #[serde(default)]
        at_ms: u64,
    },
    Redriven {
        id: u64,
    },
    /// Written by compaction: the next job id, so trimmed ids are never reused.
    NextId {
        id: u64,
    },
}

/// The open log file.
pub struct JobLog {
    /// The file, and the bytes known to be on disk (a failed commit is cut back to there).
    file: Appender,
    path: PathBuf,
    pending: Vec<u8>,
}

impl JobLog {
    /// Opens (creating) the log in `dir` and returns it with every record it holds.
    pub fn open(dir: &Path) -> io::Result<(Self, Vec<Record>)> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("jobs.log");
        let created = !path.exists();
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let (records, good) = decode_all(&bytes);
        if good < bytes.len() {
            // A torn tail: cut it so new records follow the last whole one.
            file.set_len(good as u64)?;
            file.sync_data()?;
        }
        if created {
            // The new file's name must be durable too, or a power cut could
            // take the log, and every job acknowledged in it, away.
            File::open(dir)?.sync_all()?;
        }
        Ok((
            Self {
                file: Appender::new(file, good as u64),
                path,
                pending: Vec::with_capacity(64 * 1024),
            },
            records,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stages a record; nothing is durable until [`Self::commit`].
    pub fn stage(&mut self, record: &Record) {
        let json = serde_json::to_vec(record).expect("records serialize");
        self.pending
            .extend_from_slice(&(json.len() as u32).to_le_bytes());
        self.pending
            .extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        self.pending.extend_from_slice(&json);
    }

    pub fn has_staged(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes of the log on disk.
    pub fn len(&self) -> u64 {
        self.file.durable_len()
    }

    pub fn is_empty(&self) -> bool {
        self.file.durable_len() == 0
    }

    /// Replaces the whole log with `records` (compaction): written to a
    /// temporary file, synced, renamed over the log, and the directory
    /// synced, so a crash leaves either the old log or the new one.
    pub fn rewrite(&mut self, records: &[Record]) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_owned();
        let temporary = dir.join("jobs.log.compacting");
        // Records staged for the live log stay staged for it.
        let staged = std::mem::take(&mut self.pending);
        for record in records {
            self.stage(record);
        }
        let bytes = std::mem::replace(&mut self.pending, staged);
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &self.path)?;
        File::open(&dir)?.sync_all()?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(&self.path)?;
        self.file = Appender::new(file, bytes.len() as u64);
        Ok(())
    }

    /// Writes every staged record and waits until the disk has them.
    ///
    /// On failure the staged records are dropped and the file is cut back
    /// to its last durable length, so a later commit never lands after a
    /// torn record (which replay would stop at, losing what follows).
    pub fn commit(&mut self) -> io::Result<()> {
        self.file.append_synced(&mut self.pending)
    }
}

/// Decodes whole records; returns them and the length of the good prefix.
fn decode_all(bytes: &[u8]) -> (Vec<Record>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while bytes.len() - at >= 8 {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap());
        let Some(json) = bytes.get(at + 8..at + 8 + len) else {
            break;
        };
        if crc32fast::hash(json) != crc {
            break;
        }
        let Ok(record) = serde_json::from_slice(json) else {
            break;
        };
        records.push(record);
        at += 8 + len;
    }
    (records, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_a_torn_tail_is_cut() {
        let dir = std::env::temp_dir().join(format!("percore-log-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (mut log, records) = JobLog::open(&dir).unwrap();
        assert!(records.is_empty());
        let first = Record::Started { id: 1, attempt: 1 };
        let second = Record::Succeeded {
            at_ms: 5,
            id: 1,
            result: serde_json::json!({"ok": true}),
        };
        log.stage(&first);
        log.stage(&second);
        log.commit().unwrap();
        drop(log);
        // A crash mid-write leaves half a record.
        let mut file = OpenOptions::new()
            .append(true)
            .open(dir.join("jobs.log"))
            .unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2]).unwrap();
        drop(file);
        let (mut log, records) = JobLog::open(&dir).unwrap();
        assert_eq!(records, vec![first.clone(), second.clone()]);
        log.stage(&Record::Redriven { id: 1 });
        log.commit().unwrap();
        let (_, records) = JobLog::open(&dir).unwrap();
        assert_eq!(
            records.len(),
            3,
            "the record after the cut tail is readable"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Appending to a log file durably: write, fdatasync, and on failure cut the file back, so the log takes appends again once the disk does.

use std::fs::File;
use std::io::{self, Write};

/// A log file opened for appending, with the length known to be on disk.
///
/// A failed append (disk full, an I/O error) is cut back to that length,
/// so no later append lands after a torn record (which replay would stop
/// at, losing what follows). When even the cut fails, the tail is marked
/// torn and every later append first tries the cut again: the log heals
/// itself once the disk answers, with no restart.
#[derive(Debug)]
pub struct Appender {
    file: File,
    durable_len: u64,
    /// Bytes past `durable_len` may be on disk: cut them before appending.
    torn_tail: bool,
}

impl Appender {
    /// `durable_len` is the length of the file's good prefix (the file may be longer).
    pub fn new(file: File, durable_len: u64) -> Self {
        Self {
            file,
            durable_len,
            torn_tail: false,
        }
    }

    /// Bytes known to be on disk.
    pub fn durable_len(&self) -> u64 {
        self.durable_len
    }

    /// Appends `pending` and waits until the disk has it; `pending` is
    /// emptied either way (what failed was never acknowledged).
    pub fn append_synced(&mut self, pending: &mut Vec<u8>) -> io::Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let staged = pending.len() as u64;
        let written = self.cut_torn_tail().and_then(|()| {
            self.file
                .write_all(pending)
                .and_then(|()| self.file.sync_data())
        });
        pending.clear();
        match written {
            Ok(()) => {
                self.durable_len += staged;
                Ok(())
            }
            Err(error) => {
                self.torn_tail = true;
                let _ = self.cut_torn_tail();
                Err(error)
            }
        }
    }

    fn cut_torn_tail(&mut self) -> io::Result<()> {
        if self.torn_tail {
            self.file.set_len(self.durable_len)?;
            self.torn_tail = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    #[test]
    fn a_failed_append_leaves_the_log_as_it_was() {
        let dir = std::env::temp_dir().join(format!("percore-durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        let mut log = Appender::new(file, 0);
        log.append_synced(&mut b"first".to_vec()).unwrap();
        // A read-only descriptor refuses the write: the stand-in for a full disk.
        let read_only = File::open(&path).unwrap();
        let mut failing = Appender::new(read_only, 5);
        let mut pending = b"second".to_vec();
        assert!(failing.append_synced(&mut pending).is_err());
        assert!(pending.is_empty());
        assert_eq!(failing.durable_len(), 5);
        log.append_synced(&mut b"third".to_vec()).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"firstthird");
        assert_eq!(log.durable_len(), 10);
        let _ = std::fs::remove_dir_all(dir);
    }
}

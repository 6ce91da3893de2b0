//! Appending to a log file durably: write, fdatasync, and on failure cut the file back, so the log takes appends again once the disk does.

use std::fs::File;
use std::io::{self, Write};

/// What an [`Appender`] needs of its file. [`File`] is the one percore
/// uses; the seam lets a test make any step fail the way a failing disk
/// does (EIO after part of a write, on fdatasync, on the cut).
pub trait LogFile {
    /// Writes all of `bytes` at the end of the file (a failure may leave part of them there).
    fn append(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Waits until the disk holds what was written (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Cuts the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
}

impl LogFile for File {
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }
}

/// A log file opened for appending, with the length known to be on disk.
///
/// An append is acknowledged (`Ok`) only once its fdatasync succeeded. A
/// failed append (disk full, an I/O error, on the write or on the sync) is
/// cut back to the durable length, so no later append lands after a torn
/// record (which replay would stop at, losing what follows). When even the
/// cut fails, the tail is marked torn and every later append first tries
/// the cut again, and writes nothing until it succeeds: the log heals
/// itself once the disk answers, with no restart.
#[derive(Debug)]
pub struct Appender<F: LogFile = File> {
    file: F,
    durable_len: u64,
    /// Bytes past `durable_len` may be on disk: cut them before appending.
    torn_tail: bool,
}

impl<F: LogFile> Appender<F> {
    /// `durable_len` is the length of the file's good prefix (the file may be longer).
    pub fn new(file: F, durable_len: u64) -> Self {
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
                .append(pending)
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

    /// A file in memory whose next write, sync or cut fails with EIO,
    /// as a failing disk's do; a write that fails may leave part of its
    /// bytes behind (a torn record).
    #[derive(Default)]
    struct FailingDisk {
        bytes: Vec<u8>,
        /// Bytes a fdatasync made durable.
        synced: usize,
        /// The next write fails after writing this many of its bytes.
        write_fails_after: Option<usize>,
        sync_fails: bool,
        cut_fails: bool,
    }

    fn eio() -> io::Error {
        io::Error::from_raw_os_error(libc::EIO)
    }

    impl LogFile for FailingDisk {
        fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
            if let Some(part) = self.write_fails_after.take() {
                self.bytes
                    .extend_from_slice(&bytes[..part.min(bytes.len())]);
                return Err(eio());
            }
            self.bytes.extend_from_slice(bytes);
            Ok(())
        }
        fn sync_data(&mut self) -> io::Result<()> {
            if self.sync_fails {
                return Err(eio());
            }
            self.synced = self.bytes.len();
            Ok(())
        }
        fn set_len(&mut self, len: u64) -> io::Result<()> {
            if self.cut_fails {
                return Err(eio());
            }
            self.bytes.truncate(len as usize);
            self.synced = self.synced.min(len as usize);
            Ok(())
        }
    }

    fn append(log: &mut Appender<FailingDisk>, bytes: &[u8]) -> io::Result<()> {
        let mut pending = bytes.to_vec();
        let result = log.append_synced(&mut pending);
        assert!(pending.is_empty(), "what was staged is dropped either way");
        result
    }

    #[test]
    fn an_io_error_mid_write_is_cut_back_and_the_next_append_follows_the_good_prefix() {
        let mut log = Appender::new(FailingDisk::default(), 0);
        append(&mut log, b"first").unwrap();
        log.file.write_fails_after = Some(3);
        let error = append(&mut log, b"second").unwrap_err();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EIO),
            "the disk's error is passed on"
        );
        assert_eq!(log.durable_len(), 5);
        assert_eq!(log.file.bytes, b"first", "the torn bytes were cut");
        append(&mut log, b"third").unwrap();
        assert_eq!(log.file.bytes, b"firstthird");
        assert_eq!(log.file.synced, 10);
        assert_eq!(log.durable_len(), 10);
    }

    #[test]
    fn a_failed_fdatasync_is_not_acknowledged_and_its_bytes_are_cut() {
        let mut log = Appender::new(FailingDisk::default(), 0);
        append(&mut log, b"first").unwrap();
        log.file.sync_fails = true;
        // The whole record reached the page cache, but the disk never confirmed it.
        assert!(append(&mut log, b"second").is_err());
        assert_eq!(log.durable_len(), 5);
        assert_eq!(log.file.bytes, b"first");
        log.file.sync_fails = false;
        append(&mut log, b"third").unwrap();
        assert_eq!(log.file.bytes, b"firstthird");
    }

    #[test]
    fn a_tail_that_cannot_be_cut_blocks_appends_until_it_can() {
        let mut log = Appender::new(FailingDisk::default(), 0);
        append(&mut log, b"first").unwrap();
        log.file.write_fails_after = Some(4);
        log.file.cut_fails = true;
        assert!(append(&mut log, b"second").is_err());
        assert_eq!(
            log.file.bytes, b"firstseco",
            "the cut failed: the torn record stays"
        );
        // While the cut still fails, nothing may land after the torn record.
        assert!(append(&mut log, b"third").is_err());
        assert_eq!(log.file.bytes, b"firstseco");
        assert_eq!(log.durable_len(), 5);
        // The disk answers again: the next append cuts first, then lands.
        log.file.cut_fails = false;
        append(&mut log, b"fourth").unwrap();
        assert_eq!(log.file.bytes, b"firstfourth");
        assert_eq!(log.file.synced, 11);
        assert_eq!(log.durable_len(), 11);
    }
}

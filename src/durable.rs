//! Appending to a log file durably: write, fdatasync, and on failure cut the file back.

use std::fs::File;
use std::io::{self, Write};

/// Appends `pending` to `file` (opened for appending) and waits until the
/// disk has it; `pending` is emptied either way. On failure the file is cut
/// back to `durable_len`, so no later append lands after a torn record
/// (which replay would stop at, losing what follows).
pub fn append_synced(
    file: &mut File,
    pending: &mut Vec<u8>,
    durable_len: &mut u64,
) -> io::Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let written = file.write_all(pending).and_then(|()| file.sync_data());
    let staged = pending.len() as u64;
    pending.clear();
    match written {
        Ok(()) => {
            *durable_len += staged;
            Ok(())
        }
        Err(error) => {
            let _ = file.set_len(*durable_len);
            Err(error)
        }
    }
}

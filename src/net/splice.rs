//! Large file bodies sent after their head by splice: file → pipe → socket, a chunk at a time, without copying through user space.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{opcode, types};

use super::conn::{live_conn, Phase, Write};
use super::event_loop::{IoCore, KIND_SPLICE_IN, KIND_SPLICE_OUT, KIND_SPLICE_POLL};
use super::service::Service;
use crate::runtime::uring::user_data;

/// Bytes moved per splice: the default pipe capacity.
const SPLICE_CHUNK: u64 = 64 * 1024;

impl<S: Service> IoCore<S> {
    /// Moves the next piece of the file body: file → pipe, or pipe → socket.
    pub(super) fn splice_next(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.pipe.is_none() {
            match new_pipe() {
                Ok(pipe) => conn.pipe = Some(pipe),
                Err(_) => return self.close_now(slot),
            }
        }
        let (Some(file), Some([pipe_read, pipe_write])) = (&conn.file, &conn.pipe) else {
            return;
        };
        let entry = if file.in_pipe > 0 {
            opcode::Splice::new(
                types::Fd(pipe_read.as_raw_fd()),
                -1,
                types::Fd(conn.fd),
                -1,
                file.in_pipe as u32,
            )
            .build()
            .user_data(user_data(KIND_SPLICE_OUT, conn.generation, slot))
        } else {
            let chunk = (file.body.len - file.sent).min(SPLICE_CHUNK);
            let offset = (file.body.offset + file.sent) as i64;
            opcode::Splice::new(
                types::Fd(file.body.file.as_raw_fd()),
                offset,
                types::Fd(pipe_write.as_raw_fd()),
                -1,
                chunk as u32,
            )
            .build()
            .user_data(user_data(KIND_SPLICE_IN, conn.generation, slot))
        };
        conn.write = Write::Splicing;
        self.push(&entry);
    }

    pub(super) fn on_splice(
        &mut self,
        kind: u64,
        slot: u32,
        generation: u32,
        result: i32,
        now: Instant,
    ) {
        let limits = self.options.limits;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        conn.write = Write::Idle;
        let Some(file) = conn.file.as_mut().filter(|_| conn.phase == Phase::Open) else {
            return self.finish_if_closed(slot);
        };
        if result == -libc::EAGAIN && kind == KIND_SPLICE_OUT {
            // The socket's send buffer is full (the client reads slowly):
            // wait until it can take more, then splice again.
            let poll = opcode::PollAdd::new(types::Fd(conn.fd), libc::POLLOUT as u32)
                .build()
                .user_data(user_data(KIND_SPLICE_POLL, conn.generation, slot));
            conn.write = Write::Splicing;
            self.push(&poll);
            return;
        }
        if kind == KIND_SPLICE_POLL {
            if result < 0 {
                return self.close_now(slot);
            }
            return self.splice_next(slot);
        }
        // An error, the peer gone, or the file shrank under us: the promised
        // length cannot be kept, so the connection must end.
        if result <= 0 {
            return self.close_now(slot);
        }
        conn.last_active = now;
        let moved = result as u64;
        if kind == KIND_SPLICE_IN {
            file.in_pipe = moved;
        } else {
            file.in_pipe -= moved;
            file.sent += moved;
            if file.sent == file.body.len && file.in_pipe == 0 {
                conn.file = None;
                // Pipelined requests that waited behind the file.
                conn.session
                    .resume(&mut conn.out, &mut self.service, &limits, now);
                return self.flush(slot, now);
            }
        }
        self.splice_next(slot);
    }
}

/// A pipe for splicing, both ends close-on-exec and non-blocking.
fn new_pipe() -> io::Result<[OwnedFd; 2]> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe { [OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] })
}

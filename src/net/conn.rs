//! One connection's io state on its core: which operations the kernel holds, and where the connection is in its life.
//!
//! Each concern is one enum, so states that cannot happen together cannot
//! be written down together: a connection is receiving or paused or not
//! reading; it is sending or splicing or neither; it is open, lingering or
//! closing.

use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use super::session::Session;
use crate::http::response::FileBody;

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    Open,
    /// Write side shut after the last response; reading until the peer closes.
    Lingering {
        until: Instant,
    },
    /// Waiting for the kernel to finish this connection's operations.
    Closing,
}

/// The connection's receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recv {
    /// No receive in the kernel and none wanted now (not yet armed, or the peer finished).
    Idle,
    /// A multishot receive is in the kernel.
    Armed,
    /// Still in the kernel, but cancelled: the client sends faster than it reads its answers.
    Pausing,
    /// Stopped for backpressure; re-armed once the unanswered bytes drain.
    Paused,
}

impl Recv {
    /// The kernel holds a receive of this connection.
    pub(super) fn in_kernel(self) -> bool {
        matches!(self, Self::Armed | Self::Pausing)
    }

    /// The kernel posted the receive's last completion.
    pub(super) fn ended(self) -> Self {
        match self {
            Self::Armed => Self::Idle,
            Self::Pausing => Self::Paused,
            other => other,
        }
    }
}

/// The write operation the kernel holds, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Write {
    Idle,
    /// `sending[sent..]` is in the kernel.
    Sending {
        sent: usize,
    },
    /// A splice of the file body, or a poll for room to splice more.
    Splicing,
}

/// Progress of one file body: file → pipe → socket, a chunk at a time.
pub(super) struct FileSend {
    pub(super) body: FileBody,
    /// Bytes that reached the socket.
    pub(super) sent: u64,
    /// Bytes in the pipe, not yet on the socket.
    pub(super) in_pipe: u64,
}

pub(super) struct Conn {
    pub(super) fd: RawFd,
    pub(super) generation: u32,
    pub(super) session: Session,
    /// Responses being written by the session.
    pub(super) out: Vec<u8>,
    /// Responses handed to the kernel; untouched while a send is in flight.
    pub(super) sending: Vec<u8>,
    pub(super) recv: Recv,
    pub(super) write: Write,
    pub(super) phase: Phase,
    pub(super) last_active: Instant,
    /// A file body being spliced to the socket.
    pub(super) file: Option<FileSend>,
    /// The pipe a file body passes through: [read end, write end], kept for the next file.
    pub(super) pipe: Option<[OwnedFd; 2]>,
}

impl Conn {
    pub(super) fn new(fd: RawFd, generation: u32, session: Session, now: Instant) -> Self {
        Self {
            fd,
            generation,
            session,
            out: Vec::new(),
            sending: Vec::new(),
            recv: Recv::Idle,
            write: Write::Idle,
            phase: Phase::Open,
            last_active: now,
            file: None,
            pipe: None,
        }
    }

    /// The kernel holds no operation of this connection: its descriptor may close.
    pub(super) fn quiet(&self) -> bool {
        !self.recv.in_kernel() && self.write == Write::Idle
    }
}

/// The connection in `slot`, if it is still the one of `generation`.
pub(super) fn live_conn(
    conns: &mut [Option<Conn>],
    slot: u32,
    generation: u32,
) -> Option<&mut Conn> {
    conns
        .get_mut(slot as usize)?
        .as_mut()
        .filter(|c| c.generation == generation)
}

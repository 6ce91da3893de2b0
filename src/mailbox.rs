//! Messages into an io core from other threads: a channel plus the core's eventfd that wakes its ring.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::docs::DataMsg;
use crate::queue::Completion;

/// Everything another thread may tell an io core.
#[derive(Debug)]
pub enum CoreMsg {
    /// The job manager's answer to a request of this core's.
    Job(Completion),
    /// Document traffic: an operation for a shard this core owns, a part of
    /// an answer this core is gathering, or its store thread's result.
    Data(DataMsg),
}

/// The sending side of one io core's inbox. Cheap to clone.
#[derive(Clone)]
pub struct Mailbox {
    tx: Sender<CoreMsg>,
    wake: Arc<OwnedFd>,
}

impl Mailbox {
    pub fn new(wake: OwnedFd) -> (Self, Receiver<CoreMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (
            Self {
                tx,
                wake: Arc::new(wake),
            },
            rx,
        )
    }

    /// A mailbox with its own eventfd and receiver, for a core that is not
    /// part of a running server (tests of the request path).
    pub fn detached() -> std::io::Result<(Self, Receiver<CoreMsg>)> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor this function owns.
        Ok(Self::new(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Queues a message and wakes the core.
    pub fn deliver(&self, msg: CoreMsg) {
        if self.post(msg).is_ok() {
            self.wake();
        }
    }

    /// Queues a message without waking the core; call [`Self::wake`] once
    /// after a batch. Gives the message back if the core is gone.
    // The message comes back only when the core has stopped: size does not matter.
    #[allow(clippy::result_large_err)]
    pub fn post(&self, msg: CoreMsg) -> Result<(), CoreMsg> {
        self.tx.send(msg).map_err(|error| error.0)
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a u64 to an eventfd this mailbox owns.
        unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

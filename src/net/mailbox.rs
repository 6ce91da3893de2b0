//! Messages into an io core from other threads: a channel of the service's own message type plus the core's eventfd that wakes its ring.
//!
//! The mailbox carries whatever [`super::Service::Msg`] the core's service
//! declares; it names no subsystem. A subsystem that answers a core (a store
//! thread, the job manager, another core) is handed an [`Outlet`] of its own
//! message type, which wraps into the service's message on the way in, so
//! the subsystem never sees the application's message type either.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

/// Wakes one io core: writes to the eventfd its ring is reading.
#[derive(Clone)]
pub struct Waker {
    fd: Arc<OwnedFd>,
}

impl Waker {
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd: Arc::new(fd) }
    }

    /// A new close-on-exec eventfd, for a core's ring to read.
    pub fn eventfd() -> std::io::Result<OwnedFd> {
        // SAFETY: eventfd returns a new descriptor or -1.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a u64 to an eventfd this waker owns.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

/// The sending side of one io core's inbox. Cheap to clone.
pub struct Mailbox<M> {
    tx: Sender<M>,
    waker: Waker,
}

impl<M> Clone for Mailbox<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

/// The core is gone (only while the server stops): the message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl<M: Send + 'static> Mailbox<M> {
    pub fn new(waker: Waker) -> (Self, Receiver<M>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        (Self { tx, waker }, rx)
    }

    /// A mailbox with its own eventfd and receiver, for a core that is not
    /// part of a running server (tests of the request path).
    pub fn detached() -> std::io::Result<(Self, Receiver<M>)> {
        Ok(Self::new(Waker::new(Waker::eventfd()?)))
    }

    /// Queues a message and wakes the core.
    pub fn deliver(&self, msg: M) {
        if self.post(msg).is_ok() {
            self.wake();
        }
    }

    /// Queues a message without waking the core; call [`Self::wake`] once after a batch.
    pub fn post(&self, msg: M) -> Result<(), Stopped> {
        self.tx.send(msg).map_err(|_| Stopped)
    }

    pub fn wake(&self) {
        self.waker.wake();
    }

    /// A sender of `T` into this core, wrapped into the core's message by `wrap`.
    pub fn outlet<T: Send + 'static>(&self, wrap: fn(T) -> M) -> Outlet<T> {
        let tx = self.tx.clone();
        Outlet {
            post: Arc::new(move |msg| tx.send(wrap(msg)).map_err(|_| Stopped)),
            waker: self.waker.clone(),
        }
    }
}

/// A typed way into one io core for one subsystem: it sends `T`, the core
/// receives its service's message. Cheap to clone.
pub struct Outlet<T> {
    post: Arc<dyn Fn(T) -> Result<(), Stopped> + Send + Sync>,
    waker: Waker,
}

impl<T> Clone for Outlet<T> {
    fn clone(&self) -> Self {
        Self {
            post: Arc::clone(&self.post),
            waker: self.waker.clone(),
        }
    }
}

impl<T> Outlet<T> {
    /// Queues a message and wakes the core.
    pub fn deliver(&self, msg: T) {
        if self.post(msg).is_ok() {
            self.wake();
        }
    }

    /// Queues a message without waking the core; call [`Self::wake`] once after a batch.
    pub fn post(&self, msg: T) -> Result<(), Stopped> {
        (self.post)(msg)
    }

    pub fn wake(&self) {
        self.waker.wake();
    }
}

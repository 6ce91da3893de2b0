//! The network path, generic over the service it drives: per-core listeners, the io_uring plumbing (ring, entries, outbound connections), the event loop, each connection's HTTP session, and typed mailboxes into a core.
//!
//! Nothing here imports the application (`app`, `api`, the document
//! plane, the job system): a reader can check with
//! `grep -n "crate::" src/net/*.rs`. The server's io cores and the load
//! generator's client cores submit through the same [`ring::Ring`] and
//! [`ops`]; [`outbound`] is a client connection on a core's own ring.

pub mod bufring;
mod conn;
pub mod event_loop;
pub mod lifecycle;
pub mod listener;
pub mod mailbox;
pub mod ops;
pub mod outbound;
pub mod ring;
pub mod service;
pub mod session;
mod splice;

pub use event_loop::{CoreOptions, IoCore};
pub use lifecycle::Lifecycle;
pub use mailbox::{Mailbox, Outlet, Stopped, Waker};
pub use service::{
    Awaiting, ConnEvent, ConnId, Handled, OutboundCompletion, OutboundIo, Service, OUTBOUND_KINDS,
};

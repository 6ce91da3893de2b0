//! The network path: per-core listeners, the io_uring plumbing (ring, entries, outbound connections), the event loop, and each connection's HTTP session.

pub mod bufring;
pub mod event_loop;
pub mod listener;
pub mod ops;
pub mod outbound;
pub mod ring;
pub mod session;

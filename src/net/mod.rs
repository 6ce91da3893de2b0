//! The network path: per-core listeners, the io_uring event loop, and each connection's HTTP session.

pub mod bufring;
pub mod event_loop;
pub mod listener;
pub mod session;

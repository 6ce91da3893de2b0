//! The contract between an io core and the service it drives: the core moves bytes, the service answers requests.
//!
//! An io core ([`super::event_loop::IoCore`]) is generic over one [`Service`]
//! and knows nothing else of the application: it accepts, receives, parses
//! HTTP/1.1 ([`super::session`]), hands each complete request to
//! [`Service::handle`], sends what the service wrote, and carries the
//! service's own message type ([`Service::Msg`]) from other threads into
//! [`Service::on_message`]. Dispatch is static: the core is monomorphized
//! for its service, so a request costs no virtual call.

use std::net::IpAddr;
use std::time::Instant;

use super::bufring::BufRing;
use super::outbound::Kinds;
use super::ring::Ring;
use crate::http::response::FileBody;
use crate::http::{Head, HttpError, Version};

/// One connection of one io core, as an address an answer can come back
/// to later. A connection that closed meanwhile (its slot reused under a
/// new generation) simply does not take the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnId {
    pub core: usize,
    pub slot: u32,
    pub generation: u32,
}

/// How to write an answer that comes later: what the request asked of the connection.
#[derive(Debug, Clone, Copy)]
pub struct Awaiting {
    pub keep_alive: bool,
    pub version: Version,
    pub head_only: bool,
    /// The service's own tag for the request (its route, for metrics).
    pub route: usize,
}

/// What [`Service::handle`] did with a request.
#[derive(Debug)]
pub enum Handled {
    /// The response is written; `file` is a body to send after it, by splice.
    Answered {
        keep_alive: bool,
        file: Option<FileBody>,
    },
    /// Nothing is written yet: the answer comes later through
    /// [`Service::next_answer`]; the connection's later requests wait for it.
    Deferred(Awaiting),
}

/// A connection's life, for the service's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEvent {
    Opened,
    Closed,
    /// Refused at accept: the core was at its connection limit, or draining.
    Refused,
    /// Closed for a header, body or idle timeout.
    TimedOut,
    /// Just opened, but its packets arrive on another CPU than this core's
    /// (`SO_INCOMING_CPU`): what CPU steering is there to avoid.
    OffCpu,
}

/// The `user_data` kinds an io core routes to [`Service::on_outbound`]:
/// a service makes its [`super::outbound::Outbound`] connections with these.
pub const OUTBOUND_KINDS: Kinds = Kinds {
    connect: 10,
    recv: 11,
    send: 12,
    cancel: 13,
};

/// The core's ring and receive buffers, lent to the service for its own
/// outbound connections (a database connection, say): they are driven on
/// the same ring as the core's clients, so one `io_uring_enter` serves both.
pub struct OutboundIo<'a> {
    pub ring: &'a mut Ring,
    pub buffers: &'a mut BufRing,
}

/// One completion of a service's outbound connection, as the kernel posted it.
#[derive(Debug, Clone, Copy)]
pub struct OutboundCompletion {
    /// One of [`OUTBOUND_KINDS`].
    pub kind: u64,
    pub generation: u32,
    pub slot: u32,
    pub result: i32,
    pub flags: u32,
}

/// What an io core drives. One value per core, built on that core's thread
/// and never shared: all of its state is the core's own.
pub trait Service: 'static {
    /// Messages other threads and cores send this core.
    type Msg: Send + 'static;
    /// A deferred answer, as it comes back to the connection that awaits it.
    type Answer;

    /// True once the node drains: answers say `Connection: close`.
    fn is_draining(&self) -> bool;

    /// Whether connections need their peer's address (one syscall per connection).
    fn wants_peer_addr(&self) -> bool {
        false
    }

    /// Called once a request's head is complete, before its body is read.
    /// `listener` is the index of the core's listener that accepted the
    /// connection (0 unless the core has more than one). Writes header
    /// lines every answer to this request must carry into `headers`.
    /// Returns false if the request is refused: the service has written
    /// the refusal into `out`, and must close the connection unless
    /// `bodiless` (no body to skip) and the head asked to keep it alive.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        head: &Head<'_, '_>,
        peer: Option<IpAddr>,
        listener: usize,
        now: Instant,
        bodiless: bool,
        headers: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> bool {
        let _ = (head, peer, listener, now, bodiless, out);
        headers.clear();
        true
    }

    /// Answers one complete request into `out`, with `headers` (from
    /// [`Self::admit`]) added to its response, or defers it.
    fn handle(
        &mut self,
        conn: ConnId,
        head: &Head<'_, '_>,
        body: &[u8],
        headers: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled;

    /// Writes a deferred answer for the request that awaited it.
    fn render_answer(
        &mut self,
        answer: Self::Answer,
        awaiting: &Awaiting,
        headers: &[u8],
        out: &mut Vec<u8>,
    );

    /// Answers a request that failed before it could be handled (the
    /// connection closes after it).
    fn reject(&mut self, error: &HttpError, out: &mut Vec<u8>);

    /// The whole response refusing a connection at accept, sent without a slot.
    fn refusal(&mut self, error: &HttpError) -> Vec<u8>;

    /// A message from another thread or core.
    fn on_message(&mut self, msg: Self::Msg, now: Instant);

    /// A deferred answer that is ready, for the connection it names.
    fn next_answer(&mut self) -> Option<(ConnId, Self::Answer)>;

    /// The end of one loop turn, before the core waits: send what was
    /// batched for other cores.
    fn end_turn(&mut self) {}

    /// Right after [`Self::end_turn`], with the ring: submit what the
    /// service's outbound connections have to send (everything gathered in
    /// the turn goes out in one write per connection), adopt new ones.
    fn drive_outbound(&mut self, io: &mut OutboundIo<'_>, now: Instant) {
        let _ = (io, now);
    }

    /// A completion of one of the service's outbound connections (a kind of
    /// [`OUTBOUND_KINDS`]).
    fn on_outbound(&mut self, io: &mut OutboundIo<'_>, done: OutboundCompletion, now: Instant) {
        let _ = (io, done, now);
    }

    /// Every completion of one wake-up has been handled (`now` is when it woke).
    fn end_batch(&mut self, now: Instant) {
        let _ = now;
    }

    /// Twice a second: refresh clocks, publish counters.
    fn on_tick(&mut self, now: Instant) {
        let _ = now;
    }

    fn on_connection(&mut self, event: ConnEvent) {
        let _ = event;
    }
}

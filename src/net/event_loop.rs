//! One io core's event loop on its own io_uring: multishot accept, multishot receive into provided buffers, one send per batch.
//!
//! The core is generic over the [`Service`] it drives and imports nothing
//! of the application: requests go to [`Service::handle`], messages from
//! other threads to [`Service::on_message`], deferred answers come back
//! through [`Service::next_answer`] addressed by [`ConnId`].
//!
//! Every operation's completion carries `user_data` = kind | generation |
//! slot, so a completion for a connection slot that was since reused is
//! recognised and dropped. A connection's slot is freed only when none of its
//! operations is still in the kernel, so buffers handed to the kernel stay
//! valid until it is done with them.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use io_uring::{cqueue, opcode, squeue, types};
use socket2::Socket;

use super::bufring::BufRing;
use super::conn::{live_conn, Conn, FileSend, Phase, Recv, Write};
use super::lifecycle::Lifecycle;
use super::ops;
use super::ring::{self, Ring};
use super::service::{ConnEvent, ConnId, OutboundCompletion, OutboundIo, Service, OUTBOUND_KINDS};
use super::session::{Session, OUTPUT_HIGH_WATER};
use crate::http::{HttpError, Limits};
use crate::runtime::uring::{self, split_user_data, user_data, UringError};

pub(super) const KIND_ACCEPT: u64 = 1;
pub(super) const KIND_RECV: u64 = 2;
pub(super) const KIND_SEND: u64 = 3;
pub(super) const KIND_TICK: u64 = 4;
pub(super) const KIND_WAKE: u64 = 5;
pub(super) const KIND_CANCEL: u64 = 6;
pub(super) const KIND_SPLICE_IN: u64 = 7;
pub(super) const KIND_SPLICE_OUT: u64 = 8;
pub(super) const KIND_SPLICE_POLL: u64 = 9;

/// Kernel worker threads io_uring may use per ring, bounded and unbounded work alike.
const IOWQ_MAX_WORKERS: u32 = 8;

/// How often the core refreshes its Date, publishes metrics and checks timeouts.
const TICK: Duration = Duration::from_millis(500);
/// How long a closing connection may take to read its last response.
const LINGER: Duration = Duration::from_secs(2);
/// While draining, a keep-alive connection idle this long is closed; a busier
/// one is closed by answering its next request with `Connection: close`, so
/// a client that keeps sending never has a request race the close.
const DRAIN_QUIET: Duration = Duration::from_secs(1);
/// Size of each provided receive buffer.
const RECV_BUFFER_SIZE: usize = 4096;
const BUFFER_GROUP: u16 = 0;

/// What an io core needs to know from the config.
#[derive(Debug, Clone)]
pub struct CoreOptions {
    pub limits: Limits,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub io_budget: uring::IoBudget,
}

impl CoreOptions {
    /// Unanswered bytes past which a connection stops being read: more
    /// than any one legal request, so only a client that does not read its
    /// answers (while pipelining more) gets there.
    fn pause_reading_above(&self) -> usize {
        self.limits.max_header_bytes + self.limits.max_body_bytes + 64 * 1024
    }
}

/// One listening socket of a core and the state of its multishot accept.
struct Acceptor {
    socket: Option<Socket>,
    armed: bool,
    /// Out of descriptors or memory: arm again at the next tick.
    rearm: bool,
}

impl Acceptor {
    fn new(socket: Socket) -> Self {
        Self {
            socket: Some(socket),
            armed: false,
            rearm: false,
        }
    }
}

/// One io core: its ring, listeners, connections and the service it drives.
pub struct IoCore<S: Service> {
    pub(super) ring: Ring,
    buffers: BufRing,
    /// The core's listeners: index 0 is its `SO_REUSEPORT` listener; any
    /// other ([`Self::add_listener`]) tags the connections it accepts with
    /// its index, for the service ([`Service::admit`]).
    acceptors: Vec<Acceptor>,
    pub(super) conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    core: usize,
    /// The CPU this core's thread is pinned to, against which accepted sockets' `SO_INCOMING_CPU` is compared.
    cpu: usize,
    pub(super) service: S,
    pub(super) options: CoreOptions,
    lifecycle: Arc<Lifecycle>,
    wake: OwnedFd,
    /// Messages from other threads, of the service's own type.
    inbox: Receiver<S::Msg>,
    /// This core has no connections left while draining, and said so.
    drained: bool,
    wake_buf: Box<u64>,
    tick_spec: Box<types::Timespec>,
    tick_multishot: bool,
    draining: bool,
    drain_deadline: Option<Instant>,
    completions: Vec<ring::Cqe>,
}

impl<S: Service> IoCore<S> {
    /// Builds core `core`, pinned to `cpu`, on the calling thread (the ring is bound to it).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        core: usize,
        cpu: usize,
        listener: Socket,
        wake: OwnedFd,
        inbox: Receiver<S::Msg>,
        service: S,
        options: CoreOptions,
        lifecycle: Arc<Lifecycle>,
    ) -> Result<Self, UringError> {
        let ring = Ring::new(options.io_budget.ring_entries)?;
        // Splicing file pages runs on io_uring's kernel workers; bound them so
        // many slow downloads cannot make a core spawn thousands.
        let _ = ring
            .submitter()
            .register_iowq_max_workers(&mut [IOWQ_MAX_WORKERS, IOWQ_MAX_WORKERS]);
        let buffers = ring::register_buffers(
            &ring,
            options.io_budget.recv_buffers,
            RECV_BUFFER_SIZE,
            BUFFER_GROUP,
        )?;
        Ok(Self {
            ring,
            buffers,
            acceptors: vec![Acceptor::new(listener)],
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            core,
            cpu,
            service,
            options,
            lifecycle,
            wake,
            inbox,
            drained: false,
            wake_buf: Box::new(0),
            tick_spec: Box::new(types::Timespec::from(TICK)),
            tick_multishot: true,
            draining: false,
            drain_deadline: None,
            completions: Vec::with_capacity(256),
        })
    }

    /// Adds a listener whose connections the service sees with the
    /// returned index (an admin port, say); it closes when the node drains.
    pub fn add_listener(&mut self, socket: Socket) -> usize {
        self.acceptors.push(Acceptor::new(socket));
        self.acceptors.len() - 1
    }

    /// Serves until the node drains and every connection is closed, or the grace period ends.
    /// Returns the number of connections cut at the deadline.
    pub fn run(mut self) -> io::Result<usize> {
        for listener in 0..self.acceptors.len() {
            self.arm_accept(listener);
        }
        self.arm_wake();
        self.arm_tick();
        loop {
            // Messages for other cores leave once per turn, one wake-up each;
            // answers that failed in doing so are written now.
            self.service.end_turn();
            self.deliver_answers(None);
            self.drive_outbound(Instant::now());
            // Wake at the first completion. Waiting for a batch (io_uring's
            // minimum wait) spares whoever wakes an idle core, but stalls a
            // core at moderate load: measured in the README's PostgreSQL
            // benchmark, and not kept.
            self.ring.submit_and_wait(1)?;
            let now = Instant::now();
            loop {
                let mut completions = std::mem::take(&mut self.completions);
                if self.ring.drain(&mut completions) == 0 {
                    self.completions = completions;
                    break;
                }
                for &(data, result, flags) in &completions {
                    self.complete(data, result, flags, now);
                }
                completions.clear();
                self.completions = completions;
                self.deliver_answers(Some(now));
            }
            self.service.end_batch(now);
            if self.draining {
                if self.live == 0 && !self.acceptors.iter().any(|a| a.armed) {
                    // Other cores may still send work for this core's
                    // shards: stay until every core has no connections left.
                    if !self.drained {
                        self.drained = true;
                        self.lifecycle.core_drained();
                    }
                    if self.lifecycle.all_cores_drained() {
                        self.service.end_turn();
                        return Ok(0);
                    }
                }
                if self.drain_deadline.is_some_and(|d| now >= d) {
                    return Ok(self.abandon());
                }
            }
        }
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32, now: Instant) {
        let (kind, generation, slot) = split_user_data(data);
        match kind {
            KIND_ACCEPT => self.on_accept(slot as usize, result, flags, now),
            KIND_RECV => self.on_recv(slot, generation, result, flags, now),
            KIND_SEND => self.on_send(slot, generation, result, now),
            KIND_SPLICE_IN | KIND_SPLICE_OUT | KIND_SPLICE_POLL => {
                self.on_splice(kind, slot, generation, result, now)
            }
            KIND_TICK => {
                if result == -libc::EINVAL && self.tick_multishot {
                    // Before Linux 6.4 there are no multishot timeouts: tick one at a time.
                    self.tick_multishot = false;
                    return self.arm_tick();
                }
                // A multishot timeout ends if its completion cannot be posted; a
                // one-shot one ends every time. Either way, keep ticking.
                if !cqueue::more(flags) {
                    self.arm_tick();
                }
                self.on_tick(now)
            }
            KIND_WAKE => self.on_wake(now),
            kind if (OUTBOUND_KINDS.connect..=OUTBOUND_KINDS.cancel).contains(&kind) => {
                let done = OutboundCompletion {
                    kind,
                    generation,
                    slot,
                    result,
                    flags,
                };
                let mut io = OutboundIo {
                    ring: &mut self.ring,
                    buffers: &mut self.buffers,
                };
                self.service.on_outbound(&mut io, done, now)
            }
            _ => {}
        }
    }

    fn drive_outbound(&mut self, now: Instant) {
        let mut io = OutboundIo {
            ring: &mut self.ring,
            buffers: &mut self.buffers,
        };
        self.service.drive_outbound(&mut io, now);
    }

    pub(super) fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: every entry's buffers (connection output, wake counter,
        // timespec, provided buffers) outlive the operation, and a
        // connection's descriptor closes only once the kernel holds none of
        // its operations: see the module docs.
        unsafe { self.ring.push(entry) }
    }

    fn arm_accept(&mut self, listener: usize) {
        let Some(socket) = &self.acceptors[listener].socket else {
            return;
        };
        // Non-blocking sockets: io_uring then polls one that is not ready
        // instead of parking a kernel worker thread on it.
        let entry = ops::accept_multi(
            socket.as_raw_fd(),
            user_data(KIND_ACCEPT, 0, listener as u32),
        );
        self.push(&entry);
        self.acceptors[listener].armed = true;
    }

    fn arm_wake(&mut self) {
        let entry = ops::read_eventfd(
            self.wake.as_raw_fd(),
            &mut self.wake_buf,
            user_data(KIND_WAKE, 0, 0),
        );
        self.push(&entry);
    }

    fn on_accept(&mut self, listener: usize, result: i32, flags: u32, now: Instant) {
        if listener >= self.acceptors.len() {
            return;
        }
        if !cqueue::more(flags) {
            self.acceptors[listener].armed = false;
            if self.draining {
                self.acceptors[listener].socket = None;
            } else if result == -libc::EMFILE
                || result == -libc::ENFILE
                || result == -libc::ENOBUFS
                || result == -libc::ENOMEM
            {
                // Out of descriptors or memory: try again at the next tick rather than spin.
                self.acceptors[listener].rearm = true;
            } else {
                self.arm_accept(listener);
            }
        }
        if result < 0 {
            return;
        }
        let fd = result;
        // A connection accepted while draining (its completion was on the
        // way when the accept was cancelled) is a client's like any other:
        // it gets its answer, with `Connection: close`.
        if self.live >= self.options.max_connections {
            self.refuse(fd);
            return;
        }
        let _ = ops::set_nodelay(fd);
        // The peer address costs a syscall; only services that ask get it.
        let peer = if self.service.wants_peer_addr() {
            peer_ip(fd)
        } else {
            None
        };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.generations.push(0);
            (self.conns.len() - 1) as u32
        });
        let generation = uring::next_generation(self.generations[slot as usize]);
        self.generations[slot as usize] = generation;
        let id = ConnId {
            core: self.core,
            slot,
            generation,
        };
        let session = Session::new(id, peer).via(listener);
        self.conns[slot as usize] = Some(Conn::new(fd, generation, session, now));
        self.live += 1;
        self.service.on_connection(ConnEvent::Opened);
        // Steering (net::listener) should make the kernel hand this core only
        // connections whose packets arrive on its own CPU; count the others.
        if ops::incoming_cpu(fd).is_some_and(|cpu| cpu != self.cpu) {
            self.service.on_connection(ConnEvent::OffCpu);
        }
        self.arm_recv(slot);
    }

    /// Answers 503 on a connection over the per-core limit, without a slot.
    fn refuse(&mut self, fd: RawFd) {
        let error = if self.draining {
            HttpError::Draining
        } else {
            HttpError::TooManyConnections {
                limit: self.options.max_connections,
            }
        };
        let response = self.service.refusal(&error);
        // SAFETY: fd is a connected socket this core just accepted and owns;
        // the buffers are valid for the lengths given.
        unsafe {
            libc::send(
                fd,
                response.as_ptr().cast(),
                response.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
            libc::shutdown(fd, libc::SHUT_WR);
            // Read what the client already sent so close() sends FIN, not RST.
            let mut sink = [0u8; 1024];
            while libc::recv(fd, sink.as_mut_ptr().cast(), sink.len(), libc::MSG_DONTWAIT) > 0 {}
            libc::close(fd);
        }
        self.service.on_connection(ConnEvent::Refused);
    }

    fn arm_recv(&mut self, slot: u32) {
        let group = self.buffers.group;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let entry = ops::recv_multi(conn.fd, group, user_data(KIND_RECV, conn.generation, slot));
        conn.recv = Recv::Armed;
        self.push(&entry);
    }

    fn on_recv(&mut self, slot: u32, generation: u32, result: i32, flags: u32, now: Instant) {
        let pause_above = self.options.pause_reading_above();
        let limits = self.options.limits;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            if let Some(bid) = cqueue::buffer_select(flags) {
                self.buffers.recycle(bid);
            }
            return;
        };
        let more = cqueue::more(flags);
        if !more {
            conn.recv = conn.recv.ended();
        }
        let mut rearm = false;
        let mut pause = false;
        if result > 0 {
            if let Some(bid) = cqueue::buffer_select(flags) {
                if conn.phase == Phase::Open {
                    let data = self.buffers.filled(bid, result as usize);
                    conn.session
                        .receive(data, &mut conn.out, &mut self.service, &limits, now);
                    conn.last_active = now;
                }
                self.buffers.recycle(bid);
            }
            // Unanswered bytes pile up only while the session may not answer:
            // output above high water (the client is not reading) or an answer
            // pending elsewhere. A slow legal upload is parsed as it comes.
            let stuck = conn.session.is_blocked() || conn.out.len() >= OUTPUT_HIGH_WATER;
            if conn.phase == Phase::Open
                && stuck
                && conn.session.pending_len() > pause_above
                && conn.recv == Recv::Armed
            {
                // The client sends faster than it reads its answers: stop reading.
                conn.recv = Recv::Pausing;
                pause = true;
            }
            rearm = !more;
        } else if result == 0 {
            // The peer finished sending: answer what it sent, then close.
            conn.session.finish_input();
            if conn.phase != Phase::Open {
                conn.phase = Phase::Closing;
            }
        } else if result == -libc::ENOBUFS {
            // Every provided buffer was in use; they are recycled by now.
            rearm = true;
        } else if result == -libc::ECANCELED && conn.recv == Recv::Paused {
            // Paused for backpressure; a drained output re-arms.
        } else {
            conn.session.close();
            conn.phase = Phase::Closing;
        }
        let rearm = rearm && conn.recv == Recv::Idle && conn.phase != Phase::Closing;
        if pause {
            self.cancel_recv(slot);
        }
        if rearm {
            self.arm_recv(slot);
        }
        self.flush(slot, now);
    }

    /// Starts a send if output is waiting; starts closing if the session is done.
    pub(super) fn flush(&mut self, slot: u32, now: Instant) {
        let pause_above = self.options.pause_reading_above();
        if let Some(conn) = self.conns[slot as usize].as_ref() {
            let may_read = conn.phase == Phase::Open && !conn.session.is_blocked();
            if may_read && conn.recv == Recv::Paused && conn.session.pending_len() <= pause_above {
                self.arm_recv(slot);
            }
        }
        let draining = self.draining;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.write != Write::Idle {
            return;
        }
        if !conn.out.is_empty() && conn.phase == Phase::Open {
            std::mem::swap(&mut conn.out, &mut conn.sending);
            conn.write = Write::Sending { sent: 0 };
            let entry = send_entry(conn, slot, 0);
            self.push(&entry);
            return;
        }
        if conn.phase == Phase::Open {
            if conn.file.is_none() {
                conn.file = conn.session.take_file().map(|body| FileSend {
                    body,
                    sent: 0,
                    in_pipe: 0,
                });
            }
            if conn.file.is_some() {
                self.splice_next(slot);
                return;
            }
        }
        if conn.phase == Phase::Open
            && (conn.session.is_closing()
                || conn.session.is_done()
                || (draining
                    && conn.session.is_idle()
                    && now.duration_since(conn.last_active) >= DRAIN_QUIET))
        {
            conn.session.close();
            // SAFETY: fd is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
            conn.phase = Phase::Lingering {
                until: now + LINGER,
            };
        }
        if matches!(conn.phase, Phase::Lingering { .. }) && !conn.recv.in_kernel() {
            conn.phase = Phase::Closing;
        }
        self.finish_if_closed(slot);
    }

    /// Writes the deferred answers the service has ready, each to the
    /// connection that awaits it; a connection that closed meanwhile (or
    /// whose slot now holds another) does not take it.
    /// `now` is taken only if an answer is there, when the caller has none.
    fn deliver_answers(&mut self, now: Option<Instant>) {
        let limits = self.options.limits;
        while let Some((id, answer)) = self.service.next_answer() {
            let now = now.unwrap_or_else(Instant::now);
            let Some(conn) = live_conn(&mut self.conns, id.slot, id.generation) else {
                continue;
            };
            if conn.phase != Phase::Open {
                continue;
            }
            conn.session
                .answer(answer, &mut conn.out, &mut self.service);
            conn.session
                .resume(&mut conn.out, &mut self.service, &limits, now);
            self.flush(id.slot, now);
        }
    }

    fn on_send(&mut self, slot: u32, generation: u32, result: i32, now: Instant) {
        let limits = self.options.limits;
        let pause_above = self.options.pause_reading_above();
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        let Write::Sending { sent } = conn.write else {
            return;
        };
        conn.write = Write::Idle;
        if result < 0 {
            conn.session.close();
            conn.phase = Phase::Closing;
            self.cancel_recv(slot);
            self.finish_if_closed(slot);
            return;
        }
        let sent = sent + result as usize;
        conn.last_active = now;
        if sent < conn.sending.len() {
            conn.write = Write::Sending { sent };
            let entry = send_entry(conn, slot, sent);
            self.push(&entry);
            return;
        }
        conn.sending.clear();
        if conn.sending.capacity() > 4 * OUTPUT_HIGH_WATER {
            conn.sending = Vec::new();
        }
        if conn.phase == Phase::Open && conn.session.pending_len() > 0 && conn.out.is_empty() {
            conn.session
                .resume(&mut conn.out, &mut self.service, &limits, now);
        }
        let resume_reading = conn.phase == Phase::Open
            && conn.recv == Recv::Paused
            && conn.session.pending_len() <= pause_above;
        if resume_reading {
            self.arm_recv(slot);
        }
        self.flush(slot, now);
    }

    pub(super) fn cancel_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        if conn.recv.in_kernel() {
            let cancel = ops::cancel(
                user_data(KIND_RECV, conn.generation, slot),
                user_data(KIND_CANCEL, 0, 0),
            );
            self.push(&cancel);
        }
    }

    /// Frees the slot once the kernel holds nothing of the connection.
    pub(super) fn finish_if_closed(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        if conn.phase != Phase::Closing || !conn.quiet() {
            return;
        }
        // SAFETY: no operation on fd is in flight, and nothing else owns it.
        unsafe { libc::close(conn.fd) };
        self.conns[slot as usize] = None;
        self.free.push(slot);
        self.live -= 1;
        self.service.on_connection(ConnEvent::Closed);
    }

    /// Closes at once: shutting the socket down ends its receive and any stalled send.
    pub(super) fn close_now(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        conn.session.close();
        conn.phase = Phase::Closing;
        // SAFETY: fd is this connection's open socket.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        self.cancel_recv(slot);
        self.finish_if_closed(slot);
    }

    fn arm_tick(&mut self) {
        let flags = if self.tick_multishot {
            types::TimeoutFlags::MULTISHOT
        } else {
            types::TimeoutFlags::empty()
        };
        let tick = opcode::Timeout::new(&*self.tick_spec)
            .flags(flags)
            .build()
            .user_data(user_data(KIND_TICK, 0, 0));
        self.push(&tick);
    }

    fn on_tick(&mut self, now: Instant) {
        self.service.on_tick(now);
        for listener in 0..self.acceptors.len() {
            if self.acceptors[listener].rearm && !self.draining {
                self.acceptors[listener].rearm = false;
                self.arm_accept(listener);
            }
        }
        let idle_timeout = self.options.idle_timeout;
        let header_timeout = self.options.header_timeout;
        let body_timeout = self.options.body_timeout;
        for slot in 0..self.conns.len() as u32 {
            let Some(conn) = self.conns[slot as usize].as_mut() else {
                continue;
            };
            match conn.phase {
                Phase::Open => {
                    if conn.session.check_request_timeouts(
                        &mut conn.out,
                        &mut self.service,
                        header_timeout,
                        body_timeout,
                        now,
                    ) {
                        self.service.on_connection(ConnEvent::TimedOut);
                        self.flush(slot, now);
                    } else if self.draining
                        && conn.session.is_idle()
                        && now.duration_since(conn.last_active) >= DRAIN_QUIET
                    {
                        self.flush(slot, now);
                    } else if now.duration_since(conn.last_active) >= idle_timeout {
                        let busy = conn.write != Write::Idle;
                        self.service.on_connection(ConnEvent::TimedOut);
                        if busy {
                            // The client stopped reading its answers.
                            self.close_now(slot);
                        } else if let Some(conn) = self.conns[slot as usize].as_mut() {
                            conn.session.close();
                            self.flush(slot, now);
                        }
                    }
                }
                Phase::Lingering { until } if now >= until => self.close_now(slot),
                Phase::Lingering { .. } | Phase::Closing => {}
            }
        }
    }

    fn on_wake(&mut self, now: Instant) {
        self.arm_wake();
        while let Ok(msg) = self.inbox.try_recv() {
            self.service.on_message(msg, now);
        }
        self.deliver_answers(Some(now));
        if !self.lifecycle.is_draining() || self.draining {
            return;
        }
        self.draining = true;
        self.drain_deadline = Some(now + self.options.shutdown_grace);
        for listener in 0..self.acceptors.len() {
            if self.acceptors[listener].armed {
                let accept = user_data(KIND_ACCEPT, 0, listener as u32);
                let cancel = ops::cancel(accept, user_data(KIND_CANCEL, 0, 0));
                self.push(&cancel);
            } else {
                self.acceptors[listener].socket = None;
            }
        }
        for slot in 0..self.conns.len() as u32 {
            if self.conns[slot as usize].is_some() {
                self.flush(slot, now);
            }
        }
    }

    /// At the end of the grace period: cut every connection still open.
    fn abandon(&mut self) -> usize {
        let cut = self.live;
        for conn in self.conns.iter().flatten() {
            // SAFETY: fd is an open socket of this core; shutting it down
            // ends its operations, and the process exits next.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        }
        // Operations may still reference connection buffers until the ring
        // is torn down: leak them rather than free memory the kernel may touch.
        std::mem::forget(std::mem::take(&mut self.conns));
        cut
    }
}

fn send_entry(conn: &Conn, slot: u32, sent: usize) -> squeue::Entry {
    ops::send(
        conn.fd,
        &conn.sending[sent..],
        user_data(KIND_SEND, conn.generation, slot),
    )
}

/// The connection's peer address (one syscall per connection, for rate limiting).
fn peer_ip(fd: RawFd) -> Option<std::net::IpAddr> {
    // SAFETY: try_init hands getpeername storage and its length; the
    // kernel writes at most that many bytes and sets the length it wrote.
    let peer = unsafe {
        socket2::SockAddr::try_init(|storage, len| {
            if libc::getpeername(fd, storage.cast(), len) == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        })
    };
    peer.ok()?.1.as_socket().map(|a| a.ip())
}

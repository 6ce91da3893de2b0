//! One io core's event loop on its own io_uring: multishot accept, multishot receive into provided buffers, one send per batch.
//!
//! Every operation's completion carries `user_data` = kind | generation |
//! slot, so a completion for a connection slot that was since reused is
//! recognised and dropped. A connection's slot is freed only when none of its
//! operations is still in the kernel, so buffers handed to the kernel stay
//! valid until it is done with them.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use socket2::Socket;

use super::bufring::BufRing;
use super::session::{Session, OUTPUT_HIGH_WATER};
use crate::api::Service;
use crate::api::{Answer, Deferred};
use crate::docs::Plane;
use crate::http::response::{render_refusal, FileBody};
use crate::http::{HttpError, Limits};
use crate::mailbox::CoreMsg;
use crate::node::Node;
use crate::queue::ReplyTo;
use crate::runtime::uring::{self, split_user_data, user_data, UringError};
use crossbeam_channel::Receiver;

const KIND_ACCEPT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_TICK: u64 = 4;
const KIND_WAKE: u64 = 5;
const KIND_CANCEL: u64 = 6;
const KIND_SPLICE_IN: u64 = 7;
const KIND_SPLICE_OUT: u64 = 8;
const KIND_SPLICE_POLL: u64 = 9;

/// Kernel worker threads io_uring may use per ring, bounded and unbounded work alike.
const IOWQ_MAX_WORKERS: u32 = 8;

/// Bytes moved per splice: the default pipe capacity.
const SPLICE_CHUNK: u64 = 64 * 1024;

/// How often the core refreshes its Date, publishes metrics and checks timeouts.
const TICK: Duration = Duration::from_millis(500);
/// How long a closing connection may take to read its last response.
const LINGER: Duration = Duration::from_secs(2);
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Write side shut after the last response; reading until the peer closes.
    Lingering {
        until: Instant,
    },
    /// Waiting for the kernel to finish this connection's operations.
    Closing,
}

struct Conn {
    fd: RawFd,
    generation: u32,
    session: Session,
    /// Responses being written by the session.
    out: Vec<u8>,
    /// Responses handed to the kernel; untouched while a send is in flight.
    sending: Vec<u8>,
    sent: usize,
    send_in_flight: bool,
    recv_armed: bool,
    recv_paused: bool,
    phase: Phase,
    last_active: Instant,
    /// A file body being spliced to the socket.
    file: Option<FileSend>,
    /// The pipe a file body passes through: [read end, write end].
    pipe: Option<[OwnedFd; 2]>,
    splice_in_flight: bool,
}

/// Progress of one file body: file → pipe → socket, a chunk at a time.
struct FileSend {
    body: FileBody,
    /// Bytes that reached the socket.
    sent: u64,
    /// Bytes in the pipe, not yet on the socket.
    in_pipe: u64,
}

/// One io core: its ring, listener, connections and service.
pub struct IoCore {
    ring: IoUring,
    buffers: BufRing,
    listener: Option<Socket>,
    accept_armed: bool,
    accept_rearm: bool,
    conns: Vec<Option<Conn>>,
    generations: Vec<u32>,
    free: Vec<u32>,
    live: usize,
    service: Service,
    options: CoreOptions,
    node: Arc<Node>,
    wake: OwnedFd,
    /// Messages from other threads: job answers, document traffic.
    inbox: Receiver<CoreMsg>,
    /// True while finished document answers are being written (no re-entry).
    delivering: bool,
    /// This core has no connections left while draining, and said so.
    drained: bool,
    wake_buf: Box<u64>,
    tick_spec: Box<types::Timespec>,
    tick_multishot: bool,
    draining: bool,
    drain_deadline: Option<Instant>,
    completions: Vec<(u64, i32, u32)>,
    /// Completions taken early, while making room to submit.
    backlog: Vec<(u64, i32, u32)>,
}

impl IoCore {
    /// Builds the core on the calling thread (the ring is bound to it).
    pub fn new(
        core: usize,
        listener: Socket,
        wake: OwnedFd,
        inbox: Receiver<CoreMsg>,
        plane: Plane,
        options: CoreOptions,
        node: Arc<Node>,
    ) -> Result<Self, UringError> {
        let ring = uring::build_ring(options.io_budget.ring_entries)?;
        // Splicing file pages runs on io_uring's kernel workers; bound them so
        // many slow downloads cannot make a core spawn thousands.
        let _ = ring
            .submitter()
            .register_iowq_max_workers(&mut [IOWQ_MAX_WORKERS, IOWQ_MAX_WORKERS]);
        let buffers = register_buffers(&ring, options.io_budget.recv_buffers)?;
        Ok(Self {
            ring,
            buffers,
            listener: Some(listener),
            accept_armed: false,
            accept_rearm: false,
            conns: Vec::new(),
            generations: Vec::new(),
            free: Vec::new(),
            live: 0,
            service: Service::new(core, Arc::clone(&node), plane),
            options,
            node,
            wake,
            inbox,
            delivering: false,
            drained: false,
            wake_buf: Box::new(0),
            tick_spec: Box::new(types::Timespec::from(TICK)),
            tick_multishot: true,
            draining: false,
            drain_deadline: None,
            completions: Vec::with_capacity(256),
            backlog: Vec::new(),
        })
    }

    /// Serves until the node drains and every connection is closed, or the grace period ends.
    /// Returns the number of connections cut at the deadline.
    pub fn run(mut self) -> io::Result<usize> {
        self.arm_accept();
        self.arm_wake();
        self.arm_tick();
        loop {
            // Messages for other cores leave once per turn, one wake-up each.
            self.service.ctx.plane.flush_outbox();
            if self.service.ctx.plane.has_finished() {
                // Parts for a core that has stopped failed in the flush.
                self.deliver_finished(Instant::now());
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            loop {
                let mut completions = std::mem::take(&mut self.completions);
                completions.append(&mut self.backlog);
                completions.extend(
                    self.ring
                        .completion()
                        .map(|c| (c.user_data(), c.result(), c.flags())),
                );
                if completions.is_empty() {
                    self.completions = completions;
                    break;
                }
                for &(data, result, flags) in &completions {
                    self.complete(data, result, flags, now);
                }
                completions.clear();
                self.completions = completions;
            }
            self.service.metrics.finish_batch(now);
            if self.draining {
                if self.live == 0 && !self.accept_armed {
                    // Other cores may still send operations for this core's
                    // shards: stay until every core has no connections left.
                    if !self.drained {
                        self.drained = true;
                        self.node.core_drained();
                    }
                    if self.node.all_cores_drained() {
                        self.service.ctx.plane.flush_outbox();
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
            KIND_ACCEPT => self.on_accept(result, flags, now),
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
            _ => {}
        }
    }

    fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: every entry's buffers (connection output, wake counter,
        // timespec, provided buffers) outlive the operation: see the module docs.
        while unsafe { self.ring.submission().push(entry) }.is_err() {
            // The submission queue is full: hand what is queued to the kernel.
            match self.ring.submit() {
                Ok(_) => {}
                // The completion queue overflowed: make room by taking its
                // completions now; the loop handles them next.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    let reaped = self
                        .ring
                        .completion()
                        .map(|c| (c.user_data(), c.result(), c.flags()));
                    self.backlog.extend(reaped);
                }
                Err(_) => std::thread::yield_now(),
            }
        }
    }

    fn arm_accept(&mut self) {
        let Some(listener) = &self.listener else {
            return;
        };
        let entry = opcode::AcceptMulti::new(types::Fd(listener.as_raw_fd()))
            // Non-blocking: io_uring then polls a socket that is not ready
            // instead of parking a kernel worker thread on it.
            .flags(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)
            .build()
            .user_data(user_data(KIND_ACCEPT, 0, 0));
        self.push(&entry);
        self.accept_armed = true;
    }

    fn arm_wake(&mut self) {
        let entry = opcode::Read::new(
            types::Fd(self.wake.as_raw_fd()),
            (&mut *self.wake_buf as *mut u64).cast(),
            8,
        )
        .build()
        .user_data(user_data(KIND_WAKE, 0, 0));
        self.push(&entry);
    }

    fn on_accept(&mut self, result: i32, flags: u32, now: Instant) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
            if self.draining {
                self.listener = None;
            } else if result == -libc::EMFILE
                || result == -libc::ENFILE
                || result == -libc::ENOBUFS
                || result == -libc::ENOMEM
            {
                // Out of descriptors or memory: try again at the next tick rather than spin.
                self.accept_rearm = true;
            } else {
                self.arm_accept();
            }
        }
        if result < 0 {
            return;
        }
        let fd = result;
        if self.draining || self.live >= self.options.max_connections {
            self.refuse(fd);
            return;
        }
        set_nodelay(fd);
        // The peer address only matters to the rate limiter; skip the syscall otherwise.
        let peer = self.node.limiter.as_ref().and_then(|_| peer_ip(fd));
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.generations.push(0);
            (self.conns.len() - 1) as u32
        });
        let generation = self.generations[slot as usize].wrapping_add(1) & 0x00ff_ffff;
        self.generations[slot as usize] = generation;
        self.conns[slot as usize] = Some(Conn {
            fd,
            generation,
            session: Session::new(peer),
            out: Vec::new(),
            sending: Vec::new(),
            sent: 0,
            send_in_flight: false,
            recv_armed: false,
            recv_paused: false,
            phase: Phase::Open,
            last_active: now,
            file: None,
            pipe: None,
            splice_in_flight: false,
        });
        self.live += 1;
        self.service.metrics.connection_opened();
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
        let response = render_refusal(&error, self.service.date.get());
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
        self.service.metrics.connection_refused();
    }

    fn arm_recv(&mut self, slot: u32) {
        let group = self.buffers.group;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd), group)
            .build()
            .user_data(user_data(KIND_RECV, conn.generation, slot));
        conn.recv_armed = true;
        conn.recv_paused = false;
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
            conn.recv_armed = false;
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
                && conn.recv_armed
            {
                // The client sends faster than it reads its answers: stop reading.
                conn.recv_paused = true;
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
        } else if result == -libc::ECANCELED && conn.recv_paused {
            // Paused for backpressure; on_send re-arms.
        } else {
            conn.session.close();
            conn.phase = Phase::Closing;
        }
        let rearm = rearm && !conn.recv_armed && !conn.recv_paused && conn.phase != Phase::Closing;
        if pause {
            self.cancel_recv(slot);
        }
        if rearm {
            self.arm_recv(slot);
        }
        self.flush(slot, now);
    }

    /// Starts a send if output is waiting; starts closing if the session is done.
    fn flush(&mut self, slot: u32, now: Instant) {
        self.forward_deferred(slot);
        let pause_above = self.options.pause_reading_above();
        if let Some(conn) = self.conns[slot as usize].as_ref() {
            let may_read = conn.phase == Phase::Open && !conn.session.is_blocked();
            if may_read
                && conn.recv_paused
                && !conn.recv_armed
                && conn.session.pending_len() <= pause_above
            {
                self.arm_recv(slot);
            }
        }
        let draining = self.draining;
        let Some(conn) = self.conns[slot as usize].as_mut() else {
            return;
        };
        if conn.send_in_flight || conn.splice_in_flight {
            return;
        }
        if !conn.out.is_empty() && conn.phase == Phase::Open {
            std::mem::swap(&mut conn.out, &mut conn.sending);
            conn.sent = 0;
            let entry = send_entry(conn, slot);
            conn.send_in_flight = true;
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
                || (draining && conn.session.is_idle()))
        {
            conn.session.close();
            // SAFETY: fd is this connection's open socket.
            unsafe { libc::shutdown(conn.fd, libc::SHUT_WR) };
            conn.phase = Phase::Lingering {
                until: now + LINGER,
            };
        }
        if matches!(conn.phase, Phase::Lingering { .. }) && !conn.recv_armed {
            conn.phase = Phase::Closing;
        }
        self.finish_if_closed(slot);
    }

    /// Hands work a handler deferred to the job manager or the document
    /// plane, addressed back to this connection.
    fn forward_deferred(&mut self, slot: u32) {
        while let Some(work) = self.service.take_deferred() {
            let Some(conn) = self.conns[slot as usize].as_ref() else {
                return;
            };
            let reply = ReplyTo {
                core: self.service.ctx.core,
                slot,
                generation: conn.generation,
            };
            match work {
                Deferred::Data(request) => {
                    self.service.ctx.plane.start(request, reply, Instant::now());
                    self.deliver_finished(Instant::now());
                }
                Deferred::Job(work) => {
                    let handed_over = self
                        .node
                        .queues
                        .as_ref()
                        .is_some_and(|queues| queues.defer(work, Some(reply)));
                    if !handed_over {
                        // The manager is gone: answer now rather than leave the client waiting.
                        let limits = self.options.limits;
                        let Some(conn) = self.conns[slot as usize].as_mut() else {
                            return;
                        };
                        conn.session.answer(
                            Answer::Job(crate::queue::Answer::Rejected(
                                HttpError::JobLogUnavailable,
                            )),
                            &mut conn.out,
                            &mut self.service,
                        );
                        conn.session.resume(
                            &mut conn.out,
                            &mut self.service,
                            &limits,
                            Instant::now(),
                        );
                    }
                }
            }
        }
    }

    /// Writes the document answers the plane finished. Not re-entered: an
    /// answer that lets a pipelined request finish at once is picked up by
    /// the loop already running.
    fn deliver_finished(&mut self, now: Instant) {
        if self.delivering {
            return;
        }
        self.delivering = true;
        let limits = self.options.limits;
        while let Some((reply, gathered)) = self.service.ctx.plane.take_finished() {
            let ReplyTo {
                slot, generation, ..
            } = reply;
            let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
                continue;
            };
            if conn.phase != Phase::Open {
                continue;
            }
            conn.session
                .answer(Answer::Data(gathered), &mut conn.out, &mut self.service);
            conn.session
                .resume(&mut conn.out, &mut self.service, &limits, now);
            self.flush(slot, now);
        }
        self.delivering = false;
    }

    /// Moves the next piece of the file body: file → pipe, or pipe → socket.
    fn splice_next(&mut self, slot: u32) {
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
        conn.splice_in_flight = true;
        self.push(&entry);
    }

    fn on_splice(&mut self, kind: u64, slot: u32, generation: u32, result: i32, now: Instant) {
        let limits = self.options.limits;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        conn.splice_in_flight = false;
        let Some(file) = conn.file.as_mut().filter(|_| conn.phase == Phase::Open) else {
            return self.finish_if_closed(slot);
        };
        if result == -libc::EAGAIN && kind == KIND_SPLICE_OUT {
            // The socket's send buffer is full (the client reads slowly):
            // wait until it can take more, then splice again.
            let poll = opcode::PollAdd::new(types::Fd(conn.fd), libc::POLLOUT as u32)
                .build()
                .user_data(user_data(KIND_SPLICE_POLL, conn.generation, slot));
            conn.splice_in_flight = true;
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

    fn on_send(&mut self, slot: u32, generation: u32, result: i32, now: Instant) {
        let limits = self.options.limits;
        let pause_above = self.options.pause_reading_above();
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        conn.send_in_flight = false;
        if result < 0 {
            conn.session.close();
            conn.phase = Phase::Closing;
            self.cancel_recv(slot);
            self.finish_if_closed(slot);
            return;
        }
        conn.sent += result as usize;
        conn.last_active = now;
        if conn.sent < conn.sending.len() {
            let entry = send_entry(conn, slot);
            conn.send_in_flight = true;
            self.push(&entry);
            return;
        }
        conn.sending.clear();
        if conn.sending.capacity() > 4 * super::session::OUTPUT_HIGH_WATER {
            conn.sending = Vec::new();
        }
        if conn.phase == Phase::Open && conn.session.pending_len() > 0 && conn.out.is_empty() {
            conn.session
                .resume(&mut conn.out, &mut self.service, &limits, now);
        }
        let resume_reading = conn.phase == Phase::Open
            && conn.recv_paused
            && !conn.recv_armed
            && conn.session.pending_len() <= pause_above;
        if resume_reading {
            self.arm_recv(slot);
        }
        self.flush(slot, now);
    }

    fn cancel_recv(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        if conn.recv_armed {
            let cancel = opcode::AsyncCancel::new(user_data(KIND_RECV, conn.generation, slot))
                .build()
                .user_data(user_data(KIND_CANCEL, 0, 0));
            self.push(&cancel);
        }
    }

    /// Frees the slot once the kernel holds nothing of the connection.
    fn finish_if_closed(&mut self, slot: u32) {
        let Some(conn) = self.conns[slot as usize].as_ref() else {
            return;
        };
        if conn.phase != Phase::Closing
            || conn.recv_armed
            || conn.send_in_flight
            || conn.splice_in_flight
        {
            return;
        }
        // SAFETY: no operation on fd is in flight, and nothing else owns it.
        unsafe { libc::close(conn.fd) };
        self.conns[slot as usize] = None;
        self.free.push(slot);
        self.live -= 1;
        self.service.metrics.connection_closed();
    }

    /// Closes at once: shutting the socket down ends its receive and any stalled send.
    fn close_now(&mut self, slot: u32) {
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
        self.service.date.refresh();
        self.service.metrics.publish();
        if self.accept_rearm && !self.draining {
            self.accept_rearm = false;
            self.arm_accept();
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
                        self.service.metrics.connection_timed_out();
                        self.flush(slot, now);
                    } else if now.duration_since(conn.last_active) >= idle_timeout {
                        self.service.metrics.connection_timed_out();
                        if conn.send_in_flight || conn.splice_in_flight {
                            // The client stopped reading its answers.
                            self.close_now(slot);
                        } else {
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
        let limits = self.options.limits;
        while let Ok(msg) = self.inbox.try_recv() {
            let completion = match msg {
                CoreMsg::Job(completion) => completion,
                CoreMsg::Data(msg) => {
                    self.service.ctx.plane.on_message(msg, now);
                    continue;
                }
            };
            let ReplyTo {
                slot, generation, ..
            } = completion.to;
            let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
                continue;
            };
            if conn.phase != Phase::Open {
                continue;
            }
            conn.session.answer(
                Answer::Job(completion.answer),
                &mut conn.out,
                &mut self.service,
            );
            conn.session
                .resume(&mut conn.out, &mut self.service, &limits, now);
            self.flush(slot, now);
        }
        self.deliver_finished(now);
        if !self.node.is_draining() || self.draining {
            return;
        }
        self.draining = true;
        self.drain_deadline = Some(now + self.options.shutdown_grace);
        if self.accept_armed {
            let cancel = opcode::AsyncCancel::new(user_data(KIND_ACCEPT, 0, 0))
                .build()
                .user_data(user_data(KIND_CANCEL, 0, 0));
            self.push(&cancel);
        } else {
            self.listener = None;
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

fn send_entry(conn: &Conn, slot: u32) -> squeue::Entry {
    let rest = &conn.sending[conn.sent..];
    opcode::Send::new(types::Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
        .flags(libc::MSG_NOSIGNAL)
        .build()
        .user_data(user_data(KIND_SEND, conn.generation, slot))
}

/// The connection in `slot`, if it is still the one of `generation`.
fn live_conn(conns: &mut [Option<Conn>], slot: u32, generation: u32) -> Option<&mut Conn> {
    conns
        .get_mut(slot as usize)?
        .as_mut()
        .filter(|c| c.generation == generation)
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

fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: fd is a TCP socket; the option value is a valid c_int.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Registers the receive buffers, with fewer if locked memory is short.
fn register_buffers(ring: &IoUring, count: u16) -> Result<BufRing, UringError> {
    let mut count = count;
    loop {
        match BufRing::register(&ring.submitter(), count, RECV_BUFFER_SIZE, BUFFER_GROUP) {
            Ok(buffers) => return Ok(buffers),
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && count > 64 => count /= 2,
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(uring::locked_memory("its receive buffer ring", e))
            }
            Err(e) => return Err(uring::classify(e)),
        }
    }
}

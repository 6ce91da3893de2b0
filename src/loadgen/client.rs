//! One client core: a thread pinned to its CPU that owns its connections and its io_uring, and drives them closed- or open-loop.
//!
//! Each loop turn is one `io_uring_enter`: it submits every send, receive,
//! connect and timer queued since the last turn and waits for at least one
//! completion. Sends point into one pre-rendered batch of `pipeline` copies
//! of the request (the core's own copy), so a send never renders or copies.
//! Receives are multishot into a provided-buffer ring; each buffer is
//! parsed by the connection's [`ResponseReader`] and handed back at once.
//!
//! **Closed loop**: every connection sends a batch of `pipeline` requests,
//! waits for all their responses, and sends the next batch (as wrk does with
//! a pipelining script). Every request of a batch starts at the batch's
//! send time.
//!
//! **Open loop** (`rate`): request `i` of core `c` is due at
//! `start + (i + c/cores) · cores/rate`, an absolute time fixed in advance.
//! When a request is due it goes to the connection that has been free the
//! longest (fewer than `pipeline` requests in flight, no send in progress);
//! if none is free it waits, and its clock still started when it was due.
//! Latency is measured from that intended time, so a server that stalls
//! cannot hide the stall by slowing the client down (the coordinated
//! omission correction of wrk2). An absolute io_uring Timeout wakes the
//! core at the next due time; it is moved earlier in place
//! (`IORING_TIMEOUT_UPDATE`) when a connection frees up before the next tick.
//! When the next request is due within `SPIN_NS` the core polls the ring
//! instead: on a VM arming and taking a timer costs more than that.
//!
//! Sends post no completion unless they fail (`MSG_WAITALL` with
//! `IOSQE_CQE_SKIP_SUCCESS`) whenever the next send on a connection can only
//! follow the responses to the last, which prove it done; that saves a
//! completion, and in the open loop a wake-up, per request.
//!
//! Every completion carries `user_data` = kind | generation | slot; a
//! connection's descriptor is closed only when none of its operations is
//! still in the kernel, so a completion of an old connection is recognised
//! by its generation and dropped.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::response::ResponseReader;
use crate::net::bufring::BufRing;
use crate::runtime::uring::{self, split_user_data, user_data, UringError};

const KIND_CONNECT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_TIMER: u64 = 4;
const KIND_TIMER_UPDATE: u64 = 5;
const KIND_CANCEL: u64 = 6;

/// How often a core checks timeouts, retries connects and publishes its counters.
const TICK_NS: u64 = 100_000_000;
/// Open loop: poll instead of sleeping when the next request is due within this.
const SPIN_NS: u64 = 30_000;
/// Submission queue depth of a client core's ring.
const RING_ENTRIES: u32 = 1024;
/// Size of each provided receive buffer; only the bytes received are touched.
const RECV_BUFFER_SIZE: usize = 16 * 1024;
const BUFFER_GROUP: u16 = 0;
/// Latencies are recorded in nanoseconds, up to a minute, to three significant digits.
pub const LATENCY_MAX_NS: u64 = 60_000_000_000;
const LATENCY_SIGFIG: u8 = 3;

/// A new latency histogram (nanoseconds).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_NS, LATENCY_SIGFIG)
        .expect("static histogram bounds are valid")
}

/// What every core does, decided once from the options.
#[derive(Debug, Clone)]
pub struct Plan {
    pub addr: SocketAddr,
    /// One request, rendered.
    pub request: Vec<u8>,
    pub pipeline: usize,
    pub head_requests: bool,
    /// Open loop: requests per second over all cores.
    pub rate: Option<f64>,
    pub cores: usize,
    pub timeout_ns: u64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
}

/// What the main thread and the cores share: the start time, the stop flag
/// and each core's live counters (one writer each; read for the live line).
pub struct Shared {
    pub start_ns: AtomicU64,
    pub stop: AtomicBool,
    pub live: Box<[Live]>,
}

/// A core's counters for the live line. Aligned so two cores never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct Live {
    pub responses: AtomicU64,
    pub errors: AtomicU64,
}

impl Shared {
    pub fn new(cores: usize) -> Self {
        Self {
            start_ns: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            live: (0..cores).map(|_| Live::default()).collect(),
        }
    }
}

/// Requests that failed, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Errors {
    /// Connection attempts that failed (refused, unreachable, timed out).
    pub connect: u64,
    /// Requests with no response within the timeout.
    pub timeout: u64,
    /// Requests lost when the server reset or closed the connection.
    pub closed: u64,
    /// Responses that were not HTTP/1.1.
    pub malformed: u64,
}

impl Errors {
    pub fn add(&mut self, other: &Errors) {
        self.connect += other.connect;
        self.timeout += other.timeout;
        self.closed += other.closed;
        self.malformed += other.malformed;
    }

    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.closed + self.malformed
    }
}

/// One core's counts over the measured part of the run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// Complete responses.
    pub responses: u64,
    /// Responses by status class: index 1 is 1xx ... 5xx; 0 anything else.
    pub by_class: [u64; 6],
    /// Bytes received.
    pub bytes: u64,
    /// Send operations started (each carries one batch).
    pub sends: u64,
    pub requests_sent: u64,
    pub errors: Errors,
    /// Open loop: requests that came due before the stop but were never sent.
    pub unsent: u64,
    /// Requests still unanswered when the run ended.
    pub unfinished: u64,
}

impl Tally {
    pub fn add(&mut self, other: &Tally) {
        self.responses += other.responses;
        for (a, b) in self.by_class.iter_mut().zip(other.by_class) {
            *a += b;
        }
        self.bytes += other.bytes;
        self.sends += other.sends;
        self.requests_sent += other.requests_sent;
        self.errors.add(&other.errors);
        self.unsent += other.unsent;
        self.unfinished += other.unfinished;
    }
}

/// What a core hands back when it is done.
pub struct CoreResult {
    pub core: usize,
    pub cpu: usize,
    pub tally: Tally,
    pub latency: Histogram<u64>,
    /// The core thread's CPU time (utime + stime) over the measured part, in nanoseconds.
    pub cpu_ns: u64,
    /// Wall time of the measured part, up to the stop (without the final drain).
    pub measured_ns: u64,
    /// Wall time from the measurement start to the core's exit (with the drain).
    pub wall_ns: u64,
}

/// The monotonic clock in nanoseconds; io_uring's absolute timeouts use the same clock.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of the calling thread from `/proc/self/task/TID/stat`, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    // SAFETY: gettid and sysconf have no preconditions.
    let (tid, ticks_per_s) = unsafe { (libc::gettid(), libc::sysconf(libc::_SC_CLK_TCK)) };
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else {
        return 0;
    };
    // Fields after the command name (which may hold spaces), starting at field 3.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let ticks = field(14).unwrap_or(0) + field(15).unwrap_or(0);
    ticks * 1_000_000_000 / ticks_per_s.max(1) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No socket; connect again at `retry_at` (while the run goes on).
    Idle {
        retry_at: u64,
    },
    Connecting,
    Open,
    /// Shut down; waiting for the kernel to finish this socket's operations.
    Closing {
        retry_at: u64,
    },
}

struct Conn {
    fd: RawFd,
    generation: u32,
    phase: Phase,
    connect_in_flight: bool,
    connect_cancelled: bool,
    recv_armed: bool,
    send_in_flight: bool,
    /// Bytes of the batch in the current send, and how many went out.
    send_len: usize,
    sent: usize,
    /// Start times (ns) of the requests sent or assigned, oldest first.
    in_flight: VecDeque<u64>,
    /// Open loop: requests assigned this turn and not yet sent.
    assigned: usize,
    /// In the open loop's queue of free connections.
    queued: bool,
    reader: ResponseReader,
    /// When this connection last made progress: connect started, work given, response complete.
    last_progress: u64,
}

/// Why outstanding requests of a connection are given up.
#[derive(Debug, Clone, Copy)]
enum Lost {
    Closed,
    Timeout,
}

/// One client core: its ring, connections and counts.
pub struct ClientCore {
    // Declared first so it is dropped first: the kernel may reference the
    // buffers and the batch below until the ring is gone.
    ring: IoUring,
    buffers: BufRing,
    batch: Box<[u8]>,
    request_len: usize,
    /// Whether sends post a completion on success (see [`ClientCore::new`]).
    track_sends: bool,
    sockaddr: Box<libc::sockaddr_storage>,
    sockaddr_len: libc::socklen_t,
    timespec: Box<types::Timespec>,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    core: usize,
    cpu: usize,
    conns: Vec<Conn>,
    /// Open loop: connections that may take a request, longest free first.
    ready: VecDeque<u32>,
    /// Slots to connect again at the end of this turn.
    reconnect: Vec<u32>,
    /// Open loop: slots given requests this turn.
    to_send: Vec<u32>,
    tally: Tally,
    latency: Histogram<u64>,
    // Times, ns on the monotonic clock.
    start: u64,
    measure_from: u64,
    end: u64,
    now: u64,
    next_tick: u64,
    measuring: bool,
    running: bool,
    stopped_at: u64,
    drain_deadline: u64,
    cpu_at_start: u64,
    // Open loop schedule.
    period_ns: f64,
    phase_offset: f64,
    next_index: u64,
    next_due: u64,
    // The one armed timer.
    timer_armed: bool,
    timer_target: u64,
    completions: Vec<(u64, i32, u32)>,
}

impl ClientCore {
    /// Builds the core on the calling thread (the ring is bound to it).
    pub fn new(
        core: usize,
        cpu: usize,
        connections: usize,
        plan: Arc<Plan>,
        shared: Arc<Shared>,
    ) -> Result<Self, UringError> {
        let ring = uring::build_ring(RING_ENTRIES)?;
        let want = (connections * 2).next_power_of_two().clamp(64, 1024) as u16;
        let buffers = register_buffers(&ring, want)?;
        let batch = plan.request.repeat(plan.pipeline).into_boxed_slice();
        let (sockaddr, sockaddr_len) = sockaddr_of(plan.addr);
        let head_requests = plan.head_requests;
        let conns = (0..connections)
            .map(|_| Conn {
                fd: -1,
                generation: 0,
                phase: Phase::Idle { retry_at: 0 },
                connect_in_flight: false,
                connect_cancelled: false,
                recv_armed: false,
                send_in_flight: false,
                send_len: 0,
                sent: 0,
                in_flight: VecDeque::with_capacity(plan.pipeline),
                assigned: 0,
                queued: false,
                reader: ResponseReader::new(head_requests),
                last_progress: 0,
            })
            .collect();
        let (period_ns, phase_offset) = match plan.rate {
            Some(rate) => (
                1e9 * plan.cores as f64 / rate,
                core as f64 / plan.cores as f64,
            ),
            None => (0.0, 0.0),
        };
        Ok(Self {
            ring,
            buffers,
            request_len: plan.request.len(),
            // A connection gets its next send only after every response to
            // the last one (closed loop, or open loop with one request in
            // flight), which proves that send complete: it needs no
            // completion, and saves a wake-up per request. With more in
            // flight (open loop, --pipeline > 1) a send may be issued while
            // the last is still in the kernel, so sends are tracked and
            // issued one at a time per connection, in order.
            track_sends: plan.rate.is_some() && plan.pipeline > 1,
            batch,
            sockaddr: Box::new(sockaddr),
            sockaddr_len,
            timespec: Box::new(types::Timespec::new()),
            shared,
            core,
            cpu,
            conns,
            ready: VecDeque::with_capacity(connections),
            reconnect: Vec::with_capacity(connections),
            to_send: Vec::with_capacity(connections),
            tally: Tally::default(),
            latency: new_histogram(),
            start: 0,
            measure_from: 0,
            end: 0,
            now: 0,
            next_tick: 0,
            measuring: false,
            running: true,
            stopped_at: 0,
            drain_deadline: 0,
            cpu_at_start: 0,
            period_ns,
            phase_offset,
            next_index: 0,
            next_due: u64::MAX,
            timer_armed: false,
            timer_target: u64::MAX,
            completions: Vec::with_capacity(256),
            plan,
        })
    }

    fn open_loop(&self) -> bool {
        self.plan.rate.is_some()
    }

    fn due_time(&self, index: u64) -> u64 {
        self.start + ((index as f64 + self.phase_offset) * self.period_ns) as u64
    }

    /// Runs from `start` (ns, shared by all cores) through warm-up, the
    /// measured duration and the drain. Every loop is bounded by the clock.
    pub fn run(mut self, start: u64) -> io::Result<CoreResult> {
        self.start = start;
        self.measure_from = start + self.plan.warmup_ns;
        self.end = self.measure_from + self.plan.duration_ns;
        self.now = now_ns();
        self.next_tick = self.now + TICK_NS;
        if self.open_loop() {
            self.next_due = self.due_time(0);
        }
        self.begin_measuring_if_due();
        for slot in 0..self.conns.len() as u32 {
            self.connect(slot);
        }
        loop {
            let waited = if self.due_soon() {
                // Poll: run completions without sleeping.
                let pending = self.ring.submission().len() as u32;
                // SAFETY: no argument is passed; the flags only ask the
                // kernel to run completions before returning.
                unsafe {
                    self.ring.submitter().enter::<libc::sigset_t>(
                        pending,
                        0,
                        io_uring::EnterFlags::GETEVENTS.bits(),
                        None,
                    )
                }
            } else {
                self.arm_timer();
                self.ring.submit_and_wait(1)
            };
            match waited {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR) | Some(libc::EBUSY) | Some(libc::EAGAIN)
                    ) => {}
                Err(e) => return Err(e),
            }
            self.now = now_ns();
            self.begin_measuring_if_due();
            if self.running && (self.now >= self.end || self.shared.stop.load(Relaxed)) {
                self.stop();
            }
            loop {
                let mut completions = std::mem::take(&mut self.completions);
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
                    self.complete(data, result, flags);
                }
                completions.clear();
                self.completions = completions;
            }
            if self.now >= self.next_tick {
                self.on_tick();
            }
            if self.running && self.open_loop() {
                self.dispatch_due();
            }
            let mut reconnect = std::mem::take(&mut self.reconnect);
            for &slot in &reconnect {
                if self.running && matches!(self.conns[slot as usize].phase, Phase::Idle { .. }) {
                    self.connect(slot);
                }
            }
            reconnect.clear();
            self.reconnect = reconnect;
            if !self.running && (self.drained() || self.now >= self.drain_deadline) {
                return Ok(self.finish());
            }
        }
    }

    fn begin_measuring_if_due(&mut self) {
        if !self.measuring && self.now >= self.measure_from {
            self.measuring = true;
            self.cpu_at_start = thread_cpu_ns();
        }
    }

    /// The run is over: send nothing more, wait for what is in flight.
    fn stop(&mut self) {
        self.running = false;
        self.stopped_at = self.now;
        self.drain_deadline = self.now + self.plan.timeout_ns + 2 * TICK_NS;
        if self.open_loop() {
            // Requests due before the stop (or the end) that never went out.
            let until = self.now.min(self.end) - self.start;
            let due = (until as f64 / self.period_ns - self.phase_offset).ceil();
            self.tally.unsent = (due.max(0.0) as u64).saturating_sub(self.next_index);
        }
        for slot in 0..self.conns.len() as u32 {
            let conn = &self.conns[slot as usize];
            if conn.phase == Phase::Connecting
                || (conn.phase == Phase::Open && conn.in_flight.is_empty())
            {
                self.close(slot, Lost::Closed, u64::MAX);
            }
        }
    }

    fn drained(&self) -> bool {
        self.conns.iter().all(|c| c.in_flight.is_empty())
    }

    fn finish(mut self) -> CoreResult {
        let cpu_ns = thread_cpu_ns().saturating_sub(self.cpu_at_start);
        let now = now_ns();
        self.tally.unfinished = self.conns.iter().map(|c| c.in_flight.len() as u64).sum();
        for conn in &self.conns {
            if conn.fd >= 0 {
                // SAFETY: fd is an open socket of this core. Operations still
                // in the kernel end with the ring, which is dropped before
                // the buffers they reference (field order).
                unsafe {
                    libc::shutdown(conn.fd, libc::SHUT_RDWR);
                    libc::close(conn.fd);
                }
            }
        }
        self.publish();
        CoreResult {
            core: self.core,
            cpu: self.cpu,
            tally: self.tally,
            latency: std::mem::replace(&mut self.latency, new_histogram()),
            cpu_ns: if self.measuring { cpu_ns } else { 0 },
            measured_ns: self.stopped_at.saturating_sub(self.measure_from),
            wall_ns: now.saturating_sub(self.measure_from),
        }
    }

    fn publish(&self) {
        let live = &self.shared.live[self.core];
        live.responses.store(self.tally.responses, Relaxed);
        live.errors.store(
            self.tally.errors.total() + self.tally.responses - self.tally.by_class[2],
            Relaxed,
        );
    }

    fn push(&mut self, entry: &squeue::Entry) {
        // SAFETY: every entry's memory (the batch, the socket address, the
        // timespec, the provided buffers) lives in this core, which outlives
        // its ring: see the field order of ClientCore.
        while unsafe { self.ring.submission().push(entry) }.is_err() {
            // The submission queue is full: hand what is queued to the kernel.
            if self.ring.submit().is_err() {
                std::thread::yield_now();
            }
        }
    }

    /// Open loop: the next request is due so soon that polling is cheaper
    /// than a timer (arming one and taking its interrupt costs more than
    /// [`SPIN_NS`] on a virtual machine, and its lateness would count as
    /// the server's latency).
    fn due_soon(&self) -> bool {
        self.running
            && !self.ready.is_empty()
            && self.next_due != u64::MAX
            && self.next_due <= now_ns() + SPIN_NS
    }

    /// Keeps one absolute timer armed at the earliest time this core must
    /// wake without a completion: the next due request (if a connection is
    /// free to take it), the next tick, the end of the run or of the drain.
    fn arm_timer(&mut self) {
        let mut target = self.next_tick;
        if self.running {
            target = target.min(self.end);
            if self.open_loop() && !self.ready.is_empty() {
                target = target.min(self.next_due);
            }
        } else {
            target = target.min(self.drain_deadline);
        }
        if self.timer_armed && target >= self.timer_target {
            return;
        }
        *self.timespec = types::Timespec::new()
            .sec(target / 1_000_000_000)
            .nsec((target % 1_000_000_000) as u32);
        // The kernel copies the timespec when it takes the entry, within
        // this turn's io_uring_enter; one timer entry per turn at most.
        let entry = if self.timer_armed {
            // No completion when it succeeds: it would end the next wait at once.
            opcode::TimeoutUpdate::new(user_data(KIND_TIMER, 0, 0), &*self.timespec)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .flags(squeue::Flags::SKIP_SUCCESS)
                .user_data(user_data(KIND_TIMER_UPDATE, 0, 0))
        } else {
            opcode::Timeout::new(&*self.timespec)
                .flags(types::TimeoutFlags::ABS)
                .build()
                .user_data(user_data(KIND_TIMER, 0, 0))
        };
        self.timer_armed = true;
        self.timer_target = target;
        self.push(&entry);
    }

    fn complete(&mut self, data: u64, result: i32, flags: u32) {
        let (kind, generation, slot) = split_user_data(data);
        match kind {
            KIND_CONNECT => self.on_connect(slot, generation, result),
            KIND_RECV => self.on_recv(slot, generation, result, flags),
            KIND_SEND => self.on_send(slot, generation, result),
            KIND_TIMER => {
                self.timer_armed = false;
                self.timer_target = u64::MAX;
            }
            _ => {}
        }
    }

    fn connect(&mut self, slot: u32) {
        let now = self.now;
        let family = if self.plan.addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket() returns a new descriptor or -1.
        let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            if self.measuring {
                self.tally.errors.connect += 1;
            }
            self.conns[slot as usize].phase = Phase::Idle {
                retry_at: now + TICK_NS,
            };
            return;
        }
        set_nodelay(fd);
        let conn = &mut self.conns[slot as usize];
        conn.fd = fd;
        conn.generation = conn.generation.wrapping_add(1) & 0x00ff_ffff;
        conn.phase = Phase::Connecting;
        conn.connect_in_flight = true;
        conn.connect_cancelled = false;
        conn.last_progress = now;
        conn.reader.reset();
        let entry = opcode::Connect::new(
            types::Fd(fd),
            (&*self.sockaddr as *const libc::sockaddr_storage).cast(),
            self.sockaddr_len,
        )
        .build()
        .user_data(user_data(KIND_CONNECT, conn.generation, slot));
        self.push(&entry);
    }

    fn on_connect(&mut self, slot: u32, generation: u32, result: i32) {
        let now = self.now;
        let measuring = self.measuring;
        let running = self.running;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        conn.connect_in_flight = false;
        if conn.phase != Phase::Connecting {
            self.finish_close(slot);
            return;
        }
        if result < 0 {
            if measuring {
                self.tally.errors.connect += 1;
            }
            self.close(slot, Lost::Closed, now + TICK_NS);
            return;
        }
        conn.phase = Phase::Open;
        conn.last_progress = now;
        self.arm_recv(slot);
        if !running {
            self.close(slot, Lost::Closed, u64::MAX);
        } else if self.open_loop() {
            self.make_ready(slot);
        } else {
            self.send_batch(slot);
        }
    }

    fn arm_recv(&mut self, slot: u32) {
        let group = self.buffers.group;
        let conn = &mut self.conns[slot as usize];
        let entry = opcode::RecvMulti::new(types::Fd(conn.fd), group)
            .build()
            .user_data(user_data(KIND_RECV, conn.generation, slot));
        conn.recv_armed = true;
        self.push(&entry);
    }

    /// Closed loop: sends one batch of `pipeline` requests, all starting now.
    fn send_batch(&mut self, slot: u32) {
        let now = self.now;
        let pipeline = self.plan.pipeline;
        let conn = &mut self.conns[slot as usize];
        conn.in_flight.extend(std::iter::repeat_n(now, pipeline));
        conn.last_progress = now;
        self.start_send(slot, pipeline);
    }

    fn start_send(&mut self, slot: u32, requests: usize) {
        if self.measuring {
            self.tally.sends += 1;
            self.tally.requests_sent += requests as u64;
        }
        let len = requests * self.request_len;
        let tracked = self.track_sends;
        let conn = &mut self.conns[slot as usize];
        conn.send_len = len;
        conn.sent = 0;
        conn.send_in_flight = tracked;
        let entry = send_entry(&self.batch, conn, slot, tracked);
        self.push(&entry);
    }

    fn on_send(&mut self, slot: u32, generation: u32, result: i32) {
        let running = self.running;
        let tracked = self.track_sends;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            return;
        };
        conn.send_in_flight = false;
        if conn.phase != Phase::Open {
            self.finish_close(slot);
            return;
        }
        // An untracked send completes only when it failed (perhaps after
        // sending part: its result then counts those bytes).
        if result <= 0 || !tracked {
            self.close(slot, Lost::Closed, self.now + TICK_NS);
            return;
        }
        conn.sent += result as usize;
        if conn.sent < conn.send_len {
            conn.send_in_flight = true;
            let entry = send_entry(&self.batch, conn, slot, true);
            self.push(&entry);
            return;
        }
        let idle = conn.in_flight.is_empty();
        if !running {
            return;
        }
        if self.open_loop() {
            self.make_ready(slot);
        } else if idle {
            self.send_batch(slot);
        }
    }

    fn on_recv(&mut self, slot: u32, generation: u32, result: i32, flags: u32) {
        let more = cqueue::more(flags);
        let bid = cqueue::buffer_select(flags);
        let now = self.now;
        let measuring = self.measuring;
        let Some(conn) = live_conn(&mut self.conns, slot, generation) else {
            if let Some(bid) = bid {
                self.buffers.recycle(bid);
            }
            return;
        };
        if !more {
            conn.recv_armed = false;
        }
        if conn.phase != Phase::Open {
            if let Some(bid) = bid {
                self.buffers.recycle(bid);
            }
            self.finish_close(slot);
            return;
        }
        let mut seen = Seen::default();
        let Conn {
            reader, in_flight, ..
        } = &mut *conn;
        let mut done = |status| {
            record(
                in_flight,
                &mut self.tally,
                &mut self.latency,
                &mut seen,
                measuring,
                now,
                status,
            )
        };
        let parsed = match (result, bid) {
            (1.., Some(bid)) => {
                let parsed = reader.feed(self.buffers.filled(bid, result as usize), &mut done);
                self.buffers.recycle(bid);
                parsed
            }
            _ if result == -libc::ENOBUFS => Ok(()),
            _ => {
                // The server closed (0) or reset the connection; a response
                // without a length ends here.
                if result == 0 {
                    reader.eof(&mut done);
                }
                let retry = if in_flight.is_empty() {
                    now
                } else {
                    now + TICK_NS
                };
                self.close(slot, Lost::Closed, retry);
                return;
            }
        };
        if measuring && result > 0 {
            self.tally.bytes += result as u64;
        }
        if parsed.is_err() || seen.unsolicited {
            // The stream cannot be trusted: the request at its head failed,
            // those behind it are lost with the connection.
            if measuring {
                self.tally.errors.malformed += 1;
            }
            conn.in_flight.pop_front();
            self.close(slot, Lost::Closed, now + TICK_NS);
            return;
        }
        if seen.responses > 0 {
            conn.last_progress = now;
        }
        if conn.reader.wants_close() {
            // The server closes after this response: what was pipelined
            // behind it is lost. Connect again at once if nothing was.
            let retry = if conn.in_flight.is_empty() {
                now
            } else {
                now + TICK_NS
            };
            self.close(slot, Lost::Closed, retry);
            return;
        }
        if !conn.recv_armed {
            self.arm_recv(slot);
        }
        let conn = &self.conns[slot as usize];
        if self.running && !conn.send_in_flight {
            if self.open_loop() {
                self.make_ready(slot);
            } else if conn.in_flight.is_empty() {
                self.send_batch(slot);
            }
        }
    }

    /// Gives up on a connection: its outstanding requests count as `lost`,
    /// the socket is shut down (ending its receive), and it connects again
    /// at `retry_at` once the kernel is done with it.
    fn close(&mut self, slot: u32, lost: Lost, retry_at: u64) {
        let measuring = self.measuring;
        let conn = &mut self.conns[slot as usize];
        if !matches!(conn.phase, Phase::Open | Phase::Connecting) {
            return;
        }
        let outstanding = conn.in_flight.len() as u64;
        if measuring {
            match lost {
                Lost::Closed => self.tally.errors.closed += outstanding,
                Lost::Timeout => self.tally.errors.timeout += outstanding,
            }
        }
        conn.in_flight.clear();
        conn.assigned = 0;
        conn.reader.reset();
        conn.phase = Phase::Closing { retry_at };
        // SAFETY: fd is this connection's open socket; shutting it down
        // completes its pending receive (and a stalled send) at once.
        unsafe { libc::shutdown(conn.fd, libc::SHUT_RDWR) };
        if conn.connect_in_flight && !conn.connect_cancelled {
            conn.connect_cancelled = true;
            let cancel = opcode::AsyncCancel::new(user_data(KIND_CONNECT, conn.generation, slot))
                .build()
                .user_data(user_data(KIND_CANCEL, 0, 0));
            self.push(&cancel);
        }
        self.finish_close(slot);
    }

    /// Closes the descriptor once no operation of it is in the kernel.
    fn finish_close(&mut self, slot: u32) {
        let now = self.now;
        let conn = &mut self.conns[slot as usize];
        let Phase::Closing { retry_at } = conn.phase else {
            return;
        };
        if conn.recv_armed || conn.send_in_flight || conn.connect_in_flight {
            return;
        }
        // SAFETY: no operation on fd is in flight, and nothing else owns it.
        unsafe { libc::close(conn.fd) };
        conn.fd = -1;
        conn.queued = false;
        conn.phase = Phase::Idle { retry_at };
        if retry_at <= now {
            self.reconnect.push(slot);
        }
    }

    /// Open loop: this connection may take another request.
    fn make_ready(&mut self, slot: u32) {
        let pipeline = self.plan.pipeline;
        let conn = &mut self.conns[slot as usize];
        if !conn.queued
            && conn.phase == Phase::Open
            && !conn.send_in_flight
            && conn.in_flight.len() < pipeline
        {
            conn.queued = true;
            self.ready.push_back(slot);
        }
    }

    /// Open loop: gives every request due by now to a free connection, then
    /// sends each connection's share in one send.
    fn dispatch_due(&mut self) {
        let pipeline = self.plan.pipeline;
        while self.next_due <= self.now && self.next_due < self.end {
            let Some(slot) = self.ready.pop_front() else {
                break;
            };
            let conn = &mut self.conns[slot as usize];
            conn.queued = false;
            if conn.phase != Phase::Open || conn.send_in_flight || conn.in_flight.len() >= pipeline
            {
                continue;
            }
            if conn.in_flight.is_empty() {
                conn.last_progress = self.now;
            }
            conn.in_flight.push_back(self.next_due);
            conn.assigned += 1;
            if conn.assigned == 1 {
                self.to_send.push(slot);
            }
            if conn.in_flight.len() < pipeline {
                conn.queued = true;
                self.ready.push_back(slot);
            }
            self.next_index += 1;
            self.next_due = self.due_time(self.next_index);
        }
        if self.next_due >= self.end {
            self.next_due = u64::MAX;
        }
        let mut to_send = std::mem::take(&mut self.to_send);
        for &slot in &to_send {
            let requests = std::mem::take(&mut self.conns[slot as usize].assigned);
            if requests > 0 {
                self.start_send(slot, requests);
            }
        }
        to_send.clear();
        self.to_send = to_send;
    }

    /// Every tick: timeouts, connects to retry, counters for the live line.
    fn on_tick(&mut self) {
        let now = self.now;
        while self.next_tick <= now {
            self.next_tick += TICK_NS;
        }
        let timeout = self.plan.timeout_ns;
        for slot in 0..self.conns.len() as u32 {
            let conn = &self.conns[slot as usize];
            let waited = now.saturating_sub(conn.last_progress);
            match conn.phase {
                Phase::Open if !conn.in_flight.is_empty() && waited >= timeout => {
                    self.close(slot, Lost::Timeout, now);
                }
                Phase::Connecting if waited >= timeout => {
                    if self.measuring {
                        self.tally.errors.connect += 1;
                    }
                    self.close(slot, Lost::Closed, now + TICK_NS);
                }
                Phase::Idle { retry_at } if retry_at <= now && self.running => {
                    self.connect(slot);
                }
                _ => {}
            }
        }
        self.publish();
    }
}

/// What one receive completed.
#[derive(Default)]
struct Seen {
    responses: u32,
    /// A response arrived with no request outstanding.
    unsolicited: bool,
}

/// The connection in `slot` if `generation` is still its current one.
fn live_conn(conns: &mut [Conn], slot: u32, generation: u32) -> Option<&mut Conn> {
    conns
        .get_mut(slot as usize)
        .filter(|c| c.generation == generation && c.fd >= 0)
}

/// Counts one complete response and records its latency.
fn record(
    in_flight: &mut VecDeque<u64>,
    tally: &mut Tally,
    latency: &mut Histogram<u64>,
    seen: &mut Seen,
    measuring: bool,
    now: u64,
    status: u16,
) {
    let Some(start) = in_flight.pop_front() else {
        seen.unsolicited = true;
        return;
    };
    seen.responses += 1;
    if !measuring {
        return;
    }
    tally.responses += 1;
    let class = usize::from(status / 100);
    tally.by_class[if class < 6 { class } else { 0 }] += 1;
    latency.saturating_record(now.saturating_sub(start).max(1));
}

/// A send of the rest of the connection's batch. An untracked send asks
/// the kernel to send it all (`MSG_WAITALL`) and to post no completion
/// unless it fails.
fn send_entry(batch: &[u8], conn: &Conn, slot: u32, tracked: bool) -> squeue::Entry {
    let rest = &batch[conn.sent..conn.send_len];
    let (msg_flags, sqe_flags) = if tracked {
        (libc::MSG_NOSIGNAL, squeue::Flags::empty())
    } else {
        (
            libc::MSG_NOSIGNAL | libc::MSG_WAITALL,
            squeue::Flags::SKIP_SUCCESS,
        )
    };
    opcode::Send::new(types::Fd(conn.fd), rest.as_ptr(), rest.len() as u32)
        .flags(msg_flags)
        .build()
        .flags(sqe_flags)
        .user_data(user_data(KIND_SEND, conn.generation, slot))
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

fn sockaddr_of(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Registers the receive buffers, with fewer if locked memory is short.
fn register_buffers(ring: &IoUring, count: u16) -> Result<BufRing, UringError> {
    let mut count = count;
    loop {
        match BufRing::register(&ring.submitter(), count, RECV_BUFFER_SIZE, BUFFER_GROUP) {
            Ok(buffers) => return Ok(buffers),
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) && count > 16 => count /= 2,
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => {
                return Err(uring::locked_memory("its receive buffer ring", e))
            }
            Err(e) => return Err(uring::classify(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_round_trips() {
        let data = user_data(KIND_SEND, 0x12_3456, 77);
        assert_eq!(split_user_data(data), (KIND_SEND, 0x12_3456, 77));
    }

    #[test]
    fn thread_cpu_time_moves() {
        let before = thread_cpu_ns();
        let t = now_ns();
        let mut x = 0u64;
        while now_ns() - t < 50_000_000 {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(thread_cpu_ns() > before, "50 ms of spinning shows in /proc");
    }
}

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
//! The io_uring plumbing is shared with the server: the core's [`Ring`],
//! the entries of [`crate::net::ops`], and one [`Outbound`] per connection,
//! which creates the socket, connects, receives and sends, and closes the
//! descriptor only when none of its operations is still in the kernel.
//! Every completion carries `user_data` = kind | generation | slot, so a
//! completion of an old connection is recognised by its generation and
//! dropped.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use hdrhistogram::Histogram;
use io_uring::{opcode, squeue, types};

use super::response::ResponseReader;
use crate::net::bufring::BufRing;
use crate::net::outbound::{Completion, Kinds, Outbound, Recv, SendBuf, Sent, State};
use crate::net::ring::{self, Ring};
use crate::runtime::uring::{split_user_data, user_data, UringError};

const KIND_CONNECT: u64 = 1;
const KIND_RECV: u64 = 2;
const KIND_SEND: u64 = 3;
const KIND_TIMER: u64 = 4;
const KIND_TIMER_UPDATE: u64 = 5;
const KIND_CANCEL: u64 = 6;
const KINDS: Kinds = Kinds {
    connect: KIND_CONNECT,
    recv: KIND_RECV,
    send: KIND_SEND,
    cancel: KIND_CANCEL,
};

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

/// The first `len` bytes of the core's pre-rendered batch: what one send
/// carries, without copying it.
struct Batch {
    bytes: Rc<[u8]>,
    len: usize,
}

impl AsRef<[u8]> for Batch {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

// SAFETY: the bytes are the Rc's heap allocation, shared and never
// written; moving a Batch moves only the pointer, and `len` never changes.
unsafe impl SendBuf for Batch {}

struct Conn {
    /// The socket and its operations.
    net: Outbound<Batch>,
    /// When to connect again once closed (while the run goes on).
    retry_at: u64,
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
    // buffers, the batch and the timespec below until the ring is gone.
    ring: Ring,
    buffers: BufRing,
    batch: Rc<[u8]>,
    request_len: usize,
    /// Whether sends post a completion on success (see [`ClientCore::new`]).
    track_sends: bool,
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
        let ring = Ring::new(RING_ENTRIES)?;
        let want = (connections * 2).next_power_of_two().clamp(64, 1024) as u16;
        let buffers = ring::register_buffers(&ring, want, RECV_BUFFER_SIZE, BUFFER_GROUP)?;
        let batch: Rc<[u8]> = plan.request.repeat(plan.pipeline).into();
        let head_requests = plan.head_requests;
        let conns = (0..connections)
            .map(|slot| Conn {
                net: Outbound::new(slot as u32, KINDS),
                retry_at: 0,
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
            if self.due_soon() {
                // Poll: run completions without sleeping.
                self.ring.submit_and_poll()?;
            } else {
                self.arm_timer();
                self.ring.submit_and_wait(1)?;
            }
            self.now = now_ns();
            self.begin_measuring_if_due();
            if self.running && (self.now >= self.end || self.shared.stop.load(Relaxed)) {
                self.stop();
            }
            loop {
                let mut completions = std::mem::take(&mut self.completions);
                if self.ring.drain(&mut completions) == 0 {
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
                if self.running && self.conns[slot as usize].net.state() == State::Idle {
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
            let state = conn.net.state();
            if state == State::Connecting || (state == State::Open && conn.in_flight.is_empty()) {
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
        // The sockets close when the connections drop, after the ring
        // (field order): operations still in the kernel end with it.
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
        // SAFETY: the timespec is boxed in this core, which drops its ring
        // first (field order); the kernel reads it when it takes the entry.
        unsafe { self.ring.push(&entry) };
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
        let conn = &mut self.conns[slot as usize];
        if conn.net.connect(&mut self.ring, self.plan.addr).is_err() {
            // Out of descriptors, most likely: try again at the next tick.
            if self.measuring {
                self.tally.errors.connect += 1;
            }
            conn.retry_at = now + TICK_NS;
            return;
        }
        conn.last_progress = now;
        conn.reader.reset();
    }

    fn on_connect(&mut self, slot: u32, generation: u32, result: i32) {
        let now = self.now;
        let running = self.running;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        match conn.net.on_connect(generation, result) {
            Completion::Stale | Completion::Closing => {}
            Completion::Closed => self.closed(slot),
            Completion::Live(Err(_)) => {
                // Refused, unreachable: the socket is closed already.
                if self.measuring {
                    self.tally.errors.connect += 1;
                }
                conn.retry_at = now + TICK_NS;
            }
            Completion::Live(Ok(())) => {
                conn.last_progress = now;
                conn.net.arm_recv(&mut self.ring, &self.buffers);
                if !running {
                    self.close(slot, Lost::Closed, u64::MAX);
                } else if self.open_loop() {
                    self.make_ready(slot);
                } else {
                    self.send_batch(slot);
                }
            }
        }
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
        let batch = Batch {
            bytes: Rc::clone(&self.batch),
            len: requests * self.request_len,
        };
        let conn = &mut self.conns[slot as usize];
        let started = if self.track_sends {
            conn.net.send(&mut self.ring, batch)
        } else {
            // SAFETY: the Batch shares the core's batch, which the core
            // keeps until after its ring is dropped (field order), so the
            // bytes stay valid whenever the kernel is done with them.
            unsafe { conn.net.send_quiet(&mut self.ring, batch) }
        };
        if started.is_err() {
            // Not open, or a send in flight: callers check both first.
            self.close(slot, Lost::Closed, self.now + TICK_NS);
        }
    }

    fn on_send(&mut self, slot: u32, generation: u32, result: i32) {
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            return;
        };
        match conn.net.on_send(&mut self.ring, generation, result) {
            Completion::Stale | Completion::Closing | Completion::Live(Sent::Sending) => {}
            Completion::Closed => self.closed(slot),
            // A quiet send completes only when it failed (perhaps after
            // sending part).
            Completion::Live(Sent::Failed(_)) => {
                self.close(slot, Lost::Closed, self.now + TICK_NS);
            }
            Completion::Live(Sent::Done(_)) => {
                let idle = conn.in_flight.is_empty();
                if !self.running {
                    return;
                }
                if self.open_loop() {
                    self.make_ready(slot);
                } else if idle {
                    self.send_batch(slot);
                }
            }
        }
    }

    fn on_recv(&mut self, slot: u32, generation: u32, result: i32, flags: u32) {
        let now = self.now;
        let measuring = self.measuring;
        let Some(conn) = self.conns.get_mut(slot as usize) else {
            if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
                self.buffers.recycle(bid);
            }
            return;
        };
        let mut seen = Seen::default();
        let Conn {
            net,
            reader,
            in_flight,
            ..
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
        let mut parsed = Ok(());
        let completion = net.on_recv(&mut self.buffers, generation, result, flags, |bytes| {
            parsed = reader.feed(bytes, &mut done)
        });
        let recv = match completion {
            Completion::Stale | Completion::Closing => return,
            Completion::Closed => return self.closed(slot),
            Completion::Live(recv) => recv,
        };
        match recv {
            Recv::Data(len) if measuring => self.tally.bytes += len as u64,
            Recv::Data(_) | Recv::NoBuffers => {}
            Recv::Eof | Recv::Error(_) => {
                // The server closed or reset the connection; a response
                // without a length ends here.
                if recv == Recv::Eof {
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
        conn.net.arm_recv(&mut self.ring, &self.buffers);
        let (sending, idle) = (conn.net.send_in_flight(), conn.in_flight.is_empty());
        if self.running && !sending {
            if self.open_loop() {
                self.make_ready(slot);
            } else if idle {
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
        if !matches!(conn.net.state(), State::Open | State::Connecting) {
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
        conn.retry_at = retry_at;
        if conn.net.close(&mut self.ring) {
            self.closed(slot);
        }
    }

    /// The socket of `slot` is closed: connect again now if it is time.
    fn closed(&mut self, slot: u32) {
        let conn = &mut self.conns[slot as usize];
        conn.queued = false;
        if conn.retry_at <= self.now {
            self.reconnect.push(slot);
        }
    }
    /// Open loop: this connection may take another request.
    fn make_ready(&mut self, slot: u32) {
        let pipeline = self.plan.pipeline;
        let conn = &mut self.conns[slot as usize];
        if !conn.queued
            && conn.net.state() == State::Open
            && !conn.net.send_in_flight()
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
            if conn.net.state() != State::Open
                || conn.net.send_in_flight()
                || conn.in_flight.len() >= pipeline
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
            match conn.net.state() {
                State::Open if !conn.in_flight.is_empty() && waited >= timeout => {
                    self.close(slot, Lost::Timeout, now);
                }
                State::Connecting if waited >= timeout => {
                    if self.measuring {
                        self.tally.errors.connect += 1;
                    }
                    self.close(slot, Lost::Closed, now + TICK_NS);
                }
                State::Idle if conn.retry_at <= now && self.running => {
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

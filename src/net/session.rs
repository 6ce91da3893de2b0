//! One connection's HTTP/1.1 state machine, independent of how bytes arrive: parse in place, answer in order.

use std::mem::{self, MaybeUninit};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::service::{Awaiting, ConnId, Handled, Service};
use crate::http::parse::{self, Framing, Limits, HEADER_SLOTS};
use crate::http::response::{FileBody, CONTINUE_100};
use crate::http::HttpError;

/// Stop answering pipelined requests once this much output is waiting: the
/// client is not reading, and memory must stay bounded.
pub const OUTPUT_HIGH_WATER: usize = 256 * 1024;

/// What a connection's later requests wait for before they are answered.
#[derive(Default)]
enum Waiting {
    #[default]
    Nothing,
    /// The body of the last answer, to be sent from a file before anything else.
    File(FileBody),
    /// The last request's answer, which another thread or core will give.
    Answer(Awaiting),
}

/// The per-connection protocol state. The io layer feeds it bytes and sends
/// what it writes into the output buffer.
#[derive(Default)]
pub struct Session {
    /// This connection, as the address deferred answers come back to.
    id: ConnId,
    /// Bytes not yet answered: a request that spans receives, or requests
    /// held back while output is above the high-water mark.
    pending: Vec<u8>,
    /// The decoded body of a chunked request, reused across requests.
    chunked_body: Vec<u8>,
    continue_sent: bool,
    /// When the head of the request in progress began to arrive.
    head_started: Option<Instant>,
    /// When the body of the request in progress began to be awaited.
    body_started: Option<Instant>,
    closing: bool,
    /// The peer's address, for rate limiting.
    peer: Option<IpAddr>,
    /// Which of the core's listeners accepted it (0: the main one).
    listener: usize,
    /// The request in progress passed the rate limiter; its header lines.
    admitted: bool,
    rate_headers: Vec<u8>,
    /// What later requests wait for, if anything: at most one thing at a time.
    waiting: Waiting,
    /// The peer shut its sending side: answer what it sent, then close.
    input_finished: bool,
}

impl Session {
    pub fn new(id: ConnId, peer: Option<IpAddr>) -> Self {
        Self {
            id,
            peer,
            ..Self::default()
        }
    }

    /// The session of a connection accepted by the core's listener `listener`.
    pub fn via(mut self, listener: usize) -> Self {
        self.listener = listener;
        self
    }

    /// True once the connection will read no more requests: close after the output is sent.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes received but not yet answered.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// True when no request is in progress.
    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && matches!(self.waiting, Waiting::Nothing)
    }

    /// Writes the answer to the request that was waiting for it; later
    /// requests then proceed (call [`Self::resume`]).
    pub fn answer<S: Service>(&mut self, answer: S::Answer, out: &mut Vec<u8>, service: &mut S) {
        let Waiting::Answer(awaiting) = std::mem::take(&mut self.waiting) else {
            return;
        };
        // The rate limiter's header lines of this request are still in
        // `rate_headers`: no later request is admitted while it waits.
        service.render_answer(answer, &awaiting, &self.rate_headers, out);
        // While draining the answer says `Connection: close`; keep to it.
        if !awaiting.keep_alive || service.is_draining() {
            self.close();
        }
    }

    /// The file body the io layer must send next, after the output written so far.
    pub fn take_file(&mut self) -> Option<FileBody> {
        match std::mem::take(&mut self.waiting) {
            Waiting::File(body) => Some(body),
            other => {
                self.waiting = other;
                None
            }
        }
    }

    /// The peer sent its last byte (EOF). Requests already received are
    /// still answered; [`Self::is_done`] says when nothing more is owed.
    pub fn finish_input(&mut self) {
        self.input_finished = true;
    }

    /// True when the connection owes the peer nothing more and will get no
    /// more requests: it closed its side and every complete request is answered.
    pub fn is_done(&self) -> bool {
        self.input_finished && matches!(self.waiting, Waiting::Nothing)
    }

    /// True while later requests must wait: a file body or a deferred answer is pending.
    pub fn is_blocked(&self) -> bool {
        !matches!(self.waiting, Waiting::Nothing)
    }

    /// Stops reading requests; whatever is already answered is still sent.
    pub fn close(&mut self) {
        // A file body already promised by a sent head still goes out.
        self.closing = true;
        self.pending = Vec::new();
        self.head_started = None;
        self.body_started = None;
    }

    /// Handles received bytes: answers every complete request, in order, into `out`.
    pub fn receive<S: Service>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        service: &mut S,
        limits: &Limits,
        now: Instant,
    ) {
        if self.closing {
            return;
        }
        if self.pending.is_empty() {
            // The common case: parse straight from the receive buffer.
            let used = self.serve(data, out, service, limits, now);
            if !self.closing && used < data.len() {
                self.pending.extend_from_slice(&data[used..]);
            }
        } else {
            self.pending.extend_from_slice(data);
            self.resume(out, service, limits, now);
        }
    }

    /// Answers requests held in `pending` (after output drained).
    pub fn resume<S: Service>(
        &mut self,
        out: &mut Vec<u8>,
        service: &mut S,
        limits: &Limits,
        now: Instant,
    ) {
        if self.pending.is_empty() || self.closing || self.is_blocked() {
            return;
        }
        let mut pending = mem::take(&mut self.pending);
        let used = self.serve(&pending, out, service, limits, now);
        if !self.closing {
            pending.drain(..used);
            self.pending = pending;
        }
    }

    /// Answers the request in progress with 408 if its head or its body is
    /// overdue (a slowloris on either). Returns true if it did (the
    /// connection then closes).
    pub fn check_request_timeouts<S: Service>(
        &mut self,
        out: &mut Vec<u8>,
        service: &mut S,
        header_timeout: Duration,
        body_timeout: Duration,
        now: Instant,
    ) -> bool {
        let overdue = |started: Option<Instant>, timeout: Duration| {
            started.is_some_and(|s| now.duration_since(s) >= timeout)
        };
        let error = if overdue(self.head_started, header_timeout) {
            HttpError::HeaderTimeout {
                seconds: header_timeout.as_secs(),
            }
        } else if overdue(self.body_started, body_timeout) {
            HttpError::BodyTimeout {
                seconds: body_timeout.as_secs(),
            }
        } else {
            return false;
        };
        service.reject(&error, out);
        self.close();
        true
    }

    /// Answers complete requests at the start of `data`; returns the bytes used.
    fn serve<S: Service>(
        &mut self,
        data: &[u8],
        out: &mut Vec<u8>,
        service: &mut S,
        limits: &Limits,
        now: Instant,
    ) -> usize {
        let mut used = 0;
        // A file body in flight must go out before any later answer.
        while used < data.len() && out.len() < OUTPUT_HIGH_WATER && !self.is_blocked() {
            let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
            let head = match parse::parse_head(&data[used..], &mut slots, limits) {
                Ok(Some(head)) => head,
                Ok(None) => {
                    self.head_started.get_or_insert(now);
                    break;
                }
                Err(error) => {
                    service.reject(&error, out);
                    self.close();
                    return data.len();
                }
            };
            self.head_started = None;
            let body_start = used + head.len;
            let waiting = &data[body_start..];
            // Rate-limit as soon as the head is in, before reading any body.
            if !self.admitted {
                // A refused request's body is never read: without one the
                // connection carries on, with one it closes.
                let bodiless = head.framing == Framing::None;
                if !service.admit(
                    &head,
                    self.peer,
                    self.listener,
                    now,
                    bodiless,
                    &mut self.rate_headers,
                    out,
                ) {
                    if bodiless && head.keep_alive && !service.is_draining() {
                        used = body_start;
                        continue;
                    }
                    self.close();
                    return data.len();
                }
                self.admitted = true;
            }
            let (body, end): (&[u8], usize) = match head.framing {
                Framing::None => (&[], body_start),
                Framing::Length(n) if waiting.len() >= n => (&waiting[..n], body_start + n),
                Framing::Length(_) => {
                    self.ask_for_body(head.expect_continue, out);
                    self.body_started.get_or_insert(now);
                    break;
                }
                Framing::Chunked => match parse::chunked_extent(waiting, limits) {
                    Ok(Some(extent)) => {
                        parse::decode_chunked(&waiting[..extent], &mut self.chunked_body);
                        (&self.chunked_body, body_start + extent)
                    }
                    Ok(None) => {
                        self.ask_for_body(head.expect_continue, out);
                        self.body_started.get_or_insert(now);
                        break;
                    }
                    Err(error) => {
                        service.reject(&error, out);
                        self.close();
                        return data.len();
                    }
                },
            };
            let handled = service.handle(self.id, &head, body, &self.rate_headers, out);
            self.continue_sent = false;
            self.admitted = false;
            self.body_started = None;
            used = end;
            let keep_alive = match handled {
                Handled::Answered { keep_alive, file } => {
                    if let Some(body) = file {
                        self.waiting = Waiting::File(body);
                    }
                    keep_alive
                }
                Handled::Deferred(awaiting) => {
                    // Later requests wait for this answer, to stay in order.
                    self.waiting = Waiting::Answer(awaiting);
                    return used;
                }
            };
            if !keep_alive {
                self.close();
                return data.len();
            }
        }
        used
    }

    fn ask_for_body(&mut self, expect_continue: bool, out: &mut Vec<u8>) {
        if expect_continue && !self.continue_sent {
            out.extend_from_slice(CONTINUE_100);
            self.continue_sent = true;
        }
    }
}

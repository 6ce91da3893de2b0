//! One outbound TCP connection driven on a [`Ring`] by the ring's owner: connect, multishot receive, sends of owned buffers, and a close that waits for the kernel.
//!
//! An [`Outbound`] lives in a fixed slot of its owner (a load generator's
//! client core, an io core's database connection) and can connect again
//! after it closed. Each connection it makes gets a new generation; its
//! operations carry `user_data` = kind | generation | slot
//! ([`crate::runtime::uring::user_data`]) with the owner's [`Kinds`], and
//! the owner hands every completion of those kinds back to the matching
//! `on_*` method, which drops one of an earlier connection.
//!
//! What the kernel reads stays owned by the connection until it is done:
//! the socket address until the connect completes, a send's buffer until
//! the send completes. The socket is closed only when none of its
//! operations is in flight, so its descriptor cannot be reused under one.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::cqueue;
use socket2::SockAddr;

use super::bufring::BufRing;
use super::ops;
use super::ring::Ring;
use crate::runtime::uring::user_data;

/// The `user_data` kinds the owner reserves for its outbound connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    pub connect: u64,
    pub recv: u64,
    pub send: u64,
    /// The kind of cancel entries, whose completions the owner ignores.
    pub cancel: u64,
}

/// A buffer whose bytes stay where they are when the value moves, and as
/// long as it lives (heap storage): what a send may point the kernel to.
///
/// # Safety
///
/// `as_ref` must return the same bytes, at the same address, from every
/// call while the value lives, wherever the value is moved to.
pub unsafe trait SendBuf: AsRef<[u8]> {}

// SAFETY: the bytes are on the heap; moving the Vec moves only its pointer.
unsafe impl SendBuf for Vec<u8> {}
// SAFETY: as for Vec.
unsafe impl SendBuf for Box<[u8]> {}
// SAFETY: as for Vec; the bytes are shared and immutable.
unsafe impl SendBuf for std::rc::Rc<[u8]> {}
// SAFETY: as for Rc.
unsafe impl SendBuf for std::sync::Arc<[u8]> {}

/// Where the connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No socket.
    Idle,
    Connecting,
    Open,
    /// Shut down; waiting for the kernel to finish the socket's operations.
    Closing,
}

/// What a completion meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion<T> {
    /// Of an earlier connection in this slot: ignore it.
    Stale,
    /// Of a connection that is closing, which still has operations in flight.
    Closing,
    /// The last operation of a closing connection: the socket is closed, the
    /// slot is [`State::Idle`] and may connect again.
    Closed,
    /// Of the live connection.
    Live(T),
}

/// What a receive completion brought.
#[derive(Debug, PartialEq, Eq)]
pub enum Recv {
    /// This many bytes, already handed to the caller's closure.
    Data(usize),
    /// Every provided buffer was in use; the receive ended (re-arm it).
    NoBuffers,
    /// The peer closed its side.
    Eof,
    /// The receive failed with this errno.
    Error(i32),
}

/// What a send completion meant.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent<B> {
    /// Part went out; the rest was sent again.
    Sending,
    /// All of it went out: the buffer, back to the caller.
    Done(B),
    /// The send failed (errno), or a quiet send posted its failure (its
    /// result, perhaps the bytes that went out before it failed).
    Failed(i32),
}

/// One outbound TCP connection on a ring; see the module docs.
///
/// Dropping it closes its socket. If an operation is still in flight then
/// (the owner dropped it while the ring lives), the memory that operation
/// points to is leaked rather than freed under the kernel.
pub struct Outbound<B: SendBuf = Vec<u8>> {
    slot: u32,
    kinds: Kinds,
    generation: u32,
    state: State,
    socket: Option<OwnedFd>,
    /// Boxed: its address is in the connect entry until the completion.
    addr: Box<SockAddr>,
    connect_in_flight: bool,
    recv_armed: bool,
    send_in_flight: bool,
    /// The buffer of the last send, kept until the kernel is done with it
    /// (a quiet send: until the next send).
    sending: Option<B>,
    sent: usize,
}

impl<B: SendBuf> Outbound<B> {
    /// An idle connection for slot `slot` whose operations carry `kinds`.
    pub fn new(slot: u32, kinds: Kinds) -> Self {
        Self {
            slot,
            kinds,
            generation: 0,
            state: State::Idle,
            socket: None,
            addr: Box::new(SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0)))),
            connect_in_flight: false,
            recv_armed: false,
            send_in_flight: false,
            sending: None,
            sent: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The generation of the current (or last) connection.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The socket, while there is one.
    pub fn fd(&self) -> Option<RawFd> {
        self.socket.as_ref().map(|s| s.as_raw_fd())
    }

    pub fn recv_armed(&self) -> bool {
        self.recv_armed
    }

    /// A tracked send is in the kernel.
    pub fn send_in_flight(&self) -> bool {
        self.send_in_flight
    }

    /// Starts connecting to `addr` from [`State::Idle`]: a non-blocking
    /// socket with `TCP_NODELAY`, and a `Connect` operation. An error
    /// (out of descriptors, say) leaves the connection idle.
    pub fn connect(&mut self, ring: &mut Ring, addr: SocketAddr) -> io::Result<()> {
        if self.state != State::Idle || self.connect_in_flight {
            return Err(io::Error::other("connect on a connection that is not idle"));
        }
        let family = if addr.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        // SAFETY: socket() returns a new descriptor or -1 (checked).
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the descriptor is fresh and owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        ops::set_nodelay(fd)?;
        *self.addr = SockAddr::from(addr);
        self.generation = crate::runtime::uring::next_generation(self.generation);
        self.socket = Some(socket);
        self.state = State::Connecting;
        self.connect_in_flight = true;
        self.sent = 0;
        let entry = ops::connect(fd, &self.addr, self.data(self.kinds.connect));
        // SAFETY: the boxed address stays in this connection, unchanged
        // (connect refuses while one is in flight) until the completion;
        // Drop leaks it if the connection goes first. The socket is closed
        // only once connect_in_flight is false.
        unsafe { ring.push(&entry) };
        Ok(())
    }

    /// Takes a socket connected elsewhere (a handshake run off the ring,
    /// say) from [`State::Idle`]: the connection is [`State::Open`] under a
    /// new generation, ready for [`Outbound::arm_recv`] and sends. The socket
    /// is made non-blocking. Gives it back if the connection is not idle.
    pub fn adopt(&mut self, socket: OwnedFd) -> Result<(), OwnedFd> {
        if self.state != State::Idle || self.connect_in_flight {
            return Err(socket);
        }
        let fd = socket.as_raw_fd();
        // SAFETY: fcntl on a descriptor this function owns; failure is harmless
        // (io_uring then polls or parks a worker, both correct).
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        self.generation = crate::runtime::uring::next_generation(self.generation);
        self.socket = Some(socket);
        self.state = State::Open;
        self.sent = 0;
        Ok(())
    }

    /// Hands back a completion of kind `kinds.connect`. `Live(Ok)`: the
    /// connection is [`State::Open`] (arm its receive); `Live(Err(errno))`:
    /// it failed and is idle again.
    pub fn on_connect(&mut self, generation: u32, result: i32) -> Completion<Result<(), i32>> {
        if !self.is_current(generation) || !self.connect_in_flight {
            return Completion::Stale;
        }
        self.connect_in_flight = false;
        if self.state == State::Closing {
            return self.finish_close();
        }
        if result < 0 {
            self.state = State::Closing;
            self.try_close();
            return Completion::Live(Err(-result));
        }
        self.state = State::Open;
        Completion::Live(Ok(()))
    }

    /// Arms a multishot receive into `buffers`' group, unless one is armed
    /// or the connection is not open.
    pub fn arm_recv(&mut self, ring: &mut Ring, buffers: &BufRing) {
        let Some(fd) = self.fd() else { return };
        if self.recv_armed || self.state != State::Open {
            return;
        }
        self.recv_armed = true;
        let entry = ops::recv_multi(fd, buffers.group, self.data(self.kinds.recv));
        // SAFETY: the socket stays open while recv_armed; the owner keeps
        // `buffers` registered until the ring is dropped (BufRing's rule).
        unsafe { ring.push(&entry) };
    }

    /// Hands back a completion of kind `kinds.recv`: received bytes go to
    /// `data`, and the provided buffer back to `buffers`, in every case.
    /// After `Live(_)`, [`Outbound::recv_armed`] says whether the receive
    /// goes on.
    pub fn on_recv(
        &mut self,
        buffers: &mut BufRing,
        generation: u32,
        result: i32,
        flags: u32,
        data: impl FnOnce(&[u8]),
    ) -> Completion<Recv> {
        let bid = cqueue::buffer_select(flags);
        if !self.is_current(generation) || !self.recv_armed {
            if let Some(bid) = bid {
                buffers.recycle(bid);
            }
            return Completion::Stale;
        }
        if !cqueue::more(flags) {
            self.recv_armed = false;
        }
        if self.state != State::Open {
            if let Some(bid) = bid {
                buffers.recycle(bid);
            }
            return self.finish_close();
        }
        let recv = match (result, bid) {
            (1.., Some(bid)) => {
                data(buffers.filled(bid, result as usize));
                buffers.recycle(bid);
                Recv::Data(result as usize)
            }
            (0, _) => Recv::Eof,
            _ if result == -libc::ENOBUFS => Recv::NoBuffers,
            (..0, _) => Recv::Error(-result),
            (1.., None) => Recv::Error(libc::EIO),
        };
        if let (Recv::Eof | Recv::Error(_) | Recv::NoBuffers, Some(bid)) = (&recv, bid) {
            buffers.recycle(bid);
        }
        Completion::Live(recv)
    }

    /// Sends all of `buf` (in more than one send if the kernel takes part),
    /// keeping it until the kernel is done; [`Sent::Done`] gives it back.
    /// Returns it at once, unsent, if the connection is not open or a send
    /// is in flight.
    pub fn send(&mut self, ring: &mut Ring, buf: B) -> Result<(), B> {
        let Some(fd) = self.fd() else { return Err(buf) };
        if self.state != State::Open || self.send_in_flight {
            return Err(buf);
        }
        self.sent = 0;
        let entry = ops::send(fd, buf.as_ref(), self.data(self.kinds.send));
        // The previous buffer, if any, is done: a tracked send was not in
        // flight, and a quiet one is done by its caller's contract.
        self.sending = Some(buf);
        self.send_in_flight = true;
        // SAFETY: the buffer is kept in `sending` (SendBuf: its bytes do
        // not move) until on_send sees the completion, and the socket stays
        // open while send_in_flight; Drop leaks the buffer otherwise.
        unsafe { ring.push(&entry) };
        Ok(())
    }

    /// Sends all of `buf` with no completion unless it fails
    /// ([`ops::send_all_quiet`]), keeping `buf` until the next send.
    /// Returns it at once, unsent, if the connection is not open or a
    /// tracked send is in flight.
    ///
    /// # Safety
    ///
    /// Nothing reports that the kernel is done with the bytes: the caller
    /// must know it before the next send on this slot, before the
    /// connection is dropped, and before the slot connects again (for
    /// requests: every response has arrived), or keep the bytes valid by
    /// other means until the ring is dropped (a clone of an `Rc<[u8]>` the
    /// owner holds longer than its ring).
    pub unsafe fn send_quiet(&mut self, ring: &mut Ring, buf: B) -> Result<(), B> {
        let Some(fd) = self.fd() else { return Err(buf) };
        if self.state != State::Open || self.send_in_flight {
            return Err(buf);
        }
        let entry = ops::send_all_quiet(fd, buf.as_ref(), self.data(self.kinds.send));
        self.sending = Some(buf);
        // SAFETY: the buffer is kept in `sending` until the next send; past
        // that, the caller's contract covers it.
        unsafe { ring.push(&entry) };
        Ok(())
    }

    /// Hands back a completion of kind `kinds.send`; sends the rest if the
    /// kernel took part of a tracked send.
    pub fn on_send(
        &mut self,
        ring: &mut Ring,
        generation: u32,
        result: i32,
    ) -> Completion<Sent<B>> {
        if !self.is_current(generation) {
            return Completion::Stale;
        }
        if !self.send_in_flight {
            // A quiet send's failure.
            return match self.state {
                State::Open => Completion::Live(Sent::Failed(result)),
                _ => Completion::Closing,
            };
        }
        self.send_in_flight = false;
        if self.state != State::Open {
            self.sending = None;
            return self.finish_close();
        }
        if result <= 0 {
            self.sending = None;
            return Completion::Live(Sent::Failed(if result == 0 {
                libc::EPIPE
            } else {
                -result
            }));
        }
        self.sent += result as usize;
        let (Some(buf), Some(fd)) = (&self.sending, self.fd()) else {
            return Completion::Live(Sent::Failed(libc::EIO));
        };
        let total = buf.as_ref().len();
        if self.sent < total {
            let entry = ops::send(fd, &buf.as_ref()[self.sent..], self.data(self.kinds.send));
            self.send_in_flight = true;
            // SAFETY: as in send(): the buffer stays in `sending`.
            unsafe { ring.push(&entry) };
            return Completion::Live(Sent::Sending);
        }
        match self.sending.take() {
            Some(buf) => Completion::Live(Sent::Done(buf)),
            None => Completion::Live(Sent::Failed(libc::EIO)),
        }
    }

    /// Closes the connection: shuts the socket down (which ends its receive
    /// and a stalled send) and cancels a connect in flight. The socket is
    /// closed once its operations have completed, at once if none is in
    /// flight. Returns whether it is closed now ([`State::Idle`]).
    pub fn close(&mut self, ring: &mut Ring) -> bool {
        match self.state {
            State::Idle => return true,
            State::Closing => return false,
            State::Connecting | State::Open => {}
        }
        self.state = State::Closing;
        if let Some(fd) = self.fd() {
            // SAFETY: fd is this connection's open socket; shutting down a
            // socket that is not connected yet only fails.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        }
        if self.connect_in_flight {
            let entry = ops::cancel(
                self.data(self.kinds.connect),
                user_data(self.kinds.cancel, 0, 0),
            );
            // SAFETY: a cancel points to no memory.
            unsafe { ring.push(&entry) };
        }
        self.try_close()
    }

    /// Closes the socket of a closing connection if none of its operations
    /// is in flight; says whether it did.
    fn try_close(&mut self) -> bool {
        if self.connect_in_flight || self.recv_armed || self.send_in_flight {
            return false;
        }
        // Nothing of this socket is in the kernel: close it.
        self.socket = None;
        self.state = State::Idle;
        true
    }

    fn finish_close<T>(&mut self) -> Completion<T> {
        if self.try_close() {
            Completion::Closed
        } else {
            Completion::Closing
        }
    }

    fn is_current(&self, generation: u32) -> bool {
        generation == self.generation && self.state != State::Idle
    }

    fn data(&self, kind: u64) -> u64 {
        user_data(kind, self.generation, self.slot)
    }
}

impl<B: SendBuf> Drop for Outbound<B> {
    fn drop(&mut self) {
        // The socket closes with its OwnedFd; memory an operation in flight
        // points to must not be freed under the kernel.
        if self.connect_in_flight {
            let placeholder = Box::new(SockAddr::from(SocketAddr::from(([0, 0, 0, 0], 0))));
            Box::leak(std::mem::replace(&mut self.addr, placeholder));
        }
        if self.send_in_flight {
            std::mem::forget(self.sending.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::uring::split_user_data;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    const KINDS: Kinds = Kinds {
        connect: 1,
        recv: 2,
        send: 3,
        cancel: 4,
    };

    struct Rig {
        ring: Ring,
        buffers: BufRing,
        conn: Outbound,
        received: Vec<u8>,
        events: Vec<String>,
        scratch: Vec<crate::net::ring::Cqe>,
    }

    impl Rig {
        fn new() -> Self {
            let ring = Ring::new(64).unwrap();
            let buffers = crate::net::ring::register_buffers(&ring, 16, 64, 0).unwrap();
            Self {
                ring,
                buffers,
                conn: Outbound::new(9, KINDS),
                received: Vec::new(),
                events: Vec::new(),
                scratch: Vec::new(),
            }
        }

        /// Runs completions until `done` holds, for at most two seconds.
        fn run_until(&mut self, mut done: impl FnMut(&Self) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(2);
            while !done(self) {
                assert!(
                    Instant::now() < deadline,
                    "events so far: {:?}",
                    self.events
                );
                self.ring.submit_and_poll().unwrap();
                let mut batch = std::mem::take(&mut self.scratch);
                if self.ring.drain(&mut batch) == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                for &(data, result, flags) in &batch {
                    self.complete(data, result, flags);
                }
                batch.clear();
                self.scratch = batch;
            }
        }

        fn complete(&mut self, data: u64, result: i32, flags: u32) {
            let (kind, generation, slot) = split_user_data(data);
            if kind != KINDS.cancel {
                assert_eq!(slot, 9);
            }
            let event = match kind {
                1 => format!("connect {:?}", self.conn.on_connect(generation, result)),
                2 => {
                    let received = &mut self.received;
                    let c = self
                        .conn
                        .on_recv(&mut self.buffers, generation, result, flags, |b| {
                            received.extend_from_slice(b)
                        });
                    format!("recv {c:?}")
                }
                3 => format!(
                    "send {:?}",
                    self.conn.on_send(&mut self.ring, generation, result)
                ),
                _ => return,
            };
            self.events.push(event);
        }

        fn has(&self, event: &str) -> bool {
            self.events.iter().any(|e| e == event)
        }
    }

    #[test]
    fn connect_send_receive_and_peer_close() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rig = Rig::new();
        rig.conn.connect(&mut rig.ring, addr).unwrap();
        assert_eq!(rig.conn.state(), State::Connecting);
        rig.ring.submit_and_poll().unwrap();
        let (mut peer, _) = listener.accept().unwrap();
        rig.run_until(|r| r.conn.state() == State::Open);
        assert_eq!(rig.events, ["connect Live(Ok(()))"]);
        rig.conn.arm_recv(&mut rig.ring, &rig.buffers);

        // A send larger than the socket buffers goes out in parts.
        let big: Vec<u8> = (0..4 << 20).map(|i| i as u8).collect();
        assert!(rig.conn.send(&mut rig.ring, big.clone()).is_ok());
        assert!(
            rig.conn.send(&mut rig.ring, vec![1]).is_err(),
            "one send at a time"
        );
        let reader = std::thread::spawn(move || {
            let mut got = vec![0; 4 << 20];
            peer.read_exact(&mut got).unwrap();
            (peer, got)
        });
        rig.run_until(|r| r.events.iter().any(|e| e.starts_with("send Live(Done")));
        let (mut peer, got) = reader.join().unwrap();
        assert!(got == big, "the peer got every byte in order");
        assert!(!rig.conn.send_in_flight());

        // Multishot: several writes, one armed receive, bytes in order
        // (more than one provided buffer's worth).
        for chunk in [&b"hello "[..], &[b'x'; 300][..], b" world"] {
            peer.write_all(chunk).unwrap();
        }
        rig.run_until(|r| r.received.len() == 312);
        assert!(rig.received.starts_with(b"hello xxx") && rig.received.ends_with(b"x world"));
        assert!(rig.conn.recv_armed());

        drop(peer);
        rig.run_until(|r| r.has("recv Live(Eof)"));
        assert_eq!(rig.conn.state(), State::Open);
        assert!(!rig.conn.recv_armed(), "a receive that saw EOF ends");
        assert!(
            rig.conn.close(&mut rig.ring),
            "nothing in flight: closed at once"
        );
        assert_eq!(rig.conn.state(), State::Idle);
        assert_eq!(rig.conn.fd(), None);
    }

    #[test]
    fn close_waits_for_the_receive_and_a_reconnect_ignores_the_old_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut rig = Rig::new();
        rig.conn.connect(&mut rig.ring, addr).unwrap();
        rig.ring.submit_and_poll().unwrap();
        let (_peer, _) = listener.accept().unwrap();
        rig.run_until(|r| r.conn.state() == State::Open);
        rig.conn.arm_recv(&mut rig.ring, &rig.buffers);
        let first = rig.conn.generation();
        assert!(!rig.conn.close(&mut rig.ring), "the receive is still armed");
        assert_eq!(rig.conn.state(), State::Closing);
        rig.run_until(|r| r.conn.state() == State::Idle);
        assert_eq!(rig.events.last().unwrap(), "recv Closed");

        rig.conn.connect(&mut rig.ring, addr).unwrap();
        assert_ne!(rig.conn.generation(), first);
        rig.ring.submit_and_poll().unwrap();
        let (_peer2, _) = listener.accept().unwrap();
        rig.run_until(|r| r.conn.state() == State::Open);
        // A completion of the first connection is recognised as stale.
        let old = rig.conn.on_send(&mut rig.ring, first, 10);
        assert_eq!(old, Completion::Stale);
        rig.conn.close(&mut rig.ring);
    }

    #[test]
    fn a_refused_connect_leaves_the_slot_idle() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let mut rig = Rig::new();
        rig.conn.connect(&mut rig.ring, addr).unwrap();
        rig.run_until(|r| !r.events.is_empty());
        assert_eq!(
            rig.events,
            [format!("connect Live(Err({}))", libc::ECONNREFUSED)]
        );
        assert_eq!(rig.conn.state(), State::Idle);
        assert_eq!(rig.conn.fd(), None);
    }
}

//! Restarting a node without refusing a connection: its per-core listening sockets pass to its successor over a Unix socket (`--handover PATH`), keyed by io core.
//!
//! A node started with `--handover PATH` [`arrive`]s there. If nothing
//! answers on PATH it binds its listeners as usual and waits on PATH (a
//! `SOCK_SEQPACKET` Unix socket) for a successor. If a node answers, it is
//! the predecessor: it sends every listening socket it has, one message
//! each (`listener CORE`, `admin`, then `rendezvous`, the socket on PATH
//! itself, then `end N`), the descriptors riding along as `SCM_RIGHTS`.
//! The successor adopts them instead of binding, so the accept queues and
//! the reuseport group (with its steering program, which it then replaces
//! with its own) survive; it starts its cores and answers `ready`. Only
//! then does the predecessor stop accepting and drain; until then both
//! accept from the same queues, so no connection waits on a closed one.
//! If the successor fails before `ready` (it exits, or cannot start), the
//! predecessor keeps serving and waits for the next.
//!
//! Sockets are keyed by io core, not by address: core `i` of the successor
//! takes the listener of core `i`. A successor with more cores binds more
//! listeners into the same group; one with fewer closes the surplus, and
//! when the predecessor closes its own copies, the connections queued on
//! them move to a listener still open if `net.ipv4.tcp_migrate_req` is 1
//! (`tuning/`); with 0 the kernel resets them.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, SockAddr, Socket, Type};
use thiserror::Error;

/// The first message of a successor, naming the protocol.
const HELLO: &str = "percore-handover/1 take";
/// How long either side waits for the other's next message while sockets pass.
const EXCHANGE_WITHIN: Duration = Duration::from_secs(10);
/// How long a successor may take from receiving the sockets to serving on them
/// (it opens its store and job system meanwhile).
const READY_WITHIN: Duration = Duration::from_secs(120);
/// How often the waiting node looks whether it should stop waiting.
const POLL_EVERY: Duration = Duration::from_millis(200);
/// The longest protocol message.
const MESSAGE_MAX: usize = 128;

/// Why a hand-over could not happen; the node then does not start.
#[derive(Debug, Error)]
pub enum HandoverError {
    #[error("hand-over socket {}: {source}", path.display())]
    Socket { path: PathBuf, source: io::Error },
    #[error("hand-over from the process on {}: {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    #[error("the process on {} listens on {theirs}, but this one is configured for {ours}: hand over between processes with the same --listen (and --admin-listen)", path.display())]
    Address {
        path: PathBuf,
        theirs: SocketAddr,
        ours: SocketAddr,
    },
}

/// What [`arrive`] found on PATH.
pub enum Arrival {
    /// Nobody was there: bind as usual; this node now waits on PATH.
    Fresh(Rendezvous),
    /// A predecessor handed over its sockets.
    Inherited(Inherited),
}

/// The socket on PATH where a node waits for its successor.
pub struct Rendezvous {
    listener: Socket,
    path: PathBuf,
}

/// The sockets a predecessor handed over, and the way to tell it to go.
pub struct Inherited {
    /// Its listeners, index = its io core.
    pub listeners: Vec<Socket>,
    /// Its `--admin-listen` socket, if it had one.
    pub admin: Option<Socket>,
    /// The predecessor's process id, for the log.
    pub pid: Option<u32>,
    rendezvous: Socket,
    predecessor: Socket,
    path: PathBuf,
}

/// Connects to PATH and takes the listeners of the node waiting there, or,
/// if none is (no file, or a stale one left by a process that died),
/// binds PATH for this node's own successor.
pub fn arrive(path: &Path) -> Result<Arrival, HandoverError> {
    let fail = |source| HandoverError::Socket {
        path: path.to_owned(),
        source,
    };
    let address = SockAddr::unix(path).map_err(fail)?;
    let socket = Socket::new(Domain::UNIX, Type::SEQPACKET, None).map_err(fail)?;
    match socket.connect(&address) {
        Ok(()) => take(socket, path).map(Arrival::Inherited),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => bind(path).map(Arrival::Fresh),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            // A socket file nobody listens on: its process died without cleaning up.
            let stale = std::fs::symlink_metadata(path)
                .map(|m| m.file_type().is_socket())
                .unwrap_or(false);
            if !stale {
                return Err(fail(e));
            }
            std::fs::remove_file(path).map_err(fail)?;
            bind(path).map(Arrival::Fresh)
        }
        Err(e) => Err(fail(e)),
    }
}

fn bind(path: &Path) -> Result<Rendezvous, HandoverError> {
    let bind = || -> io::Result<Socket> {
        let listener = Socket::new(Domain::UNIX, Type::SEQPACKET, None)?;
        listener.bind(&SockAddr::unix(path)?)?;
        listener.listen(8)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    let listener = bind().map_err(|source| HandoverError::Socket {
        path: path.to_owned(),
        source,
    })?;
    Ok(Rendezvous {
        listener,
        path: path.to_owned(),
    })
}

fn take(predecessor: Socket, path: &Path) -> Result<Inherited, HandoverError> {
    let protocol = |message: String| HandoverError::Protocol {
        path: path.to_owned(),
        message,
    };
    let io_error = |e: io::Error| protocol(e.to_string());
    predecessor
        .set_read_timeout(Some(EXCHANGE_WITHIN))
        .map_err(io_error)?;
    send(&predecessor, HELLO, None).map_err(io_error)?;
    let mut listeners: Vec<Option<Socket>> = Vec::new();
    let mut admin = None;
    let mut rendezvous = None;
    loop {
        let (message, fd) = recv(&predecessor).map_err(io_error)?;
        let mut words = message.split_whitespace();
        let socket = fd.map(Socket::from);
        match (words.next(), words.next(), socket) {
            (Some("listener"), Some(core), Some(socket)) => {
                let core: usize = core
                    .parse()
                    .map_err(|_| protocol(format!("bad message {message:?}")))?;
                if core >= 4096 {
                    return Err(protocol(format!("core {core} is out of range")));
                }
                if listeners.len() <= core {
                    listeners.resize_with(core + 1, || None);
                }
                listeners[core] = Some(socket);
            }
            (Some("admin"), None, Some(socket)) => admin = Some(socket),
            (Some("rendezvous"), None, Some(socket)) => rendezvous = Some(socket),
            (Some("end"), Some(count), None) => {
                if count != listeners.len().to_string() {
                    return Err(protocol(format!(
                        "it announced {count} listeners and sent {}",
                        listeners.len()
                    )));
                }
                break;
            }
            (Some("refused"), _, _) => {
                return Err(protocol(format!(
                    "it refused ({}); start this one again once it has exited",
                    message.trim_start_matches("refused").trim()
                )))
            }
            _ => return Err(protocol(format!("unexpected message {message:?}"))),
        }
    }
    let listeners: Vec<Socket> = listeners
        .into_iter()
        .enumerate()
        .map(|(core, l)| l.ok_or_else(|| protocol(format!("no listener for io core {core}"))))
        .collect::<Result<_, _>>()?;
    if listeners.is_empty() {
        return Err(protocol("it sent no listener".into()));
    }
    let rendezvous = rendezvous.ok_or_else(|| protocol("it kept the socket on PATH".into()))?;
    let pid = peer_pid(&predecessor);
    Ok(Inherited {
        listeners,
        admin,
        pid,
        rendezvous,
        predecessor,
        path: path.to_owned(),
    })
}

impl Inherited {
    /// The address the predecessor's listeners are bound to.
    pub fn addr(&self) -> Result<SocketAddr, HandoverError> {
        local_addr(&self.listeners[0]).map_err(|source| HandoverError::Socket {
            path: self.path.clone(),
            source,
        })
    }

    /// Checks that an inherited socket is where this node is configured to
    /// listen (any port when the configured one is 0).
    pub fn check_addr(&self, theirs: SocketAddr, ours: SocketAddr) -> Result<(), HandoverError> {
        let same = theirs.ip() == ours.ip() && (ours.port() == 0 || theirs.port() == ours.port());
        if same {
            Ok(())
        } else {
            Err(HandoverError::Address {
                path: self.path.clone(),
                theirs,
                ours,
            })
        }
    }

    /// Tells the predecessor this node serves on the sockets: it stops
    /// accepting and drains. Returns the socket on PATH, where this node
    /// now waits for its own successor. A predecessor that went away
    /// meanwhile changes nothing: the sockets are this node's either way.
    pub fn ready(self) -> Result<Rendezvous, HandoverError> {
        if let Err(error) = send(&self.predecessor, "ready", None) {
            eprintln!(
                "hand-over on {}: the predecessor went away before this node was ready ({error})",
                self.path.display()
            );
        }
        self.rendezvous
            .set_nonblocking(true)
            .map_err(|source| HandoverError::Socket {
                path: self.path.clone(),
                source,
            })?;
        Ok(Rendezvous {
            listener: self.rendezvous,
            path: self.path,
        })
    }

    /// Where the predecessor waited, for the log.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The sockets a node offers its successor: duplicates of its own, held only until it drains.
pub struct Offer {
    /// Index = io core.
    pub listeners: Vec<Socket>,
    pub admin: Option<Socket>,
}

/// Shared between the waiting thread and the node's main thread.
struct Shared {
    /// Taken when the node drains (its listeners must then close for good) or hands over.
    offer: Mutex<Option<Offer>>,
    stop: AtomicBool,
    /// Set while sockets are out to a successor that has not answered yet,
    /// and for good once one said `ready`: PATH is then no longer this node's.
    given: AtomicBool,
}

/// The thread waiting on PATH for a successor.
pub struct Waiting {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    path: PathBuf,
}

impl Rendezvous {
    /// Waits on PATH, on a thread of its own, for a successor and hands it
    /// `offer`; sends the successor's process id to `handed` once it serves.
    pub fn wait(self, offer: Offer, handed: mpsc::Sender<Option<u32>>) -> io::Result<Waiting> {
        let shared = Arc::new(Shared {
            offer: Mutex::new(Some(offer)),
            stop: AtomicBool::new(false),
            given: AtomicBool::new(false),
        });
        let path = self.path.clone();
        let for_thread = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("percore-handover".into())
            .spawn(move || self.serve(&for_thread, &handed))?;
        Ok(Waiting {
            shared,
            thread: Some(thread),
            path,
        })
    }

    fn serve(self, shared: &Shared, handed: &mpsc::Sender<Option<u32>>) {
        while !shared.stop.load(Ordering::Relaxed) {
            if !readable(&self.listener, POLL_EVERY) {
                continue;
            }
            let Ok((successor, _)) = self.listener.accept() else {
                continue;
            };
            match self.hand_over(shared, &successor) {
                Ok(()) => {
                    let _ = handed.send(peer_pid(&successor));
                    return;
                }
                Err(error) => {
                    shared.given.store(false, Ordering::Relaxed);
                    eprintln!(
                        "hand-over on {}: a successor failed ({error}); still serving",
                        self.path.display()
                    );
                }
            }
        }
    }

    fn hand_over(&self, shared: &Shared, successor: &Socket) -> io::Result<()> {
        successor.set_nonblocking(false)?;
        successor.set_read_timeout(Some(EXCHANGE_WITHIN))?;
        let (hello, _) = recv(successor)?;
        if hello != HELLO {
            let _ = send(successor, "refused unknown protocol", None);
            return Err(io::Error::other(format!("it said {hello:?}")));
        }
        {
            let offer = shared.offer.lock().unwrap_or_else(|e| e.into_inner());
            let Some(offer) = offer.as_ref() else {
                let _ = send(successor, "refused it is shutting down", None);
                return Err(io::Error::other("this node is shutting down"));
            };
            shared.given.store(true, Ordering::Relaxed);
            for (core, listener) in offer.listeners.iter().enumerate() {
                send(
                    successor,
                    &format!("listener {core}"),
                    Some(listener.as_raw_fd()),
                )?;
            }
            if let Some(admin) = &offer.admin {
                send(successor, "admin", Some(admin.as_raw_fd()))?;
            }
            send(successor, "rendezvous", Some(self.listener.as_raw_fd()))?;
            send(successor, &format!("end {}", offer.listeners.len()), None)?;
        }
        successor.set_read_timeout(Some(READY_WITHIN))?;
        let (answer, _) = recv(successor)?;
        if answer != "ready" {
            return Err(io::Error::other(format!("it said {answer:?}")));
        }
        // The successor serves: this node's copies must close when it drains.
        drop(
            shared
                .offer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        Ok(())
    }
}

impl Waiting {
    /// The node drains on its own (a signal): close the offered duplicates,
    /// so the listeners close with the cores' own copies, stop waiting, and
    /// remove PATH unless a successor holds it.
    pub fn stop(mut self) {
        drop(
            self.shared
                .offer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // At most one poll interval; a successor mid-exchange may take
            // minutes to answer, and this node's drain does not wait for it.
            if !self.shared.given.load(Ordering::Relaxed) {
                let _ = thread.join();
            }
        }
        if !self.shared.given.load(Ordering::Relaxed) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Whether `socket` has a connection to accept within `timeout`.
fn readable(socket: &Socket, timeout: Duration) -> bool {
    let mut poll = libc::pollfd {
        fd: socket.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll reads and writes the one pollfd it is given.
    let n = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as libc::c_int) };
    n > 0 && poll.revents & libc::POLLIN != 0
}

/// The IP address and port a socket is bound to.
pub fn local_addr(socket: &Socket) -> io::Result<SocketAddr> {
    socket
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("an inherited listener has no IP address"))
}

/// The process on the other end of a Unix socket (`SO_PEERCRED`).
fn peer_pid(socket: &Socket) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: cred and len are valid for writes of the size given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Room for one descriptor's control message, aligned for `cmsghdr`.
#[repr(C, align(8))]
struct Control([u8; 64]);

/// Sends one message, with one descriptor if `fd` is given.
fn send(socket: &Socket, message: &str, fd: Option<RawFd>) -> io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_ptr() as *mut libc::c_void,
        iov_len: message.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes; the control
        // buffer (64 bytes, 8-aligned) holds one header and one descriptor,
        // and CMSG_FIRSTHDR points into it since msg_controllen is set.
        unsafe {
            header.msg_control = control.0.as_mut_ptr().cast();
            header.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
            let cmsg = libc::CMSG_FIRSTHDR(&header);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        }
    }
    // SAFETY: header points at iov and control, both alive for the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives one message and the descriptor it carries, if any.
fn recv(socket: &Socket) -> io::Result<(String, Option<OwnedFd>)> {
    let mut buf = [0u8; MESSAGE_MAX];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = Control([0; 64]);
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.0.as_mut_ptr().cast();
    header.msg_controllen = control.0.len();
    // SAFETY: header points at buf and control, both alive and writable for the call.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut header, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        let error = io::Error::last_os_error();
        return Err(if error.kind() == io::ErrorKind::WouldBlock {
            io::Error::new(io::ErrorKind::TimedOut, "no answer in time")
        } else {
            error
        });
    }
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control up to msg_controllen; the CMSG
    // macros walk only within it, and each SCM_RIGHTS payload holds
    // descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&header);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&header, cmsg);
        }
    }
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the other process closed the hand-over socket",
        ));
    }
    if header.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
        return Err(io::Error::other("a hand-over message was truncated"));
    }
    let text = String::from_utf8_lossy(&buf[..n as usize]).into_owned();
    // One descriptor per message; any other closes with `fds`.
    Ok((text, fds.into_iter().next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("percore-handover-{name}-{}", std::process::id()))
    }

    #[test]
    fn listeners_pass_keyed_by_core_and_the_successor_takes_the_rendezvous() {
        let path = temp_path("unit");
        let _ = std::fs::remove_file(&path);
        let Arrival::Fresh(rendezvous) = arrive(&path).unwrap() else {
            panic!("nobody waits on a fresh path");
        };
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let (listeners, bound) = crate::net::listener::bind_reuseport(addr, 2).unwrap();
        let ports: Vec<SocketAddr> = listeners.iter().map(|l| local_addr(l).unwrap()).collect();
        let offer = Offer {
            listeners: listeners.iter().map(|l| l.try_clone().unwrap()).collect(),
            admin: None,
        };
        let (handed_tx, handed_rx) = mpsc::channel();
        let waiting = rendezvous.wait(offer, handed_tx).unwrap();

        let Arrival::Inherited(inherited) = arrive(&path).unwrap() else {
            panic!("the waiting node did not hand over");
        };
        assert_eq!(inherited.listeners.len(), 2);
        assert_eq!(inherited.pid, Some(std::process::id()));
        assert_eq!(inherited.addr().unwrap(), bound);
        assert!(inherited.check_addr(bound, addr).is_ok());
        assert!(inherited
            .check_addr(bound, "127.0.0.2:0".parse().unwrap())
            .is_err());
        // Core 1's socket is core 1's: a connection it queues is accepted
        // through the inherited descriptor of core 1.
        for (core, socket) in inherited.listeners.iter().enumerate() {
            assert_eq!(local_addr(socket).unwrap(), ports[core]);
        }
        let rendezvous = inherited.ready().unwrap();
        assert_eq!(
            handed_rx.recv_timeout(Duration::from_secs(10)).unwrap(),
            Some(std::process::id())
        );
        waiting.stop();
        assert!(
            path.exists(),
            "the predecessor removed the successor's PATH"
        );

        // The successor now waits on the same PATH for the next.
        let offer = Offer {
            listeners: vec![listeners[0].try_clone().unwrap()],
            admin: None,
        };
        let (tx, _rx) = mpsc::channel();
        let waiting = rendezvous.wait(offer, tx).unwrap();
        waiting.stop();
        assert!(!path.exists(), "PATH stays after a plain shutdown");
    }

    #[test]
    fn a_stale_socket_file_is_replaced() {
        let path = temp_path("stale");
        let _ = std::fs::remove_file(&path);
        drop(bind(&path).unwrap());
        assert!(path.exists());
        assert!(matches!(arrive(&path).unwrap(), Arrival::Fresh(_)));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_node_shutting_down_refuses_its_successor() {
        let path = temp_path("refused");
        let _ = std::fs::remove_file(&path);
        let Arrival::Fresh(rendezvous) = arrive(&path).unwrap() else {
            panic!("nobody waits on a fresh path");
        };
        let (tx, _rx) = mpsc::channel();
        let waiting = rendezvous
            .wait(
                Offer {
                    listeners: Vec::new(),
                    admin: None,
                },
                tx,
            )
            .unwrap();
        drop(waiting.shared.offer.lock().unwrap().take());
        match arrive(&path) {
            Err(HandoverError::Protocol { message, .. }) => {
                assert!(message.contains("shutting down"), "{message}")
            }
            _ => panic!("a node shutting down handed over"),
        }
        waiting.stop();
    }
}

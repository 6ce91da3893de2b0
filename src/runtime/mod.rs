//! Placing io cores on CPUs, starting them, and stopping them on SIGINT/SIGTERM.
//!
//! Each io core is a thread pinned to one CPU that owns an io_uring, a
//! listener and every connection that listener accepts (see `net`), and
//! the service it drives, built on that thread. The main thread only
//! binds (or adopts a predecessor's listeners, [`handover`]), starts
//! cores, waits for a signal and joins them. Nothing here
//! knows what the cores serve: [`launch`] takes one service builder per core.

pub mod cpu;
pub mod handover;
pub mod steer;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Receiver;
use socket2::Socket;
use thiserror::Error;

use crate::net::{listener, CoreOptions, IoCore, Lifecycle, Mailbox, Service, Waker};
pub use steer::Steering;
use uring::UringError;

/// Why the server could not start or run.
#[derive(Debug, Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("io core {core} on CPU {cpu}: {source}")]
    Uring {
        core: usize,
        cpu: usize,
        source: UringError,
    },
    #[error("cannot pin io core {core} to CPU {cpu}: {source}")]
    Pin {
        core: usize,
        cpu: usize,
        source: io::Error,
    },
    #[error("cannot serve static files from {}: {source}", dir.display())]
    Static {
        dir: std::path::PathBuf,
        source: io::Error,
    },
    #[error("cannot start the job system on {place}: {source}")]
    Jobs { place: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] crate::store::open::OpenError),
    #[error("authentication: {0}")]
    Auth(#[from] crate::auth::AuthSetupError),
    /// The application refused its own composition (a route or kind twice, a bad option).
    #[error("{0}")]
    App(String),
    #[error(transparent)]
    Handover(#[from] handover::HandoverError),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Each core's mailbox and inbox, made before anything starts so that
/// every subsystem can be handed the way into every core.
pub struct Wiring<M> {
    pub mailboxes: Vec<Mailbox<M>>,
    inboxes: Vec<Receiver<M>>,
    wakes: Vec<OwnedFd>,
}

impl<M: Send + 'static> Wiring<M> {
    pub fn new(cores: usize) -> io::Result<Self> {
        let mut wiring = Self {
            mailboxes: Vec::with_capacity(cores),
            inboxes: Vec::with_capacity(cores),
            wakes: Vec::with_capacity(cores),
        };
        for _ in 0..cores {
            // Each core's eventfd wakes it for draining and for messages from other threads.
            let wake = Waker::eventfd()?;
            let (mailbox, inbox) = Mailbox::new(Waker::new(wake.try_clone()?));
            wiring.mailboxes.push(mailbox);
            wiring.inboxes.push(inbox);
            wiring.wakes.push(wake);
        }
        Ok(wiring)
    }
}

/// Binds one `SO_REUSEPORT` listener per core on `addr`, core `i` on
/// `cpus[i]`, steered by CPU if `steer` ([`Steering`]); returns them, the
/// address bound and what became of steering.
pub fn bind(
    addr: SocketAddr,
    cpus: &[usize],
    steer: bool,
) -> Result<(Vec<Socket>, SocketAddr, Steering), ServeError> {
    uring::raise_memlock_limit();
    let (listeners, bound) = listener::bind_reuseport(addr, cpus.len())
        .map_err(|source| ServeError::Bind { addr, source })?;
    let steering = Steering::apply(&listeners, cpus, steer);
    Ok((listeners, bound, steering))
}

/// Takes over a predecessor's listeners ([`handover`]): core `i` adopts
/// its core `i`'s socket; cores it did not have bind new listeners into the
/// same reuseport group; its surplus sockets close here (their queued
/// connections move to an open listener once the predecessor closes its
/// copies, if `net.ipv4.tcp_migrate_req` is 1). The group's steering
/// program is replaced by this node's own, or removed with `--steer off`.
pub fn adopt(
    mut inherited: Vec<Socket>,
    addr: SocketAddr,
    cpus: &[usize],
    steer: bool,
) -> Result<(Vec<Socket>, SocketAddr, Steering), ServeError> {
    uring::raise_memlock_limit();
    let cores = cpus.len();
    if inherited.len() > cores {
        // Close from the end, so the group's indices of the kept ones stay put.
        while inherited.len() > cores {
            inherited.pop();
        }
    }
    let missing = cores - inherited.len();
    if missing > 0 {
        let (more, _) = listener::bind_reuseport(addr, missing)
            .map_err(|source| ServeError::Bind { addr, source })?;
        inherited.extend(more);
    }
    if !steer {
        listener::unsteer(&inherited[0]);
    }
    let steering = Steering::apply(&inherited, cpus, steer);
    Ok((inherited, addr, steering))
}

/// Binds the admin listener (`--admin-listen`): one plain socket, served by io core 0.
pub fn bind_admin(addr: SocketAddr) -> Result<(Socket, SocketAddr), ServeError> {
    let bind = || -> io::Result<(Socket, SocketAddr)> {
        let socket = Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        let bound = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("the admin listener has no IP address"))?;
        Ok((socket, bound))
    };
    bind().map_err(|source| ServeError::Bind { addr, source })
}

/// The running io cores.
pub struct Cores {
    pub lifecycle: Arc<Lifecycle>,
    handles: Vec<(JoinHandle<io::Result<usize>>, Waker)>,
}

/// Starts one io core per listener, pinned to `cpus[core]`, each driving the
/// service `builders[core]` makes on the core's own thread. Returns once every
/// core serves, or with the first core's failure (the others then stop).
pub fn launch<S, B>(
    listeners: Vec<Socket>,
    mut admin: Option<Socket>,
    cpus: &[usize],
    options: CoreOptions,
    wiring: Wiring<S::Msg>,
    lifecycle: Arc<Lifecycle>,
    builders: Vec<B>,
) -> Result<Cores, ServeError>
where
    S: Service,
    B: FnOnce() -> S + Send + 'static,
{
    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ServeError>>();
    let mut handles = Vec::with_capacity(listeners.len());
    let parts = listeners
        .into_iter()
        .zip(cpus)
        .zip(wiring.wakes)
        .zip(wiring.inboxes)
        .zip(builders);
    for (core, ((((listener, &cpu), wake), inbox), build)) in parts.enumerate() {
        let waker = Waker::new(wake.try_clone()?);
        let options = options.clone();
        let lifecycle_for_core = Arc::clone(&lifecycle);
        let ready = ready_tx.clone();
        // The admin listener is core 0's second listener: its traffic is an operator's.
        let extra = if core == 0 { admin.take() } else { None };
        let handle = std::thread::Builder::new()
            .name(format!("percore-io-{core}"))
            .spawn(move || {
                if let Err(source) = cpu::pin_current_thread(cpu) {
                    let _ = ready.send(Err(ServeError::Pin { core, cpu, source }));
                    return Ok(0);
                }
                let service = build();
                match IoCore::new(
                    core,
                    cpu,
                    listener,
                    wake,
                    inbox,
                    service,
                    options,
                    lifecycle_for_core,
                ) {
                    Ok(mut io_core) => {
                        if let Some(socket) = extra {
                            io_core.add_listener(socket);
                        }
                        let _ = ready.send(Ok(()));
                        drop(ready);
                        io_core.run()
                    }
                    Err(source) => {
                        let _ = ready.send(Err(ServeError::Uring { core, cpu, source }));
                        Ok(0)
                    }
                }
            })?;
        handles.push((handle, waker));
    }
    drop(ready_tx);
    let cores = Cores { lifecycle, handles };
    for _ in 0..cores.handles.len() {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                cores.drain();
                return Err(error);
            }
            Err(_) => {
                cores.drain();
                return Err(ServeError::Io(io::Error::other(
                    "an io core exited while starting",
                )));
            }
        }
    }
    Ok(cores)
}

impl Cores {
    /// Begins draining: readiness fails, listeners close, connections finish
    /// their current request within the grace period.
    pub fn drain(&self) {
        self.lifecycle.start_draining();
        for (_, waker) in &self.handles {
            waker.wake();
        }
    }

    /// Waits for every io core to finish draining. Returns the number of connections cut at the deadline.
    pub fn join(self) -> io::Result<usize> {
        let mut cut = 0;
        for (handle, _) in self.handles {
            cut += handle
                .join()
                .map_err(|_| io::Error::other("an io core panicked"))??;
        }
        Ok(cut)
    }
}

/// Blocks SIGINT and SIGTERM in the calling thread (and the threads it
/// starts later), so they are taken only by [`wait_for_signal`].
pub fn block_shutdown_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; these calls only read and write it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for SIGINT or SIGTERM, or until `timeout`; returns the signal taken.
pub fn wait_for_signal(set: &libc::sigset_t, timeout: Option<Duration>) -> Option<i32> {
    loop {
        // SAFETY: set was filled by block_shutdown_signals; info and the
        // timespec are valid for the call.
        let signal = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            match timeout {
                Some(t) => {
                    let spec = libc::timespec {
                        tv_sec: t.as_secs() as libc::time_t,
                        tv_nsec: t.subsec_nanos() as libc::c_long,
                    };
                    libc::sigtimedwait(set, &mut info, &spec)
                }
                None => libc::sigwaitinfo(set, &mut info),
            }
        };
        if signal > 0 {
            return Some(signal);
        }
        if io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return None;
        }
    }
}

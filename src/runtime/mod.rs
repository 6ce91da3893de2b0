//! Placing io cores on CPUs, starting them, and stopping them on SIGINT/SIGTERM.
//!
//! Each io core is a thread pinned to one CPU that owns an io_uring, a
//! listener and every connection that listener accepts (see `net`). The main
//! thread only binds, starts cores, waits for a signal and joins them.

pub mod cpu;
pub mod uring;

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;

use crate::api;
use crate::config::Config;
use crate::docs::{DataShared, Plane, PlaneCounters};
use crate::limit::Limiter;
use crate::mailbox::{CoreMsg, Mailbox};
use crate::metrics::Registry;
use crate::net::event_loop::{CoreOptions, IoCore};
use crate::net::listener;
use crate::node::Node;
use crate::queue::Queues;
use crate::statics::Index;
use crate::store::redb_engine::RedbEngine;
use crate::store::thread::{OpenShard, StoreCounters};
use crate::store::wal;
use crate::store::{seed, Engine, ShardMap};
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
    #[error("cannot open the document store in {}: {message}", dir.display())]
    Store {
        dir: std::path::PathBuf,
        message: String,
    },
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// A running server, started by [`start`].
pub struct Server {
    pub addr: SocketAddr,
    pub node: Arc<Node>,
    cores: Vec<(JoinHandle<io::Result<usize>>, OwnedFd)>,
    /// The document store's directory when it is a temporary one, removed at exit.
    temporary_dir: Option<std::path::PathBuf>,
    /// One line describing the store, for the start-up log.
    pub store_line: String,
}

/// Binds the listeners and starts every io core; returns once all serve.
pub fn start(config: &Config) -> Result<Server, ServeError> {
    uring::raise_memlock_limit();
    let cores = config.cores();
    let (listeners, addr) =
        listener::bind_reuseport(config.listen, cores).map_err(|source| ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let routes = api::routes();
    let mut route_names: Vec<&'static str> = (0..routes.len()).map(|i| routes.pattern(i)).collect();
    let limiter = config.rate_limit.clone().map(Limiter::new);
    if let Some(limiter) = &limiter {
        limiter.start_sweeper()?;
    }
    let statics = match &config.statics {
        Some(options) => {
            let index = Index::build(options.clone()).map_err(|source| ServeError::Static {
                dir: options.dir.clone(),
                source,
            })?;
            index.start_refresher()?;
            // The static files' latency series, after the router's; leaked
            // once at start-up because series names live as long as the process.
            route_names.push(Box::leak(format!("{}*", options.prefix).into_boxed_str()));
            Some(index)
        }
        None => None,
    };
    // Each core's eventfd wakes it for draining and for messages from other threads.
    let wakes: Vec<OwnedFd> = (0..cores).map(|_| eventfd()).collect::<io::Result<_>>()?;
    let mut mailboxes = Vec::with_capacity(cores);
    let mut inboxes: Vec<Option<crossbeam_channel::Receiver<CoreMsg>>> = Vec::with_capacity(cores);
    for wake in &wakes {
        let (mailbox, inbox) = Mailbox::new(wake.try_clone()?);
        mailboxes.push(mailbox);
        inboxes.push(Some(inbox));
    }
    let store = open_store(config, cores, &mailboxes)?;
    let queues = match &config.queues {
        Some(options) => {
            let place = match &options.nats {
                Some(nats) => format!("{} (stream {})", nats.url, nats.stream),
                None => options.data_dir.display().to_string(),
            };
            let queues = Queues::start(options.clone(), mailboxes.clone())
                .map_err(|source| ServeError::Jobs { place, source })?;
            Some(queues)
        }
        None => None,
    };
    let mut planes: Vec<Option<Plane>> = store
        .senders
        .into_iter()
        .enumerate()
        .map(|(core, sender)| {
            Some(Plane::new(
                core,
                Arc::clone(&store.shared),
                sender,
                mailboxes.clone(),
            ))
        })
        .collect();
    let node = Node::new(
        cores,
        Registry::new(cores, &route_names),
        limiter,
        statics,
        queues,
        Some(Arc::clone(&store.shared)),
    );
    let options = CoreOptions {
        limits: config.limits,
        max_connections: config.max_connections_per_core,
        idle_timeout: config.idle_timeout,
        header_timeout: config.header_timeout,
        body_timeout: config.body_timeout,
        shutdown_grace: config.shutdown_grace,
        io_budget: uring::IoBudget::for_this_process(cores),
    };

    let (ready_tx, ready_rx) = mpsc::channel::<Result<(), ServeError>>();
    let mut started = Vec::with_capacity(cores);
    for (core, ((listener, &cpu), wake)) in listeners
        .into_iter()
        .zip(&config.cpus)
        .zip(wakes)
        .enumerate()
    {
        let wake_for_core = wake.try_clone()?;
        let inbox = inboxes[core].take().expect("one inbox per core");
        let plane = planes[core].take().expect("one plane per core");
        let options = options.clone();
        let node = Arc::clone(&node);
        let ready = ready_tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("percore-io-{core}"))
            .spawn(move || {
                if let Err(source) = cpu::pin_current_thread(cpu) {
                    let _ = ready.send(Err(ServeError::Pin { core, cpu, source }));
                    return Ok(0);
                }
                match IoCore::new(core, listener, wake_for_core, inbox, plane, options, node) {
                    Ok(io_core) => {
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
        started.push((handle, wake));
    }
    drop(ready_tx);
    let server = Server {
        addr,
        node,
        cores: started,
        temporary_dir: store.temporary_dir,
        store_line: store.line,
    };
    for _ in 0..cores {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                server.stop_now();
                return Err(error);
            }
            Err(_) => {
                server.stop_now();
                return Err(ServeError::Io(io::Error::other(
                    "an io core exited while starting",
                )));
            }
        }
    }
    Ok(server)
}

impl Server {
    /// Begins draining: readiness fails, listeners close, connections finish
    /// their current request within the grace period.
    pub fn drain(&self) {
        self.node.start_draining();
        for (_, wake) in &self.cores {
            let one: u64 = 1;
            // SAFETY: writing 8 bytes from a u64 to an eventfd we own.
            unsafe { libc::write(wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn stop_now(&self) {
        self.drain();
    }

    /// Waits for every io core to finish draining. Returns the number of connections cut at the deadline.
    pub fn join(self) -> io::Result<usize> {
        let mut cut = 0;
        for (handle, _wake) in self.cores {
            cut += handle
                .join()
                .map_err(|_| io::Error::other("an io core panicked"))??;
        }
        if let Some(dir) = &self.temporary_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(cut)
    }
}

/// The opened document store: what the cores share, and each core's store thread.
struct OpenStore {
    shared: Arc<DataShared>,
    /// By core: the sender to that core's store thread.
    senders: Vec<crossbeam_channel::Sender<crate::store::thread::StoreRequest>>,
    temporary_dir: Option<std::path::PathBuf>,
    line: String,
}

/// Opens (or creates) every shard, seeds the TechEmpower tables if they are
/// missing, and starts one store thread per io core for the shards it owns.
fn open_store(
    config: &Config,
    cores: usize,
    mailboxes: &[Mailbox],
) -> Result<OpenStore, ServeError> {
    let options = config.store.clone();
    let (dir, temporary_dir) = match &options.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            remove_stale_temporary_dirs();
            let dir =
                std::env::temp_dir().join(format!("{TEMPORARY_PREFIX}{}", std::process::id()));
            (dir.clone(), Some(dir))
        }
    };
    let fail = |message: String| ServeError::Store {
        dir: dir.clone(),
        message,
    };
    let shards_dir = dir.join("shards");
    std::fs::create_dir_all(&shards_dir).map_err(|e| fail(e.to_string()))?;
    let map = ShardMap::load_or_create(&dir, options.shard_map.as_ref(), cores).map_err(&fail)?;
    let mut open = std::collections::HashMap::new();
    for shard in 0..map.shards() {
        let path = shards_dir.join(format!("shard-{shard:04}.redb"));
        let engine = RedbEngine::open(&path).map_err(|e| fail(e.to_string()))?;
        let last_version = engine.last_version().map_err(|e| fail(e.to_string()))?;
        open.insert(
            shard,
            OpenShard {
                shard,
                engine: Box::new(engine),
                last_version,
            },
        );
    }
    // The shard files' names must survive a power cut too.
    std::fs::File::open(&shards_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    let wal_dir = dir.join("wal");
    let replayed = replay_logs(&wal_dir, &mut open).map_err(&fail)?;
    let seeded = seed::seed_if_missing(&map, &mut open).map_err(|e| fail(e.to_string()))?;
    let mut by_core: Vec<Vec<OpenShard>> = (0..cores).map(|_| Vec::new()).collect();
    for (shard, opened) in open {
        by_core[map.owner(shard)].push(opened);
    }
    let store_counters: Vec<Arc<StoreCounters>> = (0..cores).map(|_| Arc::default()).collect();
    let mut senders = Vec::with_capacity(cores);
    for (core, shards) in by_core.into_iter().enumerate() {
        senders.push(crate::store::thread::start(
            core,
            shards,
            wal_dir.clone(),
            mailboxes[core].clone(),
            Arc::clone(&store_counters[core]),
        )?);
    }
    let place = match &temporary_dir {
        Some(dir) => format!(
            "{} (temporary: no --data-dir, removed at exit)",
            dir.display()
        ),
        None => dir.display().to_string(),
    };
    let mut line = format!("percore: documents in {place}; {map}");
    if replayed > 0 {
        line.push_str(&format!(
            "; replayed {replayed} write(s) from the write-ahead logs"
        ));
    }
    if !seeded.is_empty() {
        line.push_str(&format!("; seeded {}", seeded.join(" and ")));
    }
    let shared = Arc::new(DataShared {
        map,
        options,
        cache_counters: (0..cores).map(|_| Arc::default()).collect(),
        store_counters,
        plane_counters: (0..cores)
            .map(|_| Arc::<PlaneCounters>::default())
            .collect(),
    });
    Ok(OpenStore {
        shared,
        senders,
        temporary_dir,
        line,
    })
}

/// Temporary document directories are named this plus the server's process id.
const TEMPORARY_PREFIX: &str = "percore-docs-";

/// Removes the temporary document directories of servers that are gone
/// (killed before they could remove their own).
fn remove_stale_temporary_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPORARY_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Replays every write-ahead log left by a previous run into its shard,
/// makes the shards durable, then removes the logs. Returns the writes replayed.
fn replay_logs(
    wal_dir: &std::path::Path,
    open: &mut std::collections::HashMap<u32, OpenShard>,
) -> Result<usize, String> {
    let records =
        wal::read_all(wal_dir).map_err(|e| format!("cannot read {}: {e}", wal_dir.display()))?;
    let count = records.len();
    let mut by_shard: std::collections::HashMap<u32, Vec<crate::store::engine::Change>> =
        std::collections::HashMap::new();
    for record in records {
        let Some(shard) = open.get_mut(&record.shard) else {
            return Err(format!(
                "{} holds writes for shard {}, which this shard map does not have",
                wal_dir.display(),
                record.shard
            ));
        };
        shard.last_version = shard.last_version.max(record.last_version);
        if let Some(stored) = &record.value {
            shard.last_version = shard.last_version.max(stored.version);
        }
        by_shard
            .entry(record.shard)
            .or_default()
            .push((record.key, record.value));
    }
    for (shard, changes) in by_shard {
        let open = open.get_mut(&shard).expect("checked above");
        open.engine
            .commit(&changes, open.last_version, true)
            .map_err(|e| format!("cannot replay the write-ahead log into shard {shard}: {e}"))?;
    }
    wal::remove_all(wal_dir).map_err(|e| {
        format!(
            "cannot remove the replayed logs in {}: {e}",
            wal_dir.display()
        )
    })?;
    Ok(count)
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd returns a new descriptor or -1.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
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

/// `percore serve`: starts, reports where it listens, serves until a signal, drains.
pub fn serve(config: &Config) -> Result<(), ServeError> {
    let signals = block_shutdown_signals();
    let server = start(config)?;
    let cores = config.cores();
    println!(
        "percore listening on http://{} with {} io core{} on CPU{} {}",
        server.addr,
        cores,
        if cores == 1 { "" } else { "s" },
        if cores == 1 { "" } else { "s" },
        cpu::format_cpu_list(&config.cpus)
    );
    println!("{}", server.store_line);
    let _ = io::stdout().flush();
    let signal = wait_for_signal(&signals, None);
    let name = if signal == Some(libc::SIGINT) {
        "SIGINT"
    } else {
        "SIGTERM"
    };
    println!(
        "percore: {name} received; draining for up to {:?} (send it again to stop at once)",
        config.shutdown_grace
    );
    let _ = io::stdout().flush();
    server.drain();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.join());
    });
    loop {
        if let Ok(result) = done_rx.recv_timeout(Duration::from_millis(50)) {
            let cut = result?;
            if cut > 0 {
                println!("percore: grace period over; cut {cut} connection(s) still open");
            }
            println!("percore: stopped");
            return Ok(());
        }
        if wait_for_signal(&signals, Some(Duration::from_millis(1))).is_some() {
            println!("percore: second signal; stopping now");
            let _ = io::stdout().flush();
            std::process::exit(1);
        }
    }
}

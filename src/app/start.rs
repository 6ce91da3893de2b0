//! Composing an [`App`] on a node: bind, open the built-in layers, start one io core per CPU, serve until a signal, drain.

use std::ffi::OsString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use super::blocking::Pool;
use super::ctx::Ctx;
use super::node::Node;
use super::service::{AppService, CoreMsg};
use super::App;
use crate::auth::Auth;
use crate::config::{self, Config, ConfigError, Values};
use crate::documents::{DataShared, Plane, PlaneCounters};
use crate::limit::Limiter;
use crate::metrics::Registry;
use crate::net::{CoreOptions, Lifecycle};
use crate::queue::kinds::JobKinds;
use crate::queue::Queues;
use crate::runtime::handover::{self, Arrival, Offer, Waiting};
use crate::runtime::{self, cpu, uring, Cores, ServeError, Wiring};
use crate::statics::Index;
use crate::store::open::open_store;

/// Exit status for a usage or configuration error (sysexits.h EX_USAGE).
const EX_USAGE: u8 = 64;

/// A running node, started by [`App::start`].
pub struct Server {
    pub addr: SocketAddr,
    /// Where the operator's calls are served, with `--admin-listen`.
    pub admin_addr: Option<SocketAddr>,
    pub node: Arc<Node>,
    cores: Cores,
    /// The document store's directory when it is a temporary one, removed at exit.
    temporary_dir: Option<std::path::PathBuf>,
    /// One line describing the store, for the start-up log.
    pub store_line: String,
    /// Whether connections are steered to the io core on their CPU, for the start-up log.
    pub steering: runtime::Steering,
    /// With `--handover`: the listeners taken over, for the start-up log.
    pub took_over: Option<String>,
    /// With `--handover`: the thread waiting on PATH for a successor.
    waiting: Mutex<Option<Waiting>>,
    /// The successor's process id, once one serves on this node's listeners.
    handed: mpsc::Receiver<Option<u32>>,
}

impl Server {
    /// The first phase of shutdown: `/readyz` fails while the node still
    /// accepts and serves (`--drain-delay`); [`Self::drain`] follows.
    pub fn mark_unready(&self) {
        self.node.lifecycle.mark_unready();
    }

    /// Begins draining: readiness fails, listeners close, connections finish
    /// their current request within the grace period. A node waiting for a
    /// successor (`--handover`) stops waiting and closes what it offered.
    pub fn drain(&self) {
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(waiting) = waiting {
            waiting.stop();
        }
        self.cores.drain();
    }

    /// Whether this node waits for a successor on `--handover PATH`.
    pub fn waits_for_successor(&self) -> bool {
        self.waiting.lock().map(|w| w.is_some()).unwrap_or(false)
    }

    /// `Some(pid)` once a successor serves on this node's listeners: this one should drain now.
    pub fn handed_over(&self) -> Option<Option<u32>> {
        self.handed.try_recv().ok()
    }

    /// Waits for every io core to finish draining. Returns the number of connections cut at the deadline.
    pub fn join(self) -> io::Result<usize> {
        let cut = self.cores.join()?;
        if let Some(dir) = &self.temporary_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        Ok(cut)
    }
}

impl<S: 'static> App<S> {
    /// Binds the listeners, opens the built-in layers and starts every io
    /// core; returns once all of them serve. `values` are the resolved
    /// options ([`crate::config::parse_serve`]), read by handlers through
    /// [`Ctx::option`].
    pub fn start(self, config: &Config, values: Values) -> Result<Server, ServeError> {
        let cores = config.cores();
        let mut kinds = self.kinds.clone();
        if self.builtin_kinds {
            if let Some(options) = &config.queues {
                kinds.extend(JobKinds::builtin(&options.kind_options()).map_err(ServeError::App)?);
            }
        }
        let kinds = JobKinds::new(kinds).map_err(ServeError::App)?;
        let (mut rendezvous, mut inherited) = (None, None);
        match config
            .handover
            .as_deref()
            .map(handover::arrive)
            .transpose()?
        {
            Some(Arrival::Fresh(fresh)) => rendezvous = Some(fresh),
            Some(Arrival::Inherited(taken)) => inherited = Some(taken),
            None => {}
        }
        let (listeners, addr, steering) = match &mut inherited {
            Some(taken) => {
                let theirs = taken.addr()?;
                taken.check_addr(theirs, config.listen)?;
                let sockets = std::mem::take(&mut taken.listeners);
                runtime::adopt(sockets, theirs, &config.cpus, config.steer)?
            }
            None => runtime::bind(config.listen, &config.cpus, config.steer)?,
        };
        let inherited_admin = inherited.as_mut().and_then(|taken| taken.admin.take());
        let (admin, admin_addr) = match (config.admin_listen, inherited_admin) {
            (Some(at), Some(socket)) => {
                let bound = handover::local_addr(&socket)?;
                if let Some(taken) = &inherited {
                    taken.check_addr(bound, at)?;
                }
                (Some(socket), Some(bound))
            }
            (Some(at), None) => {
                let (socket, bound) = runtime::bind_admin(at)?;
                (Some(socket), Some(bound))
            }
            (None, _) => (None, None),
        };
        // What this node offers its own successor: duplicates of its
        // listeners, closed when it drains so that they close for good.
        let offer = match &config.handover {
            Some(_) => Some(Offer {
                listeners: listeners
                    .iter()
                    .map(|l| l.try_clone())
                    .collect::<io::Result<_>>()?,
                admin: admin.as_ref().map(|a| a.try_clone()).transpose()?,
            }),
            None => None,
        };
        let mut route_names: Vec<&'static str> =
            self.routes().into_iter().map(|(_, p)| p).collect();
        let limiter = config.rate_limit.clone().map(Limiter::new);
        if let Some(limiter) = &limiter {
            limiter.start_sweeper()?;
        }
        let auth = match &config.auth {
            Some(options) => {
                let auth = Auth::new(options.clone())?;
                auth.start_watcher()?;
                Some(auth)
            }
            None => None,
        };
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
        let wiring = Wiring::<CoreMsg<S>>::new(cores)?;
        let mailboxes = wiring.mailboxes.clone();
        let store_replies: Vec<_> = mailboxes
            .iter()
            .map(|m| m.outlet(CoreMsg::Stored))
            .collect();
        let pg_opened: Vec<_> = mailboxes
            .iter()
            .map(|m| m.outlet(CoreMsg::PgOpened))
            .collect();
        let store = open_store(&config.store, cores, &store_replies, &pg_opened)?;
        let queues = match &config.queues {
            Some(options) => {
                let place = match &options.nats {
                    Some(nats) => format!("{} (stream {})", nats.url, nats.stream),
                    None => options.data_dir.display().to_string(),
                };
                let answerers = mailboxes.iter().map(|m| m.outlet(CoreMsg::Job)).collect();
                let queues = Queues::start(options.clone(), kinds, answerers)
                    .map_err(|source| ServeError::Jobs { place, source })?;
                Some(queues)
            }
            None => None,
        };
        let data = Arc::new(DataShared {
            map: store.map,
            options: store.options,
            cache_counters: (0..cores).map(|_| Arc::default()).collect(),
            store_counters: store.store_counters,
            plane_counters: (0..cores)
                .map(|_| Arc::<PlaneCounters>::default())
                .collect(),
            pg_counters: store.pg_counters,
        });
        let lifecycle = Arc::new(Lifecycle::new(cores));
        let node = Arc::new(Node {
            lifecycle: Arc::clone(&lifecycle),
            metrics: Registry::new(cores, &route_names),
            io_cores: cores,
            name: self.name,
            // The document served on the public listener lists what it serves.
            routes: if admin_addr.is_some() {
                self.public_routes()
            } else {
                self.routes()
            },
            values,
            limiter,
            admin_listener: admin_addr.is_some(),
            auth,
            statics,
            queues,
            data: Some(Arc::clone(&data)),
        });
        let options = CoreOptions {
            limits: config.limits,
            max_connections: config.max_connections_per_core,
            idle_timeout: config.idle_timeout,
            header_timeout: config.header_timeout,
            body_timeout: config.body_timeout,
            shutdown_grace: config.shutdown_grace,
            io_budget: uring::IoBudget::for_this_process(cores),
        };
        let blocking = Pool::start(cores.max(2))?;
        let peers: Vec<_> = mailboxes.iter().map(|m| m.outlet(CoreMsg::Data)).collect();
        let builders: Vec<_> = store
            .links
            .into_iter()
            .enumerate()
            .map(|(core, link)| {
                let plane = Plane::new(core, Arc::clone(&data), link, peers.clone());
                let router = self.router.clone();
                let make_state = Arc::clone(&self.make_state);
                let node = Arc::clone(&node);
                let mailboxes = mailboxes.clone();
                let blocking = blocking.clone();
                move || {
                    let state = make_state(core);
                    AppService::new(
                        router,
                        Ctx::new(core, state, node, plane),
                        mailboxes,
                        blocking,
                    )
                }
            })
            .collect();
        let cores = runtime::launch(
            listeners,
            admin,
            &config.cpus,
            options,
            wiring,
            lifecycle,
            builders,
        )?;
        // Every core serves: a predecessor may stop accepting now.
        let took_over = inherited.as_ref().map(|taken| {
            format!(
                "{}: took over the listeners of pid {} on {}; it drains now",
                self.name,
                taken
                    .pid
                    .map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
                taken.path().display()
            )
        });
        if let Some(taken) = inherited {
            rendezvous = Some(taken.ready()?);
        }
        let (handed_tx, handed) = mpsc::channel();
        let waiting = match (rendezvous, offer) {
            (Some(rendezvous), Some(offer)) => Some(rendezvous.wait(offer, handed_tx)?),
            _ => None,
        };
        Ok(Server {
            addr,
            admin_addr,
            node,
            cores,
            temporary_dir: store.temporary_dir,
            store_line: store.line,
            steering,
            took_over,
            waiting: Mutex::new(waiting),
            handed,
        })
    }

    /// One io core's service of this application, not part of a running
    /// server, with a one-shard document store in `dir`: for tests of the
    /// request path. Messages for the core (its store thread's replies)
    /// arrive in the returned inbox, to be handed to `on_message` as the io
    /// loop would.
    pub fn standalone_core(
        self,
        dir: &std::path::Path,
        limiter: Option<Arc<Limiter>>,
    ) -> Result<(AppService<S>, crossbeam_channel::Receiver<CoreMsg<S>>), String> {
        self.standalone_core_with(dir, limiter, None)
    }

    /// [`Self::standalone_core`] with authentication.
    pub fn standalone_core_with(
        self,
        dir: &std::path::Path,
        limiter: Option<Arc<Limiter>>,
        auth: Option<Arc<Auth>>,
    ) -> Result<(AppService<S>, crossbeam_channel::Receiver<CoreMsg<S>>), String> {
        let (mailbox, inbox) =
            crate::net::Mailbox::<CoreMsg<S>>::detached().map_err(|e| e.to_string())?;
        let (plane, data) = Plane::standalone(
            dir,
            crate::store::StoreOptions::default(),
            mailbox.outlet(CoreMsg::Stored),
            mailbox.outlet(CoreMsg::Data),
        )?;
        let route_names: Vec<&'static str> = self.routes().into_iter().map(|(_, p)| p).collect();
        let node = Arc::new(Node {
            lifecycle: Arc::new(Lifecycle::new(1)),
            metrics: Registry::new(1, &route_names),
            io_cores: 1,
            name: self.name,
            routes: self.routes(),
            values: Values::default(),
            limiter,
            admin_listener: false,
            auth,
            statics: None,
            queues: None,
            data: Some(data),
        });
        let blocking = Pool::start(1).map_err(|e| e.to_string())?;
        let state = (self.make_state)(0);
        let ctx = Ctx::new(0, state, node, plane);
        Ok((
            AppService::new(self.router, ctx, vec![mailbox], blocking),
            inbox,
        ))
    }

    /// Starts, reports where it listens, serves until a signal, drains.
    pub fn serve(self, config: &Config, values: Values) -> Result<(), ServeError> {
        let signals = runtime::block_shutdown_signals();
        let name = self.name;
        let server = self.start(config, values)?;
        let cores = config.cores();
        println!(
            "{name} listening on http://{} with {} io core{} on CPU{} {}",
            server.addr,
            cores,
            if cores == 1 { "" } else { "s" },
            if cores == 1 { "" } else { "s" },
            cpu::format_cpu_list(&config.cpus)
        );
        println!("{}", server.store_line);
        println!("{}", server.steering);
        if let Some(admin) = server.admin_addr {
            println!(
                "{name}: operator calls (/metrics, dead letters, redrive) on http://{admin} alone"
            );
        }
        let keeps_data = config.store.dir.is_some()
            || matches!(config.store.backend, crate::store::Backend::Postgres(_));
        if config.auth.is_none() && (keeps_data || config.queues.is_some()) {
            println!(
                "{name}: warning: no authentication is configured, so anyone who can reach {} can write documents and submit jobs (see --auth-keys)",
                server.addr
            );
        }
        if let Some(line) = &server.took_over {
            println!("{line}");
        }
        let _ = io::stdout().flush();
        // Wait for a signal, or, with --handover, for a successor to serve.
        let signal = loop {
            if !server.waits_for_successor() {
                break runtime::wait_for_signal(&signals, None);
            }
            let signal = runtime::wait_for_signal(&signals, Some(HANDOVER_POLL));
            if signal.is_some() {
                break signal;
            }
            if let Some(successor) = server.handed_over() {
                println!(
                    "{name}: handed the listeners over to pid {}; draining for up to {:?}",
                    successor.map_or_else(|| "?".to_owned(), |pid| pid.to_string()),
                    config.shutdown_grace
                );
                let _ = io::stdout().flush();
                return finish(name, server, &signals);
            }
        };
        let signal = if signal == Some(libc::SIGINT) {
            "SIGINT"
        } else {
            "SIGTERM"
        };
        if !config.drain_delay.is_zero() {
            // First phase: the balancer sees /readyz fail and stops sending
            // new work, while everything it already sent is still served.
            server.mark_unready();
            println!(
                "{name}: {signal} received; /readyz fails now, still serving for {:?} before draining (send it again to stop at once)",
                config.drain_delay
            );
            let _ = io::stdout().flush();
            if runtime::wait_for_signal(&signals, Some(config.drain_delay)).is_some() {
                println!("{name}: second signal; stopping now");
                let _ = io::stdout().flush();
                std::process::exit(1);
            }
        }
        println!(
            "{name}: {signal} received; draining for up to {:?} (send it again to stop at once)",
            config.shutdown_grace
        );
        let _ = io::stdout().flush();
        finish(name, server, &signals)
    }
}

/// How often a node waiting for a successor looks whether one serves.
const HANDOVER_POLL: Duration = Duration::from_millis(50);

/// Drains `server` and waits for it; a second signal stops at once.
fn finish(name: &str, server: Server, signals: &libc::sigset_t) -> Result<(), ServeError> {
    server.drain();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(server.join());
    });
    loop {
        if let Ok(result) = done_rx.recv_timeout(Duration::from_millis(50)) {
            let cut = result?;
            if cut > 0 {
                println!("{name}: grace period over; cut {cut} connection(s) still open");
            }
            println!("{name}: stopped");
            return Ok(());
        }
        if runtime::wait_for_signal(signals, Some(Duration::from_millis(1))).is_some() {
            println!("{name}: second signal; stopping now");
            let _ = io::stdout().flush();
            std::process::exit(1);
        }
    }
}

/// Parses `argv` as `percore serve`'s options and the application's own, and serves `app`.
pub(super) fn run<S: 'static>(app: App<S>, argv: impl IntoIterator<Item = OsString>) -> ExitCode {
    let name = app.name;
    let routes: Vec<&str> = app.routes().into_iter().map(|(_, p)| p).collect();
    let argv: Vec<OsString> = argv.into_iter().collect();
    let command = match config::serve_command(app.options()) {
        Ok(command) => command.name(name).bin_name(name),
        Err(error) => return usage(name, &error),
    };
    let resolved = command
        .try_get_matches_from(argv)
        .map_err(ConfigError::Cli)
        .and_then(|matches| config::from_matches(&matches, app.options(), &routes));
    match resolved {
        Ok((config, values)) => serve_config(app, &config, values),
        Err(error) => usage(name, &error),
    }
}

/// Prints a command-line or configuration error (exit 64); `--help` and `--version` succeed.
pub fn usage(name: &str, error: &ConfigError) -> ExitCode {
    match error {
        ConfigError::Cli(error) => {
            let _ = error.print();
            if error.use_stderr() {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            }
        }
        error => {
            eprintln!("{name}: {error}");
            ExitCode::from(EX_USAGE)
        }
    }
}

/// Serves `app` on a resolved configuration (exit 1 if it cannot start, 64 if the application's composition is refused).
pub fn serve_config<S: 'static>(app: App<S>, config: &Config, values: Values) -> ExitCode {
    let name = app.name;
    match app.serve(config, values) {
        Ok(()) => ExitCode::SUCCESS,
        Err(ServeError::App(message)) => {
            eprintln!("{name}: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}

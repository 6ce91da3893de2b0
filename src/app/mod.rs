//! Building a service on percore: routes, per-core state, job kinds and handlers that answer later, composed on the generic io cores.
//!
//! An [`App`] is a route table of plain `fn` handlers, a way to build each
//! core's own state, and the job kinds the node runs. [`App::run`] parses the
//! same flags, `PERCORE_*` variables and TOML file as `percore serve`, opens
//! the built-in layers (document store and cache partitions, rate limiter,
//! static files, jobs, metrics) and drives one [`AppService`] per io core.
//! `percore serve` is itself one `App`: [`crate::api::percore`] registers
//! every built-in endpoint through the same calls a user makes.
//!
//! ```no_run
//! use percore::app::{App, Ctx, Reply, Request};
//! use percore::http::Response;
//!
//! /// Each core counts the greetings it served.
//! struct Greeter {
//!     served: u64,
//! }
//!
//! fn hello(request: &Request<'_>, ctx: &mut Ctx<Greeter>, response: &mut Response<'_>) {
//!     ctx.state.served += 1;
//!     let name = request.param("name").unwrap_or("world");
//!     let body = format!("{{\"hello\":\"{name}\",\"core\":{}}}", ctx.core());
//!     response.send(200, "application/json", &[], body.as_bytes());
//! }
//!
//! /// Asks core 0 for its count: a message to another core, answered later.
//! fn count(_: &Request<'_>, ctx: &mut Ctx<Greeter>, _: &mut Response<'_>) {
//!     ctx.on_core(0, |ctx| Reply::json(200, &serde_json::json!({ "served": ctx.state.served })));
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     App::with_state("greeter", |_core| Greeter { served: 0 })
//!         .get("/hello/:name", hello)
//!         .get("/count", count)
//!         .mount(percore::api::health)
//!         .run()
//! }
//! ```
//!
//! Handlers are `fn` pointers, so dispatch is one indirect call with no
//! boxing; a handler that answers at once allocates nothing
//! (`tests/alloc.rs`). Work answered later ([`Ctx::on_core`],
//! [`Ctx::spawn_blocking`], [`Ctx::defer_job`], [`Ctx::defer_documents`])
//! keeps the connection's later pipelined requests waiting, in order.

pub mod blocking;
mod ctx;
pub mod node;
pub mod router;
mod service;
mod start;

use std::process::ExitCode;
use std::sync::Arc;

use crate::config::AnyOpt;
use crate::http::Response;
use crate::queue::kinds::JobKind;

pub use ctx::{Blocking, Call, Ctx, Deferred, Reply, Request};
pub use node::Node;
pub use router::{Match, Params, Router};
pub use service::{Answer, AppService, CoreMsg};
pub use start::{serve_config, usage, Server};

/// A handler writes exactly one response, or defers its answer through the [`Ctx`].
pub type Handler<S> = fn(&Request<'_>, &mut Ctx<S>, &mut Response<'_>);

type MakeState<S> = Arc<dyn Fn(usize) -> S + Send + Sync>;

/// A service to run on percore's io cores.
pub struct App<S: 'static = ()> {
    name: &'static str,
    router: Router<Handler<S>>,
    make_state: MakeState<S>,
    kinds: Vec<JobKind>,
    builtin_kinds: bool,
    options: Vec<&'static dyn AnyOpt>,
}

impl App<()> {
    /// An application with no per-core state of its own.
    pub fn new(name: &'static str) -> Self {
        Self::with_state(name, |_| ())
    }
}

impl<S: 'static> App<S> {
    /// An application whose every io core owns an `S`, made by `make(core)`
    /// on that core's own thread (so `S` need not be `Send`) before it serves.
    pub fn with_state(
        name: &'static str,
        make: impl Fn(usize) -> S + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            router: Router::default(),
            make_state: Arc::new(make),
            kinds: Vec::new(),
            builtin_kinds: false,
            options: Vec::new(),
        }
    }

    /// The name the application prints at start-up.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Adds a route: `pattern` is a path whose `:name` segments are
    /// parameters (`/v1/products/:id`). The first route that matches wins;
    /// `GET` routes answer `HEAD` too. Panics on a malformed pattern.
    pub fn route(
        mut self,
        method: &'static str,
        pattern: &'static str,
        handler: Handler<S>,
    ) -> Self {
        self.router.add(method, pattern, handler);
        self
    }

    /// Adds an operator's call (like `/metrics` or a redrive): with
    /// `--admin-listen` it is served on the admin listener alone, and every
    /// other route on the public one alone; without, everywhere.
    pub fn operator(
        mut self,
        method: &'static str,
        pattern: &'static str,
        handler: Handler<S>,
    ) -> Self {
        self.router.add(method, pattern, handler).mark_operator();
        self
    }

    pub fn get(self, pattern: &'static str, handler: Handler<S>) -> Self {
        self.route("GET", pattern, handler)
    }

    pub fn post(self, pattern: &'static str, handler: Handler<S>) -> Self {
        self.route("POST", pattern, handler)
    }

    pub fn put(self, pattern: &'static str, handler: Handler<S>) -> Self {
        self.route("PUT", pattern, handler)
    }

    pub fn patch(self, pattern: &'static str, handler: Handler<S>) -> Self {
        self.route("PATCH", pattern, handler)
    }

    pub fn delete(self, pattern: &'static str, handler: Handler<S>) -> Self {
        self.route("DELETE", pattern, handler)
    }

    /// Adds a group of routes (`percore::api::documents`, `percore::api::health`, ...).
    pub fn mount(self, group: fn(Self) -> Self) -> Self {
        group(self)
    }

    /// Registers a job kind: submissions to `POST /v1/jobs/{its name}` are
    /// checked by it and run by it on the worker threads.
    pub fn job_kind(mut self, kind: JobKind) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Registers percore's own job kinds, `webhook` and `email`, configured by their flags.
    pub fn builtin_job_kinds(mut self) -> Self {
        self.builtin_kinds = true;
        self
    }

    /// Declares an option of the application's own: it gets a flag, a
    /// `PERCORE_*` variable and a TOML key beside percore's, shows in
    /// `--help`, and handlers read it typed with [`Ctx::option`]. A name that
    /// clashes with another option is refused at start-up.
    pub fn option(mut self, option: &'static dyn AnyOpt) -> Self {
        self.options.push(option);
        self
    }

    /// The application's own options, as declared.
    pub fn options(&self) -> &[&'static dyn AnyOpt] {
        &self.options
    }

    /// The routes, as `(method, pattern)` in match order.
    pub fn routes(&self) -> Vec<(&'static str, &'static str)> {
        self.router.routes().collect()
    }

    /// The routes the public listener serves when an admin listener takes
    /// the operator calls ([`Self::operator`]), as `(method, pattern)`.
    pub fn public_routes(&self) -> Vec<(&'static str, &'static str)> {
        self.router.public_routes().collect()
    }

    /// Parses the command line as `percore serve` does (flags, `PERCORE_*`
    /// variables, `--config FILE`), then serves until SIGTERM or SIGINT.
    /// Exits 64 on a bad option, 1 if the server cannot start.
    pub fn run(self) -> ExitCode {
        let argv = std::env::args_os();
        start::run(self, argv)
    }
}

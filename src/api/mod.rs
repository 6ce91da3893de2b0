//! percore's own endpoints, as route groups any [`App`] can mount, and `percore serve` as their composition.
//!
//! Every built-in endpoint is registered here through the public
//! [`App`] API, the same calls an application makes; there is no other way
//! in. The groups are generic over the application's per-core state, so
//! an application mounts them beside its own routes.

pub mod documents;
pub mod jobs;
pub mod openapi;
pub mod techempower;

use serde::Serialize;

use crate::app::{App, Ctx, Request};
use crate::http::Response;

/// `percore serve`: every built-in group, and the built-in job kinds.
pub fn percore() -> App {
    App::new("percore")
        .mount(benchmarks)
        .mount(health)
        .mount(jobs)
        .mount(documents)
        .mount(techempower)
        .builtin_job_kinds()
}

/// `/plaintext`, `/json` and `/echo`: the TechEmpower baseline and an upload target.
pub fn benchmarks<S>(app: App<S>) -> App<S> {
    app.get("/plaintext", plaintext::<S>)
        .get("/json", json::<S>)
        .post("/echo", echo::<S>)
}

/// `/healthz`, `/readyz` (fails while draining), `/metrics` (Prometheus text) and `/openapi.json` (the running app's API, OpenAPI 3.1).
pub fn health<S>(app: App<S>) -> App<S> {
    app.get("/healthz", healthz::<S>)
        .get("/readyz", readyz::<S>)
        .operator("GET", "/metrics", metrics::<S>)
        .operator("POST", "/admin/drain", drain::<S>)
        .get("/openapi.json", openapi::openapi::<S>)
}

/// Jobs: submit, status, redrive, dead letters. Mount before [`documents()`]:
/// `/v1/jobs/...` would otherwise be read as a document collection.
pub fn jobs<S>(app: App<S>) -> App<S> {
    app.post("/v1/jobs/:queue", jobs::submit::<S>)
        .get("/v1/jobs/:id", jobs::status::<S>)
        .operator("POST", "/v1/jobs/:id/redrive", jobs::redrive::<S>)
        .operator("GET", "/v1/dead", jobs::dead_letters::<S>)
}

/// The document API on the sharded store: `/v1/{collection}/{key}` and scans.
pub fn documents<S>(app: App<S>) -> App<S> {
    app.get("/v1/:collection/:key", documents::get::<S>)
        .put("/v1/:collection/:key", documents::put::<S>)
        .patch("/v1/:collection/:key", documents::patch::<S>)
        .delete("/v1/:collection/:key", documents::delete::<S>)
        .get("/v1/:collection", documents::scan::<S>)
}

/// TechEmpower's database tests on the embedded store.
pub fn techempower<S>(app: App<S>) -> App<S> {
    app.get("/db", techempower::db::<S>)
        .get("/queries", techempower::queries::<S>)
        .get("/cached-queries", techempower::cached_queries::<S>)
        .get("/updates", techempower::updates::<S>)
        .get("/fortunes", techempower::fortunes::<S>)
}

/// TechEmpower "plaintext": a fixed body, no serialization.
pub fn plaintext<S>(_: &Request<'_>, _: &mut Ctx<S>, response: &mut Response<'_>) {
    response.send(200, "text/plain", &[], b"Hello, World!");
}

/// TechEmpower "JSON serialization": a fresh object serialized per request.
pub fn json<S>(_: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    #[derive(Serialize)]
    struct Message {
        message: &'static str,
    }
    response.json(
        200,
        &Message {
            message: "Hello, World!",
        },
        &mut ctx.scratch,
    );
}

fn healthz<S>(_: &Request<'_>, _: &mut Ctx<S>, response: &mut Response<'_>) {
    response.send(200, "application/json", &[], br#"{"status":"ok"}"#);
}

/// `POST /admin/drain`: what SIGTERM does (`/readyz` fails, then the node
/// drains after `--drain-delay`), for an operator who can reach the admin
/// port but not the host. Asked twice, it drains once: a second SIGTERM
/// would stop the node at once.
fn drain<S>(_: &Request<'_>, _: &mut Ctx<S>, response: &mut Response<'_>) {
    static ASKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !ASKED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        // SAFETY: kill(2) to this process with a valid signal touches no
        // memory; the serving thread waits for SIGTERM (blocked elsewhere).
        unsafe {
            libc::kill(libc::getpid(), libc::SIGTERM);
        }
    }
    response.send(202, "application/json", &[], br#"{"status":"draining"}"#);
}

fn readyz<S>(_: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    if !ctx.is_ready() {
        response.send(
            503,
            "application/json",
            &[("Retry-After", "1")],
            br#"{"status":"draining"}"#,
        );
    } else {
        response.send(200, "application/json", &[], br#"{"status":"ready"}"#);
    }
}

fn metrics<S>(_: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let text = ctx.node.render_metrics();
    response.send(
        200,
        "text/plain; version=0.0.4; charset=utf-8",
        &[],
        text.as_bytes(),
    );
}

/// Answers with the request body: a benchmark target for upload paths.
fn echo<S>(request: &Request<'_>, _: &mut Ctx<S>, response: &mut Response<'_>) {
    let content_type = request
        .header("content-type")
        .and_then(|v| std::str::from_utf8(v).ok())
        .unwrap_or("application/octet-stream");
    response.send(200, content_type, &[], request.body);
}

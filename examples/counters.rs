//! Counters owned by io cores, and work answered later: a handler that defers to the core owning a key, to a worker thread, and to a job of the application's own kind.
//!
//! ```text
//! cargo run --release --example counters -- --cores 2 --data-dir /tmp/counters
//! curl -X POST localhost:8080/counters/apples     # +1 on the core that owns "apples"
//! curl localhost:8080/counters/apples
//! curl -X POST localhost:8080/v1/jobs/tally -d '{"counter":"apples"}'   # 202, run by a worker
//! curl localhost:8080/v1/jobs/1
//! curl localhost:8080/slow/200                    # answered by a worker thread after 200 ms
//! ```

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use percore::app::{App, Ctx, Reply, Request};
use percore::http::{HttpError, Response};
use percore::queue::kinds::{JobKind, Outcome};

/// Each core owns the counters whose names hash to it: no locks, and every
/// increment of one counter passes through one core, in order.
#[derive(Default)]
struct Counters {
    counts: HashMap<String, u64>,
}

/// `POST /counters/:name`: adds one on the owner core and answers with the new count.
fn increment(request: &Request<'_>, ctx: &mut Ctx<Counters>, _: &mut Response<'_>) {
    let name = request.param("name").unwrap_or_default().to_owned();
    let owner = ctx.core_for(name.as_bytes());
    ctx.on_core(owner, move |ctx| {
        let count = ctx.state.counts.entry(name.clone()).or_default();
        *count += 1;
        Reply::json(
            200,
            &serde_json::json!({ "name": name, "count": *count, "core": ctx.core() }),
        )
    });
}

/// `GET /counters/:name`: reads it on the owner core.
fn read(request: &Request<'_>, ctx: &mut Ctx<Counters>, _: &mut Response<'_>) {
    let name = request.param("name").unwrap_or_default().to_owned();
    let owner = ctx.core_for(name.as_bytes());
    ctx.on_core(owner, move |ctx| match ctx.state.counts.get(&name) {
        Some(count) => Reply::json(
            200,
            &serde_json::json!({ "name": name, "count": count, "core": ctx.core() }),
        ),
        None => Reply::error(&HttpError::NotFound {
            path: format!("/counters/{name}"),
        }),
    });
}

/// `GET /slow/:ms`: blocking work (here a sleep of at most 5 s) on a worker thread.
fn slow(request: &Request<'_>, ctx: &mut Ctx<Counters>, response: &mut Response<'_>) {
    let Some(ms) = request
        .param("ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|&ms| ms <= 5000)
    else {
        return response.error(
            &HttpError::BadRequest("`ms` must be a whole number from 0 to 5000".into()),
            &mut ctx.scratch,
        );
    };
    ctx.spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(ms));
        Reply::json(200, &serde_json::json!({ "slept_ms": ms }))
    });
}

/// The `tally` job kind: checked at submission, run on a worker thread.
fn tally() -> JobKind {
    JobKind::new(
        "tally",
        |payload| match payload.get("counter").and_then(|c| c.as_str()) {
            Some(name) if !name.is_empty() => Ok(()),
            _ => Err("a tally job needs a non-empty string `counter`".into()),
        },
        |job| {
            Outcome::Succeeded(
                serde_json::json!({ "tallied": job.payload["counter"], "attempt": job.attempt }),
            )
        },
    )
}

fn main() -> ExitCode {
    App::with_state("counters", |_core| Counters::default())
        .post("/counters/:name", increment)
        .get("/counters/:name", read)
        .get("/slow/:ms", slow)
        .job_kind(tally())
        .mount(percore::api::jobs)
        .mount(percore::api::health)
        .run()
}

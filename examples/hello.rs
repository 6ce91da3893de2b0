//! The smallest service on percore: its own `/json` and `/plaintext`, registered through the builder, on every io core.
//!
//! ```text
//! cargo run --release --example hello -- --listen 127.0.0.1:8080
//! curl localhost:8080/json
//! ```
//! `benches/compare.py --targets percore,percore-user` measures these routes
//! against the built-in ones: a user's route costs what percore's does.

use std::process::ExitCode;

use percore::app::{App, Ctx, Request};
use percore::http::Response;

// As `percore serve` has: the hot path allocates nothing, the rest of the program does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

fn json(_: &Request<'_>, ctx: &mut Ctx<()>, response: &mut Response<'_>) {
    let message = Message {
        message: "Hello, World!",
    };
    response.json(200, &message, &mut ctx.scratch);
}

fn plaintext(_: &Request<'_>, _: &mut Ctx<()>, response: &mut Response<'_>) {
    response.send(200, "text/plain", &[], b"Hello, World!");
}

fn main() -> ExitCode {
    App::new("hello")
        .get("/json", json)
        .get("/plaintext", plaintext)
        .mount(percore::api::health)
        .run()
}

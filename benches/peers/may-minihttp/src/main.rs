//! may-minihttp: the may_minihttp crate's own hello-world server (its
//! `HttpService` + `HttpServer(..).start(..)`, as in the crate's examples),
//! answering /plaintext and /json, on one may worker
//! (`may::config().set_workers(1)`). /json is serialized with serde_json
//! into the response buffer, as the crate's json example does. Headers are
//! what the crate writes itself: `Server: M`, `Date`, `Content-Length`.
//!
//! Usage: may-minihttp --listen 127.0.0.1:8080

use std::io;

use bytes::BufMut;
use may_minihttp::{HttpServer, HttpService, Request, Response};

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

#[derive(Clone)]
struct Bench;

impl HttpService for Bench {
    fn call(&mut self, req: Request, rsp: &mut Response) -> io::Result<()> {
        match req.path() {
            "/plaintext" => {
                rsp.header("Content-Type: text/plain").body("Hello, World!");
            }
            "/json" => {
                rsp.header("Content-Type: application/json");
                serde_json::to_writer(
                    rsp.body_mut().writer(),
                    &Message {
                        message: "Hello, World!",
                    },
                )?;
            }
            _ => {
                rsp.status_code(404, "Not Found");
            }
        }
        Ok(())
    }
}

fn parse_listen() -> String {
    let args: Vec<String> = std::env::args().collect();
    let mut addr = "127.0.0.1:8080".to_string();
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--listen" if i + 1 < args.len() => {
                addr = args[i + 1].clone();
                i += 1;
            }
            "-h" | "--help" => {
                eprintln!("usage: may-minihttp --listen ADDR:PORT");
                std::process::exit(0);
            }
            other => {
                eprintln!("may-minihttp: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    addr
}

fn main() {
    let addr = parse_listen();
    may::config().set_workers(1);
    let server = HttpServer(Bench).start(&addr).unwrap_or_else(|e| {
        eprintln!("may-minihttp: cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    eprintln!("may-minihttp listening on {addr}");
    server.join().expect("server coroutine");
}

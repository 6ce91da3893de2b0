//! hyper-min: the minimal hyper 1.x server, written the way hyper's docs and
//! examples show it. One tokio current-thread runtime, one listener, one task
//! per connection, `http1::Builder` with `pipeline_flush(true)` (hyper's own
//! advice for pipelined benchmarks), `service_fn` routing.
//!
//! Usage: hyper-min --listen 127.0.0.1:8080
//!
//! hyper adds the `Date:` header itself (cached, refreshed once a second);
//! we add `Server:`. /json is serialized with serde_json per request.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, SERVER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

async fn handle(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/plaintext") => (
            StatusCode::OK,
            "text/plain",
            Bytes::from_static(b"Hello, World!"),
        ),
        (&Method::GET, "/json") => {
            let v = serde_json::to_vec(&Message { message: "Hello, World!" }).unwrap();
            (StatusCode::OK, "application/json", Bytes::from(v))
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", Bytes::from_static(b"Not Found")),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(SERVER, HeaderValue::from_static("hyper-min"));
    h.insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    Ok(resp)
}

fn parse_listen() -> SocketAddr {
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
                eprintln!("usage: hyper-min --listen ADDR:PORT");
                std::process::exit(0);
            }
            other => {
                eprintln!("hyper-min: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    addr.parse().unwrap_or_else(|e| {
        eprintln!("hyper-min: bad --listen {addr:?}: {e}");
        std::process::exit(2)
    })
}

fn main() {
    let addr = parse_listen();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(addr).await.expect("bind");
        eprintln!("hyper-min listening on {addr}");
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            tokio::task::spawn(async move {
                let _ = http1::Builder::new()
                    .pipeline_flush(true)
                    .serve_connection(TokioIo::new(stream), service_fn(handle))
                    .await;
            });
        }
    });
}

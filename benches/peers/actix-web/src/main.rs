//! actix-web: actix-web 4 written the way its docs show it, with one worker
//! (`HttpServer::new(..).workers(1)`, the docs' way to run on a single core).
//! `/plaintext` and `/json` as routes, /json serialized with serde_json per
//! request. Headers are what actix sets itself: `Date` (cached, refreshed
//! every 500 ms) and no `Server`.
//!
//! Usage: actix-web --listen 127.0.0.1:8080

use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};

#[derive(serde::Serialize)]
struct Message {
    message: &'static str,
}

async fn plaintext() -> HttpResponse {
    HttpResponse::Ok()
        .content_type(ContentType::plaintext())
        .body("Hello, World!")
}

async fn json() -> HttpResponse {
    let body = serde_json::to_vec(&Message {
        message: "Hello, World!",
    })
    .expect("serializing a static struct");
    HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body)
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
                eprintln!("usage: actix-web --listen ADDR:PORT");
                std::process::exit(0);
            }
            other => {
                eprintln!("actix-web: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
        i += 1;
    }
    addr
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let addr = parse_listen();
    eprintln!("actix-web listening on {addr}");
    HttpServer::new(|| {
        App::new()
            .route("/plaintext", web::get().to(plaintext))
            .route("/json", web::get().to(json))
    })
    .workers(1)
    .bind(addr)?
    .run()
    .await
}

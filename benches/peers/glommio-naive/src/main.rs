//! glommio-naive: the "naive glommio server" reference. One glommio
//! LocalExecutor pinned to the CPU the process was started on (taskset), a
//! glommio TcpListener, one task per connection; each task reads into a
//! buffer, parses every complete request in it with httparse (pipelining),
//! renders all the answers into one output buffer and writes it once.
//!
//! Usage: glommio-naive --listen 127.0.0.1:8080
use std::cell::RefCell;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

#[derive(serde::Serialize)]
struct Message { message: &'static str }

thread_local! {
    // (unix second, rendered "Date: ...\r\n" header line), refreshed once a second.
    static DATE: RefCell<(u64, String)> = RefCell::new((0, String::new()));
}

fn with_date<R>(f: impl FnOnce(&str) -> R) -> R {
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs();
    DATE.with(|d| {
        let mut d = d.borrow_mut();
        if d.0 != secs {
            *d = (secs, format!("Date: {}\r\n", httpdate::fmt_http_date(now)));
        }
        f(&d.1)
    })
}

fn respond(out: &mut Vec<u8>, path: &str, date: &str) {
    let (status, ctype, body): (&str, &str, Vec<u8>) = match path {
        "/plaintext" => ("200 OK", "text/plain", b"Hello, World!".to_vec()),
        "/json" => ("200 OK", "application/json",
            serde_json::to_vec(&Message { message: "Hello, World!" }).unwrap()),
        _ => ("404 Not Found", "text/plain", b"Not Found".to_vec()),
    };
    out.extend_from_slice(format!(
        "HTTP/1.1 {status}\r\nServer: glommio-naive\r\n{date}Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()).as_bytes());
    out.extend_from_slice(&body);
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    let _ = s.set_nodelay(true);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut len, mut out) = (0usize, Vec::with_capacity(16 * 1024));
    loop {
        if len == buf.len() {
            return Ok(()); // a request head larger than 64 KiB: give up
        }
        let n = s.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
        let mut pos = 0;
        with_date(|date| -> std::io::Result<()> {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                match req.parse(&buf[pos..len]) {
                    Ok(httparse::Status::Complete(used)) => {
                        respond(&mut out, req.path.unwrap_or("/"), date);
                        pos += used;
                    }
                    Ok(httparse::Status::Partial) => return Ok(()),
                    Err(e) => return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
                }
            }
        })?;
        buf.copy_within(pos..len, 0);
        len -= pos;
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

fn parse_listen() -> String {
    let a: Vec<String> = std::env::args().collect();
    match (a.get(1).map(String::as_str), a.get(2), a.len()) {
        (Some("--listen"), Some(v), 3) => v.clone(),
        _ => {
            eprintln!("usage: glommio-naive --listen ADDR:PORT");
            std::process::exit(2)
        }
    }
}

/// The single CPU this process is allowed on (set by taskset), if exactly one.
fn pinned_cpu() -> Option<usize> {
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) != 0 {
            return None;
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| libc::CPU_ISSET(c, &set)).collect();
        (cpus.len() == 1).then(|| cpus[0])
    }
}

fn main() {
    let addr = parse_listen();
    let placement = pinned_cpu().map_or(Placement::Unbound, Placement::Fixed);
    // glommio registers (mlocks) its io memory; 10 MiB by default exceeds an
    // 8 MiB RLIMIT_MEMLOCK for non-root users, and this server needs little.
    let where_ = format!("{placement:?}");
    let ex = LocalExecutorBuilder::new(placement)
        .name("glommio-naive")
        .io_memory(512 << 10)
        .ring_depth(512)
        .make()
        .unwrap_or_else(|e| {
            eprintln!("glommio-naive: cannot start executor: {e}");
            std::process::exit(1)
        });
    ex.run(async move {
        let listener = TcpListener::bind(addr.as_str()).unwrap_or_else(|e| {
            eprintln!("glommio-naive: bind {addr}: {e}");
            std::process::exit(1)
        });
        eprintln!("glommio-naive listening on {addr} ({where_})");
        loop {
            match listener.accept().await {
                Ok(s) => glommio::spawn_local(async move { let _ = serve(s).await; }).detach(),
                Err(e) => {
                    eprintln!("accept: {e}");
                    continue;
                }
            };
        }
    });
}

//! Restarting by socket hand-over (`--handover PATH`) under steady load: no request fails, no connection is reset.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{netns, Server};

fn percore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_percore"))
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Requests that got no answer, or a wrong one, or whose connection was refused.
    failed: AtomicU64,
    /// Connections reset by the server.
    resets: AtomicU64,
    /// A kept-alive connection closed before a request was sent on it
    /// (retried on a new one, as HTTP clients do): the race a server's
    /// close of an idle connection can lose.
    closed_idle: AtomicU64,
    /// The longest a request waited for its answer, retries included, in microseconds.
    longest_us: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, what: String, reset: bool) {
        if reset {
            self.resets.fetch_add(1, Ordering::Relaxed);
        }
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }
}

/// How one exchange ended.
enum Outcome {
    /// A 200; `close` if the server said `Connection: close`.
    Answered {
        close: bool,
    },
    /// EOF before any byte of the answer.
    ClosedBeforeAnswer,
    Reset,
    Broken(String),
}

fn exchange(stream: &mut TcpStream, request: &[u8]) -> Outcome {
    if let Err(e) = stream.write_all(request) {
        return match e.kind() {
            ErrorKind::ConnectionReset => Outcome::Reset,
            ErrorKind::BrokenPipe => Outcome::ClosedBeforeAnswer,
            _ => Outcome::Broken(format!("send: {e}")),
        };
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Outcome::ClosedBeforeAnswer,
            Ok(0) => {
                return Outcome::Broken(format!(
                    "closed inside an answer: {:?}",
                    String::from_utf8_lossy(&buf)
                ))
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Outcome::Reset,
            Err(e) => return Outcome::Broken(format!("read: {e}")),
        }
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + length {
            continue;
        }
        if !head.starts_with("http/1.1 200") {
            return Outcome::Broken(format!("answer {:?}", head.lines().next()));
        }
        return Outcome::Answered {
            close: head.contains("connection: close"),
        };
    }
}

fn connect(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Steady load on `addr` until `stop`: `kept` threads reuse keep-alive
/// connections, `fresh` threads open a connection per request.
/// With `netns`, the load runs inside that network namespace.
fn load(
    addr: SocketAddr,
    kept: usize,
    fresh: usize,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
    netns: Option<&str>,
) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for n in 0..kept + fresh {
        let keep_alive = n < kept;
        let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
        let netns = netns.map(str::to_owned);
        threads.push(std::thread::spawn(move || {
            if let Some(name) = netns {
                netns::enter(&name).unwrap();
            }
            let request: &[u8] = if keep_alive {
                b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n"
            } else {
                b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            };
            let mut conn: Option<TcpStream> = None;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                loop {
                    let reused = conn.is_some();
                    let mut stream = match conn.take() {
                        Some(stream) => stream,
                        None => match connect(addr) {
                            Ok(stream) => stream,
                            Err(e) => {
                                let reset = e.kind() == ErrorKind::ConnectionReset;
                                tally.fail(format!("connect: {e}"), reset);
                                break;
                            }
                        },
                    };
                    match exchange(&mut stream, request) {
                        Outcome::Answered { close } => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                            let waited = started.elapsed().as_micros() as u64;
                            tally.longest_us.fetch_max(waited, Ordering::Relaxed);
                            if keep_alive && !close {
                                conn = Some(stream);
                            }
                            break;
                        }
                        Outcome::ClosedBeforeAnswer if reused => {
                            tally.closed_idle.fetch_add(1, Ordering::Relaxed);
                        }
                        Outcome::ClosedBeforeAnswer => {
                            tally.fail("closed before an answer".into(), false);
                            break;
                        }
                        Outcome::Reset => {
                            tally.fail("reset".into(), true);
                            break;
                        }
                        Outcome::Broken(what) => {
                            tally.fail(what, false);
                            break;
                        }
                    }
                }
            }
        }));
    }
    threads
}

/// Waits until the load has had `more` answers since now (bounded).
fn answered(tally: &Tally, more: u64) {
    let target = tally.ok.load(Ordering::Relaxed) + more;
    let deadline = Instant::now() + Duration::from_secs(60);
    while tally.ok.load(Ordering::Relaxed) < target {
        assert!(
            Instant::now() < deadline,
            "the load stalled: {} answers, {} failed, {:?}",
            tally.ok.load(Ordering::Relaxed),
            tally.failed.load(Ordering::Relaxed),
            tally.errors.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct SocketPath(PathBuf);

impl SocketPath {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("percore-{name}-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Self(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for SocketPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Starts a node on `path` with `cores` io cores.
fn node(path: &SocketPath, cores: &str) -> Server {
    node_with(percore(), path, cores)
}

fn node_with(command: Command, path: &SocketPath, cores: &str) -> Server {
    Server::start_with(
        command,
        &[
            "--handover",
            path.arg(),
            "--cores",
            cores,
            "--shutdown-grace",
            "10s",
        ],
    )
}

#[test]
fn two_hand_overs_under_steady_load_lose_no_request_and_reset_no_connection() {
    let path = SocketPath::new("handover-load");
    let first = node(&path, "2");
    let addr = first.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = load(addr, 6, 3, &stop, &tally, None);
    answered(&tally, 2000);

    // Each successor takes the listeners; its predecessor drains and exits 0.
    let mut current = first;
    for cores in ["2", "2"] {
        let next = node(&path, cores);
        assert_eq!(next.addr, addr, "the successor serves the same address");
        let (status, output) = current.wait(Duration::from_secs(90));
        assert_eq!(status.code(), Some(0), "{output}");
        assert!(output.contains("handed the listeners over"), "{output}");
        answered(&tally, 2000);
        current = next;
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let longest = Duration::from_micros(tally.longest_us.load(Ordering::Relaxed));
    println!(
        "hand-over under load: {} answered, {} failed, {} reset, {} kept-alive connections closed idle and retried, longest wait {longest:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.resets.load(Ordering::Relaxed),
        tally.closed_idle.load(Ordering::Relaxed),
    );
    assert_eq!(
        (
            tally.failed.load(Ordering::Relaxed),
            tally.resets.load(Ordering::Relaxed)
        ),
        (0, 0),
        "{:?}",
        tally.errors.lock().unwrap()
    );
    current.signal("TERM");
    let (status, output) = current.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        !path.0.exists(),
        "the last node removes PATH on a plain shutdown"
    );
}

#[test]
fn a_successor_that_cannot_start_leaves_the_node_serving() {
    let path = SocketPath::new("handover-failed");
    let first = node(&path, "1");
    // A successor configured for another address refuses the sockets and exits.
    let output = percore()
        .args([
            "serve",
            "--listen",
            "127.0.0.2:1",
            "--cores",
            "1",
            "--handover",
            path.arg(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("same --listen"), "{stderr}");
    assert_eq!(first.get("/json").status, 200);
    // And the node still hands over to the next one that can.
    let next = node(&path, "1");
    assert_eq!(next.addr, first.addr);
    let (status, output) = first.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{output}");
    assert_eq!(next.get("/json").status, 200);
}

#[test]
fn handover_refuses_a_data_dir() {
    let output = percore()
        .args([
            "serve",
            "--handover",
            "/tmp/percore-x.sock",
            "--data-dir",
            "/tmp/percore-x",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("`handover`"), "{stderr}");
}

/// A successor with fewer cores closes the surplus listeners; once its
/// predecessor closes them too, their queued connections move to a listener
/// still open (`net.ipv4.tcp_migrate_req=1`, set by tuning/) instead of being
/// reset. Runs in a network namespace of its own, where the test may set
/// that sysctl without touching the host.
#[test]
fn a_successor_with_fewer_cores_loses_no_queued_connection() {
    if let Some(why) = netns::unavailable() {
        return netns::skip_or_fail("the fewer-cores hand-over test", &why);
    }
    let ns = netns::Netns::new("ho").unwrap();
    ns.sysctl("net.ipv4.tcp_migrate_req", "1").unwrap();

    // What the setting does, on the kernel alone: connections queued on a
    // listener that closes are accepted from the one left in its group.
    let queued = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.enter().unwrap();
                let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
                let (mut listeners, bound) =
                    percore::net::listener::bind_reuseport(any, 2).unwrap();
                let clients: Vec<TcpStream> = (0..64)
                    .map(|_| TcpStream::connect(bound).unwrap())
                    .collect();
                drop(listeners.pop());
                let kept = listeners.pop().unwrap();
                kept.set_nonblocking(false).unwrap();
                kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                // Without the setting, half of them are reset and accept times out.
                (0..clients.len())
                    .take_while(|_| kept.accept().is_ok())
                    .count()
            })
            .join()
            .unwrap()
    });
    assert_eq!(queued, 64);

    let path = SocketPath::new("handover-fewer");
    let first = node_with(ns.command(env!("CARGO_BIN_EXE_percore")), &path, "2");
    let addr = first.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let threads = load(addr, 6, 3, &stop, &tally, Some(&ns.name));
    answered(&tally, 2000);
    let next = node_with(ns.command(env!("CARGO_BIN_EXE_percore")), &path, "1");
    assert_eq!(next.addr, addr);
    let (status, output) = first.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{output}");
    answered(&tally, 2000);
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    println!(
        "hand-over from 2 io cores to 1: {} answered, {} failed, {} reset, longest wait {:?}",
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        tally.resets.load(Ordering::Relaxed),
        Duration::from_micros(tally.longest_us.load(Ordering::Relaxed))
    );
    assert_eq!(
        (
            tally.failed.load(Ordering::Relaxed),
            tally.resets.load(Ordering::Relaxed)
        ),
        (0, 0),
        "{:?}",
        tally.errors.lock().unwrap()
    );
    drop(next);
}

/// Per-core values of one counter in a /metrics text.
fn per_core(text: &str, name: &str) -> Vec<(usize, u64)> {
    let prefix = format!("{name}{{core=\"");
    text.lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (core, value) = rest.split_once("\"} ")?;
            Some((core.parse().ok()?, value.trim().parse().ok()?))
        })
        .collect()
}

/// The successor replaces the group's steering program with its own: with
/// its cores on the CPUs in the other order, a connection still lands on
/// the io core of the CPU that took its SYN (with the predecessor's program
/// left in place, every one would land on the other CPU's core).
#[test]
fn the_successor_steers_the_inherited_group_by_its_own_cpus() {
    let cpus = percore::runtime::cpu::allowed_cpus();
    if cpus.len() < 2 {
        return netns::skip_or_fail(
            "the hand-over steering test",
            "it needs two CPUs and this process may use one",
        );
    }
    let (a, b) = (cpus[0].to_string(), cpus[1].to_string());
    let path = SocketPath::new("handover-steer");
    let start = |order: String| {
        Server::start_with(
            percore(),
            &[
                "--handover",
                path.arg(),
                "--cores",
                "2",
                "--cpus",
                &order,
                "--steer",
                "on",
            ],
        )
    };
    let first = start(format!("{a},{b}"));
    let next = start(format!("{b},{a}"));
    let (status, output) = first.wait(Duration::from_secs(90));
    assert_eq!(status.code(), Some(0), "{output}");
    for (cpu, core) in [(cpus[1], 0), (cpus[0], 1)] {
        let text = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    percore::runtime::cpu::pin_current_thread(cpu).unwrap();
                    for _ in 0..16 {
                        let mut conn = next.connect();
                        conn.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
                        assert_eq!(conn.response().status, 200);
                    }
                    next.get("/metrics").text()
                })
                .join()
                .unwrap()
        });
        let off: u64 = per_core(&text, "percore_accepted_off_cpu_total")
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            off, 0,
            "connections from CPU {cpu} landed off their CPU: {text}"
        );
        let accepted = per_core(&text, "percore_connections_accepted_total");
        assert!(
            accepted.iter().any(|&(c, n)| c == core && n >= 16),
            "core {core} (on CPU {cpu}) did not take the connections from CPU {cpu}: {accepted:?}"
        );
    }
}

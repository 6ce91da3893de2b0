//! Jobs through real HTTP: 202 once durable, delivery with a valid signature, idempotency, retries, dead letters, backpressure, kill -9.

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Conn, DataDir, Response, Server};

const SECRET: &str = "test-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Hit {
    at: Instant,
    job: String,
    signature: Option<String>,
    body: Vec<u8>,
}

/// A webhook receiver on loopback: answers `status`, holds answers while `hold` is set.
struct Receiver {
    port: u16,
    hits: Arc<Mutex<Vec<Hit>>>,
    status: Arc<AtomicU16>,
    hold: Arc<AtomicBool>,
}

impl Receiver {
    fn start(status: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(status));
        let hold = Arc::new(AtomicBool::new(false));
        let (h, s, g) = (Arc::clone(&hits), Arc::clone(&status), Arc::clone(&hold));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (h, s, g) = (Arc::clone(&h), Arc::clone(&s), Arc::clone(&g));
                std::thread::spawn(move || serve_hook(stream, &h, &s, &g));
            }
        });
        Self {
            port,
            hits,
            status,
            hold,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }
}

fn serve_hook(
    stream: std::net::TcpStream,
    hits: &Mutex<Vec<Hit>>,
    status: &AtomicU16,
    hold: &AtomicBool,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let (mut length, mut job, mut signature) = (0usize, String::new(), None);
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).unwrap();
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let (name, value) = header.split_once(':').unwrap();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse().unwrap(),
                "x-percore-job" => job = value.trim().to_owned(),
                "x-percore-signature" => signature = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            job,
            signature,
            body,
        });
        while hold.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let code = status.load(Ordering::SeqCst);
        let _ = (&stream)
            .write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
    }
}

/// Where a test's jobs live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The local durable log under --data-dir.
    Local,
    /// NATS JetStream at 127.0.0.1:4222 (--queue).
    Nats,
}

const NATS: &str = "127.0.0.1:4222";

/// NATS tests run whenever NATS is reachable, and must in CI.
fn nats_ready() -> bool {
    let reachable =
        std::net::TcpStream::connect_timeout(&NATS.parse().unwrap(), Duration::from_millis(500))
            .is_ok();
    if !reachable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "NATS JetStream at {NATS} is required when CI=true"
        );
        eprintln!("skipped: no NATS at {NATS} (start nats-server -js to run the JetStream tests)");
    }
    reachable
}

/// A test's job store: a data directory, or a JetStream stream deleted afterwards.
struct Backend {
    mode: Mode,
    data: DataDir,
    stream: String,
}

impl Backend {
    fn new(mode: Mode, name: &str) -> Self {
        let unique = format!("T_{}_{}", name.replace('-', "_"), std::process::id());
        Self {
            mode,
            // Per mode: both modes of a test run at once and must not share a directory.
            data: DataDir::new(&format!("jobs-{name}-{mode:?}")),
            stream: unique.to_ascii_uppercase(),
        }
    }

    fn start(&self, extra: &[&str]) -> Server {
        let url = format!("nats://{NATS}");
        let mut args: Vec<&str> = match self.mode {
            Mode::Local => vec!["--data-dir", self.data.arg()],
            Mode::Nats => vec!["--queue", &url, "--queue-stream", &self.stream],
        };
        // The receivers are on loopback, which webhooks may not reach unless allowed.
        args.extend(["--webhook-allow", "127.0.0.1"]);
        args.extend_from_slice(extra);
        Server::start(&args)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if self.mode != Mode::Nats {
            return;
        }
        let streams = [
            self.stream.clone(),
            format!("{}_DEAD", self.stream),
            format!("{}_STATUS", self.stream),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            if let Ok(client) = async_nats::connect(NATS).await {
                let js = async_nats::jetstream::new(client);
                for stream in &streams {
                    let _ = js.delete_stream(stream).await;
                }
            }
        });
    }
}

/// Runs each listed test against the local log and against JetStream.
macro_rules! in_both_modes {
    ($($name:ident),* $(,)?) => {
        mod local {
            $(#[test] fn $name() { super::$name(super::Mode::Local) })*
        }
        mod jetstream {
            $(#[test] fn $name() { if super::nats_ready() { super::$name(super::Mode::Nats) } })*
        }
    };
}

in_both_modes!(
    accepted_before_the_work_is_done_then_delivered_signed,
    pipelined_requests_behind_a_submission_stay_in_order,
    idempotency_keys_return_the_same_job,
    failures_back_off_then_dead_letter_then_redrive,
    a_4xx_is_not_retried,
    bad_submissions_are_400_and_nothing_is_queued,
    kill_9_during_a_burst_loses_no_accepted_job,
    an_email_job_reaches_the_smtp_relay,
    a_client_that_half_closes_still_gets_every_answer,
);

fn submit(conn: &mut Conn, queue: &str, body: &str, extra: &str) -> Response {
    conn.send(format!("POST /v1/jobs/{queue} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len()).as_bytes());
    conn.response()
}

fn webhook_body(receiver: &Receiver, payload: &str) -> String {
    format!(r#"{{"url": "{}", "payload": {payload}}}"#, receiver.url())
}

fn id_of(response: &Response) -> String {
    let text = response.text();
    let start = text.find("\"id\":\"").expect("an id") + 6;
    text[start..].split('"').next().unwrap().to_owned()
}

/// Polls the job's status until `done` holds, returning the last body.
fn wait_for(server: &Server, id: &str, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = server.get(&format!("/v1/jobs/{id}")).text();
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got there: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn jobs_are_off_without_a_data_dir() {
    let server = Server::start(&[]);
    let response = submit(
        &mut server.connect(),
        "webhook",
        r#"{"url":"http://127.0.0.1:9/","payload":{}}"#,
        "",
    );
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (503, "jobs_disabled")
    );
}

fn accepted_before_the_work_is_done_then_delivered_signed(mode: Mode) {
    let backend = Backend::new(mode, "deliver");
    let receiver = Receiver::start(200);
    receiver.hold.store(true, Ordering::SeqCst);
    let server = backend.start(&["--webhook-secret", SECRET]);
    let mut conn = server.connect();
    let accepted = submit(
        &mut conn,
        "webhook",
        &webhook_body(&receiver, r#"{"order": 42}"#),
        "",
    );
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let id = id_of(&accepted);
    assert_eq!(
        accepted.header("location"),
        Some(format!("/v1/jobs/{id}").as_str())
    );
    // The receiver is holding its answer: the job cannot have finished, yet we have our 202.
    let running = wait_for(&server, &id, Duration::from_secs(5), |t| {
        t.contains("\"running\"")
    });
    assert!(running.contains("\"attempts\":1"), "{running}");
    receiver.hold.store(false, Ordering::SeqCst);
    let done = wait_for(&server, &id, Duration::from_secs(5), |t| {
        t.contains("\"succeeded\"")
    });
    assert!(done.contains("\"result\":{\"status\":200}"), "{done}");
    let hits = receiver.hits();
    assert_eq!(hits.len(), 1);
    assert_eq!(hits[0].body, br#"{"order":42}"#);
    assert_eq!(hits[0].job, id);
    assert_eq!(
        hits[0].signature.as_deref(),
        Some(percore::queue::kinds::signature(SECRET, &hits[0].body).as_str())
    );
    // The connection goes on after a deferred answer.
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response().status, 200);
}

fn pipelined_requests_behind_a_submission_stay_in_order(mode: Mode) {
    let backend = Backend::new(mode, "order");
    let receiver = Receiver::start(200);
    let server = backend.start(&[]);
    let mut conn = server.connect();
    let body = webhook_body(&receiver, "1");
    let submission = format!(
        "POST /v1/jobs/webhook HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.send(
        format!("{submission}GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n{submission}").as_bytes(),
    );
    let first = conn.response();
    assert_eq!(conn.response().body, b"Hello, World!");
    let third = conn.response();
    assert_eq!((first.status, third.status), (202, 202));
    assert_ne!(id_of(&first), id_of(&third));
}

fn idempotency_keys_return_the_same_job(mode: Mode) {
    let backend = Backend::new(mode, "idempotency");
    let receiver = Receiver::start(200);
    let server = backend.start(&[]);
    let mut conn = server.connect();
    let body = webhook_body(&receiver, r#"{"charge": 1}"#);
    let first = submit(&mut conn, "webhook", &body, "Idempotency-Key: pay-123\r\n");
    let second = submit(&mut conn, "webhook", &body, "Idempotency-Key: pay-123\r\n");
    let other = submit(&mut conn, "webhook", &body, "Idempotency-Key: pay-124\r\n");
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(id_of(&first), id_of(&second));
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_ne!(id_of(&first), id_of(&other));
    wait_for(&server, &id_of(&other), Duration::from_secs(5), |t| {
        t.contains("succeeded")
    });
    wait_for(&server, &id_of(&first), Duration::from_secs(5), |t| {
        t.contains("succeeded")
    });
    let deliveries = receiver
        .hits()
        .iter()
        .filter(|h| h.job == id_of(&first))
        .count();
    assert_eq!(deliveries, 1);
}

fn failures_back_off_then_dead_letter_then_redrive(mode: Mode) {
    let backend = Backend::new(mode, "retry");
    let receiver = Receiver::start(503);
    let server = backend.start(&["--job-max-attempts", "3", "--job-retry-base", "200ms"]);
    let id = id_of(&submit(
        &mut server.connect(),
        "webhook",
        &webhook_body(&receiver, "{}"),
        "",
    ));
    let dead = wait_for(&server, &id, Duration::from_secs(10), |t| {
        t.contains("\"dead\"")
    });
    assert!(
        dead.contains("\"attempts\":3") && dead.contains("503"),
        "{dead}"
    );
    let hits = receiver.hits();
    assert_eq!(hits.len(), 3);
    let first_gap = hits[1].at - hits[0].at;
    let second_gap = hits[2].at - hits[1].at;
    // Base 200 ms, doubling, jittered within the upper half: [100, 200] then [200, 400] ms.
    assert!(first_gap >= Duration::from_millis(90), "{first_gap:?}");
    assert!(second_gap >= Duration::from_millis(190), "{second_gap:?}");
    let letters = server.get("/v1/dead").text();
    assert!(
        letters.contains(&format!("\"id\":\"{id}\"")) && letters.contains("last_error"),
        "{letters}"
    );

    receiver.status.store(200, Ordering::SeqCst);
    let mut conn = server.connect();
    conn.send(
        format!("POST /v1/jobs/{id}/redrive HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    let redriven = conn.response();
    assert_eq!(redriven.status, 202);
    // The local log runs the same job again; JetStream runs it as a new job.
    let again = id_of(&redriven);
    wait_for(&server, &again, Duration::from_secs(5), |t| {
        t.contains("\"succeeded\"")
    });
    assert!(!server
        .get("/v1/dead")
        .text()
        .contains(&format!("\"id\":\"{id}\"")));
    conn.send(
        format!("POST /v1/jobs/{again}/redrive HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(conn.response().status, 400, "only dead jobs are redriven");
}

fn a_4xx_is_not_retried(mode: Mode) {
    let backend = Backend::new(mode, "fatal");
    let receiver = Receiver::start(410);
    let server = backend.start(&["--job-retry-base", "50ms"]);
    let id = id_of(&submit(
        &mut server.connect(),
        "webhook",
        &webhook_body(&receiver, "{}"),
        "",
    ));
    let dead = wait_for(&server, &id, Duration::from_secs(5), |t| {
        t.contains("\"dead\"")
    });
    assert!(
        dead.contains("\"attempts\":1") && dead.contains("410"),
        "{dead}"
    );
}

#[test]
fn a_full_queue_answers_503_and_delayed_jobs_wait() {
    let data = DataDir::new("jobs-full");
    let receiver = Receiver::start(200);
    let server = Server::start(&[
        "--data-dir",
        data.arg(),
        "--queue-capacity",
        "2",
        "--webhook-allow",
        "127.0.0.1",
    ]);
    let mut conn = server.connect();
    let body = webhook_body(&receiver, "{}");
    // Runs at once, so it leaves the queue for a worker.
    assert_eq!(submit(&mut conn, "webhook", &body, "").status, 202);
    // Delayed jobs wait, so they fill the queue.
    let mut conn = server.connect();
    conn.send(format!("POST /v1/jobs/webhook?delay=1h HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let delayed = conn.response();
    assert_eq!(delayed.status, 202);
    let status = server.get(&format!("/v1/jobs/{}", id_of(&delayed))).text();
    assert!(
        status.contains("\"queued\"") && status.contains("run_at_ms"),
        "{status}"
    );
    conn.send(format!("POST /v1/jobs/webhook?delay=1h HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    assert_eq!(conn.response().status, 202);
    conn.send(format!("POST /v1/jobs/webhook?delay=1h HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let full = conn.response();
    assert_eq!(
        (full.status, full.error_code().as_str()),
        (503, "queue_full")
    );
    assert_eq!(full.header("retry-after"), Some("1"));
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("percore_jobs_waiting 2\n"), "{metrics}");
}

fn bad_submissions_are_400_and_nothing_is_queued(mode: Mode) {
    let backend = Backend::new(mode, "bad");
    let server = backend.start(&[]);
    let mut conn = server.connect();
    for (queue, body, extra, expected) in [
        ("webhook", "not json", "", "not valid JSON"),
        ("webhook", "[1]", "", "JSON object"),
        ("webhook", r#"{"payload": {}}"#, "", "`url`"),
        (
            "webhook",
            r#"{"url": "ftp://x/", "payload": {}}"#,
            "",
            "https://",
        ),
        ("fax", r#"{"to": 1}"#, "", "no job kind"),
        (
            "webhook",
            r#"{"url": "http://x/", "payload": {}}"#,
            "Idempotency-Key: \r\n",
            "Idempotency-Key",
        ),
    ] {
        let response = submit(&mut conn, queue, body, extra);
        assert_eq!(response.status, 400, "{body}");
        assert!(
            response.text().contains(expected),
            "{body}: {}",
            response.text()
        );
    }
    conn.send(
        b"POST /v1/jobs/webhook?delay=soon HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(conn.response().status, 400);
    assert_eq!(server.get("/v1/jobs/1").status, 404, "nothing was queued");
}

fn kill_9_during_a_burst_loses_no_accepted_job(mode: Mode) {
    let backend = Backend::new(mode, "kill");
    let receiver = Receiver::start(200);
    // Deliveries are held, so most accepted jobs are still waiting when the process dies.
    receiver.hold.store(true, Ordering::SeqCst);
    // JetStream takes the visibility timeout (ack_wait) from the node that creates the consumer.
    let server = backend.start(&["--cores", "2", "--job-visibility-timeout", "2s"]);
    let mut accepted = HashSet::new();
    let mut conns: Vec<Conn> = (0..4).map(|_| server.connect()).collect();
    for n in 0..200 {
        let response = submit(
            &mut conns[n % 4],
            "webhook",
            &webhook_body(&receiver, &format!(r#"{{"n": {n}}}"#)),
            "",
        );
        assert_eq!(response.status, 202);
        accepted.insert(id_of(&response));
    }
    server.signal("KILL");
    let _ = server.wait(Duration::from_secs(5));
    receiver.hold.store(false, Ordering::SeqCst);
    assert!(
        receiver.hits().len() < 200,
        "the burst finished before the kill; the test proved nothing"
    );

    // Attempts the dead process had started are presumed lost after the visibility timeout.
    let restarted = backend.start(&["--job-visibility-timeout", "2s"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: HashSet<String> = receiver.hits().into_iter().map(|h| h.job).collect();
        let missing: Vec<&String> = accepted
            .iter()
            .filter(|id| !delivered.contains(*id))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} accepted jobs never ran, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let id = accepted.iter().next().unwrap();
    assert!(restarted
        .get(&format!("/v1/jobs/{id}"))
        .text()
        .contains("succeeded"));
}

/// A minimal SMTP sink on loopback: accepts every message and keeps its DATA.
fn smtp_sink() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let messages = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&messages);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let _ = writer.write_all(b"220 sink ESMTP\r\n");
                let mut line = String::new();
                while reader.read_line(&mut line).unwrap_or(0) > 0 {
                    let command = line.trim_end().to_ascii_uppercase();
                    let reply: &[u8] = if command.starts_with("EHLO") || command.starts_with("HELO")
                    {
                        b"250 sink\r\n"
                    } else if command == "DATA" {
                        let _ = writer.write_all(b"354 go on\r\n");
                        let mut data = String::new();
                        loop {
                            let mut row = String::new();
                            if reader.read_line(&mut row).unwrap_or(0) == 0 || row == ".\r\n" {
                                break;
                            }
                            data.push_str(&row);
                        }
                        store.lock().unwrap().push(data);
                        b"250 queued\r\n"
                    } else if command == "QUIT" {
                        let _ = writer.write_all(b"221 bye\r\n");
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    let _ = writer.write_all(reply);
                    line.clear();
                }
            });
        }
    });
    (port, messages)
}

fn an_email_job_reaches_the_smtp_relay(mode: Mode) {
    let backend = Backend::new(mode, "email");
    let (port, messages) = smtp_sink();
    let relay = format!("127.0.0.1:{port}");
    let server = backend.start(&["--smtp", &relay, "--smtp-from", "receipts@shop.example"]);
    let body =
        r#"{"to": "ada@example.com", "subject": "Your receipt", "text": "Thanks for order 42."}"#;
    let accepted = submit(&mut server.connect(), "email", body, "");
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    wait_for(&server, &id_of(&accepted), Duration::from_secs(10), |t| {
        t.contains("\"succeeded\"")
    });
    let messages = messages.lock().unwrap();
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert!(message.contains("To: ada@example.com"), "{message}");
    assert!(message.contains("From: receipts@shop.example"), "{message}");
    assert!(message.contains("Subject: Your receipt"), "{message}");
    assert!(message.contains("Thanks for order 42."), "{message}");
}

#[test]
fn email_jobs_without_a_relay_are_refused_up_front() {
    let data = DataDir::new("jobs-email-off");
    let server = Server::start(&["--data-dir", data.arg()]);
    let response = submit(
        &mut server.connect(),
        "email",
        r#"{"to": "a@example.com", "subject": "s", "text": "t"}"#,
        "",
    );
    assert_eq!(response.status, 400);
    assert!(response.text().contains("--smtp"), "{}", response.text());
}

#[test]
fn an_attempt_past_its_visibility_timeout_runs_again() {
    let data = DataDir::new("jobs-visibility");
    let receiver = Receiver::start(200);
    receiver.hold.store(true, Ordering::SeqCst);
    let server = Server::start(&[
        "--webhook-allow",
        "127.0.0.1",
        "--data-dir",
        data.arg(),
        "--workers",
        "2",
        "--job-visibility-timeout",
        "300ms",
        "--job-retry-base",
        "50ms",
    ]);
    let id = id_of(&submit(
        &mut server.connect(),
        "webhook",
        &webhook_body(&receiver, "{}"),
        "",
    ));
    // The first attempt hangs at the receiver; after 300 ms it is presumed lost and tried again.
    let deadline = Instant::now() + Duration::from_secs(5);
    while receiver.hits().iter().filter(|h| h.job == id).count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the hung attempt was never retried"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    receiver.hold.store(false, Ordering::SeqCst);
    let done = wait_for(&server, &id, Duration::from_secs(5), |t| {
        t.contains("\"succeeded\"")
    });
    assert!(done.contains("\"attempts\":2"), "{done}");
}

fn a_client_that_half_closes_still_gets_every_answer(mode: Mode) {
    let backend = Backend::new(mode, "half-close");
    let receiver = Receiver::start(200);
    let server = backend.start(&[]);
    let mut conn = server.connect();
    let body = webhook_body(&receiver, "{}");
    let submission = format!(
        "POST /v1/jobs/webhook HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.send(format!("{submission}GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    // Done sending: both answers are still owed.
    conn.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(conn.response().status, 202);
    assert_eq!(conn.response().body, b"Hello, World!");
    assert!(conn.closed_within(Duration::from_secs(3)));
}

#[test]
fn jetstream_nodes_share_the_work_and_the_statuses() {
    if !nats_ready() {
        return;
    }
    let backend = Backend::new(Mode::Nats, "shared");
    let receiver = Receiver::start(200);
    let first = backend.start(&[]);
    let second = backend.start(&[]);
    let mut conn = first.connect();
    let ids: Vec<String> = (0..10)
        .map(|n| {
            id_of(&submit(
                &mut conn,
                "webhook",
                &webhook_body(&receiver, &format!("{n}")),
                "",
            ))
        })
        .collect();
    for id in &ids {
        // Accepted on the first node, visible on the second.
        wait_for(&second, id, Duration::from_secs(10), |t| {
            t.contains("\"succeeded\"")
        });
    }
    let delivered: HashSet<String> = receiver.hits().into_iter().map(|h| h.job).collect();
    assert!(ids.iter().all(|id| delivered.contains(id)));
}

#[test]
fn jetstream_a_full_kind_answers_503_and_delays_are_refused() {
    if !nats_ready() {
        return;
    }
    let backend = Backend::new(Mode::Nats, "full");
    let receiver = Receiver::start(200);
    receiver.hold.store(true, Ordering::SeqCst);
    let server = backend.start(&["--queue-capacity", "2"]);
    let mut conn = server.connect();
    let body = webhook_body(&receiver, "{}");
    assert_eq!(submit(&mut conn, "webhook", &body, "").status, 202);
    assert_eq!(submit(&mut conn, "webhook", &body, "").status, 202);
    // Both are unfinished, so both still count against the kind's capacity.
    let full = submit(&mut conn, "webhook", &body, "");
    assert_eq!(
        (full.status, full.error_code().as_str()),
        (503, "queue_full")
    );
    conn.send(format!("POST /v1/jobs/webhook?delay=1s HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes());
    let delayed = conn.response();
    assert_eq!(delayed.status, 400);
    assert!(
        delayed.text().contains("not supported with --queue nats"),
        "{}",
        delayed.text()
    );
    receiver.hold.store(false, Ordering::SeqCst);
}

#[test]
fn finished_jobs_are_trimmed_and_the_log_compacted() {
    let data = DataDir::new("jobs-retention");
    let receiver = Receiver::start(200);
    let args = [
        "--data-dir",
        data.arg(),
        "--job-retention",
        "1s",
        "--job-log-compact-above",
        "1KiB",
        "--webhook-allow",
        "127.0.0.1",
    ];
    let server = Server::start(&args);
    let mut conn = server.connect();
    let body = webhook_body(
        &receiver,
        r#"{"padding": "0123456789012345678901234567890123456789"}"#,
    );
    let first = id_of(&submit(
        &mut conn,
        "webhook",
        &body,
        "Idempotency-Key: once\r\n",
    ));
    let mut last = first.clone();
    for _ in 0..30 {
        last = id_of(&submit(&mut conn, "webhook", &body, ""));
    }
    wait_for(&server, &last, Duration::from_secs(10), |t| {
        t.contains("\"succeeded\"")
    });
    let log = data.0.join("jobs.log");
    let grown = std::fs::metadata(&log).unwrap().len();
    // A second after finishing they are forgotten, and the next commit compacts the log.
    std::thread::sleep(Duration::from_millis(1500));
    let trigger = id_of(&submit(&mut conn, "webhook", &body, ""));
    wait_for(&server, &trigger, Duration::from_secs(10), |t| {
        t.contains("\"succeeded\"")
    });
    assert_eq!(
        server.get(&format!("/v1/jobs/{first}")).status,
        404,
        "a trimmed job is gone"
    );
    let compacted = std::fs::metadata(&log).unwrap().len();
    assert!(
        compacted < grown / 2,
        "log {grown} bytes, after compaction {compacted}"
    );
    // The idempotency key went with its job; ids are never reused, even after a restart.
    let again = id_of(&submit(
        &mut conn,
        "webhook",
        &body,
        "Idempotency-Key: once\r\n",
    ));
    assert_ne!(again, first);
    wait_for(&server, &again, Duration::from_secs(10), |t| {
        t.contains("\"succeeded\"")
    });
    drop(conn);
    server.signal("TERM");
    let _ = server.wait(Duration::from_secs(10));
    let hits_before = receiver.hits().len();
    let restarted = Server::start(&args);
    let next = id_of(&submit(&mut restarted.connect(), "webhook", &body, ""));
    assert!(
        next.parse::<u64>().unwrap() > again.parse::<u64>().unwrap(),
        "id {next} reused"
    );
    wait_for(&restarted, &next, Duration::from_secs(10), |t| {
        t.contains("\"succeeded\"")
    });
    assert_eq!(
        receiver.hits().len(),
        hits_before + 1,
        "finished jobs ran again after the restart"
    );
}

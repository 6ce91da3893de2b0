//! The hot path allocates nothing per request: parsing, routing, handlers and response writing reuse what the connection owns.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use percore::app::{App, AppService, CoreMsg, Ctx, Request};
use percore::http::{Limits, Response};
use percore::limit::{KeySource, Limiter, Policy, Rate, Rules};
use percore::net::session::Session;
use percore::net::{ConnId, Service};

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|c| c.set(c.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

static NEXT_DIR: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The store directories of earlier test runs (their store threads die with
/// the test process, so nothing removes them on the way out).
fn remove_dirs_of_finished_runs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("percore-alloc-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn temporary_dir() -> std::path::PathBuf {
    remove_dirs_of_finished_runs();
    let dir = std::env::temp_dir().join(format!(
        "percore-alloc-{}-{}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

type Percore = AppService<()>;

fn service_and_inbox(
    limiter: Option<std::sync::Arc<Limiter>>,
) -> (Percore, crossbeam_channel::Receiver<CoreMsg<()>>) {
    percore::api::percore()
        .standalone_core(&temporary_dir(), limiter)
        .expect("a core")
}

fn service_with(limiter: Option<std::sync::Arc<Limiter>>) -> Percore {
    service_and_inbox(limiter).0
}

fn service() -> Percore {
    service_with(None)
}

/// What wrk sends, 16 deep, alternating the two TechEmpower endpoints.
fn pipelined_batch() -> Vec<u8> {
    let mut batch = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/json" } else { "/plaintext" };
        batch.extend_from_slice(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n").as_bytes(),
        );
    }
    batch
}

/// Serves `batch` 10 times to warm up, then 1000 times counting
/// allocations; returns the allocations per batch and the last output.
fn allocations_per_batch(
    session: &mut Session,
    service: &mut Percore,
    batch: &[u8],
    limits: &Limits,
) -> (f64, Vec<u8>) {
    let mut out = Vec::new();
    let mut serve = |out: &mut Vec<u8>| {
        out.clear();
        let started = Instant::now();
        session.receive(batch, out, service, limits, started);
        service.end_batch(started);
    };
    for _ in 0..10 {
        serve(&mut out);
    }
    let before = allocations();
    for _ in 0..1000 {
        serve(&mut out);
    }
    ((allocations() - before) as f64 / 1000.0, out)
}

#[test]
fn serving_pipelined_requests_allocates_nothing() {
    let mut service = service();
    let mut session = Session::new(ConnId::default(), None);
    let limits = Limits::default();
    let batch = pipelined_batch();
    let (per_batch, out) = allocations_per_batch(&mut session, &mut service, &batch, &limits);
    let answered = out.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(answered, 16, "every request in the batch was answered");
    assert_eq!(per_batch, 0.0, "allocations per 16 requests");
}

/// `/json` behind a rule that needs the `read` scope, with an API key in
/// every request and a JWT in every other: once each core has verified them,
/// checking them allocates nothing.
#[test]
fn authenticated_requests_allocate_nothing_once_verified() {
    use percore::auth::{Auth, AuthOptions, JwtOptions, RuleSpec};
    use percore::limit::PathPattern;
    let dir = temporary_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let key = "alloc-test-key-3c5e";
    let digest: String = {
        use sha2::{Digest, Sha256};
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let keys = dir.join("keys.toml");
    std::fs::write(
        &keys,
        format!("[[keys]]\nname = \"bench\"\nsha256 = \"{digest}\"\nscopes = [\"read\"]\n"),
    )
    .unwrap();
    let secret = b"an HS256 secret of at least thirty-two bytes".to_vec();
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "svc", "exp": exp, "scope": "read"}),
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap();
    let auth = Auth::new(AuthOptions {
        keys_file: Some(keys),
        jwt: Some(JwtOptions {
            hs256_secret: Some(secret),
            scope_claim: "scope".into(),
            ..JwtOptions::default()
        }),
        rules: vec![RuleSpec {
            method: Some("GET".into()),
            path: PathPattern::parse("/json").unwrap(),
            require: "read".into(),
        }],
    })
    .unwrap();
    let (mut service, _inbox) = percore::api::percore()
        .standalone_core_with(&dir, None, Some(auth))
        .expect("a core");
    let mut batch = Vec::new();
    for i in 0..16 {
        let credential = if i % 2 == 0 {
            format!("X-API-Key: {key}")
        } else {
            format!("Authorization: Bearer {token}")
        };
        batch.extend_from_slice(
            format!("GET /json HTTP/1.1\r\nHost: h\r\n{credential}\r\n\r\n").as_bytes(),
        );
    }
    let mut session = Session::new(ConnId::default(), None);
    let limits = Limits::default();
    let (per_batch, out) = allocations_per_batch(&mut session, &mut service, &batch, &limits);
    let answered = out.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count();
    assert_eq!(answered, 16, "every request was authorized and answered");
    assert_eq!(per_batch, 0.0, "allocations per 16 authenticated requests");
    // Without a credential the same route is refused: the rule is in force.
    let mut refused = Vec::new();
    let mut fresh = Session::new(ConnId::default(), None);
    let started = Instant::now();
    fresh.receive(
        b"GET /json HTTP/1.1\r\nHost: h\r\n\r\n",
        &mut refused,
        &mut service,
        &limits,
        started,
    );
    assert!(
        refused.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&refused)
    );
}

#[test]
fn requests_split_across_receives_allocate_nothing_once_warm() {
    let mut service = service();
    let mut session = Session::new(ConnId::default(), None);
    let limits = Limits::default();
    let batch = pipelined_batch();
    let (first, second) = batch.split_at(batch.len() / 2 + 7);
    let mut out = Vec::new();
    let round = |session: &mut Session, service: &mut Percore, out: &mut Vec<u8>| {
        out.clear();
        let started = Instant::now();
        session.receive(first, out, service, &limits, started);
        session.receive(second, out, service, &limits, started);
        service.end_batch(started);
    };
    for _ in 0..10 {
        round(&mut session, &mut service, &mut out);
    }
    let before = allocations();
    for _ in 0..1000 {
        round(&mut session, &mut service, &mut out);
    }
    assert_eq!(allocations() - before, 0);
    assert_eq!(
        out.windows(15).filter(|w| w == b"HTTP/1.1 200 OK").count(),
        16
    );
    assert!(session.is_idle());
}

#[test]
fn rate_limited_requests_allocate_nothing_either() {
    let rules = Rules {
        policies: vec![Policy {
            name: "default".into(),
            rate: Rate::parse("1000000000/s").unwrap(),
            burst: 1_000_000_000,
        }],
        default_policy: Some(0),
        routes: Vec::new(),
        key: KeySource::Ip,
        trusted_proxies: Vec::new(),
        exempt: Vec::new(),
        shadow: false,
        max_keys: 1000,
    };
    let mut service = service_with(Some(Limiter::new(rules)));
    let mut session = Session::new(ConnId::default(), Some("192.0.2.1".parse().unwrap()));
    let limits = Limits::default();
    let batch = pipelined_batch();
    let mut out = Vec::new();
    let mut round = |service: &mut Percore, out: &mut Vec<u8>| {
        out.clear();
        let started = Instant::now();
        session.receive(&batch, out, service, &limits, started);
        service.end_batch(started);
    };
    for _ in 0..10 {
        round(&mut service, &mut out);
    }
    let before = allocations();
    for _ in 0..1000 {
        round(&mut service, &mut out);
    }
    assert_eq!(allocations() - before, 0);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 16);
    assert_eq!(
        text.matches("X-RateLimit-Remaining: ").count(),
        16,
        "every answer carries the limiter's headers"
    );
}

/// The cache partition's lookups allocate nothing, hit or miss.
#[test]
fn cache_hits_and_misses_allocate_nothing() {
    use percore::cache::{Cache, CacheCounters};
    let counters = std::sync::Arc::new(CacheCounters::default());
    let mut cache = Cache::new(1 << 20, Some(std::time::Duration::from_secs(60)), counters);
    let now = Instant::now();
    for id in 0..1_000u32 {
        cache.insert(format!("/item/{id}").as_bytes(), id, 200, now);
    }
    let keys: Vec<Vec<u8>> = (0..2_000u32)
        .map(|id| format!("/item/{id}").into_bytes())
        .collect();
    let before = allocations();
    let mut hits = 0;
    for key in &keys {
        hits += usize::from(cache.get(key, now).is_some());
    }
    assert_eq!(allocations(), before, "get allocated");
    assert!(hits > 0 && hits < keys.len());
}

/// A GET answered from the cache partition allocates nothing: the stored
/// document goes out as a shared `Bytes`, straight into the output buffer.
#[test]
fn cache_hits_of_documents_allocate_nothing() {
    let (mut service, inbox) = service_and_inbox(None);
    let mut session = Session::new(ConnId::default(), None);
    let limits = Limits::default();
    let mut out = Vec::new();
    let body = r#"{"name":"lamp","price":12.5,"tags":["a","b"]}"#;
    let put = format!(
        "PUT /v1/things/lamp HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    session.receive(
        put.as_bytes(),
        &mut out,
        &mut service,
        &limits,
        Instant::now(),
    );
    // What the io loop does for a deferred answer, by hand: messages in,
    // the answer out to the session that awaits it.
    let (to, answer) = loop {
        let msg = inbox
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the store thread answered");
        service.on_message(msg, Instant::now());
        service.end_turn();
        if let Some(ready) = service.next_answer() {
            break ready;
        }
    };
    assert_eq!(
        to,
        ConnId::default(),
        "the answer names the connection that asked"
    );
    session.answer(answer, &mut out, &mut service);
    assert!(
        out.starts_with(b"HTTP/1.1 201 Created"),
        "{}",
        String::from_utf8_lossy(&out)
    );

    let get = b"GET /v1/things/lamp HTTP/1.1\r\nHost: t\r\n\r\n";
    for _ in 0..10 {
        out.clear();
        session.receive(get, &mut out, &mut service, &limits, Instant::now());
    }
    let before = allocations();
    for _ in 0..1000 {
        out.clear();
        session.receive(get, &mut out, &mut service, &limits, Instant::now());
    }
    assert_eq!(allocations() - before, 0, "a cache hit allocated");
    assert!(
        out.starts_with(b"HTTP/1.1 200 OK"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.ends_with(body.as_bytes()));
}

/// Per-core state of an application's own: a counter and a pre-rendered body.
struct Counter {
    served: u64,
    body: Vec<u8>,
}

fn counted(_: &Request<'_>, ctx: &mut Ctx<Counter>, response: &mut Response<'_>) {
    ctx.state.served += 1;
    response.send(200, "application/json", &[], &ctx.state.body);
}

/// A route an application registers through the builder, over state of its
/// own, allocates nothing per request either; so does the built-in `/json`
/// mounted beside it.
#[test]
fn a_user_registered_route_allocates_nothing() {
    let app = App::with_state("counter", |core| Counter {
        served: 0,
        body: format!("{{\"core\":{core}}}").into_bytes(),
    })
    .get("/count", counted)
    .mount(percore::api::benchmarks);
    let (mut service, _inbox) = app.standalone_core(&temporary_dir(), None).expect("a core");
    let mut session = Session::new(ConnId::default(), None);
    let limits = Limits::default();
    let mut batch = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/count" } else { "/json" };
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    let mut out = Vec::new();
    for _ in 0..10 {
        out.clear();
        session.receive(&batch, &mut out, &mut service, &limits, Instant::now());
        service.end_batch(Instant::now());
    }
    let before = allocations();
    for _ in 0..1000 {
        out.clear();
        session.receive(&batch, &mut out, &mut service, &limits, Instant::now());
        service.end_batch(Instant::now());
    }
    assert_eq!(allocations() - before, 0, "allocations per 16 requests");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("{\"core\":0}").count(), 8);
    assert_eq!(text.matches("Hello, World!").count(), 8);
    assert_eq!(service.ctx.state.served, 8 * 1010);
}

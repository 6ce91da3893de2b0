//! Who may do what, through real HTTP: API keys and JWT bearer tokens on every protected route, key-file reload, the principal as the rate-limit key, and webhooks that cannot reach the inside (nor untrusted https receivers).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{write_keys, DataDir, Response, Server};
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

const JWT_SECRET: &str = "an HS256 secret of at least thirty-two bytes";

/// Keys of the test deployment: (name, secret, scopes).
const KEYS: &[(&str, &str, &[&str])] = &[
    ("writer", "key-writer-1c9d", &["write"]),
    ("jobs", "key-jobs-77aa", &["jobs"]),
    ("admin", "key-admin-5e01", &["admin"]),
    ("reader", "key-reader-0b3f", &[]),
    ("mailer", "key-mailer-2a6b", &["email"]),
];

const EMAIL: &str = r#"{"to": "a@example.com", "subject": "s", "text": "t"}"#;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn jwt(claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// A deployment with authentication: keys file, JWT secret, data directory.
struct Secured {
    _data: DataDir,
    keys: PathBuf,
    server: Server,
}

impl Secured {
    fn start(name: &str, extra: &[&str]) -> Self {
        let data = DataDir::new(&format!("auth-{name}"));
        std::fs::create_dir_all(&data.0).unwrap();
        let keys = data.0.join("keys.toml");
        write_keys(&keys, KEYS);
        let secret = data.0.join("jwt.secret");
        std::fs::write(&secret, format!("{JWT_SECRET}\n")).unwrap();
        let mut args = vec![
            "--data-dir",
            data.arg(),
            "--auth-keys",
            keys.to_str().unwrap(),
            "--jwt-hs256-secret-file",
            secret.to_str().unwrap(),
            "--webhook-allow",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        let server = Server::start(&args);
        Self {
            _data: data,
            keys,
            server,
        }
    }
}

/// `METHOD path` with an optional body and extra header lines, on a fresh connection.
fn request(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<&str>,
    headers: &str,
) -> Response {
    let body = body.unwrap_or("");
    let mut conn = server.connect();
    conn.send(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    conn.response()
}

fn with_key(secret: &str) -> String {
    format!("X-API-Key: {secret}\r\n")
}

fn with_bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}\r\n")
}

fn key_of(name: &str) -> &'static str {
    KEYS.iter().find(|(n, _, _)| *n == name).unwrap().1
}

#[test]
fn every_protected_route_checks_its_credential() {
    let secured = Secured::start("routes", &[]);
    let server = &secured.server;
    let webhook = r#"{"url": "http://127.0.0.1:9/hook", "payload": {}}"#;
    // (method, path, body, the scope it needs, the key holding it)
    let routes: &[(&str, &str, Option<&str>, &str, &str)] = &[
        ("PUT", "/v1/items/a", Some(r#"{"n": 1}"#), "write", "writer"),
        (
            "PATCH",
            "/v1/items/a",
            Some(r#"{"m": 2}"#),
            "write",
            "writer",
        ),
        ("DELETE", "/v1/items/a", None, "write", "writer"),
        (
            "POST",
            "/v1/jobs/webhook?delay=1h",
            Some(webhook),
            "jobs",
            "jobs",
        ),
        ("POST", "/v1/jobs/email", Some(EMAIL), "email", "mailer"),
        ("GET", "/v1/jobs/1", None, "jobs", "jobs"),
        ("POST", "/v1/jobs/1/redrive", None, "admin", "admin"),
        ("GET", "/v1/dead", None, "admin", "admin"),
        ("GET", "/metrics", None, "admin", "admin"),
    ];
    let expired = jwt(json!({"sub": "svc", "exp": unix_now() - 3600,
                             "scope": "write jobs admin email"}));
    for (method, path, body, scope, holder) in routes {
        let what = format!("{method} {path}");
        let none = request(server, method, path, *body, "");
        assert_eq!(
            none.status,
            401,
            "{what} without a credential: {}",
            none.text()
        );
        assert_eq!(none.error_code(), "credential_missing", "{what}");
        assert_eq!(
            none.header("WWW-Authenticate"),
            Some("Bearer realm=\"percore\""),
            "{what}"
        );

        let wrong = request(server, method, path, *body, &with_key("not-a-key"));
        assert_eq!(wrong.status, 401, "{what} with a wrong key");
        assert_eq!(wrong.error_code(), "credential_invalid", "{what}");
        assert!(
            wrong
                .header("WWW-Authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{what}"
        );

        let late = request(server, method, path, *body, &with_bearer(&expired));
        assert_eq!(late.status, 401, "{what} with an expired token");
        assert!(late.text().contains("expired"), "{what}: {}", late.text());

        let unscoped = request(server, method, path, *body, &with_key(key_of("reader")));
        assert_eq!(unscoped.status, 403, "{what} without the scope");
        assert_eq!(unscoped.error_code(), "scope_missing", "{what}");
        assert!(
            unscoped
                .header("WWW-Authenticate")
                .unwrap()
                .contains(&format!("scope=\"{scope}\"")),
            "{what}"
        );
        assert!(
            unscoped.text().contains(scope),
            "{what}: {}",
            unscoped.text()
        );

        let right = request(server, method, path, *body, &with_key(key_of(holder)));
        assert!(
            ![401, 403].contains(&right.status),
            "{what} with the `{holder}` key: {} {}",
            right.status,
            right.text()
        );
        let token = jwt(json!({"sub": "svc", "exp": unix_now() + 600, "scope": scope}));
        let bearer = request(server, method, path, *body, &with_bearer(&token));
        assert!(
            ![401, 403].contains(&bearer.status),
            "{what} with a token holding `{scope}`: {} {}",
            bearer.status,
            bearer.text()
        );
    }
    // Reads stay anonymous; a bad credential is refused even there.
    let put = request(
        server,
        "PUT",
        "/v1/items/b",
        Some(r#"{"n": 3}"#),
        &with_key(key_of("writer")),
    );
    assert_eq!(put.status, 201, "{}", put.text());
    assert_eq!(server.get("/v1/items/b").status, 200);
    assert_eq!(server.get("/healthz").status, 200);
    assert_eq!(
        request(server, "GET", "/v1/items/b", None, &with_key("not-a-key")).status,
        401
    );
    // The decisions are counted, by kind.
    let metrics = request(server, "GET", "/metrics", None, &with_key(key_of("admin"))).text();
    for decision in ["verified", "anonymous", "missing", "invalid", "forbidden"] {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("percore_auth_decisions_total")
                    && l.contains(&format!("decision=\"{decision}\""))
            })
            .unwrap_or_else(|| panic!("no {decision} series"));
        let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(count > 0, "{line}");
    }
}

#[test]
fn a_changed_keys_file_takes_effect_without_a_restart() {
    let secured = Secured::start("reload", &[]);
    let put = |key: &str| {
        request(
            &secured.server,
            "PUT",
            "/v1/items/k",
            Some("{}"),
            &with_key(key),
        )
        .status
    };
    assert_eq!(put(key_of("writer")), 201);
    let rotated = "key-rotated-9f2e";
    assert_eq!(put(rotated), 401);
    write_keys(&secured.keys, &[("rotated", rotated, &["write"])]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while put(rotated) != 200 {
        assert!(Instant::now() < deadline, "the new key never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(put(key_of("writer")), 401, "a removed key still works");
    // A broken file is reported (a refused reload) and changes nothing.
    write_keys(
        &secured.keys,
        &[
            ("rotated", rotated, &["write"]),
            ("admin", key_of("admin"), &["admin"]),
        ],
    );
    let refused_reloads = || {
        let metrics = request(
            &secured.server,
            "GET",
            "/metrics",
            None,
            &with_key(key_of("admin")),
        );
        if metrics.status != 200 {
            return None;
        }
        let text = metrics.text();
        let line = text
            .lines()
            .find(|l| l.starts_with("percore_auth_reloads_total{result=\"refused\"}"))?
            .to_owned();
        line.rsplit(' ').next()?.parse::<u64>().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while refused_reloads() != Some(0) {
        assert!(Instant::now() < deadline, "the admin key never took effect");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::fs::write(&secured.keys, "[[keys]\nname = ").unwrap();
    while refused_reloads() != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the broken file was never reported"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(put(rotated), 200, "a broken keys file locked the key out");
}

#[test]
fn the_principal_is_the_rate_limit_key() {
    let secured = Secured::start(
        "principal",
        &["--rate-limit", "3/min", "--rate-limit-key", "principal"],
    );
    let server = &secured.server;
    let get = |headers: &str| request(server, "GET", "/v1/items/x", None, headers).status;
    let writer = with_key(key_of("writer"));
    for _ in 0..3 {
        assert_eq!(get(&writer), 404);
    }
    assert_eq!(get(&writer), 429, "the writer's budget is spent");
    // Another principal from the same address has its own budget.
    let jobs = with_key(key_of("jobs"));
    assert_eq!(get(&jobs), 404);
    // So does a token's subject, whichever token it presents.
    let token = |n: u64| jwt(json!({"sub": "svc-a", "exp": unix_now() + 600 + n}));
    for n in 0..3 {
        assert_eq!(get(&with_bearer(&token(n))), 404);
    }
    assert_eq!(
        get(&with_bearer(&token(9))),
        429,
        "a fresh token is the same subject"
    );
    // Anonymous requests fall back to the address, apart from the principals'.
    assert_eq!(get(""), 404);
}

#[test]
fn without_authentication_the_start_up_says_who_can_write() {
    let data = DataDir::new("auth-open");
    let open = Server::start(&["--data-dir", data.arg()]);
    open.signal("TERM");
    let (_, out) = open.wait(Duration::from_secs(10));
    assert!(out.contains("no authentication is configured"), "{out}");
    let secured = Secured::start("open", &[]);
    secured.server.signal("TERM");
    let (_, out) = secured.server.wait(Duration::from_secs(10));
    assert!(!out.contains("no authentication"), "{out}");
}

#[test]
fn a_credential_is_never_logged() {
    let secured = Secured::start("logged", &[]);
    let secret = "key-that-must-not-appear-8d1c";
    for headers in [with_key(secret), with_bearer(&format!("{secret}.x.y"))] {
        let refused = request(&secured.server, "PUT", "/v1/items/a", Some("{}"), &headers);
        assert_eq!(refused.status, 401);
        assert!(!refused.text().contains(secret));
    }
    secured.server.signal("TERM");
    let (_, out, err) = secured.server.wait_with_stderr(Duration::from_secs(10));
    assert!(!out.contains(secret) && !err.contains(secret), "{out}{err}");
}

/// A receiver for webhooks: answers every request on `addr` with `status`
/// (and `location`, for a redirect), plain or over TLS, and counts them.
struct Hook {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Hook {
    fn start(
        ip: &str,
        status: u16,
        location: Option<String>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&hits);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (counter, location, tls) =
                    (Arc::clone(&counter), location.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    match tls {
                        None => answer(stream, status, location.as_deref(), &counter),
                        Some(config) => {
                            let Ok(session) = rustls::ServerConnection::new(config) else {
                                return;
                            };
                            let tls = rustls::StreamOwned::new(session, stream);
                            answer(tls, status, location.as_deref(), &counter);
                        }
                    }
                });
            }
        });
        Self { addr, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn answer(stream: impl Read + Write, status: u16, location: Option<&str>, hits: &AtomicUsize) {
    let mut reader = BufReader::new(stream);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let location = location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    let stream = reader.get_mut();
    let _ = stream.write_all(
        format!("HTTP/1.1 {status} X\r\n{location}Content-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    let _ = stream.flush();
}

fn submit(server: &Server, url: &str) -> Response {
    let body = format!(r#"{{"url": "{url}", "payload": {{"n": 1}}}}"#);
    server.call("POST", "/v1/jobs/webhook", Some(&body))
}

/// Waits until job `id` is `dead` or `succeeded`; returns its status document.
fn settled(server: &Server, id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status: serde_json::Value =
            serde_json::from_slice(&server.get(&format!("/v1/jobs/{id}")).body).unwrap();
        if ["dead", "succeeded"].contains(&status["status"].as_str().unwrap_or("")) {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never settled: {status}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn id_of(response: &Response) -> String {
    assert_eq!(response.status, 202, "{}", response.text());
    let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

#[test]
fn webhooks_cannot_reach_the_inside() {
    let data = DataDir::new("auth-ssrf");
    // Loopback is internal; only 127.0.0.2 is opened, for the receivers the test runs.
    let server = Server::start(&[
        "--data-dir",
        data.arg(),
        "--webhook-allow",
        "127.0.0.2",
        "--job-max-attempts",
        "2",
        "--job-retry-base",
        "50ms",
    ]);
    let inside = Hook::start("127.0.0.1", 200, None, None);
    let port = inside.addr.port();
    for url in [
        format!("http://127.0.0.1:{port}/internal/admin"),
        format!("http://[::1]:{port}/"),
        "http://10.0.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"),
    ] {
        let refused = submit(&server, &url);
        assert_eq!(refused.status, 400, "{url}: {}", refused.text());
        assert!(
            refused.text().contains("--webhook-allow"),
            "{url}: {}",
            refused.text()
        );
    }
    // A name is checked on the address it resolves to, when it is delivered.
    let by_name = settled(
        &server,
        &id_of(&submit(&server, &format!("http://localhost:{port}/"))),
    );
    assert_eq!(by_name["status"], "dead", "{by_name}");
    assert_eq!(
        by_name["attempts"], 1,
        "a refused destination is not retried: {by_name}"
    );
    let error = by_name["last_error"].as_str().unwrap();
    assert!(
        error.contains("refused destination") && error.contains("loopback"),
        "{error}"
    );
    // A redirect from an allowed receiver to an internal one is not followed.
    let redirecting = Hook::start(
        "127.0.0.2",
        302,
        Some(format!("http://127.0.0.1:{port}/internal/admin")),
        None,
    );
    let redirected = settled(
        &server,
        &id_of(&submit(
            &server,
            &format!("http://{}/hook", redirecting.addr),
        )),
    );
    assert_eq!(redirecting.hits(), 1);
    assert_eq!(redirected["status"], "dead", "{redirected}");
    assert!(
        redirected["last_error"]
            .as_str()
            .unwrap()
            .contains("refused destination"),
        "{redirected}"
    );
    assert_eq!(inside.hits(), 0, "an internal receiver was reached");
    // What --webhook-allow names is reachable.
    let allowed = Hook::start("127.0.0.2", 200, None, None);
    let delivered = settled(
        &server,
        &id_of(&submit(&server, &format!("http://{}/hook", allowed.addr))),
    );
    assert_eq!(delivered["status"], "succeeded", "{delivered}");
    assert_eq!(allowed.hits(), 1);
}

/// A CA, and a certificate for `localhost` it signed, as PEM files in `dir`;
/// returns the CA's file and the receiver's TLS configuration.
fn certificates(
    dir: &Path,
) -> (
    PathBuf,
    Arc<rustls::ServerConfig>,
    Arc<rustls::ServerConfig>,
) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "percore test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let server_config = |cert: rcgen::Certificate, key: KeyPair| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        Arc::new(config)
    };
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    // The same name, self-signed: no CA vouches for it.
    let rogue_key = KeyPair::generate().unwrap();
    let rogue = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .self_signed(&rogue_key)
        .unwrap();
    (
        ca_file,
        server_config(leaf, leaf_key),
        server_config(rogue, rogue_key),
    )
}

#[test]
fn https_webhooks_verify_the_receivers_certificate() {
    let data = DataDir::new("auth-https");
    std::fs::create_dir_all(&data.0).unwrap();
    let (ca, trusted, rogue) = certificates(&data.0);
    let server = Server::start(&[
        "--data-dir",
        data.arg(),
        "--webhook-allow",
        "127.0.0.1",
        "--webhook-ca",
        ca.to_str().unwrap(),
        "--job-max-attempts",
        "2",
        "--job-retry-base",
        "50ms",
    ]);
    let good = Hook::start("127.0.0.1", 200, None, Some(trusted));
    let delivered = settled(
        &server,
        &id_of(&submit(
            &server,
            &format!("https://localhost:{}/hook", good.addr.port()),
        )),
    );
    assert_eq!(delivered["status"], "succeeded", "{delivered}");
    assert_eq!(good.hits(), 1);

    let bad = Hook::start("127.0.0.1", 200, None, Some(rogue));
    let refused = settled(
        &server,
        &id_of(&submit(
            &server,
            &format!("https://localhost:{}/hook", bad.addr.port()),
        )),
    );
    assert_eq!(refused["status"], "dead", "{refused}");
    assert_eq!(
        refused["attempts"], 2,
        "a certificate failure is retried: {refused}"
    );
    let error = refused["last_error"].as_str().unwrap();
    assert!(
        error.to_ascii_lowercase().contains("certificate"),
        "{error}"
    );
    assert_eq!(bad.hits(), 0, "the payload went to an unverified receiver");
}

#[test]
fn a_ca_file_that_is_not_one_stops_the_start() {
    let data = DataDir::new("auth-bad-ca");
    std::fs::create_dir_all(&data.0).unwrap();
    let file = data.0.join("not-a-ca.pem");
    std::fs::write(&file, "hello").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--steer",
            "off",
        ])
        .args([
            "--data-dir",
            data.arg(),
            "--webhook-ca",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("holds no PEM certificate"), "{stderr}");
}

#[test]
fn operator_calls_live_on_the_admin_listener_alone() {
    let data = DataDir::new("auth-admin");
    let mut server = Server::start(&["--data-dir", data.arg(), "--admin-listen", "127.0.0.1:0"]);
    let admin: SocketAddr = loop {
        let line = server.next_line();
        assert!(!line.is_empty(), "no line names the admin listener");
        if let Some(rest) = line
            .split("http://")
            .nth(1)
            .filter(|_| line.contains("operator calls"))
        {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let on_admin = |method: &str, path: &str| {
        let mut conn = common::Conn::new(admin);
        conn.send(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        conn.response()
    };
    assert_eq!(on_admin("GET", "/metrics").status, 200);
    assert!(on_admin("GET", "/metrics")
        .text()
        .contains("percore_requests_total"));
    assert_eq!(on_admin("GET", "/v1/dead").status, 200);
    // Served there: the job system itself says it has no such job.
    let redrive = on_admin("POST", "/v1/jobs/12345/redrive");
    assert_eq!(redrive.status, 404);
    assert!(!redrive.text().contains("no route"), "{}", redrive.text());
    // The public port no longer exposes them, and the admin port serves nothing else.
    assert_eq!(server.get("/metrics").status, 404);
    assert_eq!(server.get("/v1/dead").status, 404);
    assert_eq!(server.call("POST", "/admin/drain", None).status, 404);
    let hidden = server.call("POST", "/v1/jobs/12345/redrive", None);
    assert_eq!(hidden.status, 404);
    assert!(hidden.text().contains("no route"), "{}", hidden.text());
    assert_eq!(server.get("/json").status, 200);
    assert_eq!(on_admin("GET", "/json").status, 404);
    assert_eq!(on_admin("PUT", "/v1/items/a").status, 404);
}

//! Rate limiting through real HTTP: one budget across cores, bursts, headers, trusted proxies, shadow mode, config.

mod common;

use std::time::Duration;

use common::{Conn, Response, Server};

fn get(conn: &mut Conn, path: &str, headers: &str) -> Response {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes());
    conn.response()
}

fn metric(server: &Server, line_start: &str) -> u64 {
    let text = server.get("/metrics").text();
    text.lines()
        .filter(|l| l.starts_with(line_start))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn one_budget_across_cores_and_connections() {
    let cores = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        "2"
    } else {
        "1"
    };
    let server = Server::start(&["--cores", cores, "--rate-limit", "1/min", "--burst", "5"]);
    // Twenty connections: the kernel spreads them over both cores.
    let mut conns: Vec<Conn> = (0..20).map(|_| server.connect()).collect();
    let statuses: Vec<u16> = conns
        .iter_mut()
        .map(|c| get(c, "/json", "").status)
        .collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        15,
        "{statuses:?}"
    );
    if cores == "2" {
        for core in 0..2 {
            let accepted = metric(
                &server,
                &format!("percore_connections_accepted_total{{core=\"{core}\"}}"),
            );
            assert!(
                accepted > 0,
                "core {core} took no connection; the test would not cross cores"
            );
        }
    }
    assert_eq!(
        metric(
            &server,
            "percore_ratelimit_decisions_total{core=\"0\",decision=\"allowed\"}"
        ) + metric(
            &server,
            "percore_ratelimit_decisions_total{core=\"1\",decision=\"allowed\"}"
        ),
        5
    );
}

#[test]
fn burst_then_rate_with_headers_and_retry_after() {
    let server = Server::start(&["--rate-limit", "2/s", "--burst", "3"]);
    let mut conn = server.connect();
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let response = get(&mut conn, "/json", "");
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("ratelimit-policy"),
            Some("\"default\";q=3;w=2")
        );
        assert_eq!(response.header("x-ratelimit-limit"), Some("3"));
        remaining.push(response.header("x-ratelimit-remaining").unwrap().to_owned());
        let ratelimit = response.header("ratelimit").unwrap();
        assert!(ratelimit.starts_with("\"default\";r="), "{ratelimit}");
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let limited = get(&mut conn, "/json", "");
    assert_eq!(
        (limited.status, limited.error_code().as_str()),
        (429, "rate_limited")
    );
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("x-ratelimit-remaining"), Some("0"));
    assert_eq!(limited.header("content-type"), Some("application/json"));
    // The connection survives a 429 of a bodiless request.
    std::thread::sleep(Duration::from_millis(600));
    let again = get(&mut conn, "/json", "");
    assert_eq!(again.status, 200, "one token refilled after 500 ms at 2/s");
    assert_eq!(get(&mut conn, "/json", "").status, 429);
}

#[test]
fn a_limited_request_with_a_body_is_refused_before_the_body_and_closed() {
    let server = Server::start(&["--rate-limit", "1/min", "--burst", "1"]);
    let mut conn = server.connect();
    assert_eq!(get(&mut conn, "/json", "").status, 200);
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\nonly a little");
    let response = conn.response();
    assert_eq!(response.status, 429);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(conn.closed_within(Duration::from_secs(3)));
}

#[test]
fn forwarded_addresses_count_only_from_trusted_proxies() {
    let trusted = Server::start(&[
        "--rate-limit",
        "1/min",
        "--burst",
        "1",
        "--trusted-proxy",
        "127.0.0.0/8",
    ]);
    let mut conn = trusted.connect();
    let xff = |ip: &str| format!("X-Forwarded-For: {ip}\r\n");
    assert_eq!(get(&mut conn, "/json", &xff("203.0.113.1")).status, 200);
    assert_eq!(get(&mut conn, "/json", &xff("203.0.113.1")).status, 429);
    assert_eq!(
        get(&mut conn, "/json", &xff("203.0.113.2")).status,
        200,
        "another client behind the proxy"
    );
    // A client cannot escape by prepending addresses: the nearest untrusted hop counts.
    assert_eq!(
        get(&mut conn, "/json", &xff("9.9.9.9, 203.0.113.1")).status,
        429
    );
    assert_eq!(
        get(&mut conn, "/json", "Forwarded: for=203.0.113.3\r\n").status,
        200
    );
    assert_eq!(
        get(&mut conn, "/json", "Forwarded: for=203.0.113.3\r\n").status,
        429
    );

    // From an untrusted peer the headers are ignored: every request is loopback's.
    let untrusted = Server::start(&[
        "--rate-limit",
        "1/min",
        "--burst",
        "1",
        "--trusted-proxy",
        "10.0.0.0/8",
    ]);
    let mut conn = untrusted.connect();
    assert_eq!(get(&mut conn, "/json", &xff("203.0.113.1")).status, 200);
    assert_eq!(
        get(&mut conn, "/json", &xff("203.0.113.99")).status,
        429,
        "spoofed X-Forwarded-For was believed"
    );
}

#[test]
fn api_key_header_as_the_key() {
    let server = Server::start(&[
        "--rate-limit",
        "1/min",
        "--burst",
        "1",
        "--rate-limit-key",
        "header:X-Api-Key",
    ]);
    let mut conn = server.connect();
    assert_eq!(get(&mut conn, "/json", "X-Api-Key: alice\r\n").status, 200);
    assert_eq!(get(&mut conn, "/json", "X-Api-Key: alice\r\n").status, 429);
    assert_eq!(get(&mut conn, "/json", "X-Api-Key: bob\r\n").status, 200);
    // Without the header, the client address is the key.
    assert_eq!(get(&mut conn, "/json", "").status, 200);
    assert_eq!(get(&mut conn, "/json", "").status, 429);
}

#[test]
fn shadow_mode_limits_nothing_and_counts() {
    let server = Server::start(&[
        "--rate-limit",
        "1/min",
        "--burst",
        "2",
        "--rate-limit-shadow",
    ]);
    let mut conn = server.connect();
    for _ in 0..6 {
        let response = get(&mut conn, "/json", "");
        assert_eq!(response.status, 200);
        assert_eq!(response.header("retry-after"), None);
    }
    assert_eq!(
        metric(
            &server,
            "percore_ratelimit_decisions_total{core=\"0\",decision=\"shadow_limited\"}"
        ),
        4
    );
    assert_eq!(
        metric(
            &server,
            "percore_ratelimit_decisions_total{core=\"0\",decision=\"allowed\"}"
        ),
        2
    );
}

#[test]
fn per_route_policies_costs_and_exemptions_from_the_config_file() {
    let dir = std::env::temp_dir().join(format!("percore-ratelimit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("percore.toml");
    std::fs::write(
        &path,
        r#"
cores = 1
[rate_limit]
rate = "1/min"
burst = 4
[[rate_limit.routes]]
method = "HEAD"
path = "/json"
exempt = true
[[rate_limit.routes]]
method = "POST"
path = "/echo"
rate = "1/min"
burst = 1
name = "uploads"
[[rate_limit.routes]]
path = "/plaintext"
cost = 2
"#,
    )
    .unwrap();
    let server = Server::start(&["--config", path.to_str().unwrap()]);
    let mut conn = server.connect();
    for _ in 0..10 {
        conn.send(b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\n");
        let head = conn.read_response(true);
        assert_eq!(head.status, 200);
        assert_eq!(
            head.header("ratelimit"),
            None,
            "exempt routes carry no rate-limit headers"
        );
        // Probes are never limited by the default policy.
        assert_eq!(get(&mut conn, "/healthz", "").status, 200);
    }
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi");
    let upload = conn.response();
    assert_eq!(upload.status, 200);
    assert_eq!(
        upload.header("ratelimit-policy"),
        Some("\"uploads\";q=1;w=60")
    );
    // The default budget of 4: /plaintext costs 2, twice, then nothing is left for /json.
    assert_eq!(
        get(&mut conn, "/plaintext", "").header("x-ratelimit-remaining"),
        Some("2")
    );
    assert_eq!(
        get(&mut conn, "/plaintext", "").header("x-ratelimit-remaining"),
        Some("0")
    );
    assert_eq!(get(&mut conn, "/json", "").status, 429);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_rate_limit_settings_exit_64() {
    for (args, field) in [
        (vec!["--rate-limit", "fast"], "`rate_limit`"),
        (vec!["--rate-limit", "10/s", "--burst", "0"], "`burst`"),
        (vec!["--burst", "5"], "`burst`"),
        (
            vec!["--rate-limit", "10/s", "--trusted-proxy", "10.0.0.0/99"],
            "`trusted_proxy`",
        ),
        (
            vec!["--rate-limit", "10/s", "--rate-limit-key", "cookie"],
            "`rate_limit_key`",
        ),
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .arg("serve")
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(field), "{args:?}: {stderr}");
    }
}

//! HTTP/1.1 behaviour of a real percore process over real TCP.

mod common;

use std::io::Read;
use std::time::Duration;

use common::Server;

#[test]
fn techempower_json_and_plaintext() {
    let server = Server::start(&[]);
    let json = server.get("/json");
    assert_eq!(json.status, 200);
    assert_eq!(json.header("content-type"), Some("application/json"));
    assert_eq!(json.header("server"), Some("percore"));
    assert_eq!(json.header("date").map(str::len), Some(29));
    assert_eq!(json.body, br#"{"message":"Hello, World!"}"#);
    let plain = server.get("/plaintext");
    assert_eq!(plain.header("content-type"), Some("text/plain"));
    assert_eq!(plain.body, b"Hello, World!");
}

#[test]
fn a_real_client_keeps_one_connection_alive() {
    let server = Server::start(&[]);
    let agent = ureq::AgentBuilder::new().build();
    for _ in 0..50 {
        let response = agent.get(&server.url("/json")).call().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.into_string().unwrap(),
            r#"{"message":"Hello, World!"}"#
        );
    }
    let metrics = agent
        .get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        metrics.contains("percore_connections_accepted_total{core=\"0\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("percore_requests_total{core=\"0\",status=\"200\"} 50\n"),
        "{metrics}"
    );
}

#[test]
fn sixteen_pipelined_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let mut batch = Vec::new();
    for i in 0..16 {
        let path = if i % 2 == 0 { "/json" } else { "/plaintext" };
        batch.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    }
    conn.send(&batch);
    for i in 0..16 {
        let response = conn.response();
        assert_eq!(response.status, 200);
        let expected: &[u8] = if i % 2 == 0 {
            br#"{"message":"Hello, World!"}"#
        } else {
            b"Hello, World!"
        };
        assert_eq!(response.body, expected, "response {i}");
    }
}

#[test]
fn pipelined_requests_split_at_every_byte() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let request = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\nPOST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello";
    for byte in request {
        conn.send(std::slice::from_ref(byte));
    }
    assert_eq!(conn.response().body, b"Hello, World!");
    assert_eq!(conn.response().body, b"hello");
}

#[test]
fn http10_closes_by_default_and_keeps_alive_on_request() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"GET /plaintext HTTP/1.0\r\n\r\n");
    let response = conn.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("connection"), Some("close"));
    assert!(conn.closed_within(Duration::from_secs(3)));

    let mut conn = server.connect();
    conn.send(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(conn.response().header("connection"), Some("keep-alive"));
    conn.send(b"GET /json HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(conn.response().status, 200);
}

#[test]
fn connection_close_is_honoured_and_later_requests_ignored() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\nGET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = conn.response();
    assert_eq!(response.header("connection"), Some("close"));
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "a second response was sent after Connection: close"
    );
}

#[test]
fn head_has_the_get_headers_and_no_body() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"HEAD /json HTTP/1.1\r\nHost: t\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = conn.read_response(true);
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), Some("27"));
    // The next response starts right where the head ended: no body bytes in between.
    assert_eq!(conn.response().body, b"Hello, World!");
}

#[test]
fn expect_100_continue_then_body() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    let interim = conn.read_response(false);
    assert_eq!(interim.status, 100);
    conn.send(b"ping");
    let response = conn.response();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, b"ping".as_slice())
    );
}

#[test]
fn expect_100_continue_with_too_large_body_gets_413_without_continue() {
    let server = Server::start(&["--max-body-bytes", "16"]);
    let mut conn = server.connect();
    conn.send(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 17\r\n\r\n",
    );
    let response = conn.response();
    assert_eq!(response.status, 413);
    assert_eq!(response.error_code(), "body_too_large");
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Type: text/x\r\n\r\n");
    conn.send(b"4;name=v\r\nWiki\r\n");
    std::thread::sleep(Duration::from_millis(50));
    conn.send(b"5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Checksum: 1\r\n\r\n");
    let response = conn.response();
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/x"));
    assert_eq!(response.text(), "Wikipedia in\r\n\r\nchunks.");
    // The connection is still in sync.
    conn.send(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response().body, b"Hello, World!");
}

#[test]
fn a_real_client_posts_a_large_body() {
    let server = Server::start(&[]);
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let response = ureq::post(&server.url("/echo")).send_bytes(&body).unwrap();
    let mut echoed = Vec::new();
    response.into_reader().read_to_end(&mut echoed).unwrap();
    assert_eq!(echoed, body);
}

#[test]
fn not_found_and_method_not_allowed_are_json() {
    let server = Server::start(&[]);
    let missing = server.get("/nothing-here");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/json"));
    assert_eq!(missing.error_code(), "not_found");

    let mut conn = server.connect();
    conn.send(b"DELETE /json HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = conn.response();
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("GET, HEAD"));
    assert_eq!(response.error_code(), "method_not_allowed");
    // 404 and 405 keep the connection.
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response().status, 200);
}

#[test]
fn healthz_and_readyz() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz").status, 200);
    let ready = server.get("/readyz");
    assert_eq!(
        (ready.status, ready.text()),
        (200, r#"{"status":"ready"}"#.to_owned())
    );
}

#[test]
fn metrics_report_status_connections_and_route_latency() {
    let server = Server::start(&[]);
    for _ in 0..3 {
        assert_eq!(server.get("/json").status, 200);
    }
    assert_eq!(server.get("/missing").status, 404);
    // Latency quantiles are published once per tick (500 ms).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    for scrapes_before in 0.. {
        let text = server.get("/metrics").text();
        let ready = text.contains("percore_request_duration_seconds_count{route=\"/json\"} 3\n");
        if ready {
            // Each earlier scrape was a 200 too; this one is counted after it renders.
            let ok = format!(
                "percore_requests_total{{core=\"0\",status=\"200\"}} {}\n",
                3 + scrapes_before
            );
            assert!(text.contains(&ok), "{text}");
            assert!(
                text.contains("percore_requests_total{core=\"0\",status=\"404\"} 1\n"),
                "{text}"
            );
            assert!(
                text.contains("percore_request_duration_seconds_count{route=\"(unmatched)\"} 1\n"),
                "{text}"
            );
            assert!(text
                .contains("percore_request_duration_seconds{route=\"/json\",quantile=\"0.99\"}"));
            assert!(
                text.contains("percore_open_connections{core=\"0\"} 1\n"),
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never showed 3 /json requests: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn several_cores_share_the_port() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        eprintln!("skipped: this machine has one CPU");
        return;
    }
    let server = Server::start(&["--cores", "2"]);
    let conns: Vec<_> = (0..24).map(|_| server.connect()).collect();
    for mut conn in conns {
        conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(conn.response().status, 200);
    }
    let text = server.get("/metrics").text();
    for core in 0..2 {
        let accepted = text
            .lines()
            .find(|l| {
                l.starts_with(&format!(
                    "percore_connections_accepted_total{{core=\"{core}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap();
        assert!(
            accepted > 0,
            "core {core} accepted no connection of 25: {text}"
        );
    }
}

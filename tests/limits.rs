//! Every limit answers with the right status and a JSON body, and framing attacks are refused.

mod common;

use std::time::Duration;

use common::Server;

/// Sends `raw` on a fresh connection; returns the response and whether the server then closed.
fn exchange(server: &Server, raw: &[u8]) -> (common::Response, bool) {
    let mut conn = server.connect();
    conn.send(raw);
    let response = conn.response();
    let closed = conn.closed_within(Duration::from_secs(3));
    (response, closed)
}

#[test]
fn oversized_headers_are_431() {
    let server = Server::start(&["--max-header-bytes", "1KiB"]);
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(2000));
    let (response, closed) = exchange(&server, long_line.as_bytes());
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (431, "headers_too_large")
    );
    assert!(closed);
    let big_header = format!(
        "GET /json HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(1500)
    );
    assert_eq!(exchange(&server, big_header.as_bytes()).0.status, 431);
    // Headers that never end are cut off at the limit too.
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n");
    for _ in 0..40 {
        conn.send(b"X-Filler: 0123456789012345678901234567890123456789\r\n");
    }
    assert_eq!(conn.response().status, 431);
}

#[test]
fn too_many_headers_are_431() {
    let server = Server::start(&["--max-headers", "8"]);
    let mut raw = String::from("GET /json HTTP/1.1\r\nHost: t\r\n");
    for i in 0..8 {
        raw.push_str(&format!("X-{i}: v\r\n"));
    }
    raw.push_str("\r\n");
    let (response, _) = exchange(&server, raw.as_bytes());
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (431, "too_many_headers")
    );
    let ok = "GET /json HTTP/1.1\r\nHost: t\r\nX-1: a\r\n\r\n";
    assert_eq!(exchange(&server, ok.as_bytes()).0.status, 200);
}

#[test]
fn oversized_bodies_are_413_by_length_and_by_chunks() {
    let server = Server::start(&["--max-body-bytes", "10"]);
    let (response, closed) = exchange(
        &server,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n\r\n01234567890",
    );
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (413, "body_too_large")
    );
    assert!(closed);
    let chunked = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n6\r\n012345\r\n6\r\n678901\r\n0\r\n\r\n";
    assert_eq!(exchange(&server, chunked).0.status, 413);
    let fits = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n0123456789";
    assert_eq!(exchange(&server, fits).0.body, b"0123456789");
}

#[test]
fn malformed_requests_are_400_then_close() {
    let server = Server::start(&[]);
    for raw in [
        &b"GET /json HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n"[..],
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 tls hello\r\n\r\n",
        b"GET /json HTTP/1.1\r\n\r\n",
        b"GET relative HTTP/1.1\r\nHost: t\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n",
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let (response, closed) = exchange(&server, raw);
        assert_eq!(
            response.status,
            400,
            "for {:?}",
            String::from_utf8_lossy(raw)
        );
        assert_eq!(response.header("connection"), Some("close"));
        assert!(
            closed,
            "still open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn unsupported_transfer_coding_is_501() {
    let server = Server::start(&[]);
    let (response, closed) = exchange(
        &server,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n",
    );
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (501, "unsupported_transfer_coding")
    );
    assert!(closed);
}

#[test]
fn http2_and_unknown_versions_are_505() {
    let server = Server::start(&[]);
    let (response, _) = exchange(&server, b"GET /json HTTP/2.0\r\nHost: t\r\n\r\n");
    assert_eq!(response.status, 505);
}

#[test]
fn smuggling_attempts_are_refused_and_the_smuggled_request_never_runs() {
    let server = Server::start(&[]);
    // CL.TE: a front end using Content-Length would forward the smuggled request as body.
    let cl_te = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 38\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    // Two different lengths.
    let cl_cl = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nContent-Length: 34\r\n\r\nGET /metrics HTTP/1.1\r\nHost: t\r\n\r\n";
    // An obfuscated Transfer-Encoding.
    let te_obfuscated = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n0\r\n\r\n";
    let te_space =
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n";
    for raw in [&cl_te[..], cl_cl, te_obfuscated, te_space] {
        let (response, closed) = exchange(&server, raw);
        assert_eq!(
            response.status,
            400,
            "for {:?}",
            String::from_utf8_lossy(raw)
        );
        assert!(
            closed,
            "the connection stayed open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn idle_keep_alive_connections_are_closed() {
    let server = Server::start(&["--idle-timeout", "1s"]);
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response().status, 200);
    let started = std::time::Instant::now();
    assert!(conn.closed_within(Duration::from_secs(5)));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[test]
fn slow_headers_get_408_and_close() {
    let server = Server::start(&["--header-timeout", "1s", "--idle-timeout", "30s"]);
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n");
    // Slowloris: keep trickling bytes, never finishing the head.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        let _ = std::io::Write::write_all(&mut conn.stream, b"X: y\r\n");
    }
    let response = conn.response();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (408, "header_timeout")
    );
    assert!(conn.closed_within(Duration::from_secs(3)));
}

#[test]
fn connections_over_the_per_core_limit_get_503() {
    let server = Server::start(&["--max-connections-per-core", "2"]);
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut conn = server.connect();
        conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(conn.response().status, 200);
        held.push(conn);
    }
    let mut refused = server.connect();
    let response = refused.response();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (503, "too_many_connections")
    );
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(refused.closed_within(Duration::from_secs(3)));
    // The held connections still work, and a slot frees when one closes.
    held[0].send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(held[0].response().status, 200);
    drop(held.pop());
    std::thread::sleep(Duration::from_millis(200));
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.response().status, 200);
}

#[test]
fn a_client_that_never_reads_does_not_grow_memory_without_bound() {
    let server = Server::start(&["--idle-timeout", "2s"]);
    let mut conn = server.connect();
    conn.stream
        .set_write_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let request = b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n".repeat(1000);
    // Write until the kernel's buffers are full both ways; the server must
    // stop reading rather than buffer everything, then cut us off.
    let mut written = 0usize;
    while written < 200 * 1024 * 1024 {
        match std::io::Write::write(&mut conn.stream, &request) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    assert!(
        written < 200 * 1024 * 1024,
        "the server kept reading {written} bytes without us reading a byte"
    );
    // The server is still healthy for others.
    assert_eq!(server.get("/json").status, 200);
}

#[test]
fn slow_bodies_get_408_and_close() {
    let server = Server::start(&["--body-timeout", "1s", "--idle-timeout", "30s"]);
    let mut conn = server.connect();
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n");
    // Trickle the body a byte at a time, never finishing it.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        let _ = std::io::Write::write_all(&mut conn.stream, b"x");
    }
    let response = conn.response();
    assert_eq!(
        (response.status, response.error_code().as_str()),
        (408, "body_timeout")
    );
    assert!(conn.closed_within(Duration::from_secs(3)));
}

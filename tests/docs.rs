//! The document API through real HTTP: CRUD, ETags and preconditions, merge patch, field masks, scans across shards, bad input, cross-core linearizability, kill -9, shard maps, cache metrics.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Conn, DataDir, Response, Server};
use serde_json::Value;

fn request(
    conn: &mut Conn,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() || method == "PUT" || method == "PATCH" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body);
    conn.send(head.as_bytes());
    conn.read_response(method == "HEAD")
}

fn put(conn: &mut Conn, path: &str, body: &str) -> Response {
    request(
        conn,
        "PUT",
        path,
        &[("Content-Type", "application/json")],
        body,
    )
}

fn json(response: &Response) -> Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

/// The sum over cores of a per-core counter in /metrics.
fn metric(server: &Server, name: &str) -> f64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn create_read_replace_delete() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let created = put(
        &mut conn,
        "/v1/users/ann",
        r#"{ "name": "Ann", "age": 41 }"#,
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let etag = created.header("etag").expect("an ETag").to_owned();
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(
        created.text(),
        r#"{"name":"Ann","age":41}"#,
        "stored compact"
    );

    let read = request(&mut conn, "GET", "/v1/users/ann", &[], "");
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some(etag.as_str()));
    assert_eq!(read.header("content-type"), Some("application/json"));
    assert_eq!(json(&read), serde_json::json!({"name": "Ann", "age": 41}));
    let head = request(&mut conn, "HEAD", "/v1/users/ann", &[], "");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());

    let replaced = put(&mut conn, "/v1/users/ann", r#"{"name":"Ann","age":42}"#);
    assert_eq!(replaced.status, 200);
    let new_etag = replaced.header("etag").unwrap().to_owned();
    assert_ne!(new_etag, etag, "a write changes the ETag");
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/users/ann", &[], ""))["age"],
        42
    );

    let deleted = request(&mut conn, "DELETE", "/v1/users/ann", &[], "");
    assert_eq!(deleted.status, 204);
    assert!(
        deleted.header("content-length").is_none(),
        "204 carries no length"
    );
    let gone = request(&mut conn, "GET", "/v1/users/ann", &[], "");
    assert_eq!(gone.status, 404);
    assert_eq!(gone.error_code(), "not_found");
    assert!(
        gone.text().contains("ann") && gone.text().contains("users"),
        "{}",
        gone.text()
    );
    assert_eq!(
        request(&mut conn, "DELETE", "/v1/users/ann", &[], "").status,
        404
    );

    // Created again: a new ETag, never the deleted document's.
    let again = put(&mut conn, "/v1/users/ann", r#"{"name":"Ann"}"#);
    assert_eq!(again.status, 201);
    assert_ne!(again.header("etag").unwrap(), etag);
    assert_ne!(again.header("etag").unwrap(), new_etag);

    // Keys are percent-decoded; the same document by either spelling.
    assert_eq!(put(&mut conn, "/v1/users/a%20b", r#"{"k":1}"#).status, 201);
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/users/a%20b", &[], ""))["k"],
        1
    );
}

#[test]
fn preconditions_make_read_modify_write_safe() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let first = put(&mut conn, "/v1/items/x", r#"{"n":1}"#);
    let etag = first.header("etag").unwrap().to_owned();

    // Not modified for a matching If-None-Match on GET.
    let cached = request(
        &mut conn,
        "GET",
        "/v1/items/x",
        &[("If-None-Match", &etag)],
        "",
    );
    assert_eq!(cached.status, 304);
    assert_eq!(cached.header("etag"), Some(etag.as_str()));
    assert_eq!(
        request(
            &mut conn,
            "GET",
            "/v1/items/x",
            &[("If-None-Match", "\"ffff\"")],
            ""
        )
        .status,
        200
    );

    // A write with the current ETag wins; a second with the same (now stale) one is refused.
    let second = request(
        &mut conn,
        "PUT",
        "/v1/items/x",
        &[("If-Match", &etag), ("Content-Type", "application/json")],
        r#"{"n":2}"#,
    );
    assert_eq!(second.status, 200);
    let stale = request(
        &mut conn,
        "PUT",
        "/v1/items/x",
        &[("If-Match", &etag), ("Content-Type", "application/json")],
        r#"{"n":3}"#,
    );
    assert_eq!(stale.status, 412, "{}", stale.text());
    assert_eq!(stale.error_code(), "precondition_failed");
    assert!(
        stale
            .text()
            .contains(second.header("etag").unwrap().trim_matches('"')),
        "names the current ETag: {}",
        stale.text()
    );
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/items/x", &[], ""))["n"],
        2,
        "the refused write changed nothing"
    );

    // Weak tags never match If-Match; a PATCH and a DELETE with a stale tag are refused too.
    let weak = format!("W/{}", second.header("etag").unwrap());
    let patch = request(
        &mut conn,
        "PATCH",
        "/v1/items/x",
        &[("If-Match", &weak)],
        r#"{"n":9}"#,
    );
    assert_eq!(patch.status, 412);
    assert_eq!(
        request(
            &mut conn,
            "DELETE",
            "/v1/items/x",
            &[("If-Match", &etag)],
            ""
        )
        .status,
        412
    );
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/items/x", &[], ""))["n"],
        2
    );

    // If-None-Match: * creates only.
    let exists = request(
        &mut conn,
        "PUT",
        "/v1/items/x",
        &[("If-None-Match", "*"), ("Content-Type", "application/json")],
        r#"{"n":4}"#,
    );
    assert_eq!(exists.status, 412);
    let fresh = request(
        &mut conn,
        "PUT",
        "/v1/items/y",
        &[("If-None-Match", "*"), ("Content-Type", "application/json")],
        r#"{"n":5}"#,
    );
    assert_eq!(fresh.status, 201);
    // If-Match on a missing document fails rather than creating it.
    let missing = request(
        &mut conn,
        "PUT",
        "/v1/items/z",
        &[("If-Match", "*"), ("Content-Type", "application/json")],
        r#"{"n":6}"#,
    );
    assert_eq!(missing.status, 412);
    assert_eq!(
        request(&mut conn, "GET", "/v1/items/z", &[], "").status,
        404
    );
    // GET honours If-Match too (RFC 9110 §13.1.1).
    let now = request(&mut conn, "GET", "/v1/items/x", &[], "");
    let tag = now.header("etag").unwrap().to_owned();
    assert_eq!(
        request(&mut conn, "GET", "/v1/items/x", &[("If-Match", &tag)], "").status,
        200
    );
    assert_eq!(
        request(&mut conn, "GET", "/v1/items/x", &[("If-Match", &etag)], "").status,
        412
    );
    assert_eq!(
        request(&mut conn, "GET", "/v1/items/none", &[("If-Match", "*")], "").status,
        412
    );
    // A matching If-Match deletes.
    let current = request(&mut conn, "GET", "/v1/items/y", &[], "")
        .header("etag")
        .unwrap()
        .to_owned();
    assert_eq!(
        request(
            &mut conn,
            "DELETE",
            "/v1/items/y",
            &[("If-Match", &current)],
            ""
        )
        .status,
        204
    );
}

#[test]
fn merge_patch_follows_rfc_7396() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    put(
        &mut conn,
        "/v1/p/1",
        r#"{"title":"Goodbye!","author":{"givenName":"John","familyName":"Doe"},"tags":["example","sample"],"content":"This will be unchanged"}"#,
    );
    let patched = request(
        &mut conn,
        "PATCH",
        "/v1/p/1",
        &[("Content-Type", "application/merge-patch+json")],
        r#"{"title":"Hello!","phoneNumber":"+01-123-456-7890","author":{"familyName":null},"tags":["example"]}"#,
    );
    assert_eq!(patched.status, 200, "{}", patched.text());
    let expected = serde_json::json!({
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890"
    });
    assert_eq!(json(&patched), expected);
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/p/1", &[], "")),
        expected
    );
    assert_ne!(patched.header("etag"), None);

    let missing = request(&mut conn, "PATCH", "/v1/p/nope", &[], r#"{"a":1}"#);
    assert_eq!(missing.status, 404);
    assert_eq!(
        request(&mut conn, "GET", "/v1/p/nope", &[], "").status,
        404,
        "PATCH does not create"
    );
    let not_object = request(&mut conn, "PATCH", "/v1/p/1", &[], "[1,2]");
    assert_eq!(not_object.status, 400);
    let form = request(
        &mut conn,
        "PATCH",
        "/v1/p/1",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        r#"{"a":1}"#,
    );
    assert_eq!(form.status, 415);
    assert_eq!(form.error_code(), "unsupported_media_type");
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/p/1", &[], "")),
        expected,
        "refused patches changed nothing"
    );
}

#[test]
fn field_masks_project_documents() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    put(
        &mut conn,
        "/v1/products/p1",
        r#"{"id":7,"name":"lamp","price":12.5,"stock":3,"dims":{"w":10,"h":20,"d":{"x":1}},"tags":["a"]}"#,
    );
    for _ in 0..2 {
        // Twice: the second answer comes from the cached projection.
        let masked = request(
            &mut conn,
            "GET",
            "/v1/products/p1?fields=id,name,price,dims.h,absent,tags.x",
            &[],
            "",
        );
        assert_eq!(masked.status, 200);
        assert_eq!(
            json(&masked),
            serde_json::json!({"id":7,"name":"lamp","price":12.5,"dims":{"h":20}})
        );
    }
    let encoded = request(
        &mut conn,
        "GET",
        "/v1/products/p1?fields=dims.d.x%2Cstock",
        &[],
        "",
    );
    assert_eq!(
        json(&encoded),
        serde_json::json!({"stock":3,"dims":{"d":{"x":1}}})
    );
    let same_set = request(
        &mut conn,
        "GET",
        "/v1/products/p1?fields=stock,dims.d.x,stock",
        &[],
        "",
    );
    assert_eq!(json(&same_set), json(&encoded));
    let whole = request(
        &mut conn,
        "GET",
        "/v1/products/p1?fields=dims,dims.w",
        &[],
        "",
    );
    assert_eq!(
        json(&whole),
        serde_json::json!({"dims":{"w":10,"h":20,"d":{"x":1}}})
    );

    for bad in ["", "a,,b", "a.", ".a", "a..b", "name,"] {
        let refused = request(
            &mut conn,
            "GET",
            &format!("/v1/products/p1?fields={bad}"),
            &[],
            "",
        );
        assert_eq!(refused.status, 400, "fields={bad}");
        assert_eq!(refused.error_code(), "invalid_fields");
    }
    // A write drops every cached projection: the next masked read sees it.
    put(&mut conn, "/v1/products/p1", r#"{"id":8,"name":"desk"}"#);
    let after = request(
        &mut conn,
        "GET",
        "/v1/products/p1?fields=id,name,price",
        &[],
        "",
    );
    assert_eq!(json(&after), serde_json::json!({"id":8,"name":"desk"}));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let server = Server::start(&["--max-document-bytes", "64"]);
    let mut conn = server.connect();
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a str,
        u16,
        &'a str,
    );
    let cases: [Case; 9] = [
        ("PUT", "/v1/c/k", &[], r#"{"a":"#, 400, "invalid_document"),
        ("PUT", "/v1/c/k", &[], r#"[1,2,3]"#, 400, "invalid_document"),
        (
            "PUT",
            "/v1/c/k",
            &[],
            r#"{"a":1} trailing"#,
            400,
            "invalid_document",
        ),
        ("PUT", "/v1/c/k", &[], "", 400, "invalid_document"),
        (
            "PUT",
            "/v1/c/k",
            &[],
            "{\"a\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}",
            413,
            "document_too_large",
        ),
        (
            "PUT",
            "/v1/c/k",
            &[("Content-Type", "text/plain")],
            r#"{"a":1}"#,
            415,
            "unsupported_media_type",
        ),
        ("PUT", "/v1/c/a%01b", &[], r#"{"a":1}"#, 400, "invalid_key"),
        ("PUT", "/v1/c$/k", &[], r#"{"a":1}"#, 400, "invalid_key"),
        ("PUT", "/v1/c/bad%zz", &[], r#"{"a":1}"#, 400, "invalid_key"),
    ];
    for (method, path, headers, body, status, code) in cases {
        let response = request(&mut conn, method, path, headers, body);
        assert_eq!(
            response.status,
            status,
            "{method} {path} {body:?}: {}",
            response.text()
        );
        assert_eq!(response.error_code(), code, "{method} {path} {body:?}");
    }
    let long_key = "k".repeat(513);
    assert_eq!(
        put(&mut conn, &format!("/v1/c/{long_key}"), r#"{"a":1}"#).status,
        400
    );
    assert_eq!(
        put(&mut conn, "/v1/jobs/x", r#"{"a":1}"#).status,
        400,
        "reserved collection"
    );
    // The connection survived every refusal, and nothing was written.
    assert_eq!(request(&mut conn, "GET", "/v1/c/k", &[], "").status, 404);
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/c", &[], ""))["items"],
        serde_json::json!([])
    );
    // A patch that would make the document too large is refused whole.
    assert_eq!(put(&mut conn, "/v1/c/k", r#"{"a":1}"#).status, 201);
    let grown = request(
        &mut conn,
        "PATCH",
        "/v1/c/k",
        &[],
        &format!("{{\"b\":\"{}\"}}", "y".repeat(60)),
    );
    assert_eq!(grown.status, 413, "{}", grown.text());
    assert_eq!(
        request(&mut conn, "GET", "/v1/c/k", &[], "").text(),
        r#"{"a":1}"#
    );
}

#[test]
fn scans_merge_every_shard_in_key_order() {
    let server = Server::start(&["--cores", "2"]);
    let mut conn = server.connect();
    let mut keys: Vec<String> = (0..57)
        .map(|i| format!("key-{:03}", (i * 37) % 57))
        .collect();
    for key in &keys {
        assert_eq!(
            put(
                &mut conn,
                &format!("/v1/scan/{key}"),
                &format!(r#"{{"k":"{key}","n":1}}"#)
            )
            .status,
            201
        );
    }
    put(&mut conn, "/v1/scan-other/zzz", r#"{"other":true}"#);
    keys.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            None => "/v1/scan?limit=10&fields=k".to_owned(),
            Some(a) => format!("/v1/scan?limit=10&fields=k&after={a}"),
        };
        let page = json(&request(&mut conn, "GET", &path, &[], ""));
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        for item in items {
            let key = item["key"].as_str().unwrap().to_owned();
            assert_eq!(
                item["doc"],
                serde_json::json!({"k": key}),
                "the mask applies to scans"
            );
            seen.push(key);
        }
        match page["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen, keys,
        "every key once, in order, none from another collection"
    );
    for bad in ["limit=0", "limit=1001", "limit=x", "after=%01"] {
        assert_eq!(
            request(&mut conn, "GET", &format!("/v1/scan?{bad}"), &[], "").status,
            400,
            "{bad}"
        );
    }
}

/// One writer bumps a counter document through one connection; readers on
/// connections spread over both cores must never see a value older than the
/// last write acknowledged before their read began.
#[test]
fn writes_are_linearizable_across_cores() {
    let server = Server::start(&["--cores", "2"]);
    let addr = server.addr;
    put(&mut server.connect(), "/v1/lin/counter", r#"{"v":0}"#);
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // Connections until the kernel has given some to each core, so reads and
    // writes surely arrive on cores that do not own the key.
    let mut conns: Vec<Conn> = Vec::new();
    // Asked on one kept-alive connection, so asking opens no connection.
    let mut probe = Conn::new(addr);
    let mut accepted = move || -> [f64; 2] {
        let text = request(&mut probe, "GET", "/metrics", &[], "").text();
        [0, 1].map(|core| {
            text.lines()
                .find(|l| {
                    l.starts_with(&format!(
                        "percore_connections_accepted_total{{core=\"{core}\"}}"
                    ))
                })
                .map_or(0.0, |l| l.rsplit(' ').next().unwrap().parse().unwrap())
        })
    };
    let before = accepted();
    loop {
        let now = accepted();
        if conns.len() >= 10 && now[0] > before[0] && now[1] > before[1] {
            break;
        }
        assert!(
            conns.len() < 200,
            "the kernel kept every connection on one core"
        );
        conns.push(Conn::new(addr));
    }
    let readers: Vec<_> = conns
        .drain(4..)
        .map(|mut conn| {
            let acked = Arc::clone(&acked);
            let done = Arc::clone(&done);
            std::thread::spawn(move || {
                let (mut reads, mut last) = (0u64, 0u64);
                while !done.load(Ordering::SeqCst) {
                    let floor = acked.load(Ordering::SeqCst);
                    let response = request(&mut conn, "GET", "/v1/lin/counter", &[], "");
                    let value = json(&response)["v"].as_u64().unwrap();
                    assert!(
                        value >= floor,
                        "read {value} after write {floor} was acknowledged"
                    );
                    assert!(value >= last, "read {value} after reading {last}");
                    last = value;
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let mut writers = conns;
    for v in 1..=300u64 {
        let conn = &mut writers[v as usize % 4];
        let response = put(conn, "/v1/lin/counter", &format!(r#"{{"v":{v}}}"#));
        assert_eq!(response.status, 200);
        acked.store(v, Ordering::SeqCst);
    }
    done.store(true, Ordering::SeqCst);
    let reads: u64 = readers.into_iter().map(|r| r.join().unwrap()).sum();
    assert!(reads > 100, "the readers barely ran ({reads} reads)");
    assert!(
        metric(&server, "percore_data_forwarded_total") > 0.0,
        "no operation crossed cores; the test did not exercise the cross-core path"
    );
}

#[test]
fn kill_9_loses_no_acknowledged_write() {
    let data = DataDir::new("docs-kill");
    let server = Server::start(&["--cores", "2", "--data-dir", data.arg()]);
    let addr = server.addr;
    let acknowledged = Arc::new(Mutex::new(HashMap::<String, u64>::new()));
    let cut_off = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let acknowledged = Arc::clone(&acknowledged);
            let cut_off = Arc::clone(&cut_off);
            std::thread::spawn(move || {
                let mut conn = Conn::new(addr);
                conn.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                for n in 0..100_000u64 {
                    let key = format!("w{w}-{n}");
                    let body = format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(100));
                    let sent = format!(
                        "PUT /v1/kill/{key} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    use std::io::{Read, Write};
                    if conn.stream.write_all(sent.as_bytes()).is_err() {
                        cut_off.store(true, Ordering::SeqCst);
                        return;
                    }
                    // Read the status line by hand: a killed server ends the stream.
                    let mut buf = [0u8; 512];
                    match conn.stream.read(&mut buf) {
                        Ok(n) if n >= 12 && &buf[9..12] == b"201" => {
                            acknowledged.lock().unwrap().insert(key, n as u64);
                        }
                        _ => {
                            cut_off.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    // Let a few thousand writes land, then kill in the middle of the burst.
    let deadline = Instant::now() + Duration::from_secs(20);
    while acknowledged.lock().unwrap().len() < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal("KILL");
    let _ = server.wait(Duration::from_secs(5));
    for writer in writers {
        writer.join().unwrap();
    }
    assert!(
        cut_off.load(Ordering::SeqCst),
        "the burst ended before the kill; the test proved nothing"
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() >= 1000,
        "only {} writes were acknowledged",
        acknowledged.len()
    );

    let (restarted, store_line) =
        Server::start_with_output(&["--cores", "2", "--data-dir", data.arg()]);
    // Writes since the last checkpoint were durable only in the write-ahead logs.
    assert!(store_line.contains("replayed"), "{store_line}");
    let mut conn = restarted.connect();
    let mut missing = Vec::new();
    for key in acknowledged.keys() {
        let response = request(&mut conn, "GET", &format!("/v1/kill/{key}"), &[], "");
        if response.status != 200 {
            missing.push(key.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn the_shard_map_is_kept_and_a_different_one_refused() {
    let data = DataDir::new("docs-map");
    let server =
        Server::start_with_output(&["--data-dir", data.arg(), "--shard-ranges", "A-M,N-Z"]);
    assert!(
        server.1.contains("shard map v1: key ranges A-M,N-Z"),
        "{}",
        server.1
    );
    assert!(
        server.1.contains("shard 0 [") && server.1.contains("shard 1 [N"),
        "{}",
        server.1
    );
    let mut conn = server.0.connect();
    for key in ["Alice", "Nora", "zed", "0"] {
        assert_eq!(
            put(&mut conn, &format!("/v1/people/{key}"), r#"{"x":1}"#).status,
            201
        );
    }
    drop(conn);
    drop(server);

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cores",
            "1",
            "--data-dir",
            data.arg(),
            "--shards",
            "4",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("shard map v1")
            && said.contains("key ranges A-M,N-Z")
            && said.contains("4 shards"),
        "{said}"
    );

    // Without shard flags the stored map is used, and every document is where
    // it was, also with more io cores (shards move between cores, not documents between shards).
    let again = Server::start(&["--data-dir", data.arg(), "--cores", "2"]);
    let mut conn = again.connect();
    let page = json(&request(&mut conn, "GET", "/v1/people", &[], ""));
    let keys: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["0", "Alice", "Nora", "zed"]);
    for key in keys {
        assert_eq!(
            request(&mut conn, "GET", &format!("/v1/people/{key}"), &[], "").status,
            200
        );
    }
}

#[test]
fn bad_store_flags_exit_64() {
    for args in [
        &["--shards", "0"][..],
        &["--shard-ranges", "M-A,N-Z"],
        &["--shard-ranges", "A-M"],
        &["--cache-bytes", "lots"],
        &["--cache-ttl", "soon"],
        &["--max-document-bytes", "1"],
    ] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(64),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn the_cache_partition_counts_hits_misses_and_evictions() {
    let data = DataDir::new("docs-cache");
    {
        let server = Server::start(&["--data-dir", data.arg()]);
        let mut conn = server.connect();
        for i in 0..200 {
            put(
                &mut conn,
                &format!("/v1/cache/k{i}"),
                &format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(200)),
            );
        }
    }
    // Restarted, so nothing is cached; 16 KiB holds only some of the 200 documents.
    let server = Server::start(&["--data-dir", data.arg(), "--cache-bytes", "16KiB"]);
    let mut conn = server.connect();
    assert_eq!(
        request(&mut conn, "GET", "/v1/cache/k1", &[], "").status,
        200
    );
    assert_eq!(
        request(&mut conn, "GET", "/v1/cache/k1", &[], "").status,
        200
    );
    assert_eq!(metric(&server, "percore_cache_misses_total"), 1.0);
    assert_eq!(metric(&server, "percore_cache_hits_total"), 1.0);
    for i in 0..200 {
        let response = request(&mut conn, "GET", &format!("/v1/cache/k{i}"), &[], "");
        assert_eq!(
            json(&response)["i"],
            i,
            "an evicting cache still answers right"
        );
    }
    assert!(metric(&server, "percore_cache_evictions_total") > 0.0);
    assert!(metric(&server, "percore_cache_bytes") <= 16.0 * 1024.0);
    // Deletes invalidate.
    request(&mut conn, "GET", "/v1/cache/k199", &[], "");
    assert_eq!(
        request(&mut conn, "DELETE", "/v1/cache/k199", &[], "").status,
        204
    );
    assert_eq!(
        request(&mut conn, "GET", "/v1/cache/k199", &[], "").status,
        404
    );
    assert!(metric(&server, "percore_store_commits_total") >= 1.0);
}

#[test]
fn cached_documents_expire_after_the_ttl() {
    let server = Server::start(&["--cache-ttl", "200ms"]);
    let mut conn = server.connect();
    put(&mut conn, "/v1/ttl/a", r#"{"a":1}"#);
    request(&mut conn, "GET", "/v1/ttl/a", &[], "");
    assert_eq!(metric(&server, "percore_cache_expirations_total"), 0.0);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/ttl/a", &[], ""))["a"],
        1
    );
    assert_eq!(metric(&server, "percore_cache_expirations_total"), 1.0);
}

/// Many clients missing the same key at once cost one store read.
#[test]
fn concurrent_misses_share_one_read() {
    let server = Server::start(&[]);
    let mut conns: Vec<Conn> = (0..32).map(|_| server.connect()).collect();
    let mut coalesced = 0.0;
    for round in 0..5 {
        // World rows are seeded but never read yet: each round misses a fresh key.
        let path = format!("/v1/World/{}", 100 + round);
        for conn in &mut conns {
            conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        }
        let bodies: Vec<Value> = conns.iter_mut().map(|c| json(&c.response())).collect();
        assert!(
            bodies.iter().all(|b| b == &bodies[0]),
            "every reader saw the same row"
        );
        coalesced = metric(&server, "percore_data_coalesced_total");
        if coalesced > 0.0 {
            break;
        }
    }
    assert!(
        coalesced > 0.0,
        "32 simultaneous misses never shared a read"
    );
    assert!(metric(&server, "percore_store_reads_total") < 5.0 * 32.0);
}

#[test]
fn techempower_database_tests() {
    let server = Server::start(&["--cores", "2"]);
    let row_ok = |row: &Value| {
        let id = row["id"].as_u64().unwrap();
        let n = row["randomNumber"].as_u64().unwrap();
        assert!(
            (1..=10_000).contains(&id) && (1..=10_000).contains(&n),
            "{row}"
        );
        assert_eq!(row.as_object().unwrap().len(), 2);
    };
    let db = server.get("/db");
    assert_eq!(db.status, 200);
    assert_eq!(db.header("content-type"), Some("application/json"));
    row_ok(&json(&db));
    for (query, expected) in [
        ("queries=20", 20),
        ("queries=0", 1),
        ("queries=foo", 1),
        ("queries=501", 500),
        ("", 1),
        ("queries=-3", 1),
    ] {
        for path in ["/queries", "/updates"] {
            let rows = json(&server.get(&format!("{path}?{query}")));
            let rows = rows
                .as_array()
                .unwrap_or_else(|| panic!("{path}?{query} is not an array"));
            assert_eq!(rows.len(), expected, "{path}?{query}");
            rows.iter().for_each(row_ok);
        }
        let cached = json(&server.get(&format!(
            "/cached-queries?{}",
            query.replace("queries", "count")
        )));
        assert_eq!(
            cached.as_array().unwrap().len(),
            expected,
            "/cached-queries?{query}"
        );
    }
    // Updates are durable writes: a later read of each row sees its new number.
    let updated = json(&server.get("/updates?queries=10"));
    let mut last: BTreeMap<u64, u64> = BTreeMap::new();
    for row in updated.as_array().unwrap() {
        last.insert(
            row["id"].as_u64().unwrap(),
            row["randomNumber"].as_u64().unwrap(),
        );
    }
    for (id, n) in last {
        let stored = json(&server.get(&format!("/v1/World/{id}")));
        assert_eq!(stored["randomNumber"].as_u64().unwrap(), n, "row {id}");
    }

    let fortunes = server.get("/fortunes");
    assert_eq!(fortunes.status, 200);
    assert_eq!(
        fortunes.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(fortunes.text(), common::FORTUNES_HTML);
}

/// Answers that come back from the document plane carry the rate limiter's headers too.
#[test]
fn deferred_answers_carry_rate_limit_headers() {
    let server = Server::start(&["--rate-limit", "100/min", "--burst", "10"]);
    let mut conn = server.connect();
    let created = put(&mut conn, "/v1/rl/a", r#"{"a":1}"#);
    assert_eq!(created.status, 201);
    assert!(
        created.header("ratelimit-policy").is_some(),
        "{:?}",
        created.headers
    );
    let read = request(&mut conn, "GET", "/v1/rl/a", &[], "");
    assert!(read.header("ratelimit").is_some(), "{:?}", read.headers);
    let scan = request(&mut conn, "GET", "/v1/rl", &[], "");
    assert!(scan.header("ratelimit").is_some(), "{:?}", scan.headers);
}

/// Seeding fills in missing TechEmpower rows and never overwrites a row that exists.
#[test]
fn seeding_never_overwrites_a_row() {
    let data = DataDir::new("docs-seed");
    {
        let server = Server::start(&["--data-dir", data.arg()]);
        let mut conn = server.connect();
        assert_eq!(
            put(
                &mut conn,
                "/v1/World/2",
                r#"{"id":2,"randomNumber":77,"mine":true}"#
            )
            .status,
            200
        );
        assert_eq!(
            request(&mut conn, "DELETE", "/v1/World/1", &[], "").status,
            204
        );
    }
    let (server, line) = Server::start_with_output(&["--data-dir", data.arg()]);
    assert!(line.contains("seeded 1 World rows"), "{line}");
    let mut conn = server.connect();
    assert_eq!(
        json(&request(&mut conn, "GET", "/v1/World/2", &[], ""))["mine"],
        true
    );
    assert_eq!(
        request(&mut conn, "GET", "/v1/World/1", &[], "").status,
        200
    );
}

/// A scan of large documents pages by bytes as well as by count, and paging still visits every key once.
#[test]
fn scans_of_large_documents_page_by_bytes() {
    let server = Server::start(&[]);
    let mut conn = server.connect();
    let pad = "z".repeat(600 * 1024);
    for i in 0..20 {
        let status = put(
            &mut conn,
            &format!("/v1/big/k{i:02}"),
            &format!(r#"{{"pad":"{pad}"}}"#),
        )
        .status;
        assert_eq!(status, 201);
    }
    let (mut seen, mut pages, mut after) = (Vec::new(), 0, String::new());
    loop {
        let path = if after.is_empty() {
            "/v1/big?limit=1000&fields=absent".to_owned()
        } else {
            format!("/v1/big?limit=1000&fields=absent&after={after}")
        };
        let full = request(
            &mut conn,
            "GET",
            &path.replace("&fields=absent", ""),
            &[],
            "",
        );
        assert!(
            full.body.len() < 10 << 20,
            "a page of {} bytes",
            full.body.len()
        );
        let page = json(&request(&mut conn, "GET", &path, &[], ""));
        pages += 1;
        for item in page["items"].as_array().unwrap() {
            seen.push(item["key"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    let expected: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    assert_eq!(seen, expected);
    assert!(pages >= 2, "12 MB of documents came back in one page");
}

//! The examples run as a user starts them, and answer over real HTTP: percore as a library.

mod common;

use std::time::{Duration, Instant};

use common::{DataDir, Server};

fn json(response: &common::Response) -> serde_json::Value {
    serde_json::from_slice(&response.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.text()))
}

#[test]
fn catalogue_serves_its_own_routes_errors_and_field_masks() {
    let server = Server::start_example("catalogue", &["--cores", "2", "--currency", "USD"]);
    let lamp = r#"{"name":"Lamp","price":12.5,"stock":{"warehouse":3,"shop":1}}"#;
    let created = server.call("PUT", "/products/lamp", Some(lamp));
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(server.call("PUT", "/products/lamp", Some(lamp)).status, 200);

    // Read from every connection (so from both cores): owner's cache or a hop to it.
    for _ in 0..8 {
        let whole = server.get("/products/lamp");
        assert_eq!(whole.status, 200);
        assert_eq!(json(&whole)["stock"]["warehouse"], 3);
        let masked = server.get("/products/lamp?fields=name,stock.shop");
        assert_eq!(
            json(&masked),
            serde_json::json!({"name": "Lamp", "stock": {"shop": 1}}),
            "{}",
            masked.text()
        );
    }

    // The application's own errors, in percore's error shape.
    let missing = server.get("/products/chair");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "no_product")
    );
    assert!(missing.text().contains("no product `chair`"));
    let free = server.call(
        "PUT",
        "/products/free",
        Some(r#"{"name":"Free","price":0}"#),
    );
    assert_eq!(
        (free.status, free.error_code().as_str()),
        (422, "invalid_product")
    );
    assert_eq!(
        server.get("/products/free").status,
        404,
        "a refused write stored nothing"
    );
    let bad_mask = server.get("/products/lamp?fields=a..b");
    assert_eq!(
        (bad_mask.status, bad_mask.error_code().as_str()),
        (400, "invalid_fields")
    );
    // percore's own answers for what the application did not route.
    assert_eq!(server.call("DELETE", "/products/lamp", None).status, 405);
    assert_eq!(
        server.get("/v1/things/x").status,
        404,
        "the document API is not mounted"
    );
    assert_eq!(
        server.get("/healthz").status,
        200,
        "a mounted built-in group"
    );

    // Per-core state: the counters of whichever core answers add up to what was asked.
    let mut reads = 0;
    let mut seen = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        let stats = json(&server.get("/catalogue/stats"));
        assert_eq!(stats["currency"], "USD", "the application's own option");
        if seen.insert(stats["core"].as_u64().unwrap()) {
            reads += stats["reads"].as_u64().unwrap();
        }
    }
    assert_eq!(seen.len(), 2, "connections reached both cores");
    // 16 reads in the loop, `chair` and `free`; the bad mask was refused before counting.
    assert_eq!(
        reads,
        2 * 8 + 2,
        "every GET of a product was counted once, on one core"
    );

    // Per-route latency series for the application's routes, with no code of its own.
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("route=\"/products/:id\""),
        "per-route series for a user's route: {metrics}"
    );
}

#[test]
fn counters_defer_to_the_owner_core_a_worker_thread_and_a_job() {
    let dir = DataDir::new("example-counters");
    let server = Server::start_example("counters", &["--cores", "2", "--data-dir", dir.arg()]);
    for n in 1..=10u64 {
        let bumped = server.call("POST", "/counters/apples", None);
        assert_eq!(bumped.status, 200, "{}", bumped.text());
        assert_eq!(
            json(&bumped)["count"],
            n,
            "increments pass through one core, in order"
        );
    }
    let owner = json(&server.get("/counters/apples"))["core"].clone();
    for _ in 0..6 {
        let read = json(&server.get("/counters/apples"));
        assert_eq!(
            (read["count"].clone(), read["core"].clone()),
            (serde_json::json!(10), owner.clone())
        );
    }
    assert_eq!(server.get("/counters/pears").status, 404);

    // Pipelined behind a deferred answer, later requests keep their order.
    let mut conn = server.connect();
    conn.send(b"GET /slow/100 HTTP/1.1\r\nHost: t\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let slow = conn.response();
    assert_eq!(json(&slow)["slept_ms"], 100);
    assert_eq!(conn.response().text(), r#"{"status":"ok"}"#);
    assert_eq!(server.get("/slow/99999").status, 400);

    // A job of the application's own kind: checked at submission, run by a worker.
    let refused = server.call("POST", "/v1/jobs/tally", Some(r#"{"counter":""}"#));
    assert_eq!(refused.status, 400);
    assert!(
        refused.text().contains("non-empty string `counter`"),
        "{}",
        refused.text()
    );
    let unknown = server.call(
        "POST",
        "/v1/jobs/webhook",
        Some(r#"{"url":"http://127.0.0.1:1/"}"#),
    );
    assert!(
        unknown.text().contains("known kinds: tally"),
        "only the kinds it registered: {}",
        unknown.text()
    );
    let accepted = server.call("POST", "/v1/jobs/tally", Some(r#"{"counter":"apples"}"#));
    assert_eq!(accepted.status, 202, "{}", accepted.text());
    let location = accepted.header("location").unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        let status = json(&server.get(&location));
        if status["status"] == "succeeded" || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status["status"], "succeeded", "{status}");
    assert_eq!(status["result"]["tallied"], "apples", "{status}");
}

#[test]
fn a_static_prefix_that_hides_a_route_is_refused() {
    let dir = DataDir::new("hidden-route");
    std::fs::create_dir_all(&dir.0).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--static-dir",
            dir.arg(),
            "--static-prefix",
            "/",
        ])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("would hide the route /plaintext"),
        "{stderr}"
    );
}

#[test]
fn an_applications_own_options_come_from_flags_environment_and_help() {
    let binary = common::example_binary("catalogue");
    let help = std::process::Command::new(&binary)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for expected in [
        "--currency <CODE>",
        "PERCORE_CURRENCY",
        "[default: EUR]",
        "--data-dir",
    ] {
        assert!(help.contains(expected), "{expected} in --help:\n{help}");
    }
    let bad = std::process::Command::new(&binary)
        .args(["--listen", "127.0.0.1:0"])
        .env("PERCORE_CURRENCY", "dollars")
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(64),
        "a bad value of the app's option is a usage error"
    );
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("`dollars` is not a currency code") && stderr.contains("PERCORE_CURRENCY"),
        "{stderr}"
    );
    let mut command = std::process::Command::new(&binary);
    command.env("PERCORE_CURRENCY", "GBP");
    let server = Server::start_with_command(command, &[]);
    assert_eq!(json(&server.get("/catalogue/stats"))["currency"], "GBP");
}

#[test]
fn an_applications_own_routes_take_the_same_authorization_rules() {
    let dir = DataDir::new("examples-auth");
    std::fs::create_dir_all(&dir.0).unwrap();
    let key = "catalogue-editor-key-7e21";
    let keys = dir.0.join("keys.toml");
    common::write_keys(&keys, &[("editor", key, &["write", "stats"])]);
    let config = dir.0.join("percore.toml");
    std::fs::write(
        &config,
        "[[auth.rules]]\nmethod = \"GET\"\npath = \"/catalogue/stats\"\nrequire = \"stats\"\n",
    )
    .unwrap();
    let server = Server::start_example(
        "catalogue",
        &[
            "--auth-keys",
            keys.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    let lamp = r#"{"name":"Lamp","price":12.5,"stock":{"warehouse":3,"shop":1}}"#;
    // A write of the application's own needs `write`, like percore's own writes.
    let anonymous = server.call("PUT", "/products/lamp", Some(lamp));
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.error_code(), "credential_missing");
    let mut conn = server.connect();
    conn.send(
        format!(
            "PUT /products/lamp HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\nContent-Length: {}\r\n\r\n{lamp}",
            lamp.len()
        )
        .as_bytes(),
    );
    assert_eq!(conn.response().status, 201);
    // Its reads stay public; a rule of the deployment guards one of them.
    assert_eq!(server.get("/products/lamp").status, 200);
    assert_eq!(server.get("/catalogue/stats").status, 401);
    conn.send(
        format!("GET /catalogue/stats HTTP/1.1\r\nHost: t\r\nX-API-Key: {key}\r\n\r\n").as_bytes(),
    );
    assert_eq!(conn.response().status, 200);
}

//! Start-up, configuration errors, the environments io_uring runs in, and draining on SIGTERM.

mod common;

use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;

fn percore() -> Command {
    Command::new(env!("CARGO_BIN_EXE_percore"))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits_0() {
    let server = Server::start(&["--shutdown-grace", "5s"]);
    let mut idle = server.connect();
    idle.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(idle.response().status, 200);
    let mut upload = server.connect();
    upload.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234");
    let mut readiness = server.connect();
    readiness.send(b"GET /readyz HTTP/1.1\r\nHost: t\r\n");
    std::thread::sleep(Duration::from_millis(200));

    server.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        idle.closed_within(Duration::from_secs(3)),
        "an idle keep-alive connection stayed open while draining"
    );
    assert!(
        TcpStream::connect(server.addr).is_err(),
        "still accepting connections while draining"
    );

    upload.send(b"56789");
    let response = upload.response();
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, b"0123456789".as_slice())
    );
    assert_eq!(response.header("connection"), Some("close"));
    assert!(upload.closed_within(Duration::from_secs(3)));

    readiness.send(b"\r\n");
    let ready = readiness.response();
    assert_eq!(
        (ready.status, ready.text()),
        (503, r#"{"status":"draining"}"#.to_owned())
    );

    let (status, output) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("SIGTERM received") && output.contains("stopped"),
        "{output}"
    );
}

#[test]
fn the_drain_delay_fails_readiness_first_while_serving_then_closes_listeners() {
    let server = Server::start(&["--drain-delay", "3s", "--shutdown-grace", "5s"]);
    let mut kept = server.connect();
    kept.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(kept.response().status, 200);
    assert_eq!(server.get("/readyz").status, 200);

    server.signal("TERM");
    // Phase one: /readyz fails on new connections, which are still accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let unready = loop {
        let response = server.get("/readyz");
        if response.status == 503 {
            break response;
        }
        assert_eq!(response.status, 200, "{}", response.text());
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::yield_now();
    };
    assert_eq!(unready.text(), r#"{"status":"draining"}"#);
    // Still serving as before: keep-alive on new and old connections alike.
    assert_eq!(
        unready.header("connection"),
        None,
        "the first phase still keeps connections alive"
    );
    let mut fresh = server.connect();
    fresh.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = fresh.response();
    assert_eq!(
        (response.status, response.header("connection")),
        (200, None)
    );
    kept.send(b"GET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    let response = kept.response();
    assert_eq!(
        (response.status, response.header("connection")),
        (200, None)
    );

    // Phase two, after the delay: listeners closed, idle connections closed.
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect(server.addr).is_ok() {
        assert!(
            Instant::now() < deadline,
            "still accepting long after the drain delay"
        );
        std::thread::yield_now();
    }
    assert!(
        kept.closed_within(Duration::from_secs(5)),
        "an idle keep-alive connection stayed open once draining"
    );
    let (status, output) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("/readyz fails now")
            && output.contains("draining for up to")
            && output.contains("stopped"),
        "{output}"
    );
}

#[test]
fn the_grace_period_bounds_a_stalled_request() {
    let server = Server::start(&["--shutdown-grace", "1s"]);
    let mut stalled = server.connect();
    stalled.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01");
    std::thread::sleep(Duration::from_millis(100));
    let started = Instant::now();
    server.signal("INT");
    let (status, output) = server.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "exited before the grace period: {:?}",
        started.elapsed()
    );
    assert!(output.contains("cut 1 connection"), "{output}");
}

#[test]
fn bad_configuration_exits_64_naming_the_field() {
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["--cores", "0"], vec![], "`cores`"),
        (vec!["--cores", "many"], vec![], "`cores`"),
        (vec![], vec![("PERCORE_CORES", "-1")], "`cores`"),
        (vec!["--listen", "localhost"], vec![], "`listen`"),
        (vec!["--cpus", "0-99999"], vec![], "`cpus`"),
        (vec!["--idle-timeout", "forever"], vec![], "`idle_timeout`"),
        (vec!["--max-body-bytes", "lots"], vec![], "`max_body_bytes`"),
        (
            vec!["--config", "/nonexistent/percore.toml"],
            vec![],
            "cannot read it",
        ),
        (vec!["--no-such-flag"], vec![], "--no-such-flag"),
    ];
    for (args, env, expected) in cases {
        let output = percore()
            .arg("serve")
            .args(&args)
            .envs(env.clone())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(64), "{args:?} {env:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?} {env:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn config_file_and_environment_are_read() {
    let dir = std::env::temp_dir().join(format!("percore-lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("percore.toml");
    std::fs::write(&path, "max_body_bytes = \"8\"\ncores = 1\n").unwrap();
    let mut command = percore();
    command.env("PERCORE_MAX_HEADERS", "3");
    let server = Server::start_with(command, &["--config", path.to_str().unwrap()]);
    let mut conn = server.connect();
    conn.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n123456789");
    assert_eq!(conn.response().status, 413, "max_body_bytes from the file");
    let mut conn = server.connect();
    conn.send(b"GET /json HTTP/1.1\r\nHost: t\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    assert_eq!(
        conn.response().status,
        431,
        "max_headers from the environment"
    );

    std::fs::write(&path, "cores = 1\nspeed = \"fast\"\n").unwrap();
    let output = percore()
        .args(["serve", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown key `speed`"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn help_lists_every_flag() {
    let output = percore().args(["serve", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--listen",
        "--cores",
        "--cpus",
        "--config",
        "PERCORE_LISTEN",
        "--max-body-bytes",
        "--shutdown-grace",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}: {help}");
    }
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = percore()
        .args(["serve", "--cores", "1", "--listen", &addr])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Runs percore without CAP_IPC_LOCK under a locked-memory limit, as in a container.
fn under_memlock(limit: &str) -> Command {
    let mut command = Command::new("prlimit");
    command.args([
        &format!("--memlock={limit}:{limit}"),
        "setpriv",
        "--bounding-set=-ipc_lock",
        "--inh-caps=-ipc_lock",
        env!("CARGO_BIN_EXE_percore"),
    ]);
    command
}

fn memlock_tools_present() -> bool {
    let present = |tool: &str| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !is_root() || !present("prlimit") || !present("setpriv") {
        eprintln!("skipped: needs root, prlimit and setpriv (util-linux) to drop CAP_IPC_LOCK");
        return false;
    }
    true
}

#[test]
fn a_small_locked_memory_limit_gets_smaller_rings_not_a_failure() {
    if !memlock_tools_present() {
        return;
    }
    let cores = if std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2 {
        "2"
    } else {
        "1"
    };
    let server = Server::start_with(under_memlock("65536"), &["--cores", cores]);
    for _ in 0..20 {
        assert_eq!(server.get("/json").status, 200);
    }
    let mut conn = server.connect();
    let mut batch = Vec::new();
    for _ in 0..64 {
        batch.extend_from_slice(b"GET /plaintext HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    conn.send(&batch);
    for _ in 0..64 {
        assert_eq!(conn.response().body, b"Hello, World!");
    }
}

#[test]
fn no_locked_memory_at_all_is_one_line_naming_the_limit_and_the_fix() {
    if !memlock_tools_present() {
        return;
    }
    let output = under_memlock("0")
        .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("locked-memory limit is 0 KiB"), "{stderr}");
    assert!(
        stderr.contains("Fix:") && stderr.contains("ulimit -l"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "not one line: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_admin_call_drains_like_sigterm_and_only_once() {
    let server = Server::start(&["--drain-delay", "2s", "--shutdown-grace", "5s"]);
    let asked = server.call("POST", "/admin/drain", None);
    assert_eq!(asked.status, 202, "{}", asked.text());
    assert_eq!(asked.text(), r#"{"status":"draining"}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.get("/readyz").status != 503 {
        assert!(Instant::now() < deadline, "/readyz never turned 503");
        std::thread::yield_now();
    }
    // Asked again during the delay: still one drain, not a stop at once.
    assert_eq!(server.call("POST", "/admin/drain", None).status, 202);
    assert_eq!(
        server.get("/json").status,
        200,
        "still serving in phase one"
    );
    let (status, output) = server.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(
        output.contains("/readyz fails now") && !output.contains("second signal"),
        "{output}"
    );
}

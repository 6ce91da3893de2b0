//! Documents and the TechEmpower tests on real PostgreSQL shards: the
//! machine's server on 127.0.0.1:5432 (trust), and a second cluster of the
//! test's own under `pg_ctl` (SCRAM, a small `max_connections`) that is
//! stopped and started under load. Each test makes its own databases and
//! drops them. Required when `CI=true`; skipped with a message otherwise.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Response, Server};

const PG: &str = "127.0.0.1:5432";

/// PostgreSQL tests run whenever the server answers, and must in CI.
fn pg_ready() -> bool {
    let reachable =
        std::net::TcpStream::connect_timeout(&PG.parse().unwrap(), Duration::from_millis(500))
            .is_ok()
            && Command::new("psql").arg("--version").output().is_ok();
    if !reachable {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "PostgreSQL at {PG} (and psql) is required when CI=true"
        );
        eprintln!("skipped: no PostgreSQL at {PG} or no psql (trust auth for user postgres)");
    }
    reachable
}

/// Runs SQL with psql; returns its unaligned, tuples-only output.
fn psql(target: &[&str], sql: &str) -> String {
    let out = Command::new("psql")
        .args(target)
        .args(["-v", "ON_ERROR_STOP=1", "-tAc", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn main_pg(db: &str) -> Vec<String> {
    ["-h", "127.0.0.1", "-U", "postgres", "-d", db]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn sql(db: &str, sql: &str) -> String {
    let target = main_pg(db);
    let target: Vec<&str> = target.iter().map(String::as_str).collect();
    psql(&target, sql)
}

/// A database on the machine's server, dropped afterwards.
struct TestDb {
    name: String,
}

impl TestDb {
    fn new(tag: &str) -> Self {
        let name = format!("pc_test_{tag}_{}", std::process::id());
        sql(
            "test",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        sql("test", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }

    fn sql(&self, query: &str) -> String {
        sql(&self.name, query)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-tAc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

fn pg_bin(tool: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found
        .pop()
        .unwrap_or_else(|| panic!("{tool} not found under /usr/lib/postgresql/*/bin"))
}

const CLUSTER_PASSWORD: &str = "pc-s3cret";

/// A PostgreSQL cluster of the test's own, run as `postgres` under
/// `pg_ctl`: password (SCRAM-SHA-256) over TCP, trust on its socket.
struct Cluster {
    dir: PathBuf,
    port: u16,
}

impl Cluster {
    fn start(port: u16, max_connections: u32) -> Self {
        let dir = std::env::temp_dir().join(format!("pc-cluster-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, CLUSTER_PASSWORD).unwrap();
        run_as_postgres(
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir),
        );
        let data = dir.join("data");
        run_as_postgres(
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg_bin("initdb"))
                .args(["-D"])
                .arg(&data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             max_connections = {max_connections}\nsuperuser_reserved_connections = 0\n\
             shared_buffers = 16MB\n",
            dir.display()
        );
        let conf_path = data.join("postgresql.auto.conf");
        let mut existing = std::fs::read_to_string(&conf_path).unwrap_or_default();
        existing.push_str(&conf);
        std::fs::write(&conf_path, existing).unwrap();
        let cluster = Self { dir, port };
        cluster.pg_ctl("start");
        cluster
    }

    fn pg_ctl(&self, action: &str) {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "30", "-m", "fast", "-l"])
            .arg(self.dir.join("log"))
            .arg(action);
        run_as_postgres(&mut command);
    }

    /// The postmaster and every process it started.
    fn pids(&self) -> Vec<String> {
        let pidfile = std::fs::read_to_string(self.dir.join("data/postmaster.pid")).unwrap();
        let postmaster = pidfile.lines().next().unwrap().trim().to_owned();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        pids.push(postmaster);
        pids
    }

    /// SQL on its socket (trust).
    fn sql(&self, db: &str, query: &str) -> String {
        let dir = self.dir.display().to_string();
        let port = self.port.to_string();
        psql(
            &["-h", &dir, "-p", &port, "-U", "postgres", "-d", db],
            query,
        )
    }

    fn url(&self, db: &str, password: Option<&str>) -> String {
        match password {
            Some(password) => format!(
                "postgres://postgres:{password}@127.0.0.1:{}/{db}",
                self.port
            ),
            None => format!("postgres://postgres@127.0.0.1:{}/{db}", self.port),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "-t", "10", "stop"])
            .output();
        // Still there (stopped by a failing test, say): end it for good.
        if self.dir.join("data/postmaster.pid").exists() {
            let pids = self.pids();
            let _ = Command::new("kill").arg("-CONT").args(&pids).status();
            let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run_as_postgres(command: &mut Command) {
    let out = command.output().expect("run a PostgreSQL tool");
    assert!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A second cluster needs root (to run it as `postgres`) and the server binaries.
fn cluster_possible() -> bool {
    let root = unsafe_geteuid() == 0;
    let tools = std::fs::read_dir("/usr/lib/postgresql").is_ok();
    if !(root && tools) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "a second PostgreSQL cluster (root and /usr/lib/postgresql/*/bin) is required when CI=true"
        );
        eprintln!("skipped: a second PostgreSQL cluster needs root and the server binaries");
        return false;
    }
    true
}

fn unsafe_geteuid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn serve(urls: &[String], extra: &[&str]) -> Server {
    let mut args: Vec<&str> = vec!["--store", "postgres"];
    for url in urls {
        args.extend(["--shard-url", url.as_str()]);
    }
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn etag(response: &Response) -> String {
    response.header("etag").expect("an ETag").to_owned()
}

fn put_if(server: &Server, path: &str, body: &str, condition: &str) -> Response {
    let mut conn = server.connect();
    conn.send(
        format!(
            "PUT {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{condition}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    conn.response()
}

#[test]
fn documents_live_in_postgres_and_read_with_sql() {
    if !pg_ready() {
        return;
    }
    let db = TestDb::new("docs");
    let db2 = TestDb::new("docs2");
    let server = serve(&[db.url(), db2.url()], &["--cores", "2"]);

    let created = server.call(
        "PUT",
        "/v1/users/alice",
        Some(r#"{"name":"Alice","age":30,"tags":["a"]}"#),
    );
    assert_eq!(created.status, 201, "{}", created.text());
    let tag = etag(&created);
    let read = server.get("/v1/users/alice");
    assert_eq!(read.status, 200);
    assert_eq!(read.text(), r#"{"name":"Alice","age":30,"tags":["a"]}"#);
    assert_eq!(etag(&read), tag);

    // A user reads it with SQL: the body is json, bytes as stored.
    let query = "SELECT body->>'name', version, body::text FROM percore_documents WHERE collection = 'users' AND key = 'alice'";
    let row = format!("{}{}", db.sql(query), db2.sql(query));
    assert_eq!(
        row,
        format!(
            "Alice|{}|{}",
            tag.trim_matches('"'),
            r#"{"name":"Alice","age":30,"tags":["a"]}"#
        )
    );

    // Conditional writes.
    let refused = put_if(&server, "/v1/users/alice", "{}", "If-None-Match: *");
    assert_eq!(refused.status, 412);
    let refused = put_if(&server, "/v1/users/alice", "{}", "If-Match: \"999999\"");
    assert_eq!(refused.status, 412);
    assert!(
        refused.text().contains(&tag.replace('"', "\\\"")),
        "{}",
        refused.text()
    );
    let replaced = put_if(
        &server,
        "/v1/users/alice",
        r#"{"name":"Alice","age":31}"#,
        &format!("If-Match: {tag}"),
    );
    assert_eq!(replaced.status, 200);
    let tag2 = etag(&replaced);
    assert_ne!(tag2, tag);
    let fresh = put_if(
        &server,
        "/v1/users/bob",
        r#"{"name":"Bob"}"#,
        "If-None-Match: *",
    );
    assert_eq!(fresh.status, 201);

    // Merge patch and field masks.
    let mut conn = server.connect();
    let patch = r#"{"age":null,"city":"Oslo"}"#;
    conn.send(
        format!(
            "PATCH /v1/users/alice HTTP/1.1\r\nHost: t\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\n\r\n{patch}",
            patch.len()
        )
        .as_bytes(),
    );
    let patched = conn.response();
    assert_eq!(patched.status, 200, "{}", patched.text());
    assert_eq!(patched.text(), r#"{"name":"Alice","city":"Oslo"}"#);
    assert_eq!(
        server.get("/v1/users/alice?fields=city").text(),
        r#"{"city":"Oslo"}"#
    );
    let query = "SELECT body::text FROM percore_documents WHERE key = 'alice'";
    assert_eq!(
        format!("{}{}", db.sql(query), db2.sql(query)),
        r#"{"name":"Alice","city":"Oslo"}"#
    );
    let missing_patch = server.call("PATCH", "/v1/users/nobody", Some("{}"));
    assert_eq!(missing_patch.status, 404);

    // Deletes.
    let mut conn = server.connect();
    conn.send(b"DELETE /v1/users/bob HTTP/1.1\r\nHost: t\r\nIf-Match: \"999999\"\r\n\r\n");
    assert_eq!(conn.response().status, 412);
    assert_eq!(server.call("DELETE", "/v1/users/bob", None).status, 204);
    assert_eq!(server.get("/v1/users/bob").status, 404);
    assert_eq!(server.call("DELETE", "/v1/users/bob", None).status, 404);
    assert_eq!(
        db.sql("SELECT count(*) FROM percore_documents WHERE key = 'bob'"),
        "0"
    );

    // Scans page through both shards in key order.
    let keys = ["k3", "k1", "k5", "k2", "k4"];
    for key in keys {
        assert_eq!(
            server
                .call(
                    "PUT",
                    &format!("/v1/items/{key}"),
                    Some(&format!(r#"{{"k":"{key}"}}"#))
                )
                .status,
            201
        );
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let path = if after.is_empty() {
            "/v1/items?limit=2".to_owned()
        } else {
            format!("/v1/items?limit=2&after={after}")
        };
        let page: serde_json::Value = serde_json::from_str(&server.get(&path).text()).unwrap();
        for item in page["items"].as_array().unwrap() {
            seen.push(item["key"].as_str().unwrap().to_owned());
        }
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, ["k1", "k2", "k3", "k4", "k5"]);
    let held: u32 = [&db, &db2]
        .iter()
        .map(|d| {
            d.sql("SELECT count(*) FROM percore_documents WHERE collection = 'items'")
                .parse::<u32>()
                .unwrap()
        })
        .sum();
    assert_eq!(
        held, 5,
        "each document lives in exactly one shard's database"
    );
}

fn metric(server: &Server, name: &str) -> u64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn concurrent_writes_share_commits_and_each_gets_its_own_answer() {
    if !pg_ready() {
        return;
    }
    let db = TestDb::new("batch");
    let server = Arc::new(serve(&[db.url()], &[]));
    assert_eq!(server.call("PUT", "/v1/t/taken", Some("{}")).status, 201);
    let before = metric(&server, "percore_pg_writes_total");
    let batches_before = metric(&server, "percore_pg_write_batches_total");
    // Many connections at once: creates, refused conditional writes and
    // deletes of missing documents, mixed in the same loop turns.
    let threads: Vec<_> = (0..48)
        .map(|n| {
            let server = Arc::clone(&server);
            std::thread::spawn(move || match n % 3 {
                0 => (
                    n,
                    server
                        .call(
                            "PUT",
                            &format!("/v1/t/k{n}"),
                            Some(&format!(r#"{{"n":{n}}}"#)),
                        )
                        .status,
                    201,
                ),
                1 => (
                    n,
                    put_if(&server, "/v1/t/taken", r#"{"x":1}"#, "If-Match: \"999999\"").status,
                    412,
                ),
                _ => (
                    n,
                    server
                        .call("DELETE", &format!("/v1/t/missing{n}"), None)
                        .status,
                    404,
                ),
            })
        })
        .collect();
    for thread in threads {
        let (n, got, want) = thread.join().unwrap();
        assert_eq!(got, want, "request {n}");
    }
    assert_eq!(metric(&server, "percore_pg_writes_total") - before, 48);
    let batches = metric(&server, "percore_pg_write_batches_total") - batches_before;
    assert!(
        (1..=48).contains(&batches),
        "{batches} batches for 48 writes"
    );
    assert_eq!(
        db.sql("SELECT count(*) FROM percore_documents WHERE collection = 't'"),
        "17"
    );
    assert_eq!(server.get("/v1/t/taken").text(), "{}");
}

#[test]
fn techempower_tests_run_on_the_benchmarks_schema() {
    if !pg_ready() {
        return;
    }
    let db = TestDb::new("te");
    let server = serve(&[db.url()], &[]);
    assert_eq!(db.sql("SELECT count(*) FROM world"), "10000");
    assert_eq!(db.sql("SELECT count(*) FROM fortune"), "12");

    let one: serde_json::Value = serde_json::from_str(&server.get("/db").text()).unwrap();
    let id = one["id"].as_i64().unwrap();
    assert!((1..=10_000).contains(&id));
    assert_eq!(
        db.sql(&format!("SELECT randomnumber FROM world WHERE id = {id}")),
        one["randomNumber"].to_string()
    );
    for (query, expected) in [("0", 1), ("foo", 1), ("20", 20), ("501", 500)] {
        let rows: Vec<serde_json::Value> =
            serde_json::from_str(&server.get(&format!("/queries?queries={query}")).text()).unwrap();
        assert_eq!(rows.len(), expected, "queries={query}");
    }
    let fortunes = server.get("/fortunes");
    assert_eq!(
        fortunes.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(fortunes.text(), common::FORTUNES_HTML);

    let updated: Vec<serde_json::Value> =
        serde_json::from_str(&server.get("/updates?queries=20").text()).unwrap();
    assert_eq!(updated.len(), 20);
    for row in &updated {
        let id = row["id"].as_i64().unwrap();
        assert_eq!(
            db.sql(&format!("SELECT randomnumber FROM world WHERE id = {id}")),
            row["randomNumber"].to_string(),
            "/updates answered a number the table does not hold"
        );
    }
    // /db and /queries never answer from the cache; /cached-queries does.
    let hits = cache_hits(&server);
    for _ in 0..3 {
        assert_eq!(server.get("/queries?queries=500").status, 200);
    }
    assert_eq!(
        cache_hits(&server),
        hits,
        "/queries answered from the cache"
    );
    let cached: Vec<serde_json::Value> =
        serde_json::from_str(&server.get("/cached-queries?count=500").text()).unwrap();
    assert_eq!(cached.len(), 500);
    for row in &cached {
        let id = row["id"].as_i64().unwrap();
        assert!((1..=10_000).contains(&id));
    }
    assert_eq!(server.get("/cached-queries?count=500").status, 200);
    assert!(
        cache_hits(&server) > hits,
        "/cached-queries never hit the cache"
    );

    // A restart seeds nothing over rows that exist.
    let (id, number) = (
        updated[0]["id"].as_i64().unwrap(),
        updated[0]["randomNumber"].clone(),
    );
    drop(server);
    let _server = serve(&[db.url()], &[]);
    assert_eq!(
        db.sql(&format!("SELECT randomnumber FROM world WHERE id = {id}")),
        number.to_string()
    );
}

fn cache_hits(server: &Server) -> u64 {
    let metrics = server.get("/metrics").text();
    metrics
        .lines()
        .filter(|l| l.starts_with("percore_cache_hits_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_write_on_one_node_is_read_on_another_within_the_bound() {
    if !pg_ready() {
        return;
    }
    let db = TestDb::new("nodes");
    let bound = Duration::from_secs(1);
    let a = serve(&[db.url()], &["--cache-stale-bound", "1s"]);
    let b = serve(&[db.url()], &["--cache-stale-bound", "1s"]);
    assert_eq!(
        a.call("PUT", "/v1/cfg/flag", Some(r#"{"v":1}"#)).status,
        201
    );
    // B reads it twice: the second read is a cache hit.
    let before = cache_hits(&b);
    assert_eq!(b.get("/v1/cfg/flag").text(), r#"{"v":1}"#);
    assert_eq!(b.get("/v1/cfg/flag").text(), r#"{"v":1}"#);
    assert!(cache_hits(&b) > before, "B did not cache the document");

    for round in 2..6 {
        let body = format!(r#"{{"v":{round}}}"#);
        let written = a.call("PUT", "/v1/cfg/flag", Some(&body));
        assert_eq!(written.status, 200);
        let acknowledged = Instant::now();
        // Every read B starts later than the bound after the write's
        // acknowledgement sees it; reads before may not.
        loop {
            let started = Instant::now();
            let read = b.get("/v1/cfg/flag");
            assert_eq!(read.status, 200);
            if read.text() == body {
                break;
            }
            assert!(
                started < acknowledged + bound,
                "B answered a version older than one acknowledged {:?} before the read began",
                started - acknowledged
            );
        }
    }
    // A delete on A is a 404 on B.
    assert_eq!(a.call("DELETE", "/v1/cfg/flag", None).status, 204);
    let deleted = Instant::now();
    loop {
        let started = Instant::now();
        if b.get("/v1/cfg/flag").status == 404 {
            break;
        }
        assert!(
            started < deleted + bound,
            "B still serves a deleted document"
        );
    }
}

#[test]
fn a_shard_that_goes_away_fails_fast_its_keys_only_and_comes_back_losing_nothing() {
    if !pg_ready() || !cluster_possible() {
        return;
    }
    let local = TestDb::new("outage");
    let cluster = Cluster::start(free_port(), 20);
    cluster.sql("postgres", "CREATE DATABASE shard1");
    let remote = cluster.url("shard1", Some(CLUSTER_PASSWORD));
    let server = Arc::new(serve(
        &[local.url(), remote],
        &["--cores", "2", "--shard-answer-timeout", "2s"],
    ));

    // Which keys live where, as a user would find out: with SQL.
    for n in 0..40 {
        let status = server
            .call(
                "PUT",
                &format!("/v1/k/{n}"),
                Some(&format!(r#"{{"n":{n}}}"#)),
            )
            .status;
        assert_eq!(status, 201);
    }
    let on_remote: Vec<String> = cluster
        .sql("shard1", "SELECT key FROM percore_documents ORDER BY key")
        .lines()
        .map(str::to_owned)
        .collect();
    let on_local: Vec<String> = local
        .sql("SELECT key FROM percore_documents ORDER BY key")
        .lines()
        .map(str::to_owned)
        .collect();
    assert!(!on_remote.is_empty() && !on_local.is_empty());
    assert_eq!(on_remote.len() + on_local.len(), 40);

    // A writer keeps writing through the outage; every acknowledged write must survive.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let server = Arc::clone(&server);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let mut refused = 0;
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"w":{n}}}"#);
                let response = server.call("PUT", &format!("/v1/w/{n}"), Some(&body));
                match response.status {
                    200 | 201 => acknowledged.push((n, body)),
                    503 => {
                        assert!(
                            response.header("retry-after").is_some(),
                            "503 without Retry-After"
                        );
                        refused += 1;
                    }
                    other => panic!("a write answered {other}: {}", response.text()),
                }
                n += 1;
            }
            (acknowledged, refused)
        })
    };

    cluster.pg_ctl("stop");
    // The remote shard's keys fail fast with 503, the local ones keep answering.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = server.get(&format!("/v1/k/{}", on_remote[0]));
        if response.status == 503 {
            assert_eq!(response.header("retry-after"), Some("1"));
            assert_eq!(response.error_code(), "store_unavailable");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stopped shard's keys still answer {}",
            response.status
        );
    }
    for key in &on_local {
        assert_eq!(
            server.get(&format!("/v1/k/{key}")).status,
            200,
            "local key {key}"
        );
    }
    for key in &on_remote {
        let started = Instant::now();
        let response = server.get(&format!("/v1/k/{key}"));
        assert_eq!(
            response.status, 503,
            "remote key {key} while its shard is down"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a request hung on a down shard"
        );
    }

    cluster.pg_ctl("start");
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&format!("/v1/k/{}", on_remote[0])).status != 200 {
        assert!(Instant::now() < deadline, "the shard did not come back");
    }
    for key in on_remote.iter().chain(&on_local) {
        let response = server.get(&format!("/v1/k/{key}"));
        assert_eq!(response.status, 200, "key {key} after the shard returned");
    }
    stop.store(true, Ordering::Relaxed);
    let (acknowledged, refused) = writer.join().unwrap();
    assert!(!acknowledged.is_empty());
    eprintln!(
        "writes during the outage: {} acknowledged, {refused} refused",
        acknowledged.len()
    );
    for (n, body) in acknowledged {
        let response = server.get(&format!("/v1/w/{n}"));
        assert_eq!(response.status, 200, "acknowledged write {n} was lost");
        assert_eq!(response.text(), body);
    }

    // A server that hangs (stopped, its sockets open) does not hang requests:
    // a write to its shard gets 503 once the answer is overdue, and it comes back.
    let frozen = Frozen::new(cluster.pids());
    let started = Instant::now();
    let response = server.call("PUT", &format!("/v1/k/{}", on_remote[0]), Some("{}"));
    let waited = started.elapsed();
    drop(frozen);
    assert_eq!(
        response.status,
        503,
        "a read from a hung shard: {}",
        response.text()
    );
    assert!(
        waited < Duration::from_secs(30),
        "a request waited {waited:?} on a hung shard"
    );
    assert_eq!(server.get(&format!("/v1/k/{}", on_local[0])).status, 200);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.get(&format!("/v1/k/{}", on_remote[0])).status != 200 {
        assert!(
            Instant::now() < deadline,
            "the shard did not come back after it hung"
        );
    }
}

/// Processes stopped with SIGSTOP, continued when dropped (a failing test
/// must not leave a frozen cluster that cannot be shut down).
struct Frozen(Vec<String>);

impl Frozen {
    fn new(pids: Vec<String>) -> Self {
        signal_all(&pids, "STOP");
        Self(pids)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg("-CONT").args(&self.0).status();
    }
}

fn signal_all(pids: &[String], signal: &str) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .args(pids)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn start_up_errors_name_the_fix() {
    if !pg_ready() || !cluster_possible() {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_percore");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--cores", "1"])
            .args(args)
            .envs(env.iter().copied())
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/nonexistent")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--store", "postgres"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--shard-url"), "{err}");
    let (code, err) = run(
        &[
            "--store",
            "postgres",
            "--shard-url",
            "postgres://h/d",
            "--shard-url",
            "postgres://h:5432/d",
        ],
        &[],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("database of its own"), "{err}");
    let (code, err) = run(&["--shard-url", "postgres://h/d"], &[]);
    assert_eq!(code, Some(64));
    assert!(err.contains("--store postgres"), "{err}");
    let (code, err) = run(
        &[
            "--store",
            "postgres",
            "--shard-url",
            "postgres://u:pw@h/d?sslmode=require",
        ],
        &[],
    );
    assert_eq!(code, Some(64));
    assert!(err.contains("TLS") && !err.contains("pw@"), "{err}");
    let closed = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let (code, err) = run(&["--store", "postgres", "--shard-url", &closed], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot connect to PostgreSQL at") && err.contains(&closed),
        "{err}"
    );

    let cluster = Cluster::start(free_port(), 3);
    cluster.sql("postgres", "CREATE DATABASE s");
    let bare = cluster.url("s", None);
    let (code, err) = run(&["--store", "postgres", "--shard-url", &bare], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("asks for a password") && err.contains("PGPASSWORD"),
        "{err}"
    );
    let wrong = cluster.url("s", Some("nope"));
    let (code, err) = run(&["--store", "postgres", "--shard-url", &wrong], &[]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("refused the credentials") && !err.contains("nope"),
        "{err}"
    );

    // SCRAM with the password from PGPASSWORD, then from a password file.
    let mut server = Server::start_with(
        {
            let mut command = Command::new(binary);
            command.env("PGPASSWORD", CLUSTER_PASSWORD);
            command
        },
        &["--store", "postgres", "--shard-url", &bare],
    );
    assert_eq!(server.call("PUT", "/v1/a/b", Some("{}")).status, 201);
    drop(std::mem::replace(&mut server, {
        let passfile = cluster.dir.join("pgpass");
        std::fs::write(
            &passfile,
            format!("127.0.0.1:{}:s:postgres:{CLUSTER_PASSWORD}\n", cluster.port),
        )
        .unwrap();
        let mut command = Command::new(binary);
        command
            .env("PGPASSFILE", &passfile)
            .env_remove("PGPASSWORD");
        Server::start_with(command, &["--store", "postgres", "--shard-url", &bare])
    }));
    assert_eq!(server.get("/v1/a/b").status, 200);
    drop(server);

    // More shards than the server takes connections: the error names max_connections.
    let urls: Vec<String> = (0..5)
        .map(|n| {
            cluster.sql("postgres", &format!("CREATE DATABASE s{n}"));
            cluster.url(&format!("s{n}"), Some(CLUSTER_PASSWORD))
        })
        .collect();
    let mut args = vec!["--store", "postgres"];
    for url in &urls {
        args.extend(["--shard-url", url.as_str()]);
    }
    let (code, err) = run(&args, &[]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("max_connections"), "{err}");
}

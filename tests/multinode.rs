//! Several hosts on one machine: a balancer (Debian's HAProxy with deploy/haproxy.cfg, or nginx with deploy/nginx.conf), three percore nodes over shared PostgreSQL shards and a client, each in a network namespace of its own on one bridge.
//!
//! Behind each balancer, under steady load from the client host, it checks that a key keeps
//! reaching the same node whatever its sub-path or query; that a node whose
//! `/readyz` turns 503 (SIGTERM with `--drain-delay`) leaves the rotation
//! with no client error, and its keys come back to it when it returns;
//! that a node restarted by socket hand-over (`--handover`) costs no client
//! a request; that a node cut off (its link down) is routed around and its keys come
//! back when it returns; and that a write through one node is read through
//! another. Needs root, `ip netns`, haproxy, nginx and PostgreSQL's server
//! binaries; required when CI=true (`.ci/run` installs both balancers), skipped
//! elsewhere saying why. It never needs `tc netem` (absent from this
//! kernel): a node is cut off by taking its link down. Everything it made
//! (processes, namespaces, the database cluster's directory) goes when it
//! ends, even when a check fails. The two balancers' tests run one at a
//! time (they would share two CPUs).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::netns::{self, ip, run, Netns};

const SUBNET: &str = "10.77.0";
const LB: &str = "10.77.0.1";
const DB: &str = "10.77.0.50";
const CLIENT: &str = "10.77.0.100";
const NODES: [&str; 3] = ["10.77.0.11", "10.77.0.12", "10.77.0.13"];
const NODE_PORT: u16 = 8080;
const SHARDS: [&str; 2] = ["shard0", "shard1"];
const HAPROXY_CFG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy.cfg");
const NGINX_CONF: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx.conf");

/// One balancer's test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Why this machine cannot run the harness with `balancer`, if it cannot.
fn unavailable(balancer: &str) -> Option<String> {
    if let Some(why) = netns::unavailable() {
        return Some(why);
    }
    if Command::new(balancer).arg("-v").output().is_err() {
        return Some(format!(
            "{balancer} is not installed (apt-get install haproxy nginx-light)"
        ));
    }
    if pg_bin("initdb").is_none() || Command::new("psql").arg("--version").output().is_err() {
        return Some("PostgreSQL's server binaries and psql are not installed".into());
    }
    None
}

fn pg_bin(tool: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// A process, killed when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Proc {
    fn start(name: &str, mut command: Command, log: &PathBuf) -> Self {
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let child = command
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            child,
            name: name.to_owned(),
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits (bounded) for the process to exit; its exit code.
    fn wait(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {within:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PostgreSQL in the database host's namespace, run as `postgres` under
/// `pg_ctl`; trust from the hosts' subnet and on its socket. Stopped and
/// removed when dropped.
struct Database {
    dir: PathBuf,
    ns: String,
}

impl Database {
    fn start(ns: &Netns, dir: PathBuf) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir))?;
        let data = dir.join("data");
        run(Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg_bin("initdb").unwrap())
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"]))?;
        let conf = format!(
            "listen_addresses = '{DB}'\nport = 5432\nunix_socket_directories = '{}'\n\
             fsync = off\nsynchronous_commit = off\nshared_buffers = 16MB\nmax_connections = 50\n",
            dir.display()
        );
        let mut auto =
            std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap_or_default();
        auto.push_str(&conf);
        std::fs::write(data.join("postgresql.auto.conf"), auto).map_err(|e| e.to_string())?;
        let mut hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap_or_default();
        hba.push_str(&format!("host all all {SUBNET}.0/24 trust\n"));
        std::fs::write(data.join("pg_hba.conf"), hba).map_err(|e| e.to_string())?;
        let db = Self {
            dir,
            ns: ns.name.clone(),
        };
        db.pg_ctl("start")?;
        for shard in SHARDS {
            run(Command::new("psql")
                .args([
                    "-h",
                    &db.dir.display().to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args([
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-tAc",
                    &format!("CREATE DATABASE {shard}"),
                ]))?;
        }
        Ok(db)
    }

    fn pg_ctl(&self, action: &str) -> Result<String, String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns, "runuser", "-u", "postgres", "--"])
            .arg(pg_bin("pg_ctl").unwrap())
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", "60", "-m", "immediate", "-l"])
            .arg(self.dir.join("log"))
            .arg(action))
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.pg_ctl("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The hosts: a switch namespace holding the bridge, and one namespace per host.
/// Fields drop in order: processes, then the database, then the namespaces.
struct Hosts {
    balancer: Option<Proc>,
    nodes: Vec<Option<Proc>>,
    db: Option<Database>,
    dir: PathBuf,
    switch: Netns,
    lb: Netns,
    node_ns: Vec<Netns>,
    client: Netns,
    db_ns: Netns,
}

impl Hosts {
    /// The hosts for a test of `balancer`, with a directory of their own.
    fn build(balancer: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!(
            "percore-multinode-{balancer}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let switch = Netns::new("sw")?;
        ip(&["-n", &switch.name, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch.name, "link", "set", "br0", "up"])?;
        let hosts = Self {
            balancer: None,
            nodes: vec![None, None, None],
            db: None,
            dir,
            lb: Netns::new("lb")?,
            node_ns: vec![Netns::new("n1")?, Netns::new("n2")?, Netns::new("n3")?],
            client: Netns::new("cl")?,
            db_ns: Netns::new("db")?,
            switch,
        };
        let mut plugs: Vec<(&Netns, &str, String)> = vec![
            (&hosts.lb, LB, "plb".into()),
            (&hosts.client, CLIENT, "pcl".into()),
            (&hosts.db_ns, DB, "pdb".into()),
        ];
        for (n, ns) in hosts.node_ns.iter().enumerate() {
            plugs.push((ns, NODES[n], format!("pn{}", n + 1)));
        }
        for (ns, addr, port) in plugs {
            let sw = &hosts.switch.name;
            ip(&[
                "-n", sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ])?;
            ip(&["-n", sw, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"])?;
        }
        Ok(hosts)
    }

    fn shard_urls(&self) -> Vec<String> {
        SHARDS
            .iter()
            .map(|shard| format!("postgres://postgres@{DB}:5432/{shard}"))
            .collect()
    }

    /// Starts node `n` (0-based) on its own host, one io core.
    fn start_node(&mut self, n: usize) {
        let command = self.node_command(n);
        let log = self.dir.join(format!("node{}.log", n + 1));
        self.nodes[n] = Some(Proc::start(&format!("node{}", n + 1), command, &log));
        let addr: SocketAddr = format!("{}:{NODE_PORT}", NODES[n]).parse().unwrap();
        let client = self.client.name.clone();
        poll(
            Duration::from_secs(60),
            &format!("node{} to serve", n + 1),
            || {
                in_netns(&client, move || {
                    get(addr, "/readyz").map(|r| r.status == 200)
                })
                .unwrap_or(false)
            },
        );
    }

    /// Restarts node `n` by socket hand-over: the new process takes the
    /// old one's listeners, the old one drains and exits 0.
    fn hand_over(&mut self, n: usize) {
        let command = self.node_command(n);
        let log = self.dir.join(format!("node{}-next.log", n + 1));
        let next = Proc::start(&format!("node{} (successor)", n + 1), command, &log);
        let mut old = self.nodes[n].replace(next).unwrap();
        let code = old.wait(Duration::from_secs(120));
        let output = self.log(&format!("node{}.log", n + 1));
        assert_eq!(code, Some(0), "{output}");
        assert!(output.contains("handed the listeners over"), "{output}");
    }

    /// Node `n`'s command line: its own address, PostgreSQL shards, a drain delay, a hand-over socket.
    fn node_command(&self, n: usize) -> Command {
        let mut command = self.node_ns[n].command(env!("CARGO_BIN_EXE_percore"));
        command.args([
            "serve",
            "--listen",
            &format!("{}:{NODE_PORT}", NODES[n]),
            "--cores",
            "1",
            "--cpus",
            &(n % 2).to_string(),
            "--steer",
            "off",
            "--drain-delay",
            "4s",
            "--shutdown-grace",
            "5s",
            "--cache-stale-bound",
            "1s",
            "--store",
            "postgres",
        ]);
        for url in self.shard_urls() {
            command.args(["--shard-url", &url]);
        }
        let handover = self.dir.join(format!("node{}.sock", n + 1));
        command.arg("--handover").arg(handover);
        command
    }

    fn start_haproxy(&mut self) {
        let mut command = self.lb.command("haproxy");
        command
            .args(["-db", "-f", HAPROXY_CFG])
            .env("PERCORE_LB_BIND", format!("{LB}:80"))
            // 150% of the average is one request when four are in flight:
            // the bound would move keys at this test's concurrency.
            .env("PERCORE_LB_HASH_BALANCE_FACTOR", "400");
        for (n, node) in NODES.iter().enumerate() {
            command.env(
                format!("PERCORE_NODE{}", n + 1),
                format!("{node}:{NODE_PORT}"),
            );
        }
        let log = self.dir.join("haproxy.log");
        self.balancer = Some(Proc::start("haproxy", command, &log));
    }

    /// nginx with deploy/nginx.conf as shipped but for the addresses: the
    /// nodes' for the example ones, the balancer host's to listen on, and
    /// this test's directory for nginx's own files.
    fn start_nginx(&mut self) {
        let shipped = std::fs::read_to_string(NGINX_CONF).unwrap();
        let mut conf = format!(
            "pid {dir}/nginx.pid;\nerror_log {dir}/nginx.log warn;\n",
            dir = self.dir.display()
        );
        let mut body = shipped.replacen("listen 80 ", &format!("listen {LB}:80 "), 1);
        for (n, node) in NODES.iter().enumerate() {
            body = body.replace(
                &format!("10.0.0.{}:8080", 11 + n),
                &format!("{node}:{NODE_PORT}"),
            );
        }
        for (n, node) in NODES.iter().enumerate() {
            assert_eq!(
                body.matches(&format!("{node}:{NODE_PORT}")).count(),
                2,
                "deploy/nginx.conf no longer names node {} as 10.0.0.{}:8080 in both upstreams",
                n + 1,
                11 + n
            );
        }
        assert!(
            body.contains(&format!("listen {LB}:80 ")),
            "deploy/nginx.conf no longer listens on port 80"
        );
        conf.push_str(&body);
        for temp in ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            conf = conf.replacen(
                "http {\n",
                &format!(
                    "http {{\n    {temp}_temp_path {}/{temp};\n",
                    self.dir.display()
                ),
                1,
            );
        }
        let path = self.dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut command = self.lb.command("nginx");
        command
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"]);
        let log = self.dir.join("nginx.out");
        self.balancer = Some(Proc::start("nginx", command, &log));
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(name)).unwrap_or_default()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.balancer.take();
        self.nodes.clear();
        self.db.take();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces go with their fields.
    }
}

/// Runs `f` on a thread inside the namespace `ns`.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        netns::enter(&ns).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Polls `check` until it holds, at most `within`.
fn poll(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Answer {
    status: u16,
    node: Option<String>,
    body: String,
}

/// One exchange on `stream`; `Err` says what went wrong, `Ok(None)` is a close before any byte.
fn exchange(stream: &mut TcpStream, request: &str) -> Result<Option<(Answer, bool)>, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if buf.is_empty() => return Ok(None),
            Ok(0) => return Err("closed inside an answer".into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return Err("reset".into()),
            Err(e) => return Err(format!("read: {e}")),
        };
        buf.extend_from_slice(&chunk[..n]);
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let lower = head.to_ascii_lowercase();
        let header = |name: &str| {
            lower
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let length: usize = header("content-length:")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if buf.len() < end + 4 + length {
            continue;
        }
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("status line {head:?}"))?;
        let close = header("connection:").is_some_and(|v| v == "close");
        let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
        return Ok(Some((
            Answer {
                status,
                node: header("x-percore-node:").map(|node| node_name(&node)),
                body,
            },
            close,
        )));
    }
}

/// The node that answered, from the balancer's header: HAProxy names it
/// (`node2`); nginx gives the addresses it tried (`10.77.0.13:8080,
/// 10.77.0.12:8080`), of which the last answered.
fn node_name(header: &str) -> String {
    let last = header.rsplit(',').next().unwrap_or(header).trim();
    NODES
        .iter()
        .position(|node| last == format!("{node}:{NODE_PORT}"))
        .map(|n| format!("node{}", n + 1))
        .unwrap_or_else(|| last.to_owned())
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// `GET path` on a fresh connection (call from inside the client's namespace).
fn get(addr: SocketAddr, path: &str) -> Result<Answer, String> {
    call(addr, "GET", path, None)
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> Result<Answer, String> {
    let mut stream = connect(addr)?;
    let request = match body {
        Some(body) => format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    };
    exchange(&mut stream, &request)?
        .map(|(answer, _)| answer)
        .ok_or_else(|| "closed before an answer".into())
}

fn lb() -> SocketAddr {
    format!("{LB}:80").parse().unwrap()
}

/// Steady load through the balancer, from the client host.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failed: AtomicU64,
    errors: Mutex<Vec<String>>,
    /// Which node answered each key most recently.
    by_key: Mutex<HashMap<String, String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut errors = self.errors.lock().unwrap();
        if errors.len() < 20 {
            errors.push(what);
        }
    }

    fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Keep-alive clients reading /json and document keys, and clients with a
/// new connection per request reading keys, until `stop`.
fn start_load(
    client: &str,
    keys: &[String],
    stop: &Arc<AtomicBool>,
    load: &Arc<Load>,
) -> Vec<JoinHandle<()>> {
    let mut threads = Vec::new();
    for n in 0..4 {
        let keep_alive = n < 2;
        let (stop, load, keys, client) = (
            Arc::clone(stop),
            Arc::clone(load),
            keys.to_vec(),
            client.to_owned(),
        );
        threads.push(std::thread::spawn(move || {
            netns::enter(&client).unwrap();
            let mut conn: Option<TcpStream> = None;
            let mut i = n;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = &keys[i % keys.len()];
                let path = if i % 3 == 0 {
                    "/json".to_owned()
                } else {
                    key.clone()
                };
                let request = format!(
                    "GET {path} HTTP/1.1\r\nHost: t\r\n{}\r\n",
                    if keep_alive {
                        ""
                    } else {
                        "Connection: close\r\n"
                    }
                );
                let reused = conn.is_some();
                let mut stream = match conn.take() {
                    Some(stream) => stream,
                    None => match connect(lb()) {
                        Ok(stream) => stream,
                        Err(e) => {
                            load.fail(e);
                            continue;
                        }
                    },
                };
                match exchange(&mut stream, &request) {
                    Ok(Some((answer, close))) => {
                        if answer.status == 200 {
                            load.ok.fetch_add(1, Ordering::Relaxed);
                            if path.starts_with("/v1/") {
                                if let Some(node) = answer.node {
                                    load.by_key.lock().unwrap().insert(path, node);
                                }
                            }
                        } else {
                            load.fail(format!("{path}: {} {}", answer.status, answer.body));
                        }
                        if keep_alive && !close {
                            conn = Some(stream);
                        }
                    }
                    // The balancer closed an idle client connection: a client retries.
                    Ok(None) if reused => {}
                    Ok(None) => load.fail(format!("{path}: closed before an answer")),
                    Err(e) => load.fail(format!("{path}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }));
    }
    threads
}

/// Which node the balancer sends each of `keys` to now (a GET each, from the client host).
fn placement(client: &str, keys: &[String]) -> HashMap<String, String> {
    let keys = keys.to_vec();
    in_netns(client, move || {
        keys.iter()
            .filter_map(|key| {
                let answer = get(lb(), key).ok()?;
                Some((key.clone(), answer.node?))
            })
            .collect()
    })
}

/// The hosts with PostgreSQL, three nodes and `balancer` (`haproxy` or `nginx`) running.
fn bring_up(balancer: &str) -> Hosts {
    let mut hosts = Hosts::build(balancer).unwrap();
    let db_dir = hosts.dir.join("pg");
    hosts.db = Some(Database::start(&hosts.db_ns, db_dir).unwrap());
    for n in 0..3 {
        hosts.start_node(n);
    }
    match balancer {
        "haproxy" => hosts.start_haproxy(),
        _ => hosts.start_nginx(),
    }
    hosts
}

/// Writes `keys` through the balancer until all three nodes answer some of them.
fn write_through_balancer(hosts: &Hosts, keys: &[String], log: &str) {
    let client = hosts.client.name.clone();
    let last = Arc::new(Mutex::new(String::new()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (keys, seen) = (keys.to_vec(), Arc::clone(&last));
        let all = in_netns(&client, move || {
            let mut nodes = HashSet::new();
            for key in &keys {
                match call(lb(), "PUT", key, Some(r#"{"a":1,"b":2}"#)) {
                    Ok(answer) if answer.status == 200 || answer.status == 201 => {
                        nodes.extend(answer.node)
                    }
                    Ok(answer) => {
                        *seen.lock().unwrap() = format!("{key}: {} {}", answer.status, answer.body);
                        return false;
                    }
                    Err(e) => {
                        *seen.lock().unwrap() = format!("{key}: {e}");
                        return false;
                    }
                }
            }
            *seen.lock().unwrap() = format!("nodes seen: {nodes:?}");
            nodes.len() == 3
        });
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the balancer never had three nodes; last: {}; {log}: {}",
            last.lock().unwrap(),
            hosts.log(log)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where the balancer sends each of `keys`, checked to be the same whatever
/// the sub-path or query after the document's path.
fn homes_whatever_the_sub_path(client: &str, keys: &[String]) -> HashMap<String, String> {
    let homes = placement(client, keys);
    assert_eq!(homes.len(), keys.len(), "{homes:?}");
    let paths = keys.to_vec();
    let mismatches = in_netns(client, move || {
        let mut mismatches = Vec::new();
        for key in &paths {
            for variant in [
                key.clone(),
                format!("{key}?fields=a"),
                format!("{key}/sub/path?x=1"),
            ] {
                let answer = get(lb(), &variant).unwrap();
                mismatches.push((key.clone(), variant, answer.node.unwrap_or_default()));
            }
        }
        mismatches
    });
    for (key, variant, node) in &mismatches {
        assert_eq!(&homes[key], node, "{variant} went elsewhere than {key}");
    }
    homes
}

/// The keys `homes` places on `node`; there are some.
fn keys_of(homes: &HashMap<String, String>, node: &str) -> Vec<String> {
    let keys: Vec<String> = homes
        .iter()
        .filter(|(_, home)| *home == node)
        .map(|(key, _)| key.clone())
        .collect();
    assert!(!keys.is_empty(), "no key lives on {node}: {homes:?}");
    keys
}

/// Waits, at most `within`, until every one of `keys` is answered by `node`
/// (`home`) or by another node (not `home`).
fn wait_for_keys(client: &str, keys: &[String], node: &str, home: bool, within: Duration) {
    let what = if home {
        format!("{node}'s keys to come back")
    } else {
        format!("{node}'s keys to move")
    };
    poll(within, &what, || {
        placement(client, keys)
            .values()
            .all(|answered| (answered == node) == home)
    });
}

/// Takes node 3's link down until its keys have moved, then up until they
/// are back; the requests that failed meanwhile.
fn cut_node3_off(
    hosts: &Hosts,
    client: &str,
    homes: &HashMap<String, String>,
    load: &Load,
    within: Duration,
) -> u64 {
    let cut_keys = keys_of(homes, "node3");
    let before = load.failed();
    ip(&["-n", &hosts.switch.name, "link", "set", "pn3", "down"]).unwrap();
    wait_for_keys(client, &cut_keys, "node3", false, within);
    ip(&["-n", &hosts.switch.name, "link", "set", "pn3", "up"]).unwrap();
    wait_for_keys(client, &cut_keys, "node3", true, within);
    load.failed() - before
}

/// Stops the load; checks that nothing failed but while node 3 was cut off
/// (a hard cut can cost the requests already sent to it: they time out).
fn stop_load(
    stop: &AtomicBool,
    threads: Vec<JoinHandle<()>>,
    load: &Load,
    during_cut: u64,
    balancer: &str,
) {
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    println!(
        "multi-node: {} answers through {balancer}, {} failed while node3 was cut off ({:?})",
        load.ok.load(Ordering::Relaxed),
        during_cut,
        load.errors.lock().unwrap()
    );
    assert!(
        load.failed() == during_cut,
        "{:?}",
        load.errors.lock().unwrap()
    );
    assert!(load.ok.load(Ordering::Relaxed) > 0);
}

/// Steady load from the client host, running once it has had 200 answers.
fn steady_load(client: &str, keys: &[String]) -> (Arc<AtomicBool>, Arc<Load>, Vec<JoinHandle<()>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let load = Arc::new(Load::default());
    let threads = start_load(client, keys, &stop, &load);
    poll(Duration::from_secs(30), "the load to run", || {
        load.ok.load(Ordering::Relaxed) > 200
    });
    (stop, load, threads)
}

/// A balancer's test up to its checks under load: the hosts up, keys
/// written through the balancer until all three nodes hold some, and where
/// each key lives (the same whatever its sub-path or query). `None` when
/// this machine cannot run it (a failure instead when CI=true).
struct Setup {
    hosts: Hosts,
    client: String,
    keys: Vec<String>,
    homes: HashMap<String, String>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

fn set_up(balancer: &str, test: &str) -> Option<Setup> {
    let one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(why) = unavailable(balancer) {
        netns::skip_or_fail(test, &why);
        return None;
    }
    let hosts = bring_up(balancer);
    let client = hosts.client.name.clone();
    let keys: Vec<String> = (0..48).map(|i| format!("/v1/items/k{i}")).collect();
    write_through_balancer(&hosts, &keys, &format!("{balancer}.log"));
    let homes = homes_whatever_the_sub_path(&client, &keys);
    Some(Setup {
        hosts,
        client,
        keys,
        homes,
        _one_at_a_time: one_at_a_time,
    })
}

#[test]
fn a_balancer_in_front_of_three_nodes_keeps_keys_drains_and_routes_around() {
    let Some(Setup {
        mut hosts,
        client,
        keys,
        homes,
        // Bound, so the lock is held to the end of the test.
        _one_at_a_time: _serial,
    }) = set_up("haproxy", "the multi-node test")
    else {
        return;
    };

    // A write through one node is read through another (shared shards).
    let (first, second): (SocketAddr, SocketAddr) = (
        format!("{}:{NODE_PORT}", NODES[0]).parse().unwrap(),
        format!("{}:{NODE_PORT}", NODES[1]).parse().unwrap(),
    );
    let read = in_netns(&client, move || {
        let put = call(first, "PUT", "/v1/shared/doc", Some(r#"{"by":"node1"}"#)).unwrap();
        assert_eq!(put.status, 201, "{}", put.body);
        get(second, "/v1/shared/doc").unwrap()
    });
    assert_eq!(
        (read.status, read.body.as_str()),
        (200, r#"{"by":"node1"}"#)
    );

    // Steady load from here on.
    let (stop, load, threads) = steady_load(&client, &keys);

    // Node 2 drains: /readyz turns 503 while it still serves, the balancer
    // takes it out, then its listeners close. No client sees an error.
    let node2 = "node2".to_owned();
    let its_keys = keys_of(&homes, &node2);
    hosts.nodes[1].as_ref().unwrap().signal("TERM");
    wait_for_keys(&client, &its_keys, &node2, false, Duration::from_secs(30));
    let code = hosts.nodes[1]
        .as_mut()
        .unwrap()
        .wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", hosts.log("node2.log"));
    assert_eq!(
        load.failed(),
        0,
        "a drain cost clients: {:?}",
        load.errors.lock().unwrap()
    );
    // Back, and its keys with it.
    hosts.start_node(1);
    wait_for_keys(&client, &its_keys, &node2, true, Duration::from_secs(30));
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());

    // Node 1 restarts by socket hand-over under the load: nothing fails.
    let before = load.ok.load(Ordering::Relaxed);
    hosts.hand_over(0);
    poll(Duration::from_secs(30), "the load to go on", || {
        load.ok.load(Ordering::Relaxed) > before + 200
    });
    assert_eq!(
        load.failed(),
        0,
        "a hand-over cost clients: {:?}",
        load.errors.lock().unwrap()
    );

    // Node 3 cut off: routed around; its keys move and come back. HAProxy
    // retries a GET only when nothing was sent.
    let during_cut = cut_node3_off(&hosts, &client, &homes, &load, Duration::from_secs(30));
    stop_load(&stop, threads, &load, during_cut, "HAProxy");
}

#[test]
fn nginx_in_front_of_three_nodes_keeps_keys_drains_and_routes_around() {
    let Some(Setup {
        mut hosts,
        client,
        keys,
        homes,
        // Bound, so the lock is held to the end of the test.
        _one_at_a_time: _serial,
    }) = set_up("nginx", "the multi-node test behind nginx")
    else {
        return;
    };

    let (stop, load, threads) = steady_load(&client, &keys);

    // Node 2 drains. nginx never reads /readyz, so its keys stay on it
    // until its listener closes; then a refused connection, or a kept-alive
    // one the node closes as nginx sends on it, sends a GET to the next
    // node. No client sees an error.
    let node2 = "node2".to_owned();
    let its_keys = keys_of(&homes, &node2);
    hosts.nodes[1].as_ref().unwrap().signal("TERM");
    let code = hosts.nodes[1]
        .as_mut()
        .unwrap()
        .wait(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{}", hosts.log("node2.log"));
    wait_for_keys(&client, &its_keys, &node2, false, Duration::from_secs(30));
    assert_eq!(
        load.failed(),
        0,
        "a drain behind nginx cost clients: {:?}; nginx: {}",
        load.errors.lock().unwrap(),
        hosts.log("nginx.log")
    );
    // Back: after fail_timeout nginx tries the node again, and its keys return.
    hosts.start_node(1);
    wait_for_keys(&client, &its_keys, &node2, true, Duration::from_secs(60));
    assert_eq!(load.failed(), 0, "{:?}", load.errors.lock().unwrap());

    // Node 3 cut off: a GET that cannot reach it goes to the next node
    // (connect timeout 1 s; one sent on a connection kept alive to it waits
    // out proxy_read_timeout first), and its keys come back with its link.
    let during_cut = cut_node3_off(&hosts, &client, &homes, &load, Duration::from_secs(120));
    stop_load(&stop, threads, &load, during_cut, "nginx");
}

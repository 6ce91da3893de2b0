//! A real percore process on an ephemeral loopback port, and a raw HTTP/1.1 client for it.
#![allow(dead_code)]

pub mod netns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A server process, killed when dropped.
pub struct Server {
    pub addr: SocketAddr,
    child: Option<Child>,
    stdout: Option<BufReader<std::process::ChildStdout>>,
}

impl Server {
    /// Starts `percore serve` on 127.0.0.1:0 with one io core unless `args` say otherwise.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(Command::new(env!("CARGO_BIN_EXE_percore")), args)
    }

    pub fn start_with(command: Command, args: &[&str]) -> Self {
        Self::launch(command, &["serve"], args)
    }

    /// Starts `cargo run --example NAME` as a user would (its binary, built by
    /// `cargo test`), on 127.0.0.1:0 with one io core unless `args` say otherwise.
    pub fn start_example(name: &str, args: &[&str]) -> Self {
        Self::launch(Command::new(example_binary(name)), &[], args)
    }

    /// Starts an example's (or any server's) `command` without a subcommand.
    pub fn start_with_command(command: Command, args: &[&str]) -> Self {
        Self::launch(command, &[], args)
    }

    fn launch(mut command: Command, first: &[&str], args: &[&str]) -> Self {
        let mut all = first.to_vec();
        all.extend(["--listen", "127.0.0.1:0"]);
        if !args.contains(&"--cores") {
            all.extend(["--cores", "1"]);
        }
        // Steered, every connection of an unpinned test thread would land on
        // the core of whichever CPU the thread ran on; tests of several cores
        // want the kernel's hash to spread them (tests/steering.rs tests steering).
        if !args.contains(&"--steer") {
            all.extend(["--steer", "off"]);
        }
        all.extend_from_slice(args);
        let mut child = command
            .args(&all)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start percore");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).expect("read start-up line");
        if line.is_empty() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("percore did not start: {err}");
        }
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("unexpected start-up line: {line}"))
            .parse()
            .unwrap();
        Self {
            addr,
            child: Some(child),
            stdout: Some(stdout),
        }
    }

    /// The next line the server printed (after the start-up line: the store's, then steering's).
    pub fn next_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout.as_mut().unwrap().read_line(&mut line).unwrap();
        line
    }

    /// Starts the server and also returns the second start-up line (the document store's).
    pub fn start_with_output(args: &[&str]) -> (Self, String) {
        let mut server = Self::start(args);
        let mut line = String::new();
        server
            .stdout
            .as_mut()
            .unwrap()
            .read_line(&mut line)
            .unwrap();
        (server, line)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn connect(&self) -> Conn {
        Conn::new(self.addr)
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its status and everything it printed after start-up.
    pub fn wait(self, timeout: Duration) -> (ExitStatus, String) {
        let (status, out, _) = self.wait_with_stderr(timeout);
        (status, out)
    }

    /// [`Self::wait`], with what the process wrote to its standard error too.
    pub fn wait_with_stderr(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut out = String::new();
                self.stdout
                    .take()
                    .unwrap()
                    .read_to_string(&mut out)
                    .unwrap();
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err);
                }
                return (status, out, err);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("percore did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `GET path` on a fresh connection.
    pub fn get(&self, path: &str) -> Response {
        let mut conn = self.connect();
        conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        conn.response()
    }

    /// `METHOD path` with a JSON body (or none), on a fresh connection.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Response {
        let mut conn = self.connect();
        let request = match body {
            Some(body) => format!(
                "{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            None => format!("{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"),
        };
        conn.send(request.as_bytes());
        conn.response()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binary of example `name`, which `cargo test` builds beside the tests.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    // target/<profile>/deps/<test> → target/<profile>/examples/<name>
    let profile = test
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary sits in target/<profile>/deps");
    let path = profile.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test` builds the examples, `cargo test --test NAME` alone does not (run `cargo build --examples` first)",
        path.display()
    );
    path
}

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `error` code of a JSON error body.
    pub fn error_code(&self) -> String {
        let text = self.text();
        let start = text
            .find("\"error\":\"")
            .unwrap_or_else(|| panic!("not an error body: {text}"))
            + 9;
        text[start..].split('"').next().unwrap().to_owned()
    }
}

/// A raw connection that reads responses one at a time.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                n
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("read: {e}"),
        }
    }

    /// Reads one response to a request that was not HEAD.
    pub fn response(&mut self) -> Response {
        self.read_response(false)
    }

    pub fn read_response(&mut self, head_request: bool) -> Response {
        let head_end = loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            if self.fill() == 0 {
                panic!(
                    "connection closed before a full response head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        };
        let head = String::from_utf8(self.buf[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(
            status_line.starts_with("HTTP/1.1 "),
            "status line {status_line:?}"
        );
        let status: u16 = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_owned(), v.trim().to_owned())
            })
            .collect();
        let length: usize = if head_request || status == 100 || status == 204 || status == 304 {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .expect("every percore response has Content-Length")
        };
        while self.buf.len() < head_end + length {
            if self.fill() == 0 {
                panic!("connection closed inside a body");
            }
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Response {
            status,
            headers,
            body,
        }
    }

    /// True if the server closes the connection (EOF or reset) within `timeout`, with nothing more sent.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return self.buf.is_empty(),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return self.buf.is_empty()
                }
                Err(_) => return false,
            }
        }
    }
}

/// A data directory under the system's temporary directory, removed when dropped.
pub struct DataDir(pub std::path::PathBuf);

impl DataDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("percore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }

    pub fn arg(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The TechEmpower `/fortunes` page for the benchmark's twelve fortunes plus the one added at request time.
pub const FORTUNES_HTML: &str = "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr><tr><td>11</td><td>&lt;script&gt;alert(&quot;This should not be displayed in a browser alert box.&quot;);&lt;/script&gt;</td></tr><tr><td>4</td><td>A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1</td></tr><tr><td>5</td><td>A computer program does what you tell it to do, not what you want it to do.</td></tr><tr><td>2</td><td>A computer scientist is someone who fixes things that aren&#39;t broken.</td></tr><tr><td>8</td><td>A list is only as strong as its weakest link. \u{2014} Donald Knuth</td></tr><tr><td>0</td><td>Additional fortune added at request time.</td></tr><tr><td>3</td><td>After enough decimal places, nobody gives a damn.</td></tr><tr><td>7</td><td>Any program that runs right is obsolete.</td></tr><tr><td>10</td><td>Computers make very fast, very accurate mistakes.</td></tr><tr><td>6</td><td>Emacs is a nice operating system, but I prefer UNIX. \u{2014} Tom Christaensen</td></tr><tr><td>9</td><td>Feature: A bug with seniority.</td></tr><tr><td>1</td><td>fortune: No such file or directory</td></tr><tr><td>12</td><td>\u{30d5}\u{30ec}\u{30fc}\u{30e0}\u{30ef}\u{30fc}\u{30af}\u{306e}\u{30d9}\u{30f3}\u{30c1}\u{30de}\u{30fc}\u{30af}</td></tr></table></body></html>";

/// Writes an API keys file (`--auth-keys`) holding `(name, key, scopes)`
/// entries, each key stored as its SHA-256. Written beside and renamed, as
/// an operator's tooling would: a watcher never sees half a file.
pub fn write_keys(path: &std::path::Path, keys: &[(&str, &str, &[&str])]) {
    use sha2::{Digest, Sha256};
    let mut text = String::new();
    for (name, secret, scopes) in keys {
        let digest: String = Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        text.push_str(&format!(
            "[[keys]]\nname = \"{name}\"\nsha256 = \"{digest}\"\nscopes = {scopes:?}\n\n"
        ));
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write the keys file");
    std::fs::rename(&partial, path).expect("rename the keys file into place");
}

//! Static content through real HTTP: validators, conditional requests, ranges, precompressed siblings, large files, refresh, traversal.

mod common;

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::{Conn, Response, Server};

/// A directory of test files, removed on drop.
struct Site(PathBuf);

impl Site {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("percore-static-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("docs")).unwrap();
        fs::create_dir_all(dir.join("assets")).unwrap();
        let site = Self(dir);
        site.write("index.html", b"<h1>home</h1>");
        site.write("docs/index.html", b"<h1>docs</h1>");
        site.write("docs/guide.txt", b"0123456789abcdefghij");
        site.write("assets/app.3f9a2b1c.js", b"console.log(1)");
        site.write("missing.html", b"<h1>not here</h1>");
        site
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    fn write(&self, relative: &str, bytes: &[u8]) {
        fs::write(self.path(relative), bytes).unwrap();
    }

    fn set_mtime(&self, relative: &str, time: SystemTime) {
        fs::File::options()
            .write(true)
            .open(self.path(relative))
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    fn serve(&self, extra: &[&str]) -> Server {
        let mut args = vec!["--static-dir", self.0.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(&args)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn get(conn: &mut Conn, path: &str, headers: &str) -> Response {
    conn.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes());
    conn.response()
}

fn fetch(server: &Server, path: &str, headers: &str) -> Response {
    get(&mut server.connect(), path, headers)
}

#[test]
fn files_index_redirects_and_types() {
    let site = Site::new("basics");
    let server = site.serve(&[]);
    let home = fetch(&server, "/static/", "");
    assert_eq!((home.status, home.text().as_str()), (200, "<h1>home</h1>"));
    assert_eq!(
        home.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(fetch(&server, "/static/docs/", "").text(), "<h1>docs</h1>");
    let redirect = fetch(&server, "/static/docs", "");
    assert_eq!(
        (redirect.status, redirect.header("location")),
        (301, Some("/static/docs/"))
    );
    let guide = fetch(&server, "/static/docs/guide.txt", "");
    assert_eq!(
        guide.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(guide.header("accept-ranges"), Some("bytes"));
    let js = fetch(&server, "/static/assets/app.3f9a2b1c.js", "");
    assert_eq!(
        js.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        js.header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(guide.header("cache-control"), Some("public, max-age=3600"));
    let missing = fetch(&server, "/static/nope.txt", "");
    assert_eq!(
        (missing.status, missing.error_code().as_str()),
        (404, "not_found")
    );

    let mut conn = server.connect();
    conn.send(b"HEAD /static/docs/guide.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = conn.read_response(true);
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("20"))
    );
    assert_eq!(
        get(&mut conn, "/static/", "").text(),
        "<h1>home</h1>",
        "HEAD sent no body"
    );

    conn.send(b"POST /static/index.html HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    let post = conn.response();
    assert_eq!(
        (post.status, post.header("allow")),
        (405, Some("GET, HEAD"))
    );
}

#[test]
fn configured_404_page_and_cache_control() {
    let site = Site::new("config");
    let server = site.serve(&[
        "--static-not-found",
        "missing.html",
        "--static-cache-control",
        "public, max-age=60",
        "--static-prefix",
        "/assets/",
        "--static-immutable",
        "docs/*",
    ]);
    let missing = fetch(&server, "/assets/nothing", "");
    assert_eq!(
        (missing.status, missing.text().as_str()),
        (404, "<h1>not here</h1>")
    );
    assert_eq!(
        fetch(&server, "/assets/index.html", "").header("cache-control"),
        Some("public, max-age=60")
    );
    assert_eq!(
        fetch(&server, "/assets/docs/guide.txt", "").header("cache-control"),
        Some("public, max-age=31536000, immutable")
    );
    assert_eq!(
        fetch(&server, "/static/index.html", "").status,
        404,
        "the old prefix is not served"
    );
}

#[test]
fn validators_and_conditional_requests() {
    let site = Site::new("conditional");
    let server = site.serve(&[]);
    let first = fetch(&server, "/static/docs/guide.txt", "");
    let etag = first.header("etag").unwrap().to_owned();
    let modified = first.header("last-modified").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong ETag: {etag}"
    );

    let not_modified = fetch(
        &server,
        "/static/docs/guide.txt",
        &format!("If-None-Match: \"other\", {etag}\r\n"),
    );
    assert_eq!((not_modified.status, not_modified.body.len()), (304, 0));
    assert_eq!(not_modified.header("etag"), Some(etag.as_str()));
    assert_eq!(not_modified.header("content-length"), None);
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            "If-None-Match: \"stale\"\r\n"
        )
        .status,
        200
    );
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            &format!("If-Modified-Since: {modified}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        )
        .status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            &format!("If-None-Match: \"stale\"\r\nIf-Modified-Since: {modified}\r\n")
        )
        .status,
        200
    );

    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            &format!("If-Match: {etag}\r\n")
        )
        .status,
        200
    );
    assert_eq!(
        fetch(&server, "/static/docs/guide.txt", "If-Match: \"stale\"\r\n").status,
        412
    );
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            &format!("If-Match: W/{etag}\r\n")
        )
        .status,
        412,
        "If-Match compares strongly"
    );
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            "If-Unmodified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n"
        )
        .status,
        412
    );
    assert_eq!(
        fetch(
            &server,
            "/static/docs/guide.txt",
            &format!("If-Unmodified-Since: {modified}\r\n")
        )
        .status,
        200
    );
}

#[test]
fn ranges() {
    let site = Site::new("ranges");
    let server = site.serve(&[]);
    let part = fetch(&server, "/static/docs/guide.txt", "Range: bytes=2-5\r\n");
    assert_eq!((part.status, part.text().as_str()), (206, "2345"));
    assert_eq!(part.header("content-range"), Some("bytes 2-5/20"));
    assert_eq!(
        fetch(&server, "/static/docs/guide.txt", "Range: bytes=-3\r\n").text(),
        "hij"
    );
    assert_eq!(
        fetch(&server, "/static/docs/guide.txt", "Range: bytes=18-\r\n").text(),
        "ij"
    );
    let unsatisfiable = fetch(&server, "/static/docs/guide.txt", "Range: bytes=20-30\r\n");
    assert_eq!(
        (unsatisfiable.status, unsatisfiable.header("content-range")),
        (416, Some("bytes */20"))
    );
    let several = fetch(
        &server,
        "/static/docs/guide.txt",
        "Range: bytes=0-1,4-5\r\n",
    );
    assert_eq!(
        (several.status, several.body.len()),
        (200, 20),
        "several ranges: the whole file, as documented"
    );

    let etag = fetch(&server, "/static/docs/guide.txt", "")
        .header("etag")
        .unwrap()
        .to_owned();
    let matching = fetch(
        &server,
        "/static/docs/guide.txt",
        &format!("Range: bytes=0-0\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((matching.status, matching.text().as_str()), (206, "0"));
    let stale = fetch(
        &server,
        "/static/docs/guide.txt",
        "Range: bytes=0-0\r\nIf-Range: \"old\"\r\n",
    );
    assert_eq!(
        (stale.status, stale.body.len()),
        (200, 20),
        "a stale If-Range gets the whole file"
    );
}

#[test]
fn fresh_precompressed_siblings_win_and_stale_ones_never_do() {
    let site = Site::new("siblings");
    site.write("app.css", b"body { color: red }");
    site.write("app.css.br", b"BROTLI-BYTES");
    site.write("app.css.gz", b"GZIP-BYTES");
    // A compressed file with no original beside it is a file in its own right.
    site.write("data.tar.gz", b"TARBALL");
    let now = SystemTime::now();
    site.set_mtime("app.css", now - Duration::from_secs(100));
    site.set_mtime("app.css.br", now - Duration::from_secs(50));
    // Written before the original: stale, must never be served.
    site.set_mtime("app.css.gz", now - Duration::from_secs(200));
    let server = site.serve(&[]);

    let br = fetch(
        &server,
        "/static/app.css",
        "Accept-Encoding: gzip, deflate, br\r\n",
    );
    assert_eq!(
        (br.header("content-encoding"), br.text().as_str()),
        (Some("br"), "BROTLI-BYTES")
    );
    assert_eq!(br.header("vary"), Some("Accept-Encoding"));
    assert_eq!(br.header("content-type"), Some("text/css; charset=utf-8"));
    let gzip_only = fetch(&server, "/static/app.css", "Accept-Encoding: gzip\r\n");
    assert_eq!(
        (
            gzip_only.header("content-encoding"),
            gzip_only.text().as_str()
        ),
        (None, "body { color: red }"),
        "the stale .gz won"
    );
    assert_eq!(gzip_only.header("vary"), Some("Accept-Encoding"));
    let plain = fetch(&server, "/static/app.css", "");
    assert_eq!(plain.text(), "body { color: red }");
    let refused = fetch(&server, "/static/app.css", "Accept-Encoding: br;q=0\r\n");
    assert_eq!(refused.header("content-encoding"), None);
    assert_ne!(
        br.header("etag"),
        plain.header("etag"),
        "each encoding has its own ETag"
    );
    assert_eq!(
        fetch(&server, "/static/app.css.br", "").status,
        404,
        "siblings are not served by their own name"
    );
    assert_eq!(fetch(&server, "/static/data.tar.gz", "").text(), "TARBALL");
}

#[test]
fn large_files_are_spliced_whole_and_in_ranges_with_pipelining_intact() {
    let site = Site::new("large");
    let big: Vec<u8> = (0..1_500_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    site.write("big.bin", &big);
    let server = site.serve(&["--static-inline-max", "1KiB"]);
    let mut conn = server.connect();
    // Three requests in one write: the file must go out whole before the next answer.
    conn.send(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /static/big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1000000-1000099\r\n\r\nGET /json HTTP/1.1\r\nHost: t\r\n\r\n");
    let whole = conn.response();
    assert_eq!(whole.status, 200);
    assert!(whole.body == big, "the spliced body differs from the file");
    let part = conn.response();
    assert_eq!(
        (part.status, part.body.as_slice()),
        (206, &big[1_000_000..1_000_100])
    );
    assert_eq!(conn.response().body, br#"{"message":"Hello, World!"}"#);
    conn.send(b"HEAD /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = conn.read_response(true);
    assert_eq!(head.header("content-length"), Some("1500000"));
    assert_eq!(
        get(&mut conn, "/json", "").status,
        200,
        "HEAD of a large file sent no body"
    );
}

#[test]
fn changes_on_disk_are_picked_up_without_a_restart() {
    let site = Site::new("refresh");
    let server = site.serve(&["--static-refresh", "100ms"]);
    let before = fetch(&server, "/static/docs/guide.txt", "");
    site.write("docs/guide.txt", b"a new version, longer than before");
    site.write("new.txt", b"fresh");
    fs::remove_file(site.path("index.html")).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let after = fetch(&server, "/static/docs/guide.txt", "");
        if after.text() == "a new version, longer than before" {
            assert_ne!(after.header("etag"), before.header("etag"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the change was never served"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fetch(&server, "/static/new.txt", "").text(), "fresh");
    assert_eq!(fetch(&server, "/static/index.html", "").status, 404);
}

#[test]
fn traversal_and_hostile_paths_are_refused() {
    let site = Site::new("traversal");
    site.write(".env", b"SECRET=1");
    let outside = std::env::temp_dir().join(format!("percore-outside-{}", std::process::id()));
    fs::write(&outside, b"outside the root").unwrap();
    std::os::unix::fs::symlink(&outside, site.path("escape.txt")).unwrap();
    std::os::unix::fs::symlink(site.path("docs/guide.txt"), site.path("inside.txt")).unwrap();
    // A precompressed sibling that leads out of the root must not be served either.
    site.write("app.js", b"let inside = 1;");
    std::os::unix::fs::symlink(&outside, site.path("app.js.gz")).unwrap();
    // Newer than app.js, so only the root check can keep it out.
    let future = SystemTime::now() + Duration::from_secs(100);
    fs::File::options()
        .write(true)
        .open(&outside)
        .unwrap()
        .set_modified(future)
        .unwrap();
    let server = site.serve(&[]);
    for path in [
        "/static/../Cargo.toml",
        "/static/docs/../../etc/passwd",
        "/static/%2e%2e/etc/passwd",
        "/static/%2E%2E%2Fetc%2Fpasswd",
        "/static/docs/..%2f..%2fetc/passwd",
        "/static/docs/%2e/guide.txt",
        "/static/a%00.txt",
        "/static/%zz",
        "/static//etc/passwd",
    ] {
        let response = fetch(&server, path, "");
        assert!(
            response.status == 400 || response.status == 404,
            "{path} answered {}",
            response.status
        );
        assert!(
            !response.text().contains("root:") && !response.text().contains("outside"),
            "{path} leaked"
        );
    }
    let long = format!("/static/{}", "a/".repeat(700));
    assert_eq!(fetch(&server, &long, "").status, 400);
    assert_eq!(
        fetch(&server, "/static/.env", "").status,
        404,
        "dotfiles are not served"
    );
    assert_eq!(
        fetch(&server, "/static/escape.txt", "").status,
        404,
        "a symlink out of the root was served"
    );
    assert_eq!(
        fetch(&server, "/static/inside.txt", "").text(),
        "0123456789abcdefghij",
        "a symlink within the root works"
    );
    let js = fetch(&server, "/static/app.js", "Accept-Encoding: gzip\r\n");
    assert_eq!(
        (js.header("content-encoding"), js.text().as_str()),
        (None, "let inside = 1;")
    );
    let _ = fs::remove_file(&outside);
}

#[test]
fn a_missing_static_dir_exits_64() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_percore"))
        .args(["serve", "--static-dir", "/nonexistent/percore-www"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&output.stderr).contains("`static_dir`"));
}

#[test]
fn a_slow_reader_of_a_large_file_gets_all_of_it() {
    let site = Site::new("slow");
    let big: Vec<u8> = (0..12_000_000u32)
        .map(|i| (i.wrapping_mul(2_246_822_519) >> 23) as u8)
        .collect();
    site.write("big.bin", &big);
    let server = site.serve(&["--static-inline-max", "1KiB"]);
    let mut conn = server.connect();
    conn.send(
        b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\nGET /json HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    // Stop reading long enough for every socket buffer on the way to fill:
    // the server must wait for room, not give up.
    std::thread::sleep(Duration::from_millis(400));
    let response = conn.response();
    assert_eq!(response.status, 200);
    assert!(
        response.body == big,
        "the body differs ({} of {} bytes)",
        response.body.len(),
        big.len()
    );
    assert_eq!(
        conn.response().status,
        200,
        "the request behind the file was answered"
    );
}

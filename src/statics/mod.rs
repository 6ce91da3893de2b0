//! Static content under a URL prefix, served like a CDN edge: validators, conditional requests, ranges, precompressed siblings, zero-copy for large files.

pub mod conditional;
pub mod index;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use conditional::{
    accepted_quality, etag_list_matches, parse_http_date, parse_range, RangeRequest,
};
pub use index::{Entry, Index, Lookup, Variant};

use crate::http::response::FileBody;
use crate::http::{Head, HttpError, Response};

/// Longest request path (after the prefix) percore will look up.
pub const MAX_PATH_BYTES: usize = 1024;

/// How static content is served; from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticOptions {
    pub dir: PathBuf,
    /// URL prefix, starting and ending with `/`, e.g. `/static/`.
    pub prefix: String,
    pub index_file: String,
    /// A file under `dir` served with status 404 for missing paths.
    pub not_found_page: Option<String>,
    /// `Cache-Control` for ordinary files.
    pub cache_control: String,
    /// Globs (`*` matches any run of characters) of content-hashed names.
    pub immutable: Vec<String>,
    /// Files up to this size are held in memory; larger ones are spliced from disk.
    pub inline_max: u64,
    pub refresh: Duration,
}

impl StaticOptions {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            prefix: "/static/".into(),
            index_file: "index.html".into(),
            not_found_page: None,
            cache_control: "public, max-age=3600".into(),
            immutable: Vec::new(),
            inline_max: 256 * 1024,
            refresh: index::DEFAULT_REFRESH,
        }
    }

    /// Content-hashed names never change, so caches may keep them for a year.
    pub fn cache_control_for(&self, relative: &str) -> String {
        let name = relative.rsplit('/').next().unwrap_or(relative);
        if looks_content_hashed(name)
            || self
                .immutable
                .iter()
                .any(|glob| glob_matches(glob, relative))
        {
            "public, max-age=31536000, immutable".into()
        } else {
            self.cache_control.clone()
        }
    }
}

/// `app.3f9a2b1c.js`, `logo-8c1d4e2f9a.png`: a dot- or dash-separated part of 8+ hex digits.
fn looks_content_hashed(name: &str) -> bool {
    let stem = name.rsplit_once('.').map_or(name, |(stem, _)| stem);
    // At least one letter: `report-20240101.pdf` carries a date, not a hash.
    stem.split(['.', '-', '_']).any(|part| {
        part.len() >= 8
            && part.bytes().all(|b| b.is_ascii_hexdigit())
            && part.bytes().any(|b| b.is_ascii_alphabetic())
    })
}

fn glob_matches(glob: &str, text: &str) -> bool {
    let mut parts = glob.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    for (i, piece) in pieces.iter().enumerate() {
        if i == pieces.len() - 1 {
            return rest.ends_with(piece);
        }
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// Percent-decodes a request path, refusing what could escape the root or confuse the file system.
pub fn decode_path(raw: &str) -> Result<String, &'static str> {
    if raw.len() > MAX_PATH_BYTES {
        return Err("the path is longer than 1024 bytes");
    }
    let decoded = crate::http::percent::decode(raw).map_err(|bad| match bad {
        crate::http::percent::BadEscape::Truncated => "a truncated percent-escape in the path",
        crate::http::percent::BadEscape::NotHex => "an invalid percent-escape in the path",
    })?;
    if decoded.contains(&0) {
        return Err("a NUL byte in the path");
    }
    let text = String::from_utf8(decoded).map_err(|_| "the path is not UTF-8")?;
    if text
        .split(['/', '\\'])
        .any(|segment| segment == ".." || segment == ".")
    {
        return Err("`.` and `..` segments are not allowed in the path");
    }
    if text.starts_with('/') || text.contains("//") {
        return Err("empty segments are not allowed in the path");
    }
    Ok(text)
}

/// Percent-encodes a decoded path for a `Location` header: everything but
/// unreserved characters and `/`.
fn encode_path(path: &str) -> String {
    let mut encoded = String::with_capacity(path.len());
    for byte in path.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Answers a GET or HEAD under the static prefix. Returns the file body to
/// send after the head when the answer is too large to hold in memory.
pub fn serve(
    index: &Index,
    head: &Head<'_, '_>,
    response: &mut Response<'_>,
    scratch: &mut Vec<u8>,
) -> Option<FileBody> {
    let options = index.options();
    if head.method != "GET" && head.method != "HEAD" {
        let error = HttpError::MethodNotAllowed {
            method: head.method.to_owned(),
            allow: "GET, HEAD".into(),
        };
        response.error(&error, scratch);
        return None;
    }
    let relative = match decode_path(&head.path[options.prefix.len()..]) {
        Ok(relative) => relative,
        Err(reason) => {
            response.error(&HttpError::BadRequest(reason.to_owned()), scratch);
            return None;
        }
    };
    let entry = match index.lookup(&relative) {
        Lookup::File(entry) => entry,
        Lookup::Directory => {
            let location = format!("{}{}/", options.prefix, encode_path(&relative));
            response.send(
                301,
                "text/plain; charset=utf-8",
                &[("Location", &location)],
                b"moved\n",
            );
            return None;
        }
        Lookup::Missing => return not_found(index, head, response, scratch),
    };
    let variant = choose_variant(&entry, head.header("accept-encoding"));
    let mut headers: Vec<(&str, &str)> = vec![
        ("ETag", &variant.etag),
        ("Last-Modified", &entry.last_modified),
        ("Cache-Control", &entry.cache_control),
        ("Accept-Ranges", "bytes"),
    ];
    if !entry.siblings.is_empty() {
        headers.push(("Vary", "Accept-Encoding"));
    }
    if let Some(coding) = variant.coding {
        headers.push(("Content-Encoding", coding.token()));
    }

    // RFC 9110 §13.2.2: the order in which preconditions are evaluated.
    if let Some(list) = head.header("if-match") {
        if !etag_list_matches(list, &variant.etag, false) {
            response.send(412, "application/json", &headers, br#"{"error":"precondition_failed","message":"If-Match does not match the current ETag"}"#);
            return None;
        }
    } else if let Some(date) = head.header("if-unmodified-since").and_then(parse_http_date) {
        if entry.mtime_secs > date {
            response.send(412, "application/json", &headers, br#"{"error":"precondition_failed","message":"modified since If-Unmodified-Since"}"#);
            return None;
        }
    }
    if let Some(list) = head.header("if-none-match") {
        if etag_list_matches(list, &variant.etag, true) {
            response.not_modified(&headers);
            return None;
        }
    } else if let Some(date) = head.header("if-modified-since").and_then(parse_http_date) {
        if entry.mtime_secs <= date {
            response.not_modified(&headers);
            return None;
        }
    }

    let mut status = 200;
    let mut start = 0;
    let mut len = variant.len;
    let content_range;
    let range = head
        .header("range")
        .filter(|_| head.method == "GET")
        .filter(|_| if_range_holds(head.header("if-range"), &variant.etag, &entry.last_modified));
    if let Some(range) = range {
        match parse_range(range, variant.len) {
            RangeRequest::Whole => {}
            RangeRequest::Partial(r) => {
                status = 206;
                start = r.start;
                len = r.len;
                content_range =
                    format!("bytes {}-{}/{}", r.start, r.start + r.len - 1, variant.len);
                headers.push(("Content-Range", &content_range));
            }
            RangeRequest::Unsatisfiable => {
                let unsatisfied = format!("bytes */{}", variant.len);
                headers.push(("Content-Range", &unsatisfied));
                response.send(416, "application/json", &headers, br#"{"error":"range_not_satisfiable","message":"the range lies outside the file"}"#);
                return None;
            }
        }
    }
    send_variant(
        variant,
        entry.content_type,
        status,
        start,
        len,
        &headers,
        head.method == "HEAD",
        response,
    )
}

#[allow(clippy::too_many_arguments)]
fn send_variant(
    variant: &Variant,
    content_type: &str,
    status: u16,
    start: u64,
    len: u64,
    headers: &[(&str, &str)],
    head_only: bool,
    response: &mut Response<'_>,
) -> Option<FileBody> {
    if let Some(bytes) = &variant.bytes {
        let range = start as usize..(start + len) as usize;
        response.send(status, content_type, headers, &bytes[range]);
        return None;
    }
    let file = variant.file.as_ref()?;
    response.send_head(status, content_type, headers, len);
    (!head_only && len > 0).then(|| FileBody {
        file: Arc::clone(file),
        offset: start,
        len,
    })
}

fn not_found(
    index: &Index,
    head: &Head<'_, '_>,
    response: &mut Response<'_>,
    scratch: &mut Vec<u8>,
) -> Option<FileBody> {
    if let Some(page) = index.not_found_page() {
        let headers = [("Cache-Control", "no-cache")];
        return send_variant(
            &page.identity,
            page.content_type,
            404,
            0,
            page.identity.len,
            &headers,
            head.method == "HEAD",
            response,
        );
    }
    response.error(
        &HttpError::NotFound {
            path: head.path.to_owned(),
        },
        scratch,
    );
    None
}

/// `If-Range` holds when it names the current strong ETag or exactly the Last-Modified date.
fn if_range_holds(if_range: Option<&[u8]>, etag: &str, last_modified: &str) -> bool {
    let Some(value) = if_range else { return true };
    let value = value.trim_ascii();
    if value.starts_with(b"\"") || value.starts_with(b"W/") {
        value == etag.as_bytes()
    } else {
        value == last_modified.as_bytes()
    }
}

/// The variant the client prefers among those it accepts: a precompressed
/// sibling when it accepts that coding at least as much as identity.
fn choose_variant<'e>(entry: &'e Entry, accept_encoding: Option<&[u8]>) -> &'e Variant {
    let Some(accept) = accept_encoding else {
        return &entry.identity;
    };
    let mut best: Option<(&Variant, f32)> = None;
    for variant in &entry.siblings {
        let q = variant.coding.map_or(0.0, |c| accepted_quality(accept, c));
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((variant, q));
        }
    }
    match best {
        Some((variant, _)) => variant,
        None => &entry.identity,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_could_escape_are_refused() {
        assert_eq!(decode_path("css/app.css"), Ok("css/app.css".into()));
        assert_eq!(decode_path("a%20b.txt"), Ok("a b.txt".into()));
        assert!(decode_path("../etc/passwd").is_err());
        assert!(decode_path("a/%2e%2e/b").is_err());
        assert!(decode_path("a/%2E%2E%2Fb").is_err());
        assert!(decode_path("a/..%5cb").is_err());
        assert!(decode_path("a%00.txt").is_err());
        assert!(decode_path("a%zz").is_err());
        assert!(decode_path("%2fetc/passwd").is_err());
        assert!(decode_path(&"a".repeat(2000)).is_err());
    }

    #[test]
    fn redirect_locations_are_encoded() {
        assert_eq!(encode_path("a b/x?y#z/é"), "a%20b/x%3Fy%23z/%C3%A9");
        assert_eq!(decode_path(&encode_path("a b/x?y")), Ok("a b/x?y".into()));
    }

    #[test]
    fn immutable_names() {
        let options = StaticOptions::new(PathBuf::from("/tmp"));
        let dated = options.cache_control_for("report-20240101.pdf");
        assert!(!dated.contains("immutable"), "a date is not a content hash");
        assert!(options
            .cache_control_for("js/app.3f9a2b1c.js")
            .contains("immutable"));
        assert!(options
            .cache_control_for("img/logo-8c1d4e2f9a.png")
            .contains("immutable"));
        assert!(!options
            .cache_control_for("index.html")
            .contains("immutable"));
        let mut custom = options.clone();
        custom.immutable = vec!["fonts/*".into()];
        assert!(custom
            .cache_control_for("fonts/inter.woff2")
            .contains("immutable"));
        assert!(glob_matches("*.woff2", "a/b.woff2") && !glob_matches("*.woff2", "a/b.woff"));
    }
}

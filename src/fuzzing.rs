//! The fuzzing surface: one function per fuzz target, each feeding bytes a client chose to the code that reads them and checking what must hold.
//!
//! Not an API: `fuzz/fuzz_targets/*.rs` call these under libFuzzer, and
//! `tests/fuzz_corpus.rs` replays `fuzz/corpus/` through them in a plain
//! `cargo test`, so a crash that was fixed stays fixed. A function panics
//! when an invariant breaks; that panic is the finding. Each states what it
//! checks; two of them are differential: the strict fast path of the head
//! parser against `httparse` alone ([`http_fast_path`]), and the JSON
//! writers against `serde_json` on the same input ([`json_document`],
//! [`merge_patch`], [`field_mask`]).

use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use httparse::Header;
use serde_json::Value;

use crate::http::parse::{self, Framing, Limits, HEADER_SLOTS};
use crate::http::{Head, HttpError};
use crate::net::session::Session;
use crate::net::{Awaiting, ConnId, Handled, Service};

/// A fuzz target: its name and its check.
pub type Target = (&'static str, fn(&[u8]));

/// Every target by name, as `fuzz/fuzz_targets/NAME.rs` and `fuzz/corpus/NAME/` have it.
pub const TARGETS: &[Target] = &[
    ("http_head", http_head),
    ("http_fast_path", http_fast_path),
    ("http_chunked", http_chunked),
    ("http_session", http_session),
    ("percent", percent),
    ("statics_headers", statics_headers),
    ("field_mask", field_mask),
    ("json_document", json_document),
    ("merge_patch", merge_patch),
    ("limit_keys", limit_keys),
    ("config_toml", config_toml),
];

/// Parse limits picked by the input's first byte: the defaults, or small
/// ones so that every limit is reached by short inputs. Returns the limits
/// and the rest of the input.
fn limits_from(data: &[u8]) -> (Limits, &[u8]) {
    match data.split_first() {
        Some((&pick, rest)) if pick & 1 == 1 => (
            Limits {
                max_header_bytes: 64 + usize::from(pick >> 1) * 4,
                max_body_bytes: usize::from(pick >> 3) * 8,
                max_headers: usize::from(pick >> 4) + 1,
            },
            rest,
        ),
        Some((_, rest)) => (Limits::default(), rest),
        None => (Limits::default(), data),
    }
}

/// A head, owned, for comparing two parses.
type OwnedHead = (
    String,
    String,
    bool,
    Vec<(String, Vec<u8>)>,
    usize,
    Framing,
    bool,
);

fn owned(head: &Head<'_, '_>) -> OwnedHead {
    (
        head.method.to_owned(),
        head.target.to_owned(),
        head.version == crate::http::Version::Http11,
        head.headers
            .iter()
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect(),
        head.len,
        head.framing,
        head.keep_alive,
    )
}

fn parse_owned(buf: &[u8], limits: &Limits) -> Result<Option<OwnedHead>, HttpError> {
    let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    parse::parse_head(buf, &mut slots, limits).map(|head| head.as_ref().map(owned))
}

/// Positions to cut an input of `len` bytes at: a few spread over it, the
/// same for the same input (no randomness a replay could not repeat).
fn cuts(len: usize, seed: &[u8]) -> impl Iterator<Item = usize> {
    let hash = seed.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..8u64)
        .filter(move |_| len > 0)
        .map(move |n| (hash.rotate_left((n * 8) as u32) as usize) % len)
}

/// The request head parser: a head it accepts is within the limits, splits
/// its target into path and query exactly, parses the same from its own
/// bytes alone, and every shorter prefix of it is only incomplete.
pub fn http_head(data: &[u8]) {
    let (limits, buf) = limits_from(data);
    let Ok(Some(head)) = parse_owned(buf, &limits) else {
        return;
    };
    let len = head.4;
    assert!(len <= buf.len() && len <= limits.max_header_bytes);
    assert!(head.3.len() <= limits.max_headers);
    if let Framing::Length(n) = head.5 {
        assert!(n > 0 && n <= limits.max_body_bytes);
    }
    {
        let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
        let parsed = parse::parse_head(buf, &mut slots, &limits);
        let parsed = parsed.expect("parsed once").expect("complete once");
        let rebuilt = match parsed.query {
            Some(query) => format!("{}?{query}", parsed.path),
            None => parsed.path.to_owned(),
        };
        assert_eq!(rebuilt, parsed.target);
        assert!(!parsed.path.contains('?'));
    }
    assert_eq!(parse_owned(&buf[..len], &limits), Ok(Some(head.clone())));
    for cut in cuts(len, buf) {
        assert_eq!(
            parse_owned(&buf[..cut], &limits),
            Ok(None),
            "a prefix of {cut} bytes of a complete head"
        );
    }
}

/// Differential: whatever head the strict fast path accepts, `httparse`
/// alone parses to the same method, target, version, headers and length.
pub fn http_fast_path(data: &[u8]) {
    let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
    let Some(fast) = crate::http::fast::parse(data, &mut slots) else {
        return;
    };
    // SAFETY: fast::parse initialized the first `fast.headers` slots.
    let fast_headers: &[Header<'_>] =
        unsafe { std::slice::from_raw_parts(slots.as_ptr().cast::<Header<'_>>(), fast.headers) };
    let mut headers = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut request = httparse::Request::new(&mut headers);
    let status = request.parse(data);
    assert_eq!(
        status,
        Ok(httparse::Status::Complete(fast.len)),
        "httparse disagrees on a head the fast path took"
    );
    assert_eq!(request.method, Some(fast.method));
    assert_eq!(request.path, Some(fast.target));
    assert_eq!(request.version, Some(fast.minor));
    assert_eq!(request.headers.len(), fast_headers.len());
    for (ours, theirs) in fast_headers.iter().zip(request.headers.iter()) {
        assert_eq!((ours.name, ours.value), (theirs.name, theirs.value));
    }
}

/// Decodes a chunked body the simple way, for comparison: hex size, skip
/// to CRLF, data, CRLF; stops at the last chunk.
fn decode_chunked_reference(mut buf: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let digits = buf.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let size = usize::from_str_radix(std::str::from_utf8(&buf[..digits]).unwrap(), 16)
            .expect("a size the framing accepted");
        let eol = buf.windows(2).position(|w| w == b"\r\n").unwrap();
        buf = &buf[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..size]);
        assert_eq!(&buf[size..size + 2], b"\r\n");
        buf = &buf[size + 2..];
    }
}

/// Chunked framing (sizes, extensions, trailers): a body it measures
/// decodes within the limit to what a plain decoder reads, and every
/// shorter prefix of it is only incomplete.
pub fn http_chunked(data: &[u8]) {
    let (limits, buf) = limits_from(data);
    let Ok(Some(extent)) = parse::chunked_extent(buf, &limits) else {
        return;
    };
    assert!(extent <= buf.len());
    let mut body = Vec::new();
    parse::decode_chunked(&buf[..extent], &mut body);
    assert!(body.len() <= limits.max_body_bytes);
    assert_eq!(body, decode_chunked_reference(&buf[..extent]));
    assert_eq!(
        parse::chunked_extent(&buf[..extent], &limits),
        Ok(Some(extent))
    );
    for cut in cuts(extent, buf) {
        assert_eq!(
            parse::chunked_extent(&buf[..cut], &limits),
            Ok(None),
            "a prefix of {cut} bytes of a complete chunked body"
        );
    }
}

/// A service that records what the session hands it.
#[derive(Default)]
struct Recorder {
    events: Vec<String>,
}

impl Service for Recorder {
    type Msg = ();
    type Answer = ();

    fn is_draining(&self) -> bool {
        false
    }

    fn handle(
        &mut self,
        _conn: ConnId,
        head: &Head<'_, '_>,
        body: &[u8],
        _headers: &[u8],
        out: &mut Vec<u8>,
    ) -> Handled {
        self.events.push(format!(
            "{} {} {:?} {}",
            head.method, head.target, body, head.keep_alive
        ));
        out.extend_from_slice(b"HTTP/1.1 204 No Content\r\n\r\n");
        Handled::Answered {
            keep_alive: head.keep_alive,
            file: None,
        }
    }

    fn render_answer(&mut self, _: (), _: &Awaiting, _: &[u8], _: &mut Vec<u8>) {}

    fn reject(&mut self, _error: &HttpError, _out: &mut Vec<u8>) {
        // Which refusal can depend on how far the bytes got (431 for a head
        // already too long, 400 or 505 for a bad byte further on); that
        // there is one must not.
        self.events.push("reject".to_owned());
    }

    fn refusal(&mut self, _error: &HttpError) -> Vec<u8> {
        Vec::new()
    }

    fn on_message(&mut self, _msg: (), _now: Instant) {}

    fn next_answer(&mut self) -> Option<(ConnId, ())> {
        None
    }
}

/// Feeds `pieces` to a new session one receive at a time, the output sent
/// after each; returns what the service saw and whether the session closed.
fn run_session<'a>(pieces: impl Iterator<Item = &'a [u8]>, limits: &Limits) -> (Vec<String>, bool) {
    let mut session = Session::new(ConnId::default(), None);
    let mut service = Recorder::default();
    let mut out = Vec::new();
    let now = Instant::now();
    for piece in pieces {
        session.receive(piece, &mut out, &mut service, limits, now);
        // Output above the high-water mark holds requests back until sent.
        while !out.is_empty() {
            out.clear();
            session.resume(&mut out, &mut service, limits, now);
        }
    }
    (service.events, session.is_closing())
}

/// Pipelined requests on one connection: the requests a session hands to
/// its service, their bodies, and whether it closes, are the same however
/// the bytes are split into receives.
pub fn http_session(data: &[u8]) {
    let (limits, buf) = limits_from(data);
    let whole = run_session(std::iter::once(buf), &limits);
    let mut at: Vec<usize> = cuts(buf.len(), buf).collect();
    at.sort_unstable();
    at.dedup();
    let bounds: Vec<usize> = std::iter::once(0)
        .chain(at)
        .chain(std::iter::once(buf.len()))
        .collect();
    let split = run_session(bounds.windows(2).map(|w| &buf[w[0]..w[1]]), &limits);
    assert_eq!(whole, split, "the same bytes in other receives");
    let bytewise = run_session(buf.chunks(1).take(2048), &limits);
    if buf.len() <= 2048 {
        assert_eq!(whole, bytewise, "the same bytes one at a time");
    }
}

/// Percent-decoding of paths and queries: decoding what was encoded gives
/// it back, and a static path that passes is inside the root.
pub fn percent(data: &[u8]) {
    let encoded: String = data.iter().map(|b| format!("%{b:02x}")).collect();
    assert_eq!(crate::http::percent::decode(&encoded).as_deref(), Ok(data));
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::http::percent::decode(text);
    if let Ok(path) = crate::statics::decode_path(text) {
        assert!(!path.contains('\0') && !path.starts_with('/') && !path.contains("//"));
        assert!(path.split(['/', '\\']).all(|s| s != ".." && s != "."));
    }
}

/// `Range`, conditional and `Accept-Encoding` headers: a satisfiable range
/// lies inside the representation, a date that parses renders back to
/// itself, and a quality is a number from 0 to 1.
pub fn statics_headers(data: &[u8]) {
    use crate::statics::conditional::{self as c, Coding, RangeRequest};
    let (size, rest) = match data.split_first_chunk::<8>() {
        Some((size, rest)) => (u64::from_le_bytes(*size) >> (size[0] % 64), rest),
        None => (0, data),
    };
    if let RangeRequest::Partial(range) = c::parse_range(rest, size) {
        assert!(
            range.len > 0
                && range
                    .start
                    .checked_add(range.len)
                    .is_some_and(|e| e <= size)
        );
    }
    if let Some(seconds) = c::parse_http_date(rest) {
        let rendered = crate::http::date::render_imf_fixdate(seconds);
        assert_eq!(c::parse_http_date(&rendered), Some(seconds));
    }
    let _ = c::etag_list_matches(rest, "\"abc\"", true);
    let _ = c::etag_list_matches(rest, "\"abc\"", false);
    for coding in Coding::ALL {
        let q = c::accepted_quality(rest, coding);
        assert!((0.0..=1.0).contains(&q), "quality {q} for {coding:?}");
    }
}

/// serde_json numbers are equal when both are integers and equal, or as
/// floats within a relative 1e-12 (the two readers round the last bit of
/// a long decimal differently).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            match (x.as_i64(), y.as_i64(), x.as_u64(), y.as_u64()) {
                (Some(x), Some(y), _, _) => x == y,
                (_, _, Some(x), Some(y)) => x == y,
                _ => {
                    let (x, y) = (
                        x.as_f64().unwrap_or(f64::NAN),
                        y.as_f64().unwrap_or(f64::NAN),
                    );
                    x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs())
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

/// Differential: a body [`crate::json::parse_document`] accepts, serde_json
/// reads too, to the same value as the compact document stored for it;
/// that document is stored again unchanged; any string is escaped byte for
/// byte as serde_json escapes it.
pub fn json_document(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let mut ours = Vec::new();
        crate::json::write_json_string(text, &mut ours);
        assert_eq!(ours, serde_json::to_vec(text).expect("a string"));
    }
    let mut scratch = Vec::new();
    let Ok(doc) = crate::json::parse_document(data, &mut scratch) else {
        return;
    };
    let theirs: Value = serde_json::from_slice(data).expect("serde_json reads what we accepted");
    let stored: Value = serde_json::from_slice(&doc).expect("serde_json reads what we stored");
    assert!(same_json(&theirs, &stored), "{theirs} stored as {stored}");
    let again = crate::json::parse_document(&doc, &mut scratch);
    assert_eq!(
        again.as_deref(),
        Ok(&doc[..]),
        "a stored document is compact"
    );
}

/// RFC 7396 on serde_json values: the reference for [`merge_patch`].
fn merge_reference(target: &mut Value, patch: &Value) {
    let Value::Object(members) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    let Value::Object(target) = target else {
        unreachable!("made an object above");
    };
    for (key, value) in members {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_reference(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Splits an input at its first NUL: the two parts of a two-part target.
fn two_parts(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[]),
    }
}

/// Differential: a merge patch of a stored document (input: the document,
/// NUL, the patch) gives what RFC 7396 on serde_json values gives, as a
/// document that is stored again unchanged.
pub fn merge_patch(data: &[u8]) {
    let (target, patch) = two_parts(data);
    let mut scratch = Vec::new();
    let target = crate::json::parse_document(target, &mut scratch).ok();
    let Ok(merged) = crate::json::merge_patch(target.as_deref(), patch, &mut scratch) else {
        return;
    };
    let mut expected: Value = match &target {
        Some(doc) => serde_json::from_slice(doc).expect("a stored document"),
        None => Value::Null,
    };
    let patch: Value = serde_json::from_slice(patch).expect("serde_json reads the patch we took");
    merge_reference(&mut expected, &patch);
    let got: Value = serde_json::from_slice(&merged).expect("serde_json reads the merge");
    assert!(
        same_json(&expected, &got),
        "expected {expected}, merged {got}"
    );
    let again = crate::json::parse_document(&merged, &mut scratch);
    assert_eq!(
        again.as_deref(),
        Ok(&merged[..]),
        "a merge is a stored document"
    );
}

/// A field mask as a tree: a member asked for whole, or names inside it.
#[derive(Debug, Default)]
struct MaskTree(BTreeMap<String, Option<MaskTree>>);

impl MaskTree {
    fn insert(&mut self, path: &[&str]) {
        let (first, rest) = path.split_first().expect("a path has a name");
        if rest.is_empty() {
            self.0.insert((*first).to_owned(), None);
            return;
        }
        // `None` was asked for whole already.
        if let Some(inner) = self
            .0
            .entry((*first).to_owned())
            .or_insert(Some(MaskTree::default()))
        {
            inner.insert(rest);
        }
    }

    fn project(&self, doc: &serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for (name, inner) in &self.0 {
            match (doc.get(name), inner) {
                (Some(value), None) => {
                    out.insert(name.clone(), value.clone());
                }
                (Some(Value::Object(object)), Some(inner)) => {
                    let projected = inner.project(object);
                    if !projected.is_empty() {
                        out.insert(name.clone(), Value::Object(projected));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// Differential: a field mask (input: the list, NUL, a document) projects
/// a document to what the same mask does on serde_json values, and its
/// canonical text parses to itself.
pub fn field_mask(data: &[u8]) {
    let (list, doc) = two_parts(data);
    let Ok(list) = std::str::from_utf8(list) else {
        return;
    };
    let Ok(mask) = crate::json::FieldMask::parse(list) else {
        return;
    };
    let canonical = crate::json::FieldMask::parse(mask.canonical()).expect("canonical parses");
    assert_eq!(canonical.canonical(), mask.canonical());
    let mut scratch = Vec::new();
    let Ok(doc) = crate::json::parse_document(doc, &mut scratch) else {
        return;
    };
    let mut out = Vec::new();
    mask.project(&doc, &mut scratch, &mut out)
        .expect("a stored document projects");
    let mut tree = MaskTree::default();
    for path in list.split(',') {
        tree.insert(&path.split('.').collect::<Vec<_>>());
    }
    let Ok(Value::Object(object)) = serde_json::from_slice::<Value>(&doc) else {
        panic!("a stored document is an object");
    };
    let expected = Value::Object(tree.project(&object));
    let got: Value = serde_json::from_slice(&out).expect("serde_json reads the projection");
    assert!(
        same_json(&expected, &got),
        "expected {expected}, projected {got}"
    );
}

/// Rate-limit keys: the client address read from `Forwarded` or
/// `X-Forwarded-For` (input: a peer pick, then header lines) is the peer
/// when the peer is not a trusted proxy, and otherwise the peer or an
/// address the headers name; rule texts parse without panics.
pub fn limit_keys(data: &[u8]) {
    use crate::limit::{Cidr, KeySource, PathPattern, Rate};
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let peer = match pick % 4 {
        0 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        1 => IpAddr::V6(Ipv6Addr::LOCALHOST),
        2 => IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped()),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
    };
    let trusted = [
        Cidr::parse("10.0.0.0/8").expect("a CIDR"),
        Cidr::parse("::1").expect("an address"),
    ];
    let text = String::from_utf8_lossy(rest);
    let headers: Vec<Header<'_>> = rest
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let name = std::str::from_utf8(&line[..colon]).ok()?;
            Some(Header {
                name,
                value: line[colon + 1..].trim_ascii(),
            })
        })
        .collect();
    let client = crate::limit::policy::client_ip(peer, &headers, &trusted);
    if pick % 4 == 3 {
        assert_eq!(client, peer, "an untrusted peer is the client");
    }
    for line in text.lines() {
        let _ = Cidr::parse(line);
        let _ = KeySource::parse(line);
        let _ = Rate::parse(line);
        let _ = PathPattern::parse(line);
        if let Some(cidr) = Cidr::parse(line) {
            let _ = cidr.contains(client);
        }
    }
    let rules = crate::limit::Rules {
        policies: vec![crate::limit::Policy {
            name: "default".to_owned(),
            rate: Rate::parse("10/s").expect("a rate"),
            burst: 5,
        }],
        default_policy: Some(0),
        routes: Vec::new(),
        key: KeySource::Ip,
        trusted_proxies: trusted.to_vec(),
        exempt: Vec::new(),
        shadow: false,
        max_keys: 16,
    };
    if let Some(line) = text.lines().next() {
        let (method, path) = line.split_once(' ').unwrap_or(("GET", line));
        let _ = crate::limit::policy::policy_for(&rules, method, path);
    }
}

/// The TOML config file: any text resolves to a config or to an error, never a panic.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = crate::config::from_file_text(text);
}

//! Parsing a request head in place (slices into the connection's buffer) and framing its body.
//!
//! The head is parsed into a stack array of header slots, so no header is
//! copied or allocated: the common head by a strict fast path
//! (`http::fast`), anything else by `httparse`. Framing rules follow RFC 9112 §6 strictly:
//! anything that could let two parsers disagree about where a message ends
//! (request smuggling) is refused.

use std::mem::MaybeUninit;

use httparse::{Header, Status};

use super::error::HttpError;

/// Capacity of the stack array of header slots; `Limits::max_headers` may be lower.
pub const HEADER_SLOTS: usize = 100;

/// Size limits applied while parsing, from the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of request line plus headers.
    pub max_header_bytes: usize,
    /// Bytes of a decoded request body.
    pub max_body_bytes: usize,
    /// Number of header fields.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_header_bytes: 8 * 1024,
            max_body_bytes: 1024 * 1024,
            max_headers: 64,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// A parsed request head; every slice borrows the connection's buffer.
#[derive(Debug)]
pub struct Head<'b, 'h> {
    pub method: &'b str,
    /// Path and query as sent, e.g. `/v1/items?limit=3`.
    pub target: &'b str,
    /// The target up to `?`.
    pub path: &'b str,
    /// The target after `?`, if any.
    pub query: Option<&'b str>,
    pub version: Version,
    pub headers: &'h [Header<'b>],
    /// Bytes taken by the request line and headers, including the blank line.
    pub len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    pub expect_continue: bool,
}

impl<'b> Head<'b, '_> {
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Parses a request head at the start of `buf`.
///
/// `Ok(None)` means the head is not complete yet (and still within limits).
pub fn parse_head<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut [MaybeUninit<Header<'b>>; HEADER_SLOTS],
    limits: &Limits,
) -> Result<Option<Head<'b, 'h>>, HttpError> {
    let max_headers = limits.max_headers.min(HEADER_SLOTS);
    // The common head takes the strict fast path; anything else, httparse.
    let (method, target, minor, headers, len) =
        match super::fast::parse(buf, &mut slots[..max_headers]) {
            Some(parsed) => {
                // SAFETY: fast::parse initialized the first `parsed.headers`
                // slots with headers borrowing `buf`, and `slots` stays borrowed
                // for 'h.
                let headers: &'h [Header<'b>] = unsafe {
                    std::slice::from_raw_parts(slots.as_ptr().cast::<Header<'b>>(), parsed.headers)
                };
                (
                    parsed.method,
                    parsed.target,
                    parsed.minor,
                    headers,
                    parsed.len,
                )
            }
            None => {
                let mut request = httparse::Request::new(&mut []);
                let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
                    &mut request,
                    buf,
                    &mut slots[..max_headers],
                );
                let len = match parsed {
                    Ok(Status::Complete(len)) => len,
                    Ok(Status::Partial) => {
                        if buf.len() > limits.max_header_bytes {
                            return Err(HttpError::HeadersTooLarge {
                                limit: limits.max_header_bytes,
                            });
                        }
                        return Ok(None);
                    }
                    Err(httparse::Error::TooManyHeaders) => {
                        return Err(HttpError::TooManyHeaders { limit: max_headers })
                    }
                    Err(httparse::Error::Version) => return Err(HttpError::UnsupportedVersion),
                    Err(e) => return Err(HttpError::Malformed(describe(e))),
                };
                let (Some(method), Some(target), Some(minor)) =
                    (request.method, request.path, request.version)
                else {
                    return Err(HttpError::Malformed("incomplete request line"));
                };
                let headers: &'h [Header<'b>] = request.headers;
                (method, target, minor, headers, len)
            }
        };
    if len > limits.max_header_bytes {
        return Err(HttpError::HeadersTooLarge {
            limit: limits.max_header_bytes,
        });
    }
    if !(target.starts_with('/') || (target == "*" && method == "OPTIONS")) {
        return Err(HttpError::Malformed(
            "the request target must be a path starting with `/`",
        ));
    }
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };

    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut connection_close = false;
    let mut connection_keep_alive = false;
    let mut expect_continue = false;
    let mut hosts = 0usize;
    for header in headers {
        let name = header.name;
        // Dispatch on length first: most headers are none of these five.
        match name.len() {
            14 if name.eq_ignore_ascii_case("content-length") => {
                let value = parse_content_length(header.value)?;
                if content_length.is_some_and(|seen| seen != value) {
                    return Err(HttpError::AmbiguousFraming(
                        "two different Content-Length values",
                    ));
                }
                content_length = Some(value);
            }
            17 if name.eq_ignore_ascii_case("transfer-encoding") => {
                if transfer_encoding {
                    return Err(HttpError::AmbiguousFraming(
                        "more than one Transfer-Encoding header",
                    ));
                }
                check_transfer_encoding(header.value)?;
                transfer_encoding = true;
            }
            10 if name.eq_ignore_ascii_case("connection") => {
                for token in header.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    connection_close |= token.eq_ignore_ascii_case(b"close");
                    connection_keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if name.eq_ignore_ascii_case("expect") => {
                expect_continue = header
                    .value
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"100-continue");
            }
            4 if name.eq_ignore_ascii_case("host") => hosts += 1,
            _ => {}
        }
    }

    if version == Version::Http11 && hosts != 1 {
        return Err(HttpError::MissingHost);
    }
    let framing = match (transfer_encoding, content_length) {
        (true, Some(_)) => {
            return Err(HttpError::AmbiguousFraming(
                "Content-Length together with Transfer-Encoding",
            ))
        }
        (true, None) if version == Version::Http10 => {
            return Err(HttpError::AmbiguousFraming(
                "Transfer-Encoding in an HTTP/1.0 request",
            ))
        }
        (true, None) => Framing::Chunked,
        (false, Some(n)) if n > limits.max_body_bytes as u64 => {
            return Err(HttpError::BodyTooLarge {
                size: n,
                limit: limits.max_body_bytes,
            })
        }
        (false, Some(0)) | (false, None) => Framing::None,
        (false, Some(n)) => Framing::Length(n as usize),
    };
    let keep_alive = match version {
        Version::Http11 => !connection_close,
        Version::Http10 => connection_keep_alive && !connection_close,
    };
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    Ok(Some(Head {
        method,
        target,
        path,
        query,
        version,
        headers,
        len,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::Http11,
    }))
}

fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(HttpError::InvalidContentLength);
    }
    Ok(value
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')))
}

/// Only `chunked`, alone, is accepted: percore decodes no other coding, and a
/// coding list that does not end in `chunked` leaves the body unframed.
fn check_transfer_encoding(value: &[u8]) -> Result<(), HttpError> {
    let mut codings = value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        (Some(c), _) if !c.eq_ignore_ascii_case(b"chunked") => Err(
            HttpError::UnsupportedTransferCoding(String::from_utf8_lossy(c).into_owned()),
        ),
        _ => Err(HttpError::AmbiguousFraming(
            "`chunked` must be the only transfer coding",
        )),
    }
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid byte in a header name",
        httparse::Error::HeaderValue => "invalid byte in a header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in the request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// Finds where a chunked body that starts at `buf[0]` ends, without copying.
///
/// Returns the number of bytes the whole chunked body (chunks, last chunk and
/// trailers) takes, or `None` if more bytes are needed.
pub fn chunked_extent(buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
    let mut pos = 0usize;
    let mut body = 0u64;
    loop {
        match strict_chunk_size_line(&buf[pos..]) {
            Ok(true) => {}
            Ok(false) => return partial_chunk_header(buf.len() - pos, limits),
            Err(error) => return Err(error),
        }
        let (size_line, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(Status::Complete(found)) => found,
            Ok(Status::Partial) => return partial_chunk_header(buf.len() - pos, limits),
            Err(_) => return Err(HttpError::Malformed("invalid chunk size line")),
        };
        // The limit a partial size line meets (`partial_chunk_header`) holds
        // for a whole one too, however the bytes arrived. Found by fuzzing.
        if size_line > limits.max_header_bytes {
            return Err(HttpError::Malformed("chunk size line too long"));
        }
        pos += size_line;
        // Tiny chunks cost more on the wire than in the body; bound the wire too.
        if pos
            > limits
                .max_body_bytes
                .saturating_mul(2)
                .saturating_add(limits.max_header_bytes)
        {
            return Err(HttpError::ChunkedBodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
        if size == 0 {
            return Ok(trailers_end(&buf[pos..], limits)?.map(|t| pos + t));
        }
        body = body.saturating_add(size);
        if body > limits.max_body_bytes as u64 {
            return Err(HttpError::ChunkedBodyTooLarge {
                limit: limits.max_body_bytes,
            });
        }
        let size = size as usize;
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk data not followed by CRLF"));
        }
        pos += size + 2;
    }
}

fn partial_chunk_header(pending: usize, limits: &Limits) -> Result<Option<usize>, HttpError> {
    // A chunk-size line (with extensions) longer than a header block is abuse.
    if pending > limits.max_header_bytes {
        Err(HttpError::Malformed("chunk size line too long"))
    } else {
        Ok(None)
    }
}

/// Length of the trailer section including its final CRLF, if complete.
fn trailers_end(buf: &[u8], limits: &Limits) -> Result<Option<usize>, HttpError> {
    let mut pos = 0;
    loop {
        let Some(eol) = buf[pos..].windows(2).position(|w| w == b"\r\n") else {
            return partial_chunk_header(buf.len(), limits);
        };
        // The line's CRLF counts, as it does for a partial one.
        if pos + eol + 2 > limits.max_header_bytes {
            return Err(HttpError::HeadersTooLarge {
                limit: limits.max_header_bytes,
            });
        }
        if buf[pos..pos + eol]
            .iter()
            .any(|&b| b == b'\n' || b == b'\r')
        {
            return Err(HttpError::Malformed("a bare CR or LF in a trailer line"));
        }
        pos += eol + 2;
        if eol == 0 {
            return Ok(Some(pos));
        }
    }
}

/// Checks the chunk-size line at the start of `buf` more strictly than
/// httparse does: hex digits first, then only visible characters, spaces
/// and tabs (extensions), ended by CRLF. A proxy that reads a bare LF or a
/// control byte differently could otherwise frame the body differently.
/// `Ok(false)` means the line is not complete yet.
fn strict_chunk_size_line(buf: &[u8]) -> Result<bool, HttpError> {
    const BAD: HttpError = HttpError::Malformed("invalid chunk size line");
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return match buf.first() {
            Some(b) if !b.is_ascii_hexdigit() => Err(BAD),
            _ => Ok(false),
        };
    };
    if lf == 0 || buf[lf - 1] != b'\r' {
        return Err(BAD);
    }
    let line = &buf[..lf - 1];
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let rest_ok = line[digits..]
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    if digits == 0 || !rest_ok {
        return Err(BAD);
    }
    Ok(true)
}

/// Decodes a complete chunked body (as measured by `chunked_extent`) into `out`.
pub fn decode_chunked(mut buf: &[u8], out: &mut Vec<u8>) {
    out.clear();
    while let Ok(Status::Complete((size_line, size))) = httparse::parse_chunk_size(buf) {
        if size == 0 {
            return;
        }
        let start = size_line;
        let end = start + size as usize;
        out.extend_from_slice(&buf[start..end]);
        buf = &buf[end + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8]) -> Result<Option<(Framing, bool, bool, usize)>, HttpError> {
        let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
        parse_head(raw, &mut slots, &Limits::default())
            .map(|h| h.map(|h| (h.framing, h.keep_alive, h.expect_continue, h.len)))
    }

    #[test]
    fn simple_get_keeps_alive() {
        let raw = b"GET /json?x=1 HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut slots = [const { MaybeUninit::uninit() }; HEADER_SLOTS];
        let h = parse_head(raw, &mut slots, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!((h.method, h.path, h.query), ("GET", "/json", Some("x=1")));
        assert_eq!(h.len, raw.len());
        assert!(h.keep_alive);
        assert_eq!(h.header("HOST"), Some(&b"a"[..]));
    }

    #[test]
    fn partial_head_waits() {
        assert_eq!(head(b"GET /json HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(head(b"GE"), Ok(None));
    }

    #[test]
    fn http10_closes_unless_asked() {
        assert!(!head(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().1);
        let ka = head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(ka.unwrap().unwrap().1);
        let close = head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n");
        assert!(!close.unwrap().unwrap().1);
    }

    #[test]
    fn framing_rules() {
        let cl = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(cl.unwrap().unwrap().0, Framing::Length(5));
        let same =
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(same.unwrap().unwrap().0, Framing::Length(5));
        let te = head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n");
        assert_eq!(te.unwrap().unwrap().0, Framing::Chunked);
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let both = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(both, Err(HttpError::AmbiguousFraming(_))));
        let two =
            head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert!(matches!(two, Err(HttpError::AmbiguousFraming(_))));
        let sign = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n");
        assert_eq!(sign.unwrap_err(), HttpError::InvalidContentLength);
        let list = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n");
        assert_eq!(list.unwrap_err(), HttpError::InvalidContentLength);
        let chunked_twice =
            head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
        assert!(matches!(chunked_twice, Err(HttpError::AmbiguousFraming(_))));
        let not_last =
            head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n");
        assert!(matches!(not_last, Err(HttpError::AmbiguousFraming(_))));
        let te10 = head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(matches!(te10, Err(HttpError::AmbiguousFraming(_))));
        let space = head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n");
        assert!(matches!(space, Err(HttpError::Malformed(_))));
    }

    #[test]
    fn unsupported_coding_is_501() {
        let gzip = head(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(gzip.unwrap_err().status(), 501);
    }

    #[test]
    fn limits() {
        let big = head(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999\r\n\r\n");
        assert_eq!(big.unwrap_err().status(), 413);
        let mut long = b"GET /".to_vec();
        long.extend(std::iter::repeat_n(b'a', 9000));
        assert_eq!(head(&long).unwrap_err().status(), 431);
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..70 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(head(&many).unwrap_err().status(), 431);
    }

    #[test]
    fn host_is_required_once_in_http11() {
        assert_eq!(
            head(b"GET / HTTP/1.1\r\n\r\n").unwrap_err(),
            HttpError::MissingHost
        );
        let two = head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
        assert_eq!(two.unwrap_err(), HttpError::MissingHost);
    }

    #[test]
    fn bad_version_and_garbage() {
        assert_eq!(head(b"GET / HTTP/2.0\r\n\r\n").unwrap_err().status(), 505);
        assert_eq!(
            head(b"\x00\x01\x02 / HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
        assert_eq!(
            head(b"GET http://x/ HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn expect_continue_only_in_http11() {
        let e = head(
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n",
        );
        assert!(e.unwrap().unwrap().2);
    }

    #[test]
    fn chunked_bodies() {
        let limits = Limits::default();
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
        let end = chunked_extent(body, &limits).unwrap().unwrap();
        assert_eq!(&body[end..], b"NEXT");
        let mut out = Vec::new();
        decode_chunked(&body[..end], &mut out);
        assert_eq!(out, b"hello world");
        for cut in 0..end {
            assert_eq!(
                chunked_extent(&body[..cut], &limits),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert!(chunked_extent(b"5\r\nhelloXX0\r\n\r\n", &limits).is_err());
        // Smuggling shapes: a bare LF, an empty size, a control byte in an extension, a bare LF in a trailer.
        assert!(chunked_extent(b"5\nhello\r\n0\r\n\r\n", &limits).is_err());
        assert!(chunked_extent(b"\r\nhello\r\n0\r\n\r\n", &limits).is_err());
        assert!(chunked_extent(b"5;a\x01b\r\nhello\r\n0\r\n\r\n", &limits).is_err());
        assert!(chunked_extent(b"5;x\nq\r\nhello\r\n0\r\n\r\n", &limits).is_err());
        assert!(chunked_extent(b"0\r\nX: a\nb\r\n\r\n", &limits).is_err());
        // Tiny chunks are bounded on the wire, not just in the body.
        let tiny = Limits {
            max_body_bytes: 1000,
            max_header_bytes: 256,
            ..limits
        };
        let padded = b"1;padding-pad\r\nx\r\n".repeat(200);
        assert_eq!(
            chunked_extent(&padded, &tiny).unwrap_err().status(),
            413,
            "200 body bytes, 3800 on the wire"
        );
        assert_eq!(
            chunked_extent(&b"1\r\nx\r\n".repeat(100), &tiny),
            Ok(None),
            "600 wire bytes are fine"
        );
        assert!(chunked_extent(b"zz\r\n", &limits).is_err());
        // Found by fuzzing (fuzz/corpus/http_chunked): a size line longer
        // than the limit passed when it came whole, and not when cut.
        let short = Limits {
            max_header_bytes: 64,
            ..limits
        };
        let long_line = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(70));
        assert!(chunked_extent(long_line.as_bytes(), &short).is_err());
        assert!(chunked_extent(&long_line.as_bytes()[..70], &short).is_err());
        let trailer = format!("0\r\nX: {}\r\n\r\n", "t".repeat(59));
        assert_eq!(trailer.len() - 3, 66, "a trailer section of 66 bytes");
        assert!(chunked_extent(trailer.as_bytes(), &short).is_err());
        assert!(chunked_extent(&trailer.as_bytes()[..3 + 65], &short).is_err());
        let fits = format!("0\r\nX: {}\r\n\r\n", "t".repeat(57));
        assert_eq!(
            chunked_extent(fits.as_bytes(), &short),
            Ok(Some(fits.len()))
        );
        let small = Limits {
            max_body_bytes: 4,
            ..limits
        };
        assert_eq!(
            chunked_extent(b"5\r\nhello\r\n0\r\n\r\n", &small)
                .unwrap_err()
                .status(),
            413
        );
    }
}

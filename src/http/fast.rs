//! A strict fast path for the request heads nearly every client sends: ASCII throughout, CRLF lines, single spaces; anything else goes to `httparse`.
//!
//! It accepts a subset of what `httparse` accepts and produces exactly what
//! `httparse` would for it (`tests` below check that on random heads): a
//! method of token characters, one space, an ASCII target, one space,
//! `HTTP/1.0` or `HTTP/1.1`, CRLF; then header lines of a token name, a
//! colon, optional spaces or tabs, a value of visible ASCII, spaces and tabs
//! (trailing ones trimmed), CRLF; then an empty line. On anything else (a
//! partial head, a byte outside those sets, a bare LF, more headers than
//! slots) it answers `None`, and the caller asks `httparse`, which then
//! reports the partial head or the precise error. Why it exists: on a
//! pipelined `/plaintext` it takes a third of what `httparse` spends per
//! request, most of it the UTF-8 check `httparse` runs on every target
//! (README, *Benchmarks*).

use std::mem::MaybeUninit;

use httparse::Header;

/// A request line and the number of headers written into the slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Parsed<'b> {
    pub method: &'b str,
    pub target: &'b str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// Headers written into the first slots.
    pub headers: usize,
    /// Bytes of the head, its empty line included.
    pub len: usize,
}

/// `tchar` of RFC 9110 §5.6.2, as `httparse` has it.
const fn token_map() -> [bool; 256] {
    let mut map = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        map[b] = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        b += 1;
    }
    map
}

static TOKEN: [bool; 256] = token_map();

#[inline]
fn is_token(b: u8) -> bool {
    TOKEN[b as usize]
}

/// Visible ASCII, the bytes of an ASCII request target.
#[inline]
fn is_target(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// What a header value may hold here: tab, space and visible ASCII.
#[inline]
fn is_value(b: u8) -> bool {
    b == b'\t' || (0x20..=0x7e).contains(&b)
}

/// The first position at or after `from` whose byte is not a value byte
/// (`buf.len()` if none), eight bytes at a time while they are plain
/// (space or visible ASCII).
#[inline]
fn value_end(buf: &[u8], from: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while let Some(chunk) = buf.get(i..i + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte below 0x20, at or above 0x80, or equal to 0x7f sets its high bit here.
        let below_space = word.wrapping_sub(ONES * 0x20) & !word;
        let del = word ^ (ONES * 0x7f);
        let is_del = del.wrapping_sub(ONES) & !del;
        if (below_space | is_del | word) & HIGH != 0 {
            break;
        }
        i += 8;
    }
    while i < buf.len() && is_value(buf[i]) {
        i += 1;
    }
    i
}

/// Bytes already checked to be ASCII, as text.
#[inline]
fn ascii(bytes: &[u8]) -> &str {
    debug_assert!(bytes.is_ascii());
    // SAFETY: every caller passes bytes it checked one by one against an
    // ASCII-only set (token, target or header-name characters), and ASCII
    // is valid UTF-8.
    unsafe { std::str::from_utf8_unchecked(bytes) }
}

/// Parses a common request head at the start of `buf` into `slots`, or
/// answers `None` for `httparse` to parse (see the module docs).
pub(crate) fn parse<'b>(
    buf: &'b [u8],
    slots: &mut [MaybeUninit<Header<'b>>],
) -> Option<Parsed<'b>> {
    let mut i = 0;
    while i < buf.len() && is_token(buf[i]) {
        i += 1;
    }
    if i == 0 || *buf.get(i)? != b' ' {
        return None;
    }
    let method = ascii(&buf[..i]);
    i += 1;
    let start = i;
    while i < buf.len() && is_target(buf[i]) {
        i += 1;
    }
    if i == start || *buf.get(i)? != b' ' {
        return None;
    }
    let target = ascii(&buf[start..i]);
    i += 1;
    let minor = match buf.get(i..i + 10)? {
        b"HTTP/1.1\r\n" => 1,
        b"HTTP/1.0\r\n" => 0,
        _ => return None,
    };
    i += 10;
    let mut headers = 0;
    loop {
        if *buf.get(i)? == b'\r' {
            if *buf.get(i + 1)? != b'\n' {
                return None;
            }
            i += 2;
            break;
        }
        let name_start = i;
        while i < buf.len() && is_token(buf[i]) {
            i += 1;
        }
        if i == name_start || *buf.get(i)? != b':' {
            return None;
        }
        let name = ascii(&buf[name_start..i]);
        i += 1;
        while i < buf.len() && (buf[i] == b' ' || buf[i] == b'\t') {
            i += 1;
        }
        let value_start = i;
        i = value_end(buf, i);
        if *buf.get(i)? != b'\r' || *buf.get(i + 1)? != b'\n' {
            return None;
        }
        let mut value_stop = i;
        while value_stop > value_start && matches!(buf[value_stop - 1], b' ' | b'\t') {
            value_stop -= 1;
        }
        let slot = slots.get_mut(headers)?;
        *slot = MaybeUninit::new(Header {
            name,
            value: &buf[value_start..value_stop],
        });
        headers += 1;
        i += 2;
    }
    Some(Parsed {
        method,
        target,
        minor,
        headers,
        len: i,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A parsed head, owned: method, target, minor version, headers, length.
    type Owned = (String, String, u8, Vec<(String, Vec<u8>)>, usize);

    /// What httparse makes of `buf`, when it parses it completely.
    fn by_httparse(buf: &[u8]) -> Option<Owned> {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(buf) {
            Ok(httparse::Status::Complete(len)) => Some((
                request.method?.to_owned(),
                request.path?.to_owned(),
                request.version?,
                request
                    .headers
                    .iter()
                    .map(|h| (h.name.to_owned(), h.value.to_vec()))
                    .collect(),
                len,
            )),
            _ => None,
        }
    }

    fn by_fast(buf: &[u8]) -> Option<Owned> {
        let mut slots = [const { MaybeUninit::uninit() }; 16];
        let parsed = parse(buf, &mut slots)?;
        let headers = slots[..parsed.headers]
            .iter()
            // SAFETY: parse initialized the first `parsed.headers` slots.
            .map(|slot| unsafe { slot.assume_init_ref() })
            .map(|h| (h.name.to_owned(), h.value.to_vec()))
            .collect();
        Some((
            parsed.method.to_owned(),
            parsed.target.to_owned(),
            parsed.minor,
            headers,
            parsed.len,
        ))
    }

    #[test]
    fn the_common_heads_parse_as_httparse_parses_them() {
        let cases: &[&[u8]] = &[
            b"GET /plaintext HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
            b"GET / HTTP/1.0\r\n\r\n",
            b"POST /v1/jobs/webhook?delay=5s HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /x HTTP/1.1\r\nHost:h\r\nX-Empty:\r\nX-Spaces:   \t \r\nX-Trail: a b \t\r\n\r\n",
            b"GET /x HTTP/1.1\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\nAccept: */*\r\n\r\nGET /next",
            b"GET /x HTTP/1.1\r\nX-Tab: a\tb\tc d e f g h i j k l m n o p\r\n\r\n",
        ];
        for case in cases {
            let fast = by_fast(case);
            assert!(
                fast.is_some(),
                "the fast path takes {:?}",
                String::from_utf8_lossy(case)
            );
            assert_eq!(
                fast,
                by_httparse(case),
                "{:?}",
                String::from_utf8_lossy(case)
            );
        }
    }

    #[test]
    fn what_it_does_not_take_goes_to_httparse() {
        let cases: &[&[u8]] = &[
            b"GET /plaintext HTTP/1.1\r\nHost: h\r\n",   // partial
            b"GET /plaintext HTTP/1.1\r\nHost: h\r\n\r", // partial
            b"GET /plaintext HTTP/1.1\nHost: h\n\n",     // bare LF
            b"\r\nGET / HTTP/1.1\r\n\r\n",               // leading empty line
            b"GET  / HTTP/1.1\r\n\r\n",                  // two spaces
            b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",        // non-ASCII target
            b"GET / HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n", // non-ASCII value
            b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n",      // DEL in a value
            b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n",      // control in a value
            b"GET / HTTP/1.1\r\nX : a\r\n\r\n",          // space before the colon
            b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n",     // obs-fold
            b"GET / HTTP/2.0\r\n\r\n",                   // version
            b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n",        // CR alone in a value
        ];
        for case in cases {
            assert_eq!(by_fast(case), None, "{:?}", String::from_utf8_lossy(case));
        }
        let mut one_slot = [const { MaybeUninit::uninit() }; 1];
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\n\r\n", &mut one_slot),
            None,
            "more headers than slots: httparse says TooManyHeaders"
        );
    }

    /// The eight-at-a-time scan stops where the byte-at-a-time one does, for
    /// every byte at every position of a value.
    #[test]
    fn the_word_scan_stops_where_the_byte_scan_does() {
        for byte in 0..=255u8 {
            for at in 0..24 {
                let mut value = vec![b'v'; 24];
                value[at] = byte;
                value.extend_from_slice(b"\r\n");
                let scalar = value
                    .iter()
                    .position(|&b| !is_value(b))
                    .unwrap_or(value.len());
                assert_eq!(value_end(&value, 0), scalar, "byte {byte:#x} at {at}");
                let from_3 = value[3..]
                    .iter()
                    .position(|&b| !is_value(b))
                    .map_or(value.len(), |p| p + 3);
                assert_eq!(
                    value_end(&value, 3),
                    from_3,
                    "byte {byte:#x} at {at}, from 3"
                );
            }
        }
    }

    fn below(rng: &mut Rng, n: u64) -> u64 {
        rng.next_u64() % n
    }

    /// Random heads from pieces that are valid, nearly valid and invalid:
    /// whenever the fast path takes one, httparse makes the same of it.
    #[test]
    fn on_random_heads_it_agrees_with_httparse_whenever_it_answers() {
        const PIECES: &[&[u8]] = &[
            b"GET",
            b"POST",
            b"X",
            b" ",
            b"  ",
            b"/",
            b"/a",
            b"?q=1",
            b"%41",
            b"\xc3\xa9",
            b"\x7f",
            b"\x00",
            b"\t",
            b"HTTP/1.1",
            b"HTTP/1.0",
            b"HTTP/1.2",
            b"\r\n",
            b"\n",
            b"\r",
            b":",
            b"Host",
            b"Content-Length",
            b"X-A",
            b"value",
            b" v ",
            b"\r\n\r\n",
            b"\r\n ",
            b"@",
        ];
        let mut rng = Rng::seeded(0x5eed);
        let mut taken = 0;
        for _ in 0..200_000 {
            let mut head = Vec::new();
            // Mostly a valid request line, so the headers get exercised too.
            if below(&mut rng, 4) != 0 {
                head.extend_from_slice(b"GET /p HTTP/1.1\r\n");
            }
            for _ in 0..below(&mut rng, 12) {
                head.extend_from_slice(PIECES[below(&mut rng, PIECES.len() as u64) as usize]);
            }
            if below(&mut rng, 2) == 0 {
                head.extend_from_slice(b"\r\n\r\n");
            }
            if let Some(fast) = by_fast(&head) {
                taken += 1;
                assert_eq!(
                    Some(fast),
                    by_httparse(&head),
                    "{:?}",
                    String::from_utf8_lossy(&head)
                );
            }
        }
        assert!(
            taken > 1_000,
            "the generator reaches the fast path ({taken} taken)"
        );
    }
}

//! Byte scans around simd-json: the escapes it lets through and the error positions it gets wrong.
//!
//! simd-json 0.15 decodes a lone high surrogate (`"\ud800"` not followed by
//! `\u`) to U+0000 instead of failing, and reports errors inside strings at
//! an offset relative to the string (often 0). The success path here only
//! looks at backslashes; the error path, whose cost does not matter, walks
//! the body string by string to name the right byte.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of a byte of the result is set where `word` holds `byte`.
///
/// Exact for the lowest flagged byte; a byte above a true match may be
/// flagged falsely (the borrow runs upwards), which is why callers only ever
/// take the lowest flag.
#[inline]
fn bytes_equal(word: u64, byte: u8) -> u64 {
    let x = word ^ (ONES * u64::from(byte));
    x.wrapping_sub(ONES) & !x & HIGHS
}

/// Bit 7 of a byte of the result is set where `word` holds a byte below
/// `limit` (at most 0x80); same caveat as [`bytes_equal`].
#[inline]
fn bytes_below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(ONES * u64::from(limit)) & !word & HIGHS
}

/// The first index at or after `from` where `flags` (on eight bytes read
/// little-endian) or `single` (on the tail) says yes.
#[inline]
fn find(
    hay: &[u8],
    from: usize,
    flags: impl Fn(u64) -> u64,
    single: impl Fn(u8) -> bool,
) -> Option<usize> {
    let rest = hay.get(from..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut offset = from;
    for chunk in chunks.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let hits = flags(u64::from_le_bytes(word));
        if hits != 0 {
            return Some(offset + (hits.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| single(b))
        .map(|p| offset + p)
}

/// The first `"`, `\` or control byte (below 0x20) at or after `from`: the
/// bytes a JSON string must escape.
#[inline]
pub(super) fn find_needs_escape(hay: &[u8], from: usize) -> Option<usize> {
    find(
        hay,
        from,
        |w| bytes_equal(w, b'"') | bytes_equal(w, b'\\') | bytes_below(w, 0x20),
        |b| b == b'"' || b == b'\\' || b < 0x20,
    )
}

#[inline]
fn find_byte(hay: &[u8], from: usize, byte: u8) -> Option<usize> {
    find(hay, from, |w| bytes_equal(w, byte), |b| b == byte)
}

/// The four hex digits at `at` as a number.
fn hex4(raw: &[u8], at: usize) -> Option<u32> {
    let digits = raw.get(at..at + 4)?;
    digits
        .iter()
        .try_fold(0u32, |acc, &d| Some(acc * 16 + char::from(d).to_digit(16)?))
}

/// The length of the escape sequence starting with the backslash at `at`,
/// or what is wrong with it.
fn escape_len(raw: &[u8], at: usize) -> Result<usize, &'static str> {
    match raw.get(at + 1) {
        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => Ok(2),
        Some(b'u') => match hex4(raw, at + 2) {
            None => Err("a \\u escape needs four hex digits"),
            Some(0xd800..=0xdbff) => {
                let low = if raw.get(at + 6..at + 8) == Some(b"\\u") {
                    hex4(raw, at + 8)
                } else {
                    None
                };
                match low {
                    Some(0xdc00..=0xdfff) => Ok(12),
                    _ => Err("a UTF-16 high surrogate \\u escape without its low surrogate"),
                }
            }
            Some(0xdc00..=0xdfff) => {
                Err("a UTF-16 low surrogate \\u escape without a high surrogate before it")
            }
            Some(_) => Ok(6),
        },
        Some(_) => Err("an invalid escape sequence in a string"),
        None => Err("an unterminated string"),
    }
}

/// The first escape simd-json accepted but should not have: in a body it
/// parsed, every backslash opens an escape (none can stand outside a
/// string), so stepping from backslash to backslash stays in sync without
/// tracking quotes.
pub(super) fn first_bad_escape(raw: &[u8]) -> Option<(&'static str, usize)> {
    let mut from = 0;
    while let Some(at) = find_byte(raw, from, b'\\') {
        match escape_len(raw, at) {
            Ok(len) => from = at + len,
            Err(reason) => return Some((reason, at)),
        }
    }
    None
}

/// The first problem inside a string of a body simd-json rejected: a bad
/// escape, a raw control character, or a string that never ends.
pub(super) fn first_string_error(raw: &[u8]) -> Option<(&'static str, usize)> {
    let mut from = 0;
    loop {
        let open = find_byte(raw, from, b'"')?;
        let mut at = open + 1;
        loop {
            match raw.get(at) {
                None => return Some(("an unterminated string", open)),
                Some(b'"') => break,
                Some(b'\\') => match escape_len(raw, at) {
                    Ok(len) => at += len,
                    Err(reason) => return Some((reason, at)),
                },
                Some(0..=0x1f) => {
                    return Some((
                        "a raw control character in a string (it must be escaped)",
                        at,
                    ));
                }
                Some(_) => at += 1,
            }
        }
        from = at + 1;
    }
}

/// How the body's first value ends, judged from brackets and quotes only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// The body ends before its first value closes.
    Truncated,
    /// Something other than whitespace, at this index, follows the first value.
    Trailing(usize),
    /// Neither: the fault, if any, is inside the value.
    Whole,
}

/// Tells a body cut short or followed by garbage (`{} x`, `{}{}`) from
/// one whose brackets are wrong inside, on simd-json's error path.
pub(super) fn shape(raw: &[u8]) -> Shape {
    let Some(start) = raw.iter().position(|b| !is_whitespace(*b)) else {
        return Shape::Truncated;
    };
    let end = match raw[start] {
        b'{' | b'[' => {
            // The closers the open brackets expect, innermost last.
            let mut open = Vec::new();
            let mut at = start;
            loop {
                match raw.get(at) {
                    None => return Shape::Truncated,
                    Some(b'{') => open.push(b'}'),
                    Some(b'[') => open.push(b']'),
                    Some(close @ (b'}' | b']')) => {
                        if open.pop() != Some(*close) {
                            return Shape::Whole;
                        }
                        if open.is_empty() {
                            break at + 1;
                        }
                    }
                    Some(b'"') => match string_end(raw, at) {
                        Some(close) => at = close,
                        None => return Shape::Truncated,
                    },
                    Some(_) => {}
                }
                at += 1;
            }
        }
        b'"' => match string_end(raw, start) {
            Some(close) => close + 1,
            None => return Shape::Truncated,
        },
        b'}' | b']' | b',' | b':' => return Shape::Whole,
        _ => match raw[start..]
            .iter()
            .position(|b| is_whitespace(*b) || b"{}[]\",:".contains(b))
        {
            Some(len) => start + len,
            None => return Shape::Whole,
        },
    };
    match raw[end..].iter().position(|b| !is_whitespace(*b)) {
        Some(gap) => Shape::Trailing(end + gap),
        None => Shape::Whole,
    }
}

/// Where a number of many digits goes wrong: simd-json 0.15 takes a slow
/// path for numbers of 19 or more digits (fraction included) that does not
/// check what follows them, so `{"n":1844674407370955161%}` parsed as 1844674407370955161
/// (found by fuzzing, fuzz/regressions/json_document). Bodies without a
/// run of that many digits cost one pass over their bytes and nothing else.
pub(super) fn first_bad_long_number(raw: &[u8]) -> Option<usize> {
    const SLOW_PATH_DIGITS: usize = 16;
    // Digits counted across what a number is made of, so `12345.678...`
    // counts its fraction too.
    let mut digits = 0;
    let long = raw.iter().any(|&b| {
        digits = match b {
            b'0'..=b'9' => digits + 1,
            b'.' | b'e' | b'E' | b'+' | b'-' => digits,
            _ => 0,
        };
        digits >= SLOW_PATH_DIGITS
    });
    if !long {
        return None;
    }
    let mut at = 0;
    while at < raw.len() {
        match raw[at] {
            b'"' => at = string_end(raw, at)? + 1,
            b'-' | b'0'..=b'9' => {
                let end = match number_end(raw, at) {
                    Ok(end) => end,
                    Err(bad) => return Some(bad),
                };
                match raw.get(end) {
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') => at = end,
                    Some(_) => return Some(end),
                }
            }
            _ => at += 1,
        }
    }
    None
}

/// The end of the JSON number starting at `start`, or where its grammar
/// breaks: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
fn number_end(raw: &[u8], start: usize) -> Result<usize, usize> {
    let digits = |mut at: usize| {
        let from = at;
        while raw.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == from {
            Err(at)
        } else {
            Ok(at)
        }
    };
    let mut at = start;
    if raw.get(at) == Some(&b'-') {
        at += 1;
    }
    at = match raw.get(at) {
        Some(b'0') => at + 1,
        _ => digits(at)?,
    };
    if raw.get(at) == Some(&b'.') {
        at = digits(at + 1)?;
    }
    if matches!(raw.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(raw.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        at = digits(at)?;
    }
    Ok(at)
}

/// The index of the quote closing the string opened at `open`.
fn string_end(raw: &[u8], open: usize) -> Option<usize> {
    let mut at = open + 1;
    loop {
        match raw.get(at)? {
            b'"' => return Some(at),
            b'\\' => at += 2,
            _ => at += 1,
        }
    }
}

pub(super) fn is_whitespace(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_numbers_must_end_where_json_says() {
        for (body, bad) in [
            (&br#"{"n":1844674407370955161%}"#[..], Some(24)),
            (br#"{"a":0.8888888888888888888'8}"#, Some(26)),
            (br#"{"a":-9223372036854775808x}"#, Some(25)),
            (br#"{"a":12345678901234567890.}"#, Some(26)),
            (br#"{"a":1234567890123456789e}"#, Some(25)),
            (br#"{"a":01234567890123456789}"#, Some(6)),
            (
                br#"{"a":1844674407370955161,"b":[-0.12345678901234567890e+5]}"#,
                None,
            ),
            (br#"{"s":"1234567890123456789%","t":1}"#, None),
            (br#"{"s":"\"1234567890123456789%"}"#, None),
            (br#"{"a":1%}"#, None),
            (br#"{"a":72036.54771844203685)4}"#, Some(25)),
            (br#"{"":[-18446744007379.5161610.1]}"#, Some(28)),
        ] {
            assert_eq!(first_bad_long_number(body), bad, "{}", body.escape_ascii());
        }
    }

    #[test]
    fn finds_every_special_byte_at_every_offset() {
        for special in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
            for len in 0..40 {
                for at in 0..len {
                    let mut hay = vec![b'a'; len];
                    hay[at] = special;
                    assert_eq!(
                        find_needs_escape(&hay, 0),
                        Some(at),
                        "{special} at {at} of {len}"
                    );
                    assert_eq!(find_needs_escape(&hay, at + 1), None);
                }
            }
        }
    }

    #[test]
    fn takes_the_first_match_not_a_false_flag_above_it() {
        // 0x1f then 0x20: the borrow from the true match flags 0x20 too.
        let hay = [b'x', 0x1f, 0x20, b'"', 0x21, 0xff, 0x80, b'y', b'\\'];
        assert_eq!(find_needs_escape(&hay, 0), Some(1));
        assert_eq!(find_needs_escape(&hay, 2), Some(3));
        assert_eq!(find_needs_escape(&hay, 4), Some(8));
        let high = [0xe2u8, 0x82, 0xac, 0x7f, 0x80, 0xff, 0xc3, 0xa9, 0xc3, 0xa9];
        assert_eq!(find_needs_escape(&high, 0), None);
        assert_eq!(find_needs_escape(&high, 11), None);
    }

    #[test]
    fn checks_escapes() {
        assert_eq!(
            first_bad_escape(br#"{"a":"\ud83d\ude00 \\ud800 \u00e9"}"#),
            None
        );
        assert_eq!(
            first_bad_escape(br#"{"a":"x\ud800"}"#).map(|e| e.1),
            Some(7)
        );
        assert_eq!(
            first_bad_escape(br#"{"a":"\ud800\u0041"}"#).map(|e| e.1),
            Some(6)
        );
        assert_eq!(first_bad_escape(br#"{"a":"\udc00"}"#).map(|e| e.1), Some(6));
        assert_eq!(first_bad_escape(br#"{"a":"\u12"}"#).map(|e| e.1), Some(6));
        assert_eq!(first_bad_escape(b"\\"), Some(("an unterminated string", 0)));
    }

    #[test]
    fn locates_string_errors() {
        assert_eq!(
            first_string_error(b"{\"a\":\"b\x01\"}").map(|e| e.1),
            Some(7)
        );
        assert_eq!(first_string_error(br#"{"a":"\x"}"#).map(|e| e.1), Some(6));
        assert_eq!(first_string_error(br#"{"a":"b"#).map(|e| e.1), Some(5));
        assert_eq!(first_string_error(br#"{"a\"":"b\\"}"#), None);
    }

    #[test]
    fn tells_the_shape_of_a_broken_body() {
        assert_eq!(shape(b"{} x"), Shape::Trailing(3));
        assert_eq!(shape(b" {\"}\":[1]}{}"), Shape::Trailing(10));
        assert_eq!(shape(b"{\"a\":[}]"), Shape::Whole);
        assert_eq!(shape(b"{\"a\":[}"), Shape::Whole);
        assert_eq!(shape(b"{}  "), Shape::Whole);
        assert_eq!(shape(b"12 3"), Shape::Trailing(3));
        assert_eq!(shape(b"\"x\" 3"), Shape::Trailing(4));
        assert_eq!(shape(b"}"), Shape::Whole);
        assert_eq!(shape(b"{\"a\":[1,{"), Shape::Truncated);
        assert_eq!(shape(b"{\"a\":\"b\\\""), Shape::Truncated);
        assert_eq!(shape(b"  "), Shape::Truncated);
        assert_eq!(shape(b"tru"), Shape::Whole);
    }
}

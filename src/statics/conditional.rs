//! The HTTP rules that decide between 200, 206, 304, 412 and 416: validators, conditional requests, ranges, codings.

/// Parses an HTTP-date in the IMF-fixdate form (`Sun, 06 Nov 1994 08:49:37 GMT`) to Unix seconds.
///
/// The obsolete RFC 850 and asctime forms are not accepted; a date that does
/// not parse makes its condition ignored, as RFC 9110 §13.1.3 asks.
pub fn parse_http_date(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut parts = text.split(' ');
    let (_weekday, day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    // Digits only: `parse` would take a sign, and `08:-0053130008448402162:6`
    // overflowed the arithmetic below (found by fuzzing, statics_headers).
    let number = |text: &str, len: usize| {
        (text.len() == len && text.bytes().all(|b| b.is_ascii_digit()))
            .then(|| text.parse::<i64>().ok())
            .flatten()
    };
    let day = number(day, 2)?;
    let year = number(year, 4)?;
    let mut hms = time.split(':').map(|p| number(p, 2));
    let (h, m, s) = (hms.next()??, hms.next()??, hms.next()??);
    if hms.next().is_some() {
        return None;
    }
    if !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 || year < 1970 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + h * 3600 + m * 60 + s).ok()
}

/// Howard Hinnant's civil-to-days algorithm.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Does an `If-Match` / `If-None-Match` list match `etag`?
///
/// `weak` selects weak comparison (If-None-Match): `W/"x"` matches `"x"`.
/// Strong comparison (If-Match) never matches a weak tag.
pub fn etag_list_matches(list: &[u8], etag: &str, weak: bool) -> bool {
    let Ok(list) = std::str::from_utf8(list) else {
        return false;
    };
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        match candidate.strip_prefix("W/") {
            Some(tag) => weak && tag == etag,
            None => candidate == etag,
        }
    })
}

/// A byte range to serve, as offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub len: u64,
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve the whole representation (this is
    /// also the answer to several ranges, which RFC 9110 allows).
    Whole,
    Partial(ByteRange),
    Unsatisfiable,
}

/// Parses `bytes=A-B`, `bytes=A-` and `bytes=-N` against `size`.
pub fn parse_range(value: &[u8], size: u64) -> RangeRequest {
    let Ok(text) = std::str::from_utf8(value) else {
        return RangeRequest::Whole;
    };
    let Some(spec) = text.trim().strip_prefix("bytes=") else {
        return RangeRequest::Whole;
    };
    if spec.contains(',') {
        return RangeRequest::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Whole;
    };
    let number = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim().is_empty(), number(first), number(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(suffix)) => {
            if suffix == 0 || size == 0 {
                return RangeRequest::Unsatisfiable;
            }
            let len = suffix.min(size);
            RangeRequest::Partial(ByteRange {
                start: size - len,
                len,
            })
        }
        (false, Some(start), end) if last.trim().is_empty() || end.is_some() => {
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            let end = end.map_or(size - 1, |e| e.min(size - 1));
            if end < start {
                return RangeRequest::Whole;
            }
            RangeRequest::Partial(ByteRange {
                start,
                len: end - start + 1,
            })
        }
        _ => RangeRequest::Whole,
    }
}

/// A content coding percore can serve from a precompressed sibling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Zstd,
    Gzip,
}

impl Coding {
    /// In order of preference when the client accepts several equally.
    pub const ALL: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }

    /// The sibling file's suffix.
    pub fn suffix(self) -> &'static str {
        match self {
            Coding::Brotli => ".br",
            Coding::Zstd => ".zst",
            Coding::Gzip => ".gz",
        }
    }
}

/// The q-value `Accept-Encoding` gives `coding` (0 when refused or absent).
pub fn accepted_quality(accept_encoding: &[u8], coding: Coding) -> f32 {
    let Ok(text) = std::str::from_utf8(accept_encoding) else {
        return 0.0;
    };
    let mut wildcard = None;
    for item in text.split(',') {
        let mut parts = item.split(';');
        let name = parts.next().unwrap_or("").trim();
        let q = parts
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .map_or(Some(1.0), |q| qvalue(q.trim()));
        // An item whose q-value is not one (`q=15`, `q=nan`) is ignored.
        let Some(q) = q else {
            continue;
        };
        if name.eq_ignore_ascii_case(coding.token())
            || (coding == Coding::Gzip && name.eq_ignore_ascii_case("x-gzip"))
        {
            return q;
        }
        if name == "*" {
            wildcard = Some(q);
        }
    }
    wildcard.unwrap_or(0.0)
}

/// A q-value of RFC 9110 §12.4.2: `0` to `1` with at most three decimals.
/// Found by fuzzing: `parse::<f32>` alone took `15`, `nan` and `inf`.
fn qvalue(text: &str) -> Option<f32> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let well_formed = matches!(int, "0" | "1")
        && frac.len() <= 3
        && frac.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || frac.bytes().all(|b| b == b'0'));
    well_formed.then(|| text.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date(b"Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date(b"Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(parse_http_date(b"garbage"), None);
        // Signs, long fields and extra fields are not a date (a sign once
        // overflowed the arithmetic; found by fuzzing).
        for bad in [
            &b"Sun, 07 Nov 1994 08:-0053130008448402162:6 GMT"[..],
            b"Sun, 06 Nov 1994 +8:49:37 GMT",
            b"Sun, +6 Nov 1994 08:49:37 GMT",
            b"Sun, 06 Nov 1994 08:49:37:01 GMT",
            b"Sun, 06 Nov 1994 008:49:37 GMT",
        ] {
            assert_eq!(parse_http_date(bad), None, "{}", bad.escape_ascii());
        }
        let now = 1_795_000_000;
        assert_eq!(
            parse_http_date(&crate::http::date::render_imf_fixdate(now)),
            Some(now)
        );
    }

    #[test]
    fn etags() {
        assert!(etag_list_matches(br#""a", "b""#, "\"b\"", false));
        assert!(etag_list_matches(b"*", "\"x\"", false));
        assert!(etag_list_matches(br#"W/"b""#, "\"b\"", true));
        assert!(!etag_list_matches(br#"W/"b""#, "\"b\"", false));
        assert!(!etag_list_matches(br#""c""#, "\"b\"", true));
    }

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(
            parse_range(b"bytes=0-9", 100),
            Partial(ByteRange { start: 0, len: 10 })
        );
        assert_eq!(
            parse_range(b"bytes=90-", 100),
            Partial(ByteRange { start: 90, len: 10 })
        );
        assert_eq!(
            parse_range(b"bytes=-5", 100),
            Partial(ByteRange { start: 95, len: 5 })
        );
        assert_eq!(
            parse_range(b"bytes=-500", 100),
            Partial(ByteRange { start: 0, len: 100 })
        );
        assert_eq!(
            parse_range(b"bytes=50-1000", 100),
            Partial(ByteRange { start: 50, len: 50 })
        );
        assert_eq!(parse_range(b"bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range(b"bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range(b"items=0-1", 100), Whole);
        assert_eq!(parse_range(b"bytes=5-1", 100), Whole);
        assert_eq!(parse_range(b"bytes=x-1", 100), Whole);
    }

    #[test]
    fn accept_encoding() {
        assert_eq!(accepted_quality(b"gzip, br;q=0.5", Coding::Brotli), 0.5);
        assert_eq!(accepted_quality(b"gzip, br;q=0", Coding::Brotli), 0.0);
        assert_eq!(accepted_quality(b"*", Coding::Zstd), 1.0);
        assert_eq!(accepted_quality(b"identity", Coding::Gzip), 0.0);
        assert_eq!(accepted_quality(b"br;q=1.000", Coding::Brotli), 1.0);
        assert_eq!(accepted_quality(b"br;q=0.", Coding::Brotli), 0.0);
    }

    /// Found by fuzzing (fuzz/corpus/statics_headers): `br;q=15` was a
    /// quality of 15, and `q=nan` one that compares with nothing.
    #[test]
    fn a_quality_outside_rfc_syntax_is_ignored() {
        assert_eq!(accepted_quality(b"*;q=15, br;q=0.5", Coding::Brotli), 0.5);
        assert_eq!(accepted_quality(b"br;q=15", Coding::Brotli), 0.0);
        assert_eq!(accepted_quality(b"br;q=nan, *;q=0.2", Coding::Brotli), 0.2);
        for bad in ["inf", "-0", "1.5", "0.1234", "+1", "1.001", " ", "0x1"] {
            let header = format!("gzip;q={bad}");
            assert_eq!(
                accepted_quality(header.as_bytes(), Coding::Gzip),
                0.0,
                "{bad}"
            );
        }
    }
}

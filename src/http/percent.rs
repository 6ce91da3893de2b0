//! Strict percent-decoding (RFC 3986 §2.1) of paths and query values.

/// Why an escape could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadEscape {
    /// A `%` with fewer than two characters after it.
    Truncated,
    /// A `%` not followed by two hex digits.
    NotHex,
}

/// Decodes every `%XX` in `text`; any other byte stays as it is.
pub fn decode(text: &str) -> Result<Vec<u8>, BadEscape> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(BadEscape::Truncated)?;
            let value = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(BadEscape::NotHex)?;
            out.push(value);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_and_bad_ones_are_named() {
        assert_eq!(decode("a%20b%2Fc").unwrap(), b"a b/c");
        assert_eq!(decode("100%"), Err(BadEscape::Truncated));
        assert_eq!(decode("%4"), Err(BadEscape::Truncated));
        assert_eq!(decode("%zz"), Err(BadEscape::NotHex));
    }
}

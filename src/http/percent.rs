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
            // Two hex digits exactly: `from_str_radix` alone would take `%+1`.
            let (Some(high), Some(low)) = (hex_value(hex[0]), hex_value(hex[1])) else {
                return Err(BadEscape::NotHex);
            };
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
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
        assert_eq!(
            decode("%+1"),
            Err(BadEscape::NotHex),
            "a sign is not a hex digit"
        );
    }
}

//! Compact JSON out: strings escaped per RFC 8259, and values copied from a simd-json tape.

use simd_json::generator::BaseGenerator;
use simd_json::{Node, StaticNode};

use super::scan;

/// Appends `s` to `out` as a JSON string, quotes included.
///
/// Escapes exactly what RFC 8259 requires: `"`, `\` and U+0000 to U+001F
/// (the short forms `\b \f \n \r \t` where they exist, `\u00XX` otherwise),
/// the same bytes serde_json writes. Runs of bytes that need nothing are
/// found eight at a time and copied in one go.
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut run = 0;
    while let Some(at) = scan::find_needs_escape(bytes, run) {
        out.extend_from_slice(&bytes[run..at]);
        write_escape(bytes[at], out);
        run = at + 1;
    }
    out.extend_from_slice(&bytes[run..]);
    out.push(b'"');
}

fn write_escape(byte: u8, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let short = match byte {
        b'"' => b'"',
        b'\\' => b'\\',
        0x08 => b'b',
        0x0c => b'f',
        b'\n' => b'n',
        b'\r' => b'r',
        b'\t' => b't',
        _ => {
            let hex = [HEX[usize::from(byte >> 4)], HEX[usize::from(byte & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
            return;
        }
    };
    out.extend_from_slice(&[b'\\', short]);
}

/// How many tape nodes the value starting with `node` spans.
pub(super) fn span(node: &Node<'_>) -> usize {
    match node {
        Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
        Node::String(_) | Node::Static(_) => 1,
    }
}

/// The object key at `at`. simd-json's tape always has a string there; the
/// empty fallback only keeps this function total.
pub(super) fn key_at<'a>(nodes: &[Node<'a>], at: usize) -> &'a str {
    match nodes.get(at) {
        Some(Node::String(key)) => key,
        _ => "",
    }
}

/// Writes the value starting at `nodes[at]` compactly and returns the index
/// after it.
///
/// Recursion is bounded: every tape reaching here passed the depth check of
/// [`super::parse_in_place`].
pub(super) fn write_value(nodes: &[Node<'_>], at: usize, out: &mut Vec<u8>) -> usize {
    match nodes[at] {
        Node::String(s) => {
            write_json_string(s, out);
            at + 1
        }
        Node::Static(value) => {
            write_static(value, out);
            at + 1
        }
        Node::Array { len, .. } => {
            out.push(b'[');
            let mut next = at + 1;
            for n in 0..len {
                if n > 0 {
                    out.push(b',');
                }
                next = write_value(nodes, next, out);
            }
            out.push(b']');
            next
        }
        Node::Object { len, .. } => {
            out.push(b'{');
            let mut next = at + 1;
            for n in 0..len {
                if n > 0 {
                    out.push(b',');
                }
                write_json_string(key_at(nodes, next), out);
                out.push(b':');
                next = write_value(nodes, next + 1, out);
            }
            out.push(b'}');
            next
        }
    }
}

fn write_static(value: StaticNode, out: &mut Vec<u8>) {
    let mut scalars = Scalars(out);
    // Writing into a Vec cannot fail: the io::Results below are always Ok.
    let _ = match value {
        StaticNode::Null => scalars.write(b"null"),
        StaticNode::Bool(true) => scalars.write(b"true"),
        StaticNode::Bool(false) => scalars.write(b"false"),
        StaticNode::I64(n) => scalars.write_int(n),
        StaticNode::U64(n) => scalars.write_int(n),
        // simd-json rejects numbers beyond f64, so a parsed float is finite;
        // `null` keeps the output JSON should that ever change.
        StaticNode::F64(n) if !n.is_finite() => scalars.write(b"null"),
        StaticNode::F64(n) => scalars.write_float(n),
    };
}

/// Scalars through simd-json's own number formatting (itoa and ryu, shortest round trip)
/// without taking those crates as dependencies of our own.
struct Scalars<'a>(&'a mut Vec<u8>);

impl BaseGenerator for Scalars<'_> {
    type T = Vec<u8>;

    fn get_writer(&mut self) -> &mut Vec<u8> {
        self.0
    }

    fn write(&mut self, slice: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(slice);
        Ok(())
    }

    fn write_min(&mut self, _slice: &[u8], min: u8) -> std::io::Result<()> {
        self.0.push(min);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn escaped(s: &str) -> String {
        let mut out = Vec::new();
        write_json_string(s, &mut out);
        String::from_utf8(out).expect("escaping keeps UTF-8")
    }

    #[test]
    fn escapes_what_rfc_8259_requires() {
        assert_eq!(escaped(""), r#""""#);
        assert_eq!(escaped("plain"), r#""plain""#);
        assert_eq!(escaped(r#"say "hi""#), r#""say \"hi\"""#);
        assert_eq!(escaped(r"C:\dir"), r#""C:\\dir""#);
        assert_eq!(escaped("\u{8}\u{c}\n\r\t"), r#""\b\f\n\r\t""#);
        assert_eq!(escaped("\u{0}\u{1}\u{1f}"), r#""\u0000\u0001\u001f""#);
        assert_eq!(
            escaped("/ \u{7f} é € 😀 \u{2028}"),
            "\"/ \u{7f} é € 😀 \u{2028}\""
        );
    }

    #[test]
    fn escapes_like_serde_json_at_every_position() {
        let specials = [
            "\"", "\\", "\u{0}", "\n", "\u{1f}", "é", "😀", "\u{7f}", " ",
        ];
        for len in 0..20 {
            for at in 0..=len {
                for special in specials {
                    let mut s = "x".repeat(len);
                    s.insert_str(at, special);
                    s.push_str(special);
                    let expected = serde_json::to_string(&s).expect("a string serializes");
                    assert_eq!(escaped(&s), expected);
                }
            }
        }
    }

    #[test]
    fn appends() {
        let mut out = b"[".to_vec();
        write_json_string("a", &mut out);
        out.push(b',');
        write_json_string("b\"", &mut out);
        assert_eq!(out, b"[\"a\",\"b\\\"\"");
    }

    #[test]
    fn writes_numbers_the_shortest_way_back() {
        let mut out = Vec::new();
        for n in [
            StaticNode::I64(-42),
            StaticNode::I64(i64::MIN),
            StaticNode::U64(u64::MAX),
            StaticNode::F64(1.5),
            StaticNode::F64(100.0),
            StaticNode::F64(-0.0),
            StaticNode::F64(1e300),
            StaticNode::F64(f64::NAN),
            StaticNode::Bool(true),
            StaticNode::Null,
        ] {
            write_static(n, &mut out);
            out.push(b' ');
        }
        let text = String::from_utf8(out).expect("numbers are ASCII");
        assert_eq!(
            text,
            "-42 -9223372036854775808 18446744073709551615 1.5 100.0 -0.0 1e300 null true null "
        );
    }
}

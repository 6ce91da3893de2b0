//! JSON for the document store: request bodies checked into compact documents, field masks, merge patches.
//!
//! # One parser, read through its tape
//! Everything here parses with simd-json into its *tape*: a flat
//! `Vec<Node>` in document order whose strings borrow the input buffer
//! (simd-json unescapes them in place, which is why every entry point copies
//! its input into a caller's scratch buffer first). The tape and not
//! `BorrowedValue`, for two reasons found in simd-json 0.15:
//! - a borrowed object is a `halfbrown` map, which forgets member order once
//!   an object has more than 32 members, and documents keep their order;
//! - building a borrowed value recurses once per nesting level before any
//!   depth check can run, so a body of a million `[` would overflow the io
//!   core's stack. On the tape the depth check is a loop, and the writers
//!   here recurse only on tapes that passed it.
//!
//! # What a stored document is
//! Every read of a stored document ([`FieldMask::project`],
//! [`merge_patch`]) relies on what [`parse_document`] guarantees:
//! - one JSON object, nested at most [`MAX_DEPTH`] levels, with no key twice
//!   in one object (which of two equal keys wins differs between JSON
//!   readers, so the store refuses to guess);
//! - compact: no insignificant whitespace, strings escaped the one way
//!   [`write_json_string`] does (`\/` and `\u00e9` come back as `/` and `é`);
//! - numbers as simd-json reads them and ryu or itoa write them back: `1E2`
//!   is stored as `100.0`, `-0` as `0`, and a float keeps 17 significant
//!   digits. Integers outside `i64`/`u64` and floats beyond `f64` are
//!   refused as invalid numbers rather than rounded.

mod mask;
mod patch;
mod scan;
mod write;

pub use mask::FieldMask;
pub use patch::merge_patch;
pub use write::write_json_string;

use simd_json::{ErrorType, Node, StaticNode};
use thiserror::Error;

/// Deepest nesting of objects and arrays in a document, the document itself
/// being level 1. Also bounds the recursion of every writer here.
pub const MAX_DEPTH: usize = 64;
/// Most paths one field mask may list.
pub const MAX_FIELDS: usize = 64;
/// Most names in one field mask path (`a.b.c` has 3).
pub const MAX_FIELD_DEPTH: usize = 16;
/// Longest name in a field mask path, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a body, a stored document or a field list was refused, worded for
/// the client who sent it.
///
/// All but [`JsonError::Stored`] are the client's to fix (HTTP 400);
/// `Stored` means the store handed over bytes that are not a document, a
/// fault of the server.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JsonError {
    #[error("the body is empty")]
    Empty,
    #[error("the body is not valid JSON: {reason}{}", position(.at, .found))]
    Syntax {
        reason: &'static str,
        /// Byte offset in the body, when it is known.
        at: Option<usize>,
        /// The printable ASCII character found there, if any.
        found: Option<char>,
    },
    #[error("the body is nested deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("a document must be a JSON object, got {got}")]
    NotAnObject { got: &'static str },
    #[error("a merge patch for a document must be a JSON object, got {got}")]
    PatchNotAnObject { got: &'static str },
    #[error("the key `{key}` appears twice in one object")]
    DuplicateKey { key: String },
    #[error("the stored document cannot be read: it is {detail}")]
    Stored { detail: String },
    #[error("the field list is empty")]
    NoFields,
    #[error("the field list has {count} fields; the limit is {limit}")]
    TooManyFields { count: usize, limit: usize },
    #[error("field {index} is empty")]
    EmptyField { index: usize },
    #[error("field {index} (`{field}`) has an empty name")]
    EmptyName { index: usize, field: String },
    #[error("field {index} (`{field}`) is nested deeper than {limit} names")]
    FieldTooDeep {
        index: usize,
        field: String,
        limit: usize,
    },
    #[error("field {index} (`{field}`) has a name longer than {limit} bytes")]
    NameTooLong {
        index: usize,
        field: String,
        limit: usize,
    },
    #[error("field {index} (`{field}`) contains a control character")]
    ControlCharacter { index: usize, field: String },
}

impl JsonError {
    /// The message for the client; the same as `Display`.
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// Rewords an error about a stored document, which is not "the body".
    fn stored(self) -> Self {
        let detail = match self {
            Self::Empty => "empty".to_owned(),
            Self::Syntax { reason, at, found } => {
                format!("not valid JSON: {reason}{}", position(&at, &found))
            }
            Self::TooDeep { limit } => format!("nested deeper than {limit} levels"),
            Self::NotAnObject { got } => format!("{got}, not an object"),
            other => other.to_string(),
        };
        Self::Stored { detail }
    }
}

fn position(at: &Option<usize>, found: &Option<char>) -> String {
    match (at, found) {
        (Some(at), Some(found)) => format!(" at byte {at} (`{found}`)"),
        (Some(at), None) => format!(" at byte {at}"),
        (None, _) => String::new(),
    }
}

/// Checks that `body` is one JSON object and returns it compact, the form
/// the store keeps (see the module docs).
///
/// `scratch` is overwritten: simd-json needs a mutable copy of its input.
pub fn parse_document(body: &[u8], scratch: &mut Vec<u8>) -> Result<Vec<u8>, JsonError> {
    let nodes = parse(body, scratch, Origin::Client)?;
    if let Some(got) = not_an_object(&nodes) {
        return Err(JsonError::NotAnObject { got });
    }
    // About right: compacting mostly shrinks a body.
    let mut out = Vec::with_capacity(body.len());
    write::write_value(&nodes, 0, &mut out);
    Ok(out)
}

/// Who wrote the bytes being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// A request body: everything is checked.
    Client,
    /// A stored document, checked when it was a body: only what keeps the
    /// code here safe (its depth) is checked again.
    Stored,
}

/// Copies `raw` into `scratch` and parses it there.
fn parse<'a>(
    raw: &[u8],
    scratch: &'a mut Vec<u8>,
    origin: Origin,
) -> Result<Vec<Node<'a>>, JsonError> {
    scratch.clear();
    scratch.extend_from_slice(raw);
    parse_in_place(raw, scratch, origin)
}

/// Parses `buf`, a copy of `raw` (kept apart: simd-json rewrites `buf`, and
/// the checks and error messages read the original).
fn parse_in_place<'a>(
    raw: &[u8],
    buf: &'a mut [u8],
    origin: Origin,
) -> Result<Vec<Node<'a>>, JsonError> {
    if raw.iter().all(|b| scan::is_whitespace(*b)) {
        return Err(JsonError::Empty);
    }
    if raw.starts_with(b"\xef\xbb\xbf") {
        return Err(JsonError::Syntax {
            reason: "a byte order mark (JSON allows none)",
            at: Some(0),
            found: None,
        });
    }
    // simd-json skips a raw NUL between tokens (`{"a":1\0}` parses), and
    // JSON allows none anywhere: in a string it must be escaped. Found by
    // fuzzing (fuzz/corpus/json_document).
    if raw.contains(&0) {
        let at = raw.iter().position(|&b| b == 0);
        return Err(JsonError::Syntax {
            reason: "a NUL byte (JSON allows none unescaped)",
            at,
            found: None,
        });
    }
    let mut nodes = simd_json::to_tape(buf)
        .map_err(|error| syntax_error(&error, raw))?
        .0;
    if origin == Origin::Client {
        if let Some((reason, at)) = scan::first_bad_escape(raw) {
            return Err(JsonError::Syntax {
                reason,
                at: Some(at),
                found: None,
            });
        }
        match scan::long_numbers(raw) {
            Ok(None) => {}
            Ok(Some(numbers)) => exact_numbers(&mut nodes, raw, &numbers)?,
            Err(at) => {
                return Err(JsonError::Syntax {
                    reason: "an invalid number, or one beyond 64-bit integers and f64",
                    at: Some(at),
                    found: raw.get(at).map(|&b| char::from(b)),
                })
            }
        }
    }
    check_structure(&nodes, origin)?;
    Ok(nodes)
}

/// Gives every number of a body with a long one its correctly rounded
/// value, parsed again from its text (`numbers`, in document order, as
/// the tape holds them): simd-json's slow path for 19 or more digits is
/// not always exact. Found by fuzzing (fuzz/regressions/json_document).
fn exact_numbers(
    nodes: &mut [Node<'_>],
    raw: &[u8],
    numbers: &[(usize, usize)],
) -> Result<(), JsonError> {
    let misread = || JsonError::Syntax {
        reason: "a number could not be read exactly",
        at: None,
        found: None,
    };
    let mut texts = numbers.iter();
    for node in nodes.iter_mut() {
        let Node::Static(StaticNode::I64(_) | StaticNode::U64(_) | StaticNode::F64(_)) = node
        else {
            continue;
        };
        let &(start, end) = texts.next().ok_or_else(misread)?;
        let text = std::str::from_utf8(&raw[start..end]).map_err(|_| misread())?;
        let exact = if text.contains(['.', 'e', 'E']) {
            let value: f64 = text.parse().map_err(|_| misread())?;
            if !value.is_finite() {
                return Err(misread());
            }
            StaticNode::F64(value)
        } else if let Ok(value) = text.parse::<i64>() {
            StaticNode::I64(value)
        } else {
            StaticNode::U64(text.parse().map_err(|_| misread())?)
        };
        *node = Node::Static(exact);
    }
    if texts.next().is_some() {
        return Err(misread());
    }
    Ok(())
}

/// What the value at the start of `nodes` is, unless it is an object.
fn not_an_object(nodes: &[Node<'_>]) -> Option<&'static str> {
    match nodes.first()? {
        Node::Object { .. } => None,
        Node::Array { .. } => Some("an array"),
        Node::String(_) => Some("a string"),
        Node::Static(StaticNode::Null) => Some("null"),
        Node::Static(StaticNode::Bool(_)) => Some("a boolean"),
        Node::Static(_) => Some("a number"),
    }
}

/// Checks the nesting depth of a whole tape and, for a client's body, that
/// no object has a key twice. A loop over the flat tape: nothing here
/// recurses, whatever the body.
fn check_structure<'a>(nodes: &[Node<'a>], origin: Origin) -> Result<(), JsonError> {
    // ends[d] is the tape index just past the open container at depth d.
    let mut ends = [0usize; MAX_DEPTH];
    let mut depth = 0;
    let mut keys: Vec<&'a str> = Vec::new();
    for (at, node) in nodes.iter().enumerate() {
        while depth > 0 && ends[depth - 1] <= at {
            depth -= 1;
        }
        if let Node::Object { count, .. } | Node::Array { count, .. } = node {
            if depth == MAX_DEPTH {
                return Err(JsonError::TooDeep { limit: MAX_DEPTH });
            }
            ends[depth] = at + count + 1;
            depth += 1;
        }
        if let (Node::Object { len, .. }, Origin::Client) = (node, origin) {
            check_keys(nodes, at, *len, &mut keys)?;
        }
    }
    Ok(())
}

/// Objects up to this many members are checked pair by pair, larger ones
/// by sorting their keys.
const PAIRWISE_KEYS: usize = 16;

fn check_keys<'a>(
    nodes: &[Node<'a>],
    object: usize,
    len: usize,
    keys: &mut Vec<&'a str>,
) -> Result<(), JsonError> {
    keys.clear();
    let mut next = object + 1;
    for _ in 0..len {
        keys.push(write::key_at(nodes, next));
        next += 1 + nodes.get(next + 1).map_or(1, write::span);
    }
    let twice = if len <= PAIRWISE_KEYS {
        keys.iter()
            .enumerate()
            .find(|(n, key)| keys[..*n].contains(key))
            .map(|(_, key)| *key)
    } else {
        keys.sort_unstable();
        keys.windows(2)
            .find(|pair| pair[0] == pair[1])
            .map(|pair| pair[0])
    };
    match twice {
        Some(key) => Err(JsonError::DuplicateKey { key: shown(key) }),
        None => Ok(()),
    }
}

/// `text` fit for an error message: at most 64 characters, control
/// characters escaped.
fn shown(text: &str) -> String {
    const LIMIT: usize = 64;
    let mut out = String::new();
    for (n, c) in text.chars().enumerate() {
        if n == LIMIT {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Turns simd-json's error into one a client can act on.
///
/// simd-json names its error kinds in Rust terms and reports errors inside
/// strings at an offset within the string, so strings, truncation and
/// trailing data are located again from the body.
fn syntax_error(error: &simd_json::Error, raw: &[u8]) -> JsonError {
    let syntax = |reason, at: usize| JsonError::Syntax {
        reason,
        at: Some(at),
        found: raw
            .get(at)
            .map(|b| char::from(*b))
            .filter(char::is_ascii_graphic),
    };
    if let Err(bad) = std::str::from_utf8(raw) {
        return JsonError::Syntax {
            reason: "invalid UTF-8",
            at: Some(bad.valid_up_to()),
            found: None,
        };
    }
    let kind = error.error();
    let in_string = matches!(
        kind,
        ErrorType::InvalidEscape
            | ErrorType::InvalidUnicodeEscape
            | ErrorType::InvalidUnicodeCodepoint
            | ErrorType::InvalidUtf8
            | ErrorType::UnterminatedString
    ) || error.character().is_none();
    if in_string {
        if let Some((reason, at)) = scan::first_string_error(raw) {
            return JsonError::Syntax {
                reason,
                at: Some(at),
                found: None,
            };
        }
    }
    match scan::shape(raw) {
        scan::Shape::Truncated => {
            return JsonError::Syntax {
                reason: "the body ends before the JSON value does",
                at: None,
                found: None,
            };
        }
        scan::Shape::Trailing(at) => return syntax("more data after the JSON value", at),
        scan::Shape::Whole => {}
    }
    let reason = match kind {
        ErrorType::ExpectedObjectColon => "expected `:` after an object key",
        ErrorType::ExpectedMapComma | ErrorType::ExpectedMapEnd => "expected `,` or `}`",
        ErrorType::ExpectedArrayComma | ErrorType::ExpectedArrayContent => "expected `,` or `]`",
        ErrorType::ExpectedObjectContent => "expected a string key, `,` or `}`",
        ErrorType::ExpectedObjectKey | ErrorType::KeyMustBeAString | ErrorType::BadKeyType => {
            "expected a string key"
        }
        ErrorType::ExpectedNull => "expected `null`",
        ErrorType::ExpectedTrue => "expected `true`",
        ErrorType::ExpectedFalse => "expected `false`",
        ErrorType::InvalidNumber | ErrorType::InvalidExponent | ErrorType::ExpectedNumber => {
            "an invalid number, or one beyond 64-bit integers and f64"
        }
        ErrorType::InvalidEscape => "an invalid escape sequence in a string",
        ErrorType::InvalidUnicodeEscape | ErrorType::InvalidUnicodeCodepoint => {
            "an invalid \\u escape in a string"
        }
        ErrorType::InvalidUtf8 => "invalid UTF-8",
        ErrorType::UnterminatedString => "an unterminated string",
        ErrorType::Eof => "the body ends before the JSON value does",
        ErrorType::TrailingData => "more data after the JSON value",
        ErrorType::InputTooLarge => "the body is larger than simd-json's limit of 4 GiB",
        _ if error.character().is_some() => "unexpected character",
        _ => "malformed JSON",
    };
    if in_string {
        // Only reached when the scan found nothing: the offset would mislead.
        return JsonError::Syntax {
            reason,
            at: None,
            found: None,
        };
    }
    syntax(reason, error.index())
}

#[cfg(test)]
mod tests;

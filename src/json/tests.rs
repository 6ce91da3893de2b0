//! Tests across the module: bodies into documents, malformed input of every kind, and
//! projections and merges checked against serde_json reference code.

use serde_json::{Map, Value};

use super::*;

fn document(body: &str) -> Result<String, String> {
    parse_document(body.as_bytes(), &mut Vec::new())
        .map(|doc| String::from_utf8(doc).expect("documents are UTF-8"))
        .map_err(|error| error.to_string())
}

fn refused(body: &[u8]) -> String {
    match parse_document(body, &mut Vec::new()) {
        Ok(doc) => panic!(
            "{} was accepted as {}",
            body.escape_ascii(),
            doc.escape_ascii()
        ),
        Err(error) => error.to_string(),
    }
}

#[test]
fn compacts_a_body() {
    let body = "\r\n { \"a\" : [ 1 , 2 , { } , [ ] ] ,\n\t\"b\" : { \"c\" : \"d e\" } ,\"f\":true,\"g\":null } \n";
    assert_eq!(
        document(body).unwrap(),
        r#"{"a":[1,2,{},[]],"b":{"c":"d e"},"f":true,"g":null}"#
    );
    assert_eq!(document("{}").unwrap(), "{}");
}

#[test]
fn keeps_member_order_past_32_members() {
    let members: Vec<String> = (0..200).rev().map(|n| format!("\"m{n}\": {n}")).collect();
    let body = format!("{{ {} }}", members.join(", "));
    let expected = body.replace(' ', "");
    assert_eq!(document(&body).unwrap(), expected);
}

#[test]
fn rewrites_numbers_and_escapes_one_way() {
    assert_eq!(
        document(r#"{"a":1E2,"b":-0,"c":1.50,"d":-0.0,"e":1e-400,"f":-9223372036854775808,"g":18446744073709551615}"#)
            .unwrap(),
        r#"{"a":100.0,"b":0,"c":1.5,"d":-0.0,"e":0.0,"f":-9223372036854775808,"g":18446744073709551615}"#
    );
    assert_eq!(
        document(r#"{"\u0061":"\/\u00e9\ud83d\ude00\u0041\b\u000c\u001F\"\\"}"#).unwrap(),
        "{\"a\":\"/é😀A\\b\\f\\u001f\\\"\\\\\"}"
    );
    assert_eq!(
        document("{\"é\":\"\u{2028}\u{7f}\"}").unwrap(),
        "{\"é\":\"\u{2028}\u{7f}\"}"
    );
}

#[test]
fn refuses_what_is_not_an_object() {
    assert_eq!(refused(b""), "the body is empty");
    assert_eq!(refused(b" \r\n\t "), "the body is empty");
    assert_eq!(
        refused(b"[1]"),
        "a document must be a JSON object, got an array"
    );
    assert_eq!(
        refused(b" \"s\" "),
        "a document must be a JSON object, got a string"
    );
    assert_eq!(
        refused(b"-1.5"),
        "a document must be a JSON object, got a number"
    );
    assert_eq!(
        refused(b"true"),
        "a document must be a JSON object, got a boolean"
    );
    assert_eq!(
        refused(b"null"),
        "a document must be a JSON object, got null"
    );
}

#[test]
fn refuses_trailing_data_and_truncation() {
    let invalid = "the body is not valid JSON: ";
    assert_eq!(
        refused(b"{} x"),
        format!("{invalid}more data after the JSON value at byte 3 (`x`)")
    );
    assert_eq!(
        refused(b"{}{}"),
        format!("{invalid}more data after the JSON value at byte 2 (`{{`)")
    );
    assert_eq!(
        refused(b"{\"a\":1}}"),
        format!("{invalid}more data after the JSON value at byte 7 (`}}`)")
    );
    assert_eq!(
        refused(b"{\"a\":1} 2"),
        format!("{invalid}more data after the JSON value at byte 8 (`2`)")
    );
    assert_eq!(
        refused(b"1 2"),
        format!("{invalid}more data after the JSON value at byte 2 (`2`)")
    );
    for cut in [
        "{",
        "{\"a\"",
        "{\"a\":",
        "{\"a\":1",
        "{\"a\":[1,",
        "{\"a\":{\"b\":[]}",
    ] {
        assert_eq!(
            refused(cut.as_bytes()),
            format!("{invalid}the body ends before the JSON value does")
        );
    }
    for (cut, open) in [("{\"a", 1), ("{\"a\":\"b\\\"", 5)] {
        assert_eq!(
            refused(cut.as_bytes()),
            format!("{invalid}an unterminated string at byte {open}")
        );
    }
}

#[test]
fn names_syntax_errors_and_where_they_are() {
    let cases: [(&[u8], &str); 17] = [
        (
            b"{\"a\" 1}",
            "expected `:` after an object key at byte 5 (`1`)",
        ),
        (b"{\"a\":1,}", "expected a string key at byte 7 (`}`)"),
        (
            b"{\"a\":1 \"b\":2}",
            "expected a string key, `,` or `}` at byte 7 (`\"`)",
        ),
        (b"{\"a\":[1 2]}", "expected `,` or `]` at byte 8 (`2`)"),
        (
            b"{1:2}",
            "expected a string key, `,` or `}` at byte 1 (`1`)",
        ),
        (b"{\"a\":tru}", "expected `true` at byte 5 (`t`)"),
        (b"{\"a\":nul}", "expected `null` at byte 5 (`n`)"),
        (
            b"{\"a\":01}",
            "an invalid number, or one beyond 64-bit integers and f64 at byte 6 (`1`)",
        ),
        (b"{\"a\":[}", "unexpected character at byte 6 (`}`)"),
        (b"{\"a\":NaN}", "unexpected character at byte 5 (`N`)"),
        (b"}", "unexpected character at byte 0 (`}`)"),
        (
            b"{\"a\":\"b\x01\"}",
            "a raw control character in a string (it must be escaped) at byte 7",
        ),
        (
            b"{\"a\":\"b\\x\"}",
            "an invalid escape sequence in a string at byte 7",
        ),
        (
            b"{\"a\":\"\\u12\"}",
            "a \\u escape needs four hex digits at byte 6",
        ),
        (
            b"{\"a\":\"\\ud800\\u0041\"}",
            "a UTF-16 high surrogate \\u escape without its low surrogate at byte 6",
        ),
        (
            b"{\"a\":\"\\udc00\"}",
            "a UTF-16 low surrogate \\u escape without a high surrogate before it at byte 6",
        ),
        (b"{\"a\":\"\xff\"}", "invalid UTF-8 at byte 6"),
    ];
    for (body, reason) in cases {
        assert_eq!(
            refused(body),
            format!("the body is not valid JSON: {reason}"),
            "{}",
            body.escape_ascii()
        );
    }
}

#[test]
fn refuses_numbers_it_cannot_keep() {
    for number in [
        "18446744073709551616",
        "-9223372036854775809",
        "1e400",
        "-1e309",
        "1.",
        "-",
        "1e",
        ".5",
        "+1",
    ] {
        let message = refused(format!("{{\"n\":{number}}}").as_bytes());
        assert!(
            message.starts_with("the body is not valid JSON: "),
            "{number}: {message}"
        );
    }
}

#[test]
fn refuses_a_lone_surrogate_simd_json_would_turn_into_nul() {
    let expected = "the body is not valid JSON: a UTF-16 high surrogate \\u escape without its low surrogate at byte";
    assert_eq!(refused(br#"{"a":"x\ud800"}"#), format!("{expected} 7"));
    assert_eq!(refused(br#"{"a":"x\ud800y"}"#), format!("{expected} 7"));
    assert_eq!(refused(br#"{"a":"x\ud800\\"}"#), format!("{expected} 7"));
    assert_eq!(refused(br#"{"\\":"x\ud800\n"}"#), format!("{expected} 8"));
    // An escaped backslash before `u` is not an escape.
    assert_eq!(
        document(r#"{"a":"\\ud800"}"#).unwrap(),
        r#"{"a":"\\ud800"}"#
    );
    assert_eq!(document(r#"{"a":"\u0000"}"#).unwrap(), r#"{"a":"\u0000"}"#);
}

#[test]
fn refuses_a_byte_order_mark() {
    assert_eq!(
        refused(b"\xef\xbb\xbf{}"),
        "the body is not valid JSON: a byte order mark (JSON allows none) at byte 0"
    );
}

#[test]
fn limits_depth_to_64() {
    let nested = |depth: usize| {
        format!(
            "{}{{}}{}",
            "{\"a\":".repeat(depth - 1),
            "}".repeat(depth - 1)
        )
    };
    let flat = |depth: usize| {
        format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    assert!(document(&nested(64)).is_ok());
    assert!(document(&flat(64)).is_ok());
    let too_deep = "the body is nested deeper than 64 levels";
    assert_eq!(document(&nested(65)).unwrap_err(), too_deep);
    assert_eq!(document(&flat(65)).unwrap_err(), too_deep);
    // Deep enough to overflow any stack were it walked recursively.
    assert_eq!(document(&flat(200_000)).unwrap_err(), too_deep);
    assert_eq!(document(&nested(100_000)).unwrap_err(), too_deep);
    // Depth is counted per branch, not in total.
    let wide = format!(
        "{{{}}}",
        (0..100)
            .map(|n| format!("\"k{n}\":[[[[1]]]]"))
            .collect::<Vec<_>>()
            .join(",")
    );
    assert!(document(&wide).is_ok());
}

#[test]
fn refuses_a_key_twice_in_one_object() {
    assert_eq!(
        refused(br#"{"a":1,"a":2}"#),
        "the key `a` appears twice in one object"
    );
    assert_eq!(
        refused(br#"{"a":1,"\u0061":2}"#),
        "the key `a` appears twice in one object"
    );
    assert_eq!(
        refused(br#"{"x":{"b":[],"c":0,"b":{}}}"#),
        "the key `b` appears twice in one object"
    );
    assert_eq!(
        refused(b"{\"\\u0001\":1,\"\\u0001\":1}"),
        "the key `\\u{1}` appears twice in one object"
    );
    let mut members: Vec<String> = (0..40)
        .map(|n| format!("\"k{n}\":{{\"k{n}\":{n}}}"))
        .collect();
    assert!(document(&format!("{{{}}}", members.join(","))).is_ok());
    members.push("\"k17\":0".into());
    assert_eq!(
        refused(format!("{{{}}}", members.join(",")).as_bytes()),
        "the key `k17` appears twice in one object"
    );
    // The same key in sibling or nested objects is fine.
    assert!(document(r#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#).is_ok());
}

#[test]
fn message_is_display() {
    let error = parse_document(b"[]", &mut Vec::new()).unwrap_err();
    assert_eq!(error.message(), error.to_string());
    assert_eq!(error, JsonError::NotAnObject { got: "an array" });
}

#[test]
fn reuses_a_dirty_scratch_buffer() {
    let mut scratch = b"{\"left\":\"over\"} and more".to_vec();
    assert_eq!(
        parse_document(b"{\"a\":1}", &mut scratch).unwrap(),
        b"{\"a\":1}"
    );
    assert_eq!(
        parse_document(b"{\"b\":[true]}", &mut scratch).unwrap(),
        b"{\"b\":[true]}"
    );
    let merged = merge_patch(Some(b"{\"a\":1}"), b"{\"b\":2}", &mut scratch).unwrap();
    assert_eq!(merged, b"{\"a\":1,\"b\":2}");
}

#[test]
fn deep_documents_project_and_merge() {
    let doc = format!("{}1{}", "{\"a\":".repeat(64), "}".repeat(64));
    let doc = parse_document(doc.as_bytes(), &mut Vec::new()).unwrap();
    let mut out = Vec::new();
    let mask = FieldMask::parse(&vec!["a"; 16].join(".")).unwrap();
    mask.project(&doc, &mut Vec::new(), &mut out).unwrap();
    assert_eq!(out, doc);
    let merged = merge_patch(Some(&doc), &doc, &mut Vec::new()).unwrap();
    assert_eq!(merged, doc);
    let erase = format!("{}null{}", "{\"a\":".repeat(64), "}".repeat(64));
    let merged = merge_patch(Some(&doc), erase.as_bytes(), &mut Vec::new()).unwrap();
    assert_eq!(
        merged,
        format!("{}{}", "{\"a\":".repeat(63), "}".repeat(64))
            .replace(":}", ":{}")
            .as_bytes()
    );
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const KEYS: [&str; 9] = ["a", "b", "c", "id", "é", "q\"", "b\\s", "\u{1}", "sp ace"];
/// The keys a random mask names: all but the control character, which a
/// mask cannot hold.
const MASK_KEYS: [&str; 8] = ["a", "b", "c", "id", "é", "q\"", "b\\s", "sp ace"];
const CHARS: [&str; 14] = [
    "a", "Z", " ", "\"", "\\", "/", "\n", "\u{0}", "\u{1f}", "\u{7f}", "é", "€", "😀", "\u{2028}",
];

/// A random value; floats are multiples of 1/8 so that serde_json and
/// simd-json write them alike.
fn random_value(rng: &mut Rng, depth: usize) -> Value {
    let kinds = if depth == 0 { 5 } else { 7 };
    match rng.below(kinds) {
        0 => Value::Null,
        1 => Value::Bool(rng.below(2) == 0),
        2 => match rng.below(3) {
            0 => Value::from(rng.next() as i64),
            1 => Value::from(rng.next()),
            _ => Value::from(rng.below(2000) as i64 - 1000),
        },
        3 => Value::from((rng.below(1 << 20) as f64 - (1 << 19) as f64) / 8.0),
        4 => Value::String((0..rng.below(12)).map(|_| *rng.pick(&CHARS)).collect()),
        5 => Value::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(random_object(rng, depth - 1)),
    }
}

fn random_object(rng: &mut Rng, depth: usize) -> Map<String, Value> {
    (0..rng.below(7))
        .map(|_| (rng.pick(&KEYS).to_string(), random_value(rng, depth)))
        .collect()
}

fn random_mask(rng: &mut Rng) -> String {
    let paths: Vec<String> = (0..1 + rng.below(5))
        .map(|_| {
            (0..1 + rng.below(3))
                .map(|_| *rng.pick(&MASK_KEYS))
                .collect::<Vec<_>>()
                .join(".")
        })
        .collect();
    paths.join(",")
}

/// Reference projection, straight from the rules, on serde_json values.
fn reference_project(doc: &Map<String, Value>, mask: &str) -> Value {
    let paths: Vec<Vec<&str>> = mask
        .split(',')
        .map(|path| path.split('.').collect())
        .collect();
    Value::Object(project_level(doc, &paths))
}

fn project_level(doc: &Map<String, Value>, paths: &[Vec<&str>]) -> Map<String, Value> {
    let mut out = Map::new();
    // Walking the document keeps its order whatever map serde_json uses.
    for (key, value) in doc {
        let here: Vec<&Vec<&str>> = paths.iter().filter(|path| path[0] == key).collect();
        if here.is_empty() {
            continue;
        }
        if here.iter().any(|path| path.len() == 1) {
            out.insert(key.clone(), value.clone());
        } else if let Value::Object(inner) = value {
            let rest: Vec<Vec<&str>> = here.iter().map(|path| path[1..].to_vec()).collect();
            let projected = project_level(inner, &rest);
            if !projected.is_empty() {
                out.insert(key.clone(), Value::Object(projected));
            }
        }
    }
    out
}

/// RFC 7396's pseudo-code, on serde_json values.
fn reference_merge(target: Value, patch: &Value) -> Value {
    let Value::Object(patch) = patch else {
        return patch.clone();
    };
    let mut target = match target {
        Value::Object(target) => target,
        _ => Map::new(),
    };
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            let current = target.remove(key).unwrap_or(Value::Null);
            target.insert(key.clone(), reference_merge(current, value));
        }
    }
    Value::Object(target)
}

#[test]
fn documents_match_serde_json() {
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..500 {
        let value = Value::Object(random_object(&mut rng, 4));
        let body = serde_json::to_string_pretty(&value).unwrap();
        let doc = parse_document(body.as_bytes(), &mut Vec::new()).unwrap();
        assert_eq!(
            String::from_utf8(doc.clone()).unwrap(),
            serde_json::to_string(&value).unwrap()
        );
        // A stored document goes through unchanged.
        assert_eq!(parse_document(&doc, &mut Vec::new()).unwrap(), doc);
    }
}

#[test]
fn projections_match_the_reference() {
    let mut rng = Rng(0x5eed_0002);
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    let mut nonempty = 0;
    for _ in 0..2000 {
        let doc = random_object(&mut rng, 4);
        let stored = serde_json::to_vec(&doc).unwrap();
        let list = random_mask(&mut rng);
        let mask = FieldMask::parse(&list).unwrap();
        out.clear();
        mask.project(&stored, &mut scratch, &mut out).unwrap();
        let expected = serde_json::to_string(&reference_project(&doc, &list)).unwrap();
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            expected,
            "{list} of {doc:?}"
        );
        nonempty += usize::from(expected != "{}");
        // The canonical text masks the same way.
        let again = FieldMask::parse(mask.canonical()).unwrap();
        assert_eq!(again.canonical(), mask.canonical());
        let mut other = Vec::new();
        again.project(&stored, &mut scratch, &mut other).unwrap();
        assert_eq!(other, out);
    }
    assert!(
        nonempty > 300,
        "the random masks hit too rarely: {nonempty}"
    );
}

#[test]
fn merges_match_the_reference() {
    let mut rng = Rng(0x5eed_0003);
    let mut scratch = Vec::new();
    for n in 0..2000 {
        let target = Value::Object(random_object(&mut rng, 3));
        let patch = Value::Object(random_object(&mut rng, 3));
        let stored = serde_json::to_vec(&target).unwrap();
        let stored = (n % 10 != 0).then_some(&stored[..]);
        let merged = merge_patch(
            stored,
            serde_json::to_string(&patch).unwrap().as_bytes(),
            &mut scratch,
        )
        .unwrap();
        let start = if stored.is_some() {
            target.clone()
        } else {
            Value::Null
        };
        let expected = reference_merge(start, &patch);
        let merged_value: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(merged_value, expected, "{target} + {patch}");
        // The result is a valid stored document.
        assert_eq!(parse_document(&merged, &mut Vec::new()).unwrap(), merged);
    }
}

/// Bodies of every kind of brokenness: truncated and mutated documents and
/// random bytes. Any answer will do but a panic; an accepted body must come
/// out a document that reads back as itself.
#[test]
fn malformed_input_never_panics() {
    let mut rng = Rng(0x5eed_0004);
    let mut scratch = Vec::new();
    let mut seeds: Vec<Vec<u8>> = (0..20)
        .map(|_| serde_json::to_vec_pretty(&Value::Object(random_object(&mut rng, 3))).unwrap())
        .collect();
    seeds.push(br#"{"a":"\ud83d\ude00\u00e9\\\"","b":[1.5e3,-0,{"c":null}]}"#.to_vec());
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for seed in &seeds {
        for cut in 0..seed.len().min(120) {
            bodies.push(seed[..cut].to_vec());
        }
        for _ in 0..30 {
            let mut body = seed.clone();
            for _ in 0..1 + rng.below(3) {
                if body.is_empty() {
                    break;
                }
                let at = rng.below(body.len());
                match rng.below(4) {
                    0 => body[at] = rng.next() as u8,
                    1 => {
                        body[at] = *rng.pick(b"{}[]\",:\\u0123456789.eE-+ \ttruefalsenull\x00\xff")
                    }
                    2 => drop(body.remove(at)),
                    _ => body.insert(at, *rng.pick(b"{}[]\",:\\")),
                }
            }
            bodies.push(body);
        }
    }
    for _ in 0..400 {
        let len = rng.below(40);
        let alphabet: &[u8] = if rng.below(2) == 0 {
            b"{}[]\",:\\u0aenl1-. "
        } else {
            &[]
        };
        bodies.push(
            (0..len)
                .map(|_| {
                    if alphabet.is_empty() {
                        rng.next() as u8
                    } else {
                        *rng.pick(alphabet)
                    }
                })
                .collect(),
        );
    }
    assert!(bodies.len() > 2000, "{}", bodies.len());
    let masks = ["a", "b.c,a", "id,é.a", "a.a.a,b"].map(|list| FieldMask::parse(list).unwrap());
    let mut accepted = 0;
    for body in &bodies {
        let parsed = parse_document(body, &mut scratch);
        if let Ok(doc) = &parsed {
            accepted += 1;
            serde_json::from_slice::<Value>(doc).expect("an accepted body is stored as JSON");
            assert_eq!(&parse_document(doc, &mut scratch).unwrap(), doc);
        }
        // Broken bytes as a patch, and as a stored document (a corrupt store).
        let merged = merge_patch(Some(br#"{"a":{"b":1},"c":[2]}"#), body, &mut scratch);
        assert_eq!(merged.is_ok(), parsed.is_ok(), "{}", body.escape_ascii());
        let _ = merge_patch(Some(body), br#"{"a":{"x":null}}"#, &mut scratch);
        for mask in &masks {
            let mut out = Vec::new();
            match mask.project(body, &mut scratch, &mut out) {
                Ok(()) => {
                    drop(serde_json::from_slice::<Value>(&out).expect("projections are JSON"))
                }
                Err(_) => assert!(out.is_empty()),
            }
        }
        let _ = FieldMask::parse(&String::from_utf8_lossy(body));
    }
    assert!(
        accepted > 20,
        "too few bodies were valid to test much: {accepted}"
    );
}

/// Random field lists: never a panic, and an accepted list's canonical
/// text is a fixed point that every shuffle of the list reaches.
#[test]
fn field_lists_never_panic_and_canonicalise_stably() {
    let mut rng = Rng(0x5eed_0005);
    let alphabet = ["a", "b", ".", ",", ",", "é", "\u{1}", " ", "ab", "."];
    let mut accepted = 0;
    for _ in 0..3000 {
        let list: String = (0..rng.below(14)).map(|_| *rng.pick(&alphabet)).collect();
        let Ok(mask) = FieldMask::parse(&list) else {
            continue;
        };
        accepted += 1;
        let canonical = mask.canonical().to_owned();
        assert_eq!(FieldMask::parse(&canonical).unwrap(), mask, "{list:?}");
        let mut paths: Vec<&str> = list.split(',').collect();
        for n in (1..paths.len()).rev() {
            paths.swap(n, rng.below(n + 1));
        }
        paths.push(paths[0]);
        assert_eq!(
            FieldMask::parse(&paths.join(",")).unwrap().canonical(),
            canonical
        );
    }
    assert!(
        accepted > 300,
        "too few lists were valid to test much: {accepted}"
    );
}

/// Found by fuzzing (fuzz/corpus/json_document, merge_patch): simd-json
/// skipped a raw NUL between tokens, so `{"a":1\0}` was stored as `{"a":1}`.
#[test]
fn a_raw_nul_is_refused_anywhere() {
    for body in [
        &b"{\"a\":1\0}"[..],
        b"{\"a\":1\0\0\0,\"b\":2}",
        b"\0{}",
        b"{}\0",
        b"{\"a\":\"x\0y\"}",
    ] {
        assert!(refused(body).contains("NUL"), "{}", body.escape_ascii());
    }
    let patch = merge_patch(Some(b"{}"), b"{\"j\":8\0}", &mut Vec::new());
    assert!(patch.is_err());
}

/// Found by fuzzing (fuzz/regressions/json_document, merge_patch): after a
/// number of 19 or more digits simd-json accepted any byte, so
/// `{"n":1844674407370955161%}` was stored as `{"n":1844674407370955161}`.
#[test]
fn junk_after_a_long_number_is_refused() {
    for body in [
        &br#"{"n": 1844674407370955161%}"#[..],
        br#"{"a":0.8888888888888888888'88888}"#,
        br#"{"a":-9223372036854775808x}"#,
    ] {
        assert!(
            refused(body).contains("invalid number"),
            "{}",
            body.escape_ascii()
        );
    }
    assert!(merge_patch(
        Some(b"{}"),
        br#"{"a":0.8888888888888888888'8}"#,
        &mut Vec::new()
    )
    .is_err());
    let kept = parse_document(
        br#"{"n": 1844674407370955161, "s": "1234567890123456789%"}"#,
        &mut Vec::new(),
    );
    assert_eq!(
        kept.unwrap(),
        br#"{"n":1844674407370955161,"s":"1234567890123456789%"}"#
    );
}

//! JSON Merge Patch (RFC 7396) of a stored document, written straight from the two tapes.

use simd_json::{Node, StaticNode};

use super::write::{key_at, span, write_json_string, write_value};
use super::{not_an_object, parse_in_place, JsonError, Origin};

/// Applies `patch`, a request body, to `target`, a stored document (`None`
/// when there is none yet), and returns the compact result.
///
/// RFC 7396: a member whose patch value is `null` is removed, an object
/// merges into an object member recursively (into `{}` when the member is
/// absent or not an object), anything else (arrays included) replaces the
/// member. Members keep the target's order; new ones follow in the patch's
/// order. A patch that is not an object would replace the whole document
/// with a non-object, so it is refused. A target that is not an object is
/// treated as `{}`, as the RFC says.
///
/// `scratch` is overwritten: simd-json needs mutable copies of both inputs.
pub fn merge_patch(
    target: Option<&[u8]>,
    patch: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<Vec<u8>, JsonError> {
    scratch.clear();
    scratch.extend_from_slice(patch);
    scratch.extend_from_slice(target.unwrap_or_default());
    // About right: the result is mostly the target with the patch in it.
    let capacity = scratch.len();
    let (patch_buf, target_buf) = scratch.split_at_mut(patch.len());
    let patch_nodes = parse_in_place(patch, patch_buf, Origin::Client)?;
    if let Some(got) = not_an_object(&patch_nodes) {
        return Err(JsonError::PatchNotAnObject { got });
    }
    let target_nodes = match target {
        Some(raw) => parse_in_place(raw, target_buf, Origin::Stored).map_err(JsonError::stored)?,
        None => Vec::new(),
    };
    let patch = Object {
        nodes: &patch_nodes,
        at: 0,
    };
    let mut out = Vec::with_capacity(capacity);
    merge(Object::at(&target_nodes, 0), patch, &mut out);
    Ok(out)
}

/// An object on a tape.
#[derive(Clone, Copy)]
struct Object<'t, 'a> {
    nodes: &'t [Node<'a>],
    at: usize,
}

impl<'t, 'a> Object<'t, 'a> {
    /// The object at `nodes[at]`, if the value there is one.
    fn at(nodes: &'t [Node<'a>], at: usize) -> Option<Self> {
        matches!(nodes.get(at), Some(Node::Object { .. })).then_some(Object { nodes, at })
    }

    /// Its members in order: the key and the tape index of the value.
    fn members(self) -> impl Iterator<Item = (&'a str, usize)> + 't {
        let len = match self.nodes.get(self.at) {
            Some(Node::Object { len, .. }) => *len,
            _ => 0,
        };
        let mut key = self.at + 1;
        (0..len).map(move |_| {
            let member = (key_at(self.nodes, key), key + 1);
            key += 1 + span(&self.nodes[key + 1]);
            member
        })
    }
}

/// Patch objects with more members than this get a sorted index for the
/// lookups of the target's keys; smaller ones are scanned.
const SCANNED_MEMBERS: usize = 8;

/// Writes `target` (absent: `{}`) with the object `patch` merged in.
///
/// Recursion follows the patch's nesting, which passed the depth check.
fn merge(target: Option<Object<'_, '_>>, patch: Object<'_, '_>, out: &mut Vec<u8>) {
    // The patch's members in its order, each marked once a target member
    // has taken it.
    let mut members: Vec<(&str, usize, bool)> = patch
        .members()
        .map(|(key, value)| (key, value, false))
        .collect();
    let mut sorted: Vec<usize> = Vec::new();
    if members.len() > SCANNED_MEMBERS {
        sorted.extend(0..members.len());
        sorted.sort_unstable_by_key(|&n| members[n].0);
    }
    let find = |members: &[(&str, usize, bool)], key: &str| {
        if sorted.is_empty() {
            members.iter().position(|member| member.0 == key)
        } else {
            let found = sorted.binary_search_by(|&n| members[n].0.cmp(key));
            found.ok().map(|n| sorted[n])
        }
    };
    let mut first = true;
    out.push(b'{');
    if let Some(target) = target {
        for (key, value) in target.members() {
            match find(&members, key) {
                None => {
                    write_key(key, &mut first, out);
                    write_value(target.nodes, value, out);
                }
                Some(n) => {
                    members[n].2 = true;
                    let inner = Object::at(target.nodes, value);
                    write_patched(key, inner, patch.nodes, members[n].1, &mut first, out);
                }
            }
        }
    }
    for &(key, value, taken) in &members {
        if !taken {
            write_patched(key, None, patch.nodes, value, &mut first, out);
        }
    }
    out.push(b'}');
}

/// Writes member `key` as the patch value at `patch[value]` makes it:
/// nothing for `null`, a merge for an object, the value itself otherwise.
fn write_patched(
    key: &str,
    target: Option<Object<'_, '_>>,
    patch: &[Node<'_>],
    value: usize,
    first: &mut bool,
    out: &mut Vec<u8>,
) {
    match patch[value] {
        Node::Static(StaticNode::Null) => {}
        Node::Object { .. } => {
            write_key(key, first, out);
            merge(
                target,
                Object {
                    nodes: patch,
                    at: value,
                },
                out,
            );
        }
        _ => {
            write_key(key, first, out);
            write_value(patch, value, out);
        }
    }
}

fn write_key(key: &str, first: &mut bool, out: &mut Vec<u8>) {
    if !std::mem::take(first) {
        out.push(b',');
    }
    write_json_string(key, out);
    out.push(b':');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(target: Option<&str>, patch: &str) -> Result<String, String> {
        let merged = merge_patch(target.map(str::as_bytes), patch.as_bytes(), &mut Vec::new());
        merged
            .map(|out| String::from_utf8(out).expect("merging keeps UTF-8"))
            .map_err(|error| error.to_string())
    }

    fn ok(target: &str, patch: &str) -> String {
        apply(Some(target), patch).unwrap_or_else(|error| panic!("{target} + {patch}: {error}"))
    }

    /// RFC 7396 Appendix A, in order. The examples whose result is not an
    /// object are refused, since documents are objects.
    #[test]
    fn rfc_7396_appendix_a() {
        assert_eq!(ok(r#"{"a":"b"}"#, r#"{"a":"c"}"#), r#"{"a":"c"}"#);
        assert_eq!(ok(r#"{"a":"b"}"#, r#"{"b":"c"}"#), r#"{"a":"b","b":"c"}"#);
        assert_eq!(ok(r#"{"a":"b"}"#, r#"{"a":null}"#), r#"{}"#);
        assert_eq!(ok(r#"{"a":"b","b":"c"}"#, r#"{"a":null}"#), r#"{"b":"c"}"#);
        assert_eq!(ok(r#"{"a":["b"]}"#, r#"{"a":"c"}"#), r#"{"a":"c"}"#);
        assert_eq!(ok(r#"{"a":"c"}"#, r#"{"a":["b"]}"#), r#"{"a":["b"]}"#);
        assert_eq!(
            ok(r#"{"a":{"b":"c"}}"#, r#"{"a":{"b":"d","c":null}}"#),
            r#"{"a":{"b":"d"}}"#
        );
        assert_eq!(ok(r#"{"a":[{"b":"c"}]}"#, r#"{"a":[1]}"#), r#"{"a":[1]}"#);
        let refused = "a merge patch for a document must be a JSON object";
        assert_eq!(
            apply(Some(r#"["a","b"]"#), r#"["c","d"]"#),
            Err(format!("{refused}, got an array"))
        );
        assert_eq!(
            apply(Some(r#"{"a":"b"}"#), r#"["c"]"#),
            Err(format!("{refused}, got an array"))
        );
        assert_eq!(
            apply(Some(r#"{"a":"foo"}"#), "null"),
            Err(format!("{refused}, got null"))
        );
        assert_eq!(
            apply(Some(r#"{"a":"foo"}"#), r#""bar""#),
            Err(format!("{refused}, got a string"))
        );
        assert_eq!(ok(r#"{"e":null}"#, r#"{"a":1}"#), r#"{"e":null,"a":1}"#);
        assert_eq!(ok("[1,2]", r#"{"a":"b","c":null}"#), r#"{"a":"b"}"#);
        assert_eq!(
            ok("{}", r#"{"a":{"bb":{"ccc":null}}}"#),
            r#"{"a":{"bb":{}}}"#
        );
    }

    /// The worked example of RFC 7396 section 3.
    #[test]
    fn rfc_7396_section_3() {
        let target = r#"{
            "title": "Goodbye!",
            "author" : { "givenName" : "John", "familyName" : "Doe" },
            "tags":[ "example", "sample" ],
            "content": "This will be unchanged"
        }"#;
        let patch = r#"{
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": { "familyName": null },
            "tags": [ "example" ]
        }"#;
        assert_eq!(
            ok(target, patch),
            concat!(
                r#"{"title":"Hello!","author":{"givenName":"John"},"tags":["example"],"#,
                r#""content":"This will be unchanged","phoneNumber":"+01-123-456-7890"}"#
            )
        );
    }

    #[test]
    fn starts_from_an_empty_object_without_a_target() {
        assert_eq!(
            apply(None, r#"{"a":1,"b":null,"c":{"d":null,"e":[null]}}"#).unwrap(),
            r#"{"a":1,"c":{"e":[null]}}"#
        );
        assert_eq!(apply(None, "{}").unwrap(), "{}");
        assert_eq!(apply(Some("{}"), " { } ").unwrap(), "{}");
        assert_eq!(apply(Some("3"), r#"{"a":1}"#).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn keeps_target_order_and_appends_in_patch_order() {
        let target = r#"{"z":1,"y":{"b":1,"a":2},"x":3}"#;
        let patch = r#"{"n":1,"y":{"c":3,"b":null},"m":2,"x":null,"z":0}"#;
        assert_eq!(
            ok(target, patch),
            r#"{"z":0,"y":{"a":2,"c":3},"n":1,"m":2}"#
        );
    }

    #[test]
    fn merges_into_members_that_are_not_objects() {
        assert_eq!(
            ok(r#"{"a":[1]}"#, r#"{"a":{"b":null,"c":1}}"#),
            r#"{"a":{"c":1}}"#
        );
        assert_eq!(ok(r#"{"a":"s"}"#, r#"{"a":{}}"#), r#"{"a":{}}"#);
        assert_eq!(ok(r#"{"a":{"b":1}}"#, r#"{"a":{}}"#), r#"{"a":{"b":1}}"#);
        assert_eq!(ok(r#"{"a":{"b":1}}"#, r#"{"a":null,"c":null}"#), "{}");
    }

    #[test]
    fn handles_large_patches_through_the_sorted_index() {
        let target: Vec<String> = (0..50).map(|n| format!("\"k{n}\":{n}")).collect();
        let patch: Vec<String> = (25..75)
            .rev()
            .map(|n| {
                if n % 2 == 0 {
                    format!("\"k{n}\":null")
                } else {
                    format!("\"k{n}\":\"p\"")
                }
            })
            .collect();
        let merged = ok(
            &format!("{{{}}}", target.join(",")),
            &format!("{{{}}}", patch.join(",")),
        );
        let mut expected: Vec<String> = (0..50)
            .filter(|n| *n < 25 || n % 2 == 1)
            .map(|n| {
                if n < 25 {
                    format!("\"k{n}\":{n}")
                } else {
                    format!("\"k{n}\":\"p\"")
                }
            })
            .collect();
        expected.extend(
            (50..75)
                .rev()
                .filter(|n| n % 2 == 1)
                .map(|n| format!("\"k{n}\":\"p\"")),
        );
        assert_eq!(merged, format!("{{{}}}", expected.join(",")));
    }

    #[test]
    fn refuses_bad_patches() {
        assert_eq!(apply(None, ""), Err("the body is empty".into()));
        assert!(apply(None, "{")
            .unwrap_err()
            .starts_with("the body is not valid JSON"));
        assert_eq!(
            apply(Some("{}"), r#"{"a":1,"a":2}"#),
            Err("the key `a` appears twice in one object".into())
        );
        let deep = format!("{}1{}", r#"{"a":"#.repeat(65), "}".repeat(65));
        assert_eq!(
            apply(None, &deep),
            Err("the body is nested deeper than 64 levels".into())
        );
    }

    #[test]
    fn reports_a_broken_target_as_the_store_s_fault() {
        let error = merge_patch(Some(b"{\"a\":"), b"{}", &mut Vec::new()).unwrap_err();
        assert!(matches!(error, JsonError::Stored { .. }));
        assert!(error
            .to_string()
            .starts_with("the stored document cannot be read: it is not valid JSON"));
    }

    #[test]
    fn escapes_merged_strings() {
        let merged = ok(
            r#"{"\u0001":"\"","k":"\\"}"#,
            r#"{"n\n":"\u00e9\ud83d\ude00"}"#,
        );
        assert_eq!(
            merged,
            "{\"\\u0001\":\"\\\"\",\"k\":\"\\\\\",\"n\\n\":\"é😀\"}"
        );
    }
}

//! Field masks (`?fields=id,name,a.b`): parsing the list and projecting a stored document through it.

use std::ops::Range;

use simd_json::Node;

use super::write::{key_at, span, write_json_string, write_value};
use super::{parse, shown, JsonError, Origin, MAX_FIELDS, MAX_FIELD_DEPTH, MAX_NAME_BYTES};

/// Which members of a document a response keeps.
///
/// A list of comma-separated paths, each a dot-separated list of member
/// names: `id,name,price,a.b`. Names are taken literally (no trimming, no
/// escapes), so a key that contains `.` or `,` cannot be asked for. Asking
/// for a member and for something inside it (`a,a.b`) keeps the whole
/// member; asking twice is the same as asking once.
///
/// Parsed once into a trie of names; projecting walks the document's
/// members in their order and looks each one up among the names asked for
/// at its level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMask {
    /// The paths sorted name by name, without repeats or paths inside
    /// others, joined by `,`; the trie's names are ranges of it.
    canonical: String,
    /// The trie, each node's children contiguous and sorted by name.
    nodes: Vec<MaskNode>,
    /// The top-level names: `nodes[roots]`.
    roots: Range<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct MaskNode {
    /// The name, as a range of `canonical`.
    name: Range<usize>,
    /// The names asked for inside this member; empty when the whole member
    /// is asked for.
    children: Range<usize>,
}

impl FieldMask {
    /// Parses a field list, already percent-decoded.
    ///
    /// Errors name the offending field by its 1-based position.
    pub fn parse(list: &str) -> Result<FieldMask, JsonError> {
        if list.is_empty() {
            return Err(JsonError::NoFields);
        }
        let count = list.split(',').count();
        if count > MAX_FIELDS {
            return Err(JsonError::TooManyFields {
                count,
                limit: MAX_FIELDS,
            });
        }
        let mut paths = Vec::with_capacity(count);
        for (n, path) in list.split(',').enumerate() {
            check_path(n + 1, path)?;
            paths.push(path);
        }
        // Name by name, so that every path inside `p` sorts right after `p`
        // (plain string order would put `a-b` between `a` and `a.b`).
        paths.sort_unstable_by(|a, b| a.split('.').cmp(b.split('.')));
        let mut canonical = String::with_capacity(list.len());
        let mut spans: Vec<Range<usize>> = Vec::with_capacity(paths.len());
        let mut last: Option<&str> = None;
        for path in paths {
            if last.is_some_and(|last| path == last || is_inside(path, last)) {
                continue;
            }
            if !canonical.is_empty() {
                canonical.push(',');
            }
            spans.push(canonical.len()..canonical.len() + path.len());
            canonical.push_str(path);
            last = Some(path);
        }
        let mut nodes = Vec::with_capacity(spans.len() * 2);
        let roots = build_level(&canonical, &mut spans, &mut nodes);
        Ok(FieldMask {
            canonical,
            nodes,
            roots,
        })
    }

    /// The mask as a stable text: `b,a` and `a,b,a` both give `a,b`, and
    /// `a,a.b` gives `a`. Fit for a cache key.
    pub fn canonical(&self) -> &str {
        &self.canonical
    }

    /// Appends to `out` the object holding only the masked members of
    /// `doc`, a stored document.
    ///
    /// Members keep the document's order; a path asks for a nested object
    /// holding what it names (`a.b` gives `{"a":{"b":..}}`). A member the
    /// document lacks is left out, as is `a.b` when `a` is not an object,
    /// and so is `a` when nothing asked for inside it exists: the result
    /// holds exactly the values asked for and the objects around them, `{}`
    /// if there are none. On error `out` is left as it was.
    pub fn project(
        &self,
        doc: &[u8],
        scratch: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> Result<(), JsonError> {
        let nodes = parse(doc, scratch, Origin::Stored).map_err(JsonError::stored)?;
        if let Some(got) = super::not_an_object(&nodes) {
            return Err(JsonError::NotAnObject { got }.stored());
        }
        self.project_object(&nodes, 0, self.roots.clone(), out);
        Ok(())
    }

    /// Writes the object at `nodes[at]` through the names `level`; returns
    /// how many members it wrote.
    fn project_object(
        &self,
        nodes: &[Node<'_>],
        at: usize,
        level: Range<usize>,
        out: &mut Vec<u8>,
    ) -> usize {
        let Some(Node::Object { len, .. }) = nodes.get(at) else {
            return 0;
        };
        let wanted = level.len();
        let (mut written, mut matched) = (0, 0);
        out.push(b'{');
        let mut key = at + 1;
        for _ in 0..*len {
            let value = key + 1;
            let next = value + span(&nodes[value]);
            if let Some(node) = self.find(level.clone(), key_at(nodes, key)) {
                let mark = out.len();
                if written > 0 {
                    out.push(b',');
                }
                write_json_string(key_at(nodes, key), out);
                out.push(b':');
                let kept = if node.children.is_empty() {
                    write_value(nodes, value, out);
                    true
                } else {
                    self.project_object(nodes, value, node.children.clone(), out) > 0
                };
                if kept {
                    written += 1;
                } else {
                    out.truncate(mark);
                }
                matched += 1;
                // Keys are unique (parse_document refuses repeats), so once
                // every name has matched the rest of the object cannot.
                if matched == wanted {
                    break;
                }
            }
            key = next;
        }
        out.push(b'}');
        written
    }

    fn find(&self, level: Range<usize>, key: &str) -> Option<&MaskNode> {
        let siblings = &self.nodes[level];
        let found = siblings.binary_search_by(|node| self.canonical[node.name.clone()].cmp(key));
        found.ok().map(|n| &siblings[n])
    }
}

fn check_path(index: usize, path: &str) -> Result<(), JsonError> {
    if path.is_empty() {
        return Err(JsonError::EmptyField { index });
    }
    let field = || shown(path);
    if path.chars().any(char::is_control) {
        return Err(JsonError::ControlCharacter {
            index,
            field: field(),
        });
    }
    let mut depth = 0;
    for name in path.split('.') {
        depth += 1;
        if name.is_empty() {
            return Err(JsonError::EmptyName {
                index,
                field: field(),
            });
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(JsonError::NameTooLong {
                index,
                field: field(),
                limit: MAX_NAME_BYTES,
            });
        }
    }
    if depth > MAX_FIELD_DEPTH {
        return Err(JsonError::FieldTooDeep {
            index,
            field: field(),
            limit: MAX_FIELD_DEPTH,
        });
    }
    Ok(())
}

/// Is `path` a path inside `outer` (`a.b` inside `a`, not `ab`)?
fn is_inside(path: &str, outer: &str) -> bool {
    path.len() > outer.len() && path.starts_with(outer) && path.as_bytes()[outer.len()] == b'.'
}

/// Adds the trie level for `paths` (sorted, no path inside another; each a
/// range of `canonical` holding what is left of it below this level) and
/// returns the range of `nodes` it takes.
///
/// Siblings are pushed first and their children after, so that every
/// level is contiguous. Recursion is at most [`MAX_FIELD_DEPTH`] deep.
fn build_level(
    canonical: &str,
    paths: &mut [Range<usize>],
    nodes: &mut Vec<MaskNode>,
) -> Range<usize> {
    let first_name = |path: &Range<usize>| {
        let text = &canonical[path.clone()];
        let len = text.find('.').unwrap_or(text.len());
        path.start..path.start + len
    };
    let first = nodes.len();
    let mut start = 0;
    while start < paths.len() {
        let name = first_name(&paths[start]);
        let end = start
            + paths[start..]
                .iter()
                .take_while(|path| canonical[first_name(path)] == canonical[name.clone()])
                .count();
        // `children` holds the range of `paths` until the loop below.
        nodes.push(MaskNode {
            name,
            children: start..end,
        });
        start = end;
    }
    let level = first..nodes.len();
    for n in level.clone() {
        let group = nodes[n].children.clone();
        let name_len = nodes[n].name.len();
        let paths = &mut paths[group];
        // A group holds one path when it ends at this name: any other path
        // of the group would be inside it, and those were dropped.
        if paths.len() == 1 && paths[0].len() == name_len {
            nodes[n].children = 0..0;
            continue;
        }
        for path in paths.iter_mut() {
            path.start += name_len + 1;
        }
        nodes[n].children = build_level(canonical, paths, nodes);
    }
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(list: &str) -> String {
        FieldMask::parse(list).expect_err(list).to_string()
    }

    fn canonical(list: &str) -> String {
        FieldMask::parse(list).expect(list).canonical().to_owned()
    }

    fn project(list: &str, doc: &str) -> String {
        let mask = FieldMask::parse(list).expect(list);
        let mut out = b"<".to_vec();
        mask.project(doc.as_bytes(), &mut Vec::new(), &mut out)
            .expect(doc);
        let out = String::from_utf8(out).expect("projection keeps UTF-8");
        out.strip_prefix('<').expect("project appends").to_owned()
    }

    #[test]
    fn refuses_malformed_lists_naming_the_field() {
        assert_eq!(err(""), "the field list is empty");
        assert_eq!(err(","), "field 1 is empty");
        assert_eq!(err("a,,b"), "field 2 is empty");
        assert_eq!(err("a,b,"), "field 3 is empty");
        assert_eq!(err(".a"), "field 1 (`.a`) has an empty name");
        assert_eq!(err("x,a."), "field 2 (`a.`) has an empty name");
        assert_eq!(err("x,y,a..b"), "field 3 (`a..b`) has an empty name");
        assert_eq!(
            err("a,b\u{1}"),
            "field 2 (`b\\u{1}`) contains a control character"
        );
        assert_eq!(
            err("a\tb"),
            "field 1 (`a\\u{9}b`) contains a control character"
        );
        assert_eq!(
            err("a\u{85}"),
            "field 1 (`a\\u{85}`) contains a control character"
        );
        let many = vec!["f"; 65].join(",");
        assert_eq!(err(&many), "the field list has 65 fields; the limit is 64");
        assert!(FieldMask::parse(&vec!["f"; 64].join(",")).is_ok());
        let deep = vec!["d"; 17].join(".");
        assert_eq!(
            err(&deep),
            format!("field 1 (`{deep}`) is nested deeper than 16 names")
        );
        assert!(FieldMask::parse(&vec!["d"; 16].join(".")).is_ok());
        let long = "n".repeat(129);
        let message = err(&format!("a.{long}"));
        assert!(message.starts_with("field 1 (`a.nnn"), "{message}");
        assert!(
            message.ends_with("…`) has a name longer than 128 bytes"),
            "{message}"
        );
        assert!(FieldMask::parse(&"n".repeat(128)).is_ok());
        // 43 three-byte characters are 129 bytes.
        assert!(err(&"€".repeat(43)).contains("longer than 128 bytes"));
    }

    #[test]
    fn canonical_text_is_sorted_deduplicated_and_subsumed() {
        assert_eq!(canonical("b,a"), "a,b");
        assert_eq!(canonical("a,b,a"), "a,b");
        assert_eq!(canonical("a.b,a"), "a");
        assert_eq!(canonical("a,a.b,a.b.c"), "a");
        assert_eq!(canonical("a.b.c,a.b,x"), "a.b,x");
        assert_eq!(canonical("ab,a.b,a-b"), "a.b,a-b,ab");
        assert_eq!(canonical("a-b,a.b,a"), "a,a-b");
        assert_eq!(canonical("c.z,c.a,b"), "b,c.a,c.z");
        assert_eq!(canonical(" a"), " a");
        assert_eq!(canonical("é,e"), "e,é");
        for (a, b) in [("x.y,x.z,w", "w,x.z,x.y,x.z"), ("a,b.c", "b.c,a,a,b.c")] {
            assert_eq!(FieldMask::parse(a).unwrap(), FieldMask::parse(b).unwrap());
        }
    }

    #[test]
    fn keeps_only_the_masked_members_in_document_order() {
        let doc = r#"{"id":7,"name":"n","price":1.5,"tags":["a"],"a":{"b":1,"c":2}}"#;
        assert_eq!(project("price,id", doc), r#"{"id":7,"price":1.5}"#);
        assert_eq!(project("tags", doc), r#"{"tags":["a"]}"#);
        assert_eq!(project("a.c,name", doc), r#"{"name":"n","a":{"c":2}}"#);
        assert_eq!(project("a", doc), r#"{"a":{"b":1,"c":2}}"#);
        assert_eq!(project("a.b,a", doc), r#"{"a":{"b":1,"c":2}}"#);
        assert_eq!(project("a.c,a.b", doc), r#"{"a":{"b":1,"c":2}}"#);
        assert_eq!(project("missing", doc), "{}");
        assert_eq!(project("missing,id", doc), r#"{"id":7}"#);
        assert_eq!(project("a", "{}"), "{}");
    }

    #[test]
    fn leaves_out_paths_through_non_objects_and_empty_parents() {
        let doc = r#"{"a":5,"b":[{"c":1}],"d":{"e":{}},"f":null,"g":{"h":1}}"#;
        assert_eq!(project("a.x", doc), "{}");
        assert_eq!(project("b.c", doc), "{}");
        assert_eq!(project("f.x", doc), "{}");
        assert_eq!(project("g.x", doc), "{}");
        assert_eq!(project("d.e.x", doc), "{}");
        assert_eq!(project("d.e", doc), r#"{"d":{"e":{}}}"#);
        assert_eq!(project("g.x,g.h,a.x", doc), r#"{"g":{"h":1}}"#);
        assert_eq!(project("f", doc), r#"{"f":null}"#);
    }

    #[test]
    fn nests_deeply() {
        let path = vec!["k"; 16].join(".");
        let doc = format!("{}1{}", r#"{"k":"#.repeat(20), "}".repeat(20));
        let expected = format!(
            "{}{}{}",
            r#"{"k":"#.repeat(16),
            &doc[16 * 5..doc.len() - 16],
            "}".repeat(16)
        );
        assert_eq!(project(&path, &doc), expected);
    }

    #[test]
    fn matches_unescaped_keys_and_escapes_output() {
        let doc = r#"{"q\"k":"a\"b","b\\s":"\\","c":"\u0001\n","é":"\u00e9😀","\u0000":1}"#;
        assert_eq!(project("q\"k", doc), r#"{"q\"k":"a\"b"}"#);
        assert_eq!(project("b\\s", doc), r#"{"b\\s":"\\"}"#);
        assert_eq!(project("c", doc), r#"{"c":"\u0001\n"}"#);
        assert_eq!(project("é", doc), "{\"é\":\"é😀\"}");
        assert_eq!(
            project("é,c,b\\s,q\"k", doc),
            r#"{"q\"k":"a\"b","b\\s":"\\","c":"\u0001\n","é":"é😀"}"#
        );
    }

    #[test]
    fn keeps_order_past_32_members() {
        let members: Vec<String> = (0..100).rev().map(|n| format!("\"k{n}\":{n}")).collect();
        let doc = format!("{{{}}}", members.join(","));
        let out = project("k3,k99,k50,k0,k77", &doc);
        assert_eq!(out, r#"{"k99":99,"k77":77,"k50":50,"k3":3,"k0":0}"#);
    }

    #[test]
    fn appends_nothing_on_error() {
        let mask = FieldMask::parse("a").unwrap();
        let mut out = b"[".to_vec();
        for doc in [&b""[..], b"[1]", b"{\"a\":", b"nul"] {
            let error = mask.project(doc, &mut Vec::new(), &mut out).unwrap_err();
            assert!(matches!(error, JsonError::Stored { .. }), "{error}");
            assert_eq!(out, b"[");
        }
        let error = mask.project(b"[1]", &mut Vec::new(), &mut out).unwrap_err();
        assert_eq!(
            error.to_string(),
            "the stored document cannot be read: it is an array, not an object"
        );
    }

    #[test]
    fn reuses_scratch() {
        let mask = FieldMask::parse("a").unwrap();
        let mut scratch = b"left over from before".to_vec();
        let mut out = Vec::new();
        mask.project(br#"{"a":1}"#, &mut scratch, &mut out).unwrap();
        mask.project(br#"{"b":1,"a":[2]}"#, &mut scratch, &mut out)
            .unwrap();
        assert_eq!(out, br#"{"a":1}{"a":[2]}"#);
    }
}

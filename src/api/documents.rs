//! The document API: `/v1/{collection}/{key}` (GET, PUT, PATCH, DELETE) and scans of `/v1/{collection}`.
//!
//! Handlers validate on the core that read the request, then either answer a
//! cache hit at once (the key's owner is this core) or leave a
//! [`DataRequest`] for the document plane ([`crate::documents`]), whose gathered
//! parts its [`Plan`] turns into the response.

use std::borrow::Cow;

use bytes::Bytes;

use crate::app::{Ctx, Request};
use crate::documents::DocError;
use crate::documents::{DataRequest, DocName, Op, Part, Render};
use crate::http::{percent, Response};
use crate::json::{self, FieldMask};
use crate::store::thread::{Precondition, StoreOp, StoreOutcome, TagSet};
use crate::store::{scan_range, storage_key, Stored, SCAN_PART_BYTES, SCAN_RESPONSE_BYTES};

/// Longest collection name, in bytes.
pub const MAX_COLLECTION: usize = 64;
/// Longest key, in bytes after percent-decoding.
pub const MAX_KEY: usize = 512;
/// Most items one scan returns.
pub const MAX_SCAN: usize = 1000;
/// Items a scan returns without `limit`.
pub const DEFAULT_SCAN: usize = 100;
/// Collection names the job routes use.
const RESERVED: [&str; 2] = ["jobs", "dead"];

/// What a document route renders once every part is in.
#[derive(Debug, Clone)]
pub enum Plan {
    /// GET of one document: 412 if `if_match` fails, 304 if `if_none_match` matches.
    Get {
        if_match: Option<TagSet>,
        if_none_match: Option<TagSet>,
        name: DocName,
    },
    Put,
    Patch {
        name: DocName,
    },
    Delete {
        name: DocName,
    },
    /// A scan: one part per shard, merged in key order, at most `limit` items.
    Scan {
        limit: usize,
        collection_len: usize,
        mask: Option<FieldMask>,
    },
}

/// `GET /v1/{collection}/{key}[?fields=a,b.c]`
pub fn get<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let (collection, key) = match names(request) {
        Ok(names) => names,
        Err(error) => return response.error(&error, &mut ctx.scratch),
    };
    let mask = match query_value(request.query, "fields") {
        Ok(None) => None,
        Ok(Some(list)) => match FieldMask::parse(&list) {
            Ok(mask) => Some(mask),
            Err(error) => {
                return response.error(
                    &DocError::InvalidFields(format!("`fields`: {error}")),
                    &mut ctx.scratch,
                )
            }
        },
        Err(error) => return response.error(&error, &mut ctx.scratch),
    };
    let if_match = request.header("if-match").map(|v| parse_tags(v, false));
    let if_none_match = request.header("if-none-match").map(|v| parse_tags(v, true));
    let op = match ctx.plane.read(collection, &key, mask) {
        Ok(stored) => {
            return render_doc(&stored, if_match.as_ref(), if_none_match.as_ref(), response)
        }
        Err(op) => op,
    };
    ctx.defer_documents(DataRequest {
        plan: Box::new(Plan::Get {
            if_match,
            if_none_match,
            name: DocName::new(collection, &key),
        }),
        ops: vec![op],
    });
}

/// `PUT /v1/{collection}/{key}`: create or replace.
pub fn put<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let result = (|| {
        let (collection, key) = names(request)?;
        accept_json(request, false)?;
        let doc = document(request.body, ctx)?;
        let cond = precondition(request);
        Ok(store_op(ctx, collection, &key, |key| StoreOp::Put {
            key,
            doc,
            cond,
        }))
    })();
    defer_or_fail(result, Plan::Put, ctx, response);
}

/// `PATCH /v1/{collection}/{key}`: a JSON merge patch (RFC 7396) of an existing document.
pub fn patch<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let mut name = None;
    let result = (|| {
        let (collection, key) = names(request)?;
        name = Some(DocName::new(collection, &key));
        accept_json(request, true)?;
        // Checked here so a malformed patch never reaches the shard.
        let patch = json::parse_document(request.body, &mut ctx.scratch).map_err(|error| {
            DocError::InvalidDocument(format!("the merge patch is not usable: {error}"))
        })?;
        let cond = precondition(request);
        let max_bytes = ctx.plane.options().max_document_bytes;
        Ok(store_op(ctx, collection, &key, |key| StoreOp::Patch {
            key,
            patch: Bytes::from(patch),
            cond,
            max_bytes,
        }))
    })();
    let plan = Plan::Patch {
        name: name.unwrap_or_default(),
    };
    defer_or_fail(result, plan, ctx, response);
}

/// `DELETE /v1/{collection}/{key}`
pub fn delete<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let mut name = None;
    let result = (|| {
        let (collection, key) = names(request)?;
        name = Some(DocName::new(collection, &key));
        let cond = precondition(request);
        Ok(store_op(ctx, collection, &key, |key| StoreOp::Delete {
            key,
            cond,
        }))
    })();
    let plan = Plan::Delete {
        name: name.unwrap_or_default(),
    };
    defer_or_fail(result, plan, ctx, response);
}

/// `GET /v1/{collection}?limit=N&after=KEY[&fields=...]`: documents in key
/// order across every shard.
pub fn scan<S>(request: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let result = (|| {
        let collection = collection_name(request.params.get("collection").unwrap_or(""))?;
        let limit = match query_value(request.query, "limit")? {
            None => DEFAULT_SCAN,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=MAX_SCAN).contains(&n) => n,
                _ => {
                    return Err(DocError::BadRequest(format!(
                        "`limit` must be a whole number from 1 to {MAX_SCAN}, got `{text}`"
                    )))
                }
            },
        };
        let after = match query_value(request.query, "after")? {
            None => None,
            Some(after) => Some(check_key(after.into_bytes())?),
        };
        let mask = match query_value(request.query, "fields")? {
            None => None,
            Some(list) => Some(
                FieldMask::parse(&list)
                    .map_err(|error| DocError::InvalidFields(format!("`fields`: {error}")))?,
            ),
        };
        let ops = scan_every_shard(ctx, collection, after.as_deref(), limit);
        Ok(DataRequest {
            plan: Box::new(Plan::Scan {
                limit,
                collection_len: collection.len(),
                mask,
            }),
            ops,
        })
    })();
    match result {
        Ok(request) => ctx.defer_documents(request),
        Err(error) => response.error(&error, &mut ctx.scratch),
    }
}

/// One scan operation per shard: the first `limit` keys of `collection` after `after`.
pub fn scan_every_shard<S>(
    ctx: &Ctx<S>,
    collection: &str,
    after: Option<&str>,
    limit: usize,
) -> Vec<Op> {
    let (from, to) = scan_range(collection, after);
    (0..ctx.plane.map().shards())
        .map(|shard| Op::Store {
            shard,
            op: StoreOp::Scan {
                from: from.clone(),
                to: to.clone(),
                limit,
            },
        })
        .collect()
}

fn defer_or_fail<S>(
    result: Result<Op, DocError>,
    plan: Plan,
    ctx: &mut Ctx<S>,
    response: &mut Response<'_>,
) {
    match result {
        Ok(op) => {
            ctx.defer_documents(DataRequest {
                plan: Box::new(plan),
                ops: vec![op],
            });
        }
        Err(error) => response.error(&error, &mut ctx.scratch),
    }
}

fn store_op<S>(
    ctx: &mut Ctx<S>,
    collection: &str,
    key: &str,
    make: impl FnOnce(Vec<u8>) -> StoreOp,
) -> Op {
    let shard = ctx
        .plane
        .map()
        .shard_of(collection.as_bytes(), key.as_bytes());
    let mut storage = Vec::with_capacity(collection.len() + key.len() + 1);
    storage_key(collection, key, &mut storage);
    Op::Store {
        shard,
        op: make(storage),
    }
}

/// The validated collection and percent-decoded key of a document route.
/// Borrowed from the request unless the key has percent-escapes.
fn names<'r>(request: &Request<'r>) -> Result<(&'r str, Cow<'r, str>), DocError> {
    let collection = collection_name(request.params.get("collection").unwrap_or(""))?;
    let raw = request.params.get("key").unwrap_or("");
    if !raw.contains('%') {
        return Ok((collection, Cow::Borrowed(check_key_text(raw)?)));
    }
    let decoded = percent::decode(raw)
        .map_err(|_| DocError::InvalidKey(format!("key `{raw}` has a malformed percent-escape")))?;
    Ok((collection, Cow::Owned(check_key(decoded)?)))
}

fn collection_name(name: &str) -> Result<&str, DocError> {
    if name.is_empty() || name.len() > MAX_COLLECTION {
        return Err(DocError::InvalidKey(format!(
            "a collection name is 1 to {MAX_COLLECTION} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        || name.starts_with('.')
    {
        return Err(DocError::InvalidKey(format!(
            "collection `{name}` may hold only letters, digits, `_`, `-` and `.` (not first)"
        )));
    }
    if RESERVED.contains(&name) {
        return Err(DocError::InvalidKey(format!(
            "collection name `{name}` is reserved for the job routes"
        )));
    }
    Ok(name)
}

fn check_key(decoded: Vec<u8>) -> Result<String, DocError> {
    let key = String::from_utf8(decoded)
        .map_err(|_| DocError::InvalidKey("a key must be UTF-8 once percent-decoded".into()))?;
    check_key_text(&key)?;
    Ok(key)
}

fn check_key_text(key: &str) -> Result<&str, DocError> {
    if key.is_empty() || key.len() > MAX_KEY {
        return Err(DocError::InvalidKey(format!(
            "a key is 1 to {MAX_KEY} bytes after percent-decoding, got {}",
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(DocError::InvalidKey(
            "a key may not hold control characters".into(),
        ));
    }
    Ok(key)
}

/// The percent-decoded value of `name` in a query string, if present.
pub fn query_value(query: Option<&str>, name: &str) -> Result<Option<String>, DocError> {
    let Some(query) = query else {
        return Ok(None);
    };
    for pair in query.split('&') {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        if n == name {
            let decoded = percent::decode(v).map_err(|_| {
                DocError::BadRequest(format!(
                    "query parameter `{name}` has a malformed percent-escape"
                ))
            })?;
            return String::from_utf8(decoded).map(Some).map_err(|_| {
                DocError::BadRequest(format!("query parameter `{name}` is not UTF-8"))
            });
        }
    }
    Ok(None)
}

/// Refuses bodies declared as something other than JSON. No Content-Type is accepted.
fn accept_json(request: &Request<'_>, merge_patch: bool) -> Result<(), DocError> {
    let Some(value) = request.header("content-type") else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value);
    let media = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let ok = media == "application/json"
        || (merge_patch && media == "application/merge-patch+json")
        || (!merge_patch && media.ends_with("+json"));
    if ok {
        Ok(())
    } else {
        Err(DocError::UnsupportedMediaType {
            got: text.into_owned(),
            expected: if merge_patch {
                "application/merge-patch+json or application/json"
            } else {
                "application/json"
            },
        })
    }
}

/// Checks a document body and returns its compact form.
fn document<S>(body: &[u8], ctx: &mut Ctx<S>) -> Result<Bytes, DocError> {
    let limit = ctx.plane.options().max_document_bytes;
    if body.len() > limit {
        return Err(DocError::DocumentTooLarge {
            size: body.len(),
            limit,
        });
    }
    json::parse_document(body, &mut ctx.scratch)
        .map(Bytes::from)
        .map_err(|error| DocError::InvalidDocument(error.to_string()))
}

fn precondition(request: &Request<'_>) -> Precondition {
    Precondition {
        if_match: request.header("if-match").map(|v| parse_tags(v, false)),
        if_none_match: request.header("if-none-match").map(|v| parse_tags(v, true)),
    }
}

/// Parses `*` or a list of entity tags. Weak tags count only for `weak`
/// comparison (If-None-Match); tags that are not ours never match.
fn parse_tags(value: &[u8], weak: bool) -> TagSet {
    let text = String::from_utf8_lossy(value);
    if text.trim() == "*" {
        return TagSet::Any;
    }
    let versions = text
        .split(',')
        .filter_map(|tag| {
            let tag = tag.trim();
            let (is_weak, tag) = match tag.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, tag),
            };
            if is_weak && !weak {
                return None;
            }
            let hex = tag.strip_prefix('"')?.strip_suffix('"')?;
            u64::from_str_radix(hex, 16).ok()
        })
        .collect();
    TagSet::Versions(versions)
}

/// The ETag of a version: its hex digits, quoted.
pub fn etag(version: u64, buf: &mut [u8; 18]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = if version == 0 {
        1
    } else {
        (64 - version.leading_zeros() as usize).div_ceil(4)
    };
    buf[0] = b'"';
    for i in 0..digits {
        buf[digits - i] = HEX[((version >> (4 * i)) & 0xf) as usize];
    }
    buf[digits + 1] = b'"';
    std::str::from_utf8(&buf[..digits + 2]).expect("ASCII")
}

/// A document's answer, after the request's conditions (RFC 9110 §13.2.2:
/// If-Match first, then If-None-Match).
fn render_doc(
    stored: &Stored,
    if_match: Option<&TagSet>,
    if_none_match: Option<&TagSet>,
    response: &mut Response<'_>,
) {
    let mut buf = [0u8; 18];
    let tag = etag(stored.version, &mut buf);
    if if_match.is_some_and(|tags| !tags.matches_version(stored.version)) {
        let error = DocError::PreconditionFailed(format!(
            "the document's current ETag is {tag}; it does not match If-Match"
        ));
        let mut scratch = Vec::new();
        return response.error(&error, &mut scratch);
    }
    if if_none_match.is_some_and(|tags| tags.matches_version(stored.version)) {
        return response.not_modified(&[("ETag", tag)]);
    }
    response.send(200, "application/json", &[("ETag", tag)], &stored.doc);
}

pub fn store_failure(outcome: StoreOutcome) -> DocError {
    match outcome {
        StoreOutcome::PreconditionFailed {
            current: Some(version),
        } => {
            let mut buf = [0u8; 18];
            DocError::PreconditionFailed(format!(
                "the document's current ETag is {}; it does not satisfy the request's If-Match/If-None-Match",
                etag(version, &mut buf)
            ))
        }
        StoreOutcome::PreconditionFailed { current: None } => DocError::PreconditionFailed(
            "the document does not exist, so If-Match cannot match".into(),
        ),
        StoreOutcome::Invalid(message) => DocError::InvalidDocument(message),
        StoreOutcome::TooLarge { size, limit } => DocError::DocumentTooLarge { size, limit },
        StoreOutcome::Failed(error) => DocError::StoreUnavailable(error.to_string()),
        _ => DocError::Internal("unexpected store outcome"),
    }
}

impl Render for Plan {
    fn render(
        self: Box<Self>,
        mut parts: Vec<Part>,
        response: &mut Response<'_>,
        scratch: &mut Vec<u8>,
    ) {
        let plan = *self;
        match plan {
            Plan::Get {
                if_match,
                if_none_match,
                name,
            } => match parts.pop() {
                Some(Part::Doc(Some(stored))) => {
                    render_doc(&stored, if_match.as_ref(), if_none_match.as_ref(), response)
                }
                Some(Part::Doc(None)) if if_match.is_some() => response.error(
                    &DocError::PreconditionFailed(
                        "the document does not exist, so If-Match cannot match".into(),
                    ),
                    scratch,
                ),
                Some(Part::Doc(None)) => response.error(&name.not_found(), scratch),
                Some(Part::Store(outcome)) => response.error(&store_failure(outcome), scratch),
                None => response.error(&DocError::Internal("no part"), scratch),
            },
            Plan::Put | Plan::Patch { .. } => match parts.pop() {
                Some(Part::Store(StoreOutcome::Written { stored, created })) => {
                    let mut buf = [0u8; 18];
                    let tag = etag(stored.version, &mut buf);
                    response.send(
                        if created { 201 } else { 200 },
                        "application/json",
                        &[("ETag", tag)],
                        &stored.doc,
                    );
                }
                Some(Part::Store(StoreOutcome::Missing)) => {
                    let missing = match &plan {
                        Plan::Patch { name } => name.not_found(),
                        _ => DocError::Internal("a PUT cannot miss"),
                    };
                    response.error(&missing, scratch)
                }
                Some(Part::Store(outcome)) => response.error(&store_failure(outcome), scratch),
                _ => response.error(&DocError::Internal("no part"), scratch),
            },
            Plan::Delete { name } => match parts.pop() {
                Some(Part::Store(StoreOutcome::Deleted)) => response.no_content(&[]),
                Some(Part::Store(StoreOutcome::Missing)) => {
                    response.error(&name.not_found(), scratch)
                }
                Some(Part::Store(outcome)) => response.error(&store_failure(outcome), scratch),
                _ => response.error(&DocError::Internal("no part"), scratch),
            },
            Plan::Scan {
                limit,
                collection_len,
                mask,
            } => render_scan(
                parts,
                limit,
                collection_len,
                mask.as_ref(),
                response,
                scratch,
            ),
        }
    }
}

fn render_scan(
    parts: Vec<Part>,
    limit: usize,
    collection_len: usize,
    mask: Option<&FieldMask>,
    response: &mut Response<'_>,
    scratch: &mut Vec<u8>,
) {
    let mut items: Vec<(Vec<u8>, Stored)> = Vec::new();
    // A shard that may hold more than it sent bounds what can be answered:
    // keys past its last one could skip some of its keys.
    let mut bound: Option<Vec<u8>> = None;
    for part in parts {
        match part {
            Part::Store(StoreOutcome::Scanned(found)) => {
                let bytes: usize = found.iter().map(|(_, s)| s.doc.len()).sum();
                if found.len() >= limit || bytes >= SCAN_PART_BYTES {
                    if let Some((last, _)) = found.last() {
                        if bound.as_ref().is_none_or(|b| last < b) {
                            bound = Some(last.clone());
                        }
                    }
                }
                items.extend(found);
            }
            Part::Store(outcome) => return response.error(&store_failure(outcome), scratch),
            Part::Doc(_) => return response.error(&DocError::Internal("unexpected part"), scratch),
        }
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    // The bounding shard may hold more after its last key.
    let mut more = bound.is_some();
    if let Some(bound) = &bound {
        items.retain(|(key, _)| key <= bound);
    }
    if items.len() > limit {
        items.truncate(limit);
        more = true;
    }
    let mut bytes = 0;
    if let Some(cut) = items.iter().position(|(_, s)| {
        bytes += s.doc.len();
        bytes >= SCAN_RESPONSE_BYTES
    }) {
        if cut + 1 < items.len() {
            items.truncate(cut + 1);
            more = true;
        }
    }
    let mut body = Vec::with_capacity(
        64 + items
            .iter()
            .map(|(k, s)| k.len() + s.doc.len() + 24)
            .sum::<usize>(),
    );
    let mut mask_scratch = Vec::new();
    body.extend_from_slice(b"{\"items\":[");
    for (n, (key, stored)) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        let key = String::from_utf8_lossy(&key[collection_len + 1..]);
        body.extend_from_slice(b"{\"key\":");
        json::write_json_string(&key, &mut body);
        body.extend_from_slice(b",\"doc\":");
        match mask {
            None => body.extend_from_slice(&stored.doc),
            Some(mask) => {
                if mask
                    .project(&stored.doc, &mut mask_scratch, &mut body)
                    .is_err()
                {
                    body.extend_from_slice(b"{}");
                }
            }
        }
        body.push(b'}');
    }
    body.extend_from_slice(b"],\"next\":");
    match items.last().filter(|_| more) {
        Some((key, _)) => json::write_json_string(
            &String::from_utf8_lossy(&key[collection_len + 1..]),
            &mut body,
        ),
        None => body.extend_from_slice(b"null"),
    }
    body.push(b'}');
    response.send(200, "application/json", &[], &body);
}

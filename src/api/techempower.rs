//! The TechEmpower database tests on the embedded store: `/db`, `/queries`, `/cached-queries`, `/updates`, `/fortunes`.
//!
//! As the benchmark's rules ask: `/db` and `/queries` read each row from the
//! store (never the cache), one read per row; `/cached-queries` reads
//! through the cache partitions; `/updates` reads and writes each row (as
//! one read-modify-write on the shard's store thread, committed with its
//! batch); a count that is missing or not a number means 1, and counts are
//! clamped to 1..=500; fortunes are read from the store, an extra one is
//! added at request time, sorted by message and HTML-escaped.

use std::cmp::Ordering;

use bytes::Bytes;
use serde::Deserialize;

use crate::app::{Ctx, Request};
use crate::documents::DocError;
use crate::documents::{DataRequest, Op, Part, Render};
use crate::http::Response;
use crate::store::open::PG_WORLD;
use crate::store::seed::{FORTUNE, WORLD, WORLD_ROWS};
use crate::store::storage_key;
use crate::store::thread::{Precondition, StoreOp, StoreOutcome};
use crate::store::SqlOp;

/// What a TechEmpower route renders once every part is in.
#[derive(Debug, Clone, Copy)]
pub enum Plan {
    /// `/db` (`array: false`), `/queries` and `/cached-queries`.
    Worlds { array: bool },
    /// `/updates`.
    Updates,
    /// `/updates` on PostgreSQL shards: one part per shard, its rows as written.
    UpdateBatches,
    /// `/fortunes`: one scan part per shard.
    Fortunes,
    /// `/fortunes` on PostgreSQL shards: the `fortune` table's rows, id and message.
    FortuneRows,
}

/// `GET /db`: one random World row.
pub fn db<S>(_: &Request<'_>, ctx: &mut Ctx<S>, _: &mut Response<'_>) {
    let ops = vec![world_read(ctx, false)];
    defer(ctx, Plan::Worlds { array: false }, ops);
}

/// `GET /queries?queries=N`: N random World rows, each read from the store.
pub fn queries<S>(request: &Request<'_>, ctx: &mut Ctx<S>, _: &mut Response<'_>) {
    let count = count(request.query, "queries");
    let ops = (0..count).map(|_| world_read(ctx, false)).collect();
    defer(ctx, Plan::Worlds { array: true }, ops);
}

/// The shard of a `world` row on PostgreSQL shards (where seeding put it).
fn pg_world_shard<S>(ctx: &Ctx<S>, id: u32) -> u32 {
    ctx.plane.map().shard_of(
        PG_WORLD.as_bytes(),
        itoa::Buffer::new().format(id).as_bytes(),
    )
}

/// `/updates` on PostgreSQL shards: per shard, each row read on its own and
/// one batch update of them all, pipelined in one write.
fn pg_updates<S>(ctx: &mut Ctx<S>, count: usize) {
    let mut by_shard: Vec<(u32, Vec<(i32, i32)>)> = Vec::new();
    for _ in 0..count {
        let id = ctx.rng.between_one_and(WORLD_ROWS);
        let number = ctx.rng.between_one_and(WORLD_ROWS);
        let shard = pg_world_shard(ctx, id);
        let row = (id as i32, number as i32);
        match by_shard.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, rows)) => rows.push(row),
            None => by_shard.push((shard, vec![row])),
        }
    }
    let ops = by_shard
        .into_iter()
        .map(|(shard, rows)| Op::Store {
            shard,
            op: StoreOp::Sql(SqlOp::UpdateWorlds { rows }),
        })
        .collect();
    defer(ctx, Plan::UpdateBatches, ops);
}

/// `GET /cached-queries?count=N`: N random World rows through the cache.
pub fn cached_queries<S>(request: &Request<'_>, ctx: &mut Ctx<S>, _: &mut Response<'_>) {
    let count = count(request.query, "count");
    let ops = (0..count).map(|_| world_read(ctx, true)).collect();
    defer(ctx, Plan::Worlds { array: true }, ops);
}

/// `GET /updates?queries=N`: N random World rows, each given a new random number.
pub fn updates<S>(request: &Request<'_>, ctx: &mut Ctx<S>, _: &mut Response<'_>) {
    let count = count(request.query, "queries");
    if ctx.plane.is_postgres() {
        return pg_updates(ctx, count);
    }
    let max_bytes = ctx.plane.options().max_document_bytes;
    let ops = (0..count)
        .map(|_| {
            let id = ctx.rng.between_one_and(WORLD_ROWS);
            let number = ctx.rng.between_one_and(WORLD_ROWS);
            let (shard, key) = world_key(ctx, id);
            Op::Store {
                shard,
                op: StoreOp::Patch {
                    key,
                    patch: Bytes::from(format!("{{\"randomNumber\":{number}}}")),
                    cond: Precondition::default(),
                    max_bytes,
                },
            }
        })
        .collect();
    defer(ctx, Plan::Updates, ops);
}

/// `GET /fortunes`: every fortune plus one, sorted, as an HTML table.
pub fn fortunes<S>(_: &Request<'_>, ctx: &mut Ctx<S>, _: &mut Response<'_>) {
    if ctx.plane.is_postgres() {
        // The fortune table lives on shard 0.
        let ops = vec![Op::Store {
            shard: 0,
            op: StoreOp::Sql(SqlOp::Fortunes),
        }];
        return defer(ctx, Plan::FortuneRows, ops);
    }
    let ops = super::documents::scan_every_shard(ctx, FORTUNE, None, 1000);
    defer(ctx, Plan::Fortunes, ops);
}

fn defer<S>(ctx: &mut Ctx<S>, plan: Plan, ops: Vec<Op>) {
    ctx.defer_documents(DataRequest {
        plan: Box::new(plan),
        ops,
    });
}

/// The benchmark's rule for a count: missing or not a number → 1; clamped to 1..=500.
pub fn count(query: Option<&str>, name: &str) -> usize {
    let value = query.and_then(|q| {
        q.split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v)
    });
    match value.and_then(|v| v.parse::<i64>().ok()) {
        Some(n) => n.clamp(1, 500) as usize,
        None => 1,
    }
}

fn world_key<S>(ctx: &mut Ctx<S>, id: u32) -> (u32, Vec<u8>) {
    let mut digits = itoa::Buffer::new();
    let id = digits.format(id);
    let shard = ctx.plane.map().shard_of(WORLD.as_bytes(), id.as_bytes());
    let mut key = Vec::with_capacity(WORLD.len() + 6);
    storage_key(WORLD, id, &mut key);
    (shard, key)
}

fn world_read<S>(ctx: &mut Ctx<S>, cached: bool) -> Op {
    let id = ctx.rng.between_one_and(WORLD_ROWS);
    if ctx.plane.is_postgres() {
        let shard = pg_world_shard(ctx, id);
        if !cached {
            return Op::Store {
                shard,
                op: StoreOp::Sql(SqlOp::World { id: id as i32 }),
            };
        }
        let mut key = Vec::with_capacity(PG_WORLD.len() + 6);
        storage_key(PG_WORLD, itoa::Buffer::new().format(id), &mut key);
        return Op::Get {
            shard,
            key,
            mask: None,
            cached: true,
            missed: false,
        };
    }
    let (shard, key) = world_key(ctx, id);
    Op::Get {
        shard,
        key,
        mask: None,
        cached,
        missed: false,
    }
}

impl Render for Plan {
    fn render(
        self: Box<Self>,
        parts: Vec<Part>,
        response: &mut Response<'_>,
        scratch: &mut Vec<u8>,
    ) {
        match *self {
            Plan::Worlds { array } => {
                let mut body = Vec::with_capacity(parts.len() * 34 + 2);
                if array {
                    body.push(b'[');
                }
                for (n, part) in parts.into_iter().enumerate() {
                    let doc = match part {
                        Part::Doc(Some(stored)) => stored.doc,
                        Part::Store(StoreOutcome::Found(Some(stored))) => stored.doc,
                        Part::Doc(None) | Part::Store(StoreOutcome::Found(None)) => {
                            return response
                                .error(&DocError::Internal("a World row is missing"), scratch)
                        }
                        Part::Store(outcome) => {
                            return response
                                .error(&super::documents::store_failure(outcome), scratch)
                        }
                    };
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&doc);
                }
                if array {
                    body.push(b']');
                }
                response.send(200, "application/json", &[], &body);
            }
            Plan::Updates => {
                let mut body = Vec::with_capacity(parts.len() * 34 + 2);
                body.push(b'[');
                for (n, part) in parts.into_iter().enumerate() {
                    let doc = match part {
                        Part::Store(StoreOutcome::Written { stored, .. }) => stored.doc,
                        Part::Store(StoreOutcome::Missing) => {
                            return response
                                .error(&DocError::Internal("a World row is missing"), scratch)
                        }
                        Part::Store(outcome) => {
                            return response
                                .error(&super::documents::store_failure(outcome), scratch)
                        }
                        Part::Doc(_) => {
                            return response.error(&DocError::Internal("unexpected part"), scratch)
                        }
                    };
                    if n > 0 {
                        body.push(b',');
                    }
                    body.extend_from_slice(&doc);
                }
                body.push(b']');
                response.send(200, "application/json", &[], &body);
            }
            Plan::UpdateBatches => {
                let mut body = Vec::with_capacity(parts.len() * 34 + 2);
                body.push(b'[');
                let mut first = true;
                for part in parts {
                    let rows = match part {
                        Part::Store(StoreOutcome::Scanned(rows)) => rows,
                        Part::Store(outcome) => {
                            return response
                                .error(&super::documents::store_failure(outcome), scratch)
                        }
                        Part::Doc(_) => {
                            return response.error(&DocError::Internal("unexpected part"), scratch)
                        }
                    };
                    for (_, stored) in rows {
                        if !first {
                            body.push(b',');
                        }
                        first = false;
                        body.extend_from_slice(&stored.doc);
                    }
                }
                body.push(b']');
                response.send(200, "application/json", &[], &body);
            }
            Plan::Fortunes => {
                #[derive(Deserialize)]
                struct Fortune {
                    id: i64,
                    message: String,
                }
                let mut fortunes = Vec::with_capacity(16);
                for part in parts {
                    match part {
                        Part::Store(StoreOutcome::Scanned(items)) => {
                            for (_, stored) in items {
                                match serde_json::from_slice::<Fortune>(&stored.doc) {
                                    Ok(f) => fortunes.push((f.id, f.message)),
                                    Err(_) => {
                                        return response.error(
                                            &DocError::Internal(
                                                "a Fortune document lacks id or message",
                                            ),
                                            scratch,
                                        )
                                    }
                                }
                            }
                        }
                        Part::Store(outcome) => {
                            return response
                                .error(&super::documents::store_failure(outcome), scratch)
                        }
                        Part::Doc(_) => {
                            return response.error(&DocError::Internal("unexpected part"), scratch)
                        }
                    }
                }
                let rows = fortunes.iter().map(|(id, m)| (*id, m.as_str())).collect();
                send_fortunes(rows, response);
            }
            Plan::FortuneRows => {
                // Rows of the `fortune` table: the id in the key, the message as the body.
                let rows = match parts.first() {
                    Some(Part::Store(StoreOutcome::Scanned(items))) => items
                        .iter()
                        .map(|(id, stored)| {
                            let id = std::str::from_utf8(id).ok()?.parse().ok()?;
                            Some((id, std::str::from_utf8(&stored.doc).ok()?))
                        })
                        .collect::<Option<Vec<_>>>(),
                    Some(Part::Store(outcome)) => {
                        return response
                            .error(&super::documents::store_failure(outcome.clone()), scratch)
                    }
                    _ => None,
                };
                match rows {
                    Some(rows) => send_fortunes(rows, response),
                    None => {
                        response.error(&DocError::Internal("a fortune row is malformed"), scratch)
                    }
                }
            }
        }
    }
}

/// The fortunes page: the rows plus the one added at request time, sorted
/// by message, HTML-escaped.
fn send_fortunes(mut rows: Vec<(i64, &str)>, response: &mut Response<'_>) {
    rows.push((0, "Additional fortune added at request time."));
    rows.sort_by(|a, b| a.1.cmp(b.1).then(Ordering::Equal));
    let mut html = String::with_capacity(2048);
    html.push_str("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>");
    for (id, message) in &rows {
        html.push_str("<tr><td>");
        html.push_str(itoa::Buffer::new().format(*id));
        html.push_str("</td><td>");
        escape_html(message, &mut html);
        html.push_str("</td></tr>");
    }
    html.push_str("</table></body></html>");
    response.send(200, "text/html; charset=utf-8", &[], html.as_bytes());
}

/// Escapes text for an HTML element's content (and attributes).
pub fn escape_html(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

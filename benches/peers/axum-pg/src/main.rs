//! axum-pg: percore's PostgreSQL endpoints written the way a typical axum
//! service would be: axum 0.8 on tokio's multi-thread runtime,
//! tokio-postgres behind a deadpool pool, statements prepared once per
//! connection (`prepare_cached`), serde_json. The peer (a) of
//! `benches/pg.py`; not tuned beyond what the libraries' docs suggest.
//!
//! Usage: axum-pg --listen 127.0.0.1:8080 --database-url postgres://... [--pool N]
//!
//! Routes, on the same schema percore creates (`world`, `fortune`,
//! `percore_documents`, sequence `percore_version`):
//!   GET /db, /queries?queries=N, /fortunes, /updates?queries=N (TechEmpower rules:
//!       one query per row read; /updates writes the batch with one statement, ids sorted)
//!   GET /v1/{collection}/{key}  200 with the body and ETag, or 404
//!   PUT /v1/{collection}/{key}  an upsert; 201 created / 200 replaced, ETag
//!
//! Pool: `--pool` connections (default 16: deadpool's default is 4 per CPU,
//! and a pinned single-CPU run would starve at 4 against 64 clients).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

#[derive(Serialize)]
struct World {
    id: i32,
    #[serde(rename = "randomNumber")]
    random_number: i32,
}

#[derive(Deserialize)]
struct Count {
    queries: Option<String>,
}

fn clamp(count: Option<String>) -> usize {
    count
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(1)
        .clamp(1, 500) as usize
}

fn rng() -> SmallRng {
    SmallRng::from_rng(&mut rand::rng())
}

fn failed(error: impl std::fmt::Display) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({"error": "store_unavailable", "message": error.to_string()})),
    )
        .into_response()
}

const WORLD: &str = "SELECT id, randomnumber FROM world WHERE id = $1";

async fn db(State(pool): State<Pool>) -> Response {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let statement = match client.prepare_cached(WORLD).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let id = rng().random_range(1..=10_000);
    match client.query_one(&statement, &[&id]).await {
        Ok(row) => Json(World {
            id: row.get(0),
            random_number: row.get(1),
        })
        .into_response(),
        Err(e) => failed(e),
    }
}

async fn read_worlds(pool: &Pool, count: usize) -> Result<Vec<World>, Response> {
    let client = pool.get().await.map_err(failed)?;
    let statement = client.prepare_cached(WORLD).await.map_err(failed)?;
    let mut rng = rng();
    let mut worlds = Vec::with_capacity(count);
    for _ in 0..count {
        let id: i32 = rng.random_range(1..=10_000);
        let row = client.query_one(&statement, &[&id]).await.map_err(failed)?;
        worlds.push(World {
            id: row.get(0),
            random_number: row.get(1),
        });
    }
    Ok(worlds)
}

async fn queries(State(pool): State<Pool>, Query(q): Query<Count>) -> Response {
    match read_worlds(&pool, clamp(q.queries)).await {
        Ok(worlds) => Json(worlds).into_response(),
        Err(response) => response,
    }
}

async fn updates(State(pool): State<Pool>, Query(q): Query<Count>) -> Response {
    let mut worlds = match read_worlds(&pool, clamp(q.queries)).await {
        Ok(worlds) => worlds,
        Err(response) => return response,
    };
    let mut rng = rng();
    for world in &mut worlds {
        world.random_number = rng.random_range(1..=10_000);
    }
    let mut sorted: Vec<(i32, i32)> = worlds.iter().map(|w| (w.id, w.random_number)).collect();
    sorted.sort_unstable();
    sorted.dedup_by_key(|row| row.0);
    // A row asked for twice answers with the number written.
    for world in &mut worlds {
        if let Ok(i) = sorted.binary_search_by_key(&world.id, |row| row.0) {
            world.random_number = sorted[i].1;
        }
    }
    let ids: Vec<i32> = sorted.iter().map(|r| r.0).collect();
    let numbers: Vec<i32> = sorted.iter().map(|r| r.1).collect();
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let statement = match client
        .prepare_cached(
            "UPDATE world SET randomnumber = v.r FROM \
             (SELECT unnest($1::int4[]) AS i, unnest($2::int4[]) AS r) AS v WHERE world.id = v.i",
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    match client.execute(&statement, &[&ids, &numbers]).await {
        Ok(_) => Json(worlds).into_response(),
        Err(e) => failed(e),
    }
}

async fn fortunes(State(pool): State<Pool>) -> Response {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let statement = match client.prepare_cached("SELECT id, message FROM fortune").await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let rows = match client.query(&statement, &[]).await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let mut fortunes: Vec<(i32, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    fortunes.push((0, "Additional fortune added at request time.".into()));
    fortunes.sort_by(|a, b| a.1.cmp(&b.1));
    let mut html = String::with_capacity(2048);
    html.push_str("<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table><tr><th>id</th><th>message</th></tr>");
    for (id, message) in &fortunes {
        html.push_str("<tr><td>");
        html.push_str(&id.to_string());
        html.push_str("</td><td>");
        for c in message.chars() {
            match c {
                '&' => html.push_str("&amp;"),
                '<' => html.push_str("&lt;"),
                '>' => html.push_str("&gt;"),
                '"' => html.push_str("&quot;"),
                '\'' => html.push_str("&#39;"),
                c => html.push(c),
            }
        }
        html.push_str("</td></tr>");
    }
    html.push_str("</table></body></html>");
    Html(html).into_response()
}

fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits")
}

async fn get_doc(State(pool): State<Pool>, Path((collection, key)): Path<(String, String)>) -> Response {
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let statement = match client
        .prepare_cached("SELECT version, body::text FROM percore_documents WHERE collection = $1 AND key = $2")
        .await
    {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    match client.query_opt(&statement, &[&collection, &key]).await {
        Ok(Some(row)) => {
            let version: i64 = row.get(0);
            let body: String = row.get(1);
            ([(CONTENT_TYPE, HeaderValue::from_static("application/json")), (ETAG, etag(version))], body).into_response()
        }
        Ok(None) => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "not_found", "message": format!("no document `{key}` in collection `{collection}`")})),
        )
            .into_response(),
        Err(e) => failed(e),
    }
}

async fn put_doc(
    State(pool): State<Pool>,
    Path((collection, key)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let doc: Box<serde_json::value::RawValue> = match serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .filter(|v| v.is_object())
        .and_then(|v| serde_json::value::to_raw_value(&v).ok())
    {
        Some(doc) => doc,
        None => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "invalid_document", "message": "the body is not a JSON object"})),
            )
                .into_response()
        }
    };
    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => return failed(e),
    };
    let statement = match client
        .prepare_cached(
            "INSERT INTO percore_documents (collection, key, version, body) \
             VALUES ($1, $2, nextval('percore_version'), $3::text::json) \
             ON CONFLICT (collection, key) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body \
             RETURNING version, (xmax = 0) AS created",
        )
        .await
    {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    match client.query_one(&statement, &[&collection, &key, &doc.get()]).await {
        Ok(row) => {
            let version: i64 = row.get(0);
            let created: bool = row.get(1);
            let status = if created { StatusCode::CREATED } else { StatusCode::OK };
            (
                status,
                [(CONTENT_TYPE, HeaderValue::from_static("application/json")), (ETAG, etag(version))],
                doc.get().to_owned(),
            )
                .into_response()
        }
        Err(e) => failed(e),
    }
}

fn arg(name: &str) -> Option<String> {
    let mut args = std::env::args();
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
}

#[tokio::main]
async fn main() {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .expect("--listen ADDR:PORT");
    let url = arg("--database-url")
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/percore_bench".into());
    let size: usize = arg("--pool").map(|p| p.parse().expect("--pool N")).unwrap_or(16);
    let config: tokio_postgres::Config = url.parse().expect("a postgres URL");
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager).max_size(size).build().expect("a pool");
    let app = Router::new()
        .route("/db", get(db))
        .route("/queries", get(queries))
        .route("/updates", get(updates))
        .route("/fortunes", get(fortunes))
        .route("/v1/{collection}/{key}", get(get_doc).put(put_doc))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
    println!("axum-pg listening on http://{}", listener.local_addr().unwrap());
    axum::serve(listener, app).await.expect("serve");
}

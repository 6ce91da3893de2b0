//! axum-docs: percore's document API written the way a typical, well-written
//! axum service would be: axum 0.8 on tokio's multi-thread runtime, a moka
//! cache bounded by bytes in front of one redb file. The benchmark peer for
//! `benches/docs.py`; not tuned beyond what the libraries' docs suggest.
//!
//! Usage: axum-docs --listen 127.0.0.1:8080 --data-dir DIR [--cache-bytes N] [--read-inline]
//!
//! Routes (the same as percore's):
//!   PUT    /v1/{collection}/{key}  body: a JSON object (Content-Type: application/json);
//!                                  201 created / 200 replaced; 400 bad JSON, 415 other type
//!   GET    /v1/{collection}/{key}  200 with the document, or 404
//!   DELETE /v1/{collection}/{key}  204, or 404
//!   GET    /json                   {"message":"Hello, World!"}
//!
//! Storage: one table in `DIR/docs.redb`, keyed by `collection + "\0" + key`,
//! valued `(version, compact JSON)`. A document's version starts at 1 and
//! grows by one with each replacement; it is the ETag, in lowercase hex.
//! Every PUT and DELETE is its own write transaction committed with
//! `Durability::Immediate` (one fsync each) on tokio's blocking pool.
//!
//! Cache: moka's future::Cache weighed in bytes (key + body + a fixed 64);
//! a PUT replaces the entry and a DELETE invalidates it after the commit;
//! concurrent misses of one key share one load (`try_get_with`).
//! Reads of redb run on the blocking pool too, as tokio's docs advise for
//! blocking calls; `--read-inline` runs them on the worker thread instead.
//!
//! Workers: tokio's default, one per CPU this process may use, so under
//! `taskset -c 0` it runs one worker thread (plus the blocking pool).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::header::{CONTENT_TYPE, ETAG};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use bytes::Bytes;
use moka::future::Cache;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::json;

/// The one table: `collection\0key` -> `(version, compact JSON)`.
const DOCS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("docs");

/// Bytes a cache entry costs beyond its key and body (moka's node, the Bytes handle).
const ENTRY_OVERHEAD: usize = 64;

const DEFAULT_CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// A stored document: its version and its compact JSON.
#[derive(Clone)]
struct Doc {
    version: u64,
    body: Bytes,
}

#[derive(Clone)]
struct AppState {
    db: Arc<Database>,
    cache: Cache<String, Doc>,
    /// `--read-inline`: read redb on the worker thread instead of the blocking pool.
    read_inline: bool,
}

/// What the handlers answer with when they fail, as `{"error":..,"message":..}`.
#[derive(Debug, Clone)]
enum ApiError {
    BadRequest(String),
    UnsupportedMediaType(String),
    NotFound(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = match self {
            Self::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
            Self::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                m,
            ),
            Self::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
            Self::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", m),
        };
        (status, Json(json!({ "error": error, "message": message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => {
                Self::UnsupportedMediaType("send the document as application/json".into())
            }
            other => Self::BadRequest(other.body_text()),
        }
    }
}

impl From<redb::Error> for ApiError {
    fn from(e: redb::Error) -> Self {
        eprintln!("axum-docs: storage error: {e}");
        Self::Internal("storage error".into())
    }
}

impl From<tokio::task::JoinError> for ApiError {
    fn from(e: tokio::task::JoinError) -> Self {
        Self::Internal(format!("storage task failed: {e}"))
    }
}

fn doc_id(collection: &str, key: &str) -> String {
    format!("{collection}\0{key}")
}

fn not_found(collection: &str, key: &str) -> ApiError {
    ApiError::NotFound(format!("no document {key:?} in collection {collection:?}"))
}

fn doc_response(status: StatusCode, doc: &Doc) -> Response {
    let etag = HeaderValue::try_from(format!("\"{:x}\"", doc.version))
        .expect("hex is a valid header value");
    (
        status,
        [
            (CONTENT_TYPE, HeaderValue::from_static("application/json")),
            (ETAG, etag),
        ],
        doc.body.clone(),
    )
        .into_response()
}

// ---------------------------------------------------------------- storage (blocking)

fn read_doc(db: &Database, id: &str) -> Result<Option<Doc>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DOCS)?;
    Ok(table.get(id)?.map(|guard| {
        let (version, body) = guard.value();
        Doc {
            version,
            body: Bytes::copy_from_slice(body),
        }
    }))
}

/// Writes the document in its own durable commit; returns (version, created).
fn write_doc(db: &Database, id: &str, body: &[u8]) -> Result<(u64, bool), redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let (version, created) = {
        let mut table = txn.open_table(DOCS)?;
        let previous = table.get(id)?.map(|old| old.value().0);
        let version = previous.map_or(1, |v| v + 1);
        table.insert(id, (version, body))?;
        (version, previous.is_none())
    };
    txn.commit()?;
    Ok((version, created))
}

/// Removes the document in its own durable commit; returns whether it existed.
fn delete_doc(db: &Database, id: &str) -> Result<bool, redb::Error> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let existed = txn.open_table(DOCS)?.remove(id)?.is_some();
    txn.commit()?;
    Ok(existed)
}

// ---------------------------------------------------------------- handlers

async fn json_hello() -> Json<serde_json::Value> {
    Json(json!({ "message": "Hello, World!" }))
}

async fn get_handler(
    State(state): State<AppState>,
    Path((collection, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = doc_id(&collection, &key);
    // A hit is answered from moka; concurrent misses of one key share a single
    // load. redb reads go to the blocking pool like any other blocking call
    // (tokio's docs' advice, and what a typical service does): a read may wait
    // on the disk, and redb gives no async API. `--read-inline` instead reads
    // on the worker thread, the shortcut some services take since redb keeps
    // hot pages in its own cache.
    let loaded = state
        .cache
        .try_get_with_by_ref(&id, async {
            let read = if state.read_inline {
                read_doc(&state.db, &id)
            } else {
                let db = Arc::clone(&state.db);
                let lookup = id.clone();
                tokio::task::spawn_blocking(move || read_doc(&db, &lookup)).await?
            };
            match read {
                Ok(Some(doc)) => Ok(doc),
                Ok(None) => Err(not_found(&collection, &key)),
                Err(e) => Err(e.into()),
            }
        })
        .await;
    // moka shares the loader's error between the waiters as an Arc; errors are not cached.
    let doc = loaded.map_err(|e| (*e).clone())?;
    Ok(doc_response(StatusCode::OK, &doc))
}

async fn put_handler(
    State(state): State<AppState>,
    Path((collection, key)): Path<(String, String)>,
    body: Result<Json<serde_json::Value>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(value) = body?;
    if !value.is_object() {
        return Err(ApiError::BadRequest(
            "the document must be a JSON object".into(),
        ));
    }
    let compact = Bytes::from(serde_json::to_vec(&value).expect("a parsed value serializes"));
    let id = doc_id(&collection, &key);
    let (db, write_id, write_body) = (Arc::clone(&state.db), id.clone(), compact.clone());
    let (version, created) =
        tokio::task::spawn_blocking(move || write_doc(&db, &write_id, &write_body)).await??;
    let doc = Doc {
        version,
        body: compact,
    };
    // After the commit: later reads of this key see the new version.
    state.cache.insert(id, doc.clone()).await;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(doc_response(status, &doc))
}

async fn delete_handler(
    State(state): State<AppState>,
    Path((collection, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let id = doc_id(&collection, &key);
    let (db, delete_id) = (Arc::clone(&state.db), id.clone());
    let existed = tokio::task::spawn_blocking(move || delete_doc(&db, &delete_id)).await??;
    state.cache.invalidate(&id).await;
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(not_found(&collection, &key))
    }
}

// ---------------------------------------------------------------- startup

struct Args {
    listen: SocketAddr,
    data_dir: PathBuf,
    cache_bytes: u64,
    read_inline: bool,
}

const USAGE: &str =
    "usage: axum-docs --listen ADDR:PORT --data-dir DIR [--cache-bytes N] [--read-inline]";

fn usage_exit(msg: &str) -> ! {
    eprintln!("axum-docs: {msg}");
    eprintln!("{USAGE}");
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut listen = "127.0.0.1:8080".to_string();
    let mut data_dir = None;
    let mut cache_bytes = DEFAULT_CACHE_BYTES;
    let mut read_inline = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage_exit(&format!("{name} needs a value")))
        };
        match arg.as_str() {
            "--listen" => listen = value("--listen"),
            "--data-dir" => data_dir = Some(PathBuf::from(value("--data-dir"))),
            "--cache-bytes" => {
                let v = value("--cache-bytes");
                cache_bytes = v
                    .parse()
                    .unwrap_or_else(|_| usage_exit(&format!("bad --cache-bytes {v:?}")));
            }
            "--read-inline" => read_inline = true,
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => usage_exit(&format!("unknown argument {other:?}")),
        }
    }
    Args {
        listen: listen
            .parse()
            .unwrap_or_else(|e| usage_exit(&format!("bad --listen {listen:?}: {e}"))),
        data_dir: data_dir.unwrap_or_else(|| usage_exit("--data-dir is required")),
        cache_bytes,
        read_inline,
    }
}

fn open_db(data_dir: &std::path::Path) -> Result<Database, redb::Error> {
    std::fs::create_dir_all(data_dir).map_err(redb::Error::from)?;
    let db = Database::create(data_dir.join("docs.redb"))?;
    // Create the table up front so readers never meet a missing table.
    let txn = db.begin_write()?;
    txn.open_table(DOCS)?;
    txn.commit()?;
    Ok(db)
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let db = open_db(&args.data_dir).unwrap_or_else(|e| {
        eprintln!("axum-docs: cannot open {}: {e}", args.data_dir.display());
        std::process::exit(1)
    });
    let cache = Cache::builder()
        .max_capacity(args.cache_bytes)
        .weigher(|id: &String, doc: &Doc| {
            u32::try_from(id.len() + doc.body.len() + ENTRY_OVERHEAD).unwrap_or(u32::MAX)
        })
        .build();
    let state = AppState {
        db: Arc::new(db),
        cache,
        read_inline: args.read_inline,
    };
    let app = Router::new()
        .route("/json", get(json_hello))
        .route(
            "/v1/{collection}/{key}",
            get(get_handler).put(put_handler).delete(delete_handler),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .unwrap_or_else(|e| {
            eprintln!("axum-docs: cannot bind {}: {e}", args.listen);
            std::process::exit(1)
        })
        .tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
    eprintln!(
        "axum-docs listening on {} (data {}, cache {} bytes)",
        args.listen,
        args.data_dir.display(),
        args.cache_bytes
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .expect("server");
}

//! A product catalogue on percore: its own endpoints and errors over the sharded document store, with `?fields=` masks and per-core state.
//!
//! ```text
//! cargo run --release --example catalogue -- --listen 127.0.0.1:8080
//! curl -X PUT localhost:8080/products/lamp -H 'content-type: application/json' \
//!      -d '{"name":"Lamp","price":12.5,"stock":{"warehouse":3}}'
//! curl 'localhost:8080/products/lamp?fields=name,price'
//! curl localhost:8080/catalogue/stats
//! ```
//! Every flag, `PERCORE_*` variable and TOML key of `percore serve` works here too.

use std::process::ExitCode;

use bytes::Bytes;
use percore::app::{App, Ctx, Request};
use percore::config::Opt;
use percore::documents::{DataRequest, Part, Render};
use percore::http::{ApiError, Response};
use percore::json::{self, FieldMask};
use percore::store::thread::StoreOutcome;

/// This application's own errors: each with its status and code, answered
/// in the same JSON shape as percore's.
#[derive(Debug, thiserror::Error)]
enum CatalogueError {
    #[error("no product `{0}`")]
    NoProduct(String),
    #[error("a product needs a string `name` and a positive number `price`: {0}")]
    Invalid(String),
    #[error("`fields`: {0}")]
    BadFields(String),
    #[error("the catalogue cannot be read or written now: {0}")]
    Store(String),
}

impl ApiError for CatalogueError {
    fn status(&self) -> u16 {
        match self {
            Self::NoProduct(_) => 404,
            Self::Invalid(_) => 422,
            Self::BadFields(_) => 400,
            Self::Store(_) => 503,
        }
    }
    fn code(&self) -> &str {
        match self {
            Self::NoProduct(_) => "no_product",
            Self::Invalid(_) => "invalid_product",
            Self::BadFields(_) => "invalid_fields",
            Self::Store(_) => "catalogue_unavailable",
        }
    }
}

/// What each io core keeps of its own, without locks.
#[derive(Default)]
struct Stats {
    reads: u64,
    cache_hits: u64,
    writes: u64,
}

const PRODUCTS: &str = "products";

/// An option of the catalogue's own: `--currency`, `PERCORE_CURRENCY`, `currency = "..."`.
const CURRENCY: Opt<String> = Opt::new(
    "currency",
    "CODE",
    "The currency the catalogue's prices are in (three capital letters).",
    currency_code,
)
.default("EUR")
.section("Catalogue");

fn currency_code(text: &str) -> Result<String, String> {
    if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not a currency code like EUR or USD"))
    }
}

/// `GET /products/:id[?fields=a,b.c]`: from this core's cache partition
/// when it owns the product, else through the owner core.
fn show(request: &Request<'_>, ctx: &mut Ctx<Stats>, response: &mut Response<'_>) {
    let id = request.param("id").unwrap_or_default();
    let mask = match fields(request.query) {
        Ok(mask) => mask,
        Err(error) => return response.error(&error, &mut ctx.scratch),
    };
    ctx.state.reads += 1;
    match ctx.plane.read(PRODUCTS, id, mask) {
        Ok(stored) => {
            ctx.state.cache_hits += 1;
            response.send(200, "application/json", &[], &stored.doc)
        }
        Err(op) => ctx.defer_documents(DataRequest {
            plan: Box::new(Show { id: id.to_owned() }),
            ops: vec![op],
        }),
    }
}

/// `PUT /products/:id`: checked here, on the core that read the request, then stored by the owner.
fn store(request: &Request<'_>, ctx: &mut Ctx<Stats>, response: &mut Response<'_>) {
    let id = request.param("id").unwrap_or_default();
    let doc = match product(request.body, &mut ctx.scratch) {
        Ok(doc) => doc,
        Err(error) => return response.error(&error, &mut ctx.scratch),
    };
    ctx.state.writes += 1;
    let op = ctx.plane.write(PRODUCTS, id, doc);
    ctx.defer_documents(DataRequest {
        plan: Box::new(Stored),
        ops: vec![op],
    });
}

/// `GET /catalogue/stats`: this core's own counters.
fn stats(_: &Request<'_>, ctx: &mut Ctx<Stats>, response: &mut Response<'_>) {
    let s = &ctx.state;
    let body = serde_json::json!({
        "core": ctx.core(),
        "reads": s.reads,
        "cache_hits": s.cache_hits,
        "writes": s.writes,
        "currency": ctx.option(&CURRENCY),
    });
    response.json(200, &body, &mut ctx.scratch);
}

fn fields(query: Option<&str>) -> Result<Option<FieldMask>, CatalogueError> {
    let list = query
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("fields="));
    list.map(|list| FieldMask::parse(list).map_err(|e| CatalogueError::BadFields(e.to_string())))
        .transpose()
}

fn product(body: &[u8], scratch: &mut Vec<u8>) -> Result<Bytes, CatalogueError> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| CatalogueError::Invalid(e.to_string()))?;
    if !value["name"].is_string() || !value["price"].as_f64().is_some_and(|p| p > 0.0) {
        return Err(CatalogueError::Invalid(value.to_string()));
    }
    let compact =
        json::parse_document(body, scratch).map_err(|e| CatalogueError::Invalid(e.to_string()))?;
    Ok(Bytes::from(compact))
}

/// Renders a product read that had to wait for its owner core.
#[derive(Debug)]
struct Show {
    id: String,
}

impl Render for Show {
    fn render(
        self: Box<Self>,
        mut parts: Vec<Part>,
        response: &mut Response<'_>,
        scratch: &mut Vec<u8>,
    ) {
        match parts.pop() {
            Some(Part::Doc(Some(stored))) => {
                response.send(200, "application/json", &[], &stored.doc)
            }
            Some(Part::Doc(None)) => response.error(&CatalogueError::NoProduct(self.id), scratch),
            other => response.error(&CatalogueError::Store(format!("{other:?}")), scratch),
        }
    }
}

/// Renders the outcome of a write.
#[derive(Debug)]
struct Stored;

impl Render for Stored {
    fn render(
        self: Box<Self>,
        mut parts: Vec<Part>,
        response: &mut Response<'_>,
        scratch: &mut Vec<u8>,
    ) {
        match parts.pop() {
            Some(Part::Store(StoreOutcome::Written { stored, created })) => {
                let status = if created { 201 } else { 200 };
                response.send(status, "application/json", &[], &stored.doc)
            }
            other => response.error(&CatalogueError::Store(format!("{other:?}")), scratch),
        }
    }
}

fn main() -> ExitCode {
    App::with_state("catalogue", |_core| Stats::default())
        .get("/products/:id", show)
        .put("/products/:id", store)
        .get("/catalogue/stats", stats)
        .mount(percore::api::health)
        .option(&CURRENCY)
        .run()
}

//! `GET /openapi.json`: an OpenAPI 3.1 description of the running application's routes.
//!
//! The document is built from the route table the node actually serves
//! ([`crate::app::Node::routes`]), so it lists exactly what the router
//! matches: percore's built-in routes get a full description from the table
//! in [`builtin`] (parameters, bodies, every status the handler or the
//! layers below it can answer), and an application's own routes a minimal
//! one that claims nothing the framework cannot guarantee.
//!
//! With authentication configured, the document says what a client must
//! send ([`security`]): the schemes the node accepts, and on each operation
//! the `security` and 401/403 responses that the node's own rules give its
//! paths. Without it, the document claims no authentication at all.

pub mod security;

use serde_json::{json, Map, Value};

use crate::app::{Ctx, Request, Router};
use crate::auth::Auth;
use crate::http::Response;
use security::Requirement;

/// The reference every error body's schema uses: `{"error": code, "message": text}`.
pub const ERROR_SCHEMA: &str = "#/components/schemas/Error";

/// `GET /openapi.json`: the document for this node's routes, as JSON.
pub fn openapi<S>(_: &Request<'_>, ctx: &mut Ctx<S>, response: &mut Response<'_>) {
    let mut doc = document(ctx.node.name, &ctx.node.routes, ctx.node.auth.as_deref());
    if let Some(statics) = &ctx.node.statics {
        note_static_files(&mut doc, &statics.options().prefix);
    }
    if ctx.node.admin_listener {
        note_admin_listener(&mut doc);
    }
    match serde_json::to_vec(&doc) {
        Ok(body) => response.send(200, "application/json", &[], &body),
        Err(_) => response.send(
            500,
            "application/json",
            &[],
            br#"{"error":"internal","message":"the OpenAPI document could not be serialized"}"#,
        ),
    }
}

/// Adds to `info.description` that the operator calls are served on the
/// admin listener, which is why the document (served on the public one)
/// leaves them out.
fn note_admin_listener(doc: &mut Value) {
    let note = "\n\nOperator calls (`/metrics`, `/admin/drain`, dead letters, redrive, and any \
                the application marks as such) are served on this node's admin listener \
                alone (`--admin-listen`): they answer 404 on this listener and are not \
                described here.";
    if let Some(Value::String(description)) = doc.pointer_mut("/info/description") {
        description.push_str(note);
    }
}

/// Adds to `info.description` that paths under `prefix` are static files,
/// served before any route (they are not operations of the document).
pub fn note_static_files(doc: &mut Value, prefix: &str) {
    let note = format!(
        "\n\nStatic files: every path starting with `{prefix}` is answered from the \
         static directory before any route is matched, so those paths are not described \
         as operations here, and a route whose pattern starts with `{prefix}` is never \
         reached. They answer `GET` and `HEAD` (other methods get 405 with \
         `Allow: GET, HEAD`) with 200, 206 (`Range`), 301 (a directory named without its \
         trailing slash), 304, 400 (a path that is not allowed), 404, 412 and 416, with \
         `ETag`, `Last-Modified`, `Cache-Control` and, for precompressed files, \
         `Content-Encoding` and `Vary: Accept-Encoding`."
    );
    if let Some(Value::String(description)) = doc.pointer_mut("/info/description") {
        description.push_str(&note);
    }
}

/// The OpenAPI 3.1 document of an application called `name` whose router
/// holds `routes` (`(method, pattern)` in match order, patterns with `:param`
/// segments). Built-in routes are described from [`builtin`]; any other
/// route gets [`minimal`] (its path parameters, the statuses the framework
/// itself may answer, and a `default` response with no schema claim).
///
/// With `auth`, every operation also gets what [`Auth::access`] asks of its
/// paths ([`Requirement`]) and the document its security schemes; without,
/// nothing is said of authentication. With `auth`, panics on a pattern the
/// router refuses (as [`Router::add`] does): `routes` are a router's own.
pub fn document(name: &str, routes: &[(&'static str, &'static str)], auth: Option<&Auth>) -> Value {
    // The same table as the node's, to tell which route a sample path
    // reaches (a path another route serves is described under that one).
    let router = auth.map(|_| {
        let mut router = Router::default();
        for &(method, pattern) in routes {
            router.add(method, pattern, ());
        }
        router
    });
    let mut paths = Map::new();
    // Patterns that differ only in their parameters' names are one OpenAPI
    // path (the spec forbids both): the first route's names win.
    let mut templates: Vec<(String, String)> = Vec::new();
    let mut ids: Vec<String> = Vec::new();
    let mut unrepresentable: Vec<String> = Vec::new();
    let mut shadowed: Vec<String> = Vec::new();
    for (index, &(method, pattern)) in routes.iter().enumerate() {
        let method_key = method.to_ascii_lowercase();
        if !OPERATION_METHODS.contains(&method_key.as_str()) {
            unrepresentable.push(format!("`{method} {pattern}`"));
            continue;
        }
        let shape = shape(pattern);
        let path = match templates.iter().find(|(s, _)| *s == shape) {
            Some((_, path)) => path.clone(),
            None => {
                let path = openapi_path(pattern);
                templates.push((shape, path.clone()));
                path
            }
        };
        let item = paths
            .entry(path.clone())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(item) = item else {
            continue;
        };
        if item.contains_key(&method_key) {
            // An earlier route with this method matches every path this one
            // does, so the router never reaches it.
            shadowed.push(format!("`{method} {pattern}`"));
            continue;
        }
        let mut operation = match builtin(method, pattern) {
            Some(op) => op.into_operation(pattern, &path),
            None => minimal(method, pattern, &path),
        };
        if let (Some(auth), Some(router)) = (auth, &router) {
            Requirement::of(auth, router, index, method, pattern, &path)
                .apply(auth, &mut operation);
        }
        let id = unique_id(&operation, method, &path, &ids);
        operation["operationId"] = Value::String(id.clone());
        ids.push(id);
        item.insert(method_key, operation);
    }
    let mut description = String::from(DESCRIPTION);
    if !unrepresentable.is_empty() {
        description.push_str(&format!(
            "\n\nRoutes served but not describable in OpenAPI 3.1 (their method has no \
             operation field): {}.",
            unrepresentable.join(", ")
        ));
    }
    if !shadowed.is_empty() {
        description.push_str(&format!(
            "\n\nRoutes registered but never reached (an earlier route with the same \
             method matches every path they do): {}.",
            shadowed.join(", ")
        ));
    }
    let mut components = json!({
        "schemas": schemas(),
        "responses": generic_components(),
        "headers": headers(),
    });
    if let Some(auth) = auth {
        description.push_str(AUTH_DESCRIPTION);
        components["securitySchemes"] = security::schemes(auth);
        components["headers"]["WWW-Authenticate"] = security::www_authenticate();
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": name,
            "version": env!("CARGO_PKG_VERSION"),
            "description": description,
        },
        "paths": paths,
        "components": components,
    })
}

/// What `info.description` says when authentication is configured.
const AUTH_DESCRIPTION: &str = "\n\nAuthentication: each operation's `security` is what \
this node's authorization rules ask of its paths (the first rule matching a request's method \
and path applies; an operation some of whose paths a rule singles out lists them in its \
description). `security: []` means no credential is needed. Otherwise a credential is sent \
by one of the schemes of `components.securitySchemes`, and an empty requirement `{}` among the \
alternatives means some of its paths need none. A name in a requirement's array is a scope \
the credential must hold (an OpenAPI 3.1 role name; percore's scopes are not OAuth2 \
scopes), and the operation's description names it too. A credential that is sent is \
verified on every route, public ones included, so any operation may answer 401 \
`credential_invalid`; 403 `scope_missing` is listed where a scope is needed. The same \
rules apply on `--admin-listen`.";

/// What a route not in [`builtin`] gets: its path parameters, the statuses
/// the framework may answer for any route, and a `default` response that
/// makes no claim about what the application's handler answers.
pub fn minimal(method: &str, pattern: &str, path: &str) -> Value {
    let parameters: Vec<Value> = param_names(path)
        .into_iter()
        .zip(param_names(&openapi_path(pattern)))
        .map(|(name, own)| {
            let description = if name == own {
                format!("The route's `:{own}` segment.")
            } else {
                format!("The route's `:{own}` segment (this path names it `{name}`).")
            };
            path_param(name, &description)
        })
        .collect();
    let mut responses = Map::new();
    responses.insert(
        "default".into(),
        json!({
            "description": "Whatever the application's handler answers: this document \
                            makes no claim about its statuses, headers or body."
        }),
    );
    add_generic(&mut responses);
    let mut operation = json!({
        "summary": format!("{method} {pattern}"),
        "description": "A route of the application's own; percore knows only its \
                        method and pattern. The listed statuses are the ones the \
                        framework itself may answer for any route.",
        "responses": responses,
    });
    if !parameters.is_empty() {
        operation["parameters"] = Value::Array(parameters);
    }
    operation
}

/// The methods an OpenAPI 3.1 path item has an operation field for.
const OPERATION_METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

const DESCRIPTION: &str = "Generated from the routes this node serves. The router tries \
them in the order they were registered and the first that matches wins, so a literal path \
(`/v1/dead`) is served by its own route rather than by a templated one (`/v1/{collection}`) \
registered after it.\n\n\
Every error is a JSON body `{\"error\": \"<code>\", \"message\": \"<what to fix>\"}` \
(`#/components/schemas/Error`), one status per kind of error.\n\n\
Every `GET` operation also answers `HEAD`, with the same status and headers and no body; \
`HEAD` is not listed separately.\n\n\
A method that no route serves on a path that some route matches gets 405 with `Allow` \
(`#/components/responses/MethodNotAllowed`); it is not listed under any operation, since \
no listed operation can answer it. A path no route matches gets 404 `not_found`.\n\n\
The HTTP layer may refuse any request before it reaches a route (400, 408, 413, 431, 501, \
505, closing the connection), and a connection over the io core's limit or arriving while \
the server shuts down gets 503 before its request is read; these are listed under every \
operation, through `#/components/responses`.\n\n\
When a rate limit is configured, any request may get 429, and every response on a limited \
route carries `RateLimit-Policy`, `RateLimit` and `X-RateLimit-Limit`, `-Remaining` and \
`-Reset`; without one, 429 is never sent.";

/// One built-in route's description: everything except the responses every
/// route shares, which `add_generic` merges in.
pub struct Operation {
    /// The `operationId`.
    pub id: &'static str,
    /// The tag grouping it with its route group.
    pub tag: &'static str,
    /// One line.
    pub summary: &'static str,
    /// What it does, in a paragraph.
    pub description: &'static str,
    /// The pattern's path parameters: its own `:name` and a description.
    pub path: &'static [(&'static str, &'static str)],
    /// Query and header parameters, as OpenAPI parameter objects.
    pub params: Vec<Value>,
    /// The request body object, if it takes one.
    pub body: Option<Value>,
    /// The responses the handler answers, by status.
    pub responses: Vec<(&'static str, Value)>,
}

impl Operation {
    /// The OpenAPI operation object, under `path` (the OpenAPI template
    /// `pattern` is listed under, whose parameter names may differ).
    pub fn into_operation(self, pattern: &str, path: &str) -> Value {
        let own_path = openapi_path(pattern);
        let own = param_names(&own_path);
        let mut parameters: Vec<Value> = param_names(path)
            .into_iter()
            .zip(own)
            .map(|(name, own)| {
                let known = self
                    .path
                    .iter()
                    .find(|(n, _)| *n == own)
                    .map_or("", |(_, d)| *d);
                let description = if name == own {
                    known.to_owned()
                } else {
                    format!(
                        "{known} (The route names it `:{own}`; it shares this path \
                         template with a route that names it `{name}`.)"
                    )
                };
                path_param(name, &description)
            })
            .collect();
        parameters.extend(self.params);
        let mut responses = Map::new();
        for (status, response) in self.responses {
            responses.insert(status.to_owned(), response);
        }
        add_generic(&mut responses);
        let mut operation = json!({
            "tags": [self.tag],
            "summary": self.summary,
            "description": self.description,
            "operationId": self.id,
            "responses": responses,
        });
        if !parameters.is_empty() {
            operation["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = self.body {
            operation["requestBody"] = body;
        }
        operation
    }
}

/// The description of a built-in route, keyed by its method and pattern.
pub fn builtin(method: &str, pattern: &str) -> Option<Operation> {
    let op = match (method, pattern) {
        ("GET", "/plaintext") => Operation {
            id: "plaintext",
            tag: "benchmarks",
            summary: "TechEmpower plaintext: `Hello, World!`",
            description: "A fixed body, no serialization.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![("200", text("`Hello, World!`", "text/plain"))],
        },
        ("GET", "/json") => Operation {
            id: "json",
            tag: "benchmarks",
            summary: "TechEmpower JSON serialization",
            description: "`{\"message\":\"Hello, World!\"}`, serialized per request.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![("200", ok_json("The message.", "Message"))],
        },
        ("POST", "/echo") => Operation {
            id: "echo",
            tag: "benchmarks",
            summary: "Answers with the request body",
            description: "An upload target for benchmarks: the body comes back with the \
                          request's `Content-Type` (`application/octet-stream` without one).",
            path: &[],
            params: vec![],
            body: Some(json!({
                "description": "Any body, of any media type.",
                "required": false,
                "content": { "*/*": { "schema": {} } },
            })),
            responses: vec![(
                "200",
                json!({
                    "description": "The request body, with the request's Content-Type.",
                    "content": { "*/*": { "schema": {} } },
                }),
            )],
        },
        ("GET", "/healthz") => Operation {
            id: "healthz",
            tag: "health",
            summary: "Liveness",
            description: "200 while the process serves. Not limited by the default \
                          rate-limit policy (a route rule naming it still applies).",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![("200", ok_json("Alive.", "Health"))],
        },
        ("GET", "/readyz") => Operation {
            id: "readyz",
            tag: "health",
            summary: "Readiness: fails while draining",
            description: "200 while serving; 503 `{\"status\":\"draining\"}` with \
                          `Retry-After: 1` once shutdown has begun. Not limited by the \
                          default rate-limit policy.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![
                ("200", ok_json("Ready.", "Readiness")),
                (
                    "503",
                    json!({
                        "description": "The server is draining: `{\"status\":\"draining\"}` \
                                        (a `Readiness` body, not an error body).",
                        "headers": { "Retry-After": { "$ref": "#/components/headers/Retry-After" } },
                        "content": { "application/json": { "schema": {
                            "anyOf": [
                                { "$ref": "#/components/schemas/Readiness" },
                                { "$ref": ERROR_SCHEMA },
                            ]
                        } } },
                    }),
                ),
            ],
        },
        ("GET", "/metrics") => Operation {
            id: "metrics",
            tag: "health",
            summary: "Prometheus metrics",
            description: "The Prometheus text format: requests by core and status, \
                          connections, latency quantiles per route, and each layer's own \
                          series (rate limiter, jobs, document store and cache). Not limited \
                          by the default rate-limit policy.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![(
                "200",
                text("The metrics.", "text/plain; version=0.0.4; charset=utf-8"),
            )],
        },
        ("POST", "/admin/drain") => Operation {
            id: "drain",
            tag: "health",
            summary: "Drain this node",
            description: "What SIGTERM does: `/readyz` fails at once, the node keeps \
                          serving for `--drain-delay`, then stops accepting and finishes \
                          in-flight work within the grace period. Asked twice, it drains \
                          once. Served on `--admin-listen` alone when that is set.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![("202", ok_json("Draining.", "Readiness"))],
        },
        ("GET", "/openapi.json") => Operation {
            id: "openapi",
            tag: "health",
            summary: "This document",
            description: "The OpenAPI 3.1 description of the routes this node serves.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![("200", ok_json("The OpenAPI document.", "OpenApiDocument"))],
        },
        ("POST", "/v1/jobs/:queue") => Operation {
            id: "submitJob",
            tag: "jobs",
            summary: "Submit a job; answered once it is durable",
            description: "Validates the payload against the job kind, then answers 202 with \
                          the job's id and `Location` once the job is durable (in the local \
                          job log, or stored by JetStream). A repeated `Idempotency-Key` for \
                          the same kind answers the first job with `Idempotent-Replayed: \
                          true`. The body is read as JSON whatever its Content-Type.",
            path: &[(
                "queue",
                "The job kind: `webhook` or `email` when the built-in kinds are \
                 registered, or a kind the application registered.",
            )],
            params: vec![
                query(
                    "delay",
                    "Run no earlier than this long from now: a duration like `30s` or `5m`. \
                     Refused (400) with `--queue nats`.",
                    json!({ "type": "string" }),
                ),
                query(
                    "run_at",
                    "Run no earlier than this Unix time, in milliseconds. Refused (400) \
                     with `--queue nats`.",
                    json!({ "type": "integer", "minimum": 0 }),
                ),
                header(
                    "Idempotency-Key",
                    "1 to 255 printable ASCII characters; a repeat for the same kind \
                     returns the first job instead of making a second one.",
                    json!({ "type": "string", "pattern": "^[!-~]{1,255}$" }),
                ),
            ],
            body: Some(json!({
                "description": "The job's payload: a JSON object the kind accepts.",
                "required": true,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobSubmission" } } },
            })),
            responses: vec![
                (
                    "202",
                    json!({
                        "description": "Accepted and durable.",
                        "headers": {
                            "Location": { "$ref": "#/components/headers/Location" },
                            "Idempotent-Replayed": {
                                "description": "`true` when an `Idempotency-Key` matched an earlier job, which is the one answered.",
                                "schema": { "type": "string", "const": "true" },
                            },
                        },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobAccepted" } } },
                    }),
                ),
                (
                    "400",
                    error(
                        "`bad_request`: the body is not JSON or not an object, the kind is \
                         unknown or refuses the payload, the `Idempotency-Key` is malformed, \
                         `delay` or `run_at` is malformed, an unknown query parameter was \
                         sent, or a delayed job was sent with `--queue nats`.",
                    ),
                ),
                (
                    "503",
                    json!({
                        "description": "`jobs_disabled` (no `--data-dir` nor `--queue`), \
                                        `job_log_unavailable` (the job log or JetStream cannot \
                                        take it; nothing was accepted) or `queue_full` (past \
                                        `--queue-capacity` waiting jobs of this kind; with \
                                        `Retry-After: 1`).",
                        "headers": { "Retry-After": { "$ref": "#/components/headers/Retry-After" } },
                        "content": error_content(),
                    }),
                ),
            ],
        },
        ("GET", "/v1/jobs/:id") => Operation {
            id: "getJob",
            tag: "jobs",
            summary: "A job's status",
            description: "`queued`, `running`, `failed` (waiting to retry, with `last_error` \
                          and `attempts`), `succeeded` (with `result`) or `dead`.",
            path: &[("id", "The job's id, in decimal.")],
            params: vec![],
            body: None,
            responses: vec![
                ("200", ok_json("The job's status.", "JobStatus")),
                (
                    "404",
                    error("`not_found`: no such job (or the id is not a number)."),
                ),
                (
                    "503",
                    error("`jobs_disabled`: no `--data-dir` nor `--queue`."),
                ),
            ],
        },
        ("POST", "/v1/jobs/:id/redrive") => Operation {
            id: "redriveJob",
            tag: "jobs",
            summary: "Run a dead job again",
            description: "Runs a dead job again from its first attempt, answered once that \
                          is durable. With `--queue nats` it runs under a new id (see \
                          `Location`). The request body is ignored.",
            path: &[("id", "The dead job's id, in decimal.")],
            params: vec![],
            body: None,
            responses: vec![
                (
                    "202",
                    json!({
                        "description": "Queued again.",
                        "headers": { "Location": { "$ref": "#/components/headers/Location" } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/JobRedriven" } } },
                    }),
                ),
                ("400", error("`bad_request`: the job is not dead.")),
                (
                    "404",
                    error("`not_found`: no such job (or the id is not a number)."),
                ),
                (
                    "503",
                    error(
                        "`jobs_disabled` (no `--data-dir` nor `--queue`) or \
                         `job_log_unavailable` (the redrive could not be made durable).",
                    ),
                ),
            ],
        },
        ("GET", "/v1/dead") => Operation {
            id: "deadLetters",
            tag: "jobs",
            summary: "Every dead job, with its last error",
            description: "Every dead job the node knows of, with its `last_error`; redrive one with `POST /v1/jobs/{id}/redrive`.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![
                ("200", ok_json("The dead jobs.", "DeadLetters")),
                (
                    "503",
                    error("`jobs_disabled`: no `--data-dir` nor `--queue`."),
                ),
            ],
        },
        ("GET", "/v1/:collection/:key") => Operation {
            id: "getDocument",
            tag: "documents",
            summary: "Read a document",
            description: "The document with its `ETag`, projected by `fields` if given. \
                          `If-Match` is evaluated first (412 when it fails), then \
                          `If-None-Match` (304 when it matches).",
            path: DOC_PATH,
            params: vec![fields(), if_match(), if_none_match()],
            body: None,
            responses: vec![
                (
                    "200",
                    json!({
                        "description": "The document (or its projection).",
                        "headers": { "ETag": { "$ref": "#/components/headers/ETag" } },
                        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Document" } } },
                    }),
                ),
                (
                    "304",
                    json!({
                        "description": "`If-None-Match` matched the document's ETag; no body.",
                        "headers": { "ETag": { "$ref": "#/components/headers/ETag" } },
                    }),
                ),
                (
                    "400",
                    error(
                        "`invalid_key` (a bad collection name or key), `invalid_fields` (a bad \
                         `fields` mask) or `bad_request` (a query parameter that is not \
                         percent-encoded UTF-8).",
                    ),
                ),
                ("404", error("`not_found`: no such document.")),
                (
                    "412",
                    error(
                        "`precondition_failed`: `If-Match` does not match the document's \
                         ETag, or the document does not exist.",
                    ),
                ),
                (
                    "503",
                    error("`store_unavailable`: the document store cannot serve the read."),
                ),
            ],
        },
        ("PUT", "/v1/:collection/:key") => Operation {
            id: "putDocument",
            tag: "documents",
            summary: "Create or replace a document",
            description: "Stores the body (compacted) and answers with it and its `ETag`, \
                          durably. `If-Match` (`*`: must exist) and `If-None-Match` (`*`: \
                          create only) make it conditional; a failed condition writes \
                          nothing. A request without Content-Type is taken as JSON.",
            path: DOC_PATH,
            params: vec![if_match(), if_none_match()],
            body: Some(json!({
                "description": "The document: a JSON object.",
                "required": true,
                "content": {
                    "application/json": { "schema": { "$ref": "#/components/schemas/Document" } },
                    "application/*+json": { "schema": { "$ref": "#/components/schemas/Document" } },
                },
            })),
            responses: vec![
                ("200", written("Replaced: the stored document.")),
                ("201", written("Created: the stored document.")),
                (
                    "400",
                    error(
                        "`invalid_key` (a bad collection name or key) or `invalid_document` (not \
                         JSON, not an object, trailing bytes, deeper than 64 levels).",
                    ),
                ),
                (
                    "412",
                    error(
                        "`precondition_failed`: `If-Match` or `If-None-Match` is not \
                         satisfied; nothing was written.",
                    ),
                ),
                (
                    "413",
                    error("`document_too_large`: over `--max-document-bytes`."),
                ),
                (
                    "415",
                    error("`unsupported_media_type`: a Content-Type that is not JSON."),
                ),
                (
                    "503",
                    error("`store_unavailable`: the store cannot commit; nothing was written."),
                ),
            ],
        },
        ("PATCH", "/v1/:collection/:key") => Operation {
            id: "patchDocument",
            tag: "documents",
            summary: "Merge-patch an existing document (RFC 7396)",
            description: "A JSON merge patch: `null` removes a member, objects merge, arrays \
                          replace. The document must exist. Conditional on `If-Match` / \
                          `If-None-Match` like PUT.",
            path: DOC_PATH,
            params: vec![if_match(), if_none_match()],
            body: Some(json!({
                "description": "The merge patch: a JSON object.",
                "required": true,
                "content": {
                    "application/merge-patch+json": { "schema": { "$ref": "#/components/schemas/MergePatch" } },
                    "application/json": { "schema": { "$ref": "#/components/schemas/MergePatch" } },
                },
            })),
            responses: vec![
                ("200", written("Patched: the stored document.")),
                (
                    "400",
                    error(
                        "`invalid_key` (a bad collection name or key) or `invalid_document` (the \
                         patch is not a usable JSON object, or its result is not a valid \
                         document).",
                    ),
                ),
                ("404", error("`not_found`: no such document.")),
                (
                    "412",
                    error(
                        "`precondition_failed`: `If-Match` or `If-None-Match` is not \
                         satisfied; nothing was written.",
                    ),
                ),
                (
                    "413",
                    error(
                        "`document_too_large`: the patched document is over \
                         `--max-document-bytes`.",
                    ),
                ),
                (
                    "415",
                    error(
                        "`unsupported_media_type`: a Content-Type other than \
                         `application/merge-patch+json` or `application/json`.",
                    ),
                ),
                (
                    "503",
                    error("`store_unavailable`: the store cannot commit; nothing was written."),
                ),
            ],
        },
        ("DELETE", "/v1/:collection/:key") => Operation {
            id: "deleteDocument",
            tag: "documents",
            summary: "Delete a document",
            description: "Removes the document, durably. Conditional on `If-Match` / \
                          `If-None-Match`.",
            path: DOC_PATH,
            params: vec![if_match(), if_none_match()],
            body: None,
            responses: vec![
                ("204", json!({ "description": "Deleted; no body." })),
                ("400", error("`invalid_key`: a bad collection name or key.")),
                ("404", error("`not_found`: no such document.")),
                (
                    "412",
                    error(
                        "`precondition_failed`: `If-Match` or `If-None-Match` is not \
                         satisfied; nothing was deleted.",
                    ),
                ),
                (
                    "503",
                    error("`store_unavailable`: the store cannot commit; nothing was deleted."),
                ),
            ],
        },
        ("GET", "/v1/:collection") => Operation {
            id: "scanCollection",
            tag: "documents",
            summary: "Documents of a collection, in key order",
            description: "A page of documents in key (byte) order across every shard; \
                          follow `next` (as `after`) until it is `null`. Pages are also \
                          bounded by bytes (4 MiB of documents per shard, 8 MiB per answer).",
            path: &[("collection", COLLECTION)],
            params: vec![
                query(
                    "limit",
                    "Most items in the page, 1 to 1000 (default 100).",
                    json!({ "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 }),
                ),
                query(
                    "after",
                    "Start after this key (the previous page's `next`).",
                    json!({ "type": "string", "minLength": 1, "maxLength": 512 }),
                ),
                fields(),
            ],
            body: None,
            responses: vec![
                ("200", ok_json("A page of documents.", "ScanPage")),
                (
                    "400",
                    error(
                        "`invalid_key` (a bad collection name or `after` key), \
                         `invalid_fields` (a bad `fields` mask) or `bad_request` (`limit` out \
                         of range, or a query parameter that is not percent-encoded UTF-8).",
                    ),
                ),
                (
                    "503",
                    error("`store_unavailable`: a shard cannot serve the scan."),
                ),
            ],
        },
        ("GET", "/db") => Operation {
            id: "db",
            tag: "techempower",
            summary: "TechEmpower single query: one random World row",
            description: "One World row, read from the store (never the cache).",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![
                ("200", ok_json("The row.", "World")),
                ("500", error("`internal`: a World row is missing from the store.")),
                (
                    "503",
                    error("`store_unavailable`: the store cannot serve the read."),
                ),
            ],
        },
        ("GET", "/queries") => worlds(
            "queries",
            "TechEmpower multiple queries: N random World rows",
            "N World rows, each read from the store.",
            "queries",
        ),
        ("GET", "/cached-queries") => worlds(
            "cachedQueries",
            "TechEmpower cached queries: N random World rows through the cache",
            "N World rows, read through the cache partitions.",
            "count",
        ),
        ("GET", "/updates") => worlds(
            "updates",
            "TechEmpower updates: N random World rows, each given a new random number",
            "Each row is read and rewritten as one read-modify-write on its shard's store \
             thread, durable before the answer.",
            "queries",
        ),
        ("GET", "/fortunes") => Operation {
            id: "fortunes",
            tag: "techempower",
            summary: "TechEmpower fortunes: an HTML table",
            description: "Every fortune from the store plus one added at request time, \
                          sorted by message and HTML-escaped.",
            path: &[],
            params: vec![],
            body: None,
            responses: vec![
                ("200", text("The HTML page.", "text/html; charset=utf-8")),
                (
                    "500",
                    error("`internal`: a Fortune document lacks `id` or `message`."),
                ),
                (
                    "503",
                    error("`store_unavailable`: a shard cannot serve the scan."),
                ),
            ],
        },
        _ => return None,
    };
    Some(op)
}

const COLLECTION: &str = "The collection: 1 to 64 letters, digits, `_`, `-` and `.` (not \
first); `jobs` and `dead` are reserved. Anything else is 400 `invalid_key`.";

const DOC_PATH: &[(&str, &str)] = &[
    ("collection", COLLECTION),
    (
        "key",
        "The document's key, percent-encoded as needed: 1 to 512 bytes of UTF-8 once \
         decoded, no control characters. Anything else is 400 `invalid_key`.",
    ),
];

fn worlds(
    id: &'static str,
    summary: &'static str,
    description: &'static str,
    count: &str,
) -> Operation {
    Operation {
        id,
        tag: "techempower",
        summary,
        description,
        path: &[],
        params: vec![query(
            count,
            "How many rows: clamped to 1..=500; missing or not a number means 1 (the \
             benchmark's rule, so no value is refused).",
            json!({ "type": "string" }),
        )],
        body: None,
        responses: vec![
            (
                "200",
                json!({
                    "description": "The rows.",
                    "content": { "application/json": { "schema": {
                        "type": "array",
                        "items": { "$ref": "#/components/schemas/World" },
                        "minItems": 1,
                        "maxItems": 500,
                    } } },
                }),
            ),
            (
                "500",
                error("`internal`: a World row is missing from the store."),
            ),
            (
                "503",
                error("`store_unavailable`: the store cannot serve a read or write."),
            ),
        ],
    }
}

fn fields() -> Value {
    query(
        "fields",
        "A field mask, `a,b.c`: only those members (nested paths make nested objects; a \
         member the document lacks is left out).",
        json!({ "type": "string" }),
    )
}

fn if_match() -> Value {
    header(
        "If-Match",
        "`*` or entity tags, compared strongly (weak tags never match).",
        json!({ "type": "string" }),
    )
}

fn if_none_match() -> Value {
    header(
        "If-None-Match",
        "`*` or entity tags, compared weakly.",
        json!({ "type": "string" }),
    )
}

fn path_param(name: &str, description: &str) -> Value {
    json!({
        "name": name,
        "in": "path",
        "required": true,
        "description": description,
        "schema": { "type": "string" },
    })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "query", "required": false, "description": description, "schema": schema })
}

fn header(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "header", "required": false, "description": description, "schema": schema })
}

fn error_content() -> Value {
    json!({ "application/json": { "schema": { "$ref": ERROR_SCHEMA } } })
}

fn error(description: &str) -> Value {
    json!({ "description": description, "content": error_content() })
}

fn ok_json(description: &str, schema: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } },
    })
}

fn text(description: &str, media: &str) -> Value {
    json!({
        "description": description,
        "content": { media: { "schema": { "type": "string" } } },
    })
}

fn written(description: &str) -> Value {
    json!({
        "description": description,
        "headers": { "ETag": { "$ref": "#/components/headers/ETag" } },
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Document" } } },
    })
}

/// The statuses any route may get from the layers below its handler:
/// `(status, component name, description)`.
const GENERIC: [(&str, &str, &str); 9] = [
    (
        "400",
        "BadRequest",
        "Refused by the HTTP layer before any route: `malformed_request`, \
         `ambiguous_framing` (e.g. `Content-Length` with `Transfer-Encoding`), \
         `invalid_content_length` or `missing_host`; the connection closes.",
    ),
    (
        "408",
        "RequestTimeout",
        "`header_timeout` or `body_timeout`: the request's head or body did not arrive in \
         time; the connection closes.",
    ),
    (
        "413",
        "ContentTooLarge",
        "`body_too_large`: the request body is over the server's body limit; the \
         connection closes.",
    ),
    (
        "429",
        "TooManyRequests",
        "`rate_limited`: over the client's rate limit (only when a rate limit is \
         configured). A limited request with a body is answered before the body is read, \
         and the connection closes.",
    ),
    (
        "431",
        "HeadersTooLarge",
        "`headers_too_large` or `too_many_headers`; the connection closes.",
    ),
    (
        "500",
        "Internal",
        "`internal`: an internal error, e.g. a handler that wrote no response.",
    ),
    (
        "501",
        "NotImplemented",
        "`unsupported_transfer_coding`: a transfer coding other than `chunked`; the \
         connection closes.",
    ),
    (
        "503",
        "Unavailable",
        "`too_many_connections` (the io core is at its connection limit) or `draining` \
         (shutting down), answered when the connection is accepted, before its request is \
         read, with `Retry-After: 1`; the connection closes.",
    ),
    (
        "505",
        "HttpVersionNotSupported",
        "`unsupported_version`: only HTTP/1.0 and HTTP/1.1 are spoken; the connection \
         closes.",
    ),
];

/// Merges the statuses every route shares into `responses`: a reference
/// to `#/components/responses/...` where the handler has no answer of that
/// status, else the shared reason appended to the handler's.
fn add_generic(responses: &mut Map<String, Value>) {
    for (status, name, description) in GENERIC {
        match responses.get_mut(status) {
            None => {
                responses.insert(
                    status.into(),
                    json!({ "$ref": format!("#/components/responses/{name}") }),
                );
            }
            Some(existing) => {
                if let Some(Value::String(text)) = existing.get_mut("description") {
                    text.push_str(" Or, for any request: ");
                    text.push_str(description);
                }
                if let Some(Value::Object(generic_headers)) = generic_response(status, description)
                    .get("headers")
                    .cloned()
                {
                    let Value::Object(response) = existing else {
                        continue;
                    };
                    let own = response
                        .entry("headers")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(own) = own {
                        for (header, value) in generic_headers {
                            own.entry(header).or_insert(value);
                        }
                    }
                }
            }
        }
    }
}

fn generic_response(status: &str, description: &str) -> Value {
    let mut response = error(description);
    match status {
        "429" => {
            response["headers"] = json!({
                "Retry-After": { "$ref": "#/components/headers/Retry-After" },
                "RateLimit-Policy": { "$ref": "#/components/headers/RateLimit-Policy" },
                "RateLimit": { "$ref": "#/components/headers/RateLimit" },
                "X-RateLimit-Limit": { "$ref": "#/components/headers/X-RateLimit-Limit" },
                "X-RateLimit-Remaining": { "$ref": "#/components/headers/X-RateLimit-Remaining" },
                "X-RateLimit-Reset": { "$ref": "#/components/headers/X-RateLimit-Reset" },
            });
        }
        "503" => {
            response["headers"] =
                json!({ "Retry-After": { "$ref": "#/components/headers/Retry-After" } });
        }
        _ => {}
    }
    response
}

fn generic_components() -> Value {
    let mut responses = Map::new();
    for (status, name, description) in GENERIC {
        responses.insert(name.into(), generic_response(status, description));
    }
    responses.insert(
        "MethodNotAllowed".into(),
        json!({
            "description": "`method_not_allowed`: a method no route serves on a path some \
                            route matches. Never the answer of a listed operation.",
            "headers": { "Allow": { "$ref": "#/components/headers/Allow" } },
            "content": error_content(),
        }),
    );
    Value::Object(responses)
}

fn headers() -> Value {
    json!({
        "ETag": {
            "description": "The document's version, a strong entity tag (hex digits, quoted).",
            "schema": { "type": "string" },
        },
        "Location": {
            "description": "The job's status URL, `/v1/jobs/{id}`.",
            "schema": { "type": "string", "format": "uri-reference" },
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": { "type": "integer", "minimum": 0 },
        },
        "Allow": {
            "description": "The methods the path is served with, comma-separated.",
            "schema": { "type": "string" },
        },
        "RateLimit-Policy": {
            "description": "The policy: `\"name\";q=BURST;w=WINDOW_SECONDS` (IETF draft).",
            "schema": { "type": "string" },
        },
        "RateLimit": {
            "description": "`\"name\";r=REMAINING;t=RESET_SECONDS` (IETF draft).",
            "schema": { "type": "string" },
        },
        "X-RateLimit-Limit": {
            "description": "The policy's burst.",
            "schema": { "type": "integer" },
        },
        "X-RateLimit-Remaining": {
            "description": "Requests left in the burst.",
            "schema": { "type": "integer" },
        },
        "X-RateLimit-Reset": {
            "description": "Seconds until the burst is whole again.",
            "schema": { "type": "integer" },
        },
    })
}

fn schemas() -> Value {
    json!({
        "Error": {
            "type": "object",
            "description": "Every error's body.",
            "required": ["error", "message"],
            "properties": {
                "error": { "type": "string", "description": "A stable machine-readable code, e.g. `not_found`." },
                "message": { "type": "string", "description": "What went wrong and what to fix, for people." },
            },
        },
        "Message": {
            "type": "object",
            "required": ["message"],
            "properties": { "message": { "type": "string", "const": "Hello, World!" } },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": { "status": { "type": "string", "const": "ok" } },
        },
        "Readiness": {
            "type": "object",
            "required": ["status"],
            "properties": { "status": { "type": "string", "enum": ["ready", "draining"] } },
        },
        "OpenApiDocument": {
            "type": "object",
            "description": "An OpenAPI 3.1 document.",
            "required": ["openapi", "info", "paths"],
        },
        "Document": {
            "type": "object",
            "description": "Any JSON object, at most 64 levels deep and at most \
                            `--max-document-bytes` (1 MiB by default) once compacted.",
        },
        "MergePatch": {
            "type": "object",
            "description": "An RFC 7396 merge patch: `null` removes a member, objects \
                            merge, anything else replaces.",
        },
        "ScanPage": {
            "type": "object",
            "required": ["items", "next"],
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "doc"],
                        "properties": {
                            "key": { "type": "string" },
                            "doc": { "$ref": "#/components/schemas/Document" },
                        },
                    },
                },
                "next": {
                    "type": ["string", "null"],
                    "description": "The `after` of the next page, or `null` at the end.",
                },
            },
        },
        "JobSubmission": {
            "description": "A payload the job kind accepts.",
            "anyOf": [
                { "$ref": "#/components/schemas/WebhookJob" },
                { "$ref": "#/components/schemas/EmailJob" },
                { "type": "object", "description": "A payload of a kind the application registered." },
            ],
        },
        "WebhookJob": {
            "type": "object",
            "description": "`webhook`: `payload` is POSTed as JSON to `url`, signed with \
                            `X-Percore-Signature` when `--webhook-secret` is set.",
            "required": ["url", "payload"],
            "properties": {
                "url": { "type": "string", "pattern": "^http://" },
                "payload": {},
            },
        },
        "EmailJob": {
            "type": "object",
            "description": "`email`: sent through the SMTP relay `--smtp` (refused without one).",
            "required": ["to", "subject", "text"],
            "properties": {
                "to": { "type": "string", "description": "An e-mail address." },
                "subject": { "type": "string" },
                "text": { "type": "string" },
            },
        },
        "JobAccepted": {
            "type": "object",
            "required": ["id", "queue", "status", "location"],
            "properties": {
                "id": { "type": "string", "description": "The job's id, in decimal." },
                "queue": { "type": "string" },
                "status": { "type": "string", "const": "queued" },
                "location": { "type": "string", "format": "uri-reference" },
            },
        },
        "JobRedriven": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": { "type": "string", "description": "The job's id, in decimal." },
                "status": { "type": "string", "const": "queued" },
            },
        },
        "JobStatus": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {
                "id": { "type": "string", "description": "The job's id, in decimal." },
                "queue": { "type": "string" },
                "status": { "type": "string", "enum": ["queued", "running", "failed", "succeeded", "dead"] },
                "attempts": { "type": "integer", "minimum": 0 },
                "max_attempts": { "type": "integer", "minimum": 0 },
                "created_ms": { "type": "integer", "description": "Unix time, ms." },
                "run_at_ms": { "type": "integer", "description": "When it runs next (queued or failed), Unix time, ms." },
                "last_error": { "type": "string" },
                "result": { "description": "What the job returned, once succeeded." },
                "idempotency_key": { "type": ["string", "null"] },
            },
        },
        "DeadLetters": {
            "type": "object",
            "required": ["dead"],
            "properties": {
                "dead": { "type": "array", "items": { "$ref": "#/components/schemas/JobStatus" } },
            },
        },
        "World": {
            "type": "object",
            "required": ["id", "randomNumber"],
            "properties": {
                "id": { "type": "integer", "minimum": 1, "maximum": 10000 },
                "randomNumber": { "type": "integer", "minimum": 1, "maximum": 10000 },
            },
        },
    })
}

/// `/v1/:collection/:key` → `/v1/{collection}/{key}`.
pub fn openapi_path(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| match segment.strip_prefix(':') {
            Some(name) => format!("{{{name}}}"),
            None => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The pattern with its parameters' names left out: two patterns of one
/// shape match the same paths.
fn shape(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|segment| {
            if segment.starts_with(':') {
                ":"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// The `{name}` parameters of an OpenAPI path, in order.
fn param_names(path: &str) -> Vec<&str> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .collect()
}

fn unique_id(operation: &Value, method: &str, path: &str, taken: &[String]) -> String {
    let base = match operation.get("operationId").and_then(Value::as_str) {
        Some(id) => id.to_owned(),
        None => {
            let mut id = method.to_ascii_lowercase();
            for part in path.split(|c: char| !c.is_ascii_alphanumeric()) {
                if !part.is_empty() {
                    id.push('_');
                    id.push_str(part);
                }
            }
            id
        }
    };
    let mut id = base.clone();
    let mut n = 2;
    while taken.contains(&id) {
        id = format!("{base}_{n}");
        n += 1;
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_route_gets_a_minimal_operation() {
        let doc = document(
            "shop",
            &[("GET", "/products/:id"), ("GET", "/healthz")],
            None,
        );
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["title"], "shop");
        let op = &doc["paths"]["/products/{id}"]["get"];
        let params = op["parameters"].as_array().expect("parameters");
        assert_eq!(params.len(), 1);
        assert_eq!(params[0]["name"], "id");
        assert_eq!(params[0]["in"], "path");
        assert_eq!(params[0]["required"], true);
        let responses = op["responses"].as_object().expect("responses");
        // No schema claim about what the handler answers.
        assert!(responses["default"].get("content").is_none());
        for status in ["400", "429", "500", "503"] {
            assert!(responses.contains_key(status), "{status}");
        }
        assert!(!responses.keys().any(|s| s.starts_with('2')));
        assert_eq!(op["operationId"], "get_products_id");
        // The built-in one is described from the table.
        assert_eq!(doc["paths"]["/healthz"]["get"]["operationId"], "healthz");
        assert_eq!(doc["paths"].as_object().map(Map::len), Some(2));
    }

    #[test]
    fn patterns_of_one_shape_share_a_path() {
        let doc = document(
            "percore",
            &[("POST", "/v1/jobs/:queue"), ("GET", "/v1/jobs/:id")],
            None,
        );
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), 1);
        let get = &paths["/v1/jobs/{queue}"]["get"];
        assert_eq!(get["operationId"], "getJob");
        assert_eq!(get["parameters"][0]["name"], "queue");
    }

    #[test]
    fn shadowed_and_unrepresentable_routes_are_noted_not_listed() {
        let doc = document(
            "app",
            &[("GET", "/a/:x"), ("GET", "/a/:y"), ("PURGE", "/cache")],
            None,
        );
        assert_eq!(doc["paths"].as_object().map(Map::len), Some(1));
        let description = doc["info"]["description"].as_str().unwrap_or("");
        assert!(description.contains("`GET /a/:y`"));
        assert!(description.contains("`PURGE /cache`"));
    }

    #[test]
    fn static_files_are_a_note() {
        let mut doc = document("percore", &[("GET", "/json")], None);
        note_static_files(&mut doc, "/assets/");
        let description = doc["info"]["description"].as_str().unwrap_or("");
        assert!(description.contains("starting with `/assets/`"));
        assert_eq!(doc["paths"].as_object().map(Map::len), Some(1));
    }

    #[test]
    fn paths_convert() {
        assert_eq!(
            openapi_path("/v1/:collection/:key"),
            "/v1/{collection}/{key}"
        );
        assert_eq!(openapi_path("/"), "/");
    }
}

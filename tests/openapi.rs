//! `GET /openapi.json` against a real `percore serve`: every route, nothing else, every error status, what authentication asks of each operation (and, without it, nothing), valid OpenAPI 3.1.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{DataDir, Response, Server};
use serde_json::{json, Value};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The API key of the secured deployment's one key holder, who has `write`.
const WRITER_KEY: &str = "key-openapi-writer-8d2c";

fn fetch() -> Value {
    fetch_from(&Server::start(&["--cores", "1"]))
}

/// A deployment with an API keys file (one key, scope `write`) and a rule
/// of its own: reading `/v1/reports/...` needs the scope `reports`.
fn start_secured(dir: &DataDir) -> Server {
    std::fs::create_dir_all(&dir.0).expect("create the test directory");
    let keys = dir.0.join("keys.toml");
    common::write_keys(&keys, &[("writer", WRITER_KEY, &["write"])]);
    let config = dir.0.join("percore.toml");
    std::fs::write(
        &config,
        "[[auth.rules]]\nmethod = \"GET\"\npath = \"/v1/reports/*\"\nrequire = \"reports\"\n",
    )
    .expect("write the config file");
    Server::start(&[
        "--cores",
        "1",
        "--auth-keys",
        keys.to_str().expect("a UTF-8 path"),
        "--config",
        config.to_str().expect("a UTF-8 path"),
    ])
}

fn fetch_from(server: &Server) -> Value {
    let response = server.get("/openapi.json");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/json")),
        "{:?}",
        response.headers
    );
    serde_json::from_slice(&response.body).expect("the document is JSON")
}

/// `/v1/:collection/:key` → `/v1/{}/{}`: OpenAPI paths that differ only in
/// their parameters' names are one path, so compare by shape.
fn shape_of_pattern(pattern: &str) -> String {
    pattern
        .split('/')
        .map(|s| if s.starts_with(':') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

fn shape_of_path(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "{}" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The operation of `method pattern`, found by shape.
fn operation<'d>(doc: &'d Value, method: &str, pattern: &str) -> &'d Value {
    let shape = shape_of_pattern(pattern);
    let paths = doc["paths"].as_object().expect("paths");
    let (_, item) = paths
        .iter()
        .find(|(path, _)| shape_of_path(path) == shape)
        .unwrap_or_else(|| panic!("no path for {pattern}"));
    let op = &item[method.to_ascii_lowercase()];
    assert!(op.is_object(), "no {method} operation for {pattern}");
    op
}

/// Follows a local `$ref` (`#/a/b`), panicking if it does not resolve.
fn resolve<'d>(doc: &'d Value, reference: &str) -> &'d Value {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("non-local $ref {reference}"));
    doc.pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference} does not resolve"))
}

fn deref<'d>(doc: &'d Value, mut value: &'d Value) -> &'d Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        value = resolve(doc, reference);
    }
    value
}

fn statuses(doc: &Value, op: &Value) -> BTreeSet<String> {
    deref(doc, &op["responses"])
        .as_object()
        .expect("responses")
        .keys()
        .cloned()
        .collect()
}

#[test]
fn lists_every_route_and_nothing_else() {
    let doc = fetch();
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "percore");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    let routes = percore::api::percore().routes();
    assert!(routes.contains(&("GET", "/openapi.json")));
    let expected: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_ascii_lowercase(), shape_of_pattern(p)))
        .collect();
    for (method, pattern) in &routes {
        let op = operation(&doc, method, pattern);
        // From the table, not the generic fallback.
        assert!(
            op["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{method} {pattern}"
        );
        assert!(
            op["tags"].is_array(),
            "{method} {pattern} has no tag: not from the table"
        );
        let codes = statuses(&doc, op);
        assert!(
            codes
                .iter()
                .any(|s| ["200", "201", "202", "204"].contains(&s.as_str())),
            "{method} {pattern}: no success response in {codes:?}"
        );
        assert!(
            !codes.contains("default"),
            "{method} {pattern}: a generic `default` response"
        );
        // Every path parameter of the template is declared.
        let path_params = op["parameters"]
            .as_array()
            .map(|ps| ps.iter().filter(|p| p["in"] == "path").count())
            .unwrap_or(0);
        assert_eq!(
            path_params,
            pattern.matches(':').count(),
            "{method} {pattern}"
        );
    }
    let mut listed = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: unexpected field {method}"
            );
            let key = (method.clone(), shape_of_path(path));
            assert!(
                expected.contains(&key),
                "{method} {path} is documented but the router has no such route"
            );
            assert!(listed.insert(key), "{method} {path} listed twice");
            let id = op["operationId"].as_str().expect("operationId").to_owned();
            assert!(ids.insert(id.clone()), "operationId {id} is not unique");
        }
    }
    assert_eq!(listed, expected);
}

/// Every `(method, path shape)` the document lists.
fn listed(doc: &Value) -> BTreeSet<(String, String)> {
    let mut listed = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            listed.insert((method.clone(), shape_of_path(path)));
        }
    }
    listed
}

#[test]
fn with_an_admin_listener_lists_what_the_public_listener_serves() {
    let server = Server::start(&["--cores", "1", "--admin-listen", "127.0.0.1:0"]);
    let doc = fetch_from(&server);
    let app = percore::api::percore();
    let public: BTreeSet<(String, String)> = app
        .public_routes()
        .iter()
        .map(|(m, p)| (m.to_ascii_lowercase(), shape_of_pattern(p)))
        .collect();
    assert!(
        public.len() < app.routes().len(),
        "percore has operator calls"
    );
    assert_eq!(listed(&doc), public);
    for (method, path) in [
        ("get", "/metrics"),
        ("post", "/admin/drain"),
        ("get", "/v1/dead"),
    ] {
        assert!(
            !listed(&doc).contains(&(method.to_owned(), path.to_owned())),
            "{method} {path} is an operator call, served on the admin listener alone"
        );
        // ... and the public listener indeed does not serve it.
        let response = server.call(&method.to_ascii_uppercase(), path, None);
        assert_eq!(response.status, 404, "{method} {path}: {}", response.text());
    }
    assert!(doc["info"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("admin listener")));
    validate(&doc, "with an admin listener");
    // Without one, the operator calls are listed, and nothing says otherwise.
    let plain = fetch();
    assert!(listed(&plain).contains(&("get".to_owned(), "/metrics".to_owned())));
    assert!(!plain["info"]["description"]
        .as_str()
        .is_some_and(|d| d.contains("admin listener")));
}

#[test]
fn lists_every_error_status_and_every_ref_resolves() {
    let doc = fetch();
    let must = [
        (
            "PUT",
            "/v1/:collection/:key",
            &["200", "201", "400", "412", "413", "415", "503"][..],
        ),
        (
            "PATCH",
            "/v1/:collection/:key",
            &["200", "400", "404", "412", "413", "415", "503"],
        ),
        (
            "DELETE",
            "/v1/:collection/:key",
            &["204", "400", "404", "412", "503"],
        ),
        (
            "GET",
            "/v1/:collection/:key",
            &["200", "304", "400", "404", "412", "503"],
        ),
        ("GET", "/v1/:collection", &["200", "400", "503"]),
        ("POST", "/v1/jobs/:queue", &["202", "400", "503"]),
        ("GET", "/v1/jobs/:id", &["200", "404", "503"]),
        (
            "POST",
            "/v1/jobs/:id/redrive",
            &["202", "400", "404", "503"],
        ),
        ("GET", "/v1/dead", &["200", "503"]),
        ("GET", "/readyz", &["200", "503"]),
        ("GET", "/db", &["200", "500", "503"]),
    ];
    for (method, pattern, wanted) in must {
        let codes = statuses(&doc, operation(&doc, method, pattern));
        for status in wanted {
            assert!(
                codes.contains(*status),
                "{method} {pattern} lacks {status}: {codes:?}"
            );
        }
    }
    // What the HTTP layer and the node may answer for any request.
    for (method, pattern) in percore::api::percore().routes() {
        let codes = statuses(&doc, operation(&doc, method, pattern));
        for status in [
            "400", "408", "413", "429", "431", "500", "501", "503", "505",
        ] {
            assert!(codes.contains(status), "{method} {pattern} lacks {status}");
        }
    }
    // The headers that go with them.
    let header = |method: &str, pattern: &str, status: &str, name: &str| {
        let op = operation(&doc, method, pattern);
        let response = deref(&doc, &op["responses"][status]);
        assert!(
            response["headers"].get(name).is_some(),
            "{method} {pattern} {status} lacks header {name}"
        );
        deref(&doc, &response["headers"][name]);
    };
    header("GET", "/v1/:collection/:key", "200", "ETag");
    header("GET", "/v1/:collection/:key", "304", "ETag");
    header("PUT", "/v1/:collection/:key", "201", "ETag");
    header("POST", "/v1/jobs/:queue", "202", "Location");
    header("POST", "/v1/jobs/:queue", "503", "Retry-After");
    header("POST", "/v1/jobs/:id/redrive", "202", "Location");
    header("GET", "/readyz", "503", "Retry-After");
    header("GET", "/json", "429", "Retry-After");
    let allow = resolve(&doc, "#/components/responses/MethodNotAllowed");
    assert!(allow["headers"].get("Allow").is_some());
    // Parameters and bodies.
    let names = |method: &str, pattern: &str| -> Vec<String> {
        operation(&doc, method, pattern)["parameters"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .map(|p| {
                        format!(
                            "{}:{}",
                            p["in"].as_str().unwrap_or(""),
                            p["name"].as_str().unwrap_or("")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let get = names("GET", "/v1/:collection/:key");
    for p in ["query:fields", "header:If-Match", "header:If-None-Match"] {
        assert!(get.contains(&p.to_owned()), "{get:?}");
    }
    let submit = names("POST", "/v1/jobs/:queue");
    for p in ["query:delay", "query:run_at", "header:Idempotency-Key"] {
        assert!(submit.contains(&p.to_owned()), "{submit:?}");
    }
    let scan = names("GET", "/v1/:collection");
    for p in ["query:limit", "query:after", "query:fields"] {
        assert!(scan.contains(&p.to_owned()), "{scan:?}");
    }
    let patch = operation(&doc, "PATCH", "/v1/:collection/:key");
    assert!(patch["requestBody"]["content"]
        .get("application/merge-patch+json")
        .is_some());
    for (method, pattern) in [("PUT", "/v1/:collection/:key"), ("POST", "/v1/jobs/:queue")] {
        let body = &operation(&doc, method, pattern)["requestBody"];
        assert!(
            deref(&doc, &body["content"]["application/json"]["schema"]).is_object(),
            "{method} {pattern}"
        );
    }

    // Every 4xx/5xx response's JSON body is (or may be) the Error schema.
    let error_ref = "#/components/schemas/Error";
    let mut checked = 0;
    for item in doc["paths"].as_object().expect("paths").values() {
        for op in item.as_object().expect("path item").values() {
            for (status, response) in deref(&doc, &op["responses"])
                .as_object()
                .expect("responses")
            {
                if !(status.starts_with('4') || status.starts_with('5')) {
                    continue;
                }
                let response = deref(&doc, response);
                let schema = &response["content"]["application/json"]["schema"];
                let direct = schema["$ref"] == error_ref;
                let among = schema["anyOf"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["$ref"] == error_ref));
                assert!(
                    direct || among,
                    "{} {status}: the schema {schema} is not #/components/schemas/Error",
                    op["operationId"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 100, "only {checked} error responses");
    let error = resolve(&doc, error_ref);
    assert_eq!(error["type"], "object");
    assert_eq!(error["required"], serde_json::json!(["error", "message"]));
    assert_eq!(error["properties"]["error"]["type"], "string");
    assert_eq!(error["properties"]["message"]["type"], "string");

    // Every $ref anywhere in the document resolves.
    fn walk(doc: &Value, value: &Value, count: &mut usize) {
        match value {
            Value::Object(map) => {
                if let Some(reference) = map.get("$ref") {
                    let reference = reference.as_str().expect("$ref is a string");
                    resolve(doc, reference);
                    *count += 1;
                }
                map.values().for_each(|v| walk(doc, v, count));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(doc, v, count)),
            _ => {}
        }
    }
    let mut refs = 0;
    walk(&doc, &doc, &mut refs);
    assert!(refs > 100, "only {refs} $refs");
}

/// `METHOD path` with no body, and `header` (a whole header line) if given.
fn send(server: &Server, method: &str, path: &str, header: &str) -> Response {
    let mut conn = server.connect();
    conn.send(
        format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{header}Content-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    conn.response()
}

/// The path of an OpenAPI template with every parameter `x`.
fn sample(path: &str) -> String {
    path.split('/')
        .map(|s| if s.starts_with('{') { "x" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn with_auth_each_operation_says_what_it_needs() {
    let dir = DataDir::new("openapi-auth");
    let server = start_secured(&dir);
    let doc = fetch_from(&server);

    // The schemes the node accepts: API keys only, by either header.
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("components.securitySchemes");
    assert_eq!(schemes.len(), 2, "{schemes:?}");
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    let bearer = schemes["bearer"]["description"].as_str().unwrap_or("");
    assert!(bearer.contains("API key"), "{bearer}");
    // No JWT option is set: the document must not offer tokens.
    assert!(!bearer.contains("JWT"), "{bearer}");
    assert!(schemes["bearer"].get("bearerFormat").is_none());
    assert_eq!(
        schemes["apiKey"],
        json!({
            "type": "apiKey",
            "in": "header",
            "name": "X-API-Key",
            "description": schemes["apiKey"]["description"],
        })
    );
    assert!(resolve(&doc, "#/components/headers/WWW-Authenticate").is_object());
    let both = |scopes: &[&str]| json!([{ "bearer": scopes }, { "apiKey": scopes }]);

    // Public routes need nothing, and cannot answer 403.
    for (method, pattern) in [
        ("GET", "/healthz"),
        ("GET", "/v1/:collection"),
        ("GET", "/json"),
    ] {
        let op = operation(&doc, method, pattern);
        assert_eq!(op["security"], json!([]), "{method} {pattern}");
        assert!(!statuses(&doc, op).contains("403"), "{method} {pattern}");
        // A refused credential is verified even here.
        assert!(statuses(&doc, op).contains("401"), "{method} {pattern}");
    }

    // A write needs a credential by either scheme, and may answer 401 and
    // 403 with the error body and challenge. The scope is `write`, but
    // `jobs` under `/v1/jobs/` (the jobs rule comes first), so no one scope
    // is required of every path and the requirement names none; the
    // description says which is which.
    let put = operation(&doc, "PUT", "/v1/:collection/:key");
    assert_eq!(put["security"], both(&[]));
    for status in ["401", "403"] {
        let response = deref(&doc, &put["responses"][status]);
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"], "#/components/schemas/Error",
            "{status}"
        );
        assert!(
            response["headers"].get("WWW-Authenticate").is_some(),
            "{status}"
        );
    }
    let text = put["description"].as_str().unwrap_or("");
    assert!(text.contains("the scope `write`"), "{text}");
    assert!(
        text.contains("`PUT /v1/jobs/{key}`: a credential holding the scope `jobs`"),
        "{text}"
    );

    // Routes of one scope name it (an OpenAPI 3.1 role name).
    assert_eq!(
        operation(&doc, "POST", "/echo")["security"],
        both(&["write"])
    );
    let dead = operation(&doc, "GET", "/v1/dead");
    assert_eq!(dead["security"], both(&["admin"]));
    assert!(dead["description"]
        .as_str()
        .is_some_and(|d| d.contains("the scope `admin`")));
    // Jobs need `jobs`, except e-mail, which needs `email`: no one scope
    // is required of every path, so the requirement names none.
    let submit = operation(&doc, "POST", "/v1/jobs/:queue");
    assert_eq!(submit["security"], both(&[]));
    let text = submit["description"].as_str().unwrap_or("");
    assert!(text.contains("the scope `jobs`"), "{text}");
    assert!(
        text.contains("`POST /v1/jobs/email`: a credential holding the scope `email`"),
        "{text}"
    );

    // The deployment's own rule: documents are public to read, except
    // under `reports`, so a credential is one alternative and none another.
    let read = operation(&doc, "GET", "/v1/:collection/:key");
    let mut alternatives = both(&[]);
    alternatives.as_array_mut().expect("array").push(json!({}));
    assert_eq!(read["security"], alternatives);
    assert!(statuses(&doc, read).contains("403"));
    let text = read["description"].as_str().unwrap_or("");
    assert!(
        text.contains("`GET /v1/reports/{key}`: a credential holding the scope `reports`"),
        "{text}"
    );

    // The running node answers as the document says.
    let anonymous = send(&server, "PUT", "/v1/notes/1", "");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    assert_eq!(anonymous.error_code(), "credential_missing");
    assert!(anonymous.header("www-authenticate").is_some());
    let report = send(
        &server,
        "GET",
        "/v1/reports/q1",
        &format!("X-API-Key: {WRITER_KEY}\r\n"),
    );
    assert_eq!(report.status, 403, "{}", report.text());
    assert_eq!(report.error_code(), "scope_missing");
    let bad = send(
        &server,
        "GET",
        "/healthz",
        "Authorization: Bearer not-a-key\r\n",
    );
    assert_eq!(bad.status, 401, "{}", bad.text());
    assert_eq!(bad.error_code(), "credential_invalid");

    // And so does every operation whose requirement holds for all its
    // paths: anonymous requests are refused exactly where a credential is
    // required, and the writer's key exactly where another scope is.
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let security = op["security"]
                .as_array()
                .expect("every operation has security");
            if security.iter().any(|s| s == &json!({})) {
                continue;
            }
            let method = method.to_ascii_uppercase();
            let target = sample(path);
            let anonymous = send(&server, &method, &target, "");
            if security.is_empty() {
                assert_ne!(
                    anonymous.status,
                    401,
                    "{method} {target}: {}",
                    anonymous.text()
                );
                continue;
            }
            assert_eq!(
                anonymous.status,
                401,
                "{method} {target}: {}",
                anonymous.text()
            );
            assert_eq!(anonymous.error_code(), "credential_missing");
            let named = &security[0]["bearer"];
            let writer = send(
                &server,
                &method,
                &target,
                &format!("Authorization: Bearer {WRITER_KEY}\r\n"),
            );
            if named == &json!(["write"]) {
                assert!(
                    writer.status != 401 && writer.status != 403,
                    "{method} {target}: {} {}",
                    writer.status,
                    writer.text()
                );
            } else if named.as_array().is_some_and(|n| !n.is_empty()) {
                assert_eq!(writer.status, 403, "{method} {target}: {}", writer.text());
                assert_eq!(writer.error_code(), "scope_missing");
            }
            checked += 1;
        }
    }
    assert!(checked >= 8, "only {checked} protected operations checked");
}

#[test]
fn without_auth_claims_none() {
    let doc = fetch();
    assert!(doc["components"].get("securitySchemes").is_none());
    assert!(doc.get("security").is_none());
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            assert!(op.get("security").is_none(), "{method} {path}");
            let codes = statuses(&doc, op);
            assert!(
                !codes.contains("401") && !codes.contains("403"),
                "{method} {path}: {codes:?}"
            );
        }
    }
    // And the node indeed asks nothing: a write goes through.
    let server = Server::start(&["--cores", "1"]);
    let put = server.call("PUT", "/v1/notes/1", Some("{}"));
    assert_eq!(put.status, 201, "{}", put.text());
}

#[test]
fn is_valid_openapi_3_1() {
    let available = Command::new("python3")
        .args(["-c", "import openapi_spec_validator"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let why = "python3 cannot import openapi_spec_validator \
                   (python3 -m pip install openapi-spec-validator)";
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI=true requires validating /openapi.json as OpenAPI 3.1, but {why}");
        }
        println!("skipped: validating /openapi.json as OpenAPI 3.1, because {why}");
        return;
    }
    validate(&fetch(), "plain");
    let dir = DataDir::new("openapi-valid-auth");
    let secured = fetch_from(&start_secured(&dir));
    assert!(secured["components"].get("securitySchemes").is_some());
    validate(&secured, "auth");
}

/// Runs openapi-spec-validator on `doc`; `name` keeps the files of
/// concurrent calls apart.
fn validate(doc: &Value, name: &str) {
    let file = std::env::temp_dir().join(format!(
        "percore-openapi-{name}-{}.json",
        std::process::id()
    ));
    std::fs::write(&file, serde_json::to_vec_pretty(doc).expect("serialize")).expect("write");
    // The CLI (`python -m openapi_spec_validator`) of 0.6 and later; older
    // releases lack `--schema`, so fall back to the `validate` function.
    let cli = Command::new("python3")
        .args(["-m", "openapi_spec_validator", "--schema", "3.1"])
        .arg(&file)
        .output()
        .expect("run python3");
    let output = if cli.status.success() || !String::from_utf8_lossy(&cli.stderr).contains("usage:")
    {
        cli
    } else {
        Command::new("python3")
            .args([
                "-c",
                "import json, sys\n\
                 from openapi_spec_validator import validate\n\
                 from openapi_spec_validator.validation import OpenAPIV31SpecValidator\n\
                 validate(json.load(open(sys.argv[1])), cls=OpenAPIV31SpecValidator)\n\
                 print('OK')",
            ])
            .arg(&file)
            .output()
            .expect("run python3")
    };
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "openapi-spec-validator refused the document:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

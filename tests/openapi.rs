//! `GET /openapi.json` against a real `percore serve`: every route, nothing else, every error status, valid OpenAPI 3.1.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::Server;
use serde_json::Value;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn fetch() -> Value {
    let server = Server::start(&["--cores", "1"]);
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
    let doc = fetch();
    let file = std::env::temp_dir().join(format!("percore-openapi-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).expect("serialize")).expect("write");
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

//! What `/openapi.json` says about authentication when it is configured: the
//! schemes a client can present, and for each operation what the running
//! rules ask of it.
//!
//! What a request needs is decided by [`Auth::access`] on its concrete
//! path, so one operation (`POST /v1/jobs/{queue}`) can need one thing for
//! most of its paths and another where a rule names a value of a parameter
//! (`POST /v1/jobs/email` needs `email`, every other kind `jobs`). Nothing
//! here re-implements the rules: the segments the rules' patterns name only
//! choose the sample paths, one per class of parameter values the rules can
//! tell apart, and [`Auth::access`] says what each sample needs.

use serde_json::{json, Map, Value};

use crate::app::{Match, Router};
use crate::auth::{jwt, Access, Auth};
use crate::limit::PathPattern;

use super::{error_content, param_names};

/// The scheme for `Authorization: Bearer` (an API key or a JWT).
pub const BEARER: &str = "bearer";

/// The scheme for `X-API-Key`, offered when API keys are configured.
pub const API_KEY: &str = "apiKey";

/// The most sample paths asked about for one operation: the rules would
/// have to name dozens of values of each of its parameters to reach it.
/// Past it the operation is described as needing "it depends", which is
/// true, rather than taking unbounded time per request of the document.
pub const MAX_SAMPLES: usize = 4096;

/// `components.securitySchemes`: what a client can send, as configured.
pub fn schemes(auth: &Auth) -> Value {
    let options = auth.options();
    let keys = options.keys_file.is_some();
    let mut bearer = json!({ "type": "http", "scheme": "bearer" });
    let mut text = String::from("`Authorization: Bearer <credential>`");
    match (keys, &options.jwt) {
        (true, Some(_)) => text.push_str(
            ": an API key or a JWT. A credential of three dot-separated parts is \
             read as a JWT, anything else as an API key.",
        ),
        (true, None) => text.push_str(": an API key."),
        (false, _) => {
            text.push_str(": a JWT.");
            bearer["bearerFormat"] = json!("JWT");
        }
    }
    if keys {
        text.push_str(
            " API keys are issued by the deployment (its `--auth-keys` file); a key's \
             scopes are the ones the file gives it.",
        );
    }
    if let Some(tokens) = &options.jwt {
        let mut signed = Vec::new();
        if tokens.hs256_secret.is_some() {
            signed.push("HS256 with the deployment's shared secret");
        }
        if tokens.key_set.is_some() {
            signed.push("RS256 or ES256 by a key of the deployment's JWK set (the one its `kid` names, if it names one)");
        }
        text.push_str(&format!(
            " A JWT must be signed {}, carry `exp` and a string `sub`, and not be used \
             before its `nbf` ({} seconds of clock skew are allowed)",
            signed.join(", or "),
            jwt::LEEWAY.as_secs()
        ));
        if let Some(issuer) = &tokens.issuer {
            text.push_str(&format!("; its `iss` must be `{issuer}`"));
        }
        if let Some(audience) = &tokens.audience {
            text.push_str(&format!("; its `aud` must name `{audience}`"));
        }
        text.push_str(&format!(
            ". Its scopes are its `{}` claim: a space-separated string or an array \
             of strings.",
            tokens.scope_claim
        ));
    }
    bearer["description"] = Value::String(text);
    let mut schemes = Map::new();
    schemes.insert(BEARER.into(), bearer);
    if keys {
        schemes.insert(
            API_KEY.into(),
            json!({
                "type": "apiKey",
                "in": "header",
                "name": "X-API-Key",
                "description": "`X-API-Key: <API key>`: the same keys as \
                                `Authorization: Bearer`. A request is checked with \
                                whichever of the two headers it sends first.",
            }),
        );
    }
    Value::Object(schemes)
}

/// `components.headers.WWW-Authenticate`, which every 401 and 403 carries.
pub fn www_authenticate() -> Value {
    json!({
        "description": "The challenge: `Bearer realm=\"percore\"` for a missing \
                        credential, with `error=\"invalid_token\"` for a refused one, \
                        `error=\"insufficient_scope\", scope=\"<scope>\"` for one \
                        without the route's scope.",
        "schema": { "type": "string" },
    })
}

/// One path segment of a route's pattern.
#[derive(Debug, Clone, Copy)]
enum Part<'p> {
    Literal(&'p str),
    Param,
}

/// A class of values of one path parameter that the rules cannot tell
/// apart: every value of it matches the same rules.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// A value no rule names.
    Any,
    /// Starting with this text (a rule's trailing `*` ends inside the
    /// segment), but no value of a narrower class.
    StartsWith(String),
    /// This value, which a rule names.
    Is(String),
}

impl Class {
    /// Whether every value of `other` is also of `self` as written (`{x}`
    /// holds every value, `x` starting with `ab` every one that does).
    fn covers(&self, other: &Class) -> bool {
        match (self, other) {
            (Self::Any, _) => true,
            (Self::StartsWith(p), Self::StartsWith(v) | Self::Is(v)) => v.starts_with(p.as_str()),
            (a, b) => a == b,
        }
    }

    /// Orders classes so a class comes after every class that covers it.
    fn narrowness(&self) -> usize {
        match self {
            Self::Any => 0,
            Self::StartsWith(p) => 1 + p.len(),
            Self::Is(v) => 2 + v.len(),
        }
    }
}

/// A form of an operation's path (its parameters' classes) and what its
/// requests need.
#[derive(Debug, Clone)]
struct Form {
    classes: Vec<Class>,
    access: Access,
}

impl Form {
    fn covers(&self, other: &Form) -> bool {
        self.classes
            .iter()
            .zip(&other.classes)
            .all(|(a, b)| a.covers(b))
    }

    fn narrowness(&self) -> usize {
        self.classes.iter().map(Class::narrowness).sum()
    }
}

/// What the rules ask of one operation's requests.
#[derive(Debug, Clone)]
pub struct Requirement {
    /// What its paths need when no rule names its parameters' values (all
    /// of them, for a path without parameters).
    pub usual: Access,
    /// Forms of its path that a rule singles out, as `(shown, access)`:
    /// `shown` is the method and path with the values the rule names
    /// (`POST /v1/jobs/email`), broadest first. Where more than one matches
    /// a request, the narrowest applies: a form is listed unless the
    /// narrowest listed forms covering it (or `usual`, when none does) say
    /// what it needs, so a request no listed form matches needs `usual`,
    /// and the narrowest listed forms matching any request agree.
    pub exceptions: Vec<(String, Access)>,
    /// True when the rules name too many values of its parameters to work
    /// out (over [`MAX_SAMPLES`] classes): then any access may apply.
    pub unlisted: bool,
}

impl Requirement {
    /// What the rules ask of route `index` of `router`, `method pattern`,
    /// listed in the document under `path` (which may name its parameters
    /// otherwise). Only paths the router gives to this route count:
    /// a value another route serves is described under that route.
    pub fn of(
        auth: &Auth,
        router: &Router<()>,
        index: usize,
        method: &str,
        pattern: &str,
        path: &str,
    ) -> Self {
        let parts: Vec<Part<'_>> = pattern
            .strip_prefix('/')
            .unwrap_or(pattern)
            .split('/')
            .map(|s| {
                if s.starts_with(':') {
                    Part::Param
                } else {
                    Part::Literal(s)
                }
            })
            .collect();
        let classes = classes(&parts, auth.rule_paths());
        let filler = filler(&parts, auth.rule_paths());
        let sample = |classes: &[Class]| -> String {
            let mut values = classes.iter();
            let mut path = String::new();
            for part in &parts {
                path.push('/');
                match part {
                    Part::Literal(literal) => path.push_str(literal),
                    Part::Param => match values.next() {
                        Some(Class::Is(value)) => path.push_str(value),
                        Some(Class::StartsWith(start)) => {
                            path.push_str(start);
                            path.push(filler);
                        }
                        Some(Class::Any) | None => path.push(filler),
                    },
                }
            }
            path
        };
        let params = classes.len();
        let all_any = vec![Class::Any; params];
        let usual = auth.access(method, &sample(&all_any));
        let samples = classes
            .iter()
            .try_fold(1usize, |n, c| n.checked_mul(c.len()))
            .unwrap_or(usize::MAX);
        if samples > MAX_SAMPLES {
            return Self {
                usual,
                exceptions: Vec::new(),
                unlisted: true,
            };
        }
        // Every combination of the parameters' classes, asked about once.
        let mut forms = Vec::new();
        let mut choice = vec![0usize; params];
        'combinations: loop {
            let form: Vec<Class> = choice
                .iter()
                .zip(&classes)
                .map(|(&i, c)| c[i].clone())
                .collect();
            if form != all_any {
                let path = sample(&form);
                let served_here = matches!(
                    router.route(method, &path),
                    Match::Found { index: found, .. } if found == index
                );
                if served_here {
                    forms.push(Form {
                        access: auth.access(method, &path),
                        classes: form,
                    });
                }
            }
            for (i, c) in choice.iter_mut().zip(&classes) {
                *i += 1;
                if *i < c.len() {
                    continue 'combinations;
                }
                *i = 0;
            }
            break;
        }
        // Broadest first, so each form is judged against the listed forms
        // covering it, which come before it.
        forms.sort_by_key(Form::narrowness);
        let mut listed: Vec<Form> = Vec::new();
        for form in forms {
            // What the list already says of its requests: the narrowest
            // listed forms covering it, or `usual` when none does. It is
            // listed unless that is one answer, and its own.
            let wider: Vec<&Form> = listed.iter().filter(|w| w.covers(&form)).collect();
            let mut narrowest = wider
                .iter()
                .filter(|w| !wider.iter().any(|n| n.classes != w.classes && w.covers(n)))
                .map(|w| w.access)
                .peekable();
            let said = if narrowest.peek().is_none() {
                form.access == usual
            } else {
                narrowest.all(|access| access == form.access)
            };
            if !said {
                listed.push(form);
            }
        }
        let names = param_names(path);
        let exceptions = listed
            .into_iter()
            .map(|form| (show(method, path, &names, &form.classes), form.access))
            .collect();
        Self {
            usual,
            exceptions,
            unlisted: false,
        }
    }

    /// Every access some of the operation's requests need.
    fn accesses(&self) -> impl Iterator<Item = Access> + '_ {
        std::iter::once(self.usual).chain(self.exceptions.iter().map(|(_, a)| *a))
    }

    /// True when some request needs no credential.
    fn anonymous(&self) -> bool {
        self.unlisted || self.accesses().any(|a| a == Access::Public)
    }

    /// True when some request needs a credential.
    fn credentialed(&self) -> bool {
        self.unlisted || self.accesses().any(|a| a != Access::Public)
    }

    /// True when some request needs a scope (so may get 403).
    fn scoped(&self) -> bool {
        self.unlisted || self.accesses().any(|a| matches!(a, Access::Scope(_)))
    }

    /// Adds `security`, the 401 and 403 responses and a paragraph on
    /// authorization to `operation`.
    pub fn apply(&self, auth: &Auth, operation: &mut Value) {
        operation["security"] = self.security(auth);
        let mut unauthorized = error_response(if self.credentialed() {
            "`credential_missing`: no credential where one is needed, or \
             `credential_invalid`: a key or token that is unknown, malformed, expired \
             or not accepted here."
        } else {
            "`credential_invalid`: the request sent a credential and it was refused \
             (unknown, malformed, expired or not accepted here). No credential is \
             needed here, but one that is sent is verified."
        });
        unauthorized["headers"] = json!({
            "WWW-Authenticate": { "$ref": "#/components/headers/WWW-Authenticate" }
        });
        let mut responses = vec![("401", unauthorized)];
        if self.scoped() {
            let mut forbidden = error_response(
                "`scope_missing`: the credential is valid but does not hold the scope \
                 this request needs; `WWW-Authenticate` names it.",
            );
            forbidden["headers"] = json!({
                "WWW-Authenticate": { "$ref": "#/components/headers/WWW-Authenticate" }
            });
            responses.push(("403", forbidden));
        }
        if let Some(Value::Object(map)) = operation.get_mut("responses") {
            for (status, response) in responses {
                map.insert(status.into(), response);
            }
        }
        let paragraph = self.describe(auth);
        match operation.get_mut("description") {
            Some(Value::String(text)) => {
                text.push_str("\n\n");
                text.push_str(&paragraph);
            }
            _ => operation["description"] = Value::String(paragraph),
        }
    }

    /// The operation's `security`: the alternatives a request may satisfy.
    ///
    /// An operation no request of which needs a credential gets `[]` (none
    /// needed, stated rather than left to a top-level default). Otherwise a
    /// credential by either scheme, and `{}` too when some of its requests
    /// need none. When every request needs one scope, the requirement names
    /// it: OpenAPI 3.1 lets the array of a scheme that is not OAuth2 or
    /// OpenID Connect hold "role names which are required for the
    /// execution", which a percore scope is. When its requests need
    /// different scopes, no one list is required of them all, so the arrays
    /// stay empty and the description says which path needs which; the
    /// description names the scope in every case, for tools that read
    /// those arrays as OAuth2 scopes only.
    fn security(&self, auth: &Auth) -> Value {
        if !self.credentialed() {
            return json!([]);
        }
        let scope = match self.usual {
            Access::Scope(bit) if !self.unlisted && self.accesses().all(|a| a == self.usual) => {
                auth.scope_name(bit)
            }
            _ => None,
        };
        let roles: Vec<&str> = scope.into_iter().collect();
        let mut alternatives = vec![json!({ BEARER: roles })];
        if auth.options().keys_file.is_some() {
            alternatives.push(json!({ API_KEY: roles }));
        }
        if self.anonymous() {
            alternatives.push(json!({}));
        }
        Value::Array(alternatives)
    }

    /// The paragraph the operation's description gets.
    fn describe(&self, auth: &Auth) -> String {
        let mut text = format!("**Authorization:** {}", need(auth, self.usual));
        if self.unlisted {
            text.push_str(
                ", for paths whose parameters hold values no rule names. The \
                 deployment's rules name too many values of its parameters to list \
                 what those paths need here: any of them may need a credential or a \
                 scope.",
            );
        } else if self.exceptions.is_empty() {
            text.push('.');
        } else {
            text.push_str(
                ", except where a rule names a value of its parameters (the narrowest \
                 form that matches a request applies):",
            );
            for (shown, access) in &self.exceptions {
                text.push_str(&format!("\n- {shown}: {}", need(auth, *access)));
            }
        }
        if self.credentialed() {
            text.push_str(
                "\n\nWithout a needed credential: 401 `credential_missing`; with one \
                 that is refused: 401 `credential_invalid`",
            );
            if self.scoped() {
                text.push_str("; with one that lacks the scope: 403 `scope_missing`");
            }
            text.push('.');
        } else {
            text.push_str(" A credential that is sent is verified all the same: a refused one is 401 `credential_invalid`.");
        }
        text
    }
}

/// What `access` asks of a client, in words.
fn need(auth: &Auth, access: Access) -> String {
    match access {
        Access::Public => "public: no credential needed".into(),
        Access::Authenticated => "any valid credential".into(),
        Access::Scope(bit) => format!(
            "a credential holding the scope `{}`",
            auth.scope_name(bit).unwrap_or("?")
        ),
    }
}

/// `METHOD /path` with the values a form fixes in place of its parameters.
fn show(method: &str, path: &str, names: &[&str], classes: &[Class]) -> String {
    let mut conditions = Vec::new();
    let mut values = classes.iter().zip(names);
    let shown: Vec<String> = path
        .split('/')
        .map(|segment| {
            if !(segment.starts_with('{') && segment.ends_with('}')) {
                return segment.to_owned();
            }
            match values.next() {
                Some((Class::Is(value), _)) => value.clone(),
                Some((Class::StartsWith(prefix), name)) => {
                    conditions.push(format!("`{name}` starts with `{prefix}`"));
                    segment.to_owned()
                }
                _ => segment.to_owned(),
            }
        })
        .collect();
    let mut text = format!("`{method} {}`", shown.join("/"));
    if !conditions.is_empty() {
        text.push_str(&format!(" where {}", conditions.join(" and ")));
    }
    text
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": error_content() })
}

/// What a rule's pattern says of each path segment, as far as it names
/// whole segments (`Some(literal)`, `None` for `*`), and the start of the
/// segment after them when a trailing `*` ends inside one (`/v1/jo*`).
fn segments_named(pattern: &PathPattern) -> (Vec<Option<&str>>, Option<&str>) {
    match pattern {
        PathPattern::Exact(path) => (
            path.strip_prefix('/')
                .unwrap_or(path)
                .split('/')
                .map(Some)
                .collect(),
            None,
        ),
        PathPattern::Prefix(prefix) => {
            let mut whole: Vec<&str> = prefix
                .strip_prefix('/')
                .unwrap_or(prefix)
                .split('/')
                .collect();
            let partial = whole.pop().filter(|p| !p.is_empty());
            (whole.into_iter().map(Some).collect(), partial)
        }
        PathPattern::Segments { segments, .. } => {
            (segments.iter().map(|s| s.as_deref()).collect(), None)
        }
    }
}

/// The classes of each parameter of a route whose path is `parts`: a value
/// no rule names, and each value (or start of one) a rule names for it.
/// Rules whose literal segments contradict the route's are left out: they
/// match none of its paths.
fn classes<'r>(
    parts: &[Part<'_>],
    rules: impl Iterator<Item = &'r PathPattern>,
) -> Vec<Vec<Class>> {
    let param_of: Vec<Option<usize>> = parts
        .iter()
        .scan(0, |next, part| {
            Some(match part {
                Part::Param => {
                    *next += 1;
                    Some(*next - 1)
                }
                Part::Literal(_) => None,
            })
        })
        .collect();
    let params = param_of.iter().flatten().count();
    let mut classes = vec![vec![Class::Any]; params];
    let mut add = |param: usize, class: Class| {
        if !classes[param].contains(&class) {
            classes[param].push(class);
        }
    };
    for rule in rules {
        let (whole, partial) = segments_named(rule);
        let contradicts = whole.iter().zip(parts).any(|(named, part)| {
            matches!((named, part), (Some(n), Part::Literal(l)) if n != l)
        }) || partial.is_some_and(|start| {
            matches!(parts.get(whole.len()), Some(Part::Literal(l)) if !l.starts_with(start))
        });
        if contradicts {
            continue;
        }
        for (named, param) in whole.iter().zip(&param_of) {
            if let (Some(value), Some(param)) = (named, param) {
                // The router never gives a parameter an empty segment.
                if !value.is_empty() {
                    add(*param, Class::Is((*value).to_owned()));
                }
            }
        }
        if let (Some(start), Some(Some(param))) = (partial, param_of.get(whole.len())) {
            add(*param, Class::StartsWith(start.to_owned()));
        }
    }
    classes
}

/// A character no rule's segments and no literal of the route contain:
/// the sample of a class ends with it, so it equals no value a rule names
/// and starts with no start of one that a narrower class holds.
fn filler<'r>(parts: &[Part<'_>], rules: impl Iterator<Item = &'r PathPattern>) -> char {
    let mut taken = String::new();
    for rule in rules {
        let (whole, partial) = segments_named(rule);
        whole.into_iter().flatten().for_each(|s| taken.push_str(s));
        partial.into_iter().for_each(|s| taken.push_str(s));
    }
    for part in parts {
        if let Part::Literal(literal) = part {
            taken.push_str(literal);
        }
    }
    // Characters a path segment may hold as they are, then control
    // characters, which no sensible rule names.
    "~!$'(),;=@:-_."
        .chars()
        .chain((1u8..0x20).map(char::from))
        .find(|c| !taken.contains(*c))
        .unwrap_or('~')
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::api::openapi::document;
    use crate::auth::{AuthOptions, JwtOptions, RuleSpec};

    /// Authentication by HS256 tokens alone, with `rules` before the defaults.
    fn tokens_only(rules: &[(Option<&str>, &str, &str)]) -> Arc<Auth> {
        Auth::new(AuthOptions {
            keys_file: None,
            jwt: Some(JwtOptions {
                hs256_secret: Some(b"a secret of at least thirty-two bytes...".to_vec()),
                issuer: Some("https://issuer.example".into()),
                scope_claim: "roles".into(),
                ..JwtOptions::default()
            }),
            rules: rules
                .iter()
                .map(|&(method, path, require)| RuleSpec {
                    method: method.map(str::to_owned),
                    path: PathPattern::parse(path).expect("pattern"),
                    require: require.to_owned(),
                })
                .collect(),
        })
        .expect("auth")
    }

    fn percore_doc(auth: &Auth) -> Value {
        document("percore", &crate::api::percore().routes(), Some(auth))
    }

    fn exceptions(doc: &Value, method: &str, path: &str) -> Vec<String> {
        let description = doc["paths"][path][method]["description"]
            .as_str()
            .expect("description");
        description
            .lines()
            .filter_map(|line| line.strip_prefix("- "))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn the_default_rules_as_each_operation_sees_them() {
        let auth = tokens_only(&[]);
        let doc = percore_doc(&auth);
        let schemes = doc["components"]["securitySchemes"]
            .as_object()
            .expect("securitySchemes");
        // Tokens only: no X-API-Key scheme, and the bearer is a JWT.
        assert_eq!(schemes.keys().collect::<Vec<_>>(), ["bearer"]);
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["bearer"]["bearerFormat"], "JWT");
        let text = schemes["bearer"]["description"].as_str().unwrap_or("");
        for what in [
            "HS256",
            "`iss` must be `https://issuer.example`",
            "`roles` claim",
        ] {
            assert!(text.contains(what), "{what}: {text}");
        }
        assert!(!text.contains("API key"), "{text}");
        assert!(!text.contains("RS256"), "{text}");
        let op = |method: &str, path: &str| doc["paths"][path][method].clone();

        let healthz = op("get", "/healthz");
        assert_eq!(healthz["security"], json!([]));
        assert!(healthz["responses"].get("401").is_some());
        assert!(healthz["responses"].get("403").is_none());

        // One scope for every path: named in the requirement.
        let status = op("get", "/v1/jobs/{queue}");
        assert_eq!(status["security"], json!([{ "bearer": ["jobs"] }]));
        assert!(status["responses"].get("403").is_some());

        // `jobs` for every kind but `email`: no one scope is required of
        // all, so none is named, and the description says which is which.
        let submit = op("post", "/v1/jobs/{queue}");
        assert_eq!(submit["security"], json!([{ "bearer": [] }]));
        assert_eq!(
            exceptions(&doc, "post", "/v1/jobs/{queue}"),
            ["`POST /v1/jobs/email`: a credential holding the scope `email`"]
        );
        assert!(submit["description"].as_str().is_some_and(
            |d| d.contains("**Authorization:** a credential holding the scope `jobs`")
        ));

        // `/v1/jobs/...` and `/v1/dead` are other routes' paths: reads of
        // documents are public throughout.
        assert_eq!(op("get", "/v1/{collection}/{key}")["security"], json!([]));
        assert!(exceptions(&doc, "get", "/v1/{collection}/{key}").is_empty());
        assert_eq!(op("get", "/v1/{collection}")["security"], json!([]));
        // A write of a "document" under `/v1/jobs/` meets the jobs rule first.
        assert_eq!(
            exceptions(&doc, "put", "/v1/{collection}/{key}"),
            ["`PUT /v1/jobs/{key}`: a credential holding the scope `jobs`"]
        );
        assert_eq!(
            op("post", "/v1/jobs/{id}/redrive")["security"],
            json!([{ "bearer": ["admin"] }])
        );
    }

    #[test]
    fn the_narrowest_form_applies_and_redundant_ones_are_left_out() {
        let auth = tokens_only(&[
            (Some("GET"), "/v1/secret/open", "public"),
            (Some("GET"), "/v1/secret/*", "secret"),
            (None, "/v1/se*", "authenticated"),
        ]);
        let doc = percore_doc(&auth);
        assert_eq!(
            exceptions(&doc, "get", "/v1/{collection}/{key}"),
            [
                "`GET /v1/{collection}/{key}` where `collection` starts with `se`: any valid credential",
                "`GET /v1/secret/{key}`: a credential holding the scope `secret`",
                "`GET /v1/secret/open`: public: no credential needed",
            ]
        );
        // Public for most paths, a credential for some: `{}` is an alternative.
        assert_eq!(
            doc["paths"]["/v1/{collection}/{key}"]["get"]["security"],
            json!([{ "bearer": [] }, {}])
        );
        assert!(doc["paths"]["/v1/{collection}/{key}"]["get"]["responses"]
            .get("403")
            .is_some());
        // The scan's single segment starts with `se` or not; it never holds
        // two, so the `secret` rules never apply to it.
        assert_eq!(
            exceptions(&doc, "get", "/v1/{collection}"),
            ["`GET /v1/{collection}` where `collection` starts with `se`: any valid credential"]
        );
        assert!(doc["paths"]["/v1/{collection}"]["get"]["responses"]
            .get("403")
            .is_none());
    }

    #[test]
    fn a_sample_holds_no_character_a_rule_names() {
        let auth = tokens_only(&[(Some("GET"), "/items/~", "tilde")]);
        let doc = document("shop", &[("GET", "/items/:id")], Some(&auth));
        // Were `~` the filler, every id would look like `~` to the rules.
        assert_eq!(
            doc["paths"]["/items/{id}"]["get"]["security"],
            json!([{ "bearer": [] }, {}])
        );
        assert_eq!(
            exceptions(&doc, "get", "/items/{id}"),
            ["`GET /items/~`: a credential holding the scope `tilde`"]
        );
    }

    #[test]
    fn too_many_named_values_say_anything_may_apply() {
        let rules: Vec<String> = (0..17).map(|n| format!("/r/v{n}/v{n}/v{n}")).collect();
        let specs: Vec<(Option<&str>, &str, &str)> = rules
            .iter()
            .map(|path| (None, path.as_str(), "x"))
            .collect();
        let auth = tokens_only(&specs);
        let doc = document("shop", &[("GET", "/r/:a/:b/:c")], Some(&auth));
        let op = &doc["paths"]["/r/{a}/{b}/{c}"]["get"];
        // 18 classes of each of three parameters: over MAX_SAMPLES.
        const { assert!(18 * 18 * 18 > MAX_SAMPLES) };
        assert_eq!(op["security"], json!([{ "bearer": [] }, {}]));
        assert!(op["responses"].get("401").is_some());
        assert!(op["responses"].get("403").is_some());
        assert!(op["description"]
            .as_str()
            .is_some_and(|d| d.contains("too many values")));
    }

    #[test]
    fn without_authentication_nothing_is_claimed() {
        let doc = document("percore", &crate::api::percore().routes(), None);
        assert!(doc["components"].get("securitySchemes").is_none());
        assert!(doc["components"]["headers"]
            .get("WWW-Authenticate")
            .is_none());
        for item in doc["paths"].as_object().expect("paths").values() {
            for op in item.as_object().expect("path item").values() {
                assert!(op.get("security").is_none(), "{op}");
                assert!(op["responses"].get("401").is_none(), "{op}");
                assert!(op["responses"].get("403").is_none(), "{op}");
            }
        }
    }
}

//! Who is asking and what they may do: API keys and JWT bearer tokens, per-route scope rules, and each io core's cache of verified credentials.
//!
//! Off unless configured (`--auth-keys`, `--jwt-hs256-secret-file`,
//! `--jwt-key-set`). Then every request is checked right after its head
//! is parsed, before its body is read, like the rate limiter: the first
//! rule matching its method and path says what it needs ([`Access`]),
//! the credential is read from `X-API-Key` or `Authorization: Bearer`, and
//! a missing or bad credential is a 401 with `WWW-Authenticate`, one
//! without the scope a 403, in the JSON error shape of every other error.
//! A credential that is present is verified even on a public route (a bad
//! one is a 401 everywhere), so the principal can be the rate limiter's
//! key (`--rate-limit-key principal`).
//!
//! The keys file and the key set are read again when they change
//! ([`Auth::start_watcher`]); a file that no longer parses is reported
//! and the keys already loaded stay in force. A credential is never
//! logged.
//!
//! `/openapi.json` tells clients what these rules ask of each operation
//! ([`crate::api::openapi::security`]), from [`Auth::access`] itself.

pub mod cache;
pub mod jwt;
pub mod keys;

use std::hash::{BuildHasher, Hasher, RandomState};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

use httparse::Header;
use thiserror::Error;

use crate::http::ApiError;
use crate::limit::PathPattern;
pub use cache::{CredentialCache, Verified};
pub use jwt::{JwtOptions, JwtVerifier};
pub use keys::KeySet;

/// How often the watcher looks at the keys file and the key set.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// The most distinct scopes the rules may name (one bit each).
pub const MAX_SCOPES: usize = 64;

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Any valid credential.
    Authenticated,
    /// A credential holding this scope (its bit).
    Scope(u32),
}

/// One authorization rule as written: the first matching a request applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    /// `None` matches every method; `GET` matches `HEAD` too.
    pub method: Option<String>,
    pub path: PathPattern,
    /// `public`, `authenticated`, or a scope's name.
    pub require: String,
}

impl RuleSpec {
    fn new(method: Option<&str>, path: &str, require: &str) -> Self {
        Self {
            method: method.map(str::to_owned),
            path: PathPattern::parse(path).expect("built-in patterns are valid"),
            require: require.to_owned(),
        }
    }
}

/// The rules that follow a deployment's own: reads anonymous, writes need
/// `write`, jobs need `jobs` (and `email` to send mail), the operator's
/// calls need `admin`; probes stay open so a balancer can check the node.
pub fn default_rules() -> Vec<RuleSpec> {
    vec![
        RuleSpec::new(Some("GET"), "/healthz", "public"),
        RuleSpec::new(Some("GET"), "/readyz", "public"),
        RuleSpec::new(None, "/metrics", "admin"),
        RuleSpec::new(None, "/admin/*", "admin"),
        RuleSpec::new(None, "/v1/dead", "admin"),
        RuleSpec::new(Some("POST"), "/v1/jobs/*/redrive", "admin"),
        RuleSpec::new(Some("POST"), "/v1/jobs/email", "email"),
        RuleSpec::new(None, "/v1/jobs/*", "jobs"),
        RuleSpec::new(Some("GET"), "/*", "public"),
        RuleSpec::new(None, "/*", "write"),
    ]
}

/// Everything authentication is configured with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthOptions {
    /// The API keys file ([`keys`]).
    pub keys_file: Option<PathBuf>,
    pub jwt: Option<JwtOptions>,
    /// The deployment's rules, checked before [`default_rules`].
    pub rules: Vec<RuleSpec>,
}

/// Why authentication could not be set up.
#[derive(Debug, Error)]
pub enum AuthSetupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("the rules name more than {MAX_SCOPES} scopes")]
    TooManyScopes,
}

/// A request refused for who is asking: one status each, in one place.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AuthError {
    #[error("this route needs a credential: an API key (X-API-Key, or Authorization: Bearer KEY) or a bearer token")]
    Missing,
    #[error("the credential was refused: {0}")]
    Invalid(&'static str),
    #[error("this route needs the scope `{scope}`, which the credential does not hold")]
    Forbidden { scope: String, challenge: String },
}

impl ApiError for AuthError {
    fn status(&self) -> u16 {
        match self {
            Self::Missing | Self::Invalid(_) => 401,
            Self::Forbidden { .. } => 403,
        }
    }

    fn code(&self) -> &str {
        match self {
            Self::Missing => "credential_missing",
            Self::Invalid(_) => "credential_invalid",
            Self::Forbidden { .. } => "scope_missing",
        }
    }

    fn header(&self) -> Option<(&'static str, &str)> {
        let challenge = match self {
            Self::Missing => "Bearer realm=\"percore\"",
            Self::Invalid(_) => "Bearer realm=\"percore\", error=\"invalid_token\"",
            Self::Forbidden { challenge, .. } => challenge.as_str(),
        };
        Some(("WWW-Authenticate", challenge))
    }
}

#[derive(Debug, Clone)]
struct Rule {
    method: Option<String>,
    path: PathPattern,
    access: Access,
}

/// Files the watcher compares, by what `stat` says of them.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &std::path::Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// The node's authentication: rules, keys and token verifier, shared by every io core.
pub struct Auth {
    rules: Vec<Rule>,
    /// Scope names by bit.
    scopes: Vec<String>,
    options: AuthOptions,
    keys: RwLock<Arc<KeySet>>,
    jwt: RwLock<Option<Arc<JwtVerifier>>>,
    /// Bumped on every reload: each core's cache starts over.
    generation: AtomicU64,
    stamps: RwLock<(Stamp, Stamp)>,
    /// Keyed at start-up, so principals' hashes cannot be aimed at one rate-limit bucket.
    principal_hasher: RandomState,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("rules", &self.rules)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Auth {
    pub fn new(options: AuthOptions) -> Result<Arc<Self>, AuthSetupError> {
        let mut scopes: Vec<String> = Vec::new();
        let mut rules = Vec::new();
        for spec in options.rules.iter().cloned().chain(default_rules()) {
            let access = match spec.require.as_str() {
                "public" => Access::Public,
                "authenticated" => Access::Authenticated,
                scope => {
                    let bit = match scopes.iter().position(|s| s == scope) {
                        Some(bit) => bit,
                        None => {
                            scopes.push(scope.to_owned());
                            scopes.len() - 1
                        }
                    };
                    if bit >= MAX_SCOPES {
                        return Err(AuthSetupError::TooManyScopes);
                    }
                    Access::Scope(bit as u32)
                }
            };
            rules.push(Rule {
                method: spec.method,
                path: spec.path,
                access,
            });
        }
        let keys = match &options.keys_file {
            Some(path) => KeySet::load(path)?,
            None => KeySet::default(),
        };
        let jwt = options.jwt.as_ref().map(JwtVerifier::new).transpose()?;
        let stamps = (
            options.keys_file.as_deref().and_then(stamp),
            options
                .jwt
                .as_ref()
                .and_then(|j| j.key_set.as_deref())
                .and_then(stamp),
        );
        Ok(Arc::new(Self {
            rules,
            scopes,
            keys: RwLock::new(Arc::new(keys)),
            jwt: RwLock::new(jwt.map(Arc::new)),
            generation: AtomicU64::new(0),
            stamps: RwLock::new(stamps),
            principal_hasher: RandomState::new(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            options,
        }))
    }

    /// The bit of a scope the rules name.
    pub fn scope_bit(&self, scope: &str) -> Option<u32> {
        self.scopes
            .iter()
            .position(|s| s == scope)
            .map(|bit| bit as u32)
    }

    /// The name of the scope with this bit (as [`Access::Scope`] holds it).
    pub fn scope_name(&self, bit: u32) -> Option<&str> {
        self.scopes.get(bit as usize).map(String::as_str)
    }

    /// What authentication was configured with: which credentials are
    /// accepted (for describing them, e.g. in `/openapi.json`).
    pub fn options(&self) -> &AuthOptions {
        &self.options
    }

    /// The path patterns of the rules, in the order they are tried (the
    /// deployment's, then [`default_rules`]). `/openapi.json` takes the
    /// path segments they name to choose the sample paths it asks
    /// [`Self::access`] about; what applies is always [`Self::access`]'s answer.
    pub fn rule_paths(&self) -> impl Iterator<Item = &PathPattern> {
        self.rules.iter().map(|rule| &rule.path)
    }

    fn scope_mask<'s>(&self, scopes: impl IntoIterator<Item = &'s String>) -> u64 {
        scopes
            .into_iter()
            .filter_map(|s| self.scope_bit(s))
            .fold(0, |mask, bit| mask | 1 << bit)
    }

    /// What a request needs: the first rule matching its method and path.
    pub fn access(&self, method: &str, path: &str) -> Access {
        let decoded;
        let path = if path.contains('%') {
            decoded = crate::limit::policy::percent_decode_lossy(path);
            decoded.as_str()
        } else {
            path
        };
        let method = if method == "HEAD" { "GET" } else { method };
        self.rules
            .iter()
            .find(|rule| {
                rule.method.as_deref().is_none_or(|m| m == method) && rule.path.matches(path)
            })
            .map_or(Access::Public, |rule| rule.access)
    }

    /// Checks one request: `Ok(Some)` with who is asking, `Ok(None)` for
    /// an anonymous request a public route lets through.
    pub fn check(
        &self,
        method: &str,
        path: &str,
        headers: &[Header<'_>],
        cache: &mut CredentialCache,
        now: Instant,
    ) -> Result<Option<Verified>, AuthError> {
        let access = self.access(method, path);
        let verified = match credential(headers)? {
            None if access == Access::Public => return Ok(None),
            None => return Err(AuthError::Missing),
            Some(credential) => self.verify(credential, cache, now)?,
        };
        if let Access::Scope(bit) = access {
            if verified.scopes & (1 << bit) == 0 {
                let scope = self.scopes[bit as usize].clone();
                return Err(AuthError::Forbidden {
                    challenge: format!(
                        "Bearer realm=\"percore\", error=\"insufficient_scope\", scope=\"{scope}\""
                    ),
                    scope,
                });
            }
        }
        Ok(Some(verified))
    }

    #[inline]
    fn verify(
        &self,
        credential: Credential<'_>,
        cache: &mut CredentialCache,
        now: Instant,
    ) -> Result<Verified, AuthError> {
        let bytes = credential.bytes();
        let generation = self.generation.load(Ordering::Acquire);
        if let Some(verified) = cache.get(bytes, generation, now) {
            return Ok(verified);
        }
        let (verified, expires) = match credential {
            Credential::Key(secret) => {
                let keys = Arc::clone(&self.keys.read().expect("the key set lock"));
                let holder = keys
                    .find(secret)
                    .ok_or(AuthError::Invalid("unknown API key"))?;
                let verified = Verified {
                    principal: self.principal(b"key", holder.name.as_bytes()),
                    scopes: self.scope_mask(&holder.scopes),
                };
                (verified, None)
            }
            Credential::Token(token) => {
                let verifier = self.jwt.read().expect("the verifier lock").clone();
                let verifier = verifier.ok_or(AuthError::Invalid(
                    "bearer tokens are not accepted here (no --jwt-hs256-secret-file or --jwt-key-set)",
                ))?;
                let token = std::str::from_utf8(token)
                    .map_err(|_| AuthError::Invalid("malformed token"))?;
                let checked = verifier.verify(token).map_err(AuthError::Invalid)?;
                let left = (checked.expires + jwt::LEEWAY)
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                let verified = Verified {
                    principal: self.principal(b"jwt", checked.principal.as_bytes()),
                    scopes: self.scope_mask(&checked.scopes),
                };
                (verified, Some(now + left))
            }
        };
        cache.insert(bytes, verified, expires);
        Ok(verified)
    }

    fn principal(&self, kind: &[u8], name: &[u8]) -> u64 {
        let mut hasher = self.principal_hasher.build_hasher();
        hasher.write(kind);
        hasher.write(name);
        hasher.finish()
    }

    /// Reads the keys file and key set again if either changed; true if
    /// something new took effect.
    pub fn reload_if_changed(&self) -> bool {
        let keys_path = self.options.keys_file.as_deref();
        let set_path = self.options.jwt.as_ref().and_then(|j| j.key_set.as_deref());
        let now = (keys_path.and_then(stamp), set_path.and_then(stamp));
        if *self.stamps.read().expect("the stamps lock") == now {
            return false;
        }
        let mut changed = false;
        let before = *self.stamps.read().expect("the stamps lock");
        if let Some(path) = keys_path.filter(|_| before.0 != now.0) {
            match KeySet::load(path) {
                Ok(keys) => {
                    eprintln!(
                        "percore: loaded {} API keys from {}",
                        keys.len(),
                        path.display()
                    );
                    *self.keys.write().expect("the key set lock") = Arc::new(keys);
                    changed = true;
                }
                Err(error) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("percore: {error}; the keys loaded before stay in force");
                }
            }
        }
        if let Some(options) = self.options.jwt.as_ref().filter(|_| before.1 != now.1) {
            match JwtVerifier::new(options) {
                Ok(verifier) => {
                    *self.jwt.write().expect("the verifier lock") = Some(Arc::new(verifier));
                    eprintln!(
                        "percore: loaded the JWT key set {}",
                        set_path
                            .map(|p| p.display().to_string())
                            .unwrap_or_default()
                    );
                    changed = true;
                }
                Err(error) => {
                    self.reload_failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("percore: {error}; the key set loaded before stays in force");
                }
            }
        }
        *self.stamps.write().expect("the stamps lock") = now;
        if changed {
            self.reloads.fetch_add(1, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }

    /// Reloads taken and refused, for `/metrics`.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.reloads.load(Ordering::Relaxed),
            self.reload_failures.load(Ordering::Relaxed),
        )
    }

    /// Starts the thread that reloads changed files; it ends with the last `Arc`.
    pub fn start_watcher(self: &Arc<Self>) -> std::io::Result<()> {
        let weak: Weak<Self> = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("percore-auth-watch".into())
            .spawn(move || loop {
                std::thread::sleep(RELOAD_INTERVAL);
                match weak.upgrade() {
                    Some(auth) => {
                        auth.reload_if_changed();
                    }
                    None => return,
                }
            })?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
enum Credential<'h> {
    Key(&'h [u8]),
    Token(&'h [u8]),
}

impl<'h> Credential<'h> {
    fn bytes(&self) -> &'h [u8] {
        match self {
            Self::Key(bytes) | Self::Token(bytes) => bytes,
        }
    }
}

/// The credential a request carries: `X-API-Key`, or `Authorization:
/// Bearer` (a token when it has a JWT's three parts, else a key).
fn credential<'h>(headers: &[Header<'h>]) -> Result<Option<Credential<'h>>, AuthError> {
    for header in headers {
        if header.name.eq_ignore_ascii_case("x-api-key") {
            return Ok(Some(Credential::Key(trim(header.value))));
        }
        if header.name.eq_ignore_ascii_case("authorization") {
            let value = trim(header.value);
            let Some(rest) = value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case(b"bearer "))
                .map(|_| trim(&value[7..]))
            else {
                return Err(AuthError::Invalid(
                    "only `Authorization: Bearer` credentials are accepted",
                ));
            };
            let dots = rest.iter().filter(|&&b| b == b'.').count();
            return Ok(Some(if dots == 2 {
                Credential::Token(rest)
            } else {
                Credential::Key(rest)
            }));
        }
    }
    Ok(None)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests;

//! One [`Config`] for the server, resolved from declared options: flags, `PERCORE_*` variables, an optional TOML file, defaults.
//!
//! Precedence: a flag beats its environment variable, which beats the file,
//! which beats the default. Every option is declared once ([`spec::Opt`],
//! percore's in [`options`]) and has all three spellings: `--max-body-bytes`,
//! `PERCORE_MAX_BODY_BYTES`, `max_body_bytes`. A bad value is a
//! [`ConfigError`] naming the option and what is allowed; the CLI exits 64
//! (EX_USAGE) with it. An application adds its own options with
//! [`parse_serve`] and reads them back typed from [`Values`].

pub mod options;
pub mod parse;
pub mod spec;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Arg, ArgMatches};
use serde::Deserialize;
use thiserror::Error;

use crate::auth::{AuthOptions, JwtOptions, RuleSpec};
use crate::http::parse::Limits;
use crate::limit::{Cidr, KeySource, PathPattern, Policy, Rate, RouteRule, Rules};
use crate::queue::nats::NatsOptions;
use crate::queue::QueueOptions;
use crate::runtime::cpu;
use crate::statics::StaticOptions;
use crate::store::pg::PgOptions;
use crate::store::{Backend, ShardStrategy, StoreOptions};

pub use parse::{parse_duration, whole_number_in};
pub use spec::{AnyOpt, Defaulted, Opt, Optional, Presence, Registry, Source, Spec, Values};

use options as o;

/// A value the user must change, with the option it came from.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid value for `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    /// A declaration that cannot join the command line: a bad name, a clash, a default that does not parse.
    #[error("option `{name}` cannot be declared: {message}")]
    Declaration { name: String, message: String },
    /// The command line itself: an unknown flag, or `--help` / `--version` (see [`clap::Error::use_stderr`]).
    #[error("{0}")]
    Cli(#[from] clap::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Keys of the file that are not options: the `[rate_limit]` table's own.
const FILE_ONLY_KEYS: &[&str] = &["rate_limit.exempt", "rate_limit.routes", "auth.rules"];

/// Every option of percore, in `--help` order.
pub fn builtin() -> &'static [&'static dyn AnyOpt] {
    o::ALL
}

/// percore's options then `extra`, refusing clashes.
pub fn registry(extra: &[&'static dyn AnyOpt]) -> Result<Registry, ConfigError> {
    Registry::new(o::ALL, extra, FILE_ONLY_KEYS)
}

/// The `serve` command: `--config FILE`, then percore's options and `extra`, grouped by section.
pub fn serve_command(extra: &[&'static dyn AnyOpt]) -> Result<clap::Command, ConfigError> {
    let registry = registry(extra)?;
    Ok(clap::Command::new("serve")
        .about("Serve HTTP: one io core per CPU, each with its own SO_REUSEPORT listener.")
        .arg(
            Arg::new("config")
                .long("config")
                .env("PERCORE_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "TOML file with any of the TOML keys of the options below, e.g. `cores = 4`.",
                ),
        )
        .args(registry.args()))
}

/// Resolves what [`serve_command`] (built with the same `extra`) matched.
pub fn from_matches(
    matches: &ArgMatches,
    extra: &[&'static dyn AnyOpt],
    reserved_routes: &[&str],
) -> Result<(Config, Values), ConfigError> {
    let registry = registry(extra)?;
    let path = matches.get_one::<PathBuf>("config");
    let file = match path {
        Some(path) => read_file(path, &registry)?,
        None => toml::Table::new(),
    };
    let values = registry.resolve(matches, path.map(|p| (p.as_path(), &file)))?;
    let config = Config::from_values(&values, &file, reserved_routes)?;
    Ok((config, values))
}

/// Resolves the configuration a config file of `text` gives, with no flags
/// and no `PERCORE_*` variables: what `percore serve --config FILE` checks,
/// without the file. The fuzzing seam of the TOML config ([`crate::fuzzing`]).
#[doc(hidden)]
pub fn from_file_text(text: &str) -> Result<Config, ConfigError> {
    let registry = registry(&[])?;
    let path = Path::new("fuzz.toml");
    let file = parse_file(text, path, &registry)?;
    let matches = serve_command(&[])?.try_get_matches_from(["percore"])?;
    let values = registry.resolve(&matches, Some((path, &file)))?;
    Config::from_values(&values, &file, &[])
}

/// Parses a `serve` command line (`argv[0]` is the program's name) with percore's options and `extra`.
///
/// `reserved_routes` are the route patterns a `--static-prefix` may not
/// hide. `--help` and unknown flags come back as [`ConfigError::Cli`].
pub fn parse_serve(
    argv: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    extra: &[&'static dyn AnyOpt],
    reserved_routes: &[&str],
) -> Result<(Config, Values), ConfigError> {
    let matches = serve_command(extra)?.try_get_matches_from(argv)?;
    from_matches(&matches, extra, reserved_routes)
}

/// The README table of one section of percore's options and `extra`.
pub fn markdown(section: &str, extra: &[&'static dyn AnyOpt]) -> String {
    let all: Vec<&dyn AnyOpt> = o::ALL.iter().chain(extra).copied().collect();
    spec::markdown(&all, section)
}

/// The validated configuration of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    /// One CPU per io core, in core order.
    pub cpus: Vec<usize>,
    /// Steer each connection to the io core on the CPU that took its SYN (`--steer`).
    pub steer: bool,
    /// Where operator calls are served alone, when set.
    pub admin_listen: Option<SocketAddr>,
    pub max_connections_per_core: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    /// On SIGTERM, how long `/readyz` fails before draining begins (`--drain-delay`).
    pub drain_delay: Duration,
    /// The Unix socket where a node hands its listeners to its successor (`--handover`).
    pub handover: Option<PathBuf>,
    pub limits: Limits,
    /// `None` when no rate limit is configured.
    pub rate_limit: Option<Rules>,
    /// `None` unless an API keys file or a JWT key is configured.
    pub auth: Option<AuthOptions>,
    /// `None` unless `static_dir` is set.
    pub statics: Option<StaticOptions>,
    /// `None` unless `data_dir` or `queue` is set.
    pub queues: Option<QueueOptions>,
    /// The document store and its cache partitions.
    pub store: StoreOptions,
}

impl Config {
    pub fn cores(&self) -> usize {
        self.cpus.len()
    }

    /// Builds the configuration from resolved options, checking what spans several of them.
    ///
    /// `file` is the config file (for the `exempt` and `routes` of its
    /// `[rate_limit]` table and the `rules` of its `[auth]` table);
    /// `reserved_routes` are the route patterns a static prefix may not hide.
    pub fn from_values(
        values: &Values,
        file: &toml::Table,
        reserved_routes: &[&str],
    ) -> Result<Self, ConfigError> {
        let rate_limit = file.get("rate_limit");
        let cpus = values.get(&o::CPUS).unwrap_or_else(cpu::allowed_cpus);
        let cpus = match values.get(&o::CORES) {
            Some(cores) if cores > cpus.len() => {
                return Err(invalid(
                    "cores",
                    format!(
                        "{cores} io cores need {cores} CPUs, but only {} are given ({})",
                        cpus.len(),
                        cpu::format_cpu_list(&cpus)
                    ),
                ))
            }
            Some(cores) => cpus[..cores].to_vec(),
            None => cpus,
        };

        let statics = match values.get(&o::STATIC_DIR) {
            None => None,
            Some(dir) => {
                let mut options = StaticOptions::new(dir);
                let prefix = values.get(&o::STATIC_PREFIX);
                // Static paths are matched before routes: a prefix covering a
                // route (`/`, `/v1/`) would hide /healthz or the API.
                if let Some(hidden) = reserved_routes
                    .iter()
                    .find(|p| p.starts_with(prefix.as_str()))
                {
                    return Err(invalid("static_prefix", format!("`{prefix}` would hide the route {hidden}; choose a prefix no route starts with")));
                }
                options.prefix = prefix;
                options.cache_control = values.get(&o::STATIC_CACHE_CONTROL);
                options.immutable = values.get(&o::STATIC_IMMUTABLE).unwrap_or_default();
                options.not_found_page = values.get(&o::STATIC_NOT_FOUND);
                options.refresh = values.get(&o::STATIC_REFRESH);
                options.inline_max = values.get(&o::STATIC_INLINE_MAX);
                Some(options)
            }
        };

        let data_dir = values.get(&o::DATA_DIR);
        let handover = values.get(&o::HANDOVER);
        if let (Some(_), Some(dir)) = (&handover, &data_dir) {
            return Err(invalid(
                "handover",
                format!(
                    "a node hands over while its successor already serves, and both cannot write {} at once; \
                     hand over nodes whose state lives elsewhere (--store postgres, --queue nats://...) and drop --data-dir",
                    dir.display()
                ),
            ));
        }
        let nats = values.get(&o::QUEUE).map(|url| NatsOptions {
            url,
            stream: values.get(&o::QUEUE_STREAM),
        });
        let shard_map = match (values.get(&o::SHARDS), values.get(&o::SHARD_RANGES)) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "shard_ranges",
                    "set --shards or --shard-ranges, not both",
                ))
            }
            (Some(shards), None) => Some(ShardStrategy::Hash { shards }),
            (None, ranges) => ranges,
        };
        let backend = match (values.get(&o::STORE), values.get(&o::SHARD_URL)) {
            (o::StoreEngine::Embedded, None) => Backend::Embedded,
            (o::StoreEngine::Embedded, Some(_)) => {
                return Err(invalid("shard_url", "--shard-url needs --store postgres"))
            }
            (o::StoreEngine::Postgres, None) => {
                return Err(invalid(
                    "shard_url",
                    "--store postgres needs one --shard-url per shard",
                ))
            }
            (o::StoreEngine::Postgres, Some(urls)) => {
                if urls.len() > crate::store::pg::MAX_SHARDS {
                    return Err(invalid(
                        "shard_url",
                        "at most 1024 shard URLs (each is one server connection)",
                    ));
                }
                for (n, url) in urls.iter().enumerate() {
                    let place =
                        |u: &crate::store::pg::PgUrl| (u.host.clone(), u.port, u.database.clone());
                    if let Some(first) = urls[..n].iter().position(|u| place(u) == place(url)) {
                        return Err(invalid(
                            "shard_url",
                            format!(
                                "shards {first} and {n} both name {url}: every shard needs a database of its own \
                                 (a shard's table is the whole shard; scans read all of it)"
                            ),
                        ));
                    }
                }
                Backend::Postgres(PgOptions {
                    urls,
                    stale_bound: values.get(&o::CACHE_STALE_BOUND),
                    answer_timeout: values.get(&o::SHARD_ANSWER_TIMEOUT),
                })
            }
        };
        let store = StoreOptions {
            backend,
            dir: data_dir.clone(),
            shard_map,
            cache_bytes: values.get(&o::CACHE_BYTES),
            cache_ttl: values.get(&o::CACHE_TTL),
            max_document_bytes: values.get(&o::MAX_DOCUMENT_BYTES),
        };
        // With --queue the jobs live on NATS; --data-dir then holds only documents.
        let queues = match (data_dir, nats) {
            (None, None) => None,
            (dir, nats) => {
                let local_dir = if nats.is_some() { None } else { dir };
                let mut options = QueueOptions::new(local_dir.unwrap_or_default());
                options.nats = nats;
                options.workers = values.get(&o::WORKERS);
                options.worker_cpus = values.get(&o::WORKER_CPUS).unwrap_or_default();
                options.capacity = values.get(&o::QUEUE_CAPACITY);
                options.max_attempts = values.get(&o::JOB_MAX_ATTEMPTS);
                options.retry_base = values.get(&o::JOB_RETRY_BASE);
                options.visibility_timeout = values.get(&o::JOB_VISIBILITY_TIMEOUT);
                options.webhook_timeout = values.get(&o::WEBHOOK_TIMEOUT);
                options.webhook_secret = match (
                    values.get(&o::WEBHOOK_SECRET),
                    values.get(&o::WEBHOOK_SECRET_FILE),
                ) {
                    (Some(_), Some(_)) => {
                        return Err(invalid(
                            "webhook_secret_file",
                            "set --webhook-secret or --webhook-secret-file, not both",
                        ))
                    }
                    (secret, from_file) => secret.or(from_file),
                };
                options.webhook_ca = values.get(&o::WEBHOOK_CA);
                options.webhook_allow = values.get(&o::WEBHOOK_ALLOW).unwrap_or_default();
                options.email_allow_domains = values.get(&o::EMAIL_ALLOW_DOMAIN);
                options.retention = values.get(&o::JOB_RETENTION);
                options.compact_above = values.get(&o::JOB_LOG_COMPACT_ABOVE);
                options.smtp = values.get(&o::SMTP);
                options.smtp_from = values.get(&o::SMTP_FROM);
                Some(options)
            }
        };

        Ok(Self {
            listen: values.get(&o::LISTEN),
            admin_listen: values.get(&o::ADMIN_LISTEN),
            cpus,
            steer: values.get(&o::STEER),
            max_connections_per_core: values.get(&o::MAX_CONNECTIONS_PER_CORE),
            idle_timeout: values.get(&o::IDLE_TIMEOUT),
            header_timeout: values.get(&o::HEADER_TIMEOUT),
            body_timeout: values.get(&o::BODY_TIMEOUT),
            shutdown_grace: values.get(&o::SHUTDOWN_GRACE),
            drain_delay: values.get(&o::DRAIN_DELAY),
            handover,
            limits: Limits {
                max_header_bytes: values.get(&o::MAX_HEADER_BYTES),
                max_body_bytes: values.get(&o::MAX_BODY_BYTES),
                max_headers: values.get(&o::MAX_HEADERS),
            },
            rate_limit: rate_limit_rules(values, rate_limit)?,
            auth: auth_options(values, file.get("auth"))?,
            statics,
            queues,
            store,
        })
    }
}

/// What the `[auth]` table holds besides options: the authorization rules.
#[derive(Debug, Default, Deserialize)]
struct AuthFile {
    #[serde(default)]
    rules: Vec<AuthRuleFile>,
}

/// One `[[auth.rules]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthRuleFile {
    method: Option<String>,
    path: String,
    require: String,
}

/// Authentication from the options and the file's `[auth]` table; `None`
/// when no credential can be verified (then nothing is checked).
fn auth_options(
    values: &Values,
    table: Option<&toml::Value>,
) -> Result<Option<AuthOptions>, ConfigError> {
    let file: AuthFile = match table {
        None => AuthFile::default(),
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid("auth", e.message().to_owned()))?,
    };
    let mut rules = Vec::new();
    for rule in file.rules {
        let path = PathPattern::parse(&rule.path).ok_or_else(|| {
            invalid(
                "auth.rules",
                format!(
                    "path `{}` must start with / (`*` for one segment, a trailing * for the rest)",
                    rule.path
                ),
            )
        })?;
        let method = rule.method.map(|m| m.to_ascii_uppercase());
        if method
            .as_deref()
            .is_some_and(|m| m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(invalid(
                "auth.rules",
                format!("`{}`: a method is a word like GET", rule.path),
            ));
        }
        let require = rule.require.trim().to_owned();
        if require.is_empty() || require.contains(char::is_whitespace) {
            return Err(invalid(
                "auth.rules",
                format!(
                    "`{}`: require `public`, `authenticated` or one scope name",
                    rule.path
                ),
            ));
        }
        rules.push(RuleSpec {
            method,
            path,
            require,
        });
    }
    let hs256_secret = values
        .get(&o::JWT_HS256_SECRET_FILE)
        .map(String::into_bytes);
    let key_set = values.get(&o::JWT_KEY_SET);
    let jwt = (hs256_secret.is_some() || key_set.is_some()).then(|| JwtOptions {
        hs256_secret,
        key_set,
        issuer: values.get(&o::JWT_ISSUER),
        audience: values.get(&o::JWT_AUDIENCE),
        scope_claim: values.get(&o::JWT_SCOPE_CLAIM),
    });
    let keys_file = values.get(&o::AUTH_KEYS);
    if keys_file.is_none() && jwt.is_none() {
        if !rules.is_empty() {
            return Err(invalid(
                "auth.rules",
                "rules need credentials to check: set --auth-keys, --jwt-hs256-secret-file or --jwt-key-set",
            ));
        }
        if values.get(&o::RATE_LIMIT_KEY) == KeySource::Principal {
            return Err(invalid(
                "rate_limit_key",
                "`principal` needs authentication: set --auth-keys, --jwt-hs256-secret-file or --jwt-key-set",
            ));
        }
        return Ok(None);
    }
    Ok(Some(AuthOptions {
        keys_file,
        jwt,
        rules,
    }))
}

/// What the `[rate_limit]` table holds besides options: exemptions and per-route rules.
#[derive(Debug, Default, Deserialize)]
struct RateLimitFile {
    exempt: Option<Vec<String>>,
    #[serde(default)]
    routes: Vec<RateLimitRouteFile>,
}

/// One `[[rate_limit.routes]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitRouteFile {
    method: Option<String>,
    path: String,
    rate: Option<String>,
    burst: Option<u64>,
    cost: Option<u64>,
    #[serde(default)]
    exempt: bool,
    name: Option<String>,
}

fn policy_from(
    field: &'static str,
    name: String,
    rate: Rate,
    burst: Option<u64>,
) -> Result<Policy, ConfigError> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        return Err(invalid(
            field,
            format!("policy name `{name}` must be printable ASCII without quotes or backslashes"),
        ));
    }
    let burst = burst.unwrap_or(rate.count);
    if burst == 0 || burst > 1_000_000_000 {
        return Err(invalid(
            "burst",
            format!("`{burst}` is not a whole number from 1 to 1000000000"),
        ));
    }
    Ok(Policy { name, rate, burst })
}

/// The rate-limit rules from the options and the file's `[rate_limit]` table; `None` if neither sets a limit.
fn rate_limit_rules(
    values: &Values,
    table: Option<&toml::Value>,
) -> Result<Option<Rules>, ConfigError> {
    let file: RateLimitFile = match table {
        None => RateLimitFile::default(),
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid("rate_limit", e.message().to_owned()))?,
    };
    let mut policies = Vec::new();
    let burst = values.get(&o::BURST);
    let default_policy = match values.get(&o::RATE_LIMIT) {
        Some(rate) => {
            policies.push(policy_from("rate_limit", "default".into(), rate, burst)?);
            Some(0)
        }
        None if burst.is_some() => {
            return Err(invalid(
                "burst",
                "a burst needs a rate: set --rate-limit too",
            ))
        }
        None => None,
    };
    let mut routes = Vec::new();
    for route in &file.routes {
        let path = PathPattern::parse(&route.path).ok_or_else(|| {
            invalid(
                "rate_limit.routes",
                format!(
                    "path `{}` must start with / (end it with * for a prefix)",
                    route.path
                ),
            )
        })?;
        let cost = route.cost.unwrap_or(1);
        if cost == 0 {
            return Err(invalid(
                "rate_limit.routes",
                format!("cost for `{}` must be at least 1", route.path),
            ));
        }
        let policy = if route.exempt {
            None
        } else if let Some(text) = &route.rate {
            let rate = Rate::parse(text).ok_or_else(|| {
                invalid(
                    "rate_limit.routes",
                    format!("`{text}` is not a rate like 100/s, 6000/min or 10/h"),
                )
            })?;
            let name = route.name.clone().unwrap_or_else(|| route.path.clone());
            policies.push(policy_from("rate_limit.routes", name, rate, route.burst)?);
            Some(policies.len() - 1)
        } else if default_policy.is_some() {
            default_policy
        } else {
            return Err(invalid(
                "rate_limit.routes",
                format!(
                    "`{}` needs a rate, or a default rate_limit.rate",
                    route.path
                ),
            ));
        };
        routes.push(RouteRule {
            method: route.method.as_ref().map(|m| m.to_ascii_uppercase()),
            path,
            policy,
            cost,
        });
    }
    if policies.is_empty() {
        return Ok(None);
    }
    let exempt = file
        .exempt
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|item| {
            Cidr::parse(item).ok_or_else(|| {
                invalid(
                    "rate_limit.exempt",
                    format!("`{item}` is not an address or a network like 10.0.0.0/8"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(Some(Rules {
        policies,
        default_policy,
        routes,
        key: values.get(&o::RATE_LIMIT_KEY),
        trusted_proxies: values.get(&o::TRUSTED_PROXY).unwrap_or_default(),
        exempt,
        shadow: values.get(&o::RATE_LIMIT_SHADOW),
        max_keys: values.get(&o::RATE_LIMIT_MAX_KEYS),
    }))
}

fn read_file(path: &Path, registry: &Registry) -> Result<toml::Table, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read it: {e}")))?;
    parse_file(&text, path, registry)
}

/// The table of a config file's text, its keys checked against `registry`'s.
fn parse_file(text: &str, path: &Path, registry: &Registry) -> Result<toml::Table, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
    let known: Vec<&str> = registry
        .toml_keys()
        .chain(FILE_ONLY_KEYS.iter().copied())
        .collect();
    if let Some(unknown) = spec::unknown_key(&table, "", &known) {
        let mut top: Vec<&str> = Vec::new();
        for key in &known {
            let first = key.split('.').next().unwrap_or(key);
            if !top.contains(&first) {
                top.push(first);
            }
        }
        return Err(file_error(format!(
            "unknown key `{unknown}`; known keys: {}",
            top.join(", ")
        )));
    }
    Ok(table)
}

#[cfg(test)]
mod tests;

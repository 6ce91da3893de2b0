//! One `Config` for the server: flags, `PERCORE_*` environment variables and an optional TOML file, validated once.
//!
//! Precedence: a flag beats its environment variable, which beats the file,
//! which beats the default. Every field has all three spellings: `--max-body-bytes`,
//! `PERCORE_MAX_BODY_BYTES`, `max_body_bytes`. A bad value is a [`ConfigError`]
//! naming the field and what is allowed; the CLI exits 64 (EX_USAGE) with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use thiserror::Error;

use crate::http::parse::{Limits, HEADER_SLOTS};
use crate::limit::{Cidr, KeySource, PathPattern, Policy, Rate, RouteRule, Rules};
use crate::queue::nats::NatsOptions;
use crate::queue::QueueOptions;
use crate::runtime::cpu;
use crate::statics::StaticOptions;
use crate::store::{ShardStrategy, StoreOptions};

/// A value the user must change, with the field it came from.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid value for `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// The flags of `percore serve`. Each is also an environment variable and a key of the TOML file.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of the keys below (snake_case), e.g. `cores = 4`.
    #[arg(long, env = "PERCORE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on; every io core binds it with SO_REUSEPORT. [default: 127.0.0.1:8080]
    #[arg(long, env = "PERCORE_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Number of io cores. [default: one per CPU in --cpus, or per CPU this process may use]
    #[arg(long, env = "PERCORE_CORES", value_name = "N")]
    pub cores: Option<String>,
    /// CPUs to pin io cores to, in order, e.g. `0-3,6`. [default: the CPUs this process may use]
    #[arg(long, env = "PERCORE_CPUS", value_name = "LIST")]
    pub cpus: Option<String>,
    /// Open connections per io core; more are answered 503 and closed. [default: 16384]
    #[arg(long, env = "PERCORE_MAX_CONNECTIONS_PER_CORE", value_name = "N")]
    pub max_connections_per_core: Option<String>,
    /// Close a keep-alive connection idle this long, e.g. `60s`. [default: 60s]
    #[arg(long, env = "PERCORE_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Answer 408 and close if a request's headers take longer than this. [default: 10s]
    #[arg(long, env = "PERCORE_HEADER_TIMEOUT", value_name = "DURATION")]
    pub header_timeout: Option<String>,
    /// Answer 408 and close if a request's body takes longer than this to arrive. [default: 60s]
    #[arg(long, env = "PERCORE_BODY_TIMEOUT", value_name = "DURATION")]
    pub body_timeout: Option<String>,
    /// On SIGTERM, how long in-flight requests may take before connections are cut. [default: 10s]
    #[arg(long, env = "PERCORE_SHUTDOWN_GRACE", value_name = "DURATION")]
    pub shutdown_grace: Option<String>,
    /// Largest request line plus headers, e.g. `8KiB`; larger is answered 431. [default: 8KiB]
    #[arg(long, env = "PERCORE_MAX_HEADER_BYTES", value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Most header fields in one request; more is answered 431. [default: 64, at most 100]
    #[arg(long, env = "PERCORE_MAX_HEADERS", value_name = "N")]
    pub max_headers: Option<String>,
    /// Largest request body, e.g. `1MiB`; larger is answered 413. [default: 1MiB]
    #[arg(long, env = "PERCORE_MAX_BODY_BYTES", value_name = "SIZE")]
    pub max_body_bytes: Option<String>,
    /// Rate limit per client across all cores, e.g. `100/s` or `6000/min`; off unless set here or in the file's [rate_limit].
    #[arg(long, env = "PERCORE_RATE_LIMIT", value_name = "N/s|N/min|N/h")]
    pub rate_limit: Option<String>,
    /// Requests a client may make at once before the rate applies. [default: the N of --rate-limit]
    #[arg(long, env = "PERCORE_BURST", value_name = "N")]
    pub burst: Option<String>,
    /// What a client is: its address, or a header such as an API key (requests without it fall back to the address). [default: ip]
    #[arg(long, env = "PERCORE_RATE_LIMIT_KEY", value_name = "ip|header:NAME")]
    pub rate_limit_key: Option<String>,
    /// A proxy whose Forwarded / X-Forwarded-For headers are believed, e.g. `10.0.0.0/8`; repeatable.
    #[arg(
        long,
        env = "PERCORE_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,
    /// Count what would be limited, limit nothing.
    #[arg(long, env = "PERCORE_RATE_LIMIT_SHADOW")]
    pub rate_limit_shadow: bool,
    /// The most clients tracked at once; past it new clients share one budget until idle ones are dropped. [default: 1000000]
    #[arg(long, env = "PERCORE_RATE_LIMIT_MAX_KEYS", value_name = "N")]
    pub rate_limit_max_keys: Option<String>,
    /// Serve the files under DIR at --static-prefix, like a CDN edge; off unless set.
    #[arg(long, env = "PERCORE_STATIC_DIR", value_name = "DIR")]
    pub static_dir: Option<PathBuf>,
    /// URL prefix for static files. [default: /static/]
    #[arg(long, env = "PERCORE_STATIC_PREFIX", value_name = "PATH")]
    pub static_prefix: Option<String>,
    /// Cache-Control for static files whose names carry no content hash. [default: public, max-age=3600]
    #[arg(long, env = "PERCORE_STATIC_CACHE_CONTROL", value_name = "VALUE")]
    pub static_cache_control: Option<String>,
    /// Globs of content-hashed files cached for a year as immutable, e.g. `assets/*`; repeatable. Names with an 8+ hex-digit part always are.
    #[arg(
        long,
        env = "PERCORE_STATIC_IMMUTABLE",
        value_name = "GLOB",
        value_delimiter = ','
    )]
    pub static_immutable: Vec<String>,
    /// A file under --static-dir served with 404 for missing paths. [default: a JSON error]
    #[arg(long, env = "PERCORE_STATIC_NOT_FOUND", value_name = "FILE")]
    pub static_not_found: Option<String>,
    /// How often --static-dir is re-read for changes. [default: 1s]
    #[arg(long, env = "PERCORE_STATIC_REFRESH", value_name = "DURATION")]
    pub static_refresh: Option<String>,
    /// Files up to this size are held in memory; larger ones are spliced from disk. [default: 256KiB]
    #[arg(long, env = "PERCORE_STATIC_INLINE_MAX", value_name = "SIZE")]
    pub static_inline_max: Option<String>,
    /// Directory for documents (DIR/shards) and the durable job log; without it documents live in a temporary directory removed at exit, and jobs are off unless --queue is set.
    #[arg(long, env = "PERCORE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Shards of a new data directory, spread by a stable hash of collection and key. [default: 4 per io core, at least 16]
    #[arg(long, env = "PERCORE_SHARDS", value_name = "N")]
    pub shards: Option<String>,
    /// Shard by key ranges instead of a hash, e.g. `A-M,N-Z` (one shard per range).
    #[arg(
        long,
        env = "PERCORE_SHARD_RANGES",
        value_name = "RANGES",
        conflicts_with = "shards"
    )]
    pub shard_ranges: Option<String>,
    /// Bytes of documents each io core caches for the shards it owns. [default: 64MiB]
    #[arg(long, env = "PERCORE_CACHE_BYTES", value_name = "SIZE")]
    pub cache_bytes: Option<String>,
    /// Cached documents expire after this long (writes always refresh them). [default: never]
    #[arg(long, env = "PERCORE_CACHE_TTL", value_name = "DURATION")]
    pub cache_ttl: Option<String>,
    /// Largest document accepted, in compact or sent form. [default: 1MiB]
    #[arg(long, env = "PERCORE_MAX_DOCUMENT_BYTES", value_name = "SIZE")]
    pub max_document_bytes: Option<String>,
    /// Worker threads that run jobs. [default: 1]
    #[arg(long, env = "PERCORE_WORKERS", value_name = "N")]
    pub workers: Option<String>,
    /// CPUs to pin worker threads to, e.g. `2-3`. [default: unpinned]
    #[arg(long, env = "PERCORE_WORKER_CPUS", value_name = "LIST")]
    pub worker_cpus: Option<String>,
    /// Jobs waiting per queue before submissions get 503. [default: 10000]
    #[arg(long, env = "PERCORE_QUEUE_CAPACITY", value_name = "N")]
    pub queue_capacity: Option<String>,
    /// Attempts before a job goes to the dead letters. [default: 5]
    #[arg(long, env = "PERCORE_JOB_MAX_ATTEMPTS", value_name = "N")]
    pub job_max_attempts: Option<String>,
    /// Delay before the first retry; each retry doubles it, with jitter. [default: 1s]
    #[arg(long, env = "PERCORE_JOB_RETRY_BASE", value_name = "DURATION")]
    pub job_retry_base: Option<String>,
    /// A running attempt not finished within this is run again. [default: 60s]
    #[arg(long, env = "PERCORE_JOB_VISIBILITY_TIMEOUT", value_name = "DURATION")]
    pub job_visibility_timeout: Option<String>,
    /// Key for the X-Percore-Signature (HMAC-SHA256) header on webhook deliveries.
    #[arg(
        long,
        env = "PERCORE_WEBHOOK_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// How long one webhook delivery may take. [default: 10s]
    #[arg(long, env = "PERCORE_WEBHOOK_TIMEOUT", value_name = "DURATION")]
    pub webhook_timeout: Option<String>,
    /// How long finished jobs (and their idempotency keys) are kept. [default: 24h]
    #[arg(long, env = "PERCORE_JOB_RETENTION", value_name = "DURATION")]
    pub job_retention: Option<String>,
    /// Compact the local job log once it is larger than this. [default: 64MiB]
    #[arg(long, env = "PERCORE_JOB_LOG_COMPACT_ABOVE", value_name = "SIZE")]
    pub job_log_compact_above: Option<String>,
    /// Keep jobs on NATS JetStream (shared by every node on the same stream) instead of a local log.
    #[arg(long, env = "PERCORE_QUEUE", value_name = "nats://HOST:PORT")]
    pub queue: Option<String>,
    /// The JetStream stream for jobs with --queue. [default: PERCORE_JOBS]
    #[arg(long, env = "PERCORE_QUEUE_STREAM", value_name = "NAME")]
    pub queue_stream: Option<String>,
    /// SMTP relay for e-mail jobs (plain SMTP, no TLS or auth: a relay on a trusted network).
    #[arg(long, env = "PERCORE_SMTP", value_name = "HOST:PORT")]
    pub smtp: Option<String>,
    /// From address of e-mail jobs. [default: percore@localhost]
    #[arg(long, env = "PERCORE_SMTP_FROM", value_name = "ADDRESS")]
    pub smtp_from: Option<String>,
}

/// The validated configuration of one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    /// One CPU per io core, in core order.
    pub cpus: Vec<usize>,
    pub max_connections_per_core: usize,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub shutdown_grace: Duration,
    pub limits: Limits,
    /// `None` when no rate limit is configured.
    pub rate_limit: Option<Rules>,
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

    /// Resolves flags and environment (already merged by clap) over the
    /// optional file over the defaults, and validates the result.
    pub fn resolve(args: &ServeArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let value =
            |field: &'static str, flag: &Option<String>| -> Result<Option<String>, ConfigError> {
                if let Some(v) = flag {
                    return Ok(Some(v.clone()));
                }
                match file.get(field) {
                    None => Ok(None),
                    Some(toml::Value::String(s)) => Ok(Some(s.clone())),
                    Some(toml::Value::Integer(i)) => Ok(Some(i.to_string())),
                    Some(toml::Value::Array(items)) => Ok(Some(
                        items
                            .iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
                            .collect::<Vec<_>>()
                            .join(","),
                    )),
                    Some(other) => Err(invalid(
                        field,
                        format!("expected a string or a number, found `{other}`"),
                    )),
                }
            };

        let listen = match value("listen", &args.listen)? {
            Some(text) => text.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "listen",
                    format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"),
                )
            })?,
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
        };

        let allowed = cpu::allowed_cpus();
        let cpus = match value("cpus", &args.cpus)? {
            Some(text) => {
                let cpus = cpu::parse_cpu_list(&text).map_err(|m| invalid("cpus", m))?;
                if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                    return Err(invalid(
                        "cpus",
                        format!(
                            "CPU {bad} is not available to this process (available: {})",
                            cpu::format_cpu_list(&allowed)
                        ),
                    ));
                }
                cpus
            }
            None => allowed.clone(),
        };
        let cpus = match value("cores", &args.cores)? {
            Some(text) => {
                let cores = parse_count("cores", &text, 1, 4096)?;
                if cores > cpus.len() {
                    return Err(invalid(
                        "cores",
                        format!(
                            "{cores} io cores need {cores} CPUs, but only {} are given ({})",
                            cpus.len(),
                            cpu::format_cpu_list(&cpus)
                        ),
                    ));
                }
                cpus[..cores].to_vec()
            }
            None => cpus,
        };

        let max_connections_per_core =
            match value("max_connections_per_core", &args.max_connections_per_core)? {
                Some(text) => parse_count("max_connections_per_core", &text, 1, 1 << 20)?,
                None => 16_384,
            };
        let idle_timeout = duration_field(
            "idle_timeout",
            value("idle_timeout", &args.idle_timeout)?,
            Duration::from_secs(60),
        )?;
        let header_timeout = duration_field(
            "header_timeout",
            value("header_timeout", &args.header_timeout)?,
            Duration::from_secs(10),
        )?;
        let body_timeout = duration_field(
            "body_timeout",
            value("body_timeout", &args.body_timeout)?,
            Duration::from_secs(60),
        )?;
        let shutdown_grace = duration_field(
            "shutdown_grace",
            value("shutdown_grace", &args.shutdown_grace)?,
            Duration::from_secs(10),
        )?;

        let defaults = Limits::default();
        let max_header_bytes = match value("max_header_bytes", &args.max_header_bytes)? {
            Some(text) => parse_size("max_header_bytes", &text, 256, 1 << 20)?,
            None => defaults.max_header_bytes,
        };
        let max_body_bytes = match value("max_body_bytes", &args.max_body_bytes)? {
            Some(text) => parse_size("max_body_bytes", &text, 0, 1 << 30)?,
            None => defaults.max_body_bytes,
        };
        let max_headers = match value("max_headers", &args.max_headers)? {
            Some(text) => parse_count("max_headers", &text, 1, HEADER_SLOTS)?,
            None => defaults.max_headers,
        };

        let rate_limit = rate_limit_rules(args, file.get("rate_limit"))?;
        let static_dir = match &args.static_dir {
            Some(dir) => Some(dir.clone()),
            None => value("static_dir", &None)?.map(PathBuf::from),
        };
        let statics = match static_dir {
            None => None,
            Some(dir) => {
                if !dir.is_dir() {
                    return Err(invalid(
                        "static_dir",
                        format!("{} is not a directory", dir.display()),
                    ));
                }
                let mut options = StaticOptions::new(dir);
                if let Some(prefix) = value("static_prefix", &args.static_prefix)? {
                    if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.contains("//") {
                        return Err(invalid(
                            "static_prefix",
                            format!("`{prefix}` must start and end with / like /static/"),
                        ));
                    }
                    options.prefix = prefix;
                }
                if let Some(value) = value("static_cache_control", &args.static_cache_control)? {
                    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
                        return Err(invalid(
                            "static_cache_control",
                            "control characters are not allowed",
                        ));
                    }
                    options.cache_control = value;
                }
                let immutable = if args.static_immutable.is_empty() {
                    value("static_immutable", &None)?
                        .map(|v| {
                            v.split(',')
                                .map(|g| g.trim().trim_matches('"').to_owned())
                                .filter(|g| !g.is_empty())
                                .collect()
                        })
                        .unwrap_or_default()
                } else {
                    args.static_immutable.clone()
                };
                options.immutable = immutable;
                options.not_found_page = value("static_not_found", &args.static_not_found)?;
                options.refresh = duration_field(
                    "static_refresh",
                    value("static_refresh", &args.static_refresh)?,
                    options.refresh,
                )?;
                if let Some(text) = value("static_inline_max", &args.static_inline_max)? {
                    options.inline_max =
                        parse_size("static_inline_max", &text, 0, 64 << 20)? as u64;
                }
                Some(options)
            }
        };

        let data_dir = args
            .data_dir
            .clone()
            .or(value("data_dir", &None)?.map(PathBuf::from));
        let nats = match value("queue", &args.queue)? {
            None => None,
            Some(url) => {
                if !url.starts_with("nats://") || url.len() <= "nats://".len() {
                    return Err(invalid(
                        "queue",
                        format!("`{url}` is not a nats://HOST:PORT URL"),
                    ));
                }
                let stream = value("queue_stream", &args.queue_stream)?
                    .unwrap_or_else(|| "PERCORE_JOBS".into());
                if stream.is_empty()
                    || !stream
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    return Err(invalid(
                        "queue_stream",
                        format!("`{stream}` must be letters, digits, `_` or `-`"),
                    ));
                }
                Some(NatsOptions { url, stream })
            }
        };
        let mut store = StoreOptions {
            dir: data_dir.clone(),
            ..StoreOptions::default()
        };
        if let Some(text) = value("shards", &args.shards)? {
            store.shard_map = Some(ShardStrategy::Hash {
                shards: parse_count("shards", &text, 1, 65_536)? as u32,
            });
        }
        if let Some(text) = value("shard_ranges", &args.shard_ranges)? {
            if store.shard_map.is_some() {
                return Err(invalid(
                    "shard_ranges",
                    "set --shards or --shard-ranges, not both",
                ));
            }
            store.shard_map =
                Some(ShardStrategy::parse_ranges(&text).map_err(|m| invalid("shard_ranges", m))?);
        }
        if let Some(text) = value("cache_bytes", &args.cache_bytes)? {
            store.cache_bytes = parse_size("cache_bytes", &text, 0, 1 << 40)?;
        }
        if let Some(text) = value("cache_ttl", &args.cache_ttl)? {
            store.cache_ttl = Some(duration_field("cache_ttl", Some(text), Duration::ZERO)?);
        }
        if let Some(text) = value("max_document_bytes", &args.max_document_bytes)? {
            store.max_document_bytes = parse_size("max_document_bytes", &text, 2, 64 << 20)?;
        }
        // With --queue the jobs live on NATS; --data-dir then holds only documents.
        let queues = match (data_dir, nats) {
            (None, None) => None,
            (dir, nats) => {
                let local_dir = if nats.is_some() { None } else { dir };
                let mut options = QueueOptions::new(local_dir.unwrap_or_default());
                options.nats = nats;
                if let Some(text) = value("workers", &args.workers)? {
                    options.workers = parse_count("workers", &text, 1, 1024)?;
                }
                if let Some(text) = value("worker_cpus", &args.worker_cpus)? {
                    let cpus = cpu::parse_cpu_list(&text).map_err(|m| invalid("worker_cpus", m))?;
                    if let Some(bad) = cpus.iter().find(|c| !allowed.contains(c)) {
                        return Err(invalid(
                            "worker_cpus",
                            format!("CPU {bad} is not available to this process"),
                        ));
                    }
                    options.worker_cpus = cpus;
                }
                if let Some(text) = value("queue_capacity", &args.queue_capacity)? {
                    options.capacity = parse_count("queue_capacity", &text, 1, 1 << 30)?;
                }
                if let Some(text) = value("job_max_attempts", &args.job_max_attempts)? {
                    options.max_attempts = parse_count("job_max_attempts", &text, 1, 1000)? as u32;
                }
                options.retry_base = duration_field(
                    "job_retry_base",
                    value("job_retry_base", &args.job_retry_base)?,
                    options.retry_base,
                )?;
                options.visibility_timeout = duration_field(
                    "job_visibility_timeout",
                    value("job_visibility_timeout", &args.job_visibility_timeout)?,
                    options.visibility_timeout,
                )?;
                options.webhook_timeout = duration_field(
                    "webhook_timeout",
                    value("webhook_timeout", &args.webhook_timeout)?,
                    options.webhook_timeout,
                )?;
                options.webhook_secret = value("webhook_secret", &args.webhook_secret)?;
                options.retention = duration_field(
                    "job_retention",
                    value("job_retention", &args.job_retention)?,
                    options.retention,
                )?;
                if let Some(text) = value("job_log_compact_above", &args.job_log_compact_above)? {
                    options.compact_above =
                        parse_size("job_log_compact_above", &text, 1024, 1 << 40)? as u64;
                }
                if let Some(text) = value("smtp", &args.smtp)? {
                    let parsed = text.rsplit_once(':').and_then(|(host, port)| {
                        Some((
                            host.trim_matches(['[', ']']).to_owned(),
                            port.parse::<u16>().ok()?,
                        ))
                    });
                    options.smtp =
                        Some(parsed.filter(|(h, _)| !h.is_empty()).ok_or_else(|| {
                            invalid("smtp", format!("`{text}` is not HOST:PORT"))
                        })?);
                }
                if let Some(from) = value("smtp_from", &args.smtp_from)? {
                    from.parse::<lettre::message::Mailbox>().map_err(|e| {
                        invalid(
                            "smtp_from",
                            format!("`{from}` is not an e-mail address: {e}"),
                        )
                    })?;
                    options.smtp_from = from;
                }
                Some(options)
            }
        };

        Ok(Self {
            queues,
            store,
            statics,
            rate_limit,
            listen,
            cpus,
            max_connections_per_core,
            idle_timeout,
            header_timeout,
            body_timeout,
            shutdown_grace,
            limits: Limits {
                max_header_bytes,
                max_body_bytes,
                max_headers,
            },
        })
    }
}

const FILE_KEYS: &[&str] = &[
    "listen",
    "cores",
    "cpus",
    "max_connections_per_core",
    "idle_timeout",
    "header_timeout",
    "body_timeout",
    "shutdown_grace",
    "max_header_bytes",
    "max_headers",
    "max_body_bytes",
    "rate_limit",
    "static_dir",
    "static_prefix",
    "static_cache_control",
    "static_immutable",
    "static_not_found",
    "static_refresh",
    "static_inline_max",
    "data_dir",
    "shards",
    "shard_ranges",
    "cache_bytes",
    "cache_ttl",
    "max_document_bytes",
    "workers",
    "worker_cpus",
    "queue_capacity",
    "job_max_attempts",
    "job_retry_base",
    "job_visibility_timeout",
    "webhook_secret",
    "webhook_timeout",
    "smtp",
    "smtp_from",
    "queue",
    "queue_stream",
    "job_retention",
    "job_log_compact_above",
];

/// The `[rate_limit]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitFile {
    rate: Option<String>,
    burst: Option<u64>,
    key: Option<String>,
    trusted_proxies: Option<Vec<String>>,
    exempt: Option<Vec<String>>,
    shadow: Option<bool>,
    max_keys: Option<usize>,
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
    rate: &str,
    burst: Option<u64>,
) -> Result<Policy, ConfigError> {
    let rate = Rate::parse(rate).ok_or_else(|| {
        invalid(
            field,
            format!("`{rate}` is not a rate like 100/s, 6000/min or 10/h"),
        )
    })?;
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

/// Resolves flags over the file's `[rate_limit]` table; `None` if neither sets a limit.
fn rate_limit_rules(
    args: &ServeArgs,
    file: Option<&toml::Value>,
) -> Result<Option<Rules>, ConfigError> {
    let file: RateLimitFile = match file {
        None => RateLimitFile::default(),
        Some(value) => value
            .clone()
            .try_into()
            .map_err(|e: toml::de::Error| invalid("rate_limit", e.message().to_owned()))?,
    };
    let mut policies = Vec::new();
    let burst = match &args.burst {
        Some(text) => Some(parse_count("burst", text, 1, 1_000_000_000)? as u64),
        None => file.burst,
    };
    let default_policy = match args.rate_limit.as_ref().or(file.rate.as_ref()) {
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
        } else if let Some(rate) = &route.rate {
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
    let key = match args.rate_limit_key.as_ref().or(file.key.as_ref()) {
        Some(text) => KeySource::parse(text).ok_or_else(|| {
            invalid(
                "rate_limit_key",
                format!("`{text}` is not `ip` or `header:NAME`"),
            )
        })?,
        None => KeySource::Ip,
    };
    let cidrs = |field: &'static str, items: &[String]| -> Result<Vec<Cidr>, ConfigError> {
        items
            .iter()
            .map(|item| {
                Cidr::parse(item).ok_or_else(|| {
                    invalid(
                        field,
                        format!("`{item}` is not an address or a network like 10.0.0.0/8"),
                    )
                })
            })
            .collect()
    };
    let trusted_proxies = if args.trusted_proxy.is_empty() {
        cidrs(
            "trusted_proxy",
            file.trusted_proxies.as_deref().unwrap_or(&[]),
        )?
    } else {
        cidrs("trusted_proxy", &args.trusted_proxy)?
    };
    let exempt = cidrs("rate_limit.exempt", file.exempt.as_deref().unwrap_or(&[]))?;
    let max_keys = match &args.rate_limit_max_keys {
        Some(text) => parse_count("rate_limit_max_keys", text, 1, 1 << 30)?,
        None => file.max_keys.unwrap_or(1_000_000),
    };
    Ok(Some(Rules {
        policies,
        default_policy,
        routes,
        key,
        trusted_proxies,
        exempt,
        shadow: args.rate_limit_shadow || file.shadow.unwrap_or(false),
        max_keys,
    }))
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let file_error = |message: String| ConfigError::File {
        path: path.to_owned(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read it: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.message().to_owned()))?;
    if let Some(unknown) = table.keys().find(|k| !FILE_KEYS.contains(&k.as_str())) {
        return Err(file_error(format!(
            "unknown key `{unknown}`; known keys: {}",
            FILE_KEYS.join(", ")
        )));
    }
    Ok(table)
}

fn parse_count(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    whole_number_in(text, min, max).map_err(|message| invalid(field, message))
}

/// Parses a whole number from `min` to `max`, or says what was wrong (for flags of any command).
pub fn whole_number_in(text: &str, min: usize, max: usize) -> Result<usize, String> {
    text.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("`{text}` is not a whole number from {min} to {max}"))
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "" | "s" => number.checked_mul(1000)?,
        "ms" => number,
        "m" => number.checked_mul(60_000)?,
        "h" => number.checked_mul(3_600_000)?,
        _ => return None,
    };
    Some(Duration::from_millis(millis))
}

fn duration_field(
    field: &'static str,
    text: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = text else { return Ok(default) };
    parse_duration(&text)
        .filter(|d| !d.is_zero() && *d <= Duration::from_secs(86_400))
        .ok_or_else(|| {
            invalid(
                field,
                format!("`{text}` is not a duration from 1ms to 24h, like 500ms, 10s, 2m"),
            )
        })
}

/// Parses `8192`, `8KiB`, `1MiB`, `1GiB` (also `KB`, `MB`, `GB`, `K`, `M`, `G` as powers of 1024).
pub fn parse_size(
    field: &'static str,
    text: &str,
    min: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => 0,
    };
    number
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .filter(|n| scale > 0 && (min..=max).contains(n))
        .ok_or_else(|| {
            invalid(
                field,
                format!("`{text}` is not a size from {min} to {max} bytes, like 8KiB or 1MiB"),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ServeArgs {
        ServeArgs::default()
    }

    #[test]
    fn defaults() {
        let config = Config::resolve(&args()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(config.cpus, cpu::allowed_cpus());
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.idle_timeout, Duration::from_secs(60));
    }

    #[test]
    fn flags_validate_and_name_the_field() {
        let bad = |f: fn(&mut ServeArgs)| {
            let mut a = args();
            f(&mut a);
            Config::resolve(&a).unwrap_err().to_string()
        };
        assert!(bad(|a| a.cores = Some("0".into())).starts_with("invalid value for `cores`"));
        assert!(bad(|a| a.cores = Some("9999".into())).contains("`cores`"));
        assert!(bad(|a| a.listen = Some("nope".into())).starts_with("invalid value for `listen`"));
        assert!(bad(|a| a.cpus = Some("5000".into())).starts_with("invalid value for `cpus`"));
        assert!(bad(|a| a.idle_timeout = Some("soon".into())).contains("`idle_timeout`"));
        assert!(bad(|a| a.max_body_bytes = Some("1TB".into())).contains("`max_body_bytes`"));
        assert!(bad(|a| a.max_headers = Some("101".into())).contains("`max_headers`"));
    }

    #[test]
    fn units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("7x"), None);
        assert_eq!(parse_size("f", "8KiB", 0, usize::MAX), Ok(8192));
        assert_eq!(parse_size("f", "1M", 0, usize::MAX), Ok(1 << 20));
        assert!(parse_size("f", "1Q", 0, usize::MAX).is_err());
    }

    #[test]
    fn file_is_overridden_by_flags() {
        let dir = std::env::temp_dir().join(format!("percore-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("percore.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ncores = 1\nmax_body_bytes = \"4KiB\"\ncpus = [0]\n",
        )
        .unwrap();
        let mut a = args();
        a.config = Some(path.clone());
        let config = Config::resolve(&a).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.limits.max_body_bytes, 4096);
        assert_eq!(config.cpus, vec![0]);
        a.listen = Some("127.0.0.1:9001".into());
        assert_eq!(Config::resolve(&a).unwrap().listen.port(), 9001);

        std::fs::write(&path, "colour = 3\n").unwrap();
        let error = Config::resolve(&a).unwrap_err().to_string();
        assert!(error.contains("unknown key `colour`"), "{error}");
        std::fs::write(&path, "cpus = [\"0\"]\ncores = 1\n").unwrap();
        assert_eq!(
            Config::resolve(&a).unwrap().cpus,
            vec![0],
            "arrays of strings"
        );
        std::fs::write(&path, "static_dir = 3\n").unwrap();
        assert!(Config::resolve(&a)
            .unwrap_err()
            .to_string()
            .contains("`static_dir`"));
        let mut both = a.clone();
        both.data_dir = Some(dir.clone());
        both.queue = Some("nats://127.0.0.1:4222".into());
        std::fs::write(&path, "").unwrap();
        let both = Config::resolve(&both).unwrap();
        assert_eq!(
            both.store.dir,
            Some(dir.clone()),
            "documents stay in --data-dir"
        );
        assert!(
            both.queues.as_ref().unwrap().nats.is_some(),
            "jobs go to NATS"
        );
        std::fs::write(&path, "cores = true\n").unwrap();
        let error = Config::resolve(&a).unwrap_err().to_string();
        assert!(error.contains("`cores`"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

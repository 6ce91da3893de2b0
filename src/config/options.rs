//! percore's own options, each declared once: name, value, help, default and validation.
//!
//! The sections are the README's: each has a table generated from these
//! declarations (`tests/options.rs` fails when they drift apart).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::parse::{duration, items, size_in, text, whole_number_in};
use super::spec::{AnyOpt, Opt, Optional};
use crate::http::parse::HEADER_SLOTS;
use crate::limit::{Cidr, KeySource, Rate};
use crate::runtime::cpu;
use crate::store::pg::PgUrl;
use crate::store::ShardStrategy;

pub const SERVER: &str = "Server";
pub const RATE_LIMITING: &str = "Rate limiting";
pub const STATIC_FILES: &str = "Static files";
pub const DOCUMENTS: &str = "Documents";
pub const JOBS: &str = "Jobs";
pub const AUTHENTICATION: &str = "Authentication";

/// The sections of percore's options, in the order of `--help` and the README.
pub const SECTIONS: &[&str] = &[
    SERVER,
    RATE_LIMITING,
    STATIC_FILES,
    DOCUMENTS,
    JOBS,
    AUTHENTICATION,
];

/// A comma-separated list of addresses or networks.
fn cidrs(text: &str) -> Result<Vec<Cidr>, String> {
    items(text)
        .map(|item| {
            Cidr::parse(item)
                .ok_or_else(|| format!("`{item}` is not an address or a network like 10.0.0.0/8"))
        })
        .collect()
}

fn count(text: &str, min: usize, max: usize) -> Result<usize, String> {
    whole_number_in(text, min, max)
}

/// A CPU list, every CPU of which this process may use.
fn available_cpus(text: &str) -> Result<Vec<usize>, String> {
    let cpus = cpu::parse_cpu_list(text)?;
    let allowed = cpu::allowed_cpus();
    match cpus.iter().find(|c| !allowed.contains(c)) {
        Some(bad) => Err(format!(
            "CPU {bad} is not available to this process (available: {})",
            cpu::format_cpu_list(&allowed)
        )),
        None => Ok(cpus),
    }
}

// Server.

pub const LISTEN: Opt<SocketAddr> = Opt::new(
    "listen",
    "ADDR:PORT",
    "Address to listen on; every io core binds it with SO_REUSEPORT.",
    |text| {
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8080 or [::]:8080"))
    },
)
.default("127.0.0.1:8080")
.section(SERVER);

pub const ADMIN_LISTEN: Opt<SocketAddr, Optional> = Opt::new(
    "admin_listen",
    "ADDR:PORT",
    "Serve the operator's calls (/metrics, dead letters, redrive) here alone, and not on --listen.",
    |text| {
        text.parse()
            .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:9090"))
    },
)
.unset("served on --listen")
.section(SERVER);

pub const CORES: Opt<usize, Optional> = Opt::new("cores", "N", "Number of io cores.", |text| {
    count(text, 1, 4096)
})
.unset("one per CPU in --cpus")
.section(SERVER);

pub const CPUS: Opt<Vec<usize>, Optional> = Opt::new(
    "cpus",
    "LIST",
    "CPUs to pin io cores to, in order, e.g. `0-3,6` (in the file a string or an array).",
    available_cpus,
)
.unset("the CPUs this process may use")
.section(SERVER);

pub const STEER: Opt<bool> = Opt::new(
    "steer",
    "on|off",
    "Hand each new connection to the io core on the CPU that took its SYN (a classic BPF program on the listeners' reuseport group); `off` leaves the kernel's hash.",
    |text| match text {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{text}` is not `on` or `off`")),
    },
)
.default("on")
.section(SERVER);

pub const MAX_CONNECTIONS_PER_CORE: Opt<usize> = Opt::new(
    "max_connections_per_core",
    "N",
    "Open connections per io core; more are answered 503 and closed.",
    |text| count(text, 1, 1 << 20),
)
.default("16384")
.section(SERVER);

pub const IDLE_TIMEOUT: Opt<Duration> = Opt::new(
    "idle_timeout",
    "DURATION",
    "Close a keep-alive connection idle this long.",
    duration,
)
.default("60s")
.section(SERVER);

pub const HEADER_TIMEOUT: Opt<Duration> = Opt::new(
    "header_timeout",
    "DURATION",
    "Answer 408 and close if a request's headers take longer than this.",
    duration,
)
.default("10s")
.section(SERVER);

pub const BODY_TIMEOUT: Opt<Duration> = Opt::new(
    "body_timeout",
    "DURATION",
    "Answer 408 and close if a request's body takes longer than this to arrive.",
    duration,
)
.default("60s")
.section(SERVER);

pub const SHUTDOWN_GRACE: Opt<Duration> = Opt::new(
    "shutdown_grace",
    "DURATION",
    "On SIGTERM, how long in-flight requests may take before connections are cut.",
    duration,
)
.default("10s")
.section(SERVER);

pub const DRAIN_DELAY: Opt<Duration> = Opt::new(
    "drain_delay",
    "DURATION",
    "On SIGTERM, how long `/readyz` fails while the node still accepts and serves, so a balancer takes it out of rotation before its listeners close.",
    |text| {
        super::parse_duration(text)
            .filter(|d| *d <= Duration::from_secs(3600))
            .ok_or_else(|| format!("`{text}` is not a duration from 0s to 1h, like 0s, 500ms, 5s"))
    },
)
.default("0s")
.section(SERVER);

pub const HANDOVER: Opt<PathBuf, Optional> = Opt::new(
    "handover",
    "PATH",
    "Restart without refusing a connection: take the listening sockets of the node waiting on this Unix socket (it then drains and exits), or bind as usual if none is; then wait there for a successor. Needs state outside the process (no --data-dir).",
    |text| {
        if text.is_empty() || text.len() > 107 {
            Err(format!("`{text}` is not a Unix socket path of 1 to 107 bytes"))
        } else {
            Ok(PathBuf::from(text))
        }
    },
)
.unset("off")
.section(SERVER);

pub const MAX_HEADER_BYTES: Opt<usize> = Opt::new(
    "max_header_bytes",
    "SIZE",
    "Largest request line plus headers; larger is answered 431.",
    |text| size_in(text, 256, 1 << 20),
)
.default("8KiB")
.section(SERVER);

pub const MAX_HEADERS: Opt<usize> = Opt::new(
    "max_headers",
    "N",
    "Most header fields in one request, at most 100; more is answered 431.",
    |text| count(text, 1, HEADER_SLOTS),
)
.default("64")
.section(SERVER);

pub const MAX_BODY_BYTES: Opt<usize> = Opt::new(
    "max_body_bytes",
    "SIZE",
    "Largest request body; larger is answered 413.",
    |text| size_in(text, 0, 1 << 30),
)
.default("1MiB")
.section(SERVER);

// Rate limiting: the keys of the file's `[rate_limit]` table.

pub const RATE_LIMIT: Opt<Rate, Optional> = Opt::new(
    "rate_limit",
    "N/s|N/min|N/h",
    "Rate limit per client across all cores, e.g. `100/s` or `6000/min`: the default policy.",
    |text| {
        Rate::parse(text)
            .ok_or_else(|| format!("`{text}` is not a rate like 100/s, 6000/min or 10/h"))
    },
)
.unset("off")
.toml_key("rate_limit.rate")
.section(RATE_LIMITING);

pub const BURST: Opt<u64, Optional> = Opt::new(
    "burst",
    "N",
    "Requests a client may make at once before the rate applies.",
    |text| count(text, 1, 1_000_000_000).map(|n| n as u64),
)
.unset("the N of --rate-limit")
.toml_key("rate_limit.burst")
.section(RATE_LIMITING);

pub const RATE_LIMIT_KEY: Opt<KeySource> = Opt::new(
    "rate_limit_key",
    "ip|header:NAME|principal",
    "What a client is: its address, a header, or the authenticated principal (requests without one fall back to the address).",
    |text| {
        KeySource::parse(text)
            .ok_or_else(|| format!("`{text}` is not `ip`, `header:NAME` or `principal`"))
    },
)
.default("ip")
.toml_key("rate_limit.key")
.section(RATE_LIMITING);

pub const TRUSTED_PROXY: Opt<Vec<Cidr>, Optional> = Opt::new(
    "trusted_proxy",
    "CIDR",
    "A proxy whose Forwarded / X-Forwarded-For headers are believed, e.g. `10.0.0.0/8`.",
    cidrs,
)
.list()
.unset("none")
.toml_key("rate_limit.trusted_proxies")
.section(RATE_LIMITING);

pub const RATE_LIMIT_SHADOW: Opt<bool> = Opt::switch(
    "rate_limit_shadow",
    "Count what would be limited, limit nothing.",
)
.toml_key("rate_limit.shadow")
.section(RATE_LIMITING);

pub const RATE_LIMIT_MAX_KEYS: Opt<usize> = Opt::new(
    "rate_limit_max_keys",
    "N",
    "The most clients tracked at once; past it new clients share one budget until idle ones are dropped.",
    |text| count(text, 1, 1 << 30),
)
.default("1000000")
.toml_key("rate_limit.max_keys")
.section(RATE_LIMITING);

// Static files.

pub const STATIC_DIR: Opt<PathBuf, Optional> = Opt::new(
    "static_dir",
    "DIR",
    "Serve the files under DIR at --static-prefix, like a CDN edge.",
    |text| {
        let dir = PathBuf::from(text);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!("{text} is not a directory"))
        }
    },
)
.unset("off")
.section(STATIC_FILES);

pub const STATIC_PREFIX: Opt<String> = Opt::new(
    "static_prefix",
    "PATH",
    "URL prefix for static files.",
    |prefix| {
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix.contains("//") {
            Err(format!(
                "`{prefix}` must start and end with / like /static/"
            ))
        } else {
            Ok(prefix.to_owned())
        }
    },
)
.default("/static/")
.section(STATIC_FILES);

pub const STATIC_CACHE_CONTROL: Opt<String> = Opt::new(
    "static_cache_control",
    "VALUE",
    "Cache-Control for static files whose names carry no content hash.",
    |value| {
        if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
            Err("control characters are not allowed".into())
        } else {
            Ok(value.to_owned())
        }
    },
)
.default("public, max-age=3600")
.section(STATIC_FILES);

pub const STATIC_IMMUTABLE: Opt<Vec<String>, Optional> = Opt::new(
    "static_immutable",
    "GLOB",
    "Globs of content-hashed files cached for a year as immutable, e.g. `assets/*`; names with an 8+ hex-digit part always are.",
    |text| Ok(items(text).map(str::to_owned).collect()),
)
.list()
.unset("content-hashed names")
.section(STATIC_FILES);

pub const STATIC_NOT_FOUND: Opt<String, Optional> = Opt::new(
    "static_not_found",
    "FILE",
    "A file under --static-dir served with 404 for missing paths.",
    text,
)
.unset("a JSON 404")
.section(STATIC_FILES);

pub const STATIC_REFRESH: Opt<Duration> = Opt::new(
    "static_refresh",
    "DURATION",
    "How often --static-dir is re-read for changes.",
    duration,
)
.default("1s")
.section(STATIC_FILES);

pub const STATIC_INLINE_MAX: Opt<u64> = Opt::new(
    "static_inline_max",
    "SIZE",
    "Files up to this size are held in memory; larger ones are spliced from disk.",
    |text| size_in(text, 0, 64 << 20).map(|n| n as u64),
)
.default("256KiB")
.section(STATIC_FILES);

// Documents.

pub const DATA_DIR: Opt<PathBuf, Optional> = Opt::new(
    "data_dir",
    "DIR",
    "Directory for documents (DIR/shards) and the durable job log; without it documents live in a temporary directory removed at exit, and jobs are off unless --queue is set.",
    |text| Ok(PathBuf::from(text)),
)
.unset("a temporary directory (documents); jobs off")
.section(DOCUMENTS);

pub const SHARDS: Opt<u32, Optional> = Opt::new(
    "shards",
    "N",
    "Shards of a new data directory, spread by a stable hash of collection and key.",
    |text| count(text, 1, 65_536).map(|n| n as u32),
)
.unset("4 per io core, at least 16")
.section(DOCUMENTS);

pub const SHARD_RANGES: Opt<ShardStrategy, Optional> = Opt::new(
    "shard_ranges",
    "RANGES",
    "Shard by key ranges instead of a hash, e.g. `A-M,N-Z` (one shard per range); not with --shards.",
    ShardStrategy::parse_ranges,
)
.unset("hash sharding")
.section(DOCUMENTS);

/// Which engine holds the documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    Embedded,
    Postgres,
}

pub const STORE: Opt<StoreEngine> = Opt::new(
    "store",
    "ENGINE",
    "Where documents live: `embedded` (redb files, one store thread per io core) or `postgres` (one database per --shard-url, each connection on its owner core's ring).",
    |text| match text {
        "embedded" => Ok(StoreEngine::Embedded),
        "postgres" | "postgresql" => Ok(StoreEngine::Postgres),
        other => Err(format!("`{other}` is not a store: say embedded or postgres")),
    },
)
.default("embedded")
.section(DOCUMENTS);

pub const SHARD_URL: Opt<Vec<PgUrl>, Optional> = Opt::new(
    "shard_url",
    "URL",
    "With --store postgres: one `postgres://user[:password]@host[:port]/database` per shard, in shard order (a comma inside a URL is written %2C); a password may also come from PGPASSWORD or the password file.",
    |text| items(text).map(PgUrl::parse).collect(),
)
.list()
.unset("none")
.secret()
.section(DOCUMENTS);

pub const SHARD_ANSWER_TIMEOUT: Opt<Duration> = Opt::new(
    "shard_answer_timeout",
    "DURATION",
    "With --store postgres: a shard connection whose oldest query has had no answer this long is given up; its requests get 503 and it reconnects.",
    duration,
)
.default("5s")
.section(DOCUMENTS);

pub const CACHE_STALE_BOUND: Opt<Duration> = Opt::new(
    "cache_stale_bound",
    "DURATION",
    "With --store postgres: a cache hit is served only if every write another node committed more than this long ago has been heard; otherwise the read goes to PostgreSQL.",
    duration,
)
.default("1s")
.section(DOCUMENTS);

pub const CACHE_BYTES: Opt<usize> = Opt::new(
    "cache_bytes",
    "SIZE",
    "Bytes of documents each io core caches for the shards it owns.",
    |text| size_in(text, 0, 1 << 40),
)
.default("64MiB")
.section(DOCUMENTS);

pub const CACHE_TTL: Opt<Duration, Optional> = Opt::new(
    "cache_ttl",
    "DURATION",
    "Cached documents expire after this long (writes always refresh them).",
    duration,
)
.unset("never")
.section(DOCUMENTS);

pub const MAX_DOCUMENT_BYTES: Opt<usize> = Opt::new(
    "max_document_bytes",
    "SIZE",
    "Largest document accepted, in compact or sent form.",
    |text| size_in(text, 2, 64 << 20),
)
.default("1MiB")
.section(DOCUMENTS);

// Jobs.

pub const WORKERS: Opt<usize> = Opt::new("workers", "N", "Worker threads that run jobs.", |text| {
    count(text, 1, 1024)
})
.default("1")
.section(JOBS);

pub const WORKER_CPUS: Opt<Vec<usize>, Optional> = Opt::new(
    "worker_cpus",
    "LIST",
    "CPUs to pin worker threads to, e.g. `2-3`.",
    available_cpus,
)
.unset("unpinned")
.section(JOBS);

pub const QUEUE_CAPACITY: Opt<usize> = Opt::new(
    "queue_capacity",
    "N",
    "Jobs waiting per queue before submissions get 503.",
    |text| count(text, 1, 1 << 30),
)
.default("10000")
.section(JOBS);

pub const JOB_MAX_ATTEMPTS: Opt<u32> = Opt::new(
    "job_max_attempts",
    "N",
    "Attempts before a job goes to the dead letters.",
    |text| count(text, 1, 1000).map(|n| n as u32),
)
.default("5")
.section(JOBS);

pub const JOB_RETRY_BASE: Opt<Duration> = Opt::new(
    "job_retry_base",
    "DURATION",
    "Delay before the first retry; each retry doubles it, with jitter.",
    duration,
)
.default("1s")
.section(JOBS);

pub const JOB_VISIBILITY_TIMEOUT: Opt<Duration> = Opt::new(
    "job_visibility_timeout",
    "DURATION",
    "A running attempt not finished within this is run again.",
    duration,
)
.default("60s")
.section(JOBS);

pub const WEBHOOK_SECRET: Opt<String, Optional> = Opt::new(
    "webhook_secret",
    "SECRET",
    "Key for the X-Percore-Signature (HMAC-SHA256) header on webhook deliveries.",
    text,
)
.unset("unsigned")
.secret()
.section(JOBS);

pub const WEBHOOK_TIMEOUT: Opt<Duration> = Opt::new(
    "webhook_timeout",
    "DURATION",
    "How long one webhook delivery may take.",
    duration,
)
.default("10s")
.section(JOBS);

pub const JOB_RETENTION: Opt<Duration> = Opt::new(
    "job_retention",
    "DURATION",
    "How long finished jobs (and their idempotency keys) are kept.",
    duration,
)
.default("24h")
.section(JOBS);

pub const JOB_LOG_COMPACT_ABOVE: Opt<u64> = Opt::new(
    "job_log_compact_above",
    "SIZE",
    "Compact the local job log once it is larger than this.",
    |text| size_in(text, 1024, 1 << 40).map(|n| n as u64),
)
.default("64MiB")
.section(JOBS);

pub const QUEUE: Opt<String, Optional> = Opt::new(
    "queue",
    "nats://HOST:PORT",
    "Keep jobs on NATS JetStream (shared by every node on the same stream) instead of a local log.",
    |url| {
        if !url.starts_with("nats://") || url.len() <= "nats://".len() {
            Err(format!("`{url}` is not a nats://HOST:PORT URL"))
        } else {
            Ok(url.to_owned())
        }
    },
)
.unset("a local job log in --data-dir")
.section(JOBS);

pub const QUEUE_STREAM: Opt<String> = Opt::new(
    "queue_stream",
    "NAME",
    "The JetStream stream for jobs with --queue.",
    |stream| {
        if stream.is_empty()
            || !stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            Err(format!("`{stream}` must be letters, digits, `_` or `-`"))
        } else {
            Ok(stream.to_owned())
        }
    },
)
.default("PERCORE_JOBS")
.section(JOBS);

pub const SMTP: Opt<(String, u16), Optional> = Opt::new(
    "smtp",
    "HOST:PORT",
    "SMTP relay for e-mail jobs (plain SMTP, no TLS or auth: a relay on a trusted network).",
    |text| {
        text.rsplit_once(':')
            .and_then(|(host, port)| {
                Some((
                    host.trim_matches(['[', ']']).to_owned(),
                    port.parse::<u16>().ok()?,
                ))
            })
            .filter(|(host, _)| !host.is_empty())
            .ok_or_else(|| format!("`{text}` is not HOST:PORT"))
    },
)
.unset("e-mail jobs fail")
.section(JOBS);

pub const SMTP_FROM: Opt<String> = Opt::new(
    "smtp_from",
    "ADDRESS",
    "From address of e-mail jobs.",
    |from| match from.parse::<lettre::message::Mailbox>() {
        Ok(_) => Ok(from.to_owned()),
        Err(e) => Err(format!("`{from}` is not an e-mail address: {e}")),
    },
)
.default("percore@localhost")
.section(JOBS);

fn file_path(text: &str) -> Result<PathBuf, String> {
    if text.trim().is_empty() {
        return Err("a file path is needed".into());
    }
    Ok(PathBuf::from(text))
}

/// A secret read from a file (argv and the environment are visible to
/// other users of the host); one trailing newline is not part of it.
pub fn secret_from_file(text: &str) -> Result<String, String> {
    let secret = std::fs::read_to_string(text)
        .map_err(|e| format!("cannot read the secret file {text}: {e}"))?;
    let secret = secret.strip_suffix('\n').unwrap_or(&secret);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("the secret file {text} is empty"));
    }
    Ok(secret.to_owned())
}

pub const WEBHOOK_SECRET_FILE: Opt<String, Optional> = Opt::new(
    "webhook_secret_file",
    "FILE",
    "--webhook-secret read from a file, so it is not on the command line.",
    secret_from_file,
)
.unset("unsigned")
.secret()
.section(JOBS);

pub const WEBHOOK_CA: Opt<PathBuf, Optional> = Opt::new(
    "webhook_ca",
    "FILE",
    "PEM file of the CA certificates https webhook receivers are verified against.",
    file_path,
)
.unset("the system's roots")
.section(JOBS);

pub const WEBHOOK_ALLOW: Opt<Vec<Cidr>, Optional> = Opt::new(
    "webhook_allow",
    "CIDR",
    "A network webhooks may reach although it is loopback, private, link-local or otherwise internal (refused by default).",
    cidrs,
)
.list()
.unset("none: internal addresses are refused")
.section(JOBS);

pub const EMAIL_ALLOW_DOMAIN: Opt<Vec<String>, Optional> = Opt::new(
    "email_allow_domain",
    "DOMAIN",
    "A domain e-mail jobs may send to (repeatable); a recipient elsewhere is refused with 400.",
    |text| {
        items(text)
            .map(|item| {
                let domain = item.trim().trim_start_matches('@').to_ascii_lowercase();
                let valid = !domain.is_empty()
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if valid {
                    Ok(domain)
                } else {
                    Err(format!("`{item}` is not a domain like example.com"))
                }
            })
            .collect()
    },
)
.list()
.unset("any domain")
.section(JOBS);

// Authentication: the keys of the file's `[auth]` table.

pub const AUTH_KEYS: Opt<PathBuf, Optional> = Opt::new(
    "auth_keys",
    "FILE",
    "API keys file (TOML: name, sha256 of the key, scopes), read again when it changes.",
    file_path,
)
.unset("no API keys")
.toml_key("auth.keys")
.section(AUTHENTICATION);

pub const JWT_HS256_SECRET_FILE: Opt<String, Optional> = Opt::new(
    "jwt_hs256_secret_file",
    "FILE",
    "File holding the HS256 secret bearer tokens are signed with.",
    secret_from_file,
)
.unset("HS256 tokens refused")
.secret()
.toml_key("auth.jwt_hs256_secret_file")
.section(AUTHENTICATION);

pub const JWT_KEY_SET: Opt<PathBuf, Optional> = Opt::new(
    "jwt_key_set",
    "FILE",
    "JWK set (JSON) of the RS256 / ES256 public keys bearer tokens are signed with, read again when it changes.",
    file_path,
)
.unset("RS256 and ES256 tokens refused")
.toml_key("auth.jwt_key_set")
.section(AUTHENTICATION);

pub const JWT_ISSUER: Opt<String, Optional> = Opt::new(
    "jwt_issuer",
    "ISS",
    "The `iss` every bearer token must carry.",
    text,
)
.unset("not checked")
.toml_key("auth.jwt_issuer")
.section(AUTHENTICATION);

pub const JWT_AUDIENCE: Opt<String, Optional> = Opt::new(
    "jwt_audience",
    "AUD",
    "The `aud` every bearer token must name.",
    text,
)
.unset("not checked")
.toml_key("auth.jwt_audience")
.section(AUTHENTICATION);

pub const JWT_SCOPE_CLAIM: Opt<String> = Opt::new(
    "jwt_scope_claim",
    "CLAIM",
    "The token claim holding its scopes: a space-separated string or an array.",
    text,
)
.default("scope")
.toml_key("auth.jwt_scope_claim")
.section(AUTHENTICATION);

/// Every option of percore, in `--help` order.
pub static ALL: &[&dyn AnyOpt] = &[
    &LISTEN,
    &ADMIN_LISTEN,
    &CORES,
    &CPUS,
    &STEER,
    &MAX_CONNECTIONS_PER_CORE,
    &IDLE_TIMEOUT,
    &HEADER_TIMEOUT,
    &BODY_TIMEOUT,
    &SHUTDOWN_GRACE,
    &DRAIN_DELAY,
    &HANDOVER,
    &MAX_HEADER_BYTES,
    &MAX_HEADERS,
    &MAX_BODY_BYTES,
    &RATE_LIMIT,
    &BURST,
    &RATE_LIMIT_KEY,
    &TRUSTED_PROXY,
    &RATE_LIMIT_SHADOW,
    &RATE_LIMIT_MAX_KEYS,
    &STATIC_DIR,
    &STATIC_PREFIX,
    &STATIC_CACHE_CONTROL,
    &STATIC_IMMUTABLE,
    &STATIC_NOT_FOUND,
    &STATIC_REFRESH,
    &STATIC_INLINE_MAX,
    &DATA_DIR,
    &SHARDS,
    &SHARD_RANGES,
    &STORE,
    &SHARD_URL,
    &SHARD_ANSWER_TIMEOUT,
    &CACHE_STALE_BOUND,
    &CACHE_BYTES,
    &CACHE_TTL,
    &MAX_DOCUMENT_BYTES,
    &WORKERS,
    &WORKER_CPUS,
    &QUEUE_CAPACITY,
    &JOB_MAX_ATTEMPTS,
    &JOB_RETRY_BASE,
    &JOB_VISIBILITY_TIMEOUT,
    &WEBHOOK_SECRET,
    &WEBHOOK_TIMEOUT,
    &JOB_RETENTION,
    &JOB_LOG_COMPACT_ABOVE,
    &QUEUE,
    &QUEUE_STREAM,
    &SMTP,
    &SMTP_FROM,
    &WEBHOOK_SECRET_FILE,
    &WEBHOOK_CA,
    &WEBHOOK_ALLOW,
    &EMAIL_ALLOW_DOMAIN,
    &AUTH_KEYS,
    &JWT_HS256_SECRET_FILE,
    &JWT_KEY_SET,
    &JWT_ISSUER,
    &JWT_AUDIENCE,
    &JWT_SCOPE_CLAIM,
];

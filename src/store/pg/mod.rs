//! Documents and the TechEmpower tables in PostgreSQL shards, one connection per shard on its owner core's own ring.
//!
//! `--store postgres --shard-url URL` (one URL per shard, in order) puts
//! shard `s` in the database of the `s`-th URL; as with the embedded store,
//! shard `s` belongs to io core `s % cores`, and that core alone holds the
//! shard's connection. The connection is opened and authenticated off the
//! core ([`handshake`]), then its socket joins the core's io_uring
//! ([`shard`]): every query the core has for the shard in one loop turn goes
//! out in one write, each with its own `Sync` (so an error fails only its
//! own request), with prepared statements and binary results, and replies
//! are matched in order. At most two writes wait for answers at once; what
//! comes meanwhile goes in the next. A write is answered only after PostgreSQL
//! committed it.
//!
//! Several nodes may point at the same shards. Each write records its key
//! in `percore_changes` in its own transaction, and every owner connection
//! polls that table every half staleness bound, from the horizon of its
//! previous poll ([`sql::POLL`]), so a node drops a key from its cache
//! partition once another node's change to it has committed. A cache hit is
//! served only while the shard's connection has completed, within the
//! staleness bound, a poll queued after any commit it could have missed
//! (see [`shard::PgShards::fresh`]); while the connection is down its keys
//! get 503, and its cache starts empty when it returns.

pub mod handshake;
pub mod shard;
pub mod sql;
pub mod url;

use std::time::Duration;

use thiserror::Error;

pub use shard::{Event, PgShards};
pub use url::PgUrl;

/// Why a PostgreSQL shard could not be reached or used; every message
/// names the shard's URL (never its password).
#[derive(Debug, Error)]
pub enum PgError {
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "PostgreSQL at {url} refused the connection: {message}. percore holds one connection \
         per --shard-url, on the shard's owner core; raise the server's max_connections or \
         point fewer shards (or fewer nodes) at it"
    )]
    TooManyConnections { url: String, message: String },
    #[error(
        "PostgreSQL at {url} asks for a password: put it in the URL, in PGPASSWORD, or in the \
         password file (PGPASSFILE, else ~/.pgpass)"
    )]
    PasswordNeeded { url: String },
    #[error("PostgreSQL at {url} refused the credentials: {message}")]
    Auth { url: String, message: String },
    #[error("PostgreSQL at {url} answered with error {code}: {message}")]
    Server {
        url: String,
        code: String,
        message: String,
    },
    #[error("unexpected message from PostgreSQL: {0}")]
    Protocol(String),
}

/// Where the shards are, and how stale a cache hit may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// One URL per shard, in shard order.
    pub urls: Vec<PgUrl>,
    /// A cache hit is served only if the shard's connection heard every
    /// invalidation committed more than this long ago.
    pub stale_bound: Duration,
    /// A connection whose oldest query has waited this long is given up.
    pub answer_timeout: Duration,
}

/// The most shard URLs percore opens: each is one server connection.
pub const MAX_SHARDS: usize = 1024;

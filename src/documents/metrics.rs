//! The document plane's, cache partitions' and store threads' counters in Prometheus text.

use std::sync::Arc;

use super::{DataShared, PlaneCounters};
use crate::cache::CacheCounters;
use crate::store::pg::shard::PgCounters;
use crate::store::thread::StoreCounters;

/// Picks one counter out of a set of counters.
type Field<C> = fn(&C) -> &std::sync::atomic::AtomicU64;

/// One per-core metric: name, type, help, and which counter.
type Row<C> = (&'static str, &'static str, &'static str, Field<C>);

/// Writes each row's family with one sample per core.
fn render_per_core<C>(rows: &[Row<C>], counters: &[Arc<C>], out: &mut String) {
    use std::fmt::Write as _;
    use std::sync::atomic::Ordering::Relaxed;
    for (name, kind, help, field) in rows {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (core, c) in counters.iter().enumerate() {
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {}", field(c).load(Relaxed));
        }
    }
}

impl DataShared {
    /// The document store's, cache partitions' and plane's counters, per core, in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        let data = self;
        use std::fmt::Write as _;
        use std::sync::atomic::Ordering::Relaxed;
        const CACHE: [Row<CacheCounters>; 8] = [
            (
                "percore_cache_hits_total",
                "counter",
                "Reads answered from the core's cache partition.",
                |c| &c.hits,
            ),
            (
                "percore_cache_misses_total",
                "counter",
                "Reads the cache partition could not answer.",
                |c| &c.misses,
            ),
            (
                "percore_cache_inserts_total",
                "counter",
                "Documents put into the cache partition.",
                |c| &c.inserts,
            ),
            (
                "percore_cache_evictions_total",
                "counter",
                "Documents evicted to stay within --cache-bytes.",
                |c| &c.evictions,
            ),
            (
                "percore_cache_expirations_total",
                "counter",
                "Documents dropped after --cache-ttl.",
                |c| &c.expirations,
            ),
            (
                "percore_cache_invalidations_total",
                "counter",
                "Cached documents dropped by a delete, or replaced by a write too large to cache.",
                |c| &c.invalidations,
            ),
            (
                "percore_cache_bytes",
                "gauge",
                "Bytes the cache partition holds.",
                |c| &c.bytes,
            ),
            (
                "percore_cache_entries",
                "gauge",
                "Documents the cache partition holds.",
                |c| &c.entries,
            ),
        ];
        const STORE: [Row<StoreCounters>; 6] = [
        ("percore_store_commits_total", "counter", "Durable commits: one fdatasync of the core's write-ahead log per batch, for all its shards.", |c| &c.commits),
        ("percore_store_checkpoints_total", "counter", "Checkpoints: the core's shards made durable in their engines, an old write-ahead log removed.", |c| &c.checkpoints),
        ("percore_store_committed_writes_total", "counter", "Document writes and deletes made durable.", |c| &c.committed_writes),
        ("percore_store_failed_commits_total", "counter", "Commits that failed; their writes were refused.", |c| &c.failed_commits),
        ("percore_store_engine_failures_total", "counter", "Engine commits refused after the write-ahead log had the writes; the shard answered 503 until its storage was reopened and took them.", |c| &c.engine_failures),
        ("percore_store_reads_total", "counter", "Documents read from the store (cache misses and uncached reads).", |c| &c.reads),
    ];
        const PLANE: [Row<PlaneCounters>; 3] = [
            (
                "percore_data_forwarded_total",
                "counter",
                "Document operations sent to the core that owns their shard.",
                |c| &c.forwarded,
            ),
            (
                "percore_data_coalesced_total",
                "counter",
                "Cache misses that joined a read already in flight (single flight).",
                |c| &c.coalesced,
            ),
            (
                "percore_data_store_ops_total",
                "counter",
                "Operations sent to the core's store thread.",
                |c| &c.store_ops,
            ),
        ];
        const POSTGRES: [Row<PgCounters>; 8] = [
            (
                "percore_pg_queries_total",
                "counter",
                "Operations sent to the core's PostgreSQL shard connections.",
                |c| &c.queries,
            ),
            (
                "percore_pg_sends_total",
                "counter",
                "Writes to those connections; queries per write is the pipelining depth.",
                |c| &c.sends,
            ),
            (
                "percore_pg_errors_total",
                "counter",
                "Error responses from PostgreSQL.",
                |c| &c.errors,
            ),
            (
                "percore_pg_reconnects_total",
                "counter",
                "Connection attempts after a shard's connection was lost.",
                |c| &c.reconnects,
            ),
            (
                "percore_pg_invalidations_total",
                "counter",
                "Writes of other nodes heard (each drops a key from the cache partition).",
                |c| &c.invalidations,
            ),
            (
                "percore_pg_connections_up",
                "gauge",
                "Shard connections of the core that are up.",
                |c| &c.up,
            ),
            (
                "percore_pg_writes_total",
                "counter",
                "Document writes sent to PostgreSQL.",
                |c| &c.writes,
            ),
            (
                "percore_pg_write_batches_total",
                "counter",
                "Statements (one transaction, one commit each) that carried them: a loop turn's writes for a shard go together.",
                |c| &c.write_batches,
            ),
        ];
        render_per_core(&CACHE, &data.cache_counters, out);
        if data.pg_counters.is_empty() {
            render_per_core(&STORE, &data.store_counters, out);
        } else {
            render_per_core(&POSTGRES, &data.pg_counters, out);
        }
        render_per_core(&PLANE, &data.plane_counters, out);
        let name = "percore_store_commit_seconds_total";
        let _ = writeln!(out, "# HELP {name} Time spent making batches durable (log append and fdatasync, engine apply).\n# TYPE {name} counter");
        for (core, c) in data.store_counters.iter().enumerate() {
            let seconds = c.commit_micros.load(Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {seconds:.6}");
        }
        let _ = writeln!(
        out,
        "# HELP percore_shard_map_version Version of the shard map in force.\n# TYPE percore_shard_map_version gauge\npercore_shard_map_version {}\n# HELP percore_shards Shards of the document store.\n# TYPE percore_shards gauge\npercore_shards {}",
        data.map.version,
        data.map.shards()
    );
    }
}

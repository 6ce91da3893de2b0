//! Opening the document store at start-up: every shard's engine, the write-ahead logs of a previous run replayed, the TechEmpower tables seeded, one store thread per io core.

use std::sync::Arc;

use super::redb_engine::RedbEngine;
use super::thread::{self, OpenShard, StoreCounters, StoreReply, StoreRequest};
use super::{seed, wal, Engine, ShardMap, StoreOptions};
use crate::net::Outlet;

/// The store could not be opened: where, and why.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the document store in {}: {message}", dir.display())]
pub struct OpenError {
    pub dir: std::path::PathBuf,
    pub message: String,
}

/// The opened document store: what the cores share, and each core's store thread.
pub struct OpenStore {
    pub map: ShardMap,
    pub options: StoreOptions,
    /// By core: its store thread's counters.
    pub store_counters: Vec<Arc<StoreCounters>>,
    /// By core: the sender to that core's store thread.
    pub senders: Vec<crossbeam_channel::Sender<StoreRequest>>,
    pub temporary_dir: Option<std::path::PathBuf>,
    pub line: String,
}

/// Opens (or creates) every shard, seeds the TechEmpower tables if they are
/// missing, and starts one store thread per io core for the shards it owns.
pub fn open_store(
    options: &StoreOptions,
    cores: usize,
    replies: &[Outlet<StoreReply>],
) -> Result<OpenStore, OpenError> {
    let options = options.clone();
    let (dir, temporary_dir) = match &options.dir {
        Some(dir) => (dir.clone(), None),
        None => {
            remove_stale_temporary_dirs();
            let dir =
                std::env::temp_dir().join(format!("{TEMPORARY_PREFIX}{}", std::process::id()));
            (dir.clone(), Some(dir))
        }
    };
    let fail = |message: String| OpenError {
        dir: dir.clone(),
        message,
    };
    let shards_dir = dir.join("shards");
    std::fs::create_dir_all(&shards_dir).map_err(|e| fail(e.to_string()))?;
    let map = ShardMap::load_or_create(&dir, options.shard_map.as_ref(), cores).map_err(&fail)?;
    let mut open = std::collections::HashMap::new();
    for shard in 0..map.shards() {
        let path = shards_dir.join(format!("shard-{shard:04}.redb"));
        let engine = RedbEngine::open(&path).map_err(|e| fail(e.to_string()))?;
        let last_version = engine.last_version().map_err(|e| fail(e.to_string()))?;
        open.insert(
            shard,
            OpenShard {
                shard,
                engine: Box::new(engine),
                last_version,
            },
        );
    }
    // The shard files' names must survive a power cut too.
    std::fs::File::open(&shards_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(e.to_string()))?;
    let wal_dir = dir.join("wal");
    let replayed = replay_logs(&wal_dir, &mut open).map_err(&fail)?;
    let seeded = seed::seed_if_missing(&map, &mut open).map_err(|e| fail(e.to_string()))?;
    let mut by_core: Vec<Vec<OpenShard>> = (0..cores).map(|_| Vec::new()).collect();
    for (shard, opened) in open {
        by_core[map.owner(shard)].push(opened);
    }
    let store_counters: Vec<Arc<StoreCounters>> = (0..cores).map(|_| Arc::default()).collect();
    let mut senders = Vec::with_capacity(cores);
    for (core, shards) in by_core.into_iter().enumerate() {
        senders.push(
            thread::start(
                core,
                shards,
                wal_dir.clone(),
                replies[core].clone(),
                Arc::clone(&store_counters[core]),
            )
            .map_err(|e| fail(e.to_string()))?,
        );
    }
    let place = match &temporary_dir {
        Some(dir) => format!(
            "{} (temporary: no --data-dir, removed at exit)",
            dir.display()
        ),
        None => dir.display().to_string(),
    };
    let mut line = format!("percore: documents in {place}; {map}");
    if replayed > 0 {
        line.push_str(&format!(
            "; replayed {replayed} write(s) from the write-ahead logs"
        ));
    }
    if !seeded.is_empty() {
        line.push_str(&format!("; seeded {}", seeded.join(" and ")));
    }
    Ok(OpenStore {
        map,
        options,
        store_counters,
        senders,
        temporary_dir,
        line,
    })
}

/// Temporary document directories are named this plus the server's process id.
const TEMPORARY_PREFIX: &str = "percore-docs-";

/// Removes the temporary document directories of servers that are gone
/// (killed before they could remove their own).
fn remove_stale_temporary_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(TEMPORARY_PREFIX))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Replays every write-ahead log left by a previous run into its shard,
/// makes the shards durable, then removes the logs. Returns the writes replayed.
fn replay_logs(
    wal_dir: &std::path::Path,
    open: &mut std::collections::HashMap<u32, OpenShard>,
) -> Result<usize, String> {
    let records =
        wal::read_all(wal_dir).map_err(|e| format!("cannot read {}: {e}", wal_dir.display()))?;
    let count = records.len();
    let mut by_shard: std::collections::HashMap<u32, Vec<super::engine::Change>> =
        std::collections::HashMap::new();
    for record in records {
        let Some(shard) = open.get_mut(&record.shard) else {
            return Err(format!(
                "{} holds writes for shard {}, which this shard map does not have",
                wal_dir.display(),
                record.shard
            ));
        };
        shard.last_version = shard.last_version.max(record.last_version);
        if let Some(stored) = &record.value {
            shard.last_version = shard.last_version.max(stored.version);
        }
        by_shard
            .entry(record.shard)
            .or_default()
            .push((record.key, record.value));
    }
    for (shard, changes) in by_shard {
        let open = open.get_mut(&shard).expect("checked above");
        open.engine
            .commit(&changes, open.last_version, true)
            .map_err(|e| format!("cannot replay the write-ahead log into shard {shard}: {e}"))?;
    }
    wal::remove_all(wal_dir).map_err(|e| {
        format!(
            "cannot remove the replayed logs in {}: {e}",
            wal_dir.display()
        )
    })?;
    Ok(count)
}

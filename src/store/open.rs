//! Opening the document store at start-up: every shard's engine, the write-ahead logs of a previous run replayed, the TechEmpower tables seeded, one store thread per io core.

use std::sync::Arc;

use super::pg::shard::{Opened, PgCounters, PgShards};
use super::pg::{handshake, sql, PgOptions};
use super::redb_engine::RedbEngine;
use super::thread::{self, OpenShard, StoreCounters, StoreReply};
use super::{seed, wal, Backend, Engine, ShardMap, ShardStrategy, StoreLink, StoreOptions};
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
    /// By core: how it reaches its shards' engines.
    pub links: Vec<StoreLink>,
    pub temporary_dir: Option<std::path::PathBuf>,
    pub line: String,
    /// By core, with PostgreSQL shards: their connections' counters.
    pub pg_counters: Vec<Arc<PgCounters>>,
}

/// Opens (or creates) every shard, seeds the TechEmpower tables if they are
/// missing, and starts one store thread per io core for the shards it owns.
pub fn open_store(
    options: &StoreOptions,
    cores: usize,
    replies: &[Outlet<StoreReply>],
    pg_opened: &[Outlet<Opened>],
) -> Result<OpenStore, OpenError> {
    if let Backend::Postgres(pg) = &options.backend {
        return open_postgres(options, pg, cores, pg_opened);
    }
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
    let mut links = Vec::with_capacity(cores);
    for (core, shards) in by_core.into_iter().enumerate() {
        links.push(StoreLink::Thread(
            thread::start(
                core,
                shards,
                wal_dir.clone(),
                replies[core].clone(),
                Arc::clone(&store_counters[core]),
            )
            .map_err(|e| fail(e.to_string()))?,
        ));
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
        links,
        temporary_dir,
        line,
        pg_counters: Vec::new(),
    })
}

/// The internal collection the PostgreSQL `world` rows are cached under
/// (`/cached-queries`); a document collection cannot start with `.`.
pub const PG_WORLD: &str = ".world";

/// Connects to every PostgreSQL shard (in parallel, off the io cores),
/// creates the schema where missing, seeds the TechEmpower rows each shard
/// holds, and hands each core the connections of the shards it owns.
fn open_postgres(
    options: &StoreOptions,
    pg: &PgOptions,
    cores: usize,
    opened: &[Outlet<Opened>],
) -> Result<OpenStore, OpenError> {
    let fail = |message: String| OpenError {
        dir: "PostgreSQL shards".into(),
        message,
    };
    let shards = pg.urls.len();
    if shards == 0 {
        return Err(fail(
            "--store postgres needs at least one --shard-url".into(),
        ));
    }
    let strategy = options.shard_map.clone().unwrap_or(ShardStrategy::Hash {
        shards: shards as u32,
    });
    if strategy.shards() as usize != shards {
        return Err(fail(format!(
            "the shard map has {} shards but {shards} --shard-url were given: one URL per shard",
            strategy.shards()
        )));
    }
    let map = ShardMap::new(1, strategy, cores);
    let handshakes: Vec<_> = pg
        .urls
        .iter()
        .enumerate()
        .map(|(shard, url)| {
            let shard = shard as u32;
            let world_ids: Vec<u32> = (1..=seed::WORLD_ROWS)
                .filter(|id| {
                    map.shard_of(
                        PG_WORLD.as_bytes(),
                        itoa::Buffer::new().format(*id).as_bytes(),
                    ) == shard
                })
                .collect();
            let setup = handshake::Setup {
                schema: true,
                seed: Some(sql::seed(&world_ids, shard == 0)),
            };
            let url = url.clone();
            std::thread::spawn(move || handshake::open(&url, &setup))
        })
        .collect();
    let mut by_core: Vec<Vec<_>> = (0..cores).map(|_| Vec::new()).collect();
    for (shard, handle) in handshakes.into_iter().enumerate() {
        let ready = handle
            .join()
            .map_err(|_| fail("a connection thread panicked".into()))?
            .map_err(|e| fail(format!("shard {shard}: {e}")))?;
        let shard = shard as u32;
        by_core[map.owner(shard)].push((
            shard,
            std::sync::Arc::new(pg.urls[shard as usize].clone()),
            Ok(ready),
        ));
    }
    let pg_counters: Vec<Arc<PgCounters>> = (0..cores).map(|_| Arc::default()).collect();
    let links = by_core
        .into_iter()
        .enumerate()
        .map(|(core, shards)| {
            StoreLink::Postgres(Box::new(PgShards::new(
                shards,
                opened[core].clone(),
                pg,
                Arc::clone(&pg_counters[core]),
            )))
        })
        .collect();
    let urls: Vec<String> = pg.urls.iter().map(ToString::to_string).collect();
    let line = format!(
        "percore: documents in PostgreSQL, {shards} shard(s): {}; {map}; cache hits at most {:?} stale",
        urls.join(", "),
        pg.stale_bound
    );
    Ok(OpenStore {
        map,
        options: options.clone(),
        store_counters: (0..cores).map(|_| Arc::default()).collect(),
        links,
        temporary_dir: None,
        line,
        pg_counters,
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

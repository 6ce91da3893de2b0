//! The TechEmpower tables, written into the store at start-up when missing.
//!
//! `World` holds 10,000 documents `{"id":N,"randomNumber":R}` under keys
//! `1`..`10000`; `Fortune` the twelve fortunes of the benchmark under keys
//! `1`..`12`. Both are ordinary collections of the document API.

use std::collections::HashMap;

use bytes::Bytes;

use super::engine::{Change, StoreError, Stored};
use super::shardmap::ShardMap;
use super::storage_key;
use super::thread::OpenShard;
use crate::rng::Rng;

pub const WORLD: &str = "World";
pub const FORTUNE: &str = "Fortune";
pub const WORLD_ROWS: u32 = 10_000;

pub const FORTUNES: [&str; 12] = [
    "fortune: No such file or directory",
    "A computer scientist is someone who fixes things that aren't broken.",
    "After enough decimal places, nobody gives a damn.",
    "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1",
    "A computer program does what you tell it to do, not what you want it to do.",
    "Emacs is a nice operating system, but I prefer UNIX. \u{2014} Tom Christaensen",
    "Any program that runs right is obsolete.",
    "A list is only as strong as its weakest link. \u{2014} Donald Knuth",
    "Feature: A bug with seniority.",
    "Computers make very fast, very accurate mistakes.",
    "<script>alert(\"This should not be displayed in a browser alert box.\");</script>",
    "\u{30d5}\u{30ec}\u{30fc}\u{30e0}\u{30ef}\u{30fc}\u{30af}\u{306e}\u{30d9}\u{30f3}\u{30c1}\u{30de}\u{30fc}\u{30af}",
];

/// Writes the rows of either table that are missing, and never touches a
/// row that exists (a client's writes to `World` survive restarts). Returns
/// what it seeded, for the start-up log.
pub fn seed_if_missing(
    map: &ShardMap,
    shards: &mut HashMap<u32, OpenShard>,
) -> Result<Vec<String>, StoreError> {
    let mut rng = Rng::new(0);
    let mut rows: Vec<(&'static str, String, String)> = Vec::new();
    for id in 1..=WORLD_ROWS {
        let key = id.to_string();
        if missing(map, shards, WORLD, &key)? {
            let number = rng.between_one_and(WORLD_ROWS);
            rows.push((
                WORLD,
                key,
                format!("{{\"id\":{id},\"randomNumber\":{number}}}"),
            ));
        }
    }
    let worlds = rows.len();
    for (n, message) in FORTUNES.iter().enumerate() {
        let key = (n + 1).to_string();
        if missing(map, shards, FORTUNE, &key)? {
            let doc = serde_json::json!({ "id": n + 1, "message": message }).to_string();
            rows.push((FORTUNE, key, doc));
        }
    }
    let mut seeded = Vec::new();
    if worlds > 0 {
        seeded.push(format!("{worlds} {WORLD} rows"));
    }
    if rows.len() > worlds {
        seeded.push(format!("{} {FORTUNE} rows", rows.len() - worlds));
    }
    let mut changes: HashMap<u32, Vec<Change>> = HashMap::new();
    for (collection, key, doc) in rows {
        let shard = map.shard_of(collection.as_bytes(), key.as_bytes());
        let open = shards
            .get_mut(&shard)
            .expect("every shard is open at start-up");
        open.last_version += 1;
        let mut storage = Vec::new();
        storage_key(collection, &key, &mut storage);
        changes.entry(shard).or_default().push((
            storage,
            Some(Stored {
                version: open.last_version,
                doc: Bytes::from(doc),
            }),
        ));
    }
    for (shard, changes) in changes {
        let open = shards
            .get_mut(&shard)
            .expect("every shard is open at start-up");
        open.engine.commit(&changes, open.last_version, true)?;
    }
    Ok(seeded)
}

fn missing(
    map: &ShardMap,
    shards: &HashMap<u32, OpenShard>,
    collection: &str,
    key: &str,
) -> Result<bool, StoreError> {
    let shard = map.shard_of(collection.as_bytes(), key.as_bytes());
    let mut storage = Vec::new();
    storage_key(collection, key, &mut storage);
    let open = shards.get(&shard).expect("every shard is open at start-up");
    Ok(open.engine.get(&storage)?.is_none())
}

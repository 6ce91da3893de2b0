//! The shard map: which shard holds a key, and which io core owns a shard.
//!
//! Keys map to shards by a stable hash (FNV-1a 64 of `collection NUL key`,
//! modulo the shard count) or by configured key ranges. The number of shards
//! is fixed when a data directory is first used and is independent of the
//! number of io cores (shard `s` belongs to core `s % cores`), so a node can
//! grow its cores without moving a document. The map is written to
//! `shard-map.json` in the data directory with a version; a later start that
//! asks for a different map is refused rather than silently reading the
//! wrong shards.

use std::fmt;
use std::fs;
use std::io;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// How keys are spread over shards, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "lowercase")]
pub enum ShardStrategy {
    /// FNV-1a 64 of `collection NUL key`, modulo `shards`.
    Hash { shards: u32 },
    /// By the document key's byte order: shard 0 holds keys below
    /// `bounds[0]`, shard `i` keys from `bounds[i-1]` up to `bounds[i]`, the
    /// last shard everything above. `text` is what was configured.
    Ranges { bounds: Vec<String>, text: String },
}

impl ShardStrategy {
    pub fn shards(&self) -> u32 {
        match self {
            Self::Hash { shards } => *shards,
            Self::Ranges { bounds, .. } => bounds.len() as u32 + 1,
        }
    }

    /// Parses `A-M,N-Z`: ranges of key prefixes in ascending order. The
    /// ranges together cover every key: the first reaches down to the
    /// smallest key, the last up to the largest, and a key between two
    /// ranges belongs to the lower one.
    pub fn parse_ranges(text: &str) -> Result<Self, String> {
        let mut lows: Vec<String> = Vec::new();
        let mut last_high: Option<String> = None;
        for (n, item) in text.split(',').enumerate() {
            let item = item.trim();
            let Some((low, high)) = item.split_once('-') else {
                return Err(format!(
                    "range {} (`{item}`) must be LOW-HIGH, e.g. A-M",
                    n + 1
                ));
            };
            if low.is_empty() || high.is_empty() {
                return Err(format!("range {} (`{item}`) has an empty end", n + 1));
            }
            if low > high {
                return Err(format!("range {} (`{item}`) ends before it starts", n + 1));
            }
            if let Some(previous) = &last_high {
                if low <= previous.as_str() {
                    return Err(format!(
                        "range {} (`{item}`) overlaps the one before; list ranges in ascending order",
                        n + 1
                    ));
                }
            }
            lows.push(low.to_owned());
            last_high = Some(high.to_owned());
        }
        if lows.len() < 2 {
            return Err("give at least two ranges, e.g. A-M,N-Z".into());
        }
        if lows.len() > 4096 {
            return Err("at most 4096 ranges".into());
        }
        Ok(Self::Ranges {
            bounds: lows.split_off(1),
            text: text.to_owned(),
        })
    }
}

/// The shard map in force, with its version and the io core count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardMap {
    pub version: u32,
    pub strategy: ShardStrategy,
    shards: u32,
    cores: u32,
}

#[derive(Serialize, Deserialize)]
struct MapFile {
    version: u32,
    #[serde(flatten)]
    strategy: ShardStrategy,
}

const MAP_FILE: &str = "shard-map.json";

impl ShardMap {
    pub fn new(version: u32, strategy: ShardStrategy, cores: usize) -> Self {
        Self {
            version,
            shards: strategy.shards(),
            strategy,
            cores: cores as u32,
        }
    }

    /// The default for a new data directory: four shards per core, at least 16.
    pub fn default_strategy(cores: usize) -> ShardStrategy {
        ShardStrategy::Hash {
            shards: (cores as u32 * 4).max(16),
        }
    }

    /// Reads the map stored in `dir`, or stores `wanted` (or the default)
    /// there for a new directory. Errs if `wanted` differs from the stored map.
    pub fn load_or_create(
        dir: &Path,
        wanted: Option<&ShardStrategy>,
        cores: usize,
    ) -> Result<Self, String> {
        let path = dir.join(MAP_FILE);
        match fs::read(&path) {
            Ok(raw) => {
                let stored: MapFile = serde_json::from_slice(&raw)
                    .map_err(|e| format!("{} is not a shard map: {e}", path.display()))?;
                if let Some(wanted) = wanted {
                    if *wanted != stored.strategy {
                        return Err(format!(
                            "{} holds shard map v{} ({}); this start asks for {}. Moving documents between shards is not supported: start without the shard flags (the stored map is used), or with a new --data-dir",
                            dir.display(),
                            stored.version,
                            describe(&stored.strategy),
                            describe(wanted)
                        ));
                    }
                }
                Ok(Self::new(stored.version, stored.strategy, cores))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let strategy = wanted
                    .cloned()
                    .unwrap_or_else(|| Self::default_strategy(cores));
                let file = MapFile {
                    version: 1,
                    strategy,
                };
                let text = serde_json::to_vec_pretty(&file).expect("a shard map serializes");
                write_durably(dir, &path, &text)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(Self::new(file.version, file.strategy, cores))
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// The shard that holds `key` of `collection`.
    #[inline]
    pub fn shard_of(&self, collection: &[u8], key: &[u8]) -> u32 {
        match &self.strategy {
            ShardStrategy::Hash { shards } => {
                let hash = fnv1a(fnv1a(fnv1a(FNV_OFFSET, collection), &[0]), key);
                (hash % u64::from(*shards)) as u32
            }
            ShardStrategy::Ranges { bounds, .. } => {
                bounds.partition_point(|bound| bound.as_bytes() <= key) as u32
            }
        }
    }

    /// The io core that owns `shard`.
    #[inline]
    pub fn owner(&self, shard: u32) -> usize {
        (shard % self.cores) as usize
    }

    /// The shards io core `core` owns.
    pub fn owned_by(&self, core: usize) -> impl Iterator<Item = u32> + '_ {
        (0..self.shards).filter(move |&s| self.owner(s) == core)
    }
}

fn describe(strategy: &ShardStrategy) -> String {
    match strategy {
        ShardStrategy::Hash { shards } => format!("{shards} shards by FNV-1a hash"),
        ShardStrategy::Ranges { text, .. } => format!("key ranges {text}"),
    }
}

impl fmt::Display for ShardMap {
    /// One line for the start-up log: the version, the strategy, and which core owns which shards.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard map v{}: {}",
            self.version,
            describe(&self.strategy)
        )?;
        if let ShardStrategy::Ranges { bounds, .. } = &self.strategy {
            let mut low = "\u{2212}\u{221e}".to_owned();
            for (shard, bound) in bounds
                .iter()
                .chain(std::iter::once(&"+\u{221e}".to_owned()))
                .enumerate()
            {
                write!(f, "; shard {shard} [{low}, {bound})")?;
                low = bound.clone();
            }
        }
        for core in 0..self.cores as usize {
            let owned: Vec<String> = self.owned_by(core).map(|s| s.to_string()).collect();
            write!(
                f,
                "; core {core} owns shard{} {}",
                if owned.len() == 1 { "" } else { "s" },
                owned.join(",")
            )?;
        }
        Ok(())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[inline]
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// Writes a small file so that it survives a crash: temp file, fsync, rename, directory fsync.
fn write_durably(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("json.new");
    let mut file = fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_stable_and_spreads_keys() {
        let map = ShardMap::new(1, ShardStrategy::Hash { shards: 16 }, 2);
        // Pinned: changing the hash would move every stored document.
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut seen = [0u32; 16];
        for i in 0..16_000 {
            seen[map.shard_of(b"users", i.to_string().as_bytes()) as usize] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700 && n < 1300), "{seen:?}");
        assert_eq!(map.owner(5), 1);
        assert_eq!(
            map.owned_by(0).collect::<Vec<_>>(),
            vec![0, 2, 4, 6, 8, 10, 12, 14]
        );
    }

    #[test]
    fn ranges_cover_every_key() {
        let strategy = ShardStrategy::parse_ranges("A-M,N-Z").unwrap();
        let map = ShardMap::new(1, strategy, 1);
        assert_eq!(map.shards(), 2);
        assert_eq!(map.shard_of(b"c", b"Alice"), 0);
        assert_eq!(map.shard_of(b"c", b"Mzz"), 0);
        assert_eq!(map.shard_of(b"c", b"0"), 0);
        assert_eq!(map.shard_of(b"c", b"N"), 1);
        assert_eq!(map.shard_of(b"c", b"zebra"), 1);
        for bad in ["A-M", "M-A,N-Z", "A-M,B-Z", "A-,N-Z", "AM,NZ"] {
            assert!(ShardStrategy::parse_ranges(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_stored_map_wins_and_a_different_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("percore-map-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let first =
            ShardMap::load_or_create(&dir, Some(&ShardStrategy::Hash { shards: 8 }), 2).unwrap();
        assert_eq!(first.shards(), 8);
        let again = ShardMap::load_or_create(&dir, None, 4).unwrap();
        assert_eq!(again.shards(), 8);
        assert_eq!(again.version, 1);
        let error = ShardMap::load_or_create(&dir, Some(&ShardStrategy::Hash { shards: 4 }), 2)
            .unwrap_err();
        assert!(
            error.contains("8 shards") && error.contains("4 shards"),
            "{error}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

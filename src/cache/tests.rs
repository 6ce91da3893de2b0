use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Cache, CacheCounters, Lru};

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// What an entry with this key length and weight is charged.
fn charge(key_len: usize, weight: usize) -> usize {
    weight + key_len + Cache::<u64>::ENTRY_OVERHEAD
}

fn new_cache(capacity: usize, ttl: Option<Duration>) -> (Cache<u64>, Arc<CacheCounters>) {
    let counters = Arc::new(CacheCounters::default());
    (Cache::new(capacity, ttl, Arc::clone(&counters)), counters)
}

/// splitmix64: deterministic, so a failing sequence replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn counts_hits_misses_and_inserts() {
    let (mut cache, counters) = new_cache(100_000, None);
    let now = Instant::now();
    assert_eq!(cache.get(b"a", now), None);
    assert!(cache.insert(b"a", 1, 10, now));
    assert!(cache.insert(b"b", 2, 10, now));
    assert_eq!(cache.get(b"a", now), Some(&mut 1));
    *cache.get(b"b", now).unwrap() = 20;
    assert_eq!(cache.get(b"b", now), Some(&mut 20));
    assert_eq!(cache.get(b"c", now), None);

    assert_eq!(load(&counters.hits), 3);
    assert_eq!(load(&counters.misses), 2);
    assert_eq!(load(&counters.inserts), 2);
    assert_eq!(load(&counters.entries), 2);
    assert_eq!(load(&counters.bytes), 2 * charge(1, 10) as u64);
    assert_eq!(cache.len(), 2);
    assert!(!cache.is_empty());
    assert_eq!(cache.bytes(), 2 * charge(1, 10));
    assert_eq!(cache.capacity(), 100_000);
    cache.check_invariants();
}

/// Thousands of random operations on a small cache: after each, the byte
/// bound holds, the published counters match, the queues agree with the
/// index, and any hit returns the value last inserted under that key.
#[test]
fn byte_bound_holds_under_random_operations() {
    for seed in 0..4 {
        let capacity = 40 * charge(8, 300);
        let (mut cache, counters) = new_cache(capacity, Some(Duration::from_millis(500)));
        let mut model: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut now = start;
        let mut gets = 0;
        for op in 0..20_000u64 {
            now += Duration::from_millis(rng.below(3));
            // Keys of 1 to 16 bytes from a space of 200, a skewed mix so some repeat often.
            let id = if rng.below(2) == 0 {
                rng.below(20)
            } else {
                rng.below(200)
            };
            let key_len = 1 + (id % 16) as usize;
            let key: Vec<u8> = (0..key_len)
                .map(|i| (id as u8).wrapping_add(i as u8))
                .collect();
            let key = [&id.to_le_bytes()[..2], &key].concat();
            // Weights up to 600, and now and then more than an eighth of the capacity.
            let weight = if rng.below(50) == 0 {
                capacity / 8 + rng.below(1_000) as usize
            } else {
                rng.below(600) as usize
            };
            match rng.below(10) {
                0..=4 => {
                    gets += 1;
                    if let Some(value) = cache.get(&key, now) {
                        assert_eq!(Some(&*value), model.get(&key), "op {op}: a stale value");
                    }
                }
                5..=7 => {
                    if cache.insert(&key, op, weight, now) {
                        model.insert(key.clone(), op);
                        assert_eq!(cache.get(&key, now), Some(&mut op.clone()));
                        gets += 1;
                    } else {
                        assert!(charge(key.len(), weight) > capacity / 8);
                        model.remove(&key);
                        assert_eq!(cache.get(&key, now), None);
                        gets += 1;
                    }
                }
                8 => {
                    let was_present = cache.index.contains_key(&key[..]);
                    cache.reweigh(&key, weight);
                    let fits = charge(key.len(), weight) <= capacity / 8;
                    assert_eq!(cache.index.contains_key(&key[..]), was_present && fits);
                }
                _ => {
                    let removed = cache.remove(&key);
                    if let Some(value) = removed {
                        assert_eq!(Some(value), model.remove(&key));
                    }
                }
            }
            assert!(cache.bytes() <= cache.capacity(), "op {op}");
            cache.check_invariants();
        }
        assert_eq!(load(&counters.hits) + load(&counters.misses), gets);
        assert!(
            load(&counters.evictions) > 0,
            "the test should exercise eviction"
        );
        assert!(
            load(&counters.expirations) > 0,
            "the test should exercise expiry"
        );
        assert!(load(&counters.invalidations) > 0);
    }
}

#[test]
fn replace_updates_value_and_weight() {
    let (mut cache, counters) = new_cache(100_000, None);
    let now = Instant::now();
    assert!(cache.insert(b"k", 1, 100, now));
    assert_eq!(cache.bytes(), charge(1, 100));
    assert!(cache.insert(b"k", 2, 300, now));
    assert_eq!(cache.bytes(), charge(1, 300));
    assert_eq!(load(&counters.bytes), charge(1, 300) as u64);
    assert_eq!(cache.len(), 1);
    assert_eq!(cache.get(b"k", now), Some(&mut 2));
    assert_eq!(load(&counters.inserts), 2);
    cache.check_invariants();
}

#[test]
fn replacing_to_a_bigger_size_evicts_others_not_itself() {
    let per = charge(1, 100);
    let (mut cache, counters) = new_cache(per * 40, None);
    let now = Instant::now();
    for k in 0..40u8 {
        assert!(cache.insert(&[k], u64::from(k), 100, now));
    }
    assert_eq!(cache.bytes(), per * 40);
    // Key 0 is the oldest, first in line for eviction, and never read.
    assert!(cache.insert(&[0], 99, 100 + 2 * per, now));
    assert_eq!(cache.get(&[0], now), Some(&mut 99));
    assert!(load(&counters.evictions) >= 2);
    assert!(cache.bytes() <= cache.capacity());

    cache.reweigh(&[0], 100 + 2 * per + per);
    assert!(
        cache.get(&[0], now).is_some(),
        "reweigh never evicts the entry itself"
    );
    assert!(cache.bytes() <= cache.capacity());
    cache.check_invariants();

    cache.reweigh(&[0], cache.capacity());
    assert_eq!(
        cache.get(&[0], now),
        None,
        "past the size limit it is dropped"
    );
    cache.reweigh(b"absent", 1);
    cache.check_invariants();
}

#[test]
fn remove_counts_an_invalidation() {
    let (mut cache, counters) = new_cache(100_000, None);
    let now = Instant::now();
    assert!(cache.insert(b"k", 7, 10, now));
    assert_eq!(cache.remove(b"k"), Some(7));
    assert_eq!(cache.remove(b"k"), None);
    assert_eq!(load(&counters.invalidations), 1);
    assert_eq!(load(&counters.entries), 0);
    assert_eq!(load(&counters.bytes), 0);
    assert!(cache.is_empty());
    assert_eq!(cache.get(b"k", now), None);
    cache.check_invariants();
}

#[test]
fn expired_entries_miss_and_are_dropped() {
    let ttl = Duration::from_secs(10);
    let (mut cache, counters) = new_cache(100_000, Some(ttl));
    let t0 = Instant::now();
    assert!(cache.insert(b"k", 1, 10, t0));
    assert_eq!(
        cache.get(b"k", t0 + ttl - Duration::from_nanos(1)),
        Some(&mut 1)
    );
    assert_eq!(cache.get(b"k", t0 + ttl), None);
    assert_eq!(load(&counters.expirations), 1);
    assert_eq!(load(&counters.misses), 1);
    assert_eq!(load(&counters.hits), 1);
    assert!(cache.is_empty(), "an expired entry is removed, not kept");
    assert_eq!(load(&counters.entries), 0);

    // A replace restarts the clock.
    assert!(cache.insert(b"k", 2, 10, t0));
    assert!(cache.insert(b"k", 3, 10, t0 + ttl));
    assert_eq!(cache.get(b"k", t0 + ttl + ttl / 2), Some(&mut 3));

    // Without a TTL nothing expires.
    let (mut forever, _) = new_cache(100_000, None);
    assert!(forever.insert(b"k", 1, 10, t0));
    assert_eq!(
        forever.get(b"k", t0 + Duration::from_secs(1 << 30)),
        Some(&mut 1)
    );
    cache.check_invariants();
}

#[test]
fn eviction_drops_expired_entries_first() {
    let ttl = Duration::from_secs(1);
    let per = charge(1, 100);
    let (mut cache, counters) = new_cache(per * 10, Some(ttl));
    let t0 = Instant::now();
    for k in 0..10u8 {
        assert!(cache.insert(&[k], 0, 100, t0));
        // Read often enough that the counters alone would keep them.
        for _ in 0..3 {
            cache.get(&[k], t0);
        }
    }
    assert!(cache.insert(&[10], 0, 100, t0 + ttl));
    assert_eq!(load(&counters.expirations), 1);
    assert_eq!(load(&counters.evictions), 0);
    cache.check_invariants();
}

#[test]
fn oversize_entry_is_refused() {
    let capacity = 80_000;
    let (mut cache, counters) = new_cache(capacity, None);
    let now = Instant::now();
    let limit_weight = capacity / 8 - charge(1, 0);
    assert!(
        cache.insert(b"k", 1, limit_weight, now),
        "exactly an eighth fits"
    );
    assert!(!cache.insert(b"k", 2, limit_weight + 1, now));
    assert_eq!(cache.get(b"k", now), None, "the older value is not served");
    assert!(!cache.insert(b"j", 3, usize::MAX, now));
    assert!(cache.is_empty());
    assert_eq!(load(&counters.inserts), 1);
    assert_eq!(load(&counters.invalidations), 1);

    let (mut empty, _) = new_cache(0, None);
    assert!(
        !empty.insert(b"k", 1, 0, now),
        "a zero-byte cache caches nothing"
    );
    cache.check_invariants();
}

/// A hot set read a few times, then a scan of one-hit keys five times the
/// cache's size: S3-FIFO keeps every hot key (the scan churns through the
/// small queue), LRU keeps none.
#[test]
fn a_scan_does_not_flush_the_hot_set() {
    const ENTRIES: u64 = 1_000;
    const HOT: u64 = 100;
    let per = charge(8, 100);
    let (mut cache, _) = new_cache(per * ENTRIES as usize, None);
    let mut lru = Lru::new(per * ENTRIES as usize);
    let now = Instant::now();
    let key = |id: u64| id.to_le_bytes();

    // Steady state first: the cache is full of cold keys and has evicted.
    for id in 1_000_000..1_000_000 + 2 * ENTRIES {
        cache.insert(&key(id), id, 100, now);
        lru.insert(&key(id), id, 100);
    }
    for _round in 0..3 {
        for id in 0..HOT {
            if cache.get(&key(id), now).is_none() {
                cache.insert(&key(id), id, 100, now);
            }
            if lru.get(&key(id)).is_none() {
                lru.insert(&key(id), id, 100);
            }
        }
    }
    for id in 2_000_000..2_000_000 + 5 * ENTRIES {
        assert!(cache.get(&key(id), now).is_none());
        cache.insert(&key(id), id, 100, now);
        assert!(lru.get(&key(id)).is_none());
        lru.insert(&key(id), id, 100);
    }
    let s3_kept = (0..HOT)
        .filter(|&id| cache.get(&key(id), now).is_some())
        .count();
    let lru_kept = (0..HOT).filter(|&id| lru.get(&key(id)).is_some()).count();
    assert_eq!(
        s3_kept, HOT as usize,
        "S3-FIFO keeps the hot set through the scan"
    );
    assert_eq!(lru_kept, 0, "LRU loses the hot set to the scan");
    cache.check_invariants();
}

#[test]
fn a_key_evicted_from_probation_and_back_soon_goes_to_main() {
    let per = charge(8, 100);
    let (mut cache, _) = new_cache(per * 100, None);
    let now = Instant::now();
    let key = |id: u64| id.to_le_bytes();
    for id in 0..200 {
        cache.insert(&key(id), id, 100, now);
    }
    // 100..200 went in after the first eviction, so to small, and most were
    // evicted from it since; the ghost remembers the latest 90 entries' worth.
    assert_eq!(cache.is_in_main(&key(199)), Some(false));
    let evicted = (100..200)
        .rev()
        .find(|&id| cache.is_in_main(&key(id)).is_none())
        .unwrap();
    cache.insert(&key(evicted), evicted, 100, now);
    assert_eq!(
        cache.is_in_main(&key(evicted)),
        Some(true),
        "the ghost remembered it"
    );
    cache.check_invariants();
}

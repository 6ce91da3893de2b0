//! The per-core cache partition: a byte-bounded, scan-resistant (S3-FIFO) cache that one io core owns outright.
//!
//! # Ownership
//! Each io core owns one [`Cache`] and touches it through `&mut self`: no
//! lock, no atomics on the lookup path beyond the single-writer counters in
//! [`CacheCounters`], which a `/metrics` renderer on another thread reads.
//!
//! # Policy: S3-FIFO
//! From "FIFO queues are all you need for cache eviction" (Yang et al.,
//! SOSP '23). Three FIFOs:
//! - **small** (10% of the bytes): probation. New keys enter here, so a scan
//!   of one-hit keys churns through it without touching the main queue.
//! - **main** (the other 90%): a CLOCK with a 2-bit counter. The tail entry
//!   is evicted if it was not read since it last passed the tail, else it
//!   goes back to the head with its counter lowered by one.
//! - **ghost**: hashes of keys evicted from small (`ghost`). A key that comes
//!   back while still remembered goes straight to main.
//!
//! Reads only bump a 2-bit counter in place (no list is touched), which is
//! why a hit costs a hash lookup and one byte store. When the small queue's
//! tail is evicted, an entry read at least [`MOVE_TO_MAIN_FREQ`] times while
//! on probation moves to main instead. As in the reference implementation,
//! until the first eviction new keys go to main once small is full, so a
//! cold cache fills all of its bytes rather than cycling through 10%.
//!
//! # Bytes, not entries
//! Every entry is charged `weight + key.len() + ENTRY_OVERHEAD`, where
//! `weight` is what the caller says the value costs and
//! [`Cache::ENTRY_OVERHEAD`] approximates this cache's own bookkeeping per
//! entry. The sum never exceeds the capacity after any call returns. An entry
//! charged more than an eighth of the capacity is not cached: one such value
//! would otherwise flush a large part of the working set for itself.
//!
//! # Expiry
//! With a TTL, each entry stores when it expires. `get` treats an expired
//! entry as a miss and drops it; eviction drops an expired tail entry before
//! considering its counter. Nothing sweeps in the background: an expired
//! entry nobody reads waits for eviction to reach it, using bytes meanwhile.
//!
//! The plain [`Lru`] beside it exists to measure the policy against
//! (`benches/cache_policy.rs`).

mod ghost;
pub mod lru;
mod slab;

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::fast::RandomState;

use ghost::Ghost;
pub use lru::Lru;
use slab::{List, Slab};

/// Reads an entry needs while on probation to move to the main queue when it
/// reaches the small queue's tail, rather than be evicted. 2 is the reference
/// implementation's default; on the traces of `benches/cache_policy.rs`, 1
/// scored within 0.1 points of it (`benches/results/cache-policy.md`).
pub const MOVE_TO_MAIN_FREQ: u8 = 2;

/// The counter saturates here: two bits' worth, so a popular entry survives
/// at most three laps of the main queue without a read.
const MAX_FREQ: u8 = 3;

/// The small queue's share of the capacity, in tenths.
const SMALL_TENTHS: usize = 1;

/// Bookkeeping per entry outside its slab slot, in bytes: the key's map
/// bucket (a 16-byte `Arc<[u8]>` and a `u32` index, at the map's 7/8 maximum
/// load, about 32), the key allocation's reference counts (16), and the
/// ghost record a recently evicted key leaves (a 16-byte FIFO record and a
/// map bucket, about 32; the ghost remembers about as many keys as main
/// holds).
const OUTSIDE_SLOT_OVERHEAD: usize = 32 + 16 + 32;

/// Counters a `/metrics` renderer on another thread reads; written only by the owning core.
///
/// Single writer, so each update is a Relaxed load and store rather than a
/// locked read-modify-write: a reader may see a slightly stale value, never
/// a torn one, and nothing else is ordered by these.
#[derive(Debug, Default)]
pub struct CacheCounters {
    /// `get` calls that found a live entry.
    pub hits: AtomicU64,
    /// `get` calls that found nothing or an expired entry.
    pub misses: AtomicU64,
    /// Accepted `insert` calls, new keys and replacements alike.
    pub inserts: AtomicU64,
    /// Entries dropped by the policy to make room (or by `reweigh` past the size limit).
    pub evictions: AtomicU64,
    /// Entries dropped because their TTL had passed.
    pub expirations: AtomicU64,
    /// Entries dropped by `remove`, or by an `insert` whose new value was too big to keep.
    pub invalidations: AtomicU64,
    /// Bytes charged now (see [`Cache::bytes`]).
    pub bytes: AtomicU64,
    /// Entries held now.
    pub entries: AtomicU64,
}

/// Adds one to a counter only this thread writes.
#[inline]
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

struct Entry<V> {
    /// Shared with the map's key, so eviction finds the map entry without a
    /// second copy of the key.
    key: Arc<[u8]>,
    value: V,
    /// Bytes this entry counts against the capacity.
    charge: usize,
    expires: Option<Instant>,
    /// Reads, saturating at [`MAX_FREQ`].
    freq: u8,
    /// Which queue the slot is linked on.
    in_main: bool,
}

/// A byte-bounded S3-FIFO cache from byte-string keys to `V`, owned by one core.
pub struct Cache<V> {
    index: HashMap<Arc<[u8]>, u32, RandomState>,
    slab: Slab<Entry<V>>,
    small: List,
    main: List,
    small_bytes: usize,
    main_bytes: usize,
    ghost: Ghost,
    capacity: usize,
    small_target: usize,
    /// The largest charge accepted: an eighth of the capacity.
    max_entry: usize,
    ttl: Option<Duration>,
    /// Whether anything was evicted yet (see the warm-up rule in the module docs).
    evicted_once: bool,
    counters: Arc<CacheCounters>,
}

impl<V> Cache<V> {
    /// Bytes each entry is charged on top of its weight and key: its slab
    /// slot (which holds `V` inline) plus the map, key and ghost bookkeeping.
    pub const ENTRY_OVERHEAD: usize = slab::slot_size::<Entry<V>>() + OUTSIDE_SLOT_OVERHEAD;

    /// An empty cache holding at most `capacity_bytes`, entries expiring `ttl` after their insert.
    pub fn new(capacity_bytes: usize, ttl: Option<Duration>, counters: Arc<CacheCounters>) -> Self {
        let small_target = capacity_bytes / 10 * SMALL_TENTHS;
        let cache = Cache {
            index: HashMap::with_hasher(RandomState::default()),
            slab: Slab::new(),
            small: List::new(),
            main: List::new(),
            small_bytes: 0,
            main_bytes: 0,
            ghost: Ghost::new(capacity_bytes - small_target),
            capacity: capacity_bytes,
            small_target,
            max_entry: capacity_bytes / 8,
            ttl,
            evicted_once: false,
            counters,
        };
        cache.publish_size();
        cache
    }

    /// Looks `key` up without allocating; counts a hit or a miss.
    ///
    /// An entry whose TTL has passed counts as a miss, is removed and is
    /// counted as an expiration.
    pub fn get(&mut self, key: &[u8], now: Instant) -> Option<&mut V> {
        let Some(&idx) = self.index.get(key) else {
            bump(&self.counters.misses);
            return None;
        };
        if is_expired(self.slab.get(idx), now) {
            self.drop_entry(idx);
            bump(&self.counters.expirations);
            bump(&self.counters.misses);
            self.publish_size();
            return None;
        }
        bump(&self.counters.hits);
        let entry = self.slab.get_mut(idx);
        // Skip the store once saturated: a hot entry's slot stays clean.
        if entry.freq < MAX_FREQ {
            entry.freq += 1;
        }
        Some(&mut entry.value)
    }

    /// Inserts or replaces `key`, evicting by policy until it fits.
    ///
    /// `weight` is what the value costs in bytes; the cache adds the key's
    /// length and [`Self::ENTRY_OVERHEAD`]. Returns false if the entry would
    /// be charged more than an eighth of the capacity: it is not cached, and
    /// an older value under the same key is dropped (an invalidation) so a
    /// later `get` cannot return it.
    ///
    /// A replaced entry keeps its queue and read count; if room has to be
    /// made for its new size it goes back to the head of its queue, so the
    /// eviction that makes room never picks the entry itself.
    pub fn insert(&mut self, key: &[u8], value: V, weight: usize, now: Instant) -> bool {
        let charge = self.charge(key, weight);
        let expires = self.ttl.and_then(|ttl| now.checked_add(ttl));

        if let Some(&idx) = self.index.get(key) {
            if charge > self.max_entry {
                self.drop_entry(idx);
                bump(&self.counters.invalidations);
                self.publish_size();
                return false;
            }
            let entry = self.slab.get_mut(idx);
            entry.value = value;
            entry.expires = expires;
            self.resize(idx, charge, Some(now));
            bump(&self.counters.inserts);
            self.publish_size();
            return true;
        }

        if charge > self.max_entry {
            return false;
        }
        self.make_room(charge, Some(now));
        let hash = self.index.hasher().hash_one(key);
        let in_main =
            self.ghost.take(hash) || (!self.evicted_once && self.small_bytes >= self.small_target);
        let key: Arc<[u8]> = Arc::from(key);
        let idx = self.slab.insert(Entry {
            key: Arc::clone(&key),
            value,
            charge,
            expires,
            freq: 0,
            in_main,
        });
        self.index.insert(key, idx);
        self.link(idx);
        bump(&self.counters.inserts);
        self.publish_size();
        true
    }

    /// Changes the weight of a present entry (e.g. it grew), evicting others if needed.
    ///
    /// The entry itself is never chosen for eviction, as with a replacing
    /// `insert`; but if its new charge is more than `insert` would accept,
    /// it is removed (counted as an eviction). An absent key is ignored.
    pub fn reweigh(&mut self, key: &[u8], weight: usize) {
        let Some(&idx) = self.index.get(key) else {
            return;
        };
        let charge = self.charge(key, weight);
        if charge > self.max_entry {
            self.drop_entry(idx);
            bump(&self.counters.evictions);
        } else {
            // No clock here, so eviction cannot tell what has expired; it
            // goes by the counters alone.
            self.resize(idx, charge, None);
        }
        self.publish_size();
    }

    /// Removes `key`, returning its value; a present key counts as an invalidation.
    ///
    /// An expired entry not yet dropped is removed and returned like any other.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let idx = *self.index.get(key)?;
        let entry = self.drop_entry(idx);
        bump(&self.counters.invalidations);
        self.publish_size();
        Some(entry.value)
    }

    /// Removes every entry (each counts as an invalidation). The ghost
    /// history stays: it holds key hashes for admission, no values.
    pub fn clear(&mut self) {
        let keys: Vec<Arc<[u8]>> = self.index.keys().cloned().collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes charged for the entries held; never more than [`Self::capacity`].
    pub fn bytes(&self) -> usize {
        self.small_bytes + self.main_bytes
    }

    /// The byte bound this cache was created with.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn charge(&self, key: &[u8], weight: usize) -> usize {
        weight
            .saturating_add(key.len())
            .saturating_add(Self::ENTRY_OVERHEAD)
    }

    /// Gives live entry `idx` a new charge, making room for growth without evicting it.
    fn resize(&mut self, idx: u32, charge: usize, now: Option<Instant>) {
        let old = self.slab.get(idx).charge;
        if self.bytes() - old + charge > self.capacity {
            // Off its queue, eviction cannot see it.
            self.unlink(idx);
            self.make_room(charge, now);
            self.slab.get_mut(idx).charge = charge;
            self.link(idx);
            return;
        }
        let entry = self.slab.get_mut(idx);
        entry.charge = charge;
        let queue_bytes = if entry.in_main {
            &mut self.main_bytes
        } else {
            &mut self.small_bytes
        };
        *queue_bytes = *queue_bytes - old + charge;
    }

    /// Evicts until `needed` more bytes fit (or nothing is left to evict).
    fn make_room(&mut self, needed: usize, now: Option<Instant>) {
        while self.bytes() + needed > self.capacity
            && !(self.small.is_empty() && self.main.is_empty())
        {
            self.evict_one(now);
        }
    }

    /// Evicts one entry, or moves every entry off probation trying.
    ///
    /// Terminates: each pass over small either evicts or empties it, and
    /// main's counters only go down, so a few laps at most reach an entry at
    /// zero.
    fn evict_one(&mut self, now: Option<Instant>) {
        self.evicted_once = true;
        if self.main_bytes > self.capacity - self.small_target || self.small.is_empty() {
            self.evict_main(now);
        } else {
            self.evict_small(now);
        }
    }

    fn evict_small(&mut self, now: Option<Instant>) {
        while let Some(idx) = self.small.tail() {
            let entry = self.slab.get(idx);
            if now.is_some_and(|now| is_expired(entry, now)) {
                self.drop_entry(idx);
                bump(&self.counters.expirations);
                return;
            }
            if entry.freq >= MOVE_TO_MAIN_FREQ {
                self.unlink(idx);
                let entry = self.slab.get_mut(idx);
                entry.freq = 0;
                entry.in_main = true;
                self.link(idx);
            } else {
                let (hash, charge) = (self.index.hasher().hash_one(&*entry.key), entry.charge);
                self.ghost.push(hash, charge);
                self.drop_entry(idx);
                bump(&self.counters.evictions);
                return;
            }
        }
    }

    fn evict_main(&mut self, now: Option<Instant>) {
        while let Some(idx) = self.main.tail() {
            let entry = self.slab.get_mut(idx);
            if now.is_some_and(|now| is_expired(entry, now)) {
                self.drop_entry(idx);
                bump(&self.counters.expirations);
                return;
            }
            if entry.freq > 0 {
                entry.freq -= 1;
                self.slab.move_to_front(&mut self.main, idx);
            } else {
                self.drop_entry(idx);
                bump(&self.counters.evictions);
                return;
            }
        }
    }

    /// Links live entry `idx` at the head of its queue and counts its bytes there.
    fn link(&mut self, idx: u32) {
        let entry = self.slab.get(idx);
        if entry.in_main {
            self.main_bytes += entry.charge;
            self.slab.push_front(&mut self.main, idx);
        } else {
            self.small_bytes += entry.charge;
            self.slab.push_front(&mut self.small, idx);
        }
    }

    /// Takes live entry `idx` off its queue and its bytes out of the queue's total.
    fn unlink(&mut self, idx: u32) {
        let entry = self.slab.get(idx);
        if entry.in_main {
            self.main_bytes -= entry.charge;
            self.slab.unlink(&mut self.main, idx);
        } else {
            self.small_bytes -= entry.charge;
            self.slab.unlink(&mut self.small, idx);
        }
    }

    /// Removes live entry `idx` from its queue, the slab and the index; counts nothing.
    fn drop_entry(&mut self, idx: u32) -> Entry<V> {
        self.unlink(idx);
        let entry = self.slab.remove(idx);
        self.index.remove(&*entry.key);
        entry
    }

    fn publish_size(&self) {
        self.counters
            .bytes
            .store(self.bytes() as u64, Ordering::Relaxed);
        self.counters
            .entries
            .store(self.len() as u64, Ordering::Relaxed);
    }

    /// Panics unless the queues, byte totals and index agree.
    #[cfg(test)]
    fn check_invariants(&self) {
        let mut seen = 0;
        for (list, in_main, bytes) in [
            (&self.small, false, self.small_bytes),
            (&self.main, true, self.main_bytes),
        ] {
            let indices = self.slab.iter(list);
            assert_eq!(indices.len(), list.len());
            let mut sum = 0;
            for idx in indices {
                let entry = self.slab.get(idx);
                assert_eq!(entry.in_main, in_main);
                assert_eq!(self.index.get(&*entry.key), Some(&idx));
                assert!(entry.freq <= MAX_FREQ);
                sum += entry.charge;
            }
            assert_eq!(sum, bytes);
            seen += list.len();
        }
        assert_eq!(seen, self.index.len());
        assert!(self.bytes() <= self.capacity);
        assert_eq!(
            self.counters.bytes.load(Ordering::Relaxed),
            self.bytes() as u64
        );
        assert_eq!(
            self.counters.entries.load(Ordering::Relaxed),
            self.len() as u64
        );
    }

    #[cfg(test)]
    fn is_in_main(&self, key: &[u8]) -> Option<bool> {
        let idx = *self.index.get(key)?;
        Some(self.slab.get(idx).in_main)
    }
}

fn is_expired<V>(entry: &Entry<V>, now: Instant) -> bool {
    entry.expires.is_some_and(|at| now >= at)
}

#[cfg(test)]
mod tests;

//! A plain LRU with the same byte accounting as [`super::Cache`]: the baseline its policy is measured against.
//!
//! Not used on the request path. It charges entries exactly as `Cache` does
//! (weight, key length, `Cache::<V>::ENTRY_OVERHEAD`) and refuses the same
//! oversize entries, so at one capacity both hold the same number of entries
//! and their hit ratios compare policies, not accounting. Every hit moves the
//! entry to the head of one list, which is the cost S3-FIFO avoids.

use std::collections::HashMap;
use std::sync::Arc;

use foldhash::fast::RandomState;

use super::slab::{List, Slab};
use super::Cache;

struct Entry<V> {
    key: Arc<[u8]>,
    value: V,
    charge: usize,
}

/// A byte-bounded least-recently-used cache from byte-string keys to `V`.
pub struct Lru<V> {
    index: HashMap<Arc<[u8]>, u32, RandomState>,
    slab: Slab<Entry<V>>,
    /// Head: most recently used.
    list: List,
    bytes: usize,
    capacity: usize,
    max_entry: usize,
}

impl<V> Lru<V> {
    pub fn new(capacity_bytes: usize) -> Self {
        Lru {
            index: HashMap::with_hasher(RandomState::default()),
            slab: Slab::new(),
            list: List::new(),
            bytes: 0,
            capacity: capacity_bytes,
            max_entry: capacity_bytes / 8,
        }
    }

    /// Looks `key` up without allocating and makes it the most recently used.
    pub fn get(&mut self, key: &[u8]) -> Option<&mut V> {
        let idx = *self.index.get(key)?;
        self.slab.move_to_front(&mut self.list, idx);
        Some(&mut self.slab.get_mut(idx).value)
    }

    /// Inserts or replaces `key` as the most recently used, evicting from the
    /// tail until it fits; false (and any older value dropped) if it is
    /// charged more than an eighth of the capacity.
    pub fn insert(&mut self, key: &[u8], value: V, weight: usize) -> bool {
        let charge = weight
            .saturating_add(key.len())
            .saturating_add(Cache::<V>::ENTRY_OVERHEAD);
        if let Some(&idx) = self.index.get(key) {
            // Off the list while room is made, so it cannot evict itself.
            self.slab.unlink(&mut self.list, idx);
            let entry = self.slab.remove(idx);
            self.index.remove(&*entry.key);
            self.bytes -= entry.charge;
        }
        if charge > self.max_entry {
            return false;
        }
        while self.bytes + charge > self.capacity {
            let Some(tail) = self.list.tail() else {
                break;
            };
            self.drop_entry(tail);
        }
        let key: Arc<[u8]> = Arc::from(key);
        let idx = self.slab.insert(Entry {
            key: Arc::clone(&key),
            value,
            charge,
        });
        self.index.insert(key, idx);
        self.slab.push_front(&mut self.list, idx);
        self.bytes += charge;
        true
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &[u8]) -> Option<V> {
        let idx = *self.index.get(key)?;
        Some(self.drop_entry(idx).value)
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes charged for the entries held; never more than [`Self::capacity`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    fn drop_entry(&mut self, idx: u32) -> Entry<V> {
        self.slab.unlink(&mut self.list, idx);
        let entry = self.slab.remove(idx);
        self.index.remove(&*entry.key);
        self.bytes -= entry.charge;
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let per_entry = 100 + 1 + Cache::<u32>::ENTRY_OVERHEAD;
        let mut lru = Lru::new(per_entry * 10);
        for k in 0..10u8 {
            assert!(lru.insert(&[k], u32::from(k), 100));
        }
        assert_eq!(lru.get(&[0]), Some(&mut 0), "0 is now the most recent");
        assert!(lru.insert(&[10], 10, 100));
        assert_eq!(lru.get(&[1]), None, "1 was the least recent");
        assert_eq!(lru.get(&[0]), Some(&mut 0));
        assert_eq!(lru.len(), 10);
        assert!(lru.bytes() <= lru.capacity());

        assert!(lru.insert(&[0], 7, 50), "replace shrinks it");
        assert_eq!(lru.bytes(), per_entry * 9 + per_entry - 50);
        assert_eq!(lru.remove(&[0]), Some(7));
        assert_eq!(lru.remove(&[0]), None);
        assert!(!lru.insert(&[0], 0, per_entry * 2), "oversize is refused");
    }
}

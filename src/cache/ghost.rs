//! The ghost queue: hashes of keys recently evicted from probation, so a key that comes back soon skips it.
//!
//! S3-FIFO's third FIFO holds no values, only who was evicted from the small
//! queue lately. It is bounded by the bytes those entries had cost (the main
//! queue's share of the capacity, as in the paper's reference
//! implementation), so it remembers about as many keys as the main queue
//! holds. Membership is a map from key hash to the sequence number of the
//! newest push: a hash taken out by a hit, or pushed again, leaves an old
//! FIFO record behind that no longer matches and is skipped when it ages
//! out. Those records still count against the bound, which keeps the FIFO's
//! length bounded whatever the workload.
//!
//! A collision between two keys' 64-bit hashes only sends a newcomer to the
//! main queue early; it cannot return a wrong value.

use std::collections::{HashMap, VecDeque};

use foldhash::fast::RandomState;

struct Record {
    hash: u64,
    seq: u32,
    /// Saturated: the bound is approximate for entries past 4 GiB.
    charge: u32,
}

pub(super) struct Ghost {
    order: VecDeque<Record>,
    members: HashMap<u64, u32, RandomState>,
    bytes: usize,
    capacity: usize,
    /// Wraps; the FIFO never holds 2^32 records (each costs a whole entry's
    /// overhead against a bound of at most the cache's capacity).
    seq: u32,
}

impl Ghost {
    pub(super) fn new(capacity_bytes: usize) -> Self {
        Ghost {
            order: VecDeque::new(),
            members: HashMap::with_hasher(RandomState::default()),
            bytes: 0,
            capacity: capacity_bytes,
            seq: 0,
        }
    }

    /// Remembers that the key hashing to `hash`, which cost `charge` bytes, was just evicted.
    pub(super) fn push(&mut self, hash: u64, charge: usize) {
        let charge = u32::try_from(charge).unwrap_or(u32::MAX);
        if charge as usize > self.capacity {
            return;
        }
        self.seq = self.seq.wrapping_add(1);
        self.members.insert(hash, self.seq);
        self.order.push_back(Record {
            hash,
            seq: self.seq,
            charge,
        });
        self.bytes += charge as usize;
        while self.bytes > self.capacity {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.bytes -= old.charge as usize;
            if self.members.get(&old.hash) == Some(&old.seq) {
                self.members.remove(&old.hash);
            }
        }
    }

    /// Whether the key hashing to `hash` was evicted recently; forgets it either way.
    pub(super) fn take(&mut self, hash: u64) -> bool {
        self.members.remove(&hash).is_some()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.members.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_within_the_byte_bound_and_forgets_on_take() {
        let mut ghost = Ghost::new(300);
        for hash in 0..3 {
            ghost.push(hash, 100);
        }
        assert_eq!(ghost.len(), 3);
        ghost.push(3, 100);
        assert!(!ghost.take(0), "the oldest aged out");
        assert!(ghost.take(1));
        assert!(!ghost.take(1), "a hit forgets the key");

        // A re-pushed hash survives the ageing of its older record.
        ghost.push(2, 100);
        ghost.push(4, 100);
        ghost.push(5, 100);
        assert!(ghost.take(2));
        assert!(ghost.take(5));
    }

    #[test]
    fn stays_bounded_when_every_entry_is_taken_back() {
        let mut ghost = Ghost::new(1_000);
        for hash in 0..100_000 {
            ghost.push(hash, 100);
            assert!(ghost.take(hash));
        }
        assert!(ghost.order.len() <= 10);
    }
}

//! Each io core's cache of verified credentials: a request carrying a key or token this core already verified costs one hash and one compare.
//!
//! Owned by one core, never shared. An entry holds the credential's bytes
//! (compared in full, so a hash collision cannot borrow another's
//! entry), what it was verified as, and until when (a token's `exp`).
//! When the keys or key set are reloaded the whole cache is dropped: the
//! node's generation counter says so.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::time::Instant;

/// Entries one core keeps; past it the cache starts over (a flood of
/// distinct valid credentials is bounded, invalid ones are never kept).
pub const CAPACITY: usize = 4096;

/// What a credential was verified as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// A hash naming the principal (the rate limiter's key).
    pub principal: u64,
    /// One bit per scope the node's rules name ([`super::Auth::scope_bit`]).
    pub scopes: u64,
}

struct Entry {
    credential: Box<[u8]>,
    verified: Verified,
    expires: Option<Instant>,
}

/// One core's verified credentials.
pub struct CredentialCache {
    entries: HashMap<u64, Entry, foldhash::fast::RandomState>,
    hasher: foldhash::fast::RandomState,
    generation: u64,
}

impl Default for CredentialCache {
    fn default() -> Self {
        Self {
            entries: HashMap::with_hasher(foldhash::fast::RandomState::default()),
            hasher: foldhash::fast::RandomState::default(),
            generation: 0,
        }
    }
}

impl CredentialCache {
    /// The verified identity of `credential`, if this core verified it
    /// under the current `generation` of keys and it has not expired.
    #[inline]
    pub fn get(&mut self, credential: &[u8], generation: u64, now: Instant) -> Option<Verified> {
        if generation != self.generation {
            self.entries.clear();
            self.generation = generation;
            return None;
        }
        let hash = self.hasher.hash_one(credential);
        let entry = self.entries.get(&hash)?;
        if !same_bytes(&entry.credential, credential) {
            return None;
        }
        if entry.expires.is_some_and(|at| now >= at) {
            self.entries.remove(&hash);
            return None;
        }
        Some(entry.verified)
    }

    pub fn insert(&mut self, credential: &[u8], verified: Verified, expires: Option<Instant>) {
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        let hash = self.hasher.hash_one(credential);
        self.entries.insert(
            hash,
            Entry {
                credential: credential.into(),
                verified,
                expires,
            },
        );
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compares in time that depends on the length only, not on where the bytes differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ONE: Verified = Verified {
        principal: 1,
        scopes: 0b10,
    };

    #[test]
    fn hits_need_the_same_bytes_generation_and_time() {
        let mut cache = CredentialCache::default();
        let now = Instant::now();
        assert_eq!(cache.get(b"key", 0, now), None);
        cache.insert(b"key", ONE, Some(now + Duration::from_secs(5)));
        assert_eq!(cache.get(b"key", 0, now), Some(ONE));
        assert_eq!(cache.get(b"kez", 0, now), None);
        assert_eq!(cache.get(b"key", 0, now + Duration::from_secs(5)), None);
        cache.insert(b"key", ONE, None);
        assert_eq!(
            cache.get(b"key", 1, now),
            None,
            "a reload drops every entry"
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = CredentialCache::default();
        for n in 0..CAPACITY * 2 + 3 {
            cache.insert(n.to_string().as_bytes(), ONE, None);
            assert!(cache.len() <= CAPACITY);
        }
    }
}

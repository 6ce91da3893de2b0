//! TEMPORARY STUB
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};
use std::collections::HashMap;
#[derive(Default)] pub struct CacheCounters { pub hits: AtomicU64, pub misses: AtomicU64, pub inserts: AtomicU64, pub evictions: AtomicU64, pub expirations: AtomicU64, pub invalidations: AtomicU64, pub bytes: AtomicU64, pub entries: AtomicU64 }
pub struct Cache<V> { map: HashMap<Box<[u8]>, V>, cap: usize }
impl<V> Cache<V> {
    pub fn new(capacity_bytes: usize, _ttl: Option<Duration>, _c: Arc<CacheCounters>) -> Self { Self { map: HashMap::new(), cap: capacity_bytes } }
    pub fn get(&mut self, key: &[u8], _now: Instant) -> Option<&mut V> { self.map.get_mut(key) }
    pub fn insert(&mut self, key: &[u8], value: V, _w: usize, _now: Instant) -> bool { if self.cap == 0 { return false; } self.map.insert(key.into(), value); true }
    pub fn reweigh(&mut self, _key: &[u8], _w: usize) {}
    pub fn remove(&mut self, key: &[u8]) -> Option<V> { self.map.remove(key) }
}

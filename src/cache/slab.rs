//! Index-linked queues: one slab of slots that thread onto doubly linked lists, the queues both cache policies evict from.
//!
//! Why links in the slot rather than a `VecDeque<u32>` per queue: `remove`
//! and TTL expiry take entries out of the middle of a queue. With a deque
//! that leaves a stale index behind that only eviction would clear, so a
//! workload that removes more than it evicts grows the queues without bound,
//! and compacting them is an O(n) pause on the io core. With links, every
//! queue operation is O(1), an index is on at most one list, and no
//! generation counter is needed.
//!
//! Indices are `u32` (half the size of a pointer per link); `NIL` marks the
//! end of a list and of the free list.

/// The index that means "none".
pub(super) const NIL: u32 = u32::MAX;

struct Slot<T> {
    /// `None` while the slot is on the free list.
    item: Option<T>,
    prev: u32,
    next: u32,
}

/// Bytes one slot holding a `T` occupies in the slab, for the cache's per-entry overhead.
pub(super) const fn slot_size<T>() -> usize {
    size_of::<Slot<T>>()
}

/// One queue over a [`Slab`]: the head is the newest entry, the tail the oldest.
#[derive(Debug, Clone, Copy)]
pub(super) struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    pub(super) const fn new() -> Self {
        List {
            head: NIL,
            tail: NIL,
            len: 0,
        }
    }

    /// The oldest entry, the next one eviction looks at.
    pub(super) fn tail(&self) -> Option<u32> {
        (self.tail != NIL).then_some(self.tail)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Slots addressed by `u32`; freed slots are reused before the slab grows.
pub(super) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: u32,
}

impl<T> Slab<T> {
    pub(super) const fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: NIL,
        }
    }

    /// Stores `item` in a free slot (on no list yet) and returns its index.
    pub(super) fn insert(&mut self, item: T) -> u32 {
        if self.free != NIL {
            let idx = self.free;
            let slot = &mut self.slots[idx as usize];
            self.free = slot.next;
            *slot = Slot {
                item: Some(item),
                prev: NIL,
                next: NIL,
            };
            return idx;
        }
        // Every entry costs at least the fixed overhead (over 64 bytes), so
        // u32::MAX entries would be a cache of hundreds of GiB on one core.
        let idx = u32::try_from(self.slots.len())
            .ok()
            .filter(|&idx| idx != NIL)
            .expect("a cache partition holds fewer than u32::MAX entries");
        self.slots.push(Slot {
            item: Some(item),
            prev: NIL,
            next: NIL,
        });
        idx
    }

    /// Frees slot `idx`, which must be on no list, and returns its item.
    pub(super) fn remove(&mut self, idx: u32) -> T {
        let slot = &mut self.slots[idx as usize];
        debug_assert!(
            slot.prev == NIL && slot.next == NIL,
            "freeing a linked slot"
        );
        let item = slot.item.take().expect("freeing a live slot");
        slot.next = self.free;
        self.free = idx;
        item
    }

    /// The item in live slot `idx`.
    pub(super) fn get(&self, idx: u32) -> &T {
        self.slots[idx as usize]
            .item
            .as_ref()
            .expect("index refers to a live slot")
    }

    /// The item in live slot `idx`.
    pub(super) fn get_mut(&mut self, idx: u32) -> &mut T {
        self.slots[idx as usize]
            .item
            .as_mut()
            .expect("index refers to a live slot")
    }

    /// Links slot `idx`, which must be on no list, at the head of `list`.
    pub(super) fn push_front(&mut self, list: &mut List, idx: u32) {
        let old_head = list.head;
        let slot = &mut self.slots[idx as usize];
        slot.prev = NIL;
        slot.next = old_head;
        if old_head == NIL {
            list.tail = idx;
        } else {
            self.slots[old_head as usize].prev = idx;
        }
        list.head = idx;
        list.len += 1;
    }

    /// Takes slot `idx` off `list`, which must be the list it is on.
    pub(super) fn unlink(&mut self, list: &mut List, idx: u32) {
        let slot = &mut self.slots[idx as usize];
        let (prev, next) = (slot.prev, slot.next);
        slot.prev = NIL;
        slot.next = NIL;
        if prev == NIL {
            list.head = next;
        } else {
            self.slots[prev as usize].next = next;
        }
        if next == NIL {
            list.tail = prev;
        } else {
            self.slots[next as usize].prev = prev;
        }
        list.len -= 1;
    }

    /// Moves slot `idx`, which must be on `list`, to its head.
    pub(super) fn move_to_front(&mut self, list: &mut List, idx: u32) {
        if list.head != idx {
            self.unlink(list, idx);
            self.push_front(list, idx);
        }
    }

    /// The indices on `list`, head to tail (for invariant checks in tests).
    #[cfg(test)]
    pub(super) fn iter(&self, list: &List) -> Vec<u32> {
        let mut out = Vec::with_capacity(list.len);
        let mut idx = list.head;
        while idx != NIL {
            out.push(idx);
            idx = self.slots[idx as usize].next;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_link_unlink_and_reuse_slots() {
        let mut slab = Slab::new();
        let mut list = List::new();
        let a = slab.insert('a');
        let b = slab.insert('b');
        let c = slab.insert('c');
        for idx in [a, b, c] {
            slab.push_front(&mut list, idx);
        }
        assert_eq!(slab.iter(&list), vec![c, b, a]);
        assert_eq!(list.tail(), Some(a));

        slab.unlink(&mut list, b);
        assert_eq!(slab.iter(&list), vec![c, a]);
        slab.move_to_front(&mut list, a);
        assert_eq!(slab.iter(&list), vec![a, c]);
        assert_eq!(list.tail(), Some(c));

        assert_eq!(slab.remove(b), 'b');
        let d = slab.insert('d');
        assert_eq!(d, b, "a freed slot is reused before the slab grows");

        slab.unlink(&mut list, a);
        slab.unlink(&mut list, c);
        assert!(list.is_empty());
        assert_eq!(list.tail(), None);
    }
}

//! A ring of provided receive buffers: the kernel picks one per receive, so idle connections hold no buffer.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;
use io_uring::Submitter;

/// An anonymous private mapping, unmapped on drop.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping touches no existing memory;
        // the result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?,
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr and len are exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Provided buffers registered with one ring under one buffer group id.
pub struct BufRing {
    entries: Mapping,
    buffers: Mapping,
    count: u16,
    buf_size: usize,
    tail: u16,
    pub group: u16,
}

impl BufRing {
    /// Registers `count` (a power of two) buffers of `buf_size` bytes each.
    pub fn register(
        submitter: &Submitter<'_>,
        count: u16,
        buf_size: usize,
        group: u16,
    ) -> io::Result<Self> {
        assert!(
            count.is_power_of_two(),
            "buffer count must be a power of two"
        );
        let entries = Mapping::new(usize::from(count) * std::mem::size_of::<BufRingEntry>())?;
        let buffers = Mapping::new(usize::from(count) * buf_size)?;
        // SAFETY: the entry mapping is page-aligned, sized for `count`
        // entries, and lives as long as this BufRing, which the io core
        // drops only after its ring.
        unsafe {
            submitter.register_buf_ring_with_flags(entries.ptr.as_ptr() as u64, count, group, 0)?
        };
        let mut ring = Self {
            entries,
            buffers,
            count,
            buf_size,
            tail: 0,
            group,
        };
        for bid in 0..count {
            ring.push(bid);
        }
        ring.publish();
        Ok(ring)
    }

    /// The first `len` bytes the kernel received into buffer `bid`.
    pub fn filled(&self, bid: u16, len: usize) -> &[u8] {
        assert!(
            bid < self.count && len <= self.buf_size,
            "kernel reported a buffer outside the ring"
        );
        // SAFETY: in bounds (checked above); the kernel finished writing this
        // buffer when it posted the completion, and will not write it again
        // until `recycle` hands it back.
        unsafe {
            std::slice::from_raw_parts(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size),
                len,
            )
        }
    }

    /// Hands buffer `bid` back to the kernel.
    pub fn recycle(&mut self, bid: u16) {
        self.push(bid);
        self.publish();
    }

    fn push(&mut self, bid: u16) {
        let slot = usize::from(self.tail & (self.count - 1));
        // SAFETY: slot < count, inside the entry mapping; the kernel reads
        // entries only up to the published tail, which has not moved yet.
        unsafe {
            let entry = &mut *self.entries.ptr.as_ptr().cast::<BufRingEntry>().add(slot);
            entry.set_addr(
                self.buffers
                    .ptr
                    .as_ptr()
                    .add(usize::from(bid) * self.buf_size) as u64,
            );
            entry.set_len(self.buf_size as u32);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of the mapping and
        // is u16-aligned; the kernel reads it concurrently, hence atomic.
        // Release: the entries written above become visible before the tail.
        unsafe {
            let tail =
                BufRingEntry::tail(self.entries.ptr.as_ptr().cast::<BufRingEntry>()) as *mut u16;
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

//! An anonymous `MAP_SHARED` memory region, created before `fork` so that the primary and every
//! worker see the same physical pages (see [`mmap(2)`]).
//!
//! herd keeps its counters there: a worker bumps its own atomics with no system call, and the
//! primary reads any worker's counters at any time without asking it over the channel. The
//! region is handed out only as cache lines of [`AtomicU64`] — all-zero bytes are a valid
//! `AtomicU64`, and atomics are the only sound way for two processes to touch the same memory.
//!
//! [`mmap(2)`]: https://man7.org/linux/man-pages/man2/mmap.2.html

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Eight 64-bit atomic counters on one 64-byte cache line, so that two processes that bump
/// different lines never contend for the same line (no false sharing).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine(pub [AtomicU64; 8]);

/// A `MAP_SHARED | MAP_ANONYMOUS` mapping of `lines` cache lines, zero-filled by the kernel.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<CacheLine>,
    lines: usize,
}

// SAFETY: the region holds only atomics, which may be shared and sent across threads.
unsafe impl Send for SharedRegion {}
// SAFETY: as above; all access goes through `&AtomicU64`.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Corresponds to `mmap(NULL, lines * 64, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS)`.
    pub fn new(lines: usize) -> io::Result<SharedRegion> {
        let lines = lines.max(1);
        let len = lines * std::mem::size_of::<CacheLine>();
        // SAFETY: a fresh anonymous mapping aliases no Rust object; the kernel zero-fills it and
        // aligns it to a page, which satisfies CacheLine's 64-byte alignment.
        let ptr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
            )
        }
        .map_err(|e| super::context(super::from_errno(e), "mmap(MAP_SHARED | MAP_ANONYMOUS)"))?;
        let ptr = NonNull::new(ptr.cast::<CacheLine>()).expect("mmap returned a null mapping");
        Ok(SharedRegion { ptr, lines })
    }

    /// The region as a slice of cache lines.
    pub fn lines(&self) -> &[CacheLine] {
        // SAFETY: the mapping is `lines` CacheLines long, zero-initialised (a valid value of
        // atomics), aligned, and lives until `self` is dropped; only shared references are made.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.lines) }
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: the pointer and length are exactly those of the mapping made in `new`, and no
        // reference into it outlives `self` (`lines` borrows `self`).
        unsafe {
            let _ = rustix::mm::munmap(self.ptr.as_ptr().cast(), self.lines * std::mem::size_of::<CacheLine>());
        }
    }
}

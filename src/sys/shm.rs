//! A `MAP_SHARED` memory region, created before `fork` so that the primary and every worker see
//! the same physical pages (see [`mmap(2)`]).
//!
//! The pages belong to a memfd ([`memfd_create(2)`]) rather than to an anonymous mapping, for
//! the one case a mapping does not cover: `execve`. A worker that runs another program
//! (`herd run`) loses every mapping at exec but keeps the descriptors it was given, so it gets
//! the memfd and maps the same pages again ([`SharedRegion::from_fd`]).
//!
//! herd keeps its counters there: a worker bumps its own atomics with no system call, and the
//! primary reads any worker's counters at any time without asking it over the channel. The
//! region is handed out only as cache lines of [`AtomicU64`] — all-zero bytes are a valid
//! `AtomicU64`, and atomics are the only sound way for two processes to touch the same memory.
//!
//! [`mmap(2)`]: https://man7.org/linux/man-pages/man2/mmap.2.html
//! [`memfd_create(2)`]: https://man7.org/linux/man-pages/man2/memfd_create.2.html

use std::io;
use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Eight 64-bit atomic counters on one 64-byte cache line, so that two processes that bump
/// different lines never contend for the same line (no false sharing).
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct CacheLine(pub [AtomicU64; 8]);

/// A `MAP_SHARED` mapping of a memfd of `lines` cache lines, zero-filled by the kernel.
///
/// The mapping does not hold the memfd: [`SharedRegion::new`] hands it to the caller, who
/// keeps it as long as it may pass it on. (The system-call tally keeps mappings alive for the
/// life of the process; it must not keep a descriptor open with them.)
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
    /// Corresponds to `memfd_create("herd-counters", MFD_CLOEXEC)`, `ftruncate` to `lines * 64`
    /// bytes and `mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)`.
    pub fn new(lines: usize) -> io::Result<(SharedRegion, OwnedFd)> {
        let lines = lines.max(1);
        let len = lines * std::mem::size_of::<CacheLine>();
        let fd = rustix::fs::memfd_create("herd-counters", rustix::fs::MemfdFlags::CLOEXEC)
            .map_err(|e| super::context(super::from_errno(e), "memfd_create(herd-counters)"))?;
        rustix::fs::ftruncate(&fd, len as u64)
            .map_err(|e| super::context(super::from_errno(e), format!("ftruncate(memfd, {len})")))?;
        SharedRegion::map(fd, lines)
    }

    /// Maps the region another process of the cluster created, from its memfd (passed across
    /// `execve`). The region's size is the file's.
    ///
    /// # Errors
    /// `InvalidInput` if the file's size is not a whole number of cache lines; `fstat` or
    /// `mmap`'s error (`EACCES`, `ENODEV` for a descriptor that is not a mappable file).
    pub fn from_fd(fd: OwnedFd) -> io::Result<(SharedRegion, OwnedFd)> {
        let st = rustix::fs::fstat(&fd).map_err(|e| super::context(super::from_errno(e), "fstat(counters memfd)"))?;
        let line = std::mem::size_of::<CacheLine>() as i64;
        if st.st_size < line || st.st_size % line != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("counters memfd: {} bytes is not a whole number of {line}-byte lines", st.st_size),
            ));
        }
        SharedRegion::map(fd, (st.st_size / line) as usize)
    }

    fn map(fd: OwnedFd, lines: usize) -> io::Result<(SharedRegion, OwnedFd)> {
        let len = lines * std::mem::size_of::<CacheLine>();
        // SAFETY: a fresh shared mapping of a file no Rust object aliases; the file is `len`
        // bytes (zero-filled by the kernel, or written only through atomics by other processes
        // of the cluster), and the mapping is page-aligned, which satisfies CacheLine's 64-byte
        // alignment.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(|e| super::context(super::from_errno(e), "mmap(MAP_SHARED, counters memfd)"))?;
        let ptr = NonNull::new(ptr.cast::<CacheLine>()).expect("mmap returned a null mapping");
        Ok((SharedRegion { ptr, lines }, fd))
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

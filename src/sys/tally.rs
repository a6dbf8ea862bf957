//! Counts the system calls herd makes on its hot paths — `accept4`, `epoll_wait`, `epoll_ctl`,
//! `io_uring_enter`, `sendmsg`, `recvmsg`, an eventfd's `read` and `write`, and the primary's
//! `close` of each descriptor it handed on — into one cell of the shared counter region ([`super::shm`]): the calling
//! process's own cell, so no two processes ever bump the same cache line.
//!
//! Each wrapper in this layer that makes one of those calls counts it, whoever called it, so
//! the count is exact by construction: it is the number `strace -c` finds for those calls in
//! that process (`benches/peers/syscalls.sh` checks that). Calls off the hot path (forking,
//! reading a signalfd or a timerfd, `waitid`) are not counted.
//!
//! The process chooses its cell with [`count_into`]: the primary its line's, each forked worker
//! its slot's, first thing after `fork`. Until then nothing is counted.

use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use super::shm::SharedRegion;

/// The cell this process counts into, or null.
static CELL: AtomicPtr<AtomicU64> = AtomicPtr::new(ptr::null_mut());

/// Every region `CELL` has pointed into, kept mapped for the life of the process: a thread that
/// loaded the pointer just before it changed may still bump the old cell. A process holds one
/// region per primary it started (a page each); its workers share their primary's. A list that
/// only grows, pushed to without a lock: `count_into` runs right after `fork`, where a lock
/// another thread held would stay held for ever.
static KEPT: AtomicPtr<Kept> = AtomicPtr::new(ptr::null_mut());

struct Kept {
    region: Arc<SharedRegion>,
    next: *mut Kept,
}

/// From now on, this process counts its system calls in `region`'s line `line`, cell `cell`.
///
/// # Panics
/// If `line` or `cell` is outside the region.
pub fn count_into(region: &Arc<SharedRegion>, line: usize, cell: usize) {
    let target: *const AtomicU64 = &region.lines()[line].0[cell];
    let mut head = KEPT.load(Ordering::Acquire);
    if !kept(head, region) {
        let node = Box::into_raw(Box::new(Kept { region: Arc::clone(region), next: head }));
        loop {
            match KEPT.compare_exchange(head, node, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => {
                    head = now;
                    // SAFETY: `node` came from `Box::into_raw` above and is not shared yet.
                    unsafe { (*node).next = head };
                }
            }
        }
    }
    CELL.store(target.cast_mut(), Ordering::Release);
}

/// Whether the list from `node` holds `region`.
fn kept(mut node: *mut Kept, region: &Arc<SharedRegion>) -> bool {
    while !node.is_null() {
        // SAFETY: the list's nodes are leaked boxes, never freed or changed once pushed.
        let k = unsafe { &*node };
        if Arc::ptr_eq(&k.region, region) {
            return true;
        }
        node = k.next;
    }
    false
}

/// Counts `n` system calls.
#[inline]
pub fn count(n: u64) {
    let cell = CELL.load(Ordering::Acquire);
    if !cell.is_null() {
        // SAFETY: a non-null `CELL` points into a region in `KEPT`, which is never emptied, so
        // the mapping outlives every use; the cell is an `AtomicU64`, shared only through `&`.
        unsafe { &*cell }.fetch_add(n, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_into_the_chosen_cell() {
        let region = Arc::new(SharedRegion::new(2).unwrap().0);
        count_into(&region, 1, 3);
        count(2);
        count(1);
        // Other tests of this binary may count calls of their own into it meanwhile, never fewer.
        assert!(region.lines()[1].0[3].load(Ordering::Relaxed) >= 3);
        assert_eq!(region.lines()[0].0[3].load(Ordering::Relaxed), 0, "only the chosen cell counts");
    }
}

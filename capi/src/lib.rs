//! herd's C ABI: the library as C programs see it, in `include/herd.h`.
//!
//! The model is the Rust library's (see `docs/c-api.md`):
//!
//! - A **builder** (`herd_builder_new` ... `herd_builder_free`) collects the settings;
//!   `herd_start` binds the listener(s), forks the workers and returns the **primary**.
//! - Each forked worker runs the program's **worker callback** with a `herd_worker *`, and
//!   takes its connections from it: blocking (`herd_worker_accept`), or from the program's own
//!   event loop (`herd_worker_fd` + `herd_worker_next_event`).
//! - The primary reports what happens as **events** (`herd_primary_next_event`, blocking, with a
//!   timeout, or not at all — `herd_primary_fd` is pollable), and the program controls its
//!   workers by pid (send, broadcast, disconnect, kill) and the cluster as a whole (reload,
//!   scale, shutdown).
//!
//! Conventions:
//!
//! - Opaque handles, created by `_new`/`herd_start` and released by `_free`.
//! - Functions that can fail return 0 (or a count) on success and a negative `errno` on
//!   failure; those that return a handle return `NULL`. Either way `herd_last_error()` then
//!   holds a message naming the call and the cause, for the calling thread.
//! - What an event points to (text, message bytes) is borrowed: valid until the next call on the
//!   same handle. Descriptors an event carries are the caller's to close.
//! - No Rust panic crosses into C: every function catches them, and a panic is an error (`EIO`).
//!
//! This crate is the only place, with `herd`'s `src/sys/`, that holds `unsafe` code: each block
//! dereferences a pointer the caller passed, under the contract its function documents.

// The C names are the ABI: `herd_builder`, not `HerdBuilder`.
#![allow(non_camel_case_types)]
// The functions are for C callers, who see the contract in the header, not a Rust `unsafe`;
// every dereference of a pointer they pass is in an `unsafe` block with its `// SAFETY:` line.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod builder;
mod error;
mod event;
#[cfg(test)]
mod layout;
mod primary;
mod worker;

pub use builder::*;
pub use error::*;
pub use event::*;
pub use primary::*;
pub use worker::*;

/// A duration in milliseconds from C: negative means "for ever" where a wait is concerned.
fn timeout(ms: i64) -> Option<std::time::Duration> {
    u64::try_from(ms).ok().map(std::time::Duration::from_millis)
}

#[cfg(test)]
mod tests {
    #[test]
    fn negative_timeouts_wait_for_ever() {
        assert_eq!(super::timeout(-1), None);
        assert_eq!(super::timeout(0), Some(std::time::Duration::ZERO));
        assert_eq!(super::timeout(1500), Some(std::time::Duration::from_millis(1500)));
    }
}

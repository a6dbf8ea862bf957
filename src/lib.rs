//! # herd
//!
//! Run a TCP server as a **primary** process plus **forked workers**, the way Node.js
//! `cluster`, nginx and unicorn do, and measure how each way of spreading connections over the
//! workers behaves.
//!
//! | mode | who calls `accept` | cost per connection | how it fails |
//! |---|---|---|---|
//! | [`Mode::Shared`] | every worker, on one listener inherited across `fork` | one `accept`; with [`SharedAccept::Epoll`], a wakeup of *every* idle worker | `Epoll`: the thundering herd; `EpollExclusive`: one worker takes nearly all |
//! | [`Mode::Handoff`] | the primary, which passes each connection round-robin with `SCM_RIGHTS` | `accept` + `sendmsg` in the primary, `recvmsg` + ack in the worker | the single-threaded primary is the bottleneck |
//! | [`Mode::Reuseport`] | each worker, on its own `SO_REUSEPORT` listener | one `accept`, no herd | the kernel hashes connections without regard to load |
//!
//! The guide in `docs/modes.md` explains each mode with diagrams and figures measured by herd
//! itself.
//!
//! ## Example
//!
//! ```no_run
//! use std::io::Write;
//!
//! let cluster = herd::Cluster::builder("127.0.0.1:8080".parse()?)
//!     .mode(herd::Mode::Handoff)
//!     .workers(4)
//!     .bind()?;
//! let counters = cluster.run(
//!     |worker| {
//!         let id = worker.id();
//!         for stream in worker.incoming() {
//!             writeln!(stream?, "hello from worker {id}")?;
//!         }
//!         Ok(())
//!     },
//!     |event| eprintln!("{event}"),
//! )?;
//! println!("{counters}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## How it is put together
//!
//! - [`sys`] — the only place with system calls and `unsafe`: `fork` with
//!   `PR_SET_PDEATHSIG`, `socketpair`, `sendmsg`/`recvmsg` with `SCM_RIGHTS`, epoll, signalfd,
//!   timerfd, eventfd and a `MAP_SHARED` region. Every descriptor is close-on-exec from birth.
//! - [`channel`] — framed messages with attached descriptors between primary and worker.
//! - [`mode`] — one module per distribution mode; [`accept`] — the accept loops and their
//!   error table.
//! - [`Cluster`] binds and forks; [`Primary`] is the primary's event loop, reporting [`Event`]s
//!   like Node's `cluster`; [`Worker`] is what the worker function receives.
//! - [`stats`] — exact per-worker counters in shared memory, readable at any time.
//!
//! ## Fork safety
//!
//! herd forks with a raw `fork(2)`, so the primary must be single-threaded when it starts the
//! cluster: a child of a multi-threaded process inherits locks held by threads that do not exist
//! in it. [`Cluster::start`] checks `/proc/self/task` and refuses otherwise. Workers may start
//! threads freely.
//!
//! ## Portability
//!
//! Linux only (epoll, `EPOLLEXCLUSIVE`, signalfd, `SO_REUSEPORT` load balancing,
//! `PR_SET_PDEATHSIG`); building for another OS is a compile error.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#[cfg(not(target_os = "linux"))]
compile_error!("herd is Linux-only: it is built on epoll, signalfd, SO_REUSEPORT, EPOLLEXCLUSIVE and PR_SET_PDEATHSIG");

mod accept;
mod addr;
pub mod channel;
mod cluster;
mod config;
mod event;
mod listener;
pub mod mode;
mod primary;
pub mod stats;
mod stream;
mod sys;
mod worker;

pub use addr::{AddrParseError, ListenAddr};
pub use cluster::{Builder, Cluster};
pub use config::{
    Config, DEFAULT_BACKLOG, DEFAULT_RELOAD_TIMEOUT, DEFAULT_RESTART_LIMIT, DEFAULT_RESTART_WINDOW,
    DEFAULT_SHUTDOWN_TIMEOUT, Heartbeat, MAX_WORKERS,
};
pub use event::{Event, ReloadPhase, WorkerExit};
pub use listener::StreamKind;
pub use mode::{Mode, SharedAccept};
pub use primary::{Primary, WorkerInfo};
pub use stream::Stream;
pub use sys::epoll::{Interest, Ready};
pub use worker::{Incoming, RESERVED_TOKENS, Worker, WorkerEvent, WorkerListener};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

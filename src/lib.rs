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
//! Connections are taken off listeners by a [`Backend`]: epoll (the default), or io_uring with
//! the cargo feature `io-uring` — a multishot accept, and in handoff mode a primary that sends,
//! closes and reads acknowledgements through its ring in batches ([`Builder::backend`];
//! `docs/io_uring.md`).
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
//! ## In a tokio worker
//!
//! In shared (epoll strategies) and reuseport mode a worker can take its listener out of herd's
//! loop and accept on it from its own runtime; herd's counters go on counting. The worker's own
//! descriptor (readable whenever [`Worker::try_event`] has something: a stop request, a message,
//! a connection handed over) goes in the same loop. `examples/tokio.rs` is a whole server.
//!
//! ```ignore
//! let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
//! runtime.block_on(async {
//!     let listener = AsyncFd::new(worker.into_listener()?)?;      // herd::WorkerListener
//!     worker.ready();                                             // Node's `listening`
//!     loop {
//!         let mut guard = listener.readable().await?;
//!         if let Ok(stream) = guard.try_io(|l| l.get_ref().accept()) {
//!             let tcp = tokio::net::TcpStream::from_std(stream?.into_tcp().unwrap())?;
//!             // serve it...
//!         }
//!     }
//! })
//! ```
//!
//! ## The primary in another event loop
//!
//! [`Primary`] is a descriptor too ([`AsFd`](std::os::fd::AsFd)): poll it, drain
//! [`Primary::try_event`] when it is readable, and drive the cluster from code instead of
//! signals ([`Builder::handle_signals`]). `examples/embedded.rs` does it from tokio.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! use std::os::fd::AsFd;
//!
//! let cluster = herd::Cluster::builder("127.0.0.1:0".parse().unwrap()).handle_signals(false).bind()?;
//! let mut primary = cluster.start(|worker| {
//!     for stream in worker.incoming() { drop(stream?); }
//!     Ok(())
//! })?;
//! let fd = primary.as_fd();   // register it in your loop; when it is readable:
//! # let _ = fd;
//! while let Some(event) = primary.try_event()? {
//!     println!("{event}");
//! }
//! primary.reload()?;           // what SIGHUP does
//! primary.scale(8)?;           // what SIGTTIN does, eight times over
//! primary.shutdown(true)?;     // what SIGTERM does
//! # Ok(()) }
//! ```
//!
//! ## How it is put together
//!
//! `docs/architecture.md` draws the layers. In short: one internal layer does every system
//! call and holds every `unsafe` block; [`channel`] frames messages with attached descriptors
//! between primary and worker (public as a teaching API); [`mode`] has one file per
//! distribution mode; [`Cluster`] binds and forks; [`Primary`] is the primary's event loop,
//! reporting [`Event`]s like Node's `cluster`; [`Worker`] is what the worker function receives;
//! [`stats`] holds exact per-worker counters in shared memory, readable at any time. The
//! library never prints: warnings are events too.
//!
//! ## Fork safety
//!
//! herd forks with a raw `fork(2)`, so the primary must be single-threaded when it forks: a
//! child of a multi-threaded process inherits locks held by threads that do not exist in it.
//! herd checks `/proc/self/task` before every fork — threads the kernel owns (io_uring's
//! workers) do not count — and treats a refusal like any failed fork: reported, retried. See
//! [`Builder::allow_threads`] for the way through. Workers may start threads freely.
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
pub mod activation;
mod addr;
pub mod channel;
mod cluster;
mod config;
mod event;
mod listener;
pub mod mode;
mod primary;
pub mod program;
pub mod stats;
mod stream;
mod sys;
pub mod upgrade;
mod worker;

pub use accept::{Backend, ParseBackendError};
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
pub use program::Program;
pub use stream::Stream;
pub use sys::epoll::{Interest, Ready};
pub use worker::{Incoming, RESERVED_TOKENS, Worker, WorkerEvent, WorkerListener};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

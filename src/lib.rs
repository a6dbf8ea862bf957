#![doc = "herd"]
#![deny(missing_docs)]
#[cfg(not(target_os = "linux"))]
compile_error!("herd is Linux-only: it is built on epoll, signalfd, SO_REUSEPORT, EPOLLEXCLUSIVE and PR_SET_PDEATHSIG");

pub mod accept;
mod addr;
pub mod channel;
mod cluster;
mod event;
mod listener;
pub mod mode;
mod primary;
pub mod stats;
mod stream;
pub mod sys;
mod worker;

pub use addr::{AddrParseError, ListenAddr};
pub use cluster::{Builder, Cluster, Config, DEFAULT_BACKLOG, DEFAULT_SHUTDOWN_TIMEOUT, MAX_WORKERS};
pub use event::Event;
pub use listener::StreamKind;
pub use mode::{Mode, SharedAccept};
pub use primary::Primary;
pub use stream::{StdStream, Stream};
pub use sys::epoll::{Interest, Ready};
pub use sys::process::ExitStatus;
pub use worker::{Incoming, RESERVED_TOKENS, Worker, WorkerEvent};

//! [`io_uring(7)`]: a submission and a completion queue shared with the kernel, so that many
//! operations cost one system call — or none, when a multishot accept keeps delivering
//! connections without being asked again.
//!
//! This module wraps the `io-uring` crate in what herd needs, safely: accepts (multishot and
//! single), `sendmsg` with descriptors, `recv`, `close`, multishot `poll`, and cancellation.
//! Every buffer an operation hands the kernel lives in the ring's table of operations until the
//! operation's completion arrives (a send's header and descriptors, a receive's buffer), so the
//! kernel never reads or writes memory that was freed.
//!
//! [`io_uring(7)`]: https://man7.org/linux/man-pages/man7/io_uring.7.html

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Duration;

use io_uring::{IoUring, opcode, squeue, types};

/// Why io_uring cannot be used here, or nothing. Probed once per process.
///
/// Checks, in order: `kernel.io_uring_disabled` (2: off for everyone), whether the kernel is new
/// enough for multishot accept (5.19) and for deferred task work (6.1; see [`Ring::new`]),
/// whether a ring can be set up at all (`io_uring_setup` fails with `EPERM` under a seccomp
/// filter or with the sysctl at 1, `ENOSYS` where io_uring is compiled out), and whether the
/// kernel knows every operation herd uses (`IORING_REGISTER_PROBE`). The ring is set up the way
/// herd sets its rings up, so a kernel that refuses one of its flags fails here, not later.
///
/// The probe's ring is set up in a thread of its own: a ring's teardown interrupts the thread
/// that set it up once, some milliseconds later (the kernel's exit work), which a blocking call
/// with a timeout in the caller's thread would see as `EINTR`.
pub fn probe() -> Result<(), String> {
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT
        .get_or_init(|| {
            let before = super::process::user_thread_count();
            let result = std::thread::scope(|s| s.spawn(probe_here).join())
                .unwrap_or_else(|_| Err("the io_uring probe panicked".to_owned()));
            // The joined thread may still be listed for a moment while it exits; wait for it to
            // go, so that a fork right after this does not count it (bounded: 100 ms).
            for _ in 0..100 {
                if super::process::user_thread_count() <= before {
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            result
        })
        .clone()
}

fn probe_here() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("kernel.io_uring_disabled is 2: io_uring is off on this system".to_owned());
        }
    }
    let release = rustix::system::uname().release().to_string_lossy().into_owned();
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if version < (6, 1) {
        return Err(format!("Linux {release} has no IORING_SETUP_DEFER_TASKRUN (6.1)"));
    }
    let ring = builder().build(8).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => " (a seccomp filter, or kernel.io_uring_disabled = 1 for this user)",
            Some(libc::ENOSYS) => " (the kernel has no io_uring, or a seccomp filter hides it)",
            _ => "",
        };
        format!("io_uring_setup: {e}{why}")
    })?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "ACCEPT"),
        (opcode::SendMsg::CODE, "SENDMSG"),
        (opcode::Recv::CODE, "RECV"),
        (opcode::Close::CODE, "CLOSE"),
        (opcode::PollAdd::CODE, "POLL_ADD"),
        (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel does not support IORING_OP_{name}"));
        }
    }
    Ok(())
}

/// Waits, at most `limit`, in a blocking `recv` (with a 5 ms timeout, on a socket pair of its
/// own) until an interruption (`EINTR`) ends one.
fn absorb_interruption(limit: Duration) {
    use rustix::net::{AddressFamily, RecvFlags, SocketFlags, SocketType, sockopt};
    let Ok((a, _b)) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None)
    else {
        return;
    };
    if sockopt::set_socket_timeout(&a, sockopt::Timeout::Recv, Some(Duration::from_millis(5))).is_err() {
        return;
    }
    let start = std::time::Instant::now();
    let mut byte = [0u8; 1];
    while start.elapsed() < limit {
        if let Err(rustix::io::Errno::INTR) = rustix::net::recv(&a, &mut byte, RecvFlags::empty()) {
            return;
        }
    }
}

/// The user data of entries that have no operation in the table (a send's linked closes).
const NOBODY: u64 = u64::MAX;

/// How herd sets up every ring (see [`Ring::new`]).
fn builder() -> io_uring::Builder {
    let mut builder = IoUring::builder();
    builder.setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag();
    builder
}

/// What an operation was, kept until its completion with whatever the kernel may still touch.
#[derive(Debug)]
enum Op {
    Accept {
        tag: u64,
        multishot: bool,
    },
    /// `closes`: the slot of the [`Op::Closing`] that ends the chain of closes linked to it.
    Send {
        tag: u64,
        _buffers: Box<SendBuffers>,
        fds: Vec<OwnedFd>,
        closes: Option<usize>,
    },
    /// The last close of a successful send's chain: until its completion, the descriptors
    /// being closed stay here (owned, never closed again by herd) — so a process forked
    /// meanwhile closes its copies when it drops the ring, rather than inherit them for ever.
    Closing {
        fds: Vec<OwnedFd>,
    },
    Recv {
        tag: u64,
        buffer: Box<[u8]>,
    },
    Poll {
        tag: u64,
    },
    Close,
    Cancel,
}

/// A `sendmsg`'s message header and everything it points to, at a stable address.
#[derive(Debug)]
struct SendBuffers {
    header: [u8; 16],
    payload: Vec<u8>,
    iov: [libc::iovec; 2],
    control: Vec<u64>,
    msghdr: libc::msghdr,
}

/// How [`Ring::sendmsg`] sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// `MSG_DONTWAIT`: a full socket fails the send with `EAGAIN` at once, instead of leaving
    /// it in the ring until the socket has room. Such a send completes within the
    /// `io_uring_enter` that submits it, and [`Ring::submit_and_wait`] waits for one completion
    /// more than that.
    pub nonblocking: bool,
    /// Close every descriptor sent, in the ring, right after a successful send: an
    /// `IORING_OP_CLOSE` per descriptor, linked to the send (`IOSQE_IO_LINK`) and silent on
    /// success (`IOSQE_CQE_SKIP_SUCCESS`). A send that fails cancels them, and the descriptors
    /// come back open.
    pub close_sent: bool,
}

/// What [`Ring::poll`] waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollFor {
    /// `POLLIN`.
    Readable,
    /// `POLLOUT`.
    Writable,
}

/// A finished operation.
#[derive(Debug)]
pub enum Completion {
    /// An accept delivered a connection or failed; `more` is false once a multishot accept has
    /// ended (it must be submitted again).
    Accepted { tag: u64, result: io::Result<OwnedFd>, more: bool },
    /// A `sendmsg` of `count` descriptors finished. `fds` gives them back — unless the send
    /// succeeded and closed them in the ring ([`SendOptions::close_sent`]): then it is empty.
    Sent { tag: u64, result: io::Result<usize>, fds: Vec<OwnedFd>, count: usize },
    /// A `recv` finished: what arrived (empty at end of file).
    Received { tag: u64, result: io::Result<Vec<u8>> },
    /// A poll reported readiness, or failed.
    Polled { tag: u64, result: io::Result<()> },
}

impl Completion {
    /// The tag the operation was queued with.
    pub fn tag(&self) -> u64 {
        match self {
            Completion::Accepted { tag, .. }
            | Completion::Sent { tag, .. }
            | Completion::Received { tag, .. }
            | Completion::Polled { tag, .. } => *tag,
        }
    }
}

/// An io_uring instance and the operations it has in flight.
pub struct Ring {
    ring: IoUring,
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    /// The process that set the ring up: a forked child inherits its memory and descriptor,
    /// and must neither submit to it nor wait for its operations.
    owner: rustix::process::Pid,
    /// Non-blocking sends queued since the last `io_uring_enter`: each completes within the
    /// call that submits it, so a wait for "the next completion" waits for that many more.
    completes_inline: usize,
    /// Signalled by the kernel whenever the ring has work or completions for its owner
    /// (`IORING_REGISTER_EVENTFD`): the descriptor to poll (see [`AsFd`](#impl-AsFd-for-Ring)).
    notifier: super::eventfd::EventFd,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring").field("in_flight", &(self.ops.len() - self.free.len())).finish_non_exhaustive()
    }
}

fn errno(res: i32) -> io::Error {
    io::Error::from_raw_os_error(-res)
}

impl Ring {
    /// Corresponds to `io_uring_setup(entries)`, with the completion queue four times as deep,
    /// and the kernel's work for the ring deferred to this process's own `io_uring_enter`
    /// calls (`IORING_SETUP_DEFER_TASKRUN`, with `SINGLE_ISSUER` and `TASKRUN_FLAG`).
    ///
    /// Deferring matters for a worker: otherwise the kernel runs the ring's work (installing an
    /// accepted connection, say) by interrupting whatever the process is doing, and a blocking
    /// `read` with a timeout (`SO_RCVTIMEO`) on one of its connections then fails with `EINTR` —
    /// which most blocking code treats as an error. Deferred, the work waits until the ring's
    /// owner asks for completions; meanwhile the ring's descriptor polls readable, and the flag
    /// `IORING_SQ_TASKRUN` says a call is needed.
    pub fn new(entries: u32) -> io::Result<Ring> {
        let ring =
            builder().setup_cqsize(entries * 4).build(entries).map_err(|e| super::context(e, "io_uring_setup"))?;
        let notifier = super::eventfd::EventFd::new()?;
        ring.submitter()
            .register_eventfd(notifier.as_fd().as_raw_fd())
            .map_err(|e| super::context(e, "io_uring_register(IORING_REGISTER_EVENTFD)"))?;
        Ok(Ring {
            ring,
            ops: Vec::new(),
            free: Vec::new(),
            owner: rustix::process::getpid(),
            completes_inline: 0,
            notifier,
        })
    }

    /// Closes the ring, then waits (at most 100 ms) for the one interruption its teardown sends
    /// the thread that set it up: the kernel's exit work for the ring interrupts that thread
    /// some milliseconds after the close, and a blocking call with a timeout it is making then
    /// (a `read` under `SO_RCVTIMEO`) would fail with `EINTR`. Taken here, it is nobody's
    /// surprise later.
    pub fn close_quietly(self) {
        let owner = self.owner == rustix::process::getpid();
        drop(self);
        if owner {
            absorb_interruption(Duration::from_millis(100));
        }
    }

    /// Resets the notifier (see [`AsFd`](#impl-AsFd-for-Ring)) for a host that polls it
    /// level-triggered: call before taking completions.
    pub fn clear_notifier(&self) {
        self.notifier.clear();
    }

    fn slot(&mut self, op: Op) -> u64 {
        match self.free.pop() {
            Some(i) => {
                self.ops[i] = Some(op);
                i as u64
            }
            None => {
                self.ops.push(Some(op));
                (self.ops.len() - 1) as u64
            }
        }
    }

    /// Queues `entry` (its user data set to the operation's slot), submitting what is queued
    /// first if the submission queue is full. If that submission fails, the operation is not
    /// queued and comes back with the error.
    fn push(&mut self, entry: squeue::Entry, op: Op) -> Result<u64, (io::Error, Op)> {
        let slot = self.slot(op);
        let entry = entry.user_data(slot);
        // A full queue is submitted to make room; a kernel that takes nothing (`EBUSY`: its
        // completion queue overflowed) is given a few tries, then the operation is refused.
        for _ in 0..8 {
            // SAFETY: every pointer the entry carries points into `self.ops[slot]` (boxed, so
            // at a stable address) or is a descriptor the caller keeps open; the operation stays
            // in the table until its last completion, so nothing it refers to is freed before
            // the kernel is done with it.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return Ok(slot);
            }
            if let Err(e) = self.submit() {
                return Err((e, self.unslot(slot)));
            }
        }
        let full = io::Error::new(io::ErrorKind::WouldBlock, "io_uring: the submission queue stays full");
        Err((full, self.unslot(slot)))
    }

    /// Takes back the operation in `slot`, which never reached the kernel.
    fn unslot(&mut self, slot: u64) -> Op {
        self.free.push(slot as usize);
        self.ops[slot as usize].take().expect("the operation just stored")
    }

    /// `IORING_OP_ACCEPT` (`accept4(SOCK_CLOEXEC | SOCK_NONBLOCK)`) on `listener`, multishot or
    /// once. The caller keeps `listener` open until the accept has ended or was cancelled.
    pub fn accept(&mut self, listener: BorrowedFd<'_>, tag: u64, multishot: bool) -> io::Result<u64> {
        let fd = types::Fd(listener.as_raw_fd());
        let flags = libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK;
        let entry = if multishot {
            opcode::AcceptMulti::new(fd).flags(flags).build()
        } else {
            opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).flags(flags).build()
        };
        self.push(entry, Op::Accept { tag, multishot }).map_err(|(e, _)| e)
    }

    /// `IORING_OP_SENDMSG` of one frame — `header` (at most 16 bytes) and `payload` gathered —
    /// with `fds` attached (`SCM_RIGHTS`), `MSG_NOSIGNAL`. The descriptors come back with the
    /// completion (see [`SendOptions`]), and at once, with the error, if the operation could not
    /// be queued.
    pub fn sendmsg(
        &mut self,
        socket: BorrowedFd<'_>,
        header: &[u8],
        payload: &[u8],
        fds: Vec<OwnedFd>,
        options: SendOptions,
        tag: u64,
    ) -> Result<u64, (io::Error, Vec<OwnedFd>)> {
        // A chain must reach the kernel in one submission: a link left dangling at the end of
        // one would let the closes run whatever the send did. Make room for all of it first.
        let close_sent = options.close_sent && !fds.is_empty();
        let entries = 1 + if close_sent { fds.len() } else { 0 };
        let free = {
            let sq = self.ring.submission();
            sq.capacity() - sq.len()
        };
        if free < entries {
            if let Err(e) = self.submit() {
                return Err((e, fds));
            }
            let sq = self.ring.submission();
            if sq.capacity() - sq.len() < entries {
                return Err((io::Error::other("io_uring: no room for a send and its closes"), fds));
            }
        }
        let mut buffers = Box::new(SendBuffers {
            header: [0; 16],
            payload: payload.to_vec(),
            iov: [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2],
            control: Vec::new(),
            // SAFETY: an all-zero msghdr is a valid, empty message header.
            msghdr: unsafe { MaybeUninit::zeroed().assume_init() },
        });
        let header_len = header.len().min(buffers.header.len());
        buffers.header[..header_len].copy_from_slice(&header[..header_len]);
        buffers.iov[0] = libc::iovec { iov_base: buffers.header.as_mut_ptr().cast(), iov_len: header_len };
        buffers.iov[1] = libc::iovec { iov_base: buffers.payload.as_mut_ptr().cast(), iov_len: buffers.payload.len() };
        buffers.msghdr.msg_iov = buffers.iov.as_mut_ptr();
        buffers.msghdr.msg_iovlen = if buffers.payload.is_empty() { 1 } else { 2 };
        if !fds.is_empty() {
            let bytes = fds.len() * std::mem::size_of::<RawFd>();
            // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
            let (space, len) =
                unsafe { (libc::CMSG_SPACE(bytes as u32) as usize, libc::CMSG_LEN(bytes as u32) as usize) };
            // u64 words: the control buffer must be aligned for `cmsghdr`.
            buffers.control = vec![0u64; space.div_ceil(8)];
            buffers.msghdr.msg_control = buffers.control.as_mut_ptr().cast();
            buffers.msghdr.msg_controllen = space as _;
            // SAFETY: the control buffer is `space` bytes, aligned, and holds one cmsghdr with
            // room for `fds.len()` descriptors (CMSG_SPACE above); CMSG_FIRSTHDR returns its
            // start, and CMSG_DATA points inside it.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&buffers.msghdr);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = len as _;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        let mut flags = libc::MSG_NOSIGNAL;
        if options.nonblocking {
            flags |= libc::MSG_DONTWAIT;
        }
        let mut entry =
            opcode::SendMsg::new(types::Fd(socket.as_raw_fd()), &buffers.msghdr).flags(flags as u32).build();
        if close_sent {
            entry = entry.flags(squeue::Flags::IO_LINK);
        }
        let raw: Vec<RawFd> = if close_sent { fds.iter().map(AsRawFd::as_raw_fd).collect() } else { Vec::new() };
        let closes = close_sent.then(|| self.slot(Op::Closing { fds: Vec::new() }) as usize);
        let pushed = self.push(entry, Op::Send { tag, _buffers: buffers, fds, closes });
        let id = match pushed {
            Ok(id) => id,
            Err((e, op)) => {
                if let Some(slot) = closes {
                    self.ops[slot] = None;
                    self.free.push(slot);
                }
                return Err(match op {
                    Op::Send { fds, .. } => (e, fds),
                    _ => (e, Vec::new()),
                });
            }
        };
        for (i, fd) in raw.iter().enumerate() {
            // The send's link is soft: a failed send cancels every close. The closes' links are
            // hard: each runs whatever the one before it did. Only the last posts a completion.
            let close = opcode::Close::new(types::Fd(*fd)).build();
            let close = if i + 1 < raw.len() {
                close.flags(squeue::Flags::IO_HARDLINK | squeue::Flags::SKIP_SUCCESS).user_data(NOBODY)
            } else {
                close.user_data(closes.expect("a chain has its closing slot") as u64)
            };
            // SAFETY: each descriptor stays open until its close runs: it is owned by the send's
            // entry in the operation table, then by the chain's `Op::Closing`, which forgets it
            // (never closes it again) once the chain's last close has completed.
            let pushed = unsafe { self.ring.submission().push(&close) };
            debug_assert!(pushed.is_ok(), "room was made for the whole chain");
        }
        if options.nonblocking {
            // The send completes within the submitting call, and so does its chain's last close.
            self.completes_inline += if close_sent { 2 } else { 1 };
        }
        Ok(id)
    }

    /// `IORING_OP_RECV` of at most `len` bytes from `socket`.
    pub fn recv(&mut self, socket: BorrowedFd<'_>, len: usize, tag: u64) -> io::Result<u64> {
        let mut buffer = vec![0u8; len].into_boxed_slice();
        let entry = opcode::Recv::new(types::Fd(socket.as_raw_fd()), buffer.as_mut_ptr(), len as u32).build();
        self.push(entry, Op::Recv { tag, buffer }).map_err(|(e, _)| e)
    }

    /// `IORING_OP_POLL_ADD` for `fd`: one completion when it is ready for `what` (at once if it
    /// is ready already).
    pub fn poll(&mut self, fd: BorrowedFd<'_>, what: PollFor, tag: u64) -> io::Result<u64> {
        let events = match what {
            PollFor::Readable => libc::POLLIN,
            PollFor::Writable => libc::POLLOUT,
        };
        let entry = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events as u32).build();
        self.push(entry, Op::Poll { tag }).map_err(|(e, _)| e)
    }

    /// `IORING_OP_CLOSE`: closes `fd` with the next submission, without a system call of its own.
    pub fn close(&mut self, fd: OwnedFd) -> io::Result<()> {
        let raw = fd.into_raw_fd();
        let entry = opcode::Close::new(types::Fd(raw)).build();
        match self.push(entry, Op::Close) {
            Ok(_) => Ok(()),
            Err((e, _)) => {
                // SAFETY: `raw` came from `into_raw_fd` just above and was not closed.
                drop(unsafe { OwnedFd::from_raw_fd(raw) });
                Err(e)
            }
        }
    }

    /// `IORING_OP_ASYNC_CANCEL` of the operation `id` (what [`accept`](Self::accept) and the
    /// others returned). Its completion follows, with `ECANCELED`.
    pub fn cancel(&mut self, id: u64) -> io::Result<()> {
        self.push(opcode::AsyncCancel::new(id).build(), Op::Cancel).map(drop).map_err(|(e, _)| e)
    }

    /// Corresponds to `io_uring_enter(2)`: submits what is queued (and runs the kernel's work
    /// deferred to this call). An interruption (`EINTR`), `EBUSY` and `EAGAIN` (the completion
    /// queue is full) leave what was not submitted for the next call.
    pub fn submit(&mut self) -> io::Result<()> {
        self.enter(0, None, None)
    }

    /// Submits what is queued and waits for at least one completion, at most `timeout`.
    pub fn submit_and_wait(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.enter(1, timeout, None)
    }

    /// Like [`submit_and_wait`](Self::submit_and_wait), but gathers a batch: waits up to
    /// `linger` for `count` completions, and after `linger` returns with whatever has come
    /// (at least one; at most `timeout` for it). Interrupt coalescing for a busy ring: one
    /// wakeup for many completions, at the price of up to `linger` of latency. Needs Linux 6.12
    /// (`IORING_FEAT_MIN_TIMEOUT`); without it, this is `submit_and_wait`.
    pub fn submit_and_wait_for_batch(
        &mut self,
        timeout: Option<Duration>,
        count: usize,
        linger: Duration,
    ) -> io::Result<()> {
        if self.ring.params().is_feature_min_timeout() {
            self.enter(count.max(1), timeout, Some(linger))
        } else {
            self.enter(1, timeout, None)
        }
    }

    fn enter(&mut self, want: usize, timeout: Option<Duration>, linger: Option<Duration>) -> io::Result<()> {
        let mut sq = self.ring.submission();
        sq.sync();
        if sq.is_empty() && want == 0 && !sq.taskrun() {
            return Ok(()); // nothing to submit, and no deferred work to run
        }
        drop(sq);
        // The non-blocking sends in this submission complete within it: waiting for the next
        // completion means waiting for one beyond theirs.
        let want = if want > 0 { want + self.completes_inline } else { 0 };
        self.completes_inline = 0;
        super::tally::count(1);
        let min_wait = linger.map_or(0, |l| l.as_micros().min(u32::MAX as u128) as u32);
        let result = match timeout {
            Some(t) if want > 0 => {
                let ts = types::Timespec::new().sec(t.as_secs()).nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().min_wait_usec(min_wait).timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            None if want > 0 && min_wait > 0 => {
                let args = types::SubmitArgs::new().min_wait_usec(min_wait);
                self.ring.submitter().submit_with_args(want, &args)
            }
            _ => self.ring.submitter().submit_and_wait(want),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ETIME | libc::EBUSY | libc::EAGAIN)) => {
                Ok(())
            }
            Err(e) => Err(super::context(e, "io_uring_enter")),
        }
    }

    /// For an owner woken by the notifier: runs the kernel's deferred work for the ring (one
    /// `io_uring_enter`, if there is any) and takes every completion, with the notifier off
    /// meanwhile — the completions this call posts would otherwise signal it again, and wake
    /// the owner a second time for nothing. Work that arrives while it is off is seen here
    /// (`IORING_SQ_TASKRUN`) and run before returning, so no wakeup is lost.
    pub fn run_and_take(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        loop {
            self.ring.completion().disable_eventfd();
            let result = self.submit();
            self.completions(out);
            self.ring.completion().enable_eventfd();
            result?;
            let mut sq = self.ring.submission();
            sq.sync();
            if !sq.taskrun() {
                return Ok(());
            }
        }
    }

    /// Takes every completion waiting (no system call: the queue is shared memory).
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        let mut cq = self.ring.completion();
        cq.sync();
        for cqe in &mut cq {
            let slot = cqe.user_data() as usize;
            let (res, more) = (cqe.result(), io_uring::cqueue::more(cqe.flags()));
            let Some(op) = self.ops.get_mut(slot).and_then(Option::take) else { continue };
            match op {
                Op::Accept { tag, multishot } => {
                    let result = if res < 0 {
                        Err(errno(res))
                    } else {
                        // SAFETY: a successful accept returns a new descriptor nothing else owns.
                        Ok(unsafe { OwnedFd::from_raw_fd(res) })
                    };
                    let more = multishot && more;
                    if more {
                        // A multishot accept goes on: it keeps its slot.
                        self.ops[slot] = Some(Op::Accept { tag, multishot });
                    } else {
                        self.free.push(slot);
                    }
                    out.push(Completion::Accepted { tag, result, more });
                }
                Op::Send { tag, fds, closes, .. } => {
                    self.free.push(slot);
                    let count = fds.len();
                    let result = if res < 0 { Err(errno(res)) } else { Ok(res as usize) };
                    let fds = match closes {
                        // Sent: the linked closes close them; until the last has, the chain's
                        // slot holds them.
                        Some(closing) if result.is_ok() => {
                            self.ops[closing] = Some(Op::Closing { fds });
                            Vec::new()
                        }
                        // Not sent: the closes were cancelled; the descriptors are open, and
                        // go back to the caller.
                        _ => fds,
                    };
                    out.push(Completion::Sent { tag, result, fds, count });
                }
                Op::Closing { fds } => {
                    self.free.push(slot);
                    // The chain has run: the kernel closed them (or, the send having failed,
                    // cancelled the closes, and the caller got them back: `fds` is empty).
                    for fd in fds {
                        let _ = fd.into_raw_fd();
                    }
                }
                Op::Recv { tag, buffer } => {
                    self.free.push(slot);
                    let result = if res < 0 { Err(errno(res)) } else { Ok(buffer[..res as usize].to_vec()) };
                    out.push(Completion::Received { tag, result });
                }
                Op::Poll { tag } => {
                    self.free.push(slot);
                    let result = if res < 0 { Err(errno(res)) } else { Ok(()) };
                    out.push(Completion::Polled { tag, result });
                }
                Op::Close | Op::Cancel => self.free.push(slot),
            }
        }
    }
}

impl AsFd for Ring {
    /// The descriptor to poll for the ring: an eventfd the kernel signals each time the ring
    /// has work for its owner or posts a completion. Not the ring's own descriptor: with the
    /// kernel's work deferred (see [`Ring::new`]) that one polls readable but wakes nobody.
    /// Watch it edge-triggered, or level-triggered and [`clear`](Ring::clear_notifier) it; then
    /// [`submit`](Ring::submit) (which runs the deferred work) and take the completions.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.notifier.as_fd()
    }
}

impl Drop for Ring {
    /// Cancels what is in flight and waits (a little) for it, so the kernel is done with every
    /// buffer before it is freed; a receive buffer still in use after that is leaked rather
    /// than freed. In a forked child — which shares the parent's ring — nothing is submitted.
    fn drop(&mut self) {
        if rustix::process::getpid() != self.owner {
            for op in self.ops.drain(..).flatten() {
                if let Op::Recv { buffer, .. } = op {
                    // The parent's kernel-side operation writes the parent's copy, not ours;
                    // still, this copy is never read again.
                    drop(buffer);
                }
            }
            return;
        }
        let in_flight: Vec<u64> = (0..self.ops.len()).filter(|&i| self.ops[i].is_some()).map(|i| i as u64).collect();
        for id in in_flight {
            let _ = self.cancel(id);
        }
        let mut done = Vec::new();
        for _ in 0..16 {
            if self.ops.iter().all(|op| op.is_none() || matches!(op, Some(Op::Cancel))) {
                break;
            }
            let _ = self.submit_and_wait(Some(Duration::from_millis(10)));
            self.completions(&mut done);
            done.clear();
        }
        // Whatever the kernel may still be using is leaked rather than freed or closed twice: a
        // receive's buffer, a send's buffers and descriptors, a chain's descriptors.
        for op in self.ops.drain(..).flatten() {
            match op {
                Op::Recv { buffer, .. } => std::mem::forget(buffer),
                Op::Send { _buffers, fds, .. } => {
                    std::mem::forget(_buffers);
                    std::mem::forget(fds);
                }
                Op::Closing { fds } => std::mem::forget(fds),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: usize = crate::channel::HEADER_LEN;

    /// A ring, or `None` (skipped, loudly) where the kernel refuses io_uring.
    fn ring() -> Option<Ring> {
        if let Err(why) = probe() {
            eprintln!("SKIPPED: io_uring is unavailable here: {why}");
            return None;
        }
        Some(Ring::new(64).unwrap())
    }

    fn wait_for(ring: &mut Ring, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        for _ in 0..100 {
            ring.completions(&mut out);
            if out.len() >= n {
                break;
            }
            ring.submit_and_wait(Some(Duration::from_millis(50))).unwrap();
        }
        out
    }

    #[test]
    fn a_multishot_accept_delivers_every_connection_without_being_asked_again() {
        let Some(mut ring) = ring() else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        ring.accept(listener.as_fd(), 7, true).unwrap();
        ring.submit().unwrap();
        let clients: Vec<_> =
            (0..3).map(|_| std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap()).collect();
        let done = wait_for(&mut ring, 3);
        let accepted: Vec<_> = done
            .into_iter()
            .map(|c| match c {
                Completion::Accepted { tag: 7, result: Ok(fd), more: true } => fd,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(accepted.len(), clients.len());
        let flags = rustix::io::fcntl_getfd(&accepted[0]).unwrap();
        assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    }

    #[test]
    fn sendmsg_carries_descriptors_and_gives_them_back() {
        let Some(mut ring) = ring() else { return };
        let (a, mut b) = crate::channel::Channel::pair().unwrap();
        let files: Vec<OwnedFd> = (0..3).map(|_| rustix::io::dup(std::io::stdin()).unwrap()).collect();
        let frame = crate::channel::frame::encode(&crate::channel::Message::Handoff { seq: 5 }, 3).unwrap();
        ring.sendmsg(a.as_fd(), &frame, &[], files, SendOptions::default(), 9).unwrap();
        let done = wait_for(&mut ring, 1);
        let Completion::Sent { tag: 9, result: Ok(n), fds, count: 3 } = &done[0] else { panic!("{done:?}") };
        assert_eq!((*n, fds.len()), (frame.len(), 3));
        let r = b.recv().unwrap();
        assert_eq!(r.message, crate::channel::Message::Handoff { seq: 5 });
        assert_eq!(r.fds.len(), 3);
    }

    /// Whether descriptor `raw` is open in this process.
    fn is_open(raw: RawFd) -> bool {
        std::path::Path::new(&format!("/proc/self/fd/{raw}")).exists()
    }

    #[test]
    fn a_sent_descriptor_is_closed_in_the_ring_and_a_failed_send_gives_it_back_open() {
        let Some(mut ring) = ring() else { return };
        let (a, mut b) = crate::channel::Channel::pair().unwrap();
        let frame = crate::channel::frame::encode(&crate::channel::Message::Handoff { seq: 0 }, 1).unwrap();
        let options = SendOptions { nonblocking: true, close_sent: true };
        // Sent: the primary's copy is closed by the linked close, and none comes back.
        let file = rustix::io::dup(std::io::stdin()).unwrap();
        let raw = file.as_raw_fd();
        ring.sendmsg(a.as_fd(), &frame[..HEADER], &frame[HEADER..], vec![file], options, 1).unwrap();
        let done = wait_for(&mut ring, 1);
        assert!(
            matches!(&done[0], Completion::Sent { result: Ok(_), fds, count: 1, .. } if fds.is_empty()),
            "{done:?}"
        );
        // The linked close is the kernel's deferred work: it runs with the ring's next call.
        ring.submit().unwrap();
        assert!(!is_open(raw), "closed by the ring");
        assert_eq!(b.recv().unwrap().fds.len(), 1, "and delivered");
        // Failed (the peer is gone): the close is cancelled and the descriptor comes back open.
        drop(b);
        let file = rustix::io::dup(std::io::stdin()).unwrap();
        let raw = file.as_raw_fd();
        ring.sendmsg(a.as_fd(), &frame[..HEADER], &frame[HEADER..], vec![file], options, 2).unwrap();
        let done = wait_for(&mut ring, 1);
        let Completion::Sent { result: Err(e), fds, count: 1, .. } = &done[0] else { panic!("{done:?}") };
        assert_eq!(e.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(fds.iter().map(AsRawFd::as_raw_fd).collect::<Vec<_>>(), [raw]);
        assert!(is_open(raw), "not closed: the send failed");
    }

    #[test]
    fn the_rings_work_never_interrupts_a_blocking_read() {
        // A worker blocked in a read with a timeout (SO_RCVTIMEO) on one connection, while its
        // ring accepts another: the kernel's work for the ring must wait for the ring's owner,
        // not interrupt the read with EINTR.
        let Some(mut ring) = ring() else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        ring.accept(listener.as_fd(), 1, true).unwrap();
        ring.submit().unwrap();
        let (mut a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = std::thread::spawn(move || {
            let clients: Vec<_> = (0..20)
                .map(|_| {
                    std::thread::sleep(Duration::from_millis(5));
                    std::net::TcpStream::connect(addr).unwrap()
                })
                .collect();
            std::io::Write::write_all(&mut b, b"done").unwrap();
            clients
        });
        let mut buf = [0u8; 4];
        let read = std::io::Read::read(&mut a, &mut buf);
        let _clients = client.join().unwrap();
        assert_eq!(read.map_err(|e| e.to_string()), Ok(4), "the read returned the data, not EINTR");
        let done = wait_for(&mut ring, 20);
        assert_eq!(done.len(), 20, "and the ring accepted every connection once asked");
    }

    #[test]
    fn a_ring_closed_quietly_leaves_no_interruption_behind() {
        let Some(mut ring) = ring() else { return };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        ring.accept(listener.as_fd(), 1, true).unwrap();
        ring.submit().unwrap();
        ring.close_quietly();
        // The teardown's interruption comes some milliseconds after a close: none may be left
        // for the thread's blocking calls.
        let (mut a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        for _ in 0..10 {
            let err = std::io::Read::read(&mut a, &mut [0u8; 1]).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "{err}");
        }
    }

    #[test]
    fn a_nonblocking_send_to_a_full_socket_fails_at_once() {
        let Some(mut ring) = ring() else { return };
        let (a, _b) = crate::channel::Channel::pair().unwrap();
        let payload = vec![0u8; 4096];
        let mut failed = None;
        for i in 0..10_000u64 {
            ring.sendmsg(a.as_fd(), &[], &payload, Vec::new(), SendOptions { nonblocking: true, close_sent: false }, i)
                .unwrap();
            // The completion is there as soon as the submitting call returns.
            ring.submit().unwrap();
            let mut done = Vec::new();
            ring.completions(&mut done);
            assert_eq!(done.len(), 1, "completed within io_uring_enter");
            if let Completion::Sent { result: Err(e), .. } = &done[0] {
                failed = Some(e.raw_os_error());
                break;
            }
        }
        assert_eq!(failed, Some(Some(libc::EAGAIN)), "the socket filled and the send said so");
    }

    #[test]
    fn recv_close_and_cancel_complete() {
        let Some(mut ring) = ring() else { return };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        ring.recv(a.as_fd(), 16, 3).unwrap();
        std::io::Write::write_all(&mut &b, b"ack").unwrap();
        let done = wait_for(&mut ring, 1);
        assert!(matches!(&done[0], Completion::Received { tag: 3, result: Ok(d) } if d == b"ack"), "{done:?}");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let id = ring.accept(listener.as_fd(), 4, true).unwrap();
        ring.submit().unwrap();
        ring.cancel(id).unwrap();
        let done = wait_for(&mut ring, 1);
        assert!(
            matches!(&done[0], Completion::Accepted { tag: 4, result: Err(e), more: false } if e.raw_os_error() == Some(libc::ECANCELED)),
            "{done:?}"
        );
        ring.close(OwnedFd::from(b)).unwrap();
        ring.submit().unwrap();
    }
}

//! Integration tests for `herd::channel`, the primary ↔ worker framing with descriptors.
//!
//! Everything runs in-process, on the test threads, over socket pairs: no fork. Most tests count
//! the process's open descriptors (`/proc/self/fd`) before and after, and the test harness runs
//! tests in parallel threads of one process — so every test in this file takes [`LOCK`] for its
//! whole body, which makes the counts stable.

use std::io::{IoSlice, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use herd::channel::{Channel, ChannelError, MAX_FDS, MAX_FRAME, MAX_MESSAGE, Message, Received};
use rustix::fs::MemfdFlags;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Serializes every test of this file, so that descriptor counts are not disturbed by another
/// test opening or closing descriptors at the same time.
static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the others should still run.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The number of descriptors open in this process.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("read /proc/self/fd").count()
}

/// Runs `body` and asserts the process has exactly as many descriptors open afterwards as
/// before (everything `body` created, sent or received has been closed).
fn assert_no_fd_leak<T>(what: &str, body: impl FnOnce() -> T) -> T {
    let before = open_fds();
    let out = body();
    let after = open_fds();
    assert_eq!(before, after, "{what}: {before} descriptors open before, {after} after");
    out
}

/// A raw `SOCK_SEQPACKET` pair: one end to craft frames on, the other wrapped as a [`Channel`].
fn raw_pair() -> (OwnedFd, Channel) {
    let (raw, end) = rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)
        .expect("socketpair");
    (raw, Channel::from(end))
}

/// A fresh, distinct file (an anonymous memfd holding `contents`), deliberately *not*
/// close-on-exec, so that a close-on-exec copy on the receiving side proves the receiver set it.
fn memfd(contents: &[u8]) -> OwnedFd {
    let fd = rustix::fs::memfd_create("herd-channel-test", MemfdFlags::empty()).expect("memfd_create");
    rustix::io::write(&fd, contents).expect("write memfd");
    assert!(!rustix::io::fcntl_getfd(&fd).unwrap().contains(FdFlags::CLOEXEC));
    fd
}

/// Several distinct files.
fn memfds(n: usize) -> Vec<OwnedFd> {
    (0..n).map(|i| memfd(format!("file {i}").as_bytes())).collect()
}

fn borrow_all(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|fd| fd.as_fd()).collect()
}

/// (device, inode): identifies the open file behind a descriptor.
fn identity(fd: impl AsFd) -> (u64, u64) {
    let st = rustix::fs::fstat(fd).expect("fstat");
    (st.st_dev, st.st_ino)
}

/// Asserts `received` is the very file `sent` is (same device and inode) and is close-on-exec.
fn assert_same_file_and_cloexec(sent: impl AsFd, received: impl AsFd) {
    let (sent, received) = (sent.as_fd(), received.as_fd());
    assert_ne!(
        std::os::fd::AsRawFd::as_raw_fd(&sent),
        std::os::fd::AsRawFd::as_raw_fd(&received),
        "the receiver got a new descriptor"
    );
    assert_eq!(identity(sent), identity(received), "received descriptor is not the file that was sent");
    let flags = rustix::io::fcntl_getfd(received).expect("fcntl(F_GETFD)");
    assert!(flags.contains(FdFlags::CLOEXEC), "received descriptor is not close-on-exec: {flags:?}");
}

/// An 8-byte header {kind, fd_count, len} (little-endian) followed by `payload`.
fn frame(kind: u16, fd_count: u16, len: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + payload.len());
    f.extend_from_slice(&kind.to_le_bytes());
    f.extend_from_slice(&fd_count.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A well-formed header for `payload`.
fn good_frame(kind: u16, fd_count: u16, payload: &[u8]) -> Vec<u8> {
    frame(kind, fd_count, payload.len() as u32, payload)
}

/// The most descriptors [`send_raw`] can attach.
const RAW_FDS: usize = 2 * MAX_FDS;

/// Sends `bytes` as one datagram with `fds` attached (`SCM_RIGHTS`), bypassing herd entirely.
fn send_raw(sock: impl AsFd, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RAW_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)), "{} fds do not fit", fds.len());
    }
    let sent =
        rustix::net::sendmsg(sock, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL).expect("raw sendmsg");
    assert_eq!(sent, bytes.len());
}

/// Checks that `channel` still works after a bad frame: the next (good) frame sent on `raw`
/// comes through intact, so one bad frame does not desynchronize the stream.
fn assert_still_usable(raw: &OwnedFd, channel: &mut Channel) {
    send_raw(raw, &good_frame(3, 0, &[]), &[]);
    let r = channel.recv().expect("a good frame after a bad one");
    assert_eq!(r.message, Message::Online);
    assert!(r.fds.is_empty());
}

/// Sends one crafted frame (with `fds`, then closes the sender's copies of them), receives it on
/// a `Channel`, and returns the error it must produce; asserts no descriptor leaked and the
/// channel is still usable afterwards.
fn recv_bad_frame(what: &str, bytes: &[u8], nfds: usize) -> ChannelError {
    assert_no_fd_leak(what, || {
        let (raw, mut channel) = raw_pair();
        {
            let fds = memfds(nfds);
            send_raw(&raw, bytes, &borrow_all(&fds));
            // `fds` dropped here: the only copies left are the ones in flight.
        }
        let err = match channel.recv() {
            Ok(r) => panic!("{what}: expected an error, got {r:?}"),
            Err(e) => e,
        };
        assert_still_usable(&raw, &mut channel);
        err
    })
}

fn assert_display_contains(err: &ChannelError, needles: &[&str]) {
    let text = err.to_string();
    for needle in needles {
        assert!(text.contains(needle), "Display of {err:?} is {text:?}, which does not mention {needle:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Round trips with 0, 1 and several descriptors
// ---------------------------------------------------------------------------------------------

#[test]
fn messages_without_fds_round_trip() {
    let _guard = serial();
    assert_no_fd_leak("round trips without fds", || {
        let (a, mut b) = Channel::pair().unwrap();
        let messages = [
            Message::Ack { received: 0 },
            Message::Ack { received: u64::MAX },
            Message::Retiring,
            Message::Online,
            Message::Listening,
            Message::Stop,
            Message::User(Vec::new()),
            Message::User(b"hello, worker".to_vec()),
            Message::User((0..=255).collect()),
        ];
        for m in &messages {
            a.send(m, &[]).unwrap();
        }
        for m in &messages {
            let Received { message, fds } = b.recv().unwrap();
            assert_eq!(&message, m);
            assert!(fds.is_empty());
        }
        assert!(b.try_recv().unwrap().is_none());
    });
}

#[test]
fn messages_round_trip_in_both_directions() {
    let _guard = serial();
    let (mut a, mut b) = Channel::pair().unwrap();
    a.send(&Message::Stop, &[]).unwrap();
    b.send(&Message::Ack { received: 3 }, &[]).unwrap();
    assert_eq!(b.recv().unwrap().message, Message::Stop);
    assert_eq!(a.recv().unwrap().message, Message::Ack { received: 3 });
}

#[test]
fn user_message_of_exactly_max_message_bytes_round_trips() {
    let _guard = serial();
    let (a, mut b) = Channel::pair().unwrap();
    let payload: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
    a.send(&Message::User(payload.clone()), &[]).unwrap();
    let r = b.recv().unwrap();
    assert_eq!(r.message, Message::User(payload));
    assert!(r.fds.is_empty());
}

#[test]
fn handoff_fd_round_trips_as_the_same_file_and_cloexec() {
    let _guard = serial();
    assert_no_fd_leak("handoff of a file", || {
        let (a, mut b) = Channel::pair().unwrap();
        let file = memfd(b"connection bytes");
        a.send(&Message::Handoff { seq: 0x0123_4567_89ab_cdef }, &[file.as_fd()]).unwrap();
        let Received { message, fds } = b.recv().unwrap();
        assert_eq!(message, Message::Handoff { seq: 0x0123_4567_89ab_cdef });
        assert_eq!(fds.len(), 1);
        assert_same_file_and_cloexec(&file, &fds[0]);
        // Same open file description: it holds the data, and shares the sender's file offset.
        let mut contents = [0u8; 32];
        let n = rustix::io::pread(&fds[0], &mut contents, 0).unwrap();
        assert_eq!(&contents[..n], b"connection bytes");
        let offset = rustix::fs::seek(&fds[0], rustix::fs::SeekFrom::Current(0)).unwrap();
        assert_eq!(offset, 16);
        rustix::fs::seek(&file, rustix::fs::SeekFrom::Start(3)).unwrap();
        assert_eq!(rustix::fs::seek(&fds[0], rustix::fs::SeekFrom::Current(0)).unwrap(), 3);
    });
}

#[test]
fn handoff_socket_round_trips_as_the_same_socket_and_cloexec() {
    let _guard = serial();
    assert_no_fd_leak("handoff of a socket", || {
        let (a, mut b) = Channel::pair().unwrap();
        let (conn, mut client) = UnixStream::pair().unwrap();
        // Make the sender's copy inheritable: close-on-exec on the far side must come from herd.
        rustix::io::fcntl_setfd(&conn, FdFlags::empty()).unwrap();
        a.send(&Message::Handoff { seq: 1 }, &[conn.as_fd()]).unwrap();
        let Received { message, mut fds } = b.recv().unwrap();
        assert_eq!(message, Message::Handoff { seq: 1 });
        assert_eq!(fds.len(), 1);
        assert_same_file_and_cloexec(&conn, &fds[0]);
        drop(conn);
        // The received descriptor is a working end of the connection.
        let mut served = UnixStream::from(fds.pop().unwrap());
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        served.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        served.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
    });
}

#[test]
fn a_user_message_with_several_fds_round_trips_as_the_same_files_and_cloexec() {
    let _guard = serial();
    assert_no_fd_leak("3 fds with a user message", || {
        let (a, mut b) = Channel::pair().unwrap();
        let files = memfds(3);
        a.send(&Message::User(b"three files".to_vec()), &borrow_all(&files)).unwrap();
        let Received { message, fds } = b.recv().unwrap();
        assert_eq!(message, Message::User(b"three files".to_vec()));
        assert_eq!(fds.len(), 3);
        for (sent, received) in files.iter().zip(&fds) {
            assert_same_file_and_cloexec(sent, received);
        }
        // Three distinct files, in order.
        let ids: Vec<_> = fds.iter().map(identity).collect();
        assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    });
}

#[test]
fn max_fds_round_trip() {
    let _guard = serial();
    assert_no_fd_leak("MAX_FDS fds", || {
        let (a, mut b) = Channel::pair().unwrap();
        let files = memfds(MAX_FDS);
        a.send(&Message::Handoff { seq: 0 }, &borrow_all(&files)).unwrap();
        let r = b.recv().unwrap();
        assert_eq!(r.fds.len(), MAX_FDS);
        for (sent, received) in files.iter().zip(&r.fds) {
            assert_same_file_and_cloexec(sent, received);
        }
    });
}

// ---------------------------------------------------------------------------------------------
// 2. Bad input: the specific error, and no descriptor leaked
// ---------------------------------------------------------------------------------------------

#[test]
fn datagram_longer_than_max_frame_is_truncated_and_its_fd_closed() {
    let _guard = serial();
    let mut long = good_frame(9, 0, &vec![b'x'; MAX_MESSAGE]);
    long.push(b'!'); // MAX_FRAME + 1 bytes
    assert_eq!(long.len(), MAX_FRAME + 1);
    let err = recv_bad_frame("MSG_TRUNC without fds", &long, 0);
    assert!(matches!(err, ChannelError::Truncated), "{err:?}");
    assert_display_contains(&err, &["MSG_TRUNC"]);

    let mut long_handoff = good_frame(1, 1, &7u64.to_le_bytes());
    long_handoff.resize(MAX_FRAME + 100, 0);
    let err = recv_bad_frame("MSG_TRUNC with an fd", &long_handoff, 1);
    assert!(matches!(err, ChannelError::Truncated), "{err:?}");
}

#[test]
fn more_than_max_fds_is_control_truncated_and_all_fds_closed() {
    let _guard = serial();
    // Well over MAX_FDS (see `max_fds_plus_one_is_control_truncated` for exactly MAX_FDS + 1).
    let n = RAW_FDS;
    let err = recv_bad_frame("MSG_CTRUNC, handoff", &good_frame(1, n as u16, &9u64.to_le_bytes()), n);
    assert!(matches!(err, ChannelError::ControlTruncated { kind: Some(1) }), "{err:?}");
    assert_display_contains(&err, &["MSG_CTRUNC", "kind 1"]);

    let err = recv_bad_frame("MSG_CTRUNC, user", &good_frame(9, n as u16, b"abc"), n);
    assert!(matches!(err, ChannelError::ControlTruncated { kind: Some(9) }), "{err:?}");

    // Too many fds on a frame whose header is cut short: the kind is unknown.
    let err = recv_bad_frame("MSG_CTRUNC, short header", &[1, 0, 9], n);
    assert!(matches!(err, ChannelError::ControlTruncated { kind: None }), "{err:?}");
    assert_display_contains(&err, &["MSG_CTRUNC", "kind ?"]);
}

#[test]
fn any_frame_with_more_than_max_fds_is_an_error_and_leaks_no_fd() {
    let _guard = serial();
    for n in MAX_FDS + 1..=RAW_FDS {
        let what = format!("handoff with {n} fds");
        let err = recv_bad_frame(&what, &good_frame(1, n as u16, &9u64.to_le_bytes()), n);
        assert!(
            matches!(err, ChannelError::ControlTruncated { kind: Some(1) } | ChannelError::WrongFdCount { .. }),
            "{what}: {err:?}"
        );
    }
}

/// The receive control buffer is sized with `rustix::cmsg_space!(ScmRights(MAX_FDS))`, which
/// includes alignment slack, so the kernel may install a descriptor beyond `MAX_FDS` without
/// setting `MSG_CTRUNC`; herd holds the limit itself.
#[test]
fn max_fds_plus_one_is_control_truncated() {
    let _guard = serial();
    let n = MAX_FDS + 1;
    let err = recv_bad_frame("MSG_CTRUNC", &good_frame(1, n as u16, &9u64.to_le_bytes()), n);
    assert!(matches!(err, ChannelError::ControlTruncated { kind: Some(1) }), "{err:?}");
}

#[test]
fn unknown_kind_is_reported_and_its_fds_closed() {
    let _guard = serial();
    for kind in [0u16, 14, 99, u16::MAX] {
        let err = recv_bad_frame("unknown kind", &good_frame(kind, 0, b"??"), 0);
        assert!(matches!(err, ChannelError::UnknownKind(k) if k == kind), "{err:?}");
        assert_display_contains(&err, &["unknown kind", &kind.to_string()]);
    }
    let err = recv_bad_frame("unknown kind with fds", &good_frame(99, 2, &[]), 2);
    assert!(matches!(err, ChannelError::UnknownKind(99)), "{err:?}");
}

#[test]
fn user_message_over_max_message_is_oversized_on_send() {
    let _guard = serial();
    let (a, mut b) = Channel::pair().unwrap();
    let err = a.send(&Message::User(vec![0; MAX_MESSAGE + 1]), &[]).unwrap_err();
    assert!(matches!(err, ChannelError::Oversized { len } if len == MAX_FRAME + 1), "{err:?}");
    assert_display_contains(&err, &["exceeds", &MAX_FRAME.to_string()]);
    let err = a.try_send(&Message::User(vec![0; 1 << 20]), &[]).unwrap_err();
    assert!(matches!(err, ChannelError::Oversized { .. }), "{err:?}");
    // Nothing was sent.
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn header_declaring_more_than_max_message_is_oversized_and_its_fd_closed() {
    let _guard = serial();
    let over = (MAX_MESSAGE + 1) as u32;
    let err = recv_bad_frame("len field over MAX_MESSAGE", &frame(9, 0, over, b"short"), 0);
    assert!(matches!(err, ChannelError::Oversized { len } if len == MAX_FRAME + 1), "{err:?}");
    assert_display_contains(&err, &["exceeds"]);

    let err = recv_bad_frame("len field u32::MAX, with fd", &frame(1, 1, u32::MAX, &5u64.to_le_bytes()), 1);
    assert!(matches!(err, ChannelError::Oversized { len } if len == u32::MAX as usize + 8), "{err:?}");
}

#[test]
fn handoff_without_its_fd_is_wrong_fd_count() {
    let _guard = serial();
    let err = recv_bad_frame("handoff, 0 fds", &good_frame(1, 0, &1u64.to_le_bytes()), 0);
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 1, got: 0, .. }), "{err:?}");
    assert_display_contains(&err, &[&format!("expected 1 to {MAX_FDS}"), "carried 0"]);
    // Even if the header claims the fd is there.
    let err = recv_bad_frame("handoff, header says 1, 0 fds", &good_frame(1, 1, &1u64.to_le_bytes()), 0);
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 1, got: 0, .. }), "{err:?}");
}

#[test]
fn a_batch_of_handoffs_round_trips_as_the_same_files_in_order() {
    let _guard = serial();
    assert_no_fd_leak("a batch handoff", || {
        let (a, mut b) = Channel::pair().unwrap();
        let files = memfds(5);
        a.send(&Message::Handoff { seq: 40 }, &borrow_all(&files)).unwrap();
        let Received { message, fds } = b.recv().unwrap();
        assert_eq!(message, Message::Handoff { seq: 40 });
        assert_eq!(fds.len(), 5);
        for (sent, received) in files.iter().zip(&fds) {
            assert_same_file_and_cloexec(sent, received);
        }
    });
}

#[test]
fn handoff_whose_header_undercounts_its_fds_is_rejected_and_both_closed() {
    let _guard = serial();
    // The header lies (says 1), the ancillary data has 2.
    let err = recv_bad_frame("handoff, header says 1, 2 fds", &good_frame(1, 1, &1u64.to_le_bytes()), 2);
    assert!(matches!(err, ChannelError::Malformed { kind: 1, .. }), "{err:?}");
    assert_display_contains(&err, &["fd_count"]);
}

#[test]
fn handoff_whose_header_miscounts_its_fd_is_rejected_and_the_fd_closed() {
    let _guard = serial();
    // One fd arrives, as a handoff needs, but the header's fd_count field says 2.
    let err = recv_bad_frame("handoff, 1 fd, header says 2", &good_frame(1, 2, &1u64.to_le_bytes()), 1);
    assert!(matches!(err, ChannelError::Malformed { kind: 1, .. }), "{err:?}");
    assert_display_contains(&err, &["fd_count"]);
}

#[test]
fn ack_carrying_an_fd_is_wrong_fd_count_and_the_fd_closed() {
    let _guard = serial();
    let err = recv_bad_frame("ack, 1 fd", &good_frame(2, 1, &3u64.to_le_bytes()), 1);
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 2, allowed: (0, 0), got: 1 }), "{err:?}");
    assert_display_contains(&err, &["expected 0", "carried 1"]);
    // A user message may carry descriptors, but as many as its header says.
    let err = recv_bad_frame("user, 3 fds, header says 0", &good_frame(9, 0, b"hi"), 3);
    assert!(matches!(err, ChannelError::Malformed { kind: 9, .. }), "{err:?}");
}

#[test]
fn sending_the_wrong_number_of_fds_is_refused_before_sending() {
    let _guard = serial();
    let (a, mut b) = Channel::pair().unwrap();
    let files = memfds(2);
    let err = a.send(&Message::Handoff { seq: 1 }, &[]).unwrap_err();
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 1, got: 0, .. }), "{err:?}");
    let many = memfds(MAX_FDS + 1);
    let err = a.send(&Message::Handoff { seq: 1 }, &borrow_all(&many)).unwrap_err();
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 1, got, .. } if got == MAX_FDS + 1), "{err:?}");
    let err = a.try_send(&Message::Ack { received: 1 }, &[files[0].as_fd()]).unwrap_err();
    assert!(matches!(err, ChannelError::WrongFdCount { kind: 2, allowed: (0, 0), got: 1 }), "{err:?}");
    assert!(b.try_recv().unwrap().is_none());
}

#[test]
fn frame_shorter_than_the_header_is_malformed_and_its_fd_closed() {
    let _guard = serial();
    for len in 1..8 {
        let bytes = &good_frame(3, 0, &[])[..len];
        let err = recv_bad_frame("short header", bytes, 0);
        assert!(matches!(err, ChannelError::Malformed { kind: 0, why } if why.contains("header")), "{err:?}");
        assert_display_contains(&err, &["malformed", "shorter than the 8-byte header"]);
    }
    let err = recv_bad_frame("short header, with fd", &[1, 0, 1, 0, 8], 1);
    assert!(matches!(err, ChannelError::Malformed { kind: 0, .. }), "{err:?}");
    let err = recv_bad_frame("empty datagram, with fd", &[], 1);
    assert!(matches!(err, ChannelError::Malformed { kind: 0, .. }), "{err:?}");
}

/// Documents a bug (see the report): an empty datagram from a live peer reads as end of file.
#[test]
fn empty_datagram_from_a_live_peer_is_malformed_not_closed() {
    let _guard = serial();
    let err = recv_bad_frame("empty datagram", &[], 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 0, .. }), "{err:?}");
}

#[test]
fn length_field_disagreeing_with_frame_size_is_malformed() {
    let _guard = serial();
    let err = recv_bad_frame("len says more", &frame(9, 0, 10, b"four"), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 9, why } if why.contains("length field")), "{err:?}");
    assert_display_contains(&err, &["malformed", "kind 9", "length field disagrees"]);
    let err = recv_bad_frame("len says less", &frame(9, 0, 1, b"four"), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 9, .. }), "{err:?}");
    let err = recv_bad_frame("len says less, handoff with fd", &frame(1, 1, 4, &1u64.to_le_bytes()), 1);
    assert!(matches!(err, ChannelError::Malformed { kind: 1, .. }), "{err:?}");
}

#[test]
fn payload_of_the_wrong_size_for_its_kind_is_malformed() {
    let _guard = serial();
    let err = recv_bad_frame("ack, 3-byte payload", &good_frame(2, 0, &[1, 2, 3]), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 2, why } if why.contains("payload")), "{err:?}");
    assert_display_contains(&err, &["malformed", "kind 2", "wrong payload length"]);
    let err = recv_bad_frame("retiring, 5-byte payload", &good_frame(5, 0, &[0; 5]), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 5, .. }), "{err:?}");
    let err = recv_bad_frame("online, 1-byte payload", &good_frame(3, 0, &[0]), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 3, .. }), "{err:?}");
    let err = recv_bad_frame("warning, not UTF-8", &good_frame(13, 0, &[0xff, 0xfe]), 0);
    assert!(matches!(err, ChannelError::Malformed { kind: 13, .. }), "{err:?}");
    let err = recv_bad_frame("handoff, 7-byte payload, with fd", &good_frame(1, 1, &[0; 7]), 1);
    assert!(matches!(err, ChannelError::Malformed { kind: 1, .. }), "{err:?}");
}

#[test]
fn recv_after_the_peer_is_dropped_is_closed() {
    let _guard = serial();
    assert_no_fd_leak("closed peer", || {
        let (a, mut b) = Channel::pair().unwrap();
        a.send(&Message::Online, &[]).unwrap();
        drop(a);
        // What was sent before the close is still delivered, then end of file.
        assert_eq!(b.recv().unwrap().message, Message::Online);
        let err = b.recv().unwrap_err();
        assert!(matches!(err, ChannelError::Closed), "{err:?}");
        assert_display_contains(&err, &["closed"]);
        assert_eq!(std::io::Error::from(err).kind(), std::io::ErrorKind::ConnectionReset);
        // It stays closed, and try_recv says so too rather than "nothing yet".
        assert!(matches!(b.recv(), Err(ChannelError::Closed)));
        assert!(matches!(b.try_recv(), Err(ChannelError::Closed)));
    });
}

#[test]
fn recv_blocked_when_the_peer_is_dropped_wakes_with_closed() {
    let _guard = serial();
    let (a, mut b) = Channel::pair().unwrap();
    let receiver = std::thread::spawn(move || b.recv().map(|r| r.message));
    std::thread::sleep(Duration::from_millis(20));
    drop(a);
    let result = receiver.join().unwrap();
    assert!(matches!(result, Err(ChannelError::Closed)), "{result:?}");
}

#[test]
fn send_to_a_dropped_peer_is_closed_and_keeps_no_fd() {
    let _guard = serial();
    assert_no_fd_leak("send to closed peer", || {
        let (a, b) = Channel::pair().unwrap();
        drop(b);
        let err = a.send(&Message::Listening, &[]).unwrap_err();
        assert!(matches!(err, ChannelError::Closed), "{err:?}");
        let err = a.try_send(&Message::User(b"x".to_vec()), &[]).unwrap_err();
        assert!(matches!(err, ChannelError::Closed), "{err:?}");
        let file = memfd(b"lost");
        let err = a.send(&Message::Handoff { seq: 3 }, &[file.as_fd()]).unwrap_err();
        assert!(matches!(err, ChannelError::Closed), "{err:?}");
    });
}

// ---------------------------------------------------------------------------------------------
// 3. Many handoffs leak nothing
// ---------------------------------------------------------------------------------------------

#[test]
fn hundred_thousand_handoffs_leak_no_fd() {
    let _guard = serial();
    const HANDOFFS: u64 = 100_000;
    const BATCH: u64 = 50;
    let (a, mut b) = Channel::pair().unwrap();
    let conn = memfd(b"conn");
    let conn_id = identity(&conn);
    let start = Instant::now();
    assert_no_fd_leak("100 000 handoffs", || {
        let mut seq = 0;
        while seq < HANDOFFS {
            // Queue a batch (the socket buffer holds many frames), then drain it.
            for s in seq..seq + BATCH {
                a.try_send(&Message::Handoff { seq: s }, &[conn.as_fd()]).unwrap();
            }
            for s in seq..seq + BATCH {
                let Received { message, fds } = b.recv().unwrap();
                assert_eq!(message, Message::Handoff { seq: s });
                assert_eq!(fds.len(), 1);
                if s % 10_000 == 0 {
                    assert_same_file_and_cloexec(&conn, &fds[0]);
                }
                // `fds` dropped: the received copy is closed.
            }
            seq += BATCH;
        }
        assert!(b.try_recv().unwrap().is_none());
    });
    assert_eq!(identity(&conn), conn_id);
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(30), "100 000 handoffs took {elapsed:?}");
}

// ---------------------------------------------------------------------------------------------
// 4. try_recv on an empty channel
// ---------------------------------------------------------------------------------------------

#[test]
fn try_recv_on_an_empty_channel_is_none() {
    let _guard = serial();
    let (a, mut b) = Channel::pair().unwrap();
    assert!(b.try_recv().unwrap().is_none());
    assert!(b.try_recv().unwrap().is_none());
    a.send(&Message::Ack { received: 1 }, &[]).unwrap();
    let r = b.try_recv().unwrap().expect("the queued frame");
    assert_eq!(r.message, Message::Ack { received: 1 });
    assert!(b.try_recv().unwrap().is_none());
    // The peer is still there: empty is not closed.
    drop(a);
    assert!(matches!(b.try_recv(), Err(ChannelError::Closed)));
}

#[test]
fn frames_sent_before_a_reset_are_still_received() {
    let _guard = serial();
    let (mut a, b) = Channel::pair().unwrap();
    // B sends two frames to A, then closes with a frame from A still unread in it: Linux then
    // leaves ECONNRESET pending on A, ahead of B's frames.
    b.send(&Message::Ack { received: 1 }, &[]).unwrap();
    b.send(&Message::Ack { received: 2 }, &[]).unwrap();
    a.send(&Message::Ping, &[]).unwrap();
    drop(b);
    assert_eq!(a.recv().unwrap().message, Message::Ack { received: 1 });
    assert_eq!(a.try_recv().unwrap().unwrap().message, Message::Ack { received: 2 });
    assert!(matches!(a.recv(), Err(ChannelError::Closed)));
}

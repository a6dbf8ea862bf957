#!/usr/bin/env python3
"""A herd worker in Python, standard library only: an HTTP/1.1 server with keep-alive.

    herd run --mode handoff   -- python3 examples/handoff_worker.py
    herd run --mode reuseport -- python3 examples/handoff_worker.py
    herd run --mode shared/epoll-rotate -- python3 examples/handoff_worker.py

It speaks the channel protocol of docs/channel-protocol.md. Its connections come from the
lane (HERD_LANE_FD: handed-off descriptors, handoff and reuseport modes), from the listener at
descriptor 3 (LISTEN_FDS=1: shared and reuseport modes), or both, in one single-threaded
`selectors` loop:

- it says `Listening` on the control channel (HERD_CHANNEL_FD) once it is ready, or `READY=1`
  on NOTIFY_SOCKET when it has no channel;
- it acknowledges handed-off connections with a running total after each read of the lane,
  and within every ceil(window / 2) connections, as the protocol asks;
- it answers `Ping` with `Pong`;
- it never loses a handoff to a full descriptor table: it peeks at each frame first
  (`MSG_PEEK`), and when the frame's descriptors do not fit, it leaves the frame queued and
  says `Pressure`; the primary takes the lane back (`Reclaimed`), and after a back-off the
  worker says `Resume`;
- on `Stop`, end of file on the control channel, or SIGTERM, it stops taking connections,
  reads what the lane still holds, finishes what it has (an idle keep-alive connection is
  closed, a request in progress is answered with `Connection: close`), and exits 0;
- under herd it leaves SIGINT, SIGHUP, SIGQUIT, SIGTTIN and SIGTTOU to the primary (a
  terminal's Ctrl-C reaches the whole process group); on its own, SIGINT stops it as SIGTERM.

Every request gets `200 OK` and the body `worker <HERD_WORKER_ID> pid <pid> python`. A request
head over 16 KiB closes its connection; a bad frame is skipped (its descriptors closed) with a
message on stderr and a `Warning` to the primary.
"""

import array
import errno
import os
import select
import selectors
import signal
import socket
import struct
import sys
import time

# --- The channel protocol (docs/channel-protocol.md) ----------------------------------------

HEADER = struct.Struct("<HHI")  # kind, fd_count, payload length: little-endian, 8 bytes
U64 = struct.Struct("<Q")
MAX_FRAME = 64 * 1024  # header included
MAX_FDS = 64
FD_SIZE = array.array("i").itemsize
CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * FD_SIZE)

HANDOFF, ACK, ONLINE, LISTENING, RETIRING, STOP, PING, PONG = 1, 2, 3, 4, 5, 6, 7, 8
USER, PRESSURE, RECLAIMED, RESUME, WARNING = 9, 10, 11, 12, 13
NAMES = {1: "Handoff", 2: "Ack", 3: "Online", 4: "Listening", 5: "Retiring", 6: "Stop",
         7: "Ping", 8: "Pong", 9: "User", 10: "Pressure", 11: "Reclaimed", 12: "Resume",
         13: "Warning"}
# Kinds whose payload is a u64, and kinds whose payload is empty.
U64_KINDS = {HANDOFF, ACK}
EMPTY_KINDS = {ONLINE, LISTENING, RETIRING, STOP, PING, PONG, PRESSURE, RECLAIMED, RESUME}

# --- This worker's limits -------------------------------------------------------------------

MAX_HEAD = 16 * 1024  # a request head longer than this closes the connection
MAX_OUT = 64 * 1024  # stop reading a connection while this much output waits
IDLE_TIMEOUT = 60.0  # a connection silent this long is closed
STOP_IDLE_TIMEOUT = 5.0  # ... or this long, once the worker is stopping
LINGER = 2.0  # after `Connection: close`, how long unread input is drained before closing
LANE_BACKOFF, MAX_LANE_BACKOFF = 0.1, 1.0  # out of descriptors: wait before reading again
RECLAIM_WAIT = 1.0  # ask again if `Reclaimed` has not come by then
ACCEPT_BACKOFF = 0.1  # accept4 out of descriptors or memory: wait before accepting again
FRAMES_PER_READ = 64  # frames read from the lane per wakeup, before looking at the rest

PID = os.getpid()
WORKER_ID = os.environ.get("HERD_WORKER_ID", "?")
BODY = f"worker {WORKER_ID} pid {PID} python\n".encode()


def log(message):
    print(f"handoff_worker[{PID}] worker {WORKER_ID}: {message}", file=sys.stderr, flush=True)


class BadFrame(Exception):
    """A frame that breaks the protocol: dropped, its descriptors closed."""


def encode(kind, payload=b""):
    return HEADER.pack(kind, 0, len(payload)) + payload


def decode(data, fds):
    """Checks one frame as herd's `frame::decode` does; returns (kind, payload)."""
    if len(data) < HEADER.size:
        raise BadFrame(f"{len(data)} bytes, shorter than the 8-byte header")
    kind, fd_count, length = HEADER.unpack_from(data)
    payload = data[HEADER.size:]
    if kind not in NAMES:
        raise BadFrame(f"unknown kind {kind}")
    if length != len(payload):
        raise BadFrame(f"kind {kind}: length field {length}, payload {len(payload)} bytes")
    allowed = (1, MAX_FDS) if kind == HANDOFF else (0, MAX_FDS) if kind == USER else (0, 0)
    if not allowed[0] <= fds <= allowed[1]:
        raise BadFrame(f"kind {kind} carried {fds} descriptors, expected {allowed[0]} to {allowed[1]}")
    if fd_count != fds:
        raise BadFrame(f"kind {kind}: fd_count field {fd_count}, {fds} descriptors arrived")
    if (kind in U64_KINDS and len(payload) != 8) or (kind in EMPTY_KINDS and payload):
        raise BadFrame(f"kind {kind}: wrong payload length {len(payload)}")
    if kind == WARNING:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise BadFrame("warning text is not UTF-8") from None
    return kind, payload


def take_fds(ancdata):
    """The descriptors of SCM_RIGHTS control messages, as ints."""
    fds = array.array("i")
    for level, ctype, data in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % FD_SIZE])
    return list(fds)


def close_all(fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def peer_closed(sock):
    """Whether a zero-byte read was end of file rather than an (invalid) empty record."""
    p = select.poll()
    p.register(sock, select.POLLRDHUP)
    return any(ev & (select.POLLRDHUP | select.POLLHUP) for _, ev in p.poll(0))


class Channel:
    """One end of a control channel or a lane: AF_UNIX SOCK_SEQPACKET, one recvmsg per frame."""

    def __init__(self, fd, name):
        self.name = name
        self.sock = socket.socket(fileno=fd)
        if self.sock.type != socket.SOCK_SEQPACKET or self.sock.family != socket.AF_UNIX:
            raise OSError(f"{name} (descriptor {fd}) is not an AF_UNIX SOCK_SEQPACKET socket")
        self.sock.setblocking(False)

    def send(self, kind, payload=b""):
        """Sends one frame without waiting; False if the peer's buffer is full or it is gone."""
        try:
            self.sock.send(encode(kind, payload), socket.MSG_NOSIGNAL)
            return True
        except (BlockingIOError, BrokenPipeError, ConnectionResetError):
            return False

    def recv(self, keep_fds=False):
        """One frame: (kind, payload, fds), None if nothing waits; raises EOFError at end of
        file, BadFrame for a frame that breaks the protocol (its descriptors closed).

        With keep_fds, reads in two steps so that a frame whose descriptors do not all fit the
        descriptor table stays queued (returns "short"): a MSG_PEEK installs copies of them,
        then a read without a control buffer removes the frame, installing nothing."""
        flags = socket.MSG_DONTWAIT | socket.MSG_CMSG_CLOEXEC | (socket.MSG_PEEK if keep_fds else 0)
        reset = False
        while True:
            try:
                data, ancdata, msg_flags, _ = self.sock.recvmsg(MAX_FRAME, CMSG_SPACE, flags)
                break
            except BlockingIOError:
                if reset:
                    raise EOFError from None
                return None
            except ConnectionResetError:
                # The peer closed with frames of ours unread: reported once, before the frames
                # it sent us, which are still queued. Read on.
                if reset:
                    raise EOFError from None
                reset = True
        fds = take_fds(ancdata)
        if not data and not fds and not msg_flags & socket.MSG_CTRUNC and peer_closed(self.sock):
            raise EOFError
        claimed = HEADER.unpack_from(data)[1] if len(data) >= HEADER.size else None
        if keep_fds and msg_flags & socket.MSG_CTRUNC and claimed is not None and len(fds) < claimed <= MAX_FDS:
            close_all(fds)  # the copies; the frame and its descriptors stay queued
            return "short"
        if keep_fds:
            self.discard()
        try:
            if msg_flags & socket.MSG_TRUNC:
                raise BadFrame(f"longer than {MAX_FRAME} bytes (MSG_TRUNC)")
            if msg_flags & socket.MSG_CTRUNC:
                raise BadFrame(f"descriptors lost (MSG_CTRUNC): {claimed} announced, {len(fds)} arrived")
            kind, payload = decode(data, len(fds))
        except BadFrame:
            close_all(fds)
            raise
        return kind, payload, fds

    def discard(self):
        """Removes the frame at the head of the queue without installing its descriptors."""
        try:
            self.sock.recvmsg(0, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, ConnectionResetError):
            pass

    def fileno(self):
        return self.sock.fileno()


# --- HTTP -----------------------------------------------------------------------------------


class Conn:
    """One client connection: bounded input and output buffers, a request parser."""

    def __init__(self, sock, now):
        self.sock = sock
        self.inbuf = bytearray()
        self.outbuf = bytearray()
        self.skip = 0  # request body bytes still to discard
        self.served = 0
        self.close_after = False  # close once the output is written
        self.lingering = 0.0  # > 0: output done, write side shut, draining input until then
        self.last_active = now
        self.events = selectors.EVENT_READ


def parse_head(head):
    """(method, keep_alive, body_length or None for chunked, error or None) of a request head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None, False, 0, "bad request line"
    method, version = parts[0], parts[2]
    keep_alive = version != b"HTTP/1.0"
    length, chunked = 0, False
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon:
            return method, False, 0, "bad header line"
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"content-length":
            if not value.isdigit():
                return method, False, 0, "bad Content-Length"
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    # A chunked body would need a decoder to find the next request: answer, then close.
    return method, keep_alive and not chunked, (None if chunked else length), None


def response(status, keep_alive, body, head_only=False):
    head = (f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            + ("" if keep_alive else "Connection: close\r\n") + "\r\n")
    return head.encode() + (b"" if head_only else body)


# --- The worker -----------------------------------------------------------------------------


def env_fd(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        fd = int(value)
        os.fstat(fd)
        return fd
    except (ValueError, OSError) as e:
        raise SystemExit(f"handoff_worker: {name}={value!r} is not an open descriptor: {e}")


def listen_fd():
    """The listener at descriptor 3 under the sd_listen_fds(3) convention, if it is for us."""
    count = os.environ.pop("LISTEN_FDS", None)
    owner = os.environ.pop("LISTEN_PID", None)
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count:
        return None
    if owner is not None and owner != str(PID):
        log(f"LISTEN_PID={owner} is not this process ({PID}): not using descriptor 3")
        return None
    if count != "1":
        log(f"LISTEN_FDS={count}: serving descriptor 3 only")
    sock = socket.socket(fileno=3)
    os.set_inheritable(3, False)
    sock.setblocking(False)
    return sock


class Worker:
    def __init__(self):
        self.sel = selectors.DefaultSelector()
        self.conns = {}  # fd -> Conn
        self.stopping = False
        self.warnings_this_second = (0.0, 0)
        self.now = now = time.monotonic()

        control_fd, lane_fd = env_fd("HERD_CHANNEL_FD"), env_fd("HERD_LANE_FD")
        self.control = Channel(control_fd, "the control channel") if control_fd is not None else None
        self.lane = Channel(lane_fd, "the lane") if lane_fd is not None else None
        self.listener = listen_fd()
        if self.lane is None and self.listener is None:
            raise SystemExit("handoff_worker: no connections to serve: neither HERD_LANE_FD nor LISTEN_FDS=1")
        window = os.environ.get("HERD_HANDOFF_WINDOW") or "32"
        if not window.isdigit():
            raise SystemExit(f"handoff_worker: HERD_HANDOFF_WINDOW={window!r} is not a number")
        # The protocol asks for an `Ack` at least every ceil(window / 2) connections (a window
        # of 0 works as 1).
        self.ack_every = max(1, (int(window) + 1) // 2)

        # The lane: connections received (a running total) and acknowledged.
        self.received = self.acked = 0
        self.next_seq = 0
        self.lane_state = "reading"  # or "pressured", "closed"
        self.lane_backoff = LANE_BACKOFF
        self.reclaimed, self.asked_at, self.resume_at = False, 0.0, 0.0
        self.resume_owed = False
        self.accept_resume_at = None
        self.next_sweep = now

        # Signals arrive as bytes on a pipe the loop watches (signal.set_wakeup_fd).
        self.wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        self.signalled = set()
        signal.signal(signal.SIGTERM, lambda s, f: self.signalled.add(s))
        if self.control is not None:
            # A terminal's Ctrl-C (and SIGHUP, SIGQUIT, SIGTTIN, SIGTTOU) reaches the whole
            # process group; under herd they are the primary's to act on, and it sends `Stop`.
            for s in (signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(s, lambda s, f: None)
        else:
            signal.signal(signal.SIGINT, lambda s, f: self.signalled.add(s))
        self.sel.register(self.wake_r, selectors.EVENT_READ, "signal")

        if self.control is not None:
            self.sel.register(self.control.sock, selectors.EVENT_READ, "control")
        if self.lane is not None:
            self.sel.register(self.lane.sock, selectors.EVENT_READ, "lane")
        if self.listener is not None:
            self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        self.now = now
        self.say_ready()

    def say_ready(self):
        if self.control is not None:
            self.control.sock.setblocking(True)  # once, at start: wait for room if need be
            try:
                self.control.sock.send(encode(LISTENING), socket.MSG_NOSIGNAL)
            except OSError as e:
                log(f"sending Listening: {e}")
            self.control.sock.setblocking(False)
            return
        notify = os.environ.get("NOTIFY_SOCKET")
        if notify:
            address = "\0" + notify[1:] if notify.startswith("@") else notify
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                try:
                    s.sendto(b"READY=1", address)
                except OSError as e:
                    log(f"sending READY=1 to NOTIFY_SOCKET {notify}: {e}")

    def control_send(self, kind, payload=b""):
        return self.control is not None and self.control.send(kind, payload)

    def warn(self, text):
        """To stderr, and to the primary as a `Warning` (at most 10 a second)."""
        log(text)
        second, count = self.warnings_this_second
        if self.now - second >= 1.0:
            second, count = self.now, 0
        if self.control is not None and count < 10:
            data = text.encode()[: MAX_FRAME - HEADER.size].decode("utf-8", "ignore").encode()
            self.control_send(WARNING, data)
            count += 1
        self.warnings_this_second = (second, count)

    # --- the loop ---

    def run(self):
        while not (self.stopping and not self.conns):
            events = self.sel.select(self.timeout())
            self.now = time.monotonic()
            for key, mask in events:
                what = key.data
                if what == "control":
                    self.read_control()
                elif what == "lane":
                    self.read_lane()
                elif what == "listener":
                    self.accept()
                elif what == "signal":
                    self.read_signals()
                elif key.fd in self.conns:
                    self.on_conn(self.conns[key.fd], mask)
            self.on_timers()
            self.acknowledge()
        return 0

    def timeout(self):
        deadlines = [self.now + 1.0]
        if self.lane_state == "pressured":
            deadlines.append(self.resume_at if self.reclaimed else self.asked_at + RECLAIM_WAIT)
        if self.accept_resume_at is not None:
            deadlines.append(self.accept_resume_at)
        if self.resume_owed or self.received > self.acked:
            deadlines.append(self.now + 0.05)
        return max(0.0, min(deadlines) - time.monotonic())

    def on_timers(self):
        now = self.now
        if self.lane_state == "pressured":
            if not self.reclaimed and now - self.asked_at >= RECLAIM_WAIT:
                self.control_send(PRESSURE)
                self.asked_at = now
            elif self.reclaimed and now >= self.resume_at:
                if self.stopping:
                    self.lane_state = "closed"
                else:
                    # `Resume` first, then read: a shortage found by this read says `Pressure`
                    # after it, in that order.
                    self.lane_state = "reading"
                    self.sel.register(self.lane.sock, selectors.EVENT_READ, "lane")
                    self.resume_owed = not self.control_send(RESUME) and self.control is not None
                    self.read_lane()
        elif self.resume_owed:
            self.resume_owed = not self.control_send(RESUME) and self.control is not None
        if self.accept_resume_at is not None and now >= self.accept_resume_at:
            self.accept_resume_at = None
            if not self.stopping:
                self.sel.register(self.listener, selectors.EVENT_READ, "listener")
        if now < self.next_sweep:
            return
        self.next_sweep = now + 0.5
        for conn in list(self.conns.values()):
            idle = now - conn.last_active
            if conn.lingering and now >= conn.lingering:
                self.close(conn)
            elif idle > IDLE_TIMEOUT or (self.stopping and idle > STOP_IDLE_TIMEOUT):
                self.close(conn)

    def read_signals(self):
        try:
            os.read(self.wake_r, 512)
        except BlockingIOError:
            pass
        if self.signalled:
            names = ", ".join(signal.Signals(s).name for s in sorted(self.signalled))
            self.signalled.clear()
            self.begin_stopping(names)

    # --- the control channel ---

    def read_control(self):
        for _ in range(1000):
            if self.control is None:  # closed earlier in this turn
                return
            try:
                frame = self.control.recv()
            except EOFError:
                self.sel.unregister(self.control.sock)
                self.control.sock.close()
                self.control = None
                self.begin_stopping("end of file on the control channel")
                return
            except BadFrame as e:
                self.warn(f"bad frame on the control channel, skipped: {e}")
                continue
            except OSError as e:
                raise SystemExit(f"handoff_worker: reading the control channel: {e}") from None
            if frame is None:
                return
            kind, payload, fds = frame
            if kind == PING:
                self.control_send(PONG)  # a full channel drops it: the next ping gets one
            elif kind == STOP:
                self.begin_stopping("Stop from the primary")
            elif kind == RECLAIMED:
                if self.lane_state == "pressured":
                    self.reclaimed = True
            elif kind == USER:
                log(f"message from the primary: {len(payload)} bytes, {len(fds)} descriptors (ignored)")
                close_all(fds)
            else:
                self.warn(f"unexpected {NAMES[kind]} on the control channel")

    # --- the lane ---

    def read_lane(self):
        if self.lane is None or self.lane_state != "reading":
            return "idle"
        for _ in range(FRAMES_PER_READ):
            try:
                frame = self.lane.recv(keep_fds=True)
            except EOFError:
                self.sel.unregister(self.lane.sock)
                self.lane_state = "closed"
                return "closed"
            except BadFrame as e:
                self.warn(f"bad frame on the lane, skipped: {e}")
                continue
            except OSError as e:
                raise SystemExit(f"handoff_worker: reading the lane: {e}") from None
            if frame is None:
                self.lane_backoff = LANE_BACKOFF  # the shortage, if any, is over
                return "empty"
            if frame == "short":
                self.pressure()
                return "short"
            kind, payload, fds = frame
            if kind != HANDOFF:
                close_all(fds)
                self.warn(f"unexpected {NAMES[kind]} on the lane")
                continue
            (seq,) = U64.unpack(payload)
            if seq < self.next_seq:
                self.warn(f"handoff numbered {seq} after {self.next_seq}")
            self.next_seq = seq + len(fds)
            self.received += len(fds)
            for fd in fds:
                self.adopt(fd)
            if self.received - self.acked >= self.ack_every:
                self.acknowledge()
        return "more"

    def pressure(self):
        """Out of descriptors: stop reading the lane and ask the primary to take it back."""
        self.sel.unregister(self.lane.sock)
        self.lane_state = "pressured"
        self.reclaimed = False
        self.asked_at = self.now
        self.resume_at = self.now + self.lane_backoff
        self.resume_owed = False
        self.warn(f"out of descriptors for a handoff; handing the lane back for {self.lane_backoff:.1f}s")
        self.lane_backoff = min(self.lane_backoff * 2, MAX_LANE_BACKOFF)
        self.control_send(PRESSURE)  # if it does not fit, the timer asks again

    def acknowledge(self):
        """Sends the running total, if it grew: after each read of the lane, and within one
        whenever half a window arrived. If the lane cannot take it now, the next turn tries
        again; a later total covers an earlier one."""
        if self.lane is None or self.received == self.acked:
            return
        if self.lane.send(ACK, U64.pack(self.received)):
            self.acked = self.received

    def adopt(self, fd):
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            close_all([fd])
            self.warn(f"a handed-off descriptor is not a socket: {e}")
            return
        self.add_conn(sock)

    # --- connections ---

    def accept(self):
        if self.listener is None:  # closed earlier in this turn
            return
        try:
            sock, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                self.warn(f"accept: {e}; pausing accepts for {ACCEPT_BACKOFF}s")
                self.sel.unregister(self.listener)
                self.accept_resume_at = self.now + ACCEPT_BACKOFF
                return
            if e.errno in (errno.EPROTO, errno.EPERM, errno.ENETDOWN, errno.EHOSTUNREACH):
                return
            raise SystemExit(f"handoff_worker: accept: {e}") from None
        self.add_conn(sock)

    def add_conn(self, sock):
        sock.setblocking(False)
        conn = Conn(sock, self.now)
        self.conns[sock.fileno()] = conn
        self.sel.register(sock, selectors.EVENT_READ, conn)

    def on_conn(self, conn, mask):
        conn.last_active = self.now
        if mask & selectors.EVENT_WRITE:
            self.flush(conn)
        if conn.sock.fileno() in self.conns and mask & selectors.EVENT_READ:
            self.on_readable(conn)

    def on_readable(self, conn):
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close(conn)
            return
        if not data:
            self.close(conn)
            return
        if conn.lingering:
            return  # draining what the client still sends after our last response
        conn.inbuf += data
        self.process(conn)

    def process(self, conn):
        """Answers every complete request in the input, as far as the output bound allows."""
        while not conn.close_after and len(conn.outbuf) < MAX_OUT:
            if conn.skip:
                n = min(conn.skip, len(conn.inbuf))
                del conn.inbuf[:n]
                conn.skip -= n
                if conn.skip:
                    break
            end = conn.inbuf.find(b"\r\n\r\n")
            if end < 0:
                if len(conn.inbuf) > MAX_HEAD:
                    self.close(conn)
                    return
                break
            if end > MAX_HEAD:
                self.close(conn)
                return
            head = bytes(conn.inbuf[:end])
            del conn.inbuf[: end + 4]
            method, keep_alive, length, error = parse_head(head)
            if error:
                conn.outbuf += response("400 Bad Request", False, f"{error}\n".encode())
                conn.close_after = True
                break
            if self.stopping:
                keep_alive = False  # finish this one; take no more on this connection
            conn.served += 1
            conn.outbuf += response("200 OK", keep_alive, BODY, head_only=method == b"HEAD")
            if length is None or not keep_alive:
                conn.close_after = True
            else:
                conn.skip = length
        self.flush(conn)

    def flush(self, conn):
        while conn.outbuf:
            try:
                n = conn.sock.send(conn.outbuf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.close(conn)
                return
            del conn.outbuf[:n]
        if not conn.outbuf and conn.close_after and not conn.lingering:
            # Shut our side, then drain what the client still sends (a pipelined request):
            # closing with unread input would reset the connection and could lose the answer.
            try:
                conn.sock.shutdown(socket.SHUT_WR)
            except OSError:
                self.close(conn)
                return
            conn.lingering = self.now + LINGER
            conn.inbuf.clear()
        if not conn.outbuf and not conn.close_after and conn.inbuf and not conn.skip:
            # Output drained: requests held back by the output bound can go on.
            if conn.inbuf.find(b"\r\n\r\n") >= 0:
                self.process(conn)
                return
        self.set_interest(conn)

    def set_interest(self, conn):
        if conn.sock.fileno() not in self.conns:
            return
        events = 0
        if conn.outbuf:
            events |= selectors.EVENT_WRITE
        if len(conn.outbuf) < MAX_OUT:
            events |= selectors.EVENT_READ
        if (self.stopping and conn.served and not (conn.outbuf or conn.inbuf or conn.skip or conn.lingering)):
            self.close(conn)  # an idle keep-alive connection: nothing is in progress on it
            return
        if events != conn.events:
            conn.events = events
            self.sel.modify(conn.sock, events, conn)

    def close(self, conn):
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is not None:
            self.sel.unregister(conn.sock)
        conn.sock.close()

    # --- stopping ---

    def begin_stopping(self, why):
        if self.stopping:
            return
        self.stopping = True
        log(f"stopping ({why}): finishing {len(self.conns)} connections")
        if self.listener is not None:
            if self.accept_resume_at is None:
                self.sel.unregister(self.listener)
            self.accept_resume_at = None
            self.listener.close()
            self.listener = None
        if self.lane is not None and self.lane_state == "reading":
            # Handoffs sent before the `Stop` are already queued: they are this worker's.
            for _ in range(1000):
                if self.read_lane() != "more":
                    break
            self.acknowledge()
            if self.lane_state == "reading":
                # Whatever still reaches the lane, the primary may take back now (it does at
                # this worker's exit in any case).
                self.sel.unregister(self.lane.sock)
                self.lane_state = "closed"
                self.control_send(PRESSURE)
        for conn in list(self.conns.values()):
            self.set_interest(conn)


def main():
    try:
        worker = Worker()
    except OSError as e:
        print(f"handoff_worker: setting up: {e}", file=sys.stderr)
        return 1
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The smallest herd worker: the systemd socket-passing convention, sd_listen_fds(3), only.

    herd run --mode shared/epoll-rotate -- python3 examples/listen_fds_worker.py

The listener arrives open at descriptor 3; LISTEN_FDS says how many were passed (from 3 up),
LISTEN_PID which process they are meant for. One request per connection (`Connection: close`),
one at a time. On SIGTERM it finishes the request in progress and exits 0.
"""
import http.server, os, signal, socket, sys

# 1. Are descriptors for us? LISTEN_PID tells a program they were meant for apart from a
#    child that merely inherited the variables; and they are for this process only.
count = os.environ.get("LISTEN_FDS", "")
if os.environ.get("LISTEN_PID") != str(os.getpid()) or not count.isdigit() or int(count) < 1:
    sys.exit("listen_fds_worker: no listener passed (LISTEN_FDS=1 and LISTEN_PID=<this pid>)")
for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
    os.environ.pop(name, None)  # not for programs we might start
# 2. Descriptor 3 (SD_LISTEN_FDS_START) is bound and listening: wrap it. Python reads its
#    family and type from the socket itself.
listener = socket.socket(fileno=3)
os.set_inheritable(3, False)  # as sd_listen_fds(3) does: not for programs we might exec
listener.setblocking(False)  # other workers may take the connection first: no waiting in accept

BODY = f"worker {os.environ.get('HERD_WORKER_ID', '?')} pid {os.getpid()} listen-fds\n".encode()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # a client that sends nothing cannot hold this one-at-a-time server for ever

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Connection", "close")  # one request per connection: others wait less
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):  # no line per request on stderr
        pass


# 3. A server around the listener we were given: no bind, no listen of its own.
server = http.server.HTTPServer(("", 0), Handler, bind_and_activate=False)
server.socket.close()
server.socket = listener
server.timeout = 0.5  # handle_request returns this often, to see the flag below

# 4. SIGTERM: stop after the request in progress. (Under herd the primary asks with SIGTERM;
#    a worker that wants to hear `Stop` instead speaks the channel: handoff_worker.py.)
stopping = []
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
# 5. Ready. With NOTIFY_SOCKET set (herd run, systemd), say so (sd_notify(3)); without it, the
#    supervisor counts this worker ready when it chooses (herd run --ready-delay).
notify = os.environ.get("NOTIFY_SOCKET", "")
if notify:
    address = "\0" + notify[1:] if notify.startswith("@") else notify  # "@": abstract namespace
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", address)
while not stopping:
    server.handle_request()

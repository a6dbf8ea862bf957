#!/usr/bin/env bash
# benches/peers/syscalls.sh [MODE] [BACKEND]: checks herd's own system-call counters against
# `strace -c -f` for one run. MODE is handoff or reuseport (default handoff), BACKEND epoll or
# io-uring (default epoll).
#
# herd counts the hot-path calls each of its processes makes (`syscalls` in `--stats json`;
# src/sys/tally.rs): accept4, epoll_wait, epoll_ctl, io_uring_enter, sendmsg, recvmsg, an
# eventfd's read and write, and on epoll the primary's close of each descriptor it handed on.
# strace counts calls by name, whoever makes them, so only the names herd alone makes are
# compared: accept4, epoll_wait/epoll_pwait/epoll_pwait2, epoll_ctl, io_uring_enter, sendmsg and
# recvmsg. Left out on herd's side: the primary's closes (strace would count them among every
# close of every connection; on epoll there is one per handed-off connection, which is its
# `dispatched` counter) and the eventfd's read and write (shared/blocking only, not run here).
#
# The server starts under strace, so both counts cover its whole life. It serves REQUESTS
# churn requests (default 20000) from CONNS connections in flight (16), then gets SIGTERM; the
# script prints both totals and their ratio and fails (status 1) if they differ by more than
# 2 %. Skips (status 0) if strace is not installed.
#
# Settings: REQUESTS, CONNS, WORKERS (4), HERD; see lib.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${1:-handoff}
BACKEND=${2:-epoll}
REQUESTS=${REQUESTS:-20000}
CONNS=${CONNS:-16}
TRACED=accept4,epoll_wait,epoll_pwait,epoll_pwait2,epoll_ctl,io_uring_enter,sendmsg,recvmsg
case $MODE in handoff | reuseport) ;; *) echo "usage: $0 [handoff|reuseport] [epoll|io-uring]" >&2 && exit 2 ;; esac
case $BACKEND in epoll | io-uring) ;; *) echo "usage: $0 [handoff|reuseport] [epoll|io-uring]" >&2 && exit 2 ;; esac
if ! command -v strace >/dev/null; then
    echo "SKIPPED: strace not installed ('apt-get install -y strace')"
    exit 0
fi

peers_init
log=$PEERS_TMP/serve.log
counters=$PEERS_TMP/counters.json
summary=$PEERS_TMP/strace.txt
# strace is the process started (SERVER_PID): it leaves once herd's last process has, after
# writing its summary. herd's own pids come from its log and are tracked, so that cleanup can
# kill them (by pid and start time) if strace is stopped first.
strace -f -c -o "$summary" -e trace="$TRACED" \
    "$HERD" serve --mode "$MODE" --backend "$BACKEND" --workers "$WORKERS" --listen 127.0.0.1:0 \
    --defer-accept --stats json >"$counters" 2>"$log" &
SERVER_PID=$!
TRACKED=()
track "$SERVER_PID"

# Up to 15 s for every worker to listen. herd's primary is strace's child, tracked as soon as it
# shows. The log is read only once the workers listen: a line still being written (stderr is
# unbuffered, and strace slows the writes) is complete by then.
primary=""
ready() { (($(grep -c 'herd: listening ' "$log") >= WORKERS)); }
for _ in $(seq 150); do
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        echo "herd serve exited during start-up; its log:" >&2
        cat "$log" >&2
        exit 1
    fi
    if [[ -z $primary ]]; then
        primary=$(pgrep -P "$SERVER_PID" | head -1 || true)
        [[ -n $primary ]] && track "$primary"
    fi
    ready && break
    sleep 0.1
done
if ! ready; then
    echo "herd serve did not become ready in 15 s; its log:" >&2
    cat "$log" >&2
    exit 1
fi
port=$(sed -nE 's/.*herd: serving on [0-9.]+:([0-9]+) .*/\1/p' "$log" | head -1)
# shellcheck disable=SC2046 # one pid per word
track $(sed -nE 's/.*herd: fork worker=[0-9]+ pid=([0-9]+)$/\1/p' "$log")
if grep -q 'herd: warning' "$log"; then
    grep 'herd: warning' "$log" >&2
    if grep -q 'io-uring is unavailable' "$log"; then
        echo "SKIPPED: herd serve fell back to epoll; nothing to check on io-uring"
        exit 0
    fi
fi

json=$("$HERD" load --json --mode churn -c "$CONNS" -n "$REQUESTS" -d 120 "http://127.0.0.1:$port/") || true
kill -TERM "$primary"
# Up to 20 s for herd to shut down and strace to write its summary.
for _ in $(seq 200); do
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "herd serve (under strace) did not stop within 20 s of SIGTERM" >&2
    exit 1
fi
wait "$SERVER_PID" || true
SERVER_PID=""

line=$(grep '^{"primary"' "$counters" | tail -1) || {
    echo "herd serve printed no counters; its log:" >&2
    cat "$log" >&2
    exit 1
}
# Every "syscalls" in the line: the primary's first, then one per worker.
herd_all=$(grep -o '"syscalls":[0-9]*' <<<"$line" | awk -F: '{ s += $2 } END { print s + 0 }')
dispatched=$(json_field "$line" dispatched)
closes=0
[[ $BACKEND == epoll ]] && closes=$dispatched
herd_total=$((herd_all - closes))
strace_total=$(awk '
    /^-+/ { n++; next }
    n == 1 && NF >= 5 && $NF != "total" { s += $4 }
    END { print s + 0 }
' "$summary")

echo "# herd serve --mode $MODE --backend $BACKEND, $WORKERS workers, --defer-accept; herd load churn -c $CONNS -n $REQUESTS, $(date -u +%FT%TZ)"
echo "requests: $(json_field "$json" requests) answered, $(json_errors "$json") errors"
echo "strace -c -f, by call ($TRACED):"
awk '/^-+/ { n++; next } n == 1 && NF >= 5 && $NF != "total" { printf "  %-16s %9d\n", $NF, $4 }' "$summary"
echo "herd: $herd_all counted, less $closes closes of handed-off descriptors = $herd_total"
awk -v h="$herd_total" -v s="$strace_total" 'BEGIN {
    if (s == 0) { print "strace counted no calls"; exit 1 }
    r = h / s
    d = (r > 1) ? r - 1 : 1 - r
    printf "herd %d vs strace %d: ratio %.4f (%s: within 2 %% needed)\n", h, s, r, (d <= 0.02) ? "agree" : "DISAGREE"
    exit (d <= 0.02) ? 0 : 1
}'

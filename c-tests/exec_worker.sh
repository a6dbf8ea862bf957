#!/usr/bin/env bash
# Drives c-tests/exec_worker.c (run.sh passes the built program): a C worker under
# `herd run`, in shared, handoff and reuseport modes, with 2 workers on a free port: 200
# requests from bash, every one answered by the C program, both workers answering, and a
# SIGTERM that stops everything with exit status 0 (the workers read their channel: they are
# asked with Stop, and exit 0). Started without herd, the program must say why and exit 1.
# One "ok: ..." line per check; exit 0 only if every check held.
set -uo pipefail

bin=${1:?usage: exec_worker.sh PATH-TO-exec_worker}
cd "$(dirname "$0")/.."
HERD=""
for candidate in target/debug/herd target/release/herd; do
    if [ -x "$candidate" ]; then HERD=$candidate; break; fi
done
if [ -z "$HERD" ]; then
    echo "SKIPPED: exec_worker: no herd binary is built (cargo build)"
    exit 0
fi
tmp=$(mktemp -d)
server=""
failures=0

cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -KILL "$server"; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

outside_herd() {
    ! env -u HERD_CHANNEL_FD "$bin" 2>"$tmp/alone" && grep -q "HERD_CHANNEL_FD is not set" "$tmp/alone"
}
check "started without herd, it says HERD_CHANNEL_FD is not set and exits 1" outside_herd

start() { # start MODE: sets $server and $addr
    "$HERD" run --mode "$1" -w 2 -l 127.0.0.1:0 -- "$bin" >"$tmp/out" 2>"$tmp/err" &
    server=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/.*herd: serving on \([^ ]*\) .*/\1/p' "$tmp/err")
        [ -n "$addr" ] && [ "$(grep -c 'herd: listening ' "$tmp/err")" -ge 2 ] && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$addr" ]
}

requests() { # 200 requests, every answer from the C program, both workers seen
    local i body seen=""
    : >"$tmp/bodies"
    for i in $(seq 200); do
        exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
        printf 'GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n' >&3
        body=$(tail -n 1 <&3)
        exec 3<&-
        [[ "$body" =~ ^worker\ [01]\ pid\ [0-9]+\ c$ ]] || return 1
        echo "$body" >>"$tmp/bodies"
    done
    seen=$(cut -d' ' -f2 "$tmp/bodies" | sort -u | tr '\n' ' ')
    echo "   workers that answered: $seen"
    [ "$seen" = "0 1 " ]
}

stop() { # SIGTERM: exit 0 within 10 s, both workers exited 0 when asked
    kill -TERM "$server"
    for _ in $(seq 100); do
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$server" 2>/dev/null && return 1
    wait "$server"
    local status=$?
    server=""
    [ $status -eq 0 ] && [ "$(grep -c 'exit worker=.* code 0 expected=true' "$tmp/err")" = 2 ]
}

for mode in shared handoff reuseport; do
    if ! start "$mode"; then
        echo "FAILED: $mode: herd run did not start the C workers"
        cat "$tmp/err"
        failures=$((failures + 1))
        continue
    fi
    check "$mode: 200 requests answered by the C program under herd run, by both workers" requests
    check "$mode: SIGTERM stops herd run and its C workers with status 0" stop
    check "$mode: no sanitizer report, no crash" bash -c "! grep -E 'expected=false|AddressSanitizer|runtime error|LeakSanitizer' '$tmp/err'"
done

if [ $failures -eq 0 ]; then echo "ok: all checks passed"; fi
[ $failures -eq 0 ]

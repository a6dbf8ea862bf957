#!/usr/bin/env bash
# Drives c-tests/hello_server.c (run.sh passes the built program): in each mode it is started
# on a free port with 2 workers, loaded (with target/release/herd load when it is built: churn
# and keep-alive, 2000 requests each, not one error), asked two requests on one connection
# (bash's /dev/tcp; curl too if it is installed), and stopped with SIGTERM, which it must
# survive with exit status 0 within 10 s. In shared mode an idle keep-alive connection is left
# open across the SIGTERM: the worker holding it must close it (IDLE_SECONDS) and still exit.
# One "ok: ..." line per check; exit 0 only if every check held.
set -uo pipefail

bin=${1:?usage: hello_server.sh PATH-TO-hello_server}
cd "$(dirname "$0")/.."
HERD=target/release/herd
tmp=$(mktemp -d)
server=""
failures=0

cleanup() {
    # Only the server this script started, by its pid.
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -KILL "$server"; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

# start MODE: runs the server in the background; sets $server and $addr (HOST:PORT).
start() {
    "$bin" --mode "$1" --workers 2 --listen 127.0.0.1:0 >"$tmp/out" 2>"$tmp/err" &
    server=$!
    addr=""
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$tmp/out")
        [ -n "$addr" ] && break
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$addr" ]
}

# body_of RESPONSE-FILE: the body of the one response in the file.
body_of() { sed -n '/^\r$/,$p' "$1" | tail -n +2; }

# A herd load run: 2000 requests, every one answered 200 with "worker <id>", no error.
load() { # load MODE CONNECTIONS
    local json per_worker
    json=$("$HERD" load -n 2000 -c "$2" --mode "$1" --workers 2 --json "http://$addr/") || return 1
    echo "   herd load --mode $1 -c $2: $json" | cut -c1-220
    per_worker=$(echo "$json" | sed -n 's/.*"per_worker":\[\([0-9]*\),\([0-9]*\)\].*/\1 + \2/p')
    echo "$json" | grep -q '"requests":2000,' &&
        echo "$json" | grep -q '"errors":{"refused":0,"reset":0,"timeout":0,"bad_status":0,"no_port":0,"other":0}' &&
        [ -n "$per_worker" ] && [ $((per_worker)) -eq 2000 ]
}

# Two requests on one connection: the first kept alive, the second with "Connection: close";
# both answered by the same worker, and then the server closes the connection.
keep_alive_exchange() {
    local host=${addr%:*} port=${addr##*:} line length body1 body2 closed=no
    exec 3<>"/dev/tcp/$host/$port" || return 1
    printf 'GET / HTTP/1.1\r\nHost: herd\r\n\r\n' >&3
    read_response body1 || return 1
    printf 'GET /again HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n' >&3
    read_response body2 || return 1
    [ "$saw_close" = yes ] || return 1
    if ! read -r -t 5 line <&3; then closed=yes; fi
    exec 3<&-
    echo "   keep-alive: \"$body1\" then \"$body2\", then closed: $closed"
    [[ "$body1" =~ ^worker\ [01]\ pid\ [0-9]+$ ]] && [ "$body1" = "$body2" ] && [ "$closed" = yes ]
}

# read_response VAR: one response from fd 3 (status 200), its body into VAR; $saw_close says
# whether it had "Connection: close".
read_response() {
    local line length=0 status
    saw_close=no
    read -r -t 5 status <&3 || return 1
    [[ "$status" == "HTTP/1.1 200 "* ]] || return 1
    while read -r -t 5 line <&3; do
        line=${line%$'\r'}
        [ -z "$line" ] && break
        case "${line,,}" in
        content-length:*) length=${line#*: } ;;
        connection:*close*) saw_close=yes ;;
        esac
    done
    local text
    read -r -t 5 -N "$length" text <&3 || return 1
    printf -v "$1" '%s' "${text%$'\n'}"
}

# An idle keep-alive connection (opened, never used) on fd 4, given a moment to be accepted.
open_idle() {
    exec 4<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
    sleep 0.3
}
idle_closed() { # the server closed it: read sees its end (not a timeout, not a reset)
    local line rc
    read -r -t 1 line <&4 2>"$tmp/read-error"
    rc=$?
    exec 4<&-
    [ $rc -eq 1 ] && [ ! -s "$tmp/read-error" ]
}

# Sends SIGTERM and waits up to 10 s: exit status 0, the counters printed, both workers gone
# with code 0 (neither killed at the shutdown timeout).
stop() {
    local start=$SECONDS status
    kill -TERM "$server"
    for _ in $(seq 100); do
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$server" 2>/dev/null; then
        echo "   still running 10 s after SIGTERM"
        return 1
    fi
    wait "$server"
    status=$?
    server=""
    echo "   exited with status $status in $((SECONDS - start)) s"
    [ $status -eq 0 ] && grep -q '^worker 0: accepts' "$tmp/out" && grep -q '^worker 1: accepts' "$tmp/out" &&
        [ "$(grep -c 'exit worker=.* code 0 expected=true' "$tmp/err")" = 2 ]
}

no_crash() { # no worker crashed, no sanitizer report
    ! grep -E 'expected=false|AddressSanitizer|runtime error|LeakSanitizer' "$tmp/err"
}

if [ -x "$HERD" ]; then have_herd=yes; else have_herd=no; fi
if [ "$have_herd" = no ]; then
    echo "SKIPPED: herd load: $HERD is not built (cargo build --release); a smaller load from bash instead"
fi

for mode in shared handoff reuseport; do
    echo "-- $mode"
    if ! start "$mode"; then
        echo "FAILED: $mode: hello_server did not say where it listens"
        cat "$tmp/err"
        failures=$((failures + 1))
        continue
    fi
    echo "ok: $mode: listening on $addr"
    if [ "$have_herd" = yes ]; then
        check "$mode: herd load, churn: 2000 requests with Connection: close, no error" load churn 8
        check "$mode: herd load, keep-alive: 2000 requests on 8 connections, no error" load keepalive 8
    else
        bash_load() {
            local i r
            for i in $(seq 100); do
                exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}" || return 1
                printf 'GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n' >&3
                read_response r || return 1
                exec 3<&-
            done
        }
        check "$mode: 100 requests from bash, all answered" bash_load
    fi
    check "$mode: two requests on one connection, then Connection: close" keep_alive_exchange
    if command -v curl >/dev/null; then
        curl_twice() {
            local out
            out=$(curl -sS -v --max-time 5 "http://$addr/" "http://$addr/" 2>&1) || return 1
            echo "$out" | grep -qiE 're-?using existing connection' &&
                [ "$(echo "$out" | grep -cE '^worker [01] pid [0-9]+$')" = 2 ]
        }
        check "$mode: curl: two requests on one reused connection" curl_twice
    else
        echo "SKIPPED: $mode: curl is not installed (the /dev/tcp exchange above covers keep-alive)"
    fi
    if [ "$mode" = shared ]; then
        check "$mode: an idle keep-alive connection is open" open_idle
        check "$mode: SIGTERM: exit status 0 within 10 s, counters printed" stop
        check "$mode: the idle connection was closed by its worker" idle_closed
    else
        check "$mode: SIGTERM: exit status 0 within 10 s, counters printed" stop
    fi
    check "$mode: no worker crashed, no sanitizer report" no_crash
done

if [ $failures -eq 0 ]; then echo "ok: all checks passed"; fi
exit $((failures > 0))

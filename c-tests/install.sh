#!/usr/bin/env bash
# The install path, end to end: `make install PREFIX=<a temporary directory>`, then
# c-tests/hello_server.c built the way a user builds against herd — with pkg-config, once
# against the shared library (ldd must show libherd.so.0 from PREFIX) and once statically
# (no libherd.so needed at all) — and each program run once: a request answered, SIGTERM, exit
# status 0. Skipped, loudly, without pkg-config. One "ok: ..." line per check.
set -uo pipefail

cd "$(dirname "$0")/.."
CC=${CC:-cc}
if ! command -v pkg-config >/dev/null; then
    echo "SKIPPED: install: pkg-config is not installed (apt-get install -y pkg-config)"
    exit 0
fi
if ! command -v "$CC" >/dev/null; then
    echo "SKIPPED: install: no C compiler ($CC)"
    exit 0
fi

prefix=$(mktemp -d)
server=""
failures=0
cleanup() {
    if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then kill -KILL "$server"; fi
    rm -rf "$prefix"
}
trap cleanup EXIT

check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then echo "ok: $what"; else echo "FAILED: $what"; failures=$((failures + 1)); fi
}

# What `make capi` built (make c-test runs it first) is installed as it is: CARGO=true keeps
# make from running cargo again, so that another build in between cannot slip in.
cargo=cargo
if [ -f target/release/libherd.a ] && [ -f target/release/libherd.so ]; then cargo=true; fi
if ! make -s install PREFIX="$prefix" CARGO=$cargo >"$prefix/make.log" 2>&1; then
    echo "FAILED: make install PREFIX=$prefix"
    cat "$prefix/make.log"
    exit 1
fi
version=$(sed -n 's/^version = "\(.*\)"/\1/p' capi/Cargo.toml | head -n 1)
installed() {
    [ -f "$prefix/include/herd.h" ] && [ -f "$prefix/lib/libherd.a" ] && [ -f "$prefix/lib/libherd.so.$version" ] &&
        [ "$(readlink "$prefix/lib/libherd.so.0")" = "libherd.so.$version" ] &&
        [ "$(readlink "$prefix/lib/libherd.so")" = libherd.so.0 ] && [ -f "$prefix/lib/pkgconfig/herd.pc" ]
}
check "make install PREFIX=...: herd.h, libherd.a, libherd.so.$version with its links, herd.pc" installed

export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
check "pkg-config knows herd $version" test "$(pkg-config --modversion herd 2>/dev/null)" = "$version"
check "pkg-config --cflags points into PREFIX" test "$(pkg-config --cflags herd | tr -d ' ')" = "-I$prefix/include"

# Shared: what the README shows.
build_shared() {
    # shellcheck disable=SC2046 # pkg-config's output is a list of words
    "$CC" -std=c11 -Wall -Wextra -Werror c-tests/hello_server.c $(pkg-config --cflags --libs herd) \
        -Wl,-rpath,"$prefix/lib" -o "$prefix/hello"
}
check "hello_server.c built with \$(pkg-config --cflags --libs herd)" build_shared
linked_shared() {
    ldd "$prefix/hello" >"$prefix/ldd" 2>&1
    grep -q "libherd.so.0 => $prefix/lib/libherd.so.0" "$prefix/ldd" || { cat "$prefix/ldd"; return 1; }
}
check "ldd: libherd.so.0 from PREFIX" linked_shared

# Static: libherd.a and the libraries it needs (pkg-config --static).
build_static() {
    # shellcheck disable=SC2046
    "$CC" -std=c11 -Wall -Wextra -Werror c-tests/hello_server.c $(pkg-config --cflags herd) \
        $(pkg-config --static --libs herd | sed 's/-lherd\b/-l:libherd.a/') -o "$prefix/hello-static"
}
check "hello_server.c built statically with \$(pkg-config --static --libs herd), -lherd as -l:libherd.a" build_static
check "the static build needs no libherd.so" bash -c "! ldd '$prefix/hello-static' | grep -q libherd"

# Each program once: listening, one request answered, SIGTERM, exit status 0.
run_once() {
    local program=$1 addr="" line status
    "$program" --workers 1 --listen 127.0.0.1:0 >"$prefix/out" 2>"$prefix/err" &
    server=$!
    for _ in $(seq 100); do
        addr=$(sed -n 's/^listening on //p' "$prefix/out")
        [ -n "$addr" ] && break
        sleep 0.1
    done
    if [ -z "$addr" ] || ! exec 3<>"/dev/tcp/${addr%:*}/${addr##*:}"; then
        echo "   no connection to \"$addr\"; its output:"
        cat "$prefix/out" "$prefix/err"
        return 1
    fi
    printf 'GET / HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n' >&3
    local answered=no
    while read -r -t 5 line <&3; do
        [[ "$line" =~ ^worker\ 0\ pid\ [0-9]+$ ]] && answered=yes
    done
    exec 3<&-
    kill -TERM "$server"
    for _ in $(seq 100); do
        kill -0 "$server" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$server" 2>/dev/null && return 1 # still running 10 s on: cleanup kills it
    wait "$server"
    status=$?
    server=""
    [ "$answered" = yes ] && [ $status -eq 0 ]
}
check "the shared build answers a request and stops with status 0 on SIGTERM" run_once "$prefix/hello"
check "the static build answers a request and stops with status 0 on SIGTERM" run_once "$prefix/hello-static"

if [ $failures -eq 0 ]; then echo "ok: all checks passed"; fi
exit $((failures > 0))

#!/usr/bin/env bash
# Builds every c-tests/*.c program against the staged C ABI (make capi: $CAPI_DIR) with
# -Wall -Wextra -Werror under AddressSanitizer and UndefinedBehaviorSanitizer, and runs it.
# A test program exits 0 when every check held and prints one "ok: ..." line per check; a
# program that needs something this machine lacks prints "SKIPPED: why" and exits 0. A program
# with an executable NAME.sh beside it is run by that script; an executable script with no
# program of its name (install.sh) is run on its own.
set -euo pipefail

cd "$(dirname "$0")/.."
CAPI_DIR=${CAPI_DIR:-target/capi}
OUT=target/c-tests
CC=${CC:-cc}

if ! command -v "$CC" >/dev/null; then
    echo "SKIPPED: c-tests need a C compiler ($CC not found; apt-get install -y gcc)"
    exit 0
fi
mkdir -p "$OUT"

SAN="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer"
# A sanitizer runtime that cannot start here (no ptrace, odd kernels) would fail every test:
# check once with an empty program, and run without sanitizers (saying so) if it cannot.
echo 'int main(void) { return 0; }' > "$OUT/probe.c"
if ! { "$CC" $SAN "$OUT/probe.c" -o "$OUT/probe" 2>/dev/null && "$OUT/probe"; }; then
    echo "WARNING: AddressSanitizer/UBSan unavailable with $CC here; c-tests run without them"
    SAN=""
fi
CFLAGS="-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O1 -g $SAN -I$CAPI_DIR/include"
LIBS="$CAPI_DIR/lib/libherd.a -lgcc_s -lutil -lrt -lpthread -lm -ldl"
# The workers' exits skip LeakSanitizer (_exit); the primary's run it.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

failed=0
for src in c-tests/*.c; do
    name=$(basename "$src" .c)
    "$CC" $CFLAGS "$src" -o "$OUT/$name" $LIBS
    if [ -x "c-tests/$name.sh" ]; then
        # A program with a driver script (hello_server.sh) is run by it.
        if ! "c-tests/$name.sh" "$OUT/$name"; then
            echo "FAILED: $name"
            failed=1
        fi
        continue
    fi
    if ! timeout 120 "$OUT/$name"; then
        echo "FAILED: $name"
        failed=1
    fi
done
# A script with no program of its name (install.sh) runs on its own.
for script in c-tests/*.sh; do
    name=$(basename "$script" .sh)
    if [ "$name" = run ] || [ -f "c-tests/$name.c" ] || [ ! -x "$script" ]; then continue; fi
    if ! timeout 120 "$script"; then
        echo "FAILED: $name"
        failed=1
    fi
done
exit $failed

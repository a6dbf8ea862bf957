#!/usr/bin/env bash
# `make fuzz`: runs every fuzz target for FUZZ_SECONDS (default 60) each, with libFuzzer through
# cargo-fuzz on the nightly toolchain (installed here: `cargo install cargo-fuzz` if missing).
# Afterwards the corpus is minimized in place, and any crash libFuzzer found is copied into
# fuzz/regressions/TARGET/ — check both in: `make test` replays them on stable.
# Prints how many inputs each target ran, and exits non-zero if any target crashed.
set -uo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-60}
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: SKIPPED: the nightly toolchain is not installed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked || exit 1
fi
status=0
total=0
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target" "regressions/$target"
  log=$(mktemp)
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" 2>&1 | tee "$log" | grep -E '^#[0-9]+.*(NEW|DONE)|ERROR|panicked' | tail -3
  runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' || echo 0)
  if grep -q 'ERROR: libFuzzer\|panicked' "$log"; then
    status=1
    for crash in artifacts/"$target"/*; do
      [ -f "$crash" ] && cp "$crash" "regressions/$target/" && echo "fuzz: $target crashed: kept $crash in regressions/$target/"
    done
  fi
  rm -f "$log"
  echo "fuzz: $target: $runs inputs in ${seconds}s"
  total=$((total + runs))
  cargo +nightly fuzz cmin "$target" >/dev/null 2>&1 || true
done
echo "fuzz: $total inputs in all"
exit $status

#!/usr/bin/env bash
# Runs inside a private network namespace (`unshare -n`): scales a reuseport cluster from 4
# workers down to 1 under load, with net.ipv4.tcp_migrate_req set to $1, and prints the
# load's JSON report. The host's own sysctl is never touched: this namespace has its own.
# Usage: reuseport-scale-down.sh MIGRATE HERD_BINARY WORKDIR
set -euo pipefail
migrate=$1 herd=$2 dir=$3
ip link set lo up
sysctl -qw net.ipv4.tcp_migrate_req="$migrate"
"$herd" serve --mode reuseport --workers 4 --listen 127.0.0.1:18500 >"$dir/serve.out" 2>"$dir/serve.err" &
primary=$!
trap 'kill -KILL "$primary" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  [ "$(grep -c 'herd: listening' "$dir/serve.err" || true)" -ge 4 ] && break
  sleep 0.05
done
"$herd" load http://127.0.0.1:18500/ --connections 32 --duration 2 --json >"$dir/load.json" &
load=$!
for workers in 3 2 1; do
  sleep 0.4
  kill -TTOU "$primary"
  # Signals of one kind do not queue: wait until this one was handled.
  for _ in $(seq 100); do
    grep -q "herd: scale workers=$workers" "$dir/serve.err" && break
    sleep 0.02
  done
done
wait "$load"
kill -TERM "$primary"
wait "$primary"
trap - EXIT
cat "$dir/load.json"

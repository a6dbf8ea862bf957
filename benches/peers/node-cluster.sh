#!/usr/bin/env bash
# benches/peers/node-cluster.sh: `herd load` against a Node.js `cluster` HTTP server
# (node-cluster.js) with WORKERS workers, under both of Node's scheduling policies:
#   rr    NODE_CLUSTER_SCHED_POLICY=rr, the primary accepts and hands connections round-robin
#         (Node's default; herd's handoff mode)
#   none  NODE_CLUSTER_SCHED_POLICY=none, the workers share the listener and all accept
#         (herd's shared mode)
# Prints one line per load run. Skips (status 0) if node is not installed.
#
# Settings: WORKERS (4), DURATION (3 s per run), LOADS, HERD; see lib.sh. NODE picks the node
# binary; POLICIES picks a subset, e.g. POLICIES=rr.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODE=${NODE:-$(command -v node || command -v nodejs || echo node)}
if ! command -v "$NODE" >/dev/null; then
    skip node "Install it with 'apt-get install -y nodejs' (Debian), or from https://nodejs.org."
fi
POLICIES=${POLICIES:-rr none}

peers_init
echo "# node $("$NODE" --version) cluster, $WORKERS workers, ${DURATION}s per run, $(date -u +%FT%TZ)"
print_header

for policy in $POLICIES; do
    case $policy in
    rr | none) ;;
    *)
        echo "unknown policy $policy (known: rr none)" >&2
        exit 2
        ;;
    esac
    port=$(free_port)
    log=$PEERS_TMP/node-$policy.log
    start_server "$log" env NODE_CLUSTER_SCHED_POLICY="$policy" WORKERS="$WORKERS" PORT="$port" \
        "$NODE" "$PEERS_DIR/node-cluster.js"
    wait_ready "http://127.0.0.1:$port/" "$log" '^ready'
    ids=$(seq -s ' ' 0 $((WORKERS - 1)))
    measure_loads node "cluster-$policy" "http://127.0.0.1:$port/" "$ids"
    stop_server
done

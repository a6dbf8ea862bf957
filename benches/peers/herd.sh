#!/usr/bin/env bash
# benches/peers/herd.sh: `herd load` against `herd serve` itself, in the modes that compare with
# the peers: reuseport (nginx `listen ... reuseport`), handoff (Node cluster, SCHED_RR) and
# shared with epoll-rotate (nginx/Node SCHED_NONE, one listener), each with and without
# TCP_DEFER_ACCEPT. Prints one line per load run, like node-cluster.sh and nginx.sh.
#
# Settings: WORKERS (4), DURATION (3 s per run), LOADS, HERD; see lib.sh. VARIANTS picks a
# subset, e.g. VARIANTS="reuseport handoff".
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_VARIANTS="reuseport reuseport+defer handoff handoff+defer shared-rotate shared-rotate+defer shared-balance handoff-least-loaded"
VARIANTS=${VARIANTS:-$ALL_VARIANTS}

peers_init
echo "# herd serve $("$HERD" --version 2>/dev/null || echo "($HERD)"), $WORKERS workers, ${DURATION}s per run, $(date -u +%FT%TZ)"
print_header

for variant in $VARIANTS; do
    args=()
    case ${variant%+defer} in
    reuseport) args=(--mode reuseport) ;;
    handoff) args=(--mode handoff) ;;
    shared-rotate) args=(--mode shared --accept epoll-rotate) ;;
    shared-balance) args=(--mode shared --accept epoll-balance) ;;
    handoff-least-loaded) args=(--mode handoff --handoff-policy least-loaded) ;;
    *)
        echo "unknown variant $variant (known: $ALL_VARIANTS)" >&2
        exit 2
        ;;
    esac
    [[ $variant == *+defer ]] && args+=(--defer-accept)
    port=$(free_port)
    start_server "$PEERS_TMP/herd-$variant.log" "$HERD" serve "${args[@]}" --workers "$WORKERS" \
        --listen "127.0.0.1:$port" --shutdown-timeout 2 --quiet
    wait_ready "http://127.0.0.1:$port/" "$PEERS_TMP/herd-$variant.log"
    ids=$(seq -s ' ' 0 $((WORKERS - 1)))
    measure_loads herd "$variant" "http://127.0.0.1:$port/" "$ids"
    stop_server
done

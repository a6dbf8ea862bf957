#!/usr/bin/env bash
# benches/peers/costs.sh: where a server's time goes per request. For each target, three
# bounded `herd load` runs against one server instance:
#   1. untraced, DURATION s: the server's user and kernel CPU per request (utime and stime from
#      /proc/PID/stat of the primary and workers, separately);
#   2. if perf is installed (PERF=1, the default then): `perf record` on the workers for 2 s in
#      the middle of a run, printing the user/kernel split of the samples and the top user-space
#      symbols;
#   3. `strace -c -f` attached to the primary and workers for REQUESTS requests: system calls
#      (and failed ones) per request. strace slows the server a lot: counts, not speed.
# Default: herd serve --mode reuseport against nginx `listen ... reuseport`, WORKERS workers
# each, churn at 64 connections. Skips (status 0) if strace is not installed; a peer that is not
# installed is skipped.
#
# Settings: TARGETS (default "herd-reuseport nginx-reuseport"; also herd-handoff,
# herd-shared-rotate, herd-reuseport+defer, nginx-accept_mutex-off, nginx-reuseport+deferred,
# node-rr, node-none), MODE (churn), CONNS (64), REQUESTS (20000), PERF (1 if perf is
# installed), WORKERS (4), DURATION (3), HERD; see lib.sh.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command -v strace >/dev/null || skip strace "Install it with 'apt-get install -y strace'."
TARGETS=${TARGETS:-herd-reuseport nginx-reuseport}
MODE=${MODE:-churn}
CONNS=${CONNS:-64}
REQUESTS=${REQUESTS:-20000}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}
NODE=${NODE:-$(command -v node || command -v nodejs || echo node)}
if command -v perf >/dev/null && perf --version >/dev/null 2>&1; then PERF=${PERF:-1}; else PERF=0; fi

STRACE_PID=""
LOAD_PID=""
peers_init
trap 'stop_strace; stop_load; peers_cleanup' EXIT

stop_load() {
    if [[ -n $LOAD_PID ]]; then
        kill -TERM "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
}

stop_strace() {
    if [[ -n $STRACE_PID ]]; then
        kill -INT "$STRACE_PID" 2>/dev/null || true
        wait "$STRACE_PID" 2>/dev/null || true
        STRACE_PID=""
    fi
}

nginx_conf() { # FILE PORT LISTEN_FLAGS
    cat >"$1" <<CONF
worker_processes $WORKERS;
daemon off;
pid $PEERS_TMP/nginx.pid;
error_log $PEERS_TMP/error.log warn;
events { worker_connections 4096; accept_mutex off; }
http {
    access_log off;
    client_body_temp_path $PEERS_TMP/client_body;
    keepalive_requests 100000000;
    server {
        listen 127.0.0.1:$2$3;
        location / { default_type text/plain; return 200 "worker \$pid\n"; }
    }
}
CONF
}

cpu_split() { # "utime stime" summed over the given pids, in clock ticks
    local u=0 s=0 p line rest
    for p in "$@"; do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${line##*) }
        read -r -a f <<<"$rest"
        u=$((u + f[11]))
        s=$((s + f[12]))
    done
    echo "$u $s"
}

echo "# per-request costs: $MODE, $CONNS connections, $WORKERS workers, ${DURATION}s untraced, $REQUESTS requests under strace, $(date -u +%FT%TZ)"
for target in $TARGETS; do
    port=$(free_port)
    log=$PEERS_TMP/$target.log
    pattern=""
    case $target in
    herd-*)
        variant=${target#herd-}
        args=()
        case ${variant%+defer} in
        reuseport) args=(--mode reuseport) ;;
        handoff) args=(--mode handoff) ;;
        shared-rotate) args=(--mode shared --accept epoll-rotate) ;;
        *) echo "unknown target $target" >&2 && exit 2 ;;
        esac
        [[ $variant == *+defer ]] && args+=(--defer-accept)
        start_server "$log" "$HERD" serve "${args[@]}" --workers "$WORKERS" \
            --listen "127.0.0.1:$port" --shutdown-timeout 2 --quiet
        ;;
    nginx-*)
        if [[ ! -x $NGINX ]]; then
            echo "SKIP $target: nginx not installed ('apt-get install -y nginx')" >&2
            continue
        fi
        case $target in
        nginx-reuseport) flags=" reuseport" ;;
        nginx-reuseport+deferred) flags=" reuseport deferred" ;;
        nginx-accept_mutex-off) flags="" ;;
        *) echo "unknown target $target" >&2 && exit 2 ;;
        esac
        nginx_conf "$PEERS_TMP/$target.conf" "$port" "$flags"
        start_server "$log" "$NGINX" -p "$PEERS_TMP" -e "$PEERS_TMP/error.log" -c "$PEERS_TMP/$target.conf"
        ;;
    node-rr | node-none)
        if ! command -v "$NODE" >/dev/null; then
            echo "SKIP $target: node not installed ('apt-get install -y nodejs')" >&2
            continue
        fi
        start_server "$log" env NODE_CLUSTER_SCHED_POLICY="${target#node-}" WORKERS="$WORKERS" \
            PORT="$port" "$NODE" "$PEERS_DIR/node-cluster.js"
        pattern='^ready'
        ;;
    *) echo "unknown target $target" >&2 && exit 2 ;;
    esac
    url=http://127.0.0.1:$port/
    wait_ready "$url" "$log" "$pattern"
    mapfile -t kids < <(children)
    echo
    echo "## $target"

    # 1. user and kernel CPU per request, untraced
    read -r u0 s0 < <(cpu_split "$SERVER_PID" "${kids[@]}")
    json=$("$HERD" load --json --mode "$MODE" -c "$CONNS" -d "$DURATION" "$url") || true
    read -r u1 s1 < <(cpu_split "$SERVER_PID" "${kids[@]}")
    reqs=$(json_field "$json" requests)
    awk -v r="$reqs" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v t="$CLK_TCK" -v rps="$(json_field "$json" rps)" 'BEGIN {
        if (r + 0 == 0) r = 1
        printf "untraced: %.0f req/s; server CPU per request: user %.1f µs + kernel %.1f µs = %.1f µs\n",
            rps, u * 1e6 / t / r, s * 1e6 / t / r, (u + s) * 1e6 / t / r
    }'

    # 2. perf: samples by user/kernel and the top user-space symbols
    if [[ $PERF == 1 ]]; then
        "$HERD" load --json --mode "$MODE" -c "$CONNS" -d 4 "$url" >/dev/null &
        LOAD_PID=$!
        sleep 1
        perf record -q -F 999 -g -o "$PEERS_TMP/$target.perf" -p "$(IFS=,; echo "${kids[*]}")" -- sleep 2 \
            >"$PEERS_TMP/$target.perf-log" 2>&1 || true
        wait "$LOAD_PID" || true
        LOAD_PID=""
        if [[ -s $PEERS_TMP/$target.perf ]]; then
            echo "perf samples of the workers by object (top 4), then the top user-space symbols:"
            perf report -i "$PEERS_TMP/$target.perf" --no-children --sort dso --stdio -g none 2>/dev/null |
                grep '%' | head -4 | sed 's/^ */  /'
            perf report -i "$PEERS_TMP/$target.perf" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
                grep '\[\.\]' | head -"${TOP:-8}" | sed 's/^ */  /'
        else
            echo "perf record gave no samples: $(head -c 300 "$PEERS_TMP/$target.perf-log")"
        fi
    fi

    # 3. strace: system calls per request
    pids=(-p "$SERVER_PID")
    for k in "${kids[@]}"; do pids+=(-p "$k"); done
    out=$PEERS_TMP/$target.strace
    strace -c -f -S calls -o "$out" "${pids[@]}" 2>"$PEERS_TMP/$target.strace-log" &
    STRACE_PID=$!
    sleep 1 # let strace attach to every thread
    json=$("$HERD" load --json --mode "$MODE" -c "$CONNS" -n "$REQUESTS" -d 60 "http://127.0.0.1:$port/") || true
    sleep 0.2
    stop_strace
    stop_server
    reqs=$(json_field "$json" requests)
    echo "strace: $reqs requests ($(json_errors "$json") errors) at $(json_field "$json" rps) req/s under strace"
    printf '%-20s %12s %12s\n' syscall calls/request errors/request
    awk -v r="$reqs" '
        /^-+/ { n++; next }
        n == 1 && NF >= 5 {
            name = $NF; calls = $4; errs = (NF == 6) ? $5 : 0
            printf "%-20s %12.3f %12.3f\n", name, calls / r, errs / r
        }
        n == 2 && $NF == "total" { printf "%-20s %12.3f %12.3f\n", "TOTAL", $4 / r, ((NF == 6) ? $5 : 0) / r }
    ' "$out"
done

# shellcheck shell=bash
# benches/peers/lib.sh: shared by the peer scripts (node-cluster.sh, nginx.sh, herd.sh,
# costs.sh, syscalls.sh). Sourced, not run.
#
# What it gives a script:
#   peers_init                   private temp dir + an EXIT trap that stops what we started
#   free_port                    a free TCP port on 127.0.0.1, below the ephemeral range
#   start_server LOG CMD...      start CMD in the background (it must stay in the foreground)
#   wait_ready URL [LOG PATTERN] wait until WORKERS children exist and URL answers
#   measure_loads SERVER VARIANT URL IDS
#                                one `herd load` per entry of $LOADS, one summary line each
#   stop_server                  SIGTERM the server by pid, then SIGKILL anything left
#
# Settings (environment): WORKERS (default 4), DURATION seconds per load run (default 3),
# LOADS (default "churn:1 churn:64 keepalive:1 keepalive:64": mode:connections; the mode may
# also be skewed — churn with 2% of requests GET /block/20 — or stall — churn with one worker
# blocked 1 s, GET /block/1000, half a second in: the server must answer /block/MS),
# HERD (the herd binary; default target/release/herd of this repository).

PEERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PEERS_DIR/../.." && pwd)
HERD=${HERD:-$REPO_DIR/target/release/herd}
WORKERS=${WORKERS:-4}
DURATION=${DURATION:-3}
LOADS=${LOADS:-churn:1 churn:64 keepalive:1 keepalive:64}
CLK_TCK=$(getconf CLK_TCK)

PEERS_TMP=""
SERVER_PID=""
# "pid:starttime" of every process of the current server we have seen, so cleanup kills only
# those very processes (a pid could have been reused by then; the start time tells).
TRACKED=()

peers_init() {
    if [[ ! -x $HERD ]]; then
        echo "herd binary not found at $HERD: run 'cargo build --release' in $REPO_DIR first" >&2
        exit 1
    fi
    PEERS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/herd-peers.XXXXXX")
    trap peers_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

peers_cleanup() {
    stop_server
    if [[ -n $PEERS_TMP && -d $PEERS_TMP ]]; then
        rm -rf -- "$PEERS_TMP"
    fi
}

# skip NAME HOW: the peer is not installed; say how to get it and leave with status 0.
skip() {
    echo "SKIP $1: not installed. $2"
    exit 0
}

free_port() {
    local lo used port
    read -r lo _ </proc/sys/net/ipv4/ip_local_port_range
    used=$(ss -Htan 2>/dev/null | awk '{ n = split($4, a, ":"); print a[n] }' | sort -u || true)
    for _ in $(seq 200); do
        port=$((10000 + RANDOM % (lo - 10000)))
        if ! grep -qx "$port" <<<"$used"; then
            echo "$port"
            return 0
        fi
    done
    echo "no free port found" >&2
    return 1
}

starttime() { # field 22 of /proc/PID/stat, empty if the process is gone
    local line rest
    line=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${line##*) }
    read -r -a f <<<"$rest"
    echo "${f[19]}"
}

track() {
    local p st
    for p in "$@"; do
        st=$(starttime "$p")
        [[ -n $st ]] && TRACKED+=("$p:$st")
    done
    return 0
}

start_server() {
    local log=$1
    shift
    "$@" >"$log" 2>&1 &
    SERVER_PID=$!
    TRACKED=()
    track "$SERVER_PID"
}

children() { pgrep -P "$SERVER_PID" | sort -n || true; }

# wait_ready URL [LOG PATTERN]: up to 15 s for WORKERS children, PATTERN in LOG, an answer.
wait_ready() {
    local url=$1 log=${2:-} pattern=${3:-} kids
    for _ in $(seq 150); do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server exited during start-up; its log:" >&2
            [[ -n $log ]] && cat "$log" >&2
            return 1
        fi
        kids=$(children | wc -l)
        if ((kids >= WORKERS)) && { [[ -z $pattern ]] || grep -q "$pattern" "$log"; } &&
            "$HERD" load -n 1 -c 1 --timeout 500 --json "$url" >/dev/null 2>&1; then
            # shellcheck disable=SC2046 # one pid per word
            track $(children)
            sleep 0.3
            return 0
        fi
        sleep 0.1
    done
    echo "server did not become ready in 15 s; its log:" >&2
    [[ -n $log ]] && cat "$log" >&2
    return 1
}

stop_server() {
    local entry p st
    if [[ -n $SERVER_PID ]]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
    # Workers normally leave with their primary; anything of ours that did not is killed.
    for entry in "${TRACKED[@]}"; do
        p=${entry%%:*}
        st=$(starttime "$p")
        if [[ -n $st && $entry == "$p:$st" ]]; then
            kill -KILL "$p" 2>/dev/null || true
        fi
    done
    TRACKED=()
}

cpu_ticks() { # utime + stime (all threads) summed over the given pids, in clock ticks
    local total=0 p line rest
    for p in "$@"; do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        rest=${line##*) }
        read -r -a f <<<"$rest"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

vcsw() { # voluntary context switches summed over every thread of the given pids
    local p
    for p in "$@"; do
        cat "/proc/$p/task/"*/status 2>/dev/null || true
    done | awk '/^voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'
}

# json_field JSON KEY: a number from herd load's flat JSON ("null" stays "null").
json_field() {
    local re="\"$2\":(-?[0-9.eE+]+|null)"
    if [[ $1 =~ $re ]]; then echo "${BASH_REMATCH[1]}"; else echo "na"; fi
}

json_errors() {
    local re='"errors":\{([^}]*)\}'
    [[ $1 =~ $re ]] || { echo na; return; }
    tr ',' '\n' <<<"${BASH_REMATCH[1]}" | awk -F: '{ s += $2 } END { print s + 0 }'
}

# jain_of JSON IDS...: Jain's index over per_worker[id] for the given ids (0..N-1 for
# servers that answer `worker <index>`, the worker pids for nginx, which answers `worker <pid>`).
jain_of() {
    local json=$1 key=${JAIN_KEY:-per_worker}
    local re="\"$key\":\\[([^]]*)\\]"
    shift
    [[ $json =~ $re ]] || { echo na; return; }
    awk -v counts="${BASH_REMATCH[1]}" -v ids="$*" 'BEGIN {
        n = split(counts, c, ","); k = split(ids, w, " ")
        for (i = 1; i <= k; i++) { x = (w[i] + 1 <= n) ? c[w[i] + 1] : 0; s += x; q += x * x }
        if (q == 0) print "na"; else printf "%.3f", s * s / (k * q)
    }'
}

print_header() {
    printf '%-6s %-22s %-9s %3s %8s %7s %7s %11s %9s %9s %6s %6s %6s %8s %6s\n' \
        server variant load c req/s p50_us p99_us cpu_us/req wcsw/req pcsw/req jain errors \
        cjain fast99 waited
}

# measure_loads SERVER VARIANT URL IDS: for every mode:connections in $LOADS, run herd load
# against URL and print one line: throughput, latency, the server's CPU per request (primary +
# workers), the workers' and the primary's voluntary context switches per request, Jain's
# index over IDS, errors; then Jain over connections (keep-alive), the fast requests' p99
# (skewed, stall) and how many waited behind the stalled worker (stall), or na.
measure_loads() {
    local server=$1 variant=$2 url=$3 ids=$4 spec mode conns workers_flag=()
    local -a kids
    mapfile -t kids < <(children)
    [[ $server != nginx ]] && workers_flag=(--workers "$WORKERS")
    for spec in $LOADS; do
        mode=${spec%%:*}
        conns=${spec##*:}
        local -a extra=()
        local load_mode=$mode
        case $mode in
        skewed) load_mode=churn extra=(--slow-fraction 0.02 --slow-ms 20) ;;
        stall) load_mode=churn extra=(--stall-ms 1000 --stall-after 0.5) ;;
        esac
        local c0 w0 p0 c1 w1 p1 json reqs
        c0=$(cpu_ticks "$SERVER_PID" "${kids[@]}")
        w0=$(vcsw "${kids[@]}")
        p0=$(vcsw "$SERVER_PID")
        json=$("$HERD" load --json --mode "$load_mode" -c "$conns" -d "$DURATION" \
            "${workers_flag[@]}" "${extra[@]}" "$url") || true
        c1=$(cpu_ticks "$SERVER_PID" "${kids[@]}")
        w1=$(vcsw "${kids[@]}")
        p1=$(vcsw "$SERVER_PID")
        reqs=$(json_field "$json" requests)
        [[ $reqs =~ ^[0-9]+$ ]] || reqs=0
        # shellcheck disable=SC2086 # ids is a list
        awk -v s="$server" -v v="$variant" -v m="$mode" -v c="$conns" -v r="$reqs" \
            -v rps="$(json_field "$json" rps)" -v p50="$(json_field "$json" p50_us)" \
            -v p99="$(json_field "$json" p99_us)" -v cpu=$((c1 - c0)) -v tck="$CLK_TCK" \
            -v wc=$((w1 - w0)) -v pc=$((p1 - p0)) -v j="$(jain_of "$json" $ids)" \
            -v e="$(json_errors "$json")" -v cj="$(JAIN_KEY=per_worker_connections jain_of "$json" $ids)" \
            -v f99="$(json_field "$json" fast_p99_us)" -v wt="$(json_field "$json" waited)" 'BEGIN {
            d = (r > 0) ? r : 1
            if (m != "keepalive") cj = "na"
            if (m != "skewed" && m != "stall") f99 = "na"
            if (m != "stall") wt = "na"
            printf "%-6s %-22s %-9s %3s %8.0f %7s %7s %11.1f %9.2f %9.2f %6s %6s %6s %8s %6s\n",
                s, v, m, c, rps, p50, p99, cpu * 1e6 / tck / d, wc / d, pc / d, j, e, cj, f99, wt
        }'
        sleep 0.5
    done
}

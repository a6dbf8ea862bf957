#!/usr/bin/env bash
# benches/peers/run-all.sh: run node-cluster.sh, nginx.sh and herd.sh in sequence (then
# costs.sh), REPEAT times, each script under the machine's measurement lock, print every
# line, and with REPEAT > 1 a Markdown table of medians with their ranges plus the verdict on
# the target "herd reuseport >= 0.9x nginx reuseport req/s (churn) at no more CPU/request".
#
# Settings: REPEAT (1), LOCK (/tmp/herd-measure.lock; empty to run without the lock; do not
# wrap this script itself in flock on the same file, it takes the lock per script),
# SCRIPTS ("node-cluster.sh nginx.sh herd.sh"), COSTS (1: run costs.sh once at the end;
# 0: don't), OUT (a file to append the raw lines to), plus WORKERS, DURATION, LOADS, HERD
# (lib.sh).
set -euo pipefail
DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPEAT=${REPEAT:-1}
LOCK=${LOCK-/tmp/herd-measure.lock}
SCRIPTS=${SCRIPTS:-node-cluster.sh nginx.sh herd.sh}
COSTS=${COSTS:-1}
OUT=${OUT:-}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/herd-peers-all.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
raw=$tmp/raw
: >"$raw"

locked() {
    if [[ -n $LOCK ]]; then flock "$LOCK" "$@"; else "$@"; fi
}

echo "# herd peers on $(uname -srm), $(nproc) cores, $(date -u +%FT%TZ)"
for rep in $(seq "$REPEAT"); do
    for script in $SCRIPTS; do
        echo
        echo "### $script, run $rep of $REPEAT (load average $(cut -d' ' -f1-3 /proc/loadavg))"
        locked "$DIR/$script" | tee -a "$raw"
    done
done
[[ -n $OUT ]] && cat "$raw" >>"$OUT"

if ((REPEAT > 1)); then
    echo
    echo "## Medians of $REPEAT runs (min-max)"
    echo
    awk '
    function med(key, col,    n, i, j, v, t, a) {
        n = cnt[key]
        for (i = 1; i <= n; i++) a[i] = val[key, i, col]
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        lo[col] = a[1]; hi[col] = a[n]
        return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function cell(key, col, fmt,    m) {
        m = med(key, col)
        if (m == "na") return "n/a"
        return sprintf(fmt " (" fmt "-" fmt ")", m, lo[col], hi[col])
    }
    $1 ~ /^(node|nginx|herd)$/ && NF >= 12 {
        key = $1 "|" $2 "|" $3 "|" $4
        if (!(key in cnt)) order[++keys] = key
        n = ++cnt[key]
        for (c = 5; c <= 12; c++) val[key, n, c] = $c
    }
    END {
        print "| server | variant | load | c | req/s | p50 µs | p99 µs | server CPU µs/req | worker csw/req | primary csw/req | Jain | errors |"
        print "|---|---|---|---|---|---|---|---|---|---|---|---|"
        for (k = 1; k <= keys; k++) {
            key = order[k]; split(key, f, "|")
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", f[1], f[2], f[3], f[4],
                cell(key, 5, "%.0f"), cell(key, 6, "%.0f"), cell(key, 7, "%.0f"), cell(key, 8, "%.1f"),
                cell(key, 9, "%.2f"), cell(key, 10, "%.2f"), cell(key, 11, "%.3f"), cell(key, 12, "%.0f")
            rps[key] = med(key, 5); cpu[key] = med(key, 8)
        }
        print ""
        print "## Target: herd reuseport >= 0.9x nginx reuseport req/s (churn), at no more server CPU per request"
        print ""
        for (k = 1; k <= keys; k++) {
            key = order[k]; split(key, f, "|")
            if (f[1] != "herd" || f[2] != "reuseport" || f[3] != "churn") continue
            other = "nginx|reuseport|churn|" f[4]
            if (!(other in rps)) continue
            ratio = rps[key] / rps[other]
            met = (ratio >= 0.9 && cpu[key] <= cpu[other]) ? "MET" : "NOT MET"
            printf "- churn c=%s: herd %.0f req/s vs nginx %.0f req/s = %.2fx; CPU %.1f vs %.1f µs/request: %s\n",
                f[4], rps[key], rps[other], ratio, cpu[key], cpu[other], met
        }
    }' "$raw"
fi

if [[ $COSTS == 1 ]]; then
    echo
    echo "### costs.sh"
    locked "$DIR/costs.sh"
fi

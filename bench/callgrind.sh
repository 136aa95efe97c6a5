#!/usr/bin/env bash
# Instructions the gateway executes per gRPC call, counted by callgrind: a no-op health `Check`
# (the gRPC stack's floor) and a point select through `pgway.v1.Database/Query`, at each
# concurrency of CALLGRIND_CONCURRENCY. Instruction counts don't depend on what else the machine
# is doing, so unlike CPU seconds they compare across runs on a noisy machine. (They do depend on
# timing a little: under valgrind the gateway runs its threads one at a time and ~50x slower, so
# at 100 callers its HTTP/2 reads batch differently from a native run.)
#
#   bench/callgrind.sh postgres://postgres@127.0.0.1:5432/postgres   # a database with pgbench's tables
#
# It starts target/release/pgway under `valgrind --tool=callgrind` with instrumentation off,
# warms each workload up, then counts only the window of one `pgway-bench run`: instrumentation
# on, the run, instrumentation off, a dump. The calls in the window are read from the gateway's
# own `pgway_requests_total`, so the connection set-up of the run is the only thing counted
# besides the calls (a few dozen calls' worth, spread over thousands).
#
# Settings (environment):
#   CALLGRIND_CONCURRENCY="1 100"   callers of each workload
#   CALLGRIND_DURATION=15s          each counted run (valgrind runs the gateway ~50x slower)
#   SCALE=1                         the pgbench scale of the database's tables (the aids drawn)
#   JSON_OUT=file                   append one JSON line per count ("label":"instructions")
#   KEEP=dir                        keep the callgrind.out files there (for callgrind_annotate)
#   PGWAY=target/release/pgway BENCH=target/release/pgway-bench
#   CALLGRIND_LOG=warn              the gateway's PGWAY_LOG (`info`, the default, logs every call)
#   CALLGRIND_LOG_FORMAT=text       its PGWAY_LOG_FORMAT (`json` is what a deployment reads)
#
# A benchmark, not a test: it asserts nothing about the counts.
set -euo pipefail
shopt -s nullglob

# Paths given relative to where the script was started from, before it moves to the repository.
absolute() { case $1 in '' | /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
KEEP=$(absolute "${KEEP:-}")
JSON_OUT=$(absolute "${JSON_OUT:-}")
[ -z "${PGWAY:-}" ] || PGWAY=$(absolute "$PGWAY")
[ -z "${BENCH:-}" ] || BENCH=$(absolute "$BENCH")
cd "$(dirname "$0")/.."
ROOT=$PWD
PG_URL=${1:?usage: bench/callgrind.sh POSTGRES_URL}
CONCURRENCY=${CALLGRIND_CONCURRENCY:-1 100}
DURATION=${CALLGRIND_DURATION:-15s}
SCALE=${SCALE:-1}
PGWAY=${PGWAY:-$ROOT/target/release/pgway}
BENCH=${BENCH:-$ROOT/target/release/pgway-bench}

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/gateway.sh
. "$ROOT/bench/gateway.sh"
die() {
    log "error: $*"
    exit 1
}
command -v valgrind >/dev/null || die "valgrind is not installed (apt-get install valgrind)"
command -v callgrind_control >/dev/null || die "callgrind_control is missing (part of valgrind)"
[ -x "$PGWAY" ] && [ -x "$BENCH" ] || die "$PGWAY and $BENCH are not built"

WORK=$(mktemp -d /tmp/pgway-callgrind.XXXXXX)
VG_PID=
cleanup() {
    local status=$?
    set +e
    if [ -n "$VG_PID" ] && kill -0 "$VG_PID" 2>/dev/null; then
        kill -TERM "$VG_PID"
        for _ in $(seq 100); do
            kill -0 "$VG_PID" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$VG_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

GW_PORT=$("$BENCH" free-port)
METRICS_PORT=$("$BENCH" free-port)
# The pool of compare.sh's gateway (20): at 100 callers most wait for a connection, as there.
PGWAY_DATABASE_URL=$PG_URL \
    PGWAY_PG_ADDR='' \
    PGWAY_AUTH=none \
    PGWAY_GRPC_ADDR=127.0.0.1:$GW_PORT \
    PGWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT \
    PGWAY_POOL_MAX=20 \
    PGWAY_MAX_WAITING=4096 \
    PGWAY_LOG="${CALLGRIND_LOG:-warn}" \
    PGWAY_LOG_FORMAT="${CALLGRIND_LOG_FORMAT:-text}" \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$PGWAY" serve >"$WORK/gateway.log" 2>&1 &
VG_PID=$!
# Under valgrind the gateway starts ~50x slower: up to a minute.
wait_for_gateway "$PGWAY" "127.0.0.1:$GW_PORT" "$VG_PID" 300 ||
    { cat "$WORK/gateway.log" >&2; die "the gateway did not become ready under valgrind"; }
log "gateway under callgrind on 127.0.0.1:$GW_PORT (pid $VG_PID)"

# The gateway's count of finished calls of one method with status OK, from its /metrics (over
# bash's /dev/tcp, so the script needs no HTTP client).
served() {
    local method=$1
    {
        exec 3<>"/dev/tcp/127.0.0.1/$METRICS_PORT"
        printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
        cat <&3
        exec 3<&-
    } | awk -v m="method=\"$method\"" '/^pgway_requests_total\{/ && index($0, m) && index($0, "code=\"OK\"") { n += $NF } END { printf "%.0f\n", n }'
}

run() {
    "$BENCH" run --target gateway --url "http://127.0.0.1:$GW_PORT" --callers-per-channel 0 \
        --scale "$SCALE" "$@" >/dev/null
}

# Sends one command to the callgrind in the gateway; callgrind_control exits 0 even when it
# found no such process, so its answer is checked.
control() {
    local answer
    answer=$(callgrind_control "$@" "$VG_PID" 2>&1) || die "callgrind_control $*: $answer"
    case $answer in *OK*) ;; *) die "callgrind_control $*: $answer" ;; esac
}

# The instructions of the one dump in $WORK, as the decimal string callgrind wrote (awk's
# numbers lose digits past 2^53 and some awks print large ones in exponent form).
dumped_instructions() {
    local dumps=("$WORK"/callgrind.out.*.*)
    [ "${#dumps[@]}" = 1 ] || die "expected one callgrind dump, found ${#dumps[@]}"
    awk '/^totals:/ { t = $2 } END { if (t == "") exit 1; print t }' "${dumps[0]}" ||
        die "no totals line in ${dumps[0]}"
}

for workload in ping select; do
    case $workload in
        ping) method=Check ;;
        select) method=Query ;;
    esac
    for c in $CONCURRENCY; do
        # Warm: connections in the pool, statements prepared, allocator arenas grown.
        run --label warmup --workload "$workload" -c "$c" --warmup 0s --duration 3s
        before=$(served "$method")
        rm -f "$WORK"/callgrind.out.*.*
        control --zero
        control --instr=on
        run --label counted --workload "$workload" -c "$c" --warmup 0s --duration "$DURATION"
        control --instr=off
        control --dump="$workload-$c"
        after=$(served "$method")
        calls=$((after - before))
        instructions=$(dumped_instructions)
        [ "$calls" -gt 0 ] || die "no $method calls were counted at $c callers"
        [ "$instructions" -gt 0 ] || die "callgrind counted no instructions at $c callers"
        per_call=$((instructions / calls))
        log "$workload at $c callers: $calls calls, $per_call instructions per call"
        if [ -n "$KEEP" ]; then
            dumps=("$WORK"/callgrind.out.*.*)
            mkdir -p "$KEEP" && cp "${dumps[0]}" "$KEEP/callgrind.$workload-$c"
        fi
        line=$(printf '{"tool":"callgrind","label":"instructions","target":"gateway","workload":"%s","concurrency":%s,"ok":%s,"instructions":%s,"instructions_per_call":%s}' \
            "$workload" "$c" "$calls" "$instructions" "$per_call")
        echo "$line"
        [ -z "$JSON_OUT" ] || echo "$line" >>"$JSON_OUT"
    done
done

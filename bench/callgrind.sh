#!/usr/bin/env bash
# Instructions the gateway executes per gRPC call, counted by callgrind: a no-op health `Check`
# (the gRPC stack's floor) and a point select through `pgway.v1.Database/Query`, at each
# concurrency of CALLGRIND_CONCURRENCY. Instruction counts don't depend on what else the machine
# is doing, so unlike CPU seconds they compare across runs on a noisy machine.
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
#
# A benchmark, not a test: it asserts nothing about the counts.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PG_URL=${1:?usage: bench/callgrind.sh POSTGRES_URL}
CONCURRENCY=${CALLGRIND_CONCURRENCY:-1 100}
DURATION=${CALLGRIND_DURATION:-15s}
SCALE=${SCALE:-1}
PGWAY=${PGWAY:-$ROOT/target/release/pgway}
BENCH=${BENCH:-$ROOT/target/release/pgway-bench}
JSON_OUT=${JSON_OUT:-}

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
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
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP" && cp "$WORK"/callgrind.out.* "$KEEP"/ 2>/dev/null
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT

GW_PORT=$("$BENCH" free-port)
METRICS_PORT=$("$BENCH" free-port)
# One pool connection per caller at most: the count is of the gateway's work, not its waiting.
PGWAY_DATABASE_URL=$PG_URL \
    PGWAY_PG_ADDR='' \
    PGWAY_AUTH=none \
    PGWAY_GRPC_ADDR=127.0.0.1:$GW_PORT \
    PGWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT \
    PGWAY_POOL_MAX=20 \
    PGWAY_MAX_WAITING=4096 \
    PGWAY_LOG=warn \
    PGWAY_LOG_FORMAT=text \
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out.%p" \
    "$PGWAY" serve >"$WORK/gateway.log" 2>&1 &
VG_PID=$!
ready=0
for _ in $(seq 300); do
    if "$PGWAY" probe -addr="127.0.0.1:$GW_PORT" -service=pgway.v1.Database >/dev/null 2>&1; then
        ready=1
        break
    fi
    kill -0 "$VG_PID" 2>/dev/null || break
    sleep 0.2
done
[ "$ready" = 1 ] || { cat "$WORK/gateway.log" >&2; die "the gateway did not become ready under valgrind"; }
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
    } | awk -v m="method=\"$method\"" '/^pgway_requests_total\{/ && index($0, m) && index($0, "code=\"OK\"") { n += $NF } END { printf "%d\n", n }'
}

run() {
    "$BENCH" run --target gateway --url "http://127.0.0.1:$GW_PORT" --callers-per-channel 0 \
        --scale "$SCALE" "$@" >/dev/null
}

# The total of the last dump's instructions.
dumped_instructions() {
    local file
    file=$(ls -t "$WORK"/callgrind.out.* | head -n 1)
    awk '/^totals:/ { t = $2 } END { print t + 0 }' "$file"
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
        rm -f "$WORK"/callgrind.out.*
        callgrind_control --zero "$VG_PID" >/dev/null 2>&1
        callgrind_control --instr=on "$VG_PID" >/dev/null 2>&1
        run --label counted --workload "$workload" -c "$c" --warmup 0s --duration "$DURATION"
        callgrind_control --instr=off "$VG_PID" >/dev/null 2>&1
        callgrind_control --dump="$workload-$c" "$VG_PID" >/dev/null 2>&1
        after=$(served "$method")
        calls=$((after - before))
        instructions=$(dumped_instructions)
        [ "$calls" -gt 0 ] || die "no $method calls were counted at $c callers"
        per_call=$((instructions / calls))
        log "$workload at $c callers: $calls calls, $per_call instructions per call"
        [ -z "${KEEP:-}" ] || { mkdir -p "$KEEP" && cp "$(ls -t "$WORK"/callgrind.out.* | head -n 1)" "$KEEP/callgrind.$workload-$c"; }
        line=$(printf '{"tool":"callgrind","label":"instructions","target":"gateway","workload":"%s","concurrency":%s,"ok":%s,"instructions":%s,"instructions_per_call":%s}' \
            "$workload" "$c" "$calls" "$instructions" "$per_call")
        echo "$line"
        [ -z "$JSON_OUT" ] || echo "$line" >>"$JSON_OUT"
    done
done

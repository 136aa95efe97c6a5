# shellcheck shell=bash
# Stage dockerfile: hadolint passes the Dockerfile with no finding at all.

define_stage dockerfile "hadolint passes the Dockerfile with no finding at all" \
    tools="hadolint"

stage_dockerfile() {
    log "Dockerfile: hadolint"
    if hadolint --failure-threshold style Dockerfile; then
        ok "hadolint Dockerfile: no findings"
    else
        bad "hadolint Dockerfile"
    fi
}

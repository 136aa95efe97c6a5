# shellcheck shell=bash
# Stage settings: every PGWAY_* setting of `pgway serve --help` (from the binary stage's
# binary) reaches the container's environment from chart values (the helm stage's
# renderings): from full.yaml, except PGWAY_AUTH=none, which excludes credentials and comes
# from exec-probes.yaml. See deploy/check/helm_settings.py.

define_stage settings "every PGWAY_* setting of pgway serve --help is reachable from chart values" \
    after="helm binary"

stage_settings() {
    log "chart values: every PGWAY_* setting of pgway serve --help"
    if python3 "$CHECK_DIR/helm_settings.py" "$BINARY" "$WORK/full.yaml" "$WORK/exec.yaml"; then
        ok "every PGWAY_* setting of pgway serve --help is reachable from chart values"
    else
        bad "PGWAY_* settings missing from the chart"
    fi
}

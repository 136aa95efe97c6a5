# shellcheck shell=bash
# Stage quadlet: the Podman Quadlet files (deploy/podman/), with podman's quadlet generator
# when there is one (Podman >= 4.4), and always a check of their keys against Quadlet's list
# and of the stop, health, secret and SELinux settings (deploy/check/quadlet_units.py); the
# SELinux module (deploy/selinux/) compiles and packages.

define_stage quadlet "the Podman Quadlet units (generator or key list, stop/health/secrets); the SELinux module" \
    tools="podman checkmodule semodule_package"

stage_quadlet() {
    local q quadlet=""
    log "Podman Quadlet and SELinux files"
    for q in /usr/libexec/podman/quadlet /usr/lib/podman/quadlet; do [ -x "$q" ] && quadlet=$q && break; done
    if [ -n "$quadlet" ]; then
        if QUADLET_UNIT_DIRS="$ROOT/deploy/podman" "$quadlet" -dryrun >"$WORK/quadlet.out" 2>&1; then
            ok "quadlet -dryrun"
        else
            cat "$WORK/quadlet.out"
            bad "quadlet -dryrun"
        fi
    else
        echo "no quadlet generator here (podman $(podman --version | awk '{print $3}'); Quadlet came with 4.4): checking keys"
    fi
    # Keys against Quadlet's own list (podman 5, pkg/systemd/quadlet), and the timing rules.
    if python3 "$CHECK_DIR/quadlet_units.py" deploy/podman/pgway.container deploy/podman/pgway.network; then
        ok "Quadlet keys, stop/health settings, secrets and published ports"
    else
        bad "Quadlet keys, stop/health settings, secrets and published ports"
    fi
    if checkmodule -M -m -o "$WORK/pgway_pgsocket.mod" deploy/selinux/pgway_pgsocket.te >/dev/null &&
        semodule_package -o "$WORK/pgway_pgsocket.pp" -m "$WORK/pgway_pgsocket.mod"; then
        ok "SELinux module pgway_pgsocket.te compiles and packages"
    else
        bad "SELinux module pgway_pgsocket.te"
    fi
}

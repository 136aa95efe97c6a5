# shellcheck shell=bash
# Stage helm: the Helm chart lints (strict) and renders with Helm's own engine
# (helm-python-sdk binds the official Helm v4 Go SDK: no helm binary is to be had from the
# registries CI reaches; deploy/helm.py is the front end), the manifests validate with
# kubernetes-validate (strict) and meet deploy/check/helm_manifests.py, and each file in
# deploy/helm-tests/bad/ fails to render with the message it expects. It leaves the
# renderings in $WORK (default.yaml, full.yaml, exec.yaml) for the settings stage.

define_stage helm "the Helm chart lints, renders, validates, meets the manifest checks; bad values fail" \
    tools="helm_python kubernetes-validate"

helm_py() { python3 deploy/helm.py "$@"; }

helm_render() { # name values-files...
    local name=$1 f
    shift
    local args=()
    for f in "$@"; do args+=(-f "$f"); done
    if helm_py template "$CHART" --name pgway --namespace pgway "${args[@]}" >"$WORK/$name.yaml" 2>"$WORK/$name.err"; then
        ok "helm template ($name)"
    else
        cat "$WORK/$name.err"
        bad "helm template ($name)"
    fi
}

kval() { # file kubernetes-version
    local out
    if out="$(kubernetes-validate --strict -k "$2" "$1" 2>&1)"; then
        # ServiceMonitor is a CRD: kubernetes-validate has no schema for it and says so.
        grep -v "passed for resource" <<<"$out" || true
        ok "kubernetes-validate --strict -k $2 $(basename "$1") ($(grep -c 'passed for resource' <<<"$out") resources)"
    else
        echo "$out"
        bad "kubernetes-validate --strict -k $2 $(basename "$1")"
    fi
}

stage_helm() {
    local T=$HELM_TESTS f expect out
    log "Helm chart ($CHART) with Helm's Go SDK"

    if helm_py lint "$CHART" -f "$T/base.yaml" --strict; then ok "helm lint --strict (defaults)"; else bad "helm lint --strict (defaults)"; fi
    if helm_py lint "$CHART" -f "$T/full.yaml" --strict; then ok "helm lint --strict (full.yaml)"; else bad "helm lint --strict (full.yaml)"; fi
    # Clusters before 1.24 take the exec-probe path of probes.mode=auto.
    if helm_py lint "$CHART" -f "$T/base.yaml" --strict --kube-version v1.23.0; then
        ok "helm lint --strict --kube-version v1.23.0"
    else
        bad "helm lint --strict --kube-version v1.23.0"
    fi

    helm_render default "$T/base.yaml"
    helm_render full "$T/full.yaml"
    helm_render exec "$T/exec-probes.yaml"

    kval "$WORK/default.yaml" 1.25.0
    kval "$WORK/default.yaml" 1.37.0
    kval "$WORK/exec.yaml" 1.25.0
    # full.yaml uses the preStop sleep action (Kubernetes >= 1.30).
    kval "$WORK/full.yaml" 1.30.0
    kval "$WORK/full.yaml" 1.37.0

    if python3 "$CHECK_DIR/helm_manifests.py" "$WORK"; then
        ok "rendered manifests: probes, security context, grace, secrets, auth, ports"
    else
        bad "rendered manifests: probes, security context, grace, secrets, auth, ports"
    fi

    for f in "$T"/bad/*.yaml; do
        expect="$(sed -n 's/^# expect: //p' "$f")"
        if out="$(helm_py template "$CHART" -f "$T/base.yaml" -f "$f" 2>&1)"; then
            bad "bad values $(basename "$f") rendered"
        elif grep -qF -- "$expect" <<<"$out"; then
            ok "bad values $(basename "$f") refused: $(grep -m1 -F -- "$expect" <<<"$out" | cut -c1-110)"
        else
            echo "$out" | tail -5
            bad "bad values $(basename "$f") refused without \"$expect\""
        fi
    done
}

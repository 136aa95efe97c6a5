#!/usr/bin/env python3
"""Checks the Podman Quadlet units without a quadlet generator (the quadlet stage of
deploy/check.sh).

    python3 deploy/check/quadlet_units.py [CONTAINER_UNIT [NETWORK_UNIT]]

The units default to deploy/podman/pgway.container and deploy/podman/pgway.network. Debian
12's podman 4.3 has no quadlet generator (it came with 4.4), so this checks the keys of the
[Container] and [Network] sections against Quadlet's own list (podman 5,
pkg/systemd/quadlet), and the settings that matter to pgway: StopTimeout above
PGWAY_SHUTDOWN_GRACE and TimeoutStopSec above StopTimeout; hardening (ReadOnly,
NoNewPrivileges, DropCapability=all) and Notify=healthy; the database URL from a Secret= and
never from Environment=; the bearer tokens file from a Secret= mounted where the user can
read it, on a Tmpfs= (and so the PostgreSQL door's PGWAY_PG_AUTH_FILE, when set); the gRPC
and PostgreSQL-door ports (PGWAY_GRPC_ADDR, PGWAY_PG_ADDR) published; a JSON exec-form
HealthCmd on readiness; SELinux labels on volumes.

Prints each problem. Exit status: 0 when there is none, 1 otherwise.
"""

import argparse
import json
import os
import re
import sys

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
    with open(path, encoding="utf-8") as f:
        lines = list(f)
    for n, line in enumerate(lines, 1):
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


def check(container_unit, network_unit):
    c = parse(container_unit)
    for key, _ in c.get("Container", []):
        if key not in CONTAINER:
            errors.append(f"[Container] {key}: not a Quadlet key")
    for key, _ in parse(network_unit).get("Network", []):
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
    pg_file = env.get("PGWAY_PG_AUTH_FILE")
    if pg_file is not None and pg_file not in mounted:
        errors.append(f"PGWAY_PG_AUTH_FILE={pg_file!r} is not a Secret=...,type=mount target")
    # The doors' ports are published: PublishPort=[[IP:]HOST:]CONTAINER[/tcp].
    published = {p.rsplit(":", 1)[-1].split("/")[0] for p in kv.get("PublishPort", [])}
    for key, default in (("PGWAY_GRPC_ADDR", "0.0.0.0:50051"), ("PGWAY_PG_ADDR", "0.0.0.0:6432")):
        addr = env.get(key, default)
        if addr and addr.rsplit(":", 1)[-1] not in published:
            errors.append(f"{key}={addr}: its port is in no PublishPort=")
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


def main() -> int:
    podman = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "podman")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("container", nargs="?", default=os.path.join(podman, "pgway.container"),
                        help="the .container unit (default: deploy/podman/pgway.container)")
    parser.add_argument("network", nargs="?", default=os.path.join(podman, "pgway.network"),
                        help="the .network unit (default: deploy/podman/pgway.network)")
    args = parser.parse_args()
    check(args.container, args.network)
    for e in errors:
        print("  " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

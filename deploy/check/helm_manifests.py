#!/usr/bin/env python3
"""Checks the Helm chart's rendered manifests (the helm stage of deploy/check.sh).

    python3 deploy/check/helm_manifests.py DIR

DIR holds three renderings of helm/pgway, as the helm stage leaves them in its work
directory: default.yaml (deploy/helm-tests/base.yaml), full.yaml (full.yaml: everything on)
and exec.yaml (exec-probes.yaml: exec probes, PGWAY_AUTH=none, metrics and the PostgreSQL door
off). To make them by hand:

    python3 deploy/helm.py template helm/pgway --name pgway --namespace pgway \\
        -f deploy/helm-tests/base.yaml > DIR/default.yaml    # and so on

In each: termination grace above shutdown grace + preStop sleep, the database URL from a
Secret, the hardened security context, a memory limit, caller authentication (credential
files from the auth Secret mounted read-only as a directory, or PGWAY_AUTH=none: one of the
two), health without credentials, TLS probes and Secret when TLS is on, and the probes'
health services on the gRPC port. The PostgreSQL door: on in default.yaml and full.yaml (port
6432 named postgres in the pod and the Service, and in the NetworkPolicy's ingress when there is
one; its users file, PGWAY_PG_AUTH_FILE, in the auth Secret), off in exec.yaml
(PGWAY_PG_ADDR="" and no such port). In full.yaml also the kinds rendered and the
ServiceMonitor's endpoint.

Prints each rule not met. Exit status: 0 when all are met, 1 otherwise.
"""

import argparse
import sys

import yaml


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", help="directory with default.yaml, full.yaml and exec.yaml")
    work = parser.parse_args().dir

    def deployment(name):
        with open(f"{work}/{name}.yaml", encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
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
        if files or "PGWAY_PG_AUTH_FILE" in env:
            mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
            vols = {v["name"]: v for v in pod.get("volumes", [])}
            m = mounts.get("/etc/pgway/auth", {})
            need(m.get("name") in vols and "secret" in vols[m["name"]] and m.get("readOnly") is True and "subPath" not in m,
                 f"{name}: auth Secret mounted read-only as a directory")
            for k in files + [k for k in ("PGWAY_PG_AUTH_FILE",) if k in env]:
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
        # Probes stay on the gRPC health service, whichever other doors are open.
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        for k, p in probes.items():
            if "grpc" in p:
                need(p["grpc"]["port"] == ports.get("grpc"), f"{name}: {k} on the grpc port")
            else:
                addr = next(a for a in p["exec"]["command"] if a.startswith("-addr="))
                need(addr.endswith(f":{ports.get('grpc')}"), f"{name}: {k} on the grpc port")
        # The PostgreSQL door: on by default, off in exec.yaml; its port follows PGWAY_PG_ADDR.
        pg_addr = env.get("PGWAY_PG_ADDR", {}).get("value")
        svc = next((d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == dep["metadata"]["name"]), None)
        svc_ports = {p["name"]: p for p in (svc or {}).get("spec", {}).get("ports", [])}
        netpol = next((d for d in docs if d["kind"] == "NetworkPolicy"), None)
        ingress_ports = {p["port"] for r in (netpol or {}).get("spec", {}).get("ingress", []) for p in r.get("ports", [])}
        if name == "exec":
            need(pg_addr == "", f"{name}: the PostgreSQL door off (PGWAY_PG_ADDR=\"\")")
            need("postgres" not in ports and "postgres" not in svc_ports, f"{name}: no postgres port with the door off")
        else:
            need(pg_addr is not None and pg_addr.endswith(":6432"), f"{name}: the PostgreSQL door on 6432 (PGWAY_PG_ADDR={pg_addr!r})")
            need(ports.get("postgres") == 6432, f"{name}: container port postgres 6432")
            need(svc_ports.get("postgres", {}).get("port") == 6432 and svc_ports.get("postgres", {}).get("targetPort") == "postgres",
                 f"{name}: Service port postgres 6432")
            if netpol:
                need(6432 in ingress_ports, f"{name}: NetworkPolicy lets clients reach 6432")
    kinds = {d["kind"] for d in deployment("full")[1]}
    need(kinds >= {"Deployment", "Service", "ServiceAccount", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor", "NetworkPolicy"}, f"full: kinds {sorted(kinds)}")
    sm = next(d for d in deployment("full")[1] if d["kind"] == "ServiceMonitor")
    need(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["spec"]["endpoints"][0]["path"] == "/metrics", "ServiceMonitor endpoint")
    for e in errors:
        print("  not met:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

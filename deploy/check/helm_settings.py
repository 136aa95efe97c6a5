#!/usr/bin/env python3
"""Checks that every PGWAY_* setting of `pgway serve --help` reaches the container from chart
values (the settings stage of deploy/check.sh).

    python3 deploy/check/helm_settings.py BINARY FULL_YAML EXEC_YAML

BINARY is a pgway binary: its `serve --help` lists the settings as `env: PGWAY_...`, and
PGWAY_LOG (the log filter, which is read outside the option parser) is added to them. FULL_YAML and EXEC_YAML are helm/pgway rendered
with deploy/helm-tests/full.yaml and exec-probes.yaml (see helm_manifests.py). Every setting
must be in the Deployment's container environment from full.yaml, except PGWAY_AUTH, whose
value none excludes credentials: exec-probes.yaml must set PGWAY_AUTH=none.

Prints the settings found and those missing. Exit status: 0 when none is missing, 1
otherwise.
"""

import argparse
import re
import subprocess
import sys

import yaml


def env(path):
    with open(path, encoding="utf-8") as f:
        dep = next(d for d in yaml.safe_load_all(f) if d and d["kind"] == "Deployment")
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("binary", help="the pgway binary")
    parser.add_argument("full", help="the chart rendered with deploy/helm-tests/full.yaml")
    parser.add_argument("exec", help="the chart rendered with deploy/helm-tests/exec-probes.yaml")
    args = parser.parse_args()

    helptext = subprocess.run([args.binary, "serve", "--help"], capture_output=True, text=True, check=True).stdout
    settings = set(re.findall(r"\benv: (PGWAY_[A-Z0-9_]+)", helptext)) | {"PGWAY_LOG"}
    full, open_ = env(args.full), env(args.exec)
    exclusive = {"PGWAY_AUTH"}
    missing = sorted(settings - exclusive - set(full))
    if open_.get("PGWAY_AUTH") != "none":
        missing.append("PGWAY_AUTH=none (in exec-probes.yaml)")
    print(f"  {len(settings)} settings: " + " ".join(sorted(settings)))
    if missing:
        print("  not set by deploy/helm-tests/full.yaml through the chart's config: " + " ".join(missing))
        print("  (add them to helm/pgway/values.yaml config, values.schema.json and full.yaml)")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

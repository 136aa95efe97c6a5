#!/usr/bin/env python3
"""A tiny `helm lint` / `helm template` front end over Helm's own Go SDK.

No helm binary can be installed on the CI machines (only Debian, PyPI, crates.io and npm are
reachable, and none ships one), but PyPI's `helm-python-sdk` bundles libhelm_c, a C ABI over
the official Helm v4 Go SDK. This script only parses arguments and prints what Helm returns:
loading, schema validation, rendering, `lint` and the client-side dry-run install (the same
code path as `helm template`) are all Helm's.

    python3 deploy/helm.py lint     CHART [-f VALUES]... [--set-json K=JSON]... [--kube-version V] [--strict]
    python3 deploy/helm.py template CHART [-f VALUES]... [--set-json K=JSON]... [--name N] [--namespace NS] [--notes]

Exit status: 0 on success; 1 when Helm reports an error (lint errors, schema violations,
template `fail`s); 2 on bad usage.
"""

from __future__ import annotations

import argparse
import sys

import helm_python as helm


def merge(base: dict, extra: dict) -> dict:
    """Deep-merges extra into base the way successive -f files and --set flags do."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


def user_values(args: argparse.Namespace) -> dict:
    values: dict = {}
    for path in args.values or []:
        with open(path, encoding="utf-8") as f:
            merge(values, helm.values_from_yaml(f.read()) or {})
    for expression in args.set_json or []:
        merge(values, helm.parse_set_json(expression))
    for expression in args.set or []:
        merge(values, helm.parse_set_string(expression))
    return values


def cmd_lint(args: argparse.Namespace) -> int:
    report = helm.lint(
        args.chart,
        user_values(args),
        strict=args.strict,
        kube_version=args.kube_version,
        namespace=args.namespace,
    )
    names = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    failed = False
    for message in report.get("messages") or []:
        severity = int(message.get("severity", 0))
        print(f"[{names.get(severity, severity)}] {message.get('path', '')}: {message.get('error', '')}")
        if severity >= 3 or (args.strict and severity >= 2):
            failed = True
    if report.get("errors"):
        failed = True
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted, {'failed' if failed else 'no failures'}")
    return 1 if failed else 0


def cmd_template(args: argparse.Namespace) -> int:
    # A client-side dry-run install: Helm's `helm template` path (schema validation, render,
    # manifest sorting) with no cluster contacted and release records kept in memory.
    with helm.Config(namespace=args.namespace, storage_driver="memory") as cfg:
        release = cfg.install(
            args.chart, args.name, user_values(args), namespace=args.namespace, dry_run="client"
        )
    sys.stdout.write(release.get("manifest", ""))
    if args.notes:
        notes = release.get("notes") or ""
        sys.stdout.write("\n---\n# NOTES.txt\n" + "\n".join("# " + line for line in notes.splitlines()) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="deploy/helm.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("lint", "template"):
        p = sub.add_parser(name)
        p.add_argument("chart")
        p.add_argument("-f", "--values", action="append")
        p.add_argument("--set", action="append")
        p.add_argument("--set-json", action="append")
        p.add_argument("--namespace", default="default")
        if name == "lint":
            p.add_argument("--strict", action="store_true")
            p.add_argument("--kube-version")
        else:
            p.add_argument("--name", default="pgway")
            p.add_argument("--notes", action="store_true")
    args = parser.parse_args()
    print(f"# helm SDK {helm.helm_sdk_version()} (libhelm_c {helm.helm_c_version()})", file=sys.stderr)
    try:
        return cmd_lint(args) if args.command == "lint" else cmd_template(args)
    except helm.HelmError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

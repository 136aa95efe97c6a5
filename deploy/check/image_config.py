#!/usr/bin/env python3
"""Checks the runtime image's config (the image stage of deploy/check.sh).

    python3 deploy/check/image_config.py IMAGE

IMAGE is a podman image built from the Dockerfile (docker format, so that the HEALTHCHECK
is kept). It must run as 65532:65532, expose 50051/tcp, 6432/tcp and 9090/tcp, have /pgway as its
entrypoint and SIGTERM as its stop signal, check health with
`/pgway probe -service=pgway.v1.Database` (exec form), and have one layer: scratch plus the
binary.

Prints each property that differs. Exit status: 0 when none does, 1 otherwise (and the
CalledProcessError of `podman image inspect` when the image is not there).
"""

import argparse
import json
import subprocess
import sys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the image, such as localhost/pgway:check")
    image = parser.parse_args().image

    info = json.loads(subprocess.run(["podman", "image", "inspect", image], capture_output=True, text=True, check=True).stdout)[0]
    cfg = info["Config"]
    errors = []
    if cfg.get("User") != "65532:65532":
        errors.append(f"User {cfg.get('User')!r}")
    if set(cfg.get("ExposedPorts", {})) != {"50051/tcp", "6432/tcp", "9090/tcp"}:
        errors.append(f"ExposedPorts {cfg.get('ExposedPorts')}")
    if cfg.get("Entrypoint") != ["/pgway"]:
        errors.append(f"Entrypoint {cfg.get('Entrypoint')}")
    if cfg.get("StopSignal") not in ("SIGTERM", "15"):
        errors.append(f"StopSignal {cfg.get('StopSignal')}")
    hc = (info.get("Healthcheck") or info.get("HealthCheck") or cfg.get("Healthcheck") or {}).get("Test")
    if hc != ["CMD", "/pgway", "probe", "-service=pgway.v1.Database"]:
        errors.append(f"HealthCheck {hc}")
    layers = info.get("RootFS", {}).get("Layers", [])
    if len(layers) != 1:
        errors.append(f"{len(layers)} layers, expected 1 (scratch + the binary)")
    for e in errors:
        print("  " + e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

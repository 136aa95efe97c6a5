#!/usr/bin/env python3
"""Checks that pgway serves Prometheus metrics (the run stage of deploy/check.sh).

    python3 deploy/check/metrics.py PORT

Fetches http://127.0.0.1:PORT/metrics (PGWAY_METRICS_ADDR) with a 5 s timeout. Exit status:
0 when the body has a pgway_ metric, 1 when it has none; a failed fetch raises (non-zero).
"""

import argparse
import sys
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("port", type=int, help="the metrics port on 127.0.0.1")
    port = parser.parse_args().port
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return 0 if "pgway_" in body else 1


if __name__ == "__main__":
    sys.exit(main())

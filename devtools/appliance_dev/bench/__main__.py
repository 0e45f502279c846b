"""``make bench``: run every benchmark section and print one table per section.

Each section is a module in this package with ``run() -> list[tuple[str, str]]`` returning
(metric, measured value) rows. ``python -m appliance_dev.bench [section ...]`` runs a subset.
A section that fails prints its error and makes the exit status non-zero; the others still run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback

SECTIONS: dict[str, str] = {
    "session": "Device session: connect, device-added latency, CPU, RSS",
    "mint": "Provisioning server: mints per second and latency",
    "audio": "Audio front end: echo cancellation, double talk, barge-in, CPU per frame",
    "wake": "Wake word: hit rate, false accepts, latency",
    "soak": "Soak: back-to-back sessions (RSS, fds) and frames played under loss",
    "backends": "Realtime vs GPT-Live: connect, relay overhead, per-turn latency, standby",
    "console": "Fleet console: heartbeat history size and console reads at 10,000 devices",
}


def _print_table(title: str, rows: list[tuple[str, str]], seconds: float) -> None:
    width = max([len(name) for name, _ in rows] + [len("metric")])
    print(f"\n## {title}  ({seconds:.1f} s)")
    print(f"{'metric':<{width}}  value")
    print(f"{'-' * width}  {'-' * 24}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appliance_dev.bench", description=__doc__)
    parser.add_argument("sections", nargs="*", help=f"any of {', '.join(SECTIONS)} (default: all)")
    args = parser.parse_args(argv)
    chosen: list[str] = args.sections or list(SECTIONS)
    unknown = [name for name in chosen if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    failed = 0
    for name in chosen:
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"appliance_dev.bench.{name}")
            rows = module.run()
        except Exception:
            failed += 1
            print(f"\n## {SECTIONS[name]}: FAILED", file=sys.stderr)
            traceback.print_exc()
            continue
        _print_table(SECTIONS[name], rows, time.perf_counter() - started)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())

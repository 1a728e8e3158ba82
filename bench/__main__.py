"""`python -m bench [--only NAME ...] [--quick]`: run the benchmarks and print their figures.

Every figure is printed with its target and PASS or MISS, then all of them again in a summary
table, and written as JSON to `<cache dir>/results.json`. The exit status is 0 whatever the
figures: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from bench import addon, core, fleet, harness, inproxy, memory, store, throughput
from bench.measure import DEFAULT_CACHE_DIR, BenchOptions, Figure, make_cache_dir

Benchmark = Callable[[BenchOptions], list[Figure]]

BENCHMARKS: dict[str, Benchmark] = {
    "core": core.run,
    "store": store.run,
    "addon": addon.run,
    "conformance": harness.run,
    "throughput": throughput.run,
    "inproxy": inproxy.run,
    "memory": memory.run,
    "fleet": fleet.run,
}


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHMARKS), metavar="NAME", help="run only these"
    )
    parser.add_argument("--quick", action="store_true", help="smallest sizes: a smoke test")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE_DIR,
        help=f"built stores and results.json (default: {DEFAULT_CACHE_DIR})",
    )
    return parser.parse_args(argv)


def table(figures: Sequence[Figure]) -> str:
    rows = [("benchmark", "figure", "value", "target", "")]
    rows += [(f.benchmark, f.name, f.shown_value(), f.shown_target(), f.verdict) for f in figures]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    lines = [
        "  ".join(
            [*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]
        ).rstrip()
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def write_results(
    path: Path, figures: Sequence[Figure], failures: dict[str, str], quick: bool
) -> None:
    document = {
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quick": quick,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "figures": [{**asdict(figure), "verdict": figure.verdict} for figure in figures],
        "failures": failures,
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    options = BenchOptions(quick=arguments.quick, cache_dir=arguments.cache_dir)
    make_cache_dir(options.cache_dir)
    figures: list[Figure] = []
    failures: dict[str, str] = {}
    for name in arguments.only or BENCHMARKS:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            measured = BENCHMARKS[name](options)
        except Exception as error:
            # One broken benchmark (wrk missing, a proxy that did not start) spoils no other.
            failures[name] = f"{type(error).__name__}: {error}"
            print(f"FAILED: {failures[name]}", file=sys.stderr, flush=True)
            continue
        print(table(measured), f"({time.monotonic() - started:.0f} s)", sep="\n", flush=True)
        figures += measured
    results = options.cache_dir / "results.json"
    write_results(results, figures, failures, options.quick)
    print(f"\n== summary (also in {results})\n{table(figures)}")
    for name, failure in failures.items():
        print(f"{name}: FAILED, {failure}")
    # A MISS is a measurement and exits 0; a benchmark that could not measure does not.
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

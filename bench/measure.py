"""What every benchmark shares: figures and their targets, batch timing, where files are cached.

The machine is shared and noisy, so a figure is a median over many batches, and variants that
are compared run their batches in turn (A B A B ...) so that noise falls on all of them alike.
"""

from __future__ import annotations

import gc
import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import Literal

DEFAULT_CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "bench"

Comparison = Literal["<", "<=", ">=", "=="]
Unit = Literal[
    "µs", "ms", "x", "req/s", "examples/s", "draws/s", "MB", "responses", "requests", "instructions"
]
UNIT_FORMATS: dict[Unit, str] = {
    "µs": "{:,.2f} µs",
    "ms": "{:,.1f} ms",
    "x": "{:.3f}x",
    "req/s": "{:,.0f} req/s",
    "examples/s": "{:,.0f} examples/s",
    "draws/s": "{:,.0f} draws/s",
    "MB": "{:.1f} MB",
    "responses": "{:,.0f} responses",
    "requests": "{:,.0f} requests",
    "instructions": "{:,.0f} instructions",
}


@dataclass(frozen=True, slots=True)
class Target:
    comparison: Comparison
    limit: float

    def met_by(self, value: float) -> bool:
        match self.comparison:
            case "<":
                return value < self.limit
            case "<=":
                return value <= self.limit
            case ">=":
                return value >= self.limit
            case "==":
                return value == self.limit

    def describe(self, unit: Unit) -> str:
        return f"{self.comparison} {self.limit:g}{_unit_suffix(unit)}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured value; `target` None means it is reported for context only."""

    benchmark: str
    name: str
    value: float
    unit: Unit
    target: Target | None = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "PASS" if self.target.met_by(self.value) else "MISS"

    def shown_value(self) -> str:
        return UNIT_FORMATS[self.unit].format(self.value)

    def shown_target(self) -> str:
        return "-" if self.target is None else self.target.describe(self.unit)


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """`quick`: the smallest sizes, for a smoke test; `cache_dir`: built stores and results."""

    quick: bool
    cache_dir: Path


def make_cache_dir(path: Path) -> None:
    """Create the cache directory, which git must never pick up (it lives in the work tree)."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".gitignore").write_text("*\n")


def _unit_suffix(unit: Unit) -> str:
    return "x" if unit == "x" else f" {unit}"


def seconds_per_call(run_calls: Callable[[], object], calls: int) -> float:
    """Wall time per call of `run_calls`, which makes `calls` calls; the collector is paused
    meanwhile, as timeit does, so that a collection of earlier garbage lands in no batch."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        start = perf_counter()
        run_calls()
        elapsed = perf_counter() - start
    finally:
        if collecting:
            gc.enable()
    return elapsed / calls


def repeated_call(call: Callable[[], object], calls: int) -> Callable[[], float]:
    """A batch runner: `calls` calls of `call`, returning the seconds per call."""

    def run_calls() -> None:
        for _ in range(calls):
            call()

    return lambda: seconds_per_call(run_calls, calls)


def interleaved_median_microseconds(
    batch_runners: Mapping[str, Callable[[], float]], batches: int
) -> dict[str, float]:
    """Median over batches of each runner's seconds per call, in µs; batches run in turn.

    One untimed batch of each runner comes first, to fill caches and warm up the interpreter.
    """
    for run_batch in batch_runners.values():
        run_batch()
    samples: dict[str, list[float]] = {name: [] for name in batch_runners}
    for _ in range(batches):
        for name, run_batch in batch_runners.items():
            samples[name].append(run_batch())
    return {name: statistics.median(values) * 1e6 for name, values in samples.items()}


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` of `values` fall (nearest rank: always a measured one)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], not {fraction!r}")
    ordered = sorted(values)
    rank = math.ceil(fraction * len(ordered))
    return ordered[rank - 1]

"""The conformance harness in process: hypothesis examples per second, and its two halves.

`run_conformance` drives the addon through `InProcessGateway` (mitmproxy's test context, a real
store) on the self-test plan. Each round measures, in turn:

- examples: the hypothesis examples of every layout, drawn, sent, judged and compared, per
  second of wall time (a run with examples minus a run with the matrix alone);
- matrix: the exhaustive matrix alone, requests sent, judged and compared per second (the
  driver and the oracle, nothing generated);
- generation: hypothesis drawing the same examples for a test that does nothing with them.

Figures are medians over rounds. Each round is seconds long and hypothesis allocates much, so
the garbage collector stays on, as in a real run.
"""

from __future__ import annotations

import statistics
import time

from hypothesis import given, seed

from bench.measure import BenchOptions, Figure, Target
from tokenward.harness.inprocess import InProcessGateway
from tokenward.harness.oracle import HarnessRequest
from tokenward.harness.run import (
    Plan,
    counting_settings,
    example_requests,
    run_conformance,
    self_test_plan,
)

TARGET = Target(">=", 1000.0)
# In process nothing goes upstream: the plan's services only need some URL.
UNUSED_UPSTREAM = "http://127.0.0.1:9"

Round = dict[str, float]


def run(options: BenchOptions) -> list[Figure]:
    examples, rounds = (10, 2) if options.quick else (500, 5)
    plan = self_test_plan(UNUSED_UPSTREAM, base_url="")
    samples: list[Round] = []
    with InProcessGateway(plan.store) as gateway:
        measure_round(gateway, plan, examples, run_seed=0)  # untimed: fills caches, warms up
        samples += [measure_round(gateway, plan, examples, run_seed) for run_seed in range(rounds)]
    median = {name: statistics.median(sample[name] for sample in samples) for name in samples[0]}
    drawn = f"{examples:,} examples x {len(plan.layouts)} layouts; median of {rounds} rounds"
    return [
        Figure(
            "conformance",
            "in process: hypothesis examples drawn, sent, judged",
            median["examples"],
            "examples/s",
            TARGET,
            f"{drawn}; checking alone {median['checking']:,.0f} req/s",
        ),
        Figure(
            "conformance",
            "in process: matrix alone, sent and judged",
            median["matrix"],
            "req/s",
            detail=f"{median['matrix requests']:,.0f} requests; median of {rounds} rounds",
        ),
        Figure(
            "conformance",
            "hypothesis generation alone",
            median["generation"],
            "draws/s",
            detail=drawn,
        ),
    ]


def measure_round(gateway: InProcessGateway, plan: Plan, examples: int, run_seed: int) -> Round:
    matrix = run_conformance(gateway, plan, title="matrix", examples=0)
    both = run_conformance(gateway, plan, title="examples", examples=examples, run_seed=run_seed)
    if not both.passed:
        # A failure would also time the shrinking: refuse to report a figure.
        raise RuntimeError(f"the addon failed {len(both.failures)} conformance checks")
    drawn = examples * len(plan.layouts)
    return {
        "examples": drawn / (both.seconds - matrix.seconds),
        "checking": both.requests_per_second,
        "matrix": matrix.requests_per_second,
        "matrix requests": matrix.sent,
        "generation": drawn / generation_seconds(plan, examples, run_seed),
    }


def generation_seconds(plan: Plan, examples: int, run_seed: int) -> float:
    """Hypothesis drawing each layout's examples as `run_conformance` does, and nothing else."""
    started = time.perf_counter()
    for layout in plan.layouts:

        @seed(run_seed)
        @counting_settings(examples)
        @given(example_requests(plan, layout))
        def draw_only(request: HarnessRequest) -> None:
            """The request is drawn and dropped."""

        draw_only()
    return time.perf_counter() - started

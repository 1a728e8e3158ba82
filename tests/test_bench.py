"""Smoke test of the benchmarks: each runs at its `--quick` size and yields well-formed figures.

Nothing here asserts on a timing: the figures are measurements, and this machine is shared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bench.__main__ import BENCHMARKS, main
from bench.load import LoadResult, load_on_own_cpu, pin_process, wrk_program
from bench.measure import UNIT_FORMATS, BenchOptions, percentile
from bench.throughput import Run, bare_arguments, in_turn, spread_of_rounds
from tokenward.fixtures.postgres import POSTGRES_MISSING_REASON, postgres_bin_dir
from tokenward.proxy import ADDON_SCRIPT, ProxySettings, mitmproxy_arguments

NEEDS_WRK = pytest.mark.skipif(wrk_program() is None, reason="wrk is not installed")
NEEDS_TWO_CPUS = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs CPU affinity (Linux) and two CPUs",
)
NEEDS_POSTGRES = pytest.mark.skipif(postgres_bin_dir() is None, reason=POSTGRES_MISSING_REASON)
WITH_PROCESSES = [NEEDS_WRK, pytest.mark.e2e]


@pytest.fixture(scope="module")
def options(tmp_path_factory: pytest.TempPathFactory) -> BenchOptions:
    # Stores built by one benchmark are reused by the next, as in a real run.
    return BenchOptions(quick=True, cache_dir=tmp_path_factory.mktemp("bench-cache"))


@pytest.mark.parametrize(
    "name",
    [
        "core",
        "store",
        "addon",
        "conformance",
        pytest.param("throughput", marks=WITH_PROCESSES),
        pytest.param("inproxy", marks=WITH_PROCESSES),
        pytest.param("memory", marks=WITH_PROCESSES),
        pytest.param("fleet", marks=[NEEDS_POSTGRES, pytest.mark.e2e]),
    ],
)
def test_each_benchmark_yields_well_formed_figures(name: str, options: BenchOptions) -> None:
    figures = BENCHMARKS[name](options)
    assert figures
    if name != "inproxy":  # its figures explain others and have no targets of their own
        assert any(figure.target is not None for figure in figures)
    for figure in figures:
        assert figure.benchmark == name
        assert figure.name
        assert figure.unit in UNIT_FORMATS
        assert math.isfinite(figure.value)
        assert figure.verdict in {"PASS", "MISS", "-"}
        assert figure.shown_value() and figure.shown_target()
        if figure.unit in ("µs", "req/s", "examples/s", "draws/s", "x"):
            assert figure.value > 0
        if figure.unit == "responses":
            assert figure.value == 0, f"{figure.name}: a valid token was refused"


def test_the_command_prints_a_summary_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--quick", "--only", "core", "--cache-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "== summary" in printed
    assert "find+strip generic /TOKEN" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["quick"] is True
    assert results["failures"] == {}
    assert {figure["benchmark"] for figure in results["figures"]} == {"core"}
    assert all(figure["verdict"] in {"PASS", "MISS"} for figure in results["figures"])


def test_bare_mitmdump_differs_from_the_gateway_only_by_the_addon(tmp_path: Path) -> None:
    settings = ProxySettings(db=tmp_path / "t.db", upstream="http://127.0.0.1:1", listen_port=0)
    gateway, bare = pairs(mitmproxy_arguments(settings)), pairs(bare_arguments(settings))
    assert [pair for pair in gateway if pair in bare] == bare
    dropped = [pair for pair in gateway if pair not in bare]
    assert ("--scripts", str(ADDON_SCRIPT)) in dropped
    assert all(option == "--scripts" or value.startswith("tokenward_") for option, value in dropped)
    assert ("--set", "connection_strategy=lazy") in bare


def runs_at(*requests_per_second: float) -> list[Run]:
    return [Run(LoadResult(round(rate), 1.0, 0, 0), 1.0) for rate in requests_per_second]


def test_each_rounds_ratio_compares_runs_of_the_same_round() -> None:
    # Paired by round: 290/100, 95/200, 190/300. Sorted runs paired would give 0.95 to 0.97.
    spread = spread_of_rounds(runs_at(290, 95, 190), runs_at(100, 200, 300))
    assert "range 0.475 to 2.900" in spread
    assert "median 0.633" in spread


def test_a_single_round_has_no_spread() -> None:
    assert spread_of_rounds(runs_at(95), runs_at(100)) == "one round: 0.950"


def test_rounds_take_turns_in_both_orders() -> None:
    variants = ["bare", "header", "path"]
    orders = [in_turn(variants, round_number) for round_number in range(15)]
    assert orders[0] == variants
    assert orders[1] == ["path", "header", "bare"]
    # Five pairs of processes, one per round in turn: each pair meets both orders.
    for pair in range(5):
        assert {tuple(orders[round_number]) for round_number in range(pair, 15, 5)} == {
            ("bare", "header", "path"),
            ("path", "header", "bare"),
        }


def pairs(arguments: list[str]) -> list[tuple[str, str]]:
    return list(zip(arguments[::2], arguments[1::2], strict=True))


@NEEDS_TWO_CPUS
def test_the_load_runs_on_one_cpu_and_the_proxies_get_the_others() -> None:
    available = os.sched_getaffinity(0)
    with load_on_own_cpu() as proxy_cpus:
        assert proxy_cpus is not None
        load_cpus = os.sched_getaffinity(0)
        # A process started now, as wrk and the upstream are, shares the load's CPU.
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            assert os.sched_getaffinity(child.pid) == load_cpus
            pin_process(child.pid, proxy_cpus)
            assert frozenset(os.sched_getaffinity(child.pid)) == proxy_cpus
        finally:
            child.kill()
            child.wait()
    assert len(load_cpus) == 1
    assert proxy_cpus == frozenset(available - load_cpus)
    assert os.sched_getaffinity(0) == available  # given back


def test_nothing_is_pinned_without_cpus_for_the_proxies() -> None:
    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pin_process(os.getpid(), None)
    if before is not None:
        assert os.sched_getaffinity(0) == before


@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1),
    st.floats(min_value=0.001, max_value=1.0),
)
@example([3.0, 1.0, 2.0], 0.5)
@example([5.0] * 99 + [500.0], 0.99)
def test_a_percentile_is_a_measured_value_with_that_share_at_or_below_it(
    values: list[float], fraction: float
) -> None:
    found = percentile(values, fraction)
    assert found in values
    at_or_below = sum(value <= found for value in values)
    assert at_or_below >= fraction * len(values)
    assert sum(value < found for value in values) < fraction * len(values)


def test_a_percentile_of_nothing_or_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 0.5)
    with pytest.raises(ValueError, match=r"1\.5"):
        percentile([1.0], 1.5)

"""Requests per second through mitmdump with the addon against bare mitmdump, same upstream.

The addon runs with the exact arguments of `tokenward proxy` (strip mode); the bare mitmdump
gets the same arguments without the addon script and its options, so the connection strategy
and everything else match. Runs alternate (bare, header, path, then path, header, bare, ...)
and the medians are compared, so that noise on this shared machine falls on all variants
alike. Each round uses another of a few pairs of processes (bare mitmdump and the addon's):
how fast one mitmdump process runs varies by a few percent from one start to the next, and one
lucky or unlucky process must not decide the ratio. wrk and the upstream run on a CPU of
their own, the proxies on the others (`bench.load.load_on_own_cpu`), where the machine has two
or more.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from bench.load import LoadResult, cpu_seconds, load_on_own_cpu, pin_process, run_wrk
from bench.measure import BenchOptions, Figure, Target
from bench.synthetic import known_token, synthetic_store, working_copy
from tokenward.fixtures import processes
from tokenward.fixtures.processes import RunningProxy, start_proxy, start_upstream
from tokenward.proxy import ProxySettings, mitmproxy_arguments

BARE = "bare mitmdump"
RATIO_TARGET = Target(">=", 0.95)
NO_FAILURES = Target("==", 0)


@dataclass(frozen=True, slots=True)
class Run:
    """One wrk run, and the CPU time the proxy spent serving it."""

    load: LoadResult
    proxy_cpu_seconds: float

    @property
    def cpu_microseconds_per_request(self) -> float:
        return self.proxy_cpu_seconds / self.load.requests * 1e6


@dataclass(frozen=True, slots=True)
class Variant:
    """One kind of run: which proxy, and where the request carries the token."""

    name: str
    proxy: RunningProxy
    path: str
    headers: dict[str, str]

    def run(self, seconds: int) -> Run:
        cpu_before = cpu_seconds(self.proxy.pid)
        load = run_wrk(self.proxy.url + self.path, self.headers, seconds)
        return Run(load, cpu_seconds(self.proxy.pid) - cpu_before)


def bare_arguments(settings: ProxySettings) -> list[str]:
    """`mitmproxy_arguments(settings)` without the addon script and the tokenward options."""
    arguments = mitmproxy_arguments(settings)
    kept: list[str] = []
    pairs = zip(arguments[::2], arguments[1::2], strict=True)
    for option, value in pairs:
        if option == "--scripts" or (option == "--set" and value.startswith("tokenward_")):
            continue
        kept += [option, value]
    return kept


def start_bare_mitmdump(settings: ProxySettings) -> RunningProxy:
    return start_mitmdump(BARE, settings, bare_arguments(settings))


def start_mitmdump(
    name: str,
    settings: ProxySettings,
    arguments: list[str],
    environment: Mapping[str, str] = os.environ,
) -> RunningProxy:
    """mitmdump with `arguments`, started, awaited and stopped as `start_proxy` does it:
    fixtures.processes has no public starter for mitmdump with other arguments than the
    gateway's. `settings` are those the arguments were made from."""
    workdir = tempfile.TemporaryDirectory(prefix="tokenward-mitmdump-")
    command = [str(Path(sys.executable).with_name("mitmdump")), *arguments]
    process = processes._spawn(command, workdir, environment, cwd=None)
    proxy = RunningProxy(name, process, workdir)
    proxy.settings = settings
    deadline = time.monotonic() + processes.START_TIMEOUT_SECONDS
    proxy.host, proxy.port = processes._await_proxy(proxy, deadline)
    return proxy


def run(options: BenchOptions) -> list[Figure]:
    tokens = 1_000 if options.quick else 1_000_000
    # Many short runs in turn rather than a few long ones: load from other processes on this
    # machine comes and goes, and should fall on every variant alike.
    rounds, seconds, warmup_seconds = (1, 1, 1) if options.quick else (15, 3, 1)
    pairs = 1 if options.quick else 5
    token = known_token(tokens // 2)
    header = {"x-auth-token": token}
    with (
        load_on_own_cpu() as proxy_cpus,
        working_copy(synthetic_store(tokens, options.cache_dir)) as store,
        start_upstream() as upstream,
        contextlib.ExitStack() as running,
    ):
        settings = ProxySettings(db=store, upstream=upstream.url, listen_port=0)
        rounds_of_variants: list[list[Variant]] = []
        for _ in range(pairs):
            bare = running.enter_context(start_bare_mitmdump(settings))
            gateway = running.enter_context(start_proxy(settings))
            for proxy in (bare, gateway):
                pin_process(proxy.pid, proxy_cpus)
            variants = [
                Variant(BARE, bare, "/", header),
                Variant("addon, token in header", gateway, "/", header),
                Variant("addon, token in path", gateway, f"/{token}", {}),
            ]
            for variant in variants:
                variant.run(warmup_seconds)
            rounds_of_variants.append(variants)
        runs: dict[str, list[Run]] = {variant.name: [] for variant in rounds_of_variants[0]}
        for round_number in range(rounds):
            for variant in in_turn(rounds_of_variants[round_number % pairs], round_number):
                runs[variant.name].append(variant.run(seconds))
        upstream_alone = run_wrk(upstream.url + "/", header, seconds)

    detail = (
        f"{tokens:,} tokens, wrk -t1 -c16, {rounds} runs of {seconds} s over {pairs} pairs, "
        f"{cpus_used(proxy_cpus)}"
    )
    return [
        *figures_of(runs, detail),
        Figure(
            "throughput",
            "upstream alone, for scale",
            upstream_alone.requests_per_second,
            "req/s",
            detail=f"one wrk run of {seconds} s: the proxies must be the bottleneck",
        ),
    ]


def in_turn[T](variants: list[T], round_number: int) -> list[T]:
    """The order of a round: as given, and reversed every other round, so that no variant
    always runs first, or always right after another on the same process."""
    return variants if round_number % 2 == 0 else variants[::-1]


def cpus_used(proxy_cpus: frozenset[int] | None) -> str:
    """How the run placed its processes, for a figure's detail."""
    if proxy_cpus is None:
        return "load and proxies on the same CPUs"
    return f"proxies on CPUs {sorted(proxy_cpus)}, wrk and upstream on another"


def figures_of(runs: dict[str, list[Run]], detail: str) -> list[Figure]:
    throughput = {
        name: statistics.median(run.load.requests_per_second for run in variant_runs)
        for name, variant_runs in runs.items()
    }
    cpu_cost = {
        name: statistics.median(run.cpu_microseconds_per_request for run in variant_runs)
        for name, variant_runs in runs.items()
    }
    figures: list[Figure] = []
    for name, variant_runs in runs.items():
        each_run = ", ".join(f"{run.load.requests_per_second:.0f}" for run in variant_runs)
        figures += [
            Figure("throughput", name, throughput[name], "req/s", detail=f"{detail}: {each_run}"),
            Figure(
                "throughput",
                f"{name}: proxy CPU per request",
                cpu_cost[name],
                "µs",
                detail="median over the runs; hardly moved by other load on the machine",
            ),
        ]
        if name != BARE:
            figures += [
                Figure(
                    "throughput",
                    f"{name} / bare",
                    throughput[name] / throughput[BARE],
                    "x",
                    RATIO_TARGET,
                    f"ratio of the median req/s; {spread_of_rounds(variant_runs, runs[BARE])}",
                ),
                Figure(
                    "throughput",
                    f"{name} / bare, by proxy CPU",
                    cpu_cost[BARE] / cpu_cost[name],
                    "x",
                    detail="bare CPU per request / addon CPU per request",
                ),
            ]
        figures.append(
            Figure(
                "throughput",
                f"{name}: non-2xx/3xx answers",
                sum(run.load.failed_status for run in variant_runs),
                "responses",
                NO_FAILURES,
                f"all runs; socket errors: {sum(run.load.socket_errors for run in variant_runs)}",
            )
        )
    return figures


def spread_of_rounds(variant_runs: list[Run], bare_runs: list[Run]) -> str:
    """How the ratio to bare varies from round to round, each variant's run against bare's of
    the same round: how much the machine's noise moves it, to judge a ratio near its target."""
    ratios = [
        run.load.requests_per_second / bare.load.requests_per_second
        for run, bare in zip(variant_runs, bare_runs, strict=True)
    ]
    if len(ratios) < 2:
        return f"one round: {ratios[0]:.3f}"
    lower, middle, upper = statistics.quantiles(ratios, n=4)
    return (
        f"the rounds' own ratios: median {middle:.3f}, quartiles {lower:.3f} to {upper:.3f}, "
        f"range {min(ratios):.3f} to {max(ratios):.3f}"
    )

"""The addon's hooks as they run inside a loaded mitmdump, and what any script addon costs.

The `addon` benchmark times `requestheaders` in a tight loop, where caches stay warm. Inside
the proxy, a request's hook call comes after about a millisecond of mitmproxy's own work, so
the same code runs colder and slower. This benchmark loads the gateway with its two
per-request hooks timed (`bench/timed_gateway.py`) and puts `wrk` load on it. Beside it run
bare mitmdump, mitmdump with a script addon whose same two hooks do nothing
(`bench/noop_hooks.py`: mitmproxy's cost of calling a script addon at all), and the gateway
with those two hooks doing nothing (`bench/idle_gateway.py`: what the gateway costs before any
per-request work: its store, options and background tasks). Runs alternate between the four
processes, which run apart from the load as in `bench.throughput`.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
from pathlib import Path

from bench.load import load_on_own_cpu, pin_process
from bench.measure import BenchOptions, Figure
from bench.synthetic import known_token, synthetic_store, working_copy
from bench.throughput import (
    Variant,
    bare_arguments,
    cpus_used,
    start_bare_mitmdump,
    start_mitmdump,
)
from tokenward.fixtures.processes import RunningProxy, start_upstream
from tokenward.proxy import ADDON_SCRIPT, ProxySettings, mitmproxy_arguments

TIMED_GATEWAY_SCRIPT = Path(__file__).with_name("timed_gateway.py")
NOOP_HOOKS_SCRIPT = Path(__file__).with_name("noop_hooks.py")
IDLE_GATEWAY_SCRIPT = Path(__file__).with_name("idle_gateway.py")
NOOP = "script addon with no-op hooks"
IDLE = "gateway with no-op hooks"
TIMED = "gateway, hooks timed"


def gateway_arguments(settings: ProxySettings, script: Path) -> list[str]:
    """The gateway's mitmdump arguments with `script` loaded in place of the addon's."""
    return [
        str(script) if argument == str(ADDON_SCRIPT) else argument
        for argument in mitmproxy_arguments(settings)
    ]


def run(options: BenchOptions) -> list[Figure]:
    tokens = 1_000 if options.quick else 1_000_000
    rounds, seconds = (1, 1) if options.quick else (9, 3)
    header = {"x-auth-token": known_token(tokens // 2)}
    with (
        load_on_own_cpu() as proxy_cpus,
        working_copy(synthetic_store(tokens, options.cache_dir)) as store,
        start_upstream() as upstream,
        tempfile.TemporaryDirectory(prefix="tokenward-inproxy-") as workdir,
        contextlib.ExitStack() as running,
    ):
        times_file = Path(workdir) / "hook-times.json"
        settings = ProxySettings(db=store, upstream=upstream.url, listen_port=0)
        proxies = [
            running.enter_context(start_bare_mitmdump(settings)),
            running.enter_context(
                start_mitmdump(
                    NOOP, settings, [*bare_arguments(settings), "--scripts", str(NOOP_HOOKS_SCRIPT)]
                )
            ),
            running.enter_context(
                start_mitmdump(IDLE, settings, gateway_arguments(settings, IDLE_GATEWAY_SCRIPT))
            ),
        ]
        timed = start_mitmdump(
            TIMED,
            settings,
            gateway_arguments(settings, TIMED_GATEWAY_SCRIPT),
            {**os.environ, "TOKENWARD_HOOK_TIMES": str(times_file)},
        )
        with timed:
            proxies.append(timed)
            for proxy in proxies:
                pin_process(proxy.pid, proxy_cpus)
            cpu_runs = cpu_per_request_runs(proxies, header, rounds, seconds)
        # Stopped: the timed gateway has written its times.
        hook_times: dict[str, list[float]] = json.loads(times_file.read_text())

    detail = (
        f"{tokens:,} tokens, token in header, wrk -t1 -c16, {rounds} runs of {seconds} s, "
        f"{cpus_used(proxy_cpus)}"
    )
    medians = {name: statistics.median(runs) for name, runs in cpu_runs.items()}
    bare = medians[proxies[0].what]
    figures = []
    for name, runs in cpu_runs.items():
        each_run = ", ".join(f"{value:.0f}" for value in runs)
        over_bare = "" if name == proxies[0].what else f"{medians[name] - bare:+.1f} µs over bare; "
        figures.append(
            Figure(
                "inproxy",
                f"proxy CPU per request: {name}",
                medians[name],
                "µs",
                detail=f"{over_bare}{detail}: {each_run}",
            )
        )
    for hook, times in hook_times.items():
        # The first tenth warms up: the store's row is read, routes are built.
        steady = sorted(times[len(times) // 10 :])
        figures.append(
            Figure(
                "inproxy",
                f"{hook} inside mitmdump under load: median",
                statistics.median(steady) * 1e6,
                "µs",
                detail=(
                    f"mean {statistics.mean(steady) * 1e6:.1f} µs, "
                    f"90th percentile {steady[len(steady) * 9 // 10] * 1e6:.1f} µs, "
                    f"{len(steady):,} calls"
                ),
            )
        )
    return figures


def cpu_per_request_runs(
    proxies: list[RunningProxy], headers: dict[str, str], rounds: int, seconds: int
) -> dict[str, list[float]]:
    """Each proxy's CPU µs per request in `rounds` runs, the proxies in turn."""
    variants = [Variant(proxy.what, proxy, "/", headers) for proxy in proxies]
    for variant in variants:
        variant.run(1)  # warm-up
    runs: dict[str, list[float]] = {variant.name: [] for variant in variants}
    for _ in range(rounds):
        for variant in variants:
            runs[variant.name].append(variant.run(seconds).cpu_microseconds_per_request)
    return runs

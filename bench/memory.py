"""Peak resident memory of the proxy serving a burst of requests: large store against empty.

Every request of the burst carries another token drawn from the large store, so the lookups
spread over its pages and SQLite's page cache fills as it would in service. The empty store
gets the same burst and rejects it (unknown token), which is what an empty store does.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.load import LoadResult, run_wrk
from bench.measure import BenchOptions, Figure, Target
from bench.synthetic import synthetic_store, working_copy
from tokenward.fixtures.processes import (
    RunningUpstream,
    peak_resident_kib,
    start_proxy,
    start_upstream,
)
from tokenward.proxy import ProxySettings

DIFFERENCE_TARGET = Target("<=", 50.0)
BYTES_PER_MB = 1_000_000


def random_token_script(count: int) -> str:
    """wrk Lua: each request carries `known_token(i)` for a random i below `count`."""
    return f"""
math.randomseed(1)
request = function()
  wrk.headers["x-auth-token"] = string.format("sm_pat_%032d", math.random(0, {count - 1}))
  return wrk.format(nil, "/")
end
"""


def burst(
    upstream: RunningUpstream, store: Path, script: str, seconds: int
) -> tuple[float, LoadResult]:
    """Peak RSS in MB of a proxy on `store` that served a burst of `seconds`, and the load."""
    with (
        working_copy(store) as copy,
        start_proxy(ProxySettings(copy, upstream.url, listen_port=0)) as proxy,
    ):
        load = run_wrk(proxy.url + "/", {}, seconds, script)
        return peak_resident_kib(proxy.pid) * 1024 / BYTES_PER_MB, load


def run(options: BenchOptions) -> list[Figure]:
    large = 1_000 if options.quick else 1_000_000
    runs, burst_seconds = (1, 1) if options.quick else (3, 10)
    stores = {size: synthetic_store(size, options.cache_dir) for size in (0, large)}
    script = random_token_script(large)
    peaks: dict[int, list[float]] = {size: [] for size in stores}
    loads: dict[int, list[LoadResult]] = {size: [] for size in stores}
    with start_upstream() as upstream:
        # Alternating, like the timings, though memory is far less noisy than time.
        for _ in range(runs):
            for size, store in stores.items():
                peak, load = burst(upstream, store, script, burst_seconds)
                peaks[size].append(peak)
                loads[size].append(load)
    if any(load.failed_status or load.socket_errors for load in loads[large]):
        raise RuntimeError(f"the large store refused tokens it holds: {loads[large]}")

    figures = [
        Figure(
            "memory",
            f"peak RSS, {size:,} tokens stored",
            statistics.median(peaks[size]),
            "MB",
            detail=f"VmHWM, median of {runs} proxies; {_answers(loads[size])}",
        )
        for size in stores
    ]
    figures.append(
        Figure(
            "memory",
            f"peak RSS, {large:,} tokens minus empty store",
            statistics.median(peaks[large]) - statistics.median(peaks[0]),
            "MB",
            DIFFERENCE_TARGET,
            f"bursts of {burst_seconds} s, wrk -t1 -c16, a random stored token per request",
        )
    )
    return figures


def _answers(loads: list[LoadResult]) -> str:
    requests = sum(load.requests for load in loads)
    refused = sum(load.failed_status for load in loads)
    return f"{requests:,} requests, {refused:,} refused"

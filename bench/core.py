"""The pure core per request: `find_token` then `rewrite_request(..., Forward.STRIP)`."""

from __future__ import annotations

from collections.abc import Callable

from bench.measure import (
    BenchOptions,
    Figure,
    Target,
    interleaved_median_microseconds,
    repeated_call,
)
from bench.synthetic import known_token
from tokenward.core.layouts import layout_named
from tokenward.core.placement import Request, find_token, rewrite_request
from tokenward.core.verdicts import Forward

TARGET = Target("<", 10.0)
# The header fields wrk sends, so the header loop costs what it costs in the proxy.
CLIENT_HEADERS = (("Host", "127.0.0.1:8080"), ("User-Agent", "wrk"), ("Accept", "*/*"))


def strip_call(layout_name: str, target: str) -> Callable[[], object]:
    """One find-and-strip of a GET for `target` under the layout called `layout_name`."""
    layout = layout_named(layout_name)
    request = Request("GET", target, CLIENT_HEADERS)

    def find_and_strip() -> Request:
        return rewrite_request(request, find_token(request, layout), layout, Forward.STRIP)

    return find_and_strip


def run(options: BenchOptions) -> list[Figure]:
    token = known_token(0)
    calls = {
        "generic /TOKEN": strip_call("generic", f"/{token}"),
        "ipfs /TOKEN/api/v0/version": strip_call("ipfs", f"/{token}/api/v0/version"),
    }
    calls_per_batch, batches = (200, 5) if options.quick else (2_000, 51)
    medians = interleaved_median_microseconds(
        {name: repeated_call(call, calls_per_batch) for name, call in calls.items()}, batches
    )
    detail = f"median of {batches} batch means of {calls_per_batch} calls"
    return [
        Figure("core", f"find+strip {name}", median, "µs", TARGET, detail)
        for name, median in medians.items()
    ]

"""The addon's `requestheaders` hook in process, per placement of the token, on a large store.

Flows are mitmproxy's test flows, made fresh for every call (the hook rewrites them) before the
timed loop starts, and sent as the proxy receives them in reverse mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mitmproxy import http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow, tutils

from bench.measure import (
    BenchOptions,
    Figure,
    Target,
    interleaved_median_microseconds,
    seconds_per_call,
)
from bench.synthetic import known_token, synthetic_store, working_copy
from tokenward.addons.gateway import TokenWard

# The one-decision issue's bounds: the header's, and the URL's (query and path) a little wider.
TARGETS = {"header": Target("<=", 15.0), "query": Target("<=", 18.0), "path": Target("<=", 18.0)}
UPSTREAM = "http://127.0.0.1:8545"
CLIENT_HEADERS = ((b"host", b"127.0.0.1:8080"), (b"user-agent", b"wrk"), (b"accept", b"*/*"))

Placed = tuple[str, tuple[tuple[bytes, bytes], ...]]


def placements(token: str) -> dict[str, Placed]:
    """Target and extra header fields of a GET carrying `token` in each placement."""
    return {
        "header": ("/", ((b"x-auth-token", token.encode()),)),
        "query": (f"/?token={token}", ()),
        "path": (f"/{token}", ()),
    }


def client_flow(placed: Placed) -> http.HTTPFlow:
    target, extra_headers = placed
    request = tutils.treq(
        method=b"GET",
        host="127.0.0.1",
        port=8545,
        path=target.encode(),
        headers=http.Headers([*CLIENT_HEADERS, *extra_headers]),
        content=b"",
    )
    flow = tflow.tflow(req=request)
    flow.client_conn.proxy_mode = ProxyMode.parse(f"reverse:{UPSTREAM}")
    return flow


def hook_batch(addon: TokenWard, placed: Placed, calls: int) -> Callable[[], float]:
    def run_batch() -> float:
        flows = [client_flow(placed) for _ in range(calls)]

        def run_hook() -> None:
            for flow in flows:
                addon.requestheaders(flow)

        return seconds_per_call(run_hook, calls)

    return run_batch


def check_accepted(addon: TokenWard, placement: str, placed: Placed) -> None:
    """Refuse to time a rejection: the figure is for the accepted request's path."""
    flow = client_flow(placed)
    addon.requestheaders(flow)
    verdict = flow.metadata.get("tokenward", {}).get("verdict")
    if flow.response is not None or verdict != "accepted":
        raise RuntimeError(f"the {placement} request was not accepted: {verdict}")


def run(options: BenchOptions) -> list[Figure]:
    tokens = 1_000 if options.quick else 1_000_000
    calls, batches = (100, 3) if options.quick else (500, 31)
    with working_copy(synthetic_store(tokens, options.cache_dir)) as store_path:
        medians = measure_hook(store_path, placements(known_token(tokens // 2)), calls, batches)
    detail = f"{tokens:,} tokens; median of {batches} batch means of {calls} calls"
    return [
        Figure(
            "addon",
            f"requestheaders, token in {placement}",
            median,
            "µs",
            TARGETS[placement],
            detail,
        )
        for placement, median in medians.items()
    ]


def measure_hook(
    store_path: Path, placed: dict[str, Placed], calls: int, batches: int
) -> dict[str, float]:
    addon = TokenWard()
    with taddons.context(addon) as context:
        context.configure(addon, tokenward_db=str(store_path), tokenward_forward="strip")
        for placement, request in placed.items():
            check_accepted(addon, placement, request)
        try:
            return interleaved_median_microseconds(
                {name: hook_batch(addon, request, calls) for name, request in placed.items()},
                batches,
            )
        finally:
            if addon.store is not None:
                addon.store.close()

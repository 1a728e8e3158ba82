"""`TokenStore.verify` with a small and a large store, side by side: does its cost grow?"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from bench.measure import (
    BenchOptions,
    Figure,
    Target,
    interleaved_median_microseconds,
    seconds_per_call,
)
from bench.synthetic import known_token, synthetic_store, unknown_token
from tokenward_lib.store import TokenStore

RATIO_TARGET = Target("<=", 1.2)
SMALL_STORE = 1_000
# Lookups cycle through this many tokens, spread over the store, so a batch walks several
# B-tree paths rather than one path that stays in the CPU cache.
LOOKUP_TOKENS = 250


def verify_batch(store: TokenStore, tokens: Sequence[str]) -> Callable[[], float]:
    now = datetime.now(UTC)

    def verify_each() -> None:
        for token in tokens:
            store.verify(token, None, now)

    return lambda: seconds_per_call(verify_each, len(tokens))


def run(options: BenchOptions) -> list[Figure]:
    large_store = 10_000 if options.quick else 1_000_000
    batches = 5 if options.quick else 41
    sizes = (SMALL_STORE, large_store)
    runners: dict[str, Callable[[], float]] = {}
    with contextlib.ExitStack() as stores:
        for size in sizes:
            store = stores.enter_context(
                TokenStore.open(synthetic_store(size, options.cache_dir), create=False)
            )
            step = size // LOOKUP_TOKENS
            existing = [known_token(index * step) for index in range(LOOKUP_TOKENS)]
            unknown = [unknown_token(index) for index in range(LOOKUP_TOKENS)]
            runners[f"existing, {size:,} tokens"] = verify_batch(store, existing)
            runners[f"unknown, {size:,} tokens"] = verify_batch(store, unknown)
        medians = interleaved_median_microseconds(runners, batches)

    detail = f"{LOOKUP_TOKENS} tokens spread over the store; median of {batches} batch means"
    figures = [
        Figure("store", f"verify {name}", median, "µs", detail=detail)
        for name, median in medians.items()
    ]
    for lookup in ("existing", "unknown"):
        small = medians[f"{lookup}, {SMALL_STORE:,} tokens"]
        large = medians[f"{lookup}, {large_store:,} tokens"]
        figures.append(
            Figure(
                "store",
                f"verify {lookup}: {large_store:,} / {SMALL_STORE:,} tokens",
                large / small,
                "x",
                RATIO_TARGET,
                "ratio of the medians above",
            )
        )
    return figures

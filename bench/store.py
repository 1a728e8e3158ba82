"""`TokenStore.lookup` with a small and a large store, side by side: does its cost grow?

lookup reads a token's row from SQLite once something was committed since it last read it, and
otherwise answers from what it read. The "read" figures make another connection commit before
each batch (as the CLI would), so every lookup of the batch walks the B-tree with SQLite's page
cache emptied by the commit; the others are the steady state between changes.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from bench.measure import (
    BenchOptions,
    Figure,
    Target,
    interleaved_median_microseconds,
    seconds_per_call,
)
from bench.synthetic import known_token, synthetic_store, unknown_token, working_copy
from tokenward.core.tokens import token_digest
from tokenward.store import TokenStore

RATIO_TARGET = Target("<=", 1.2)
AFTER_COMMIT = ", first read after a commit"
SMALL_STORE = 1_000
# Lookups cycle through this many tokens, spread over the store, so a batch walks several
# B-tree paths rather than one path that stays in the CPU cache.
LOOKUP_TOKENS = 250


def verify_batch(
    store: TokenStore, tokens: Sequence[str], before: Callable[[], object] = lambda: None
) -> Callable[[], float]:
    """A timed batch of one lookup per token, after `before` (not timed)."""

    def lookup_each() -> None:
        for token in tokens:
            store.lookup(token)

    def run_batch() -> float:
        before()
        return seconds_per_call(lookup_each, len(tokens))

    return run_batch


def committing(writer: TokenStore) -> Callable[[], None]:
    """A commit by another connection each call: a token's last use, a second later each time."""
    digest = token_digest(known_token(0))
    moments = (datetime.now(UTC) + timedelta(seconds=n) for n in itertools.count())

    def commit() -> None:
        writer.note_used(digest, next(moments))
        writer.flush_usage()

    return commit


def run(options: BenchOptions) -> list[Figure]:
    large_store = 10_000 if options.quick else 1_000_000
    batches = 5 if options.quick else 41
    sizes = (SMALL_STORE, large_store)
    runners: dict[str, Callable[[], float]] = {}
    with contextlib.ExitStack() as stores:
        for size in sizes:
            # A copy: the commits write to it, and the built store must stay as built.
            path = stores.enter_context(working_copy(synthetic_store(size, options.cache_dir)))
            store = stores.enter_context(TokenStore.open(path, create=False))
            commit = committing(stores.enter_context(TokenStore.open(path, create=False)))
            step = size // LOOKUP_TOKENS
            lookups = {
                "existing": [known_token(index * step) for index in range(LOOKUP_TOKENS)],
                "unknown": [unknown_token(index) for index in range(LOOKUP_TOKENS)],
            }
            for lookup, tokens in lookups.items():
                # Read once, untimed, first: the other batches' commits came in between.
                warm = verify_batch(store, tokens)
                runners[f"{lookup}, {size:,} tokens"] = verify_batch(store, tokens, warm)
                runners[f"{lookup}, {size:,} tokens{AFTER_COMMIT}"] = verify_batch(
                    store, tokens, commit
                )
        medians = interleaved_median_microseconds(runners, batches)

    detail = f"{LOOKUP_TOKENS} tokens spread over the store; median of {batches} batch means"
    figures = [
        Figure("store", f"verify {name}", median, "µs", detail=detail)
        for name, median in medians.items()
    ]
    for lookup in ("existing", "unknown"):
        for case, target in (("", RATIO_TARGET), (AFTER_COMMIT, None)):
            small = medians[f"{lookup}, {SMALL_STORE:,} tokens{case}"]
            large = medians[f"{lookup}, {large_store:,} tokens{case}"]
            figures.append(
                Figure(
                    "store",
                    f"verify {lookup}{case}: {large_store:,} / {SMALL_STORE:,} tokens",
                    large / small,
                    "x",
                    target,
                    "ratio of the medians above",
                )
            )
    return figures

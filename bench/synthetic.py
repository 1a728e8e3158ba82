"""Token stores of any size, filled by a bulk insert of synthetic rows and cached on disk.

Token `i` of a synthetic store is `known_token(i)`; `unknown_token(i)` is in none. The schema is
the real one, made by `TokenStore.open(create=True)`; only the rows are written directly, in one
transaction, since a million `create_token` calls would take most of an hour.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path

from tokenward.core.tokens import token_digest, token_hint
from tokenward.store import SCHEMA_VERSION, TokenStore, digest_key

# Part of the cache key: change it whenever the rows written below change.
ROWS_VERSION = 2
CREATED_AT = "2026-01-01T00:00:00.000000+00:00"


def known_token(index: int) -> str:
    return f"sm_pat_{index:032d}"


def unknown_token(index: int) -> str:
    # A letter in the body: every stored token's body is all digits.
    return f"sm_pat_u{index:031d}"


def synthetic_store(count: int, cache_dir: Path) -> Path:
    """The path of a store holding tokens 0 to `count - 1`, built on first use."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    # The empty store comes first: its schema itself, not only the version number, keys the
    # cache, so that any edit of the schema gets a new file.
    # Named per process: two benchmark runs at once must not build in (or remove) one file.
    building = cache_dir / f"tokens-{count}.building-{os.getpid()}"
    _remove_with_sidecars(building)
    TokenStore.open(building, create=True).close()
    schema = f"schema{SCHEMA_VERSION}-{_schema_fingerprint(building)}"
    path = cache_dir / f"tokens-{count}-{schema}-rows{ROWS_VERSION}.db"
    if path.exists():
        _remove_with_sidecars(building)
        return path
    print(f"building a {count:,}-token store at {path}, kept for later runs", file=sys.stderr)
    for stale in cache_dir.glob(f"tokens-{count}-schema*.db"):
        _remove_with_sidecars(stale)
    _insert_tokens(building, count)
    # Renamed only once complete, so an interrupted build is never used.
    os.replace(building, path)
    return path


@contextlib.contextmanager
def working_copy(store: Path) -> Iterator[Path]:
    """A scratch copy of `store` for a proxy or an addon, removed afterwards.

    Both record the last use of the tokens they accept, which makes rows grow and pages split:
    the cached file must stay as built, or the figures of later runs would drift.
    """
    copy = store.with_name(f"work-{os.getpid()}-{store.name}")
    shutil.copyfile(store, copy)
    try:
        yield copy
    finally:
        _remove_with_sidecars(copy)


def _schema_fingerprint(path: Path) -> str:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        statements = connection.execute(
            "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL ORDER BY type, name"
        ).fetchall()
    return hashlib.sha256("\n".join(sql for (sql,) in statements).encode()).hexdigest()[:12]


def _remove_with_sidecars(path: Path) -> None:
    for name in (path.name, f"{path.name}-wal", f"{path.name}-shm"):
        path.with_name(name).unlink(missing_ok=True)


def _insert_tokens(path: Path, count: int) -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as connection:
        # A half-built file is thrown away, so it needs no journal and no fsync.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO tokens (digest_key, id, name, kind, owner, digest, hint, created_at)"
            " VALUES (?, ?, ?, 'pat', 'bench', ?, ?, ?)",
            _rows(count),
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA journal_mode=WAL")


def _rows(count: int) -> Iterator[tuple[int, int, str, str, str, str]]:
    # In digest order (which is also the order of the rows' keys), with ids and names following
    # that order, the table and every index grow at their end: random-order inserts into a
    # million-entry B-tree take many times longer.
    by_digest = sorted((token_digest(known_token(index)), index) for index in range(count))
    for rank, (digest, index) in enumerate(by_digest):
        name = f"bench-{rank:07d}"
        hint = token_hint(known_token(index))
        yield digest_key(digest), rank + 1, name, digest, hint, CREATED_AT

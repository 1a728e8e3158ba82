"""The token store: what the proxy, the CLI, explain, the console and the harness read and
change, behind one interface, `Store`; `open_store` opens one.

Two stores: SQLite (`sqlite.TokenStore`, the embedded default, the only code touching SQLite)
and PostgreSQL for a fleet (`postgres.PostgresStore`, with `pg_schema` and `notices`: its
changes pushed to every proxy by LISTEN/NOTIFY). The rules both keep are `rules`'. SQLite's
modules, one per job: `errors` (what a store refuses or cannot do), `schema` (tables,
triggers, migrations), `changes` (has anything been committed, are the -wal and -shm still
the connection's), `rows` (token, service and console key rows and their records), `usage`
(last-used times buffered between writes) and `sqlite` (the store itself).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from tokenward.core.records import ServiceRecord, TokenRecord
from tokenward.store.errors import (
    StoreCorrupt,
    StoreError,
    StoreMissing,
    StoreRefused,
    StoreUnavailable,
    TokenNotLoaded,
    is_postgresql_url,
    masked_url,
)
from tokenward.store.postgres import PostgresStore
from tokenward.store.rows import (
    ConsoleKeyRecord,
    StoreRows,
    check_upstream,
    digest_key,
    normalize_host,
)
from tokenward.store.schema import MIGRATIONS, SCHEMA_VERSION
from tokenward.store.sqlite import TokenStore

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ConsoleKeyRecord",
    "PostgresStore",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreMissing",
    "StoreRefused",
    "StoreRows",
    "StoreUnavailable",
    "TokenNotLoaded",
    "TokenStore",
    "check_upstream",
    "digest_key",
    "is_postgresql_url",
    "masked_url",
    "normalize_host",
    "open_store",
    "shown_location",
]


class Store(Protocol):
    """One open token store, as its users see it: exactly what the proxy, the CLI, explain,
    the console and the harness call. Safe to share between threads.

    Every method raises StoreUnavailable (or StoreMissing, StoreCorrupt) when the store
    cannot be used, and StoreRefused when a change breaks one of its rules.
    """

    def close(self) -> None:
        """Write buffered last-used times, then let the store go."""

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def holds(self, path: str | Path) -> bool:
        """Is the store at `path` the one open here?"""
        ...

    def check_file(self) -> bool:
        """Reopen when what is at the store's place is no longer what is open; True when it
        did. Cheap enough for every request."""
        ...

    # --- tokens

    def lookup(self, token: str) -> TokenRecord | None:
        """What the store holds of `token` (deleted or expired too), as committed by anyone
        before the call; None when nothing. Called on every request. A store serving a proxy
        (`serve`) may raise TokenNotLoaded instead of reading on the caller's thread."""
        ...

    def serve(self) -> None:
        """The proxy's: from now on `lookup` never waits for the database on the caller's
        thread; it raises TokenNotLoaded where it would, and `load` reads in the background."""
        ...

    async def load(self, token: str) -> TokenRecord | None:
        """What `lookup` would answer, read without blocking the caller's event loop."""
        ...

    def create_token(
        self,
        name: str,
        kind: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
    ) -> tuple[str, TokenRecord]:
        """Issue a new token: its plaintext, returned here only, and its record."""
        ...

    def import_token(
        self,
        token: str,
        name: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
        kind: str | None = None,
    ) -> TokenRecord: ...

    def list_tokens(self, include_deleted: bool = False) -> tuple[TokenRecord, ...]: ...

    def get_token(self, name: str, include_deleted: bool = False) -> TokenRecord | None: ...

    def delete_token(self, name: str, now: datetime) -> TokenRecord: ...

    def set_scope(self, name: str, scope: frozenset[str] | None) -> TokenRecord: ...

    # --- last used

    def note_used(self, used: str | TokenRecord, now: datetime) -> None:
        """Remember a use (a digest or a record) at `now`; written by `flush_usage`."""
        ...

    def flush_usage(self) -> int:
        """Write the uses noted; how many tokens. On failure they stay noted."""
        ...

    # --- services

    def add_service(
        self,
        name: str,
        layout: str,
        hosts: Sequence[str] | None,
        upstream: str,
        now: datetime | None = None,
    ) -> ServiceRecord: ...

    def remove_service(self, name: str) -> ServiceRecord: ...

    def list_services(self) -> tuple[ServiceRecord, ...]:
        """The services by name; the very same tuple while nothing changed."""
        ...

    # --- copying (`tokenward store copy`)

    def export_rows(self) -> StoreRows:
        """Every row of the store: digests, never a token."""
        ...

    def import_rows(self, rows: StoreRows) -> None:
        """Write another store's rows into this one; StoreRefused unless it is empty."""
        ...

    # --- console keys

    def create_console_key(
        self, name: str, digest: str, hint: str, now: datetime
    ) -> ConsoleKeyRecord: ...

    def list_console_keys(self) -> tuple[ConsoleKeyRecord, ...]: ...

    def delete_console_key(self, name: str) -> ConsoleKeyRecord: ...

    def console_key_named_by(self, digest: str) -> ConsoleKeyRecord | None: ...


def open_store(location: str | os.PathLike[str], *, create: bool) -> Store:
    """The store at `location`: a postgresql:// (or postgres://) URL names a PostgreSQL
    database, anything else the path of a SQLite file; `create` makes it when missing."""
    if isinstance(location, str) and is_postgresql_url(location):
        return PostgresStore.open(location, create=create)
    return TokenStore.open(location, create=create)


def shown_location(location: str | os.PathLike[str]) -> str:
    """`location` as it may be shown: a URL with its password masked, a path as it is."""
    text = str(location)
    return masked_url(text) if is_postgresql_url(text) else text

"""The token store: what the proxy, the CLI, explain, the console and the harness read and
change, behind one interface, `Store`; `open_store` opens one.

The SQLite store (`sqlite.TokenStore`) is the only one today and the only code touching SQLite.
Its modules, one per job: `errors` (what a store refuses or cannot do), `schema` (tables,
triggers, migrations), `changes` (has anything been committed, are the -wal and -shm still
the connection's), `rows` (token, service and console key rows and their records), `usage`
(last-used times buffered between writes) and `sqlite` (the store itself).
"""

from __future__ import annotations

import os
import urllib.parse
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
)
from tokenward.store.rows import ConsoleKeyRecord, check_upstream, digest_key, normalize_host
from tokenward.store.schema import MIGRATIONS, SCHEMA_VERSION
from tokenward.store.sqlite import TokenStore

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "ConsoleKeyRecord",
    "Store",
    "StoreCorrupt",
    "StoreError",
    "StoreMissing",
    "StoreRefused",
    "StoreUnavailable",
    "TokenStore",
    "check_upstream",
    "digest_key",
    "normalize_host",
    "open_store",
]

# Where the fleet's PostgreSQL store will be (LISTEN/NOTIFY in place of `changes`).
_POSTGRESQL_SCHEMES = ("postgresql", "postgres")


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
        before the call; None when nothing. Called on every request."""
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

    # --- console keys

    def create_console_key(
        self, name: str, digest: str, hint: str, now: datetime
    ) -> ConsoleKeyRecord: ...

    def list_console_keys(self) -> tuple[ConsoleKeyRecord, ...]: ...

    def delete_console_key(self, name: str) -> ConsoleKeyRecord: ...

    def console_key_named_by(self, digest: str) -> ConsoleKeyRecord | None: ...


def open_store(location: str | os.PathLike[str], *, create: bool) -> Store:
    """The store at `location`, a path of a SQLite file; `create` makes it when missing.

    A postgresql:// URL names the fleet's store, which is not supported yet: StoreUnavailable.
    """
    if isinstance(location, str):
        scheme, separator, _ = location.partition("://")
        if separator and scheme.lower() in _POSTGRESQL_SCHEMES:
            raise StoreUnavailable(
                f"cannot open the token store {_masked_url(location)!r}:"
                " PostgreSQL is not supported yet; use the path of an SQLite file"
            )
    return TokenStore.open(location, create=create)


def _masked_url(url: str) -> str:
    """`url`, a scheme://... URL, with its password (in the user part or a `password`
    parameter) shown as ***."""
    parts = urllib.parse.urlsplit(url)
    user_part, at, hosts = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at and ":" in user_part:
        netloc = f"{user_part.partition(':')[0]}:***@{hosts}"
    query = "&".join(
        "password=***" if item.partition("=")[0].lower() == "password" else item
        for item in parts.query.split("&")
    )
    # Put together by hand: urlunsplit drops the // of an empty host (postgresql:///tokens).
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    shown += f"?{query}" if query else ""
    return shown + (f"#{parts.fragment}" if parts.fragment else "")

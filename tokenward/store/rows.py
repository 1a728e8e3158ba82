"""Token, service and console key rows as SQLite holds them, and the records they make.

Times are ISO 8601 text in UTC with microseconds (fixed width, so text order is time order),
a scope is a JSON list of service names (NULL: all services), a service's hosts a JSON list.
A token row is keyed on `digest_key`, the first 8 bytes of its digest.
"""

from __future__ import annotations

import functools
import json
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from tokenward.core.hosts import InvalidHost
from tokenward.core.hosts import normalize_host as core_normalize_host
from tokenward.core.lifetimes import as_utc
from tokenward.core.records import ServiceRecord, TokenRecord
from tokenward.store.errors import StoreRefused

UPSTREAM_SCHEMES: tuple[str, ...] = ("http", "https", "ws", "wss")

_KEY_OFFSET = 1 << 63
HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

_RECORD_COLUMNS = "name, kind, owner, hint, created_at, expires_at, scope, last_used_at, revoked_at"
SELECT_TOKENS = f"SELECT {_RECORD_COLUMNS}, digest FROM tokens"
SELECT_BY_DIGEST = f"SELECT {_RECORD_COLUMNS} FROM tokens WHERE digest = ?"
# The hot path. It finds the row in one walk of the table's B-tree, keyed by `digest_key`, then
# compares the whole digest; the row comes as one JSON text, since every column handed to
# Python costs time.
SELECT_FOR_LOOKUP = (
    f"SELECT json_array({_RECORD_COLUMNS}) FROM tokens WHERE digest_key = ? AND digest = ?"
)
SELECT_LIVE_BY_NAME = f"{SELECT_TOKENS} WHERE name = ? AND revoked_at IS NULL"
SELECT_SERVICES = "SELECT name, hosts, layout, upstream FROM services ORDER BY name"
SELECT_CONSOLE_KEYS = "SELECT name, hint, created_at, digest FROM console_keys"


def format_time(moment: datetime) -> str:
    # Fixed width, so text order is time order inside SQLite too.
    return as_utc(moment).isoformat(timespec="microseconds")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@functools.lru_cache(maxsize=1024)
def _parse_scope(text: str) -> frozenset[str]:
    # Few distinct scopes exist, and a frozenset can be shared.
    return frozenset(json.loads(text))


def scope_json(scope: frozenset[str] | None) -> str | None:
    return None if scope is None else json.dumps(sorted(scope))


def token_record(row: Sequence[str], digest: str) -> TokenRecord:
    """The record of a row holding `_RECORD_COLUMNS` (in that order) first."""
    name, kind, owner, hint, created_at, expires_at, scope, last_used_at, revoked_at = row[:9]
    return TokenRecord(
        name,
        kind,
        owner,
        hint,
        datetime.fromisoformat(created_at),
        _parse_time(expires_at),
        None if scope is None else _parse_scope(scope),
        _parse_time(last_used_at),
        _parse_time(revoked_at),
        digest,
    )


def decode_found(rows: Sequence[tuple[str, ...]], digest: str) -> TokenRecord | None:
    """The record `SELECT_FOR_LOOKUP` read, or None for a digest with no row."""
    if not rows:
        return None
    return token_record(json.loads(rows[0][0]), digest)


def digest_key(digest: str) -> int:
    """The row key of the token whose hex SHA-256 is `digest`: its first 8 bytes, as a signed
    64-bit integer that sorts as the digests do."""
    return int(digest[:16], 16) - _KEY_OFFSET


def key_if_digest(digest: str) -> int | None:
    """`digest_key(digest)`, or None when `digest` is no hex SHA-256, which no token row has
    (unless written by another program: migrated, it gets a rowid of SQLite's choosing)."""
    return digest_key(digest) if HEX_DIGEST.fullmatch(digest) else None


def service_record(row: tuple[str, str, str, str]) -> ServiceRecord:
    name, hosts, layout, upstream = row
    return ServiceRecord(name, tuple(json.loads(hosts)), layout, upstream)


def normalize_host(host: str) -> str:
    """`host` as services are matched (the core's rule); StoreRefused saying why not."""
    try:
        return core_normalize_host(host)
    except InvalidHost as error:
        raise StoreRefused(str(error)) from None


def check_upstream(url: str) -> str:
    """`url` when it is an http(s) or ws(s) URL with a host; StoreRefused otherwise."""
    expected = f"expected {', '.join(s + '://' for s in UPSTREAM_SCHEMES)} and a host"
    if any(character.isspace() for character in url):
        raise StoreRefused(f"invalid upstream {url!r}: {expected}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in UPSTREAM_SCHEMES or not parts.hostname:
        raise StoreRefused(f"invalid upstream {url!r}: {expected}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise StoreRefused(f"invalid upstream {url!r}: bad port") from None
    return url


@dataclass(frozen=True, slots=True)
class ConsoleKeyRecord:
    """An admin key of the console, kept as its SHA-256 digest like a token, in a table of
    its own that `lookup` never reads: an admin key is never valid at the gateway."""

    name: str
    hint: str
    created_at: datetime
    digest: str = field(repr=False)


def console_key_record(row: Sequence[str]) -> ConsoleKeyRecord:
    """The record of a row of `SELECT_CONSOLE_KEYS`."""
    name, hint, created_at, digest = row
    return ConsoleKeyRecord(name, hint, datetime.fromisoformat(created_at), digest)


# What `store copy` carries from one store to another, column for column, in creation order.
COPY_TOKEN_COLUMNS = (
    "id, name, kind, owner, digest, hint, created_at, expires_at, scope, last_used_at, revoked_at"
)
COPY_SERVICE_COLUMNS = "name, hosts, layout, upstream, created_at"
COPY_CONSOLE_KEY_COLUMNS = "name, digest, hint, created_at"


@dataclass(frozen=True, slots=True)
class StoreRows:
    """Every row of a store, as `COPY_*_COLUMNS` name them: digests, never a token."""

    tokens: tuple[tuple[object, ...], ...]
    services: tuple[tuple[object, ...], ...]
    console_keys: tuple[tuple[object, ...], ...]

    def is_empty(self) -> bool:
        return not (self.tokens or self.services or self.console_keys)


def refuse_filled(shown: str) -> StoreRefused:
    return StoreRefused(
        f"the token store {shown!r} is not empty: a copy goes into an empty store only"
    )

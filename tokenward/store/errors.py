"""What the store refuses or cannot do: one family of exceptions, whichever store is behind."""

from __future__ import annotations

import urllib.parse


class StoreError(Exception):
    """Anything the store refuses or cannot do; `str()` is one line for a person."""


class StoreUnavailable(StoreError):
    """The store file cannot be used: missing, unreadable, corrupt, locked, full or read-only."""


class StoreMissing(StoreUnavailable):
    """There is no store file at the path."""


class StoreCorrupt(StoreUnavailable):
    """The file at the path is not a tokenward store, or is damaged."""


class StoreRefused(StoreError, ValueError):
    """The request breaks a rule of the store: a duplicate name, an unknown service, ..."""


class DigestKeyTaken(StoreRefused):
    """Another stored token's digest begins with the same 8 bytes (see `rows.digest_key`)."""


class TokenNotLoaded(Exception):
    """`lookup` cannot answer `token` without a database read, and the store serves a proxy,
    which must not wait for one on its event loop: `await store.load(token)`, then ask again."""

    def __init__(self, token: str) -> None:
        super().__init__("the token's record is not loaded yet")
        self.token = token


def masked_url(url: str) -> str:
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


def is_postgresql_url(location: object) -> bool:
    """Does `location` name a PostgreSQL store (a postgresql:// or postgres:// URL)?"""
    if not isinstance(location, str):
        return False
    scheme, separator, _ = location.partition("://")
    return bool(separator) and scheme.lower() in ("postgresql", "postgres")

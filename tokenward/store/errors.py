"""What the store refuses or cannot do: one family of exceptions, whichever store is behind."""

from __future__ import annotations


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

"""Last-used times: noted in memory per request, written later in one transaction.

A request then costs no write; the times wait in a `UsageBuffer` until `flush_usage`.
"""

from __future__ import annotations

import threading
from datetime import datetime

from tokenward.store.rows import format_time, key_if_digest

# Named placeholders with a mapping: a `?1`-style placeholder bound from a sequence is
# deprecated (Python 3.14 raises). A time only ever moves forward.
UPDATE_LAST_USED = (
    "UPDATE tokens SET last_used_at = :moment WHERE digest_key = :key AND digest = :digest"
    " AND (last_used_at IS NULL OR last_used_at < :moment)"
)


class UsageBuffer:
    """The latest use noted per token digest, not yet written. Safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, datetime] = {}

    def note(self, digest: str, now: datetime) -> None:
        """Remember that the token whose digest is `digest` was used at `now`."""
        with self._lock:
            previous = self._pending.get(digest)
            if previous is None or now > previous:
                self._pending[digest] = now

    def take(self) -> dict[str, datetime]:
        """The times noted, by digest; the buffer is empty afterwards."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return pending

    def give_back(self, pending: dict[str, datetime]) -> None:
        """Buffer again what `take` returned and could not be written, for the next try."""
        for digest, moment in pending.items():
            self.note(digest, moment)


def usage_updates(pending: dict[str, datetime]) -> list[dict[str, object]]:
    """The parameters of `UPDATE_LAST_USED` for what `UsageBuffer.take` returned."""
    return [
        {"moment": format_time(moment), "key": key_if_digest(digest), "digest": digest}
        for digest, moment in pending.items()
    ]

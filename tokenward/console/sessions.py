"""The page's sign-in sessions, held in the console's memory, and one-time slots for new tokens.

A session is a random id in an HttpOnly, SameSite=Strict cookie; the server keeps what it
stands for (the admin key's digest, the session's CSRF token, when it ends). Signing out
forgets it, so the cookie is worth nothing afterwards, and a session whose key was deleted ends
at its next request. The sign-in form itself is protected by a cookie and a form field that
must agree (the field is an HMAC of the cookie under a secret of this process).

A token created on the page is put in a one-time slot of its session and the browser is sent
to the slot's address: the first GET shows the token and empties the slot, so a reload, the
back button or another session finds nothing. A slot not read within `SLOT_SECONDS` is dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

SESSION_SECONDS = 8 * 3600
SLOT_SECONDS = 600
# Bounds the memory a flood of sign-ins could take; the oldest sessions go first.
MAX_SESSIONS = 10_000


def _random_id() -> str:
    return secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    key_digest: str
    key_name: str
    csrf: str
    ends_at: float  # time.monotonic()

    def accepts(self, csrf: str | None) -> bool:
        return csrf is not None and hmac.compare_digest(csrf.encode(), self.csrf.encode())


@dataclass(frozen=True, slots=True)
class _Slot:
    session_id: str
    token: str
    name: str
    hint: str
    ends_at: float


@dataclass(frozen=True, slots=True)
class ShownOnce:
    token: str
    name: str
    hint: str


@dataclass
class Sessions:
    """Signed-in sessions and their one-time slots; safe to share between threads."""

    _secret: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _sessions: dict[str, Session] = field(default_factory=dict)
    _slots: dict[str, _Slot] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # --- the sign-in form ---------------------------------------------------------------

    def new_signin_nonce(self) -> str:
        return _random_id()

    def signin_csrf(self, nonce: str) -> str:
        return hmac.new(self._secret, nonce.encode(), hashlib.sha256).hexdigest()

    def signin_accepts(self, nonce: str | None, csrf: str | None) -> bool:
        if not nonce or not csrf:
            return False
        return hmac.compare_digest(self.signin_csrf(nonce).encode(), csrf.encode())

    # --- sessions -----------------------------------------------------------------------

    def open(self, key_digest: str, key_name: str) -> Session:
        session = Session(
            _random_id(), key_digest, key_name, _random_id(), time.monotonic() + SESSION_SECONDS
        )
        with self._lock:
            self._drop_ended()
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if session_id is None:
            return None
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.ends_at <= time.monotonic():
                self._forget(session_id)
                return None
            return session

    def close(self, session_id: str) -> None:
        with self._lock:
            self._forget(session_id)

    def _forget(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        for slot_id in [key for key, slot in self._slots.items() if slot.session_id == session_id]:
            del self._slots[slot_id]

    def _drop_ended(self) -> None:
        now = time.monotonic()
        for session_id in [key for key, s in self._sessions.items() if s.ends_at <= now]:
            self._forget(session_id)
        for slot_id in [key for key, slot in self._slots.items() if slot.ends_at <= now]:
            del self._slots[slot_id]

    # --- one-time slots -----------------------------------------------------------------

    def put_once(self, session: Session, token: str, name: str, hint: str) -> str:
        slot_id = _random_id()
        with self._lock:
            self._drop_ended()
            ends_at = time.monotonic() + SLOT_SECONDS
            self._slots[slot_id] = _Slot(session.id, token, name, hint, ends_at)
        return slot_id

    def take_once(self, session: Session, slot_id: str) -> ShownOnce | None:
        """The slot's token, once, to the session that made it; None ever after."""
        with self._lock:
            slot = self._slots.get(slot_id)
            if slot is None or slot.session_id != session.id:
                return None
            del self._slots[slot_id]
            if slot.ends_at <= time.monotonic():
                return None
            return ShownOnce(slot.token, slot.name, slot.hint)

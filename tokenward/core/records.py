"""What the store keeps of tokens and services, and the rules for the names in them. Pure.

The store hands these records out as facts; whether a token may pass (revoked, expired, out of
scope) is judged by the decision (`tokenward.core.decision`), not by the store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from tokenward.core.lifetimes import is_expired
from tokenward.core.tokens import holds_token_shaped, token_hint

TOKEN_NAME_RULE = (
    "1 to 64 letters, digits, '.', '_', '-', '@', ':' or '+', starting with a letter or digit"
)
OWNER_MAX_LENGTH = 200
_TOKEN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@:+-]{0,63}")


class TokenState(StrEnum):
    LIVE = "live"
    EXPIRED = "expired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """A stored token. `scope` None means all services; `expires_at` None means never."""

    name: str
    kind: str
    owner: str
    hint: str
    created_at: datetime
    expires_at: datetime | None
    scope: frozenset[str] | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    # The SHA-256 of the token: not secret, but of no use to a person, so kept out of repr.
    digest: str = field(repr=False)

    def state(self, now: datetime) -> TokenState:
        if self.revoked_at is not None:
            return TokenState.REVOKED
        if is_expired(self.expires_at, now):
            return TokenState.EXPIRED
        return TokenState.LIVE

    def allows(self, service: str | None) -> bool:
        """May the token reach `service`? None is the default service, which only `all` reaches."""
        return self.scope is None or (service is not None and service in self.scope)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    name: str
    hosts: tuple[str, ...]
    layout: str
    upstream: str


def check_token_name(name: str) -> str:
    """`name` when it may name a token; ValueError saying why not otherwise."""
    if holds_token_shaped(name):
        # The name is stored and sent upstream in plain text: a pasted token must not be one.
        raise ValueError(f"token name {token_hint(name)!r} looks like a token; choose a label")
    if _TOKEN_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid token name {name!r}: use {TOKEN_NAME_RULE}")
    return name


def check_owner(owner: str) -> str:
    """`owner` when it may label a token's owner; ValueError saying why not otherwise."""
    if holds_token_shaped(owner):
        raise ValueError("an owner label must not hold a token")
    if len(owner) > OWNER_MAX_LENGTH or not owner.isprintable():
        raise ValueError(
            f"invalid owner {owner!r}: use at most {OWNER_MAX_LENGTH} printable characters"
        )
    return owner

"""The rules every store keeps, whatever database is behind: what a new token, scope, service
or console key must be, and how a refusal reads. The SQL that finds the facts is each
store's; the judgement and its words are here, once."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from tokenward.core.layouts import LAYOUTS
from tokenward.core.lifetimes import as_utc, check_service_name
from tokenward.core.records import TOKEN_NAME_RULE, ServiceRecord, check_owner, check_token_name
from tokenward.core.tokens import KINDS, is_token_shaped, kind_of, redact_tokens, token_hint
from tokenward.store.errors import StoreRefused
from tokenward.store.rows import HEX_DIGEST, check_upstream, format_time, normalize_host


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise StoreRefused(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")


def check_importable(token: str, kind: str | None) -> None:
    """A token issued elsewhere must be token-shaped, and `kind` (if given) its prefix's."""
    if not is_token_shaped(token):
        raise StoreRefused(
            f"not a token ({token_hint(token)}): expected sm_pat_, sm_aat_ or sm_sat_"
            " followed by 16 to 64 letters or digits"
        )
    if kind is not None and kind != kind_of(token):
        raise StoreRefused(f"kind {kind!r} disagrees with the token's prefix {token[:7]!r}")


def check_new_token(name: str, owner: str, expires_at: datetime | None, now: datetime) -> None:
    try:
        check_token_name(name)
        check_owner(owner)
    except ValueError as error:
        raise StoreRefused(str(error)) from None
    if expires_at is not None and as_utc(expires_at) <= as_utc(now):
        raise StoreRefused(f"expiry {format_time(expires_at)!r} is in the past")


def refuse_stored_token(token: str, existing_name: str, revoked_at: object) -> StoreRefused:
    state = "deleted token" if revoked_at is not None else "token"
    return StoreRefused(
        f"{token_hint(token)} is already in the store, as {state} {existing_name!r}"
    )


def refuse_taken_name(name: str) -> StoreRefused:
    return StoreRefused(f"a token named {name!r} already exists")


def check_scope(scope: frozenset[str] | None, registered: Iterable[str]) -> None:
    """Refuse a scope naming no registered service (checked inside the write)."""
    if scope is None:
        return
    if not scope:
        raise StoreRefused("an empty scope reaches no service; use 'all' or name services")
    known_names = set(registered)
    unknown = sorted(scope - known_names)
    if unknown:
        known = ", ".join(repr(name) for name in sorted(known_names)) or "none"
        raise StoreRefused(f"scope names no registered service {unknown[0]!r}; registered: {known}")


def refuse_not_live(name: str, deleted_exists: bool) -> StoreRefused:
    if deleted_exists:
        return StoreRefused(f"token {name!r} is already deleted")
    return StoreRefused(f"no token named {name!r}")


def new_service_hosts(
    name: str, layout: str, hosts: Sequence[str] | None, upstream: str
) -> tuple[str, ...]:
    """The hosts of a new service (its name by default), once its fields are checked."""
    try:
        check_service_name(name)
    except ValueError as error:
        raise StoreRefused(str(error)) from error
    if layout not in LAYOUTS:
        raise StoreRefused(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    host_names = tuple(dict.fromkeys(normalize_host(host) for host in (hosts or [name])))
    check_upstream(upstream)
    return host_names


def check_service_free(
    name: str, host_names: Sequence[str], services: dict[str, ServiceRecord]
) -> None:
    """No two services share a name or a host."""
    if name in services:
        raise StoreRefused(f"a service named {name!r} already exists")
    for service in services.values():
        claimed = set(service.hosts).intersection(host_names)
        if claimed:
            raise StoreRefused(f"host {min(claimed)!r} already belongs to service {service.name!r}")


def check_service_unused(name: str, holders: Sequence[str]) -> None:
    """A service stays while a token not deleted has it in its scope."""
    if holders:
        raise StoreRefused(
            f"service {name!r} is in the scope of token(s)"
            f" {', '.join(repr(holder) for holder in holders)}:"
            " re-scope or delete them first"
        )


def check_console_key(name: str, digest: str) -> None:
    try:
        check_token_name(name)
    except ValueError:
        raise StoreRefused(
            f"invalid console key name {redact_tokens(name)!r}: use {TOKEN_NAME_RULE}"
        ) from None
    if HEX_DIGEST.fullmatch(digest) is None:
        raise StoreRefused("a console key is kept as its hex SHA-256 digest")

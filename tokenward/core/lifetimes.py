"""A token's lifetime and reach as a person writes them: expiry and scope. Pure: no I/O.

All datetimes are timezone-aware UTC. An expiry of None means `never`; a scope of None means
`all` services.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta

RELATIVE_EXPIRIES: dict[str, timedelta] = {
    "7d": timedelta(days=7),
    "30d": timedelta(days=30),
    "60d": timedelta(days=60),
    "90d": timedelta(days=90),
}
NEVER = "never"
ALL_SERVICES = "all"
EXPIRY_FORMS = "7d, 30d, 60d, 90d, a date YYYY-MM-DD or never"

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
# A service name doubles as its default host name, hence host-name characters, lower case.
_SERVICE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9])?")
SERVICE_NAME_RULE = (
    "lower-case letters, digits, '.', '-' and '_', starting and ending with a letter or digit"
)


def as_utc(moment: datetime) -> datetime:
    """`moment` in UTC; a naive datetime is refused since its zone would be a guess."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()!r}; expected a timezone-aware one")
    return moment.astimezone(UTC)


def parse_expiry(text: str, now: datetime) -> datetime | None:
    """When a token given the expiry `text` at `now` stops working; None for `never`.

    `7d`/`30d`/`60d`/`90d` count from `now`; a date `YYYY-MM-DD` means valid through the end of
    that day UTC, so the token expires at the next day's 00:00 UTC.
    """
    now = as_utc(now)
    if text == NEVER:
        return None
    if text in RELATIVE_EXPIRIES:
        return now + RELATIVE_EXPIRIES[text]
    if _DATE.fullmatch(text) is None:
        raise ValueError(f"invalid expiry {text!r}; expected {EXPIRY_FORMS}")
    try:
        last_day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"invalid expiry {text!r}: no such calendar date") from None
    if last_day == date.max:
        raise ValueError(f"expiry {text!r} is too far in the future")
    expires_at = datetime.combine(last_day + timedelta(days=1), time(), tzinfo=UTC)
    if expires_at <= now:
        raise ValueError(f"expiry {text!r} is in the past (today is {now:%Y-%m-%d} UTC)")
    return expires_at


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Has a token with this expiry expired at `now`? It has from the expiry instant on."""
    return expires_at is not None and now >= expires_at


def check_service_name(name: str) -> str:
    """`name` when it may name a service; ValueError saying why not otherwise."""
    if name == ALL_SERVICES:
        raise ValueError(f"{ALL_SERVICES!r} cannot be a service name: it means every service")
    if _SERVICE_NAME.fullmatch(name) is None:
        raise ValueError(f"invalid service name {name!r}: use {SERVICE_NAME_RULE}")
    return name


def parse_scope(text: str) -> frozenset[str] | None:
    """The services a token may reach: `all` (None) or comma-separated service names."""
    if text == ALL_SERVICES:
        return None
    names = [part.strip() for part in text.split(",")]
    if ALL_SERVICES in names:
        raise ValueError(f"invalid scope {text!r}: {ALL_SERVICES!r} cannot be combined with names")
    for name in names:
        if not name:
            raise ValueError(f"invalid scope {text!r}: empty service name")
        if _SERVICE_NAME.fullmatch(name) is None:
            raise ValueError(
                f"invalid scope {text!r}: {name!r} is not a service name ({SERVICE_NAME_RULE})"
            )
    return frozenset(names)


def format_scope(scope: frozenset[str] | None) -> str:
    """The text `parse_scope` reads back as `scope`: `all` or sorted comma-separated names."""
    if scope is None:
        return ALL_SERVICES
    if not scope:
        raise ValueError("an empty scope reaches no service; use 'all' or name services")
    return ",".join(sorted(scope))

"""What the page and the API do to the store, with the same rules and the same refusals.

Every action either makes its whole change or none, and refuses bad input with a `Refusal`:
an HTTP status, a short error code and a sentence for a person. The store keeps its own rules
(names, scopes, expiry in the past, services in use); these functions parse what people type,
ask for the confirmation word, and tell a conflict with what is stored (409) or a missing
thing (404) from bad input (400).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from starlette.requests import Request

from tokenward.cli import CONFIRM_WORD
from tokenward.core.layouts import LAYOUTS
from tokenward.core.lifetimes import ALL_SERVICES, check_service_name, parse_expiry
from tokenward.core.records import ServiceRecord, TokenRecord
from tokenward.core.tokens import redact_tokens
from tokenward.store import Store, StoreRefused, check_upstream, normalize_host

INVALID = "invalid_request"
CONFIRMATION_REQUIRED = "confirmation_required"
NOT_FOUND = "not_found"
CONFLICT = "conflict"
IMMUTABLE = "immutable"


def store_of(request: Request) -> Store:
    """The store the console serves (set by `app.create_app`)."""
    store: Store = request.app.state.store
    return store


class Refusal(Exception):
    """An action refused: `status`, `error` (a code) and `message` (never a full token)."""

    def __init__(self, status: int, error: str, message: str) -> None:
        # The store's and the core's messages show hints only; this keeps it so for any text,
        # also in a traceback that shows the exception.
        self.message = redact_tokens(message)
        super().__init__(self.message)
        self.status = status
        self.error = error


@contextmanager
def _refused_as(status: int, error: str, when: Callable[[], bool] = lambda: True) -> Iterator[None]:
    """Turn the store's refusals and invalid values into a Refusal with `status` if `when()`
    (asked after the refusal, so that it sees what another process changed), else 400."""
    try:
        yield
    except (StoreRefused, ValueError) as refused:
        if when():
            raise Refusal(status, error, str(refused)) from refused
        raise Refusal(400, INVALID, str(refused)) from refused


def _confirmed(confirm: str | None, what: str) -> None:
    if confirm != CONFIRM_WORD:
        # What was typed is not repeated: it might be something pasted by mistake.
        raise Refusal(
            400,
            CONFIRMATION_REQUIRED,
            f"not deleted: to delete {what}, confirm with exactly {CONFIRM_WORD}",
        )


def scope_of(scope: str | Sequence[str]) -> frozenset[str] | None:
    """`all` (None) or the service names of a list; ValueError otherwise."""
    if isinstance(scope, str):
        if scope != ALL_SERVICES:
            raise ValueError(
                f"invalid scope {scope!r}: {ALL_SERVICES!r} or a list of service names"
            )
        return None
    return frozenset(check_service_name(name) for name in scope)


def live_token(store: Store, name: str) -> TokenRecord:
    record = store.get_token(name)
    if record is None:
        raise Refusal(404, NOT_FOUND, f"no token named {name!r}")
    return record


def create_token(
    store: Store,
    name: str,
    expires: str,
    kind: str,
    scope: str | Sequence[str],
    now: datetime,
) -> tuple[str, TokenRecord]:
    """Issue a token; the plaintext is returned here only."""
    with _refused_as(400, INVALID):
        expires_at = parse_expiry(expires, now)
        token_scope = scope_of(scope)
    if store.get_token(name) is not None:
        raise Refusal(409, CONFLICT, f"a token named {name!r} already exists")
    with _refused_as(409, CONFLICT, when=lambda: store.get_token(name) is not None):
        return store.create_token(name, kind, expires_at, token_scope, "", now)


def change_scope(store: Store, name: str, scope: str | Sequence[str]) -> TokenRecord:
    live_token(store, name)
    with _refused_as(400, INVALID):
        token_scope = scope_of(scope)
    with _refused_as(404, NOT_FOUND, when=lambda: store.get_token(name) is None):
        return store.set_scope(name, token_scope)


def refuse_expiry_change(store: Store, name: str) -> None:
    live_token(store, name)
    raise Refusal(409, IMMUTABLE, f"the expiry of token {name!r} can never be changed")


def delete_token(store: Store, name: str, confirm: str | None, now: datetime) -> TokenRecord:
    """Revoke a token: refused by every proxy from its next request."""
    _confirmed(confirm, f"token {name!r}")
    live_token(store, name)
    with _refused_as(404, NOT_FOUND):
        return store.delete_token(name, now)


def add_service(
    store: Store, name: str, layout: str, hosts: Sequence[str], upstream: str, now: datetime
) -> ServiceRecord:
    with _refused_as(400, INVALID):
        check_service_name(name)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        for host in hosts:
            normalize_host(host)
        check_upstream(upstream)
    # Valid on its own: what the store refuses now is a clash with a service it holds.
    with _refused_as(409, CONFLICT):
        return store.add_service(name, layout, hosts or None, upstream, now)


def remove_service(store: Store, name: str, confirm: str | None) -> ServiceRecord:
    _confirmed(confirm, f"service {name!r}")
    if all(service.name != name for service in store.list_services()):
        raise Refusal(404, NOT_FOUND, f"no service named {name!r}")
    with _refused_as(409, CONFLICT):
        return store.remove_service(name)

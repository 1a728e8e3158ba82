"""`tokenward explain`: where a request's token stands, its verdict, and what the upstream gets.

The same core functions as the addon decide, so an explanation is what the proxy would do (in
reverse mode, at the moment of asking). Tokens appear only as hints.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

from tokenward_lib.core.layouts import Layout, layout_named
from tokenward_lib.core.placement import (
    Finding,
    Identity,
    Request,
    UnplaceableTokenError,
    find_token,
    redact_request,
    rewrite_request,
)
from tokenward_lib.core.tokens import token_hint
from tokenward_lib.core.verdicts import (
    MESSAGES,
    STATUS,
    STORE_OUTCOME_ERRORS,
    ErrorCode,
    Forward,
    StoreOutcome,
)
from tokenward_lib.store import StoreError, TokenStore


@dataclass(frozen=True, slots=True)
class UpstreamView:
    forward: Forward
    target: str | None
    auth_header: str | None
    refusal: str | None


@dataclass(frozen=True, slots=True)
class Explanation:
    method: str
    host: str
    target: str
    service: str | None
    layout: str
    found: tuple[str, ...]
    status: int | None
    error: str | None
    message: str
    store_note: str
    upstream: tuple[UpstreamView, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "host": self.host,
            "target": self.target,
            "service": self.service,
            "layout": self.layout,
            "found": list(self.found),
            "status": self.status,
            "error": self.error,
            "message": self.message,
            "store": self.store_note,
            "upstream": {
                view.forward.value: (
                    {"refused": view.refusal}
                    if view.refusal is not None
                    else {"target": view.target, "x-auth-token": view.auth_header}
                )
                for view in self.upstream
            },
        }


def parse_url(url: str) -> tuple[str, str]:
    """The host and the raw request target of `url` (`http://host/p?q`, or a bare `/p?q`)."""
    if url.startswith("/"):
        return "", url.partition("#")[0]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ValueError(f"expected an http(s) or ws(s) URL or a path starting with '/': {url!r}")
    after_authority = url.split("//", 1)[1][len(parts.netloc) :]
    target = after_authority.partition("#")[0] or "/"
    if target.startswith("?"):
        target = "/" + target
    return parts.hostname.lower(), target


def parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    if not colon or not name.strip():
        raise ValueError(f"expected a header as 'name: value': {text!r}")
    return name.strip(), value.strip()


def explain(
    url: str,
    headers: tuple[tuple[str, str], ...],
    *,
    method: str,
    default_layout: str,
    store: TokenStore | None,
    store_note: str,
    now: datetime,
) -> Explanation:
    host, target = parse_url(url)
    # The store's strings are Latin-1 views of the bytes, as the addon's are.
    raw_target = target.encode("utf-8").decode("latin-1")
    request = Request(method.upper(), raw_target, headers)
    service, layout, unknown_service = _route(host, store, default_layout)
    finding = find_token(request, layout)
    error, identity, note = _verdict(finding, service, unknown_service, store, store_note, now)
    upstream = () if error is not None else _upstream_views(request, finding, layout, identity)
    return Explanation(
        method=request.method,
        host=host,
        target=_shown(redact_request(request).target),
        service=service,
        layout=layout.name.value,
        found=tuple(
            f"{candidate.placement.value}: {token_hint(candidate.value)}"
            for candidate in finding.candidates
        ),
        status=None if error is None else STATUS[error],
        error=None if error is None else error.value,
        message="forwarded" if error is None else MESSAGES[error],
        store_note=note,
        upstream=upstream,
    )


def _route(
    host: str, store: TokenStore | None, default_layout: str
) -> tuple[str | None, Layout, bool]:
    services = () if store is None else store.list_services()
    if not services:
        return None, layout_named(default_layout), False
    for service in services:
        if host in service.hosts:
            return service.name, layout_named(service.layout), False
    return None, layout_named(default_layout), True


def _verdict(
    finding: Finding,
    service: str | None,
    unknown_service: bool,
    store: TokenStore | None,
    store_note: str,
    now: datetime,
) -> tuple[ErrorCode | None, Identity | None, str]:
    if unknown_service:
        return ErrorCode.UNKNOWN_SERVICE, None, store_note
    if finding.error is not None:
        return finding.error, None, store_note
    assert finding.token is not None, "a finding without error holds one token"
    if store is None:
        return None, None, f"{store_note}; the store's verdict is not known"
    try:
        verification = store.verify(finding.token, service, now)
    except StoreError as error:
        return ErrorCode.STORE_UNAVAILABLE, None, str(error)
    if verification.outcome is not StoreOutcome.OK:
        return STORE_OUTCOME_ERRORS[verification.outcome], None, store_note
    record = verification.record
    assert record is not None, "an accepted token has a record"
    return None, Identity(record.name, record.kind), f"{store_note}; token {record.name!r}"


def _upstream_views(
    request: Request, finding: Finding, layout: Layout, identity: Identity | None
) -> tuple[UpstreamView, ...]:
    views = []
    for forward in Forward:
        try:
            rewritten = rewrite_request(request, finding, layout, forward, identity)
        except UnplaceableTokenError as error:
            views.append(UpstreamView(forward, None, None, str(error)))
            continue
        shown = redact_request(rewritten)
        auth = [value for name, value in shown.headers if name.lower() == "x-auth-token"]
        views.append(
            UpstreamView(forward, _shown(shown.target), _shown(", ".join(auth)) or None, None)
        )
    return tuple(views)


def _shown(latin1_text: str) -> str:
    return latin1_text.encode("latin-1").decode("utf-8", "replace")

"""The one decision: what tokenward does with a request. Pure: no I/O, no mitmproxy, no SQL.

`decide` takes the request, the route (the service it addresses, or none), the options, what
the store knows of the token (`lookup`: its record, None, or `Unavailable`) and the time, and
returns a `Decision`: the verdict, where the token stood, the request the upstream receives
and the identity sent with it. The addon, `tokenward explain` and observe mode all take their
answers from here, so the order of the contract's verdicts is written once, in `decide`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from tokenward.core.advice import explain_verdict
from tokenward.core.hygiene import Upgrade, holds_line_break, is_preflight, upgrade_asked
from tokenward.core.layouts import Layout
from tokenward.core.lifetimes import is_expired
from tokenward.core.placement import (
    Finding,
    Identity,
    Request,
    UnplaceableTokenError,
    find_token,
    oversized,
    rewrite_request,
)
from tokenward.core.records import TokenRecord
from tokenward.core.tokens import holds_token_shaped
from tokenward.core.verdicts import STATUS, ErrorCode, Forward, Placement


class Mode(StrEnum):
    """`tokenward_mode`: enforce the verdicts, or only observe them."""

    ENFORCE = "enforce"
    OBSERVE = "observe"


class Preflight(StrEnum):
    """`tokenward_preflight`: CORS preflights pass without a token, or are checked."""

    PASS = "pass"
    ENFORCE = "enforce"


class UnknownHosts(StrEnum):
    """`tokenward_unknown_hosts` (regular mode): guard tokens sent elsewhere, or pass all."""

    GUARD = "guard"
    PASS = "pass"


class ProxyMode(StrEnum):
    """How clients reach the proxy: as their server (reverse) or as their proxy (regular)."""

    REVERSE = "reverse"
    REGULAR = "regular"


class Reach(StrEnum):
    """What the host a request addresses is to the proxy."""

    SERVICE = "service"  # a registered service, or the default one when none is registered
    UNKNOWN = "unknown"  # reverse mode, services registered, this host none of them: row 0
    FOREIGN = "foreign"  # regular mode, a host that is no service: passes, unless guarded


class Route(NamedTuple):
    """The service a request addresses (None: the default service) and its layout.

    `host`: the host as the client addressed it, for the answer to a host that is no service
    (set for those only, so that a service's route is made once, not per request).
    """

    service: str | None
    layout: Layout
    reach: Reach = Reach.SERVICE
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Options:
    mode: Mode = Mode.ENFORCE
    forward: Forward = Forward.STRIP
    preflight: Preflight = Preflight.PASS
    unknown_hosts: UnknownHosts = UnknownHosts.GUARD
    max_target: int = 64 * 1024
    max_header: int = 64 * 1024


class Unavailable(NamedTuple):
    """The store could not be read; `reason` is one line for a person (no token in it)."""

    reason: str


TokenLookup = Callable[[str], TokenRecord | Unavailable | None]

URL_WARNING = "the token travels in the URL, where logs keep it"
UNPLACEABLE_WARNING = "no place for the token in this path; it was stripped"


class Decision(NamedTuple):
    """What the proxy does with one request (a tuple: one is made for every request).

    `error` None means the request is forwarded: accepted, a preflight let through, or a host
    that is no service passing untouched (`passed_through`). Otherwise it is the verdict, and
    `refused` tells whether the proxy answers it itself (enforce) or forwards it anyway
    (observe). `upstream` is the request the upstream receives (None when refused).
    `record` is the stored token behind the request when it is valid: for last use, and to
    tie a connection that switches protocols to it (observe mode keeps it for an unsupported
    upgrade too, so that a tunnel the upstream opens is still watched).
    """

    error: ErrorCode | None
    placement: Placement | None
    refused: bool
    upstream: Request | None
    finding: Finding | None = None
    upgrade: Upgrade = Upgrade.NONE
    identity: Identity | None = None
    record: TokenRecord | None = None
    # For a verdict: the answer's sentences for a person (`tokenward.core.advice`).
    message: str | None = None
    advice: str | None = None
    warnings: tuple[str, ...] = ()
    passed_through: bool = False

    @property
    def status(self) -> int | None:
        return None if self.error is None else STATUS[self.error]

    @property
    def verdict(self) -> str:
        return "accepted" if self.error is None else str(self.error)


def decide(
    request: Request,
    route: Route,
    options: Options,
    lookup: TokenLookup,
    now: datetime,
    *,
    advise: bool = True,
) -> Decision:
    """The contract's verdicts, in their order, and the request the upstream receives.

    A verdict comes with its message and advice (`advise=False` leaves them out): worked out
    once the verdict stands, so that they cannot change it, and never for an accepted request.
    """
    decision = _judge(request, route, options, lookup, now)
    if decision.error is None or not advise:
        return decision
    message, advice = explain_verdict(decision.error, request, route, options, decision.finding)
    return decision._replace(message=message, advice=advice)


def _judge(
    request: Request,
    route: Route,
    options: Options,
    lookup: TokenLookup,
    now: datetime,
) -> Decision:
    observing = options.mode is Mode.OBSERVE
    if route.reach is Reach.FOREIGN:
        if options.unknown_hosts is UnknownHosts.GUARD and _carries_token_shaped(request):
            return Decision(
                ErrorCode.TOKEN_TO_UNKNOWN_HOST,
                None,
                refused=not observing,
                upstream=request if observing else None,
            )
        return Decision(None, None, refused=False, upstream=request, passed_through=True)

    # Before anything decodes the request: its lengths only.
    error = oversized(request, options.max_target, options.max_header)
    if error is not None:
        return _verdict(error, None, request, route, options, None)
    # Found before the verdicts that need it: a refusal's record still names the token.
    finding = find_token(request, route.layout)
    if holds_line_break(request):
        return _verdict(ErrorCode.MALFORMED_REQUEST, None, request, route, options, finding)
    if route.reach is Reach.UNKNOWN:
        return _verdict(ErrorCode.UNKNOWN_SERVICE, None, request, route, options, finding)
    if finding.error is ErrorCode.MISPLACED_TOKEN:
        return _verdict(finding.error, None, request, route, options, finding)
    upgrade = upgrade_asked(request)
    if upgrade is Upgrade.OTHER:
        record = _valid_record(finding, route, lookup, now) if observing else None
        return _verdict(
            ErrorCode.UNSUPPORTED_UPGRADE, None, request, route, options, finding, upgrade, record
        )
    if options.preflight is Preflight.PASS and is_preflight(request):
        return _forwarded(request, route, options, finding, upgrade)
    if finding.error is not None:
        return _verdict(finding.error, finding.placement, request, route, options, finding)

    token = finding.value
    assert token is not None, "a finding without error holds one token"
    known = lookup(token)
    if isinstance(known, Unavailable):
        error = ErrorCode.STORE_UNAVAILABLE
    else:
        error = token_error(known, route.service, now)
    if error is not None:
        return _verdict(error, finding.placement, request, route, options, finding, upgrade)
    assert isinstance(known, TokenRecord)
    identity = Identity(known.name, known.kind)
    return _forwarded(request, route, options, finding, upgrade, identity, known)


def token_error(record: TokenRecord | None, service: str | None, now: datetime) -> ErrorCode | None:
    """Rows 5 to 8 for what the store holds of a token (None: nothing): unknown, revoked,
    expired, out of scope, in that order; None when the token may reach `service` at `now`
    (None: the default service, which only a token scoped to all services reaches)."""
    if record is None:
        return ErrorCode.UNKNOWN_TOKEN
    if record.revoked_at is not None:
        return ErrorCode.REVOKED_TOKEN
    if is_expired(record.expires_at, now):
        return ErrorCode.EXPIRED_TOKEN
    if not record.allows(service):
        return ErrorCode.OUT_OF_SCOPE
    return None


def _valid_record(
    finding: Finding, route: Route, lookup: TokenLookup, now: datetime
) -> TokenRecord | None:
    token = finding.token
    known = None if token is None else lookup(token)
    if isinstance(known, Unavailable) or token_error(known, route.service, now) is not None:
        return None
    return known


def _carries_token_shaped(request: Request) -> bool:
    return holds_token_shaped(request.target) or any(
        holds_token_shaped(value) for _, value in request.headers
    )


def _verdict(
    error: ErrorCode,
    placement: Placement | None,
    request: Request,
    route: Route,
    options: Options,
    finding: Finding | None,
    upgrade: Upgrade = Upgrade.NONE,
    record: TokenRecord | None = None,
) -> Decision:
    """A verdict that refuses: answered in enforce mode, forwarded rewritten in observe."""
    if options.mode is Mode.OBSERVE:
        return _forwarded(request, route, options, finding, upgrade, None, record, error=error)
    return Decision(error, placement, refused=True, upstream=None, finding=finding)


def _forwarded(
    request: Request,
    route: Route,
    options: Options,
    finding: Finding | None,
    upgrade: Upgrade,
    identity: Identity | None = None,
    record: TokenRecord | None = None,
    *,
    error: ErrorCode | None = None,
) -> Decision:
    """The request as forwarded; identity headers only for an accepted token."""
    if finding is None:
        finding = find_token(request, route.layout)
    warnings: list[str] = []
    if finding.in_url:
        warnings.append(URL_WARNING)
    placement = None if error is ErrorCode.MISPLACED_TOKEN else finding.placement
    try:
        upstream = rewrite_request(request, finding, route.layout, options.forward, identity)
    except UnplaceableTokenError:
        if options.mode is Mode.ENFORCE:
            return Decision(
                ErrorCode.UNPLACEABLE_TOKEN,
                finding.placement,
                refused=True,
                upstream=None,
                finding=finding,
            )
        warnings.append(UNPLACEABLE_WARNING)
        identity = None  # enforce would refuse it
        upstream = rewrite_request(request, finding, route.layout, Forward.STRIP)
        error = error or ErrorCode.UNPLACEABLE_TOKEN  # every other verdict comes first
    return Decision(
        error,
        placement,
        refused=False,
        upstream=upstream,
        finding=finding,
        upgrade=upgrade,
        identity=identity,
        record=record,
        warnings=tuple(warnings),
    )


class Remembered(NamedTuple):
    """A decision remembered for a request head: the request it was made for, and the one
    fact of the store it rested on (`token` None: none, the decision is pure)."""

    request: Request
    decision: Decision
    token: str | None
    known: TokenRecord | None
    error: ErrorCode | None  # `token_error` of `known` when it was made


class DecisionMemo:
    """`decide` for request heads that repeat, remembered: a bounded LRU under one `Options`.

    A head (`head`: the request as its bytes came, hashable) and its route decide everything
    but the store's facts, and those are looked at again on every request: the decision is
    reused only if the store holds the very record it rested on and `token_error` of it is the
    same now (a token deleted, revoked, expired or rescoped meanwhile is decided afresh). No
    decision that found the store unavailable is remembered.
    """

    def __init__(self, options: Options, capacity: int = 1024) -> None:
        self.options = options
        self.capacity = capacity
        self._entries: dict[tuple[Hashable, Route], Remembered] = {}

    def decide(
        self,
        head: Hashable,
        read_request: Callable[[], Request],
        route: Route,
        lookup: TokenLookup,
        now: datetime,
    ) -> tuple[Request, Decision]:
        """The request `head` holds (`read_request` makes it) and `decide`'s decision of it."""
        key = (head, route)
        entries = self._entries
        remembered = entries.pop(key, None)
        if remembered is not None:
            token = remembered.token
            if token is None:
                entries[key] = remembered
                return remembered.request, remembered.decision
            known = lookup(token)
            if (known is remembered.known or known == remembered.known) and token_error(
                remembered.known, route.service, now
            ) is remembered.error:
                entries[key] = remembered
                return remembered.request, remembered.decision
        request = read_request() if remembered is None else remembered.request
        looked_up: list[tuple[str, TokenRecord | Unavailable | None]] = []

        def recording_lookup(token: str) -> TokenRecord | Unavailable | None:
            known = lookup(token)
            looked_up.append((token, known))
            return known

        decision = decide(request, route, self.options, recording_lookup, now)
        self._remember(key, request, decision, looked_up, route, now)
        return request, decision

    def _remember(
        self,
        key: tuple[Hashable, Route],
        request: Request,
        decision: Decision,
        looked_up: list[tuple[str, TokenRecord | Unavailable | None]],
        route: Route,
        now: datetime,
    ) -> None:
        if not looked_up:
            remembered = Remembered(request, decision, None, None, None)
        else:
            [(token, known)] = looked_up  # `decide` looks one token up at most
            if isinstance(known, Unavailable):
                return
            remembered = Remembered(
                request, decision, token, known, token_error(known, route.service, now)
            )
        entries = self._entries
        if len(entries) >= self.capacity:
            del entries[next(iter(entries))]  # the least recently used
        entries[key] = remembered

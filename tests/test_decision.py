"""The one decision: the verdict table in its order, observe mode, and the store's facts judged.

Expected verdicts are written from the contract, by how each request is put together.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.decision import (
    Decision,
    DecisionMemo,
    Mode,
    Options,
    Preflight,
    Reach,
    Route,
    TokenLookup,
    Unavailable,
    UnknownHosts,
    decide,
    token_error,
)
from tokenward.core.layouts import layout_named
from tokenward.core.placement import Request
from tokenward.core.records import TokenRecord
from tokenward.core.verdicts import ErrorCode, Forward, Placement

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
T = "sm_pat_" + "A1b2C3d4E5f6G7h8" * 2
OTHER = "sm_aat_" + "Zz9" * 10 + "yQ"
GENERIC = Route(None, layout_named("generic"))
IPFS = Route("ipfs", layout_named("ipfs"))
PREFLIGHT = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"))


def record(
    *,
    expires_at: datetime | None = None,
    revoked_at: datetime | None = None,
    scope: frozenset[str] | None = None,
) -> TokenRecord:
    return TokenRecord(
        "ci", "pat", "", "sm_pat_…G7h8", NOW, expires_at, scope, None, revoked_at, "d" * 64
    )


def store_of(*held: tuple[str, TokenRecord]) -> TokenLookup:
    tokens = dict(held)
    return tokens.get


def unreadable(token: str) -> Unavailable:
    return Unavailable("the token store 'x.db' was removed")


def judged(
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    method: str = "GET",
    route: Route = GENERIC,
    options: Options | None = None,
    lookup: TokenLookup | None = None,
) -> Decision:
    """The decision for a request; by default, enforce mode and a store holding T, live."""
    return decide(
        Request(method, target, headers),
        route,
        options or Options(),
        lookup or store_of((T, record())),
        NOW,
    )


def verdict_of(decision: Decision) -> tuple[ErrorCode | None, Placement | None]:
    return decision.error, decision.placement


@pytest.mark.parametrize(
    ("target", "headers", "route", "lookup", "expected"),
    [
        pytest.param(f"/{T}", (), GENERIC, store_of((T, record())), (None, "path"), id="accepted"),
        pytest.param(
            f"/{T}?a={T}", (), GENERIC, unreadable, ("misplaced_token", None), id="1-before-store"
        ),
        pytest.param(
            f"/{T}",
            (("x-auth-token", OTHER),),
            GENERIC,
            unreadable,
            ("ambiguous_token", None),
            id="2-before-store",
        ),
        pytest.param("/", (), GENERIC, unreadable, ("missing_token", None), id="3"),
        pytest.param(
            "/",
            (("x-auth-token", "sm_pat_short"),),
            GENERIC,
            unreadable,
            ("malformed_token", "header"),
            id="4",
        ),
        pytest.param(f"/{T}", (), GENERIC, store_of(), ("unknown_token", "path"), id="5"),
        pytest.param(
            f"/{T}",
            (),
            GENERIC,
            store_of((T, record(revoked_at=NOW))),
            ("revoked_token", "path"),
            id="6",
        ),
        pytest.param(
            f"/{T}",
            (),
            GENERIC,
            store_of((T, record(expires_at=NOW))),
            ("expired_token", "path"),
            id="7-at-the-instant",
        ),
        pytest.param(
            f"/{T}",
            (),
            IPFS,
            store_of((T, record(scope=frozenset({"avax"})))),
            ("out_of_scope", "path"),
            id="8",
        ),
        pytest.param(f"/{T}", (), GENERIC, unreadable, ("store_unavailable", "path"), id="503"),
    ],
)
def test_the_verdicts_in_their_order(
    target: str,
    headers: tuple[tuple[str, str], ...],
    route: Route,
    lookup: TokenLookup,
    expected: tuple[str | None, str | None],
) -> None:
    assert verdict_of(judged(target, headers, route=route, lookup=lookup)) == expected


def test_revoked_comes_before_expired_and_expired_before_out_of_scope() -> None:
    both = record(revoked_at=NOW, expires_at=NOW - timedelta(days=1), scope=frozenset({"x"}))
    assert token_error(both, "ipfs", NOW) is ErrorCode.REVOKED_TOKEN
    late = record(expires_at=NOW, scope=frozenset({"x"}))
    assert token_error(late, "ipfs", NOW) is ErrorCode.EXPIRED_TOKEN
    assert token_error(late, "ipfs", NOW - timedelta(microseconds=1)) is ErrorCode.OUT_OF_SCOPE
    assert token_error(None, "ipfs", NOW) is ErrorCode.UNKNOWN_TOKEN
    # The default service (no services registered) is reached by tokens scoped to all only.
    assert token_error(record(scope=frozenset({"x"})), None, NOW) is ErrorCode.OUT_OF_SCOPE


def test_hygiene_comes_first_and_the_store_is_not_asked() -> None:
    asked: list[str] = []

    def lookup(token: str) -> TokenRecord | None:
        asked.append(token)
        return record()

    small = Options(max_target=8, max_header=16)
    assert judged(f"/{T}", options=small, lookup=lookup).error is ErrorCode.TARGET_TOO_LONG
    long_field = (("x-note", "x" * 20),)
    assert judged("/", long_field, options=small).error is ErrorCode.HEADER_TOO_LARGE
    folded = (("x-auth-token", T), ("X-Foo", "a\r\n x-tokenward-token: admin"))
    assert judged("/", folded, lookup=lookup).error is ErrorCode.MALFORMED_REQUEST
    unknown = GENERIC._replace(reach=Reach.UNKNOWN)
    assert judged(f"/{T}", route=unknown, lookup=lookup).error is ErrorCode.UNKNOWN_SERVICE
    foo = (("x-auth-token", T), ("Upgrade", "foo"))
    assert judged("/", foo, lookup=lookup).error is ErrorCode.UNSUPPORTED_UPGRADE
    assert asked == []


def test_a_preflight_skips_rows_2_to_8_but_not_row_1() -> None:
    passed = judged("/graphql", PREFLIGHT, method="OPTIONS", lookup=unreadable)
    assert passed.error is None and passed.identity is None and not passed.refused
    assert judged(f"/graphql?q={T}", PREFLIGHT, method="OPTIONS").error is ErrorCode.MISPLACED_TOKEN
    checked = Options(preflight=Preflight.ENFORCE)
    assert (
        judged("/", PREFLIGHT, method="OPTIONS", options=checked).error is ErrorCode.MISSING_TOKEN
    )
    assert judged("/", PREFLIGHT, method="options").error is ErrorCode.MISSING_TOKEN


def test_a_host_that_is_no_service_in_regular_mode_passes_unless_it_carries_a_token() -> None:
    foreign = GENERIC._replace(reach=Reach.FOREIGN)
    untouched = judged("/plain", (("Authorization", "Bearer x"),), route=foreign)
    assert untouched.passed_through and untouched.upstream == Request(
        "GET", "/plain", (("Authorization", "Bearer x"),)
    )
    guarded = judged("/p", (("Authorization", f"Bearer {T}"),), route=foreign)
    assert (guarded.error, guarded.refused) == (ErrorCode.TOKEN_TO_UNKNOWN_HOST, True)
    observed = judged("/p", (("Cookie", T),), route=foreign, options=Options(mode=Mode.OBSERVE))
    assert (observed.error, observed.refused) == (ErrorCode.TOKEN_TO_UNKNOWN_HOST, False)
    assert observed.upstream == Request("GET", "/p", (("Cookie", T),))
    passing = Options(unknown_hosts=UnknownHosts.PASS)
    assert judged(f"/{T}", route=foreign, options=passing).passed_through


def test_an_accepted_request_carries_the_identity_and_no_token() -> None:
    decision = judged(f"/graphql/{T}", (("x-tokenward-token", "admin"),))
    assert decision.upstream == Request(
        "GET", "/graphql", (("x-tokenward-token", "ci"), ("x-tokenward-kind", "pat"))
    )
    assert decision.record == record()


def test_path_forwarding_without_a_place_is_refused_in_enforce_and_stripped_in_observe() -> None:
    avalanche = Route(None, layout_named("avalanche"))
    path = Options(forward=Forward.PATH)
    refused = judged("/other", (("x-auth-token", T),), route=avalanche, options=path)
    assert (refused.error, refused.refused) == (ErrorCode.UNPLACEABLE_TOKEN, True)
    observed = Options(forward=Forward.PATH, mode=Mode.OBSERVE)
    stripped = judged("/other", (("x-auth-token", T),), route=avalanche, options=observed)
    assert (stripped.error, stripped.refused, stripped.identity) == (
        ErrorCode.UNPLACEABLE_TOKEN,
        False,
        None,
    )
    assert stripped.upstream == Request("GET", "/other", ())


# Observe mode: the same verdict, nothing refused, identity only where enforce would accept.

_targets = st.sampled_from(["/", f"/{T}", f"/a/{T}/b", f"/?token={T}", f"/?a={T}", "/x/sm_pat_no"])
_headers = st.lists(
    st.tuples(
        st.sampled_from(["x-auth-token", "Upgrade", "Origin", "Access-Control-Request-Method"]),
        st.sampled_from([T, OTHER, "foo", "websocket", "POST", ""]),
    ),
    max_size=3,
).map(tuple)
_lookups = st.sampled_from(
    [store_of((T, record())), store_of(), unreadable, store_of((T, record(revoked_at=NOW)))]
)


@given(
    target=_targets,
    headers=_headers,
    method=st.sampled_from(["GET", "OPTIONS", "options"]),
    reach=st.sampled_from(list(Reach)),
    lookup=_lookups,
    forward=st.sampled_from(list(Forward)),
)
@example(
    target="/", headers=(("Upgrade", "foo"),), method="GET", reach=Reach.SERVICE,
    lookup=store_of((T, record())), forward=Forward.STRIP,
)  # fmt: skip
def test_observe_tells_the_verdict_enforce_gives_and_refuses_nothing(
    target: str,
    headers: tuple[tuple[str, str], ...],
    method: str,
    reach: Reach,
    lookup: TokenLookup,
    forward: Forward,
) -> None:
    route = GENERIC._replace(reach=reach)
    enforced = judged(target, headers, method=method, route=route, lookup=lookup,
                      options=Options(forward=forward))  # fmt: skip
    observed = judged(target, headers, method=method, route=route, lookup=lookup,
                      options=Options(forward=forward, mode=Mode.OBSERVE))  # fmt: skip
    assert enforced.error is observed.error
    assert enforced.refused == (enforced.error is not None)
    assert not observed.refused and observed.upstream is not None
    if enforced.error is None:
        assert observed.upstream == enforced.upstream
    else:
        assert observed.identity is None


# Message and advice: part of every verdict, the same in observe mode, none when accepted


@given(target=_targets, headers=_headers, reach=st.sampled_from(list(Reach)), lookup=_lookups)
def test_every_verdict_has_a_message_and_observe_says_what_enforce_says(
    target: str, headers: tuple[tuple[str, str], ...], reach: Reach, lookup: TokenLookup
) -> None:
    route = GENERIC._replace(reach=reach, host="node.example")
    enforced = judged(target, headers, route=route, lookup=lookup)
    observed = judged(target, headers, route=route, lookup=lookup,
                      options=Options(mode=Mode.OBSERVE))  # fmt: skip
    refused_here, sent_on = "it was refused and not sent on.", "observe mode sent it on."
    if enforced.error is ErrorCode.TOKEN_TO_UNKNOWN_HOST and enforced.message is not None:
        # The same but for what happened to the request, which the message tells truly.
        assert enforced.message.endswith(refused_here)
        assert observed.message == enforced.message.removesuffix(refused_here) + sent_on
        assert observed.advice == enforced.advice
    else:
        assert (observed.message, observed.advice) == (enforced.message, enforced.advice)
    if enforced.error is None:
        assert (enforced.message, enforced.advice) == (None, None)
    else:
        assert enforced.message
    unadvised = decide(Request("GET", target, headers), route, Options(), lookup, NOW, advise=False)
    assert (unadvised.error, unadvised.message, unadvised.advice) == (enforced.error, None, None)


def test_the_misplaced_spot_and_the_host_reach_the_message() -> None:
    assert "in path segment 2" in str(judged(f"/a/{T}/b").message)
    unknown = GENERIC._replace(reach=Reach.UNKNOWN, host="nowhere.example")
    assert judged("/", route=unknown).message == (
        "No service answers to the host 'nowhere.example'."
    )


# Remembered decisions: the same as a fresh one, the store's facts looked at on every request.

# The same record objects each time, as the store's cache gives them, but for "live, read
# again": an equal record, another object.
_RECORDS = {
    "live": record(),
    "revoked": record(revoked_at=NOW),
    "expires soon": record(expires_at=NOW + timedelta(seconds=30)),
    "scoped to ipfs": record(scope=frozenset({"ipfs"})),
}
_store_states = st.sampled_from([*_RECORDS, "live, read again", "deleted", "unreadable"])


def store_in(state: str, held: dict[str, TokenRecord]) -> TokenLookup:
    """The store in `state`: T as it is held there (`held` is written through)."""
    held.clear()
    if state == "unreadable":
        return unreadable
    if state == "live, read again":
        held[T] = record()
    elif state in _RECORDS:
        held[T] = _RECORDS[state]
    return held.get


@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([f"/{T}", f"/ipfs/{T}/cid", "/", f"/?token={T}"]),
            _headers,
            st.sampled_from([GENERIC, IPFS, GENERIC._replace(reach=Reach.UNKNOWN, host="x")]),
            _store_states,
            st.sampled_from([0, 29, 31, 3600]),
        ),
        min_size=1,
        max_size=12,
    ),
    mode=st.sampled_from(list(Mode)),
    forward=st.sampled_from(list(Forward)),
)
def test_a_remembered_decision_is_the_fresh_one(
    steps: list[tuple[str, tuple[tuple[str, str], ...], Route, str, int]],
    mode: Mode,
    forward: Forward,
) -> None:
    options = Options(mode=mode, forward=forward)
    memo = DecisionMemo(options, capacity=3)
    held: dict[str, TokenRecord] = {}
    for target, headers, route, state, seconds in steps:
        lookup = store_in(state, held)
        now = NOW + timedelta(seconds=seconds)
        request = Request("GET", target, headers)
        head = (request.method, request.target, request.headers)
        remembered = memo.decide(head, partial(Request, *request), route, lookup, now)
        assert remembered == (request, decide(request, route, options, lookup, now))


def test_a_token_deleted_between_two_identical_requests_is_refused_at_once() -> None:
    memo = DecisionMemo(Options())
    held = {T: record()}
    request = Request("GET", f"/{T}", ())
    head = (request.method, request.target, request.headers)
    first = memo.decide(head, lambda: request, GENERIC, held.get, NOW)[1]
    del held[T]
    second = memo.decide(head, lambda: request, GENERIC, held.get, NOW)[1]
    assert (first.error, second.error) == (None, ErrorCode.UNKNOWN_TOKEN)
    assert second.upstream is None

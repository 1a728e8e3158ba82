"""Advice: what each verdict's answer tells a developer, from the decision, never a full token.

Expected sentences are written from the contract's Verdicts section: where a misplaced token
stands and where the layout allows one, near misses of a missing token, why a value is
malformed, the host of `unknown_service`. Properties: no message or advice holds a full
token, and advice never changes a verdict.
"""

from __future__ import annotations

import string
from datetime import UTC, datetime

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.advice import (
    character_class,
    explain_verdict,
    near_miss,
    shown,
    starts_like_a_token,
    why_not_token_shaped,
)
from tokenward.core.decision import (
    Decision,
    Mode,
    Options,
    Reach,
    Route,
    TokenLookup,
    decide,
)
from tokenward.core.layouts import LAYOUTS, layout_named
from tokenward.core.placement import Request, Spot, SpotKind, find_token
from tokenward.core.records import TokenRecord
from tokenward.core.tokens import holds_token_run
from tokenward.core.verdicts import MESSAGES, ErrorCode, Forward

NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
T = "sm_pat_" + "A1b2C3d4E5f6G7h8" * 2
HINT = "sm_pat_…G7h8"
GENERIC = Route(None, layout_named("generic"))
IPFS = Route("ipfs", layout_named("ipfs"))
AVALANCHE = Route("avax", layout_named("avalanche"))


def record(name: str = "ci", revoked_at: datetime | None = None) -> TokenRecord:
    return TokenRecord(name, "pat", "", HINT, NOW, None, None, None, revoked_at, "d" * 64)


def judged(
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    route: Route = GENERIC,
    options: Options | None = None,
    lookup: TokenLookup | None = None,
    advise: bool = True,
) -> Decision:
    return decide(
        Request("GET", target, headers),
        route,
        options or Options(),
        lookup or {T: record()}.get,
        NOW,
        advise=advise,
    )


# misplaced_token: where it stands, and for the path where the layout allows one


@pytest.mark.parametrize(
    ("target", "route", "spot"),
    [
        (f"/a/{T}/b", GENERIC, Spot(SpotKind.SEGMENT, 1)),
        (f"/api/{T}", IPFS, Spot(SpotKind.SEGMENT, 1)),
        (f"/ext/bc/C/rpc/x/{T}", AVALANCHE, Spot(SpotKind.SEGMENT, 5)),
        (f"/x.{T}.json", GENERIC, Spot(SpotKind.INSIDE_SEGMENT, 0)),
        (f"/a/%2573m_pat_{T[7:]}/b", GENERIC, Spot(SpotKind.INSIDE_SEGMENT, 1)),
        (f"/a.{T}/{T}/b", GENERIC, Spot(SpotKind.INSIDE_SEGMENT, 0)),  # the first spot
        (f"/a/{T}/b/c.{T}/d", GENERIC, Spot(SpotKind.SEGMENT, 1)),
        (f"/a/{T}/b?x={T}", GENERIC, Spot(SpotKind.SEGMENT, 1)),  # the path before the query
        (f"/p?a=1&b={T}", GENERIC, Spot(SpotKind.QUERY_VALUE, 1, "b")),
        (f"/p?{T}", GENERIC, Spot(SpotKind.QUERY_NAME, 0, T)),
        (f"/p?q=%2573m_pat_{T[7:]}", GENERIC, Spot(SpotKind.QUERY_VALUE, 0, "q")),
        (f"*{T}", GENERIC, Spot(SpotKind.TARGET, 0)),
    ],
)
def test_find_token_names_the_first_misplaced_spot(target: str, route: Route, spot: Spot) -> None:
    finding = find_token(Request("GET", target, ()), route.layout)
    assert (finding.error, finding.misplaced_at) == (ErrorCode.MISPLACED_TOKEN, spot)


def test_no_spot_without_a_misplaced_token() -> None:
    for target in (f"/{T}", f"/graphql/{T}", "/a/b?c=d", f"/p?token={T}", "/sm_pat_short"):
        assert find_token(Request("GET", target, ()), GENERIC.layout).misplaced_at is None


@pytest.mark.parametrize(
    ("target", "route", "says"),
    [
        (f"/a/{T}/b", GENERIC, "in path segment 2"),
        (f"/api/v0/{T}", IPFS, "in path segment 3"),
        (f"/x.{T}", GENERIC, "inside path segment 1"),
        (f"/ext/bc/C/rpc/{T}/more", AVALANCHE, "in path segment 5"),
    ],
)
def test_a_misplaced_path_token_says_where_and_where_the_layout_allows_one(
    target: str, route: Route, says: str
) -> None:
    decision = judged(target, route=route)
    assert decision.error is ErrorCode.MISPLACED_TOKEN
    assert decision.message is not None and decision.advice is not None
    assert says in decision.message
    layout = route.layout
    assert f"{layout.name} layout" in decision.message
    assert layout.rule in decision.message and layout.example in decision.message
    assert "x-auth-token" in decision.advice


def test_a_misplaced_query_token_names_the_parameter() -> None:
    value = judged(f"/p?a=1&apikey={T}").message
    assert value is not None and "the value of query parameter 'apikey'" in value
    assert "case-sensitive" not in value
    assert "case-sensitive" in str(judged(f"/p?Token={T}").message)
    name = judged(f"/p?{T}=1").message
    assert name is not None and f"the name of query parameter '{HINT}'" in name
    advice = judged(f"/p?a={T}").advice
    assert advice is not None and "token query parameter" in advice


# missing_token: near misses, and where a token goes


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ((("Authorization", f"Bearer {T}"),), "the 'Authorization' header"),
        ((("x-api-key", T),), "the 'x-api-key' header"),
        ((("x_auth_token", T),), "the 'x_auth_token' header"),
        ((("Referer", f"https://app.example/?token={T}"),), "the 'Referer' header"),
    ],
)
def test_a_token_in_another_header_is_named_with_the_header_to_use(
    headers: tuple[tuple[str, str], ...], says: str
) -> None:
    decision = judged("/", headers)
    assert decision.error is ErrorCode.MISSING_TOKEN
    assert decision.advice is not None
    assert says in decision.advice and f"'x-auth-token: {HINT}'" in decision.advice
    assert ("without Bearer" in decision.advice) == (headers[0][0] == "Authorization")


@pytest.mark.parametrize(
    ("target", "headers", "where", "why"),
    [
        ("/sm_pat_A1b2C3d4E5", (), "Path segment 1", "it has 10 characters, and 16 to 64"),
        ("/v1/" + T.upper(), (), "Path segment 2", "lower case (sm_pat_)"),
        ("/sn_pat_" + "a" * 20, (), "Path segment 1", "it starts with sn_pat_"),
        ("/sm_pat_" + "a" * 10 + "-" + "b" * 10, (), "Path segment 1", "is a hyphen"),
        ("/sm_pat_" + "a" * 70, (), "Path segment 1", "it has 70 characters"),
        ("/p?api_key=sm_aat_short", (), "query parameter 'api_key'", "only the parameter named"),
        (
            "/",
            (("x-api-key", "Bearer sm_sat_short"),),
            "The 'x-api-key' header",
            "it has 5 characters",
        ),
    ],
)
def test_a_value_that_starts_like_a_token_is_named_with_why_it_is_none(
    target: str, headers: tuple[tuple[str, str], ...], where: str, why: str
) -> None:
    decision = judged(target, headers)
    assert decision.error is ErrorCode.MISSING_TOKEN
    assert decision.message == MESSAGES[ErrorCode.MISSING_TOKEN]
    assert decision.advice is not None
    assert where in decision.advice and why in decision.advice
    assert "starts like an access token but is not one" in decision.advice


def test_without_a_near_miss_the_advice_says_where_a_token_goes() -> None:
    assert near_miss(Request("GET", "/graphql?a=b", (("Accept", "*/*"),))) is None
    advice = judged("/ipfs/x", route=IPFS).advice
    assert advice is not None and "x-auth-token" in advice and "/TOKEN/api/v0/version" in advice


# malformed_token: why the value is not token-shaped


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "the value is empty"),
        ("sm_pat_short", "after the prefix it has 5 characters, and 16 to 64 are allowed"),
        ("sm_pat_" + "a" * 65, "after the prefix it has 65 characters"),
        ("sm_xyz_" + "a" * 20, "its kind is none of pat, aat, sat"),
        ("SM_AAT_" + "a" * 20, "its prefix must be written in lower case (sm_aat_)"),
        ("pat_" + "a" * 20, "it does not start with sm_pat_, sm_aat_ or sm_sat_"),
        ("sm_pat_" + "a" * 10 + " " + "b" * 10, "character 11 after the prefix is a space"),
        ("sm_pat_" + "a" * 15 + "\x01", "is a control character"),
        ("sm_pat_" + "a" * 15 + "\xc3\xa9", "is a character outside ASCII"),
        ("sm_pat_" + "a" * 15 + "!", "is a punctuation character"),
        (f"Bearer {T}", f"it holds a token ({HINT}) with other characters around it"),
        (f'"{T}"', "send the token alone"),
    ],
)
def test_why_a_value_is_no_token(value: str, why: str) -> None:
    assert why in why_not_token_shaped(value)


def test_a_malformed_value_gets_advice_by_its_length_only() -> None:
    value = "sm_pat_" + "Secret99" * 9  # 72 characters after the prefix
    decision = judged("/", (("x-auth-token", value),))
    assert decision.error is ErrorCode.MALFORMED_TOKEN
    assert decision.advice is not None
    assert f"The value of the x-auth-token header (<{len(value)} characters>)" in decision.advice
    assert "72 characters" in decision.advice and "Secret99" not in decision.advice
    query = judged("/?token=sm_pat_x").advice
    assert query is not None and "the token query parameter" in query


def test_character_classes() -> None:
    assert character_class("_") == "an underscore"
    assert character_class("\t") == "a tab"
    assert character_class("~") == "a punctuation character"
    assert not starts_like_a_token("graphql") and starts_like_a_token("SM-pat-x")


# The host, and the other verdicts' advice


def test_unknown_service_names_the_host_the_proxy_saw() -> None:
    route = GENERIC._replace(reach=Reach.UNKNOWN, host="ipfs.exampel.com")
    decision = judged(f"/{T}", route=route)
    assert decision.error is ErrorCode.UNKNOWN_SERVICE
    assert decision.message == "No service answers to the host 'ipfs.exampel.com'."
    assert decision.advice is not None and "tokenward services list" in decision.advice
    nameless = judged("/", route=GENERIC._replace(reach=Reach.UNKNOWN)).message
    assert nameless == "No service answers to the host this request addresses."


def test_a_token_to_a_host_that_is_no_service_names_the_host_and_where_it_stands() -> None:
    route = GENERIC._replace(reach=Reach.FOREIGN, host="api.third.example")
    decision = judged("/p", (("Authorization", f"Bearer {T}"),), route=route)
    assert decision.error is ErrorCode.TOKEN_TO_UNKNOWN_HOST
    assert decision.message is not None and "'api.third.example'" in decision.message
    assert decision.advice is not None and "the 'Authorization' header" in decision.advice
    assert "the request target" in str(judged(f"/{T}", route=route).advice)


def test_a_token_to_a_host_that_is_no_service_says_whether_it_was_sent() -> None:
    route = GENERIC._replace(reach=Reach.FOREIGN, host="api.third.example")
    headers = (("x-auth-token", T),)
    enforced = judged("/p", headers, route=route).message
    observed = judged("/p", headers, route=route, options=Options(mode=Mode.OBSERVE)).message
    assert enforced is not None and enforced.endswith("it was refused and not sent on.")
    assert observed is not None and observed.endswith("observe mode sent it on.")


@pytest.mark.parametrize(
    ("target", "headers", "options", "error", "says"),
    [
        ("/" + "a" * 40, (), Options(max_target=32), "target_too_long", "is 41 bytes"),
        ("/", (("X-Big", "b" * 40),), Options(max_header=32), "header_too_large", "'X-Big'"),
        (f"/{T}", (("Upgrade", "h2c"),), Options(), "unsupported_upgrade", "websocket"),
        (f"/{T}", (("X-Note", "a\r\n b"),), Options(), "malformed_request", "'X-Note' header"),
        (f"/{T}?token=other", (), Options(), "ambiguous_token", "carries 2 values"),
        (f"/{T}", (), Options(), "revoked_token", f"The token {HINT} was deleted"),
    ],
)
def test_the_other_verdicts_get_useful_advice(
    target: str,
    headers: tuple[tuple[str, str], ...],
    options: Options,
    error: str,
    says: str,
) -> None:
    revoked = {T: record(revoked_at=NOW)}.get
    decision = judged(target, headers, options=options, lookup=revoked)
    assert decision.error == error
    assert decision.advice is not None and says in decision.advice


def test_unplaceable_advice_names_the_layouts_rule() -> None:
    decision = judged(
        "/other", (("x-auth-token", T),), route=AVALANCHE, options=Options(forward=Forward.PATH),
        lookup={T: record()}.get,
    )  # fmt: skip
    assert decision.error is ErrorCode.UNPLACEABLE_TOKEN
    assert decision.advice is not None and LAYOUTS["avalanche"].rule in decision.advice


def test_an_accepted_request_has_no_message_nor_advice() -> None:
    decision = judged(f"/{T}")
    assert (decision.error, decision.message, decision.advice) == (None, None, None)


def test_shown_names_are_redacted_cut_and_printable() -> None:
    assert shown(f"a.{T}") == f"'a.{HINT}'"
    assert shown("a\nb") == "'a?b'"
    assert shown("sm_pat_000000000") == "'<16 characters>'"  # most of a token, maybe
    assert shown("prism_x") == "'prism_x'"
    assert len(shown("n" * 500)) == 62 and shown("n" * 500).endswith("…'")
    assert shown("n" * 5000) == "<5000 characters>"
    assert shown("caf\xc3\xa9") == "'café'"  # a Latin-1 view of UTF-8 bytes


# Properties: never a full token, and advice never changes a verdict

_BODY = st.text(string.ascii_letters + string.digits, min_size=16, max_size=64)
_TOKENS = st.builds(
    lambda kind, body: f"sm_{kind}_{body}", st.sampled_from(["pat", "aat", "sat"]), _BODY
)
_NEAR = st.one_of(
    _TOKENS.map(lambda token: token[:-8]),  # truncated
    _TOKENS.map(lambda token: token + "x" * 50),  # too long
    _TOKENS.map(str.upper),
    _TOKENS.map(lambda token: "sn" + token[2:]),
    _TOKENS.map(lambda token: token[:12] + "-" + token[12:]),
    _TOKENS.map(lambda token: f"Bearer {token}"),
)
_ENCODINGS = st.sampled_from(
    [lambda v: v, lambda v: v.replace("s", "%73", 1), lambda v: v.replace("s", "%2573", 1)]
)
_VALUES = st.builds(lambda value, encode: encode(value), st.one_of(_TOKENS, _NEAR), _ENCODINGS)
_WORDS = st.sampled_from(["", "graphql", "api", "v0", "ext", "bc", "C", "rpc", "x.json"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[Request, list[str]]:
    """A request with token-shaped and nearly token-shaped values anywhere; and every full
    token it holds (as drawn, before any encoding)."""
    values = draw(st.lists(_VALUES, max_size=4))
    segments = draw(st.lists(st.one_of(_WORDS, st.sampled_from(values or ["v"])), max_size=5))
    names = st.sampled_from(["token", "Token", "a", "api_key", *values[:1]])
    items = draw(
        st.lists(st.tuples(names, st.one_of(_WORDS, st.sampled_from(values or ["v"]))), max_size=3)
    )
    header_names = st.sampled_from(
        ["x-auth-token", "Authorization", "x-api-key", "x_auth_token", "Cookie", "Upgrade", "Host"]
    )
    headers = draw(
        st.lists(
            st.tuples(header_names, st.one_of(_WORDS, st.sampled_from(values or ["v"]))), max_size=3
        )
    )
    target = "/" + "/".join(segments)
    if items:
        target += "?" + "&".join(f"{name}={value}" for name, value in items)
    return Request("GET", target, tuple(headers)), values


def full_tokens(values: list[str]) -> set[str]:
    found = set()
    for value in values:
        for token in (value, value.replace("%2573", "s"), value.replace("%73", "s")):
            found.add(token.removeprefix("Bearer "))
    return {token for token in found if len(token) >= 16}


_ROUTES = st.sampled_from(
    [
        GENERIC,
        IPFS,
        AVALANCHE,
        GENERIC._replace(reach=Reach.UNKNOWN, host=f"{T}.example"),
        GENERIC._replace(reach=Reach.FOREIGN, host="third.example"),
    ]
)
_OPTIONS = st.builds(
    Options,
    mode=st.sampled_from(list(Mode)),
    forward=st.sampled_from(list(Forward)),
    max_target=st.sampled_from([64 * 1024, 40]),
)


@given(requests(), _ROUTES, _OPTIONS)
@example((Request("GET", f"/a/{T}/b", ()), [T]), GENERIC, Options())
@example((Request("GET", "/", (("Authorization", f"Bearer {T}"),)), [T]), GENERIC, Options())
def test_no_message_nor_advice_holds_a_full_token(
    drawn: tuple[Request, list[str]], route: Route, options: Options
) -> None:
    request, values = drawn
    decision = decide(request, route, options, {T: record()}.get, NOW)
    said = f"{decision.message} {decision.advice}"
    assert not holds_token_run(said)
    for token in full_tokens(values) | {T}:
        assert token not in said and token[7:] not in said


@given(requests(), _ROUTES, _OPTIONS)
def test_advice_never_changes_a_verdict(
    drawn: tuple[Request, list[str]], route: Route, options: Options
) -> None:
    request, _ = drawn
    lookup = {T: record()}.get
    advised = decide(request, route, options, lookup, NOW)
    plain = decide(request, route, options, lookup, NOW, advise=False)
    assert (advised.error, advised.placement, advised.refused, advised.upstream) == (
        plain.error,
        plain.placement,
        plain.refused,
        plain.upstream,
    )
    assert (plain.message, plain.advice) == (None, None)
    if advised.error is not None:
        assert advised.message  # every verdict has its sentence
        assert (advised.message, advised.advice) == explain_verdict(
            advised.error, request, route, options, advised.finding
        )

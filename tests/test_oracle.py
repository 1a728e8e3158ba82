"""The oracle against the contract's own rules and examples, then its properties."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenward.harness.oracle import (
    WWW_AUTHENTICATE,
    ErrorCode,
    Expectation,
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelService,
    ModelToken,
    Placement,
    Preflight,
    Scenario,
    StoreModel,
    TokenKind,
    Upstream,
    curl_command,
    decode_unreserved,
    decoded_forms,
    expect,
    holds_token_in_any_form,
    holds_token_shaped,
    host_name,
    is_preflight,
    is_token_shaped,
    query_params,
    redact,
    rejection_body_problems,
    strip_hint,
)
from tokenward.harness.strategies import (
    example_store,
    scenario_requests,
    scenarios,
    store_tokens_of,
    stores,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
STORE = example_store(NOW)
TOKENS = store_tokens_of(STORE, now=NOW)
T = TOKENS.valid  # sm_pat_Va1idPersonalToken0000000000000000
T2 = TOKENS.second_valid
BODY = T.removeprefix("sm_pat_")


def run(
    target: str,
    headers: Sequence[tuple[str, str]] = (),
    *,
    method: str = "GET",
    store: StoreModel = STORE,
    layout: Layout = Layout.GENERIC,
    forward: Forward = Forward.STRIP,
    mode: Mode = Mode.ENFORCE,
    preflight: Preflight = Preflight.PASS,
    service: str | None = None,
    reverse: bool = True,
    now: datetime = NOW,
) -> Expectation:
    request = HarnessRequest(method, target, tuple(headers))
    scenario = Scenario(now, layout, forward, mode, preflight, service, reverse)
    return expect(request, store, scenario)


def upstream_of(expectation: Expectation) -> Upstream:
    assert expectation.upstream is not None, expectation.why
    return expectation.upstream


def auth(value: str) -> tuple[str, str]:
    return ("x-auth-token", value)


# --- token shapes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "shaped"),
    [
        (T, True),
        ("sm_aat_" + "a" * 16, True),
        ("sm_sat_" + "Z9" * 32, True),
        ("sm_pat_" + "a" * 15, False),
        ("sm_pat_" + "a" * 65, False),
        ("sm_xat_" + "a" * 32, False),
        ("SM_PAT_" + "a" * 32, False),
        ("ѕm_pat_" + "a" * 32, False),
        ("sm_pat_" + "a" * 31 + "-", False),
        ("", False),
    ],
)
def test_token_shape(value: str, shaped: bool) -> None:
    assert is_token_shaped(value) is shaped


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        (f"x.{T}json", True),  # the contract's example
        (f"x.{T}.json", True),
        (f"/a/{T}", True),
        (f"_{T}_", True),  # underscores are not letters or digits
        (f"é{T}é", True),  # non-ASCII counts as a boundary
        ("sm_pat_" + "a" * 65, False),  # a 65-character run does not
        (f"x{T}", False),
        (f"{T}0" + "0" * 30, False),
        ("sm_pat_short", False),
    ],
)
def test_holds_token_shaped(text: str, holds: bool) -> None:
    assert holds_token_shaped(text) is holds


# The contract's pattern as a regular expression, to check the oracle's scan against.
TOKEN_PATTERN = re.compile(r"(?<![A-Za-z0-9])sm_(pat|aat|sat)_[A-Za-z0-9]{16,64}(?![A-Za-z0-9])")
PIECES = ["sm_", "pat_", "aat_", "sat", "_", "sm_pat_", "a", "Z9", "é", ".", "A" * 16, "0" * 49]


@given(st.lists(st.sampled_from(PIECES), max_size=12).map("".join))
@example("sm_sm_pat_" + "a" * 16)  # a prefix inside a prefix
@example("xsm_pat_" + "a" * 16 + ".sm_aat_" + "b" * 16)  # the first occurrence is blocked
def test_holds_token_shaped_is_the_pattern(text: str) -> None:
    assert holds_token_shaped(text) is (TOKEN_PATTERN.search(text) is not None)


def test_decoding_forms_reach_double_encoding() -> None:
    assert decoded_forms("%2573m") == ("%2573m", "%73m", "sm")
    assert holds_token_in_any_form(f"a%2F{T}")
    assert not holds_token_shaped(f"a%2F{T}")  # 'F' right before: only the decoded form holds
    assert decode_unreserved("%73%6d%2F%7e%41") == "sm%2F~A"


def test_strip_hint_shows_prefix_and_last_four() -> None:
    assert strip_hint(T) == "sm_pat_…0000"
    assert strip_hint("sm_sat_abcdefghijklmnopWXYZ") == "sm_sat_…WXYZ"
    assert strip_hint("opaque-value") == "…alue"


def test_host_name_ignores_port_and_case() -> None:
    assert host_name("IPFS.Example:8080") == "ipfs.example"
    assert host_name("[::1]:443") == "[::1]"
    assert host_name("node") == "node"


def test_query_params_keep_raw_spelling() -> None:
    request = HarnessRequest("GET", "/p?arg=/ipfs/Qm%2Fx&flag&b=a+b&%74oken=x%41")
    params = query_params(request)
    assert [p.raw for p in params] == ["arg=/ipfs/Qm%2Fx", "flag", "b=a+b", "%74oken=x%41"]
    assert [p.is_token_param for p in params] == [False, False, False, True]
    assert params[2].value == "a+b"  # plain percent-decoding: "+" stays
    assert params[3].value == "xA"


# --- the data model -----------------------------------------------------------------------------


def test_model_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="must start with '/'"):
        HarnessRequest("GET", "graphql")
    with pytest.raises(ValueError, match="latin-1"):
        HarnessRequest("GET", "/ѕ")
    with pytest.raises(ValueError, match="timezone-aware"):
        Scenario(datetime(2025, 1, 1))  # naive on purpose
    with pytest.raises(ValueError, match="token-shaped"):
        StoreModel({"not-a-token": ModelToken("x", TokenKind.PAT)})


# --- verdicts, rows 0-8 -------------------------------------------------------------------------

SERVICES = {
    "ipfs": ModelService("ipfs", ("ipfs.example",), Layout.IPFS, "http://127.0.0.1:5001"),
    "cchain": ModelService("cchain", (), Layout.AVALANCHE, "http://127.0.0.1:9650"),
}
STORE_WITH_SERVICES = StoreModel(
    {
        T: ModelToken("alice", TokenKind.PAT, scope=frozenset({"ipfs"})),
        T2: ModelToken("bob", TokenKind.AAT),
    },
    SERVICES,
)


def test_row0_unknown_service() -> None:
    headers = [("Origin", "https://app.example")]
    e = run(f"/{T}/api/v0/version", headers, store=STORE_WITH_SERVICES, service="elsewhere.example")
    assert (e.status, e.error, e.placement) == (404, ErrorCode.UNKNOWN_SERVICE, None)
    assert e.allow_origin == "https://app.example"
    assert e.www_authenticate is None


def test_observe_mode_forwards_unknown_services_with_the_default_layout() -> None:
    headers = [auth(T), ("X-Tokenward-Token", "mallory")]
    e = run(
        f"/{T}/api/v0/version",
        headers,
        store=STORE_WITH_SERVICES,
        service="elsewhere.example",
        layout=Layout.IPFS,
        mode=Mode.OBSERVE,
    )
    assert (e.status, e.error) == (None, None)
    assert (e.verdict, e.placement) == (ErrorCode.UNKNOWN_SERVICE, None)  # header and path
    up = upstream_of(e)
    assert up.target == "/api/v0/version"  # the ipfs layout: the first segment was a token
    assert (up.token_name, up.client_identity_removed) == (None, True)
    misplaced = run(f"/a/{T}/b", store=STORE_WITH_SERVICES, service=None, mode=Mode.OBSERVE)
    assert (misplaced.verdict, misplaced.placement) == (ErrorCode.UNKNOWN_SERVICE, None)
    assert misplaced.forwarded


def test_forward_proxy_mode_passes_unknown_hosts_untouched() -> None:
    headers = [auth("whatever"), ("X-Tokenward-Token", "mallory")]
    e = run("/x?token=y", headers, store=STORE_WITH_SERVICES, service="other", reverse=False)
    up = upstream_of(e)
    assert up.target == "/x?token=y"
    assert up.auth_tokens == ("whatever",)
    assert not up.client_identity_removed
    assert ("X-Tokenward-Token", "mallory") in up.preserved_headers


def test_services_match_host_case_insensitively_without_port() -> None:
    e = run(f"/{T}/api/v0/version", store=STORE_WITH_SERVICES, service="IPFS.example:443")
    assert upstream_of(e).target == "/api/v0/version"
    # the service name is its default host, and the layout is the service's
    e = run(f"/ext/bc/C/rpc/{T2}", store=STORE_WITH_SERVICES, service="cchain")
    assert upstream_of(e).token_name == "bob"


@pytest.mark.parametrize(
    ("target", "layout"),
    [
        (f"/p?key={T}", Layout.GENERIC),  # another parameter's value
        (f"/p?{T}=1", Layout.GENERIC),  # another parameter's name
        (f"/p?Token={T}", Layout.GENERIC),  # the name is case-sensitive
        (f"/p?auth=Bearer%20{T}", Layout.GENERIC),  # once decoded
        (f"/p?x=%2573{T[1:]}", Layout.GENERIC),  # twice decoded
        (f"/a/{T}/b", Layout.GENERIC),  # neither first nor last
        (f"/api/v0/{T}", Layout.IPFS),  # not first
        (f"/ext/bc/C/rpc/{T}/x", Layout.AVALANCHE),  # not ending the path
        (f"/ext/bc/c/rpc/{T}", Layout.FUJI),  # not after the endpoint (case-sensitive)
        (f"/{T}", Layout.AVALANCHE),
        (f"/x.{T}.json", Layout.GENERIC),  # inside a longer segment
        (f"/graphql/x.{T}json", Layout.GENERIC),
        (f"/a%2F{T}", Layout.GENERIC),  # decoded, the segment holds one
        (f"/%2573{T[1:]}", Layout.GENERIC),  # %25 is not unreserved: no candidate, holds one
        # 65 characters once decoded, so no candidate; raw, "%" ends a 16-character body
        (f"/sm_pat_{'0' * 16}%30{'0' * 48}", Layout.GENERIC),
    ],
)
def test_row1_misplaced(target: str, layout: Layout) -> None:
    e = run(target, layout=layout)
    assert (e.status, e.error, e.placement) == (400, ErrorCode.MISPLACED_TOKEN, None)
    assert e.token_in_url


def test_row1_beats_every_later_row() -> None:
    e = run(f"/p?key={T}", [auth(T), auth(T2)])
    assert e.error is ErrorCode.MISPLACED_TOKEN


def test_tokens_outside_the_target_are_not_misplaced() -> None:
    e = run("/graphql", [auth(T), ("Authorization", f"Bearer {T2}")])
    up = upstream_of(e)
    assert ("Authorization", f"Bearer {T2}") in up.preserved_headers
    assert not e.token_in_url


def test_a_65_character_run_is_not_misplaced() -> None:
    long_run = "sm_pat_" + "a" * 65
    e = run(f"/p?arg={long_run}", [auth(T)])
    assert upstream_of(e).target == f"/p?arg={long_run}"


@pytest.mark.parametrize(
    ("target", "headers", "placement"),
    [
        ("/graphql", [auth(T), auth(T2)], Placement.HEADER),
        ("/graphql", [auth(f"{T}, {T2}")], Placement.HEADER),
        ("/graphql", [auth(f"{T},")], Placement.HEADER),  # the empty part counts
        (f"/graphql?token={T}&token={T2}", [], Placement.QUERY),
        (f"/graphql?token={T}", [auth("nonsense")], None),  # not token-shaped still counts
        (f"/{T}/x/{T2}", [], Placement.PATH),  # generic: first and last both allowed
        (f"/{T}?token=", [], None),
    ],
)
def test_row2_ambiguous(
    target: str, headers: list[tuple[str, str]], placement: Placement | None
) -> None:
    e = run(target, headers)
    assert (e.status, e.error, e.placement) == (400, ErrorCode.AMBIGUOUS_TOKEN, placement)


def test_the_same_value_repeated_is_not_ambiguous() -> None:
    headers = [("X-AUTH-TOKEN", T), ("x-auth-token", f"{T} , {T}")]
    target = f"/%73m_pat_{BODY}/graphql/{T}?token={T}&%74oken=sm_pat_%56a1id{BODY[5:]}"
    e = run(target, headers)
    assert e.forwarded
    assert e.placement is None  # the value came in several placements
    assert upstream_of(e).target == "/graphql"


def test_row3_missing() -> None:
    e = run("/graphql?flag", [("Origin", "http://localhost:3000")])
    assert (e.status, e.error, e.placement) == (401, ErrorCode.MISSING_TOKEN, None)
    assert e.www_authenticate == WWW_AUTHENTICATE
    assert e.allow_origin == "http://localhost:3000"


@pytest.mark.parametrize(
    ("target", "headers", "placement"),
    [
        ("/graphql", [auth("")], Placement.HEADER),
        ("/graphql?token=", [], Placement.QUERY),
        ("/graphql?token", [], Placement.QUERY),
        ("/graphql", [auth("sm_pat_" + "a" * 15)], Placement.HEADER),
        ("/graphql", [auth("sm_pat_" + "a" * 65)], Placement.HEADER),
        ("/graphql", [auth("SM_PAT_" + BODY)], Placement.HEADER),
        (f"/graphql?token={T}%20", [], Placement.QUERY),
        (f"/graphql?token=x.{T}.json", [], Placement.QUERY),  # a placement value, not misplaced
    ],
)
def test_row4_malformed(target: str, headers: list[tuple[str, str]], placement: Placement) -> None:
    e = run(target, headers)
    assert (e.status, e.error, e.placement) == (401, ErrorCode.MALFORMED_TOKEN, placement)
    assert e.www_authenticate == WWW_AUTHENTICATE


def test_a_segment_that_is_not_token_shaped_is_never_a_candidate() -> None:
    e = run("/graphql/sm_pat_" + "a" * 15)
    assert e.error is ErrorCode.MISSING_TOKEN


@pytest.mark.parametrize(
    ("value", "status", "error"),
    [
        (TOKENS.unknown, 401, ErrorCode.UNKNOWN_TOKEN),
        (TOKENS.revoked, 401, ErrorCode.REVOKED_TOKEN),
        (TOKENS.expired, 401, ErrorCode.EXPIRED_TOKEN),
        (TOKENS.out_of_scope, 403, ErrorCode.OUT_OF_SCOPE),
    ],
)
def test_rows5_to_8(value: str, status: int, error: ErrorCode) -> None:
    e = run("/graphql", [auth(value)])
    assert (e.status, e.error, e.placement) == (status, error, Placement.HEADER)
    assert (e.www_authenticate is not None) is (status == 401)


def test_revoked_beats_expired_and_expiry_is_inclusive() -> None:
    expiry = NOW + timedelta(hours=1)
    store = StoreModel(
        {
            T: ModelToken("a", TokenKind.PAT, expires_at=expiry, revoked=True),
            T2: ModelToken("b", TokenKind.AAT, expires_at=expiry),
        }
    )
    assert run("/", [auth(T)], store=store, now=expiry).error is ErrorCode.REVOKED_TOKEN
    assert run("/", [auth(T2)], store=store, now=expiry).error is ErrorCode.EXPIRED_TOKEN
    before = expiry - timedelta(microseconds=1)
    assert run("/", [auth(T2)], store=store, now=before).forwarded


def test_scope_uses_the_addressed_service_or_default() -> None:
    # alice is scoped to "ipfs": fine there, out of scope on cchain
    ipfs = run(f"/{T}", store=STORE_WITH_SERVICES, service="ipfs.example")
    assert ipfs.forwarded
    cchain = run(f"/ext/bc/C/rpc/{T}", store=STORE_WITH_SERVICES, service="cchain")
    assert cchain.error is ErrorCode.OUT_OF_SCOPE
    # with no services registered, the nameless default service is in no named scope
    default_scoped = StoreModel({T: ModelToken("a", TokenKind.PAT, scope=frozenset({"default"}))})
    assert run("/", [auth(T)], store=default_scoped).error is ErrorCode.OUT_OF_SCOPE
    assert run("/", [auth(T)], store=StoreModel({T: ModelToken("a", TokenKind.PAT)})).forwarded


def test_store_unavailable_only_when_rows_5_to_8_need_it() -> None:
    down = StoreModel(dict(STORE.tokens), available=False)
    e = run("/graphql", [auth(T)], store=down)
    assert (e.status, e.error, e.placement) == (503, ErrorCode.STORE_UNAVAILABLE, Placement.HEADER)
    assert run("/graphql", [auth("bad")], store=down).error is ErrorCode.MALFORMED_TOKEN
    observed = run("/graphql", [auth(T)], store=down, mode=Mode.OBSERVE)
    assert observed.forwarded
    assert observed.verdict is ErrorCode.STORE_UNAVAILABLE
    assert upstream_of(observed).token_name is None


def test_accepted_request_gets_identity_headers() -> None:
    headers = [auth(T), ("X-Tokenward-Token", "mallory"), ("Accept", "*/*")]
    e = run("/graphql", headers)
    up = upstream_of(e)
    assert (e.verdict, e.placement, e.checked) == (None, Placement.HEADER, True)
    assert (up.token_name, up.token_kind) == ("alice-laptop", TokenKind.PAT)
    assert up.identity_headers() == (
        ("x-tokenward-token", "alice-laptop"),
        ("x-tokenward-kind", "pat"),
    )
    assert up.client_identity_removed
    assert up.auth_tokens == ()
    assert up.preserved_headers == (("Accept", "*/*"),)


# --- the rewrite --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "layout", "upstream"),
    [
        (f"/{T}/api/v0/version", Layout.IPFS, "/api/v0/version"),
        (f"/ext/bc/C/rpc/{T}", Layout.AVALANCHE, "/ext/bc/C/rpc"),
        (f"/ext/bc/C/rpc/{T}/", Layout.AVALANCHE, "/ext/bc/C/rpc/"),
        (f"/ext/bc/C/ws/{T}", Layout.FUJI, "/ext/bc/C/ws"),
        (f"/{T}", Layout.GENERIC, "/"),
        (f"/{T}/", Layout.GENERIC, "/"),
        (f"/{T}/graphql", Layout.GENERIC, "/graphql"),
        (f"/graphql/{T}", Layout.GENERIC, "/graphql"),
        (f"/%7Euser/{T}/", Layout.GENERIC, "/%7Euser/"),
        (f"/p?token={T}", Layout.GENERIC, "/p"),
        (
            f"/p?arg=/ipfs/Qm%2Fx&flag&b=a+b&token={T}",
            Layout.GENERIC,
            "/p?arg=/ipfs/Qm%2Fx&flag&b=a+b",
        ),
        (
            f"/p?token={T}&arg=/ipfs/Qm%2Fx&token={T}&flag",
            Layout.GENERIC,
            "/p?arg=/ipfs/Qm%2Fx&flag",
        ),
        (f"/%73m_pat_{BODY}", Layout.GENERIC, "/"),  # the same token as /sm_pat_…
        (f"/%73%6D_pat_{BODY}/a%2Fb", Layout.GENERIC, "/a%2Fb"),
        ("/p?", Layout.GENERIC, "/p?"),  # nothing removed: as sent
        ("/a//b/?x=%41", Layout.GENERIC, "/a//b/?x=%41"),
    ],
)
def test_strip_rewrite(target: str, layout: Layout, upstream: str) -> None:
    e = run(target, [auth(T)], layout=layout)
    up = upstream_of(e)
    assert up.target == upstream
    assert up.auth_tokens == ()


def test_strip_with_a_path_and_header_token_removes_both() -> None:
    e = run(f"/{T}/api/v0/version?arg=QmX", [auth(T)], layout=Layout.IPFS)
    assert upstream_of(e).target == "/api/v0/version?arg=QmX"


def test_forward_header_sends_exactly_one_header() -> None:
    e = run(f"/graphql/{T}?token={T}", [auth(f"{T},{T}")], forward=Forward.HEADER)
    up = upstream_of(e)
    assert up.target == "/graphql"
    assert up.auth_tokens == (T,)


@pytest.mark.parametrize(
    ("target", "upstream"),
    [
        ("/graphql", f"/graphql?token={T}"),
        ("/graphql?b=a+b&flag", f"/graphql?b=a+b&flag&token={T}"),
        (f"/graphql?token={T}&b=a+b", f"/graphql?b=a+b&token={T}"),
        (f"/%74oken/{T}?t%6Fken={T}&x=1", f"/%74oken?x=1&token={T}"),
        ("/graphql?", f"/graphql?token={T}"),
    ],
)
def test_forward_query_appends_one_parameter_last(target: str, upstream: str) -> None:
    e = run(target, [auth(T)], forward=Forward.QUERY)
    up = upstream_of(e)
    assert up.target == upstream
    assert up.auth_tokens == ()


@pytest.mark.parametrize(
    ("target", "layout", "upstream"),
    [
        ("/graphql", Layout.GENERIC, f"/graphql/{T}"),
        ("/graphql/", Layout.GENERIC, f"/graphql/{T}/"),
        ("/", Layout.GENERIC, f"/{T}"),
        (f"/{T}/graphql", Layout.GENERIC, f"/{T}/graphql"),  # first is allowed: it stays
        (f"/%73m_pat_{BODY}/graphql", Layout.GENERIC, f"/%73m_pat_{BODY}/graphql"),
        (f"/{T}/graphql/{T}", Layout.GENERIC, f"/graphql/{T}"),  # of two, the canonical one
        (f"/graphql?token={T}", Layout.GENERIC, f"/graphql/{T}"),
        ("/api/v0/version?arg=x", Layout.IPFS, f"/{T}/api/v0/version?arg=x"),
        ("/ext/bc/C/rpc", Layout.AVALANCHE, f"/ext/bc/C/rpc/{T}"),
        ("/ext/bc/C/ws/", Layout.FUJI, f"/ext/bc/C/ws/{T}/"),
    ],
)
def test_forward_path_places_the_token_canonically(
    target: str, layout: Layout, upstream: str
) -> None:
    e = run(target, [auth(T)], layout=layout, forward=Forward.PATH)
    up = upstream_of(e)
    assert up.target == upstream
    assert up.auth_tokens == ()


def test_forward_path_without_a_canonical_position_is_unplaceable() -> None:
    e = run("/ext/health", [auth(T)], layout=Layout.AVALANCHE, forward=Forward.PATH)
    assert (e.status, e.error, e.placement) == (400, ErrorCode.UNPLACEABLE_TOKEN, Placement.HEADER)
    # only for what would otherwise be forwarded: a bad token gets its own verdict
    unknown = run(
        "/ext/health", [auth(TOKENS.unknown)], layout=Layout.AVALANCHE, forward=Forward.PATH
    )
    assert unknown.error is ErrorCode.UNKNOWN_TOKEN
    observed = run(
        "/ext/health?token=" + T, layout=Layout.AVALANCHE, forward=Forward.PATH, mode=Mode.OBSERVE
    )
    assert observed.verdict is ErrorCode.UNPLACEABLE_TOKEN
    assert upstream_of(observed).target == "/ext/health"
    assert upstream_of(observed).token_name is None


def test_keep_forwards_as_sent() -> None:
    headers = [("X-Auth-Token", f"{T}, {T}"), ("x-tokenward-token", "mallory")]
    e = run(f"/graphql/{T}?token={T}", headers, forward=Forward.KEEP)
    up = upstream_of(e)
    assert up.target == f"/graphql/{T}?token={T}"
    assert up.auth_tokens == (f"{T}, {T}",)
    assert (up.token_name, up.client_identity_removed) == (None, False)
    assert ("x-tokenward-token", "mallory") in up.preserved_headers


# --- preflights and observe mode ----------------------------------------------------------------

PREFLIGHT = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST")]


def test_preflight_pass_skips_rows_2_to_8() -> None:
    e = run("/graphql", PREFLIGHT, method="OPTIONS")
    up = upstream_of(e)
    assert (e.checked, e.verdict, up.token_name) == (False, None, None)
    assert up.client_identity_removed
    rewritten = run(f"/graphql?token={T}&token={T2}", PREFLIGHT, method="OPTIONS")
    assert upstream_of(rewritten).target == "/graphql"


def test_preflight_pass_keeps_rows_0_and_1() -> None:
    misplaced = run(f"/a/{T}/b", PREFLIGHT, method="OPTIONS")
    assert misplaced.error is ErrorCode.MISPLACED_TOKEN
    assert misplaced.allow_origin == "https://app.example"
    unknown = run("/", PREFLIGHT, method="OPTIONS", store=STORE_WITH_SERVICES, service="nope")
    assert unknown.error is ErrorCode.UNKNOWN_SERVICE


def test_preflight_enforce_checks_like_any_request() -> None:
    e = run("/graphql", PREFLIGHT, method="OPTIONS", preflight=Preflight.ENFORCE)
    assert e.error is ErrorCode.MISSING_TOKEN
    assert e.allow_origin == "https://app.example"


def test_an_options_request_without_the_cors_headers_is_no_preflight() -> None:
    e = run("/graphql", [("Origin", "https://app.example")], method="OPTIONS")
    assert e.error is ErrorCode.MISSING_TOKEN


def test_observe_never_rejects_and_identifies_only_accepted_requests() -> None:
    missing = run("/graphql", mode=Mode.OBSERVE)
    assert (missing.status, missing.verdict) == (None, ErrorCode.MISSING_TOKEN)
    assert upstream_of(missing).identity_headers() == ()
    misplaced = run(f"/p?token={T}&key={T}", mode=Mode.OBSERVE)
    assert misplaced.verdict is ErrorCode.MISPLACED_TOKEN
    assert upstream_of(misplaced).target == f"/p?key={T}"  # the rewrite still applies
    accepted = run(f"/p?token={T}", mode=Mode.OBSERVE)
    assert upstream_of(accepted).token_name == "alice-laptop"
    assert accepted.token_in_url
    assert not run("/p?token=", mode=Mode.OBSERVE).token_in_url
    assert not run("/p", [auth(T)], mode=Mode.OBSERVE).token_in_url


def test_observe_places_nothing_without_a_single_token_shaped_value() -> None:
    e = run("/graphql", [auth(T), auth(T2)], mode=Mode.OBSERVE, forward=Forward.HEADER)
    assert upstream_of(e).auth_tokens == ()
    e = run("/graphql", [auth("bad")], mode=Mode.OBSERVE, forward=Forward.QUERY)
    assert upstream_of(e).target == "/graphql"


# --- the rejection body and the curl command ----------------------------------------------------


def test_rejection_body_problems() -> None:
    e = run("/graphql", [auth(TOKENS.expired)])
    good = b'{"error": "expired_token", "message": "The token expired.", "placement": "header"}'
    assert rejection_body_problems(e, good) == ()
    bad = b'{"error": "unknown_token", "message": "", "placement": null}'
    assert len(rejection_body_problems(e, bad)) == 3
    assert rejection_body_problems(e, b"<html>") != ()
    assert rejection_body_problems(e, b'{"error": "expired_token", "message": "x"}') == (
        "the placement field is missing",
    )
    with pytest.raises(ValueError, match="not a rejection"):
        rejection_body_problems(run("/", [auth(T)]), good)


def shell_words(command: str, env: dict[str, str]) -> list[str]:
    """The words bash makes of a curl command, curl swapped for a printer."""
    assert command.startswith("curl ")
    script = f"set -- {command.removeprefix('curl ')}\nprintf '%s\\0' \"$@\""
    result = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        check=True,
    )
    return result.stdout.decode("latin-1").split("\0")[:-1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_curl_command_prints_no_token_and_replays_the_request() -> None:
    body = b'{"key": "' + T.encode() + b'", "x": "it\'s \xe9"}'
    request = HarnessRequest(
        "POST",
        f"/graphql/{T}?q=%E2%9C%93&filter[a]=1&x=%2573{T[1:]}",
        (("X-Auth-Token", T), ("X-Empty", ""), ("Authorization", f"Bearer {T2}")),
        body,
    )
    env = {T: "TOKENWARD_VALID_TOKEN", T2: "TOKENWARD_SECOND_VALID_TOKEN"}
    command = curl_command(request, "http://127.0.0.1:8080/", env)
    assert T not in command and T2 not in command and T[1:] not in command
    assert '"$TOKENWARD_VALID_TOKEN"' in command
    assert "--path-as-is" in command and " -g " in command
    words = shell_words(command, {"TOKENWARD_VALID_TOKEN": T, "TOKENWARD_SECOND_VALID_TOKEN": T2})
    # the double-encoded spelling is sent plain: the same token once decoded
    assert f"http://127.0.0.1:8080/graphql/{T}?q=%E2%9C%93&filter[a]=1&x={T}" in words
    assert words[words.index("-X") + 1] == "POST"
    assert "X-Empty;" in words  # how curl sends an empty header
    assert f"Authorization: Bearer {T2}" in words
    assert words[-1].encode("latin-1") == body


def test_header_values_are_read_as_http_reads_them() -> None:
    request = HarnessRequest("GET", "/", (("x-auth-token", f" {T} , \t"), ("X-Odd", "a  b")))
    assert request.headers == (("x-auth-token", f"{T} ,"), ("X-Odd", "a  b"))
    kept = run("/", [("x-auth-token", f"{T}, ")], forward=Forward.KEEP, mode=Mode.OBSERVE)
    assert upstream_of(kept).auth_tokens == (f"{T},",)


def test_redact_names_every_spelling_of_a_token() -> None:
    env = {T: "TOKENWARD_VALID_TOKEN"}
    text = f"/{T}/x?a=%73{T[1:]}&b=%2573{T[1:]} and {T2}"
    assert redact(text, env) == (
        f"/$TOKENWARD_VALID_TOKEN/x?a=$TOKENWARD_VALID_TOKEN&b=$TOKENWARD_VALID_TOKEN and {T2}"
    )
    assert redact("nothing here", env) == "nothing here"


def test_curl_command_rejects_bad_variable_names() -> None:
    with pytest.raises(ValueError, match="not a shell variable name: 'A B'"):
        curl_command(HarnessRequest("GET", "/"), "http://x", {T: "A B"})


# --- properties ---------------------------------------------------------------------------------


Case = tuple[StoreModel, Scenario, HarnessRequest]


def cases_for(store: StoreModel, layout: Layout) -> st.SearchStrategy[Case]:
    requests = scenario_requests(store, layout, now=NOW)
    return st.tuples(st.just(store), scenarios(NOW, [layout]), requests)


def cases() -> st.SearchStrategy[Case]:
    """The example store or a drawn one, any layout, any options, a drawn request."""
    pairs = st.tuples(st.just(STORE) | stores(NOW), st.sampled_from(Layout))
    return pairs.flatmap(lambda pair: cases_for(*pair))


ODD = Scenario(NOW, Layout.AVALANCHE, Forward.PATH, Mode.OBSERVE)


@settings(deadline=None)
@given(case=cases())
@example(case=(STORE, ODD, HarnessRequest("GET", "/%?token=%&&=&%zz")))
@example(case=(STORE, ODD, HarnessRequest("GET", "//?", (("x-auth-token", ",,"),))))
@example(case=(STORE, Scenario(NOW), HarnessRequest("GET", "/\xe9sm_pat_" + "a" * 16 + "\xff")))
def test_oracle_answers_consistently(case: Case) -> None:
    store, scenario, request = case
    e = expect(request, store, scenario)
    assert (e.status is None) is e.forwarded is (e.error is None)
    assert (e.www_authenticate is not None) is (e.status == 401)
    if e.status is not None:
        assert e.verdict is e.error
        assert e.allow_origin == (request.header_values("origin") or (None,))[0]
    if scenario.mode is Mode.OBSERVE:
        assert e.forwarded
    if e.upstream is not None and e.upstream.token_name is not None:
        assert e.verdict is None and e.checked and scenario.forward is not Forward.KEEP
    if scenario.forward is Forward.KEEP and e.upstream is not None:
        assert e.upstream.target == request.target


@settings(deadline=None)
@given(case=cases())
@example(
    case=(STORE, Scenario(NOW), HarnessRequest("GET", f"/p?arg=/ipfs/Qm%2Fx&flag&b=a+b&token={T}"))
)
@example(
    case=(
        STORE,
        Scenario(NOW, Layout.IPFS),
        HarnessRequest("GET", f"/%73m_pat_{BODY}/api/v0/version"),
    )
)
def test_strip_leaves_no_token_in_the_target(case: Case) -> None:
    store, scenario, request = case
    strip = Scenario(NOW, scenario.layout, Forward.STRIP, Mode.ENFORCE, scenario.preflight)
    e = expect(request, store, strip)
    if e.upstream is not None:
        assert not holds_token_in_any_form(e.upstream.target)
        assert e.upstream.auth_tokens == ()


@settings(deadline=None)
@given(case=cases())
@example(case=(STORE, Scenario(NOW), HarnessRequest("GET", f"/p?b=a+b&token={T}&flag")))
def test_the_rewrite_keeps_other_parameters_byte_for_byte(
    case: Case,
) -> None:
    store, scenario, request = case
    e = expect(request, store, scenario)
    if e.upstream is None:
        return
    sent = [p.raw for p in query_params(request) if not p.is_token_param and p.raw]
    received = query_params(HarnessRequest("GET", e.upstream.target))
    assert [p.raw for p in received if not p.is_token_param and p.raw] == sent
    token_params = [p for p in received if p.is_token_param]
    if scenario.forward is Forward.QUERY:
        assert len(token_params) <= 1
        if token_params:
            assert received[-1] == token_params[0]
    elif scenario.forward is not Forward.KEEP:
        assert token_params == []


# --- request hygiene: upgrades, folded fields, the preflight's definition -----------------------

WEBSOCKET = (("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13"))
PREFLIGHT_FIELDS = tuple(PREFLIGHT)


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ((auth(T), *WEBSOCKET), None),
        ((auth(T), ("Upgrade", "h2c")), ErrorCode.UNSUPPORTED_UPGRADE),
        ((auth(T), ("Upgrade", "websocket"), ("Sec-WebSocket-Version", "12")), "upgrade"),
        ((("Upgrade", "h2c"),), ErrorCode.UNSUPPORTED_UPGRADE),  # before row 3
        ((auth(T), ("x-note", "a\r\n b")), ErrorCode.MALFORMED_REQUEST),
        ((auth("x"), ("x-note", "a\n b")), ErrorCode.MALFORMED_REQUEST),  # before row 4
    ],
)
def test_hygiene_verdicts(headers: tuple[tuple[str, str], ...], error: object) -> None:
    wanted = ErrorCode.UNSUPPORTED_UPGRADE if error == "upgrade" else error
    e = run("/graphql", headers)
    assert e.error is wanted
    if wanted is not None:
        assert (e.status, e.placement, e.www_authenticate) == (400, None, None)


def test_a_misplaced_token_comes_before_an_unsupported_upgrade() -> None:
    e = run(f"/graphql?x={T2}", [auth(T), ("Upgrade", "h2c")])
    assert e.error is ErrorCode.MISPLACED_TOKEN


def test_observe_mode_forwards_a_folded_field_and_records_it() -> None:
    e = run("/graphql", [auth(T), ("x-note", "a\r\n b")], mode=Mode.OBSERVE)
    assert e.forwarded and e.verdict is ErrorCode.MALFORMED_REQUEST
    assert upstream_of(e).token_name is None


@pytest.mark.parametrize(
    ("method", "extra", "preflight"),
    [
        ("OPTIONS", (), True),
        ("OPTIONS", (("Content-Length", "0"),), True),
        ("OPTIONS", (("Content-Length", "2"),), False),
        ("OPTIONS", (("Transfer-Encoding", "chunked"),), False),
        ("OPTIONS", (("Upgrade", "websocket"),), False),
        ("options", (), False),
    ],
)
def test_a_preflight_is_exactly_options_without_body_or_upgrade(
    method: str, extra: tuple[tuple[str, str], ...], preflight: bool
) -> None:
    request = HarnessRequest(method, "/graphql", (*PREFLIGHT_FIELDS, *extra))
    assert is_preflight(request) is preflight
    e = run("/graphql", (*PREFLIGHT_FIELDS, *extra), method=method)
    assert e.forwarded is preflight


def test_an_options_request_with_a_body_is_no_preflight() -> None:
    request = HarnessRequest("OPTIONS", "/graphql", PREFLIGHT_FIELDS, b"{}")
    assert not is_preflight(request)
    e = expect(request, STORE, Scenario(NOW))
    assert e.error is ErrorCode.MISSING_TOKEN


def test_a_hosts_trailing_dot_case_and_port_are_ignored() -> None:
    for host in ("ipfs.example.", "IPFS.Example:8080", "ipfs.example.:443"):
        assert host_name(host) == "ipfs.example"
        e = run(f"/{T}/api/v0/version", store=STORE_WITH_SERVICES, service=host, layout=Layout.IPFS)
        assert e.error is not ErrorCode.UNKNOWN_SERVICE


@settings(deadline=None)
@given(
    case=cases(),
    name=st.sampled_from(["x-note", "Accept"]),
    fold=st.sampled_from(["\r\n ", "\n\t"]),
)
def test_a_folded_field_is_refused_whatever_else_the_request_holds(
    case: Case, name: str, fold: str
) -> None:
    store, scenario, request = case
    folded = replace(request, headers=(*request.headers, (name, f"a{fold}b")))
    e = expect(folded, store, scenario)
    if scenario.mode is Mode.ENFORCE:
        assert (e.status, e.error) == (400, ErrorCode.MALFORMED_REQUEST)
    else:
        assert e.forwarded and e.verdict is ErrorCode.MALFORMED_REQUEST

"""The strategies draw what they claim, and the matrix enumerates what the combinatorics say."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from hypothesis import example, find, given, settings
from hypothesis import strategies as st

from tokenward.harness.oracle import (
    ErrorCode,
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelToken,
    Placement,
    Preflight,
    Scenario,
    StoreModel,
    TokenKind,
    expect,
    holds_token_in_any_form,
    is_preflight,
    is_token_shaped,
    percent_decode,
    query_params,
    read_request,
)
from tokenward.harness.strategies import (
    AUTH_HEADER_NAMES,
    EXTRA_PARAMS,
    EXTRA_SEGMENTS,
    TOKEN_PARAM_NAMES,
    MatrixCase,
    PathPosition,
    RequestKind,
    TokenPlacement,
    TokenState,
    classify_tokens,
    example_store,
    exhaustive_matrix,
    header_wire,
    malformed_tokens,
    path_positions,
    percent_encoded,
    placement_subsets,
    requests_for,
    scenario_requests,
    store_tokens_of,
    stores,
    token_placements,
    token_values,
    tokens,
)

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
STORE = example_store(NOW)
TOKENS = store_tokens_of(STORE, now=NOW)
ENFORCE = Preflight.ENFORCE  # so a drawn preflight is judged like any request

EXPECTED_ERROR = {
    TokenState.VALID: None,
    TokenState.SECOND_VALID: None,
    TokenState.UNKNOWN: ErrorCode.UNKNOWN_TOKEN,
    TokenState.MALFORMED: ErrorCode.MALFORMED_TOKEN,
    TokenState.REVOKED: ErrorCode.REVOKED_TOKEN,
    TokenState.EXPIRED: ErrorCode.EXPIRED_TOKEN,
    TokenState.OUT_OF_SCOPE: ErrorCode.OUT_OF_SCOPE,
}


def judged(request: HarnessRequest, layout: Layout, store: StoreModel = STORE) -> ErrorCode | None:
    return expect(request, store, Scenario(NOW, layout, preflight=ENFORCE)).verdict


# --- the exhaustive matrix ----------------------------------------------------------------------


def expected_matrix_size(layouts: list[Layout]) -> int:
    """Per layout: no token once, then 7 states x (3 subsets without the path + 4 with it, each
    once per allowed position)."""
    states = len(TokenState)
    positions = {Layout.GENERIC: 2, Layout.IPFS: 1, Layout.AVALANCHE: 1, Layout.FUJI: 1}
    return sum(1 + states * (3 + 4 * positions[layout]) for layout in layouts)


def test_matrix_size_is_the_combinatorics() -> None:
    matrix = exhaustive_matrix(TOKENS)
    assert len(matrix) == expected_matrix_size(list(Layout)) == 78 + 50 + 50 + 50
    for layout in Layout:
        assert len(exhaustive_matrix(TOKENS, [layout])) == expected_matrix_size([layout])
    assert exhaustive_matrix(TOKENS, []) == []


def test_matrix_ids_are_unique_and_readable() -> None:
    matrix = exhaustive_matrix(TOKENS)
    ids = [case.id for case in matrix]
    assert len(set(ids)) == len(ids)
    assert "header+path@generic/last:expired" in ids
    assert "header+query+path@fuji/endpoint:out_of_scope" in ids
    assert "query@ipfs:second_valid" in ids
    assert "none@avalanche:no_token" in ids
    pattern = re.compile(r"(none|[a-z+]+)@[a-z]+(/(first|last|endpoint))?:[a-z_]+")
    assert all(pattern.fullmatch(case_id) for case_id in ids)


def test_matrix_covers_every_subset_position_and_state() -> None:
    matrix = exhaustive_matrix(TOKENS)
    for layout in Layout:
        seen = Counter(
            (case.placements, case.path_position, case.state)
            for case in matrix
            if case.layout is layout
        )
        assert seen[((), None, None)] == 1
        for subset in placement_subsets():
            positions = path_positions(layout) if Placement.PATH in subset else (None,)
            for position in positions:
                for state in TokenState:
                    assert seen[(subset, position, state)] == 1


@pytest.mark.parametrize("case", exhaustive_matrix(TOKENS), ids=lambda case: case.id)
def test_matrix_case_places_its_value_and_gets_its_state_verdict(case: MatrixCase) -> None:
    expectation = expect(case.request, STORE, Scenario(NOW, case.layout))
    found = {item.placement for item in read_request(case.request, case.layout).found}
    if case.state is None:
        assert found == set()
        assert expectation.error is ErrorCode.MISSING_TOKEN
        return
    value = TOKENS.value(case.state)
    carried = set(case.placements)
    if not is_token_shaped(value):
        carried.discard(Placement.PATH)  # in the path it is an ordinary segment
    assert found == carried
    if carried:
        assert expectation.error is EXPECTED_ERROR[case.state]
    else:
        assert expectation.error is ErrorCode.MISSING_TOKEN


def test_store_tokens_need_every_stored_state() -> None:
    only_valid = StoreModel({TOKENS.valid: STORE.tokens[TOKENS.valid]})
    with pytest.raises(ValueError, match="holds no second_valid token for the default service"):
        store_tokens_of(only_valid, now=NOW)


def test_store_tokens_env_vars() -> None:
    env = TOKENS.env_vars()
    assert env[TOKENS.valid] == "TOKENWARD_VALID_TOKEN"
    assert env[TOKENS.second_valid] == "TOKENWARD_SECOND_TOKEN"
    assert env[TOKENS.out_of_scope] == "TOKENWARD_OUT_OF_SCOPE_TOKEN"
    assert len(env) == len(TokenState)


# --- token values -------------------------------------------------------------------------------


@given(value=token_values())
def test_token_values_are_token_shaped(value: str) -> None:
    assert is_token_shaped(value)


@given(value=malformed_tokens())
@example(value="")
@example(value="sm_pat_" + "a" * 65)
def test_malformed_tokens_are_neither_shaped_nor_holding_one(value: str) -> None:
    assert not is_token_shaped(value)
    assert not holds_token_in_any_form(header_wire(value))


def drawn_stores() -> st.SearchStrategy[StoreModel]:
    return st.just(STORE) | stores(NOW)


@settings(deadline=None)
@given(store=drawn_stores(), state=st.sampled_from(TokenState), data=st.data())
def test_tokens_draw_values_the_oracle_puts_in_that_state(
    store: StoreModel, state: TokenState, data: st.DataObject
) -> None:
    value = data.draw(tokens(store, state, now=NOW))
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", header_wire(value)),))
    assert judged(request, Layout.GENERIC, store) is EXPECTED_ERROR[state]


# A stored token holding the first three markers unknown values could carry.
MARKED_STORE = StoreModel(
    {**STORE.tokens, "sm_pat_Unknown0Unknown1Unknown2": ModelToken("marked", TokenKind.PAT)}
)


@given(value=tokens(MARKED_STORE, TokenState.UNKNOWN, now=NOW))
def test_unknown_tokens_carry_a_marker_no_stored_token_holds(value: str) -> None:
    assert is_token_shaped(value)
    assert value not in MARKED_STORE.tokens
    assert value[len("sm_pat_") :].startswith("Unknown3")


@given(store=stores(NOW))
def test_states_never_share_a_value(store: StoreModel) -> None:
    by_state = classify_tokens(store, now=NOW)
    assert len(by_state[TokenState.VALID]) == 1
    assert by_state[TokenState.SECOND_VALID]
    values = [value for values in by_state.values() for value in values]
    assert len(values) == len(set(values)) == len(store.tokens)


@given(value=st.text(), positions=st.frozensets(st.integers(0, 40)), lower=st.booleans())
def test_percent_encoding_decodes_to_the_header_form(
    value: str, positions: frozenset[int], lower: bool
) -> None:
    assert percent_decode(percent_encoded(value, positions, lower=lower)) == header_wire(value)


# --- placements and requests --------------------------------------------------------------------


@given(layout=st.sampled_from(Layout), data=st.data())
def test_token_placements_draw_only_allowed_positions(layout: Layout, data: st.DataObject) -> None:
    placement = data.draw(token_placements(layout))
    assert placement.placements in placement_subsets()
    if Placement.PATH in placement.placements:
        assert placement.path_position in path_positions(layout)
    else:
        assert placement.path_position is None


def test_path_positions_per_layout() -> None:
    assert path_positions(Layout.GENERIC) == (PathPosition.FIRST, PathPosition.LAST)
    assert path_positions(Layout.IPFS) == (PathPosition.FIRST,)
    assert path_positions(Layout.AVALANCHE) == path_positions(Layout.FUJI)
    assert len(placement_subsets()) == 7


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="non-empty subset"):
        TokenPlacement(())
    with pytest.raises(ValueError, match="path position goes with the path"):
        TokenPlacement((Placement.HEADER,), PathPosition.FIRST)
    with pytest.raises(ValueError, match="ipfs allows no token at"):
        requests_for(
            Layout.IPFS, TOKENS.valid, TokenPlacement((Placement.PATH,), PathPosition.LAST)
        )
    with pytest.raises(ValueError, match="misplaced must be token-shaped, got 'x'"):
        requests_for(Layout.GENERIC, misplaced="x")


def layouts_and_placements() -> st.SearchStrategy[tuple[Layout, TokenPlacement]]:
    return st.sampled_from(Layout).flatmap(
        lambda layout: st.tuples(st.just(layout), token_placements(layout))
    )


@settings(deadline=None)
@given(
    where=layouts_and_placements(),
    state=st.sampled_from([TokenState.VALID, TokenState.MALFORMED, TokenState.EXPIRED]),
    data=st.data(),
)
def test_requests_for_puts_the_token_where_claimed(
    where: tuple[Layout, TokenPlacement], state: TokenState, data: st.DataObject
) -> None:
    layout, placement = where
    value = data.draw(tokens(STORE, state, now=NOW))
    request = data.draw(requests_for(layout, value, placement))
    reading = read_request(request, layout)
    claimed = set(placement.placements)
    if not is_token_shaped(value):
        claimed.discard(Placement.PATH)
    assert {item.placement for item in reading.found} == claimed
    assert reading.distinct_values == ({header_wire(value)} if claimed else set())
    expected = EXPECTED_ERROR[state] if claimed else ErrorCode.MISSING_TOKEN
    assert judged(request, layout) is expected


@settings(deadline=None)
@given(where=layouts_and_placements(), misplaced=token_values(), data=st.data())
def test_requests_with_a_misplaced_token_are_misplaced(
    where: tuple[Layout, TokenPlacement], misplaced: str, data: st.DataObject
) -> None:
    layout, placement = where
    request = data.draw(requests_for(layout, TOKENS.valid, placement, misplaced=misplaced))
    assert judged(request, layout) is ErrorCode.MISPLACED_TOKEN


@settings(deadline=None)
@given(
    where=layouts_and_placements(),
    conflicting=st.sampled_from([TOKENS.second_valid, TOKENS.unknown, ""]) | malformed_tokens(),
    data=st.data(),
)
def test_requests_with_a_conflicting_value_are_ambiguous(
    where: tuple[Layout, TokenPlacement], conflicting: str, data: st.DataObject
) -> None:
    layout, placement = where
    request = data.draw(requests_for(layout, TOKENS.valid, placement, conflicting=conflicting))
    assert judged(request, layout) is ErrorCode.AMBIGUOUS_TOKEN


@settings(deadline=None)
@given(layout=st.sampled_from(Layout), data=st.data())
def test_websocket_handshakes(layout: Layout, data: st.DataObject) -> None:
    kinds = [RequestKind.WEBSOCKET]
    request = data.draw(requests_for(layout, kinds=kinds))
    assert request.websocket and request.method == "GET"
    assert request.header_values("upgrade") == ("websocket",)
    assert request.header_values("connection") == ("Upgrade",)
    assert request.header_values("sec-websocket-version") == ("13",)
    assert len(request.header_values("sec-websocket-key")[0]) == 24


@settings(deadline=None)
@given(layout=st.sampled_from(Layout), data=st.data())
def test_preflights_are_preflights_and_pass(layout: Layout, data: st.DataObject) -> None:
    request = data.draw(requests_for(layout, kinds=[RequestKind.PREFLIGHT]))
    assert is_preflight(request)
    assert expect(request, STORE, Scenario(NOW, layout)).forwarded


@settings(deadline=None)
@given(layout=st.sampled_from(Layout), data=st.data())
def test_bodies_match_their_kind(layout: Layout, data: st.DataObject) -> None:
    request = data.draw(requests_for(layout))
    content_type = (request.header_values("content-type") or ("",))[0]
    if content_type == "application/json":
        assert request.method == "POST"
        assert json.loads(request.body)["jsonrpc"] == "2.0"
    elif content_type.startswith("multipart/form-data; boundary="):
        boundary = content_type.partition("boundary=")[2]
        assert request.target.startswith("/api/v0/add")
        assert request.body.startswith(f"--{boundary}\r\n".encode())
        assert request.body.endswith(f"--{boundary}--\r\n".encode())
    else:
        assert request.body == b""


@settings(deadline=None)
@given(store=drawn_stores(), layout=st.sampled_from(Layout), data=st.data())
def test_strip_forwarding_of_drawn_requests_removes_client_identity(
    store: StoreModel, layout: Layout, data: st.DataObject
) -> None:
    request = data.draw(requests_for(layout, TOKENS.valid, data.draw(token_placements(layout))))
    store = StoreModel({**store.tokens, TOKENS.valid: STORE.tokens[TOKENS.valid]})
    scenario = Scenario(NOW, layout, Forward.STRIP, Mode.ENFORCE, ENFORCE)
    upstream = expect(request, store, scenario).upstream
    assert upstream is not None
    assert upstream.client_identity_removed and upstream.token_name == "alice-laptop"
    assert all(
        not name.lower().startswith("x-tokenward-") for name, _ in upstream.preserved_headers
    )


def test_store_tokens_value_by_state() -> None:
    assert TOKENS.unknown not in STORE.tokens
    assert TOKENS.value(TokenState.SECOND_VALID) == TOKENS.second_valid
    assert TOKENS.malformed == TOKENS.valid[: len("sm_pat_") + 15]
    assert len({TOKENS.value(state) for state in TokenState}) == len(TokenState)


# --- everything promised is drawn ---------------------------------------------------------------


def encoded_token_texts(request: HarnessRequest) -> list[str]:
    """The percent-encoded query values and path segments that decode to a stored token."""
    texts = [param.raw_value for param in query_params(request)]
    texts += request.path.split("/")
    return [text for text in texts if "%" in text and percent_decode(text) in STORE.tokens]


def lower_hex(text: str) -> bool:
    return re.search(r"%(?:[0-9][a-f]|[a-f][0-9a-f])", text) is not None


def upper_hex(text: str) -> bool:
    return re.search(r"%(?:[0-9][A-F]|[A-F][0-9A-F])", text) is not None


def placements_found(request: HarnessRequest, layout: Layout) -> set[Placement]:
    return {item.placement for item in read_request(request, layout).found}


GENERIC = Layout.GENERIC
VARIATIONS: list[tuple[str, Layout, Callable[[HarnessRequest], bool]]] = [
    ("no token", GENERIC, lambda r: judged(r, GENERIC) is ErrorCode.MISSING_TOKEN),
    ("a valid token", GENERIC, lambda r: judged(r, GENERIC) is None and not is_preflight(r)),
    *(
        (
            f"a {state} token",
            GENERIC,
            lambda r, error=EXPECTED_ERROR[state]: judged(r, GENERIC) is error,
        )
        for state in (
            TokenState.UNKNOWN,
            TokenState.MALFORMED,
            TokenState.REVOKED,
            TokenState.EXPIRED,
            TokenState.OUT_OF_SCOPE,
        )
    ),
    ("a misplaced token", GENERIC, lambda r: judged(r, GENERIC) is ErrorCode.MISPLACED_TOKEN),
    ("a conflicting value", GENERIC, lambda r: judged(r, GENERIC) is ErrorCode.AMBIGUOUS_TOKEN),
    ("the header", GENERIC, lambda r: placements_found(r, GENERIC) == {Placement.HEADER}),
    ("the query", GENERIC, lambda r: placements_found(r, GENERIC) == {Placement.QUERY}),
    ("the path", GENERIC, lambda r: placements_found(r, GENERIC) == {Placement.PATH}),
    ("all placements", GENERIC, lambda r: len(placements_found(r, GENERIC)) == 3),
    (
        "header names in other cases",
        GENERIC,
        lambda r: any(name in AUTH_HEADER_NAMES[1:] for name, _ in r.headers),
    ),
    (
        "repeated header fields",
        GENERIC,
        lambda r: (
            len(set(r.header_values("x-auth-token"))) == 1
            and len(r.header_values("x-auth-token")) > 1
        ),
    ),
    (
        "copies in one field",
        GENERIC,
        lambda r: any("," in value for value in r.header_values("x-auth-token")),
    ),
    (
        "repeated token parameters",
        GENERIC,
        lambda r: sum(param.is_token_param for param in query_params(r)) > 1,
    ),
    (
        "encoded parameter names",
        GENERIC,
        lambda r: any(f"{name}=" in r.target for name in TOKEN_PARAM_NAMES[1:]),
    ),
    ("upper-case hex in a token", GENERIC, lambda r: any(map(upper_hex, encoded_token_texts(r)))),
    ("lower-case hex in a token", GENERIC, lambda r: any(map(lower_hex, encoded_token_texts(r)))),
    (
        "extra parameters",
        GENERIC,
        lambda r: any(param.raw in EXTRA_PARAMS for param in query_params(r)),
    ),
    (
        "extra segments",
        GENERIC,
        lambda r: any(segment in EXTRA_SEGMENTS for segment in r.path.split("/")),
    ),
    ("a trailing slash", GENERIC, lambda r: r.path != "/" and r.path.endswith("/")),
    (
        "JSON-RPC",
        Layout.AVALANCHE,
        lambda r: r.header_values("content-type") == ("application/json",),
    ),
    ("an IPFS add", Layout.IPFS, lambda r: r.target.startswith("/api/v0/add") and b"--" in r.body),
    ("a WebSocket upgrade", Layout.FUJI, lambda r: r.websocket),
    ("a CORS preflight", GENERIC, is_preflight),
    ("an Origin", GENERIC, lambda r: not is_preflight(r) and bool(r.header_values("origin"))),
    (
        "client identity headers",
        GENERIC,
        lambda r: any(name.lower().startswith("x-tokenward-") for name, _ in r.headers),
    ),
]


@pytest.mark.parametrize(
    ("layout", "condition"),
    [(layout, condition) for _, layout, condition in VARIATIONS],
    ids=[name for name, _, _ in VARIATIONS],
)
def test_scenario_requests_draw_every_variation(
    layout: Layout, condition: Callable[[HarnessRequest], bool]
) -> None:
    requests = scenario_requests(STORE, layout, now=NOW)
    find(requests, condition, settings=settings(database=None, max_examples=2000))

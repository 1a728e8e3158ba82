"""Hypothesis strategies for the harness, and the exhaustive placement matrix.

Everything is built by construction: a strategy draws the parts of what it claims and assembles
them, it does not generate broadly and filter. Requests carry no ``Host`` or ``Content-Length``
header (the transport adds them). Values in headers travel as their UTF-8 bytes; in the query
and the path, bytes outside the unreserved set are percent-encoded.

A value that is not token-shaped is, in the path, an ordinary segment (the contract says so),
so placing such a value "in the path" puts a segment there but gives the request no path
placement; there it is only encoded where it must be, so it never turns into a misplaced token.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from itertools import combinations

from hypothesis import strategies as st

from harness.oracle import (
    LETTERS_AND_DIGITS,
    TOKEN_ENV_VARS,
    UNRESERVED,
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    ModelToken,
    PathShape,
    Placement,
    Preflight,
    Scenario,
    StoreModel,
    TokenKind,
    is_token_shaped,
)

ALPHANUMERIC = "".join(sorted(LETTERS_AND_DIGITS))
PLACEMENT_ORDER = (Placement.HEADER, Placement.QUERY, Placement.PATH)
AUTH_HEADER_NAMES = ("x-auth-token", "X-Auth-Token", "X-AUTH-TOKEN", "x-Auth-TOKEN")
TOKEN_PARAM_NAMES = ("token", "%74oken", "t%6Fken", "tok%65n")
# Realistic neighbours whose spelling the rewrite must keep byte for byte.
EXTRA_PARAMS = (
    "arg=/ipfs/Qm%2Fx",
    "flag",
    "b=a+b",
    "page=2",
    "q=%E2%9C%93",
    "empty=",
    "arg=QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
)
EXTRA_SEGMENTS = ("v2", "items", "%7Euser", "a.b", "Qm%2Fx")
WRONG_PREFIXES = ("sm_xat_", "sm_pat-", "sk_pat_", "smpat_", "sm__", "pat_", "sm_pat", "tw_pat_")
# Cyrillic ѕ, Cyrillic р and а, fullwidth ｓ, Greek ρ: they look like the real prefix.
LOOKALIKE_PREFIXES = ("ѕm_pat_", "sm_раt_", "ｓm_pat_", "sm_ρat_")
CASE_VARIANT_PREFIXES = ("SM_PAT_", "Sm_pat_", "sm_PAT_", "sM_pAt_", "SM_pat_")
ORIGINS = ("https://app.example", "http://localhost:3000", "null")
CLIENT_IDENTITY_HEADERS = (
    ("X-Tokenward-Token", "mallory"),
    ("x-tokenward-kind", "sat"),
    ("X-TokenWard-Admin", "1"),
)
JSON_RPC_METHODS = ("eth_blockNumber", "eth_chainId", "web3_clientVersion")
MULTIPART_BOUNDARY = "tokenward-boundary-7MA4YWxkTrZu0gW"
MATRIX_METHOD_AND_BASE: Mapping[Layout, tuple[str, tuple[str, ...]]] = {
    Layout.GENERIC: ("GET", ("graphql",)),
    Layout.IPFS: ("POST", ("api", "v0", "version")),
    Layout.AVALANCHE: ("POST", ("ext", "bc", "C", "rpc")),
    Layout.FUJI: ("POST", ("ext", "bc", "C", "rpc")),
}


class TokenState(StrEnum):
    """What a token value is to the store; the states' values never coincide."""

    VALID = "valid"
    SECOND_VALID = "second_valid"
    UNKNOWN = "unknown"
    MALFORMED = "malformed"
    REVOKED = "revoked"
    EXPIRED = "expired"
    OUT_OF_SCOPE = "out_of_scope"


class PathPosition(StrEnum):
    FIRST = "first"
    LAST = "last"
    ENDPOINT = "endpoint"  # avalanche/fuji: right after /ext/bc/C/rpc or /ext/bc/C/ws


class RequestKind(StrEnum):
    GET = "get"
    POST_EMPTY = "post_empty"
    JSON_RPC = "json_rpc"
    IPFS_ADD = "ipfs_add"
    WEBSOCKET = "websocket"
    PREFLIGHT = "preflight"


class Misplacement(StrEnum):
    QUERY_NAME = "query_name"
    QUERY_VALUE = "query_value"
    PATH_POSITION = "path_position"
    LONGER_SEGMENT = "longer_segment"


REQUEST_KINDS: Mapping[Layout, tuple[RequestKind, ...]] = {
    Layout.GENERIC: (
        RequestKind.GET,
        RequestKind.JSON_RPC,
        RequestKind.WEBSOCKET,
        RequestKind.PREFLIGHT,
    ),
    Layout.IPFS: (
        RequestKind.POST_EMPTY,
        RequestKind.IPFS_ADD,
        RequestKind.GET,
        RequestKind.PREFLIGHT,
    ),
    Layout.AVALANCHE: (
        RequestKind.JSON_RPC,
        RequestKind.WEBSOCKET,
        RequestKind.GET,
        RequestKind.PREFLIGHT,
    ),
    Layout.FUJI: (
        RequestKind.JSON_RPC,
        RequestKind.WEBSOCKET,
        RequestKind.GET,
        RequestKind.PREFLIGHT,
    ),
}


def path_positions(layout: Layout) -> tuple[PathPosition, ...]:
    """The path positions a layout allows a token to stand at."""
    if layout is Layout.GENERIC:
        return (PathPosition.FIRST, PathPosition.LAST)
    if layout is Layout.IPFS:
        return (PathPosition.FIRST,)
    return (PathPosition.ENDPOINT,)


def placement_subsets() -> tuple[tuple[Placement, ...], ...]:
    """Every non-empty subset of the placements, each in header, query, path order."""
    return tuple(
        subset
        for size in range(1, len(PLACEMENT_ORDER) + 1)
        for subset in combinations(PLACEMENT_ORDER, size)
    )


@dataclass(frozen=True)
class TokenPlacement:
    """Where a token goes: some placements and, with the path, the position in it."""

    placements: tuple[Placement, ...]
    path_position: PathPosition | None = None

    def __post_init__(self) -> None:
        if self.placements not in placement_subsets():
            raise ValueError(
                f"placements must be a non-empty subset in header, query, path order, "
                f"got {self.placements!r}"
            )
        if (Placement.PATH in self.placements) != (self.path_position is not None):
            raise ValueError(
                f"a path position goes with the path placement and only with it, "
                f"got {self.path_position!r} for {self.placements!r}"
            )

    @property
    def label(self) -> str:
        return "+".join(self.placements)


# --- token values -------------------------------------------------------------------------------


def token_bodies(min_size: int = 16, max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(alphabet=ALPHANUMERIC, min_size=min_size, max_size=max_size)


def token_values(kinds: Sequence[TokenKind] = tuple(TokenKind)) -> st.SearchStrategy[str]:
    """Token-shaped values of the given kinds."""
    return st.builds(lambda kind, body: f"sm_{kind}_{body}", st.sampled_from(kinds), token_bodies())


def _prefixed(
    prefixes: st.SearchStrategy[str], bodies: st.SearchStrategy[str]
) -> st.SearchStrategy[str]:
    return st.builds(lambda prefix, body: prefix + body, prefixes, bodies)


def malformed_tokens() -> st.SearchStrategy[str]:
    """Values that are not token-shaped and hold no token-shaped string either."""
    real_prefixes = st.sampled_from([f"sm_{kind}_" for kind in TokenKind])
    return st.one_of(
        st.just(""),
        _prefixed(real_prefixes, token_bodies(0, 15)),  # too short
        _prefixed(real_prefixes, token_bodies(65, 80)),  # too long
        _prefixed(st.sampled_from(WRONG_PREFIXES), token_bodies()),
        _prefixed(st.sampled_from(LOOKALIKE_PREFIXES), token_bodies()),
        _prefixed(st.sampled_from(CASE_VARIANT_PREFIXES), token_bodies()),
    )


def service_label(service_name: str | None) -> str:
    """How messages name a service; None is the default service (no services registered)."""
    return "the default service" if service_name is None else f"service {service_name!r}"


def classify_tokens(
    store: StoreModel,
    *,
    now: datetime,
    service_name: str | None = None,
) -> dict[TokenState, tuple[str, ...]]:
    """The store's tokens by state for a request to ``service_name`` at ``now``, by name.

    VALID is the first valid token alone, SECOND_VALID the other valid ones, so no two states
    share a value.
    """
    by_state: dict[TokenState, list[str]] = {state: [] for state in TokenState}
    for plaintext, token in sorted(store.tokens.items(), key=lambda item: item[1].name):
        if token.revoked:
            state = TokenState.REVOKED
        elif token.expires_at is not None and now >= token.expires_at:
            state = TokenState.EXPIRED
        elif not token.allows(service_name):
            state = TokenState.OUT_OF_SCOPE
        elif by_state[TokenState.VALID]:
            state = TokenState.SECOND_VALID
        else:
            state = TokenState.VALID
        by_state[state].append(plaintext)
    return {state: tuple(values) for state, values in by_state.items()}


def tokens(
    store: StoreModel,
    state: TokenState,
    *,
    now: datetime,
    service_name: str | None = None,
) -> st.SearchStrategy[str]:
    """Token values in ``state``: the store's own for stored states, made up otherwise."""
    if state is TokenState.MALFORMED:
        return malformed_tokens()
    if state is TokenState.UNKNOWN:
        # A random 16+ character body equals a stored one with negligible odds; the filter
        # only makes the guarantee exact.
        return token_values().filter(lambda value: value not in store.tokens)
    values = classify_tokens(store, now=now, service_name=service_name)[state]
    if not values:
        raise ValueError(f"the store holds no {state} token for {service_label(service_name)}")
    return st.sampled_from(values)


@dataclass(frozen=True)
class StoreTokens:
    """One concrete value per token state (the matrix uses these)."""

    valid: str
    second_valid: str
    unknown: str
    malformed: str
    revoked: str
    expired: str
    out_of_scope: str

    def value(self, state: TokenState) -> str:
        return str(getattr(self, state.value))

    def env_vars(self) -> dict[str, str]:
        """Each value's shell variable for ``curl_command``, e.g. TOKENWARD_VALID_TOKEN."""
        return {self.value(state): TOKEN_ENV_VARS[state] for state in TokenState}


UNKNOWN_TOKEN = "sm_pat_UnknownUnknownUnknownUnknown0000"


def store_tokens_of(
    store: StoreModel,
    *,
    now: datetime,
    service_name: str | None = None,
) -> StoreTokens:
    """The first token of each state from the store; unknown and malformed are made up."""
    by_state = classify_tokens(store, now=now, service_name=service_name)
    for state in TokenState:
        if state not in (TokenState.UNKNOWN, TokenState.MALFORMED) and not by_state[state]:
            raise ValueError(f"the store holds no {state} token for {service_label(service_name)}")
    if UNKNOWN_TOKEN in store.tokens:
        raise ValueError(f"the store holds the made-up unknown token {UNKNOWN_TOKEN!r}")
    valid = by_state[TokenState.VALID][0]
    prefix_length = len("sm_pat_")
    return StoreTokens(
        valid=valid,
        second_valid=by_state[TokenState.SECOND_VALID][0],
        unknown=UNKNOWN_TOKEN,
        malformed=valid[: prefix_length + 15],  # one character short of the shortest body
        revoked=by_state[TokenState.REVOKED][0],
        expired=by_state[TokenState.EXPIRED][0],
        out_of_scope=by_state[TokenState.OUT_OF_SCOPE][0],
    )


def example_store(now: datetime) -> StoreModel:
    """A small fixed store, one token per stored state, for the default service."""
    return StoreModel(
        tokens={
            "sm_pat_Va1idPersonalToken0000000000000000": ModelToken(
                "alice-laptop", TokenKind.PAT, expires_at=now + timedelta(days=30)
            ),
            "sm_aat_SecondValidApplicationToken000000": ModelToken("ci-bot", TokenKind.AAT),
            "sm_sat_RevokedServiceAccountToken0000000": ModelToken(
                "old-deploy", TokenKind.SAT, revoked=True
            ),
            "sm_pat_ExpiredPersonalToken0000000000000": ModelToken(
                "expired-key", TokenKind.PAT, expires_at=now - timedelta(days=1)
            ),
            "sm_pat_OutOfScopePersonalToken0000000000": ModelToken(
                "other-team", TokenKind.PAT, scope=frozenset({"other-service"})
            ),
        },
    )


def _model_tokens(
    name: str, kind: TokenKind, state: TokenState, now: datetime
) -> st.SearchStrategy[ModelToken]:
    lifetimes = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=90))
    future = st.none() | lifetimes.map(lambda lifetime: now + lifetime)
    if state is TokenState.REVOKED:
        return st.builds(ModelToken, st.just(name), st.just(kind), future, st.just(True))
    if state is TokenState.EXPIRED:
        # now itself is already expired (now >= expiry)
        ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=90))
        return st.builds(ModelToken, st.just(name), st.just(kind), ages.map(lambda age: now - age))
    if state is TokenState.OUT_OF_SCOPE:
        scopes = st.sampled_from([frozenset({"other-service"}), frozenset({"a", "b"})])
        return st.builds(ModelToken, st.just(name), st.just(kind), future, st.just(False), scopes)
    # the nameless default service is in the scope of tokens scoped to all services alone
    return st.builds(ModelToken, st.just(name), st.just(kind), future)


@st.composite
def stores(draw: st.DrawFn, now: datetime) -> StoreModel:
    """Stores for the default service with two valid tokens and one of each other state."""
    values = draw(st.lists(token_values(), min_size=5, max_size=8, unique=True))
    stored_states = [s for s in TokenState if s not in (TokenState.UNKNOWN, TokenState.MALFORMED)]
    states = [
        TokenState.VALID,
        TokenState.VALID,
        TokenState.REVOKED,
        TokenState.EXPIRED,
        TokenState.OUT_OF_SCOPE,
        *(draw(st.sampled_from(stored_states)) for _ in values[5:]),
    ]
    return StoreModel(
        tokens={
            value: draw(_model_tokens(f"token-{index}", TokenKind(value[3:6]), state, now))
            for index, (value, state) in enumerate(zip(values, states, strict=True))
        },
    )


# --- wire forms ---------------------------------------------------------------------------------


def percent_encoded(
    value: str, positions: frozenset[int] = frozenset(), *, lower: bool = False
) -> str:
    """The value's UTF-8 bytes; those at ``positions`` and all outside unreserved become %XX."""
    pieces = []
    for index, byte in enumerate(value.encode("utf-8")):
        if chr(byte) in UNRESERVED and index not in positions:
            pieces.append(chr(byte))
        else:
            pieces.append(f"%{byte:02x}" if lower else f"%{byte:02X}")
    return "".join(pieces)


def header_wire(value: str) -> str:
    """The value as a header carries it: its UTF-8 bytes, held as latin-1 text."""
    return value.encode("utf-8").decode("latin-1")


def double_encoded(token: str) -> str:
    """The token with its first character percent-encoded twice (``%2573m_pat_…``)."""
    return f"%25{ord(token[0]):02X}{token[1:]}"


@st.composite
def encoded_forms(draw: st.DrawFn, value: str) -> str:
    """The value percent-encoded for the query or path, some token characters encoded too."""
    size = len(value.encode("utf-8"))
    positions = frozenset[int]()
    if size:
        positions = draw(
            st.just(frozenset[int]()) | st.frozensets(st.integers(0, size - 1), max_size=4)
        )
    return percent_encoded(value, positions, lower=draw(st.booleans()))


def auth_header_fields(value: str) -> st.SearchStrategy[list[tuple[str, str]]]:
    """One to three x-auth-token fields in varied name case, each holding the value 1-2 times."""
    wire = header_wire(value)
    fields = st.tuples(
        st.sampled_from(AUTH_HEADER_NAMES), st.integers(1, 2), st.sampled_from((",", ", ", " , "))
    )
    return st.lists(fields, min_size=1, max_size=3).map(
        lambda drawn: [(name, separator.join([wire] * copies)) for name, copies, separator in drawn]
    )


def token_params(value: str) -> st.SearchStrategy[list[str]]:
    """One or two token parameters, the name spelled plainly or percent-encoded."""
    param = st.builds(
        lambda name, encoded: f"{name}={encoded}",
        st.sampled_from(TOKEN_PARAM_NAMES),
        encoded_forms(value),
    )
    return st.lists(param, min_size=1, max_size=2)


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    """A request under construction, its target still in pieces."""

    method: str
    segments: tuple[str, ...]
    params: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    websocket: bool = False
    trailing_slash: bool = False

    def request(self) -> HarnessRequest:
        path = PathShape(self.segments, self.trailing_slash).render()
        target = f"{path}?{'&'.join(self.params)}" if self.params else path
        return HarnessRequest(self.method, target, self.headers, self.body, self.websocket)


def _inserted[T](draw: st.DrawFn, items: tuple[T, ...], new: Sequence[T]) -> tuple[T, ...]:
    """``items`` with each of ``new`` inserted at a drawn index."""
    out = list(items)
    for item in new:
        out.insert(draw(st.integers(0, len(out))), item)
    return tuple(out)


def _at_position(
    segments: tuple[str, ...], position: PathPosition, segment: str
) -> tuple[str, ...]:
    return (segment, *segments) if position is PathPosition.FIRST else (*segments, segment)


def _base_segments(
    layout: Layout, kind: RequestKind, needs_endpoint: bool
) -> st.SearchStrategy[tuple[str, ...]]:
    if layout is Layout.GENERIC:
        if kind is RequestKind.WEBSOCKET:
            return st.sampled_from([("graphql",), ("ws",)])
        return st.sampled_from([("graphql",), (), ("v1", "graphql"), ("api", "items")])
    if layout is Layout.IPFS:
        if kind is RequestKind.IPFS_ADD:
            return st.just(("api", "v0", "add"))
        return st.sampled_from(
            [("api", "v0", "version"), ("api", "v0", "id"), ("api", "v0", "cat")]
        )
    if kind is RequestKind.WEBSOCKET:
        return st.just(("ext", "bc", "C", "ws"))
    if kind is RequestKind.GET and not needs_endpoint:
        return st.sampled_from([("ext", "bc", "C", "rpc"), ("ext", "health"), ("ext", "info")])
    return st.just(("ext", "bc", "C", "rpc"))


@st.composite
def _kind_parts(
    draw: st.DrawFn, kind: RequestKind
) -> tuple[str, tuple[tuple[str, str], ...], bytes]:
    """Method, headers and body of a request kind."""
    headers: tuple[tuple[str, str], ...]
    if kind is RequestKind.JSON_RPC:
        call = {
            "jsonrpc": "2.0",
            "id": draw(st.integers(1, 2**31)),
            "method": draw(st.sampled_from(JSON_RPC_METHODS)),
            "params": [],
        }
        headers = (("Content-Type", "application/json"), ("Accept", "application/json"))
        return "POST", headers, json.dumps(call).encode()
    if kind is RequestKind.IPFS_ADD:
        content = draw(st.binary(max_size=64))
        body = (
            (
                f"--{MULTIPART_BOUNDARY}\r\n"
                'Content-Disposition: form-data; name="file"; filename="hello.txt"\r\n'
                "Content-Type: application/octet-stream\r\n\r\n"
            ).encode()
            + content
            + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()
        )
        content_type = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
        return "POST", (("Content-Type", content_type),), body
    if kind is RequestKind.WEBSOCKET:
        key = base64.b64encode(draw(st.binary(min_size=16, max_size=16))).decode()
        headers = (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        )
        return "GET", headers, b""
    if kind is RequestKind.PREFLIGHT:
        headers = (
            ("Origin", draw(st.sampled_from(ORIGINS))),
            ("Access-Control-Request-Method", draw(st.sampled_from(("POST", "GET")))),
            ("Access-Control-Request-Headers", "x-auth-token, content-type"),
        )
        return "OPTIONS", headers, b""
    method = "POST" if kind is RequestKind.POST_EMPTY else "GET"
    return method, (("Accept", "*/*"),), b""


@st.composite
def _drafts(draw: st.DrawFn, layout: Layout, kind: RequestKind, needs_endpoint: bool) -> _Draft:
    segments = draw(_base_segments(layout, kind, needs_endpoint))
    if layout is Layout.GENERIC:
        segments = (*segments, *draw(st.lists(st.sampled_from(EXTRA_SEGMENTS), max_size=2)))
    method, headers, body = draw(_kind_parts(kind))
    if kind is not RequestKind.PREFLIGHT:
        origin = draw(st.none() | st.sampled_from(ORIGINS))
        headers = headers if origin is None else (*headers, ("Origin", origin))
    identity = draw(st.lists(st.sampled_from(CLIENT_IDENTITY_HEADERS), max_size=2, unique=True))
    return _Draft(
        method=method,
        segments=segments,
        params=tuple(draw(st.lists(st.sampled_from(EXTRA_PARAMS), max_size=3))),
        headers=_inserted(draw, headers, identity),
        body=body,
        websocket=kind is RequestKind.WEBSOCKET,
        trailing_slash=draw(st.booleans()),
    )


def _disallowed_path(segments: tuple[str, ...], token: str, layout: Layout) -> tuple[str, ...]:
    """The token as a whole segment where the layout does not allow it, whatever comes later."""
    if layout is Layout.GENERIC:
        # a segment on each side keeps it off the first and last positions
        return (*(segments or ("api",)), token, "data")
    if layout is Layout.IPFS:
        return (*segments, token)  # ipfs bases are never empty: the token is not first
    return (*segments, token, "extra")  # avalanche/fuji: no longer ends the path


@st.composite
def _misplaced(draw: st.DrawFn, draft: _Draft, token: str, layout: Layout) -> _Draft:
    how = draw(st.sampled_from(Misplacement))
    if how is Misplacement.QUERY_NAME:
        names = (f"{token}=1", token, f"filter[{token}]=1", f"{double_encoded(token)}=x")
        return replace(draft, params=_inserted(draw, draft.params, [draw(st.sampled_from(names))]))
    if how is Misplacement.QUERY_VALUE:
        values = (
            f"key={token}",
            f"arg=/ipfs/{token}",
            f"auth=Bearer%20{token}",
            f"next=%2Fp%3Ftoken%3D{token}",
            f"x={double_encoded(token)}",
        )
        return replace(draft, params=_inserted(draw, draft.params, [draw(st.sampled_from(values))]))
    if how is Misplacement.LONGER_SEGMENT:
        longer = (f"x.{token}.json", f"a%2F{token}", f"{token}-old", double_encoded(token))
        return replace(draft, segments=(*draft.segments, draw(st.sampled_from(longer))))
    return replace(draft, segments=_disallowed_path(draft.segments, token, layout))


@st.composite
def _placed(draw: st.DrawFn, draft: _Draft, value: str, placement: TokenPlacement) -> _Draft:
    if Placement.HEADER in placement.placements:
        fields = draw(auth_header_fields(value))
        draft = replace(draft, headers=_inserted(draw, draft.headers, fields))
    if Placement.QUERY in placement.placements:
        draft = replace(draft, params=_inserted(draw, draft.params, draw(token_params(value))))
    if placement.path_position is not None:
        # Encoding a character inside a longer run would leave "sm_pat_" + 16+ characters
        # before a "%": a misplaced token, not a malformed one. Only a token-shaped value,
        # which becomes a path placement, gets optional encodings in the path.
        segment = draw(encoded_forms(value)) if is_token_shaped(value) else percent_encoded(value)
        draft = replace(
            draft, segments=_at_position(draft.segments, placement.path_position, segment)
        )
    return draft


@st.composite
def token_placements(draw: st.DrawFn, layout: Layout) -> TokenPlacement:
    """A non-empty set of placements; with the path, one of the layout's allowed positions."""
    placements = draw(st.sampled_from(placement_subsets()))
    if Placement.PATH not in placements:
        return TokenPlacement(placements)
    return TokenPlacement(placements, draw(st.sampled_from(path_positions(layout))))


def requests_for(
    layout: Layout,
    token: str | None = None,
    placement: TokenPlacement | None = None,
    *,
    conflicting: str | None = None,
    misplaced: str | None = None,
    kinds: Sequence[RequestKind] | None = None,
) -> st.SearchStrategy[HarnessRequest]:
    """Requests of one of ``kinds`` (default: the layout's) with ``token`` at ``placement``.

    ``conflicting`` is a second, different value in another x-auth-token field (in another
    token parameter when the query is the only placement). ``misplaced`` is a token-shaped
    value put outside every placement: in another query parameter's name or value, at a path
    position the layout does not allow, or inside a longer or encoded segment. On avalanche and
    fuji any extra segment moves the endpoint, so a path token there is misplaced too.
    """
    if (token is None) != (placement is None):
        raise ValueError(f"token and placement go together, got placement={placement!r}")
    if placement is not None and placement.path_position not in (None, *path_positions(layout)):
        raise ValueError(f"{layout} allows no token at {placement.path_position!r}")
    if conflicting is not None and conflicting == token:
        raise ValueError("conflicting must differ from token")
    if misplaced is not None and not is_token_shaped(misplaced):
        raise ValueError(f"misplaced must be token-shaped, got {misplaced!r}")
    return _requests(
        layout, token, placement, conflicting, misplaced, kinds or REQUEST_KINDS[layout]
    )


@st.composite
def _requests(
    draw: st.DrawFn,
    layout: Layout,
    token: str | None,
    placement: TokenPlacement | None,
    conflicting: str | None,
    misplaced: str | None,
    kinds: Sequence[RequestKind],
) -> HarnessRequest:
    kind = draw(st.sampled_from(kinds))
    needs_endpoint = placement is not None and placement.path_position is not None
    draft = draw(_drafts(layout, kind, needs_endpoint))
    if misplaced is not None:
        draft = draw(_misplaced(draft, misplaced, layout))
    if token is not None and placement is not None:
        draft = draw(_placed(draft, token, placement))
    if conflicting is not None:
        if placement is not None and placement.placements == (Placement.QUERY,):
            draft = replace(draft, params=(*draft.params, f"token={percent_encoded(conflicting)}"))
        else:
            field = ("x-auth-token", header_wire(conflicting))
            draft = replace(draft, headers=(*draft.headers, field))
    return draft.request()


def _rarely() -> st.SearchStrategy[bool]:
    """True one time in five; shrinks to False."""
    return st.integers(0, 4).map(lambda n: n == 4)


@st.composite
def scenario_requests(
    draw: st.DrawFn,
    store: StoreModel,
    layout: Layout,
    *,
    now: datetime,
    service_name: str | None = None,
) -> HarnessRequest:
    """A full request: a token in some state (or none) at some placements, sometimes with a
    conflicting second value or a misplaced token."""
    by_state = classify_tokens(store, now=now, service_name=service_name)
    made_up = (TokenState.UNKNOWN, TokenState.MALFORMED)
    states = [state for state in TokenState if state in made_up or by_state[state]]
    state = draw(st.sampled_from([None, *states]))
    token = placement = None
    if state is not None:
        token = draw(tokens(store, state, now=now, service_name=service_name))
        placement = draw(token_placements(layout))
    conflicting = None
    if draw(_rarely()):
        # states never share a value, so another state's value always differs
        other = draw(st.sampled_from([s for s in states if s is not state]))
        conflicting = draw(tokens(store, other, now=now, service_name=service_name))
    misplaced = draw(token_values()) if draw(_rarely()) else None
    return draw(
        requests_for(layout, token, placement, conflicting=conflicting, misplaced=misplaced)
    )


def scenarios(
    now: datetime, layouts: Sequence[Layout] = tuple(Layout)
) -> st.SearchStrategy[Scenario]:
    """Every combination of the proxy's options, for the default service."""
    return st.builds(
        Scenario,
        now=st.just(now),
        layout=st.sampled_from(layouts),
        forward=st.sampled_from(Forward),
        mode=st.sampled_from(Mode),
        preflight=st.sampled_from(Preflight),
    )


# --- the exhaustive matrix ----------------------------------------------------------------------


@dataclass(frozen=True)
class MatrixCase:
    placements: tuple[Placement, ...]
    layout: Layout
    state: TokenState | None
    path_position: PathPosition | None
    request: HarnessRequest

    @property
    def id(self) -> str:
        """E.g. ``header+path@generic/last:expired`` or ``none@ipfs:no_token``."""
        where = "+".join(self.placements) or "none"
        layout = str(self.layout)
        if self.path_position is not None:
            layout = f"{layout}/{self.path_position}"
        return f"{where}@{layout}:{self.state or 'no_token'}"


def _matrix_request(
    layout: Layout,
    placements: tuple[Placement, ...],
    position: PathPosition | None,
    value: str | None,
) -> HarnessRequest:
    method, segments = MATRIX_METHOD_AND_BASE[layout]
    headers: tuple[tuple[str, str], ...] = (("accept", "application/json"),)
    body = b""
    if layout in (Layout.AVALANCHE, Layout.FUJI):
        headers = (*headers, ("content-type", "application/json"))
        body = b'{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}'
    params: tuple[str, ...] = ()
    if value is not None:
        if Placement.HEADER in placements:
            headers = (*headers, ("x-auth-token", header_wire(value)))
        if Placement.QUERY in placements:
            params = (f"token={percent_encoded(value)}",)
        if position is not None:
            segments = _at_position(segments, position, percent_encoded(value))
    return _Draft(method, segments, params, headers, body).request()


def exhaustive_matrix(
    store_tokens: StoreTokens, layouts: Sequence[Layout] = tuple(Layout)
) -> list[MatrixCase]:
    """Every placement subset x layout x allowed path position x token state, and no token.

    Per layout: one case with no token, then each non-empty placement subset (each path
    position the layout allows, for subsets with the path) times each token state.
    """
    cases: list[MatrixCase] = []
    for layout in layouts:
        cases.append(MatrixCase((), layout, None, None, _matrix_request(layout, (), None, None)))
        for placements in placement_subsets():
            positions = path_positions(layout) if Placement.PATH in placements else (None,)
            for position in positions:
                for state in TokenState:
                    request = _matrix_request(
                        layout, placements, position, store_tokens.value(state)
                    )
                    cases.append(MatrixCase(placements, layout, state, position, request))
    return cases

"""Hypothesis strategies for the harness, and the exhaustive placement matrix.

Everything is built by construction: a strategy draws the parts of what it claims and assembles
them, it does not generate broadly and filter. Requests carry no ``Host`` or ``Content-Length``
header (the transport adds them). Values in headers travel as their UTF-8 bytes; in the query
and the path, bytes outside the unreserved set are percent-encoded.

A value that is not token-shaped is, in the path, an ordinary segment (the contract says so),
so placing such a value "in the path" puts a segment there but gives the request no path
placement; there it is only encoded where it must be, so it never turns into a misplaced token.

Drawing must be cheap: the harness checks a thousand requests a second in process. Hypothesis
validates each strategy object the first time it is drawn from and every draw has a cost of its
own, so strategies are built once (module constants, cached factories, or once per
``scenario_requests`` call) and a scenario request is a single draw of bytes, each byte a small
choice (``_Picks``) that plain Python applies: a name, a count, an encoded run, an index. The
first alternative of each choice is the simplest, so shrinking still ends at the plainest
request.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from itertools import combinations, count
from math import lcm

from hypothesis import strategies as st

from tokenward.harness.oracle import (
    KIND_PREFIXES,
    LETTERS_AND_DIGITS,
    TOKEN_BODY_MAX,
    TOKEN_BODY_MIN,
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

Headers = tuple[tuple[str, str], ...]

ALPHANUMERIC = "".join(sorted(LETTERS_AND_DIGITS))
BODY_SIZES = range(TOKEN_BODY_MIN, TOKEN_BODY_MAX + 1)
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
    # names that sort right around `token`: ordinary parameters, forwarded as they came
    "tokem=1",
    "tokens=2",
    "tokeo=",
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
# Names that sort right around `x-auth-token`: no placements, forwarded as they came.
NEIGHBOUR_HEADERS = (("x-auth-tokem", "a"), ("X-Auth-Tokens", "b"), ("x-auth-tokeo", "c"))
EXTRA_HEADERS = (*CLIENT_IDENTITY_HEADERS, *NEIGHBOUR_HEADERS)
JSON_RPC_METHODS = ("eth_blockNumber", "eth_chainId", "web3_clientVersion")
MULTIPART_BOUNDARY = "tokenward-boundary-7MA4YWxkTrZu0gW"
MATRIX_METHOD_AND_BASE: Mapping[Layout, tuple[str, tuple[str, ...]]] = {
    Layout.GENERIC: ("GET", ("graphql",)),
    Layout.IPFS: ("POST", ("api", "v0", "version")),
    Layout.AVALANCHE: ("POST", ("ext", "bc", "C", "rpc")),
    Layout.FUJI: ("POST", ("ext", "bc", "C", "rpc")),
}
JSON_RPC_IDS = (1, 7, 2**31)
# Uploaded files: empty, text, the low bytes, and bytes that look like multipart framing.
FILE_CONTENTS = (b"", b"hello, ipfs\n", bytes(range(64)), b"\r\n--\r\n\xff\x00")
# Sec-WebSocket-Key nonces: RFC 6455's example and the extremes of 16 bytes.
WEBSOCKET_KEYS = tuple(
    base64.b64encode(nonce).decode() for nonce in (b"the sample nonce", bytes(16), b"\xff" * 16)
)
AUTH_FIELD_SEPARATORS = (",", ", ", " , ")
# How many x-auth-token fields and token parameters a placement puts in.
AUTH_FIELD_COUNTS = (1, 2, 3)
TOKEN_PARAM_COUNTS = (1, 2)


def _balanced[T](groups: Sequence[Sequence[T]]) -> tuple[T, ...]:
    """The groups' alternatives in order, each repeated so that every group fills as many
    entries: an entry picked uniformly comes from each group equally often."""
    entries = lcm(*(len(group) for group in groups))
    return tuple(
        alternative
        for group in groups
        for alternative in group
        for _ in range(entries // len(group))
    )


class _Picks:
    """Small choices, read in turn from bytes that hypothesis drew at once.

    Hypothesis draws the bytes uniformly and shrinks each towards 0 on its own, as it does
    separate draws, but one draw of a few dozen bytes costs about as much as one of a single
    choice. A byte picks one of the alternatives, each alike (of more than 256, only some are
    ever picked), and 0 picks the first. Readers read a fixed number of bytes whatever they
    pick, so a choice that shrinks never changes what a later byte means.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._read = 0

    def pick[T](self, alternatives: Sequence[T]) -> T:
        byte = self._data[self._read]
        self._read += 1
        return alternatives[byte * len(alternatives) // 256]

    def some[T](self, alternatives: Sequence[T], counts: Sequence[int]) -> tuple[T, ...]:
        """One of ``counts`` many alternatives; the bytes for the largest count are read
        whatever the count."""
        count = self.pick(counts)
        return tuple(self.pick(alternatives) for _ in range(max(counts)))[:count]

    def slots(self, existing: int, new: int) -> tuple[int, ...]:
        """Where ``new`` items go among ``existing`` ones: their indexes in the result;
        appended when shrunk."""
        return self.pick(_slot_choices(existing, new))

    def region(self, size: int) -> _Picks:
        """The next ``size`` bytes as picks of their own, read or not."""
        self._read += size
        return _Picks(self._data[self._read - size : self._read])


# One draw holds every pick of a scenario request: the scenario's and the request's (each
# reader says how many bytes it reads). Every strategy here draws as many: hypothesis's generator
# sometimes copies one draw of bytes over another, which is only valid if both are as long.
_SCENARIO_PICKS = 15
_REQUEST_PICKS = 33
_PICK_BYTES = st.binary(
    min_size=_SCENARIO_PICKS + _REQUEST_PICKS, max_size=_SCENARIO_PICKS + _REQUEST_PICKS
)


def _picked[T](read: Callable[[_Picks], T]) -> st.SearchStrategy[T]:
    """What ``read`` makes of one draw of picks."""
    return _PICK_BYTES.map(lambda data: read(_Picks(data)))


@cache
def _slot_choices(existing: int, new: int) -> tuple[tuple[int, ...], ...]:
    """Every way to put ``new`` items among ``existing`` ones, as the indexes the new items take
    in the result; appending them comes first."""
    return tuple(reversed(list(combinations(range(existing + new), new))))


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

# Bodies are runs of ALPHANUMERIC from a picked first character: a reader cares for a body's
# length, not for which letters and digits it holds, and drawing text costs as much as a dozen
# small choices.
_ALPHANUMERIC_RUNS = ALPHANUMERIC * 3
_BODY_FIRSTS = range(len(ALPHANUMERIC))
# Shapes of malformed values, each alike: prefixes and body sizes ("" is a shape of its own).
MALFORMED_SHAPES: tuple[tuple[tuple[str, ...], range], ...] = (
    (("",), range(1)),
    (KIND_PREFIXES, range(TOKEN_BODY_MIN)),  # too short
    (KIND_PREFIXES, range(TOKEN_BODY_MAX + 1, 81)),  # too long
    (WRONG_PREFIXES, BODY_SIZES),
    (LOOKALIKE_PREFIXES, BODY_SIZES),
    (CASE_VARIANT_PREFIXES, BODY_SIZES),
)


def _picked_value(picks: _Picks, prefixes: Sequence[str], sizes: range) -> str:
    """One of the prefixes, then a body of one of the sizes (three picks)."""
    prefix = picks.pick(prefixes)
    size = picks.pick(sizes)
    first = picks.pick(_BODY_FIRSTS)
    return prefix + _ALPHANUMERIC_RUNS[first : first + size]


def token_values(kinds: Sequence[TokenKind] = tuple(TokenKind)) -> st.SearchStrategy[str]:
    """Token-shaped values of the given kinds."""
    return _token_values(tuple(f"sm_{kind}_" for kind in kinds))


@cache
def _token_values(prefixes: tuple[str, ...]) -> st.SearchStrategy[str]:
    return _picked(lambda picks: _picked_value(picks, prefixes, BODY_SIZES))


def _picked_malformed(picks: _Picks) -> str:
    """A value of a malformed shape (four picks)."""
    prefixes, sizes = picks.pick(MALFORMED_SHAPES)
    return _picked_value(picks, prefixes, sizes)


@cache
def malformed_tokens() -> st.SearchStrategy[str]:
    """Values that are not token-shaped and hold no token-shaped string either."""
    return _picked(_picked_malformed)


def _unknown_values(store: StoreModel) -> Callable[[_Picks], str]:
    """Picks token-shaped values the store does not hold (three picks). Each has a marker right
    after its prefix that no stored value contains anywhere, so none can equal a stored one."""
    marker = next(
        marker
        for marker in (f"Unknown{number}" for number in count())
        if not any(marker in value for value in store.tokens)
    )
    prefixes = tuple(prefix + marker for prefix in KIND_PREFIXES)
    sizes = range(TOKEN_BODY_MIN - len(marker), TOKEN_BODY_MAX - len(marker) + 1)
    return lambda picks: _picked_value(picks, prefixes, sizes)


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


# Reads a token value from at most _VALUE_PICKS picks.
_ValuePicker = Callable[[_Picks], str]
_VALUE_PICKS = 4


def _token_pools(
    store: StoreModel, *, now: datetime, service_name: str | None
) -> dict[TokenState, _ValuePicker]:
    """A value picker for each state the store can supply, in state order: the store's own
    values for stored states, made-up ones for unknown and malformed."""
    by_state = classify_tokens(store, now=now, service_name=service_name)
    pools: dict[TokenState, _ValuePicker] = {}
    for state, values in by_state.items():
        if state is TokenState.MALFORMED:
            pools[state] = _picked_malformed
        elif state is TokenState.UNKNOWN:
            pools[state] = _unknown_values(store)
        elif values:
            pools[state] = _stored_values(values)
    return pools


def _stored_values(values: tuple[str, ...]) -> _ValuePicker:
    return lambda picks: picks.pick(values)


def tokens(
    store: StoreModel,
    state: TokenState,
    *,
    now: datetime,
    service_name: str | None = None,
) -> st.SearchStrategy[str]:
    """Token values in ``state``: the store's own for stored states, made up otherwise."""
    pools = _token_pools(store, now=now, service_name=service_name)
    if state not in pools:
        raise ValueError(f"the store holds no {state} token for {service_label(service_name)}")
    return _picked(pools[state])


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


_LIFETIMES = st.none() | st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=90))
_AGES = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=90))
_FOREIGN_SCOPES = st.sampled_from([frozenset({"other-service"}), frozenset({"a", "b"})])
_STORE_VALUES = st.lists(token_values(), min_size=5, max_size=8, unique=True)
_STORED_STATES = st.sampled_from(
    [state for state in TokenState if state not in (TokenState.UNKNOWN, TokenState.MALFORMED)]
)


def _model_token(
    draw: st.DrawFn, name: str, kind: TokenKind, state: TokenState, now: datetime
) -> ModelToken:
    if state is TokenState.EXPIRED:
        # now itself is already expired (now >= expiry)
        return ModelToken(name, kind, now - draw(_AGES))
    lifetime = draw(_LIFETIMES)
    expires_at = None if lifetime is None else now + lifetime
    if state is TokenState.REVOKED:
        return ModelToken(name, kind, expires_at, revoked=True)
    if state is TokenState.OUT_OF_SCOPE:
        return ModelToken(name, kind, expires_at, scope=draw(_FOREIGN_SCOPES))
    # the nameless default service is in the scope of tokens scoped to all services alone
    return ModelToken(name, kind, expires_at)


@st.composite
def stores(draw: st.DrawFn, now: datetime) -> StoreModel:
    """Stores for the default service with two valid tokens and one of each other state."""
    values = draw(_STORE_VALUES)
    states = [
        TokenState.VALID,
        TokenState.VALID,
        TokenState.REVOKED,
        TokenState.EXPIRED,
        TokenState.OUT_OF_SCOPE,
        *(draw(_STORED_STATES) for _ in values[5:]),
    ]
    return StoreModel(
        tokens={
            value: _model_token(draw, f"token-{index}", TokenKind(value[3:6]), state, now)
            for index, (value, state) in enumerate(zip(values, states, strict=True))
        },
    )


# --- wire forms ---------------------------------------------------------------------------------


_UNRESERVED_BYTES = frozenset(ord(character) for character in UNRESERVED)
_UNRESERVED_TEXT = re.compile(f"[{re.escape(''.join(sorted(UNRESERVED)))}]*")
_UPPER_ESCAPES = tuple(f"%{byte:02X}" for byte in range(256))
_LOWER_ESCAPES = tuple(f"%{byte:02x}" for byte in range(256))


def percent_encoded(
    value: str, positions: frozenset[int] = frozenset(), *, lower: bool = False
) -> str:
    """The value's UTF-8 bytes; those at ``positions`` and all outside unreserved become %XX."""
    if not positions and _UNRESERVED_TEXT.fullmatch(value):
        return value  # nothing to encode: a token's usual case
    escapes = _LOWER_ESCAPES if lower else _UPPER_ESCAPES
    return "".join(
        [
            chr(byte) if byte in _UNRESERVED_BYTES and index not in positions else escapes[byte]
            for index, byte in enumerate(value.encode("utf-8"))
        ]
    )


def header_wire(value: str) -> str:
    """The value as a header carries it: its UTF-8 bytes, held as latin-1 text."""
    return value.encode("utf-8").decode("latin-1")


def double_encoded(token: str) -> str:
    """The token with its first character percent-encoded twice (``%2573m_pat_…``)."""
    return f"%25{ord(token[0]):02X}{token[1:]}"


# Beyond the bytes that must be encoded: nothing as often as a run of one to four bytes, in
# upper- or lower-case hex. A run asks no more of a reader than scattered bytes: each %XX
# decodes alone.
_RUNS: tuple[tuple[int, bool], ...] = _balanced(
    [
        [(0, False), (0, True)],
        [(length, lower) for length in range(1, 5) for lower in (False, True)],
    ]
)
# Where a run starts: anywhere in the longest token (wrapping around in shorter values).
_RUN_STARTS = range(len("sm_pat_") + TOKEN_BODY_MAX)


def _encoded(picks: _Picks, value: str) -> str:
    """The value percent-encoded for the query or the path, sometimes a run of its bytes too
    (two picks)."""
    length, lower = picks.pick(_RUNS)
    start = picks.pick(_RUN_STARTS)
    size = len(value.encode("utf-8"))
    run = frozenset((start + offset) % size for offset in range(length)) if size else frozenset()
    return percent_encoded(value, run, lower=lower)


# --- requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Draft:
    """A request under construction, its target still in pieces."""

    method: str
    segments: tuple[str, ...]
    params: tuple[str, ...] = ()
    headers: Headers = ()
    body: bytes = b""
    websocket: bool = False
    trailing_slash: bool = False

    def request(self) -> HarnessRequest:
        path = PathShape(self.segments, self.trailing_slash).render()
        target = f"{path}?{'&'.join(self.params)}" if self.params else path
        return HarnessRequest(self.method, target, self.headers, self.body, self.websocket)


def _interleaved[T](
    items: tuple[T, ...], new: Sequence[T], slots: tuple[int, ...]
) -> tuple[T, ...]:
    """``items`` with ``new`` at the indexes ``slots`` of the result, both in their order."""
    kept = iter(items)
    added = iter(new)
    return tuple(
        next(added) if index in slots else next(kept) for index in range(len(items) + len(new))
    )


@dataclass(frozen=True)
class _KindForm:
    """What a request's kind fixes: the method, the headers (an Origin among them or not), the
    body."""

    kind: RequestKind
    method: str
    headers: Headers
    body: bytes = b""


def _multipart(content: bytes) -> bytes:
    return (
        (
            f"--{MULTIPART_BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="file"; filename="hello.txt"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{MULTIPART_BOUNDARY}--\r\n".encode()
    )


@cache
def _kind_forms(kind: RequestKind) -> tuple[_KindForm, ...]:
    """Every form of a request kind, the plainest first; one without an Origin as often as one
    with (a preflight always has one)."""
    if kind is RequestKind.PREFLIGHT:
        return tuple(
            _KindForm(
                kind,
                "OPTIONS",
                (
                    ("Origin", origin),
                    ("Access-Control-Request-Method", method),
                    ("Access-Control-Request-Headers", "x-auth-token, content-type"),
                ),
            )
            for origin in ORIGINS
            for method in ("POST", "GET")
        )
    parts: list[tuple[Headers, bytes]]
    if kind is RequestKind.JSON_RPC:
        method = "POST"
        json_headers = (("Content-Type", "application/json"), ("Accept", "application/json"))
        parts = [
            (
                json_headers,
                json.dumps(
                    {"jsonrpc": "2.0", "id": call_id, "method": name, "params": []}
                ).encode(),
            )
            for name in JSON_RPC_METHODS
            for call_id in JSON_RPC_IDS
        ]
    elif kind is RequestKind.IPFS_ADD:
        method = "POST"
        content_type = f"multipart/form-data; boundary={MULTIPART_BOUNDARY}"
        parts = [((("Content-Type", content_type),), _multipart(file)) for file in FILE_CONTENTS]
    elif kind is RequestKind.WEBSOCKET:
        method = "GET"
        parts = [
            (
                (
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Key", key),
                    ("Sec-WebSocket-Version", "13"),
                ),
                b"",
            )
            for key in WEBSOCKET_KEYS
        ]
    else:
        method = "POST" if kind is RequestKind.POST_EMPTY else "GET"
        parts = [((("Accept", "*/*"),), b"")]
    return _balanced(
        [
            [_KindForm(kind, method, headers, body) for headers, body in parts],
            [
                _KindForm(kind, method, (*headers, ("Origin", origin)), body)
                for origin in ORIGINS
                for headers, body in parts
            ],
        ]
    )


def _at_position(
    segments: tuple[str, ...], position: PathPosition, segment: str
) -> tuple[str, ...]:
    return (segment, *segments) if position is PathPosition.FIRST else (*segments, segment)


def _base_segments(
    layout: Layout, kind: RequestKind, needs_endpoint: bool
) -> tuple[tuple[str, ...], ...]:
    if layout is Layout.GENERIC:
        if kind is RequestKind.WEBSOCKET:
            return (("graphql",), ("ws",))
        return (("graphql",), (), ("v1", "graphql"), ("api", "items"))
    if layout is Layout.IPFS:
        if kind is RequestKind.IPFS_ADD:
            return (("api", "v0", "add"),)
        return (("api", "v0", "version"), ("api", "v0", "id"), ("api", "v0", "cat"))
    if kind is RequestKind.WEBSOCKET:
        return (("ext", "bc", "C", "ws"),)
    if kind is RequestKind.GET and not needs_endpoint:
        return (("ext", "bc", "C", "rpc"), ("ext", "health"), ("ext", "info"))
    return (("ext", "bc", "C", "rpc"),)


def _disallowed_path(segments: tuple[str, ...], token: str, layout: Layout) -> tuple[str, ...]:
    """The token as a whole segment where the layout does not allow it, whatever comes later."""
    if layout is Layout.GENERIC:
        # a segment on each side keeps it off the first and last positions
        return (*(segments or ("api",)), token, "data")
    if layout is Layout.IPFS:
        return (*segments, token)  # ipfs bases are never empty: the token is not first
    return (*segments, token, "extra")  # avalanche/fuji: no longer ends the path


# Where a misplaced token goes, as templates of its text; {double} is it double-encoded.
MISPLACED_FORMS: Mapping[Misplacement, tuple[str, ...]] = {
    Misplacement.QUERY_NAME: ("{token}=1", "{token}", "filter[{token}]=1", "{double}=x"),
    Misplacement.QUERY_VALUE: (
        "key={token}",
        "arg=/ipfs/{token}",
        "auth=Bearer%20{token}",
        "next=%2Fp%3Ftoken%3D{token}",
        "x={double}",
    ),
    Misplacement.PATH_POSITION: ("{token}",),
    Misplacement.LONGER_SEGMENT: ("x.{token}.json", "a%2F{token}", "{token}-old", "{double}"),
}
_MISPLACEMENTS = tuple(MISPLACED_FORMS.items())


def _misplaced(picks: _Picks, draft: _Draft, token: str, layout: Layout) -> _Draft:
    """The token where no placement is (three picks: where, in which form, the index of the
    parameter holding it)."""
    how, forms = picks.pick(_MISPLACEMENTS)
    text = picks.pick(forms).format(token=token, double=double_encoded(token))
    slots = picks.slots(len(draft.params), 1)
    if how is Misplacement.PATH_POSITION:
        return replace(draft, segments=_disallowed_path(draft.segments, text, layout))
    if how is Misplacement.LONGER_SEGMENT:
        return replace(draft, segments=(*draft.segments, text))
    return replace(draft, params=_interleaved(draft.params, (text,), slots))


# An x-auth-token field: its name, how many copies of the value it holds, what separates them.
# One copy as often as two; the names vary in case.
_AUTH_FIELDS: tuple[tuple[str, int, str], ...] = _balanced(
    [
        [(name, 1, "") for name in AUTH_HEADER_NAMES],
        [(name, 2, separator) for name in AUTH_HEADER_NAMES for separator in AUTH_FIELD_SEPARATORS],
    ]
)


def _placed(picks: _Picks, draft: _Draft, value: str, placement: TokenPlacement) -> _Draft:
    """The value at the placements: one to three x-auth-token fields, each holding it once or
    twice; one or two token parameters; a path segment. Reads 15 picks: how many fields, three
    fields, their indexes; how many parameters, two names and encodings, their indexes; the
    path segment's encoding."""
    header, query, path = picks.region(5), picks.region(8), picks.region(2)
    headers, params, segments = draft.headers, draft.params, draft.segments
    if Placement.HEADER in placement.placements:
        wire = header_wire(value)
        fields = [
            (name, separator.join([wire] * copies))
            for name, copies, separator in header.some(_AUTH_FIELDS, AUTH_FIELD_COUNTS)
        ]
        headers = _interleaved(headers, fields, header.slots(len(headers), len(fields)))
    if Placement.QUERY in placement.placements:
        wanted = query.pick(TOKEN_PARAM_COUNTS)
        forms = [
            (query.pick(TOKEN_PARAM_NAMES), query.region(2)) for _ in range(max(TOKEN_PARAM_COUNTS))
        ]
        ours = [f"{name}={_encoded(encoding, value)}" for name, encoding in forms[:wanted]]
        params = _interleaved(params, ours, query.slots(len(params), len(ours)))
    if placement.path_position is not None:
        # Encoding a character inside a longer run would leave "sm_pat_" + 16+ characters
        # before a "%": a misplaced token, not a malformed one. Only a token-shaped value,
        # which becomes a path placement, gets optional encodings in the path.
        segment = _encoded(path, value) if is_token_shaped(value) else percent_encoded(value)
        segments = _at_position(segments, placement.path_position, segment)
    return replace(draft, headers=headers, params=params, segments=segments)


def _placement_alternatives(layout: Layout) -> tuple[TokenPlacement, ...]:
    """Every placement the layout allows, each subset of placements equally often."""
    return _balanced(
        [
            [
                TokenPlacement(subset, position)
                for position in (path_positions(layout) if Placement.PATH in subset else (None,))
            ]
            for subset in placement_subsets()
        ]
    )


@cache
def token_placements(layout: Layout) -> st.SearchStrategy[TokenPlacement]:
    """A non-empty set of placements; with the path, one of the layout's allowed positions."""
    return st.sampled_from(_placement_alternatives(layout))


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
    kinds = tuple(kinds or REQUEST_KINDS[layout])
    return _picked(
        lambda picks: _request(picks, layout, kinds, token, placement, conflicting, misplaced)
    )


def _request(
    picks: _Picks,
    layout: Layout,
    kinds: Sequence[RequestKind],
    token: str | None,
    placement: TokenPlacement | None,
    conflicting: str | None,
    misplaced: str | None,
) -> HarnessRequest:
    # _REQUEST_PICKS: where the misplaced token goes (3) and the token (15), the kind, its form,
    # the base, a trailing slash or not, extra segments (3), identity and neighbour headers (3)
    # and their indexes, extra parameters (4)
    misplacement, placing = picks.region(3), picks.region(15)
    kind = picks.pick(kinds)
    form = picks.pick(_kind_forms(kind))
    needs_endpoint = placement is not None and placement.path_position is not None
    segments = picks.pick(_base_segments(layout, kind, needs_endpoint))
    trailing_slash = picks.pick((False, True))
    extra_segments = picks.some(EXTRA_SEGMENTS, (0, 1, 2))
    if layout is Layout.GENERIC:
        segments = (*segments, *extra_segments)
    extra_headers = picks.some(EXTRA_HEADERS, (0, 1, 2))
    headers = _interleaved(
        form.headers, extra_headers, picks.slots(len(form.headers), len(extra_headers))
    )
    draft = _Draft(
        method=form.method,
        segments=segments,
        params=picks.some(EXTRA_PARAMS, (0, 1, 2, 3)),
        headers=headers,
        body=form.body,
        websocket=kind is RequestKind.WEBSOCKET,
        trailing_slash=trailing_slash,
    )
    if misplaced is not None:
        draft = _misplaced(misplacement, draft, misplaced, layout)
    if token is not None and placement is not None:
        draft = _placed(placing, draft, token, placement)
    if conflicting is not None:
        if placement is not None and placement.placements == (Placement.QUERY,):
            draft = replace(draft, params=(*draft.params, f"token={percent_encoded(conflicting)}"))
        else:
            field = ("x-auth-token", header_wire(conflicting))
            draft = replace(draft, headers=(*draft.headers, field))
    return draft.request()


# Neither a conflicting value nor a misplaced token two times in three; else either or both.
_COMPLICATIONS = ((False, False),) * 6 + ((True, False), (False, True), (True, True))


def scenario_requests(
    store: StoreModel,
    layout: Layout,
    *,
    now: datetime,
    service_name: str | None = None,
) -> st.SearchStrategy[HarnessRequest]:
    """A full request: a token in some state (or none) at some placements, sometimes with a
    conflicting second value or a misplaced token.

    The store is read here, once; drawing only picks among what this prepares.
    """
    pools = _token_pools(store, now=now, service_name=service_name)
    states = (None, *pools)
    placements = _placement_alternatives(layout)
    # states never share a value, so another state's value always differs
    others = {state: tuple(other for other in pools if other is not state) for state in states}
    kinds = REQUEST_KINDS[layout]

    def scenario_request(picks: _Picks) -> HarnessRequest:
        # _SCENARIO_PICKS: the state, the placement, the complications, the conflicting value's
        # state; the token's, the conflicting and the misplaced value
        state = picks.pick(states)
        placement = picks.pick(placements)
        conflicts, misplaces = picks.pick(_COMPLICATIONS)
        other = picks.pick(others[state])
        values = picks.region(_VALUE_PICKS), picks.region(_VALUE_PICKS), picks.region(3)
        token = None if state is None else pools[state](values[0])
        conflicting = pools[other](values[1]) if conflicts else None
        misplaced = _picked_value(values[2], KIND_PREFIXES, BODY_SIZES) if misplaces else None
        placed = None if token is None else placement
        return _request(picks, layout, kinds, token, placed, conflicting, misplaced)

    return _picked(scenario_request)


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

"""The harness's independent oracle: what the tokenward contract says must happen to a request.

This is a second implementation of the behaviour contract, written from the contract alone and
kept apart from the code under test (it imports nothing from ``tokenward`` or ``addons``).
It favours a plain, rule-by-rule reading over speed: ``expect`` walks the verdict rows in their
order of precedence and then applies the rewrite the ``forward`` option asks for.

Strings that stand for bytes on the wire (the request target, header names and values) hold
those bytes decoded as latin-1, so comparing two such strings compares the bytes.

Choices where the contract is silent
------------------------------------
Each choice that a request the harness sends can tell apart is a named strict check
(``StrictCheck``, its reason in ``STRICT_REASONS``): ``expect`` takes the careful side, and
``expect(..., relaxed={check})`` the permissive side a gateway may take instead; a gateway that
only does the latter gets a strict finding, not a failure.

- ``deep_percent_encoding``: "holds a token-shaped string" is checked on the raw text and on up
  to four rounds of full percent-decoding of it. Permissive: the raw text and one decoding by
  the contract's own rule for where it stands (query names and values: full percent-decoding;
  path segments: the unreserved characters only).
- ``non_ascii_boundary``: bytes outside ASCII count as boundaries. Permissive: a letter or digit
  of any script (the bytes read as UTF-8) right before or after is no boundary.
- ``empty_list_element``: header values are split on every comma and each part is trimmed of
  spaces and tabs; every part counts, empty ones included, so ``x-auth-token: T,`` carries two
  distinct values (ambiguous). Permissive: empty parts are ignored, as RFC 9110 5.6.1 lets a
  recipient do (a wholly empty field still carries the empty value).
- ``bare_token_parameter``: ``?token`` without ``=`` carries the empty value (malformed).
  Permissive: without ``=`` it is no token parameter but an ordinary one.
- ``endpoint_case``: the avalanche/fuji endpoint segments ``ext``, ``bc``, ``C``,
  ``rpc``/``ws`` are compared case-sensitively after the same unreserved-character decoding as
  tokens. Permissive: compared without regard to case.
- ``misplaced_placement_null``: the JSON ``placement`` of ``misplaced_token`` is null (the string
  stands in no placement). Permissive: any placement.
- ``identity_kind_code``: ``x-tokenward-kind`` carries the kind's short code: ``pat``, ``aat``
  or ``sat``. Permissive: any value.
- ``www_authenticate_only_on_401``: a rejection other than 401 carries no ``WWW-Authenticate``.
  Permissive: not looked at.
- ``canonical_of_two``: with a token at both generic positions, ``forward=path`` keeps the
  canonical (last) one. Permissive: the first may stay instead.

Readings the harness makes but never tells apart with what it sends (no check, so no level):
- A query parameter is one ``&``-separated piece; ``;`` is not a separator. ``+`` is a literal
  plus (plain percent-decoding, no form decoding): no token holds either character, so no
  verdict depends on it.
- Path segments are the pieces between ``/``; a single trailing ``/`` ends the path and is not a
  segment.
- Only the request target is checked for misplaced tokens: other headers and the body are
  forwarded as they came.
- The JSON ``placement`` is the placement kind the value(s) stood in when exactly one kind
  carried them; null for ``unknown_service`` and ``missing_token``, and when values came in
  several kinds.
- With no services registered, the default service has no name: only a token scoped to all
  services is in scope there; one scoped to a list of services is out of scope.
- A CORS preflight let through by ``tokenward_preflight=pass`` is not checked, so it is never
  "accepted": it gets no identity headers and its verdict is ``None``.
- ``malformed_request`` (a header field holding a line break) comes before every row; the
  harness sends it only with a valid token and nothing else wrong.
- ``unplaceable_token`` applies only to a request that would otherwise be forwarded (accepted,
  or a preflight let through) under ``forward=path`` whose single, token-shaped value stands at
  no allowed path position while the path offers no canonical one (avalanche/fuji paths other
  than the ``/ext/bc/C/rpc`` and ``/ext/bc/C/ws`` endpoints). Observe mode records it as the
  verdict and forwards the request with the token removed.
- ``forward`` = header, query or path places a value only when the placements carried exactly
  one distinct value and it is token-shaped; otherwise (observe mode, preflights) the request is
  forwarded with no token at all.
- Observe mode rejects nothing, not even ``unknown_service``: a request for a host that names
  no service (reverse mode) is forwarded, rewritten with the default layout (the scenario's
  ``layout``) and without identity headers; the flow records ``unknown_service``.
- Removing query parameters keeps the others exactly, empty ones (``&&``) included; the ``?`` is
  dropped when nothing but empty parameters would remain.
- ``curl_command`` replaces a token's encoded spellings too (e.g. ``%73m_pat_…``) by its
  variable, so the command sends the plain spelling: the same token under the contract's
  decoding rules.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from urllib.parse import unquote_to_bytes

LETTERS_AND_DIGITS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
)
UNRESERVED = LETTERS_AND_DIGITS | frozenset("-._~")
TOKEN_BODY_MIN = 16
TOKEN_BODY_MAX = 64
DECODE_ROUNDS = 4
AUTH_HEADER = "x-auth-token"
TOKEN_PARAM = "token"
IDENTITY_PREFIX = "x-tokenward-"
IDENTITY_TOKEN_HEADER = "x-tokenward-token"
IDENTITY_KIND_HEADER = "x-tokenward-kind"
WWW_AUTHENTICATE = 'Token realm="tokenward"'
AVALANCHE_ENDPOINTS = (("ext", "bc", "C", "rpc"), ("ext", "bc", "C", "ws"))
# Headers a proxy may legitimately rewrite in transit; the oracle makes no claim about them.
TRANSPORT_HEADERS = frozenset(
    {
        "host",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    },
)
# The variables `tokenward conformance` reads tokens from, by the harness's token states
# (`harness.strategies.TokenState` values); reports and curl commands name these, not tokens.
TOKEN_ENV_VARS: Mapping[str, str] = {
    "valid": "TOKENWARD_VALID_TOKEN",
    "second_valid": "TOKENWARD_SECOND_TOKEN",
    "unknown": "TOKENWARD_UNKNOWN_TOKEN",
    "malformed": "TOKENWARD_MALFORMED_TOKEN",
    "revoked": "TOKENWARD_REVOKED_TOKEN",
    "expired": "TOKENWARD_EXPIRED_TOKEN",
    "out_of_scope": "TOKENWARD_OUT_OF_SCOPE_TOKEN",
}
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_BARE_WORD = re.compile(r"[A-Za-z0-9_.,:/@%+=-]+")


class Layout(StrEnum):
    GENERIC = "generic"
    IPFS = "ipfs"
    AVALANCHE = "avalanche"
    FUJI = "fuji"


class Forward(StrEnum):
    STRIP = "strip"
    HEADER = "header"
    QUERY = "query"
    PATH = "path"
    KEEP = "keep"


class Mode(StrEnum):
    ENFORCE = "enforce"
    OBSERVE = "observe"


class Preflight(StrEnum):
    PASS = "pass"
    ENFORCE = "enforce"


class Placement(StrEnum):
    HEADER = "header"
    QUERY = "query"
    PATH = "path"


class TokenKind(StrEnum):
    PAT = "pat"
    AAT = "aat"
    SAT = "sat"


class ErrorCode(StrEnum):
    UNKNOWN_SERVICE = "unknown_service"
    MISPLACED_TOKEN = "misplaced_token"
    AMBIGUOUS_TOKEN = "ambiguous_token"
    MISSING_TOKEN = "missing_token"
    MALFORMED_TOKEN = "malformed_token"
    UNKNOWN_TOKEN = "unknown_token"
    REVOKED_TOKEN = "revoked_token"
    EXPIRED_TOKEN = "expired_token"
    OUT_OF_SCOPE = "out_of_scope"
    STORE_UNAVAILABLE = "store_unavailable"
    UNPLACEABLE_TOKEN = "unplaceable_token"
    UNSUPPORTED_UPGRADE = "unsupported_upgrade"
    MALFORMED_REQUEST = "malformed_request"


class StrictCheck(StrEnum):
    """A check where the contract is silent: ``expect`` takes the careful side of it."""

    DEEP_PERCENT_ENCODING = "deep_percent_encoding"
    NON_ASCII_BOUNDARY = "non_ascii_boundary"
    EMPTY_LIST_ELEMENT = "empty_list_element"
    BARE_TOKEN_PARAMETER = "bare_token_parameter"
    ENDPOINT_CASE = "endpoint_case"
    MISPLACED_PLACEMENT_NULL = "misplaced_placement_null"
    IDENTITY_KIND_CODE = "identity_kind_code"
    WWW_AUTHENTICATE_ONLY_ON_401 = "www_authenticate_only_on_401"
    CANONICAL_OF_TWO = "canonical_of_two"


STRICT_REASONS: Mapping[StrictCheck, str] = {
    StrictCheck.DEEP_PERCENT_ENCODING: (
        "a token-shaped string under a second level of percent-encoding (or behind an escaped"
        " reserved character in a path segment) is refused as misplaced: some component on the"
        " way may decode once more and see the token"
    ),
    StrictCheck.NON_ASCII_BOUNDARY: (
        "a byte outside ASCII next to a token-shaped string counts as a boundary, so a letter of"
        " another script cannot hide a token from the check"
    ),
    StrictCheck.EMPTY_LIST_ELEMENT: (
        "an empty element in x-auth-token (`T,`) counts as a second, different value: the"
        " client sent something the gateway cannot read as one token"
    ),
    StrictCheck.BARE_TOKEN_PARAMETER: (
        "`?token` without `=` is the token parameter with an empty value (malformed), not an"
        " ordinary parameter"
    ),
    StrictCheck.ENDPOINT_CASE: (
        "the avalanche endpoint `/ext/bc/C/rpc` is matched case-sensitively, as URL paths are:"
        " a token after `/ext/bc/c/rpc` is misplaced"
    ),
    StrictCheck.MISPLACED_PLACEMENT_NULL: (
        "a misplaced token stands in no placement, so the answer's `placement` is null"
    ),
    StrictCheck.IDENTITY_KIND_CODE: (
        "x-tokenward-kind carries the kind's short code (pat, aat, sat), as the token's prefix"
        " spells it"
    ),
    StrictCheck.WWW_AUTHENTICATE_ONLY_ON_401: (
        "WWW-Authenticate goes with 401 alone: on another status it asks for credentials that"
        " would not help"
    ),
    StrictCheck.CANONICAL_OF_TWO: (
        "forward=path with the same token at both generic positions keeps the canonical (last) one"
    ),
}
NOTHING_RELAXED: frozenset[StrictCheck] = frozenset()


STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.UNKNOWN_SERVICE: 404,
    ErrorCode.MISPLACED_TOKEN: 400,
    ErrorCode.AMBIGUOUS_TOKEN: 400,
    ErrorCode.MISSING_TOKEN: 401,
    ErrorCode.MALFORMED_TOKEN: 401,
    ErrorCode.UNKNOWN_TOKEN: 401,
    ErrorCode.REVOKED_TOKEN: 401,
    ErrorCode.EXPIRED_TOKEN: 401,
    ErrorCode.OUT_OF_SCOPE: 403,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.UNPLACEABLE_TOKEN: 400,
    ErrorCode.UNSUPPORTED_UPGRADE: 400,
    ErrorCode.MALFORMED_REQUEST: 400,
}

WHY: Mapping[ErrorCode, str] = {
    ErrorCode.UNKNOWN_SERVICE: "row 0: the request's host names no registered service",
    ErrorCode.MISPLACED_TOKEN: "row 1: the target holds a token-shaped string outside a placement",
    ErrorCode.AMBIGUOUS_TOKEN: "row 2: the placements carry more than one distinct value",
    ErrorCode.MISSING_TOKEN: "row 3: no placement at all",
    ErrorCode.MALFORMED_TOKEN: "row 4: the one value is not token-shaped",
    ErrorCode.UNKNOWN_TOKEN: "row 5: the token is not in the store",
    ErrorCode.REVOKED_TOKEN: "row 6: the token is deleted",
    ErrorCode.EXPIRED_TOKEN: "row 7: the token is expired",
    ErrorCode.OUT_OF_SCOPE: "row 8: the request's service is outside the token's scope",
    ErrorCode.STORE_UNAVAILABLE: "the store cannot be read when rows 5-8 need it",
    ErrorCode.UNPLACEABLE_TOKEN: "forward=path and the path has no canonical token position",
    ErrorCode.UNSUPPORTED_UPGRADE: "an Upgrade other than a WebSocket handshake (after rows 0-1)",
    ErrorCode.MALFORMED_REQUEST: "a header field holds a line break (a folded field)",
}


# --- the data model ---------------------------------------------------------------------------


def _require_latin1(what: str, text: str) -> None:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must hold bytes decoded as latin-1, got {text!r}") from None


def _require_aware(what: str, moment: datetime | None) -> None:
    if moment is not None and moment.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got {moment!r}")


@dataclass(frozen=True)
class HarnessRequest:
    """A request as the client sends it; ``target`` is the raw ``path?query``.

    Header values are kept as HTTP reads them: without leading or trailing spaces and tabs,
    which are no part of a field value on the wire (so ``x-auth-token: T, `` carries ``T,``).
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    websocket: bool = False

    def __post_init__(self) -> None:
        if not self.method:
            raise ValueError(f"method must not be empty, got {self.method!r}")
        if not self.target.startswith("/"):
            raise ValueError(f"target must start with '/', got {self.target!r}")
        _require_latin1("target", self.target)
        for name, value in self.headers:
            if not name:
                raise ValueError(f"header name must not be empty, got {name!r}")
            _require_latin1("header name", name)
            _require_latin1("header value", value)
        trimmed = tuple((name, value.strip(" \t")) for name, value in self.headers)
        object.__setattr__(self, "headers", trimmed)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str | None:
        """The text after the first ``?``; None when the target has no ``?``."""
        _, mark, query = self.target.partition("?")
        return query if mark else None

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every field value of the header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return tuple(value for key, value in self.headers if key.lower() == wanted)


@dataclass(frozen=True)
class ModelToken:
    """A stored token; ``scope`` None means all services."""

    name: str
    kind: TokenKind
    expires_at: datetime | None = None
    revoked: bool = False
    scope: frozenset[str] | None = None

    def __post_init__(self) -> None:
        _require_aware("expires_at", self.expires_at)

    def allows(self, service_name: str | None) -> bool:
        """Is the service in scope? None is the nameless default service: only ``all`` is."""
        return self.scope is None or (service_name is not None and service_name in self.scope)


@dataclass(frozen=True)
class ModelService:
    """A registered service; empty ``hosts`` means the default, its name."""

    name: str
    hosts: tuple[str, ...]
    layout: Layout
    upstream: str

    @property
    def host_names(self) -> tuple[str, ...]:
        return self.hosts or (self.name,)


@dataclass(frozen=True)
class StoreModel:
    """What the store holds, keyed by plaintext; ``available`` False models an unreadable store."""

    tokens: Mapping[str, ModelToken] = field(default_factory=dict)
    services: Mapping[str, ModelService] = field(default_factory=dict)
    available: bool = True

    def __post_init__(self) -> None:
        for plaintext in self.tokens:
            if not is_token_shaped(plaintext):
                raise ValueError(f"a stored token must be token-shaped, got {plaintext!r}")
        for name, service in self.services.items():
            if name != service.name:
                raise ValueError(f"service key {name!r} differs from its name {service.name!r}")


@dataclass(frozen=True)
class Scenario:
    """The proxy's options and the moment of the request.

    ``service`` is the host the request addresses (a service's name is its default host); it
    only matters when services are registered. ``layout`` is the default service's layout,
    used when none are. ``reverse`` False models regular (forward-proxy) mode.
    """

    now: datetime
    layout: Layout = Layout.GENERIC
    forward: Forward = Forward.STRIP
    mode: Mode = Mode.ENFORCE
    preflight: Preflight = Preflight.PASS
    service: str | None = None
    reverse: bool = True

    def __post_init__(self) -> None:
        _require_aware("now", self.now)


@dataclass(frozen=True)
class Upstream:
    """What the upstream must receive.

    ``auth_tokens`` are the exact ``x-auth-token`` field values, in order (none when empty).
    ``token_name``/``token_kind`` are the identity headers' values, None meaning absent.
    ``client_identity_removed``: no client-sent ``x-tokenward-*`` header may arrive.
    ``preserved_headers`` must each arrive unchanged (headers in ``TRANSPORT_HEADERS``, the
    auth header and ``x-tokenward-*`` are described by the other fields instead).
    """

    target: str
    auth_tokens: tuple[str, ...]
    token_name: str | None
    token_kind: TokenKind | None
    client_identity_removed: bool
    preserved_headers: tuple[tuple[str, str], ...]
    body: bytes

    def identity_headers(self) -> tuple[tuple[str, str], ...]:
        """The identity headers the upstream must see (lower-case names); empty when none."""
        if self.token_name is None or self.token_kind is None:
            return ()
        return ((IDENTITY_TOKEN_HEADER, self.token_name), (IDENTITY_KIND_HEADER, self.token_kind))


@dataclass(frozen=True)
class Expectation:
    """The oracle's answer for one request.

    ``status``/``error`` describe the proxy's own answer (None when forwarded); ``verdict`` is
    what enforce mode decides (None when accepted or not checked), so in observe mode it is
    what the flow records while the request is forwarded. ``placement`` is the JSON
    ``placement`` of a rejection and the placement the flow records. ``token_in_url``: a
    non-empty value came in the query or path, or a token-shaped string is misplaced in the
    target (what observe mode warns about). ``checked`` is False for requests let through
    unchecked (preflights under ``pass``, forward-proxy pass-through). ``relaxed`` are the
    strict checks this expectation takes the permissive side of. ``hint`` is the display hint
    a record shows of the request's one token-shaped value (None: no claim).
    """

    status: int | None
    error: ErrorCode | None
    verdict: ErrorCode | None
    placement: Placement | None
    upstream: Upstream | None
    www_authenticate: str | None
    allow_origin: str | None
    token_in_url: bool
    checked: bool
    why: str
    relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
    hint: str | None = None

    @property
    def forwarded(self) -> bool:
        return self.upstream is not None


# --- token shapes -------------------------------------------------------------------------------


TOKEN_START = "sm_"
KIND_PREFIXES = tuple(f"{TOKEN_START}{kind}_" for kind in TokenKind)


def is_token_shaped(value: str) -> bool:
    """The whole value is ``sm_`` + kind + ``_`` + 16 to 64 ASCII letters and digits."""
    for prefix in KIND_PREFIXES:
        if value.startswith(prefix):
            body = value[len(prefix) :]
            return TOKEN_BODY_MIN <= len(body) <= TOKEN_BODY_MAX and set(body) <= LETTERS_AND_DIGITS
    return False


def holds_token_shaped(text: str, *, any_script: bool = False) -> bool:
    """The token pattern occurs in ``text`` with no ASCII letter or digit right around it.

    ``any_script``: ``text`` holds UTF-8 bytes, and a letter or digit of any script right
    before the match is no boundary either (the permissive side of ``non_ascii_boundary``).
    """
    if any_script:
        text = text.encode("latin-1").decode("utf-8", "replace")
    # Every kind's prefix begins with TOKEN_START: a token can only start where it occurs.
    start = text.find(TOKEN_START)
    while start >= 0:
        if _token_starts_at(text, start, any_script):
            return True
        start = text.find(TOKEN_START, start + 1)
    return False


def _token_starts_at(text: str, start: int, any_script: bool) -> bool:
    """A token-shaped string, bounded on both sides, starts at ``start``."""
    before = text[start - 1] if start > 0 else ""
    if before and (before in LETTERS_AND_DIGITS or (any_script and before.isalnum())):
        return False
    prefix = next((p for p in KIND_PREFIXES if text.startswith(p, start)), None)
    if prefix is None:
        return False
    # The run of letters and digits after the prefix is maximal, so its end is a boundary;
    # a match shorter than the run would be followed by a letter or digit.
    end = start + len(prefix)
    while end < len(text) and text[end] in LETTERS_AND_DIGITS:
        end += 1
    if any_script and end < len(text) and text[end].isalnum():
        return False
    return TOKEN_BODY_MIN <= end - start - len(prefix) <= TOKEN_BODY_MAX


def percent_decode(text: str) -> str:
    """Decode every valid ``%XX``; invalid escapes stay as they are."""
    if "%" not in text:
        return text
    return unquote_to_bytes(text.encode("latin-1")).decode("latin-1")


def decode_unreserved(text: str) -> str:
    """Decode only the ``%XX`` escapes of unreserved characters (RFC 3986 2.3, 6.2.2.2)."""
    if "%" not in text:
        return text
    out: list[str] = []
    index = 0
    while index < len(text):
        escape = text[index : index + 3]
        if len(escape) == 3 and escape[0] == "%" and _is_hex(escape[1:]):
            char = chr(int(escape[1:], 16))
            if char in UNRESERVED:
                out.append(char)
                index += 3
                continue
        out.append(text[index])
        index += 1
    return "".join(out)


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


def decoded_forms(text: str) -> tuple[str, ...]:
    """The raw text and its repeated full percent-decodings, until stable or DECODE_ROUNDS."""
    forms = [text]
    for _ in range(DECODE_ROUNDS):
        decoded = percent_decode(forms[-1])
        if decoded == forms[-1]:
            break
        forms.append(decoded)
    return tuple(forms)


def holds_token_in_any_form(
    text: str, *, in_path: bool = False, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> bool:
    """``text`` holds a token-shaped string raw or decoded (see ``deep_percent_encoding``)."""
    if StrictCheck.DEEP_PERCENT_ENCODING in relaxed:
        forms: tuple[str, ...] = (
            text,
            decode_unreserved(text) if in_path else percent_decode(text),
        )
    else:
        forms = decoded_forms(text)
    any_script = StrictCheck.NON_ASCII_BOUNDARY in relaxed
    return any(holds_token_shaped(form, any_script=any_script) for form in forms)


def strip_hint(value: str) -> str:
    """The display hint: the kind prefix, an ellipsis and the last four characters."""
    prefix = next((p for p in KIND_PREFIXES if value.startswith(p)), "")
    return f"{prefix}…{value[len(prefix) :][-4:]}"


# --- reading a request --------------------------------------------------------------------------


def auth_header_values(
    request: HarnessRequest, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> tuple[str, ...]:
    """Every comma-separated part of every ``x-auth-token`` field, trimmed."""
    values: list[str] = []
    for field_value in request.header_values(AUTH_HEADER):
        parts = [part.strip(" \t") for part in field_value.split(",")]
        if StrictCheck.EMPTY_LIST_ELEMENT in relaxed and any(parts):
            parts = [part for part in parts if part]
        values += parts
    return tuple(values)


@dataclass(frozen=True)
class QueryParam:
    """One ``&``-separated piece of the query, as sent."""

    raw: str
    bare_is_ordinary: bool = False  # the permissive side of ``bare_token_parameter``

    @property
    def raw_name(self) -> str:
        return self.raw.partition("=")[0]

    @property
    def raw_value(self) -> str:
        return self.raw.partition("=")[2]

    @property
    def is_token_param(self) -> bool:
        if self.bare_is_ordinary and "=" not in self.raw:
            return False
        return percent_decode(self.raw_name) == TOKEN_PARAM

    @property
    def value(self) -> str:
        return percent_decode(self.raw_value)


def query_params(
    request: HarnessRequest, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> tuple[QueryParam, ...]:
    query = request.query
    if query is None:
        return ()
    bare_is_ordinary = StrictCheck.BARE_TOKEN_PARAMETER in relaxed
    return tuple(QueryParam(piece, bare_is_ordinary) for piece in query.split("&"))


@dataclass(frozen=True)
class PathShape:
    """A path as its segments plus whether a trailing slash ends it."""

    segments: tuple[str, ...]
    trailing_slash: bool

    @classmethod
    def parse(cls, path: str) -> PathShape:
        if path == "/":
            return cls((), trailing_slash=False)
        inner = path[1:]
        trailing = inner.endswith("/")
        if trailing:
            inner = inner[:-1]
        return cls(tuple(inner.split("/")), trailing_slash=trailing)

    def render(self) -> str:
        text = "".join(f"/{segment}" for segment in self.segments)
        text += "/" if self.trailing_slash else ""
        return text or "/"

    def without(self, indices: frozenset[int]) -> PathShape:
        """Drop the segments at ``indices``: each takes its leading slash with it."""
        kept = tuple(s for i, s in enumerate(self.segments) if i not in indices)
        return PathShape(kept, self.trailing_slash)

    def inserted(self, index: int, segment: str) -> PathShape:
        segments = (*self.segments[:index], segment, *self.segments[index:])
        return PathShape(segments, self.trailing_slash)


def _is_endpoint(segments: Sequence[str], relaxed: frozenset[StrictCheck]) -> bool:
    """The segments are an avalanche/fuji endpoint (see ``endpoint_case``)."""
    decoded = tuple(decode_unreserved(segment) for segment in segments)
    if StrictCheck.ENDPOINT_CASE in relaxed:
        decoded = tuple(segment.lower() for segment in decoded)
        return decoded in {tuple(s.lower() for s in e) for e in AVALANCHE_ENDPOINTS}
    return decoded in AVALANCHE_ENDPOINTS


def allowed_path_positions(
    layout: Layout, shape: PathShape, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> tuple[int, ...]:
    """The segment indices where the layout lets a token stand in this path."""
    count = len(shape.segments)
    if count == 0:
        return ()
    if layout is Layout.GENERIC:
        return tuple(sorted({0, count - 1}))
    if layout is Layout.IPFS:
        return (0,)
    # avalanche and fuji: exactly the endpoint's four segments, then the token ending the path
    return (4,) if count == 5 and _is_endpoint(shape.segments[:4], relaxed) else ()


def canonical_insert_index(
    layout: Layout, shape: PathShape, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> int | None:
    """Where ``forward=path`` inserts a token into a token-free path; None when nowhere."""
    if layout is Layout.GENERIC:
        return len(shape.segments)
    if layout is Layout.IPFS:
        return 0
    return 4 if _is_endpoint(shape.segments, relaxed) else None


@dataclass(frozen=True)
class Found:
    """A value carried by a placement."""

    placement: Placement
    value: str


@dataclass(frozen=True)
class Reading:
    """Everything the rules need to know about the request's token placements."""

    found: tuple[Found, ...]
    path: PathShape
    path_candidates: frozenset[int]
    params: tuple[QueryParam, ...]
    misplaced: tuple[str, ...]
    relaxed: frozenset[StrictCheck] = NOTHING_RELAXED

    @property
    def distinct_values(self) -> frozenset[str]:
        return frozenset(item.value for item in self.found)

    @property
    def single_value(self) -> str | None:
        values = self.distinct_values
        return next(iter(values)) if len(values) == 1 else None

    @property
    def single_placement(self) -> Placement | None:
        kinds = {item.placement for item in self.found}
        return kinds.pop() if len(kinds) == 1 else None


def read_request(
    request: HarnessRequest, layout: Layout, relaxed: frozenset[StrictCheck] = NOTHING_RELAXED
) -> Reading:
    """The placements' values and the misplaced strings; ``relaxed`` as in ``expect``."""
    path = PathShape.parse(request.path)
    candidates = frozenset(
        index
        for index in allowed_path_positions(layout, path, relaxed)
        if is_token_shaped(decode_unreserved(path.segments[index]))
    )
    params = query_params(request, relaxed)
    found = (
        *(Found(Placement.HEADER, value) for value in auth_header_values(request, relaxed)),
        *(Found(Placement.QUERY, p.value) for p in params if p.is_token_param),
        *(
            Found(Placement.PATH, decode_unreserved(path.segments[index]))
            for index in sorted(candidates)
        ),
    )
    # Every part of the target that is not a placement, checked raw and decoded.
    in_query = (
        piece for p in params if not p.is_token_param for piece in (p.raw_name, p.raw_value)
    )
    in_path = (segment for i, segment in enumerate(path.segments) if i not in candidates)
    misplaced = (
        *(piece for piece in in_query if holds_token_in_any_form(piece, relaxed=relaxed)),
        *(s for s in in_path if holds_token_in_any_form(s, in_path=True, relaxed=relaxed)),
    )
    return Reading(found, path, candidates, params, misplaced, relaxed)


def has_body(request: HarnessRequest) -> bool:
    """A body follows the head: bytes, Transfer-Encoding, or a Content-Length other than 0."""
    lengths = request.header_values("content-length")
    return (
        bool(request.body)
        or bool(request.header_values("transfer-encoding"))
        or any(length != "0" for length in lengths)
    )


def is_preflight(request: HarnessRequest) -> bool:
    """OPTIONS (exact spelling) with Origin and Access-Control-Request-Method, no body and no
    Upgrade."""
    return (
        request.method == "OPTIONS"
        and bool(request.header_values("origin"))
        and bool(request.header_values("access-control-request-method"))
        and not has_body(request)
        and not request.header_values("upgrade")
    )


def is_websocket_handshake(request: HarnessRequest) -> bool:
    upgrades = [value.lower() for value in request.header_values("upgrade")]
    versions = request.header_values("sec-websocket-version")
    return upgrades == ["websocket"] and versions == ("13",)


def asks_other_upgrade(request: HarnessRequest) -> bool:
    """An Upgrade header that is not a WebSocket handshake's (``unsupported_upgrade``)."""
    return bool(request.header_values("upgrade")) and not is_websocket_handshake(request)


def holds_line_break(request: HarnessRequest) -> bool:
    """A header field holds CR or LF: a field folded over lines (``malformed_request``)."""
    return any("\r" in text or "\n" in text for field in request.headers for text in field)


def host_name(host: str) -> str:
    """The host without its port, lower-cased, a trailing dot ignored."""
    if host.startswith("["):
        return host.partition("]")[0].lower() + "]"
    name, colon, port = host.rpartition(":")
    return (name if colon and port.isdigit() else host).lower().removesuffix(".")


def addressed_service(store: StoreModel, scenario: Scenario) -> tuple[str | None, Layout] | None:
    """The name and layout of the service the request addresses; None when it names none.

    With no services registered, the default service applies: no name, the scenario's layout.
    """
    if not store.services:
        return None, scenario.layout
    if scenario.service is None:
        return None
    wanted = host_name(scenario.service)
    for service in store.services.values():
        if wanted in {host_name(host) for host in service.host_names}:
            return service.name, service.layout
    return None


# --- the verdict --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    code: ErrorCode | None
    placement: Placement | None
    token: ModelToken | None
    checked: bool


def judge(
    request: HarnessRequest,
    reading: Reading,
    store: StoreModel,
    scenario: Scenario,
    service_name: str | None,
) -> Verdict:
    """Rows 1-8 and the store, in order (row 0 is decided before a layout is known)."""
    if reading.misplaced:
        return Verdict(ErrorCode.MISPLACED_TOKEN, None, None, checked=True)
    if asks_other_upgrade(request):
        return Verdict(ErrorCode.UNSUPPORTED_UPGRADE, None, None, checked=True)
    if scenario.preflight is Preflight.PASS and is_preflight(request):
        return Verdict(None, reading.single_placement, None, checked=False)
    placement = reading.single_placement
    if len(reading.distinct_values) > 1:
        return Verdict(ErrorCode.AMBIGUOUS_TOKEN, placement, None, checked=True)
    value = reading.single_value
    if value is None:
        return Verdict(ErrorCode.MISSING_TOKEN, None, None, checked=True)
    if not is_token_shaped(value):
        return Verdict(ErrorCode.MALFORMED_TOKEN, placement, None, checked=True)
    if not store.available:
        return Verdict(ErrorCode.STORE_UNAVAILABLE, placement, None, checked=True)
    token = store.tokens.get(value)
    if token is None:
        return Verdict(ErrorCode.UNKNOWN_TOKEN, placement, None, checked=True)
    if token.revoked:
        return Verdict(ErrorCode.REVOKED_TOKEN, placement, None, checked=True)
    if token.expires_at is not None and scenario.now >= token.expires_at:
        return Verdict(ErrorCode.EXPIRED_TOKEN, placement, None, checked=True)
    if not token.allows(service_name):
        return Verdict(ErrorCode.OUT_OF_SCOPE, placement, None, checked=True)
    return Verdict(None, placement, token, checked=True)


# --- the rewrite --------------------------------------------------------------------------------


def placeable_value(reading: Reading) -> str | None:
    """The value header, query and path forwarding place: the single one, if token-shaped."""
    value = reading.single_value
    return value if value is not None and is_token_shaped(value) else None


def is_unplaceable(reading: Reading, layout: Layout, forward: Forward) -> bool:
    """forward=path has a token to place, it stands at no allowed position and none exists."""
    return (
        forward is Forward.PATH
        and placeable_value(reading) is not None
        and not reading.path_candidates
        and canonical_insert_index(layout, reading.path, reading.relaxed) is None
    )


def rewritten_path(reading: Reading, layout: Layout, forward: Forward) -> str:
    value = placeable_value(reading) if forward is Forward.PATH else None
    kept: frozenset[int] = frozenset()
    if value is not None and reading.path_candidates:
        # A token already at an allowed position stays there; of two, the canonical (last).
        first_stays = StrictCheck.CANONICAL_OF_TWO in reading.relaxed
        kept = frozenset({(min if first_stays else max)(reading.path_candidates)})
    path = reading.path.without(reading.path_candidates - kept)
    if value is not None and not kept:
        index = canonical_insert_index(layout, path, reading.relaxed)
        if index is not None:
            path = path.inserted(index, value)
    return path.render()


def rewritten_query(request: HarnessRequest, reading: Reading, forward: Forward) -> str | None:
    """The query the upstream receives; None when it has no ``?``."""
    others = [p.raw for p in reading.params if not p.is_token_param]
    value = placeable_value(reading) if forward is Forward.QUERY else None
    if value is not None:
        # appended last; only empty pieces before it would leave a stray "&"
        return "&".join([*(others if any(others) else []), f"{TOKEN_PARAM}={value}"])
    if len(others) == len(reading.params):
        return request.query  # nothing removed: exactly as sent, even a bare "?"
    return "&".join(others) if any(others) else None


def rewritten_target(
    request: HarnessRequest, reading: Reading, layout: Layout, forward: Forward
) -> str:
    """The target the upstream receives, for every ``forward`` value but keep."""
    path = rewritten_path(reading, layout, forward)
    query = rewritten_query(request, reading, forward)
    return path if query is None else f"{path}?{query}"


def _is_identity_header(name: str) -> bool:
    return name.lower().startswith(IDENTITY_PREFIX)


def upstream_view(
    request: HarnessRequest,
    reading: Reading,
    layout: Layout,
    forward: Forward,
    accepted: ModelToken | None,
) -> Upstream:
    if forward is Forward.KEEP:
        return _as_sent(request)
    value = placeable_value(reading) if forward is Forward.HEADER else None
    auth = () if value is None else (value,)
    preserved = tuple(
        (name, text)
        for name, text in request.headers
        if name.lower() not in TRANSPORT_HEADERS
        and name.lower() != AUTH_HEADER
        and not _is_identity_header(name)
    )
    return Upstream(
        target=rewritten_target(request, reading, layout, forward),
        auth_tokens=auth,
        token_name=accepted.name if accepted else None,
        token_kind=accepted.kind if accepted else None,
        client_identity_removed=True,
        preserved_headers=preserved,
        body=request.body,
    )


def _as_sent(request: HarnessRequest) -> Upstream:
    """The request exactly as the client sent it (keep, and forward-proxy pass-through)."""
    preserved = tuple(
        (name, text)
        for name, text in request.headers
        if name.lower() not in TRANSPORT_HEADERS and name.lower() != AUTH_HEADER
    )
    return Upstream(
        target=request.target,
        auth_tokens=request.header_values(AUTH_HEADER),
        token_name=None,
        token_kind=None,
        client_identity_removed=False,
        preserved_headers=preserved,
        body=request.body,
    )


# --- the expectation ----------------------------------------------------------------------------


def _origin(request: HarnessRequest) -> str | None:
    origins = request.header_values("origin")
    return origins[0] if origins else None


def _rejection(
    request: HarnessRequest,
    code: ErrorCode,
    placement: Placement | None,
    token_in_url: bool,
    relaxed: frozenset[StrictCheck] = NOTHING_RELAXED,
    hint: str | None = None,
) -> Expectation:
    status = STATUS[code]
    return Expectation(
        status=status,
        error=code,
        verdict=code,
        placement=placement,
        upstream=None,
        www_authenticate=WWW_AUTHENTICATE if status == 401 else None,
        allow_origin=_origin(request),
        token_in_url=token_in_url,
        checked=True,
        why=WHY[code],
        relaxed=relaxed,
        hint=hint,
    )


def expect(
    request: HarnessRequest,
    store: StoreModel,
    scenario: Scenario,
    relaxed: frozenset[StrictCheck] = NOTHING_RELAXED,
) -> Expectation:
    """What the proxy must do with ``request``, given the store and the options.

    ``relaxed`` are strict checks to take the permissive side of (see ``StrictCheck``).
    """
    service = addressed_service(store, scenario)
    if service is None and not scenario.reverse:
        return Expectation(
            status=None,
            error=None,
            verdict=None,
            placement=None,
            upstream=_as_sent(request),
            www_authenticate=None,
            allow_origin=None,
            token_in_url=False,
            checked=False,
            why="forward-proxy mode: a host that is no registered service passes through",
        )
    # a folded field comes before every row; observe mode forwards it like any request
    folded = holds_line_break(request)
    if service is None and scenario.mode is Mode.ENFORCE:
        refused = ErrorCode.MALFORMED_REQUEST if folded else ErrorCode.UNKNOWN_SERVICE
        return _rejection(request, refused, None, False, relaxed)
    service_name, layout = (None, scenario.layout) if service is None else service

    reading = read_request(request, layout, relaxed)
    token_in_url = bool(reading.misplaced) or any(
        item.placement is not Placement.HEADER and item.value for item in reading.found
    )
    if service is None:
        # observe mode: no service to check against, so no token is accepted
        routed = None if reading.misplaced else reading.single_placement
        verdict = Verdict(ErrorCode.UNKNOWN_SERVICE, routed, None, checked=True)
    else:
        verdict = judge(request, reading, store, scenario, service_name)
    code = ErrorCode.MALFORMED_REQUEST if folded else verdict.code
    if code is None and is_unplaceable(reading, layout, scenario.forward):
        code = ErrorCode.UNPLACEABLE_TOKEN
    hint = None
    if not reading.misplaced and (value := placeable_value(reading)) is not None:
        hint = strip_hint(value)
    if code is not None and scenario.mode is Mode.ENFORCE:
        placement = None if folded else verdict.placement
        return _rejection(request, code, placement, token_in_url, relaxed, hint)

    accepted = verdict.token if code is None else None
    if code is not None:
        why = f"observe mode forwards what enforce rejects ({WHY[code]})"
    elif verdict.checked:
        why = "accepted"
    else:
        why = "a CORS preflight passes unchecked (tokenward_preflight=pass)"
    return Expectation(
        status=None,
        error=None,
        verdict=code,
        placement=verdict.placement,
        upstream=upstream_view(request, reading, layout, scenario.forward, accepted),
        www_authenticate=None,
        allow_origin=None,
        token_in_url=token_in_url,
        checked=verdict.checked,
        why=why,
        relaxed=relaxed,
        hint=hint,
    )


def rejection_body_problems(expectation: Expectation, body: bytes) -> tuple[str, ...]:
    """What is wrong with a rejection's JSON body; empty when it is as the contract says."""
    if expectation.error is None:
        raise ValueError(f"not a rejection: {expectation.why!r}")
    try:
        document = json.loads(body)
    except ValueError as exc:
        return (f"the body is not JSON: {exc}",)
    if not isinstance(document, dict):
        return (f"the body is not a JSON object but a {type(document).__name__}",)
    problems: list[str] = []
    if document.get("error") != expectation.error:
        problems.append(f"error is {document.get('error')!r}, expected {expectation.error!r}")
    any_placement = (
        expectation.error is ErrorCode.MISPLACED_TOKEN
        and StrictCheck.MISPLACED_PLACEMENT_NULL in expectation.relaxed
    )
    if "placement" not in document:
        problems.append("the placement field is missing")
    elif not any_placement and document["placement"] != expectation.placement:
        found = document["placement"]
        problems.append(f"placement is {found!r}, expected {expectation.placement!r}")
    message = document.get("message")
    if not isinstance(message, str) or not message.strip():
        problems.append("message is not a non-empty string")
    return tuple(problems)


# --- reports: a curl command that prints no token -----------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """A character of some decoding round, with the span of raw text it came from."""

    start: int
    end: int
    char: str


def _decode_units(units: Sequence[_Unit]) -> list[_Unit]:
    out: list[_Unit] = []
    index = 0
    while index < len(units):
        triple = units[index : index + 3]
        text = "".join(unit.char for unit in triple)
        if len(triple) == 3 and text[0] == "%" and _is_hex(text[1:]):
            out.append(_Unit(triple[0].start, triple[2].end, chr(int(text[1:], 16))))
            index += 3
        else:
            out.append(units[index])
            index += 1
    return out


def _secret_spans(text: str, secrets: Sequence[tuple[str, str]]) -> list[tuple[int, int, str]]:
    """Raw spans of ``text`` that spell a secret, plainly or percent-encoded (several rounds)."""
    units = [_Unit(i, i + 1, char) for i, char in enumerate(text)]
    spans: list[tuple[int, int, str]] = []
    for _ in range(DECODE_ROUNDS + 1):
        decoded = "".join(unit.char for unit in units)
        for secret, variable in secrets:
            start = decoded.find(secret)
            while start >= 0:
                last = start + len(secret) - 1
                spans.append((units[start].start, units[last].end, variable))
                start = decoded.find(secret, start + 1)
        next_units = _decode_units(units)
        if len(next_units) == len(units):
            break
        units = next_units
    # Merge overlapping spans, so every byte of a secret is covered once.
    merged: list[tuple[int, int, str]] = []
    for start, end, variable in sorted(spans):
        if merged and start < merged[-1][1]:
            first_start, first_end, first_variable = merged[-1]
            merged[-1] = (first_start, max(first_end, end), first_variable)
        else:
            merged.append((start, end, variable))
    return merged


def _quote_literal(text: str) -> str:
    if _BARE_WORD.fullmatch(text):
        return text
    if all(" " <= char <= "~" for char in text):
        return "'" + text.replace("'", "'\\''") + "'"
    escaped = "".join(
        f"\\{char}" if char in "\\'" else char if " " <= char <= "~" else f"\\x{ord(char):02x}"
        for char in text
    )
    return f"$'{escaped}'"


def _shell_word(text: str, secrets: Sequence[tuple[str, str]]) -> str:
    pieces: list[str] = []
    position = 0
    for start, end, variable in _secret_spans(text, secrets):
        if start > position:
            pieces.append(_quote_literal(text[position:start]))
        pieces.append(f'"${variable}"')
        position = end
    if position < len(text) or not pieces:
        pieces.append(_quote_literal(text[position:]))
    return "".join(pieces)


def _secret_pairs(token_env_vars: Mapping[str, str]) -> list[tuple[str, str]]:
    """(token, variable) pairs, longest token first, so one containing another goes whole."""
    for variable in token_env_vars.values():
        if not _SHELL_NAME.fullmatch(variable):
            raise ValueError(f"not a shell variable name: {variable!r}")
    return sorted(
        ((token, variable) for token, variable in token_env_vars.items() if token),  # "" is none
        key=lambda pair: -len(pair[0]),
    )


def redact(text: str, token_env_vars: Mapping[str, str]) -> str:
    """``text`` with every spelling of a token (plain or percent-encoded) as ``$VARIABLE``."""
    secrets = _secret_pairs(token_env_vars)
    pieces: list[str] = []
    position = 0
    for start, end, variable in _secret_spans(text, secrets):
        pieces += [text[position:start], f"${variable}"]
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def curl_command(
    request: HarnessRequest,
    base_url: str,
    token_env_vars: Mapping[str, str],
) -> str:
    """A ready-to-run curl command for ``request``, every token replaced by ``"$VARIABLE"``.

    ``token_env_vars`` maps a token's plaintext to the environment variable that holds it.
    """
    secrets = _secret_pairs(token_env_vars)
    words = ["curl", "-sS", "-i", "--http1.1", "--path-as-is", "-g"]
    if request.method == "HEAD":
        words.append("--head")
    elif request.method != "GET" or request.body:
        words += ["-X", _quote_literal(request.method)]
    words.append(_shell_word(base_url.rstrip("/") + request.target, secrets))
    for name, value in request.headers:
        # curl drops a header given as "Name:"; "Name;" is how it sends an empty one.
        header = f"{name}: {value}" if value else f"{name};"
        words += ["-H", _shell_word(header, secrets)]
    if request.body:
        words += ["--data-binary", _shell_word(request.body.decode("latin-1"), secrets)]
    return " ".join(words)

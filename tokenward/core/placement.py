"""Finding a token in a request and rewriting where it stands. Pure functions over raw strings.

Strings carry the request's bytes decoded as Latin-1, so every byte round-trips unchanged: the
rewrite edits the raw request target and never re-encodes what it does not remove. The values
are named tuples: immutable, and cheap to make on every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import NamedTuple

from tokenward.core.layouts import Layout
from tokenward.core.tokens import (
    holds_token_run,
    holds_token_shaped,
    is_token_shaped,
    redact_token_runs,
    token_hint,
)
from tokenward.core.verdicts import ErrorCode, Forward, Placement

AUTH_HEADER = "x-auth-token"
TOKEN_PARAMETER = "token"
IDENTITY_HEADER_PREFIX = "x-tokenward-"
IDENTITY_NAME_HEADER = "x-tokenward-token"
IDENTITY_KIND_HEADER = "x-tokenward-kind"

_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
# Splitting on these (a group keeps the escapes) and mapping each escape through a table does
# all the work in C, a regex match per escape: urllib's `unquote` spends about half a
# microsecond of Python per escape, and per `%` that starts none.
_ESCAPES = re.compile(r"(%[0-9A-Fa-f]{2})")
# Escapes of the unreserved characters (RFC 3986 2.3): letters, digits, `-._~`.
_UNRESERVED_ESCAPES = re.compile(r"(%(?:[46][1-9A-Fa-f]|[57][0-9Aa]|3[0-9]|2[DEde]|5[Ff]|7[Ee]))")
_DECODED_ESCAPES: dict[str, str] = {
    f"%{high}{low}": chr(byte)
    for byte in range(256)
    for high in {f"{byte >> 4:x}", f"{byte >> 4:X}"}
    for low in {f"{byte & 15:x}", f"{byte & 15:X}"}
}
# Double-encoded tokens (`%2573m_pat_…`) are caught too; a few rounds cover any layer that
# decodes again, and the bound keeps hostile input cheap.
_MAX_DECODING_ROUNDS = 4
# Where a token may stand in a record, as written or encoded (see `redact_text`); the
# look-behind starts a match only where a run starts.
_SHORTEST_TOKEN = 23  # `sm_pat_` and 16 letters or digits
_RUN_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_%"
_ENCODABLE_RUN = re.compile(rf"(?<![A-Za-z0-9_%])[A-Za-z0-9_%]{{{_SHORTEST_TOKEN},}}")
# `bytes.translate` marks each byte that may stand in a run with "a", any other with " ".
_RUN_MARKS = bytes(0x61 if chr(byte) in _RUN_CHARACTERS else 0x20 for byte in range(256))
_SHORTEST_RUN_MARKED = b"a" * _SHORTEST_TOKEN
WITHHELD = "<{length} characters withheld: encoded deeper than tokenward decodes>"
# The longest query parameter name that decodes to `token` in one round: each letter escaped.
_ENCODED_TOKEN_PARAMETER_MAX = 3 * len(TOKEN_PARAMETER)


class Request(NamedTuple):
    """The parts of an HTTP request that the token rules read and the rewrite changes.

    `method` as sent (methods are case-sensitive); `body_follows`: on HTTP/2 and 3, the head
    did not end the stream, so DATA may follow (HTTP/1 says so in its header fields).
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body_follows: bool = False


class Identity(NamedTuple):
    """Who an accepted token belongs to, for the `x-tokenward-*` headers sent upstream."""

    name: str
    kind: str


class Candidate(NamedTuple):
    """A value standing in a placement; `position` is the segment, parameter or field index."""

    placement: Placement
    value: str
    position: int


class SpotKind(StrEnum):
    """Where in the request target a misplaced token-shaped string stands."""

    SEGMENT = "segment"  # a whole path segment, at a position the layout does not allow
    INSIDE_SEGMENT = "inside_segment"  # inside a longer segment, or encoded deeper
    TARGET = "target"  # a target with no path segments (`*`, an authority)
    QUERY_NAME = "query_name"
    QUERY_VALUE = "query_value"


class Spot(NamedTuple):
    """The first misplaced token-shaped string: its kind of place, the segment's or query
    item's index, and for a query item its name as sent (it may hold the token itself)."""

    kind: SpotKind
    position: int
    name: str = ""


class Finding(NamedTuple):
    """What the placements of one request hold, and the verdict that needs no store."""

    candidates: tuple[Candidate, ...]
    error: ErrorCode | None
    placement: Placement | None
    # The one value the placements carry, token-shaped or not; None when none or several.
    value: str | None
    # Set with `misplaced_token` only: where the first stray token-shaped string stands.
    misplaced_at: Spot | None = None

    @property
    def token(self) -> str | None:
        """The one well-formed token, when no verdict before the store's rejects the request."""
        return self.value if self.error is None else None

    @property
    def placeable(self) -> str | None:
        """The token the rewrite puts back: the one value, when it is well-formed.

        Only observe mode forwards a request with a verdict before the store's; a stray token
        elsewhere in the target (misplaced) leaves the placements' single token placeable.
        """
        value = self.value
        if value is None or self.error is None:  # no error: the value is a well-formed token
            return value
        return value if is_token_shaped(value) else None

    @property
    def in_url(self) -> bool:
        # One placement named means every candidate stands there: a header holds no URL.
        if self.placement is Placement.HEADER:
            return False
        return any(c.placement is not Placement.HEADER for c in self.candidates)


class UnplaceableTokenError(ValueError):
    """Forwarding in the path was asked for a path whose layout has no place for a token."""


class PathSegments(NamedTuple):
    """A path split on `/`, with a trailing slash set aside so that it moves no segment."""

    raw: tuple[str, ...]
    trailing_slash: bool

    def render(self) -> str:
        return render_path(self.raw, self.trailing_slash)


def render_path(raw: Sequence[str], trailing_slash: bool) -> str:
    """The path of these segments; a trailing slash only after some segment."""
    tail = "/" if trailing_slash and raw else ""
    return "/" + "/".join(raw) + tail


def split_target(target: str) -> tuple[str, str | None]:
    """The path and the query (None when there is no `?`) of a raw request target."""
    path, question, query = target.partition("?")
    return path, (query if question else None)


def join_target(path: str, query: str | None) -> str:
    return path if query is None else f"{path}?{query}"


def split_path(path: str) -> PathSegments | None:
    """The segments of an origin-form path; None for a target such as `*` that has none."""
    if not path.startswith("/"):
        return None
    body = path[1:]
    if not body:
        return PathSegments((), trailing_slash=False)
    trailing_slash = body.endswith("/")
    if trailing_slash:
        body = body[:-1]
    return PathSegments(tuple(body.split("/")), trailing_slash)


def decode_unreserved(segment: str) -> str:
    """The segment with percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2)."""
    return _decode_escapes(_UNRESERVED_ESCAPES, segment) if "%" in segment else segment


def normalized_segments(path: str, segments: PathSegments) -> tuple[str, ...]:
    """The segments of `path` (split as `segments`) with escapes of unreserved characters
    decoded, in one pass over the whole path: no such escape decodes to `/`."""
    if "%" not in path:
        return segments.raw
    decoded = split_path(decode_unreserved(path))
    assert decoded is not None, "decoding keeps the leading slash"
    return decoded.raw


def percent_decode(text: str) -> str:
    """Every `%XX` escape decoded to the byte it names (as a Latin-1 character)."""
    return _decode_escapes(_ESCAPES, text) if "%" in text else text


def _decode_escapes(escapes: re.Pattern[str], text: str) -> str:
    pieces = escapes.split(text)  # text, escape, text, ..., text
    pieces[1::2] = map(_DECODED_ESCAPES.__getitem__, pieces[1::2])
    return "".join(pieces)


def decoded_as_far_as_looked(text: str) -> str:
    """`text` percent-decoded round after round, as far as tokenward looks for tokens."""
    for _ in range(_MAX_DECODING_ROUNDS):
        if "%" not in text:
            break
        decoded = percent_decode(text)
        if len(decoded) == len(text):
            break
        text = decoded
    return text


def holds_token_in_any_decoding(text: str) -> bool:
    """Does `text`, as sent or percent-decoded once or more, hold a token-shaped string?"""
    for _ in range(_MAX_DECODING_ROUNDS):
        if holds_token_shaped(text):
            return True
        if "%" not in text:  # the common case: nothing to decode
            return False
        decoded = percent_decode(text)
        if len(decoded) == len(text):  # no escape: every further round gives the same
            return False
        text = decoded
    return holds_token_shaped(text)


def oversized(request: Request, max_target: int, max_header: int) -> ErrorCode | None:
    """The size limit `request` breaks, if any: a target over `max_target` characters, or a
    header field (name and value together) over `max_header`. Reads lengths only, so it may
    come before anything is decoded."""
    if len(request.target) > max_target:
        return ErrorCode.TARGET_TOO_LONG
    for name, value in request.headers:
        if len(name) + len(value) > max_header:
            return ErrorCode.HEADER_TOO_LARGE
    return None


def withhold_oversized(request: Request, max_target: int, max_header: int) -> Request:
    """`request` with each part over its size limit replaced by how long it was: the record of
    a request refused for its size, whose oversized parts are never decoded nor kept."""
    target = request.target
    if len(target) > max_target:
        target = _withheld(target)
    headers = tuple(
        [
            (name if len(name) <= max_header else _withheld(name), _withheld(value))
            if len(name) + len(value) > max_header
            else (name, value)
            for name, value in request.headers
        ]
    )
    if target is request.target and headers == request.headers:
        return request
    return request._replace(target=target, headers=headers)


def _withheld(text: str) -> str:
    return f"<{len(text)} characters withheld: over tokenward's size limit>"


def find_token(request: Request, layout: Layout) -> Finding:
    """Every value in a placement, and the verdicts of rows 1 to 4 of the contract."""
    path, query = split_target(request.target)
    candidates: list[Candidate] = []
    # A stray token is not in a placement, so its answer names none (`placement` null).
    misplaced: Spot | None = None

    # Without "sm_" or an escape that could decode to it, no segment is or holds a token.
    if "sm_" in path or "%" in path:
        segments = split_path(path)
        if segments is None:
            if holds_token_in_any_decoding(path):
                misplaced = Spot(SpotKind.TARGET, 0)
        else:
            raw_segments = segments.raw
            normalized = normalized_segments(path, segments)
            # Every other segment that could hold a token in some decoding; they are looked
            # at together, so that each round decodes once: no escape spans a `/`, nor a token.
            suspects: list[int] = []
            for index, segment in enumerate(normalized):
                if is_token_shaped(segment):
                    if layout.allows(normalized, index):
                        candidates.append(Candidate(Placement.PATH, segment, index))
                    elif misplaced is None:
                        misplaced = Spot(SpotKind.SEGMENT, index)
                elif "sm_" in (raw := raw_segments[index]) or "%" in raw:
                    suspects.append(index)
            if suspects:
                misplaced = _first_inside_segment(raw_segments, suspects, misplaced)

    if query is not None:
        items = query.split("&")
        suspect_items: list[int] = []
        for index, item in enumerate(items):
            name, _, value = item.partition("=")
            if name == TOKEN_PARAMETER or (
                len(name) <= _ENCODED_TOKEN_PARAMETER_MAX
                and percent_decode(name) == TOKEN_PARAMETER
            ):
                candidates.append(Candidate(Placement.QUERY, percent_decode(value), index))
            elif "sm_" in item or "%" in item:
                suspect_items.append(index)
        if suspect_items and misplaced is None:
            misplaced = _first_in_query(items, suspect_items)

    for index, (name, value) in enumerate(request.headers):
        # The length first: most names are not it, and lower() costs more (same length in Latin-1).
        if len(name) == len(AUTH_HEADER) and name.lower() == AUTH_HEADER:
            for piece in value.split(","):
                candidates.append(Candidate(Placement.HEADER, piece.strip(" \t"), index))

    return _finding(tuple(candidates), misplaced)


def _first_inside_segment(
    raw_segments: tuple[str, ...], suspects: list[int], found: Spot | None
) -> Spot | None:
    """The first of `suspects` (segment indexes) that holds a token in some decoding, if it
    comes before `found`; else `found`."""
    # The common case: one look at all of them together, each round decoding once.
    if found is None and not holds_token_in_any_decoding(
        "/".join([raw_segments[i] for i in suspects])
    ):
        return None
    for index in suspects:
        if found is not None and index > found.position:
            break
        if holds_token_in_any_decoding(raw_segments[index]):
            return Spot(SpotKind.INSIDE_SEGMENT, index)
    # None of them alone holds one only if a token spanned a `/`, which none can: the verdict
    # stands all the same.
    return found or Spot(SpotKind.INSIDE_SEGMENT, suspects[0])


def _first_in_query(items: list[str], suspects: list[int]) -> Spot | None:
    """The first query item of `suspects` that holds a token in some decoding, in its name
    or its value."""
    # Together first, as the segments are: no escape spans a `&`, nor a token.
    if not holds_token_in_any_decoding("&".join([items[i] for i in suspects])):
        return None
    for index in suspects:
        name, _, value = items[index].partition("=")
        if holds_token_in_any_decoding(name):
            return Spot(SpotKind.QUERY_NAME, index, name)
        if holds_token_in_any_decoding(value):
            return Spot(SpotKind.QUERY_VALUE, index, name)
    # As for segments: a token spans no `&` nor `=`; the verdict stands all the same.
    return Spot(SpotKind.QUERY_VALUE, suspects[0], items[suspects[0]].partition("=")[0])


def _finding(candidates: tuple[Candidate, ...], misplaced: Spot | None) -> Finding:
    """The verdict before the store's: misplaced, then ambiguous, missing, malformed."""
    if len(candidates) == 1:  # the common case, without building sets
        value: str | None = candidates[0].value
        values_count = 1
        placement: Placement | None = candidates[0].placement
    else:
        values = {candidate.value for candidate in candidates}
        values_count = len(values)
        value = next(iter(values)) if values_count == 1 else None
        placements = {candidate.placement for candidate in candidates}
        placement = next(iter(placements)) if len(placements) == 1 else None
    if misplaced is not None:
        return Finding(candidates, ErrorCode.MISPLACED_TOKEN, None, value, misplaced)
    if values_count > 1:
        return Finding(candidates, ErrorCode.AMBIGUOUS_TOKEN, placement, value)
    if value is None:
        return Finding(candidates, ErrorCode.MISSING_TOKEN, None, value)
    if not is_token_shaped(value):
        return Finding(candidates, ErrorCode.MALFORMED_TOKEN, placement, value)
    return Finding(candidates, None, placement, value)


def rewrite_request(
    request: Request,
    finding: Finding,
    layout: Layout,
    forward: Forward,
    identity: Identity | None = None,
) -> Request:
    """The request as the upstream receives it under `forward`.

    Every placement is removed; the token is then put back in one place for `header`, `query`
    and `path`, but only when the placements hold a single well-formed token. Client-sent
    `x-tokenward-*` headers are dropped and `identity`, when given, is added.
    Raises UnplaceableTokenError for `path` when the layout has no place in this path.
    """
    if forward is Forward.KEEP:
        return request
    token = finding.placeable
    path_positions: set[int] = set()
    query_positions: set[int] = set()
    for candidate in finding.candidates:
        if candidate.placement is Placement.PATH:
            path_positions.add(candidate.position)
        elif candidate.placement is Placement.QUERY:
            query_positions.add(candidate.position)
    placed_in_path = token if forward is Forward.PATH else None
    placed_in_query = token if forward is Forward.QUERY else None

    target = request.target
    # The common case, a token in the header that stays out of the URL, leaves it as it came.
    placed_in_url = placed_in_path is not None or placed_in_query is not None
    if path_positions or query_positions or placed_in_url:
        path, query = split_target(target)
        if placed_in_path is not None:
            path = _place_in_path(path, path_positions, layout, placed_in_path)
        elif path_positions:
            path = _remove_segments(path, path_positions)
        if query_positions or placed_in_query is not None:
            query = _rewrite_query(query, query_positions, placed_in_query)
        target = join_target(path, query)

    # The length first: both gateway names are 12 characters, most fields' names are shorter.
    headers = [
        field
        for field in request.headers
        if len(field[0]) < len(AUTH_HEADER) or not _is_gateway_header(field[0])
    ]
    if token is not None:
        # The request's own token in another header (Referer, Cookie, ...) goes as its hint.
        # Without "sm_" or an escape a value cannot hold it: one look at all of them, in C,
        # spares most requests the loop.
        for index, (name, value) in enumerate(headers):
            if "sm_" in value or "%" in value:
                headers[index] = (name, hide_token(value, token, _hint_bytes(token)))
    if forward is Forward.HEADER and token is not None:
        headers.append((AUTH_HEADER, token))
    if identity is not None:
        headers.append((IDENTITY_NAME_HEADER, identity.name))
        headers.append((IDENTITY_KIND_HEADER, identity.kind))
    return Request(request.method, target, tuple(headers))


def hide_token(text: str, token: str, hint: str) -> str:
    """`text` with every occurrence of `token`, as written or percent-encoded (any of its
    characters escaped, in any case, over up to `_MAX_DECODING_ROUNDS` rounds), replaced by
    `hint`; every other character stays as it was."""
    text = text.replace(token, hint)
    if not _decodes_to_hold(text, token):
        return text
    # Each round's text, and where each of its characters came from: character i of a round
    # stands for text[bounds[i]:bounds[i + 1]].
    decoded, bounds = text, list(range(len(text) + 1))
    regions: list[tuple[int, int]] = []
    for _ in range(_MAX_DECODING_ROUNDS):
        if "%" not in decoded:
            break
        decoded, bounds = _decode_tracking(decoded, bounds)
        start = decoded.find(token)
        while start >= 0:
            regions.append((bounds[start], bounds[start + len(token)]))
            start = decoded.find(token, start + 1)  # a copy may overlap the next by "s"/"sm"
    pieces: list[str] = []
    kept_from = 0
    for start, end in sorted(regions):
        if start >= kept_from:
            pieces += (text[kept_from:start], hint)
        kept_from = max(kept_from, end)  # overlapping copies share one hint
    pieces.append(text[kept_from:])
    return "".join(pieces)


def _decodes_to_hold(text: str, token: str) -> bool:
    """Does `text` percent-decoded once or more (up to `_MAX_DECODING_ROUNDS`) hold `token`?"""
    for _ in range(_MAX_DECODING_ROUNDS):
        if "%" not in text:
            return False
        decoded = percent_decode(text)
        if len(decoded) == len(text):
            return False
        if token in decoded:
            return True
        text = decoded
    return False


def _decode_tracking(text: str, bounds: list[int]) -> tuple[str, list[int]]:
    """One round of `percent_decode`, and the bounds of its characters (see `hide_token`):
    an escape's character stands for what its three characters stood for."""
    kept: list[int] = []
    position = 0
    for escape in _PERCENT_ESCAPE.finditer(text):
        start = escape.start()
        kept += bounds[position : start + 1]
        position = start + 3
    kept += bounds[position:]
    return percent_decode(text), kept


def _is_gateway_header(name: str) -> bool:
    lowercase_name = name.lower()
    return lowercase_name == AUTH_HEADER or lowercase_name.startswith(IDENTITY_HEADER_PREFIX)


def _remove_segments(path: str, positions: set[int]) -> str:
    segments = split_path(path)
    assert segments is not None, "path positions come from an origin-form path"
    kept = [raw for index, raw in enumerate(segments.raw) if index not in positions]
    return render_path(kept, segments.trailing_slash)


def _place_in_path(path: str, positions: set[int], layout: Layout, token: str) -> str:
    segments = split_path(path)
    if positions:
        assert segments is not None, "path positions come from an origin-form path"
        # A token already at an allowed position stays there; a second copy (generic layout,
        # first and last) goes, keeping the canonical one.
        normalized = normalized_segments(path, segments)
        canonical = [i for i in positions if layout.is_canonical(normalized, i)]
        kept = canonical[0] if canonical else min(positions)
        return _remove_segments(path, positions - {kept})
    if segments is None:
        raise UnplaceableTokenError(f"no path segments to place a token in: {path!r}")
    index = layout.insertion_index(normalized_segments(path, segments))
    if index is None:
        raise UnplaceableTokenError(
            f"the {layout.name} layout has no place for a token in {path!r}"
        )
    return render_path(
        (*segments.raw[:index], token, *segments.raw[index:]), segments.trailing_slash
    )


def _rewrite_query(
    query: str | None, positions: set[int], appended_token: str | None
) -> str | None:
    # An empty query (`/p?`) has no parameters: appending to it must not add an empty one.
    items = query.split("&") if query else []
    kept = [item for index, item in enumerate(items) if index not in positions]
    if appended_token is not None:
        kept.append(f"{TOKEN_PARAMETER}={appended_token}")
    rewritten = "&".join(kept)
    # Removing the last parameter drops the `?` too.
    return rewritten or None


def redact_request(request: Request) -> Request:
    """The request with every token it holds, in any placement or decoding, shown as its hint:
    the method, the target, header names and values (see `redact_text`).

    For records only (saved flows, printed flows, logs): the hint's `…` is written as UTF-8
    bytes, in keeping with the Latin-1 convention of these strings.
    """
    method = redact_text(request.method, _hint_bytes)
    target = redact_text(request.target, _hint_bytes)
    headers = tuple(
        [
            (redact_text(name, _hint_bytes), redact_text(value, _hint_bytes))
            for name, value in request.headers
        ]
    )
    if method == request.method and target == request.target and headers == request.headers:
        return request
    return request._replace(method=method, target=target, headers=headers)


def redact_text(text: str, render: Callable[[str], str] = token_hint) -> str:
    """`text` as a record may show it: every token in it, as written or percent-encoded, shown
    as `render(token)`.

    A token, however deeply encoded, stands whole in one run of letters, digits, `_` and `%`
    (an escape adds only `%` and hex digits), so each such run is looked at on its own: one
    that holds a token in some decoding is shown decoded that far, the tokens as hints; one
    that still decodes further after the rounds tokenward decodes is withheld, since it may
    hide a token deeper. Every run is decoded a bounded number of times: linear in `text`.
    """
    if "sm_" not in text and "%" not in text:
        return text
    return _ENCODABLE_RUN.sub(lambda match: _redact_run(match.group(0), render), text)


def redact_bytes(data: bytes) -> bytes:
    """`data` (a body, a header) as a record may show it, read as Latin-1 (see `redact_text`)."""
    # Passes in C settle most bodies: no token in clear (memchr for "_" first, much faster
    # than looking for "sm_", and most bodies have none), and no run long enough to hide an
    # encoded one.
    if (b"_" not in data or b"sm_" not in data) and (
        b"%" not in data or _SHORTEST_RUN_MARKED not in data.translate(_RUN_MARKS)
    ):
        return data
    text = data.decode("latin-1")
    redacted = redact_text(text, _hint_bytes)
    return data if redacted == text else redacted.encode("latin-1")


def _redact_run(run: str, render: Callable[[str], str]) -> str:
    if "%" not in run:
        return redact_token_runs(run, render)
    decodings = [run]
    for _ in range(_MAX_DECODING_ROUNDS):
        decoded = percent_decode(decodings[-1])
        if decoded == decodings[-1]:
            break
        decodings.append(decoded)
    else:
        if percent_decode(decodings[-1]) != decodings[-1]:
            return WITHHELD.format(length=len(run))
    # Decoding keeps every token it finds (a token holds no `%`): the deepest decoding that
    # holds one shows them all.
    for decoded in reversed(decodings):
        if holds_token_run(decoded):
            return redact_token_runs(decoded, render)
    return run


def _hint_bytes(token: str) -> str:
    return token_hint(token).encode("utf-8").decode("latin-1")

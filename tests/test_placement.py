"""Finding a token in a request (verdict rows 1-4) and the rewrite the upstream receives.

Expected values are written from the contract: the tables below spell them out, and the
property tests build requests from known parts so the expected verdict and the expected
upstream request follow from how the request was put together, never from the code under test.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.layouts import Layout, layout_named
from tokenward.core.placement import (
    Finding,
    Identity,
    Request,
    UnplaceableTokenError,
    decode_unreserved,
    find_token,
    hide_token,
    holds_token_in_any_decoding,
    oversized,
    percent_decode,
    redact_bytes,
    redact_request,
    redact_text,
    rewrite_request,
    split_path,
    split_target,
    withhold_oversized,
)
from tokenward.core.verdicts import ErrorCode, Forward, Placement

BASE62 = string.ascii_letters + string.digits
KINDS = ("pat", "aat", "sat")
LAYOUT_NAMES = ("generic", "ipfs", "avalanche", "fuji")
CCHAIN = (("ext", "bc", "C", "rpc"), ("ext", "bc", "C", "ws"))

T = "sm_pat_A1b2C3d4E5f6G7h8"  # 16-character body
T2 = "sm_aat_" + "Zz9" * 10 + "yQ"  # 32-character body
T3 = "sm_sat_" + "q" * 64
T_ENC = "%73m_pat_A1b2C3d4E5f6G7h8"  # T with its `s` percent-encoded (unreserved)
T_DOUBLE = "%2573m_pat_A1b2C3d4E5f6G7h8"  # T double-encoded: `%25` is `%`, not unreserved

MISPLACED = ErrorCode.MISPLACED_TOKEN
AMBIGUOUS = ErrorCode.AMBIGUOUS_TOKEN
MISSING = ErrorCode.MISSING_TOKEN
MALFORMED = ErrorCode.MALFORMED_TOKEN
HEADER, QUERY, PATH = Placement.HEADER, Placement.QUERY, Placement.PATH

Headers = tuple[tuple[str, str], ...]

# --- independent oracles -------------------------------------------------------------------

_SHAPE = r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,64}"
_TOKEN_RE = re.compile(_SHAPE)
_HELD_RE = re.compile(r"(?<![A-Za-z0-9])" + _SHAPE + r"(?![A-Za-z0-9])")
# The project decodes a value as sent and up to four more times (double and triple encoding are
# caught; the bound keeps hostile input cheap). The oracle uses the same bound.
_DECODINGS = 4


def is_token(value: str) -> bool:
    return _TOKEN_RE.fullmatch(value) is not None


def held_in_any_decoding(text: str) -> bool:
    for _ in range(_DECODINGS + 1):
        if _HELD_RE.search(text):
            return True
        decoded = unquote(text, encoding="latin-1")
        if decoded == text:
            return False
        text = decoded
    return False


def decodings(text: str) -> list[str]:
    """`text` as sent and percent-decoded once to four times (fewer once nothing changes)."""
    found = [text]
    for _ in range(_DECODINGS):
        decoded = unquote(found[-1], encoding="latin-1")
        if decoded == found[-1]:
            break
        found.append(decoded)
    return found


def carries(text: str, token: str) -> bool:
    """Does `text` hold `token` anywhere, as sent or in any decoding the project looks at?"""
    return any(token in decoded for decoded in decodings(text))


def hint_of(token: str) -> str:
    """The display hint of `token` as the rewrite writes it: UTF-8 bytes as Latin-1 text."""
    return f"{token[:7]}\u2026{token[-4:]}".encode().decode("latin-1")


def encode_all(text: str) -> str:
    return "".join(f"%{ord(ch):02X}" for ch in text)


def render_path(segments: Sequence[str], trailing_slash: bool) -> str:
    tail = "/" if trailing_slash and segments else ""
    return "/" + "/".join(segments) + tail


def render_target(path: str, items: Sequence[str]) -> str:
    return path + ("?" + "&".join(items) if items else "")


def auth_values(headers: Headers) -> list[str]:
    return [value for name, value in headers if name.lower() == "x-auth-token"]


def gateway_fields(headers: Headers) -> list[tuple[str, str]]:
    return sorted(
        (name.lower(), value) for name, value in headers if name.lower().startswith("x-tokenward-")
    )


def other_fields(headers: Headers) -> list[tuple[str, str]]:
    return [
        (name, value)
        for name, value in headers
        if name.lower() != "x-auth-token" and not name.lower().startswith("x-tokenward-")
    ]


# --- helpers -------------------------------------------------------------------------------


def req(target: str, *headers: tuple[str, str], method: str = "GET") -> Request:
    return Request(method, target, tuple(headers))


def find(target: str, *headers: tuple[str, str], layout: str = "generic") -> Finding:
    return find_token(req(target, *headers), layout_named(layout))


def rewrite(
    layout: str,
    forward: Forward,
    target: str,
    *headers: tuple[str, str],
    identity: Identity | None = None,
) -> Request:
    request = req(target, *headers)
    finding = find_token(request, layout_named(layout))
    return rewrite_request(request, finding, layout_named(layout), forward, identity)


def test_the_example_tokens_are_what_the_tests_assume() -> None:
    assert is_token(T) and is_token(T2) and is_token(T3)
    assert unquote(T_ENC) == T
    assert unquote(unquote(T_DOUBLE)) == T
    assert len({T, T2, T3}) == 3


# --- target and path parts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/p", "/p", None),
        ("/p?", "/p", ""),
        ("/p?a=1", "/p", "a=1"),
        ("/p?a=1?b=2", "/p", "a=1?b=2"),
        ("*", "*", None),
        ("", "", None),
        ("?x", "", "x"),
    ],
)
def test_split_target(target: str, path: str, query: str | None) -> None:
    assert split_target(target) == (path, query)


@pytest.mark.parametrize(
    ("path", "segments", "trailing"),
    [
        ("/", (), False),
        ("/a", ("a",), False),
        ("/a/", ("a",), True),
        ("/a/b", ("a", "b"), False),
        ("//", ("",), True),
        ("/a//", ("a", ""), True),
        ("//a", ("", "a"), False),
        ("/ext/bc/C/rpc/T/", ("ext", "bc", "C", "rpc", "T"), True),
    ],
)
def test_split_path_sets_one_trailing_slash_aside(
    path: str, segments: tuple[str, ...], trailing: bool
) -> None:
    parts = split_path(path)
    assert parts is not None
    assert parts.raw == segments
    assert parts.trailing_slash is trailing
    assert parts.render() == path


@pytest.mark.parametrize("path", ["*", "", "a/b", "http://host/a"])
def test_split_path_of_a_target_without_segments(path: str) -> None:
    assert split_path(path) is None


@given(st.text(st.characters(max_codepoint=255)).map(lambda s: "/" + s.replace("?", "")))
@example("//a//")
def test_split_path_renders_back_byte_for_byte(path: str) -> None:
    parts = split_path(path)
    assert parts is not None
    assert parts.render() == path


@pytest.mark.parametrize(
    ("segment", "decoded"),
    [
        ("%73m_pat_x", "sm_pat_x"),
        ("%41%7a%30%2D%2e%5F%7E", "Az0-._~"),
        ("%7e%5f", "~_"),
        ("%2F", "%2F"),
        ("%2f%25%20%3D%26%3F%C3%A9", "%2f%25%20%3D%26%3F%C3%A9"),
        ("%2573", "%2573"),
        ("%4", "%4"),
        ("%zz%", "%zz%"),
        ("plain", "plain"),
    ],
)
def test_decode_unreserved(segment: str, decoded: str) -> None:
    assert decode_unreserved(segment) == decoded


@pytest.mark.parametrize(
    ("text", "decoded"),
    [
        ("a%2Fb", "a/b"),
        ("%e9%E9", "\u00e9\u00e9"),  # every escape is one Latin-1 character
        ("a+b", "a+b"),
        ("%2573", "%73"),
        ("%", "%"),
        ("%zz", "%zz"),
        ("plain", "plain"),
    ],
)
def test_percent_decode(text: str, decoded: str) -> None:
    assert percent_decode(text) == decoded


@given(st.text(st.characters(max_codepoint=255), max_size=30))
def test_percent_decode_undoes_encoding_every_byte(text: str) -> None:
    assert percent_decode(encode_all(text)) == text


@given(st.text("ABCxyz019-._~", max_size=30), st.data())
def test_decode_unreserved_undoes_encoding_unreserved_characters(
    text: str, data: st.DataObject
) -> None:
    spelled = "".join(
        f"%{ord(ch):02{data.draw(st.sampled_from('Xx'))}}" if data.draw(st.booleans()) else ch
        for ch in text
    )
    assert decode_unreserved(spelled) == text


@pytest.mark.parametrize(
    ("text", "holds"),
    [
        (T, True),
        (f"a%2F{T}", True),
        (f"a%2f{T}", True),
        (T_DOUBLE, True),
        ("%252573" + T[1:], True),
        (f"x{T}", False),
        (f"x%2E{T}", True),
        ("sm_pat_" + "a" * 65, False),
        ("%2F" + "sm_pat_" + "a" * 65, False),
        ("nothing", False),
    ],
)
def test_holds_token_in_any_decoding(text: str, holds: bool) -> None:
    assert holds_token_in_any_decoding(text) is holds


# Text where escapes, backslashes (the decoder's own escape character) and characters past
# Latin-1 stand near each other.
DECODER_PIECES = st.one_of(
    st.sampled_from(["%", "%%", "%2", "%25", "%41", "%4a", "%5C", "%5c", "%C3%A9", "%zz", "%7E"]),
    st.sampled_from(["\\", "\\x", "\\x41", "\\u0041", "\\N{DASH}", "\\n", "x", "2", "F"]),
    st.characters(),
)


@given(st.lists(DECODER_PIECES, max_size=12).map("".join))
@example("\\x41%41\\")
@example("%%41%4%")
@example("\u0100%41\udc80%2")
@example("%" * 5)
def test_percent_decode_is_urllibs_unquote(text: str) -> None:
    assert percent_decode(text) == unquote(text, encoding="latin-1")


def decode_unreserved_oracle(segment: str) -> str:
    unreserved = string.ascii_letters + string.digits + "-._~"

    def decode(match: re.Match[str]) -> str:
        character = chr(int(match.group(1), 16))
        return character if character in unreserved else match.group(0)

    return re.sub(r"%([0-9A-Fa-f]{2})", decode, segment)


@given(st.lists(DECODER_PIECES, max_size=12).map("".join), st.integers(0, 0xFF), st.booleans())
@example("%2D%2e%5F%7e%5f%7E%30%39%41%5A%61%7a", 0, False)
def test_decode_unreserved_decodes_exactly_the_unreserved_escapes(
    text: str, byte: int, lower: bool
) -> None:
    escape = f"%{byte:02x}" if lower else f"%{byte:02X}"
    for segment in (text, escape, text + escape + text):
        assert decode_unreserved(segment) == decode_unreserved_oracle(segment)


@given(st.lists(DECODER_PIECES | st.sampled_from([T, T_ENC, T_DOUBLE, "/", "&"]), max_size=8))
@example([T_DOUBLE.replace("%25", "%2525")])
@example(["%25252573" + T[1:]])
def test_holds_token_in_any_decoding_agrees_with_the_oracle(pieces: list[str]) -> None:
    text = "".join(pieces)
    assert holds_token_in_any_decoding(text) is held_in_any_decoding(text)


@pytest.mark.parametrize(
    "target",
    [
        # The parts are looked at together, but nothing spans a separator.
        "/a%25/73m_pat_A1b2C3d4E5f6G7h8",
        "/a%2/573m_pat_A1b2C3d4E5f6G7h8",
        "/graphql?a=%25&73m_pat_A1b2C3d4E5f6G7h8",
        "/graphql?a=sm_pat_A1b2&C3d4E5f6G7h8",
    ],
)
def test_no_token_is_found_across_segments_or_items(target: str) -> None:
    assert find(target).error is MISSING


# --- verdicts of rows 1-4: examples --------------------------------------------------------

VERDICTS: list[tuple[str, str, Headers, ErrorCode | None, Placement | None, str | None]] = [
    # layout, target, headers, error, placement, the one value
    # row 1: misplaced, anywhere in the target but a placement; a stray token stands in no
    # placement, so the answer names none
    ("generic", f"/p?q={T}", (), MISPLACED, None, None),
    ("generic", f"/p?{T}=1", (), MISPLACED, None, None),
    ("generic", f"/p?{T}", (), MISPLACED, None, None),
    ("generic", f"/p?a=1&x.{T}.json=2", (), MISPLACED, None, None),
    ("generic", f"/p?q=a%2F{T}", (), MISPLACED, None, None),
    ("generic", f"/p?q=%2F{T}", (), MISPLACED, None, None),
    ("generic", f"/p?q={T_DOUBLE}", (), MISPLACED, None, None),
    ("generic", f"/p?q={T_ENC}", (), MISPLACED, None, None),
    ("generic", f"/p?q={encode_all(T)}", (), MISPLACED, None, None),
    ("generic", f"/p?Token={T}", (), MISPLACED, None, None),
    ("generic", f"/p?TOKEN={T}", (), MISPLACED, None, None),
    ("generic", f"/p?tokens={T}", (), MISPLACED, None, None),
    ("generic", f"/p?t%256Fken={T}", (), MISPLACED, None, None),
    ("generic", f"/p?token%3D={T}", (), MISPLACED, None, None),
    ("generic", f"/p?token={T}&q={T}", (), MISPLACED, None, None),
    ("generic", f"/a/{T}/b", (), MISPLACED, None, None),
    ("generic", f"/a/{T_ENC}/b", (), MISPLACED, None, None),
    ("generic", f"/a/{T}/b/", (), MISPLACED, None, None),
    ("generic", f"/x.{T}.json", (), MISPLACED, None, None),
    ("generic", f"/{T}.json", (), MISPLACED, None, None),
    ("generic", f"/graphql/{T};v=1", (), MISPLACED, None, None),
    ("generic", f"/a%2F{T}", (), MISPLACED, None, None),
    ("generic", f"/{T}%2Fb", (), MISPLACED, None, None),
    ("generic", f"/x%2E{T}", (), MISPLACED, None, None),
    ("generic", f"/{T_DOUBLE}", (), MISPLACED, None, None),
    ("generic", f"/a/{T_DOUBLE}", (), MISPLACED, None, None),
    ("generic", f"/{T}/{T_DOUBLE}", (), MISPLACED, None, None),
    ("ipfs", f"/api/{T}", (), MISPLACED, None, None),
    ("ipfs", f"/api/v0/version/{T}", (), MISPLACED, None, None),
    ("ipfs", f"/{T}/{T}", (), MISPLACED, None, None),
    ("avalanche", f"/{T}", (), MISPLACED, None, None),
    ("avalanche", f"/{T}/ext/bc/C/rpc", (), MISPLACED, None, None),
    ("avalanche", f"/ext/bc/C/rpc/{T}/extra", (), MISPLACED, None, None),
    ("avalanche", f"/ext/bc/C/rpc/{T}//", (), MISPLACED, None, None),
    ("avalanche", f"/ext/bc/C/http/{T}", (), MISPLACED, None, None),
    ("avalanche", f"/ext/bc/X/rpc/{T}", (), MISPLACED, None, None),
    ("fuji", f"/ext/bc/C/{T}", (), MISPLACED, None, None),
    ("fuji", f"/ext/bc/C/rpc/x/{T}", (), MISPLACED, None, None),
    # row 1 comes before every other row
    ("generic", f"/a/{T}/b", (("x-auth-token", T2),), MISPLACED, None, None),
    ("generic", f"/p?token={T}&q={T2}", (), MISPLACED, None, None),
    ("generic", f"/p?q={T}", (("x-auth-token", T),), MISPLACED, None, None),
    ("ipfs", f"/{T}/x/{T}", (), MISPLACED, None, None),
    # not token-shaped, not held: ordinary segments and parameters
    ("generic", "/a/sm_pat_" + "a" * 65 + "/b", (), MISSING, None, None),
    ("generic", f"/a/x{T}/b", (), MISSING, None, None),
    ("generic", f"/a/{T.upper()}/b", (), MISSING, None, None),
    ("generic", "/a/sm_pat_short/b", (), MISSING, None, None),
    ("generic", "/p?q=sm_pat_" + "a" * 65, (), MISSING, None, None),
    ("generic", "/p?q=7" + T, (), MISSING, None, None),
    # headers other than x-auth-token are not placements and are not looked at
    ("generic", "/p", (("Authorization", f"Bearer {T}"),), MISSING, None, None),
    ("generic", "/p", (("x-auth-tokens", T),), MISSING, None, None),
    ("generic", "/p", (("Cookie", f"token={T}"),), MISSING, None, None),
    # row 2: ambiguous, across and within placements
    ("generic", f"/p?token={T2}", (("x-auth-token", T),), AMBIGUOUS, None, None),
    ("generic", f"/{T2}", (("x-auth-token", T),), AMBIGUOUS, None, None),
    ("generic", f"/{T}?token={T2}", (), AMBIGUOUS, None, None),
    ("generic", "/p", (("x-auth-token", T), ("x-auth-token", T2)), AMBIGUOUS, HEADER, None),
    ("generic", "/p", (("x-auth-token", f"{T}, {T2}"),), AMBIGUOUS, HEADER, None),
    ("generic", "/p", (("x-auth-token", f"{T},{T2}"),), AMBIGUOUS, HEADER, None),
    ("generic", "/p", (("X-Auth-Token", T), ("x-auth-token", "")), AMBIGUOUS, HEADER, None),
    ("generic", "/p", (("x-auth-token", T), ("x-auth-token", "nope")), AMBIGUOUS, HEADER, None),
    ("generic", f"/p?token={T}&token={T2}", (), AMBIGUOUS, QUERY, None),
    ("generic", f"/p?token=&token={T}", (), AMBIGUOUS, QUERY, None),
    ("generic", f"/p?token={T}&token", (), AMBIGUOUS, QUERY, None),
    ("generic", "/p?token=a&token=b", (), AMBIGUOUS, QUERY, None),
    ("generic", f"/p?token={T}&token={T.upper()}", (), AMBIGUOUS, QUERY, None),
    ("generic", f"/{T}/x/{T2}", (), AMBIGUOUS, PATH, None),
    ("generic", f"/{T}/{T2}", (), AMBIGUOUS, PATH, None),
    ("generic", f"/{T}", (("x-auth-token", ""),), AMBIGUOUS, None, None),
    ("generic", f"/p?token={T}", (("x-auth-token", "junk"),), AMBIGUOUS, None, None),
    # the same value repeated is fine
    ("generic", f"/{T}/x/{T}?token={T}", (("X-AUTH-TOKEN", T),), None, None, T),
    ("generic", "/p", (("x-auth-token", f"{T}, {T}"),), None, HEADER, T),
    ("generic", "/p", (("x-auth-token", f" {T}\t"),), None, HEADER, T),
    ("generic", "/p", (("x-auth-token", T), ("X-Auth-Token", T)), None, HEADER, T),
    ("generic", f"/p?token={T}&token={T}", (), None, QUERY, T),
    ("generic", f"/p?token={T}&t%6Fken={T_ENC}", (), None, QUERY, T),
    ("generic", f"/{T}/x/{T_ENC}", (), None, PATH, T),
    ("generic", f"/{T}/{T}", (), None, PATH, T),
    ("generic", "/p?token=a&token=a", (), MALFORMED, QUERY, "a"),
    # row 3: missing
    ("generic", "/", (), MISSING, None, None),
    ("generic", "*", (), MISSING, None, None),
    ("generic", "/p?q=1&flag", (), MISSING, None, None),
    ("generic", "/p?Token=abc&tokens=1", (), MISSING, None, None),
    ("ipfs", "/api/v0/version", (), MISSING, None, None),
    ("avalanche", "/ext/bc/C/rpc", (), MISSING, None, None),
    # row 4: malformed, the one value not token-shaped
    ("generic", "/p", (("x-auth-token", ""),), MALFORMED, HEADER, ""),
    ("generic", "/p", (("x-auth-token", "   "),), MALFORMED, HEADER, ""),
    ("generic", "/p", (("x-auth-token", f"Bearer {T}"),), MALFORMED, HEADER, f"Bearer {T}"),
    ("generic", "/p", (("x-auth-token", "sm_pat_short"),), MALFORMED, HEADER, "sm_pat_short"),
    ("generic", "/p", (("x-auth-token", T.upper()),), MALFORMED, HEADER, T.upper()),
    ("generic", "/p?token=", (), MALFORMED, QUERY, ""),
    ("generic", "/p?a=1&token&b=2", (), MALFORMED, QUERY, ""),
    ("generic", "/p?token=abc", (), MALFORMED, QUERY, "abc"),
    ("generic", "/p?token=sm_pat_" + "a" * 65, (), MALFORMED, QUERY, "sm_pat_" + "a" * 65),
    ("generic", "/p?token=a%20b", (), MALFORMED, QUERY, "a b"),
    # placements: header name case-insensitive, query name compared after percent-decoding
    ("generic", "/p", (("X-AUTH-TOKEN", T),), None, HEADER, T),
    ("generic", "/p", (("x-Auth-Token", T),), None, HEADER, T),
    ("generic", f"/p?t%6Fken={T}", (), None, QUERY, T),
    ("generic", f"/p?%74%6F%6B%65%6E={T}", (), None, QUERY, T),
    ("generic", f"/p?%74%6f%6b%65%6e={T}", (), None, QUERY, T),
    ("generic", f"/p?token={T_ENC}", (), None, QUERY, T),
    ("generic", f"/p?token={encode_all(T)}", (), None, QUERY, T),
    ("generic", f"/p?a=1&token={T}&b=2", (), None, QUERY, T),
    # path: allowed positions, percent-encoded unreserved characters, trailing slash
    ("generic", f"/{T}", (), None, PATH, T),
    ("generic", f"/{T}/", (), None, PATH, T),
    ("generic", f"/{T}/graphql", (), None, PATH, T),
    ("generic", f"/graphql/{T}", (), None, PATH, T),
    ("generic", f"/graphql/{T}/", (), None, PATH, T),
    ("generic", f"/{T_ENC}", (), None, PATH, T),
    ("generic", "/%73%6D%5Fpat%5F" + T[7:], (), None, PATH, T),
    ("generic", "/%73%6d%5fpat%5f" + T[7:], (), None, PATH, T),
    ("ipfs", f"/{T}/api/v0/version", (), None, PATH, T),
    ("ipfs", f"/{T_ENC}/api/v0/version", (), None, PATH, T),
    ("ipfs", f"/{T}", (), None, PATH, T),
    ("avalanche", f"/ext/bc/C/rpc/{T}", (), None, PATH, T),
    ("avalanche", f"/ext/bc/C/rpc/{T}/", (), None, PATH, T),
    ("avalanche", f"/ext/bc/C/ws/{T}", (), None, PATH, T),
    ("avalanche", f"/ext/bc/C/rpc/{T_ENC}", (), None, PATH, T),
    ("avalanche", f"/%65xt/bc/C/rpc/{T}", (), None, PATH, T),
    ("fuji", f"/ext/bc/C/rpc/{T}", (), None, PATH, T),
    ("fuji", f"/ext/bc/C/ws/{T}/", (), None, PATH, T),
    ("generic", f"/{T3}", (), None, PATH, T3),
    ("avalanche", f"/ext/bc/C/rpc?token={T}", (), None, QUERY, T),
    ("avalanche", "/whatever", (("x-auth-token", T2),), None, HEADER, T2),
]


@pytest.mark.parametrize(("layout", "target", "headers", "error", "placement", "value"), VERDICTS)
def test_verdict(
    layout: str,
    target: str,
    headers: Headers,
    error: ErrorCode | None,
    placement: Placement | None,
    value: str | None,
) -> None:
    finding = find(target, *headers, layout=layout)
    assert finding.error == error
    assert finding.placement == placement
    if value is not None:
        assert finding.value == value
    assert finding.token == (value if error is None else None)
    if error is MISSING:
        assert finding.candidates == ()


@pytest.mark.parametrize(
    ("target", "headers", "in_url"),
    [
        ("/p", (("x-auth-token", T),), False),
        (f"/p?token={T}", (), True),
        (f"/{T}", (), True),
        (f"/{T}", (("x-auth-token", T),), True),
        ("/p", (), False),
    ],
)
def test_in_url(target: str, headers: Headers, in_url: bool) -> None:
    assert find(target, *headers).in_url is in_url


def test_the_same_token_with_and_without_encoding_is_one_value() -> None:
    plain = find(f"/{T}")
    encoded = find(f"/{T_ENC}")
    assert plain.token == encoded.token == T
    assert plain.placement == encoded.placement == PATH


@pytest.mark.parametrize(
    ("layout", "with_slash", "without_slash"),
    [
        ("avalanche", f"/ext/bc/C/rpc/{T}/", f"/ext/bc/C/rpc/{T}"),
        ("fuji", f"/ext/bc/C/ws/{T}/", f"/ext/bc/C/ws/{T}"),
        ("generic", f"/graphql/{T}/", f"/graphql/{T}"),
        ("ipfs", f"/{T}/", f"/{T}"),
        ("ipfs", f"/api/{T}/", f"/api/{T}"),
    ],
)
def test_a_trailing_slash_does_not_move_a_segment(
    layout: str, with_slash: str, without_slash: str
) -> None:
    first = find(with_slash, layout=layout)
    second = find(without_slash, layout=layout)
    assert (first.error, first.placement, first.token) == (
        second.error,
        second.placement,
        second.token,
    )


# --- rewrite: examples ---------------------------------------------------------------------

STRIP, FHEADER, FQUERY, FPATH, KEEP = (
    Forward.STRIP,
    Forward.HEADER,
    Forward.QUERY,
    Forward.PATH,
    Forward.KEEP,
)
AUTH = ("x-auth-token", T)

REWRITES: list[tuple[str, Forward, str, Headers, str, list[str]]] = [
    # layout, forward, target, headers, target upstream, x-auth-token values upstream
    # the contract's examples
    ("ipfs", STRIP, f"/{T}/api/v0/version", (), "/api/v0/version", []),
    ("avalanche", STRIP, f"/ext/bc/C/rpc/{T}", (), "/ext/bc/C/rpc", []),
    ("avalanche", STRIP, f"/ext/bc/C/rpc/{T}/", (), "/ext/bc/C/rpc/", []),
    ("fuji", STRIP, f"/ext/bc/C/ws/{T}/", (), "/ext/bc/C/ws/", []),
    ("generic", STRIP, f"/{T}", (), "/", []),
    ("generic", STRIP, f"/p?token={T}", (), "/p", []),
    (
        "ipfs",
        STRIP,
        f"/api/v0/cat?arg=/ipfs/Qm%2Fx&flag&b=a+b&token={T}",
        (),
        "/api/v0/cat?arg=/ipfs/Qm%2Fx&flag&b=a+b",
        [],
    ),
    # more stripping
    ("generic", STRIP, f"/{T}/", (), "/", []),
    ("generic", STRIP, f"/{T}/graphql", (), "/graphql", []),
    ("generic", STRIP, f"/graphql/{T}", (), "/graphql", []),
    ("generic", STRIP, f"/graphql/{T}/", (), "/graphql/", []),
    ("generic", STRIP, f"/{T}/a%2Fb/{T_ENC}", (), "/a%2Fb", []),
    ("generic", STRIP, f"//{T}", (), "/", []),
    ("generic", STRIP, f"/{T}//", (), "//", []),
    ("generic", STRIP, f"/p?token={T}&a=1", (), "/p?a=1", []),
    ("generic", STRIP, f"/p?a=%2F&token={T}&b", (), "/p?a=%2F&b", []),
    ("generic", STRIP, f"/p?t%6Fken={T_ENC}&a=A+B%20", (), "/p?a=A+B%20", []),
    ("generic", STRIP, f"/p?token={T}&token={T}", (), "/p", []),
    ("generic", STRIP, "/p?a=1", (AUTH, ("X-Auth-Token", T)), "/p?a=1", []),
    ("generic", STRIP, "/p?", (AUTH,), "/p?", []),
    ("ipfs", STRIP, f"/{T}?token={T}", (AUTH,), "/", []),
    # header
    ("generic", FHEADER, f"/graphql?token={T}&a=1", (), "/graphql?a=1", [T]),
    ("ipfs", FHEADER, f"/{T_ENC}/api/v0/version", (), "/api/v0/version", [T]),
    ("generic", FHEADER, "/x", (("X-Auth-Token", f"{T}, {T}"), AUTH), "/x", [T]),
    ("avalanche", FHEADER, f"/ext/bc/C/rpc/{T}?token={T}", (AUTH,), "/ext/bc/C/rpc", [T]),
    # query
    ("generic", FQUERY, "/graphql", (AUTH,), f"/graphql?token={T}", []),
    ("generic", FQUERY, "/graphql?a=1&b", (AUTH,), f"/graphql?a=1&b&token={T}", []),
    ("generic", FQUERY, "/graphql?", (AUTH,), f"/graphql?token={T}", []),  # no empty parameter
    ("generic", FQUERY, "/graphql?&a", (AUTH,), f"/graphql?&a&token={T}", []),
    ("generic", FQUERY, f"/graphql?token={T}&a=1", (), f"/graphql?a=1&token={T}", []),
    ("generic", FQUERY, f"/g?t%6Fken={T_ENC}&a=%2F", (), f"/g?a=%2F&token={T}", []),
    ("ipfs", FQUERY, f"/{T}/api/v0/version?arg=x", (), f"/api/v0/version?arg=x&token={T}", []),
    ("avalanche", FQUERY, f"/ext/bc/C/rpc/{T}", (), f"/ext/bc/C/rpc?token={T}", []),
    ("avalanche", FQUERY, "/ext/bc/C/avax", (AUTH,), f"/ext/bc/C/avax?token={T}", []),
    # path: the canonical position, or where it already stands when that is allowed
    ("generic", FPATH, "/graphql", (AUTH,), f"/graphql/{T}", []),
    ("generic", FPATH, "/", (AUTH,), f"/{T}", []),
    ("generic", FPATH, "/a/b?x=1", (AUTH,), f"/a/b/{T}?x=1", []),
    ("generic", FPATH, "/graphql/", (AUTH,), f"/graphql/{T}/", []),
    ("generic", FPATH, f"/{T}/graphql", (), f"/{T}/graphql", []),
    ("generic", FPATH, f"/{T}/graphql", (AUTH,), f"/{T}/graphql", []),
    ("generic", FPATH, f"/graphql/{T}", (), f"/graphql/{T}", []),
    ("generic", FPATH, f"/{T}/graphql/{T}", (), f"/graphql/{T}", []),
    ("generic", FPATH, f"/{T_ENC}/x", (), f"/{T_ENC}/x", []),
    ("generic", FPATH, f"/graphql?token={T}&a=1", (), f"/graphql/{T}?a=1", []),
    ("ipfs", FPATH, "/api/v0/version", (AUTH,), f"/{T}/api/v0/version", []),
    ("ipfs", FPATH, f"/api/v0/version?token={T}", (), f"/{T}/api/v0/version", []),
    ("ipfs", FPATH, "/", (AUTH,), f"/{T}", []),
    ("ipfs", FPATH, f"/{T}/api", (AUTH,), f"/{T}/api", []),
    ("avalanche", FPATH, "/ext/bc/C/rpc", (AUTH,), f"/ext/bc/C/rpc/{T}", []),
    ("avalanche", FPATH, "/ext/bc/C/ws/", (AUTH,), f"/ext/bc/C/ws/{T}/", []),
    ("avalanche", FPATH, f"/ext/bc/C/rpc?token={T}", (), f"/ext/bc/C/rpc/{T}", []),
    ("avalanche", FPATH, f"/ext/bc/C/rpc/{T}", (AUTH,), f"/ext/bc/C/rpc/{T}", []),
    ("fuji", FPATH, "/ext/bc/C/rpc", (AUTH,), f"/ext/bc/C/rpc/{T}", []),
    # keep: as the client sent it
    ("generic", KEEP, f"/{T}?token={T}", (AUTH,), f"/{T}?token={T}", [T]),
    ("generic", KEEP, f"/p?t%6Fken={T_ENC}", (), f"/p?t%6Fken={T_ENC}", []),
]


@pytest.mark.parametrize(("layout", "forward", "target", "headers", "upstream", "auth"), REWRITES)
def test_rewrite(
    layout: str,
    forward: Forward,
    target: str,
    headers: Headers,
    upstream: str,
    auth: list[str],
) -> None:
    out = rewrite(layout, forward, target, *headers)
    assert out.target == upstream
    assert auth_values(out.headers) == auth
    assert out.method == "GET"


@pytest.mark.parametrize(
    ("layout", "target"),
    [
        ("avalanche", "/ext/bc/C/avax"),
        ("avalanche", "/"),
        ("avalanche", "/ext/bc/C/rpc/x"),
        ("avalanche", "/ext/bc/X/rpc"),
        ("avalanche", "/ext/bc/C"),
        ("fuji", "/health"),
        ("fuji", "/ext/bc/P"),
        ("generic", "*"),
        ("ipfs", "*"),
    ],
)
def test_a_path_with_no_place_for_a_token_is_unplaceable(layout: str, target: str) -> None:
    with pytest.raises(UnplaceableTokenError):
        rewrite(layout, FPATH, target, AUTH)
    # Every other forward value copes with it.
    for forward in (STRIP, FHEADER, FQUERY, KEEP):
        assert isinstance(rewrite(layout, forward, target, AUTH), Request)


CLIENT_GATEWAY_HEADERS: Headers = (
    ("X-Tokenward-Token", "admin"),
    ("x-tokenward-kind", "sat"),
    ("X-TOKENWARD-Anything", "x"),
)


@pytest.mark.parametrize("forward", [STRIP, FHEADER, FQUERY, FPATH])
def test_client_sent_gateway_headers_are_removed_and_identity_added(forward: Forward) -> None:
    headers: Headers = (
        ("Accept", "*/*"),
        *CLIENT_GATEWAY_HEADERS,
        ("x-tokenwardish", "stays"),
        AUTH,
        ("Authorization", f"Bearer {T2}"),
    )
    out = rewrite("generic", forward, "/p", *headers, identity=Identity("ci-bot", "pat"))
    assert gateway_fields(out.headers) == [
        ("x-tokenward-kind", "pat"),
        ("x-tokenward-token", "ci-bot"),
    ]
    assert other_fields(out.headers) == [
        ("Accept", "*/*"),
        ("x-tokenwardish", "stays"),
        ("Authorization", f"Bearer {T2}"),
    ]
    # Without an identity (a request that is not accepted) nothing is added.
    out = rewrite("generic", forward, "/p", *headers)
    assert gateway_fields(out.headers) == []


def test_keep_sends_the_request_as_the_client_sent_it() -> None:
    request = req(f"/{T}/x?token={T}&a=%2F", *CLIENT_GATEWAY_HEADERS, AUTH, method="POST")
    layout = layout_named("generic")
    out = rewrite_request(request, find_token(request, layout), layout, KEEP, Identity("n", "pat"))
    assert out == request


def test_the_method_is_never_changed() -> None:
    for forward in (STRIP, FHEADER, FQUERY, FPATH, KEEP):
        request = req(f"/p?token={T}", method="PROPFIND")
        layout = layout_named("generic")
        assert rewrite_request(request, find_token(request, layout), layout, forward).method == (
            "PROPFIND"
        )


@pytest.mark.parametrize(
    ("target", "headers", "upstream"),
    [
        ("/p?token=a&token=b&c=1", (AUTH,), "/p?c=1"),  # ambiguous
        ("/p?token=&x", (), "/p?x"),  # malformed
        (f"/{T}/x/{T2}", (("x-auth-token", "junk"),), "/x"),  # ambiguous
        ("/p", (("x-auth-token", "Bearer x"),), "/p"),  # malformed
    ],
)
def test_strip_removes_every_placement_even_of_a_rejected_request(
    target: str, headers: Headers, upstream: str
) -> None:
    out = rewrite("generic", STRIP, target, *headers)
    assert out.target == upstream
    assert auth_values(out.headers) == []


# --- strategies ----------------------------------------------------------------------------


@cache
def kinds() -> st.SearchStrategy[str]:
    return st.sampled_from(KINDS)


@cache
def bodies(min_size: int = 16, max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(alphabet=BASE62, min_size=min_size, max_size=max_size)


@cache
def tokens() -> st.SearchStrategy[str]:
    return st.builds(lambda kind, body: f"sm_{kind}_{body}", kinds(), bodies())


# Ordinary text: no `_` and no escape that decodes to a letter, digit, `_` or `%`, so no
# decoding of it, however deep, can ever hold a token.
PLAIN = BASE62 + "-.~!$'()*+,;:@\u00e9\u00a0\u00ff"
SAFE_ESCAPES = ("%2F", "%2f", "%20", "%3D", "%26", "%3F", "%2C", "%C3%A9", "%e9", "%0A", "%23")


@cache
def plain(min_size: int = 0, max_size: int = 5, extra: str = "") -> st.SearchStrategy[str]:
    atom = st.one_of(st.text(PLAIN + extra, min_size=1, max_size=3), st.sampled_from(SAFE_ESCAPES))
    return st.lists(atom, min_size=min_size, max_size=max_size).map("".join)


@cache
def near_misses() -> st.SearchStrategy[str]:
    """Values that look like tokens but are neither token-shaped nor hold one."""
    return st.one_of(
        st.builds(lambda k, b: f"sm_{k}_{b}", kinds(), bodies(1, 15)),
        st.builds(lambda k, b: f"sm_{k}_{b}", kinds(), bodies(65, 80)),
        st.builds(lambda c, t: c + t, st.sampled_from(BASE62), tokens()),
        st.builds(str.upper, tokens()),
        st.builds(lambda b: f"sm_xat_{b}", bodies()),
        st.builds(lambda b: f"sm-pat-{b}", bodies()),
    )


@cache
def ordinary_segments() -> st.SearchStrategy[str]:
    return st.one_of(
        plain(0, 3),
        st.sampled_from(["api", "v0", "version", "graphql", "ext", "bc", "C", "rpc", ""]),
        near_misses(),
    )


@cache
def ordinary_items() -> st.SearchStrategy[str]:
    names = plain(1, 3).filter(lambda name: name != "token")
    values = st.one_of(plain(0, 4, extra="/?="), near_misses())
    return st.one_of(
        st.builds(lambda name, value: f"{name}={value}", names, values),
        names,
        st.sampled_from(["arg=/ipfs/Qm%2Fx", "flag", "b=a+b", "Token", "tokens=1", "a="]),
    )


@cache
def ordinary_headers() -> st.SearchStrategy[tuple[str, str]]:
    names = st.one_of(
        st.sampled_from(
            ["Accept", "user-agent", "Authorization", "X-Auth", "x-auth-tokens", "X-Tokenward"]
        ),
        st.text(string.ascii_lowercase, min_size=1, max_size=6).map(lambda s: "x-" + s),
    )
    values = st.one_of(
        st.text(st.characters(max_codepoint=255), max_size=12),
        tokens(),
        tokens().map(lambda token: "Bearer " + token),
    )
    return st.tuples(names, values)


@cache
def client_gateway_headers() -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(
        st.sampled_from(["X-Tokenward-Token", "x-tokenward-kind", "X-TOKENWARD-Admin"]),
        st.text(st.characters(max_codepoint=255), max_size=8),
    )


def spell(token: str, chars: str, draw: st.DrawFn) -> str:
    """`token` with a few of its characters in `chars` percent-encoded, in either hex case."""
    if not token:
        return token
    encoded = draw(st.sets(st.integers(0, len(token) - 1), max_size=4))
    lower = draw(st.booleans())
    return "".join(
        (f"%{ord(ch):02x}" if lower else f"%{ord(ch):02X}")
        if index in encoded and ch in chars
        else ch
        for index, ch in enumerate(token)
    )


QUERY_NAMES = ("token", "token", "t%6Fken", "%74oken", "tok%65n", "%74%6f%6b%65%6e")
HEADER_NAMES = ("x-auth-token", "X-Auth-Token", "X-AUTH-TOKEN", "x-Auth-TOKEN")
HEADER_SEPARATORS = (",", ", ", " ,", " , ", ",\t")


@cache
def malformed_values(where: Literal["header", "query"]) -> st.SearchStrategy[str]:
    """Values that are not token-shaped; none holds a token where that would be misplaced."""
    common = st.one_of(st.just(""), st.just("abc"), near_misses())
    if where == "query":
        return common
    return st.one_of(common, tokens().map(lambda token: "Bearer " + token))


def path_misplacements(token: str) -> list[tuple[bool, str]]:
    """(token-shaped?, segment): segments that hold `token` where no layout allows it."""
    rest = token[1:]
    return [
        (True, token),
        (True, "%73" + rest),
        (False, f"x.{token}.json"),
        (False, f"{token}.json"),
        (False, f"{token};v=1"),
        (False, f"a%2F{token}"),
        (False, f"{token}%2Fb"),
        (False, f"%2F{token}"),
        (False, f"~{token}"),
        (False, f"-{token}-"),
        (False, f"x%2E{token}"),
        (False, "%2573" + rest),
        (False, "%252573" + rest),
        (False, f"{token}%20"),
    ]


def query_misplacements(token: str) -> list[str]:
    rest = token[1:]
    return [
        f"q={token}",
        f"q=x.{token}",
        f"{token}=1",
        token,
        f"Token={token}",
        f"TOKEN={token}",
        f"tokens={token}",
        f"token%3D={token}",
        f"t%256Fken={token}",
        f"q=a%2F{token}",
        "q=%2573" + rest,
        f"q={encode_all(token)}",
        "q=%73" + rest,
        f"x={token},{token}",
    ]


@dataclass(frozen=True)
class Case:
    """A request put together from known parts, and what the contract says about it."""

    layout: Layout
    request: Request
    token: str  # the token the case is built around
    values: tuple[tuple[Placement, str], ...]  # every value in a placement
    misplaced: bool
    base: tuple[str, ...]  # the path's ordinary segments
    trailing_slash: bool
    path_first: str | None  # the spelling of a token standing first / last in the path
    path_last: str | None
    items: tuple[str, ...]  # the query's ordinary items, in order
    headers: Headers  # the ordinary header fields, in order (no x-auth-token, x-tokenward-*)

    @property
    def accepted(self) -> bool:
        """Rows 1-4 pass: one token-shaped value and nothing misplaced."""
        return not self.misplaced and {value for _, value in self.values} == {self.token}

    def expected_verdict(self) -> tuple[ErrorCode | None, Placement | None]:
        placements = {placement for placement, _ in self.values}
        single = next(iter(placements)) if len(placements) == 1 else None
        values = {value for _, value in self.values}
        if len(values) > 1:
            return AMBIGUOUS, single
        if not values:
            return MISSING, None
        if not is_token(values.pop()):
            return MALFORMED, single
        return None, single

    def stripped_target(self) -> str:
        return render_target(render_path(self.base, self.trailing_slash), self.items)

    def path_forward_target(self) -> str | None:
        """The target for forward=path, or None when the path has no place for a token."""
        name = self.layout.name.value
        if self.path_last is not None:
            segments = (*self.base, self.path_last)
        elif self.path_first is not None:
            segments = (self.path_first, *self.base)
        elif name == "generic":
            segments = (*self.base, self.token)
        elif name == "ipfs":
            segments = (self.token, *self.base)
        elif self.base in CCHAIN:
            segments = (*self.base, self.token)
        else:
            return None
        # A path `/` (no segments) has no trailing slash to keep.
        trailing = self.trailing_slash and bool(self.base or self.path_first or self.path_last)
        return render_target(render_path(segments, trailing), self.items)


POOL_INDEX = st.integers(0, 2)


@st.composite
def cases(draw: st.DrawFn, *, accepted: bool, misplaced: bool = False) -> Case:
    name = draw(st.sampled_from(LAYOUT_NAMES))
    layout = layout_named(name)
    token = draw(tokens())
    pool = (token, token, draw(tokens()))

    def value_for(where: Literal["header", "query", "path"]) -> str:
        if accepted:
            return token
        if where == "path" or draw(st.booleans()):
            return pool[draw(POOL_INDEX)]
        return draw(malformed_values(where))

    values: list[tuple[Placement, str]] = []

    # The path: ordinary segments, a trailing slash, and tokens where the layout allows them.
    base: tuple[str, ...]
    if name in ("avalanche", "fuji") and draw(st.booleans()):
        base = draw(st.sampled_from(CCHAIN))
    else:
        base = tuple(draw(st.lists(ordinary_segments(), max_size=5)))
    trailing = draw(st.booleans())
    if not trailing and base and base[-1] == "":
        # `/a/` is one segment and a trailing slash, not `a` and an empty segment.
        base, trailing = base[:-1], True
    slots = {"generic": ["first", "last"], "ipfs": ["first"]}.get(
        name, ["last"] if base in CCHAIN else []
    )
    chosen = draw(st.sets(st.sampled_from(slots))) if slots else set()
    path_first = path_last = None
    if "first" in chosen:
        value = value_for("path")
        path_first = spell(value, BASE62 + "_", draw)
        values.append((PATH, value))
    if "last" in chosen:
        value = value_for("path")
        path_last = spell(value, BASE62 + "_", draw)
        values.append((PATH, value))
    segments = [
        *([path_first] if path_first is not None else []),
        *base,
        *([path_last] if path_last is not None else []),
    ]

    # The query: ordinary items with `token` parameters among them.
    items = tuple(draw(st.lists(ordinary_items(), max_size=5)))
    all_items = list(items)
    for _ in range(draw(st.integers(0, 2))):
        value = value_for("query")
        spelled_name = draw(st.sampled_from(QUERY_NAMES))
        spelled_value = spell(value, PLAIN + "_", draw)
        spelled_value = "".join(
            ch if ch in BASE62 + "-._~%" else f"%{ord(ch):02X}" for ch in spelled_value
        )
        item = f"{spelled_name}={spelled_value}"
        if value == "" and draw(st.booleans()):
            item = spelled_name  # `?token` is the parameter with an empty value
        all_items.insert(draw(st.integers(0, len(all_items))), item)
        values.append((QUERY, value))

    # The header fields: ordinary ones, client-sent x-tokenward-* and x-auth-token fields.
    headers = tuple(draw(st.lists(ordinary_headers(), max_size=3)))
    all_headers = list(headers)
    for field in draw(st.lists(client_gateway_headers(), max_size=2)):
        all_headers.insert(draw(st.integers(0, len(all_headers))), field)
    header_fields = draw(st.integers(0, 2))
    if accepted and not values and header_fields == 0:
        header_fields = 1
    for _ in range(header_fields):
        field_values = [value_for("header") for _ in range(draw(st.integers(1, 2)))]
        separator = draw(st.sampled_from(HEADER_SEPARATORS))
        padding = draw(st.sampled_from(["", " ", "\t", "  "]))
        raw = padding + separator.join(field_values) + padding[::-1]
        field = (draw(st.sampled_from(HEADER_NAMES)), raw)
        all_headers.insert(draw(st.integers(0, len(all_headers))), field)
        values.extend((HEADER, value) for value in field_values)

    if misplaced:
        for _ in range(draw(st.integers(1, 2))):
            stray = pool[draw(POOL_INDEX)]
            if draw(st.booleans()):
                shaped, segment = draw(st.sampled_from(path_misplacements(stray)))
                at = draw(st.integers(0, len(segments)))
                # A token-shaped segment between two ordinary ones is first, last and right
                # after the C-chain prefix in no layout.
                segments[at:at] = ["m", segment, "m"] if shaped else [segment]
            else:
                stray_item = draw(st.sampled_from(query_misplacements(stray)))
                all_items.insert(draw(st.integers(0, len(all_items))), stray_item)

    target = render_target(render_path(segments, trailing), all_items)
    method = draw(st.sampled_from(["GET", "POST", "OPTIONS"]))
    return Case(
        layout=layout,
        request=Request(method, target, tuple(all_headers)),
        token=token,
        values=tuple(values),
        misplaced=misplaced,
        base=base,
        trailing_slash=trailing,
        path_first=path_first,
        path_last=path_last,
        items=items,
        headers=headers,
    )


IDENTITIES = st.one_of(
    st.none(), st.builds(Identity, st.text(BASE62 + "-_", min_size=1, max_size=10), kinds())
)

# Regressions and the contract's own examples, as cases.
IPFS_EXAMPLE = Case(
    layout=layout_named("ipfs"),
    request=req(f"/api/v0/cat?arg=/ipfs/Qm%2Fx&flag&b=a+b&token={T}"),
    token=T,
    values=((QUERY, T),),
    misplaced=False,
    base=("api", "v0", "cat"),
    trailing_slash=False,
    path_first=None,
    path_last=None,
    items=("arg=/ipfs/Qm%2Fx", "flag", "b=a+b"),
    headers=(),
)
AVALANCHE_EXAMPLE = Case(
    layout=layout_named("avalanche"),
    request=req(f"/ext/bc/C/rpc/{T_ENC}/", ("Accept", "*/*"), ("X-Auth-Token", f"{T} ,{T}")),
    token=T,
    values=((PATH, T), (HEADER, T), (HEADER, T)),
    misplaced=False,
    base=("ext", "bc", "C", "rpc"),
    trailing_slash=True,
    path_first=None,
    path_last=T_ENC,
    items=(),
    headers=(("Accept", "*/*"),),
)
GENERIC_BOTH_ENDS = Case(
    layout=layout_named("generic"),
    request=req(f"/{T_ENC}/a%2Fb/{T}?x=%26&token={T}"),
    token=T,
    values=((PATH, T), (PATH, T), (QUERY, T)),
    misplaced=False,
    base=("a%2Fb",),
    trailing_slash=False,
    path_first=T_ENC,
    path_last=T,
    items=("x=%26",),
    headers=(),
)


# --- properties ----------------------------------------------------------------------------


@given(cases(accepted=False))
@example(IPFS_EXAMPLE)
@example(AVALANCHE_EXAMPLE)
@example(GENERIC_BOTH_ENDS)
def test_verdict_follows_rows_2_to_4(case: Case) -> None:
    finding = find_token(case.request, case.layout)
    error, placement = case.expected_verdict()
    assert finding.error == error
    assert finding.placement == placement
    values = {value for _, value in case.values}
    the_value = next(iter(values)) if len(values) == 1 else None
    assert finding.value == the_value
    assert finding.token == (the_value if error is None else None)
    assert finding.in_url is any(p is not HEADER for p, _ in case.values)


@given(cases(accepted=False, misplaced=True))
@example(
    Case(
        layout=layout_named("ipfs"),
        request=req(f"/{T}/m/{T}/m?q=1"),
        token=T,
        values=((PATH, T),),
        misplaced=True,
        base=(),
        trailing_slash=False,
        path_first=T,
        path_last=None,
        items=("q=1",),
        headers=(),
    )
)
def test_a_token_anywhere_but_a_placement_is_misplaced(case: Case) -> None:
    finding = find_token(case.request, case.layout)
    assert finding.error is MISPLACED
    assert finding.placement is None
    assert finding.token is None


@given(cases(accepted=True), st.sampled_from([FHEADER, FQUERY, FPATH]), IDENTITIES)
@example(IPFS_EXAMPLE, FPATH, None)
@example(AVALANCHE_EXAMPLE, FQUERY, None)
@example(GENERIC_BOTH_ENDS, FPATH, Identity("n", "pat"))
def test_a_placed_token_is_found_again_in_that_placement(
    case: Case, forward: Forward, identity: Identity | None
) -> None:
    finding = find_token(case.request, case.layout)
    assert finding.token == case.token
    try:
        out = rewrite_request(case.request, finding, case.layout, forward, identity)
    except UnplaceableTokenError:
        assert forward is FPATH
        assert case.path_forward_target() is None
        return
    placement = Placement(forward.value)
    again = find_token(out, case.layout)
    assert again.error is None
    assert again.token == case.token
    assert again.placement is placement
    assert {candidate.placement for candidate in again.candidates} == {placement}
    if forward is not FPATH:
        assert len(again.candidates) == 1


@given(cases(accepted=True), st.sampled_from([STRIP, FHEADER, FQUERY, FPATH]), IDENTITIES)
@example(IPFS_EXAMPLE, STRIP, None)
@example(IPFS_EXAMPLE, FQUERY, None)
@example(AVALANCHE_EXAMPLE, STRIP, Identity("ci", "sat"))
@example(AVALANCHE_EXAMPLE, FPATH, None)
@example(GENERIC_BOTH_ENDS, FPATH, None)
@example(GENERIC_BOTH_ENDS, FHEADER, None)
def test_the_upstream_gets_everything_else_byte_for_byte(
    case: Case, forward: Forward, identity: Identity | None
) -> None:
    finding = find_token(case.request, case.layout)
    if forward is FPATH and case.path_forward_target() is None:
        with pytest.raises(UnplaceableTokenError):
            rewrite_request(case.request, finding, case.layout, forward, identity)
        return
    out = rewrite_request(case.request, finding, case.layout, forward, identity)
    assert out.method == case.request.method
    if forward is FPATH:
        assert out.target == case.path_forward_target()
    elif forward is FQUERY:
        assert out.target == render_target(
            render_path(case.base, case.trailing_slash), (*case.items, f"token={case.token}")
        )
    else:
        assert out.target == case.stripped_target()
    # The request's own token, where another header holds it, goes as its hint.
    hint = hint_of(case.token)
    assert other_fields(out.headers) == [
        (name, value.replace(case.token, hint)) for name, value in case.headers
    ]
    assert auth_values(out.headers) == ([case.token] if forward is FHEADER else [])
    expected_identity = (
        []
        if identity is None
        else [("x-tokenward-kind", identity.kind), ("x-tokenward-token", identity.name)]
    )
    assert gateway_fields(out.headers) == expected_identity


@given(cases(accepted=False), IDENTITIES)
@example(IPFS_EXAMPLE, None)
@example(AVALANCHE_EXAMPLE, None)
@example(GENERIC_BOTH_ENDS, None)
def test_stripping_leaves_no_token_and_is_idempotent(case: Case, identity: Identity | None) -> None:
    finding = find_token(case.request, case.layout)
    out = rewrite_request(case.request, finding, case.layout, STRIP, identity)
    assert out.target == case.stripped_target()
    assert not held_in_any_decoding(out.target)
    assert auth_values(out.headers) == []
    assert other_fields(out.headers) == list(case.headers)
    again = find_token(out, case.layout)
    assert again.error is MISSING
    assert rewrite_request(out, again, case.layout, STRIP, identity) == out


@given(cases(accepted=False, misplaced=True), IDENTITIES)
def test_keep_changes_nothing(case: Case, identity: Identity | None) -> None:
    finding = find_token(case.request, case.layout)
    assert rewrite_request(case.request, finding, case.layout, KEEP, identity) == case.request


# Arbitrary requests: any Latin-1 text, with the characters and pieces that matter near by.
FRAGMENTS = [
    "/", "//", "?", "&", "=", "%", ",", ";", "+", "#", " ", "\t", "\r\n", "\x00", "\x7f",
    "%2F", "%2f", "%25", "%2525", "%73", "%5F", "%5f", "%7", "%%", "%zz", "sm_", "pat_",
    "aat_", "sm_sat_", "token", "Token", "t%6Fken", "token=", "ext/bc/C/rpc/", "ext/bc/C/ws",
    "\u00e9", "\u00ff", "\u0085", "\u00a0", "A1b2C3d4E5f6G7h8",
]  # fmt: skip


@cache
def arbitrary_text(max_size: int = 10) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(
            st.sampled_from(FRAGMENTS),
            tokens(),
            near_misses(),
            st.text(st.characters(max_codepoint=255), max_size=4),
        ),
        max_size=max_size,
    ).map("".join)


def arbitrary_requests() -> st.SearchStrategy[Request]:
    header_names = st.one_of(
        st.sampled_from((*HEADER_NAMES, "X-Tokenward-Token", "accept", "x-tokenward-")),
        arbitrary_text(3),
    )
    return st.builds(
        Request,
        st.sampled_from(["GET", "OPTIONS", "POST"]),
        st.one_of(arbitrary_text(), arbitrary_text().map(lambda text: "/" + text)),
        st.lists(st.tuples(header_names, arbitrary_text(4)), max_size=4).map(tuple),
    )


@given(arbitrary_requests(), IDENTITIES)
@example(req("/%"), None)
@example(req("?&=&"), None)
@example(req("/%2525252573m_pat_A1b2C3d4E5f6G7h8"), None)
@example(req("*", ("x-auth-token", T)), Identity("n", "pat"))
@example(req("/\x00?\r\n=%zz", ("x-auth-token", ",,")), None)
@example(req("", ("x-auth-token", T)), None)
@example(req("sm_pat_0000000000000000", ("x-auth-token", "sm_pat_0000000000000000")), None)
def test_finding_and_rewriting_never_fail_on_arbitrary_requests(
    request: Request, identity: Identity | None
) -> None:
    for name in LAYOUT_NAMES:
        layout = layout_named(name)
        finding = find_token(request, layout)
        assert finding.error is None or isinstance(finding.error, ErrorCode)
        assert finding.placement is None or isinstance(finding.placement, Placement)
        if finding.error is None:
            assert finding.token is not None and is_token(finding.token)
        if finding.error is MISSING:
            assert finding.candidates == ()
        for forward in Forward:
            try:
                out = rewrite_request(request, finding, layout, forward, identity)
            except UnplaceableTokenError:
                assert forward is FPATH
                continue
            assert isinstance(out, Request)
            if forward is KEEP:
                assert out == request
                continue
            # The one well-formed value goes back, also beside a stray token (observe mode).
            placed = finding.placeable
            expected_auth = [placed] if forward is FHEADER and placed else []
            assert auth_values(out.headers) == expected_auth
            # Another field keeps its value unless it carried the placed token.
            for before, after in zip(
                other_fields(request.headers), other_fields(out.headers), strict=True
            ):
                assert after[0] == before[0]
                if placed is not None and carries(before[1], placed):
                    assert not carries(after[1], placed)
                else:
                    assert after == before
            assert len(gateway_fields(out.headers)) == (0 if identity is None else 2)


@given(arbitrary_requests())
@example(req(f"/{T}/x?token={T}&{T}", ("x-auth-token", T)))
@example(req(f"/{T}?t%6Fken=a&b=%2F", ("x-auth-token", "b")))
def test_stripping_an_arbitrary_request_without_misplaced_tokens(request: Request) -> None:
    for name in LAYOUT_NAMES:
        layout = layout_named(name)
        finding = find_token(request, layout)
        if finding.error is MISPLACED:
            continue
        out = rewrite_request(request, finding, layout, STRIP)
        assert not held_in_any_decoding(out.target)
        assert auth_values(out.headers) == []
        again = find_token(out, layout)
        assert again.error is MISSING
        assert rewrite_request(out, again, layout, STRIP) == out


# Records


def encoded_deep(text: str, depth: int) -> str:
    """`text` with every character percent-encoded, and each escape's `%` again `depth - 1`
    times; `text` itself for depth 0."""
    if depth == 0:
        return text
    escaped = "".join(f"%{ord(character):02X}" for character in text)
    for _ in range(depth - 1):
        escaped = escaped.replace("%", "%25")
    return escaped


def deep_decodings(text: str, rounds: int = 12) -> list[str]:
    found = [text]
    for _ in range(rounds):
        found.append(percent_decode(found[-1]))
    return found


T_HINT = "sm_pat_…G7h8".encode().decode("latin-1")  # as the Latin-1 strings of a record hold it


@pytest.mark.parametrize("depth", [0, 1, 2, 3, 4])
def test_a_record_shows_a_token_encoded_as_deep_as_tokenward_decodes_as_its_hint(
    depth: int,
) -> None:
    record = redact_request(Request("GET", f"/a/{encoded_deep(T, depth)}/b?q=%20", ()))
    assert record.target == f"/a/{T_HINT}/b?q=%20"


@pytest.mark.parametrize("depth", [5, 6, 12])
def test_a_record_withholds_a_run_that_decodes_deeper_than_tokenward_decodes(depth: int) -> None:
    deep = encoded_deep(T, depth)
    record = redact_request(Request("GET", f"/a/{deep}/b?q=%20", (("x-other", deep),)))
    withheld = f"<{len(deep)} characters withheld: encoded deeper than tokenward decodes>"
    assert record.target == f"/a/{withheld}/b?q=%20"
    assert record.headers == (("x-other", withheld),)


@pytest.mark.parametrize(
    "name",
    [f"x-auth-token{T}", f"x-{T}", f"{T}", f"x-auth-token%73m_pat_{T[7:]}"],
)
def test_a_record_hides_a_token_in_a_header_name_also_glued_to_letters(name: str) -> None:
    record = redact_request(Request("GET", "/", ((name, "1"),)))
    ((recorded_name, value),) = record.headers
    assert T not in recorded_name and T[7:] not in recorded_name and value == "1"
    assert recorded_name.endswith(T_HINT)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"jsonrpc": "2.0", "method": "eth_call", "params": ["0x' + b"ab" * 40 + b'"]}',
        b"a=%20b&c=100%25&" + b"x" * 40,
        bytes(range(256)) * 4,  # binary, with `%` but no run long enough to hide a token
        b"sm_pat_short and sm_ and %",
    ],
)
def test_a_body_without_a_token_is_recorded_as_the_same_bytes(body: bytes) -> None:
    assert redact_bytes(body) is body


@given(
    before=st.binary(max_size=60),
    after=st.binary(max_size=60),
    depth=st.integers(min_value=0, max_value=8),
)
@example(before=b'{"params": ["', after=b'"]}', depth=0)
@example(before=b"a=%2", after=b"%", depth=5)  # escapes that run into the token's own
@example(before=b"x-auth-token", after=b"", depth=0)
def test_a_recorded_body_holds_no_token_in_any_decoding(
    before: bytes, after: bytes, depth: int
) -> None:
    body = before + encoded_deep(T, depth).encode() + after
    recorded = redact_bytes(body).decode("latin-1")
    assert not any(T in decoded for decoded in deep_decodings(recorded))


@given(text=st.text(alphabet="%25sm_patA1b2C3d4E5f6G7h8x/.-", max_size=120))
@example(text=f"/{T}.%25252573m_pat_{T[7:]}.%252525252573m_pat_{T[7:]}")
def test_a_recorded_text_holds_no_token_run_in_any_decoding(text: str) -> None:
    recorded = redact_text(text)
    for decoded in deep_decodings(recorded):
        assert re.search(r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,}", decoded) is None


# --- size limits ---------------------------------------------------------------------------

LIMIT = 40


@pytest.mark.parametrize(
    ("target", "headers", "error"),
    [
        ("/" + "a" * (LIMIT - 1), (("x-a", "b" * (LIMIT - 3)),), None),
        ("/" + "a" * LIMIT, (), ErrorCode.TARGET_TOO_LONG),
        ("/", (("x-a", "b" * (LIMIT - 2)),), ErrorCode.HEADER_TOO_LARGE),
        ("/", (("x-" + "a" * (LIMIT - 1), ""),), ErrorCode.HEADER_TOO_LARGE),
        # Each field on its own: many that are under the limit together pass.
        ("/", (("x-a", "b" * 30),) * 10, None),
        # The request line comes first.
        ("/" + "%" * LIMIT, (("x-a", "%" * LIMIT),), ErrorCode.TARGET_TOO_LONG),
    ],
)
def test_oversized(target: str, headers: Headers, error: ErrorCode | None) -> None:
    assert oversized(req(target, *headers), LIMIT, LIMIT) is error


def withheld_or_kept(original: str, recorded: str, limit: int) -> bool:
    if len(original) <= limit:
        return recorded == original
    return recorded == f"<{len(original)} characters withheld: over tokenward's size limit>"


@given(arbitrary_requests(), st.integers(1, 12), st.integers(1, 12))
@example(req("/" + T, ("x-auth-token", T)), 10, 10)
@example(req("/", ("x-" + T, "1")), 10, 10)
def test_a_record_withholds_each_part_over_its_limit(
    request: Request, max_target: int, max_header: int
) -> None:
    recorded = withhold_oversized(request, max_target, max_header)
    assert recorded.method == request.method
    assert withheld_or_kept(request.target, recorded.target, max_target)
    for (name, value), (recorded_name, recorded_value) in zip(
        request.headers, recorded.headers, strict=True
    ):
        if len(name) + len(value) <= max_header:
            assert (recorded_name, recorded_value) == (name, value)
        else:
            assert withheld_or_kept(name, recorded_name, max_header)
            assert withheld_or_kept(value, recorded_value, -1)  # withheld, whatever its length
    if oversized(request, max_target, max_header) is None:
        assert recorded is request


# --- the request's own token in other headers ----------------------------------------------

# Text around a token in another header: no `_`, and too short to encode a token.
FILLER = st.text("abcXYZ019%=;&/ -.\u00e9", max_size=8)
SEPARATORS = ("", " ", "=", "; ", "&", "?token=", "Bearer ", ",")


@st.composite
def encoded(draw: st.DrawFn, token: str) -> str:
    """`token` percent-encoded over 0 to 4 rounds, each escaping any characters of the round
    before (the `%` and hex digits of earlier escapes too), in either hex case."""
    text = token
    for _ in range(draw(st.integers(0, _DECODINGS))):
        chosen = draw(st.sets(st.integers(0, len(text) - 1), max_size=len(text)))
        lower = draw(st.booleans())
        text = "".join(
            (f"%{ord(ch):02x}" if lower else f"%{ord(ch):02X}") if index in chosen else ch
            for index, ch in enumerate(text)
        )
    return text


@st.composite
def carrying_fields(draw: st.DrawFn, token: str) -> tuple[Headers, Headers]:
    """Header fields that carry `token` (as sent or encoded) among other text, and the same
    fields with each copy of it written as its hint instead."""
    names = st.sampled_from(["Referer", "Cookie", "Authorization", "x_auth_token", "x-other"])
    sent: list[tuple[str, str]] = []
    expected: list[tuple[str, str]] = []
    for _ in range(draw(st.integers(1, 4))):
        name = draw(names)
        value, hinted = draw(FILLER), ""
        hinted = value
        for _ in range(draw(st.integers(0, 2))):
            separator, after = draw(st.sampled_from(SEPARATORS)), draw(FILLER)
            value += separator + draw(encoded(token)) + after
            hinted += separator + hint_of(token) + after
        sent.append((name, value))
        expected.append((name, hinted))
    return tuple(sent), tuple(expected)


@given(tokens(), st.data(), st.sampled_from([STRIP, FHEADER, FQUERY, FPATH]))
@example(T, None, STRIP)
def test_other_headers_reach_the_upstream_with_the_token_as_its_hint(
    token: str, data: st.DataObject | None, forward: Forward
) -> None:
    if data is None:  # the example: each header nginx kept
        sent: Headers = (
            ("Referer", f"https://app.example/?token={token}"),
            ("Cookie", f"session=1; tw={T_ENC}"),
            ("Authorization", f"Bearer {token}"),
            ("x_auth_token", T_DOUBLE),
        )
        expected: Headers = (
            ("Referer", f"https://app.example/?token={hint_of(token)}"),
            ("Cookie", f"session=1; tw={hint_of(token)}"),
            ("Authorization", f"Bearer {hint_of(token)}"),
            ("x_auth_token", hint_of(token)),
        )
    else:
        sent, expected = data.draw(carrying_fields(token))
    request = req("/graphql", ("x-auth-token", token), *sent)
    layout = layout_named("generic")
    out = rewrite_request(request, find_token(request, layout), layout, forward)
    assert other_fields(out.headers) == list(expected)
    for _, value in other_fields(out.headers):
        assert not carries(value, token)


def test_only_the_requests_own_token_goes_as_its_hint() -> None:
    # Other headers are no placements: another token there reaches the upstream as it came.
    out = rewrite(
        "generic",
        STRIP,
        "/graphql",
        ("x-auth-token", T),
        ("Authorization", f"Bearer {T2}"),
        ("Cookie", f"a={T}; b={T2}"),
    )
    assert other_fields(out.headers) == [
        ("Authorization", f"Bearer {T2}"),
        ("Cookie", f"a={hint_of(T)}; b={T2}"),
    ]


@pytest.mark.parametrize(
    "value",
    [
        f"Bearer {encode_all(T)}",  # every character escaped
        "%2573m_pat_A1b2C3d4E5f6G7h8",  # the escape's `%` escaped again
        "%%37%33m_pat_A1b2C3d4E5f6G7h8",  # the escape's digits escaped instead
        "%6d".join(["s", "_pat_A1b2C3d4E5f6G7h8"]),
        T[:-1] + T,  # a copy overlapping the next one by its last character, "8" and "s"
    ],
)
def test_an_encoded_own_token_goes_as_its_hint(value: str) -> None:
    out = rewrite("generic", STRIP, f"/{T}", ("Referer", value))
    (referer,) = other_fields(out.headers)
    assert not carries(referer[1], T)
    assert hint_of(T) in referer[1]


def test_keep_forwards_other_headers_as_they_came() -> None:
    request = req(f"/{T}", ("Referer", f"https://a/?t={T}"))
    assert rewrite("generic", KEEP, f"/{T}", ("Referer", f"https://a/?t={T}")) == request


def test_hide_token_leaves_text_without_it_alone() -> None:
    for text in ("", "plain", "%", "%2573", T2, encode_all(T2)):
        assert hide_token(text, T, hint_of(T)) == text

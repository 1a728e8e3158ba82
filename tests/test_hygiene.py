"""Request hygiene: the preflight rule, upgrades and folded fields, as pure functions.

How mitmproxy itself reads the same requests is checked beside the addon (tests/test_gateway.py).
"""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.core.hygiene import Upgrade, holds_line_break, is_preflight, upgrade_asked
from tokenward.core.placement import Request

PREFLIGHT = (("Origin", "https://app.example"), ("Access-Control-Request-Method", "POST"))


@pytest.mark.parametrize(
    ("method", "extra", "body_follows", "expected"),
    [
        pytest.param(b"OPTIONS", (), False, True, id="preflight"),
        pytest.param(b"OPTIONS", (("Content-Length", "0"),), False, True, id="length-0"),
        pytest.param(b"options", (), False, False, id="lower-case"),
        pytest.param(b"Options", (), False, False, id="mixed-case"),
        pytest.param(b"OPTIONS", (("Content-Length", "7"),), False, False, id="with-length"),
        pytest.param(b"OPTIONS", (("Transfer-Encoding", "chunked"),), False, False, id="chunked"),
        pytest.param(b"OPTIONS", (("Upgrade", "websocket"),), False, False, id="upgrade"),
        pytest.param(b"OPTIONS", (), True, False, id="data-follows"),
    ],
)
def test_the_preflight_rule(
    method: bytes, extra: tuple[tuple[str, str], ...], body_follows: bool, expected: bool
) -> None:
    request = Request(method.decode("latin-1"), "/", (*PREFLIGHT, *extra), body_follows)
    assert is_preflight(request) is expected


@given(method=st.binary(max_size=10), names=st.sets(st.sampled_from(["Origin", "x-other"])))
@example(method=b"OPTIONS", names={"Origin"})
def test_no_preflight_without_the_exact_method_and_both_cors_fields(
    method: bytes, names: set[str]
) -> None:
    request = Request(method.decode("latin-1"), "/", tuple((name, "x") for name in names))
    assert not is_preflight(request)


@pytest.mark.parametrize(
    ("fields", "asked"),
    [
        ((), Upgrade.NONE),
        ((("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")), Upgrade.WEBSOCKET),
        ((("Upgrade", "WebSocket"), ("Sec-WebSocket-Version", "13")), Upgrade.WEBSOCKET),
        ((("Upgrade", "websocket"), ("Sec-WebSocket-Version", "8")), Upgrade.OTHER),
        ((("Upgrade", "websocket"),), Upgrade.OTHER),
        ((("Upgrade", "h2c"),), Upgrade.OTHER),
        ((("Upgrade", "websocket, foo"), ("Sec-WebSocket-Version", "13")), Upgrade.OTHER),
    ],
)
def test_what_a_request_asks_to_switch_to(
    fields: tuple[tuple[str, str], ...], asked: Upgrade
) -> None:
    assert upgrade_asked(Request("GET", "/", fields)) is asked


@pytest.mark.parametrize("value", ["a\r\n x-tokenward-token: admin", "a\rb", "a\nb"])
def test_a_field_holding_a_line_break_is_found(value: str) -> None:
    assert holds_line_break(Request("GET", "/", (("X-Foo", value),)))
    assert not holds_line_break(Request("GET", "/", (("X-Foo", "a b"),)))

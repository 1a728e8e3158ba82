"""Issue 12's attacks, each over a real socket through a real mitmdump with the addon, with the
bytes the upstream received read back from a raw-socket recorder (`fixtures.raw_upstream`)."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mitmproxy import http, io

from fixtures.processes import RunningProxy, start_proxy
from fixtures.raw_upstream import RawUpstream
from tokenward_lib.proxy import ProxySettings
from tokenward_lib.store import TokenStore

pytestmark = pytest.mark.e2e


# --- finding 6: records (and finding 10: mitmproxy's own 400 page)
# Flow records, printed (`flow_detail: 4`) and saved, hold no full token: not in a header
# name, a framing value mitmproxy refused, a body, nor under more percent-encoding than
# tokenward decodes; the upstream still gets each forwarded request as it was sent.

RECORD_TOKEN_RUN = re.compile(r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,}")


@dataclass
class RecordedProxy:
    proxy: RunningProxy
    upstream: RawUpstream
    token: str
    flows: Path


@pytest.fixture
def recorded_proxy(tmp_path: Path) -> Iterator[RecordedProxy]:
    db = tmp_path / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        token, _ = store.create_token("live", "pat", None, None, "", datetime.now(UTC))
    home = tmp_path / "home"
    (home / ".mitmproxy").mkdir(parents=True)
    (home / ".mitmproxy" / "config.yaml").write_text("flow_detail: 4\n")
    flows = tmp_path / "flows.mitm"
    with RawUpstream() as upstream:
        settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0, save_flows=flows)
        with start_proxy(settings, env={"HOME": str(home)}) as proxy:
            yield RecordedProxy(proxy, upstream, token, flows)


def exchange_raw(proxy: RunningProxy, data: bytes, answered: bytes | None = None) -> bytes:
    """Send `data` on a connection of its own; what the proxy answers until it closes, or
    until the answer ends with `answered`."""
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while answered is None or not received.endswith(answered):
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def encoded(text: str, depth: int) -> str:
    escaped = "".join(f"%{ord(character):02X}" for character in text)
    for _ in range(depth - 1):
        escaped = escaped.replace("%", "%25")
    return escaped


def records_of(recorded: RecordedProxy) -> str:
    """The proxy's printed output and its saved flows as mitmproxy reads them back."""
    recorded.proxy.stop()
    shown = [recorded.proxy.output(), recorded.flows.read_bytes().decode("latin-1")]
    with recorded.flows.open("rb") as file:
        for saved in io.FlowReader(file).stream():
            assert isinstance(saved, http.HTTPFlow)
            shown.append(repr(saved.get_state()))
            for message in (saved.request, saved.response):
                if message is not None:
                    shown.append((message.get_content(strict=False) or b"").decode("latin-1"))
    return "\n".join(shown)


def assert_no_full_token(text: str, token: str) -> None:
    # Booleans, not the strings: a failing assert must not print the token.
    held = token in text or token[7:] in text
    runs = len(RECORD_TOKEN_RUN.findall(text))
    assert not held and runs == 0, f"a record holds the token ({runs} token-shaped runs)"


def test_records_hold_no_token_yet_the_upstream_gets_the_request_as_sent(
    recorded_proxy: RecordedProxy,
) -> None:
    token = recorded_proxy.token
    body = b'{"params": ["%s", "%s", "%s"]}' % (
        token.encode(),
        encoded(token, 1).encode(),
        encoded(token, 6).encode(),
    )
    target = f"/a/{encoded(token, 5)}/b?q={encoded(token, 6)}"
    sent = (
        f"POST {target} HTTP/1.1\r\nHost: node\r\nx-auth-token: {token}\r\n"
        f"x-auth-token{token}: 1\r\nx-other: {encoded(token, 5)}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    answer = exchange_raw(recorded_proxy.proxy, sent, answered=b"\r\n\r\nok")
    assert answer.startswith(b"HTTP/1.1 200 ")

    (forwarded,) = recorded_proxy.upstream.requests()
    assert forwarded.target == target.encode() and forwarded.body == body
    assert forwarded.header(f"x-auth-token{token}".encode()) == b"1"
    assert forwarded.header(b"x-other") == encoded(token, 5).encode()

    records = records_of(recorded_proxy)
    assert "x-auth-tokensm_pat_" in records, "the flow was recorded, its header name hinted"
    assert "characters withheld" in records
    assert_no_full_token(records, token)


def test_framing_values_mitmproxy_refuses_reach_no_upstream_and_no_record(
    recorded_proxy: RecordedProxy,
) -> None:
    token = recorded_proxy.token
    post = b"POST /rpc HTTP/1.1\r\nHost: node\r\nx-auth-token: %s\r\n" % token.encode()
    for framing in (b"Content-Length: %s", b"Transfer-Encoding: %s"):
        answer = exchange_raw(recorded_proxy.proxy, post + framing % token.encode() + b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        # mitmproxy writes this page before any hook runs (README): pinned, to see it change.
        assert token.encode() in answer, "mitmproxy's page still quotes the value"
    assert recorded_proxy.upstream.received() == b""
    records = records_of(recorded_proxy)
    assert "invalid content-length header" in records
    assert_no_full_token(records, token)


# --- finding 10: mitmproxy's own 400 page
# Where a hook runs before mitmproxy writes its page (its header validation), the addon
# writes that page first with the token shown as its hint.


def test_a_header_name_mitmproxy_refuses_is_answered_without_the_token(
    recorded_proxy: RecordedProxy,
) -> None:
    token = recorded_proxy.token
    sent = b"POST /rpc HTTP/1.1\r\nHost: node\r\nx-auth-token %s: 1\r\nContent-Length: 0\r\n\r\n"
    answer = exchange_raw(recorded_proxy.proxy, sent % token.encode())
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert f"x-auth-token {token[:7]}…{token[-4:]}".encode() in answer
    assert answer.count(b"HTTP/1.1 ") == 1, "mitmproxy's own page does not follow"
    assert_no_full_token(answer.decode("latin-1"), token)
    assert recorded_proxy.upstream.received() == b""
    assert_no_full_token(records_of(recorded_proxy), token)

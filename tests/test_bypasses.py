"""The attacks of issue 12 over real sockets, through a real mitmdump with the addon.

Each test sends the attack byte for byte and reads what the upstream received from
`fixtures.raw_upstream.RawUpstream`, which keeps every byte each connection delivered instead of
trusting a parser with the evidence.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import pytest
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from addons.log_redaction import redact_log_text
from fixtures.processes import RunningProxy, delete_token_in_another_process, start_proxy
from fixtures.raw_upstream import RawUpstream
from tokenward_lib.proxy import ProxySettings
from tokenward_lib.store import TokenStore

pytestmark = pytest.mark.e2e

# --- findings 3, 8, 9: upgrades and obs-fold

SOCKET_TIMEOUT = 5.0
CLOSE_WITHIN_SECONDS = 1.0
SENT_AFTER_DELETE_SECONDS = 3.0
WEBSOCKET_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
AFTER_DELETE = b"GET /after-delete HTTP/1.1\r\nHost: x\r\n\r\n"
TUNNELLED = b"GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n"


def shown(data: bytes) -> str:
    """Bytes for an assertion message, tokens as hints."""
    return redact_log_text(data.decode("latin-1"))


_NAME_NUMBERS = itertools.count(1)


def new_token(db: Path, name: str) -> str:
    """A valid token named `name`, created as an operator would, from another connection."""
    with TokenStore.open(db, create=False) as store:
        token, _ = store.create_token(name, "pat", None, None, "bypasses", datetime.now(UTC))
    return token


def unique(name: str) -> str:
    return f"{name}-{next(_NAME_NUMBERS)}"


def head(target: str, fields: list[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: node.example", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_answer(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, head and body of one HTTP/1.1 answer (framed by Content-Length, or a 101)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"the proxy closed the connection without an answer: {shown(data)!r}"
        data += chunk
    answer_head, _, body = data.partition(b"\r\n\r\n")
    status = int(answer_head.split(b" ", 2)[1])
    length = 0
    for line in answer_head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the proxy closed the connection inside an answer"
        body += chunk
    return status, answer_head, body


def error_of(status: int, body: bytes) -> tuple[int, str | None]:
    """Status and error code of an answer; None for an answer that is not tokenward's."""
    try:
        return status, json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return status, None


def read_until_closed(sock: socket.socket, deadline: float) -> bytes | None:
    """What arrives until the proxy closes `sock`, or None if it is still open at `deadline`."""
    received = b""
    while (remaining := deadline - time.monotonic()) > 0:
        sock.settimeout(remaining)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    return None


def wait_for(condition: object, what: str, seconds: float = SOCKET_TIMEOUT) -> None:
    """Poll `condition` (a callable) until it holds, for at most `seconds`."""
    assert callable(condition)
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not within {seconds} s: {what}"
        time.sleep(0.02)


def tunnel_of(connection: bytes) -> bytes:
    """What an upstream connection carried after its upgrade request's head."""
    return connection.partition(b"\r\n\r\n")[2]


def websocket_payloads(connection: bytes) -> list[bytes]:
    """The payloads of the data frames an upstream connection carried after its upgrade."""
    frames = FrameProtocol(client=False, extensions=[])
    frames.receive_bytes(tunnel_of(connection))
    payloads = []
    with contextlib.suppress(ParseFailed):  # a connection that carried no WebSocket
        for frame in frames.received_frames():
            if isinstance(frame.payload, str):  # a text frame's, decoded
                payloads.append(frame.payload.encode())
            elif isinstance(frame.payload, bytes | bytearray):
                payloads.append(bytes(frame.payload))
    return payloads


def client_frame(text: bytes) -> bytes:
    return bytes(FrameProtocol(client=True, extensions=[]).send_data(text, fin=True))


def close_code_in(received: bytes) -> int | None:
    """The code of the close frame the proxy sent the client, if it sent one."""
    frames = FrameProtocol(client=True, extensions=[])
    frames.receive_bytes(received)
    for frame in frames.received_frames():
        if frame.opcode is Opcode.CLOSE:
            assert isinstance(frame.payload, tuple)
            code, _reason = frame.payload
            return int(code)
    return None


@pytest.fixture(scope="module")
def upgrades_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    db = tmp_path_factory.mktemp("upgrades") / "tokenward.db"
    TokenStore.open(db, create=True).close()
    return db


@pytest.fixture(scope="module")
def switching_upstream() -> Iterator[RawUpstream]:
    """Answers every Upgrade request with 101 and records the tunnel's bytes."""
    with RawUpstream(answer_upgrades=True) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def upgrades_proxy(upgrades_db: Path, switching_upstream: RawUpstream) -> Iterator[RunningProxy]:
    settings = ProxySettings(db=upgrades_db, upstream=switching_upstream.url, listen_port=0)
    with start_proxy(settings) as proxy:
        yield proxy


@pytest.fixture
def upstream(switching_upstream: RawUpstream) -> RawUpstream:
    switching_upstream.clear()
    return switching_upstream


def connect_to(proxy: RunningProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=SOCKET_TIMEOUT)


WEBSOCKET = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", WEBSOCKET_KEY),
]
VERSION_13 = [("Sec-WebSocket-Version", "13")]
NO_WEBSOCKET_HANDSHAKES = {
    "foo": [("Connection", "upgrade"), ("Upgrade", "foo")],
    "h2c": [("Connection", "Upgrade, HTTP2-Settings"), ("Upgrade", "h2c"), ("HTTP2-Settings", "")],
    "H2C": [("Connection", "Upgrade"), ("Upgrade", "H2C")],
    "empty": [("Connection", "upgrade"), ("Upgrade", "")],
    "websocket-version-8": [*WEBSOCKET, ("Sec-WebSocket-Version", "8")],
    "websocket-no-version": WEBSOCKET,
    "websocket-version-13-twice": [*WEBSOCKET, *VERSION_13, *VERSION_13],
    "websocket-and-foo-in-one": [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket, foo"),
        ("Sec-WebSocket-Key", WEBSOCKET_KEY),
        *VERSION_13,
    ],
    "websocket-and-foo-in-two": [*WEBSOCKET, ("Upgrade", "foo"), *VERSION_13],
    "websocket-twice": [*WEBSOCKET, ("Upgrade", "websocket"), *VERSION_13],
}


@pytest.mark.parametrize("fields", NO_WEBSOCKET_HANDSHAKES.values(), ids=NO_WEBSOCKET_HANDSHAKES)
def test_an_upgrade_other_than_a_websocket_handshake_is_refused(
    upgrades_proxy: RunningProxy,
    upgrades_db: Path,
    upstream: RawUpstream,
    fields: list[tuple[str, str]],
) -> None:
    token = new_token(upgrades_db, unique("upgrade"))
    with connect_to(upgrades_proxy) as client:
        client.sendall(head("/rpc", [("x-auth-token", token), *fields]))
        status, _, body = read_answer(client)
        assert error_of(status, body) == (400, "unsupported_upgrade")
        # What would have been tunnel bytes is a request of its own, judged as one.
        client.sendall(TUNNELLED)
        status, _, body = read_answer(client)
        assert error_of(status, body) == (401, "missing_token")
    assert upstream.received() == b"", shown(upstream.received())


def test_a_websocket_handshake_in_another_case_is_a_websocket(
    upgrades_proxy: RunningProxy, upgrades_db: Path, upstream: RawUpstream
) -> None:
    token = new_token(upgrades_db, "websocket-case")
    fields = [
        ("Connection", "Upgrade"),
        ("Upgrade", "WebSocket"),
        ("Sec-WebSocket-Key", WEBSOCKET_KEY),
    ]
    with connect_to(upgrades_proxy) as client:
        client.sendall(head("/rpc", [("x-auth-token", token), *fields, *VERSION_13]))
        status, _, _ = read_answer(client)
        assert status == 101
        client.sendall(client_frame(b"hello"))
        wait_for(lambda: [b"hello"] in map(websocket_payloads, upstream.connections()), "the frame")
    (received,) = upstream.requests()
    assert received.header(b"upgrade") == b"WebSocket"
    assert received.header(b"x-tokenward-token") == b"websocket-case"


def assert_closed_on_delete(
    proxy: RunningProxy,
    client: socket.socket,
    db: Path,
    name: str,
    upstream: RawUpstream,
    *,
    websocket: bool,
) -> None:
    """Delete token `name`: the proxy closes `client` within a second, and what the client sends
    three seconds after the delete never reaches the upstream."""
    delete_token_in_another_process(db, name)
    deleted_at = time.monotonic()
    received = read_until_closed(client, deleted_at + CLOSE_WITHIN_SECONDS)
    assert received is not None, "the connection stayed open after its token was deleted"
    if websocket:
        assert close_code_in(received) == 1008
    time.sleep(max(0.0, deleted_at + SENT_AFTER_DELETE_SECONDS - time.monotonic()))
    with contextlib.suppress(OSError):  # the proxy closed the socket: nothing goes through
        client.sendall(client_frame(AFTER_DELETE) if websocket else AFTER_DELETE)
    # A request sent through the proxy after it has had its chance to arrive.
    probe_token = new_token(db, unique("probe"))
    with connect_to(proxy) as probe:
        probe.sendall(head("/probe", [("x-auth-token", probe_token)]))
        assert read_answer(probe)[0] == 200
    assert b"GET /probe " in upstream.received()
    assert AFTER_DELETE not in upstream.received()
    if websocket:
        carried = [
            payload for data in upstream.connections() for payload in websocket_payloads(data)
        ]
        assert AFTER_DELETE not in carried


def test_an_accepted_websocket_is_closed_when_its_token_is_deleted(
    upgrades_proxy: RunningProxy, upgrades_db: Path, upstream: RawUpstream
) -> None:
    token = new_token(upgrades_db, "websocket-deleted")
    with connect_to(upgrades_proxy) as client:
        client.sendall(head("/rpc", [("x-auth-token", token), *WEBSOCKET, *VERSION_13]))
        assert read_answer(client)[0] == 101
        client.sendall(client_frame(b"before"))
        wait_for(
            lambda: [b"before"] in map(websocket_payloads, upstream.connections()), "the frame"
        )
        assert_closed_on_delete(
            upgrades_proxy, client, upgrades_db, "websocket-deleted", upstream, websocket=True
        )


OBSERVED_TUNNELS = {
    "foo": [("Connection", "upgrade"), ("Upgrade", "foo")],
    "websocket-version-8": [*WEBSOCKET, ("Sec-WebSocket-Version", "8")],
}


@pytest.mark.parametrize("fields", OBSERVED_TUNNELS.values(), ids=OBSERVED_TUNNELS)
def test_observe_mode_ties_a_raw_tunnel_to_its_token(
    upgrades_db: Path, upstream: RawUpstream, fields: list[tuple[str, str]]
) -> None:
    """Observe mode refuses nothing, so the upstream's 101 opens mitmproxy's raw tunnel; the
    tunnel is closed when its token stops being valid."""
    name = unique("observed-tunnel")
    token = new_token(upgrades_db, name)
    settings = ProxySettings(db=upgrades_db, upstream=upstream.url, listen_port=0, mode="observe")
    with start_proxy(settings) as proxy, connect_to(proxy) as client:
        client.sendall(head("/rpc", [("x-auth-token", token), *fields]))
        assert read_answer(client)[0] == 101
        wait_for(lambda: "unsupported_upgrade" in proxy.output(), "the flagged verdict")
        client.sendall(b"before-delete")
        wait_for(lambda: b"before-delete" in upstream.received(), "the tunnel's first bytes")
        assert_closed_on_delete(proxy, client, upgrades_db, name, upstream, websocket=False)


@pytest.mark.parametrize("with_token", [False, True], ids=["no-token", "valid-token"])
def test_connect_through_the_reverse_proxy_opens_no_tunnel(
    upgrades_proxy: RunningProxy, upgrades_db: Path, upstream: RawUpstream, with_token: bool
) -> None:
    authority = f"127.0.0.1:{upstream.port}"
    fields = [("x-auth-token", new_token(upgrades_db, unique("connect")))] if with_token else []
    lines = [
        f"CONNECT {authority} HTTP/1.1",
        f"Host: {authority}",
        *(f"{n}: {v}" for n, v in fields),
    ]
    with connect_to(upgrades_proxy) as client:
        client.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        status, _, _ = read_answer(client)
        assert status == 400
        with pytest.raises(OSError):  # closed by the proxy
            for _ in range(50):
                client.sendall(TUNNELLED)
                time.sleep(0.02)
    assert upstream.received() == b"", shown(upstream.received())


FOLDS = {
    "space": b"X-Foo: a\r\n x-tokenward-token: admin\r\n",
    "tab": b"X-Foo: a\r\n\tx-tokenward-token: admin\r\n",
    "in-the-token-header": b"x-other: 1\r\nx-auth-token: {T}\r\n x\r\n",
    "bare-cr": b"X-Foo: a\rx-tokenward-token: admin\r\n",
}


@pytest.mark.parametrize("folded", FOLDS.values(), ids=FOLDS)
def test_a_folded_header_is_refused_over_http1(
    upgrades_proxy: RunningProxy, upgrades_db: Path, upstream: RawUpstream, folded: bytes
) -> None:
    token = new_token(upgrades_db, unique("fold"))
    fields = folded.replace(b"{T}", token.encode())
    request = b"GET /rpc HTTP/1.1\r\nHost: node.example\r\n" + fields
    if b"x-auth-token" not in fields:
        request += b"x-auth-token: " + token.encode() + b"\r\n"
    with connect_to(upgrades_proxy) as client:
        client.sendall(request + b"\r\n")
        status, _, body = read_answer(client)
    assert error_of(status, body) == (400, "malformed_request")
    assert token.encode() not in body
    assert upstream.received() == b"", shown(upstream.received())


def http2_exchange(proxy: RunningProxy, headers: list[tuple[bytes, bytes]]) -> list[object]:
    """One HTTP/2 request sent as given (no client-side checks of the header fields); the
    events the client got until its stream or the connection ended."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # mitmproxy's own certificate
    context.set_alpn_protocols(["h2"])
    raw = socket.create_connection((proxy.host, proxy.port), timeout=SOCKET_TIMEOUT)
    with context.wrap_socket(raw, server_hostname="localhost") as sock:
        assert sock.selected_alpn_protocol() == "h2"
        config = h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        connection = h2.connection.H2Connection(config)
        connection.initiate_connection()
        connection.send_headers(1, headers, end_stream=True)
        sock.sendall(connection.data_to_send())
        ends = (h2.events.StreamEnded, h2.events.StreamReset, h2.events.ConnectionTerminated)
        received: list[object] = []
        while not any(isinstance(event, ends) for event in received):
            data = sock.recv(65536)
            if not data:
                break
            received += connection.receive_data(data)
            sock.sendall(connection.data_to_send())
        return received


HTTP2_REFUSED = {
    "crlf-in-value": [(b"x-foo", b"a\r\n x-tokenward-token: admin")],
    "lf-in-value": [(b"x-foo", b"a\nx-tokenward-token: admin")],
    "upgrade": [(b"upgrade", b"foo")],
}


@pytest.mark.parametrize("fields", HTTP2_REFUSED.values(), ids=HTTP2_REFUSED)
def test_http2_line_breaks_and_upgrades_never_reach_the_upstream(
    upgrades_proxy: RunningProxy,
    upgrades_db: Path,
    upstream: RawUpstream,
    fields: list[tuple[bytes, bytes]],
) -> None:
    """mitmproxy's HTTP/2 layer (the h2 library, `validate_inbound_headers`) already ends the
    connection for these; the addon refuses them too, should that option be off."""
    token = new_token(upgrades_db, unique("http2"))
    request = [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"node.example"),
        (b":path", b"/rpc"),
        (b"x-auth-token", token.encode()),
    ]
    accepted = http2_exchange(upgrades_proxy, request)
    assert any(isinstance(event, h2.events.ResponseReceived) for event in accepted)
    upstream.clear()
    events = http2_exchange(upgrades_proxy, request + fields)
    assert not any(isinstance(event, h2.events.ResponseReceived) for event in events)
    assert upstream.received() == b"", shown(upstream.received())


def test_handshakes_answered_without_a_switch_leave_nothing_behind(upgrades_db: Path) -> None:
    """WebSocket handshakes the upstream answers 200 are ordinary requests: each answered, and
    the connection's next request judged again."""
    token = new_token(upgrades_db, "handshakes-answered-200")
    handshake = head("/rpc", [("x-auth-token", token), *WEBSOCKET, *VERSION_13])
    with RawUpstream() as plain_upstream:
        settings = ProxySettings(db=upgrades_db, upstream=plain_upstream.url, listen_port=0)
        with start_proxy(settings) as proxy, connect_to(proxy) as client:
            for _ in range(20):
                client.sendall(handshake)
                assert read_answer(client)[0] == 200
            client.sendall(head("/rpc", [*WEBSOCKET, *VERSION_13]))
            status, _, body = read_answer(client)
            assert error_of(status, body) == (401, "missing_token")
        # Read back as requests, the bytes would stop at the first handshake (what follows a switch
    # is no HTTP), so the request lines are counted.
    assert plain_upstream.received().count(b"GET /rpc HTTP/1.1\r\n") == 20

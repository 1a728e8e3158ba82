"""The bypasses of issue 12, each sent over a real socket through a real mitmdump with the
addon; what the upstream received is read from the bytes a raw-socket upstream kept
(`fixtures.raw_upstream.RawUpstream`), not from a parser that could be fooled the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import socket
import ssl
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote_to_bytes

import h2.config
import h2.connection
import h2.events
import h11
import pytest
from h11._receivebuffer import ReceiveBuffer
from hypothesis import example, given, settings
from hypothesis import strategies as st
from mitmproxy import http, io
from mitmproxy.net.http import http1
from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from tokenward.fixtures.processes import RunningProxy, delete_token_in_another_process, start_proxy
from tokenward.fixtures.raw_upstream import RawRequest, RawUpstream
from tokenward.fixtures.store_files import SHM_FAULTS, shm_of
from tokenward.log_redaction import redact_log_text
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

pytestmark = pytest.mark.e2e

# --- findings 1 and 2: framing and preflights
#
# Finding 1: an HTTP/2 request with a body and no content-length reached the HTTP/1 upstream
# unframed, so a request hidden in the body was read as a second one. Finding 2: anything
# shaped like a CORS preflight (any case of OPTIONS, with a body, with Upgrade) passed without
# a token.

SMUGGLED = b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
RAW_TRANSACTION = b'{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x"]}'
PREFLIGHT_FIELDS = (
    (b"origin", b"https://app.example"),
    (b"access-control-request-method", b"POST"),
)
UNKNOWN = "sm_pat_" + "Z" * 32
ANSWER_TIMEOUT = 5.0


@dataclass(frozen=True)
class Answer:
    """What the client got: a status (None when the stream was reset or the connection
    dropped before one came) and the body."""

    status: int | None
    body: bytes = b""

    @property
    def from_upstream(self) -> bool:
        """The raw upstream's own answer: the request reached it."""
        return self.status == 200 and self.body == b"ok"

    def error(self) -> str:
        return str(json.loads(self.body)["error"])


@dataclass
class FramingGateway:
    proxy: RunningProxy
    upstream: RawUpstream
    token: str


@pytest.fixture(scope="module")
def framing_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FramingGateway]:
    """Reverse mode in front of a raw upstream, default service, forward strip."""
    db = tmp_path_factory.mktemp("framing") / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        token, _ = store.create_token("framing", "pat", None, None, "bypasses", datetime.now(UTC))
    with (
        RawUpstream() as upstream,
        start_proxy(ProxySettings(db=db, upstream=upstream.url, listen_port=0)) as proxy,
    ):
        yield FramingGateway(proxy, upstream, token)


@pytest.fixture
def gateway(framing_gateway: FramingGateway) -> FramingGateway:
    framing_gateway.upstream.clear()
    return framing_gateway


def h2_exchange(
    proxy: RunningProxy,
    method: bytes,
    path: bytes,
    fields: Sequence[tuple[bytes, bytes]],
    body: bytes | None,
) -> Answer:
    """One HTTP/2 request (TLS, ALPN h2 only) on a connection of its own. `body` None: the
    HEADERS frame ends the stream; else DATA frames carry it and the last (an empty one for
    b"") ends it."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # mitmproxy's own certificate
    context.set_alpn_protocols(["h2"])
    # Outbound checks off: a wrong content-length is one of the attacks.
    config = h2.config.H2Configuration(
        client_side=True, header_encoding=None, validate_outbound_headers=False
    )
    pseudo = [(b":method", method), (b":scheme", b"https"), (b":authority", b"localhost")]
    with (
        socket.create_connection((proxy.host, proxy.port), timeout=ANSWER_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        assert sock.selected_alpn_protocol() == "h2"
        connection = h2.connection.H2Connection(config)
        connection.initiate_connection()
        connection.send_headers(1, [*pseudo, (b":path", path), *fields], end_stream=body is None)
        unsent = memoryview(b"" if body is None else body)
        answer = H2Answer()
        while answer.result is None:
            # Send what the peer's flow-control window takes; the answer may come before all.
            while body is not None and not answer.status and not answer.ended:
                size = min(len(unsent), connection.local_flow_control_window(1))
                size = min(size, connection.max_outbound_frame_size)
                if size == 0 and unsent:
                    break
                connection.send_data(1, bytes(unsent[:size]), end_stream=size == len(unsent))
                unsent = unsent[size:]
                if not unsent:
                    body = None
            sock.sendall(connection.data_to_send())
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return Answer(None, bytes(answer.body))
            for event in connection.receive_data(data):
                answer.take(event, connection)
        return answer.result


@dataclass
class H2Answer:
    """The answer to stream 1 as its events come."""

    status: int | None = None
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    result: Answer | None = None

    def take(self, event: h2.events.Event, connection: h2.connection.H2Connection) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            self.body += event.data
            connection.acknowledge_received_data(event.flow_controlled_length, 1)
        elif isinstance(event, h2.events.StreamEnded):
            self.ended, self.result = True, Answer(self.status, bytes(self.body))
        elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
            self.ended, self.result = True, Answer(None, bytes(self.body))


def h1_exchange(proxy: RunningProxy, sent: bytes, requests: int = 1) -> list[Answer]:
    """Send `sent` as it is on a connection of its own; the answers to up to `requests`
    requests, in order, until the proxy closes the connection."""
    parser = h11.Connection(h11.CLIENT)
    answers: list[Answer] = []
    with socket.create_connection((proxy.host, proxy.port), timeout=ANSWER_TIMEOUT) as sock:
        sock.sendall(sent)
        status: int | None = None
        body = bytearray()
        # h11 reads answers only to requests it sent; each stands for one of ours.
        parser.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
        while len(answers) < requests:
            event = parser.next_event()
            if event is h11.NEED_DATA:
                try:
                    parser.receive_data(sock.recv(65536))
                except (TimeoutError, OSError):
                    parser.receive_data(b"")
            elif isinstance(event, h11.Response):
                status, body = event.status_code, bytearray()
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                answers.append(Answer(status, bytes(body)))
                if parser.our_state is h11.MUST_CLOSE or parser.their_state is h11.MUST_CLOSE:
                    break
                parser.send(h11.Data(data=b""))
                parser.send(h11.EndOfMessage())
                parser.start_next_cycle()
                parser.send(h11.Request(method="POST", target="/", headers=[("host", "x")]))
            elif isinstance(event, h11.ConnectionClosed):
                break
    return answers


def h1_request(head: bytes, fields: Sequence[tuple[bytes, bytes]], body: bytes = b"") -> bytes:
    lines = [head, b"Host: localhost", *[name + b": " + value for name, value in fields]]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def upstream_requests(upstream: RawUpstream, expected: int) -> list[RawRequest]:
    """The requests the upstream received, once `expected` of them are in (bounded wait)."""
    deadline = time.monotonic() + ANSWER_TIMEOUT
    while len(requests := upstream.requests()) < expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return requests


def test_h2_preflight_shaped_options_with_a_hidden_request_reaches_nothing(
    gateway: FramingGateway,
) -> None:
    answer = h2_exchange(gateway.proxy, b"OPTIONS", b"/", PREFLIGHT_FIELDS, SMUGGLED)
    assert (answer.status, answer.error()) == (401, "missing_token")
    assert gateway.upstream.received() == b""


@pytest.mark.parametrize("size", [len(SMUGGLED), 3 << 20], ids=["buffered", "streamed"])
def test_h2_body_without_length_reaches_http1_as_one_framed_request(
    gateway: FramingGateway, size: int
) -> None:
    body = SMUGGLED + b"x" * (size - len(SMUGGLED))
    fields = [(b"x-auth-token", gateway.token.encode())]
    answer = h2_exchange(gateway.proxy, b"POST", b"/rpc", fields, body)
    assert answer.from_upstream
    [request] = upstream_requests(gateway.upstream, 1)
    assert (request.method, request.target, request.body) == (b"POST", b"/rpc", body)
    if size > 1 << 20:  # beyond stream_large_bodies: streamed, as it comes
        assert request.header(b"transfer-encoding") == b"chunked"
    else:
        assert request.header(b"content-length") == str(size).encode()
        assert request.header(b"transfer-encoding") is None


@pytest.mark.parametrize("length", [b"5", b"100000"], ids=["shorter", "longer"])
def test_h2_body_that_is_not_its_content_length_reaches_nothing(
    gateway: FramingGateway, length: bytes
) -> None:
    fields = [(b"x-auth-token", gateway.token.encode()), (b"content-length", length)]
    answer = h2_exchange(gateway.proxy, b"POST", b"/rpc", fields, SMUGGLED)
    assert not answer.from_upstream
    assert b"/smuggled" not in gateway.upstream.received()
    assert upstream_requests(gateway.upstream, 0) == []


@pytest.mark.parametrize("body", [None, b""], ids=["headers-end-the-stream", "empty-data"])
def test_h2_true_preflight_reaches_the_upstream_without_a_body(
    gateway: FramingGateway, body: bytes | None
) -> None:
    answer = h2_exchange(gateway.proxy, b"OPTIONS", b"/", PREFLIGHT_FIELDS, body)
    if body is not None:
        # A DATA frame, even empty, is a body as HTTP/2 frames it: checked like any request.
        assert (answer.status, answer.error()) == (401, "missing_token")
        assert gateway.upstream.received() == b""
        return
    assert answer.from_upstream
    [request] = upstream_requests(gateway.upstream, 1)
    assert (request.method, request.target, request.body) == (b"OPTIONS", b"/", b"")
    assert request.header(b"content-length") is None
    assert request.header(b"transfer-encoding") is None
    assert request.header(b"origin") == b"https://app.example"


@pytest.mark.parametrize(
    ("method", "fields", "body"),
    [
        pytest.param(b"options", PREFLIGHT_FIELDS, None, id="lower-case"),
        pytest.param(b"Options", PREFLIGHT_FIELDS, None, id="mixed-case"),
        pytest.param(b"OPTIONS", PREFLIGHT_FIELDS, RAW_TRANSACTION, id="with-data"),
        pytest.param(
            b"OPTIONS",
            (*PREFLIGHT_FIELDS, (b"content-length", b"%d" % len(RAW_TRANSACTION))),
            RAW_TRANSACTION,
            id="with-length",
        ),
    ],
)
def test_h2_request_shaped_like_a_preflight_is_checked(
    gateway: FramingGateway,
    method: bytes,
    fields: Sequence[tuple[bytes, bytes]],
    body: bytes | None,
) -> None:
    answer = h2_exchange(gateway.proxy, method, b"/", fields, body)
    assert (answer.status, answer.error()) == (401, "missing_token")
    assert gateway.upstream.received() == b""


HTTP1_NOT_PREFLIGHTS = [
    pytest.param(b"options / HTTP/1.1", (), b"", id="lower-case"),
    pytest.param(b"Options / HTTP/1.1", (), b"", id="mixed-case"),
    pytest.param(
        b"OPTIONS / HTTP/1.1",
        ((b"Content-Length", b"%d" % len(RAW_TRANSACTION)),),
        RAW_TRANSACTION,
        id="with-body",
    ),
    pytest.param(
        b"OPTIONS / HTTP/1.1",
        ((b"Transfer-Encoding", b"chunked"),),
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(RAW_TRANSACTION), RAW_TRANSACTION),
        id="chunked-body",
    ),
    pytest.param(
        b"OPTIONS / HTTP/1.1",
        ((b"Transfer-Encoding", b"chunked"),),
        b"0\r\n\r\n",
        id="chunked-empty",
    ),
    pytest.param(
        b"OPTIONS / HTTP/1.1",
        ((b"Connection", b"upgrade"), (b"Upgrade", b"foo")),
        b"",
        id="with-upgrade",
    ),
]


@pytest.mark.parametrize(("head", "extra", "body"), HTTP1_NOT_PREFLIGHTS)
def test_http1_request_shaped_like_a_preflight_is_checked(
    gateway: FramingGateway, head: bytes, extra: tuple[tuple[bytes, bytes], ...], body: bytes
) -> None:
    [answer] = h1_exchange(gateway.proxy, h1_request(head, (*PREFLIGHT_FIELDS, *extra), body))
    assert answer.status is not None and 400 <= answer.status < 500
    assert gateway.upstream.received() == b""


@pytest.mark.parametrize("length", [None, b"0"], ids=["without-content-length", "content-length-0"])
def test_http1_true_preflight_reaches_the_upstream_without_a_body(
    gateway: FramingGateway, length: bytes | None
) -> None:
    fields = (
        PREFLIGHT_FIELDS if length is None else (*PREFLIGHT_FIELDS, (b"Content-Length", length))
    )
    [answer] = h1_exchange(gateway.proxy, h1_request(b"OPTIONS /graphql HTTP/1.1", fields))
    assert answer.from_upstream
    [request] = upstream_requests(gateway.upstream, 1)
    assert (request.method, request.target, request.body) == (b"OPTIONS", b"/graphql", b"")


@pytest.mark.parametrize(
    "framing",
    [
        pytest.param(
            ((b"Content-Length", b"5"), (b"Transfer-Encoding", b"chunked")), id="length-and-chunked"
        ),
        pytest.param(((b"Content-Length", b"5"), (b"Content-Length", b"5")), id="length-twice"),
        pytest.param(((b"Content-Length", b"5"), (b"Content-Length", b"70")), id="two-lengths"),
        pytest.param(((b"Content-Length", b"5, 70"),), id="length-list"),
        pytest.param(((b"Transfer-Encoding", b"chunked, identity"),), id="chunked-not-last"),
    ],
)
def test_http1_body_with_ambiguous_framing_reaches_nothing(
    gateway: FramingGateway, framing: tuple[tuple[bytes, bytes], ...]
) -> None:
    # With a valid token: mitmproxy itself refuses these before any hook runs.
    fields = ((b"x-auth-token", gateway.token.encode()), *framing)
    body = b"5\r\nhello\r\n0\r\n\r\n" + SMUGGLED
    [answer] = h1_exchange(gateway.proxy, h1_request(b"POST /rpc HTTP/1.1", fields, body))
    assert answer.status == 400
    assert gateway.upstream.received() == b""


# The hostile-input property: random heads and bodies over HTTP/1.1 and HTTP/2 through the one
# proxy; the upstream must receive exactly one request per request the proxy accepted (answered
# by the upstream), nothing for a refused one, and nothing without a valid token but a true
# preflight with no body.

HIDDEN_REQUESTS = [
    SMUGGLED,
    b"GET /hidden HTTP/1.1\r\nHost: other.example\r\n\r\n",
    b"OPTIONS / HTTP/1.1\r\nHost: x\r\nOrigin: o\r\nAccess-Control-Request-Method: GET\r\n\r\n",
]


@dataclass(frozen=True)
class HostileRequest:
    http2: bool
    method: bytes
    token: str | None  # "valid", "unknown" or None
    placement: str
    fields: tuple[tuple[bytes, bytes], ...]
    body: bytes  # what follows the head; over HTTP/1, what lies beyond the length is more
    length: str  # content-length "absent", "right", "shorter" or "longer" than the body


FINDING_1 = HostileRequest(True, b"OPTIONS", None, "header", PREFLIGHT_FIELDS, SMUGGLED, "absent")


@st.composite
def hostile_requests(draw: st.DrawFn) -> HostileRequest:
    http2 = draw(st.booleans())
    # No Upgrade: the recorder reads nothing after an Upgrade request on a connection (it
    # cannot tell a 200 from a switch), and upgrades are finding 3's.
    fields = draw(st.sampled_from([(), PREFLIGHT_FIELDS]))
    hidden = draw(st.lists(st.sampled_from(HIDDEN_REQUESTS), max_size=2))
    body = draw(st.sampled_from([b"", RAW_TRANSACTION])) + b"".join(hidden)
    return HostileRequest(
        http2,
        draw(st.sampled_from([b"OPTIONS", b"options", b"Options", b"GET", b"POST"])),
        draw(st.sampled_from(["valid", "unknown", None])),
        draw(st.sampled_from(["header", "query", "path"])),
        fields,
        body,
        draw(st.sampled_from(["absent", "right", "shorter", "longer"])),
    )


def send_hostile(gateway: FramingGateway, request: HostileRequest) -> list[Answer]:
    """The answers the client got (over HTTP/1 one per request the proxy read)."""
    path, fields = b"/rpc", list(request.fields)
    if request.token is not None:
        token = (gateway.token if request.token == "valid" else UNKNOWN).encode()
        if request.placement == "header":
            fields.append((b"x-auth-token", token))
        elif request.placement == "query":
            path += b"?token=" + token
        else:
            path = b"/" + token + path
    declared = {
        "absent": None,
        "right": len(request.body),
        "shorter": len(request.body) // 2,
        "longer": len(request.body) + 10,
    }[request.length]
    if declared is not None:
        fields.append((b"content-length", b"%d" % declared))
    if request.http2:
        body = request.body or (None if declared is None else b"")
        return [h2_exchange(gateway.proxy, request.method, path, fields, body)]
    # A longer length gets its padding (else the proxy waits for it) and holds what follows.
    padding = b"\0" * 10 if request.length == "longer" else b""
    sent = h1_request(request.method + b" " + path + b" HTTP/1.1", fields, request.body + padding)
    return h1_exchange(gateway.proxy, sent, requests_read_from(sent))


def requests_read_from(sent: bytes) -> int:
    """How many requests the proxy reads from `sent`, read as mitmproxy's `Http1Server` reads
    them: the complete ones, and one more for a head it refuses (answered 400, then closed);
    one cut short waits for the rest and counts not."""
    buffer = ReceiveBuffer()
    buffer += sent
    read = 0
    while lines := buffer.maybe_extract_lines():
        try:
            request = http1.read_request_head([bytes(line) for line in lines])
            size = http1.expected_http_body_size(request)
        except ValueError:
            return read + 1
        assert size is not None, "the strategy draws no chunked body"
        if len(buffer) < size:
            return read
        buffer.maybe_extract_at_most(size)
        read += 1
    return read


def is_true_preflight(request: RawRequest) -> bool:
    names = {name.lower() for name, _ in request.headers}
    return (
        request.method == b"OPTIONS"
        and {b"origin", b"access-control-request-method"} <= names
        and not names & {b"transfer-encoding", b"upgrade"}
        and request.header(b"content-length") in (None, b"0")
        and request.body == b""
    )


@settings(deadline=None)
@given(request=hostile_requests())
@example(request=FINDING_1)
@example(request=replace(FINDING_1, http2=False))
def test_hostile_requests_reach_the_upstream_once_each_and_only_when_accepted(
    framing_gateway: FramingGateway, request: HostileRequest
) -> None:
    gateway = framing_gateway
    gateway.upstream.clear()
    answers = send_hostile(gateway, request)
    accepted = sum(answer.from_upstream for answer in answers)
    arrived = upstream_requests(gateway.upstream, accepted)
    assert len(arrived) == accepted, (answers, arrived)
    if accepted == 0:
        assert gateway.upstream.received() == b""
    for forwarded in arrived:
        valid = forwarded.header(b"x-tokenward-token") == b"framing"
        assert valid or is_true_preflight(forwarded), forwarded


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


# --- finding 4: the store's change check

REFUSAL_WAIT_SECONDS = 10.0


def new_bytes(before: list[bytes], after: list[bytes]) -> bytes:
    """What the upstream's connections delivered between two looks at `connections()`."""
    return b"".join(
        data[len(before[i]) if i < len(before) else 0 :] for i, data in enumerate(after)
    )


def assert_refused_from_now_on(proxy: RunningProxy, token: str) -> None:
    """Every answer is 401 revoked_token, or 503 while the proxy is in doubt, never 200; polled
    until the 401 comes, then a few more."""
    deadline = time.monotonic() + REFUSAL_WAIT_SECONDS
    seen: list[tuple[int, str]] = []
    while not seen or seen[-1] != (401, "revoked_token"):
        assert time.monotonic() < deadline, f"no 401 revoked_token, answers: {seen}"
        answer = proxy.request("GET", "/rpc", [("x-auth-token", token)])
        assert token not in answer.body.decode(errors="replace")
        seen.append(
            (answer.status, str(answer.json()["error"])) if answer.status != 200 else (200, "")
        )
        assert seen[-1] in {(401, "revoked_token"), (503, "store_unavailable")}, seen
    for _ in range(5):
        answer = proxy.request("GET", "/rpc", [("x-auth-token", token)])
        assert (answer.status, answer.json()["error"]) == (401, "revoked_token")


@pytest.mark.parametrize("fault", list(SHM_FAULTS))
def test_deletes_count_after_the_shm_is_lost(tmp_path: Path, fault: str) -> None:
    db = tmp_path / "tokenward.db"
    now = datetime.now(UTC)
    with TokenStore.open(db, create=True) as store:
        first, _ = store.create_token("first", "pat", None, None, "", now)
        second, _ = store.create_token("second", "pat", None, None, "", now)
    with (
        RawUpstream() as upstream,
        start_proxy(ProxySettings(db=db, upstream=upstream.url, listen_port=0)) as proxy,
    ):
        for token in (first, second):
            assert proxy.request("GET", "/rpc", [("x-auth-token", token)]).status == 200
        assert len(upstream.requests()) == 2
        SHM_FAULTS[fault](shm_of(db))

        delete_token_in_another_process(db, "first")
        committed = upstream.connections()
        assert_refused_from_now_on(proxy, first)
        assert new_bytes(committed, upstream.connections()) == b""

        # The proxy reads the store's files as they are now: a live token still passes, and a
        # later delete counts too.
        assert proxy.request("GET", "/rpc", [("x-auth-token", second)]).status == 200
        delete_token_in_another_process(db, "second")
        committed = upstream.connections()
        assert_refused_from_now_on(proxy, second)
        assert new_bytes(committed, upstream.connections()) == b""
        assert proxy.alive()
    assert "Traceback" not in proxy.output()


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


# --- findings 5 and 7: limits, linear decoding, own token in other headers

KIB = 1 << 10
MIB = 1 << 20
# Generous: before the fix a 10 MB head took the proxy about ten seconds to refuse.
ANSWER_TIMEOUT_SECONDS = 60.0
DECODING_ROUNDS = 4  # as far as the core looks for tokens in other decodings


@dataclass(frozen=True)
class SizedAnswer:
    status: int
    body: bytes


def send_head(port: int, head: bytes) -> SizedAnswer:
    """Send `head` (a whole request without a body) on a new connection; the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS) as client:
        client.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = client.recv(65536)
            assert chunk, f"the proxy closed the connection after {received[:200]!r}"
            received += chunk
        answer_head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in answer_head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            chunk = client.recv(65536)
            assert chunk, "the proxy closed the connection mid-answer"
            body += chunk
    return SizedAnswer(int(answer_head.split(b" ", 2)[1]), body)


def request_head(target: str, *fields: tuple[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: node.example", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def decodings(data: bytes) -> list[bytes]:
    """`data` as sent and percent-decoded up to DECODING_ROUNDS times."""
    found = [data]
    for _ in range(DECODING_ROUNDS):
        found.append(unquote_to_bytes(found[-1]))
    return found


def hint_of(token: str) -> bytes:
    return f"{token[:7]}…{token[-4:]}".encode()


@dataclass
class Gateway:
    port: int
    upstream: RawUpstream
    token: str


@pytest.fixture(scope="module")
def store_with_token(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A store with two tokens: this test's request's own, and another one."""
    db = tmp_path_factory.mktemp("bypasses-core") / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        now = datetime.now(UTC)
        token, _ = store.create_token("own", "pat", None, None, "bypasses", now)
        other, _ = store.create_token("other", "pat", None, None, "bypasses", now)
    return db, token, other


@contextmanager
def running_gateway(db: Path, token: str, forward: str) -> Iterator[Gateway]:
    with RawUpstream() as upstream:
        settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0, forward=forward)
        with start_proxy(settings) as proxy:
            yield Gateway(proxy.port, upstream, token)


@pytest.fixture(scope="module", params=["strip", "header", "query", "path"])
def forward_gateway(
    request: pytest.FixtureRequest, store_with_token: tuple[Path, str, str]
) -> Iterator[Gateway]:
    db, token, _ = store_with_token
    with running_gateway(db, token, request.param) as running:
        yield running


@pytest.fixture(scope="module")
def strip_gateway(store_with_token: tuple[Path, str, str]) -> Iterator[Gateway]:
    db, token, _ = store_with_token
    with running_gateway(db, token, "strip") as running:
        yield running


@pytest.mark.parametrize(
    ("head", "status", "error"),
    [
        # Finding 5's heads: 8.5 to 9.6 s and 1.9 s of the proxy's CPU each before the fix.
        (request_head("/", ("x-foo", "%" * (10 * MIB))), 431, b"header_too_large"),
        (request_head("/", ("x-foo", "%" * MIB)), 431, b"header_too_large"),
        (request_head("/?" + "&".join(["a=%2525252525252525"] * 100_000)), 414, b"target_too_long"),
        # A name counts as much as a value.
        (request_head("/", ("x-" + "a" * 64 * KIB, "1")), 431, b"header_too_large"),
    ],
    ids=["header-10MB", "header-1MB", "query-100000-items", "header-name-64KiB"],
)
def test_a_head_over_the_size_limits_is_refused_and_nothing_reaches_the_upstream(
    strip_gateway: Gateway, head: bytes, status: int, error: bytes
) -> None:
    strip_gateway.upstream.clear()
    answer = send_head(strip_gateway.port, head)
    assert (answer.status, f'"error": "{error.decode()}"'.encode() in answer.body) == (status, True)
    assert strip_gateway.upstream.received() == b""


def test_a_head_at_the_size_limits_is_judged_and_forwarded_as_usual(
    strip_gateway: Gateway,
) -> None:
    target = "/?a=" + "%25" * ((64 * KIB - 4) // 3)
    field = ("x-pad", "%" * (64 * KIB - len("x-pad")))
    strip_gateway.upstream.clear()
    head = request_head(target, field, ("x-auth-token", strip_gateway.token))
    assert send_head(strip_gateway.port, head).status == 200
    (received,) = strip_gateway.upstream.requests()
    assert received.target == target.encode()
    assert received.header(b"x-pad") == field[1].encode()


def test_the_requests_own_token_in_other_headers_reaches_the_upstream_as_its_hint(
    forward_gateway: Gateway, store_with_token: tuple[Path, str, str]
) -> None:
    token, other = forward_gateway.token, store_with_token[2]
    escaped = token.replace("s", "%73", 1)
    carried = {
        b"Referer": (
            f"https://app.example/rpc?token={token}&b=1",
            b"https://app.example/rpc?token=%s&b=1",
        ),
        b"Cookie": (f"session=1; tw={escaped}", b"session=1; tw=%s"),
        b"Authorization": (f"Bearer {token}", b"Bearer %s"),
        b"x_auth_token": (token.replace("_", "%255F"), b"%s"),
    }
    fields = [(name.decode(), sent) for name, (sent, _) in carried.items()]
    forward_gateway.upstream.clear()
    head = request_head(
        "/graphql", ("x-auth-token", token), *fields, ("x-other", f"Bearer {other}")
    )
    assert send_head(forward_gateway.port, head).status == 200
    (received,) = forward_gateway.upstream.requests()
    for name, (_, expected) in carried.items():
        value = received.header(name) or b""
        # Booleans only: a failure must not print the token.
        carries_token = any(token.encode() in decoded for decoded in decodings(value))
        assert not carries_token, f"{name!r} reached the upstream with the token"
        as_expected = value == expected % hint_of(token)
        assert as_expected, (
            f"{name!r} changed beyond the token: {value.replace(hint_of(token), b'HINT')!r}"
        )
    # Another token in another header is no placement, and this request's it is not.
    other_as_sent = received.header(b"x-other") == f"Bearer {other}".encode()
    assert other_as_sent, "another token was not forwarded as it came"


def test_with_strip_no_byte_of_the_requests_own_token_reaches_the_upstream(
    strip_gateway: Gateway,
) -> None:
    token = strip_gateway.token
    strip_gateway.upstream.clear()
    head = request_head(
        f"/{token}",
        ("Referer", f"https://app.example/{token.replace('p', '%2570')}"),
        ("Cookie", f"tw={''.join(f'%{ord(c):02x}' for c in token)}"),
        ("Authorization", f"Token {token}"),
        ("x_auth_token", token),
    )
    assert send_head(strip_gateway.port, head).status == 200
    received = strip_gateway.upstream.received()
    carries_token = any(token.encode() in decoded for decoded in decodings(received))
    assert not carries_token, "the token reached the upstream"
    assert received.startswith(b"GET / HTTP/1.1\r\n")
    assert received.count(hint_of(token)) == 4

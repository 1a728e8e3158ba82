"""What a driver saw, and the network driver that sends requests to a running gateway.

A driver sends one ``HarnessRequest`` under a ``Scenario`` and reports an ``Observation``: the
answer the client got and, where the driver can see it, what reached the upstream. Drivers
decide nothing; the oracle says what should have happened and ``harness.run`` compares.

``HttpGateway`` is the live driver (with the recording upstream's control URL it reads what the
upstream received) and the external one (without it: status and body only). The in-process
driver, which runs the addon itself, is ``harness.inprocess``.

A gateway that misbehaves is reported per request, never by an exception: every exchange has
one deadline (``timeout`` seconds from connecting to the answer's last byte), and what went
wrong is a ``TransportFailure``: a timeout (also an answer that never ends), a reset (the
connection closed or reset before a whole answer), or an answer that is not HTTP.

Requests go out byte for byte as the ``HarnessRequest`` holds them: the request line and the
header fields are written to the socket as latin-1 bytes, with only ``Host`` and (for a body)
``Content-Length`` added, so nothing is normalised on the way. WebSocket handshakes are sent
the same way and then driven by the ``websockets`` sans-I/O client with the request's own
``Sec-WebSocket-Key``; an opened WebSocket must echo one text message.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import urlsplit

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

from tokenward.fixtures.upstream import UpstreamRecord
from tokenward.harness.oracle import HarnessRequest, ModelToken, Scenario, StoreModel
from tokenward.store import Store

REQUEST_TIMEOUT_SECONDS = 10.0
# An answer body longer than this is taken for one that never ends.
MAX_ANSWER_BYTES = 16 << 20
WEBSOCKET_PROBE = "tokenward-harness-probe"
# A moment before any expiry a test store uses: the creation time of imported tokens.
LONG_AGO = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
HARNESS_OWNER = "conformance-harness"
_READ_SIZE = 65536


class TransportFailure(StrEnum):
    """Why a request got no answer."""

    TIMEOUT = "timeout"
    RESET = "reset"
    NOT_HTTP = "not HTTP"


class EndlessAnswer(TimeoutError):
    """The answer went on past the deadline or past ``MAX_ANSWER_BYTES``."""


@dataclass(frozen=True)
class Answer:
    """The response the client got."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


@dataclass(frozen=True)
class UpstreamSeen:
    """One request as the upstream received it; strings hold bytes decoded as latin-1."""

    target: str
    headers: tuple[tuple[str, str], ...]
    body_length: int
    body_sha256: str

    @classmethod
    def of_record(cls, record: UpstreamRecord) -> UpstreamSeen:
        return cls(record.target, record.headers, record.body_length, record.body_sha256)

    @classmethod
    def of_parts(
        cls, target: str, headers: tuple[tuple[str, str], ...], body: bytes
    ) -> UpstreamSeen:
        return cls(target, headers, len(body), hashlib.sha256(body).hexdigest())


@dataclass(frozen=True)
class Observation:
    """What happened to one request.

    ``answer`` is what the client got (None when the in-process driver forwarded: no upstream
    answers there). ``upstream`` is every request that reached the upstream because of this
    one; None when the driver cannot see the upstream. ``recorded`` is the flow's
    ``metadata["tokenward"]`` (in-process only). ``websocket_echo`` tells whether an opened
    WebSocket echoed the probe message (None when none was opened). ``failure`` describes a
    request that got no answer at all, and ``no_answer`` what kind of failure that was.
    ``added_headers`` are the lower-case names of fields the driver added to the request
    (``host``, ``content-length``).
    """

    answer: Answer | None
    upstream: tuple[UpstreamSeen, ...] | None
    recorded: Mapping[str, Any] | None = None
    websocket_echo: bool | None = None
    failure: str | None = None
    added_headers: frozenset[str] = field(default_factory=frozenset)
    no_answer: TransportFailure | None = None


class Driver(Protocol):
    """Sends a request to the gateway under test and reports what happened."""

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation: ...


# --- setting up a store (setup for the gateways the harness starts, never judgement) -----------


def populate_store(store: Store, model: StoreModel) -> None:
    """Register the model's services and import its tokens (deleting the revoked ones)."""
    for service in model.services.values():
        store.add_service(service.name, service.layout, service.hosts or None, service.upstream)
    for plaintext, token in model.tokens.items():
        import_model_token(store, plaintext, token)


def import_model_token(store: Store, plaintext: str, token: ModelToken) -> None:
    """Store one model token as it stands, created a day before its expiry (or long ago)."""
    created_at = LONG_AGO
    if token.expires_at is not None and token.expires_at <= LONG_AGO:
        created_at = token.expires_at - timedelta(days=1)
    store.import_token(
        plaintext, token.name, token.expires_at, token.scope, HARNESS_OWNER, created_at
    )
    if token.revoked:
        store.delete_token(token.name, created_at)


# --- the network driver -------------------------------------------------------------------------


class HttpGateway:
    """A gateway reached over HTTP/1.1 at ``url``; with ``control_url``, its recording upstream.

    The ``Host`` header is the scenario's ``service`` (the host naming a service), else the
    authority of ``url``. Use it as a context manager or call ``close`` when done.
    """

    def __init__(
        self,
        url: str,
        *,
        control_url: str | None = None,
        timeout: float = REQUEST_TIMEOUT_SECONDS,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            raise ValueError(f"the gateway URL must be http:// or https:// with a host: {url!r}")
        self.url = url
        self.timeout = timeout
        self._secure = parts.scheme == "https"
        self._address = (parts.hostname, parts.port or (443 if self._secure else 80))
        self._authority = parts.netloc
        self._upstream_log = None if control_url is None else UpstreamLog(control_url, timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._upstream_log is not None:
            self._upstream_log.close()

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation:
        host = scenario.service or self._authority
        added = frozenset({"host", "content-length"} if request.body else {"host"})
        deadline = time.monotonic() + self.timeout
        try:
            with self._connect() as connection:
                head = request_head(request, host)
                if request.websocket:
                    answer, echo = _websocket_exchange(connection, head, request, deadline)
                else:
                    data = head + request.body
                    answer, echo = _http_exchange(connection, data, request, deadline), None
        except (OSError, http.client.HTTPException, ValueError) as error:
            return Observation(
                None,
                self._arrived(),
                failure=_describe(error),
                added_headers=added,
                no_answer=transport_failure(error),
            )
        return Observation(answer, self._arrived(), websocket_echo=echo, added_headers=added)

    def _connect(self) -> socket.socket:
        connection = socket.create_connection(self._address, timeout=self.timeout)
        if not self._secure:
            return connection
        context = ssl.create_default_context()
        context.set_alpn_protocols(["http/1.1"])
        return context.wrap_socket(connection, server_hostname=self._address[0])

    def _arrived(self) -> tuple[UpstreamSeen, ...] | None:
        """What reached the upstream since the last look; None without a control URL."""
        if self._upstream_log is None:
            return None
        return tuple(UpstreamSeen.of_record(record) for record in self._upstream_log.new_records())


class UpstreamLog:
    """The recording upstream's log, read through its control URL on one kept-alive connection.

    ``fixtures.upstream.fetch_records`` opens a new client per call (about 20 ms here); the
    harness reads the log after every request, so it keeps one connection instead.
    """

    def __init__(self, control_url: str, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        parts = urlsplit(control_url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"the upstream log URL must be http:// with a host: {control_url!r}")
        self._connection = http.client.HTTPConnection(
            parts.hostname, parts.port or 80, timeout=timeout
        )
        self._path = parts.path.rstrip("/") + "/records"
        records = self._records_since(0)
        self._mark = records[-1].seq if records else 0

    def new_records(self) -> list[UpstreamRecord]:
        """The records made since the last call (or since this reader was made)."""
        records = self._records_since(self._mark)
        if records:
            self._mark = records[-1].seq
        return records

    def close(self) -> None:
        self._connection.close()

    def _records_since(self, since: int) -> list[UpstreamRecord]:
        self._connection.request("GET", f"{self._path}?since={since}")
        response = self._connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise ValueError(f"the upstream log answered {response.status}: {body[:200]!r}")
        payload = json.loads(body)
        if not isinstance(payload, list):
            raise ValueError("the upstream log did not return a JSON list")
        return [UpstreamRecord.from_json(item) for item in payload]


def request_head(request: HarnessRequest, host: str) -> bytes:
    """The request line and header fields, byte for byte, with Host (and Content-Length)."""
    fields = [("Host", host), *request.headers]
    if request.body:
        fields.append(("Content-Length", str(len(request.body))))
    lines = [f"{request.method} {request.target} HTTP/1.1"]
    lines += [f"{name}: {value}" for name, value in fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def transport_failure(error: Exception) -> TransportFailure:
    """What kind of failure an exchange's exception is."""
    if isinstance(error, TimeoutError):  # socket.timeout and EndlessAnswer included
        return TransportFailure.TIMEOUT
    # refused, reset or closed early (RemoteDisconnected is a ConnectionResetError)
    if isinstance(error, OSError | http.client.IncompleteRead):
        return TransportFailure.RESET
    return TransportFailure.NOT_HTTP


def _until(connection: socket.socket, deadline: float) -> None:
    """Let the next socket operation wait no longer than the deadline."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise EndlessAnswer("the answer did not end before the deadline")
    connection.settimeout(remaining)


def _http_exchange(
    connection: socket.socket, data: bytes, request: HarnessRequest, deadline: float
) -> Answer:
    _until(connection, deadline)
    connection.sendall(data)
    response = http.client.HTTPResponse(connection, method=request.method)
    try:
        _until(connection, deadline)
        response.begin()
        chunks: list[bytes] = []
        received = 0
        while True:
            _until(connection, deadline)
            chunk = response.read1(_READ_SIZE) if not response.isclosed() else b""
            if not chunk:
                break
            received += len(chunk)
            if received > MAX_ANSWER_BYTES:
                raise EndlessAnswer(f"the answer's body went on past {MAX_ANSWER_BYTES} bytes")
            chunks.append(chunk)
    finally:
        response.close()
    return Answer(response.status, tuple(response.getheaders()), b"".join(chunks))


def _websocket_exchange(
    connection: socket.socket, head: bytes, request: HarnessRequest, deadline: float
) -> tuple[Answer, bool | None]:
    """The handshake as given, then one echoed text message and a clean close when it opens."""
    client = ClientProtocol(parse_uri("ws://harness.invalid/"))
    key = next(iter(request.header_values("sec-websocket-key")), None)
    if key is not None:
        client.key = key
    _until(connection, deadline)
    connection.sendall(head)
    response = _receive_response(connection, client, deadline)
    answer = Answer(
        response.status_code,
        tuple((name, value) for name, value in response.headers.raw_items()),
        bytes(response.body),
    )
    if client.state is not State.OPEN:
        return answer, None
    client.send_text(WEBSOCKET_PROBE.encode())
    _flush(connection, client)
    echoed = _receive_text(connection, client, deadline)
    client.send_close(1000)
    _flush(connection, client)
    return answer, echoed == WEBSOCKET_PROBE


def _receive_response(
    connection: socket.socket, client: ClientProtocol, deadline: float
) -> Response:
    while True:
        for event in client.events_received():
            if isinstance(event, Response):
                return event
        _until(connection, deadline)
        data = connection.recv(_READ_SIZE)
        if not data:
            client.receive_eof()
            if client.handshake_exc is not None:
                raise ValueError(f"no valid handshake answer: {client.handshake_exc}")
            raise ValueError("the connection closed before the handshake answer")
        client.receive_data(data)


def _receive_text(connection: socket.socket, client: ClientProtocol, deadline: float) -> str | None:
    """The next text message, or None when the connection closes first."""
    while True:
        for event in client.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                return bytes(event.data).decode("utf-8", "replace")
        _flush(connection, client)  # pongs and close answers
        _until(connection, deadline)
        data = connection.recv(_READ_SIZE)
        if not data:
            return None
        client.receive_data(data)


def _flush(connection: socket.socket, client: ClientProtocol) -> None:
    for data in client.data_to_send():
        if data:
            connection.sendall(data)


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__

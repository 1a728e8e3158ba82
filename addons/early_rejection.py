"""Answering a rejected upload at once, before mitmproxy has read its body.

mitmproxy sends an answer set in `requestheaders` only after it has consumed the whole request
body, so a 500 MB upload without a token would be read to the end before its 401. Instead the
addon points such a request at this small responder on loopback and streams the body into a
callable that drops every chunk: the responder reads the request head, answers with the
rejection at once and closes. Nothing of the body is kept and the real upstream is never
contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from http import HTTPStatus

from mitmproxy import http

from tokenward.core.verdicts import ErrorCode, Rejection

REJECTION_HEADER = "x-tokenward-rejection"
LINGER_HEADER = "x-tokenward-linger"
_HEAD_LIMIT = 256 * 1024
_HEAD_TIMEOUT_SECONDS = 10.0
_LINGER_SECONDS = 1.0


def may_have_body(request: http.Request) -> bool:
    """False only when the request certainly has no body (HTTP/1 without length or chunks)."""
    if "transfer-encoding" in request.headers:
        return True
    length = request.headers.get("content-length")
    if length is not None:
        return bool(length.strip() != "0")
    # An HTTP/2 or HTTP/3 request may send DATA frames with no content-length.
    return bool(request.is_http2 or request.is_http3)


def discard_chunks(chunk: bytes) -> Iterable[bytes]:
    """A `request.stream` callable: nothing of the rejected body is forwarded or kept."""
    return ()


class RejectionResponder:
    """An HTTP/1.1 listener on loopback that answers each request with the rejection it names."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def divert(self, flow: http.HTTPFlow, rejection: Rejection) -> None:
        """Send `flow` here instead of upstream, its body dropped chunk by chunk."""
        request = flow.request
        request.scheme = "http"
        request.data.host = "127.0.0.1"
        request.data.port = self.port
        # The whole answer, as ASCII JSON: one line, whatever the message quotes.
        request.headers[REJECTION_HEADER] = json.dumps(rejection.document())
        if request.is_http2 or request.is_http3:
            request.headers[LINGER_HEADER] = "1"
        request.stream = discard_chunks

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(
                reader.readuntil(b"\r\n\r\n"), timeout=_HEAD_TIMEOUT_SECONDS
            )
            fields = _header_fields(head[:_HEAD_LIMIT])
            writer.write(_response_for(fields))
            await writer.drain()
            if LINGER_HEADER in fields:
                # mitmproxy resets an HTTP/2 stream (INTERNAL_ERROR, no answer) when this
                # connection closes before the client's request has ended; closing only once
                # mitmproxy has (or after a second) lets the answer through. Over HTTP/1 the
                # close is what makes mitmproxy drop the client and the rest of a large upload.
                await asyncio.wait_for(_discard_until_eof(reader), timeout=_LINGER_SECONDS)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


async def _discard_until_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def _header_fields(head: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip().lower()] = value.strip()
    return fields


def _response_for(fields: dict[str, str]) -> bytes:
    rejection = _rejection_named(fields.get(REJECTION_HEADER, ""))
    body = rejection.body()
    status = HTTPStatus(rejection.status)
    lines = [f"HTTP/1.1 {status.value} {status.phrase}"]
    lines += [f"{name}: {value}" for name, value in rejection.headers(fields.get("origin"))]
    lines += [f"content-length: {len(body)}", "connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


def _rejection_named(value: str) -> Rejection:
    try:
        rejection = Rejection.from_document(json.loads(value))
    except ValueError:
        rejection = None
    # Only the addon diverts requests here; anything else is refused as the store would be.
    return rejection or Rejection(ErrorCode.STORE_UNAVAILABLE, None)

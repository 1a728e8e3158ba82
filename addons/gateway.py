"""The tokenward addon: access-token checks and rewrites for mitmproxy.

Loaded through the script `addons/tokenward.py`. The decisions are the pure core's
(`tokenward_lib.core`) and the token facts the store's (`tokenward_lib.store`); this module
only moves values between them and mitmproxy's flows.
Hooks never raise: an unexpected error fails closed with 503 `store_unavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from operator import itemgetter
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from mitmproxy import command, connection, ctx, exceptions, flow, http
from mitmproxy.net.http import url
from mitmproxy.proxy import events
from mitmproxy.proxy.mode_specs import ReverseMode

from addons.early_rejection import RejectionResponder, may_have_body
from addons.log_redaction import install_log_redaction, redact_log_text, uninstall_log_redaction
from tokenward_lib.core.layouts import Layout, layout_named
from tokenward_lib.core.placement import (
    Finding,
    Identity,
    Request,
    UnplaceableTokenError,
    find_token,
    oversized,
    redact_request,
    rewrite_request,
    withhold_oversized,
)
from tokenward_lib.core.tokens import token_hint
from tokenward_lib.core.verdicts import (
    STATUS,
    STORE_OUTCOME_ERRORS,
    ErrorCode,
    Forward,
    Rejection,
    StoreOutcome,
)
from tokenward_lib.store import ServiceRecord, StoreError, TokenStore

logger = logging.getLogger(__name__)

MODES = ("enforce", "observe")
PREFLIGHTS = ("pass", "enforce")
FORWARDS = tuple(forward.value for forward in Forward)
LAYOUT_NAMES = ("generic", "ipfs", "avalanche", "fuji")
SIZE_LIMITS = ("tokenward_max_target", "tokenward_max_header")
DEFAULT_SIZE_LIMIT = 64 * 1024
WATCH_INTERVAL_SECONDS = 0.25
# How often the path of the store is looked at (one `stat`) for a file removed, replaced or
# written in place by something other than SQLite. Changes to tokens and services need no look:
# every request sees what was committed before it (see TokenStore._drop_cache_if_committed).
FILE_CHECK_SECONDS = 0.05
USAGE_FLUSH_INTERVAL_SECONDS = 5.0
POLICY_VIOLATION = 1008
H2_OR_H3 = (b"HTTP/2.0", b"HTTP/3")  # versions that carry the Host as :authority


# A partial, not a function: called once per request, and it adds no Python frame.
utc_now: Callable[[], datetime] = partial(datetime.now, UTC)


class Route(NamedTuple):
    """The service a request addresses and where it goes; `known` is False for row 0.

    Made when the services are read (or the options set), not per request.
    """

    service: str | None
    layout: Layout
    upstream: UpstreamTarget | None
    known: bool = True


class UpstreamTarget(NamedTuple):
    """Where a service's upstream URL sends a request, and the Host it expects."""

    scheme: bytes  # as mitmproxy's request data holds it
    host: str
    port: int
    path_prefix: bytes
    host_header: str


@lru_cache(maxsize=256)
def upstream_target(upstream: str) -> UpstreamTarget:
    target = urlsplit(upstream)
    scheme = "https" if target.scheme in ("https", "wss") else "http"
    port = target.port or (443 if scheme == "https" else 80)
    assert target.hostname is not None, "the store keeps upstream URLs with a host"
    host_header = url.hostport(scheme, target.hostname, port)
    return UpstreamTarget(
        scheme.encode(), target.hostname, port, target.path.rstrip("/").encode(), host_header
    )


@dataclass(slots=True)
class OpenWebSocket:
    """An accepted WebSocket whose token is checked again while it stays open."""

    flow: http.HTTPFlow
    token: str = field(repr=False)
    service: str | None


class TokenWard:
    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.store: TokenStore | None = None
        self.responder = RejectionResponder()
        self.open_websockets: dict[str, OpenWebSocket] = {}
        self.routes_by_host: dict[str, Route] = {}
        self.services_seen: tuple[ServiceRecord, ...] | None = None
        self.file_checked_at = -FILE_CHECK_SECONDS
        self.store_failing = False  # the last read of a token failed
        self.store_error: StoreError | None = None
        # The options, read once in `configure`: `ctx.options` copies on every read.
        self.observing = False
        self.forward = Forward.STRIP
        self.forward_name = self.forward.value
        self.default_route = Route(None, layout_named("generic"), None)
        self.unknown_service_route = self.default_route._replace(known=False)
        self.preflights_pass = True
        self.max_target = DEFAULT_SIZE_LIMIT
        self.max_header = DEFAULT_SIZE_LIMIT
        self.client_host_kept = False
        self._forcing_host_header = False
        self._websocket_tokens: dict[str, tuple[str, str | None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # Options

    def load(self, loader: Any) -> None:
        # mitmproxy logs some requests whole before any hook sees them (a bad request line).
        install_log_redaction()
        loader.add_option(
            "tokenward_db",
            str,
            os.environ.get("TOKENWARD_DB", "tokenward.db"),
            "Path of the tokenward SQLite store (default: $TOKENWARD_DB, else tokenward.db).",
        )
        loader.add_option(
            "tokenward_mode",
            str,
            "enforce",
            "enforce: reject what the contract rejects; observe: reject nothing, annotate flows.",
        )
        loader.add_option(
            "tokenward_forward",
            str,
            "strip",
            "Where the upstream receives the token: strip, header, query, path or keep.",
        )
        loader.add_option(
            "tokenward_layout",
            str,
            "generic",
            "Path layout of the default service: generic, ipfs, avalanche or fuji.",
        )
        loader.add_option(
            "tokenward_preflight",
            str,
            "pass",
            "CORS preflights: pass (forward without a token) or enforce (check like any request).",
        )
        loader.add_option(
            "tokenward_max_target",
            int,
            DEFAULT_SIZE_LIMIT,
            "Longest request target accepted, in bytes; a longer one is refused with 414.",
        )
        loader.add_option(
            "tokenward_max_header",
            int,
            DEFAULT_SIZE_LIMIT,
            "Largest header field (name and value) accepted, in bytes; refused with 431.",
        )

    def configure(self, updated: set[str]) -> None:
        for option, choices in (
            ("tokenward_mode", MODES),
            ("tokenward_forward", FORWARDS),
            ("tokenward_layout", LAYOUT_NAMES),
            ("tokenward_preflight", PREFLIGHTS),
        ):
            value = getattr(ctx.options, option)
            if option in updated and value not in choices:
                raise exceptions.OptionsError(
                    f"{option} must be one of {', '.join(choices)}; got {value!r}"
                )
        for option in SIZE_LIMITS:
            limit = getattr(ctx.options, option)
            if option in updated and limit <= 0:
                raise exceptions.OptionsError(
                    f"{option} must be a positive number of bytes; got {limit!r}"
                )
        self.max_target = ctx.options.tokenward_max_target
        self.max_header = ctx.options.tokenward_max_header
        self.observing = ctx.options.tokenward_mode == "observe"
        self.forward = Forward(ctx.options.tokenward_forward)
        self.forward_name = self.forward.value
        self.default_route = Route(None, layout_named(ctx.options.tokenward_layout), None)
        self.unknown_service_route = self.default_route._replace(known=False)
        self.preflights_pass = ctx.options.tokenward_preflight == "pass"
        if "tokenward_db" in updated:
            self._open_store(ctx.options.tokenward_db)
        if "keep_host_header" in updated and not self._forcing_host_header:
            # Routing by service needs the host the client addressed, which reverse mode
            # overwrites unless keep_host_header is set. The addon sets it, remembers what the
            # user chose, and writes the upstream's host itself when forwarding, as mitmproxy
            # would have.
            self.client_host_kept = ctx.options.keep_host_header
            if not self.client_host_kept:
                self._forcing_host_header = True
                try:
                    ctx.options.keep_host_header = True
                finally:
                    self._forcing_host_header = False

    def _open_store(self, path: str) -> None:
        # One store per file in a process (see TokenStore): the one open goes first, unless it
        # is that very file. A switch that fails leaves none open: requests fail closed.
        if self.store is not None:
            if self.store.holds(path):
                return
            self.store.close()
            self.store = None
        try:
            self.store = TokenStore.open(path, create=False)
        except StoreError as error:
            raise exceptions.OptionsError(f"tokenward_db: {error}") from None
        self.file_checked_at = -FILE_CHECK_SECONDS
        self._refresh_services()

    # Lifecycle

    async def running(self) -> None:
        if not self.responder.running:
            await self.responder.start()
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._watch_open_websockets()))
            self._tasks.append(asyncio.create_task(self._flush_usage_periodically()))

    async def done(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks.clear()
        await self.responder.stop()
        if self.store is not None:
            with contextlib.suppress(StoreError):
                self.store.flush_usage()
            self.store.close()
            self.store = None
        uninstall_log_redaction()

    # Hooks

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.request.data.method == b"CONNECT" or flow.response is not None:
            return
        try:
            self._decide(flow)
        except Exception:
            logger.exception("tokenward: unexpected error; failing closed")
            try:
                self._reject(flow, Rejection(ErrorCode.STORE_UNAVAILABLE, None))
            except Exception:
                logger.exception("tokenward: could not answer; closing the connection")
                flow.kill()

    def response(self, flow: http.HTTPFlow) -> None:
        self._redact(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._websocket_tokens.pop(flow.id, None)
        self._redact(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        close_client_socket(client)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        pending = self._websocket_tokens.pop(flow.id, None)
        if pending is not None:
            token, service = pending
            self.open_websockets[flow.id] = OpenWebSocket(flow, token, service)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.open_websockets.pop(flow.id, None)
        self._redact(flow)

    @command.command("tokenward.explain")
    def explain(self, flows: Sequence[flow.Flow]) -> None:
        """Log what tokenward decided for each selected flow and why."""
        for selected in flows:
            state = selected.metadata.get("tokenward")
            if state is None:
                logger.info(f"{selected.id}: tokenward did not look at this flow")
            else:
                logger.info(f"{selected.id}: {describe(state)}")

    # Deciding

    def _decide(self, flow: http.HTTPFlow) -> None:
        route = self._route(flow)
        if route is None:
            return  # regular mode, a host that is no service: passes through untouched
        request = request_of(flow)
        observing = self.observing
        # Before anything decodes the request: its lengths only.
        size_error = oversized(request, self.max_target, self.max_header)
        if size_error is not None and not observing:
            flow.metadata["tokenward"] = {
                "mode": "enforce",
                "forward": self.forward_name,
                "service": route.service,
                "warnings": [],
            }
            self._reject(flow, Rejection(size_error, None))
            return
        finding = find_token(request, route.layout)
        placement, value = finding.placement, finding.value
        # str() of these StrEnums gives the plain value without Python code (`.value` runs some).
        state: dict[str, Any] = {
            "mode": "observe" if observing else "enforce",
            "forward": self.forward_name,
            "service": route.service,
            "layout": str(route.layout.name),
            "placement": None if placement is None else str(placement),
            "token": None if value is None else token_hint(value),
            "warnings": [],
        }
        flow.metadata["tokenward"] = state
        if finding.in_url:
            state["warnings"].append("the token travels in the URL, where logs keep it")

        if size_error is None:
            rejection, identity = self._verdict(request, route, finding)
        else:  # observe mode: what enforce would answer comes first
            rejection, identity = Rejection(size_error, None), None
        state["verdict"] = "accepted" if rejection is None else rejection.error.value
        if rejection is not None:
            state["status"] = rejection.status
            if not observing:
                self._reject(flow, rejection)
                return

        try:
            upstream_view = rewrite_request(request, finding, route.layout, self.forward, identity)
        except UnplaceableTokenError:
            if not observing:
                self._reject(flow, Rejection(ErrorCode.UNPLACEABLE_TOKEN, finding.placement))
                return
            if rejection is None:  # every rejection comes first
                state["verdict"] = ErrorCode.UNPLACEABLE_TOKEN.value
                state["status"] = STATUS[ErrorCode.UNPLACEABLE_TOKEN]
            state["warnings"].append("no place for the token in this path; it was stripped")
            upstream_view = rewrite_request(request, finding, route.layout, Forward.STRIP)
        host_header = self._upstream_host_header(flow, route)
        apply_request(flow, upstream_view, request, host_header)
        self._send_to(flow, route, host_header)
        # An identity means the store accepted the finding's one token.
        if identity is not None and is_websocket(request):
            assert finding.value is not None
            self._websocket_tokens[flow.id] = (finding.value, route.service)
        if observing:
            self._annotate(flow, state)

    def _verdict(
        self, request: Request, route: Route, finding: Finding
    ) -> tuple[Rejection | None, Identity | None]:
        if not route.known:
            return Rejection(ErrorCode.UNKNOWN_SERVICE, None), None
        if finding.error is ErrorCode.MISPLACED_TOKEN:
            return Rejection(finding.error, finding.placement), None
        if self.preflights_pass and is_preflight(request):
            return None, None
        if finding.error is not None:
            return Rejection(finding.error, finding.placement), None
        token = finding.value
        assert token is not None, "a finding without error holds one token"
        try:
            if self.store is None:
                raise StoreError("no token store is open")
            if self.store_error is not None:
                raise self.store_error
            now = self.clock()
            verification = self.store.verify(token, route.service, now)
        except StoreError as error:
            logger.warning(f"tokenward: token store unavailable: {error}")
            self.store_failing = True  # every request looks at the file until one succeeds
            return Rejection(ErrorCode.STORE_UNAVAILABLE, finding.placement), None
        self.store_failing = False
        outcome = verification.outcome
        if outcome is not StoreOutcome.OK:
            return Rejection(STORE_OUTCOME_ERRORS[outcome], finding.placement), None
        record = verification.record
        assert record is not None, "an accepted token has a record"
        self.store.note_used(record, now)
        return None, Identity(record.name, record.kind)

    def _route(self, flow: http.HTTPFlow) -> Route | None:
        self._refresh_services()
        if not self.routes_by_host:
            return self.default_route
        route = self.routes_by_host.get(addressed_host(flow))
        if route is not None:
            return route
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            return self.unknown_service_route
        return None

    def _refresh_services(self) -> None:
        """Take the services as the store has them now (the store tells a commit from memory),
        and look at the store file when it is time: a file removed or replaced is seen there.

        The last services read stay in force while the store cannot be read, so routing and
        row 0 keep working while rows 5 to 8 fail closed.
        """
        if self.store is None:
            return
        now = self.monotonic()
        try:
            # While the store is in trouble, every request looks again, to recover at once.
            if (
                self.store_failing
                or self.store_error is not None
                or now - self.file_checked_at >= FILE_CHECK_SECONDS
            ):
                self.store.check_file()
                self.file_checked_at = now
            services = self.store.list_services()
            if services is not self.services_seen:
                self.routes_by_host = routes_by_host(services)
                self.services_seen = services
            self.store_error = None
        except StoreError as error:
            self.store_error = error

    # Acting

    def _reject(self, flow: http.HTTPFlow, rejection: Rejection) -> None:
        state = flow.metadata.setdefault("tokenward", {})
        state["verdict"] = rejection.error.value
        state["status"] = rejection.status
        request = request_of(flow)
        # What is over a size limit is withheld, not decoded: the record stays linear in it.
        recorded = withhold_oversized(request, self.max_target, self.max_header)
        apply_request(flow, redact_request(recorded), request)
        logger.info(f"tokenward: {flow.request.method} rejected: {describe(state)}")
        if self.responder.running and may_have_body(flow.request):
            self.responder.divert(flow, rejection)
            return
        origin = flow.request.headers.get("origin")
        fields = [
            (name.encode(), value.encode("utf-8", "surrogateescape"))
            for name, value in rejection.headers(origin)
        ]
        flow.response = http.Response.make(rejection.status, rejection.body(), fields)

    def _upstream_host_header(self, flow: http.HTTPFlow, route: Route) -> str | None:
        """The Host the upstream expects, or None to forward the client's as it came.

        mitmproxy would write the reverse upstream's itself; the addon keeps the client's Host
        for routing (keep_host_header) and so writes it, unless the user chose to keep it.
        """
        if self.client_host_kept:
            return None
        if route.upstream is not None:
            return route.upstream.host_header
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            data = flow.request.data
            return reverse_host_header(data.scheme, data.host, data.port)
        return None

    def _send_to(self, flow: http.HTTPFlow, route: Route, host_header: str | None) -> None:
        data = flow.request.data
        if host_header is not None and data.http_version in H2_OR_H3:
            flow.request.authority = host_header  # HTTP/2 and 3 carry it as :authority
        target = route.upstream
        if target is None:
            return
        data.scheme = target.scheme
        data.host = target.host
        data.port = target.port
        if target.path_prefix:
            data.path = target.path_prefix + data.path

    def _annotate(self, flow: http.HTTPFlow, state: dict[str, Any]) -> None:
        """Observe mode's summary; enforce mode builds none per request."""
        summary = describe(state)
        flow.comment = f"tokenward: {summary}"
        logger.info(f"tokenward observe: {flow.request.method} {summary}")
        for warning in state["warnings"]:
            logger.warning(f"tokenward observe: {warning} ({state['token']})")

    def _redact(self, flow: http.HTTPFlow) -> None:
        """Show tokens as hints in the flow record once the request has gone upstream.

        Script addons run before mitmproxy's Save and Dumper, so what they write is redacted.
        """
        state = flow.metadata.get("tokenward", {})
        if state.get("mode") == "enforce" and state.get("verdict", "accepted") != "accepted":
            return  # refused: `_reject` redacted the record, and nothing has changed it since
        data = flow.request.data
        # One look at all of it, joined in C; the newline keeps "sm" and "_" of two fields apart.
        recorded = b"\n".join([data.path, data.authority, *map(itemgetter(1), data.headers.fields)])
        # Every token, in any decoding, needs "sm_" or an escape.
        if b"sm_" not in recorded and b"%" not in recorded:
            return  # the common case once a token was stripped: nothing to look at closer
        request = request_of(flow)
        apply_request(flow, redact_request(request), request)
        # A CONNECT names its target in the authority, which is no placement.
        authority = data.authority.decode("latin-1")
        redacted_authority = redact_log_text(authority)
        if redacted_authority != authority:
            data.authority = redacted_authority.encode("utf-8")
            data.host = redact_log_text(data.host)

    # Background work

    async def _watch_open_websockets(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            for flow_id, socket in list(self.open_websockets.items()):
                if not socket.flow.live:
                    self.open_websockets.pop(flow_id, None)
                elif not self._still_valid(socket):
                    self.open_websockets.pop(flow_id, None)
                    close_websocket(socket.flow, POLICY_VIOLATION, "access token no longer valid")

    def _still_valid(self, socket: OpenWebSocket) -> bool:
        if self.store is None:
            return False
        try:
            self.store.check_file()
            verification = self.store.verify(socket.token, socket.service, self.clock())
        except StoreError:
            return False
        return StoreOutcome(verification.outcome) is StoreOutcome.OK

    async def _flush_usage_periodically(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_INTERVAL_SECONDS)
            if self.store is not None:
                try:
                    self.store.flush_usage()
                except StoreError as error:
                    logger.warning(f"tokenward: could not record last use: {error}")


def routes_by_host(services: Sequence[ServiceRecord]) -> dict[str, Route]:
    """Each host of each service, and the route of a request addressing it."""
    routes: dict[str, Route] = {}
    for service in services:
        route = Route(service.name, layout_named(service.layout), upstream_target(service.upstream))
        for host in service.hosts:
            routes[host] = route  # the store gives each host to one service only
    return routes


@lru_cache(maxsize=64)
def reverse_host_header(scheme: bytes, host: str, port: int) -> str:
    """The Host reverse mode gives a request for its upstream: `host`, with a port unless it
    is the scheme's default."""
    return url.hostport(scheme.decode(), host, port)


def request_of(flow: http.HTTPFlow) -> Request:
    """The core's view of a mitmproxy request: raw target and header fields as Latin-1."""
    data = flow.request.data
    headers = tuple(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in data.headers.fields]
    )
    # As mitmproxy's `Request.method` reads it, without its Python property.
    method = data.method.decode("utf-8", "surrogateescape").upper()
    return Request(method, data.path.decode("latin-1"), headers)


def apply_request(
    flow: http.HTTPFlow, request: Request, previous: Request, host_header: str | None = None
) -> None:
    """Write the core's request back byte for byte, where it differs from `previous` (what
    the flow holds now); mitmproxy's setters would re-encode.

    `host_header`, when given, goes in the Host field as mitmproxy's `headers["Host"] = ...`
    puts it: the first field keeps its place and name, further ones go, and on HTTP/1 one is
    added at the end when there is none (HTTP/2 and 3 carry it as :authority instead).
    """
    data = flow.request.data
    if request.target != previous.target:
        data.path = request.target.encode("latin-1")
    if host_header is None and request.headers == previous.headers:
        return
    # As mitmproxy encodes header values; None: no Host to write, every field kept as it is.
    host = None if host_header is None else host_header.encode("utf-8", "surrogateescape")
    fields: list[tuple[bytes, bytes]] = []
    host_written = False
    for name, value in request.headers:
        if host is None or len(name) != 4 or name.lower() != "host":
            fields.append((name.encode("latin-1"), value.encode("latin-1")))
        elif not host_written:
            fields.append((name.encode("latin-1"), host))
            host_written = True
    if host is not None and not host_written and data.http_version not in H2_OR_H3:
        fields.append((b"Host", host))
    data.headers.fields = tuple(fields)


def addressed_host(flow: http.HTTPFlow) -> str:
    """The host name the client addressed, lower-case, without port."""
    request = flow.request
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        # An absolute-form target (`GET http://host/...`) names the host, and then the Host
        # header does not count (RFC 9112, 3.2.2); reverse mode forwards it as it came.
        authority = request.authority or request.host_header or request.host
    else:
        # Where mitmproxy will connect: a Host header naming another host must not decide
        # which service's checks apply (`GET http://node/ ...` with `Host: elsewhere`).
        authority = request.host
    host, _ = url.parse_authority(authority, check=False)
    return host.lower().rstrip(".")


def is_websocket(request: Request) -> bool:
    for name, value in request.headers:
        # The length first: lower() costs more, and keeps a Latin-1 name's length.
        if len(name) == 7 and name.lower() == "upgrade" and value.strip().lower() == "websocket":
            return True
    return False


def is_preflight(request: Request) -> bool:
    if request.method != "OPTIONS":
        return False
    names = {name.lower() for name, _ in request.headers}
    return "origin" in names and "access-control-request-method" in names


def describe(state: dict[str, Any]) -> str:
    parts = [str(state.get("verdict", "undecided"))]
    if state.get("placement"):
        parts.append(f"in {state['placement']}")
    if state.get("token"):
        parts.append(str(state["token"]))
    if state.get("service"):
        parts.append(f"service {state['service']}")
    parts.append(f"forward {state.get('forward')}")
    return ", ".join(parts)


def close_websocket(flow: http.HTTPFlow, code: int, reason: str) -> None:
    """Close an open WebSocket with `code` on both sides.

    mitmproxy has no command for this; a close frame is fed to the connection as if the client
    had sent it, so its WebSocket layer closes both sides with that code.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(flow.client_conn.id)
    if handler is None:
        flow.kill()
        return
    frame = masked_close_frame(code, reason)
    event = events.DataReceived(flow.client_conn, frame)
    asyncio.get_running_loop().create_task(handler.server_event(event))


def close_client_socket(client: connection.Client) -> None:
    """Close the socket of a client connection that mitmproxy has let go of, if still open.

    mitmproxy 12.3 closes a connection by cancelling its task; when that task is waiting for
    another connection's event at that moment, it ends without closing its socket. That is
    what a rejected upload hits: the answer arrives while the client still sends. The client
    then gets neither EOF nor an error, cannot finish sending, and never reads the 401 (httpx
    waits for its write timeout); the socket stays open until garbage collection.
    """
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(client.id)
    transport = None if handler is None else handler.transports.get(client)
    writer = None if transport is None else transport.writer
    if writer is not None and not writer.is_closing():
        writer.close()


def masked_close_frame(code: int, reason: str) -> bytes:
    """A client-to-server WebSocket close frame (RFC 6455 5.5.1), masked as clients must."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked

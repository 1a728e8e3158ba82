"""The tokenward addon: access-token checks and rewrites for mitmproxy.

Loaded through the script `addons/tokenward.py`. The decisions are the pure core's
(`tokenward.core`) and the token facts the store's (`tokenward.store`); this module
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
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from itertools import chain
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from mitmproxy import command, connection, ctx, exceptions, flow, http
from mitmproxy.net import encoding
from mitmproxy.net.http import url
from mitmproxy.proxy import events
from mitmproxy.proxy.layers.http._http1 import make_error_response
from mitmproxy.proxy.mode_specs import ReverseMode

from tokenward.addons.early_rejection import RejectionResponder, may_have_body
from tokenward.core.decision import (
    URL_WARNING,
    Decision,
    DecisionMemo,
    Mode,
    Options,
    Preflight,
    Reach,
    Route,
    Unavailable,
    UnknownHosts,
    token_error,
)
from tokenward.core.hosts import addressed_host as normalized_authority
from tokenward.core.hosts import normalize_host
from tokenward.core.hygiene import Upgrade, is_preflight
from tokenward.core.layouts import LayoutName, layout_named
from tokenward.core.placement import (
    Request,
    redact_bytes,
    redact_request,
    redact_text,
    withhold_oversized,
)
from tokenward.core.records import ServiceRecord, TokenRecord
from tokenward.core.tokens import token_hint
from tokenward.core.verdicts import ErrorCode, Forward, Rejection
from tokenward.log_redaction import (
    install_log_redaction,
    redact_log_text,
    uninstall_log_redaction,
)
from tokenward.store import Store, StoreError, TokenNotLoaded, open_store

logger = logging.getLogger(__name__)

# Each option that takes one of a set of words, and the words, from the core's enums.
CHOICES: dict[str, tuple[str, ...]] = {
    "tokenward_mode": tuple(Mode),
    "tokenward_forward": tuple(Forward),
    "tokenward_layout": tuple(LayoutName),
    "tokenward_preflight": tuple(Preflight),
    "tokenward_unknown_hosts": tuple(UnknownHosts),
}
OPTION_HELP: dict[str, str] = {
    "tokenward_mode": (
        "enforce: reject what the contract rejects; observe: reject nothing, annotate flows."
    ),
    "tokenward_forward": "Where the upstream receives the token: "
    + ", ".join(CHOICES["tokenward_forward"])
    + ".",
    "tokenward_layout": "Path layout of the default service: "
    + ", ".join(CHOICES["tokenward_layout"])
    + ".",
    "tokenward_preflight": (
        "CORS preflights: pass (forward without a token) or enforce (check like any request)."
    ),
    "tokenward_unknown_hosts": (
        "Regular mode, hosts that are no service: guard (refuse a request carrying a token) "
        "or pass (forward untouched)."
    ),
}
SIZE_LIMITS = ("tokenward_max_target", "tokenward_max_header")
DEFAULT_SIZE_LIMIT = 64 * 1024
WATCH_INTERVAL_SECONDS = 0.25
# How often the path of the store is looked at (one `stat`) for a file removed, replaced or
# written in place by something other than SQLite. Changes to tokens and services need no look:
# every request sees what was committed before it (see tokenward.store.changes).
FILE_CHECK_SECONDS = 0.05
USAGE_FLUSH_INTERVAL_SECONDS = 5.0
POLICY_VIOLATION = 1008
# Accepted upgrade requests waiting for their answer, each holding its token until then. A 101
# whose entry was dropped for a newer one is closed (see `TokenWard._tie_upgrade`).
MAX_PENDING_UPGRADES = 4096
ANSWER_SENT_POLL_SECONDS = 0.01
H2_OR_H3 = (b"HTTP/2.0", b"HTTP/3")  # versions that carry the Host as :authority
FRAMING_FIELDS = (b"content-length", b"transfer-encoding")
VERDICT_HEADER = "x-tokenward-verdict"
# Replay: flow metadata naming the flow whose client request this process holds, with the
# destination the client addressed (no token: the record may be saved and shared).
REPLAY_KEY = "tokenward_replay"
# Client requests held for replay, the newest; older flows replay as a saved one would.
MAX_HELD_REQUESTS = 1000
# Metadata of a replay whose client request is not held: its token, if any, was redacted.
REPLAY_TOKENLESS = "tokenward_replay_tokenless"
# What a request whose token became a hint gets: none found, or the hint as a bad value.
TOKENLESS_ERRORS = (ErrorCode.MISSING_TOKEN, ErrorCode.MALFORMED_TOKEN)
REPLAY_ADVICE = (
    "This is a replay of a recorded flow, and a record holds no token (it shows hints):"
    " put the token back where the client sends it (edit the request) and replay it again,"
    " or replay it in the proxy that recorded it while it runs."
)
# mitmproxy's marks (emoji shortcodes): a flow refused, or that enforce mode would refuse; in
# observe mode, one whose token travels in the URL.
REFUSED_MARK = ":no_entry:"
URL_MARK = ":warning:"


# A partial, not a function: called once per request, and it adds no Python frame.
utc_now: Callable[[], datetime] = partial(datetime.now, UTC)


class Destination(NamedTuple):
    """The core's route of a request and where it goes (None: where mitmproxy sends it).

    Made when the services are read (or the options set), not per request.
    """

    route: Route
    upstream: UpstreamTarget | None


class ClientHead(NamedTuple):
    """A request's head as the client sent it, for a replay: immutable parts only, so that
    holding one costs no copy of the request."""

    method: bytes
    scheme: bytes
    authority: bytes
    host: str
    port: int
    path: bytes
    http_version: bytes
    fields: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def of(cls, data: http.RequestData) -> ClientHead:
        return cls(
            data.method,
            data.scheme,
            data.authority,
            data.host,
            data.port,
            data.path,
            data.http_version,
            data.headers.fields,
        )

    def host_header(self) -> str:
        """What `Request.host_header` gives for this head, read from the held fields: the
        Headers view would encode the name and decode every field to find one."""
        if self.http_version in H2_OR_H3 and self.authority:
            try:
                return self.authority.decode("idna")
            except UnicodeError:
                return self.authority.decode("utf8", "surrogateescape")
        values = [value for name, value in self.fields if name.lower() == b"host"]
        return b", ".join(values).decode("utf-8", "surrogateescape")  # Headers folds them so

    def restore(self, request: http.Request) -> None:
        data = request.data
        data.method, data.scheme, data.authority = self.method, self.scheme, self.authority
        data.host, data.port, data.path = self.host, self.port, self.path
        data.http_version = self.http_version
        request.headers = http.Headers(self.fields)


@lru_cache(maxsize=1024)
def replay_origin(head: ClientHead) -> dict[str, object]:
    """Where the client addressed `head`, tokens shown as hints, for the flow's record: the
    same for every request of a repeating head, so remembered (never changed once made)."""
    return {
        "scheme": head.scheme.decode(),
        "host": redact_log_text(head.host),
        "port": head.port,
        "authority": redact_log_text(head.authority.decode("latin-1")),
        "host_header": redact_log_text(head.host_header()),
    }


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
class HeldPreflight:
    """An HTTP/2 or 3 request shaped like a preflight, refused until its body is known.

    Its head, as it came, is forwarded as a preflight if the HEADERS frame ended the stream;
    `discard` is the refused request's `request.stream`: mitmproxy calls it only when DATA
    follows, and then the request is no preflight.
    """

    request: http.Request = field(repr=False)
    data_followed: bool = False

    def discard(self, chunk: bytes) -> Iterable[bytes]:
        self.data_followed = True
        return ()


@dataclass(slots=True)
class OpenUpgrade:
    """An accepted connection that switched protocols (a WebSocket, or mitmproxy's raw TCP
    tunnel) and whose token is checked again while it stays open."""

    flow: http.HTTPFlow
    token: str = field(repr=False)
    service: str | None


class AnswerKeeper:
    """The last addon of all: the client gets the upstream's answer as it came, and the flow
    keeps the redacted record of it.

    mitmproxy sends the flow's response once every addon's `response` hook has run; Save and
    Dumper record it in theirs. TokenWard, before them, puts a redacted copy in the flow; this
    addon, after them, puts the upstream's answer back for the client, and the copy in again
    once mitmproxy has sent it (it marks the flow no longer live then, or gives it an error).
    """

    name = "tokenward_answers"

    def __init__(self) -> None:
        self.kept: dict[str, http.Response] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def response(self, flow: http.HTTPFlow) -> None:
        answer = self.kept.pop(flow.id, None)
        recorded = flow.response
        if answer is None or recorded is None:
            return
        flow.response = answer
        task = asyncio.get_running_loop().create_task(record_once_sent(flow, answer, recorded))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def error(self, flow: http.HTTPFlow) -> None:
        self.kept.pop(flow.id, None)


async def record_once_sent(
    flow: http.HTTPFlow, answer: http.Response, recorded: http.Response
) -> None:
    # The hooks' task goes on to send after this one is made; an intercepted flow waits long.
    delay = 0.0
    while flow.live and flow.error is None:
        await asyncio.sleep(delay)
        delay = ANSWER_SENT_POLL_SECONDS
    if flow.response is answer:  # nothing else has replaced it meanwhile
        flow.response = recorded


def redacted_body(message: http.Message, fields_joined: bytes) -> bytes | None:
    """The raw body `message`'s record should hold, with its tokens shown as hints (looked for
    in the body decoded from its Content-Encoding); None when it holds none or is not kept.

    `fields_joined`: the message's header names and values joined, to tell in C whether the
    Content-Encoding needs reading (mitmproxy's `headers.get` is dearer, on every answer).
    """
    raw = message.data.content
    if not raw:
        return None  # none, or streamed: the flow keeps no body
    content, coding = raw, None
    if b"content-encoding" in fields_joined.lower():
        coding = message.headers.get("content-encoding")
    if coding is not None:
        try:
            decoded = encoding.decode(raw, coding)
        except ValueError:
            decoded = None  # an unknown coding, or not what it says: shown as it came
        if isinstance(decoded, bytes) and decoded is not raw:
            content = decoded
        else:
            coding = None
    redacted = redact_bytes(content)
    if redacted is content:
        return None
    if coding is None:
        return redacted
    encoded: bytes = encoding.encode(redacted, coding)
    return encoded


def redacted_response(answer: http.Response) -> http.Response | None:
    """A copy of `answer` with tokens in its header names, values and body shown as hints;
    None when it holds none."""
    fields = answer.data.headers.fields
    joined = b"\n".join(chain.from_iterable(fields))
    headers = fields
    if b"sm_" in joined or b"%" in joined:
        headers = tuple([(redact_bytes(name), redact_bytes(value)) for name, value in fields])
    body = redacted_body(answer, joined)
    if body is None and headers == fields:
        return None
    recorded = answer.copy()
    recorded.data.headers.fields = headers
    if body is not None:
        recorded.data.content = body
    return recorded


class TokenWard:
    def __init__(
        self,
        clock: Callable[[], datetime] = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.monotonic = monotonic
        self.store: Store | None = None
        self.responder = RejectionResponder()
        self.open_upgrades: dict[str, OpenUpgrade] = {}
        self.routes_by_host: dict[str, Destination] = {}
        self.services_seen: tuple[ServiceRecord, ...] | None = None
        self.file_checked_at = -FILE_CHECK_SECONDS
        self.store_failing = False  # the last read of a token failed
        self.store_error: StoreError | None = None
        # While a flow is decided again after the store's background read: what it read.
        self._loaded: dict[str, TokenRecord | Unavailable | None] | None = None
        self._loads: set[asyncio.Task[None]] = set()
        # The options, read once in `configure`: `ctx.options` copies on every read.
        self.options = Options()
        self.decisions = DecisionMemo(self.options)
        # Decision (by identity: the memo hands the same one out for a repeating head) -> the
        # state recorded for it, so a remembered decision costs no second hint or dict build.
        self._states: dict[int, tuple[Decision, Route, dict[str, Any]]] = {}
        self.observing = False
        default = Route(None, layout_named(LayoutName.GENERIC))
        self.default_destination = Destination(default, None)
        self.unknown_route = default._replace(reach=Reach.UNKNOWN)
        self.foreign_route = default._replace(reach=Reach.FOREIGN)
        self.client_host_kept = False
        self._forcing_host_header = False
        # Flow id -> (token, service) of accepted upgrade requests until their answer.
        self._upgrade_tokens: dict[str, tuple[str, str | None]] = {}
        self._held_preflights: dict[str, HeldPreflight] = {}
        # Flow id -> the request as the client sent it (token and all), for replay; in memory
        # only, never in a record.
        self._client_requests: OrderedDict[str, ClientHead] = OrderedDict()
        # Only a master with a flow view (mitmweb, mitmproxy's console) replays a flow it
        # still shows; mitmdump has none, so it holds no request (a replay there is judged
        # as a saved one's). Set in `load`.
        self.holding_requests = True
        self._tasks: list[asyncio.Task[None]] = []
        self.answer_keeper = AnswerKeeper()

    # Options

    def load(self, loader: Any) -> None:
        # mitmproxy logs some requests whole before any hook sees them (a bad request line).
        install_log_redaction()
        addons = ctx.master.addons
        self.holding_requests = addons.get("view") is not None
        if addons.get(AnswerKeeper.name) is None:
            # Added now, it comes after every addon mitmproxy has loaded: Save and Dumper too.
            addons.add(self.answer_keeper)
        loader.add_option(
            "tokenward_db",
            str,
            os.environ.get("TOKENWARD_DB", "tokenward.db"),
            "The tokenward store: an SQLite file's path or a postgresql:// URL"
            " (default: $TOKENWARD_DB, else tokenward.db).",
        )
        for option, help_text in OPTION_HELP.items():
            choices = CHOICES[option]
            loader.add_option(option, str, choices[0], help_text, choices=choices)
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
        # mitmproxy uses `choices` for its command line and help only: a value set otherwise
        # (`--set`, a script, mitmweb) is checked here.
        for option, choices in CHOICES.items():
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
        options = ctx.options
        self.options = Options(
            mode=Mode(options.tokenward_mode),
            forward=Forward(options.tokenward_forward),
            preflight=Preflight(options.tokenward_preflight),
            unknown_hosts=UnknownHosts(options.tokenward_unknown_hosts),
            max_target=options.tokenward_max_target,
            max_header=options.tokenward_max_header,
        )
        self.decisions = DecisionMemo(self.options)
        self._states.clear()  # they were recorded under the options before
        self.observing = self.options.mode is Mode.OBSERVE
        default = Route(None, layout_named(options.tokenward_layout))
        self.default_destination = Destination(default, None)
        self.unknown_route = default._replace(reach=Reach.UNKNOWN)
        self.foreign_route = default._replace(reach=Reach.FOREIGN)
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
            self.store = open_store(path, create=False)
            # A PostgreSQL store then answers from what it keeps, never waiting on this loop.
            self.store.serve()
        except StoreError as error:
            raise exceptions.OptionsError(f"tokenward_db: {error}") from None
        self.file_checked_at = -FILE_CHECK_SECONDS
        self._refresh_services()

    # Lifecycle

    async def running(self) -> None:
        if not self.responder.running:
            await self.responder.start()
        if not self._tasks:
            self._tasks.append(asyncio.create_task(self._watch_open_upgrades()))
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
        if ctx.master.addons.get(AnswerKeeper.name) is self.answer_keeper:
            ctx.master.addons.remove(self.answer_keeper)
        uninstall_log_redaction()

    # Hooks

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        if flow.error is not None:
            # mitmproxy refused the request already (its header validation); it forwards none.
            self._answer_refused(flow)
            return None
        if flow.request.data.method == b"CONNECT" or flow.response is not None:
            return None
        data = flow.request.data
        try:
            if flow.is_replay == "request":
                self._restore_client_request(flow)
            else:
                self._hold_client_request(flow)
            data = flow.request.data
            if data.http_version in H2_OR_H3:
                self._decide_before_body(flow)
            else:
                self._decide(flow, body_follows=False)  # the head tells whether one follows
        except TokenNotLoaded as missing:
            # mitmproxy awaits what a hook returns: this flow waits, the others go on.
            return self._decide_once_loaded(flow, missing.token, data.http_version in H2_OR_H3)
        except Exception:
            self._fail_closed(flow)
        return None

    async def _decide_once_loaded(self, flow: http.HTTPFlow, token: str, before_body: bool) -> None:
        """Decide again once the store has read `token` in the background (a token it had not
        read yet); the answer read stands for this flow even if the store keeps none."""
        loaded: dict[str, TokenRecord | Unavailable | None] = {}
        try:
            while True:
                assert self.store is not None
                try:
                    loaded[token] = await self.store.load(token)
                except StoreError as error:
                    loaded[token] = Unavailable(str(error))
                self._loaded = loaded
                try:
                    if before_body:
                        self._decide_before_body(flow)
                    else:
                        self._decide(flow, body_follows=False)
                    return
                except TokenNotLoaded as missing:
                    token = missing.token  # a request with another token not read yet
                finally:
                    self._loaded = None
        except Exception:
            self._fail_closed(flow)

    def request(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """The body is in (unless streamed) and nothing has gone upstream yet."""
        held = self._held_preflights.pop(flow.id, None) if self._held_preflights else None
        again = None
        if held is not None and not held.data_followed and flow.request.raw_content == b"":
            # The HEADERS frame ended the stream: a true preflight after all.
            held.request.timestamp_end = flow.request.timestamp_end
            flow.request = held.request
            try:
                self._decide(flow, body_follows=False)
            except TokenNotLoaded as missing:
                again = self._decide_once_loaded(flow, missing.token, before_body=False)
            except Exception:
                self._fail_closed(flow)
        if flow.request.data.http_version in H2_OR_H3 and not flow.request.stream:
            frame_buffered_body(flow.request.data)
        return again

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """In observe mode the client's developer sees what enforce would answer; set on the
        head, so that a streamed answer carries it too."""
        if not self.observing or flow.response is None:
            return
        state = flow.metadata.get("tokenward")
        if state is not None and state.get("mode") == "observe":
            flow.response.headers[VERDICT_HEADER] = state["verdict"]

    def response(self, flow: http.HTTPFlow) -> None:
        # Every answer ends the wait for a switch; the map is nearly always empty.
        pending = self._upgrade_tokens.pop(flow.id, None) if self._upgrade_tokens else None
        if flow.response is not None and flow.response.data.status_code == 101:
            self._tie_upgrade(flow, pending)
        self._redact(flow)
        self._record_answer_redacted(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._upgrade_tokens.pop(flow.id, None)
        self._held_preflights.pop(flow.id, None)
        self._redact(flow)
        if flow.error is not None:
            # Framing mitmproxy refused is quoted in it ("invalid content-length header: '…'").
            flow.error.msg = redact_text(flow.error.msg)

    def client_disconnected(self, client: connection.Client) -> None:
        close_sockets(client)

    def websocket_end(self, flow: http.HTTPFlow) -> None:
        self.open_upgrades.pop(flow.id, None)
        self._redact(flow)

    @command.command("tokenward.explain")
    def explain(self, flows: Sequence[flow.Flow]) -> None:
        """Log what tokenward decided for each selected flow and why."""
        for selected in flows:
            state = selected.metadata.get("tokenward")
            if state is None:
                logger.info(f"{selected.id}: tokenward did not look at this flow")
            else:
                logger.info(f"{selected.id}: {summary(state)}")

    # Deciding

    def _fail_closed(self, flow: http.HTTPFlow) -> None:
        logger.exception("tokenward: unexpected error; failing closed")
        try:
            self._reject(flow, Rejection(ErrorCode.STORE_UNAVAILABLE, None))
        except Exception:
            logger.exception("tokenward: could not answer; closing the connection")
            flow.kill()

    def _decide_before_body(self, flow: http.HTTPFlow) -> None:
        """Judge an HTTP/2 or 3 request by its head, before the addon can know whether DATA
        follows (mitmproxy does not tell whether the HEADERS frame ended the stream).

        A request shaped like a preflight is judged like any other and held: the `request`
        hook lets it through as a preflight if no DATA came. A refused one is diverted to the
        responder, so DATA, if any, go there and are dropped.
        """
        data = flow.request.data
        held = None
        if (
            self.options.preflight is Preflight.PASS
            and data.method == b"OPTIONS"
            and is_preflight(request_of(flow))
        ):
            held = HeldPreflight(flow.request.copy())
        self._decide(flow, body_follows=True)
        if held is not None and flow.metadata.get("tokenward", {}).get("verdict") != "accepted":
            self._held_preflights[flow.id] = held
            if flow.request.stream:
                flow.request.stream = held.discard
        if flow.response is None:
            declare_chunked_framing(data)

    def _hold_client_request(self, flow: http.HTTPFlow) -> None:
        """Keep the request as the client sent it, so that a replay sends it again."""
        head = ClientHead.of(flow.request.data)
        if self.holding_requests:
            held = self._client_requests
            if len(held) >= MAX_HELD_REQUESTS:
                held.popitem(last=False)  # the oldest
            held[flow.id] = head
        # Where the client addressed it, also for a replay of the flow saved to a file.
        flow.metadata[REPLAY_KEY] = {"flow": flow.id, **replay_origin(head)}

    def _restore_client_request(self, flow: http.HTTPFlow) -> None:
        """A replay is judged as a new request: the client's, when this process holds it;
        else the recorded one (maybe edited) sent where the client addressed it."""
        for stale in ("tokenward", REPLAY_TOKENLESS):
            flow.metadata.pop(stale, None)
        flow.marked = ""
        flow.comment = ""
        origin = flow.metadata.get(REPLAY_KEY)
        if not isinstance(origin, dict):
            return  # not recorded by tokenward: judged as it stands
        held = self._client_requests.get(origin.get("flow", ""))
        if held is not None:
            held.restore(flow.request)  # the recorded body stays
            return
        flow.metadata[REPLAY_TOKENLESS] = True
        data = flow.request.data
        data.scheme = str(origin["scheme"]).encode()
        data.host = str(origin["host"])
        data.port = int(origin["port"])
        data.authority = str(origin["authority"]).encode()
        if origin["host_header"]:
            flow.request.host_header = str(origin["host_header"])

    def _decide(self, flow: http.HTTPFlow, body_follows: bool) -> None:
        destination = self._route(flow)
        data = flow.request.data
        route = destination.route
        now = self.clock()  # once: the verdict and the last use are of the same moment
        head = (data.method, data.path, data.headers.fields, body_follows)
        request, decision = self.decisions.decide(
            head, partial(request_of, flow, body_follows), route, self._lookup, now
        )
        if flow.metadata.get(REPLAY_TOKENLESS) and decision.error in TOKENLESS_ERRORS:
            decision = decision._replace(advice=REPLAY_ADVICE)
        if decision.passed_through:
            return  # regular mode, a host that is no service: nothing of tokenward applies
        state = self._state(decision, route)
        flow.metadata["tokenward"] = state
        if decision.refused:
            assert decision.error is not None
            self._reject(
                flow,
                Rejection(
                    decision.error, decision.placement, decision.message or "", decision.advice
                ),
            )
            return
        assert decision.upstream is not None, "a request not refused goes upstream"
        host_header = self._upstream_host_header(flow, destination)
        apply_request(flow, decision.upstream, request, host_header)
        self._send_to(flow, destination, host_header)
        record = decision.record
        if decision.identity is not None and record is not None and self.store is not None:
            self.store.note_used(record, now)
        if decision.upgrade is not Upgrade.NONE and record is not None:
            self._await_upgrade(flow, decision, route)
        if self.observing:
            self._annotate(flow, state)

    def _lookup(self, token: str) -> TokenRecord | Unavailable | None:
        """What the store knows of `token`, for the decision; an unreadable store says so.
        TokenNotLoaded goes up to the hook, which awaits the store's read and decides again."""
        if self._loaded is not None and token in self._loaded:
            return self._loaded[token]
        try:
            if self.store is None:
                raise StoreError("no token store is open")
            if self.store_error is not None:
                raise self.store_error
            record = self.store.lookup(token)
        except StoreError as error:
            logger.warning(f"tokenward: token store unavailable: {error}")
            self.store_failing = True  # every request looks at the file until one succeeds
            return Unavailable(str(error))
        self.store_failing = False
        return record

    def _state(self, decision: Decision, route: Route) -> dict[str, Any]:
        """What `flow.metadata["tokenward"]` holds of a decision (mitmweb shows it): a copy of
        its own for each flow, since a rejection adds to it."""
        states = self._states
        seen = states.get(id(decision))
        if seen is not None and seen[0] is decision and seen[1] is route:
            state = seen[2]
        else:
            state = self._new_state(decision, route)
            if len(states) >= self.decisions.capacity:  # as many as the memo holds
                del states[next(iter(states))]  # the oldest
            # The entry holds the decision, so its id is not reused while it stands.
            states[id(decision)] = (decision, route, state)
        return dict(state, warnings=list(decision.warnings))

    def _new_state(self, decision: Decision, route: Route) -> dict[str, Any]:
        finding = decision.finding
        value = None if finding is None else finding.value
        # str() of these StrEnums gives the plain value without Python code (`.value` runs some).
        state: dict[str, Any] = {
            "mode": str(self.options.mode),
            "forward": str(self.options.forward),
            "service": route.service,
            "layout": str(route.layout.name),
            "placement": None if decision.placement is None else str(decision.placement),
            "token": None if value is None else token_hint(value),
            "warnings": list(decision.warnings),
            "verdict": "accepted" if decision.error is None else str(decision.error),
        }
        if decision.error is not None:
            state["status"] = decision.status
            state["message"] = decision.message
            state["advice"] = decision.advice
        return state

    def _await_upgrade(self, flow: http.HTTPFlow, decision: Decision, route: Route) -> None:
        """Keep the token of a forwarded upgrade request until its answer, to tie the
        connection to it should the upstream switch protocols."""
        finding = decision.finding
        assert finding is not None and finding.value is not None, "a record has its token"
        pending = self._upgrade_tokens
        if len(pending) >= MAX_PENDING_UPGRADES:
            del pending[next(iter(pending))]  # the oldest
        pending[flow.id] = (finding.value, route.service)

    def _tie_upgrade(self, flow: http.HTTPFlow, pending: tuple[str, str | None] | None) -> None:
        """Check a connection that switches protocols with its token for as long as it stays
        open: mitmproxy carries it as a WebSocket or as a raw TCP tunnel (any other 101,
        `proxy/layers/http/__init__.py`, `HttpStream.flow_done`), where no request is judged.
        """
        if pending is not None:
            token, service = pending
            self.open_upgrades[flow.id] = OpenUpgrade(flow, token, service)
        elif "tokenward" not in flow.metadata:
            return  # regular mode, a host that is no service: passes through untouched
        elif self.observing:
            logger.warning("tokenward observe: a connection switched protocols with no valid token")
        elif flow.killable:
            # The addon let this request through, yet there is no token to tie the connection
            # to (it needed none, or its entry was dropped): it would stay open unchecked.
            logger.warning("tokenward: a switch of protocols with no token to tie it to: closed")
            flow.kill()

    def _route(self, flow: http.HTTPFlow) -> Destination:
        self._refresh_services()
        if not self.routes_by_host:
            return self.default_destination
        host = addressed_host(flow)
        destination = None if host is None else self.routes_by_host.get(host)
        if destination is not None:
            return destination
        other = self.unknown_route
        if not isinstance(flow.client_conn.proxy_mode, ReverseMode):
            other = self.foreign_route
        # The host as the proxy saw it, for the answer: only these routes are made per request.
        seen = host if host is not None else addressed_authority(flow)
        return Destination(other._replace(host=seen), None)

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
        state["message"] = rejection.message
        state["advice"] = rejection.advice
        request = request_of(flow)
        # What is over a size limit is withheld, not decoded: the record stays linear in it.
        recorded = withhold_oversized(request, self.options.max_target, self.options.max_header)
        apply_request(flow, redact_request(recorded), request)
        # Seen in mitmweb's flow list as in the log: marked, and the verdict as a comment.
        line = summary(state)
        flow.marked = REFUSED_MARK
        flow.comment = f"tokenward: {line}"
        logger.info(f"tokenward: {flow.request.method} rejected: {line}")
        if self.responder.running and may_have_body(flow.request):
            self.responder.divert(flow, rejection)
            return
        origin = flow.request.headers.get("origin")
        fields = [
            (name.encode(), value.encode("utf-8", "surrogateescape"))
            for name, value in rejection.headers(origin)
        ]
        flow.response = http.Response.make(rejection.status, rejection.body(), fields)

    def _upstream_host_header(self, flow: http.HTTPFlow, destination: Destination) -> str | None:
        """The Host the upstream expects, or None to forward the client's as it came.

        mitmproxy would write the reverse upstream's itself; the addon keeps the client's Host
        for routing (keep_host_header) and so writes it, unless the user chose to keep it.
        """
        if self.client_host_kept:
            return None
        if destination.upstream is not None:
            return destination.upstream.host_header
        if isinstance(flow.client_conn.proxy_mode, ReverseMode):
            data = flow.request.data
            return reverse_host_header(data.scheme, data.host, data.port)
        return None

    def _send_to(
        self, flow: http.HTTPFlow, destination: Destination, host_header: str | None
    ) -> None:
        data = flow.request.data
        if host_header is not None and data.http_version in H2_OR_H3:
            flow.request.authority = host_header  # HTTP/2 and 3 carry it as :authority
        target = destination.upstream
        if target is None:
            return
        data.scheme = target.scheme
        data.host = target.host
        data.port = target.port
        if target.path_prefix:
            data.path = target.path_prefix + data.path

    def _annotate(self, flow: http.HTTPFlow, state: dict[str, Any]) -> None:
        """Observe mode's summary, comment and mark; enforce mode builds none per request
        it accepts."""
        line = summary(state)
        flow.comment = f"tokenward: {line}"
        warnings = state["warnings"]
        if state["verdict"] != "accepted":
            flow.marked = REFUSED_MARK
        elif URL_WARNING in warnings:
            flow.marked = URL_MARK
        logger.info(f"tokenward observe: {flow.request.method} {line}")
        hint = state["token"]
        for warning in warnings:
            # No single value (none, or several): nothing to name.
            shown = warning if hint is None else f"{warning} ({hint})"
            logger.warning(f"tokenward observe: {shown}")

    def _redact(self, flow: http.HTTPFlow) -> None:
        """Show tokens as hints in the flow record once the request has gone upstream (or has
        been answered by the addon): the request line, header names and values, the body.

        Script addons run before mitmproxy's Save and Dumper, so what they write is redacted.
        """
        state = flow.metadata.get("tokenward", {})
        # Refused: `_reject` redacted the head, and nothing has changed it since.
        refused = state.get("mode") == "enforce" and state.get("verdict", "accepted") != "accepted"
        data = flow.request.data
        # One look at all of it, joined in C; the newline keeps "sm" and "_" of two fields apart.
        fields_joined = b"\n".join(chain.from_iterable(data.headers.fields))
        recorded = b"\n".join([data.method, data.path, data.authority, fields_joined])
        # Every token, in any decoding, needs "sm_" or an escape.
        if not refused and (b"sm_" in recorded or b"%" in recorded):
            request = request_of(flow)
            apply_request(flow, redact_request(request), request)
            # A CONNECT names its target in the authority, which is no placement.
            authority = data.authority.decode("latin-1")
            redacted_authority = redact_log_text(authority)
            if redacted_authority != authority:
                data.authority = redacted_authority.encode("utf-8")
                data.host = redact_log_text(data.host)
        # Content-Length and Content-Encoding stay as they were sent.
        body = redacted_body(flow.request, fields_joined)
        if body is not None:
            data.content = body

    def _record_answer_redacted(self, flow: http.HTTPFlow) -> None:
        """Have mitmproxy's Save and Dumper record the answer with tokens shown as hints (an
        upstream may echo what it got), while the client gets it as it came."""
        answer = flow.response
        if answer is None:
            return
        recorded = redacted_response(answer)
        if recorded is not None:
            flow.response = recorded
            self.answer_keeper.kept[flow.id] = answer

    def _answer_refused(self, flow: http.HTTPFlow) -> None:
        """A request mitmproxy refused on its own: its record redacted, and its 400 page too.

        mitmproxy quotes what it refused in that page (an invalid header name holding a
        token), and writes it only after this hook; over HTTP/1 the addon writes the page
        first with the token as its hint and closes the connection, so mitmproxy's is dropped.
        """
        self._redact(flow)
        assert flow.error is not None
        message = flow.error.msg
        redacted = redact_text(message)
        if redacted == message:
            return
        flow.error.msg = redacted
        if flow.request.is_http2 or flow.request.is_http3:
            return  # one stream of many: the addon cannot write to it (README)
        writer = client_writer(flow.client_conn)
        if writer is None or writer.is_closing():
            return
        writer.write(make_error_response(400, redacted))
        if writer.transport.get_write_buffer_size():
            # Not sent at once: a close would send mitmproxy's page after it, so nothing goes.
            writer.transport.abort()
        else:
            writer.close()

    # Background work

    async def _watch_open_upgrades(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_SECONDS)
            for flow_id, upgraded in list(self.open_upgrades.items()):
                # A tunnel's flow is no longer live once switched; its client connection is.
                if upgraded.flow.client_conn.timestamp_end is not None:
                    self.open_upgrades.pop(flow_id, None)
                elif not self._still_valid(upgraded):
                    self.open_upgrades.pop(flow_id, None)
                    close_upgraded(upgraded.flow)

    def _still_valid(self, upgraded: OpenUpgrade) -> bool:
        if self.store is None:
            return False
        try:
            self.store.check_file()
            record = self.store.lookup(upgraded.token)
        except TokenNotLoaded:
            # Dropped on a notice: read again in the background; judged at the next look.
            loading = asyncio.create_task(self._load_quietly(upgraded.token))
            self._loads.add(loading)
            loading.add_done_callback(self._loads.discard)
            return True
        except StoreError:
            return False
        return token_error(record, upgraded.service, self.clock()) is None

    async def _load_quietly(self, token: str) -> None:
        with contextlib.suppress(StoreError):
            if self.store is not None:
                await self.store.load(token)

    async def _flush_usage_periodically(self) -> None:
        while True:
            await asyncio.sleep(USAGE_FLUSH_INTERVAL_SECONDS)
            if self.store is not None:
                try:
                    # In a thread: a database's write must not hold up this loop.
                    await asyncio.to_thread(self.store.flush_usage)
                except StoreError as error:
                    logger.warning(f"tokenward: could not record last use: {error}")


def routes_by_host(services: Sequence[ServiceRecord]) -> dict[str, Destination]:
    """Each host of each service, and where a request addressing it goes."""
    routes: dict[str, Destination] = {}
    for service in services:
        route = Route(service.name, layout_named(service.layout))
        destination = Destination(route, upstream_target(service.upstream))
        for host in service.hosts:
            routes[normalize_host(host)] = destination  # each host is one service's only
    return routes


@lru_cache(maxsize=64)
def reverse_host_header(scheme: bytes, host: str, port: int) -> str:
    """The Host reverse mode gives a request for its upstream: `host`, with a port unless it
    is the scheme's default."""
    return url.hostport(scheme.decode(), host, port)


def request_of(flow: http.HTTPFlow, body_follows: bool = False) -> Request:
    """The core's view of a mitmproxy request: method, raw target and header fields as
    Latin-1, as sent; `body_follows`: the head of an HTTP/2 or 3 request may be followed by
    DATA."""
    data = flow.request.data
    headers = tuple(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in data.headers.fields]
    )
    return Request(
        data.method.decode("latin-1"), data.path.decode("latin-1"), headers, body_follows
    )


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
    target, method, fields = written_head(
        request, previous, host_header, data.http_version in H2_OR_H3
    )
    if target is not None:
        data.path = target
    if method is not None:
        data.method = method
    if fields is not None:
        data.headers.fields = fields


# Remembered: a repeating request head has the same decision (`DecisionMemo`), so the same
# request to write, and the same objects to look it up by.
@lru_cache(maxsize=1024)
def written_head(
    request: Request, previous: Request, host_header: str | None, carries_authority: bool
) -> tuple[bytes | None, bytes | None, tuple[tuple[bytes, bytes], ...] | None]:
    """The target, method and header fields `apply_request` writes as bytes, each None when
    it stays as it is; `carries_authority`: HTTP/2 or 3, which need no Host field."""
    target = None if request.target == previous.target else request.target.encode("latin-1")
    # A record's method may differ: a method may hold a token too.
    method = None if request.method == previous.method else request.method.encode("latin-1")
    if host_header is None and request.headers == previous.headers:
        return target, method, None
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
    if host is not None and not host_written and not carries_authority:
        fields.append((b"Host", host))
    return target, method, tuple(fields)


def addressed_host(flow: http.HTTPFlow) -> str | None:
    """The host the client addressed, as services are matched (None: not a host name)."""
    return normalized_authority(addressed_authority(flow))


def addressed_authority(flow: http.HTTPFlow) -> str:
    """The authority the client addressed, as it came."""
    request = flow.request
    if isinstance(flow.client_conn.proxy_mode, ReverseMode):
        # An absolute-form target (`GET http://host/...`) names the host, and then the Host
        # header does not count (RFC 9112, 3.2.2); reverse mode forwards it as it came.
        return request.authority or request.host_header or request.host
    # Where mitmproxy will connect: a Host header naming another host must not decide
    # which service's checks apply (`GET http://node/ ...` with `Host: elsewhere`).
    return request.host


def declare_chunked_framing(data: http.RequestData) -> None:
    """Declare chunked framing for an HTTP/2 or 3 request that has no framing field.

    Such a request's body, forwarded to an HTTP/1 upstream, would go as it came, with no
    framing (`Http1Client.send` in mitmproxy's `_http1.py` converts only the head), and the
    upstream would read it as further requests. It is declared in `requestheaders` because
    mitmproxy starts streaming a body that outgrows `stream_large_bodies` with this head and no
    hook in between; `frame_buffered_body` replaces it with a length once a body is buffered.
    """
    if not any(name.lower() in FRAMING_FIELDS for name, _ in data.headers.fields):
        data.headers.fields = (*data.headers.fields, (b"transfer-encoding", b"chunked"))


def frame_buffered_body(data: http.RequestData) -> None:
    """Frame the buffered body of an HTTP/2 or 3 request by its length, as HTTP/1 reads it
    and HTTP/2 allows (no `transfer-encoding`): the declared chunking goes, and a body, or a
    request that declared a length, gets `content-length` of the body that came."""
    fields = [(name, value) for name, value in data.headers.fields]
    unframed = [field for field in fields if field[0].lower() not in FRAMING_FIELDS]
    body = data.content or b""
    if body or any(name.lower() == b"content-length" for name, _ in fields):
        unframed.append((b"content-length", b"%d" % len(body)))
    if unframed != fields:
        data.headers.fields = tuple(unframed)


def describe(state: dict[str, Any]) -> str:
    verdict = str(state.get("verdict", "undecided"))
    parts = [verdict if "status" not in state else f"{state['status']} {verdict}"]
    if state.get("placement"):
        parts.append(f"in {state['placement']}")
    if state.get("token"):
        parts.append(str(state["token"]))
    if state.get("service"):
        parts.append(f"service {state['service']}")
    parts.append(f"forward {state.get('forward')}")
    return ", ".join(parts)


def summary(state: dict[str, Any]) -> str:
    """One line of what tokenward decided for a flow: `describe`, then the answer's message
    and advice when there is a verdict."""
    line = describe(state)
    if state.get("message"):
        line += f": {state['message']}"
    if state.get("advice"):
        line += f" Advice: {state['advice']}"
    return line


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


def close_upgraded(flow: http.HTTPFlow) -> None:
    """Close a connection that switched protocols: a WebSocket with a close frame, a raw
    tunnel (which has no frames) by closing its sockets."""
    if flow.websocket is not None:
        close_websocket(flow, POLICY_VIOLATION, "access token no longer valid")
    else:
        close_sockets(flow.client_conn, flow.server_conn)


def close_sockets(client: connection.Client, *others: connection.Connection) -> None:
    """Close the sockets of a client connection and of `others` of its connections, where
    still open; each peer sees its connection end, and mitmproxy its transports.

    Also for a client connection that mitmproxy has let go of: mitmproxy 12.3 closes a
    connection by cancelling its task; when that task is waiting for another connection's event
    at that moment, it ends without closing its socket. That is what a rejected upload hits:
    the answer arrives while the client still sends. The client then gets neither EOF nor an
    error, cannot finish sending, and never reads the 401 (httpx waits for its write timeout);
    the socket stays open until garbage collection.
    """
    for open_connection in (client, *others):
        writer = client_writer(client, open_connection)
        if writer is not None and not writer.is_closing():
            writer.close()


def client_writer(
    client: connection.Client, open_connection: connection.Connection | None = None
) -> asyncio.StreamWriter | None:
    """The stream mitmproxy writes to one of `client`'s connections with (the client's own
    by default), while it has one."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = getattr(proxyserver, "connections", {}).get(client.id)
    transport = None if handler is None else handler.transports.get(open_connection or client)
    return None if transport is None else transport.writer


def masked_close_frame(code: int, reason: str) -> bytes:
    """A client-to-server WebSocket close frame (RFC 6455 5.5.1), masked as clients must."""
    payload = struct.pack("!H", code) + reason.encode()[:123]
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked

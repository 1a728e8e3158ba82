"""The in-process driver: the tokenward addon itself, run inside mitmproxy's test context.

This is the one harness module that imports the implementation under test, and only to drive
it: requests become mitmproxy test flows and go through the addon's ``requestheaders`` hook;
what the upstream would receive is the flow's request afterwards. Judging stays with the
oracle. The store is a real SQLite file in a temporary folder, filled from a ``StoreModel``;
the addon's clock is the scenario's ``now``. A model with ``available`` False gets a store file
that is no database once the addon has opened it, and the addon's monotonic clock moves on so
that it looks at the file at the first request: from then on it cannot read tokens.
"""

from __future__ import annotations

import tempfile
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from mitmproxy import connection, http
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from tokenward.addons.gateway import TokenWard
from tokenward.harness.drivers import Answer, Observation, UpstreamSeen, populate_store
from tokenward.harness.oracle import HarnessRequest, Scenario, StoreModel
from tokenward.store import Store, open_store

# The host a request addresses when the scenario names no service, and where reverse mode
# would send it: nothing listens there, nothing is ever sent.
DEFAULT_HOST = "gateway.tokenward.test"
REVERSE_MODE = ProxyMode.parse("reverse:http://127.0.0.1:9")
REGULAR_MODE = ProxyMode.parse("regular")
# The client connection's proxy mode, by the scenario's ``reverse``.
PROXY_MODES = {True: REVERSE_MODE, False: REGULAR_MODE}
# What an unreadable store's file holds instead of a database, and how far the addon's
# monotonic clock moves so that its next request looks at the file (well past any interval).
NOT_A_DATABASE = b"not a SQLite database\n" * 64
FILE_CHECK_JUMP_SECONDS = 3600.0
# The fields the driver adds to the client's request: Host, and the length of a body.
ADDED_HEADERS = frozenset({"host"})
ADDED_WITH_BODY = frozenset({"host", "content-length"})


class InProcessGateway:
    """The addon on a real store made from ``model``; a context manager.

    ``store`` stays open for changes while requests are sent (the stateful test creates,
    re-scopes and deletes tokens through it); the addon sees them from the next request on.
    """

    def __init__(self, model: StoreModel, directory: Path | None = None) -> None:
        self.model = model
        self.now: datetime | None = None
        self._directory = directory
        self._exit = ExitStack()
        self._options: dict[str, str] = {}
        self._monotonic_offset = 0.0
        self.addon = TokenWard(clock=self._clock, monotonic=self._monotonic)
        self.store: Store
        self._context: taddons.context
        # Connections are made once and shared by the flows: the addon only reads a client's
        # proxy_mode, while what it writes (request, response, metadata) is each flow's own.
        self._clients = {reverse: _client(mode) for reverse, mode in PROXY_MODES.items()}
        self._server = tflow.tserver_conn()

    def __enter__(self) -> Self:
        with ExitStack() as stack:
            folder = self._directory
            if folder is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tw-h-")))
            path = folder / "tokenward.db"
            self.store = stack.enter_context(open_store(path, create=True))
            populate_store(self.store, self.model)
            self._context = stack.enter_context(taddons.context(self.addon))
            # The context leaves mitmproxy's logging handler on the root logger, pointing at its
            # event loop even once that is closed: take it off with the context.
            stack.callback(self._context.master._legacy_log_events.uninstall)
            self._context.configure(self.addon, tokenward_db=str(path))
            if not self.model.available:
                self._spoil(path)
            self._exit = stack.pop_all()
        return self

    def _spoil(self, path: Path) -> None:
        """Make the store unreadable under the running addon."""
        for sidecar in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            sidecar.unlink(missing_ok=True)
        path.write_bytes(NOT_A_DATABASE)
        self._monotonic_offset += FILE_CHECK_JUMP_SECONDS

    def _monotonic(self) -> float:
        return time.monotonic() + self._monotonic_offset

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._exit.close()

    def _clock(self) -> datetime:
        if self.now is None:
            raise RuntimeError("the addon asked for the time outside of a request")
        return self.now

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation:
        self._configure(scenario)
        self.now = scenario.now
        flow = http.HTTPFlow(self._clients[scenario.reverse], self._server, live=True)
        flow.request = _request(request, scenario)
        self.addon.requestheaders(flow)
        recorded: dict[str, Any] | None = flow.metadata.get("tokenward")
        if flow.response is not None:
            response = flow.response
            answer = Answer(
                response.status_code,
                _decoded_fields(response.headers.fields),
                response.raw_content or b"",
            )
            return Observation(answer, (), recorded, added_headers=_added(request))
        seen = UpstreamSeen.of_parts(
            flow.request.data.path.decode("latin-1"),
            _decoded_fields(flow.request.headers.fields),
            flow.request.raw_content or b"",
        )
        # Nothing answers an in-process flow: end it, as mitmproxy would on a lost connection,
        # so the addon lets go of what it keeps for open WebSockets.
        self.addon.error(flow)
        return Observation(None, (seen,), recorded, added_headers=_added(request))

    def _configure(self, scenario: Scenario) -> None:
        wanted = {
            "tokenward_mode": scenario.mode.value,
            "tokenward_forward": scenario.forward.value,
            "tokenward_layout": scenario.layout.value,
            "tokenward_preflight": scenario.preflight.value,
        }
        changed = {
            name: value for name, value in wanted.items() if self._options.get(name) != value
        }
        if changed:
            self._context.configure(self.addon, **changed)
            self._options.update(changed)


def _added(request: HarnessRequest) -> frozenset[str]:
    return ADDED_WITH_BODY if request.body else ADDED_HEADERS


def _client(mode: ProxyMode) -> connection.Client:
    client = tflow.tclient_conn()
    client.proxy_mode = mode
    return client


def _request(request: HarnessRequest, scenario: Scenario) -> http.Request:
    """The request as mitmproxy parses it from the client, received at the scenario's now."""
    host = scenario.service or DEFAULT_HOST
    fields = [(b"host", host.encode("latin-1"))]
    fields += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers]
    if request.body:  # as the network driver frames it
        fields.append((b"content-length", str(len(request.body)).encode()))
    received = scenario.now.timestamp()
    return http.Request(
        host=DEFAULT_HOST,
        port=80,
        method=request.method.encode("latin-1"),
        scheme=b"http",
        authority=b"",
        path=request.target.encode("latin-1"),
        http_version=b"HTTP/1.1",
        headers=http.Headers(fields),
        content=request.body,
        trailers=None,
        timestamp_start=received,
        timestamp_end=received,
    )


def _decoded_fields(fields: tuple[tuple[bytes, bytes], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in fields)

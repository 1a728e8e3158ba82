"""The gateway end to end: real mitmdump with the addon, real recording upstreams, real sockets.

Raw HTTP/1.1 requests go through `http.client` with every header given explicitly, so the
request target reaches the proxy byte for byte; httpx is used for HTTP/2, for streamed uploads
and where the exact bytes do not matter. What reached an upstream is read from its control
listener: a rejected request must leave no record there.
"""

from __future__ import annotations

import hashlib
import itertools
import shutil
import sqlite3
import ssl
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from web3 import Web3
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from tokenward.fixtures.processes import (
    REPO_ROOT,
    HttpAnswer,
    ProcessError,
    RunningProxy,
    RunningUpstream,
    delete_token_in_another_process,
    exchange,
    install_ganache,
    peak_resident_kib,
    start_ganache,
    start_proxy,
    start_upstream,
)
from tokenward.fixtures.upstream import IPFS_VERSION, UpstreamRecord
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0
UNKNOWN = "sm_pat_" + "Z" * 32
MALFORMED = "sm_pat_short"
# The query of the contract's example: every byte but the token must reach the upstream.
RAW_QUERY = "arg=/ipfs/Qm%2Fx&flag&b=a+b"
MIB = 1 << 20
HAS_PROC = Path("/proc/self/status").exists()
_NAME_NUMBERS = itertools.count(1)


def utc_now() -> datetime:
    return datetime.now(UTC)


def unique_name(prefix: str) -> str:
    """A token name no other test uses (the stores outlive single tests)."""
    return f"{prefix}-{next(_NAME_NUMBERS)}"


def error_of(answer: HttpAnswer) -> tuple[int, str, str | None]:
    """Status, error code and placement of a rejection the proxy answered."""
    body = answer.json()
    assert isinstance(body["message"], str) and body["message"]
    return answer.status, body["error"], body["placement"]


@dataclass
class Gateway:
    """A running proxy and the store it reads."""

    proxy: RunningProxy
    db: Path

    def token(
        self,
        name: str,
        *,
        scope: frozenset[str] | None = None,
        expires_at: datetime | None = None,
        created_at: datetime | None = None,
    ) -> str:
        """Create a token in the store as an operator would, from another connection."""
        with TokenStore.open(self.db, create=False) as store:
            token, _ = store.create_token(
                name, "pat", expires_at, scope, "e2e", created_at or utc_now()
            )
        return token

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> HttpAnswer:
        return self.proxy.request(method, target, headers, body)


def record_of(answer: HttpAnswer, upstream: RunningUpstream) -> UpstreamRecord:
    """What `upstream` received for the request `answer` answers."""
    record = upstream.record_for(answer)
    assert record is not None, f"not answered by this upstream: {answer}"
    return record


@contextmanager
def nothing_reaches(*upstreams: RunningUpstream) -> Iterator[None]:
    marks = [upstream.last_seq() for upstream in upstreams]
    yield
    for upstream, mark in zip(upstreams, marks, strict=True):
        reached = [record.target for record in upstream.records(since=mark)]
        assert reached == [], f"the upstream was contacted: {reached}"


@contextmanager
def running_gateway(db: Path, upstream: RunningUpstream, **settings: Any) -> Iterator[Gateway]:
    """A proxy in front of `upstream` (reverse mode unless told) on the store at `db`."""
    with start_proxy(
        ProxySettings(db=db, upstream=upstream.url, listen_port=0, **settings)
    ) as proxy:
        yield Gateway(proxy, db)


def new_store(directory: Path, services: Iterable[tuple[str, str, str, str]] = ()) -> Path:
    """A fresh store with `services` given as (name, layout, host, upstream URL)."""
    db = directory / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        for name, layout, host, upstream in services:
            store.add_service(name, layout, (host,), upstream)
    return db


class Http2FirstContext(ssl.SSLContext):
    """A TLS context that offers h2 before http/1.1 in ALPN, as browsers and curl do.

    httpx offers http/1.1 first and mitmproxy honours the client's order, so a plain
    `httpx.Client(http2=True)` would speak HTTP/1.1 to the proxy.
    """

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda alpn: alpn != "h2"))


def http2_client() -> httpx.Client:
    context = Http2FirstContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # mitmproxy's own certificate
    return httpx.Client(http2=True, verify=context, trust_env=False, timeout=TIMEOUT)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def second_upstream() -> Iterator[RunningUpstream]:
    with start_upstream() as running:
        yield running


@dataclass
class Tokens:
    live: str
    revoked: str
    expired: str


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[Gateway]:
    """Reverse mode, no services: the default service, generic layout, forward strip."""
    db = new_store(tmp_path_factory.mktemp("gateway"))
    with running_gateway(db, upstream) as running:
        yield running


@pytest.fixture(scope="module")
def tokens(gateway: Gateway) -> Tokens:
    live = gateway.token("live")
    revoked = gateway.token("revoked")
    with TokenStore.open(gateway.db, create=False) as store:
        store.delete_token("revoked", utc_now())
    an_hour_ago = utc_now() - timedelta(hours=1)
    expired = gateway.token(
        "expired", expires_at=an_hour_ago, created_at=an_hour_ago - timedelta(hours=1)
    )
    return Tokens(live, revoked, expired)


@pytest.fixture(scope="module")
def services_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    upstream: RunningUpstream,
    second_upstream: RunningUpstream,
) -> Iterator[Gateway]:
    """Reverse mode with one service per layout, spread over two upstreams."""
    services = [
        ("rpc", "generic", "rpc.localhost", upstream.url),
        ("ipfs", "ipfs", "ipfs.localhost", second_upstream.url),
        ("avax", "avalanche", "avax.localhost", upstream.url),
        ("fuji", "fuji", "fuji.localhost", second_upstream.url),
    ]
    db = new_store(tmp_path_factory.mktemp("services"), services)
    with running_gateway(db, upstream) as running:
        yield running


# --------------------------------------------------------------------------- verdict rows


# (target, extra header fields, status, error, placement); {live}, {revoked}, {expired} and
# {unknown} stand for tokens.
REJECTIONS = [
    pytest.param("/graphql?q={live}", (), 400, "misplaced_token", None, id="1-query-value"),
    pytest.param("/graphql?{live}=1", (), 400, "misplaced_token", None, id="1-query-name"),
    pytest.param("/a/{live}/b", (), 400, "misplaced_token", None, id="1-middle-segment"),
    pytest.param("/a/x.{live}.json", (), 400, "misplaced_token", None, id="1-inside-segment"),
    pytest.param("/{live}", (("x-auth-token", "{unknown}"),), 400, "ambiguous_token", None, id="2"),
    pytest.param("/graphql", (), 401, "missing_token", None, id="3"),
    pytest.param(
        "/graphql", (("Origin", "https://app.example"),), 401, "missing_token", None, id="3-cors"
    ),
    pytest.param(f"/p?token={MALFORMED}", (), 401, "malformed_token", "query", id="4"),
    pytest.param("/p?token=", (), 401, "malformed_token", "query", id="4-empty"),
    pytest.param("/p", (("X-Auth-Token", "{unknown}"),), 401, "unknown_token", "header", id="5"),
    pytest.param("/{revoked}", (), 401, "revoked_token", "path", id="6"),
    pytest.param("/graphql/{expired}", (), 401, "expired_token", "path", id="7"),
]


@pytest.mark.parametrize(("target", "fields", "status", "error", "placement"), REJECTIONS)
def test_each_rejection_is_answered_by_the_proxy_alone(
    gateway: Gateway,
    tokens: Tokens,
    upstream: RunningUpstream,
    target: str,
    fields: tuple[tuple[str, str], ...],
    status: int,
    error: str,
    placement: str | None,
) -> None:
    values = {
        "live": tokens.live,
        "revoked": tokens.revoked,
        "expired": tokens.expired,
        "unknown": UNKNOWN,
    }
    headers = [(name, value.format(**values)) for name, value in fields]
    with nothing_reaches(upstream):
        answer = gateway.request("GET", target.format(**values), headers)

    assert error_of(answer) == (status, error, placement)
    assert answer.header("content-type") == "application/json"
    if status == 401:
        assert answer.header("www-authenticate") == 'Token realm="tokenward"'
    origin = dict(headers).get("Origin")
    assert answer.header("access-control-allow-origin") == origin
    for token in values.values():
        assert token not in answer.body.decode()


def test_row_0_a_host_that_names_no_service(
    services_gateway: Gateway, upstream: RunningUpstream, second_upstream: RunningUpstream
) -> None:
    token = services_gateway.token("row0")
    with nothing_reaches(upstream, second_upstream):
        answer = services_gateway.request(
            "GET", f"/{token}/api/v0/version", [("Host", "nowhere.localhost")]
        )
    assert error_of(answer) == (404, "unknown_service", None)


def test_row_8_a_service_outside_the_scope(
    services_gateway: Gateway, upstream: RunningUpstream, second_upstream: RunningUpstream
) -> None:
    token = services_gateway.token("avax-only", scope=frozenset({"avax"}))
    with nothing_reaches(upstream, second_upstream):
        answer = services_gateway.request(
            "GET", f"/{token}/api/v0/version", [("Host", "ipfs.localhost")]
        )
    assert error_of(answer) == (403, "out_of_scope", "path")

    answer = services_gateway.request(
        "POST",
        f"/ext/bc/C/rpc/{token}",
        [("Host", "avax.localhost"), ("Content-Type", "application/json")],
        b'{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}',
    )
    assert answer.json()["result"] == "0x539"


def test_a_store_removed_while_running_fails_closed_then_recovers(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    # The operator's way back: a consistent copy (SQLite's backup, which includes what the WAL
    # holds), the file removed, then the copy restored in its place.
    backup = gateway.db.with_name("backup.db")
    with closing(sqlite3.connect(gateway.db)) as source, closing(sqlite3.connect(backup)) as copy:
        source.backup(copy)
    gateway.db.unlink()
    try:
        with nothing_reaches(upstream):
            unavailable = gateway.request("GET", f"/{tokens.live}")
            missing = gateway.request("GET", "/")
    finally:
        shutil.copyfile(backup, gateway.db)
    assert error_of(unavailable) == (503, "store_unavailable", "path")
    # Rows that need no store still answer as usual.
    assert error_of(missing) == (401, "missing_token", None)
    assert gateway.request("GET", f"/{tokens.live}").status == 200


@pytest.mark.skipif(
    shutil.which("faketime") is None, reason="faketime is not installed (Debian package faketime)"
)
def test_row_7_on_the_proxys_own_clock(gateway: Gateway, upstream: RunningUpstream) -> None:
    token = gateway.token("week", expires_at=utc_now() + timedelta(days=7))
    assert gateway.request("GET", f"/{token}").status == 200

    settings = ProxySettings(db=gateway.db, upstream=upstream.url, listen_port=0)
    with start_proxy(settings, faketime="+8d") as later, nothing_reaches(upstream):
        answer = Gateway(later, gateway.db).request("GET", f"/{token}")
    assert error_of(answer) == (401, "expired_token", "path")


def test_a_token_deleted_by_another_process_is_refused_on_the_next_request(
    gateway: Gateway, upstream: RunningUpstream
) -> None:
    token = gateway.token("to-delete")
    connection = gateway.proxy.connection()  # one keep-alive connection: no reconnect in between
    try:
        assert exchange(connection, "GET", f"/{token}").status == 200
        delete_token_in_another_process(gateway.db, "to-delete")
        with nothing_reaches(upstream):
            answer = exchange(connection, "GET", f"/{token}")
    finally:
        connection.close()
    assert error_of(answer) == (401, "revoked_token", "path")


# --------------------------------------------------------------------------- the rewrite


@pytest.fixture(scope="module", params=["strip", "header", "query", "path", "keep"])
def forward_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: RunningUpstream,
) -> Iterator[tuple[str, Gateway]]:
    forward: str = request.param
    db = new_store(tmp_path_factory.mktemp(f"forward-{forward}"))
    with running_gateway(db, upstream, forward=forward) as running:
        yield forward, running


def test_each_forward_value_byte_for_byte(
    forward_gateway: tuple[str, Gateway], upstream: RunningUpstream
) -> None:
    forward, gateway = forward_gateway
    token = gateway.token("alice")
    target = f"/p/%7Eq;v=1?{RAW_QUERY}&token={token}"
    sent = [
        ("Host", "node.example"),
        ("X-Tokenward-Token", "forged"),
        ("x-tokenward-kind", "forged"),
        ("X-Custom", "Kept  As\tSent"),
        ("x-custom", "second"),
    ]
    record = record_of(gateway.request("GET", target, sent), upstream)

    expected_target = {
        "strip": f"/p/%7Eq;v=1?{RAW_QUERY}",
        "header": f"/p/%7Eq;v=1?{RAW_QUERY}",
        "query": f"/p/%7Eq;v=1?{RAW_QUERY}&token={token}",
        "path": f"/p/%7Eq;v=1/{token}?{RAW_QUERY}",
        "keep": target,
    }[forward]
    assert record.target == expected_target
    received = [(name.lower(), value) for name, value in record.headers]
    auth = [value for name, value in received if name == "x-auth-token"]
    assert auth == ([token] if forward == "header" else [])
    identity = [(name, value) for name, value in received if name.startswith("x-tokenward-")]
    if forward == "keep":
        assert identity == [("x-tokenward-token", "forged"), ("x-tokenward-kind", "forged")]
    else:
        assert identity == [("x-tokenward-token", "alice"), ("x-tokenward-kind", "pat")]
    others = [(n, v) for n, v in record.headers if n.lower() == "x-custom"]
    assert others == [("X-Custom", "Kept  As\tSent"), ("x-custom", "second")]
    # Reverse mode sends the upstream its own host name, as mitmproxy does by default.
    assert record.host == upstream.url.removeprefix("http://")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/TOKEN", "/"),
        ("/TOKEN/graphql", "/graphql"),
        ("/graphql/TOKEN", "/graphql"),
        ("/%7Ea/b%2Fc/TOKEN", "/%7Ea/b%2Fc"),
        ("/p?token=TOKEN", "/p"),
        ("/p?token=TOKEN&x=%41", "/p?x=%41"),
        ("/TOKEN?token=TOKEN", "/"),
    ],
)
def test_the_strip_rewrite_removes_only_the_token(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream, target: str, expected: str
) -> None:
    answer = gateway.request("GET", target.replace("TOKEN", tokens.live))
    record = record_of(answer, upstream)
    assert record.target == expected
    assert record.header("x-tokenward-token") == "live"


def test_a_percent_encoded_path_token_is_the_same_token(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    encoded = "%73" + tokens.live[1:]  # "%73" is "s"
    record = record_of(gateway.request("GET", f"/graphql/{encoded}"), upstream)
    assert (record.target, record.header("x-tokenward-token")) == ("/graphql", "live")


# --------------------------------------------------------------------------- services


@pytest.mark.parametrize(
    ("host", "target", "expected", "on_second"),
    [
        ("rpc.localhost", "/TOKEN/graphql", "/graphql", False),
        ("RPC.localhost:8080", "/graphql/TOKEN", "/graphql", False),
        ("ipfs.localhost", "/TOKEN/api/v0/version", "/api/v0/version", True),
        ("avax.localhost", "/ext/bc/C/rpc/TOKEN", "/ext/bc/C/rpc", False),
        ("avax.localhost", "/ext/bc/C/rpc/TOKEN/", "/ext/bc/C/rpc/", False),
        ("avax.localhost", "/ext/bc/C/ws/TOKEN", "/ext/bc/C/ws", False),
        ("fuji.localhost", "/ext/bc/C/rpc/TOKEN", "/ext/bc/C/rpc", True),
    ],
)
def test_each_service_gets_its_layout_and_its_own_upstream(
    services_gateway: Gateway,
    upstream: RunningUpstream,
    second_upstream: RunningUpstream,
    host: str,
    target: str,
    expected: str,
    on_second: bool,
) -> None:
    token = services_gateway.token(unique_name("service"))
    chosen, other = (second_upstream, upstream) if on_second else (upstream, second_upstream)
    with nothing_reaches(other):
        answer = services_gateway.request("GET", target.replace("TOKEN", token), [("Host", host)])
    record = record_of(answer, chosen)
    assert record.target == expected
    assert record.host == chosen.url.removeprefix("http://")
    if expected == "/api/v0/version":
        assert answer.json() == IPFS_VERSION


@pytest.mark.parametrize(
    ("host", "target"),
    [
        ("ipfs.localhost", "/api/v0/TOKEN"),
        ("avax.localhost", "/TOKEN/ext/bc/C/rpc"),
        ("fuji.localhost", "/ext/bc/C/rpc/TOKEN/more"),
    ],
)
def test_a_position_the_layout_does_not_allow_is_misplaced(
    services_gateway: Gateway,
    upstream: RunningUpstream,
    second_upstream: RunningUpstream,
    host: str,
    target: str,
) -> None:
    token = services_gateway.token(unique_name("misplaced"))
    with nothing_reaches(upstream, second_upstream):
        answer = services_gateway.request("GET", target.replace("TOKEN", token), [("Host", host)])
    assert error_of(answer) == (400, "misplaced_token", None)


def test_regular_mode_passes_other_hosts_untouched_and_checks_services(
    tmp_path: Path, upstream: RunningUpstream, second_upstream: RunningUpstream
) -> None:
    db = new_store(tmp_path, [("ipfs", "ipfs", "ipfs.localhost", second_upstream.url)])
    with running_gateway(db, upstream, proxy_mode="regular") as gateway:
        token = gateway.token("alice")
        elsewhere = upstream.url.removeprefix("http://")
        target = f"/p?{RAW_QUERY}&token=not-a-token"
        sent = [("Host", elsewhere), ("x-tokenward-token", "forged"), ("x-auth-token", "x")]
        untouched = gateway.request("GET", f"http://{elsewhere}{target}", sent)
        record = record_of(untouched, upstream)
        assert record.target == target
        assert [(n.lower(), v) for n, v in record.headers] == [(n.lower(), v) for n, v in sent]

        service = f"http://ipfs.localhost/{token}/api/v0/version"
        answer = gateway.request("GET", service, [("Host", "ipfs.localhost")])
        assert record_of(answer, second_upstream).target == "/api/v0/version"
        with nothing_reaches(upstream, second_upstream):
            refused = gateway.request(
                "GET", "http://ipfs.localhost/api/v0/version", [("Host", "ipfs.localhost")]
            )
        assert error_of(refused) == (401, "missing_token", None)


# --------------------------------------------------------------------------- WebSockets


def test_a_websocket_with_the_token_in_its_path_echoes_through(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    uri = f"{gateway.proxy.ws_url}/{tokens.live}/graphql"
    with connect(uri, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as websocket:
        assert websocket.response is not None
        seq = int(websocket.response.headers["x-upstream-seq"])
        websocket.send("hello")
        assert websocket.recv(TIMEOUT) == "hello"
    (record,) = upstream.records(since=seq - 1)[:1]
    assert (record.websocket, record.target) == (True, "/graphql")
    assert record.header("x-tokenward-token") == "live"
    assert [message.text for message in record.websocket_messages] == ["hello"]


def test_a_websocket_handshake_without_a_token_is_refused(
    gateway: Gateway, upstream: RunningUpstream
) -> None:
    with nothing_reaches(upstream), pytest.raises(InvalidStatus) as refused:
        connect(f"{gateway.proxy.ws_url}/graphql", proxy=None, open_timeout=TIMEOUT)
    assert refused.value.response.status_code == 401


def test_an_open_websocket_is_closed_with_1008_when_its_token_is_deleted(
    gateway: Gateway,
) -> None:
    token = gateway.token("websocket")
    uri = f"{gateway.proxy.ws_url}/{token}/graphql"
    with connect(uri, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as websocket:
        websocket.send("before")
        assert websocket.recv(TIMEOUT) == "before"
        # Deleted from this process (the proxy is another one), so the clock starts right at
        # the commit rather than after a CLI's start-up.
        with TokenStore.open(gateway.db, create=False) as store:
            store.delete_token("websocket", utc_now())
        deleted_at = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            websocket.recv(TIMEOUT)
        latency = time.monotonic() - deleted_at
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1008
    print(f"websocket closed {latency:.3f} s after the delete")
    assert latency < 1.0


# --------------------------------------------------------------------------- HTTP/2


def test_http2_requests_are_accepted_and_rejected(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    rpc = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}
    with http2_client() as client:
        accepted = client.get(f"{gateway.proxy.https_url}/{tokens.live}/graphql?x=1")
        with nothing_reaches(upstream):
            missing = client.get(f"{gateway.proxy.https_url}/graphql")
            # Several, on one connection: a rejection with a body once raced into a reset.
            unknown = [
                client.post(
                    f"{gateway.proxy.https_url}/rpc", headers={"x-auth-token": UNKNOWN}, json=rpc
                )
                for _ in range(20)
            ]

    assert accepted.http_version == "HTTP/2"
    assert accepted.status_code == 200
    seq = int(accepted.headers["x-upstream-seq"])
    assert upstream.records(since=seq - 1)[0].target == "/graphql?x=1"
    assert (missing.http_version, missing.status_code) == ("HTTP/2", 401)
    assert missing.json()["error"] == "missing_token"
    assert {(answer.status_code, answer.json()["error"]) for answer in unknown} == {
        (401, "unknown_token")
    }


# --------------------------------------------------------------------------- uploads


def zeros(total: int, counter: list[int]) -> Iterator[bytes]:
    """`total` bytes in 1 MiB chunks, adding each chunk's size to counter[0] as it goes."""
    chunk = bytes(MIB)
    for _ in range(total // MIB):
        counter[0] += MIB
        yield chunk


@pytest.mark.skipif(not HAS_PROC, reason="reads the proxy's memory from Linux /proc")
def test_a_large_upload_without_a_token_is_refused_at_once(
    gateway: Gateway, upstream: RunningUpstream
) -> None:
    total = 400 * MIB
    sent = [0]
    peak_before = peak_resident_kib(gateway.proxy.pid)
    with nothing_reaches(upstream), httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        started = time.monotonic()
        response = client.post(f"{gateway.proxy.url}/upload", content=zeros(total, sent))
        elapsed = time.monotonic() - started
    grown_kib = peak_resident_kib(gateway.proxy.pid) - peak_before

    assert (response.status_code, response.json()["error"]) == (401, "missing_token")
    print(f"401 after {elapsed:.3f} s, {sent[0] / MIB:.0f} MiB sent, peak RSS +{grown_kib} KiB")
    assert elapsed < 1.5
    assert sent[0] < total // 4
    assert grown_kib < 64 * 1024


@pytest.mark.skipif(not HAS_PROC, reason="reads the proxy's memory from Linux /proc")
def test_a_large_accepted_upload_streams_through(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    total = 100 * MIB
    digest = hashlib.sha256(bytes(MIB) * (total // MIB)).hexdigest()
    peak_before = peak_resident_kib(gateway.proxy.pid)
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as client:
        response = client.post(
            f"{gateway.proxy.url}/upload",
            headers={"x-auth-token": tokens.live},
            content=zeros(total, [0]),
        )
    grown_kib = peak_resident_kib(gateway.proxy.pid) - peak_before

    assert response.status_code == 200
    record = upstream.records(since=int(response.headers["x-upstream-seq"]) - 1)[0]
    assert (record.body_length, record.body_sha256, record.complete) == (total, digest, True)
    assert record.header("x-auth-token") is None
    print(f"{total // MIB} MiB accepted and streamed through, peak RSS +{grown_kib} KiB")
    assert grown_kib < 64 * 1024


def test_an_expect_100_continue_upload_without_a_token_is_refused(
    gateway: Gateway, upstream: RunningUpstream
) -> None:
    connection = gateway.proxy.connection()
    try:
        with nothing_reaches(upstream):
            # Only the head is sent: the answer must come without the 50 MiB body.
            connection.putrequest("POST", "/upload", skip_accept_encoding=True)
            connection.putheader("Content-Length", str(50 * MIB))
            connection.putheader("Expect", "100-continue")
            connection.endheaders()
            response = connection.getresponse()  # http.client skips the interim 100
            answer = HttpAnswer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()
    assert error_of(answer) == (401, "missing_token", None)


# --------------------------------------------------------------------------- records and logs


def test_no_full_token_in_the_flow_file_or_the_output(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    db = new_store(tmp_path)
    flows = tmp_path / "flows.mitm"
    # forward=header puts the token back on the way upstream: the record must not keep it.
    with running_gateway(db, upstream, forward="header", save_flows=flows) as gateway:
        token = gateway.token("alice")
        unknown = UNKNOWN
        rpc = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'
        json_type = ("Content-Type", "application/json")
        for target, fields in [
            ("/rpc", [("x-auth-token", token), json_type]),
            (f"/rpc?token={token}", [json_type]),
            (f"/{token}", [json_type]),
            (f"/rpc?q={token}", [json_type]),
            ("/rpc", [("x-auth-token", unknown), json_type]),
        ]:
            gateway.request("POST", target, fields, rpc)
        with connect(f"{gateway.proxy.ws_url}/{token}/graphql", proxy=None) as websocket:
            websocket.send("hi")
            websocket.recv(TIMEOUT)
        with http2_client() as client:
            client.post(f"{gateway.proxy.https_url}/{token}", content=rpc)
        gateway.proxy.stop()  # mitmdump writes the flow file out as it exits
        output = gateway.proxy.output()

    recorded = flows.read_bytes()
    assert recorded, "no flows were saved"
    for secret in (token, unknown):
        assert secret.encode() not in recorded
        assert secret not in output
    assert f"sm_pat_…{token[-4:]}".encode() in recorded
    assert f"sm_pat_…{token[-4:]}" in output


def test_observe_mode_rejects_nothing_and_warns(tmp_path: Path, upstream: RunningUpstream) -> None:
    db = new_store(tmp_path)
    with running_gateway(db, upstream, mode="observe") as gateway:
        unknown = record_of(gateway.request("GET", f"/graphql?token={UNKNOWN}"), upstream)
        missing = record_of(gateway.request("GET", "/graphql"), upstream)
        output = gateway.proxy.output()

    assert unknown.target == "/graphql"
    assert missing.target == "/graphql"
    assert unknown.header("x-tokenward-token") is None
    assert "travels in the URL" in output
    assert f"sm_pat_…{UNKNOWN[-4:]}" in output
    assert UNKNOWN not in output


def test_advice_of_a_misplaced_path_token_and_the_verdict_header_in_observe_mode(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    db = new_store(tmp_path, [("ipfs", "ipfs", "ipfs.localhost", upstream.url)])
    with TokenStore.open(db, create=False) as store:
        token, _ = store.create_token("dev", "pat", None, None, "e2e", utc_now())
    host = [("Host", "ipfs.localhost")]
    with running_gateway(db, upstream) as enforcing, nothing_reaches(upstream):
        misplaced = enforcing.request("GET", f"/api/v0/{token}", host)
        enforce_output = enforcing.proxy.output()
    with running_gateway(db, upstream, mode="observe") as observing:
        would_refuse = observing.request("GET", f"/api/v0/{token}", host)
        missing = observing.request("GET", "/api/v0/version", host)
        accepted = observing.request("GET", "/api/v0/version", [*host, ("x-auth-token", token)])
        observe_output = observing.proxy.output()

    assert misplaced.status == 400
    assert misplaced.header("x-tokenward-verdict") is None  # observe mode's only
    document = misplaced.json()
    assert document["error"] == "misplaced_token" and document["placement"] is None
    assert document["message"] == (
        "A token-shaped string stands in path segment 3, where this service's ipfs layout"
        " allows none: it allows a token as the first path segment (/TOKEN/api/v0/version),"
        " as a whole segment."
    )
    assert "x-auth-token" in document["advice"]
    assert document["advice"] in enforce_output  # the log line says the same
    # Observe mode: forwarded (a misplaced token is in no placement, so strip leaves it), and
    # the client's developer sees what enforce would answer.
    assert record_of(would_refuse, upstream).target == "/api/v0/" + token
    assert would_refuse.header("x-tokenward-verdict") == "misplaced_token"
    assert missing.header("x-tokenward-verdict") == "missing_token"
    assert accepted.header("x-tokenward-verdict") == "accepted"
    assert "tokenward observe: GET 400 misplaced_token" in observe_output
    assert "(None)" not in observe_output
    assert token not in enforce_output + observe_output


# --------------------------------------------------------------------------- web3.py


def web3_through(url: str) -> Web3:
    # No retries: a refusal must surface at once, not after five back-offs.
    provider = Web3.HTTPProvider(
        url, request_kwargs={"timeout": TIMEOUT}, exception_retry_configuration=None
    )
    return Web3(provider)


def test_web3_with_the_token_in_the_url_path(
    gateway: Gateway, tokens: Tokens, upstream: RunningUpstream
) -> None:
    mark = upstream.last_seq()
    w3 = web3_through(f"{gateway.proxy.url}/{tokens.live}")
    assert (w3.eth.block_number, w3.eth.chain_id) == (16, 1337)
    records = upstream.records(since=mark)
    assert [(r.method, r.target) for r in records] == [("POST", "/"), ("POST", "/")]
    assert all(tokens.live not in r.target and r.header("x-auth-token") is None for r in records)

    with nothing_reaches(upstream), pytest.raises(requests.HTTPError, match="401"):
        _ = web3_through(f"{gateway.proxy.url}/{UNKNOWN}").eth.chain_id


@pytest.fixture(scope="module")
def ganache_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are needed for the ganache node")
    try:
        cli = install_ganache(REPO_ROOT / ".cache" / "ganache")
    except ProcessError as error:
        pytest.skip(f"could not install ganache: {error}")
    db = new_store(tmp_path_factory.mktemp("ganache"))
    with start_ganache(cli) as ganache:
        # ganache serves JSON-RPC at "/" only: the generic layout strips "/TOKEN" to "/".
        settings = ProxySettings(db=db, upstream=ganache.url, listen_port=0, layout="generic")
        with start_proxy(settings) as proxy:
            yield Gateway(proxy, db)


def test_web3_against_a_real_ganache_node(ganache_gateway: Gateway) -> None:
    token = ganache_gateway.token("wallet")
    w3 = web3_through(f"{ganache_gateway.proxy.url}/{token}")
    assert w3.eth.chain_id == 1337
    accounts = list(w3.eth.accounts)  # typed as a 1-tuple by web3
    sender, receiver = accounts[0], accounts[1]
    before = w3.eth.get_balance(receiver)
    one_ether = Web3.to_wei(1, "ether")
    sent = w3.eth.send_transaction({"from": sender, "to": receiver, "value": one_ether})
    assert w3.eth.wait_for_transaction_receipt(sent, timeout=TIMEOUT)["status"] == 1
    assert w3.eth.get_balance(receiver) == before + one_ether

    with pytest.raises(requests.HTTPError, match="401"):
        _ = web3_through(ganache_gateway.proxy.url).eth.chain_id

"""The recording upstream fixture over real loopback sockets: what it records, how it answers."""

from __future__ import annotations

import hashlib
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from tokenward.fixtures.upstream import (
    IPFS_VERSION,
    RecordingUpstream,
    UpstreamRecord,
    clear_records,
    fetch_records,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CID_V0 = re.compile(r"Qm[1-9A-HJ-NP-Za-km-z]{44}")
TIMEOUT = 10.0


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as server:
        yield server


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    # trust_env=False: a proxy from the environment must not sit between test and fixture.
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as http:
        yield http


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


def read_head(stream: BinaryIO) -> tuple[int, list[tuple[str, str]]]:
    status_line = stream.readline()
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    headers = []
    while (line := stream.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers.append((name, value.strip()))
    return int(status_line.split()[1]), headers


def read_response(stream: BinaryIO) -> RawResponse:
    status, headers = read_head(stream)
    response = RawResponse(status, headers, b"")
    length = int(response.header("content-length") or "0")
    return RawResponse(status, headers, stream.read(length))


@contextmanager
def raw_connection(port: int) -> Iterator[tuple[socket.socket, BinaryIO]]:
    """A plain socket, so no client library normalises what is sent."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    stream = sock.makefile("rb")
    try:
        yield sock, stream
    finally:
        stream.close()
        sock.close()


def raw_request(port: int, request: bytes) -> RawResponse:
    with raw_connection(port) as (sock, stream):
        sock.sendall(request)
        return read_response(stream)


def only_record(upstream: RecordingUpstream) -> UpstreamRecord:
    records = upstream.records
    assert len(records) == 1, records
    return records[0]


def wait_for_records(upstream: RecordingUpstream, count: int) -> list[UpstreamRecord]:
    deadline = time.monotonic() + TIMEOUT
    while len(records := upstream.records) < count:
        assert time.monotonic() < deadline, f"only {len(records)} of {count} records arrived"
        time.sleep(0.01)
    return records


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def jsonrpc(method: str, call_id: object = 1) -> dict[str, Any]:
    call: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": []}
    if call_id is not None:
        call["id"] = call_id
    return call


# --------------------------------------------------------------------------- what is recorded


@pytest.mark.parametrize(
    "target",
    [
        b"/api/v0/cat?arg=/ipfs/Qm%2Fx&flag&b=a+b",
        b"//double//slash/./../%7e%2F?",
        b"/path;params?q=a%20b&q=c#frag?x=sm_pat_abc",
        b"/%C3%A9?x=%FF&y=%ZZ&z=~!$'()*,:@",
        b"/no-query",
        b"http://node.example/rpc?absolute=form",
    ],
)
def test_raw_target_is_recorded_byte_for_byte(upstream: RecordingUpstream, target: bytes) -> None:
    response = raw_request(upstream.port, b"GET " + target + b" HTTP/1.1\r\nHost: n\r\n\r\n")

    record = only_record(upstream)
    expected = target.decode("latin-1")
    assert record.target == expected
    path, has_query, query = expected.partition("?")
    assert (record.path, record.query) == (path, query if has_query else None)
    assert json.loads(response.body)["target"] == expected
    assert response.header("x-upstream-seq") == str(record.seq)


def test_non_ascii_target_is_refused_as_http_forbids_it(upstream: RecordingUpstream) -> None:
    response = raw_request(upstream.port, b"GET /caf\xe9 HTTP/1.1\r\nHost: n\r\n\r\n")
    assert response.status == 400
    assert upstream.records == []


def test_header_order_names_and_duplicates_are_kept(upstream: RecordingUpstream) -> None:
    sent = [
        ("Host", "node.example:8545"),
        ("X-Zeta", "1"),
        ("authorization", "Bearer sm_pat_secret"),
        ("X-Alpha", "two words"),
        ("x-zeta", "3"),
        ("Content-Length", "0"),
    ]
    head = "".join(f"{name}: {value}\r\n" for name, value in sent)
    response = raw_request(upstream.port, f"GET /h HTTP/1.1\r\n{head}\r\n".encode())

    record = only_record(upstream)
    assert record.headers == tuple(sent)
    assert record.host == "node.example:8545"
    assert record.header("X-ZETA") == "1"
    assert json.loads(response.body)["headers"] == [list(pair) for pair in sent]


def test_chunked_body_is_hashed_and_measured(upstream: RecordingUpstream) -> None:
    chunks = [b"hello ", b"chunked", b" world" * 1000]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    request = (
        b"POST /upload HTTP/1.1\r\nHost: n\r\nTransfer-Encoding: chunked\r\n\r\n"
        + encoded
        + b"0\r\nX-Trailer: t\r\n\r\n"
    )
    response = raw_request(upstream.port, request)

    record = only_record(upstream)
    body = b"".join(chunks)
    assert response.status == 200
    assert (record.body_length, record.body_sha256) == (len(body), sha256_hex(body))
    assert record.complete


def test_expect_100_continue_is_answered_before_the_body(upstream: RecordingUpstream) -> None:
    with raw_connection(upstream.port) as (sock, stream):
        sock.sendall(
            b"POST /x HTTP/1.1\r\nHost: n\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n"
        )
        status, _ = read_head(stream)
        assert status == 100
        sock.sendall(b"12345")
        response = read_response(stream)

    assert response.status == 200
    assert only_record(upstream).body_sha256 == sha256_hex(b"12345")


def test_pipelined_requests_are_answered_in_order(upstream: RecordingUpstream) -> None:
    with raw_connection(upstream.port) as (sock, stream):
        sock.sendall(
            b"GET /first HTTP/1.1\r\nHost: n\r\n\r\nGET /second HTTP/1.1\r\nHost: n\r\n\r\n"
        )
        first, second = read_response(stream), read_response(stream)

    assert [json.loads(r.body)["target"] for r in (first, second)] == ["/first", "/second"]
    assert [r.target for r in upstream.records] == ["/first", "/second"]
    assert [first.header("x-upstream-seq"), second.header("x-upstream-seq")] == ["1", "2"]


def test_body_cut_short_is_recorded_as_incomplete(upstream: RecordingUpstream) -> None:
    with raw_connection(upstream.port) as (sock, _):
        sock.sendall(b"POST /cut HTTP/1.1\r\nHost: n\r\nContent-Length: 1000\r\n\r\n0123456789")

    (record,) = wait_for_records(upstream, 1)
    assert (record.complete, record.body_length) == (False, 10)


def test_malformed_request_gets_400_and_no_record(upstream: RecordingUpstream) -> None:
    response = raw_request(upstream.port, b"NOT A REQUEST\r\n\r\n")
    assert response.status == 400
    assert upstream.records == []


def test_connect_is_refused_but_recorded(upstream: RecordingUpstream) -> None:
    response = raw_request(upstream.port, b"CONNECT node:443 HTTP/1.1\r\nHost: node:443\r\n\r\n")
    assert response.status == 405
    assert only_record(upstream).target == "node:443"


def test_head_request_gets_headers_only(upstream: RecordingUpstream, client: httpx.Client) -> None:
    response = client.head(f"{upstream.url}/anything")
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["x-upstream-seq"] == str(only_record(upstream).seq)


def test_concurrent_keep_alive_clients_get_distinct_sequence_numbers(
    upstream: RecordingUpstream,
) -> None:
    def send_many(worker: int) -> list[int]:
        with httpx.Client(trust_env=False, timeout=TIMEOUT) as http:
            return [
                int(http.get(f"{upstream.url}/w{worker}/{i}").headers["x-upstream-seq"])
                for i in range(25)
            ]

    with ThreadPoolExecutor(8) as pool:
        answered = [seq for seqs in pool.map(send_many, range(8)) for seq in seqs]

    recorded = [record.seq for record in upstream.records]
    assert recorded == list(range(1, 201))
    assert sorted(answered) == recorded


def test_oldest_records_are_dropped_past_max_records(client: httpx.Client) -> None:
    server = RecordingUpstream(max_records=3)
    server.start_in_thread()
    try:
        for i in range(5):
            client.get(f"{server.url}/{i}")
        assert [(r.seq, r.target) for r in server.records] == [(3, "/2"), (4, "/3"), (5, "/4")]
    finally:
        server.stop_thread()


def test_lifecycle_misuse_raises_clearly() -> None:
    server = RecordingUpstream()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.url
    server.start_in_thread()
    try:
        with pytest.raises(RuntimeError, match="already running"):
            server.start_in_thread()
    finally:
        server.stop_thread()
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.control_url


# --------------------------------------------------------------------------- JSON-RPC


@pytest.mark.parametrize(
    ("method", "result"),
    [("eth_blockNumber", "0x10"), ("eth_chainId", "0x539"), ("net_version", "1337")],
)
def test_jsonrpc_known_methods_at_any_path(
    upstream: RecordingUpstream, client: httpx.Client, method: str, result: str
) -> None:
    response = client.post(f"{upstream.url}/ext/bc/C/rpc", json=jsonrpc(method, 7))
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"jsonrpc": "2.0", "id": 7, "result": result}


def test_jsonrpc_unknown_method_is_method_not_found(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    response = client.post(upstream.url, json=jsonrpc("eth_sendRawTransaction", "a"))
    assert response.json() == {
        "jsonrpc": "2.0",
        "id": "a",
        "error": {"code": -32601, "message": "Method not found"},
    }


def test_jsonrpc_batch_answers_each_call_and_skips_notifications(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    batch = [jsonrpc("eth_chainId", 1), jsonrpc("net_version", None), jsonrpc("nope", 2), 5]
    answers = client.post(f"{upstream.url}/rpc", json=batch).json()
    assert answers == [
        {"jsonrpc": "2.0", "id": 1, "result": "0x539"},
        {"jsonrpc": "2.0", "id": 2, "error": {"code": -32601, "message": "Method not found"}},
        {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "Invalid Request"}},
    ]


def test_jsonrpc_notification_alone_gets_no_content(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    response = client.post(f"{upstream.url}/rpc", json=jsonrpc("eth_chainId", None))
    assert (response.status_code, response.content) == (204, b"")
    assert response.headers["x-upstream-seq"] == "1"


@pytest.mark.parametrize("body", [b"not json", b'{"jsonrpc": "2.0"}', b"[1, 2]"])
def test_post_that_is_not_jsonrpc_is_echoed(
    upstream: RecordingUpstream, client: httpx.Client, body: bytes
) -> None:
    response = client.post(f"{upstream.url}/rpc?x=1", content=body)
    seen = response.json()
    assert (seen["method"], seen["target"]) == ("POST", "/rpc?x=1")
    assert only_record(upstream).body_sha256 == sha256_hex(body)


# --------------------------------------------------------------------------- IPFS


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_ipfs_version(upstream: RecordingUpstream, client: httpx.Client, method: str) -> None:
    response = client.request(method, f"{upstream.url}/api/v0/version")
    assert response.json() == IPFS_VERSION


def ipfs_add(
    client: httpx.Client, upstream: RecordingUpstream, files: list[tuple[str, bytes]], boundary: str
) -> list[dict[str, str]]:
    response = client.post(
        f"{upstream.url}/api/v0/add",
        files=[("file", (name, content)) for name, content in files],
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 200, response.text
    return [json.loads(line) for line in response.text.splitlines()]


def test_ipfs_add_names_hashes_and_sizes_each_file(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    added = ipfs_add(client, upstream, [("a.txt", b"alpha"), ("b.bin", b"\0beta\r\n")], "b1")
    again = ipfs_add(client, upstream, [("c.txt", b"alpha")], "other-boundary")

    assert [(f["Name"], f["Size"]) for f in added] == [("a.txt", "5"), ("b.bin", "7")]
    assert all(CID_V0.fullmatch(f["Hash"]) for f in added)
    assert added[0]["Hash"] != added[1]["Hash"]
    # Same content under another name and boundary: the hash covers the content alone.
    assert again[0]["Hash"] == added[0]["Hash"]


def test_ipfs_add_streams_a_large_file_with_boundary_lookalikes(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    boundary = "tokenward-boundary"
    tricky = b"\r\n--tokenward-bound" + b"--tokenward-boundary" + b"\r\n--tokenward-boundar\r\n"
    content = (tricky + bytes(range(256)) * 64) * 150  # about 3 MB, many socket reads

    (big,) = ipfs_add(client, upstream, [("big.bin", content)], boundary)
    (reference,) = ipfs_add(client, upstream, [("ref.bin", content)], "x")

    assert big["Size"] == str(len(content))
    assert big["Hash"] == reference["Hash"]


def test_ipfs_add_without_closing_boundary_is_an_ipfs_error(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="f"\r\n\r\ndata'
    response = client.post(
        f"{upstream.url}/api/v0/add",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert response.status_code == 400
    assert response.json()["Type"] == "error"


# --------------------------------------------------------------------------- echo


def test_other_requests_are_echoed(upstream: RecordingUpstream, client: httpx.Client) -> None:
    response = client.get(f"{upstream.url}/v1/status?verbose=1", headers={"X-Probe": "p"})
    seen = response.json()
    assert set(seen) == {"method", "target", "headers"}
    assert (seen["method"], seen["target"]) == ("GET", "/v1/status?verbose=1")
    assert ["X-Probe", "p"] in seen["headers"]


# --------------------------------------------------------------------------- WebSocket


@contextmanager
def websocket(upstream: RecordingUpstream, path: str) -> Iterator[ClientConnection]:
    with connect(
        upstream.ws_url + path, proxy=None, open_timeout=TIMEOUT, close_timeout=TIMEOUT
    ) as ws:
        yield ws


def test_websocket_echoes_and_records_every_message(upstream: RecordingUpstream) -> None:
    with websocket(upstream, "/ws?token=sm_pat_x") as ws:
        assert ws.response is not None
        seq = ws.response.headers["x-upstream-seq"]
        ws.send("hello")
        assert ws.recv(TIMEOUT) == "hello"
        ws.send(b"\x00\xffbinary")
        assert ws.recv(TIMEOUT) == b"\x00\xffbinary"
        ws.send(iter(["frag", "mented"]))
        assert ws.recv(TIMEOUT) == "fragmented"
        assert ws.ping().wait(TIMEOUT)

    record = only_record(upstream)
    assert (record.seq, record.websocket, record.target) == (int(seq), True, "/ws?token=sm_pat_x")
    messages = [(m.kind, m.payload) for m in record.websocket_messages]
    assert messages == [("text", b"hello"), ("binary", b"\x00\xffbinary"), ("text", b"fragmented")]


def test_jsonrpc_over_websocket(upstream: RecordingUpstream) -> None:
    with websocket(upstream, "/ext/bc/C/ws") as ws:
        ws.send(json.dumps(jsonrpc("eth_chainId", 1)))
        assert json.loads(ws.recv(TIMEOUT)) == {"jsonrpc": "2.0", "id": 1, "result": "0x539"}
        ws.send(json.dumps(jsonrpc("net_version", None)))  # notification: no answer
        ws.send(json.dumps([jsonrpc("eth_blockNumber", 2), jsonrpc("x", 3)]))
        batch = json.loads(ws.recv(TIMEOUT))

    assert [answer.get("result") for answer in batch] == ["0x10", None]
    assert batch[1]["error"]["code"] == -32601
    assert len(only_record(upstream).websocket_messages) == 3


# --------------------------------------------------------------------------- control listener


def test_control_listener_is_separate_from_the_upstream(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    assert upstream.control_port != upstream.port
    assert client.get(f"{upstream.control_url}/health").json() == {"ok": True}
    # /records on the proxied port is just another request: echoed and recorded, never the log.
    seen = client.get(f"{upstream.url}/records").json()
    assert set(seen) == {"method", "target", "headers"}
    assert [record.target for record in fetch_records(upstream.control_url)] == ["/records"]


def test_fetch_records_round_trips_every_field(
    upstream: RecordingUpstream, client: httpx.Client
) -> None:
    client.post(f"{upstream.url}/rpc?x=%2F", json=jsonrpc("eth_chainId"))
    with websocket(upstream, "/ws") as ws:
        ws.send(b"\x01\x02")
        ws.recv(TIMEOUT)
        ws.send("text")
        ws.recv(TIMEOUT)

    assert fetch_records(upstream.control_url) == upstream.records
    assert len(upstream.records[1].websocket_messages) == 2


def test_records_since_and_clear(upstream: RecordingUpstream, client: httpx.Client) -> None:
    for i in range(3):
        client.get(f"{upstream.url}/{i}")

    assert [r.seq for r in fetch_records(upstream.control_url, since=1)] == [2, 3]
    assert clear_records(upstream.control_url) == 3
    assert fetch_records(upstream.control_url) == []
    client.get(f"{upstream.url}/after")
    # Sequence numbers keep rising across a clear, so `since` polling stays valid.
    assert [r.seq for r in upstream.records] == [4]
    upstream.clear()
    assert upstream.records == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/records?since=x", 400), ("POST", "/records", 405), ("GET", "/nope", 404)],
)
def test_control_listener_rejects_bad_requests(
    upstream: RecordingUpstream, client: httpx.Client, method: str, path: str, status: int
) -> None:
    assert client.request(method, upstream.control_url + path).status_code == status


def test_record_from_json_rejects_what_is_not_a_record() -> None:
    with pytest.raises(ValueError, match="not an upstream record"):
        UpstreamRecord.from_json({"seq": 1})


# --------------------------------------------------------------------------- as a process


@contextmanager
def upstream_process(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, Any]]]:
    ready_file = tmp_path / "ready.json"
    command = [
        sys.executable,
        "-m",
        "tokenward.fixtures.upstream",
        "--port",
        "0",
        "--control-port",
        "0",
    ]
    process = subprocess.Popen(
        [*command, "--ready-file", str(ready_file)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready_file.exists():
            assert process.poll() is None, process.communicate()[1].decode()
            assert time.monotonic() < deadline, "upstream process never became ready"
            time.sleep(0.02)
        yield process, json.loads(ready_file.read_text())
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_process_mode_announces_serves_and_stops_cleanly(
    tmp_path: Path, client: httpx.Client, signum: signal.Signals
) -> None:
    with upstream_process(tmp_path) as (process, ready):
        assert process.stdout is not None
        assert json.loads(process.stdout.readline()) == ready
        assert ready["pid"] == process.pid
        assert client.post(ready["url"], json=jsonrpc("net_version")).json()["result"] == "1337"
        assert [r.method for r in fetch_records(ready["control_url"])] == ["POST"]

        process.send_signal(signum)
        _, stderr = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, stderr.decode()


def peak_resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_50_mb_streamed_upload_keeps_memory_flat(tmp_path: Path, client: httpx.Client) -> None:
    chunk = bytes(range(256)) * 4096  # 1 MiB
    chunks = 50
    expected = hashlib.sha256()
    for _ in range(chunks):
        expected.update(chunk)

    with upstream_process(tmp_path) as (process, ready):
        client.post(ready["url"], content=b"warm-up" * 1000)
        before = peak_resident_kib(process.pid)
        response = client.post(f"{ready['url']}/upload", content=(chunk for _ in range(chunks)))
        after = peak_resident_kib(process.pid)
        record = fetch_records(ready["control_url"])[-1]

    assert response.status_code == 200
    assert record.header("transfer-encoding") == "chunked"
    assert (record.body_length, record.body_sha256) == (len(chunk) * chunks, expected.hexdigest())
    # Holding the body whole would add 50 MiB; streaming costs a few MiB of buffers.
    assert after - before < 25 * 1024, f"peak memory grew by {after - before} KiB"

"""The raw-socket upstream keeps every byte, and reads hidden requests back as requests."""

from __future__ import annotations

import socket
import time

from tokenward.fixtures.raw_upstream import RawUpstream, requests_on


def _exchange(port: int, data: bytes, answers: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(data)
        received = b""
        deadline = time.monotonic() + 5
        while received.count(b"HTTP/1.1 ") < answers and time.monotonic() < deadline:
            received += client.recv(4096)
        return received


def test_a_body_that_hides_a_request_reads_back_as_two() -> None:
    hidden = b"POST /smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    sent = b"OPTIONS / HTTP/1.1\r\nHost: x\r\n\r\n" + hidden
    with RawUpstream() as upstream:
        answered = _exchange(upstream.port, sent, answers=2)
        assert answered.count(b"200 OK") == 2
        assert upstream.connections() == [sent]
        requests = upstream.requests()
    assert [(r.method, r.target, r.body) for r in requests] == [
        (b"OPTIONS", b"/", b""),
        (b"POST", b"/smuggled", b"hello"),
    ]
    assert requests[1].header(b"content-length") == b"5"


def test_an_upgrade_is_answered_101_and_what_follows_is_only_recorded() -> None:
    sent = b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
    with RawUpstream(answer_upgrades=True) as upstream:
        assert b" 101 " in _exchange(upstream.port, sent, answers=1)
        with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as client:
            client.sendall(sent + b"GET /tunnelled HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.2)
        assert b"/tunnelled" in upstream.received()
        assert [r.target for r in upstream.requests()] == [b"/c", b"/c"]


def test_a_request_cut_short_does_not_count() -> None:
    assert requests_on(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nPOST / HTTP/1.1\r\nContent-Le") == [
        requests_on(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")[0]
    ]


def test_a_request_that_asks_to_upgrade_but_is_not_switched_does_not_hide_the_next() -> None:
    upgrade = b"GET /u HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: foo\r\n\r\n"
    sent = upgrade + b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    assert [r.target for r in requests_on(sent)] == [b"/u", b"/next"]
    with RawUpstream() as upstream:  # answers 200: no switch
        assert _exchange(upstream.port, sent, answers=2).count(b"200 OK") == 2
        assert [r.target for r in upstream.requests()] == [b"/u", b"/next"]

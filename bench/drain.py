"""`python -m bench.drain [--seconds N]`: what hostile request heads cost a real proxy.

Sends request heads built to make percent-decoding expensive (a header field of `%`
characters, a query of many `a=%2525…` items, header fields just under the size limits)
through mitmdump with the addon, one at a time on fresh connections, and prints the time from
the first byte sent to the answer's status line. Then a valid client sends keep-alive requests
for `--seconds`, alone and beside two attacker connections that send 2 MB heads in a loop, and
its median and p99 latency are printed. The upstream is the raw-socket recorder. Timings, not
tests: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tokenward.fixtures.processes import RunningProxy, exchange, start_proxy
from tokenward.fixtures.raw_upstream import RawUpstream
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

KIB = 1 << 10
MIB = 1 << 20
UNDER_THE_LIMIT = 64 * KIB - 64  # the default limits are 64 KiB; a field a little shorter
ATTACKERS = 2
ANSWER_TIMEOUT_SECONDS = 120.0


def head(target: str, fields: Sequence[tuple[str, str]]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: node.example", *(f"{n}: {v}" for n, v in fields)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def attacker_head() -> bytes:
    """2 MB of header fields, each under the size limit, so that only decoding can refuse it."""
    fields = [(f"x-pad-{index}", "%25" * (UNDER_THE_LIMIT // 3)) for index in range(32)]
    return head("/", fields)


def hostile_heads() -> dict[str, bytes]:
    """The heads whose cost is measured, by name."""
    return {
        "header of '%', 64 KiB": head("/", [("x-foo", "%" * UNDER_THE_LIMIT)]),
        "header of '%', 1 MB": head("/", [("x-foo", "%" * MIB)]),
        "header of '%', 10 MB": head("/", [("x-foo", "%" * (10 * MIB))]),
        "header of '%25', 64 KiB": head("/", [("x-foo", "%25" * (UNDER_THE_LIMIT // 3))]),
        "query of 100,000 'a=%2525252525252525'": head(
            "/?" + "&".join(["a=%2525252525252525"] * 100_000), []
        ),
        "query of 'a=%2525…' items, 64 KiB": head(
            "/?" + "&".join(["a=%2525252525252525"] * (UNDER_THE_LIMIT // 20)), []
        ),
        "2 MB head in 64 KiB fields of '%25'": attacker_head(),
    }


def send_head(port: int, request: bytes) -> tuple[float, str]:
    """Seconds from the first byte of `request` sent on a new connection to the answer's status
    line, and that line."""
    with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_TIMEOUT_SECONDS) as client:
        start = time.perf_counter()
        client.sendall(request)
        received = b""
        while b"\r\n" not in received:
            chunk = client.recv(4096)
            if not chunk:
                break
            received += chunk
        elapsed = time.perf_counter() - start
    return elapsed, received.split(b"\r\n", 1)[0].decode("latin-1")


def valid_latencies(proxy: RunningProxy, token: str, seconds: float) -> list[float]:
    """Seconds per request of a keep-alive client with a valid token, for `seconds`."""
    connection = proxy.connection()
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            start = time.perf_counter()
            answer = exchange(connection, "GET", "/", [("x-auth-token", token)])
            latencies.append(time.perf_counter() - start)
            if answer.status != 200:
                raise RuntimeError(f"the valid client got {answer.status}")
    finally:
        connection.close()
    return latencies


def attack_until(stop: threading.Event, port: int, request: bytes, answered: list[str]) -> None:
    while not stop.is_set():
        try:
            answered.append(send_head(port, request)[1])
        except OSError:
            continue


def with_attackers(port: int, measure: Callable[[], list[float]]) -> tuple[list[float], int]:
    """`measure()` run while ATTACKERS connections send 2 MB heads; how many were answered."""
    stop = threading.Event()
    answered: list[str] = []
    request = attacker_head()
    threads = [
        threading.Thread(target=attack_until, args=(stop, port, request, answered), daemon=True)
        for _ in range(ATTACKERS)
    ]
    for thread in threads:
        thread.start()
    try:
        return measure(), len(answered)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=ANSWER_TIMEOUT_SECONDS)


def shown(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{len(ordered)} requests, median {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms, max {ordered[-1] * 1000:.1f} ms"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drain", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="of each latency phase")
    parser.add_argument("--repeat", type=int, default=3, help="sends of each hostile head")
    arguments = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="tokenward-drain-") as workdir, RawUpstream() as up:
        db = Path(workdir) / "tokenward.db"
        with TokenStore.open(db, create=True) as store:
            token, _ = store.create_token("valid", "pat", None, None, "drain", datetime.now(UTC))
        with start_proxy(ProxySettings(db=db, upstream=up.url, listen_port=0)) as proxy:
            print("time per hostile request, first byte sent to the answer's status line:")
            for name, request in hostile_heads().items():
                sent = [send_head(proxy.port, request) for _ in range(arguments.repeat)]
                times = ", ".join(f"{seconds * 1000:,.1f}" for seconds, _ in sent)
                print(f"  {name} ({len(request):,} bytes): {times} ms; {sent[-1][1]!r}")
            print("a valid client, keep-alive, its token in x-auth-token:")
            alone = valid_latencies(proxy, token, arguments.seconds)
            print(f"  alone: {shown(alone)}")
            beside, attacks = with_attackers(
                proxy.port, lambda: valid_latencies(proxy, token, arguments.seconds)
            )
            print(f"  beside {ATTACKERS} attackers sending 2 MB heads: {shown(beside)}")
            print(f"  ({attacks} attack requests answered meanwhile)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

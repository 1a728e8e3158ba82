"""`python -m bench.soak [--seconds N]`: keep-alive load through the proxy while tokens churn.

Another process (the churner, `python -m bench.soak --churner DB`) creates, re-scopes and
deletes tokens in a loop on the proxy's store, and prints each change with the monotonic times
right before the call and right after its commit. Meanwhile a pool of keep-alive clients sends
requests through one proxy, or through several proxies on the same store, each carrying one of
the churner's tokens (live or just deleted) in the path, the header or the query.

Every answer is then checked against what the store held while the request was in flight:
a token's state may have been read at any instant between sending and answering, so a request
whose window overlaps a change may get either verdict; every other request must get exactly the
verdict of the state in force. In particular a request sent after a delete's commit must be
refused (`revoked_token`), whichever proxy it reaches. No answer may be a 5xx and no proxy may
print "database is locked". CLOCK_MONOTONIC is system-wide on Linux, so times taken in the
churner and in the clients compare directly.

The soak runs three phases of `--seconds` each: one proxy, three proxies on one store, and
`wrk` (16 keep-alive connections, a token the churner never touches) against one proxy while
the churner runs. tests/test_reliability.py runs the same checks for a few seconds.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, TextIO

from bench.load import run_wrk, wrk_program
from tokenward.core.tokens import holds_token_shaped
from tokenward.fixtures import processes
from tokenward.fixtures.processes import (
    RunningProcess,
    RunningProxy,
    RunningUpstream,
    exchange,
    start_proxy,
    start_upstream,
)
from tokenward.fixtures.upstream import UpstreamRecord
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

SERVICES: tuple[str, ...] = ("alpha", "beta")
SCOPES: tuple[tuple[str, ...] | None, ...] = (None, ("alpha",), ("beta",), ("alpha", "beta"))
PLACEMENTS: tuple[str, ...] = ("path", "header", "query")
LOCKED = "database is locked"
CLIENTS_PER_PROXY = 6
LIVE_TOKENS = 12
CHURN_PAUSE_SECONDS = 0.02
# How long a client keeps using a token after it learned of its deletion.
DELETED_IN_USE_SECONDS = 1.5
_POLL_SECONDS = 0.01
_CHURNER_START_TIMEOUT = 30.0
_CHURNER_STOP_TIMEOUT = 30.0

EventKind = Literal["created", "scoped", "deleted"]
Outcome = tuple[int, str | None]
ACCEPTED: Outcome = (200, None)
REVOKED: Outcome = (401, "revoked_token")
OUT_OF_SCOPE: Outcome = (403, "out_of_scope")


def host_of(service: str) -> str:
    return f"{service}.localhost"


# --------------------------------------------------------------------------- the churner


@dataclass(frozen=True, slots=True)
class ChurnEvent:
    """One change the churner committed: `started` before the call, `committed` after it."""

    kind: EventKind
    name: str
    scope: tuple[str, ...] | None
    started: float
    committed: float
    token: str | None = field(default=None, repr=False)  # for "created" only

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "name": self.name,
            "scope": None if self.scope is None else list(self.scope),
            "started": self.started,
            "committed": self.committed,
            "token": self.token,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> ChurnEvent:
        kind = data["kind"]
        if kind not in ("created", "scoped", "deleted"):
            raise ValueError(f"not a churn event: {kind!r}")
        scope = data["scope"]
        token = data["token"]
        started, committed = data["started"], data["committed"]
        if not isinstance(started, float) or not isinstance(committed, float):
            raise ValueError("churn event times must be numbers")
        return cls(
            kind,
            str(data["name"]),
            None if not isinstance(scope, list) else tuple(str(s) for s in scope),
            started,
            committed,
            None if token is None else str(token),
        )


def churn(db: Path, seconds: float, pause: float, seed: int | None, out: TextIO) -> int:
    """Create, re-scope and delete tokens on `db` for `seconds`; one JSON line per change.

    Keeps about LIVE_TOKENS tokens of its own alive and touches no other token. Returns how
    many changes it committed.
    """
    rng = random.Random(seed)
    live: list[str] = []
    numbers = iter(range(1, 1 << 62))
    changes = 0
    deadline = time.monotonic() + seconds
    with TokenStore.open(db, create=False) as store:
        while time.monotonic() < deadline:
            roll = rng.random()
            if len(live) < LIVE_TOKENS // 2 or (roll < 0.4 and len(live) < 2 * LIVE_TOKENS):
                name = f"churn-{os.getpid()}-{next(numbers)}"
                scope = rng.choice(SCOPES)
                started = time.monotonic()
                token, _ = store.create_token(
                    name, "pat", None, _scope_set(scope), "soak", datetime.now(UTC)
                )
                event = ChurnEvent("created", name, scope, started, time.monotonic(), token)
                live.append(name)
            elif roll < 0.7:
                name = rng.choice(live)
                scope = rng.choice(SCOPES)
                started = time.monotonic()
                store.set_scope(name, _scope_set(scope))
                event = ChurnEvent("scoped", name, scope, started, time.monotonic())
            else:
                name = live.pop(rng.randrange(len(live)))
                started = time.monotonic()
                store.delete_token(name, datetime.now(UTC))
                event = ChurnEvent("deleted", name, None, started, time.monotonic())
            out.write(json.dumps(event.to_json()) + "\n")
            out.flush()
            changes += 1
            time.sleep(pause)
    out.write(json.dumps({"done": changes}) + "\n")
    out.flush()
    return changes


def _scope_set(scope: tuple[str, ...] | None) -> frozenset[str] | None:
    return None if scope is None else frozenset(scope)


class TokenBook:
    """What the clients know of the churner's tokens: filled by a thread tailing its output."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[ChurnEvent] = []
        self.tokens: dict[str, str] = {}
        self._live: list[str] = []
        self._deleted: dict[str, float] = {}  # name: monotonic time the book learned of it
        self.done: int | None = None

    def add(self, event: ChurnEvent) -> None:
        with self._lock:
            self.events.append(event)
            if event.kind == "created":
                assert event.token is not None, "a created event carries its token"
                self.tokens[event.name] = event.token
                self._live.append(event.name)
            elif event.kind == "deleted":
                self._live.remove(event.name)
                self._deleted[event.name] = time.monotonic()

    def pick(self, rng: random.Random) -> tuple[str, str] | None:
        """A token in use: a live one, or one deleted a moment ago (name, token)."""
        with self._lock:
            now = time.monotonic()
            recent = [n for n, at in self._deleted.items() if now - at < DELETED_IN_USE_SECONDS]
            candidates = self._live + recent
            if not candidates:
                return None
            name = rng.choice(candidates)
            return name, self.tokens[name]


class Churner:
    """The churner process and the thread that reads its changes into a TokenBook."""

    def __init__(self, process: RunningProcess) -> None:
        self.process = process
        self.book = TokenBook()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, name="churn reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        offset = 0
        pending = b""
        while not self._stop.is_set():
            try:
                with self.process.output_path.open("rb") as output:
                    output.seek(offset)
                    chunk = output.read()
            except FileNotFoundError:
                return  # stopped: its folder is gone
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._take(line)
            if self.book.done is not None:
                return
            time.sleep(_POLL_SECONDS)

    def _take(self, line: bytes) -> None:
        if not line.startswith(b"{"):
            return  # anything else it printed is kept in its output
        data = json.loads(line)
        if "done" in data:
            self.book.done = int(data["done"])
        else:
            self.book.add(ChurnEvent.from_json(data))

    def wait_until_tokens(self, count: int, timeout: float = _CHURNER_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while len(self.book.tokens) < count:
            if not self.process.alive() and self.book.done is None:
                raise RuntimeError(f"the churner stopped:\n{self.process.output()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the churner made no tokens in time:\n{self.output()}")
            time.sleep(_POLL_SECONDS)

    def finish(self, timeout: float = _CHURNER_STOP_TIMEOUT) -> int:
        """Wait for the churner's last change; returns how many it committed."""
        self.process.process.wait(timeout)
        self._reader.join(timeout)
        if self.book.done is None:
            raise RuntimeError(f"the churner did not finish cleanly:\n{self.output()}")
        return self.book.done

    def output(self) -> str:
        """What it printed besides its changes (errors, warnings); never a token."""
        lines = self.process.output().splitlines()
        return "\n".join(line for line in lines if not line.startswith("{"))

    def stop(self) -> None:
        self._stop.set()
        self.process.stop()
        self._reader.join(5.0)


@contextmanager
def running_churner(db: Path, seconds: float, seed: int | None = None) -> Iterator[Churner]:
    """`python -m bench.soak --churner DB` for `seconds`; stopped on leaving, also on failure."""
    workdir = tempfile.TemporaryDirectory(prefix="tokenward-churner-")
    command = [sys.executable, "-m", "bench.soak", "--churner", str(db), "--seconds", str(seconds)]
    if seed is not None:
        command += ["--seed", str(seed)]
    process = processes._spawn(command, workdir, os.environ, processes.REPO_ROOT)
    churner = Churner(RunningProcess("the churner", process, workdir))
    try:
        yield churner
    finally:
        churner.stop()


# --------------------------------------------------------------------------- the clients


@dataclass(frozen=True, slots=True)
class Observation:
    """One request of the load: which token (by name), where, when, and what came back."""

    name: str
    service: str
    placement: str
    sent: float
    answered: float
    status: int
    error: str | None
    proxy: int


@dataclass(slots=True)
class ClientTally:
    observations: list[Observation] = field(default_factory=list)
    socket_errors: list[str] = field(default_factory=list)


def request_for(token: str, service: str, placement: str) -> tuple[str, list[tuple[str, str]]]:
    headers = [("Host", host_of(service))]
    if placement == "path":
        return f"/rpc/{token}", headers
    if placement == "query":
        return f"/rpc?id=1&token={token}", headers
    return "/rpc", [*headers, ("x-auth-token", token)]


def run_client(
    proxies: Sequence[RunningProxy],
    index: int,
    book: TokenBook,
    until: float,
    tally: ClientTally,
    seed: int,
) -> None:
    """Send requests on one keep-alive connection until `until`, reconnecting after errors."""
    rng = random.Random(seed)
    proxy_number = index % len(proxies)
    proxy = proxies[proxy_number]
    connection = proxy.connection()
    try:
        while time.monotonic() < until:
            picked = book.pick(rng)
            if picked is None:
                time.sleep(_POLL_SECONDS)
                continue
            name, token = picked
            service = rng.choice(SERVICES)
            placement = rng.choice(PLACEMENTS)
            target, headers = request_for(token, service, placement)
            sent = time.monotonic()
            try:
                answer = exchange(connection, "GET", target, headers)
            except (OSError, http.client.HTTPException) as error:
                tally.socket_errors.append(f"{type(error).__name__}: {error}")
                connection.close()
                connection = proxy.connection()
                continue
            answered = time.monotonic()
            code = None
            if answer.status != 200:
                try:
                    code = str(answer.json()["error"])
                except (ValueError, KeyError, TypeError):
                    code = f"<not a tokenward answer: {answer.body[:60]!r}>"
            tally.observations.append(
                Observation(
                    name, service, placement, sent, answered, answer.status, code, proxy_number
                )
            )
    finally:
        connection.close()


# --------------------------------------------------------------------------- the checks


@dataclass(frozen=True, slots=True)
class State:
    """A token's state as the store held it between two changes."""

    deleted: bool
    scope: tuple[str, ...] | None

    def outcome(self, service: str) -> Outcome:
        if self.deleted:
            return REVOKED
        if self.scope is None or service in self.scope:
            return ACCEPTED
        return OUT_OF_SCOPE


@dataclass(frozen=True, slots=True)
class Change:
    """A change becomes visible at some instant between `started` and `committed`."""

    started: float
    committed: float
    state: State


def timelines(events: Sequence[ChurnEvent]) -> dict[str, list[Change]]:
    """Each token's changes in order, each with the state it leaves behind."""
    lines: dict[str, list[Change]] = {}
    for event in events:
        if event.kind == "created":
            state = State(False, event.scope)
            lines[event.name] = [Change(event.started, event.committed, state)]
            continue
        previous = lines[event.name][-1].state
        deleted = event.kind == "deleted"
        state = State(deleted, previous.scope if deleted else event.scope)
        lines[event.name].append(Change(event.started, event.committed, state))
    return lines


def possible_outcomes(
    line: Sequence[Change], service: str, sent: float, answered: float
) -> set[Outcome]:
    """Every verdict a proxy reading the store at some instant in [sent, answered] may give."""
    outcomes: set[Outcome] = set()
    for index, change in enumerate(line):
        visible_until = line[index + 1].committed if index + 1 < len(line) else math.inf
        if change.started <= answered and visible_until >= sent:
            outcomes.add(change.state.outcome(service))
    return outcomes


@dataclass(slots=True)
class LoadReport:
    """What a load run measured and every check that failed (with token names, not tokens)."""

    proxies: int
    seconds: float
    requests: int
    statuses: Counter[int]
    socket_errors: int
    changes: int
    deletes: int
    strictly_checked: int
    accepted_after_delete: int
    refusal_delays: list[float]
    deletes_never_requested: int
    violations: list[str]
    locked_lines: list[str]
    upstream_token_leaks: int

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)

    @property
    def max_refusal_delay_ms(self) -> float:
        return max(self.refusal_delays, default=0.0) * 1000

    @property
    def median_refusal_delay_ms(self) -> float:
        return statistics.median(self.refusal_delays) * 1000 if self.refusal_delays else 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.violations
            or self.locked_lines
            or self.server_errors
            or self.socket_errors
            or self.accepted_after_delete
            or self.upstream_token_leaks
        )

    def lines(self) -> list[str]:
        statuses = ", ".join(
            f"{status}: {count}" for status, count in sorted(self.statuses.items())
        )
        return [
            f"proxies on one store        {self.proxies}",
            f"requests                    {self.requests:,} in {self.seconds:.1f} s"
            f" = {self.requests_per_second:,.0f} req/s ({statuses})",
            f"5xx answers                 {self.server_errors}",
            f"socket errors               {self.socket_errors}",
            f"token changes committed     {self.changes:,} ({self.deletes:,} deletes)",
            f"answers checked exactly     {self.strictly_checked:,}"
            " (the rest overlapped a change and may take either verdict)",
            f"accepted after a delete     {self.accepted_after_delete}",
            f"delete commit -> refusal    max {self.max_refusal_delay_ms:.1f} ms,"
            f" median {self.median_refusal_delay_ms:.1f} ms over {len(self.refusal_delays)}"
            f" deletes ({self.deletes_never_requested} not requested again)",
            f"wrong verdicts              {len(self.violations)}",
            f"'{LOCKED}' lines   {len(self.locked_lines)}",
            f"tokens that reached the upstream  {self.upstream_token_leaks}",
        ]


def check_load(
    events: Sequence[ChurnEvent],
    tallies: Sequence[ClientTally],
    seconds: float,
    proxies: int,
    outputs: Sequence[str],
    records: Sequence[UpstreamRecord],
) -> LoadReport:
    """Hold every observation against the churner's timeline; see the module docstring."""
    lines = timelines(events)
    observations = [o for tally in tallies for o in tally.observations]
    deleted_at = {e.name: e.committed for e in events if e.kind == "deleted"}
    violations: list[str] = []
    strictly = 0
    accepted_after_delete = 0
    first_refusal: dict[str, float] = {}
    for seen in observations:
        outcome: Outcome = (seen.status, seen.error)
        possible = possible_outcomes(lines[seen.name], seen.service, seen.sent, seen.answered)
        if len(possible) == 1:
            strictly += 1
        if outcome not in possible:
            violations.append(
                f"token {seen.name!r} ({seen.placement}, service {seen.service}, proxy"
                f" {seen.proxy}): got {outcome}, expected one of {sorted(possible, key=str)}"
            )
        deleted = deleted_at.get(seen.name)
        if deleted is not None and seen.sent > deleted:
            if seen.status == 200:
                accepted_after_delete += 1
            if outcome == REVOKED:
                first = first_refusal.get(seen.name, math.inf)
                first_refusal[seen.name] = min(first, seen.answered)
    delays = [
        max(0.0, first_refusal[name] - at)
        for name, at in deleted_at.items()
        if name in first_refusal
    ]
    locked = [line for output in outputs for line in output.splitlines() if LOCKED in line]
    leaks = sum(1 for record in records if _holds_token(record))
    return LoadReport(
        proxies=proxies,
        seconds=seconds,
        requests=len(observations),
        statuses=Counter(o.status for o in observations),
        socket_errors=sum(len(tally.socket_errors) for tally in tallies),
        changes=len(events),
        deletes=len(deleted_at),
        strictly_checked=strictly,
        accepted_after_delete=accepted_after_delete,
        refusal_delays=delays,
        deletes_never_requested=len(deleted_at) - len(delays),
        violations=violations,
        locked_lines=locked,
        upstream_token_leaks=leaks,
    )


def _holds_token(record: UpstreamRecord) -> bool:
    return holds_token_shaped(record.target) or any(
        holds_token_shaped(value) for _, value in record.headers
    )


# --------------------------------------------------------------------------- a load run


def prepare_store(directory: Path, upstream: RunningUpstream) -> Path:
    """A fresh store with services alpha and beta (generic layout), both on `upstream`."""
    db = directory / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        for service in SERVICES:
            store.add_service(service, "generic", (host_of(service),), upstream.url)
    return db


def run_load(
    db: Path,
    upstream: RunningUpstream,
    *,
    proxies: int,
    seconds: float,
    clients_per_proxy: int = CLIENTS_PER_PROXY,
    seed: int = 1,
) -> LoadReport:
    """`proxies` proxies on `db`, the churner and the client pool for `seconds`; the report."""
    settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
    mark = upstream.last_seq()
    with ExitStack() as stack:
        running = [stack.enter_context(start_proxy(settings)) for _ in range(proxies)]
        # The churner outlives the clients a little, so that changes go on until the end.
        churner = stack.enter_context(running_churner(db, seconds + 1.0, seed))
        churner.wait_until_tokens(LIVE_TOKENS // 2)
        clients = clients_per_proxy * proxies
        tallies = [ClientTally() for _ in range(clients)]
        started = time.monotonic()
        until = started + seconds
        threads = [
            threading.Thread(
                target=run_client,
                args=(running, index, churner.book, until, tallies[index], seed * 1000 + index),
                name=f"load client {index}",
            )
            for index in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
        churner.finish()
        for proxy in running:
            proxy.stop()
        outputs = [proxy.output() for proxy in running] + [churner.output()]
        events = list(churner.book.events)
    return check_load(events, tallies, elapsed, proxies, outputs, upstream.records(since=mark))


@dataclass(frozen=True, slots=True)
class WrkReport:
    requests_per_second: float
    requests: int
    failed_status: int
    socket_errors: int
    changes: int
    locked_lines: int

    def lines(self) -> list[str]:
        return [
            "wrk -t1 -c16 keep-alive, a token the churner never touches, churner running",
            f"requests                    {self.requests:,} = {self.requests_per_second:,.0f}"
            " req/s",
            f"answers >= 400              {self.failed_status}",
            f"socket errors               {self.socket_errors}",
            f"token changes committed     {self.changes:,}",
            f"'{LOCKED}' lines   {self.locked_lines}",
        ]

    @property
    def ok(self) -> bool:
        return not (self.failed_status or self.socket_errors or self.locked_lines)


def run_wrk_with_churn(db: Path, upstream: RunningUpstream, seconds: int) -> WrkReport:
    """wrk through one proxy with a token of its own while the churner works on the store."""
    with TokenStore.open(db, create=False) as store:
        token, _ = store.create_token(
            f"wrk-{os.getpid()}-{time.monotonic_ns()}",
            "pat",
            None,
            None,
            "soak",
            datetime.now(UTC),
        )
    settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
    with start_proxy(settings) as proxy, running_churner(db, seconds + 1.0) as churner:
        churner.wait_until_tokens(1)
        url = f"{proxy.url}/rpc"
        load = run_wrk(url, {"Host": host_of(SERVICES[0]), "x-auth-token": token}, seconds)
        changes = churner.finish()
        proxy.stop()
        locked = [line for line in proxy.output().splitlines() if LOCKED in line]
    return WrkReport(
        load.requests_per_second,
        load.requests,
        load.failed_status,
        load.socket_errors,
        changes,
        len(locked),
    )


# --------------------------------------------------------------------------- main


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="length of each phase (default 60)"
    )
    parser.add_argument("--proxies", type=int, default=3, help="proxies in the second phase")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random choices")
    parser.add_argument(
        "--churner", type=Path, metavar="DB", help=argparse.SUPPRESS
    )  # internal: run only the churner on DB
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    if arguments.churner is not None:
        churn(arguments.churner, arguments.seconds, CHURN_PAUSE_SECONDS, arguments.seed, sys.stdout)
        return 0
    seconds: float = arguments.seconds
    seed: int = (
        arguments.seed if arguments.seed is not None else random.SystemRandom().randrange(1 << 30)
    )
    print(f"tokenward soak: {seconds:g} s per phase, seed {seed}, {os.cpu_count()} CPUs")
    ok = True
    with tempfile.TemporaryDirectory(prefix="tokenward-soak-") as directory, start_upstream() as up:
        db = prepare_store(Path(directory), up)
        for proxies in (1, arguments.proxies):
            print(f"\n== {proxies} prox{'y' if proxies == 1 else 'ies'}, client pool, churner")
            report = run_load(db, up, proxies=proxies, seconds=seconds, seed=seed)
            print("\n".join(report.lines()))
            for violation in report.violations[:20]:
                print(f"  WRONG: {violation}")
            for line in report.locked_lines[:5]:
                print(f"  LOCKED: {line}")
            ok = ok and report.ok
        if wrk_program() is None:
            print("\n== wrk: not installed (Debian package wrk), phase skipped")
        else:
            print("\n== wrk")
            wrk = run_wrk_with_churn(db, up, max(1, round(seconds)))
            print("\n".join(wrk.lines()))
            ok = ok and wrk.ok
    print(f"\n{'PASS' if ok else 'FAIL'} (tokens are named, never shown, in this report)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

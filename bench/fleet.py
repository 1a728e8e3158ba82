"""A fleet of three proxies on one PostgreSQL store (fixtures/fleet.py: network namespaces of
their own where they can be made), under load: a few client threads send accepted requests to
all three all along, and every request is logged (proxy, token, when sent and answered, what).

- Revocation: tokens every proxy keeps are deleted one by one; for each, the time from the
  delete's commit (acknowledged to the deleting client) until every proxy refuses the token,
  and, over the whole run, the requests accepted with a token sent more than one second after
  its delete was sent (stricter than after its commit).
- Faults: the server killed then started, paused (SIGSTOP) then resumed, one proxy's link to
  the database cut then restored, the server restarted (a clean stop, then start). For each:
  the requests an affected proxy accepted that were sent more than one second into the fault
  and answered before it was undone (stale: must be 0), the time from the fault to a 503 from
  every affected proxy, and from the undoing to an accept from every one again.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from bench.measure import BenchOptions, Figure, Target, percentile
from tokenward.fixtures.fleet import Fleet, start_fleet, token_request
from tokenward.fixtures.processes import RunningProxy
from tokenward.store import PostgresStore
from tokenward.store.postgres import FRESH_SECONDS

NAME = "fleet"
# Client threads per proxy: a request held up (a read on a hung server) holds up one of them.
LOAD_THREADS = 2
# Each load thread rests this long between requests: load, not a saturated machine.
LOAD_PAUSE_SECONDS = 0.01
KEPT_TOKENS = 8
# The tokens about to be deleted that the load uses too, beside the kept ones.
VICTIMS_IN_USE = 4
BETWEEN_DELETES_SECONDS = 0.02
REVOCATION_TARGET = Target("<", 100.0)
NONE_STALE = Target("==", 0.0)
RECOVERY_DEADLINE_SECONDS = 30.0

Answer = tuple[int, str | None] | None  # None: the connection failed
ACCEPTED = (200, None)
REVOKED = (401, "revoked_token")
UNAVAILABLE = (503, "store_unavailable")


@dataclass(frozen=True, slots=True)
class Sent:
    proxy: int
    token: str
    sent: float
    answered: float
    answer: Answer


class Client:
    """Keep-alive connections to each proxy; every request it sends goes into `log`."""

    def __init__(self, proxies: Sequence[RunningProxy], log: list[Sent]) -> None:
        self.proxies = proxies
        self.log = log
        self._connections: dict[int, http.client.HTTPConnection] = {}

    def ask(self, index: int, token: str) -> Sent:
        connection = self._connections.get(index) or self.proxies[index].connection()
        sent = time.perf_counter()
        answer: Answer
        try:
            answer = token_request(connection, token)
            self._connections[index] = connection
        except (OSError, http.client.HTTPException):
            connection.close()
            self._connections.pop(index, None)
            answer = None
        entry = Sent(index, token, sent, time.perf_counter(), answer)
        self.log.append(entry)
        return entry

    def close(self) -> None:
        for connection in self._connections.values():
            connection.close()


class Load:
    """`LOAD_THREADS` clients per proxy, each asking it with a token drawn from `tokens`."""

    def __init__(self, fleet: Fleet, tokens: Sequence[str], log: list[Sent]) -> None:
        self.tokens = tuple(tokens)  # replaced whole, so a thread reads one consistent set
        self._fleet, self._log = fleet, log
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(index, seed), daemon=True)
            for index in range(len(fleet.proxies))
            for seed in range(LOAD_THREADS)
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _run(self, index: int, seed: int) -> None:
        client, draw = Client(self._fleet.proxies, self._log), random.Random(seed)
        try:
            while not self._stop.is_set():
                client.ask(index, draw.choice(self.tokens))
                self._stop.wait(LOAD_PAUSE_SECONDS)
        finally:
            client.close()


def run(options: BenchOptions) -> list[Figure]:
    deletes = 10 if options.quick else 200
    hold_seconds = 1.5 if options.quick else 3.0
    with start_fleet() as fleet:
        print(f"fleet: {fleet.reason}", flush=True)
        log: list[Sent] = []
        kept = [token for _, token in create_tokens(fleet, KEPT_TOKENS)]
        victims = create_tokens(fleet, deletes)
        # Every proxy reads every token first: a delete must reach each by its notice.
        warm_up(fleet, [*kept, *(token for _, token in victims)], log)
        deleted: dict[str, float] = {}
        with Load(fleet, kept, log) as load:
            figures = revocation(fleet, load, victims, log, deleted)
            figures.append(stale_after_deletes(log, deleted))
            figures += faults(fleet, log, hold_seconds, kept)
    return figures


def warm_up(fleet: Fleet, tokens: Sequence[str], log: list[Sent]) -> None:
    """Have every proxy read every token in `tokens` (until it accepts it)."""
    client = Client(fleet.proxies, log)
    deadline = time.perf_counter() + RECOVERY_DEADLINE_SECONDS
    for token in tokens:
        for index in range(len(fleet.proxies)):
            while client.ask(index, token).answer != ACCEPTED:
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"proxy {index} does not accept a live token")
    client.close()


def create_tokens(fleet: Fleet, count: int) -> list[tuple[str, str]]:
    """`count` new tokens: (name, token)."""
    made = []
    with PostgresStore.open(fleet.url, create=False) as owner:
        for _ in range(count):
            name = f"b_{uuid.uuid4().hex[:12]}"
            token, _ = owner.create_token(name, "pat", None, None, "", datetime.now(UTC))
            made.append((name, token))
    return made


def revocation(
    fleet: Fleet,
    load: Load,
    victims: Sequence[tuple[str, str]],
    log: list[Sent],
    deleted: dict[str, float],
) -> list[Figure]:
    """Delete each victim in turn; `deleted` gets when each delete was sent."""
    kept = load.tokens
    latencies = []
    started = time.perf_counter()
    probes = [Client(fleet.proxies, log) for _ in fleet.proxies]
    with (
        PostgresStore.open(fleet.url, create=False) as owner,
        ThreadPoolExecutor(len(fleet.proxies)) as pool,
    ):
        for number, (name, token) in enumerate(victims):
            load.tokens = kept + tuple(t for _, t in victims[number : number + VICTIMS_IN_USE])
            time.sleep(BETWEEN_DELETES_SECONDS)
            deleted[token] = time.perf_counter()
            owner.delete_token(name, datetime.now(UTC))
            committed = time.perf_counter()
            count = len(fleet.proxies)
            refused = pool.map(refused_at, probes, range(count), [token] * count)
            latencies.append((max(refused) - committed) * 1000)
    for probe in probes:
        probe.close()
    load.tokens = kept
    seconds = time.perf_counter() - started
    during = [entry for entry in log if started <= entry.sent]
    rate = len(during) / seconds
    # What one accepted request takes meanwhile: the floor under a refusal's latency.
    served = [(e.answered - e.sent) * 1000 for e in during if e.answer == ACCEPTED]
    detail = (
        f"{len(latencies)} deletes, {rate:,.0f} req/s to {len(fleet.proxies)} proxies (load and "
        f"probes); {fleet.reason}"
    )
    return [
        Figure(NAME, "revocation across the fleet p50", percentile(latencies, 0.5), "ms",
               detail=detail),
        Figure(NAME, "revocation across the fleet p99", percentile(latencies, 0.99), "ms",
               REVOCATION_TARGET),
        Figure(NAME, "revocation across the fleet max", max(latencies), "ms"),
        Figure(NAME, "an accepted request meanwhile p50", percentile(served, 0.5), "ms"),
        Figure(NAME, "an accepted request meanwhile p99", percentile(served, 0.99), "ms",
               detail=f"{len(served):,} requests"),
    ]  # fmt: skip


def refused_at(client: Client, index: int, token: str) -> float:
    """When proxy `index` first answered that `token` is revoked (asking it again and again)."""
    deadline = time.perf_counter() + RECOVERY_DEADLINE_SECONDS
    while time.perf_counter() < deadline:
        asked = client.ask(index, token)
        if asked.answer == REVOKED:
            return asked.answered
    raise RuntimeError(f"proxy {index} still does not refuse a deleted token")


def stale_after_deletes(log: Sequence[Sent], deleted: dict[str, float]) -> Figure:
    stale = sum(
        entry.answer == ACCEPTED
        and entry.token in deleted
        and entry.sent > deleted[entry.token] + FRESH_SECONDS
        for entry in log
    )
    return Figure(
        NAME, "accepted > 1 s after its delete", stale, "requests", NONE_STALE,
        f"{len(log):,} requests so far, {len(deleted)} tokens deleted",
    )  # fmt: skip


def faults(fleet: Fleet, log: list[Sent], hold_seconds: float, kept: Sequence[str]) -> list[Figure]:
    everyone = list(range(len(fleet.proxies)))
    cases: list[tuple[str, list[int], Callable[[], None], Callable[[], None], float]] = [
        ("server killed", everyone, fleet.kill_server, fleet.start_server, hold_seconds),
        ("server paused", everyone, fleet.pause_server, fleet.resume_server, hold_seconds),
    ]
    if fleet.namespaced:
        cases.append(
            ("link cut", [0], lambda: fleet.cut(0), lambda: fleet.restore(0), hold_seconds)
        )
    else:
        print(f"no link cut: {fleet.reason}", flush=True)
    cases.append(("server restarted", everyone, fleet.cluster.stop, fleet.cluster.start, 0.0))
    figures = []
    for name, affected, make, undo, hold in cases:
        figures += fault(name, fleet, log, affected, make, undo, hold)
        # A proxy that heard the store again read nothing yet: each fault starts warm.
        warm_up(fleet, kept, log)
    return figures


def fault(
    name: str,
    fleet: Fleet,
    log: list[Sent],
    affected: Sequence[int],
    make: Callable[[], None],
    undo: Callable[[], None],
    hold: float,
) -> list[Figure]:
    mark = len(log)
    fault_at = time.perf_counter()
    make()
    time.sleep(hold)
    undo_at = time.perf_counter()
    undo()
    undone = time.perf_counter()
    deadline = undone + RECOVERY_DEADLINE_SECONDS
    while not all(first_after(log[mark:], index, undone, ACCEPTED) for index in affected):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{name}: not every proxy accepted again")
        time.sleep(0.01)
    entries = log[mark:]
    stale = sum(
        entry.proxy in affected
        and entry.answer == ACCEPTED
        and entry.sent > fault_at + FRESH_SECONDS
        and entry.answered < undo_at
        for entry in entries
    )
    closed = [first_after(entries, index, fault_at, UNAVAILABLE) for index in affected]
    reopened = [first_after(entries, index, undone, ACCEPTED) for index in affected]
    recover_ms = (max(at for at in reopened if at is not None) - undone) * 1000
    detail = f"undoing it took {(undone - undo_at) * 1000:,.0f} ms"
    figures = [Figure(NAME, f"{name}: stale accepts", stale, "requests", NONE_STALE)]
    if all(at is not None for at in closed):
        fail_closed_ms = (max(at for at in closed if at is not None) - fault_at) * 1000
        figures.append(Figure(NAME, f"{name}: time to fail closed", fail_closed_ms, "ms"))
    else:
        detail += "; not every proxy answered 503: the server was back within the second"
    figures.append(Figure(NAME, f"{name}: time to recover", recover_ms, "ms", detail=detail))
    others = [index for index in range(len(fleet.proxies)) if index not in affected]
    if others:
        refused = sum(
            entry.proxy in others and entry.answer != ACCEPTED and entry.sent < undone
            for entry in entries
        )
        figures.append(Figure(NAME, f"{name}: the others refused", refused, "requests", NONE_STALE))
    return figures


def first_after(entries: Sequence[Sent], index: int, since: float, answer: Answer) -> float | None:
    """When proxy `index` first gave `answer` to a request sent after `since`, if it did."""
    return next(
        (
            e.answered
            for e in entries
            if e.proxy == index and e.sent >= since and e.answer == answer
        ),
        None,
    )

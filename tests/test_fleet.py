"""A fleet on several hosts (fixtures/fleet.py): three real `tokenward proxy` processes, each in
a network namespace of its own, on one real PostgreSQL server in a fourth. A change reaches
every proxy; a lost server or a cut link fails the proxies it concerns closed, and they
recover by themselves. Where namespaces cannot be made it runs on loopback and says so."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from tokenward.fixtures.fleet import Fleet, start_fleet, token_request
from tokenward.fixtures.postgres import POSTGRES_MISSING_REASON, postgres_bin_dir
from tokenward.fixtures.processes import RunningProxy, wait_for
from tokenward.store import PostgresStore

pytestmark = pytest.mark.e2e

Answer = tuple[int, str | None]
ACCEPTED: Answer = (200, None)
REVOKED: Answer = (401, "revoked_token")
UNAVAILABLE: Answer = (503, "store_unavailable")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    if postgres_bin_dir() is None:
        pytest.skip(POSTGRES_MISSING_REASON)
    with start_fleet() as running:
        print(f"\nthe fleet: {running.reason}")
        yield running


def ask(proxy: RunningProxy, token: str) -> Answer:
    connection = proxy.connection()
    try:
        return token_request(connection, token)
    finally:
        connection.close()


def answers(proxies: list[RunningProxy], token: str) -> list[Answer]:
    return [ask(proxy, token) for proxy in proxies]


def everywhere(proxies: list[RunningProxy], token: str, expected: Answer) -> list[Answer] | None:
    found = answers(proxies, token)
    return found if found == [expected] * len(proxies) else None


def create_token(fleet: Fleet) -> tuple[str, str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with PostgresStore.open(fleet.url, create=False) as owner:
        token, _ = owner.create_token(name, "pat", None, None, "", datetime.now(UTC))
    return name, token


def delete_token(fleet: Fleet, name: str) -> None:
    with PostgresStore.open(fleet.url, create=False) as owner:
        owner.delete_token(name, datetime.now(UTC))


def test_a_token_counts_at_every_proxy_and_so_does_its_delete(fleet: Fleet) -> None:
    name, token = create_token(fleet)
    assert answers(fleet.proxies, token) == [ACCEPTED] * 3
    # Now kept by every proxy: only the delete's notice can make them drop it.
    delete_token(fleet, name)
    wait_for(lambda: everywhere(fleet.proxies, token, REVOKED), "refused by all three")


def test_a_killed_server_fails_every_proxy_closed_until_it_is_back(fleet: Fleet) -> None:
    _, token = create_token(fleet)
    assert answers(fleet.proxies, token) == [ACCEPTED] * 3
    fleet.kill_server()
    try:
        wait_for(lambda: everywhere(fleet.proxies, token, UNAVAILABLE), "503 from all three")
    finally:
        fleet.start_server()
    wait_for(lambda: everywhere(fleet.proxies, token, ACCEPTED), "recovered without a restart")


def test_a_proxy_cut_off_fails_closed_while_the_others_go_on(fleet: Fleet) -> None:
    if not fleet.namespaced:
        pytest.skip(fleet.reason)
    cut, others = fleet.proxies[0], fleet.proxies[1:]
    name, token = create_token(fleet)
    _, kept = create_token(fleet)
    assert answers(fleet.proxies, token) == answers(fleet.proxies, kept) == [ACCEPTED] * 3

    def cut_proxy_refuses() -> Answer | None:
        assert answers(others, kept) == [ACCEPTED] * 2  # every time, not just at the end
        found = ask(cut, kept)
        return found if found == UNAVAILABLE else None

    fleet.cut(0)
    try:
        wait_for(cut_proxy_refuses, "503 from the proxy cut off")
        # Deleted during the cut: the others hear it, the cut one must not accept it either.
        delete_token(fleet, name)
        wait_for(lambda: everywhere(others, token, REVOKED), "the others hear the delete")
        assert ask(cut, token) == UNAVAILABLE
    finally:
        fleet.restore(0)
    wait_for(lambda: everywhere(fleet.proxies, kept, ACCEPTED), "the cut proxy recovers")
    assert answers(fleet.proxies, token) == [REVOKED] * 3

"""The throwaway PostgreSQL cluster (fixtures/postgres.py): it serves, stops, restarts on the
same data and port, and its processes can be killed and paused."""

from __future__ import annotations

import signal

import psycopg
import pytest

from tokenward.fixtures.postgres import PostgresCluster


def select_one(url: str, timeout: int = 2) -> int:
    with psycopg.connect(url, connect_timeout=timeout) as connection:
        row = connection.execute("SELECT 1").fetchone()
    assert row is not None
    return int(row[0])


def test_a_fresh_database_serves(postgres_url: str) -> None:
    assert postgres_url.startswith("postgresql://")
    assert select_one(postgres_url) == 1


def test_stop_start_and_kill_keep_the_data_and_port(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database("fixture_restart")
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE kept (n int)")
        connection.execute("INSERT INTO kept VALUES (7)")
    postgres_cluster.stop()
    with pytest.raises(psycopg.OperationalError):
        select_one(url)
    postgres_cluster.start()
    postgres_cluster.kill(signal.SIGKILL)
    assert postgres_cluster.postmaster_pid() is None
    postgres_cluster.start()
    with psycopg.connect(url) as connection:
        assert connection.execute("SELECT n FROM kept").fetchall() == [(7,)]


def test_a_paused_server_answers_again_once_resumed(postgres_cluster: PostgresCluster) -> None:
    url = postgres_cluster.create_database("fixture_pause")
    postgres_cluster.kill(signal.SIGSTOP)
    try:
        with pytest.raises(psycopg.OperationalError):
            select_one(url, timeout=1)
    finally:
        postgres_cluster.kill(signal.SIGCONT)
    assert select_one(url) == 1

from __future__ import annotations

import inspect
import mmap
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlite_utils
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward import store as store_module
from tokenward.core.decision import token_error
from tokenward.core.records import TokenState
from tokenward.core.tokens import issue_token, token_digest
from tokenward.core.verdicts import ErrorCode
from tokenward.fixtures.processes import delete_token_in_another_process, free_port
from tokenward.fixtures.store_files import SHM_FAULTS, shm_of, wal_of
from tokenward.store import (
    Store,
    StoreCorrupt,
    StoreMissing,
    StoreRefused,
    StoreUnavailable,
    TokenStore,
    normalize_host,
    open_store,
    schema,
)
from tokenward.store import sqlite as sqlite_store

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.db"


# Tests of SQLite's own ways given `store` alone: its 8-byte row keys, its digest cache.
SQLITE_ONLY = {
    "test_tokens_whose_digests_begin_alike_are_told_apart",
    "test_lookup_answers_alike_once_its_digests_overflow",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test of the interface (given `store` alone) runs on both stores; one that also takes
    the SQLite file's `path` tests that file, and runs on SQLite only."""
    if "store" in metafunc.fixturenames:
        sqlite_only = "path" in metafunc.fixturenames or metafunc.function.__name__ in SQLITE_ONLY
        metafunc.parametrize("backend", ["sqlite"] if sqlite_only else ["sqlite", "postgresql"])


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Iterator[Store]:
    fixture = "path" if backend == "sqlite" else "postgres_url"
    with open_store(request.getfixturevalue(fixture), create=True) as opened:
        opened.add_service("ipfs", "ipfs", None, "http://127.0.0.1:5001", NOW)
        opened.add_service("avax", "avalanche", ["avax.example"], "http://127.0.0.1:9650", NOW)
        yield opened


def last_used(store: TokenStore, name: str) -> datetime | None:
    record = store.get_token(name)
    assert record is not None
    return record.last_used_at


def raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection in autocommit mode, as any other program would open it."""
    return sqlite3.connect(path, isolation_level=None)


# --- lookup -----------------------------------------------------------------------------


def test_lookup_facts_judged_follow_the_order_of_precedence(store: TokenStore) -> None:
    ipfs_only = frozenset({"ipfs"})
    # Each token fails every check after the one it is meant to fail, so order matters.
    revoked, _ = store.create_token("revoked", "pat", NOW + DAY, ipfs_only, "", NOW)
    expired, _ = store.create_token("expired", "aat", NOW + DAY, ipfs_only, "", NOW)
    scoped, _ = store.create_token("scoped", "sat", NOW + DAY, ipfs_only, "", NOW)
    store.delete_token("revoked", NOW)
    later = NOW + 2 * DAY

    assert token_error(store.lookup(issue_token("pat")), "avax", later) is ErrorCode.UNKNOWN_TOKEN
    assert token_error(store.lookup(revoked), "avax", later) is ErrorCode.REVOKED_TOKEN
    assert token_error(store.lookup(expired), "avax", later) is ErrorCode.EXPIRED_TOKEN
    assert token_error(store.lookup(scoped), "avax", NOW) is ErrorCode.OUT_OF_SCOPE
    assert token_error(store.lookup(scoped), "ipfs", NOW) is None


def test_lookup_returns_the_record_when_found(store: TokenStore) -> None:
    token, created = store.create_token("alice", "pat", None, None, "Alice", NOW)
    record = store.lookup(token)
    assert record == created
    assert record.name == "alice"
    assert store.lookup("not a token") is None


def test_default_service_is_reached_only_by_scope_all(store: TokenStore) -> None:
    everywhere, _ = store.create_token("everywhere", "pat", None, None, "", NOW)
    scoped, _ = store.create_token("scoped", "pat", None, frozenset({"ipfs"}), "", NOW)
    assert token_error(store.lookup(everywhere), None, NOW) is None
    assert token_error(store.lookup(everywhere), "avax", NOW) is None
    assert token_error(store.lookup(scoped), None, NOW) is ErrorCode.OUT_OF_SCOPE


def test_a_token_expires_at_its_expiry_instant(store: TokenStore) -> None:
    token, record = store.create_token("short", "pat", NOW + DAY, None, "", NOW)
    assert record.expires_at == NOW + DAY
    just_before = NOW + DAY - timedelta(microseconds=1)
    assert token_error(store.lookup(token), None, just_before) is None
    assert token_error(store.lookup(token), None, NOW + DAY) is ErrorCode.EXPIRED_TOKEN
    assert record.state(NOW + DAY) is TokenState.EXPIRED


# --- what the database itself enforces --------------------------------------------------


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("expires_at = '2099-01-01T00:00:00.000000+00:00'", "expiry can never be changed"),
        ("expires_at = NULL", "expiry can never be changed"),
        ("digest = 'x'", "the digest of a token can never be changed"),
        ("digest_key = digest_key + 1", "the digest of a token can never be changed"),
        ("kind = 'sat'", "the kind of a token can never be changed"),
        ("created_at = 'x'", "the creation time of a token can never be changed"),
    ],
)
def test_the_database_refuses_to_change_what_is_immutable(
    store: TokenStore, path: Path, assignment: str, message: str
) -> None:
    store.create_token("alice", "pat", NOW + DAY, None, "", NOW)
    connection = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match=message):
        connection.execute(f"UPDATE tokens SET {assignment} WHERE name = 'alice'")
    connection.execute("UPDATE tokens SET owner = 'allowed' WHERE name = 'alice'")
    connection.close()
    record = store.get_token("alice")
    assert record is not None and record.expires_at == NOW + DAY and record.owner == "allowed"


def test_the_database_keeps_revocations(store: TokenStore, path: Path) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    store.delete_token("alice", NOW)
    connection = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match="a deleted token stays deleted"):
        connection.execute("UPDATE tokens SET revoked_at = NULL")
    with pytest.raises(sqlite3.IntegrityError, match="kept as revocation records"):
        connection.execute("DELETE FROM tokens")
    connection.close()
    assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_the_database_keeps_live_names_unique(store: TokenStore, path: Path) -> None:
    store.create_token("alice", "pat", None, None, "", NOW)
    connection = raw(path)
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        connection.execute(
            "INSERT INTO tokens (id, name, kind, owner, digest, hint, created_at)"
            " VALUES (99, 'alice', 'pat', '', 'other', 'h', 'now')"
        )
    connection.close()


def test_schema_version_is_recorded(store: TokenStore, path: Path) -> None:
    connection = raw(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


# --- migrations -------------------------------------------------------------------------


def write_v1_store(path: Path, rows: list[tuple[object, ...]]) -> None:
    """A store file as tokenward left it with schema v1, holding `rows` and two services."""
    connection = raw(path)
    schema.create_schema_v1(sqlite_utils.Database(connection))
    connection.executemany(
        "INSERT INTO tokens (id, name, kind, owner, digest, hint, created_at, expires_at, scope,"
        " last_used_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    for name, hosts, layout in [
        ("ipfs", '["ipfs"]', "ipfs"),
        ("avax", '["avax.example"]', "avalanche"),
    ]:
        connection.execute(
            "INSERT INTO services (name, hosts, layout, upstream, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (name, hosts, layout, f"http://127.0.0.1/{name}", "2030-01-01T00:00:00.000000+00:00"),
        )
    connection.execute("PRAGMA user_version = 1")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.close()


def v1_row(
    row_id: int,
    name: str,
    digest: str,
    created_at: datetime,
    *,
    owner: str = "",
    expires_at: datetime | None = None,
    scope: str | None = None,
    last_used_at: datetime | None = None,
    revoked_at: datetime | None = None,
) -> tuple[object, ...]:
    """A token row as v1 wrote it, in the column order of `write_v1_store`."""
    times = [
        None if moment is None else moment.isoformat(timespec="microseconds")
        for moment in (created_at, expires_at, last_used_at, revoked_at)
    ]
    hint = f"sm_pat_…{name[-4:]}"
    return (row_id, name, "pat", owner, digest, hint, times[0], times[1], scope, *times[2:])


def test_a_v1_store_migrates_keeping_every_token_service_and_rule(path: Path) -> None:
    live, expired, deleted, reused, reused_deleted = (issue_token("pat") for _ in range(5))
    # The two 'carol' rows share their creation time: only v1's id orders them, and in the
    # opposite order of their digests, so the migration must carry the id over.
    first, second = sorted([reused_deleted, reused], key=token_digest, reverse=True)
    rows = [
        v1_row(
            1,
            "alice",
            token_digest(live),
            NOW - 3 * DAY,
            owner="Alice",
            expires_at=NOW + DAY,
            scope='["ipfs"]',
            last_used_at=NOW - DAY,
        ),
        v1_row(2, "old", token_digest(expired), NOW - 3 * DAY, expires_at=NOW - DAY),
        v1_row(3, "bob", token_digest(deleted), NOW - 3 * DAY, revoked_at=NOW - 2 * DAY),
        *(
            v1_row(
                index,
                "carol",
                token_digest(token),
                NOW - 2 * DAY,
                owner=owner,
                revoked_at=NOW - DAY if token == reused_deleted else None,
            )
            for index, token, owner in [(4, first, "first"), (5, second, "second")]
        ),
        # Written by another program: no SHA-256, so no token matches it, but it is kept.
        v1_row(6, "by-hand", "not a digest", NOW - DAY),
    ]
    write_v1_store(path, rows)

    with TokenStore.open(path, create=False) as migrated:
        records = migrated.list_tokens(include_deleted=True)
        assert [(r.name, r.owner) for r in records] == [
            ("alice", "Alice"),
            ("old", ""),
            ("bob", ""),
            ("carol", "first"),
            ("carol", "second"),
            ("by-hand", ""),
        ]
        alice = records[0]
        assert alice.digest == token_digest(live) and alice.hint == "sm_pat_…lice"
        assert (alice.created_at, alice.expires_at, alice.last_used_at, alice.revoked_at) == (
            NOW - 3 * DAY,
            NOW + DAY,
            NOW - DAY,
            None,
        )
        assert alice.scope == frozenset({"ipfs"})
        assert [s.name for s in migrated.list_services()] == ["avax", "ipfs"]
        assert migrated.lookup(live) == alice
        assert token_error(migrated.lookup(live), "ipfs", NOW) is None
        assert token_error(migrated.lookup(live), "avax", NOW) is ErrorCode.OUT_OF_SCOPE
        assert token_error(migrated.lookup(expired), None, NOW) is ErrorCode.EXPIRED_TOKEN
        assert token_error(migrated.lookup(deleted), None, NOW) is ErrorCode.REVOKED_TOKEN
        assert token_error(migrated.lookup(reused), None, NOW) is None
        assert token_error(migrated.lookup(reused_deleted), None, NOW) is ErrorCode.REVOKED_TOKEN
        # Rules the store keeps on its own still hold for the migrated rows.
        with pytest.raises(StoreRefused, match="already in the store, as deleted token 'bob'"):
            migrated.import_token(deleted, "bob-again", None, None, "", NOW)
        with pytest.raises(StoreRefused, match="a token named 'carol' already exists"):
            migrated.create_token("carol", "pat", None, None, "", NOW)
        migrated.note_used(alice, NOW)
        assert migrated.flush_usage() == 1
        new, _ = migrated.create_token("dave", "pat", None, None, "", NOW - 2 * DAY)
        ordered = [r.name for r in migrated.list_tokens(include_deleted=True)]
        assert ordered[3:6] == ["carol", "carol", "dave"], "a new token comes after older ids"
        assert token_error(migrated.lookup(new), None, NOW) is None
        assert last_used(migrated, "alice") == NOW
        assert migrated.set_scope("by-hand", frozenset({"avax"})).scope == frozenset({"avax"})
        assert migrated.delete_token("by-hand", NOW).revoked_at == NOW

    connection = raw(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION
    assert (
        connection.execute("SELECT name FROM sqlite_schema WHERE name LIKE '%v2%'").fetchall() == []
    )
    # The triggers and the unique index of v1 are there again, refusing as they did.
    for statement, message in [
        ("UPDATE tokens SET expires_at = NULL WHERE name = 'alice'", "expiry can never be changed"),
        ("UPDATE tokens SET digest = 'x' WHERE name = 'alice'", "digest of a token can never"),
        ("UPDATE tokens SET digest_key = 1 WHERE name = 'alice'", "digest of a token can never"),
        ("UPDATE tokens SET kind = 'sat' WHERE name = 'alice'", "kind of a token can never"),
        ("UPDATE tokens SET created_at = 'x'", "creation time of a token can never"),
        ("UPDATE tokens SET revoked_at = NULL WHERE name = 'bob'", "a deleted token stays deleted"),
        ("DELETE FROM tokens WHERE name = 'bob'", "kept as revocation records"),
        (
            "INSERT INTO tokens (id, name, kind, owner, digest, hint, created_at)"
            " VALUES (99, 'alice', 'pat', '', 'other', 'h', 'now')",
            "UNIQUE constraint failed: tokens.name",
        ),
        (
            f"INSERT INTO tokens (id, name, kind, owner, digest, hint, created_at)"
            f" VALUES (99, 'eve', 'pat', '', '{token_digest(live)}', 'h', 'now')",
            "UNIQUE constraint failed: tokens.digest",
        ),
    ]:
        with pytest.raises(sqlite3.IntegrityError, match=message):
            connection.execute(statement)
    assert connection.execute("SELECT count(*) FROM tokens").fetchone()[0] == 7
    connection.close()

    wal = path.with_name(path.name + "-wal")
    on_disk = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert token_digest(live).encode() in on_disk, "the right files were read"
    for token in (live, expired, deleted, reused, reused_deleted, new):
        assert token[7:].encode() not in on_disk


def test_a_failed_migration_leaves_the_v1_store_as_it_was(path: Path) -> None:
    # Two digests (written by another program) that share their first 8 bytes: no v2 key for both.
    twins = ["ab" * 8 + "0" * 48, "ab" * 8 + "1" * 48]
    write_v1_store(
        path,
        [
            v1_row(index, f"twin-{index}", digest, NOW)
            for index, digest in enumerate(twins, start=1)
        ],
    )
    with pytest.raises(StoreUnavailable, match=r"cannot set up the token store .*UNIQUE"):
        TokenStore.open(path, create=False)
    connection = raw(path)
    assert connection.execute("PRAGMA user_version").fetchone()[0] == 1
    assert connection.execute("SELECT name, digest FROM tokens ORDER BY id").fetchall() == [
        ("twin-1", twins[0]),
        ("twin-2", twins[1]),
    ]
    assert (
        connection.execute("SELECT 1 FROM sqlite_schema WHERE name = 'tokens_v2'").fetchall() == []
    )
    connection.close()


def test_tokens_whose_digests_begin_alike_are_told_apart(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_key = store_module.digest_key
    monkeypatch.setattr(sqlite_store, "digest_key", lambda digest: 7)
    token, _ = store.create_token("first", "pat", None, None, "", NOW)
    other = "sm_pat_0123456789abcdef"
    assert token_error(store.lookup(other), None, NOW) is ErrorCode.UNKNOWN_TOKEN, (
        "same key, not the same"
    )
    with pytest.raises(StoreRefused, match="begins with the same 8 bytes as another"):
        store.import_token(other, "second", None, None, "", NOW)
    with pytest.raises(StoreRefused, match="begins with the same 8 bytes as another"):
        store.create_token("third", "pat", None, None, "", NOW)  # its one retry collides too
    assert token_error(store.lookup(token), None, NOW) is None

    colliding = iter([True])  # only the first token issued collides: create retries once
    monkeypatch.setattr(
        sqlite_store, "digest_key", lambda digest: 7 if next(colliding, False) else real_key(digest)
    )
    retried, record = store.create_token("fourth", "pat", None, None, "", NOW)
    assert store.lookup(retried) == record
    assert [r.name for r in store.list_tokens()] == ["first", "fourth"]


def test_usage_noted_under_a_value_that_is_no_digest_is_dropped(store: TokenStore) -> None:
    _, record = store.create_token("alice", "pat", None, None, "", NOW)
    store.note_used("not a digest", NOW)
    store.note_used(record, NOW)
    assert store.flush_usage() == 2
    assert last_used(store, "alice") == NOW


# --- the file on disk -------------------------------------------------------------------


def test_no_plaintext_token_reaches_the_disk(store: TokenStore, path: Path) -> None:
    created, _ = store.create_token("alice", "pat", None, None, "", NOW)
    imported = "sm_sat_ImportedElsewhere16"
    store.import_token(imported, "bob", None, None, "", NOW)
    store.note_used(token_digest(created), NOW)
    store.flush_usage()
    wal = path.with_name(path.name + "-wal")
    assert wal.exists(), "the WAL is read while the store is open"
    on_disk = path.read_bytes() + wal.read_bytes()
    assert token_digest(created).encode() in on_disk, "the right files were read"
    for token in (created, imported):
        assert token.encode() not in on_disk
        assert token[7:].encode() not in on_disk, "not even the part after the prefix"
    store.close()
    assert created[7:].encode() not in path.read_bytes()


def test_store_files_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "private.db"
    previous = os.umask(0o022)  # a typical umask, which would make new files world-readable
    try:
        with TokenStore.open(path, create=True) as opened:
            opened.create_token("alice", "pat", None, None, "", NOW)
            created = [path, *tmp_path.glob("private.db-*")]
            assert len(created) == 3, created
            for file in created:
                assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
        assert os.umask(0o022) == 0o022, "the umask is restored"
    finally:
        os.umask(previous)


def test_a_missing_store_is_refused_unless_created(path: Path) -> None:
    with pytest.raises(StoreMissing, match=f"no token store at {str(path)!r}"):
        TokenStore.open(path, create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        (b"not a database at all" * 100, StoreCorrupt, "is not a usable token store"),
        (b"SQLite format 3\x00" + b"\xff" * 2000, StoreCorrupt, "is not a usable token store"),
    ],
)
def test_a_file_that_is_not_a_store_is_refused(
    path: Path, content: bytes, error: type[Exception], message: str
) -> None:
    path.write_bytes(content)
    with pytest.raises(error, match=message):
        TokenStore.open(path, create=False)


def test_another_sqlite_database_is_not_taken_over(path: Path) -> None:
    connection = raw(path)
    connection.execute("CREATE TABLE photos (id INTEGER)")
    connection.close()
    with pytest.raises(StoreCorrupt, match="an SQLite file but no token store"):
        TokenStore.open(path, create=True)


def test_a_newer_schema_is_refused(path: Path) -> None:
    TokenStore.open(path, create=True).close()
    connection = raw(path)
    connection.execute("PRAGMA user_version = 99")
    connection.close()
    with pytest.raises(StoreUnavailable, match=r"schema version 99.*upgrade tokenward"):
        TokenStore.open(path, create=False)


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="not a regular file"):
        TokenStore.open(tmp_path, create=True)


def test_an_empty_file_becomes_a_store(path: Path) -> None:
    path.touch()
    with TokenStore.open(path, create=False) as opened:
        assert opened.list_tokens() == ()


# --- other processes and connections ----------------------------------------------------


@pytest.mark.parametrize("writer", ["another connection", "the same store"])
def test_changes_count_at_the_next_lookup(store: TokenStore, path: Path, writer: str) -> None:
    with TokenStore.open(path, create=False) as other:
        cli = other if writer == "another connection" else store
        token, _ = cli.create_token("alice", "pat", None, None, "", NOW)
        assert token_error(store.lookup(token), "avax", NOW) is None
        cli.set_scope("alice", frozenset({"ipfs"}))
        assert token_error(store.lookup(token), "avax", NOW) is ErrorCode.OUT_OF_SCOPE
        cli.delete_token("alice", NOW)
        assert token_error(store.lookup(token), "ipfs", NOW) is ErrorCode.REVOKED_TOKEN


def test_without_a_map_of_the_shm_file_data_version_tells_of_commits(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    TokenStore.open(path, create=True).close()

    def no_map(*args: object, **kwargs: object) -> mmap.mmap:
        raise OSError("no shared maps on this file system")

    monkeypatch.setattr(mmap, "mmap", no_map)
    with (
        TokenStore.open(path, create=False) as store,
        TokenStore.open(path, create=False) as cli,
    ):
        assert store._changes._wal_index is None
        token, _ = cli.create_token("alice", "pat", None, None, "", NOW)
        assert token_error(store.lookup(token), None, NOW) is None
        cli.add_service("ipfs", "ipfs", None, "http://127.0.0.1:5001", NOW)
        assert [service.name for service in store.list_services()] == ["ipfs"]
        assert token_error(store.lookup(token), "ipfs", NOW) is None
        cli.delete_token("alice", NOW)
        assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_a_token_unknown_then_created_elsewhere_counts_at_the_next_lookup(
    store: TokenStore, path: Path
) -> None:
    with TokenStore.open(path, create=False) as cli:
        token = issue_token("pat")
        assert token_error(store.lookup(token), None, NOW) is ErrorCode.UNKNOWN_TOKEN
        cli.import_token(token, "imported", None, None, "", NOW)
        assert token_error(store.lookup(token), None, NOW) is None


def test_a_row_is_read_again_only_after_a_commit(store: TokenStore, path: Path) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    statements: list[str] = []
    store._conn.set_trace_callback(statements.append)
    for _ in range(3):
        store.lookup(token)
    assert len(statements) == 1  # the first call reads; nothing was committed since
    with TokenStore.open(path, create=False) as cli:
        cli.create_token("bob", "pat", None, None, "", NOW)  # any commit, by anyone
    store.lookup(token)
    assert len(statements) == 2


def test_lookup_answers_alike_once_its_digests_overflow(
    store: TokenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "_DIGESTS_MAX", 3)
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    strangers = [issue_token("pat") for _ in range(7)]
    for _ in range(2):  # the second time round, each was forgotten and is hashed again
        for stranger in strangers:
            assert token_error(store.lookup(stranger), None, NOW) is ErrorCode.UNKNOWN_TOKEN
        assert token_error(store.lookup(token), None, NOW) is None
    assert len(store._digests) <= 3


def test_services_added_by_another_connection_are_seen_at_once(
    store: TokenStore, path: Path
) -> None:
    assert store.service_for_host("fuji.example") is None  # caches the services
    with TokenStore.open(path, create=False) as cli:
        cli.add_service("fuji", "fuji", ["fuji.example"], "https://fuji.node", NOW)
        service = store.service_for_host("FUJI.example:443")
        assert service is not None and service.name == "fuji"
        cli.remove_service("fuji")
    assert store.service_for_host("fuji.example") is None
    assert [service.name for service in store.list_services()] == ["avax", "ipfs"]


_WORKER = """
import pathlib, sys, time
from datetime import UTC, datetime
from tokenward.store import TokenStore

path, prefix, count, folder = sys.argv[1], sys.argv[2], int(sys.argv[3]), pathlib.Path(sys.argv[4])
now = datetime.now(UTC)
(folder / f"{prefix}.ready").touch()
while not (folder / "go").exists():
    time.sleep(0.001)
with TokenStore.open(path, create=True) as store:
    for index in range(count):
        store.create_token(f"{prefix}-{index}", "pat", None, None, prefix, now)
        if index % 2:
            store.delete_token(f"{prefix}-{index - 1}", now)
"""


def test_two_processes_writing_at_once_lose_nothing(path: Path, tmp_path: Path) -> None:
    count = 60
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(path), prefix, str(count), str(tmp_path)],
            stderr=subprocess.PIPE,
        )
        for prefix in ("one", "two")
    ]
    deadline = time.monotonic() + 20
    while not all((tmp_path / f"{prefix}.ready").exists() for prefix in ("one", "two")):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    for worker in workers:
        _, errors = worker.communicate(timeout=60)
        assert worker.returncode == 0, errors.decode()

    with TokenStore.open(path, create=False) as opened:
        records = opened.list_tokens(include_deleted=True)
    assert len(records) == 2 * count
    for prefix in ("one", "two"):
        names = {record.name: record for record in records if record.owner == prefix}
        assert set(names) == {f"{prefix}-{index}" for index in range(count)}
        revoked = {name for name, record in names.items() if record.revoked_at is not None}
        assert revoked == {f"{prefix}-{index}" for index in range(0, count, 2)}


def test_a_replaced_file_is_reopened(store: TokenStore, path: Path, tmp_path: Path) -> None:
    old_token, _ = store.create_token("old", "pat", None, None, "", NOW)
    assert store.check_file() is False
    replacement = tmp_path / "replacement.db"
    with TokenStore.open(replacement, create=True) as other:
        new_token, _ = other.create_token("new", "pat", None, None, "", NOW)
    os.replace(replacement, path)

    assert store.check_file() is True
    assert store.check_file() is False
    assert token_error(store.lookup(new_token), None, NOW) is None
    assert token_error(store.lookup(old_token), None, NOW) is ErrorCode.UNKNOWN_TOKEN
    assert store.list_services() == ()


def test_a_store_created_over_a_left_over_wal_is_refused(store: TokenStore, path: Path) -> None:
    old_token, _ = store.create_token("old", "pat", None, None, "", NOW)
    path.unlink()  # the main file only: its -wal still holds the old pages
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    with pytest.raises(StoreUnavailable, match="-wal' is left over from a removed store"):
        TokenStore.open(path, create=True)
    with pytest.raises(StoreMissing, match="was removed"):
        store.check_file()
    with pytest.raises(StoreMissing):
        store.lookup(old_token)

    wal.unlink()  # as the refusal says
    shm.unlink()
    with TokenStore.open(path, create=True) as cli:
        new_token, _ = cli.create_token("new", "pat", None, None, "", NOW)
        assert [record.name for record in cli.list_tokens()] == ["new"]
    assert store.check_file() is True
    assert token_error(store.lookup(new_token), None, NOW) is None
    assert token_error(store.lookup(old_token), None, NOW) is ErrorCode.UNKNOWN_TOKEN


def test_a_file_moved_away_and_back_is_used_again(store: TokenStore, path: Path) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    with TokenStore.open(path, create=False) as other:  # a second user of the same file
        moved = path.with_name("moved.db")
        os.replace(path, moved)
        with pytest.raises(StoreMissing):
            store.check_file()
        os.replace(moved, path)
        assert store.check_file() is True
        assert token_error(store.lookup(token), None, NOW) is None
        other.delete_token("alice", NOW)
        assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_a_removed_or_broken_file_is_reported(store: TokenStore, path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    with pytest.raises(StoreMissing, match="was removed"):
        store.check_file()
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreCorrupt):
        store.check_file()
    with pytest.raises(StoreCorrupt):
        store.check_file()  # still refused: the old connection never comes back silently


# --- the -wal and -shm beside the file --------------------------------------------------
# Commits come from another process: within one process SQLite shares one -shm per database
# file among all connections, the one it opened first, wherever it now stands.


@pytest.mark.parametrize("fault", list(SHM_FAULTS))
def test_a_lost_shm_is_seen_at_the_next_file_check(
    store: TokenStore, path: Path, fault: str
) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    second, _ = store.create_token("bob", "pat", None, None, "", NOW)
    assert token_error(store.lookup(token), None, NOW) is None
    SHM_FAULTS[fault](shm_of(path))
    assert store.check_file() is True
    assert store.check_file() is False  # the -shm mapped now is the one at the path
    delete_token_in_another_process(path, "alice")
    assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN
    delete_token_in_another_process(path, "bob")
    assert token_error(store.lookup(second), None, NOW) is ErrorCode.REVOKED_TOKEN


@pytest.mark.parametrize("fault", ["removed", "replaced-by-a-copy"])
def test_a_lost_wal_is_seen_at_the_next_file_check(
    store: TokenStore, path: Path, fault: str
) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    with closing(raw(path)) as other:  # so that removing the WAL loses nothing
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert store.check_file() is True  # the checkpoint wrote the file itself
    SHM_FAULTS[fault](wal_of(path))
    assert store.check_file() is True
    assert store.check_file() is False
    delete_token_in_another_process(path, "alice")
    assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_a_store_closed_after_its_shm_was_lost_undoes_no_commit(path: Path) -> None:
    # Closed without a file check since: SQLite's checkpoint on close would copy the WAL as
    # the lost -shm knew it over the newer pages, and the deleted token would be live again.
    with TokenStore.open(path, create=True) as cli:
        token, _ = cli.create_token("alice", "pat", None, None, "", NOW)
    store = TokenStore.open(path, create=False)
    assert token_error(store.lookup(token), None, NOW) is None
    shm_of(path).unlink()
    delete_token_in_another_process(path, "alice")
    store.close()
    with TokenStore.open(path, create=False) as reopened:
        assert token_error(reopened.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_a_write_after_the_shm_was_lost_goes_to_the_files_at_the_path(path: Path) -> None:
    with TokenStore.open(path, create=True) as cli:
        token, _ = cli.create_token("alice", "pat", None, None, "", NOW)
        cli.create_token("bob", "pat", None, None, "", NOW)
    with TokenStore.open(path, create=False) as store:
        record = store.lookup(token)
        assert record is not None
        store.note_used(record, NOW)
        shm_of(path).unlink()
        delete_token_in_another_process(path, "bob")
        assert store.flush_usage() == 1
    with closing(raw(path)) as check:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    with TokenStore.open(path, create=False) as reopened:
        assert reopened.get_token("bob") is None  # deleted
        assert last_used(reopened, "alice") == NOW


def test_the_journal_mode_stays_wal_under_an_open_store(store: TokenStore, path: Path) -> None:
    # A switch to a rollback journal would leave no -shm to watch; it needs the file to itself.
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    with closing(raw(path)) as other:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("PRAGMA journal_mode=DELETE")
        assert other.execute("PRAGMA journal_mode").fetchall() == [("wal",)]
    delete_token_in_another_process(path, "alice")
    assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


def test_a_store_switched_to_a_rollback_journal_while_let_go_is_watched_again(
    store: TokenStore, path: Path
) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    moved = path.with_name("moved.db")
    os.replace(path, moved)
    with pytest.raises(StoreMissing):
        store.check_file()
    with closing(raw(moved)) as other:
        assert other.execute("PRAGMA journal_mode=DELETE").fetchall() == [("delete",)]
    assert not shm_of(moved).exists()
    os.replace(moved, path)
    assert store.check_file() is True
    assert store._changes._wal_index is not None  # the store set WAL mode again, and maps its -shm
    delete_token_in_another_process(path, "alice")
    assert token_error(store.lookup(token), None, NOW) is ErrorCode.REVOKED_TOKEN


# --- last used --------------------------------------------------------------------------


def test_usage_is_buffered_then_flushed_in_one_write(store: TokenStore, path: Path) -> None:
    token, record = store.create_token("alice", "pat", None, None, "", NOW)
    store.note_used(record, NOW + timedelta(seconds=5))
    store.note_used(token_digest(token), NOW + timedelta(seconds=9))
    store.note_used(record, NOW + timedelta(seconds=7))  # older than what is buffered
    assert last_used(store, "alice") is None

    assert store.flush_usage() == 1
    assert store.flush_usage() == 0
    assert last_used(store, "alice") == NOW + timedelta(seconds=9)

    store.note_used(record, NOW + timedelta(seconds=1))  # never moves the time back
    store.flush_usage()
    with TokenStore.open(path, create=False) as other:
        assert last_used(other, "alice") == NOW + timedelta(seconds=9)


def test_close_flushes_usage(store: TokenStore, path: Path) -> None:
    _, record = store.create_token("alice", "pat", None, None, "", NOW)
    store.note_used(record, NOW)
    store.close()
    with TokenStore.open(path, create=False) as other:
        assert last_used(other, "alice") == NOW


def test_a_locked_store_fails_whole_with_one_clear_error(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_SECONDS", 0.05)
    opened = TokenStore.open(path, create=True)
    _, record = opened.create_token("alice", "pat", None, None, "", NOW)
    blocker = raw(path)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable, match=r"cannot write the token store .*locked"):
        opened.create_token("bob", "pat", None, None, "", NOW)
    opened.note_used(record, NOW)
    with pytest.raises(StoreUnavailable):
        opened.flush_usage()
    blocker.execute("ROLLBACK")
    blocker.close()

    assert opened.get_token("bob") is None
    assert opened.flush_usage() == 1, "the usage stayed buffered"
    opened.close()


# --- rules the store keeps --------------------------------------------------------------


def test_names_are_unique_among_tokens_not_deleted(store: TokenStore) -> None:
    store.create_token("alice", "pat", None, None, "", NOW)
    with pytest.raises(StoreRefused, match="a token named 'alice' already exists"):
        store.create_token("alice", "sat", None, None, "", NOW)
    store.delete_token("alice", NOW)
    store.create_token("alice", "sat", None, None, "", NOW)
    assert [record.kind for record in store.list_tokens(include_deleted=True)] == ["pat", "sat"]
    assert [record.kind for record in store.list_tokens()] == ["sat"]


def test_import_takes_the_kind_from_the_prefix(store: TokenStore) -> None:
    record = store.import_token("sm_aat_0123456789abcdef", "app", None, None, "", NOW)
    assert (record.kind, record.hint) == ("aat", "sm_aat_…cdef")
    with pytest.raises(
        StoreRefused, match="kind 'pat' disagrees with the token's prefix 'sm_sat_'"
    ):
        store.import_token("sm_sat_0123456789abcdef", "svc", None, None, "", NOW, kind="pat")


def test_an_imported_token_is_stored_once_even_after_deletion(store: TokenStore) -> None:
    token = "sm_pat_0123456789abcdef"
    store.import_token(token, "first", None, None, "", NOW)
    store.delete_token("first", NOW)
    with pytest.raises(StoreRefused, match="already in the store, as deleted token 'first'"):
        store.import_token(token, "again", None, None, "", NOW)


@pytest.mark.parametrize("value", ["sm_pat_short", "sm_xyz_0123456789abcdef", "", "x" * 40])
def test_import_refuses_values_that_are_not_tokens(store: TokenStore, value: str) -> None:
    with pytest.raises(StoreRefused) as raised:
        store.import_token(value, "bad", None, None, "", NOW)
    assert f"<{len(value)} characters>" in str(raised.value)
    if value:
        assert value not in str(raised.value)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("has space", "invalid token name 'has space'"),
        ("", "invalid token name ''"),
        ("sm_pat_0123456789abcdefXYZ", "looks like a token"),
    ],
)
def test_bad_token_names_are_refused(store: TokenStore, name: str, message: str) -> None:
    with pytest.raises(StoreRefused, match=message):
        store.create_token(name, "pat", None, None, "", NOW)
    assert store.list_tokens() == ()


def test_expiry_must_be_in_the_future(store: TokenStore) -> None:
    with pytest.raises(StoreRefused, match="is in the past"):
        store.create_token("alice", "pat", NOW, None, "", NOW)


def test_unknown_kind_is_refused(store: TokenStore) -> None:
    with pytest.raises(StoreRefused, match="unknown token kind 'xat'"):
        store.create_token("alice", "xat", None, None, "", NOW)


def test_a_scope_must_name_registered_services(store: TokenStore) -> None:
    with pytest.raises(StoreRefused, match="no registered service 'base'; registered: 'avax'"):
        store.create_token("alice", "pat", None, frozenset({"ipfs", "base"}), "", NOW)
    store.create_token("alice", "pat", None, None, "", NOW)
    with pytest.raises(StoreRefused, match="no registered service 'base'"):
        store.set_scope("alice", frozenset({"base"}))
    assert store.set_scope("alice", frozenset({"ipfs"})).scope == frozenset({"ipfs"})
    assert store.set_scope("alice", None).scope is None


def test_unknown_and_deleted_names_are_told_apart(store: TokenStore) -> None:
    with pytest.raises(StoreRefused, match="no token named 'ghost'"):
        store.delete_token("ghost", NOW)
    store.create_token("alice", "pat", None, None, "", NOW)
    store.delete_token("alice", NOW)
    with pytest.raises(StoreRefused, match="token 'alice' is already deleted"):
        store.delete_token("alice", NOW)
    with pytest.raises(StoreRefused, match="token 'alice' is already deleted"):
        store.set_scope("alice", None)
    assert store.get_token("alice") is None
    deleted = store.get_token("alice", include_deleted=True)
    assert deleted is not None and deleted.revoked_at == NOW


def test_services_keep_hosts_unique(store: TokenStore) -> None:
    claimed = r"host 'avax\.example' already belongs to service 'avax'"
    with pytest.raises(StoreRefused, match=claimed):
        store.add_service("other", "generic", ["AVAX.example:8080"], "http://x", NOW)
    with pytest.raises(StoreRefused, match="a service named 'ipfs' already exists"):
        store.add_service("ipfs", "ipfs", ["ipfs2"], "http://x", NOW)
    service = store.add_service("gen", "generic", ["A.example", "a.example:1", "[::1]:8"], "ws://x")
    assert service.hosts == ("a.example", "::1")
    if not isinstance(store, TokenStore):
        return  # the rest is SQLite's host index
    assert store.service_for_host("::1") == service
    assert store.service_for_host("ipfs") is not None
    assert store.service_for_host("unknown.example") is None
    assert store.service_for_host("bad host!") is None


@pytest.mark.parametrize(
    ("layout", "upstream", "message"),
    [
        ("grpc", "http://x", "unknown layout 'grpc'"),
        ("generic", "ftp://x", "invalid upstream 'ftp://x'"),
        ("generic", "http://", "invalid upstream 'http://'"),
        ("generic", "127.0.0.1:8545", "invalid upstream '127.0.0.1:8545'"),
        ("generic", "http://x:99999", "invalid upstream 'http://x:99999': bad port"),
        ("generic", "http://x /", "invalid upstream 'http://x /'"),
    ],
)
def test_bad_services_are_refused(
    store: TokenStore, layout: str, upstream: str, message: str
) -> None:
    with pytest.raises(StoreRefused, match=message):
        store.add_service("new", layout, None, upstream, NOW)


def test_a_service_in_a_live_scope_stays(store: TokenStore) -> None:
    store.create_token("alice", "pat", None, frozenset({"ipfs"}), "", NOW)
    store.create_token("bob", "pat", None, frozenset({"ipfs", "avax"}), "", NOW)
    with pytest.raises(StoreRefused, match="in the scope of token\\(s\\) 'alice', 'bob'"):
        store.remove_service("ipfs")
    store.delete_token("alice", NOW)
    store.set_scope("bob", frozenset({"avax"}))
    assert store.remove_service("ipfs").name == "ipfs"
    with pytest.raises(StoreRefused, match="no service named 'ipfs'"):
        store.remove_service("ipfs")


# Names of digits and dots alone are IPv4 addresses or nothing (tests/test_hosts.py).
@given(
    host=st.from_regex(r"[a-z0-9](?:[a-z0-9.-]{0,30}[a-z0-9])?", fullmatch=True).filter(
        lambda name: (
            name.strip("0123456789.") != ""
            and all(label.strip("-") == label != "" for label in name.split("."))
        )
    )
)
@example(host="localhost")
def test_host_case_and_port_are_ignored(host: str) -> None:
    assert normalize_host(host.upper() + ":8080") == normalize_host(host) == host
    assert normalize_host(host + ".") == host


# --- the seam: the Store protocol and open_store ------------------------------------------


def test_the_sqlite_store_is_a_store(path: Path) -> None:
    with TokenStore.open(path, create=True) as opened:
        typed: Store = opened  # mypy proves that TokenStore satisfies Store
        assert typed is opened
    members = [
        name
        for name, value in vars(Store).items()
        if inspect.isfunction(value) and name != "__init__"  # Protocol's own
    ]
    assert {"lookup", "check_file", "__enter__", "close"} <= set(members)
    for name in members:
        assert inspect.signature(getattr(TokenStore, name)) == inspect.signature(
            getattr(Store, name)
        ), name


def test_open_store_opens_sqlite_for_a_path(path: Path) -> None:
    with open_store(path, create=True) as opened:
        assert isinstance(opened, TokenStore) and opened.holds(path)
    with open_store(str(path), create=False) as opened:
        assert isinstance(opened, TokenStore)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "postgresql://tokenward:s3cret@db.example:5432/tokens?sslmode=require",
            "postgresql://tokenward:***@db.example:5432/tokens?sslmode=require",
        ),
        (
            "postgres://db.example/tokens?password=s3cret",
            "postgres://db.example/tokens?password=***",
        ),
        ("POSTGRESQL://:s3cret@db.example/", "postgresql://:***@db.example/"),
        ("postgresql:///tokens", "postgresql:///tokens"),
        ("postgresql://tokenward@db.example/tokens", "postgresql://tokenward@db.example/tokens"),
    ],
)
def test_a_postgresql_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert store_module.masked_url(url) == shown
    assert store_module.shown_location(url) == shown
    assert store_module.is_postgresql_url(url)


def test_an_unreachable_postgresql_store_is_unavailable_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    port = free_port()  # nothing listens there
    url = f"postgresql://tokenward:s3cret@127.0.0.1:{port}/tokens"
    with pytest.raises(StoreUnavailable) as refused:
        open_store(url, create=True)
    assert str(refused.value).startswith(
        f"cannot open the token store 'postgresql://tokenward:***@127.0.0.1:{port}/tokens':"
    )
    assert "s3cret" not in repr(refused.value)
    assert list(tmp_path.iterdir()) == []  # no file named after the URL


def test_a_refused_scope_leaves_no_read_open(store: TokenStore, path: Path) -> None:
    # The refusal is kept (with its traceback, as a log record or a web framework may keep it):
    # what the check read must not hold a snapshot that hides later commits by others.
    with pytest.raises(StoreRefused, match="empty scope") as refused:
        store.create_token("x", "pat", None, frozenset(), "", NOW)
    with TokenStore.open(path, create=False) as other:
        other.create_token("later", "pat", None, None, "", NOW)
    assert "later" in [record.name for record in store.list_tokens()]
    assert refused.value is not None

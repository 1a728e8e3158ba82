"""The change check on its own: one SQLite connection in WAL mode, another one committing."""

from __future__ import annotations

import mmap
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from tokenward.fixtures.store_files import SHM_FAULTS, shm_of, wal_of
from tokenward.store import StoreUnavailable
from tokenward.store.changes import ChangeCheck, companion_paths


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    return conn


@pytest.fixture
def path(tmp_path: Path) -> Iterator[Path]:
    db = tmp_path / "store.db"
    with closing(connect(db)) as setup:
        setup.execute("CREATE TABLE t (x INTEGER)")
        # A connection that stays open keeps the -wal and -shm at the path.
        with closing(connect(db)) as keeper:
            keeper.execute("SELECT * FROM t").fetchall()
            yield db


def commit(path: Path) -> None:
    with closing(connect(path)) as other:
        other.execute("INSERT INTO t VALUES (1)")


@pytest.fixture(params=["mapped", "data_version"])
def check(
    request: pytest.FixtureRequest, path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ChangeCheck]:
    if request.param == "data_version":

        def no_map(*args: object, **kwargs: object) -> mmap.mmap:
            raise OSError("no shared maps on this file system")

        monkeypatch.setattr(mmap, "mmap", no_map)
    conn = connect(path)
    conn.execute("SELECT * FROM t").fetchall()
    changes = ChangeCheck(conn, path)
    assert (changes._wal_index is None) is (request.param == "data_version")
    yield changes
    conn.close()
    changes.close()


def test_the_first_look_and_each_commit_tell_of_a_change(check: ChangeCheck, path: Path) -> None:
    assert check.changed() is True
    assert check.changed() is False
    commit(path)
    assert check.changed() is True
    assert check.changed() is False


def test_forget_makes_the_next_look_tell_of_a_change(check: ChangeCheck) -> None:
    check.changed()
    check.forget()
    assert check.changed() is True
    assert check.changed() is False


def test_files_in_place_raise_no_doubt(check: ChangeCheck) -> None:
    assert check.doubt() is None


# Not "truncated": a map of a truncated -shm kills the process reading it (SIGBUS), SQLite's
# own maps of these connections included; tests/test_store.py has it, through the store.
@pytest.mark.parametrize("fault", sorted(set(SHM_FAULTS) - {"truncated"}))
def test_a_shm_removed_or_replaced_at_the_path_is_doubted(
    check: ChangeCheck, path: Path, fault: str
) -> None:
    SHM_FAULTS[fault](shm_of(path))
    doubt = check.doubt()
    assert str(doubt) == f"{str(shm_of(path))!r}, beside the token store, was removed or replaced"


def test_a_wal_removed_at_the_path_is_doubted(check: ChangeCheck, path: Path) -> None:
    wal_of(path).unlink()
    doubt = check.doubt()
    assert doubt is not None and "was removed or replaced" in str(doubt)


def test_only_the_connections_own_files_are_removed(check: ChangeCheck, path: Path) -> None:
    shm_of(path).unlink()
    shm_of(path).write_bytes(b"a newer -shm")  # another process moved on first
    check.remove_files()
    assert not wal_of(path).exists()
    assert shm_of(path).read_bytes() == b"a newer -shm"


def test_a_shm_gone_before_the_check_is_made_is_refused(path: Path) -> None:
    with closing(connect(path)) as conn:
        conn.execute("SELECT * FROM t").fetchall()
        shm_of(path).unlink()
        with pytest.raises(StoreUnavailable, match=r"cannot open .*-shm', beside the token store"):
            ChangeCheck(conn, path)


def test_close_lets_the_map_go_once(check: ChangeCheck) -> None:
    check.close()
    check.close()
    assert check._wal_index is None and check._wal_index_descriptor is None


def test_companions_are_named_after_the_store(tmp_path: Path) -> None:
    assert companion_paths(tmp_path / "a.db") == (tmp_path / "a.db-wal", tmp_path / "a.db-shm")

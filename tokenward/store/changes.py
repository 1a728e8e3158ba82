"""The change check: has anything been committed to the store file since the last look, and
are the -wal and -shm at the path still the ones the connection uses?

One `ChangeCheck` per SQLite connection, made right after the connection and closed right
after it (see `ChangeCheck._map_wal_index` for why in that order).
"""

from __future__ import annotations

import mmap
import os
import sqlite3
from contextlib import suppress
from pathlib import Path

from tokenward.store.errors import StoreUnavailable

# Every commit by any connection rewrites the wal-index header at the start of the -shm file,
# two 48-byte copies (https://www.sqlite.org/walformat.html): it holds a counter of
# transactions, the WAL's last frame and its salts. SQLite compares that header to its own copy
# at the start of each read to learn whether its page cache still holds (`PRAGMA data_version`);
# the store compares it too, from a read-only map of the file: no system call, no SQLite call.
WAL_INDEX_HEADER_BYTES = 96


def companion_paths(path: Path) -> tuple[Path, Path]:
    """The -wal and -shm SQLite keeps beside the store at `path`."""
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


class ChangeCheck:
    """What tells `conn`, open on the store at `path`, of every commit by anyone: the wal-index
    header from a map of the -shm, else the connection's PRAGMA data_version.

    Made just after the connection, when the -wal and -shm at the path are the ones it uses;
    StoreUnavailable when the -shm is gone already.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self._wal_path, self._shm_path = companion_paths(path)  # `doubt`'s, made once
        # The committed version when `changed` last looked: None says "changed" next time.
        self._seen: object = None
        self._companions: dict[Path, tuple[int, int]] = {}
        for companion in (self._wal_path, self._shm_path):
            identity = file_identity(companion)
            if identity is not None:
                self._companions[companion] = identity
        self._wal_index: mmap.mmap | None = None
        self._wal_index_descriptor: int | None = None
        self._map_wal_index()

    def changed(self) -> bool:
        """Was anything committed since the last call (True on the first)? Call it under the
        store's lock, and before reading: a commit in between then only causes one more read.

        What changes whenever anyone commits: the wal-index header, read from memory (when
        both copies agree: a writer may be between them), else the connection's PRAGMA
        data_version (a SQL call). Commits of the connection itself change no data_version:
        the store calls `forget` after each. Called twice on every request of a proxy.
        """
        version: object = None
        if self._wal_index is not None:
            header = self._wal_index[:WAL_INDEX_HEADER_BYTES]
            if header == self._seen:
                return False  # the common case: unchanged (one kept had its copies agreeing)
            half = WAL_INDEX_HEADER_BYTES // 2
            if header[:half] == header[half:]:
                version = header
        if version is None:
            # fetchall, not fetchone: it runs the statement to its end and so releases the
            # read snapshot, which must not outlive the call.
            version = self._conn.execute("PRAGMA data_version").fetchall()[0][0]
        if version == self._seen:
            return False
        self._seen = version
        return True

    def forget(self) -> None:
        """Make the next `changed` say True: after a commit of the connection itself."""
        self._seen = None

    def doubt(self) -> StoreUnavailable | None:
        """Why the -wal or -shm at the path may not be the files the connection uses, or None.

        Neither is ever removed or replaced by SQLite while a connection is open (its lock on
        the database keeps the last one from closing, and a journal mode switch from starting),
        so any change at the path is someone else's doing. The -shm is compared with the file
        mapped, and its size with the map's: reading a map past the end of a truncated file
        kills the process (SIGBUS), SQLite's own map included.
        """
        status: os.stat_result | None = None
        for companion in (self._wal_path, self._shm_path):
            try:
                status = os.stat(companion)
            except FileNotFoundError:
                status = None
            except OSError as error:
                return StoreUnavailable(
                    f"cannot check {str(companion)!r}, beside the token store: {error.strerror}"
                )
            identity = None if status is None else (status.st_dev, status.st_ino)
            if identity != self._companions.get(companion):
                return StoreUnavailable(
                    f"{str(companion)!r}, beside the token store, was removed or replaced"
                )
        # `status` is now the -shm's, the very file mapped.
        if status is not None and status.st_size < WAL_INDEX_HEADER_BYTES:
            return StoreUnavailable(
                f"{str(self._shm_path)!r}, beside the token store, was truncated"
            )
        return None

    def remove_files(self) -> None:
        """Remove the -wal and -shm this connection used, if still at the path (never a newer
        pair: another process may have moved on first). For a store file replaced."""
        for companion, identity in self._companions.items():
            if file_identity(companion) == identity:
                with suppress(FileNotFoundError):
                    companion.unlink()

    def _map_wal_index(self) -> None:
        """Open the -shm file the connection just made, and map its start read-only for
        `changed`; StoreUnavailable when it is gone already.

        The descriptor stays open until the connection is closed: closing any descriptor of a
        file drops every POSIX lock the process holds on it, SQLite's own included, and another
        process could then reset the -shm under this one.
        """
        shm = self._shm_path
        try:
            descriptor = os.open(shm, os.O_RDONLY)
        except OSError as error:
            # SQLite opened it a moment ago. Gone since, it would leave the connection with a
            # -shm that no process opening the file shares: no clean open.
            raise StoreUnavailable(
                f"cannot open {str(shm)!r}, beside the token store: {error.strerror}"
            ) from error
        self._wal_index_descriptor = descriptor
        # The file mapped is the one `doubt` compares with the path, whatever stood there
        # when the connection was made.
        status = os.fstat(descriptor)
        self._companions[shm] = (status.st_dev, status.st_ino)
        # Where it cannot be mapped (a file system without shared maps), PRAGMA data_version
        # tells instead, at the cost of a SQL call.
        with suppress(OSError, ValueError):
            self._wal_index = mmap.mmap(descriptor, WAL_INDEX_HEADER_BYTES, access=mmap.ACCESS_READ)

    def close(self) -> None:
        """Let the map go; only once the connection is closed (see `_map_wal_index`)."""
        if self._wal_index is not None:
            self._wal_index.close()
            self._wal_index = None
        if self._wal_index_descriptor is not None:
            os.close(self._wal_index_descriptor)
            self._wal_index_descriptor = None

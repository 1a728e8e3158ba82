"""The token store: one SQLite file of token digests and services. The only module using SQLite.

Rules the store keeps, whoever calls it:

- The plaintext of a token is never written: a row holds its SHA-256 digest and display hint.
- A token row is never removed: deleting sets `revoked_at`, and the row stays as the record
  that the digest was revoked (so the same token can never be imported again). Triggers in the
  database refuse to change a token's expiry, digest, kind or creation time, to un-delete it,
  or to DELETE its row, whoever opens the file.
- Names are unique among tokens not deleted; a deleted token's name may be reused.
- A scope names registered services only, and a service stays while a token not deleted has it
  in its scope: removing it would leave a name that a later service of the same name inherits.
- `verify` looks on every call whether anything was committed since it last read a token's row
  (SQLite's wal-index header, read from a map of the -shm file) and reads the row again when
  anything was (one SELECT, one walk of one B-tree: a token's row is keyed on its digest's first
  8 bytes), so a token created, deleted or re-scoped by another process counts from the very
  next call. Services are cached in memory and reloaded the same way.
- Last-used times are buffered by `note_used` and written by `flush_usage` in one transaction,
  so a request costs no write.
- Every write is one `BEGIN IMMEDIATE` transaction (WAL mode, 5 s busy timeout): two processes
  writing at once wait for each other and lose nothing, and a failed write leaves nothing behind.
- The file (and SQLite's -wal and -shm beside it) is created readable by its owner only.
- A long-running process calls `check_file` to notice the file being removed or replaced, and
  its -wal or -shm: a connection whose -shm is no longer the one at the path shares no memory
  with the processes that open the file next, so neither it nor the map sees their commits. SQLite
  finds the -wal and -shm by name, so replacing a store under running processes is only safe
  when they all notice before anything else opens the new file; stop them to restore a backup.
- A connection let go because its files are no longer the ones at the path is closed without
  SQLite's checkpoint on close: from a -shm of its own, that copies its stale view of the WAL
  over what others committed since (a deleted token comes back) and removes the -wal and -shm
  at the path by name. Writes look at the files first, as `check_file` does.
- Keep one open `TokenStore` per file in a process. Each maps the start of the -shm file for
  `verify`, and closing that descriptor drops every POSIX lock the process holds on the file,
  those of another open store's SQLite connection included (https://sqlite.org/howtocorrupt.html).
  A store closes it only after its own connection, so a lone store is safe.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import re
import sqlite3
import stat
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import sqlite_utils

from tokenward_lib.core.hosts import InvalidHost
from tokenward_lib.core.hosts import normalize_host as core_normalize_host
from tokenward_lib.core.layouts import LAYOUTS
from tokenward_lib.core.lifetimes import as_utc, check_service_name
from tokenward_lib.core.records import (
    TOKEN_NAME_RULE,
    ServiceRecord,
    TokenRecord,
    check_owner,
    check_token_name,
)
from tokenward_lib.core.tokens import (
    KINDS,
    is_token_shaped,
    issue_token,
    kind_of,
    redact_tokens,
    token_digest,
    token_hint,
)

BUSY_TIMEOUT_SECONDS = 5.0
# Per connection, filled lazily: enough for the pages of tens of thousands of busy tokens.
PAGE_CACHE_KIB = 32 * 1024
UPSTREAM_SCHEMES: tuple[str, ...] = ("http", "https", "ws", "wss")


class StoreError(Exception):
    """Anything the store refuses or cannot do; `str()` is one line for a person."""


class StoreUnavailable(StoreError):
    """The store file cannot be used: missing, unreadable, corrupt, locked, full or read-only."""


class StoreMissing(StoreUnavailable):
    """There is no store file at the path."""


class StoreCorrupt(StoreUnavailable):
    """The file at the path is not a tokenward store, or is damaged."""


class StoreRefused(StoreError, ValueError):
    """The request breaks a rule of the store: a duplicate name, an unknown service, ..."""


class _DigestKeyTaken(StoreRefused):
    """Another stored token's digest begins with the same 8 bytes (see `digest_key`)."""


_KEY_OFFSET = 1 << 63
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")

_RECORD_COLUMNS = "name, kind, owner, hint, created_at, expires_at, scope, last_used_at, revoked_at"
_SELECT_TOKENS = f"SELECT {_RECORD_COLUMNS}, digest FROM tokens"
_SELECT_BY_DIGEST = f"SELECT {_RECORD_COLUMNS} FROM tokens WHERE digest = ?"
# The hot path. It finds the row in one walk of the table's B-tree, keyed by `digest_key`, then
# compares the whole digest; the row comes as one JSON text, since every column handed to
# Python costs time.
_SELECT_FOR_VERIFY = (
    f"SELECT json_array({_RECORD_COLUMNS}) FROM tokens WHERE digest_key = ? AND digest = ?"
)
_SELECT_LIVE_BY_NAME = f"{_SELECT_TOKENS} WHERE name = ? AND revoked_at IS NULL"
_SELECT_SERVICES = "SELECT name, hosts, layout, upstream FROM services ORDER BY name"


def _format_time(moment: datetime) -> str:
    # Fixed width, so text order is time order inside SQLite too.
    return as_utc(moment).isoformat(timespec="microseconds")


def _parse_time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@functools.lru_cache(maxsize=1024)
def _parse_scope(text: str) -> frozenset[str]:
    # Few distinct scopes exist, and a frozenset can be shared.
    return frozenset(json.loads(text))


def _token_record(row: Sequence[str], digest: str) -> TokenRecord:
    """The record of a row holding `_RECORD_COLUMNS` (in that order) first."""
    name, kind, owner, hint, created_at, expires_at, scope, last_used_at, revoked_at = row[:9]
    return TokenRecord(
        name,
        kind,
        owner,
        hint,
        datetime.fromisoformat(created_at),
        _parse_time(expires_at),
        None if scope is None else _parse_scope(scope),
        _parse_time(last_used_at),
        _parse_time(revoked_at),
        digest,
    )


# lookup's cache, by digest: the record, or None for a digest with no row. It holds, as the
# services read do, while nothing was committed (see `TokenStore._drop_cache_if_committed`).
_Found = TokenRecord | None
_FOUND_MAX = 4096
# lookup's digests of the tokens it was last given: SHA-256 is the dearest step of a lookup in
# a loaded proxy (its OpenSSL context is set up per call), and a client sends the same token on
# every request. The plaintexts stay in this process's memory, as each request's copy does
# anyway; the file holds digests only. A digest never goes stale, so only the size is bounded.
_DIGESTS_MAX = 4096
# Every commit by any connection rewrites the wal-index header at the start of the -shm file,
# two 48-byte copies (https://www.sqlite.org/walformat.html): it holds a counter of
# transactions, the WAL's last frame and its salts. SQLite compares that header to its own copy
# at the start of each read to learn whether its page cache still holds (`PRAGMA data_version`);
# the store compares it too, from a read-only map of the file: no system call, no SQLite call.
_WAL_INDEX_HEADER_BYTES = 96


def _decode_found(rows: Sequence[tuple[str, ...]], digest: str) -> _Found:
    """The cache entry for what `_SELECT_FOR_VERIFY` read."""
    if not rows:
        return None
    return _token_record(json.loads(rows[0][0]), digest)


def digest_key(digest: str) -> int:
    """The row key of the token whose hex SHA-256 is `digest`: its first 8 bytes, as a signed
    64-bit integer that sorts as the digests do."""
    return int(digest[:16], 16) - _KEY_OFFSET


def _service_record(row: tuple[str, str, str, str]) -> ServiceRecord:
    name, hosts, layout, upstream = row
    return ServiceRecord(name, tuple(json.loads(hosts)), layout, upstream)


def normalize_host(host: str) -> str:
    """`host` as services are matched (the core's rule); StoreRefused saying why not."""
    try:
        return core_normalize_host(host)
    except InvalidHost as error:
        raise StoreRefused(str(error)) from None


def check_upstream(url: str) -> str:
    """`url` when it is an http(s) or ws(s) URL with a host; StoreRefused otherwise."""
    expected = f"expected {', '.join(s + '://' for s in UPSTREAM_SCHEMES)} and a host"
    if any(character.isspace() for character in url):
        raise StoreRefused(f"invalid upstream {url!r}: {expected}")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in UPSTREAM_SCHEMES or not parts.hostname:
        raise StoreRefused(f"invalid upstream {url!r}: {expected}")
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise StoreRefused(f"invalid upstream {url!r}: bad port") from None
    return url


_IMMUTABLE_LABELS = {
    "expires_at": "expiry",
    "digest_key": "the digest of a token",
    "digest": "the digest of a token",
    "kind": "the kind of a token",
    "created_at": "the creation time of a token",
}


def _create_token_rules(db: sqlite_utils.Database, immutable_columns: Sequence[str]) -> None:
    """Triggers that make the database itself keep the token rules, whoever writes to it."""
    for column in immutable_columns:
        label = _IMMUTABLE_LABELS[column]
        db.execute(
            f"CREATE TRIGGER tokens_{column}_immutable BEFORE UPDATE OF {column} ON tokens"
            f" WHEN NEW.{column} IS NOT OLD.{column}"
            f" BEGIN SELECT RAISE(ABORT, '{label} can never be changed'); END"
        )
    db.execute(
        "CREATE TRIGGER tokens_revocation_final BEFORE UPDATE OF revoked_at ON tokens"
        " WHEN OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS NOT OLD.revoked_at"
        " BEGIN SELECT RAISE(ABORT, 'a deleted token stays deleted'); END"
    )
    db.execute(
        "CREATE TRIGGER tokens_rows_kept BEFORE DELETE ON tokens"
        " BEGIN SELECT RAISE(ABORT, 'token rows are kept as revocation records'); END"
    )


def _create_schema_v1(db: sqlite_utils.Database) -> None:
    tokens = db.table("tokens")
    tokens.create(
        {
            "id": int,
            "name": str,
            "kind": str,
            "owner": str,
            "digest": str,
            "hint": str,
            "created_at": str,
            "expires_at": str,  # NULL: never
            "scope": str,  # JSON list of service names; NULL: all services
            "last_used_at": str,
            "revoked_at": str,
        },
        pk="id",
        not_null={"name", "kind", "owner", "digest", "hint", "created_at"},
        strict=True,
    )
    tokens.create_index(["digest"], index_name="tokens_digest", unique=True)
    tokens.create_index(["name"], index_name="tokens_name")  # deleted ones too, for lookups
    db.execute("CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL")
    _create_token_rules(db, ("expires_at", "digest", "kind", "created_at"))
    db.table("services").create(
        {"name": str, "hosts": str, "layout": str, "upstream": str, "created_at": str},
        pk="name",
        not_null={"hosts", "layout", "upstream", "created_at"},
        strict=True,
    )


_TOKENS_V2 = """
    digest_key INTEGER PRIMARY KEY,  -- the digest's first 8 bytes, as verify looks rows up
    id INTEGER NOT NULL,  -- creation order, which v1 kept in the rowid
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    owner TEXT NOT NULL,
    digest TEXT NOT NULL,
    hint TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT,  -- NULL: never
    scope TEXT,  -- JSON list of service names; NULL: all services
    last_used_at TEXT,
    revoked_at TEXT
"""
_TOKEN_COLUMNS_V1 = (
    "id, name, kind, owner, digest, hint, created_at, expires_at, scope, last_used_at, revoked_at"
)


def _key_if_digest(digest: str) -> int | None:
    """`digest_key(digest)`, or None when `digest` is no hex SHA-256, which no token row has
    (unless written by another program: migrated, it gets a rowid of SQLite's choosing)."""
    return digest_key(digest) if _HEX_DIGEST.fullmatch(digest) else None


def _key_tokens_by_digest_v2(db: sqlite_utils.Database) -> None:
    """Key the token rows on their digest, so that finding a token walks one B-tree, not two.

    In v1 `verify` walked the digest index to a rowid, then the table to the row. Now the rowid
    is `digest_key(digest)`, the digest's first 8 bytes, and the row holds the whole digest to
    compare. A table WITHOUT ROWID keyed on the digest would also take one walk, but its inner
    pages hold whole rows, so its tree is a level or two deeper: measured slower at a million.
    Every v1 rule is kept: the same unique indexes, the same triggers, plus one keeping the key.
    """
    db.conn.create_function("tokenward_digest_key", 1, _key_if_digest, deterministic=True)
    db.execute(f"CREATE TABLE tokens_v2 ({_TOKENS_V2}) STRICT")
    # In key order, so that the new tree fills its pages one after another.
    db.execute(
        f"INSERT INTO tokens_v2 (digest_key, {_TOKEN_COLUMNS_V1})"
        f" SELECT tokenward_digest_key(digest) AS digest_key, {_TOKEN_COLUMNS_V1} FROM tokens"
        " ORDER BY digest_key IS NULL, digest"
    )
    db.execute("DROP TABLE tokens")  # with its indexes and triggers; fires no DELETE trigger
    db.execute("ALTER TABLE tokens_v2 RENAME TO tokens")
    db.execute("CREATE UNIQUE INDEX tokens_id ON tokens(id)")
    db.execute("CREATE UNIQUE INDEX tokens_digest ON tokens(digest)")
    db.execute("CREATE INDEX tokens_name ON tokens(name)")  # deleted ones too, for lookups
    db.execute("CREATE UNIQUE INDEX tokens_live_name ON tokens(name) WHERE revoked_at IS NULL")
    _create_token_rules(db, ("expires_at", "digest_key", "digest", "kind", "created_at"))


@dataclass(frozen=True, slots=True)
class ConsoleKeyRecord:
    """An admin key of the console, kept as its SHA-256 digest like a token, in a table of
    its own that `verify` never reads: an admin key is never valid at the gateway."""

    name: str
    hint: str
    created_at: datetime
    digest: str = field(repr=False)


def _create_console_keys_v3(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE console_keys (name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,"
        " hint TEXT NOT NULL, created_at TEXT NOT NULL) STRICT"
    )


# Applied in order; the file's PRAGMA user_version counts the ones already applied.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _create_schema_v1,
    _key_tokens_by_digest_v2,
    _create_console_keys_v3,
)
SCHEMA_VERSION = len(MIGRATIONS)


class TokenStore:
    """One open store file. Safe to share between threads (calls are serialized)."""

    def __init__(self, path: Path) -> None:
        """Open the existing file at `path`; use `TokenStore.open`."""
        self._path = path
        self._path_text = str(path)  # check_file's, once per request
        self._wal_path, self._shm_path = _companion_paths(path)  # check_file's too
        self._lock = threading.RLock()
        self._usage: dict[str, datetime] = {}
        self._services: dict[str, ServiceRecord] | None = None
        self._service_list: tuple[ServiceRecord, ...] = ()
        self._services_by_host: dict[str, ServiceRecord] = {}
        self._lost: StoreUnavailable | None = None  # why the connection was let go
        self._identity: tuple[int, int] | None = None
        self._stamp: tuple[int, int] | None = None  # size and mtime when last (re)opened
        self._companions: dict[Path, tuple[int, int]] = {}
        self._found: dict[str, _Found] = {}
        self._digests: dict[str, str] = {}
        # The committed version when `_found` and `_services` were filled (see
        # `_drop_cache_if_committed`).
        self._cached_version: object = None
        self._wal_index: mmap.mmap | None = None
        self._wal_index_descriptor: int | None = None
        self._conn, self._db = self._connect()
        self._cursor = self._conn.cursor()  # verify's: cheaper than a new cursor per call

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool) -> TokenStore:
        """Open the store at `path`; with `create`, make an empty one (mode 0600) if missing.

        `create` sets the process-wide umask while opening: do it before starting threads.
        """
        location = Path(path)
        if not create:
            return cls(location)
        # Files SQLite creates next to the store (-wal, -shm) must not be world-readable either.
        previous_umask = os.umask(0o077)
        try:
            created = _create_file(location)
            try:
                return cls(location)
            except BaseException:
                # A store that could not be set up (a full disk, say) leaves nothing behind.
                if created:
                    _remove_new_store(location)
                raise
        finally:
            os.umask(previous_umask)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Write buffered last-used times, then close the file."""
        try:
            if self._lost is None:
                self.flush_usage()
        finally:
            with self._lock:
                self._digests.clear()
                # Looked at here too: with no call since the files changed, nothing has yet.
                try:
                    in_place = (
                        self._lost is None and self.holds(self._path) and self._doubt() is None
                    )
                except OSError:
                    in_place = False
                self._close_connection(self._conn, checkpoint=in_place)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # --- opening, file identity, errors -------------------------------------------------

    def _connect(
        self, *, initialize: bool = True
    ) -> tuple[sqlite3.Connection, sqlite_utils.Database]:
        """Open the file at the path, migrate it, and note the identity of its files.

        `initialize` False refuses a file with no schema yet instead of setting one up in it.
        """
        shown = str(self._path)
        try:
            # Taken before connecting: a replacement in between only causes one extra reopen.
            status = os.stat(self._path)
        except FileNotFoundError:
            raise StoreMissing(f"no token store at {shown!r}") from None
        except OSError as error:
            raise StoreUnavailable(
                f"cannot open the token store {shown!r}: {error.strerror}"
            ) from error
        if not stat.S_ISREG(status.st_mode):
            raise StoreUnavailable(f"cannot open the token store {shown!r}: not a regular file")
        # mode=rw: SQLite must never create a file here (that is `open(create=True)`'s job).
        uri = f"file:{urllib.request.pathname2url(os.path.abspath(self._path))}?mode=rw"
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS, check_same_thread=False
            )
        except sqlite3.Error as error:
            raise _store_error(self._path, error, "open") from error
        try:
            _use_wal(conn)
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            self._migrate(conn, db, initialize)
        except sqlite3.Error as error:
            conn.close()
            raise _store_error(self._path, error, "open") from error
        except BaseException:
            conn.close()
            raise
        self._identity = (status.st_dev, status.st_ino)
        # Taken after opening: setting up WAL mode or a schema writes to the file itself.
        self._stamp = _file_stamp(self._path)
        self._companions = {}
        for companion in (self._wal_path, self._shm_path):
            identity = _file_identity(companion)
            if identity is not None:
                self._companions[companion] = identity
        try:
            self._map_wal_index()
        except StoreUnavailable:
            self._close_connection(conn, checkpoint=False)
            raise
        return conn, db

    def _doubt(self) -> StoreUnavailable | None:
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
        if status is not None and status.st_size < _WAL_INDEX_HEADER_BYTES:
            return StoreUnavailable(
                f"{str(self._shm_path)!r}, beside the token store, was truncated"
            )
        return None

    def holds(self, path: str | Path) -> bool:
        """Is the file at `path` the one this store has open?"""
        return self._identity is not None and _file_identity(Path(path)) == self._identity

    def _map_wal_index(self) -> None:
        """Open the -shm file the connection just made, and map its start read-only for verify;
        StoreUnavailable when it is gone already.

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
        # The file mapped is the one `_doubt` compares with the path, whatever stood there
        # when the connection was made.
        status = os.fstat(descriptor)
        self._companions[shm] = (status.st_dev, status.st_ino)
        # Where it cannot be mapped (a file system without shared maps), PRAGMA data_version
        # tells instead, at the cost of a SQL call.
        with suppress(OSError, ValueError):
            self._wal_index = mmap.mmap(
                descriptor, _WAL_INDEX_HEADER_BYTES, access=mmap.ACCESS_READ
            )

    def _close_connection(self, conn: sqlite3.Connection, *, checkpoint: bool) -> None:
        """Close `conn`, then the map (in that order, see `_map_wal_index`).

        Without `checkpoint`, SQLite writes nothing and removes nothing on closing: for a
        connection whose files may no longer be the ones at the path (see the module's rules).
        """
        if not checkpoint:
            with suppress(sqlite3.Error):
                conn.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
        conn.close()
        self._unmap_wal_index()

    def _unmap_wal_index(self) -> None:
        """Let the map go; only once the connection is closed (see `_map_wal_index`)."""
        self._cached_version = None
        if self._wal_index is not None:
            self._wal_index.close()
            self._wal_index = None
        if self._wal_index_descriptor is not None:
            os.close(self._wal_index_descriptor)
            self._wal_index_descriptor = None

    def _migrate(
        self, conn: sqlite3.Connection, db: sqlite_utils.Database, initialize: bool
    ) -> None:
        version = self._schema_version(conn)
        if version == SCHEMA_VERSION:
            return
        if version == 0 and not initialize:
            # A file that took the store's place under a running process: an empty file that
            # a tool (cp) is still writing, or a store emptied by mistake. Writing a schema into
            # it would interleave with that writer or hide the loss behind unknown_token; only
            # the commands that add set up a store.
            raise StoreCorrupt(f"{str(self._path)!r} holds no token store")
        with self._transaction(conn, "set up"):
            version = self._schema_version(conn)  # another process may have just done it
            if version == 0 and db.table_names():
                raise StoreCorrupt(f"{str(self._path)!r} is an SQLite file but no token store")
            for migration in MIGRATIONS[version:]:
                migration(db)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the token store {str(self._path)!r} has schema version {version}; this"
                f" tokenward knows up to {SCHEMA_VERSION}: upgrade tokenward"
            )
        return version

    def _unavailable(self, error: sqlite3.Error, doing: str) -> StoreUnavailable:
        if self._lost is not None:  # check_file closed the connection: say why
            return type(self._lost)(*self._lost.args)
        return _store_error(self._path, error, doing)

    def check_file(self) -> bool:
        """Reopen when the file at the path, or its -wal or -shm, is no longer the one open;
        True when it reopened.

        A file removed or replaced under an open connection is only visible at the path, so
        this compares device and inode: three `stat`s, cheap enough for every
        request. Raises StoreMissing while the file is gone and StoreUnavailable (or
        StoreCorrupt) while the file now there cannot be used; every later call tries again.
        """
        shown = self._path_text
        try:
            status = os.stat(shown)
        except FileNotFoundError:
            # Maybe only moved away for a while: its -wal and -shm must stay for its return.
            removed = StoreMissing(f"the token store {shown!r} was removed")
            raise self._let_go(removed, replaced=False) from None
        except OSError as error:
            raise StoreUnavailable(
                f"cannot check the token store {shown!r}: {error.strerror}"
            ) from error
        if (status.st_dev, status.st_ino) == self._identity:
            if (status.st_size, status.st_mtime_ns) != self._stamp:
                # Written in place: by a checkpoint (any process's), or by something that is
                # not SQLite, which SQLite's page cache would never notice. A new connection
                # reads the file again, so damage done in place fails closed as a replacement
                # does.
                changed = StoreUnavailable(f"the token store {shown!r} changed in place")
                self._let_go(changed, replaced=False)
            else:
                doubt = self._doubt()
                if doubt is None:
                    return False
                # The connection no longer shares memory with the processes that open the file
                # now: a new one joins theirs, and until it does, every call fails closed.
                self._let_go(doubt, replaced=False)
        else:
            swapped = StoreUnavailable(f"the token store {shown!r} was replaced")
            self._let_go(swapped, replaced=True)
        with self._lock:
            self._conn, self._db = self._connect(initialize=False)
            self._lost = None
        return True

    def _let_go(self, reason: StoreUnavailable, *, replaced: bool) -> StoreUnavailable:
        """Close the connection to a file (or a -wal or -shm) no longer at the path, writing
        nothing (see `_close_connection`); `reason` answers from now on.

        SQLite keeps the -wal and -shm of a moved file when closing, and finds them by name: next
        to a replacement they would be read as its own. So for a replaced file this removes the
        pair this connection used (never a newer pair: another process may have moved on first).
        Processes still on the old file keep theirs open, unaffected.
        """
        with self._lock:
            if self._lost is None:
                self._close_connection(self._conn, checkpoint=False)
                self._identity = None
                for companion, identity in self._companions.items():
                    if replaced and _file_identity(companion) == identity:
                        with suppress(FileNotFoundError):
                            companion.unlink()
            self._lost = reason
        return reason

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection, doing: str) -> Iterator[None]:
        """One IMMEDIATE transaction: the write lock is taken up front, so two writers queue
        (busy timeout) instead of failing when one upgrades a read to a write."""
        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as error:
                raise self._unavailable(error, doing) from error
            try:
                yield
                conn.execute("COMMIT")
            except BaseException as failure:
                # A failed ROLLBACK (e.g. I/O error) must not hide the failure that caused it;
                # SQLite then rolls back itself when the connection closes or retries.
                with suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                if isinstance(failure, sqlite3.Error):
                    raise self._unavailable(failure, doing) from failure
                raise
            finally:
                # Its own commits change no data_version: what is cached is read anew.
                self._cached_version = None

    def _writing(self, doing: str) -> AbstractContextManager[None]:
        # A write through files no longer at the path is lost, or clobbers the WAL frames that
        # another process appended through a -shm this connection does not share.
        self.check_file()
        return self._transaction(self._conn, doing)

    def _read(self, sql: str, parameters: Sequence[object] = ()) -> list[tuple[str, ...]]:
        try:
            with self._lock:
                rows: list[tuple[str, ...]] = self._db.execute(sql, parameters).fetchall()
        except sqlite3.Error as error:
            raise self._unavailable(error, "read") from error
        return rows

    # --- tokens -------------------------------------------------------------------------

    def lookup(self, token: str) -> TokenRecord | None:
        """What the store holds of `token`: its record (deleted or expired ones too), or None.

        Facts only: whether it may pass is the decision's to judge. A token's row is read (one
        SELECT, one walk of one B-tree) unless nothing was committed since it was last read
        (see `_drop_cache_if_committed`), so changes by other processes count from the very
        next call.
        """
        try:
            with self._lock:
                digest = self._digests.get(token)
                if digest is None:
                    digest = _remember(self._digests, token, token_digest(token), _DIGESTS_MAX)
                self._drop_cache_if_committed()
                if digest in self._found:  # None too: known to have no row
                    return self._found[digest]
                return _remember(self._found, digest, self._read_found(digest), _FOUND_MAX)
        except sqlite3.Error as error:
            raise self._unavailable(error, "read") from error

    def _drop_cache_if_committed(self) -> None:
        """Forget the tokens and services read, if anything was committed since; under the
        lock, and before reading: a commit in between then only causes one more read.

        What changes whenever anyone commits: the wal-index header, read from memory (when
        both copies agree: a writer may be between them), else the connection's PRAGMA
        data_version (a SQL call). This store's own commits are counted by `_transaction`.
        One method, not two: it runs twice on every request of a proxy.
        """
        version: object = None
        if self._wal_index is not None:
            header = self._wal_index[:_WAL_INDEX_HEADER_BYTES]
            if header == self._cached_version:
                return  # the common case: unchanged (one kept had its copies agreeing)
            half = _WAL_INDEX_HEADER_BYTES // 2
            if header[:half] == header[half:]:
                version = header
        if version is None:
            # fetchall, not fetchone: it runs the statement to its end and so releases the
            # read snapshot, which must not outlive the call.
            version = self._conn, self._conn.execute("PRAGMA data_version").fetchall()[0][0]
        if version != self._cached_version:
            self._found.clear()
            self._services = None
            self._cached_version = version

    def _read_found(self, digest: str) -> _Found:
        cursor = self._cursor
        if cursor.connection is not self._conn:  # reopened by check_file
            cursor = self._cursor = self._conn.cursor()
        rows = cursor.execute(_SELECT_FOR_VERIFY, (digest_key(digest), digest)).fetchall()
        return _decode_found(rows, digest)

    def create_token(
        self,
        name: str,
        kind: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
    ) -> tuple[str, TokenRecord]:
        """Issue a new token; the plaintext is returned here once and stored nowhere."""
        if kind not in KINDS:
            raise StoreRefused(f"unknown token kind {kind!r}; expected one of {', '.join(KINDS)}")
        token = issue_token(kind)
        try:
            return token, self._insert_token(token, name, expires_at, scope, owner, now)
        except _DigestKeyTaken:
            # About one chance in 2**64 per token stored; another token will not collide.
            token = issue_token(kind)
            return token, self._insert_token(token, name, expires_at, scope, owner, now)

    def import_token(
        self,
        token: str,
        name: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
        kind: str | None = None,
    ) -> TokenRecord:
        """Store a token issued elsewhere; its kind is its prefix's, and `kind` must agree."""
        if not is_token_shaped(token):
            raise StoreRefused(
                f"not a token ({token_hint(token)}): expected sm_pat_, sm_aat_ or sm_sat_"
                " followed by 16 to 64 letters or digits"
            )
        if kind is not None and kind != kind_of(token):
            raise StoreRefused(f"kind {kind!r} disagrees with the token's prefix {token[:7]!r}")
        return self._insert_token(token, name, expires_at, scope, owner, now)

    def _insert_token(
        self,
        token: str,
        name: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
    ) -> TokenRecord:
        try:
            check_token_name(name)
            check_owner(owner)
        except ValueError as error:
            raise StoreRefused(str(error)) from None
        if expires_at is not None and as_utc(expires_at) <= as_utc(now):
            raise StoreRefused(f"expiry {_format_time(expires_at)!r} is in the past")
        digest = token_digest(token)
        key = digest_key(digest)
        with self._writing("write"):
            self._check_scope(scope)
            existing = self._db.execute(
                "SELECT name, revoked_at FROM tokens WHERE digest = ?", (digest,)
            ).fetchall()
            if existing:
                existing_name, revoked_at = existing[0]
                state = "deleted token" if revoked_at is not None else "token"
                raise StoreRefused(
                    f"{token_hint(token)} is already in the store, as {state} {existing_name!r}"
                )
            if self._db.execute(_SELECT_LIVE_BY_NAME, (name,)).fetchall():
                raise StoreRefused(f"a token named {name!r} already exists")
            if self._db.execute("SELECT 1 FROM tokens WHERE digest_key = ?", (key,)).fetchall():
                raise _DigestKeyTaken(
                    f"{token_hint(token)} cannot be stored: its digest begins with the same"
                    " 8 bytes as another stored token's; use a new token"
                )
            (next_id,) = self._db.execute("SELECT ifnull(max(id), 0) + 1 FROM tokens").fetchone()
            self._db.table("tokens").insert(
                {
                    "digest_key": key,
                    "id": next_id,
                    "name": name,
                    "kind": kind_of(token),
                    "owner": owner,
                    "digest": digest,
                    "hint": token_hint(token),
                    "created_at": _format_time(now),
                    "expires_at": None if expires_at is None else _format_time(expires_at),
                    "scope": _scope_json(scope),
                    "last_used_at": None,
                    "revoked_at": None,
                }
            )
            rows = self._db.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return _token_record(rows[0], digest)

    def _check_scope(self, scope: frozenset[str] | None) -> None:
        """Refuse a scope naming no service: inside the write, so the check cannot go stale."""
        if scope is None:
            return
        if not scope:
            raise StoreRefused("an empty scope reaches no service; use 'all' or name services")
        registered = {row[0] for row in self._db.execute("SELECT name FROM services")}
        unknown = sorted(scope - registered)
        if unknown:
            known = ", ".join(repr(name) for name in sorted(registered)) or "none"
            raise StoreRefused(
                f"scope names no registered service {unknown[0]!r}; registered: {known}"
            )

    def list_tokens(self, include_deleted: bool = False) -> tuple[TokenRecord, ...]:
        where = "" if include_deleted else " WHERE revoked_at IS NULL"
        rows = self._read(f"{_SELECT_TOKENS}{where} ORDER BY created_at, id")
        return tuple(_token_record(row, row[9]) for row in rows)

    def get_token(self, name: str, include_deleted: bool = False) -> TokenRecord | None:
        """The token not deleted called `name`; else, with `include_deleted`, the last deleted."""
        rows = self._read(
            f"{_SELECT_TOKENS} WHERE name = ? ORDER BY revoked_at IS NULL DESC, revoked_at DESC,"
            " id DESC LIMIT 1",
            (name,),
        )
        if not rows or (rows[0][8] is not None and not include_deleted):
            return None
        return _token_record(rows[0], rows[0][9])

    def delete_token(self, name: str, now: datetime) -> TokenRecord:
        """Revoke the token called `name`; its row stays as the revocation record."""
        with self._writing("write"):
            digest = self._live_token(name).digest
            self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE digest = ?", (_format_time(now), digest)
            )
            rows = self._db.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return _token_record(rows[0], digest)

    def set_scope(self, name: str, scope: frozenset[str] | None) -> TokenRecord:
        """Change which services the token called `name` may reach (`None`: all)."""
        with self._writing("write"):
            digest = self._live_token(name).digest
            self._check_scope(scope)
            self._db.execute(
                "UPDATE tokens SET scope = ? WHERE digest = ?", (_scope_json(scope), digest)
            )
            rows = self._db.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return _token_record(rows[0], digest)

    def _live_token(self, name: str) -> TokenRecord:
        rows = self._db.execute(_SELECT_LIVE_BY_NAME, (name,)).fetchall()
        if rows:
            return _token_record(rows[0], rows[0][9])
        deleted = self._db.execute(
            "SELECT 1 FROM tokens WHERE name = ? LIMIT 1", (name,)
        ).fetchall()
        if deleted:
            raise StoreRefused(f"token {name!r} is already deleted")
        raise StoreRefused(f"no token named {name!r}")

    # --- last used ----------------------------------------------------------------------

    def note_used(self, used: str | TokenRecord, now: datetime) -> None:
        """Remember that a token (its digest or record) was used at `now`; no write here."""
        digest = used.digest if isinstance(used, TokenRecord) else used
        with self._lock:
            previous = self._usage.get(digest)
            if previous is None or now > previous:
                self._usage[digest] = now

    def flush_usage(self) -> int:
        """Write the buffered last-used times in one transaction; returns how many tokens.

        A time only ever moves forward. On failure the times stay buffered for the next try.
        """
        with self._lock:
            pending, self._usage = self._usage, {}
        if not pending:
            return 0
        updates = [
            (_format_time(moment), _key_if_digest(digest), digest)
            for digest, moment in pending.items()
        ]
        try:
            with self._writing("write"):
                self._conn.executemany(
                    "UPDATE tokens SET last_used_at = ?1 WHERE digest_key = ?2 AND digest = ?3"
                    " AND (last_used_at IS NULL OR last_used_at < ?1)",
                    updates,
                )
        except StoreError:
            for digest, moment in pending.items():
                self.note_used(digest, moment)
            raise
        return len(pending)

    # --- services -----------------------------------------------------------------------

    def add_service(
        self,
        name: str,
        layout: str,
        hosts: Sequence[str] | None,
        upstream: str,
        now: datetime | None = None,
    ) -> ServiceRecord:
        """Register a service; `hosts` default to its name and no two services share a host."""
        try:
            check_service_name(name)
        except ValueError as error:
            raise StoreRefused(str(error)) from error
        if layout not in LAYOUTS:
            raise StoreRefused(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
        host_names = tuple(dict.fromkeys(normalize_host(host) for host in (hosts or [name])))
        check_upstream(upstream)
        created_at = _format_time(now if now is not None else datetime.now(UTC))
        with self._writing("write"):
            services = self._load_services()
            if name in services:
                raise StoreRefused(f"a service named {name!r} already exists")
            for service in services.values():
                claimed = set(service.hosts).intersection(host_names)
                if claimed:
                    raise StoreRefused(
                        f"host {min(claimed)!r} already belongs to service {service.name!r}"
                    )
            self._db.table("services").insert(
                {
                    "name": name,
                    "hosts": json.dumps(list(host_names)),
                    "layout": layout,
                    "upstream": upstream,
                    "created_at": created_at,
                }
            )
        return ServiceRecord(name, host_names, layout, upstream)

    def remove_service(self, name: str) -> ServiceRecord:
        """Unregister a service; refused while a token not deleted has it in its scope."""
        with self._writing("write"):
            service = self._load_services().get(name)
            if service is None:
                raise StoreRefused(f"no service named {name!r}")
            holders = [
                row[0]
                for row in self._db.execute(
                    "SELECT DISTINCT tokens.name FROM tokens, json_each(tokens.scope)"
                    " WHERE tokens.revoked_at IS NULL AND json_each.value = ?"
                    " ORDER BY tokens.name",
                    (name,),
                )
            ]
            if holders:
                raise StoreRefused(
                    f"service {name!r} is in the scope of token(s)"
                    f" {', '.join(repr(holder) for holder in holders)}:"
                    " re-scope or delete them first"
                )
            self._db.execute("DELETE FROM services WHERE name = ?", (name,))
        return service

    def list_services(self) -> tuple[ServiceRecord, ...]:
        """The services by name; the very same tuple while nothing was committed, so a caller
        can tell a change by identity."""
        self._cached_services()
        return self._service_list

    def service_for_host(self, host: str) -> ServiceRecord | None:
        """The service answering to `host` (any case, port ignored), if one does."""
        services = self._cached_services()  # also refreshes the host index
        if not services:
            return None
        try:
            key = normalize_host(host)
        except StoreRefused:
            return None
        return self._services_by_host.get(key)

    def _cached_services(self) -> dict[str, ServiceRecord]:
        try:
            with self._lock:
                self._drop_cache_if_committed()
                if self._services is None:
                    self._services = self._load_services()
                    self._service_list = tuple(self._services.values())
                    self._services_by_host = {
                        host: service
                        for service in self._services.values()
                        for host in service.hosts
                    }
                return self._services
        except sqlite3.Error as error:
            raise self._unavailable(error, "read") from error

    def _load_services(self) -> dict[str, ServiceRecord]:
        rows = self._db.execute(_SELECT_SERVICES).fetchall()
        return {row[0]: _service_record(row) for row in rows}

    # --- console keys -------------------------------------------------------------------

    def create_console_key(
        self, name: str, digest: str, hint: str, now: datetime
    ) -> ConsoleKeyRecord:
        """Keep an admin key of the console by its hex SHA-256 `digest`, never its plaintext."""
        try:
            check_token_name(name)
        except ValueError:
            raise StoreRefused(
                f"invalid console key name {redact_tokens(name)!r}: use {TOKEN_NAME_RULE}"
            ) from None
        if _HEX_DIGEST.fullmatch(digest) is None:
            raise StoreRefused("a console key is kept as its hex SHA-256 digest")
        with self._writing("write"):
            if self._db.execute(
                "SELECT 1 FROM console_keys WHERE name = ? OR digest = ?", (name, digest)
            ).fetchall():
                raise StoreRefused(f"a console key named {name!r} already exists")
            self._db.execute(
                "INSERT INTO console_keys (name, digest, hint, created_at) VALUES (?, ?, ?, ?)",
                (name, digest, hint, _format_time(now)),
            )
        return ConsoleKeyRecord(name, hint, as_utc(now), digest)

    def list_console_keys(self) -> tuple[ConsoleKeyRecord, ...]:
        rows = self._read(
            "SELECT name, hint, created_at, digest FROM console_keys ORDER BY created_at, name"
        )
        return tuple(_console_key_record(row) for row in rows)

    def delete_console_key(self, name: str) -> ConsoleKeyRecord:
        """Remove an admin key: refused by the console from its next request on."""
        with self._writing("write"):
            rows = self._db.execute(
                "SELECT name, hint, created_at, digest FROM console_keys WHERE name = ?", (name,)
            ).fetchall()
            if not rows:
                raise StoreRefused(f"no console key named {name!r}")
            self._db.execute("DELETE FROM console_keys WHERE name = ?", (name,))
        return _console_key_record(rows[0])

    def console_key_named_by(self, digest: str) -> ConsoleKeyRecord | None:
        """The admin key whose hex SHA-256 is `digest`, read anew on every call."""
        rows = self._read(
            "SELECT name, hint, created_at, digest FROM console_keys WHERE digest = ?", (digest,)
        )
        return _console_key_record(rows[0]) if rows else None


def _console_key_record(row: Sequence[str]) -> ConsoleKeyRecord:
    name, hint, created_at, digest = row
    return ConsoleKeyRecord(name, hint, datetime.fromisoformat(created_at), digest)


def _remember[K, V](cache: dict[K, V], key: K, value: V, limit: int) -> V:
    """`value`, kept in `cache` under `key`; a full cache is emptied first (a new entry is
    as likely to be asked for again as any old one)."""
    if len(cache) >= limit:
        cache.clear()
    cache[key] = value
    return value


def _store_error(path: Path, error: sqlite3.Error, doing: str) -> StoreUnavailable:
    if getattr(error, "sqlite_errorname", "") in {"SQLITE_NOTADB", "SQLITE_CORRUPT"}:
        return StoreCorrupt(f"{str(path)!r} is not a usable token store: {error}")
    return StoreUnavailable(f"cannot {doing} the token store {str(path)!r}: {error}")


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL mode, waiting out another process that is switching the same new file.

    The switch needs the file to itself, and SQLite answers "database is locked" at once,
    without its busy timeout, when two connections make it together.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def _scope_json(scope: frozenset[str] | None) -> str | None:
    return None if scope is None else json.dumps(sorted(scope))


def _companion_paths(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """Size and modification time, which change whenever the file is written in place."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _remove_new_store(path: Path) -> None:
    """Remove a store this process has just created, and the -wal and -shm SQLite made."""
    for file in (path, *_companion_paths(path)):
        with suppress(OSError):
            file.unlink()


def _create_file(path: Path) -> bool:
    """Create an empty store file readable by its owner only; False when one exists (kept)."""
    wal, shm = _companion_paths(path)
    with suppress(FileNotFoundError):
        # A WAL with content is only legitimate next to its database: checked in this order, a
        # database missing afterwards means the WAL outlived a removed store, and SQLite would
        # read its pages as the new store's.
        if wal.stat().st_size > 0 and not path.exists():
            raise StoreUnavailable(
                f"cannot create the token store {str(path)!r}: {str(wal)!r} is left over from"
                f" a removed store; move it and {str(shm)!r} away first"
            )
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    except OSError as error:
        raise StoreUnavailable(
            f"cannot create the token store {str(path)!r}: {error.strerror}"
        ) from error
    os.close(descriptor)
    return True

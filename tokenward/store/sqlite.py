"""The SQLite token store: one file of token digests and services.

Rules the store keeps, whoever calls it:

- The plaintext of a token is never written: a row holds its SHA-256 digest and display hint.
- A token row is never removed: deleting sets `revoked_at`, and the row stays as the record
  that the digest was revoked (so the same token can never be imported again). Triggers in the
  database refuse to change a token's expiry, digest, kind or creation time, to un-delete it,
  or to DELETE its row, whoever opens the file (`schema`).
- Names are unique among tokens not deleted; a deleted token's name may be reused.
- A scope names registered services only, and a service stays while a token not deleted has it
  in its scope: removing it would leave a name that a later service of the same name inherits.
- `lookup` looks on every call whether anything was committed since it last read a token's row
  (`changes`: SQLite's wal-index header, read from a map of the -shm file) and reads the row
  again when anything was (one SELECT, one walk of one B-tree: a token's row is keyed on its
  digest's first 8 bytes), so a token created, deleted or re-scoped by another process counts
  from the very next call. Services are cached in memory and reloaded the same way.
- Last-used times are buffered by `note_used` and written by `flush_usage` in one transaction,
  so a request costs no write (`usage`).
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
  `lookup`, and closing that descriptor drops every POSIX lock the process holds on the file,
  those of another open store's SQLite connection included (https://sqlite.org/howtocorrupt.html).
  A store closes it only after its own connection, so a lone store is safe.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import sqlite_utils

from tokenward.core.lifetimes import as_utc
from tokenward.core.records import (
    ServiceRecord,
    TokenRecord,
)
from tokenward.core.tokens import (
    issue_token,
    kind_of,
    token_digest,
    token_hint,
)
from tokenward.store.changes import ChangeCheck, companion_paths, file_identity
from tokenward.store.errors import (
    DigestKeyTaken,
    StoreCorrupt,
    StoreError,
    StoreMissing,
    StoreRefused,
    StoreUnavailable,
)
from tokenward.store.rows import (
    COPY_CONSOLE_KEY_COLUMNS,
    COPY_SERVICE_COLUMNS,
    COPY_TOKEN_COLUMNS,
    SELECT_BY_DIGEST,
    SELECT_CONSOLE_KEYS,
    SELECT_FOR_LOOKUP,
    SELECT_LIVE_BY_NAME,
    SELECT_SERVICES,
    SELECT_TOKENS,
    ConsoleKeyRecord,
    StoreRows,
    console_key_record,
    decode_found,
    digest_key,
    format_time,
    key_if_digest,
    normalize_host,
    refuse_filled,
    scope_json,
    service_record,
    token_record,
)
from tokenward.store.rules import (
    check_console_key,
    check_importable,
    check_kind,
    check_new_token,
    check_scope,
    check_service_free,
    check_service_unused,
    new_service_hosts,
    refuse_not_live,
    refuse_stored_token,
    refuse_taken_name,
)
from tokenward.store.schema import SCHEMA_VERSION, migrate, schema_version
from tokenward.store.usage import UPDATE_LAST_USED, UsageBuffer, usage_updates

BUSY_TIMEOUT_SECONDS = 5.0
# Per connection, filled lazily: enough for the pages of tens of thousands of busy tokens.
PAGE_CACHE_KIB = 32 * 1024

# lookup's cache, by digest: the record, or None for a digest with no row. It holds, as the
# services read do, while nothing was committed (see `ChangeCheck.changed`).
_Found = TokenRecord | None
_FOUND_MAX = 4096
# lookup's digests of the tokens it was last given: SHA-256 is the dearest step of a lookup in
# a loaded proxy (its OpenSSL context is set up per call), and a client sends the same token on
# every request. The plaintexts stay in this process's memory, as each request's copy does
# anyway; the file holds digests only. A digest never goes stale, so only the size is bounded.
_DIGESTS_MAX = 4096


class TokenStore:
    """One open store file. Safe to share between threads (calls are serialized)."""

    def __init__(self, path: Path) -> None:
        """Open the existing file at `path`; use `TokenStore.open`."""
        self._path = path
        self._path_text = str(path)  # check_file's, once per request
        self._lock = threading.RLock()
        self._usage = UsageBuffer()
        self._services: dict[str, ServiceRecord] | None = None
        self._service_list: tuple[ServiceRecord, ...] = ()
        self._services_by_host: dict[str, ServiceRecord] = {}
        self._lost: StoreUnavailable | None = None  # why the connection was let go
        self._identity: tuple[int, int] | None = None
        self._stamp: tuple[int, int] | None = None  # size and mtime when last (re)opened
        self._found: dict[str, _Found] = {}
        self._digests: dict[str, str] = {}
        # `_changes` tells when `_found` and `_services` no longer hold: one per connection.
        self._conn, self._db, self._changes = self._connect()
        self._cursor = self._conn.cursor()  # lookup's: cheaper than a new cursor per call

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
                        self._lost is None
                        and self.holds(self._path)
                        and self._changes.doubt() is None
                    )
                except OSError:
                    in_place = False
                self._close_connection(checkpoint=in_place)

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
    ) -> tuple[sqlite3.Connection, sqlite_utils.Database, ChangeCheck]:
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
        # Taken after opening: setting up WAL mode or a schema writes to the file itself.
        stamp = _file_stamp(self._path)
        try:
            changes = ChangeCheck(conn, self._path)
        except StoreUnavailable:
            _close_without_checkpoint(conn)
            raise
        # Noted only now: after a failed reopen, `check_file` sees no file of its own and tries
        # again.
        self._identity = (status.st_dev, status.st_ino)
        self._stamp = stamp
        return conn, db, changes

    def holds(self, path: str | Path) -> bool:
        """Is the file at `path` the one this store has open?"""
        return self._identity is not None and file_identity(Path(path)) == self._identity

    def _close_connection(self, *, checkpoint: bool) -> None:
        """Close the connection, then its change check (in that order, see `ChangeCheck`).

        Without `checkpoint`, SQLite writes nothing and removes nothing on closing: for a
        connection whose files may no longer be the ones at the path (see the module's rules).
        """
        if checkpoint:
            self._conn.close()
        else:
            _close_without_checkpoint(self._conn)
        self._changes.close()

    def _migrate(
        self, conn: sqlite3.Connection, db: sqlite_utils.Database, initialize: bool
    ) -> None:
        version = schema_version(conn, self._path)
        if version == SCHEMA_VERSION:
            return
        if version == 0 and not initialize:
            # A file that took the store's place under a running process: an empty file that
            # a tool (cp) is still writing, or a store emptied by mistake. Writing a schema into
            # it would interleave with that writer or hide the loss behind unknown_token; only
            # the commands that add set up a store.
            raise StoreCorrupt(f"{str(self._path)!r} holds no token store")
        with self._transaction(conn, "set up"):
            migrate(conn, db, self._path)

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
                doubt = self._changes.doubt()
                if doubt is None:
                    return False
                # The connection no longer shares memory with the processes that open the file
                # now: a new one joins theirs, and until it does, every call fails closed.
                self._let_go(doubt, replaced=False)
        else:
            swapped = StoreUnavailable(f"the token store {shown!r} was replaced")
            self._let_go(swapped, replaced=True)
        with self._lock:
            self._conn, self._db, self._changes = self._connect(initialize=False)
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
                self._close_connection(checkpoint=False)
                self._identity = None
                if replaced:
                    self._changes.remove_files()
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

    @contextmanager
    def _writing(self, doing: str) -> Iterator[None]:
        # A write through files no longer at the path is lost, or clobbers the WAL frames that
        # another process appended through a -shm this connection does not share.
        self.check_file()
        with self._transaction(self._conn, doing):
            try:
                yield
            finally:
                # Its own commits change no data_version: what is cached is read anew.
                self._changes.forget()

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
        (see `ChangeCheck.changed`), so changes by other processes count from the very next
        call.
        """
        try:
            with self._lock:
                digest = self._digests.get(token)
                if digest is None:
                    digest = _remember(self._digests, token, token_digest(token), _DIGESTS_MAX)
                # Called here, not in a method of its own: no extra frame on every request.
                if self._changes.changed():
                    self._forget_reads()
                if digest in self._found:  # None too: known to have no row
                    return self._found[digest]
                return _remember(self._found, digest, self._read_found(digest), _FOUND_MAX)
        except sqlite3.Error as error:
            raise self._unavailable(error, "read") from error

    def export_rows(self) -> StoreRows:
        """Every row, for `store copy`: digests, never a token."""
        with self._lock:
            return StoreRows(
                tuple(self._read(f"SELECT {COPY_TOKEN_COLUMNS} FROM tokens ORDER BY id")),
                tuple(self._read(f"SELECT {COPY_SERVICE_COLUMNS} FROM services ORDER BY name")),
                tuple(
                    self._read(f"SELECT {COPY_CONSOLE_KEY_COLUMNS} FROM console_keys ORDER BY name")
                ),
            )

    def import_rows(self, rows: StoreRows) -> None:
        """Write `rows` (another store's `export_rows`) into this store, which must be empty."""
        with self._writing("write"):
            filled = self._db.execute(
                "SELECT (SELECT count(*) FROM tokens) + (SELECT count(*) FROM services)"
                " + (SELECT count(*) FROM console_keys)"
            ).fetchone()[0]
            if filled:
                raise refuse_filled(str(self._path))
            self._conn.executemany(
                f"INSERT INTO tokens (digest_key, {COPY_TOKEN_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(key_if_digest(str(row[4])), *row) for row in rows.tokens],
            )
            self._conn.executemany(
                f"INSERT INTO services ({COPY_SERVICE_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                rows.services,
            )
            self._conn.executemany(
                f"INSERT INTO console_keys ({COPY_CONSOLE_KEY_COLUMNS}) VALUES (?, ?, ?, ?)",
                rows.console_keys,
            )

    def serve(self) -> None:
        """Nothing to do: a lookup is one read of a local file, always made at once."""

    async def load(self, token: str) -> TokenRecord | None:
        return self.lookup(token)

    def _forget_reads(self) -> None:
        """Forget the tokens and services read: something was committed since."""
        self._found.clear()
        self._services = None

    def _read_found(self, digest: str) -> _Found:
        cursor = self._cursor
        if cursor.connection is not self._conn:  # reopened by check_file
            cursor = self._cursor = self._conn.cursor()
        rows = cursor.execute(SELECT_FOR_LOOKUP, (digest_key(digest), digest)).fetchall()
        return decode_found(rows, digest)

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
        check_kind(kind)
        token = issue_token(kind)
        try:
            return token, self._insert_token(token, name, expires_at, scope, owner, now)
        except DigestKeyTaken:
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
        check_importable(token, kind)
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
        check_new_token(name, owner, expires_at, now)
        digest = token_digest(token)
        key = digest_key(digest)
        with self._writing("write"):
            self._check_scope(scope)
            existing = self._db.execute(
                "SELECT name, revoked_at FROM tokens WHERE digest = ?", (digest,)
            ).fetchall()
            if existing:
                raise refuse_stored_token(token, *existing[0])
            if self._db.execute(SELECT_LIVE_BY_NAME, (name,)).fetchall():
                raise refuse_taken_name(name)
            if self._db.execute("SELECT 1 FROM tokens WHERE digest_key = ?", (key,)).fetchall():
                raise DigestKeyTaken(
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
                    "created_at": format_time(now),
                    "expires_at": None if expires_at is None else format_time(expires_at),
                    "scope": scope_json(scope),
                    "last_used_at": None,
                    "revoked_at": None,
                }
            )
            rows = self._db.execute(SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def _check_scope(self, scope: frozenset[str] | None) -> None:
        """Refuse a scope naming no service: inside the write, so the check cannot go stale."""
        if scope is not None:
            # Read whole first: a statement left unfinished would keep its read snapshot open.
            registered = [row[0] for row in self._db.execute("SELECT name FROM services")]
            check_scope(scope, registered)

    def list_tokens(self, include_deleted: bool = False) -> tuple[TokenRecord, ...]:
        where = "" if include_deleted else " WHERE revoked_at IS NULL"
        rows = self._read(f"{SELECT_TOKENS}{where} ORDER BY created_at, id")
        return tuple(token_record(row, row[9]) for row in rows)

    def get_token(self, name: str, include_deleted: bool = False) -> TokenRecord | None:
        """The token not deleted called `name`; else, with `include_deleted`, the last deleted."""
        rows = self._read(
            f"{SELECT_TOKENS} WHERE name = ? ORDER BY revoked_at IS NULL DESC, revoked_at DESC,"
            " id DESC LIMIT 1",
            (name,),
        )
        if not rows or (rows[0][8] is not None and not include_deleted):
            return None
        return token_record(rows[0], rows[0][9])

    def delete_token(self, name: str, now: datetime) -> TokenRecord:
        """Revoke the token called `name`; its row stays as the revocation record."""
        with self._writing("write"):
            digest = self._live_token(name).digest
            self._db.execute(
                "UPDATE tokens SET revoked_at = ? WHERE digest = ?", (format_time(now), digest)
            )
            rows = self._db.execute(SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def set_scope(self, name: str, scope: frozenset[str] | None) -> TokenRecord:
        """Change which services the token called `name` may reach (`None`: all)."""
        with self._writing("write"):
            digest = self._live_token(name).digest
            self._check_scope(scope)
            self._db.execute(
                "UPDATE tokens SET scope = ? WHERE digest = ?", (scope_json(scope), digest)
            )
            rows = self._db.execute(SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def _live_token(self, name: str) -> TokenRecord:
        rows = self._db.execute(SELECT_LIVE_BY_NAME, (name,)).fetchall()
        if rows:
            return token_record(rows[0], rows[0][9])
        deleted = self._db.execute(
            "SELECT 1 FROM tokens WHERE name = ? LIMIT 1", (name,)
        ).fetchall()
        raise refuse_not_live(name, bool(deleted))

    # --- last used ----------------------------------------------------------------------

    def note_used(self, used: str | TokenRecord, now: datetime) -> None:
        """Remember that a token (its digest or record) was used at `now`; no write here."""
        self._usage.note(used.digest if isinstance(used, TokenRecord) else used, now)

    def flush_usage(self) -> int:
        """Write the buffered last-used times in one transaction; returns how many tokens.

        A time only ever moves forward. On failure the times stay buffered for the next try.
        """
        pending = self._usage.take()
        if not pending:
            return 0
        try:
            with self._writing("write"):
                self._conn.executemany(UPDATE_LAST_USED, usage_updates(pending))
        except StoreError:
            self._usage.give_back(pending)
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
        host_names = new_service_hosts(name, layout, hosts, upstream)
        created_at = format_time(now if now is not None else datetime.now(UTC))
        with self._writing("write"):
            check_service_free(name, host_names, self._load_services())
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
            check_service_unused(name, holders)
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
                if self._changes.changed():
                    self._forget_reads()
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
        rows = self._db.execute(SELECT_SERVICES).fetchall()
        return {row[0]: service_record(row) for row in rows}

    # --- console keys -------------------------------------------------------------------

    def create_console_key(
        self, name: str, digest: str, hint: str, now: datetime
    ) -> ConsoleKeyRecord:
        """Keep an admin key of the console by its hex SHA-256 `digest`, never its plaintext."""
        check_console_key(name, digest)
        with self._writing("write"):
            if self._db.execute(
                "SELECT 1 FROM console_keys WHERE name = ? OR digest = ?", (name, digest)
            ).fetchall():
                raise StoreRefused(f"a console key named {name!r} already exists")
            self._db.execute(
                "INSERT INTO console_keys (name, digest, hint, created_at) VALUES (?, ?, ?, ?)",
                (name, digest, hint, format_time(now)),
            )
        return ConsoleKeyRecord(name, hint, as_utc(now), digest)

    def list_console_keys(self) -> tuple[ConsoleKeyRecord, ...]:
        rows = self._read(f"{SELECT_CONSOLE_KEYS} ORDER BY created_at, name")
        return tuple(console_key_record(row) for row in rows)

    def delete_console_key(self, name: str) -> ConsoleKeyRecord:
        """Remove an admin key: refused by the console from its next request on."""
        with self._writing("write"):
            rows = self._db.execute(f"{SELECT_CONSOLE_KEYS} WHERE name = ?", (name,)).fetchall()
            if not rows:
                raise StoreRefused(f"no console key named {name!r}")
            self._db.execute("DELETE FROM console_keys WHERE name = ?", (name,))
        return console_key_record(rows[0])

    def console_key_named_by(self, digest: str) -> ConsoleKeyRecord | None:
        """The admin key whose hex SHA-256 is `digest`, read anew on every call."""
        rows = self._read(f"{SELECT_CONSOLE_KEYS} WHERE digest = ?", (digest,))
        return console_key_record(rows[0]) if rows else None


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


def _close_without_checkpoint(conn: sqlite3.Connection) -> None:
    """Close `conn` with SQLite writing and removing nothing (see the module's rules)."""
    with suppress(sqlite3.Error):
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
    conn.close()


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


def _file_stamp(path: Path) -> tuple[int, int] | None:
    """Size and modification time, which change whenever the file is written in place."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


def _remove_new_store(path: Path) -> None:
    """Remove a store this process has just created, and the -wal and -shm SQLite made."""
    for file in (path, *companion_paths(path)):
        with suppress(OSError):
            file.unlink()


def _create_file(path: Path) -> bool:
    """Create an empty store file readable by its owner only; False when one exists (kept)."""
    wal, shm = companion_paths(path)
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

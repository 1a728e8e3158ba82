"""The PostgreSQL token store: the fleet's, behind the same `Store` interface and rules as the
SQLite one (the checks and refusals are `rules`', the rows `rows`', the schema `pg_schema`).

Two ways of being used:

- By the CLI, the console, explain: every call reads or writes the database (one connection,
  calls serialized); nothing is cached, so each answer is as fresh as the database.
- By a proxy, once it calls `serve()`: the store keeps what it read (token records, a digest
  with no row too, the services) and drops it when a notice says it changed (`notices`), so
  while nothing changes a `lookup` costs no round trip. A token not read yet is not read on
  the caller's thread: `lookup` raises `TokenNotLoaded`, and `await load(token)` reads it in
  the background (bounded: StoreUnavailable at once when too many reads wait). And no answer
  rests on knowledge older than `FRESH_SECONDS`: when the listener has not confirmed that it
  hears the notices within that time, `lookup` raises StoreUnavailable (the services last read
  stay in force); it reconnects by itself and drops everything it kept.

Writes take one advisory lock for their transaction, so writers queue as SQLite's
`BEGIN IMMEDIATE` makes them, and the checks made inside a write cannot go stale.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import psycopg
import psycopg.errors
from psycopg import sql as psql

from tokenward.core.lifetimes import as_utc
from tokenward.core.records import ServiceRecord, TokenRecord
from tokenward.core.tokens import issue_token, kind_of, token_digest, token_hint
from tokenward.store.errors import (
    StoreCorrupt,
    StoreError,
    StoreMissing,
    StoreRefused,
    StoreUnavailable,
    TokenNotLoaded,
    masked_url,
)
from tokenward.store.notices import NoticeListener, Work
from tokenward.store.pg_schema import (
    PG_MIGRATIONS,
    PG_SCHEMA_VERSION,
    WRITE_LOCK_KEY,
    grant_proxy_sql,
)
from tokenward.store.rows import (
    COPY_CONSOLE_KEY_COLUMNS,
    COPY_SERVICE_COLUMNS,
    COPY_TOKEN_COLUMNS,
    SELECT_BY_DIGEST,
    SELECT_CONSOLE_KEYS,
    SELECT_LIVE_BY_NAME,
    SELECT_SERVICES,
    SELECT_TOKENS,
    ConsoleKeyRecord,
    StoreRows,
    console_key_record,
    format_time,
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
from tokenward.store.usage import UsageBuffer, usage_updates

# No token is accepted on knowledge older than this (SPEC, "The store for a fleet").
FRESH_SECONDS = 1.0
# How long `serve` waits for the first confirmed hearing before it lets the proxy start.
FIRST_HEARING_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5
_FOUND_MAX = 65536
_DIGESTS_MAX = 4096
_MISSING = object()

UPDATE_LAST_USED = (
    "UPDATE tokens SET last_used_at = %(moment)s WHERE digest = %(digest)s"
    " AND (last_used_at IS NULL OR last_used_at < %(moment)s)"
)

type _Found = TokenRecord | None


def _pg(statement: str) -> str:
    """A statement of `rows` (SQLite's `?` placeholders) with psycopg's `%s`."""
    return statement.replace("?", "%s")


_SELECT_BY_DIGEST = _pg(SELECT_BY_DIGEST)
_SELECT_LIVE_BY_NAME = _pg(SELECT_LIVE_BY_NAME)


class PostgresStore:
    """One PostgreSQL database holding a token store. Safe to share between threads."""

    def __init__(self, url: str, *, create: bool) -> None:
        self._url = url
        self._shown = masked_url(url)
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self._usage = UsageBuffer()
        self._digests: dict[str, str] = {}
        # What a serving store keeps; written on the listener's thread only.
        self._found: dict[str, _Found] = {}
        # Digests read with a row: read again first-class after a notice (notices.submit).
        self._had_row: set[str] = set()
        self._generation = 0  # counts the notices: a read older than one is not kept
        self._service_list: tuple[ServiceRecord, ...] | None = None
        self._services_stale = False
        self._services_generation = 0  # counts the services' notices
        self._reloads: set[asyncio.Task[None]] = set()
        self._listener: NoticeListener | None = None
        self._setup(create)

    @classmethod
    def open(cls, url: str, *, create: bool) -> PostgresStore:
        return cls(url, create=create)

    @property
    def url(self) -> str:
        """The URL as given (with its password, if any): for connecting, never for showing."""
        return self._url

    @property
    def shown(self) -> str:
        """The URL with its password masked."""
        return self._shown

    def close(self) -> None:
        try:
            self.flush_usage()
        finally:
            if self._listener is not None:
                self._listener.stop()
                self._listener = None
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def holds(self, path: str | Path) -> bool:
        return str(path) == self._url

    def check_file(self) -> bool:
        """Nothing to look at: the listener watches the connection (see `serve`)."""
        return False

    # --- connection, schema, errors -----------------------------------------------------

    def _connection(self) -> psycopg.Connection[Any]:
        """The connection of the calls made on the caller's thread; a lost one is replaced."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(
                    self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                )
            except psycopg.Error as error:
                raise self._error(error, "open") from None
        return self._conn

    def _error(self, error: psycopg.Error, doing: str) -> StoreError:
        reason = _first_line(error).replace(self._url, self._shown)
        if isinstance(error, psycopg.errors.RaiseException | psycopg.errors.IntegrityError):
            return StoreRefused(reason)
        return StoreUnavailable(f"cannot {doing} the token store {self._shown!r}: {reason}")

    def _setup(self, create: bool) -> None:
        with self._lock:
            connection = self._connection()
            try:
                version = self._version(connection)
                if version == PG_SCHEMA_VERSION:
                    return
                if version is None and not create:
                    raise StoreMissing(f"no token store in {self._shown!r}")
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                    version = self._version(connection)  # another process may have done it
                    for migration in PG_MIGRATIONS[version or 0 :]:
                        connection.execute(migration.encode())
                    connection.execute(
                        "UPDATE schema_version SET version = %s", (PG_SCHEMA_VERSION,)
                    )
            except psycopg.Error as error:
                raise self._error(error, "set up") from None

    def _version(self, connection: psycopg.Connection[Any]) -> int | None:
        """The schema version of the database; None when it holds no store yet."""
        tables = connection.execute(
            "SELECT to_regclass('schema_version') IS NOT NULL, to_regclass('tokens') IS NOT NULL"
        ).fetchone()
        assert tables is not None
        has_version, has_tokens = tables
        if not has_version:
            if has_tokens:
                raise StoreCorrupt(f"{self._shown!r} holds a tokens table but no token store")
            return None
        row = connection.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        if version > PG_SCHEMA_VERSION:
            raise StoreUnavailable(
                f"the token store {self._shown!r} has schema version {version}; this"
                f" tokenward knows up to {PG_SCHEMA_VERSION}: upgrade tokenward"
            )
        return version

    def _read(self, statement: str, parameters: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._connection().execute(_pg(statement), parameters).fetchall()
            except psycopg.Error as error:
                raise self._error(error, "read") from None

    @contextmanager
    def _writing(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction holding the store's write lock; a failure leaves nothing behind."""
        with self._lock:
            connection = self._connection()
            try:
                with connection.transaction():
                    connection.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                    yield connection
            except psycopg.Error as error:
                raise self._error(error, "write") from None

    # --- copying, roles -----------------------------------------------------------------

    def export_rows(self) -> StoreRows:
        """Every row, for `store copy`: digests, never a token (one snapshot)."""
        with self._lock:
            connection = self._connection()
            try:
                with connection.transaction():
                    connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                    return StoreRows(
                        *(
                            tuple(connection.execute(statement).fetchall())
                            for statement in (
                                f"SELECT {COPY_TOKEN_COLUMNS} FROM tokens ORDER BY id",
                                f"SELECT {COPY_SERVICE_COLUMNS} FROM services ORDER BY name",
                                f"SELECT {COPY_CONSOLE_KEY_COLUMNS} FROM console_keys"
                                " ORDER BY name",
                            )
                        )
                    )
            except psycopg.Error as error:
                raise self._error(error, "read") from None

    def import_rows(self, rows: StoreRows) -> None:
        """Write `rows` (another store's `export_rows`) into this store, which must be empty."""
        with self._writing() as connection:
            filled = connection.execute(
                "SELECT EXISTS (SELECT 1 FROM tokens) OR EXISTS (SELECT 1 FROM services)"
                " OR EXISTS (SELECT 1 FROM console_keys)"
            ).fetchone()
            if filled is None or filled[0]:
                raise refuse_filled(self._shown)
            with connection.cursor() as cursor:
                for table, columns, count, table_rows in (
                    ("tokens", COPY_TOKEN_COLUMNS, 11, rows.tokens),
                    ("services", COPY_SERVICE_COLUMNS, 5, rows.services),
                    ("console_keys", COPY_CONSOLE_KEY_COLUMNS, 4, rows.console_keys),
                ):
                    if table_rows:
                        placeholders = ", ".join(["%s"] * count)
                        cursor.executemany(
                            f"INSERT INTO {table} ({columns}) VALUES ({placeholders})",
                            table_rows,
                        )

    def grant_proxy(self, role: str) -> None:
        """Let `role` (an existing role) do what a proxy does and nothing more: read tokens
        and services, record last use (`pg_schema.grant_proxy_sql`)."""
        with self._writing() as connection:
            quoted = psql.Identifier(role).as_string(connection)
            connection.execute(grant_proxy_sql(quoted).encode())

    # --- serving a proxy ----------------------------------------------------------------

    def serve(self) -> None:
        """Keep what is read, drop it on notices, never read on the caller's thread (see the
        module). Waits up to FIRST_HEARING_SECONDS for the first confirmed hearing."""
        if self._listener is not None:
            return
        self._listener = NoticeListener(self._url, self._shown, self._on_notice, self._on_reconnect)
        self._listener.start()
        deadline = time.monotonic() + FIRST_HEARING_SECONDS
        while not self._fresh() and time.monotonic() < deadline:
            time.sleep(0.01)

    def _fresh(self) -> bool:
        listener = self._listener
        return listener is not None and time.monotonic() - listener.heard_at <= FRESH_SECONDS

    def _stale(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"cannot confirm within {FRESH_SECONDS:g} s that the token store {self._shown!r}"
            " is heard: its changes may be missed"
        )

    def _on_notice(self, payload: str) -> None:
        """On the listener's thread: a commit changed a token (`t` digest) or the services."""
        self._generation += 1
        if payload.startswith("t"):
            self._found.pop(payload[1:], None)
            return
        if payload != "s":
            self._found.clear()  # a notice this tokenward does not know: drop everything
        self._services_generation += 1
        self._reload_services()

    async def _on_reconnect(self) -> None:
        """On the listener's thread, listening again: what was kept may have missed notices."""
        self._generation += 1
        self._found.clear()
        self._service_list = await self._read_services_async()

    def _reload_services(self) -> None:
        if self._services_stale or self._listener is None:
            return
        self._services_stale = True
        generation = self._services_generation

        async def reload() -> None:
            try:
                services = await self._read_services_async()
            except StoreError:
                return  # the listener reconnects and reads them then
            finally:
                self._services_stale = False
            if services != self._service_list:
                self._service_list = services
            if generation != self._services_generation:
                self._reload_services()  # changed again while being read

        task = asyncio.get_running_loop().create_task(reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _read_services_async(self) -> tuple[ServiceRecord, ...]:
        assert self._listener is not None
        future = self._listener.submit(_fetch(SELECT_SERVICES, ()))
        rows = await asyncio.wrap_future(future)
        return tuple(service_record(row) for row in rows)

    # --- tokens -------------------------------------------------------------------------

    def lookup(self, token: str) -> TokenRecord | None:
        digest = self._digests.get(token)
        if digest is None:
            if len(self._digests) >= _DIGESTS_MAX:
                self._digests.clear()
            digest = self._digests[token] = token_digest(token)
        if self._listener is None:
            return self._read_found(digest)
        if not self._fresh():
            raise self._stale()
        found = self._found.get(digest, _MISSING)
        if found is _MISSING:
            raise TokenNotLoaded(token)
        return found  # type: ignore[return-value]

    async def load(self, token: str) -> TokenRecord | None:
        """Read `token`'s record in the background (serving), keep it, and return it."""
        listener = self._listener
        if listener is None:
            return self.lookup(token)
        digest = token_digest(token)
        found: _Found = None
        generation = -1

        async def read(connection: psycopg.AsyncConnection[Any]) -> None:
            nonlocal found, generation
            generation = self._generation  # on the listener's thread, before the read
            cursor = await connection.execute(_SELECT_BY_DIGEST, (digest,))
            rows = await cursor.fetchall()
            found = token_record(rows[0], digest) if rows else None

        await asyncio.wrap_future(listener.submit(read, known=digest in self._had_row))
        if not self._fresh():
            raise self._stale()

        def keep() -> None:
            if found is not None:
                if len(self._had_row) >= _FOUND_MAX:
                    self._had_row.clear()
                self._had_row.add(digest)
            if generation == self._generation:
                if len(self._found) >= _FOUND_MAX:
                    self._found.clear()
                self._found[digest] = found

        listener.on_loop(keep)
        return found

    def _read_found(self, digest: str) -> _Found:
        rows = self._read(SELECT_BY_DIGEST, (digest,))
        return token_record(rows[0], digest) if rows else None

    def create_token(
        self,
        name: str,
        kind: str,
        expires_at: datetime | None,
        scope: frozenset[str] | None,
        owner: str,
        now: datetime,
    ) -> tuple[str, TokenRecord]:
        check_kind(kind)
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
        with self._writing() as connection:
            self._check_scope(connection, scope)
            existing = connection.execute(
                "SELECT name, revoked_at FROM tokens WHERE digest = %s", (digest,)
            ).fetchall()
            if existing:
                raise refuse_stored_token(token, *existing[0])
            if connection.execute(_SELECT_LIVE_BY_NAME, (name,)).fetchall():
                raise refuse_taken_name(name)
            connection.execute(
                "INSERT INTO tokens (digest, id, name, kind, owner, hint, created_at,"
                " expires_at, scope) SELECT %s, coalesce(max(id), 0) + 1, %s, %s, %s, %s, %s,"
                " %s, %s FROM tokens",
                (
                    digest,
                    name,
                    kind_of(token),
                    owner,
                    token_hint(token),
                    format_time(now),
                    None if expires_at is None else format_time(expires_at),
                    scope_json(scope),
                ),
            )
            rows = connection.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def _check_scope(
        self, connection: psycopg.Connection[Any], scope: frozenset[str] | None
    ) -> None:
        if scope is not None:
            names = connection.execute("SELECT name FROM services").fetchall()
            check_scope(scope, (row[0] for row in names))

    def list_tokens(self, include_deleted: bool = False) -> tuple[TokenRecord, ...]:
        where = "" if include_deleted else " WHERE revoked_at IS NULL"
        rows = self._read(f"{SELECT_TOKENS}{where} ORDER BY created_at, id")
        return tuple(token_record(row, row[9]) for row in rows)

    def get_token(self, name: str, include_deleted: bool = False) -> TokenRecord | None:
        rows = self._read(
            f"{SELECT_TOKENS} WHERE name = ? ORDER BY revoked_at IS NULL DESC,"
            " revoked_at DESC NULLS LAST, id DESC LIMIT 1",
            (name,),
        )
        if not rows or (rows[0][8] is not None and not include_deleted):
            return None
        return token_record(rows[0], rows[0][9])

    def delete_token(self, name: str, now: datetime) -> TokenRecord:
        with self._writing() as connection:
            digest = self._live_token(connection, name).digest
            connection.execute(
                "UPDATE tokens SET revoked_at = %s WHERE digest = %s", (format_time(now), digest)
            )
            rows = connection.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def set_scope(self, name: str, scope: frozenset[str] | None) -> TokenRecord:
        with self._writing() as connection:
            digest = self._live_token(connection, name).digest
            self._check_scope(connection, scope)
            connection.execute(
                "UPDATE tokens SET scope = %s WHERE digest = %s", (scope_json(scope), digest)
            )
            rows = connection.execute(_SELECT_BY_DIGEST, (digest,)).fetchall()
        return token_record(rows[0], digest)

    def _live_token(self, connection: psycopg.Connection[Any], name: str) -> TokenRecord:
        rows = connection.execute(_SELECT_LIVE_BY_NAME, (name,)).fetchall()
        if rows:
            return token_record(rows[0], rows[0][9])
        deleted = connection.execute(
            "SELECT 1 FROM tokens WHERE name = %s LIMIT 1", (name,)
        ).fetchall()
        raise refuse_not_live(name, bool(deleted))

    # --- last used ----------------------------------------------------------------------

    def note_used(self, used: str | TokenRecord, now: datetime) -> None:
        self._usage.note(used.digest if isinstance(used, TokenRecord) else used, now)

    def flush_usage(self) -> int:
        """Write the buffered last-used times in one transaction (serving: in the background,
        within the listener's deadline); on failure they stay buffered."""
        pending = self._usage.take()
        if not pending:
            return 0
        updates = usage_updates(pending)
        try:
            listener = self._listener
            if listener is not None:

                async def write(connection: psycopg.AsyncConnection[Any]) -> None:
                    async with connection.transaction(), connection.cursor() as cursor:
                        await cursor.executemany(UPDATE_LAST_USED, updates)

                listener.submit(write).result()
            else:
                with self._lock:
                    connection = self._connection()
                    try:
                        with connection.transaction(), connection.cursor() as cursor:
                            cursor.executemany(UPDATE_LAST_USED, updates)
                    except psycopg.Error as error:
                        raise self._error(error, "write") from None
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
        host_names = new_service_hosts(name, layout, hosts, upstream)
        created_at = format_time(now if now is not None else datetime.now(UTC))
        with self._writing() as connection:
            check_service_free(name, host_names, _services_of(connection))
            connection.execute(
                "INSERT INTO services (name, hosts, layout, upstream, created_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (name, _hosts_json(host_names), layout, upstream, created_at),
            )
        return ServiceRecord(name, host_names, layout, upstream)

    def remove_service(self, name: str) -> ServiceRecord:
        with self._writing() as connection:
            service = _services_of(connection).get(name)
            if service is None:
                raise StoreRefused(f"no service named {name!r}")
            holders = connection.execute(
                "SELECT DISTINCT name FROM tokens WHERE revoked_at IS NULL"
                " AND scope::jsonb ? %s ORDER BY name",
                (name,),
            ).fetchall()
            check_service_unused(name, [row[0] for row in holders])
            connection.execute("DELETE FROM services WHERE name = %s", (name,))
        return service

    def list_services(self) -> tuple[ServiceRecord, ...]:
        """The services by name; the very same tuple while nothing changed. Serving, the
        services last read (also while the store cannot be heard)."""
        if self._listener is not None:
            if self._service_list is None:
                raise self._stale()
            return self._service_list
        services = tuple(service_record(row) for row in self._read(SELECT_SERVICES))
        with self._lock:
            if services != self._service_list:
                self._service_list = services
            return self._service_list

    # --- console keys -------------------------------------------------------------------

    def create_console_key(
        self, name: str, digest: str, hint: str, now: datetime
    ) -> ConsoleKeyRecord:
        check_console_key(name, digest)
        with self._writing() as connection:
            if connection.execute(
                "SELECT 1 FROM console_keys WHERE name = %s OR digest = %s", (name, digest)
            ).fetchall():
                raise StoreRefused(f"a console key named {name!r} already exists")
            connection.execute(
                "INSERT INTO console_keys (name, digest, hint, created_at) VALUES (%s, %s, %s, %s)",
                (name, digest, hint, format_time(now)),
            )
        return ConsoleKeyRecord(name, hint, as_utc(now), digest)

    def list_console_keys(self) -> tuple[ConsoleKeyRecord, ...]:
        rows = self._read(f"{SELECT_CONSOLE_KEYS} ORDER BY created_at, name")
        return tuple(console_key_record(row) for row in rows)

    def delete_console_key(self, name: str) -> ConsoleKeyRecord:
        with self._writing() as connection:
            rows = connection.execute(f"{SELECT_CONSOLE_KEYS} WHERE name = %s", (name,)).fetchall()
            if not rows:
                raise StoreRefused(f"no console key named {name!r}")
            connection.execute("DELETE FROM console_keys WHERE name = %s", (name,))
        return console_key_record(rows[0])

    def console_key_named_by(self, digest: str) -> ConsoleKeyRecord | None:
        rows = self._read(f"{SELECT_CONSOLE_KEYS} WHERE digest = ?", (digest,))
        return console_key_record(rows[0]) if rows else None


def _fetch(statement: str, parameters: Sequence[object]) -> Work[list[tuple[Any, ...]]]:
    async def fetch(connection: psycopg.AsyncConnection[Any]) -> list[tuple[Any, ...]]:
        cursor = await connection.execute(_pg(statement), parameters)
        return await cursor.fetchall()

    return fetch


def _services_of(connection: psycopg.Connection[Any]) -> dict[str, ServiceRecord]:
    rows = connection.execute(SELECT_SERVICES).fetchall()
    return {row[0]: service_record(row) for row in rows}


def _hosts_json(host_names: Sequence[str]) -> str:
    return json.dumps(list(host_names))


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

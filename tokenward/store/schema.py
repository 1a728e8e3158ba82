"""The SQLite schema: tables, the triggers keeping the token rules, and the migrations.

The file's PRAGMA user_version counts the migrations applied; `SCHEMA_VERSION` is how many
this tokenward knows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlite_utils

from tokenward.store.errors import StoreCorrupt, StoreUnavailable
from tokenward.store.rows import key_if_digest

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


def create_schema_v1(db: sqlite_utils.Database) -> None:
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
    digest_key INTEGER PRIMARY KEY,  -- the digest's first 8 bytes, as lookup finds rows
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


def _key_tokens_by_digest_v2(db: sqlite_utils.Database) -> None:
    """Key the token rows on their digest, so that finding a token walks one B-tree, not two.

    In v1 a lookup walked the digest index to a rowid, then the table to the row. Now the rowid
    is `digest_key(digest)`, the digest's first 8 bytes, and the row holds the whole digest to
    compare. A table WITHOUT ROWID keyed on the digest would also take one walk, but its inner
    pages hold whole rows, so its tree is a level or two deeper: measured slower at a million.
    Every v1 rule is kept: the same unique indexes, the same triggers, plus one keeping the key.
    """
    db.conn.create_function("tokenward_digest_key", 1, key_if_digest, deterministic=True)
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


def _create_console_keys_v3(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE console_keys (name TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE,"
        " hint TEXT NOT NULL, created_at TEXT NOT NULL) STRICT"
    )


# Applied in order; the file's PRAGMA user_version counts the ones already applied.
MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    create_schema_v1,
    _key_tokens_by_digest_v2,
    _create_console_keys_v3,
)
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection, path: Path) -> int:
    """The version of the schema in the file at `path`; StoreUnavailable when it is newer."""
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreUnavailable(
            f"the token store {str(path)!r} has schema version {version}; this"
            f" tokenward knows up to {SCHEMA_VERSION}: upgrade tokenward"
        )
    return version


def migrate(conn: sqlite3.Connection, db: sqlite_utils.Database, path: Path) -> None:
    """Apply the migrations the file lacks; inside the caller's write transaction."""
    version = schema_version(conn, path)  # another process may have just done it
    if version == 0 and db.table_names():
        raise StoreCorrupt(f"{str(path)!r} is an SQLite file but no token store")
    for migration in MIGRATIONS[version:]:
        migration(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

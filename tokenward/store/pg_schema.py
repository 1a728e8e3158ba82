"""The PostgreSQL schema: tables, the triggers keeping the token rules and announcing changes,
and the migrations.

The `schema_version` table counts the migrations applied; `PG_SCHEMA_VERSION` is how many this
tokenward knows. Times are kept as the same fixed-width ISO 8601 text as in SQLite and scopes
and hosts as the same JSON text, so one set of row decoders (`rows`) serves both stores.

Every commit that changes a token or a service sends a notice on `NOTICE_CHANNEL` (a trigger,
so the CLI, the console and any proxy all do, and any other program writing to the tables):
`t` and the token's digest, or `s` for the services. A last-use update sends none: it changes
nothing a decision reads.
"""

from __future__ import annotations

NOTICE_CHANNEL = "tokenward"
# A key for pg_advisory_xact_lock: every write of the store holds it, so writers queue as
# SQLite's BEGIN IMMEDIATE makes them (the checks inside a write cannot go stale).
WRITE_LOCK_KEY = 0x746F6B656E77

_V1 = f"""
CREATE TABLE schema_version (version integer NOT NULL);
INSERT INTO schema_version VALUES (0);

CREATE TABLE tokens (
    digest text PRIMARY KEY CHECK (digest ~ '^[0-9a-f]{{64}}$'),
    id bigint NOT NULL UNIQUE,  -- creation order
    name text NOT NULL,
    kind text NOT NULL,
    owner text NOT NULL,
    hint text NOT NULL,
    created_at text NOT NULL,
    expires_at text,  -- NULL: never
    scope text,  -- JSON list of service names; NULL: all services
    last_used_at text,
    revoked_at text
);
CREATE INDEX tokens_name ON tokens (name);
CREATE UNIQUE INDEX tokens_live_name ON tokens (name) WHERE revoked_at IS NULL;

CREATE TABLE services (
    name text PRIMARY KEY,
    hosts text NOT NULL,  -- JSON list
    layout text NOT NULL,
    upstream text NOT NULL,
    created_at text NOT NULL
);

CREATE TABLE console_keys (
    name text PRIMARY KEY,
    digest text NOT NULL UNIQUE,
    hint text NOT NULL,
    created_at text NOT NULL
);

-- The token rules, kept by the database itself, whoever writes.
CREATE FUNCTION tokens_keep_rules() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' OR TG_OP = 'TRUNCATE' THEN
        RAISE EXCEPTION 'token rows are kept as revocation records';
    END IF;
    IF NEW.expires_at IS DISTINCT FROM OLD.expires_at THEN
        RAISE EXCEPTION 'expiry can never be changed';
    END IF;
    IF NEW.digest IS DISTINCT FROM OLD.digest THEN
        RAISE EXCEPTION 'the digest of a token can never be changed';
    END IF;
    IF NEW.kind IS DISTINCT FROM OLD.kind THEN
        RAISE EXCEPTION 'the kind of a token can never be changed';
    END IF;
    IF NEW.created_at IS DISTINCT FROM OLD.created_at THEN
        RAISE EXCEPTION 'the creation time of a token can never be changed';
    END IF;
    IF OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at THEN
        RAISE EXCEPTION 'a deleted token stays deleted';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER tokens_rules BEFORE UPDATE OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_keep_rules();
CREATE TRIGGER tokens_rows_kept BEFORE TRUNCATE ON tokens
    FOR EACH STATEMENT EXECUTE FUNCTION tokens_keep_rules();

-- Changes announced to every proxy at commit (NOTIFY is delivered on commit only).
CREATE FUNCTION tokens_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{NOTICE_CHANNEL}', 't' || NEW.digest);
    RETURN NULL;
END $$;
CREATE TRIGGER tokens_announce_insert AFTER INSERT ON tokens
    FOR EACH ROW EXECUTE FUNCTION tokens_announce();
CREATE TRIGGER tokens_announce_update AFTER UPDATE ON tokens
    FOR EACH ROW WHEN (
        OLD.name IS DISTINCT FROM NEW.name OR OLD.owner IS DISTINCT FROM NEW.owner
        OR OLD.hint IS DISTINCT FROM NEW.hint OR OLD.scope IS DISTINCT FROM NEW.scope
        OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
    ) EXECUTE FUNCTION tokens_announce();
CREATE FUNCTION services_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('{NOTICE_CHANNEL}', 's');
    RETURN NULL;
END $$;
CREATE TRIGGER services_announce AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON services
    FOR EACH STATEMENT EXECUTE FUNCTION services_announce();
"""

# Applied in order; `schema_version` counts the ones already applied.
PG_MIGRATIONS: tuple[str, ...] = (_V1,)
PG_SCHEMA_VERSION = len(PG_MIGRATIONS)


def grant_proxy_sql(role: str) -> str:
    """What a proxy's role may do, nothing more: read tokens and services, record last use.
    `role` is quoted by the caller (psycopg.sql.Identifier)."""
    return (
        f"GRANT USAGE ON SCHEMA public TO {role};"
        f" GRANT SELECT ON schema_version, services TO {role};"
        f" GRANT SELECT ON tokens TO {role};"
        f" GRANT UPDATE (last_used_at) ON tokens TO {role};"
    )

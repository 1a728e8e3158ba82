"""The PostgreSQL store's own ways (tests/test_store.py runs the interface on it too): the
database keeping the rules, the schema version, the proxy's role, the changes pushed by
NOTIFY, and failing closed when the notices can no longer be heard. Real servers throughout
(fixtures/postgres.py)."""

from __future__ import annotations

import asyncio
import inspect
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import httpx
import psycopg
import psycopg.errors
import pytest
from click.testing import CliRunner, Result

from tokenward.cli import main
from tokenward.core.records import TokenRecord
from tokenward.core.tokens import issue_token
from tokenward.fixtures.postgres import (
    POSTGRES_MISSING_REASON,
    PostgresCluster,
    postgres_bin_dir,
    start_postgres,
)
from tokenward.fixtures.processes import (
    RunningProxy,
    RunningUpstream,
    create_console_key,
    free_port,
    start_console,
    start_proxy,
    wait_for,
)
from tokenward.proxy import ProxySettings
from tokenward.store import (
    PostgresStore,
    Store,
    StoreCorrupt,
    StoreMissing,
    StoreUnavailable,
    TokenNotLoaded,
    open_store,
)
from tokenward.store import notices as notices_module
from tokenward.store.pg_schema import PG_SCHEMA_VERSION

NOW = datetime(2030, 6, 15, 12, 0, tzinfo=UTC)
DEADLINE_SECONDS = 10.0


def known(store: PostgresStore, token: str) -> TokenRecord | None:
    """What a serving store answers for `token`, read in the background when not kept."""
    try:
        return store.lookup(token)
    except TokenNotLoaded:
        return asyncio.run(store.load(token))


def recovered(store: PostgresStore, token: str) -> TokenRecord | None:
    """The record once the store answers again (None while it fails closed)."""
    try:
        return known(store, token)
    except StoreUnavailable:
        return None


def unavailable(store: PostgresStore, token: str) -> bool | None:
    """True once `lookup` fails closed (None while it still answers)."""
    try:
        known(store, token)
    except StoreUnavailable:
        return True
    return None


@pytest.fixture
def store(postgres_url: str) -> Iterator[PostgresStore]:
    with PostgresStore.open(postgres_url, create=True) as opened:
        opened.add_service("rpc", "generic", None, "http://127.0.0.1:1", NOW)
        yield opened


def test_the_postgresql_store_is_a_store(store: PostgresStore) -> None:
    typed: Store = store  # mypy proves that PostgresStore satisfies Store
    assert typed is store
    members = [
        name
        for name, value in vars(Store).items()
        if inspect.isfunction(value) and name != "__init__"  # Protocol's own
    ]
    assert {"lookup", "load", "serve", "export_rows"} <= set(members)
    for name in members:
        assert inspect.signature(getattr(PostgresStore, name)) == inspect.signature(
            getattr(Store, name)
        ), name


def test_the_database_refuses_to_change_what_is_immutable(
    store: PostgresStore, postgres_url: str
) -> None:
    token, record = store.create_token("alice", "pat", NOW + timedelta(days=9), None, "", NOW)
    store.create_token("bob", "pat", None, None, "", NOW)
    store.delete_token("bob", NOW)
    refused = {
        "UPDATE tokens SET expires_at = NULL WHERE name = 'alice'": "expiry",
        "UPDATE tokens SET digest = repeat('0', 64) WHERE name = 'alice'": "digest",
        "UPDATE tokens SET kind = 'sat' WHERE name = 'alice'": "kind",
        "UPDATE tokens SET created_at = 'x' WHERE name = 'alice'": "creation time",
        "UPDATE tokens SET revoked_at = NULL WHERE name = 'bob'": "stays deleted",
        "DELETE FROM tokens WHERE name = 'bob'": "kept as revocation records",
        "TRUNCATE tokens": "kept as revocation records",
    }
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        for statement, words in refused.items():
            with pytest.raises(psycopg.errors.RaiseException, match=words):
                raw.execute(statement.encode())
        raw.execute("UPDATE tokens SET scope = '[\"rpc\"]' WHERE name = 'alice'")  # allowed
        rows = raw.execute("SELECT name, digest FROM tokens ORDER BY id").fetchall()
    assert rows == [("alice", record.digest), ("bob", rows[1][1])]
    assert all(token not in str(row) for row in rows)  # digests only


def test_the_schema_version_is_recorded_and_a_newer_one_refused(
    store: PostgresStore, postgres_url: str
) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as raw:
        assert raw.execute("SELECT version FROM schema_version").fetchall() == [
            (PG_SCHEMA_VERSION,)
        ]
        raw.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(StoreUnavailable, match="upgrade tokenward"):
        open_store(postgres_url, create=False)


def test_a_database_without_a_store_is_refused_unless_created(
    postgres_cluster: PostgresCluster,
) -> None:
    empty = postgres_cluster.create_database(f"e_{uuid.uuid4().hex[:12]}")
    with pytest.raises(StoreMissing):
        open_store(empty, create=False)
    with psycopg.connect(empty, autocommit=True) as raw:
        raw.execute("CREATE TABLE tokens (n int)")
    with pytest.raises(StoreCorrupt):
        open_store(empty, create=True)


def test_a_serving_store_keeps_what_it_read_and_drops_it_on_a_notice(
    store: PostgresStore, postgres_url: str
) -> None:
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    with PostgresStore.open(postgres_url, create=False) as serving:
        serving.serve()
        with pytest.raises(TokenNotLoaded):
            serving.lookup(token)  # not read yet: never read on the caller's thread
        assert asyncio.run(serving.load(token)) is not None
        first = wait_for(lambda: _kept(serving, token), "the record kept")
        assert isinstance(first, TokenRecord)
        assert serving.lookup(token) is first  # kept: the same object, no read
        # A last use written by the proxy changes nothing a decision reads: no notice.
        serving.note_used(first, NOW)
        assert serving.flush_usage() == 1
        time.sleep(3 * notices_module.BEAT_SECONDS)
        assert serving.lookup(token) is first
        store.delete_token("alice", NOW)  # by another store, as the CLI would
        wait_for(lambda: _dropped(serving, token), "the record dropped on the delete's notice")
        revoked = known(serving, token)
        assert revoked is not None and revoked.revoked_at is not None


def test_a_token_created_after_a_miss_counts_once_noticed(
    store: PostgresStore, postgres_url: str
) -> None:
    with PostgresStore.open(postgres_url, create=False) as serving:
        serving.serve()
        token = "sm_pat_" + "a1" * 12
        assert known(serving, token) is None
        wait_for(lambda: _kept(serving, token, missing_too=True), "the miss kept")
        store.import_token(token, "late", None, None, "", NOW)
        found = wait_for(lambda: known(serving, token), "the new token")
        assert found.name == "late"


def test_services_changed_elsewhere_reach_a_serving_store(
    store: PostgresStore, postgres_url: str
) -> None:
    with PostgresStore.open(postgres_url, create=False) as serving:
        serving.serve()
        before = serving.list_services()
        assert [service.name for service in before] == ["rpc"]
        assert serving.list_services() is before  # the same tuple while nothing changed
        store.add_service("ipfs", "ipfs", None, "http://127.0.0.1:2", NOW)
        after = wait_for(
            lambda: serving.list_services() if serving.list_services() is not before else None,
            "the new service",
        )
        assert [service.name for service in after] == ["ipfs", "rpc"]


def test_the_proxy_role_reads_and_records_use_and_nothing_more(
    store: PostgresStore, postgres_cluster: PostgresCluster, postgres_url: str
) -> None:
    role = f"proxy_{uuid.uuid4().hex[:8]}"
    postgres_cluster.execute(f"CREATE ROLE {role} LOGIN")
    store.grant_proxy(role)
    token, _ = store.create_token("alice", "pat", None, None, "", NOW)
    as_proxy = postgres_url.replace("://tw@", f"://{role}@")
    with PostgresStore.open(as_proxy, create=False) as proxy_store:
        proxy_store.serve()
        record = known(proxy_store, token)
        assert record is not None and record.name == "alice"
        assert [service.name for service in proxy_store.list_services()] == ["rpc"]
        proxy_store.note_used(record, NOW)
        assert proxy_store.flush_usage() == 1
    with PostgresStore.open(as_proxy, create=False) as proxy_store:
        with pytest.raises(StoreUnavailable, match="permission denied"):
            proxy_store.create_token("mallory", "pat", None, None, "", NOW)
        with pytest.raises(StoreUnavailable, match="permission denied"):
            proxy_store.delete_token("alice", NOW)
        with pytest.raises(StoreUnavailable, match="permission denied"):
            proxy_store.add_service("x", "generic", None, "http://127.0.0.1:3", NOW)
    with psycopg.connect(as_proxy, autocommit=True) as raw:
        for statement in (
            "DELETE FROM tokens",
            "INSERT INTO tokens (digest, id, name, kind, owner, hint, created_at)"
            " VALUES (repeat('0', 64), 99, 'x', 'pat', '', 'x', 'x')",
            "UPDATE tokens SET revoked_at = NULL",
            "UPDATE tokens SET scope = NULL",
            "SELECT * FROM console_keys",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                raw.execute(statement.encode())
    used = store.get_token("alice")
    assert used is not None and used.last_used_at == NOW


# --- failing closed: a cluster of this module's own, killed, paused and restarted ----------


@pytest.fixture(scope="module")
def faulty_cluster() -> Iterator[PostgresCluster]:
    if postgres_bin_dir() is None:
        pytest.skip(POSTGRES_MISSING_REASON)
    with start_postgres() as cluster:
        yield cluster


@pytest.fixture
def serving(faulty_cluster: PostgresCluster) -> Iterator[tuple[PostgresStore, str]]:
    if faulty_cluster.postmaster_pid() is None:
        faulty_cluster.start()
    url = faulty_cluster.create_database(f"f_{uuid.uuid4().hex[:12]}")
    with PostgresStore.open(url, create=True) as writer:
        token, _ = writer.create_token("alice", "pat", None, None, "", NOW)
    with PostgresStore.open(url, create=False) as opened:
        opened.serve()
        assert known(opened, token) is not None
        yield opened, token
        faulty_cluster.kill(signal.SIGCONT)


def test_a_paused_server_fails_closed_then_recovers(
    serving: tuple[PostgresStore, str], faulty_cluster: PostgresCluster
) -> None:
    store, token = serving
    wait_for(lambda: _kept(store, token), "the record kept")
    faulty_cluster.kill(signal.SIGSTOP)
    try:
        assert store.lookup(token) is not None  # kept: answered without the database
        wait_for(lambda: unavailable(store, token), "failing closed while paused")
        assert store.list_services() == ()  # the services last read stay in force
    finally:
        faulty_cluster.kill(signal.SIGCONT)
    wait_for(lambda: recovered(store, token), "recovery once resumed")


def test_a_killed_server_fails_closed_and_a_restart_recovers(
    serving: tuple[PostgresStore, str], faulty_cluster: PostgresCluster
) -> None:
    store, token = serving
    faulty_cluster.kill(signal.SIGKILL)
    wait_for(lambda: unavailable(store, token), "failing closed once killed")
    faulty_cluster.start()
    wait_for(lambda: recovered(store, token), "recovery after the restart, without reopening")


def test_a_stopped_and_restarted_server_is_heard_again(
    serving: tuple[PostgresStore, str], faulty_cluster: PostgresCluster
) -> None:
    store, token = serving
    faulty_cluster.stop()
    wait_for(lambda: unavailable(store, token), "failing closed once stopped")
    faulty_cluster.start()
    wait_for(lambda: recovered(store, token), "recovery after the restart")


def test_reads_waiting_beyond_the_bound_are_refused_at_once(
    serving: tuple[PostgresStore, str], faulty_cluster: PostgresCluster
) -> None:
    store, _ = serving
    listener = store._listener
    assert listener is not None

    async def hang(connection: psycopg.AsyncConnection[object]) -> None:
        await asyncio.sleep(notices_module.DEADLINE_SECONDS / 2)

    waiting = [listener.submit(hang) for _ in range(notices_module.MAX_WAITING)]
    with pytest.raises(StoreUnavailable, match="too many reads"):
        listener.submit(hang)  # refused on the caller's thread: nothing was queued
    # A token known to have a row, read again after a notice, has places of its own.
    listener.submit(hang, known=True).result(timeout=DEADLINE_SECONDS)
    for future in waiting:
        future.result(timeout=DEADLINE_SECONDS)
    # Once they are done, a read is taken again.
    listener.submit(hang).result(timeout=DEADLINE_SECONDS)


def _kept(store: PostgresStore, token: str, missing_too: bool = False) -> TokenRecord | bool | None:
    try:
        record = store.lookup(token)
    except TokenNotLoaded:
        return None
    return True if record is None and missing_too else record


def _dropped(store: PostgresStore, token: str) -> bool | None:
    try:
        store.lookup(token)
    except TokenNotLoaded:
        return True
    return None


# --- the whole product on PostgreSQL: the CLI, the proxy (real mitmdump), the console ------

JSON_RPC = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'


def cli(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, catch_exceptions=False)


def via_proxy(proxy: RunningProxy, token: str) -> tuple[int, str | None]:
    """Status and error code of a JSON-RPC call through the proxy to the service `rpc`."""
    answer = proxy.request(
        "POST",
        "/",
        [("Host", "rpc.localhost"), ("Content-Type", "application/json"), ("x-auth-token", token)],
        JSON_RPC,
    )
    error = answer.json().get("error") if answer.status >= 400 else None
    return answer.status, error if isinstance(error, str) else None


def answered(
    proxy: RunningProxy, token: str, expected: tuple[int, str | None]
) -> tuple[int, str | None] | None:
    answer = via_proxy(proxy, token)
    return answer if answer == expected else None


def test_every_cli_command_works_on_a_postgresql_url(postgres_url: str) -> None:
    assert cli("services", "add", "rpc", "--layout", "generic", "--host", "rpc.localhost",
               "--upstream", "http://127.0.0.1:1", "--db", postgres_url).exit_code == 0  # fmt: skip
    created = cli("tokens", "create", "--name", "ci", "--expires", "7d", "--scope", "rpc",
                  "--db", postgres_url)  # fmt: skip
    assert created.exit_code == 0, created.output
    listed = cli("tokens", "list", "--json", "--db", postgres_url)
    assert [item["name"] for item in json.loads(listed.stdout)] == ["ci"]
    assert cli("tokens", "scope", "ci", "--scope", "all", "--db", postgres_url).exit_code == 0
    assert cli("tokens", "delete", "ci", "--yes", "--db", postgres_url).exit_code == 0
    listed = cli("tokens", "list", "--json", "--db", postgres_url)
    assert [item["state"] for item in json.loads(listed.stdout)] == ["revoked"]
    explained = cli("explain", "http://rpc.localhost/", "--db", postgres_url)
    assert explained.exit_code == 1 and "missing_token" in explained.stdout
    imported = "sm_pat_" + "d4" * 12
    assert cli("tokens", "import", "--name", "imp", "--expires", "never", "--db", postgres_url,
               stdin=imported).exit_code == 0  # fmt: skip
    header = f"x-auth-token: {imported}"
    explained = cli("explain", "http://rpc.localhost/", "-H", header, "--db", postgres_url)
    assert explained.exit_code == 0, explained.output
    assert cli("tokens", "delete", "imp", "--yes", "--db", postgres_url).exit_code == 0
    explained = cli("explain", "http://rpc.localhost/", "-H", header, "--db", postgres_url)
    assert explained.exit_code == 1 and "revoked_token" in explained.stdout
    assert cli("services", "list", "--db", postgres_url).exit_code == 0
    refused = cli("services", "remove", "nope", "--db", postgres_url)
    assert refused.exit_code == 1 and "no service named 'nope'" in refused.stderr


def test_tokenward_db_may_hold_a_postgresql_url(postgres_url: str) -> None:
    environment = {"TOKENWARD_DB": postgres_url}
    added = CliRunner(env=environment).invoke(
        main, ["services", "add", "rpc", "--layout", "generic", "--upstream", "http://n:1"]
    )
    assert added.exit_code == 0, added.output
    with PostgresStore.open(postgres_url, create=False) as opened:
        assert [service.name for service in opened.list_services()] == ["rpc"]


def test_the_cli_shows_a_url_without_its_password(postgres_cluster: PostgresCluster) -> None:
    url = f"postgresql://tw:s3cret@127.0.0.1:{free_port()}/nothing"
    result = cli("tokens", "list", "--db", url)
    assert result.exit_code == 1
    assert "postgresql://tw:***@127.0.0.1" in result.stderr and "s3cret" not in result.output


@pytest.mark.e2e
def test_a_proxy_on_postgresql_under_the_proxy_role_follows_every_change(
    postgres_cluster: PostgresCluster, postgres_url: str, upstream: RunningUpstream
) -> None:
    with PostgresStore.open(postgres_url, create=True) as admin:
        admin.add_service("rpc", "generic", ["rpc.localhost"], upstream.url, NOW)
        token, _ = admin.create_token("alice", "pat", None, None, "", datetime.now(UTC))
        role = f"proxy_{uuid.uuid4().hex[:8]}"
        postgres_cluster.execute(f"CREATE ROLE {role} LOGIN")
        assert cli("store", "grant-proxy", role, "--db", postgres_url).exit_code == 0
        as_proxy = postgres_url.replace("://tw@", f"://{role}@")
        settings = ProxySettings(db=as_proxy, upstream=upstream.url, listen_port=0)
        with start_proxy(settings) as proxy:
            assert via_proxy(proxy, token) == (200, None)
            assert via_proxy(proxy, "sm_pat_" + "b2" * 12) == (401, "unknown_token")
            # Created, re-scoped and deleted by the CLI: each counts once noticed.
            later = cli("tokens", "import", "--name", "bob", "--expires", "never",
                        "--db", postgres_url, stdin="sm_pat_" + "c3" * 12)  # fmt: skip
            assert later.exit_code == 0, later.output
            wait_for(lambda: answered(proxy, "sm_pat_" + "c3" * 12, (200, None)), "bob")
            admin.add_service("other", "generic", ["other.localhost"], upstream.url, NOW)
            admin.set_scope("alice", frozenset({"other"}))
            wait_for(lambda: answered(proxy, token, (403, "out_of_scope")), "the new scope")
            assert cli("tokens", "delete", "alice", "--yes", "--db", postgres_url).exit_code == 0
            wait_for(lambda: answered(proxy, token, (401, "revoked_token")), "the delete")
            assert "Traceback" not in proxy.output()
        used = admin.get_token("bob")
        assert used is not None and used.last_used_at is not None  # recorded under the role


@pytest.mark.e2e
def test_a_proxy_fails_closed_while_the_server_is_down_and_recovers_by_itself(
    faulty_cluster: PostgresCluster, upstream: RunningUpstream
) -> None:
    if faulty_cluster.postmaster_pid() is None:
        faulty_cluster.start()
    url = faulty_cluster.create_database(f"p_{uuid.uuid4().hex[:12]}")
    with PostgresStore.open(url, create=True) as admin:
        admin.add_service("rpc", "generic", ["rpc.localhost"], upstream.url, NOW)
        token, _ = admin.create_token("alice", "pat", None, None, "", datetime.now(UTC))
    with start_proxy(ProxySettings(db=url, upstream=upstream.url, listen_port=0)) as proxy:
        assert via_proxy(proxy, token) == (200, None)
        pause, resume = (
            partial(faulty_cluster.kill, signal.SIGSTOP),
            partial(faulty_cluster.kill, signal.SIGCONT),
        )
        crash = partial(faulty_cluster.kill, signal.SIGKILL)
        for fault, recover in (
            (pause, resume),
            (crash, faulty_cluster.start),
            (faulty_cluster.stop, faulty_cluster.start),
        ):
            fault()
            try:
                wait_for(lambda: answered(proxy, token, (503, "store_unavailable")), "503")
            finally:
                recover()
            wait_for(lambda: answered(proxy, token, (200, None)), "recovery without a restart")


@pytest.mark.e2e
def test_the_console_works_on_a_postgresql_store(
    postgres_url: str, upstream: RunningUpstream
) -> None:
    with PostgresStore.open(postgres_url, create=True) as admin:
        admin.add_service("rpc", "generic", ["rpc.localhost"], upstream.url, NOW)
    key = create_console_key(postgres_url, "ops")
    with start_console(postgres_url) as console:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=console.url, headers=headers, timeout=30) as api:
            created = api.post("/api/tokens", json={"name": "web", "expires": "never"})
            assert created.status_code == 201, created.text
            token = created.json()["token"]
            assert [item["name"] for item in api.get("/api/tokens").json()] == ["web"]
            settings = ProxySettings(db=postgres_url, upstream=upstream.url, listen_port=0)
            with start_proxy(settings) as proxy:
                assert via_proxy(proxy, token) == (200, None)
                deleted = api.delete("/api/tokens/web", params={"confirm": "DELETE"})
                assert deleted.status_code == 200
                wait_for(lambda: answered(proxy, token, (401, "revoked_token")), "the delete")
            assert api.get("/api/services").json()[0]["name"] == "rpc"


@pytest.mark.e2e
def test_conformance_self_passes_on_a_postgresql_store(postgres_url: str) -> None:
    program = Path(sys.executable).with_name("tokenward")
    done = subprocess.run(
        [str(program), "conformance", "--self", "--db", postgres_url, "--layout", "generic",
         "--examples", "20"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = subprocess.run(
        [str(program), "conformance", "--self", "--db", postgres_url],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert again.returncode == 1 and "needs an empty store" in again.stderr


@pytest.mark.e2e
def test_unknown_tokens_never_hold_up_a_known_one(
    faulty_cluster: PostgresCluster, upstream: RunningUpstream
) -> None:
    if faulty_cluster.postmaster_pid() is None:
        faulty_cluster.start()
    url = faulty_cluster.create_database(f"u_{uuid.uuid4().hex[:12]}")
    with PostgresStore.open(url, create=True) as admin:
        admin.add_service("rpc", "generic", ["rpc.localhost"], upstream.url, NOW)
        token, _ = admin.create_token("alice", "pat", None, None, "", datetime.now(UTC))
    with start_proxy(ProxySettings(db=url, upstream=upstream.url, listen_port=0)) as proxy:
        assert via_proxy(proxy, token) == (200, None)  # read once, kept from now on
        # A flood of tokens never seen, beside a client with the known one.
        with ThreadPoolExecutor(32) as pool:
            flood = [pool.submit(via_proxy, proxy, issue_token("pat")) for _ in range(400)]
            known_answers = [via_proxy(proxy, token) for _ in range(50)]
            flooded = {future.result() for future in flood}
        assert set(known_answers) == {(200, None)}
        assert (401, "unknown_token") in flooded
        assert flooded <= {(401, "unknown_token"), (503, "store_unavailable")}
        # A read that hangs (the server paused) holds up its own request only. Within the
        # second the proxy still trusts what it heard, the known token is answered while the
        # unknown one waits; a machine too slow to fit both in that second tries again.
        for _attempt in range(5):
            wait_for(lambda: answered(proxy, token, (200, None)), "heard again")
            faulty_cluster.kill(signal.SIGSTOP)
            try:
                waiting = pool_of_one().submit(via_proxy, proxy, issue_token("pat"))
                beside = via_proxy(proxy, token)
                still_waiting = not waiting.done()
                assert waiting.result(timeout=DEADLINE_SECONDS) == (503, "store_unavailable")
            finally:
                faulty_cluster.kill(signal.SIGCONT)
            if beside == (200, None):
                assert still_waiting
                break
            assert beside == (503, "store_unavailable")
        else:
            raise AssertionError("the known token was never answered beside a hung read")


def pool_of_one() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(1)

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from tokenward.cli import main
from tokenward.core.decision import token_error
from tokenward.core.tokens import is_token_shaped
from tokenward.core.verdicts import ErrorCode
from tokenward.store import TokenStore, open_store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cli.db"


def run(db: Path | None, *args: str, stdin: str | None = None) -> Result:
    """Invoke `tokenward ARGS [--db DB]` in-process; exceptions are never swallowed."""
    db_args = ["--db", str(db)] if db is not None else []
    return CliRunner().invoke(main, [*args, *db_args], input=stdin, catch_exceptions=False)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def refused(result: Result, message: str, exit_code: int = 1) -> Result:
    """A user error: one clear line on stderr, a non-zero exit, no traceback."""
    assert result.exit_code == exit_code, result.output
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.output
    return result


def create(db: Path, name: str, *options: str) -> str:
    result = ok(run(db, "tokens", "create", "--name", name, "--expires", "30d", *options))
    return result.stdout.strip()


def listed(db: Path) -> dict[str, dict[str, object]]:
    entries = json.loads(ok(run(db, "tokens", "list", "--json")).stdout)
    return {entry["name"]: entry for entry in entries}


def add_service(db: Path, name: str, *options: str) -> Result:
    return run(db, "services", "add", name, "--upstream", "http://127.0.0.1:8545", *options)


# --- tokens create ----------------------------------------------------------------------


def test_create_prints_the_token_alone_on_stdout(db: Path) -> None:
    result = ok(run(db, "tokens", "create", "--name", "alice", "--expires", "7d"))
    token = result.stdout.removesuffix("\n")
    assert "\n" not in token and is_token_shaped(token) and token.startswith("sm_pat_")
    assert "Shown once" in result.stderr and token not in result.stderr
    entry = listed(db)["alice"]
    assert (entry["kind"], entry["scope"], entry["state"]) == ("pat", "all", "live")
    with TokenStore.open(db, create=False) as store:
        assert store.get_token("alice") is not None


def test_create_as_json(db: Path) -> None:
    ok(add_service(db, "ipfs", "--layout", "ipfs"))
    result = ok(
        run(
            db,
            *("tokens", "create", "--name", "app", "--expires", "2099-12-31", "--kind", "aat"),
            *("--scope", "ipfs", "--owner", "Team A", "--json"),
        )
    )
    created = json.loads(result.stdout)
    assert is_token_shaped(created["token"]) and created["token"].startswith("sm_aat_")
    assert created["hint"] == f"sm_aat_…{created['token'][-4:]}"
    assert created["expires_at"] == "2100-01-01T00:00:00Z"
    assert (created["name"], created["kind"], created["scope"]) == ("app", "aat", ["ipfs"])
    assert created["owner"] == "Team A"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--expires", "2001-01-01"), "Error: expiry '2001-01-01' is in the past"),
        (("--expires", "tomorrow"), "Error: invalid expiry 'tomorrow'; expected 7d, 30d"),
        (("--expires", "7d", "--scope", "ipfs"), "scope names no registered service 'ipfs'"),
        (("--expires", "7d", "--scope", "IPFS"), "'IPFS' is not a service name"),
        (("--expires", "7d", "--owner", "a\nb"), "invalid owner 'a\\nb'"),
    ],
)
def test_create_refuses_bad_values(db: Path, options: tuple[str, ...], message: str) -> None:
    refused(run(db, "tokens", "create", "--name", "alice", *options), message)


def test_create_refuses_a_duplicate_name(db: Path) -> None:
    create(db, "alice")
    refused(
        run(db, "tokens", "create", "--name", "alice", "--expires", "7d"),
        "Error: a token named 'alice' already exists",
    )


def test_create_refuses_an_unknown_kind(db: Path) -> None:
    result = run(db, "tokens", "create", "--name", "a", "--expires", "7d", "--kind", "xat")
    refused(result, "Invalid value for '--kind': 'xat' is not one of 'pat', 'aat', 'sat'", 2)


def test_create_requires_an_expiry(db: Path) -> None:
    refused(run(db, "tokens", "create", "--name", "a"), "Missing option '--expires'", 2)


def test_bad_input_creates_no_store(db: Path) -> None:
    refused(run(db, "tokens", "create", "--name", "a b", "--expires", "7d"), "invalid token name")
    refused(run(db, "tokens", "create", "--name", "a", "--expires", "1d"), "invalid expiry '1d'")
    assert not db.exists()


# --- tokens import ----------------------------------------------------------------------


def test_import_reads_the_token_from_stdin(db: Path) -> None:
    token = "sm_sat_FromAnotherSystem1"
    result = ok(run(db, "tokens", "import", "--name", "svc", "--expires", "never", stdin=token))
    assert token not in result.output
    assert "sm_sat_…tem1" in result.stdout
    entry = listed(db)["svc"]
    assert (entry["kind"], entry["expires_at"]) == ("sat", None)
    with TokenStore.open(db, create=False) as store:
        assert token_error(store.lookup(token), None, datetime.now(UTC)) is None


def test_import_as_json(db: Path) -> None:
    token = "sm_pat_0123456789abcdef"
    args = ("tokens", "import", "--name", "p", "--expires", "90d", "--kind", "pat", "--json")
    imported = json.loads(ok(run(db, *args, stdin=token + "\n")).stdout)
    assert "token" not in imported and imported["hint"] == "sm_pat_…cdef"


@pytest.mark.parametrize(
    "value", ["sm_pat_tooShort", "sm_pat_0123456789abcdef-with-more", "password123456789"]
)
def test_import_refuses_a_value_that_is_not_a_token_without_echoing_it(
    db: Path, value: str
) -> None:
    result = run(db, "tokens", "import", "--name", "x", "--expires", "7d", stdin=value)
    refused(result, f"Error: the value on stdin is not a token (<{len(value)} characters>)")
    assert value not in result.output
    assert not db.exists()


def test_import_refuses_empty_stdin(db: Path) -> None:
    refused(run(db, "tokens", "import", "--name", "x", "--expires", "7d", stdin=""), "no token")


def test_import_refuses_a_kind_that_disagrees(db: Path) -> None:
    args = ("tokens", "import", "--name", "x", "--expires", "7d", "--kind", "aat")
    refused(
        run(db, *args, stdin="sm_pat_0123456789abcdef"),
        "Error: kind 'aat' disagrees with the token's prefix 'sm_pat_'",
    )


def test_import_refuses_a_token_already_stored(db: Path) -> None:
    token = create(db, "alice")
    refused(
        run(db, "tokens", "import", "--name", "again", "--expires", "7d", stdin=token),
        "is already in the store, as token 'alice'",
    )


# --- tokens list ------------------------------------------------------------------------


def test_list_shows_hints_and_states_never_tokens(db: Path) -> None:
    alice = create(db, "alice", "--owner", "Alice")
    bob = create(db, "bob")
    ok(run(db, "tokens", "delete", "bob", "--yes"))
    result = ok(run(db, "tokens", "list"))
    assert alice not in result.output and bob not in result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == [
        *("NAME", "KIND", "OWNER", "HINT", "CREATED", "EXPIRES", "SCOPE", "LAST", "USED"),
        "STATE",
    ]
    assert rows[0].split()[:4] == ["alice", "pat", "Alice", f"sm_pat_…{alice[-4:]}"]
    assert rows[0].split()[-1] == "live"
    assert rows[1].split()[-1] == "revoked"


def test_list_as_json(db: Path) -> None:
    token = create(db, "alice")
    result = ok(run(db, "tokens", "list", "--json"))
    assert token not in result.output
    (entry,) = json.loads(result.stdout)
    assert set(entry) == {
        *("name", "kind", "owner", "hint", "created_at", "expires_at", "scope"),
        *("last_used_at", "revoked_at", "state"),
    }


def test_list_of_an_empty_store(db: Path) -> None:
    TokenStore.open(db, create=True).close()
    assert ok(run(db, "tokens", "list")).stdout == ""
    assert json.loads(ok(run(db, "tokens", "list", "--json")).stdout) == []


# --- tokens delete ----------------------------------------------------------------------


def test_delete_asks_for_the_exact_word(db: Path) -> None:
    token = create(db, "alice")
    for answer in ("delete", "yes", "DELETE ", ""):
        result = run(db, "tokens", "delete", "alice", stdin=answer + "\n")
        refused(result, "not deleted: the confirmation must be exactly DELETE")
        assert "Type DELETE to confirm" in result.stderr
        assert listed(db)["alice"]["state"] == "live"
    result = ok(run(db, "tokens", "delete", "alice", stdin="DELETE\n"))
    assert f"deleted token 'alice' (sm_pat_…{token[-4:]})" in result.stdout
    assert listed(db)["alice"]["state"] == "revoked"
    with TokenStore.open(db, create=False) as store:
        assert token_error(store.lookup(token), None, datetime.now(UTC)) is ErrorCode.REVOKED_TOKEN


def test_delete_without_an_answer_aborts(db: Path) -> None:
    create(db, "alice")
    assert run(db, "tokens", "delete", "alice").exit_code != 0
    assert listed(db)["alice"]["state"] == "live"


def test_delete_yes_skips_the_prompt(db: Path) -> None:
    create(db, "alice")
    result = ok(run(db, "tokens", "delete", "alice", "--yes"))
    assert "Type DELETE" not in result.output
    assert listed(db)["alice"]["state"] == "revoked"


def test_delete_refuses_unknown_and_deleted_names(db: Path) -> None:
    create(db, "alice")
    refused(run(db, "tokens", "delete", "ghost", "--yes"), "Error: no token named 'ghost'")
    ok(run(db, "tokens", "delete", "alice", "--yes"))
    refused(run(db, "tokens", "delete", "alice"), "Error: token 'alice' is already deleted")


# --- tokens scope -----------------------------------------------------------------------


def test_scope_changes_what_a_token_reaches(db: Path) -> None:
    ok(add_service(db, "ipfs", "--layout", "ipfs"))
    ok(add_service(db, "avax", "--layout", "avalanche"))
    create(db, "alice")
    result = ok(run(db, "tokens", "scope", "alice", "--scope", "ipfs,avax"))
    assert "scope: avax,ipfs" in result.stdout
    assert listed(db)["alice"]["scope"] == ["avax", "ipfs"]
    ok(run(db, "tokens", "scope", "alice", "--scope", "all"))
    assert listed(db)["alice"]["scope"] == "all"


def test_scope_refusals(db: Path) -> None:
    create(db, "alice")
    refused(
        run(db, "tokens", "scope", "alice", "--scope", "base"),
        "Error: scope names no registered service 'base'; registered: none",
    )
    refused(run(db, "tokens", "scope", "ghost", "--scope", "all"), "no token named 'ghost'")
    refused(run(db, "tokens", "scope", "alice", "--scope", ""), "invalid scope ''")


# --- services ---------------------------------------------------------------------------


def test_services_add_list_and_remove(db: Path) -> None:
    result = ok(
        run(
            db,
            *("services", "add", "avax", "--layout", "avalanche", "--host", "Avax.Example:443"),
            *("--host", "rpc.example", "--upstream", "https://node.example:9650"),
        )
    )
    assert "added service 'avax'" in result.stdout
    ok(add_service(db, "ipfs", "--layout", "ipfs"))
    table = ok(run(db, "services", "list")).stdout.splitlines()
    assert table[0].split() == ["NAME", "LAYOUT", "HOSTS", "UPSTREAM"]
    assert table[1].split() == [
        *("avax", "avalanche", "avax.example,rpc.example", "https://node.example:9650"),
    ]
    services = json.loads(ok(run(db, "services", "list", "--json")).stdout)
    assert services[1] == {
        "name": "ipfs",
        "hosts": ["ipfs"],
        "layout": "ipfs",
        "upstream": "http://127.0.0.1:8545",
    }
    assert "removed service 'ipfs'" in ok(run(db, "services", "remove", "ipfs")).stdout
    assert [
        service["name"] for service in json.loads(run(db, "services", "list", "--json").stdout)
    ] == ["avax"]


def test_services_add_requires_an_upstream(db: Path) -> None:
    result = run(db, "services", "add", "ipfs", "--layout", "ipfs")
    refused(result, "missing option '--upstream': a service needs the URL of the node", 2)
    assert not db.exists()


@pytest.mark.parametrize(
    ("args", "message", "exit_code"),
    [
        (("--layout", "grpc"), "Invalid value for '--layout': 'grpc' is not one of", 2),
        (("--layout", "ipfs", "--upstream", "ftp://x"), "invalid upstream 'ftp://x'", 1),
        (("--layout", "ipfs", "--upstream", "localhost:5001"), "invalid upstream", 1),
        (("--layout", "ipfs", "--upstream", "http://x", "--host", "a b"), "invalid host 'a b'", 1),
    ],
)
def test_services_add_refuses_bad_values(
    db: Path, args: tuple[str, ...], message: str, exit_code: int
) -> None:
    refused(run(db, "services", "add", "ipfs", *args), message, exit_code)
    assert not db.exists()


def test_services_add_refuses_bad_names_duplicates_and_claimed_hosts(db: Path) -> None:
    refused(add_service(db, "All", "--layout", "ipfs"), "invalid service name 'All'")
    refused(add_service(db, "all", "--layout", "ipfs"), "'all' cannot be a service name")
    ok(add_service(db, "ipfs", "--layout", "ipfs", "--host", "node.example"))
    refused(add_service(db, "ipfs", "--layout", "generic"), "a service named 'ipfs' already exists")
    refused(
        add_service(db, "other", "--layout", "generic", "--host", "NODE.example:80"),
        "host 'node.example' already belongs to service 'ipfs'",
    )


def test_services_remove_refusals(db: Path) -> None:
    ok(add_service(db, "ipfs", "--layout", "ipfs"))
    create(db, "alice", "--scope", "ipfs")
    refused(
        run(db, "services", "remove", "ipfs"),
        "Error: service 'ipfs' is in the scope of token(s) 'alice': re-scope or delete them first",
    )
    refused(run(db, "services", "remove", "ghost"), "Error: no service named 'ghost'")


def test_services_list_of_an_empty_store(db: Path) -> None:
    TokenStore.open(db, create=True).close()
    result = ok(run(db, "services", "list"))
    assert result.stdout == "" and "no services" in result.stderr


# --- the store file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("tokens", "list"),
        ("services", "list"),
        ("tokens", "delete", "alice", "--yes"),
        ("tokens", "scope", "alice", "--scope", "all"),
        ("services", "remove", "ipfs"),
    ],
)
def test_commands_that_only_change_or_read_refuse_a_missing_store(
    db: Path, args: tuple[str, ...]
) -> None:
    refused(run(db, *args), f"Error: no token store at {str(db)!r} (choose one with --db")
    assert not db.exists()


def test_a_corrupt_store_is_one_clear_line(db: Path) -> None:
    db.write_bytes(b"this is not an SQLite database" * 50)
    result = refused(run(db, "tokens", "list"), "is not a usable token store")
    assert len(result.stderr.strip().splitlines()) == 1
    refused(run(db, "tokens", "create", "--name", "a", "--expires", "7d"), "not a usable")


def test_an_unreadable_store_is_one_clear_line(tmp_path: Path) -> None:
    refused(run(tmp_path, "tokens", "list"), "cannot open the token store")


def test_db_defaults_to_the_environment_then_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENWARD_DB", raising=False)
    ok(run(None, "tokens", "create", "--name", "here", "--expires", "7d"))
    assert list(listed(tmp_path / "tokenward.db")) == ["here"]
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("TOKENWARD_DB", str(elsewhere))
    ok(run(None, "tokens", "create", "--name", "there", "--expires", "7d"))
    assert list(listed(elsewhere)) == ["there"]
    assert list(listed(tmp_path / "tokenward.db")) == ["here"]


def test_the_console_script_creates_a_token(db: Path) -> None:
    script = Path(sys.executable).with_name("tokenward")
    environment = {**os.environ, "TOKENWARD_DB": str(db)}
    completed = subprocess.run(
        [str(script), "tokens", "create", "--name", "ops", "--expires", "never", "--kind", "sat"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    token = completed.stdout.removesuffix("\n")
    assert is_token_shaped(token) and token.startswith("sm_sat_")
    assert token not in completed.stderr and "Shown once" in completed.stderr
    with TokenStore.open(db, create=False) as store:
        record = store.get_token("ops")
        assert record is not None
        assert token_error(store.lookup(token), None, datetime.now(UTC)) is None


# --- --db before the command -----------------------------------------------------------


def test_db_given_before_the_command_is_the_commands_store(db: Path, tmp_path: Path) -> None:
    create(db, "ci")
    names = ok(CliRunner().invoke(main, ["--db", str(db), "tokens", "list", "--json"]))
    assert [entry["name"] for entry in json.loads(names.stdout)] == ["ci"]
    other = tmp_path / "other.db"
    create(other, "elsewhere")
    # The command's own --db wins over the one before it; the one before wins over the env.
    own = CliRunner().invoke(
        main, ["--db", str(db), "tokens", "list", "--json", "--db", str(other)]
    )
    assert [entry["name"] for entry in json.loads(ok(own).stdout)] == ["elsewhere"]
    env = {"TOKENWARD_DB": str(other)}
    before = CliRunner(env=env).invoke(main, ["--db", str(db), "tokens", "list", "--json"])
    assert [entry["name"] for entry in json.loads(ok(before).stdout)] == ["ci"]
    missing = CliRunner().invoke(main, ["--db", str(tmp_path / "none.db"), "tokens", "list"])
    refused(missing, "no token store at")


# --- proxy: options checked before anything starts ---------------------------------------


@pytest.mark.parametrize(
    ("options", "message", "exit_code"),
    [
        (("--upstream", "ftp://node:5001"), "invalid upstream 'ftp://node:5001'", 1),
        (("--upstream", "127.0.0.1:5001"), "invalid upstream '127.0.0.1:5001'", 1),
        (("--upstream", "http://node:99999"), "invalid upstream 'http://node:99999'", 1),
        (("--set", "ssl_insecure"), "'ssl_insecure' is not NAME=VALUE", 2),
        (("--set", "=true"), "'=true' is not NAME=VALUE", 2),
        (("--web-port", "9000"), "--web-host and --web-port need --web", 2),
    ],
)
def test_proxy_refuses_bad_options_quoting_them(
    db: Path, options: tuple[str, ...], message: str, exit_code: int
) -> None:
    ok(add_service(db, "node", "--layout", "generic"))
    refused(run(db, "proxy", *options), message, exit_code)


# --- tokenward store copy ------------------------------------------------------------------


def fill_every_kind(location: str) -> list[str]:
    """A store with every kind of token (with and without expiry, scoped and not, deleted,
    used), services and a console key; the plaintexts."""
    now = datetime.now(UTC)
    tokens: list[str] = []
    with open_store(location, create=True) as store:
        store.add_service("rpc", "generic", ["rpc.localhost", "rpc2.localhost"], "http://n:1")
        store.add_service("ipfs", "ipfs", None, "https://n:2")
        for index, kind in enumerate(("pat", "aat", "sat")):
            for expires, scope in (
                (None, None),
                (now + timedelta(days=7), None),
                (None, frozenset({"rpc"})),
                (now + timedelta(days=1), frozenset({"rpc", "ipfs"})),
            ):
                name = f"{kind}-{len(tokens)}"
                token, record = store.create_token(name, kind, expires, scope, f"o{index}", now)
                tokens.append(token)
                if len(tokens) % 2 == 0:
                    store.note_used(record, now + timedelta(seconds=len(tokens)))
                if len(tokens) % 3 == 0:
                    store.delete_token(name, now)
        store.flush_usage()
        store.create_console_key("ops", "ab" * 32, "tw_ck_…abcd", now)
    return tokens


def test_store_copy_goes_both_ways_and_keeps_everything(tmp_path: Path, postgres_url: str) -> None:
    origin = str(tmp_path / "origin.db")
    tokens = fill_every_kind(origin)
    back = str(tmp_path / "back.db")
    copied = ok(run(None, "store", "copy", "--from", origin, "--to", postgres_url))
    assert "copied 12 token(s), 2 service(s) and 1 console key(s)" in copied.stdout
    ok(run(None, "store", "copy", "--from", postgres_url, "--to", back))
    with (
        open_store(origin, create=False) as a,
        open_store(postgres_url, create=False) as b,
        open_store(back, create=False) as c,
    ):
        rows = a.export_rows()
        records = a.list_tokens(include_deleted=True)
        assert b.export_rows() == rows == c.export_rows()
        for store in (b, c):
            assert store.list_tokens(include_deleted=True) == records
            assert store.list_services() == a.list_services()
            assert store.list_console_keys() == a.list_console_keys()
            assert [store.lookup(token) for token in tokens] == [
                a.lookup(token) for token in tokens
            ]
    states = {(r.kind, r.expires_at is None, r.scope is None) for r in records}
    assert len(states) == 12 and any(r.revoked_at for r in records)
    assert any(r.last_used_at for r in records)
    # Digests only: no plaintext anywhere in either copy.
    assert all(token.encode() not in Path(back).read_bytes() for token in tokens)
    dumped = str(rows)
    assert all(token not in dumped for token in tokens)


def test_store_copy_refuses_a_destination_that_is_not_empty(
    tmp_path: Path, postgres_url: str
) -> None:
    origin = str(tmp_path / "origin.db")
    fill_every_kind(origin)
    ok(run(None, "store", "copy", "--from", origin, "--to", postgres_url))
    refused(
        run(None, "store", "copy", "--from", origin, "--to", postgres_url),
        "is not empty: a copy goes into an empty store only",
    )
    refused(
        run(None, "store", "copy", "--from", postgres_url, "--to", origin),
        "is not empty: a copy goes into an empty store only",
    )
    refused(
        run(None, "store", "copy", "--from", str(tmp_path / "none.db"), "--to", postgres_url),
        "no token store",
    )


def test_grant_proxy_needs_a_postgresql_store(db: Path) -> None:
    ok(run(db, "services", "add", "rpc", "--layout", "generic", "--upstream", "http://n:1"))
    refused(run(db, "store", "grant-proxy", "proxy"), "roles are PostgreSQL's")

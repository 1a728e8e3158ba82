"""`tokenward console`: the API and the page on a real server process, a real store and proxy.

The console runs as `tokenward console` (uvicorn) on loopback; requests go over real sockets
(httpx, raw sockets for oversized bodies). Its admin keys are made with the CLI, as an operator
would. What a token created or deleted there does is checked at a running `tokenward proxy`.
The API is fuzzed from its own OpenAPI document with schemathesis (its CLI, as a user runs it).
The browser tests are in tests/test_console_browser.py, the leak checks in tests/test_secrets.py.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlite_utils

from tokenward import store as store_module
from tokenward.console.keys import console_key_digest, is_console_key_shaped
from tokenward.core.decision import token_error
from tokenward.core.verdicts import ErrorCode
from tokenward.fixtures.processes import (
    RunningConsole,
    RunningProxy,
    RunningUpstream,
    create_console_key,
    peak_resident_kib,
    start_console,
    start_proxy,
)
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

TOKENWARD = str(Path(sys.executable).with_name("tokenward"))
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
JSON_RPC = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'
MIB = 1 << 20
_NAME_NUMBERS = itertools.count(1)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{next(_NAME_NUMBERS)}"


def cli(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWARD, *arguments], input=stdin, capture_output=True, text=True, timeout=60
    )


def tokens_via_proxy(proxy: RunningProxy, token: str) -> tuple[int, str | None]:
    """Status and error code of a JSON-RPC call through the proxy to the service `rpc`."""
    answer = proxy.request(
        "POST",
        "/",
        [("Host", "rpc.localhost"), ("Content-Type", "application/json"), ("x-auth-token", token)],
        JSON_RPC,
    )
    error = answer.json().get("error") if answer.status >= 400 else None
    return answer.status, error if isinstance(error, str) else None


# --------------------------------------------------------------------------- the store


def test_a_version_2_store_gains_the_console_keys_table_and_keeps_its_tokens(
    tmp_path: Path,
) -> None:
    db = tmp_path / "v2.db"
    conn = sqlite3.connect(db)
    database = sqlite_utils.Database(conn)
    for migration in store_module.MIGRATIONS[:2]:
        migration(database)
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    now = datetime.now(UTC)
    with TokenStore.open(db, create=False) as opened:
        token, _ = opened.create_token("kept", "pat", None, None, "", now)
        key = opened.create_console_key("admin", console_key_digest("twk_" + "a" * 48), "h", now)
        assert opened.console_key_named_by(key.digest) == key
        assert [record.name for record in opened.list_console_keys()] == ["admin"]
        # A console key is no token: the gateway's lookup never finds it.
        assert token_error(opened.lookup("twk_" + "a" * 48), None, now) is ErrorCode.UNKNOWN_TOKEN
        assert token_error(opened.lookup(token), None, now) is None
    with sqlite3.connect(db) as check:
        assert check.execute("PRAGMA user_version").fetchone()[0] == store_module.SCHEMA_VERSION


def test_console_key_names_follow_the_token_name_rule(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    digest = console_key_digest("twk_" + "b" * 48)
    with TokenStore.open(tmp_path / "k.db", create=True) as opened:
        for bad in ("", "a b", "x\x00", "sm_pat_" + "Q" * 32):
            with pytest.raises(store_module.StoreRefused) as refused:
                opened.create_console_key(bad, digest, "h", now)
            assert "Q" * 32 not in str(refused.value)
        opened.create_console_key("ops", digest, "h", now)
        with pytest.raises(store_module.StoreRefused, match="already exists"):
            opened.create_console_key("ops", console_key_digest("other"), "h", now)
        opened.delete_console_key("ops")
        assert opened.console_key_named_by(digest) is None
        with pytest.raises(store_module.StoreRefused, match="no console key"):
            opened.delete_console_key("ops")


# --------------------------------------------------------------------------- the CLI


@pytest.mark.e2e
def test_keys_are_shown_once_kept_as_digests_and_deleted_only_with_the_word(
    tmp_path: Path,
) -> None:
    db = tmp_path / "keys.db"
    created = cli("console", "keys", "create", "--name", "ops", "--db", str(db))
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert created.stdout == key + "\n" and is_console_key_shaped(key)
    assert "Shown once" in created.stderr and key not in created.stderr
    again = cli("console", "keys", "create", "--name", "ops", "--db", str(db))
    assert again.returncode == 1 and "already exists" in again.stderr

    listed = cli("console", "keys", "list", "--db", str(db))
    listed_json = cli("console", "keys", "list", "--json", "--db", str(db))
    assert listed.returncode == 0 and "ops" in listed.stdout and f"…{key[-4:]}" in listed.stdout
    assert [entry["name"] for entry in json.loads(listed_json.stdout)] == ["ops"]
    wrong = cli("console", "keys", "delete", "ops", "--db", str(db), stdin="delete\n")
    assert wrong.returncode == 1 and "not deleted" in wrong.stderr
    for output in (listed, listed_json, wrong):
        assert key not in output.stdout + output.stderr
    for file in tmp_path.glob("keys.db*"):
        assert key.encode() not in file.read_bytes()
    deleted = cli("console", "keys", "delete", "ops", "--db", str(db), stdin="DELETE\n")
    assert deleted.returncode == 0, deleted.stderr
    assert cli("console", "keys", "delete", "ops", "--yes", "--db", str(db)).returncode == 1


@pytest.mark.e2e
def test_a_listen_address_other_than_loopback_needs_tls_or_the_insecure_flag(
    tmp_path: Path,
) -> None:
    db = tmp_path / "c.db"
    create_console_key(db, "ops")
    refused = cli("console", "--db", str(db), "--listen-host", "0.0.0.0", "--listen-port", "0")
    assert refused.returncode == 2
    assert "--certfile" in refused.stderr and "--insecure-plain-http" in refused.stderr
    missing = cli("console", "--db", str(tmp_path / "none.db"), "--listen-port", "0")
    assert missing.returncode == 1 and "no token store" in missing.stderr


# --------------------------------------------------------------------------- one console


class Console:
    """A running console on a store, an admin key, and clients for its API and its page."""

    def __init__(self, process: RunningConsole, db: Path, key: str) -> None:
        self.process = process
        self.db = db
        self.key = key

    def api(self, key: str | None = "") -> httpx.Client:
        """A client of the API with this console's key (`None`: no Authorization at all)."""
        headers = {"Content-Type": "application/json"}
        if key is not None:
            headers["Authorization"] = f"Bearer {key or self.key}"
        return httpx.Client(base_url=self.process.url, headers=headers, timeout=30)

    def browser(self) -> httpx.Client:
        """A client of the page, not signed in; it keeps its cookies."""
        return httpx.Client(base_url=self.process.url, timeout=30, follow_redirects=False)


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    db = tmp_path_factory.mktemp("console") / "tokenward.db"
    key = create_console_key(db, "ops")
    with start_console(db) as process:
        yield Console(process, db, key)


@pytest.fixture(scope="module")
def rpc_service(console: Console, upstream: RunningUpstream) -> str:
    with console.api() as api:
        answer = api.post(
            "/api/services",
            json={
                "name": "rpc",
                "layout": "generic",
                "upstream": upstream.url,
                "hosts": ["rpc.localhost"],
            },
        )
    assert answer.status_code == 201, answer.text
    return "rpc"


@pytest.fixture(scope="module")
def proxy(console: Console, rpc_service: str, upstream: RunningUpstream) -> Iterator[RunningProxy]:
    settings = ProxySettings(db=console.db, upstream=upstream.url, listen_port=0)
    with start_proxy(settings) as running:
        yield running


def csrf_of(page: str) -> str:
    marker = 'name="csrf" value="'
    start = page.index(marker) + len(marker)
    return page[start : page.index('"', start)]


def sign_in(console: Console, client: httpx.Client) -> httpx.Response:
    form = client.get("/signin")
    return client.post("/signin", data={"key": console.key, "csrf": csrf_of(form.text)})


def assert_error(answer: httpx.Response, status: int, error: str | None = None) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error", "message"} and body["message"]
    if error is not None:
        assert body["error"] == error, body
    return dict(body)


# --------------------------------------------------------------------------- the API


@pytest.mark.e2e
def test_every_api_call_needs_the_key_and_learns_nothing_without_it(
    console: Console, tmp_path: Path
) -> None:
    other_db = tmp_path / "other.db"
    other_key = create_console_key(other_db, "elsewhere")  # valid, but not for this store
    calls = [
        ("GET", "/api/tokens", None),
        ("GET", "/api/openapi.json", None),
        ("POST", "/api/tokens", b'{"name": "x", "expires": "7d"}'),
        ("POST", "/api/tokens", b"{not json"),
        ("PATCH", "/api/tokens/x", b'{"expires": "7d"}'),
        ("DELETE", "/api/tokens/x?confirm=DELETE", None),
        ("GET", "/api/services", None),
        ("DELETE", "/api/services/rpc?confirm=DELETE", None),
        ("GET", "/api/nothing-here", None),
    ]
    keys: list[str | None] = [
        None,
        "Bearer",
        "Bearer twk_",
        f"Bearer {other_key}",
        f"Basic {console.key}",
        f"Bearer {console.key}x",
        # One hex digit changed (never to itself: that would be the key).
        f"bearer {console.key[:-1]}{'1' if console.key.endswith('0') else '0'}",
    ]
    bodies = set()
    for (method, path, body), authorization in itertools.product(calls, keys):
        headers = {} if authorization is None else {"Authorization": authorization}
        with httpx.Client(base_url=console.process.url, timeout=30) as client:
            answer = client.request(method, path, content=body, headers=headers)
        assert_error(answer, 401, "unauthorized")
        assert answer.headers["www-authenticate"].startswith("Bearer")
        bodies.add(answer.text)
    assert len(bodies) == 1, "every refused call gets the very same answer"
    with console.api() as api:
        assert api.get("/api/tokens").status_code == 200
        assert api.get("/api/openapi.json").json()["components"]["securitySchemes"]


@pytest.mark.e2e
def test_a_token_is_created_listed_rescoped_and_deleted_through_the_api(
    console: Console, rpc_service: str
) -> None:
    name = unique_name("api")
    with console.api() as api:
        created = api.post(
            "/api/tokens", json={"name": name, "expires": "30d", "kind": "aat", "scope": ["rpc"]}
        )
        assert created.status_code == 201, created.text
        token = created.json()["token"]
        assert token.startswith("sm_aat_") and created.json()["hint"] == f"sm_aat_…{token[-4:]}"
        expires_at = datetime.fromisoformat(created.json()["expires_at"])
        assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)

        listed = api.get("/api/tokens")
        assert token not in listed.text
        (entry,) = [item for item in listed.json() if item["name"] == name]
        assert entry["scope"] == ["rpc"] and entry["state"] == "live" and "token" not in entry

        rescoped = api.patch(f"/api/tokens/{name}", json={"scope": "all"})
        assert rescoped.status_code == 200 and rescoped.json()["scope"] == "all"
        assert token not in rescoped.text
        # An expiry is final, also beside a scope change: nothing of the call is applied.
        assert_error(
            api.patch(f"/api/tokens/{name}", json={"scope": ["rpc"], "expires": "never"}),
            409,
            "immutable",
        )
        assert_error(api.patch(f"/api/tokens/{name}", json={"expires": "7d"}), 409, "immutable")
        unchanged = api.patch(f"/api/tokens/{name}", json={})
        assert unchanged.json()["scope"] == "all"
        assert unchanged.json()["expires_at"] == created.json()["expires_at"]

        assert_error(api.delete(f"/api/tokens/{name}"), 400)
        assert_error(
            api.delete(f"/api/tokens/{name}", params={"confirm": "delete"}),
            400,
            "confirmation_required",
        )
        assert api.get("/api/tokens").json()[-1]["state"] == "live"
        deleted = api.delete(f"/api/tokens/{name}", params={"confirm": "DELETE"})
        assert deleted.status_code == 200 and deleted.json()["state"] == "revoked"
        assert_error(api.delete(f"/api/tokens/{name}", params={"confirm": "DELETE"}), 404)
        assert_error(api.patch(f"/api/tokens/{name}", json={"scope": "all"}), 404)
        # The name is free again once deleted.
        assert api.post("/api/tokens", json={"name": name, "expires": "7d"}).status_code == 201


@pytest.mark.e2e
def test_bad_input_gets_4xx_json_and_changes_nothing(console: Console, rpc_service: str) -> None:
    taken = unique_name("taken")
    pasted = "sm_pat_" + "Pasted0By1Mistake2Into3The4Form5"
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    with console.api() as api:
        assert api.post("/api/tokens", json={"name": taken, "expires": "7d"}).status_code == 201
        before = (api.get("/api/tokens").json(), api.get("/api/services").json())
        bad_tokens: list[tuple[object, int]] = [
            ({"name": 5, "expires": "7d"}, 400),
            ({"name": "n", "expires": 7}, 400),
            ({"name": "n", "expires": "7d", "kind": "xyz"}, 400),
            ({"name": "n", "expires": "7d", "scope": "rpc"}, 400),
            ({"name": "n", "expires": "7d", "scope": []}, 400),
            ({"name": "n", "expires": "7d", "scope": ["nosuch"]}, 400),
            ({"name": "n", "expires": "7d", "scope": [3]}, 400),
            ({"name": "n", "expires": "7d", "owner": "me"}, 400),
            ({"name": "n", "expires": "7d", pasted: 1}, 400),
            ({"name": "n"}, 400),
            ({"name": "n", "expires": "2020-01-01"}, 400),
            ({"name": "n", "expires": "2026-02-30"}, 400),
            ({"name": "n", "expires": "1d"}, 400),
            ({"name": "bell\x07", "expires": "7d"}, 400),
            ({"name": "line\nbreak", "expires": "7d"}, 400),
            ({"name": "\ud800", "expires": "7d"}, 400),
            ({"name": pasted, "expires": "7d"}, 400),
            ({"name": "x" * 65, "expires": "7d"}, 400),
            ({"name": taken, "expires": tomorrow}, 409),
            ([{"name": "n", "expires": "7d"}], 400),
            ("just a string", 400),
            (None, 400),
        ]
        for body, status in bad_tokens:
            answer = api.post("/api/tokens", content=json.dumps(body))
            assert_error(answer, status)
            assert pasted not in answer.text and "Mistake2Into" not in answer.text
        for raw in (b"", b"{", b"\xff\xfe", b'{"name": "n", "expires": "7d"', b"[" * 5000):
            assert_error(api.post("/api/tokens", content=raw), 400)
        for body in ({"scope": 1}, {"scope": ["nosuch"]}, {"name": "renamed"}, {"kind": "sat"}):
            assert_error(api.patch(f"/api/tokens/{taken}", content=json.dumps(body)), 400)
        bad_services: list[tuple[object, int]] = [
            ({"name": "all", "layout": "generic", "upstream": "http://127.0.0.1:1"}, 400),
            ({"name": "s", "layout": "nope", "upstream": "http://127.0.0.1:1"}, 400),
            ({"name": "s", "layout": "generic", "upstream": "ftp://x"}, 400),
            ({"name": "s", "layout": "generic", "upstream": "http://a", "hosts": ["a b"]}, 400),
            ({"name": "s", "layout": "generic", "upstream": "http://a", "extra": True}, 400),
            ({"name": "rpc", "layout": "generic", "upstream": "http://127.0.0.1:1"}, 409),
            (
                {"name": "s", "layout": "ipfs", "upstream": "http://a", "hosts": ["rpc.localhost"]},
                409,
            ),
        ]
        for body, status in bad_services:
            assert_error(api.post("/api/services", content=json.dumps(body)), status)
        assert_error(api.delete("/api/services/nosuch", params={"confirm": "DELETE"}), 404)
        assert_error(api.delete("/api/services/rpc", params={"confirm": "yes"}), 400)
        assert_error(api.put("/api/tokens", json={}), 405)
        assert (api.get("/api/tokens").json(), api.get("/api/services").json()) == before


def send_large_body(console: Console, path: str, *, chunked: bool) -> bytes:
    """POST 10 MB to `path` while reading the answer; what the console answered."""
    url = httpx.URL(console.process.url)
    assert url.port is not None
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {10 * MIB}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: console\r\nAuthorization: Bearer {console.key}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()
    with socket.create_connection((url.host, url.port), timeout=30) as connection:
        connection.sendall(head)

        def send_body() -> None:
            piece = b"[" * (64 * 1024)
            if chunked:
                piece = b"%x\r\n%s\r\n" % (len(piece), piece)
            try:
                for _ in range(160):  # 10 MB
                    connection.sendall(piece)
            except OSError:
                pass  # the console answered and closed: the rest is never read

        sender = threading.Thread(target=send_body, daemon=True)
        sender.start()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = connection.recv(65536)
            if not data:
                break
            answer += data
        with contextlib.suppress(OSError):  # already closed by the console
            connection.shutdown(socket.SHUT_RDWR)
        sender.join(30)
    return answer


@pytest.mark.e2e
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_10_mb_body_is_refused_without_being_held(console: Console, chunked: bool) -> None:
    peak_before = peak_resident_kib(console.process.pid)
    for path in ("/api/tokens", "/tokens", "/signin"):
        answer = send_large_body(console, path, chunked=chunked)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        assert b'"error":"body_too_large"' in answer
    # Three 10 MB bodies went by; the console's peak memory grew by less than one.
    assert peak_resident_kib(console.process.pid) - peak_before < 5 * 1024
    with console.api() as api:
        assert api.get("/api/tokens").status_code == 200


@pytest.mark.e2e
def test_one_store_for_the_console_the_cli_and_a_running_proxy(
    console: Console, proxy: RunningProxy
) -> None:
    name = unique_name("shared")
    with console.api() as api:
        token = api.post("/api/tokens", json={"name": name, "expires": "never"}).json()["token"]
        assert tokens_via_proxy(proxy, token) == (200, None)
        scoped = cli(
            "tokens", "create", "--name", f"{name}-cli", "--expires", "7d", "--db", str(console.db)
        )
        assert scoped.returncode == 0, scoped.stderr
        assert f"{name}-cli" in [item["name"] for item in api.get("/api/tokens").json()]
        removed = cli("tokens", "delete", f"{name}-cli", "--yes", "--db", str(console.db))
        assert removed.returncode == 0
        listed = {item["name"]: item["state"] for item in api.get("/api/tokens").json()}
        assert listed[f"{name}-cli"] == "revoked"
        deleted = api.delete(f"/api/tokens/{name}", params={"confirm": "DELETE"})
        assert deleted.status_code == 200
    assert tokens_via_proxy(proxy, token) == (401, "revoked_token")


@pytest.mark.e2e
def test_an_admin_key_is_never_valid_at_the_gateway(console: Console, proxy: RunningProxy) -> None:
    assert tokens_via_proxy(proxy, console.key) == (401, "malformed_token")
    answer = proxy.request("GET", f"/{console.key}", [("Host", "rpc.localhost")])
    assert answer.status == 401


# --------------------------------------------------------------------------- the page


@pytest.mark.e2e
def test_sign_in_sets_a_strict_http_only_session_that_sign_out_ends(console: Console) -> None:
    with console.browser() as client:
        assert client.get("/").headers["location"] == "/signin"
        form = client.get("/signin")
        assert form.status_code == 200 and "Admin key" in form.text
        signin_cookie = form.headers["set-cookie"]
        assert "HttpOnly" in signin_cookie and "SameSite=strict" in signin_cookie
        assert console.key not in form.text

        wrong = client.post("/signin", data={"key": console.key + "0", "csrf": csrf_of(form.text)})
        assert wrong.status_code == 401 and console.key not in wrong.text
        no_csrf = client.post("/signin", data={"key": console.key})
        assert no_csrf.status_code == 403

        signed = sign_in(console, client)
        assert signed.status_code == 303 and signed.headers["location"] == "/"
        cookies = signed.headers.get_list("set-cookie")
        (session_cookie,) = [c for c in cookies if c.startswith("tokenward_session=")]
        flags = {part.strip().lower() for part in session_cookie.split(";")[1:]}
        assert {"httponly", "samesite=strict", "path=/"} <= flags
        assert "secure" not in flags  # plain HTTP on loopback; set when served over TLS
        assert console.key not in session_cookie
        page = client.get("/")
        assert page.status_code == 200 and "Add a personal access token" in page.text
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        stolen = client.cookies["tokenward_session"]

        assert client.post("/signout", data={}).status_code == 403  # no CSRF token
        assert client.get("/").status_code == 200
        out = client.post("/signout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
    with console.browser() as replay:
        replay.cookies.set("tokenward_session", stolen)
        assert replay.get("/").status_code == 303, "a signed-out session is worth nothing"


@pytest.mark.e2e
def test_a_form_post_without_the_csrf_token_is_refused_and_changes_nothing(
    console: Console,
) -> None:
    name = unique_name("csrf")
    with console.browser() as client:
        sign_in(console, client)
        page = client.get("/tokens/new", params={"kind": "pat"})
        form = {"name": name, "kind": "pat", "expires": "7d", "scope": "all"}
        for csrf in (None, "", "forged", csrf_of(page.text)[:-1]):
            data = form if csrf is None else {**form, "csrf": csrf}
            refused = client.post("/tokens", data=data)
            assert refused.status_code == 403 and "sm_pat_" not in refused.text
        service = {"name": "csrf-svc", "layout": "generic", "upstream": "http://127.0.0.1:1"}
        assert client.post("/services", data=service).status_code == 403
        assert client.post("/signout", data={}).status_code == 403
    with console.api() as api:
        assert name not in api.get("/api/tokens").text
        assert "csrf-svc" not in api.get("/api/services").text
    # Another session's CSRF token is no good either.
    with console.browser() as first, console.browser() as second:
        sign_in(console, first)
        sign_in(console, second)
        other_csrf = csrf_of(first.get("/").text)
        assert second.post("/tokens", data={**form, "csrf": other_csrf}).status_code == 403


@pytest.mark.e2e
def test_the_page_shows_a_new_token_once_and_deletes_only_with_the_word(
    console: Console, rpc_service: str
) -> None:
    name = unique_name("page")
    with console.browser() as client:
        sign_in(console, client)
        csrf = csrf_of(client.get("/tokens/new", params={"kind": "sat"}).text)
        refused = client.post(
            "/tokens",
            data={"csrf": csrf, "name": "bad name", "kind": "sat", "expires": "7d"},
        )
        assert refused.status_code == 400 and "invalid token name" in refused.text
        created = client.post(
            "/tokens",
            data={
                "csrf": csrf,
                "name": name,
                "kind": "sat",
                "expires": "date",
                "expires_on": (datetime.now(UTC) + timedelta(days=3)).date().isoformat(),
                "scope": "chosen",
                "services": ["rpc"],
            },
        )
        assert created.status_code == 303
        slot = created.headers["location"]
        shown = client.get(slot)
        assert shown.status_code == 200 and shown.headers["cache-control"] == "no-store"
        assert "will not be able to see it again" in shown.text
        token = shown.text.split('id="new-token" readonly value="')[1].split('"')[0]
        assert token.startswith("sm_sat_")
        again = client.get(slot)
        assert again.status_code == 404 and token not in again.text
        listing = client.get("/")
        assert token not in listing.text and f"sm_sat_…{token[-4:]}" in listing.text

        dialog = client.get(f"/tokens/{name}/delete")
        assert "Type DELETE to confirm" in dialog.text
        wrong = client.post(f"/tokens/{name}/delete", data={"csrf": csrf, "confirm": "delete"})
        assert wrong.status_code == 400 and "not deleted" in wrong.text
        done = client.post(f"/tokens/{name}/delete", data={"csrf": csrf, "confirm": "DELETE"})
        assert done.status_code == 303
        assert f"Deleted token &#39;{name}&#39;" in client.get(done.headers["location"]).text
    with console.api() as api:
        states = {item["name"]: item for item in api.get("/api/tokens").json()}
        assert states[name]["state"] == "revoked" and states[name]["scope"] == ["rpc"]


@pytest.mark.e2e
def test_a_session_ends_when_its_key_is_deleted(console: Console) -> None:
    name = unique_name("temporary")
    key = create_console_key(console.db, name)
    with console.browser() as client:
        form = client.get("/signin")
        assert client.post("/signin", data={"key": key, "csrf": csrf_of(form.text)}).is_redirect
        assert client.get("/").status_code == 200
        with console.api(key) as api:
            assert api.get("/api/tokens").status_code == 200
            deleted = cli("console", "keys", "delete", name, "--yes", "--db", str(console.db))
            assert deleted.returncode == 0, deleted.stderr
            assert_error(api.get("/api/tokens"), 401)
        assert client.get("/").headers["location"] == "/signin"


# --------------------------------------------------------------------------- fuzzing


def run_schemathesis(
    console: Console, tmp_path: Path, *, with_key: bool
) -> tuple[dict[str, Any], list[int]]:
    """schemathesis against the console from its own OpenAPI document: its JSON report and the
    status of every answer it got."""
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    with console.api() as api:
        document = tmp_path / "openapi.json"
        document.write_text(api.get("/api/openapi.json").text)
    reports = tmp_path / "schemathesis"
    checks = (
        # Schema-valid data is still refused where a rule needs the store or the calendar
        # (a duplicate name, an unknown service, a past date, a name's characters).
        ["--checks", "all", "--exclude-checks", "positive_data_acceptance"]
        if with_key
        else [
            "--checks",
            "not_a_server_error,status_code_conformance,"
            "content_type_conformance,response_schema_conformance,response_headers_conformance",
        ]
    )
    command = [
        str(SCHEMATHESIS),
        "run",
        str(document),
        "--url",
        console.process.url.rstrip("/"),
        *checks,
        "--max-examples",
        "15",
        "--workers",
        "1",
        "--report",
        "json,har",
        "--report-dir",
        str(reports),
        "--request-timeout",
        "10",
    ]
    if with_key:
        command += ["--header", f"Authorization: Bearer {console.key}"]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    print(done.stdout[-4000:])
    (report_file,) = reports.glob("json-*.json")
    (har_file,) = reports.glob("har-*.json")
    report = json.loads(report_file.read_text())
    statuses = [
        entry["response"]["status"] for entry in json.loads(har_file.read_text())["log"]["entries"]
    ]
    assert done.returncode == 0, done.stdout[-6000:]
    return report, statuses


@pytest.mark.e2e
@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_schemathesis_finds_no_5xx_and_no_answer_off_the_schema(
    console: Console, rpc_service: str, tmp_path: Path, with_key: bool
) -> None:
    report, statuses = run_schemathesis(console, tmp_path, with_key=with_key)
    assert report["operations"]["tested"] == report["operations"]["total"] == 7
    assert report["failures"] == [] and report["errors"] == []
    assert statuses and all(status < 500 for status in statuses)
    if not with_key:
        assert set(statuses) == {401}
    print(
        f"schemathesis {'with' if with_key else 'without'} a key: {report['operations']['tested']}"
        f" operations, {report['test_cases']['generated']} cases, {len(statuses)} requests,"
        f" {len(report['failures'])} failures"
    )

"""No full token in any output, answer, log line, saved flow or store file.

Representative real runs are checked byte for byte: proxies in every forward mode (and observe
mode) with requests in every placement, rejections, a diverted upload, an unreachable upstream
and malformed requests, with mitmdump printing whole flows (`flow_detail: 4`) and saving them;
the CLI's every command; the demo. The only places a token may show are the line `tokens
create` prints and values the user passed in (never echoed here either). The store, its WAL and
its shared-memory file hold no plaintext and are created readable by their owner only.

The console (`tokenward console`) is checked the same way: every answer of its API and its
page, and its log lines, hold no token but the creation answers, and never its admin key.

The whole suite's output is scanned by `python -m bench.leakscan` (see README, Reliability);
`scan_text`, its scanner, is tested here.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from mitmproxy import http, io

from bench.leakscan import scan_text
from tokenward.fixtures.processes import (
    REPO_ROOT,
    HttpAnswer,
    RunningProxy,
    RunningUpstream,
    create_console_key,
    free_port,
    start_console,
    start_proxy,
)
from tokenward.log_redaction import redact_log_text
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

pytestmark = pytest.mark.e2e

# A whole token, also glued to a letter (repr's `\tsm_pat_…`): a hint has "…" where this needs
# sixteen letters or digits.
TOKEN_RUN = re.compile(r"sm_(?:pat|aat|sat)_[A-Za-z0-9]{16,}")
TOKENWARD = str(Path(sys.executable).with_name("tokenward"))
JSON_RPC = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'
RPC_FIELDS = [("Content-Type", "application/json")]
UNKNOWN = "sm_aat_" + "Unknown0Token1Never2Issued3Here4"
# The upstream echoes these back (their bodies are no JSON-RPC): its answer is its own doing,
# but the record of that answer must not keep the token.
ECHOED = ("header-name", "encoded-5", "encoded-6")
# mitmproxy answers these with its own 400 page, quoting what it refused, before any hook runs
# (README, "Where mitmproxy 12.3 does not let the addon act").
QUOTED_BACK = ("bad-request-0", "bad-request-1", "bad-content-length", "bad-transfer-encoding")


def utc_now() -> datetime:
    return datetime.now(UTC)


def json_rpc_with(value: str) -> bytes:
    return b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber", "params": ["%s"]}' % (
        value.encode()
    )


def percent_encoded(text: str, depth: int) -> str:
    """`text` with every character percent-encoded, then each escape's `%` again, `depth` deep."""
    encoded = "".join(f"%{ord(character):02X}" for character in text)
    for _ in range(depth - 1):
        encoded = encoded.replace("%", "%25")
    return encoded


def assert_no_token(text: str | bytes, where: str, tokens: Iterator[str] | list[str]) -> None:
    shown = text.decode("latin-1") if isinstance(text, bytes) else text
    for token in tokens:
        # Booleans, not the strings: a failing assert must not print the token it found.
        held, body_held = token in shown, token[7:] in shown
        assert not held, f"{where} holds a token ({token[:7]}…{token[-4:]})"
        assert not body_held, f"{where} holds the body of a token ({token[-4:]})"
    found = TOKEN_RUN.findall(shown)
    assert found == [], f"{where} holds token-shaped strings: {[t[:7] + '…' for t in found]}"


# --------------------------------------------------------------------------- proxy runs


@dataclass
class ProxyRun:
    """What one proxy run left behind: its output, its answers, its saved flows."""

    forward: str
    output: str = ""
    flows: bytes = b""
    flows_read: list[str] = field(default_factory=list)
    answers: list[tuple[str, HttpAnswer]] = field(default_factory=list)
    store_files: dict[str, bytes] = field(default_factory=dict)
    store_modes: dict[str, int] = field(default_factory=dict)


@dataclass
class Tokens:
    live: str
    revoked: str
    scoped: str

    def all(self) -> list[str]:
        return [self.live, self.revoked, self.scoped, UNKNOWN]


@pytest.fixture(scope="module")
def store(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> tuple[Path, Tokens]:
    db = tmp_path_factory.mktemp("secrets") / "tokenward.db"
    with TokenStore.open(db, create=True) as opened:
        opened.add_service("rpc", "generic", ("rpc.localhost",), upstream.url)
        opened.add_service("ipfs", "ipfs", ("ipfs.localhost",), upstream.url)
        opened.add_service(
            "dead", "generic", ("dead.localhost",), f"http://127.0.0.1:{free_port()}"
        )
        live, _ = opened.create_token("live", "pat", None, None, "", utc_now())
        revoked, _ = opened.create_token("revoked", "sat", None, None, "", utc_now())
        opened.delete_token("revoked", utc_now())
        scoped, _ = opened.create_token("scoped", "aat", None, frozenset({"ipfs"}), "", utc_now())
    return db, Tokens(live, revoked, scoped)


def mitmproxy_home(directory: Path) -> dict[str, str]:
    """A HOME whose mitmproxy config prints every flow whole: headers and bodies."""
    config = directory / ".mitmproxy"
    config.mkdir(parents=True, exist_ok=True)
    (config / "config.yaml").write_text("flow_detail: 4\n")
    return {"HOME": str(directory)}


def requests_of(tokens: Tokens) -> list[tuple[str, str, str, list[tuple[str, str]], bytes]]:
    """(what, method, target, fields, body): every placement, verdicts, faults."""
    live = tokens.live
    rpc = [("Host", "rpc.localhost"), *RPC_FIELDS]
    return [
        ("path", "POST", f"/rpc/{live}", rpc, JSON_RPC),
        ("path-escaped", "POST", f"/rpc/%73{live[1:]}", rpc, JSON_RPC),
        ("query", "POST", f"/rpc?token={live}", rpc, JSON_RPC),
        ("header", "POST", "/rpc", [*rpc, ("x-auth-token", live)], JSON_RPC),
        # The recording upstream echoes what it got unless it answers JSON-RPC or IPFS: in
        # modes that forward the token, an echo would be the upstream's doing, not a leak.
        (
            "ipfs-path",
            "POST",
            f"/{tokens.scoped}/api/v0/version",
            [("Host", "ipfs.localhost"), *RPC_FIELDS],
            JSON_RPC,
        ),
        ("out-of-scope", "POST", f"/rpc/{tokens.scoped}", rpc, JSON_RPC),
        ("revoked", "POST", "/rpc", [*rpc, ("x-auth-token", tokens.revoked)], JSON_RPC),
        ("unknown", "POST", f"/rpc?token={UNKNOWN}", rpc, JSON_RPC),
        ("misplaced", "POST", f"/a/{live}/b?q={UNKNOWN}", rpc, JSON_RPC),
        ("misplaced-encoded", "POST", f"/a/%2573{live[1:]}/b", rpc, JSON_RPC),
        ("ambiguous", "POST", f"/rpc/{live}", [*rpc, ("x-auth-token", UNKNOWN)], JSON_RPC),
        ("upload-diverted", "POST", f"/rpc?token={UNKNOWN}", rpc, b"x" * (2 << 20)),
        (
            "cors",
            "GET",
            f"/rpc/{UNKNOWN}",
            [("Host", "rpc.localhost"), ("Origin", "https://a")],
            b"",
        ),
        # A token in a header name (not the placement), in a body, and percent-encoded deeper
        # than tokenward decodes, beside a valid token that gets each forwarded.
        (
            "header-name",
            "POST",
            "/rpc",
            [*rpc, ("x-auth-token", live), (f"x-auth-token{live}", "1")],
            b"not json",
        ),
        # JSON-RPC calls, which the upstream answers without echoing.
        ("body", "POST", "/rpc", [*rpc, ("x-auth-token", live)], json_rpc_with(live)),
        (
            "body-encoded",
            "POST",
            "/rpc",
            [*rpc, ("x-auth-token", live)],
            json_rpc_with(percent_encoded(live, 2)),
        ),
        (
            "encoded-5",
            "POST",
            f"/a/{percent_encoded(live, 5)}/b?q={percent_encoded(live, 5)}",
            [*rpc, ("x-auth-token", live), ("x-other", percent_encoded(live, 5))],
            b"a=" + percent_encoded(live, 5).encode(),
        ),
        (
            "encoded-6",
            "POST",
            f"/a/{percent_encoded(live, 6)}/b",
            [*rpc, ("x-auth-token", live), ("x-other", percent_encoded(live, 6))],
            b"a=" + percent_encoded(live, 6).encode(),
        ),
        (
            "unreachable-upstream",
            "POST",
            f"/rpc/{live}",
            [("Host", "dead.localhost"), *RPC_FIELDS],
            JSON_RPC,
        ),
    ]


def bad_requests(tokens: Tokens) -> list[tuple[str, bytes]]:
    """Requests mitmproxy refuses itself, quoting what it refused in its log or its answer."""
    live = tokens.live.encode()
    post = b"POST /rpc HTTP/1.1\r\nHost: rpc.localhost\r\n"
    return [
        ("bad-request-0", b"GET /p %s HTTP/1.1\r\nHost: rpc.localhost\r\n\r\n" % live),
        ("bad-request-1", b"GET /p\t%s HTTP/1.1\r\nHost: rpc.localhost\r\n\r\n" % live),
        ("bad-request-2", b"CONNECT %s:443 HTTP/1.1\r\nHost: rpc.localhost\r\n\r\n" % live),
        ("bad-content-length", post + b"Content-Length: %s\r\n\r\n" % live),
        ("bad-transfer-encoding", post + b"Transfer-Encoding: %s\r\n\r\n" % live),
        ("bad-header-name", post + b"x-auth-token %s: 1\r\nContent-Length: 0\r\n\r\n" % live),
        (
            "framing-refused-after-the-head",
            post + b"Transfer-Encoding: chunked\r\nContent-Length: %s\r\n\r\n0\r\n\r\n" % live,
        ),
    ]


def send_bytes(proxy: RunningProxy, data: bytes) -> bytes:
    with socket.create_connection((proxy.host, proxy.port), timeout=10) as connection:
        connection.sendall(data)
        received = b""
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return received
            received += chunk


def store_snapshot(db: Path) -> tuple[dict[str, bytes], dict[str, int]]:
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    contents = {file.name: file.read_bytes() for file in files if file.exists()}
    modes = {file.name: stat.S_IMODE(file.stat().st_mode) for file in files if file.exists()}
    return contents, modes


@pytest.fixture(scope="module", params=["strip", "header", "query", "path", "keep", "observe"])
def proxy_run(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: RunningUpstream,
    store: tuple[Path, Tokens],
) -> ProxyRun:
    db, tokens = store
    kind: str = request.param
    directory = tmp_path_factory.mktemp(f"run-{kind}")
    flows = directory / "flows.mitm"
    settings = ProxySettings(
        db=db,
        upstream=upstream.url,
        listen_port=0,
        forward="strip" if kind == "observe" else kind,
        mode="observe" if kind == "observe" else "enforce",
        save_flows=flows,
    )
    run = ProxyRun(kind)
    with start_proxy(settings, env=mitmproxy_home(directory / "home")) as proxy:
        for what, method, target, fields, body in requests_of(tokens):
            run.answers.append((what, proxy.request(method, target, fields, body)))
        for what, data in bad_requests(tokens):
            run.answers.append((what, _raw_answer(send_bytes(proxy, data))))
        run.store_files, run.store_modes = store_snapshot(db)
        proxy.stop()
        run.output = proxy.output()
    run.flows = flows.read_bytes()
    run.flows_read = read_flows(flows)
    return run


def read_flows(path: Path) -> list[str]:
    """Each saved flow as mitmproxy reads it back: its state, and its bodies decoded."""
    shown: list[str] = []
    with path.open("rb") as file:
        for recorded in io.FlowReader(file).stream():
            assert isinstance(recorded, http.HTTPFlow)
            shown.append(repr(recorded.get_state()))
            for message in (recorded.request, recorded.response):
                if message is not None:
                    content = message.get_content(strict=False) or b""
                    shown.append(content.decode("latin-1"))
    return shown


def _raw_answer(data: bytes) -> HttpAnswer:
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return HttpAnswer(status, [], body)


def test_the_proxy_prints_no_token(proxy_run: ProxyRun, store: tuple[Path, Tokens]) -> None:
    _, tokens = store
    assert "sm_pat_…" in proxy_run.output, "the output shows hints: the right text was read"
    assert "Content-Type: application/json" in proxy_run.output or "content-type" in (
        proxy_run.output.lower()
    ), "flows are printed whole"
    assert_no_token(proxy_run.output, f"the {proxy_run.forward} proxy's output", tokens.all())


def test_saved_flows_hold_no_token(proxy_run: ProxyRun, store: tuple[Path, Tokens]) -> None:
    _, tokens = store
    assert b"rpc.localhost" in proxy_run.flows or b"/rpc" in proxy_run.flows
    assert_no_token(proxy_run.flows, f"the {proxy_run.forward} proxy's saved flows", tokens.all())


def test_saved_flows_read_back_hold_no_token(
    proxy_run: ProxyRun, store: tuple[Path, Tokens]
) -> None:
    _, tokens = store
    shown = "\n".join(proxy_run.flows_read)
    for what in ("x-auth-token", "not json", "x-auth-token sm_pat_…"):
        assert what in shown, f"the saved flows hold the flow with {what!r}"
    assert_no_token(shown, f"the {proxy_run.forward} proxy's flows read back", tokens.all())


def test_the_proxy_answers_hold_no_token(proxy_run: ProxyRun, store: tuple[Path, Tokens]) -> None:
    _, tokens = store
    statuses = {what: answer.status for what, answer in proxy_run.answers}
    enforcing = proxy_run.forward != "observe"
    assert statuses["path"] == statuses["header"] == statuses["query"] == 200
    assert statuses["unreachable-upstream"] == 502
    if enforcing:
        assert statuses["misplaced"] == 400 and statuses["upload-diverted"] == 401
    for what, answer in proxy_run.answers:
        if what in QUOTED_BACK:
            assert answer.status == 400
            continue
        if what in ECHOED:
            # The client gets the upstream's answer as it came; only its record is redacted.
            assert answer.status == 200, what
            depth = 0 if what == "header-name" else int(what[-1])
            echoed = tokens.live if depth == 0 else percent_encoded(tokens.live, depth)
            assert echoed.encode() in answer.body, what
            continue
        body = answer.body + repr(answer.headers).encode()
        assert_no_token(body, f"the answer to {what!r} ({proxy_run.forward})", tokens.all())


def test_the_store_files_hold_no_plaintext_and_are_private(
    proxy_run: ProxyRun, store: tuple[Path, Tokens]
) -> None:
    _, tokens = store
    assert "tokenward.db-wal" in proxy_run.store_files, "read while a proxy holds the store"
    for name, content in proxy_run.store_files.items():
        assert_no_token(content, name, tokens.all())
        assert proxy_run.store_modes[name] == 0o600, (name, oct(proxy_run.store_modes[name]))


# --------------------------------------------------------------------------- the CLI


def cli(
    *arguments: str, stdin: str | None = None, umask: int | None = None
) -> subprocess.CompletedProcess[str]:
    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run(
        [TOKENWARD, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=set_umask,
    )


def test_the_cli_shows_a_token_once_at_creation_and_never_again(tmp_path: Path) -> None:
    db = str(tmp_path / "cli.db")
    outputs: list[tuple[str, str]] = []

    def run(what: str, *arguments: str, stdin: str | None = None) -> str:
        done = cli(*arguments, "--db", db, stdin=stdin, umask=0o022)
        outputs.append((what, done.stdout + done.stderr))
        return done.stdout

    created = run("create", "tokens", "create", "--name", "ci", "--expires", "90d")
    token = created.strip()
    assert created == token + "\n" and TOKEN_RUN.fullmatch(token)
    as_json = run(
        "create --json",
        "tokens",
        "create",
        "--name",
        "app",
        "--expires",
        "never",
        "--kind",
        "aat",
        "--json",
    )
    json_token = re.search(r'"token": "(sm_aat_[A-Za-z0-9]+)"', as_json)
    assert json_token is not None
    other = json_token.group(1)
    imported = "sm_sat_" + "Imported0From1Elsewhere2"
    run(
        "services add",
        "services",
        "add",
        "ipfs",
        "--layout",
        "ipfs",
        "--upstream",
        "http://127.0.0.1:5001",
    )
    run("import", "tokens", "import", "--name", "svc", "--expires", "never", stdin=imported)
    run("import again", "tokens", "import", "--name", "svc2", "--expires", "never", stdin=imported)
    run(
        "import not a token",
        "tokens",
        "import",
        "--name",
        "x",
        "--expires",
        "never",
        stdin=token + "x",
    )
    run("name like a token", "tokens", "create", "--name", token, "--expires", "90d")
    run(
        "owner like a token",
        "tokens",
        "create",
        "--name",
        "o",
        "--expires",
        "90d",
        "--owner",
        other,
    )
    run("list", "tokens", "list")
    run("list --json", "tokens", "list", "--json")
    run("scope", "tokens", "scope", "ci", "--scope", "ipfs")
    run("explain", "explain", f"http://ipfs/{token}/api/v0/version?token={other}")
    run("explain header", "explain", "http://ipfs/api/v0/version", "-H", f"x-auth-token: {token}")
    run("delete", "tokens", "delete", "ci", stdin="DELETE\n")
    run("delete wrong word", "tokens", "delete", "app", stdin=token + "\n")
    run("services list", "services", "list")

    # The create commands print the token they made, once; nothing else prints any token.
    (_, first_output), (_, second_output) = outputs[:2]
    assert first_output.count(token) == 1 and second_output.count(other) == 1
    for what, output in outputs[2:]:
        assert_no_token(output, f"`tokens {what}`", [token, other, imported])

    # The store: no plaintext, readable by its owner only (created with umask 022).
    files = sorted(tmp_path.glob("cli.db*"))
    assert [file.name for file in files] == ["cli.db"], "the CLI leaves no -wal or -shm behind"
    for file in files:
        assert_no_token(file.read_bytes(), file.name, [token, other, imported])
        assert stat.S_IMODE(file.stat().st_mode) == 0o600


# --------------------------------------------------------------------------- the demo


def test_the_demo_prints_no_token() -> None:
    demo = subprocess.run(
        [sys.executable, "-m", "tokenward.fixtures.demo"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    printed = demo.stdout + demo.stderr
    assert demo.returncode == 0, printed[-3000:]
    assert "sm_pat_…" in printed
    assert_no_token(printed, "the demo's output", [])


# --------------------------------------------------------------------------- the scanner


def test_the_leak_scanner_tells_issued_tokens_from_other_token_shaped_text() -> None:
    issued = "sm_pat_" + "aB3dE5fG7hJ9kL1mN2pQ4rS6tU8vW0xY"
    text = "\n".join(
        [
            issued,  # the line `tokens create` prints: allowed
            f"log: GET /rpc/{issued} 200",  # a leak
            f"repr: b'GET /p\\t{issued}'",  # a leak glued to a letter
            "constant: sm_pat_ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",  # a test's own value
            "hint: sm_pat_…vW0x",
        ]
    )
    findings = scan_text(text, "sample")
    assert [(finding.line, finding.token_hint) for finding in findings] == [
        (2, "sm_pat_…W0xY"),
        (3, "sm_pat_…W0xY"),
    ]
    assert all(issued not in finding.text for finding in findings)
    assert scan_text(f"GET /rpc/{issued}", "sample", allowed=frozenset({issued})) == []


@pytest.mark.parametrize(
    "line",
    [
        "Bad HTTP request line: b'GET /p sm_pat_{body} HTTP/1.1'",
        "Bad HTTP request line: b'GET /p\\tsm_pat_{body} HTTP/1.1'",  # glued to repr's \t
        "GET /a/%73m_pat_{body}/b",
        "GET /a/%2573m_pat_{body}/b and sm_sat_{body}",
        "CONNECT sm_aat_{body}:443",
        "Bad HTTP request line: b'GET /p x-auth-tokensm_pat_{body}'",  # glued to a name
        "Received invalid header name: b'x-auth-token sm_pat_{body}' from client",
    ],
)
def test_log_lines_show_hints_only(line: str) -> None:
    body = "k3Y9" * 8
    redacted = redact_log_text(line.format(body=body))
    assert body not in redacted and body[-4:] in redacted
    assert TOKEN_RUN.search(redacted) is None
    assert redact_log_text("client connect 127.0.0.1:5000 100%") == (
        "client connect 127.0.0.1:5000 100%"
    )


@pytest.mark.parametrize("depth", [5, 6])
def test_a_log_line_withholds_what_decodes_deeper_than_tokenward_decodes(depth: int) -> None:
    escaped = "".join(f"%{ord(character):02X}" for character in "sm_pat_" + "k3Y9" * 8)
    for _ in range(depth - 1):
        escaped = escaped.replace("%", "%25")
    redacted = redact_log_text(f"GET /a/{escaped}/b 200")
    assert redacted == (
        f"GET /a/<{len(escaped)} characters withheld: encoded deeper than tokenward decodes>/b 200"
    )


# --------------------------------------------------------------------------- the console


def test_the_console_shows_a_token_only_in_its_creation_answer(tmp_path: Path) -> None:
    """Every answer of the console's API and page (headers and bodies), its log lines and the
    store's files, after a session that creates, lists, re-scopes, misuses and deletes tokens:
    no full token but in the two creation answers, no admin key anywhere."""
    db = tmp_path / "console.db"
    key = create_console_key(db, "ops")
    pasted = "sm_sat_" + "Pasted0Into1A2Form3By4Mistake5X"
    answers: list[tuple[str, httpx.Response]] = []
    with start_console(db) as console:
        base = console.url
        api_headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        with httpx.Client(base_url=base, headers=api_headers, timeout=30) as api:

            def call(what: str, method: str, path: str, body: object = None) -> httpx.Response:
                content = None if body is None else json.dumps(body)
                answer = api.request(method, path, content=content)
                answers.append((f"API {what}", answer))
                return answer

            created = api.post("/api/tokens", json={"name": "api", "expires": "7d"})
            token = created.json()["token"]
            call("list", "GET", "/api/tokens")
            call("rescope", "PATCH", "/api/tokens/api", {"scope": "all"})
            call("expiry", "PATCH", "/api/tokens/api", {"expires": "never"})
            call("duplicate", "POST", "/api/tokens", {"name": "api", "expires": "7d"})
            call("name is a token", "POST", "/api/tokens", {"name": token, "expires": "7d"})
            call("pasted name", "POST", "/api/tokens", {"name": pasted, "expires": "7d"})
            call("field named by a token", "POST", "/api/tokens", {token: 1})
            call("token in path", "PATCH", f"/api/tokens/{token}", {"scope": "all"})
            call("token as word", "DELETE", f"/api/tokens/api?confirm={token}")
            call("unknown path", "GET", f"/api/{token}")
            call("schema", "GET", "/api/openapi.json")
        with httpx.Client(base_url=base, timeout=30) as page:

            def visit(what: str, method: str, path: str, data: object = None) -> httpx.Response:
                answer = page.request(method, path, data=data)  # type: ignore[arg-type]
                answers.append((f"page {what}", answer))
                return answer

            form = visit("sign-in form", "GET", "/signin")
            csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
            visit("sign in with a token", "POST", "/signin", {"key": token, "csrf": csrf})
            form = visit("sign-in form again", "GET", "/signin")
            csrf = form.text.split('name="csrf" value="')[1].split('"')[0]
            visit("sign in", "POST", "/signin", {"key": key, "csrf": csrf})
            listing = visit("list", "GET", "/")
            csrf = listing.text.split('name="csrf" value="')[1].split('"')[0]
            fields = {"csrf": csrf, "kind": "pat", "expires": "30d", "scope": "all"}
            visit("pasted name", "POST", "/tokens", {**fields, "name": pasted})
            visit("token as name", "POST", "/tokens", {**fields, "name": token})
            made = page.post("/tokens", data={**fields, "name": "page"})
            shown = page.get(made.headers["location"])
            page_token = shown.text.split('id="new-token" readonly value="')[1].split('"')[0]
            visit("shown again", "GET", made.headers["location"])
            visit("list after", "GET", "/")
            visit("dialog by token", "GET", f"/tokens/{token}/delete")
            visit("dialog", "GET", "/tokens/page/delete")
            visit(
                "word is a token", "POST", "/tokens/page/delete", {"csrf": csrf, "confirm": token}
            )
            visit("delete", "POST", "/tokens/page/delete", {"csrf": csrf, "confirm": "DELETE"})
            visit("list at the end", "GET", "/")
        output = console.output()
    tokens = [token, page_token, pasted]
    assert token in created.text and page_token in shown.text  # the creation answers
    for what, answer in answers:
        shown_headers = "\n".join(f"{name}: {value}" for name, value in answer.headers.items())
        assert_no_token(shown_headers + "\n" + answer.text, f"console {what}", tokens)
        assert key not in shown_headers + answer.text, f"console {what} shows the admin key"
        assert answer.status_code < 500, f"console {what}: {answer.status_code}"
    assert "tokens/sm_pat_…" in output, "the access log shows the token in a path as a hint"
    assert_no_token(output, "the console's output", tokens)
    assert key not in output
    for file in tmp_path.glob("console.db*"):
        assert_no_token(file.read_bytes(), file.name, tokens)
        assert key.encode() not in file.read_bytes()

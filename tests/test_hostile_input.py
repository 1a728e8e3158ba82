"""Hostile input: the core fuzzed with hypothesis (and atheris when installed), and the real
proxy fed requests that parsers disagree about.

The core's properties live in `fuzz/core_fuzz.py` (`check_request`), shared with the atheris
fuzzer: nothing raises, the strip rewrite lets no token into the URL (in any percent-decoding
up to four rounds) or `x-auth-token`, the other forward values put back the one token only,
and records hold none.

Through the real proxy, every hostile request must get a verdict of the contract or a 400,
never a 5xx, and never a forwarded token: the recording upstream and nginx (a "typical
upstream" on loopback, normalising paths and parsing the query its own way) must see no token
in the URL or `x-auth-token`. With `keep`, nginx must never see the token anywhere the proxy
did not find it.
"""

from __future__ import annotations

import http.client
import importlib.util
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.core_fuzz import check_request, held_tokens, request_from_bytes
from tokenward.core.placement import Request, redact_request
from tokenward.fixtures.processes import (
    REPO_ROOT,
    RunningProxy,
    RunningUpstream,
    free_port,
    start_proxy,
)
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

BASE62 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# The core's properties are cheap to check: ten times the profile's examples.
CORE_EXAMPLES = settings().max_examples * 10
TIMEOUT = 15.0

# --------------------------------------------------------------------------- the core


def token_like() -> st.SearchStrategy[str]:
    """Tokens, near-misses (15 and 65 characters, wrong kind) and look-alike prefixes."""
    prefix = st.sampled_from(
        ["sm_pat_", "sm_aat_", "sm_sat_", "sm_xyz_", "SM_PAT_", "ｓm_pat_", "ѕm_pat_", "sm-pat-"]
    )
    body = st.text(alphabet=BASE62, min_size=14, max_size=66)
    return st.builds(lambda p, b: p.encode().decode("latin-1") + b, prefix, body)


def percent_encoded(text: str, every: bool) -> str:
    return "".join(f"%{ord(c):02X}" if every or c == "s" else c for c in text)


def encodings(value: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """`value` as is, with its `s` or every character percent-encoded, or encoded twice."""
    return st.one_of(
        value,
        value.map(lambda text: percent_encoded(text, every=False)),
        value.map(lambda text: percent_encoded(text, every=True)),
        value.map(lambda text: percent_encoded(text, every=False).replace("%", "%25")),
    )


PIECES = st.one_of(
    encodings(token_like()),
    st.sampled_from(
        [
            "/",
            "//",
            "/./",
            "/../",
            ".",
            "..",
            ";",
            ";v=1",
            "%2F",
            "%2f",
            "?",
            "&",
            "=",
            "#",
            "token",
            "token=",
            "t%6Fken=",
            "%74oken=",
            "TOKEN=",
            "+",
            "%20",
            "%25",
            "%",
            "%%",
            ",",
            " ",
            "\t",
            "\x00",
            "\r",
            "\xff",
            "/ext/bc/C/rpc/",
            "/api/v0/",
            "x",
        ]
    ),
    st.text(st.characters(max_codepoint=255), max_size=4),
)


def targets() -> st.SearchStrategy[str]:
    return st.lists(PIECES, max_size=12).map(lambda pieces: "/" + "".join(pieces))


def header_fields() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    name = st.sampled_from(
        [
            "x-auth-token",
            "X-Auth-Token",
            "X-AUTH-TOKEN",
            "x_auth_token",
            "x-tokenward-token",
            "authorization",
            "x-other",
        ]
    )
    value = st.lists(PIECES, max_size=4).map("".join)
    return st.lists(st.tuples(name, value), max_size=4).map(tuple)


@settings(max_examples=CORE_EXAMPLES)
@given(target=targets(), headers=header_fields())
def test_the_core_holds_its_properties_on_hostile_requests(
    target: str, headers: tuple[tuple[str, str], ...]
) -> None:
    check_request(Request("GET", target, headers))


@settings(max_examples=CORE_EXAMPLES)
@given(data=st.binary(max_size=400))
def test_the_core_holds_its_properties_on_arbitrary_bytes(data: bytes) -> None:
    check_request(request_from_bytes(data))


A = "sm_pat_" + "A1" * 16
B = "sm_pat_" + "B2" * 16


@pytest.mark.parametrize(
    "target",
    [
        # Found by the atheris fuzzer: each once left a token in the record.
        pytest.param(f"/x.{A}.%73m_pat_{B[7:]}", id="literal-and-encoded-in-one-segment"),
        pytest.param(f"/p?{A}={B}", id="token-as-a-parameter-name-with-a-token-value"),
        pytest.param(
            f"/{A}.%25252573m_pat_{B[7:]}.%252525252573m_pat_{'C3' * 16}",
            id="tokens-at-several-depths-of-encoding",
        ),
    ],
)
def test_a_record_shows_no_token_at_any_depth(target: str) -> None:
    record = redact_request(Request("GET", target, (("x-other", target),)))
    assert held_tokens(record.target) == set()
    assert held_tokens(record.headers[0][1]) == set()
    check_request(Request("GET", target, ()))


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris not installed")
def test_the_atheris_fuzzer_finds_nothing(tmp_path: Path) -> None:
    runs = 20 * CORE_EXAMPLES
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fuzz.core_fuzz",
            f"-runs={runs}",
            "-seed=1",
            f"-artifact_prefix={tmp_path}/",
            "-print_final_stats=1",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- nginx


@dataclass
class Nginx:
    url: str
    process: subprocess.Popen[bytes]


NGINX_CONFIG = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    large_client_header_buffers 4 2m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type text/plain;
            return 200 "uri=$uri\\nargs=$args\\narg_token=$arg_token\\n{auth}";
        }}
    }}
}}
"""


@pytest.fixture(scope="module")
def nginx() -> Iterator[Nginx]:
    """nginx on loopback answering every request with how it parsed it."""
    program = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx",) if Path(path).exists()), None
    )
    if program is None:
        pytest.skip("nginx is not installed (Debian package nginx-light)")
    with tempfile.TemporaryDirectory(prefix="tokenward-nginx-") as prefix:
        port = free_port()
        config = Path(prefix) / "nginx.conf"
        auth = "x_auth_token=$http_x_auth_token\\n"
        config.write_text(NGINX_CONFIG.format(prefix=prefix, port=port, auth=auth))
        process = subprocess.Popen(
            [program, "-p", prefix, "-c", str(config), "-e", f"{prefix}/error.log"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
                    break
                except OSError:
                    if process.poll() is not None or time.monotonic() > deadline:
                        log = (Path(prefix) / "error.log").read_text(errors="replace")
                        pytest.fail(f"nginx did not start: {log}")
                    time.sleep(0.05)
            yield Nginx(f"http://127.0.0.1:{port}", process)
        finally:
            process.terminate()
            try:
                process.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(TIMEOUT)


def nginx_view(body: bytes) -> dict[str, str]:
    """What nginx parsed: uri (decoded, normalised), args, arg_token, x_auth_token."""
    view: dict[str, str] = {}
    for line in body.decode("latin-1").split("\n"):
        name, equals, value = line.partition("=")
        if equals and name in ("uri", "args", "arg_token", "x_auth_token") and name not in view:
            view[name] = value
    return view


# --------------------------------------------------------------------------- the proxies


@dataclass
class Gateways:
    strip: RunningProxy
    keep: RunningProxy
    token: str


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream, nginx: Nginx
) -> Iterator[Gateways]:
    """Services `rec` (the recording upstream) and `ngx` (nginx), generic layout, a strip and a
    keep proxy on the same store."""
    db = tmp_path_factory.mktemp("hostile") / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        store.add_service("rec", "generic", ("rec.localhost",), upstream.url)
        store.add_service("ngx", "generic", ("ngx.localhost",), nginx.url)
        token, _ = store.create_token("hostile", "pat", None, None, "", datetime.now(UTC))
    settings_of = {
        forward: ProxySettings(db=db, upstream=upstream.url, listen_port=0, forward=forward)
        for forward in ("strip", "keep")
    }
    with start_proxy(settings_of["strip"]) as strip, start_proxy(settings_of["keep"]) as keep:
        yield Gateways(strip, keep, token)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def from_proxy(self) -> bool:
        return self.header("content-type") == "application/json" and b'"error"' in self.body

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


def send_raw(proxy: RunningProxy, data: bytes) -> Answer:
    """Send `data` as it is on a new connection and read one answer."""
    with socket.create_connection((proxy.host, proxy.port), timeout=TIMEOUT) as connection:
        connection.sendall(data)
        response = http.client.HTTPResponse(connection, method="GET")
        response.begin()
        return Answer(response.status, response.getheaders(), response.read())


# --------------------------------------------------------------------------- the differentials

FORWARDED = "forwarded"
MITM_400 = "mitmproxy 400"


@dataclass(frozen=True)
class Case:
    """A hostile request: `{T}` stands for the live token, `{HOST}` for the service's host."""

    id: str
    target: bytes
    fields: bytes = b""
    verdict: str | tuple[int, str] = FORWARDED
    placement: str | None = None  # where the proxy finds the token, for `keep` and nginx
    # mitmproxy's own 400 quotes a bad request line, token included (no hook runs first).
    echoes_request_line: bool = False

    def request(self, token: str, host: str) -> bytes:
        target = self.target.replace(b"{T}", token.encode()).replace(b"{HOST}", host.encode())
        fields = self.fields.replace(b"{T}", token.encode())
        return b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, host.encode(), fields)


MANY = b"&".join(b"a%d=%d" % (n, n) for n in range(10_000))  # 105 KiB: over the size limit
MANY_UNDER_THE_LIMIT = b"&".join(b"a%d=%d" % (n, n) for n in range(5_000))  # 52 KiB
TOO_LONG = (414, "target_too_long")
LOOKALIKE_BODY = b"Q" * 32
CASES = [
    Case("double-slash-last", b"//{T}", placement="path"),
    Case("double-slash-middle", b"//{T}/x", verdict=(400, "misplaced_token")),
    Case("dot-segment", b"/./{T}", placement="path"),
    Case("dot-dot-after", b"/{T}/..", placement="path"),
    Case("dot-dot-before", b"/x/../{T}/y", verdict=(400, "misplaced_token")),
    Case("encoded-slash", b"/a%2F{T}", verdict=(400, "misplaced_token")),
    Case("encoded-slash-own-segment", b"/%2F/{T}", placement="path"),
    Case("params-after", b"/{T};v=1", verdict=(400, "misplaced_token")),
    Case("params-before", b"/x;{T}", verdict=(400, "misplaced_token")),
    Case("plus-before", b"/p?token=+{T}", verdict=(401, "malformed_token")),
    Case("plus-after", b"/p?token={T}+", verdict=(401, "malformed_token")),
    Case("space-escape", b"/p?token=%20{T}", verdict=(401, "malformed_token")),
    Case("plus-in-another-parameter", b"/p?a=b+c&token={T}", placement="query"),
    Case("escaped-name", b"/p?t%6Fken={T}", placement="query"),
    Case("fully-escaped-name", b"/p?%74%6F%6B%65%6E={T}", placement="query"),
    Case("name-case", b"/p?TOKEN={T}", verdict=(400, "misplaced_token")),
    Case("semicolon-separator", b"/p?x=1;token={T}", verdict=(400, "misplaced_token")),
    Case("repeated", b"/p?token={T}&t%6Fken={T}", placement="query"),
    Case("fragment-in-value", b"/p?token={T}#frag", verdict=(401, "malformed_token")),
    Case("fragment-before-query", b"/p#?token={T}", placement="query"),
    Case("fragment-in-path", b"/{T}#x", verdict=(400, "misplaced_token")),
    Case("absolute-form", b"http://{HOST}/{T}", placement="path"),
    Case(
        "absolute-form-other-host",
        b"http://nowhere.localhost/{T}",
        verdict=(404, "unknown_service"),
    ),
    Case("long-path", b"/" + b"a/" * 32_000 + b"{T}", placement="path"),
    Case("too-long-path", b"/" + b"a/" * 50_000 + b"{T}", verdict=TOO_LONG),
    Case("very-long-path", b"/" + b"a/" * 400_000 + b"{T}", verdict=TOO_LONG),
    Case("many-parameters", b"/p?" + MANY_UNDER_THE_LIMIT + b"&token={T}", placement="query"),
    Case(
        "many-parameters-one-stray",
        b"/p?" + MANY_UNDER_THE_LIMIT + b"&q={T}",
        verdict=(400, "misplaced_token"),
    ),
    Case("ten-thousand-parameters", b"/p?" + MANY + b"&token={T}", verdict=TOO_LONG),
    Case("header-nul", b"/p", b"x-auth-token: {T}\x00\r\n", verdict=(401, "malformed_token")),
    Case("header-cr", b"/p", b"x-auth-token: {T}\rX\r\n", verdict=(400, "malformed_request")),
    Case(
        "header-invalid-utf8", b"/p", b"x-auth-token: {T}\xff\r\n", verdict=(401, "malformed_token")
    ),
    Case("header-fold", b"/p", b"x-auth-token: x\r\n {T}\r\n", verdict=(400, "malformed_request")),
    Case("header-space-before-colon", b"/p", b"x-auth-token : {T}\r\n", verdict=MITM_400),
    Case(
        "header-underscore-alone", b"/p", b"x_auth_token: {T}\r\n", verdict=(401, "missing_token")
    ),
    Case("other-header-invalid-utf8", b"/{T}", b"x-other: \xff\xfe\r\n", placement="path"),
    Case("other-header-nul", b"/{T}", b"x-other: a\x00b\r\n", placement="path"),
    Case("token-15", b"/sm_pat_" + b"A" * 15, verdict=(401, "missing_token")),
    Case(
        "token-15-header",
        b"/p",
        b"x-auth-token: sm_pat_" + b"A" * 15 + b"\r\n",
        verdict=(401, "malformed_token"),
    ),
    Case("token-65", b"/sm_pat_" + b"A" * 65, verdict=(401, "missing_token")),
    Case(
        "token-65-header",
        b"/p",
        b"x-auth-token: sm_pat_" + b"A" * 65 + b"\r\n",
        verdict=(401, "malformed_token"),
    ),
    Case("fullwidth-s", b"/%EF%BD%93m_pat_" + LOOKALIKE_BODY, verdict=(401, "missing_token")),
    Case("cyrillic-dze", b"/%D1%95m_pat_" + LOOKALIKE_BODY, verdict=(401, "missing_token")),
    Case(
        "fullwidth-s-raw-header",
        b"/p",
        b"x-auth-token: \xef\xbd\x93m_pat_" + LOOKALIKE_BODY + b"\r\n",
        verdict=(401, "malformed_token"),
    ),
    Case(
        "fullwidth-s-beside-a-token",
        b"/%EF%BD%93m_pat_" + LOOKALIKE_BODY,
        b"x-auth-token: {T}\r\n",
        placement="header",
    ),
    Case("space-in-target", b"/p {T}", verdict=MITM_400, echoes_request_line=True),
    Case("tab-in-target", b"/p\t{T}", verdict=MITM_400, echoes_request_line=True),
]


def unreserved_escaped(token: str) -> bytes:
    """The token with its `s` escaped: the same path token (RFC 3986 6.2.2.2)."""
    return b"/%73" + token[1:].encode()


def check_answer(case: Case, answer: Answer, token: str) -> None:
    """The verdict the case expects; never a 5xx; no token in the answer (the strip proxy's
    upstreams echo what they received, so a forwarded answer shows what got through)."""
    assert answer.status < 500, (case.id, answer)
    if case.verdict == FORWARDED:
        assert not answer.from_proxy, (case.id, answer)
    elif case.verdict == MITM_400:
        assert answer.status == 400 and not answer.from_proxy, (case.id, answer)
    else:
        assert isinstance(case.verdict, tuple)
        status, error = case.verdict
        assert answer.from_proxy and answer.status == status, (case.id, answer)
        assert f'"error": "{error}"' in answer.body.decode(), (case.id, answer)
    if not case.echoes_request_line:
        assert token not in answer.body.decode("latin-1"), (case.id, answer)


def reached_with_token(upstream: RunningUpstream, mark: int) -> list[str]:
    """Targets and auth fields the recording upstream got since `mark` that hold a token."""
    leaks = []
    for record in upstream.records(since=mark):
        if held_tokens(record.target):
            leaks.append(record.target[:200])
        leaks += [v for n, v in record.headers if n.lower() == "x-auth-token"]
    return leaks


@pytest.mark.e2e
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_hostile_request_gets_a_verdict_and_no_token_is_forwarded(
    gateways: Gateways, upstream: RunningUpstream, case: Case
) -> None:
    token = gateways.token
    mark = upstream.last_seq()
    answer = send_raw(gateways.strip, case.request(token, "rec.localhost"))
    check_answer(case, answer, token)
    reached = upstream.records(since=mark)
    assert reached_with_token(upstream, mark) == [], case.id
    if case.verdict != FORWARDED:
        assert reached == [], case.id

    # nginx behind the same proxy: it must find no token in what it parsed.
    behind_nginx = send_raw(gateways.strip, case.request(token, "ngx.localhost"))
    check_answer(case, behind_nginx, token)
    if not behind_nginx.from_proxy and behind_nginx.status == 200:
        assert held_tokens(behind_nginx.body.decode("latin-1")) == set(), (case.id, behind_nginx)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "case", [case for case in CASES if case.verdict == FORWARDED], ids=lambda case: case.id
)
def test_with_keep_nginx_finds_the_token_only_where_the_proxy_did(
    gateways: Gateways, case: Case
) -> None:
    token = gateways.token
    answer = send_raw(gateways.keep, case.request(token, "ngx.localhost"))
    assert answer.status < 500 and not answer.from_proxy, (case.id, answer)
    if answer.status != 200:
        return  # nginx refused what it parsed (a path above the root, say): it saw nothing
    view = nginx_view(answer.body)
    seen = set()
    if token in view.get("uri", "").split("/"):
        seen.add("path")
    if view.get("arg_token") == token:
        seen.add("query")
    if token in view.get("x_auth_token", ""):
        seen.add("header")
    assert seen <= {case.placement}, (case.id, view)


@pytest.mark.e2e
def test_a_path_token_with_an_escaped_unreserved_character_is_the_same_token(
    gateways: Gateways, upstream: RunningUpstream
) -> None:
    token = gateways.token
    data = b"GET %s HTTP/1.1\r\nHost: rec.localhost\r\n\r\n" % unreserved_escaped(token)
    mark = upstream.last_seq()
    answer = send_raw(gateways.strip, data)
    assert answer.status == 200
    assert [record.target for record in upstream.records(since=mark)] == ["/"]


# Random targets from the same pieces, through the real proxy to both upstreams.
WIRE_PIECES = st.one_of(
    encodings(token_like()),
    st.just("{T}"),
    st.sampled_from(
        [
            "/",
            "//",
            "/./",
            "/../",
            ".",
            "..",
            ";",
            "%2F",
            "?",
            "&",
            "=",
            "#",
            "token=",
            "t%6Fken=",
            "+",
            "%20",
            "%25",
            "%",
            ",",
            "x",
            "%00",
            "%FF",
        ]
    ),
)


@pytest.mark.e2e
@given(pieces=st.lists(WIRE_PIECES, min_size=1, max_size=10), header=st.booleans())
def test_random_hostile_targets_through_the_proxy(
    gateways: Gateways, upstream: RunningUpstream, pieces: list[str], header: bool
) -> None:
    token = gateways.token
    target = ("/" + "".join(pieces)).replace("{T}", token).encode("latin-1")
    fields = b"x-auth-token: %s\r\n" % token.encode() if header else b""
    for host in ("rec.localhost", "ngx.localhost"):
        mark = upstream.last_seq()
        data = b"GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (target, host.encode(), fields)
        answer = send_raw(gateways.strip, data)
        assert answer.status < 500, (target, answer)
        assert reached_with_token(upstream, mark) == [], target
        if answer.from_proxy:
            assert token not in answer.body.decode(), (target, answer)
        elif host == "ngx.localhost" and answer.status == 200:
            assert held_tokens(answer.body.decode("latin-1")) == set(), (target, answer)


@pytest.mark.e2e
def test_a_host_header_cannot_steer_a_forward_proxy_past_the_checks(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    """Regular (forward-proxy) mode connects where the absolute-form target says: the Host
    header must not make a request to a service look like one to a host that is none."""
    host_and_port = upstream.url.removeprefix("http://")
    db = tmp_path / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        store.add_service("node", "generic", (host_and_port.partition(":")[0],), upstream.url)
    settings = ProxySettings(db=db, upstream=None, listen_port=0, proxy_mode="regular")
    with start_proxy(settings) as proxy:
        for host in (host_and_port, "elsewhere.example"):
            mark = upstream.last_seq()
            answer = send_raw(
                proxy,
                b"GET %s/rpc HTTP/1.1\r\nHost: %s\r\n\r\n" % (upstream.url.encode(), host.encode()),
            )
            assert (answer.status, answer.from_proxy) == (401, True), (host, answer)
            assert upstream.records(since=mark) == [], host

"""`tokenward proxy`: its mitmproxy arguments, its start summary, and the command run for real.

The HTTPS tests run the command in regular (forward-proxy) mode with interception, as a
developer would: curl trusts mitmproxy's CA (`--cacert`) and asks for an HTTPS upstream whose
certificate is made here with `cryptography`, self-signed or signed by a private CA that
mitmproxy is given (`ssl_verify_upstream_trusted_ca`). Real sockets, real TLS, both ends.
"""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tokenward.core.records import ServiceRecord
from tokenward.fixtures.processes import (
    LOOPBACK,
    RunningProxy,
    RunningUpstream,
    free_port,
    start_proxy_command,
)
from tokenward.proxy import ProxySettings, mitmproxy_arguments, start_summary
from tokenward.store import TokenStore

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed (Debian: curl)")
NOW = datetime.datetime.now(datetime.UTC)
UNKNOWN = "sm_pat_" + "Z" * 32


# --------------------------------------------------------------------------- arguments


def test_a_set_option_replaces_the_value_tokenward_gives_it() -> None:
    settings = ProxySettings(
        db=Path("/s.db"),
        upstream="http://node:1",
        mitmproxy_options=("connection_strategy=eager", "tokenward_mode=observe", "x=1=2"),
    )
    sets = [
        value
        for flag, value in itertools.pairwise(mitmproxy_arguments(settings))
        if flag == "--set"
    ]
    # mitmproxy refuses two values for one option (and the addon's silently): one each.
    assert "connection_strategy=lazy" not in sets and "tokenward_mode=enforce" not in sets
    assert sets[-3:] == ["connection_strategy=eager", "tokenward_mode=observe", "x=1=2"]
    assert "stream_large_bodies=1m" in sets
    assert settings.option("x") == "1=2"
    assert settings.option("confdir") is None


def test_web_options_reach_mitmweb_only_with_web() -> None:
    web = ProxySettings(db=Path("/s.db"), upstream="http://n:1", web=True, web_port=9001)
    assert "web_port=9001" in mitmproxy_arguments(web)
    assert "web_open_browser=false" in mitmproxy_arguments(web)
    assert not any(
        "web_" in argument
        for argument in mitmproxy_arguments(ProxySettings(db=Path("/s.db"), upstream="http://n:1"))
    )


def test_the_summary_names_mode_store_services_and_listen_address() -> None:
    services = [ServiceRecord("ipfs", ("ipfs.example.com", "ipfs.local"), "ipfs", "http://n:5001")]
    settings = ProxySettings(db=Path("/s.db"), upstream="http://n:5001", mode="observe")
    summary = start_summary(settings, services)
    assert summary.splitlines()[0].startswith("tokenward proxy: observe mode")
    assert "  store     /s.db" in summary
    assert "  listen    127.0.0.1:8080 (reverse proxy)" in summary
    assert (
        "  service   ipfs: hosts ipfs.example.com, ipfs.local; layout ipfs; upstream http://n:5001"
        in summary
    )
    assert "cacert" not in summary


def test_the_summary_in_regular_mode_names_the_ca_and_a_curl_line() -> None:
    services = [ServiceRecord("rpc", ("rpc.example.com",), "generic", "https://n:8545")]
    settings = ProxySettings(
        db=Path("/s.db"),
        upstream=None,
        proxy_mode="regular",
        listen_port=3128,
        mitmproxy_options=("confdir=/etc/tw", "tokenward_unknown_hosts=pass"),
    )
    summary = start_summary(settings, services)
    assert "  trust     /etc/tw/mitmproxy-ca-cert.pem" in summary
    assert (
        "  try       curl -x http://127.0.0.1:3128 --cacert /etc/tw/mitmproxy-ca-cert.pem"
        " https://rpc.example.com/" in summary
    )
    assert "a token sent to one: pass" in summary
    default = start_summary(
        ProxySettings(db=Path("/s.db"), upstream=None, proxy_mode="regular"), []
    )
    assert "(none registered)" in default and "a token sent to one: guard" in default


# --------------------------------------------------------------------------- the command


def new_store(db: Path, services: list[tuple[str, str, str]]) -> str:
    """A store with `services` (name, host, upstream; generic layout); a token for all."""
    with TokenStore.open(db, create=True) as store:
        for name, host, upstream in services:
            store.add_service(name, "generic", (host,), upstream)
        token, _ = store.create_token("dev", "pat", None, None, "test", NOW)
    return token


def test_the_command_prints_its_summary_and_passes_set_options_through(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    new_store(tmp_path / "tokenward.db", [("rpc", LOOPBACK, upstream.url)])
    # Relative --db before the command, in the proxy's folder; observe mode given by --set.
    arguments = ["--db", "tokenward.db", "proxy", "--listen-port", "0"]
    with start_proxy_command(
        [*arguments, "--set", "tokenward_mode=observe"], cwd=tmp_path
    ) as proxy:
        answer = proxy.request("GET", "/no-token")
        output = proxy.output()
    assert answer.status == 200
    assert answer.header("x-tokenward-verdict") == "missing_token"
    assert "tokenward proxy: observe mode" in output
    assert upstream.record_for(answer) is not None
    assert f"  store     {tmp_path / 'tokenward.db'}" in output
    assert f"  service   rpc: hosts {LOOPBACK}; layout generic; upstream {upstream.url}" in output


# --------------------------------------------------------------------------- HTTPS upstreams


@dataclass
class Certificates:
    """PEM files: the private CA, a leaf it signed, a self-signed leaf (both for
    localhost and 127.0.0.1)."""

    ca: Path
    signed: tuple[Path, Path]
    self_signed: tuple[Path, Path]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
    else:
        alternative_names = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address(LOOPBACK)),
        ]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write_certificate(certificate: x509.Certificate, path: Path) -> Path:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("certificates")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tokenward test CA", ca_key, _name("tokenward test CA"), ca_key, ca=True)
    signed_key = ec.generate_private_key(ec.SECP256R1())
    signed = _certificate("localhost", signed_key, ca.subject, ca_key, ca=False)
    own_key = ec.generate_private_key(ec.SECP256R1())
    own = _certificate("localhost", own_key, _name("localhost"), own_key, ca=False)
    return Certificates(
        ca=_write_certificate(ca, folder / "ca.pem"),
        signed=(
            _write_certificate(signed, folder / "signed.pem"),
            _write_key(signed_key, folder / "signed.key"),
        ),
        self_signed=(
            _write_certificate(own, folder / "own.pem"),
            _write_key(own_key, folder / "own.key"),
        ),
    )


@dataclass
class TlsUpstream:
    """An HTTPS server on loopback that answers every request with what it received."""

    server: ThreadingHTTPServer
    received: list[dict[str, object]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def _recording_handler(received: list[dict[str, object]]) -> type[BaseHTTPRequestHandler]:
    class Recording(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            record: dict[str, object] = {
                "target": self.path,
                "headers": [[name.lower(), value] for name, value in self.headers.items()],
            }
            received.append(record)
            body = json.dumps(record).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads `received`."""

    return Recording


@contextmanager
def tls_upstream(certificate: tuple[Path, Path]) -> Iterator[TlsUpstream]:
    """A `TlsUpstream` with `certificate` (PEM certificate, PEM key) on a free port."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    received: list[dict[str, object]] = []
    server = ThreadingHTTPServer((LOOPBACK, 0), _recording_handler(received))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield TlsUpstream(server, received)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class CurlAnswer:
    status: int
    http_version: str
    body: bytes

    def json(self) -> dict[str, object]:
        answer: dict[str, object] = json.loads(self.body)
        return answer


def curl(
    proxy: RunningProxy, ca_cert: Path, url: str, http_version: str, headers: tuple[str, ...] = ()
) -> CurlAnswer:
    """`curl -x PROXY --cacert CA URL` over HTTP/1.1 or HTTP/2 (`--http1.1`, `--http2`)."""
    assert CURL is not None
    command = [CURL, "-sS", "--noproxy", "", "-x", proxy.url, "--cacert", str(ca_cert)]
    command += [f"--{http_version}", "-w", "\n%{http_code} %{http_version}"]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run([*command, url], capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr.decode()
    body, _, status_line = done.stdout.rpartition(b"\n")
    status, version = status_line.decode().split()
    return CurlAnswer(int(status), version, body)


@dataclass
class ForwardProxy:
    proxy: RunningProxy
    ca_cert: Path
    token: str
    upstream: TlsUpstream

    def get(self, url: str, http_version: str, headers: tuple[str, ...] = ()) -> CurlAnswer:
        return curl(self.proxy, self.ca_cert, url, http_version, headers)


@contextmanager
def forward_proxy(
    folder: Path, certificate: tuple[Path, Path], trust: tuple[str, ...]
) -> Iterator[ForwardProxy]:
    """`tokenward proxy --proxy-mode regular` with one service, `localhost`, whose upstream is
    a `TlsUpstream` with `certificate`; `trust` is the `--set` options for the upstream's
    certificate."""
    with tls_upstream(certificate) as upstream:
        upstream_url = f"https://localhost:{upstream.port}"
        token = new_store(folder / "tokenward.db", [("node", "localhost", upstream_url)])
        confdir = folder / "mitmproxy"
        arguments = ["proxy", "--db", str(folder / "tokenward.db"), "--proxy-mode", "regular"]
        arguments += ["--listen-port", "0", "--set", f"confdir={confdir}"]
        for option in trust:
            arguments += ["--set", option]
        with start_proxy_command(arguments) as proxy:
            yield ForwardProxy(proxy, confdir / "mitmproxy-ca-cert.pem", token, upstream)


HTTP_VERSIONS = [pytest.param("http1.1", "1.1", id="http1.1"), pytest.param("http2", "2", id="h2")]


@pytest.fixture(scope="module", params=["self-signed", "private-ca"])
def trusted_forward_proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    certificates: Certificates,
) -> Iterator[ForwardProxy]:
    folder = tmp_path_factory.mktemp(f"forward-{request.param}")
    if request.param == "self-signed":
        certificate, trust = certificates.self_signed, ("ssl_insecure=true",)
    else:
        certificate = certificates.signed
        trust = (f"ssl_verify_upstream_trusted_ca={certificates.ca}",)
    with forward_proxy(folder, certificate, trust) as running:
        yield running


@needs_curl
@pytest.mark.parametrize(("http_version", "seen_version"), HTTP_VERSIONS)
def test_each_placement_is_judged_inside_tls(
    trusted_forward_proxy: ForwardProxy, http_version: str, seen_version: str
) -> None:
    running = trusted_forward_proxy
    base = f"https://localhost:{running.upstream.port}"
    token = running.token
    accepted = [
        running.get(f"{base}/rpc", http_version, (f"x-auth-token: {token}",)),
        running.get(f"{base}/rpc?token={token}&a=1", http_version),
        running.get(f"{base}/{token}/rpc", http_version),
    ]
    for answer in accepted:
        assert (answer.status, answer.http_version) == (200, seen_version), answer
        received = answer.json()
        assert received["target"] in ("/rpc", "/rpc?a=1")
        assert token not in json.dumps(received)  # stripped before the upstream
    before = len(running.upstream.received)
    missing = running.get(f"{base}/rpc", http_version)
    unknown = running.get(f"{base}/rpc", http_version, (f"x-auth-token: {UNKNOWN}",))
    assert (missing.status, missing.http_version) == (401, seen_version)
    assert missing.json()["error"] == "missing_token"
    assert (unknown.status, unknown.json()["error"]) == (401, "unknown_token")
    # 127.0.0.1 is the same server by another name, and no service: the guard refuses.
    guarded_url = f"https://{LOOPBACK}:{running.upstream.port}/p"
    guarded = running.get(guarded_url, http_version, (f"authorization: Bearer {token}",))
    assert (guarded.status, guarded.json()["error"]) == (403, "token_to_unknown_host")
    assert len(running.upstream.received) == before
    # Without a token, another host passes untouched, inside TLS too.
    passed = running.get(f"{guarded_url}?x=1", http_version)
    assert (passed.status, passed.json()["target"]) == (200, "/p?x=1")


@needs_curl
def test_a_private_ca_upstream_needs_its_ca(tmp_path: Path, certificates: Certificates) -> None:
    with forward_proxy(tmp_path, certificates.signed, ()) as running:
        url = f"https://localhost:{running.upstream.port}/rpc"
        answer = running.get(url, "http1.1", (f"x-auth-token: {running.token}",))
    assert answer.status == 502
    assert b"Certificate verify failed" in answer.body


# --------------------------------------------------------------------------- the docs

DOC = Path(__file__).resolve().parent.parent / "docs" / "debugging.md"
DOC_COMMAND = re.compile(r"^\$ (?P<command>.+?)\s+# (?:exit (?P<status>\d)|(?P<serves>serves))$")
# The doc's ports, replaced by free ones (or the test's upstreams') when it is run.
DOC_PROXY_PORT, DOC_WEB_PORT, DOC_HTTP_NODE_PORT, DOC_HTTPS_NODE_PORT = 8080, 8081, 5001, 8443
MARKER = "::tokenward-doc-exit"


@dataclass(frozen=True)
class SessionCommand:
    command: str
    status: int | None  # None: a proxy started in the background
    shown: tuple[str, ...]


def doc_sessions() -> list[list[SessionCommand]]:
    """The `session` blocks of docs/debugging.md: their `$` lines and the lines under each."""
    sessions: list[list[SessionCommand]] = []
    fence: str | None = None
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            fence = line.removeprefix("```") if fence is None else None
            if fence == "session":
                sessions.append([])
            continue
        if fence != "session":
            continue
        match = DOC_COMMAND.match(line)
        if match is not None:
            status = None if match["serves"] else int(match["status"])
            sessions[-1].append(SessionCommand(match["command"], status, ()))
        elif line.strip():
            last = sessions[-1][-1]
            sessions[-1][-1] = SessionCommand(last.command, last.status, (*last.shown, line))
    return sessions


def session_script(sessions: list[list[SessionCommand]], ports: dict[int, int]) -> str:
    """One bash script for all sessions, as a reader would type them; each command followed
    by a marker with its status, each background proxy awaited, stopped at its block's end."""

    def ported(text: str) -> str:
        return re.sub(r"\b(\d{4})\b", lambda m: str(ports.get(int(m[1]), m[1])), text)

    listening = ports[DOC_PROXY_PORT]
    # Until the proxy answers a request line mitmproxy itself refuses (the addon sees none).
    probe = (
        f"exec 3<>/dev/tcp/{LOOPBACK}/{listening} && printf 'PROBE\\r\\n\\r\\n' >&3"
        " && read -r -t 2 answer <&3 && [[ $answer == HTTP/* ]]"
    )
    wait = f"for _ in $(seq 300); do ({probe}) 2>/dev/null && break; sleep 0.1; done"
    lines = []
    for session in sessions:
        for command in session:
            lines.append(ported(command.command))
            # On a line of its own, also after output that ends without a newline.
            marker = f"status=$?; printf '\\n{MARKER} %d\\n' \"$status\""
            lines.append(wait if command.status is None else marker)
        lines.append("kill $(jobs -p) 2>/dev/null; wait")
    return "\n".join(lines)


@needs_curl
def test_the_debugging_sessions_do_what_the_docs_say(
    tmp_path: Path, upstream: RunningUpstream, certificates: Certificates
) -> None:
    sessions = doc_sessions()
    commands = [
        command for session in sessions for command in session if command.status is not None
    ]
    assert len(sessions) >= 5 and len(commands) >= 12
    with tls_upstream(certificates.self_signed) as https_node:
        ports = {
            DOC_PROXY_PORT: free_port(),
            DOC_WEB_PORT: free_port(),
            DOC_HTTP_NODE_PORT: int(upstream.url.rpartition(":")[2]),
            DOC_HTTPS_NODE_PORT: https_node.port,
        }
        program = Path(sys.executable).with_name("tokenward")
        environment = {
            name: value
            for name, value in os.environ.items()
            if name.lower() not in ("http_proxy", "https_proxy", "all_proxy", "tokenward_db")
        }
        environment["PATH"] = f"{program.parent}{os.pathsep}{environment.get('PATH', '')}"
        completed = subprocess.run(
            ["bash", "-c", session_script(sessions, ports)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=environment,
            timeout=240,
            check=False,
            start_new_session=True,
        )
    ran: list[tuple[int, str]] = []
    output: list[str] = []
    for line in completed.stdout.splitlines():
        if line.startswith(MARKER):
            ran.append((int(line.removeprefix(MARKER)), "\n".join(output)))
            output = []
        else:
            output.append(line)
    logs = "".join(path.read_text() for path in sorted(tmp_path.glob("*.log")))
    assert len(ran) == len(commands), (completed.stdout, completed.stderr, logs)
    for command, (status, printed) in zip(commands, ran, strict=True):
        assert status == command.status, (command.command, printed, completed.stderr, logs)
        for line in command.shown:
            expected = re.sub(r"\b(\d{4})\b", lambda m: str(ports.get(int(m[1]), m[1])), line)
            assert expected in printed, (command.command, expected, printed)
    printed_all = completed.stdout + completed.stderr + logs
    assert re.search(r"sm_(pat|aat|sat)_[A-Za-z0-9]{16,}", printed_all) is None

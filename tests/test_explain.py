"""`tokenward explain` is the proxy: the same verdict, placement and upstream request as the
addon, for any request the harness's strategies draw; and the command itself (exit statuses,
`--json`, `--proxy-mode`, a missing or unreadable store, no full token in anything it prints).

The property runs the addon in process (`harness.inprocess`) on a real store made from a drawn
`StoreModel`, and `tokenward.explain.explain` on that same store file. The harness's
strategies draw stores for the default service and scenarios without hosts; this file adds,
for this property only, stores with services (hosts registered in mixed case, with a trailing
dot, as an IPv6 literal, one answering the in-process driver's own host so that regular mode
reaches a service) and hosts to address (the same names in other spellings, with ports, hosts
that are no service, values that are no host).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.cli import main, store_lookup
from tokenward.core.decision import Mode, Options, Preflight, ProxyMode
from tokenward.core.hosts import addressed_host
from tokenward.core.layouts import layout_named
from tokenward.core.placement import Request, redact_request
from tokenward.core.tokens import token_hint
from tokenward.core.verdicts import Forward
from tokenward.explain import Explanation, explain, parse_header, shown_text
from tokenward.harness.drivers import Observation
from tokenward.harness.inprocess import DEFAULT_HOST, InProcessGateway
from tokenward.harness.oracle import (
    Forward as ModelForward,
)
from tokenward.harness.oracle import (
    HarnessRequest,
    Layout,
    ModelService,
    ModelToken,
    Scenario,
    StoreModel,
    TokenKind,
)
from tokenward.harness.oracle import (
    Mode as ModelMode,
)
from tokenward.harness.oracle import (
    Preflight as ModelPreflight,
)
from tokenward.harness.strategies import scenario_requests, scenarios, stores

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
UPSTREAM = "http://127.0.0.1:9"

# --- stores with services, and hosts to address -----------------------------------------------

# The scopes `harness.strategies.stores` gives out-of-scope tokens: the store refuses a scope
# naming no service, so with services registered these are services too.
SCOPE_SERVICES = ("other-service", "a", "b")
LAYOUT_SERVICES: tuple[ModelService, ...] = (
    ModelService("ipfs", ("ipfs.tokenward.test", "[2001:db8::1]"), Layout.IPFS, UPSTREAM),
    ModelService("avalanche", ("Avalanche.Tokenward.test.",), Layout.AVALANCHE, UPSTREAM),
    ModelService("fuji", ("fuji.tokenward.test:8443",), Layout.FUJI, UPSTREAM),
    ModelService("generic", ("generic.tokenward.test",), Layout.GENERIC, UPSTREAM),
)
# The in-process driver sends every regular-mode request to DEFAULT_HOST: with this service
# registered, regular mode reaches a service; without it, every host is foreign there.
GATEWAY_SERVICE = ModelService("gateway", (DEFAULT_HOST.upper() + ".",), Layout.GENERIC, UPSTREAM)


def _services(*extra: ModelService) -> Mapping[str, ModelService]:
    scoped = tuple(ModelService(name, (), Layout.GENERIC, UPSTREAM) for name in SCOPE_SERVICES)
    return {service.name: service for service in (*LAYOUT_SERVICES, *scoped, *extra)}


SERVICE_SETS: tuple[Mapping[str, ModelService], ...] = (
    {},
    _services(),
    _services(GATEWAY_SERVICE),
)
# What the client addresses (the Host header; in reverse mode also explain's URL host). None:
# the driver's own host.
HOSTS: tuple[str | None, ...] = (
    None,
    "ipfs.tokenward.test",
    "IPFS.TokenWard.Test.",
    "ipfs.tokenward.test:8080",
    "[2001:DB8:0::1]",
    "[2001:db8::1]:8443",
    "avalanche.tokenward.test",
    "AVALANCHE.tokenward.test.:80",
    "fuji.tokenward.test.",
    "generic.tokenward.test",
    "Gateway.Tokenward.Test.",
    "a",
    "nowhere.tokenward.test",
    "[::2]",
    "ipfs.tokenward.test..",
    "bad_host!",
)


@dataclass(frozen=True)
class Case:
    """One drawn request, the scenario it is sent under and the store it meets."""

    store: StoreModel
    scenario: Scenario
    request: HarnessRequest
    bare: bool = False  # explain is given the bare target and the Host line, not a URL


def routed(store: StoreModel, scenario: Scenario) -> tuple[str | None, Layout]:
    """The service a request reaches (for drawing tokens valid for it) and its layout."""
    host = addressed_host(where_it_goes(scenario))
    for service in store.services.values():
        if host in {addressed_host(name) for name in service.host_names}:
            return service.name, service.layout
    return None, scenario.layout


def where_it_goes(scenario: Scenario) -> str:
    """The host the addon routes by: reverse mode, the Host the client sent; regular mode,
    where the proxy connects, which the in-process driver makes DEFAULT_HOST whatever the
    Host header says."""
    if scenario.reverse:
        return scenario.service or DEFAULT_HOST
    return DEFAULT_HOST


@st.composite
def cases(draw: st.DrawFn) -> Case:
    services = draw(st.sampled_from(SERVICE_SETS))
    tokens = draw(stores(NOW)).tokens
    if not services:  # no service to scope a token to: the default service's tokens only
        tokens = {value: token for value, token in tokens.items() if token.scope is None}
    store = StoreModel(tokens, services)
    scenario = replace(
        draw(scenarios(NOW)),
        service=draw(st.sampled_from(HOSTS)),
        reverse=draw(st.booleans()),
    )
    service_name, layout = routed(store, scenario)
    request = draw(scenario_requests(store, layout, now=NOW, service_name=service_name))
    # A bare path is what a client sends a reverse proxy; in regular mode the host is the URL's.
    bare = scenario.reverse and draw(st.booleans())
    return Case(store, scenario, request, bare)


# --- both sides -------------------------------------------------------------------------------


def typed(latin1_text: str) -> str:
    """A Latin-1 view of bytes as a command line holds them (UTF-8; other bytes escaped)."""
    return latin1_text.encode("latin-1").decode("utf-8", "surrogateescape")


def explain_case(case: Case, gateway: InProcessGateway) -> Explanation:
    """`explain` on the gateway's store file, given what the addon is given."""
    scenario, request = case.scenario, case.request
    host_line = f"host: {scenario.service or DEFAULT_HOST}"
    lines = [host_line, *(f"{typed(name)}: {typed(value)}" for name, value in request.headers)]
    if request.body:  # as the driver frames a body, the way a client sends it
        lines.append(f"content-length: {len(request.body)}")
    url = typed(request.target)
    if not case.bare:
        url = f"http://{where_it_goes(scenario)}{url}"
    return explain(
        url,
        tuple(parse_header(line) for line in lines),
        method=typed(request.method),
        services=gateway.store.list_services(),
        options=Options(
            mode=Mode(scenario.mode.value),
            forward=Forward(scenario.forward.value),
            preflight=Preflight(scenario.preflight.value),
        ),
        default_layout=layout_named(scenario.layout.value),
        proxy_mode=ProxyMode.REVERSE if scenario.reverse else ProxyMode.REGULAR,
        lookup=store_lookup(gateway.store, "unused"),
        store_note="the harness's store",
        now=scenario.now,
    )


Verdict = tuple[int | None, str | None, str | None, bool]


def addon_verdict(observation: Observation) -> Verdict:
    """Status, error, placement and whether the proxy answered itself, as the addon gave them:
    its answer when it answered, else what the flow records (observe mode's verdict)."""
    if observation.answer is not None:
        body = json.loads(observation.answer.body)
        return observation.answer.status, body["error"], body["placement"], True
    recorded = observation.recorded
    if recorded is None:  # regular mode, a host that is no service: untouched
        return None, None, None, False
    verdict = recorded["verdict"]
    error = None if verdict == "accepted" else verdict
    return recorded.get("status"), error, recorded["placement"], False


def explain_verdict(explanation: Explanation) -> Verdict:
    shown = explanation.to_json()
    assert set(shown) == {"status", "error", "placement", "advice", "upstream"}
    status, error, placement = shown["status"], shown["error"], shown["placement"]
    assert status is None or isinstance(status, int)
    assert error is None or isinstance(error, str)
    assert placement is None or isinstance(placement, str)
    return status, error, placement, explanation.decision.refused


def without_host(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in headers if name.lower() != "host")


def shown_upstream(request: Request) -> dict[str, Any]:
    """`--json`'s `upstream` of the request the upstream received, without Host."""
    shown = redact_request(request)
    return {
        "target": shown_text(shown.target),
        "headers": [
            [shown_text(name), shown_text(value)] for name, value in without_host(shown.headers)
        ],
    }


def check_agree(case: Case) -> None:
    with InProcessGateway(case.store) as gateway:
        observation = gateway.send(case.request, case.scenario)
        explanation = explain_case(case, gateway)
    assert explain_verdict(explanation) == addon_verdict(observation)
    upstream = explanation.decision.upstream
    if observation.answer is not None:
        assert upstream is None and explanation.to_json()["upstream"] is None
        return
    assert upstream is not None and observation.upstream is not None
    (seen,) = observation.upstream
    assert upstream.target == seen.target
    assert without_host(upstream.headers) == without_host(seen.headers)
    received = Request(case.request.method, seen.target, without_host(seen.headers))
    shown = explanation.to_json()["upstream"]
    assert isinstance(shown, dict)
    assert {**shown, "headers": [h for h in shown["headers"] if h[0].lower() != "host"]} == (
        shown_upstream(received)
    )


# Examples beside the property: each kind of route, in both proxy modes.
VALID = "sm_pat_Va1idPersonalToken0000000000000000"
SCOPED = "sm_pat_ScopedToIpfsOnly000000000000000000"
EXAMPLE_STORE = StoreModel(
    {
        VALID: ModelToken("alice", TokenKind.PAT, expires_at=NOW + timedelta(days=30)),
        SCOPED: ModelToken("ipfs-only", TokenKind.PAT, scope=frozenset({"ipfs"})),
    },
    _services(GATEWAY_SERVICE),
)
DEFAULT_STORE = StoreModel({VALID: EXAMPLE_STORE.tokens[VALID]})


def _case(
    store: StoreModel,
    target: str,
    headers: tuple[tuple[str, str], ...] = (),
    *,
    host: str | None = None,
    reverse: bool = True,
    method: str = "GET",
    forward: ModelForward = ModelForward.STRIP,
    mode: ModelMode = ModelMode.ENFORCE,
    preflight: ModelPreflight = ModelPreflight.PASS,
    bare: bool = False,
) -> Case:
    scenario = Scenario(NOW, Layout.GENERIC, forward, mode, preflight, host, reverse)
    return Case(store, scenario, HarnessRequest(method, target, headers), bare)


EXAMPLES: tuple[Case, ...] = (
    # reverse mode: a host in another spelling, a path token at the ipfs position
    _case(EXAMPLE_STORE, f"/{VALID}/api/v0/version", host="IPFS.TokenWard.Test.:8080"),
    _case(EXAMPLE_STORE, "/api/v0/id", (("x-auth-token", SCOPED),), host="[2001:DB8:0::1]"),
    # reverse mode: a host that is no service (row 0), and one that is no host at all
    _case(EXAMPLE_STORE, "/", (("x-auth-token", VALID),), host="nowhere.tokenward.test"),
    _case(EXAMPLE_STORE, "/", (("x-auth-token", VALID),), host="ipfs.tokenward.test.."),
    # regular mode: the Host header names ipfs, the request goes to the gateway service
    _case(
        EXAMPLE_STORE,
        "/graphql?token=" + SCOPED,
        host="ipfs.tokenward.test",
        reverse=False,
        forward=ModelForward.HEADER,
    ),
    # regular mode, a host that is no service: untouched without a token, 403 with one
    _case(StoreModel({}, _services()), "/x", reverse=False),
    _case(StoreModel({}, _services()), "/x", (("referer", f"http://h/{VALID}"),), reverse=False),
    # the default service: observe mode, preflights
    _case(DEFAULT_STORE, f"/{VALID}/graphql?token=x", mode=ModelMode.OBSERVE),
    _case(
        DEFAULT_STORE,
        "/graphql",
        (("Origin", "null"), ("Access-Control-Request-Method", "POST")),
        method="OPTIONS",
    ),
    _case(DEFAULT_STORE, "/graphql", (("x-auth-token", VALID),), forward=ModelForward.PATH),
    # Found by the property: explain given a bare path routes by the Host line, as the addon
    # routes an origin-form request by its Host field (explain said 404 unknown_service).
    _case(EXAMPLE_STORE, f"/{SCOPED}/api/v0/version", host="Ipfs.tokenward.test.", bare=True),
    _case(EXAMPLE_STORE, "/", (("x-auth-token", VALID),), host="nowhere.tokenward.test", bare=True),
    # Bytes that are no ASCII: explain takes what a command line holds (UTF-8, other bytes as
    # surrogates), the addon what a client sent. A value that is no UTF-8 crashed explain
    # (UnicodeEncodeError) before `explain.raw_text`, and so did a method outside Latin-1.
    _case(DEFAULT_STORE, "/graphql", (("x-auth-token", "\xff"),)),
    _case(DEFAULT_STORE, "/graphql", (("x-auth-token", "\xd1\x95m_pat_" + "A" * 20),)),
    _case(DEFAULT_STORE, "/graphql", (("x-auth-token", VALID),), method="G\xd0\x96T"),
)


@given(case=cases())
@example(case=EXAMPLES[0])
@example(case=EXAMPLES[1])
@example(case=EXAMPLES[2])
@example(case=EXAMPLES[3])
@example(case=EXAMPLES[4])
@example(case=EXAMPLES[5])
@example(case=EXAMPLES[6])
@example(case=EXAMPLES[7])
@example(case=EXAMPLES[8])
@example(case=EXAMPLES[9])
@example(case=EXAMPLES[10])
@example(case=EXAMPLES[11])
@example(case=EXAMPLES[12])
@example(case=EXAMPLES[13])
@example(case=EXAMPLES[14])
def test_explain_gives_what_the_addon_does(case: Case) -> None:
    check_agree(case)


def test_the_examples_cover_each_route() -> None:
    """The examples above reach a service, an unknown host, a foreign host and the default
    service, in both proxy modes (so a change to them keeps the property's anchors)."""
    seen = set()
    for case in EXAMPLES:
        with InProcessGateway(case.store) as gateway:
            explanation = explain_case(case, gateway)
        seen.add((explanation.route.reach, explanation.route.service is None))
    assert len(seen) == 4


# --- the command ------------------------------------------------------------------------------

IPFS_HOST = "ipfs.example.com"


@dataclass(frozen=True)
class Store:
    path: Path
    token: str  # valid for ipfs only
    other: str  # valid for all services


@pytest.fixture
def store(tmp_path: Path) -> Store:
    path = tmp_path / "explain.db"
    command = ["--db", str(path)]
    add = ["services", "add", "ipfs", "--layout", "ipfs", "--host", IPFS_HOST]
    ok(cli(*add, "--upstream", "http://127.0.0.1:5001", *command))
    token = ok(
        cli("tokens", "create", "--name", "ci", "--expires", "30d", "--scope", "ipfs", *command)
    )
    other = ok(cli("tokens", "create", "--name", "all", "--expires", "never", *command))
    return Store(path, token.stdout.strip(), other.stdout.strip())


@dataclass(frozen=True)
class Ran:
    exit_code: int
    stdout: str
    stderr: str

    def json(self) -> dict[str, Any]:
        shown = json.loads(self.stdout)
        assert isinstance(shown, dict)
        return shown


def cli(*args: str) -> Ran:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return Ran(result.exit_code, result.stdout, result.stderr)


def ok(ran: Ran) -> Ran:
    assert ran.exit_code == 0, (ran.stdout, ran.stderr)
    return ran


def tokenward_program() -> str:
    """The installed `tokenward` script of the interpreter running the tests."""
    program = Path(sys.executable).parent / "tokenward"
    assert program.exists(), program
    return str(program)


def process(*args: str | bytes, cwd: Path | None = None) -> Ran:
    completed = subprocess.run(
        [tokenward_program(), *args], capture_output=True, cwd=cwd, timeout=60, check=False
    )
    stdout = completed.stdout.decode("utf-8", "replace")
    stderr = completed.stderr.decode("utf-8", "replace")
    return Ran(completed.returncode, stdout, stderr)


def explained(store: Store, *args: str) -> Ran:
    return cli("explain", "--db", str(store.path), *args)


def verdict_of(shown: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    return shown["status"], shown["error"], shown["placement"]


def test_json_keys_and_the_upstream_request(store: Store) -> None:
    ran = ok(
        explained(
            store,
            "--json",
            "--forward",
            "header",
            "-H",
            f"x-auth-token: {store.token}",
            "-H",
            "x-tokenward-kind: sat",
            f"http://{IPFS_HOST}/api/v0/version?arg=Qm%2Fx&flag",
        )
    )
    shown = ran.json()
    assert set(shown) == {"status", "error", "placement", "advice", "upstream"}
    assert verdict_of(shown) == (None, None, "header")
    assert shown["upstream"] == {
        "target": "/api/v0/version?arg=Qm%2Fx&flag",
        "headers": [
            ["x-auth-token", token_hint(store.token)],
            ["x-tokenward-token", "ci"],
            ["x-tokenward-kind", "pat"],
        ],
    }
    assert store.token not in ran.stdout + ran.stderr


@pytest.mark.parametrize(
    ("args", "exit_code", "verdict"),
    [
        pytest.param(("http://ipfs.example.com/{token}/api/v0/id",), 0, (None, None, "path")),
        pytest.param(("http://IPFS.Example.com.:8080/{token}/api/v0/id",), 0, (None, None, "path")),
        pytest.param(("http://ipfs.example.com/api/v0/id",), 1, (401, "missing_token", None)),
        pytest.param(
            ("--mode", "observe", "http://ipfs.example.com/api/v0/id"),
            0,
            (401, "missing_token", None),
            id="observe-forwards",
        ),
        pytest.param(
            ("http://ipfs.example.com/api/v0/id?token=sm_pat_UnknownUnknownUnknown00",),
            1,
            (401, "unknown_token", "query"),
        ),
        pytest.param(("http://nowhere.example.com/{token}",), 1, (404, "unknown_service", None)),
        pytest.param(("/api/v0/id?token={token}",), 1, (404, "unknown_service", None)),
        pytest.param(
            ("-H", "Host: IPFS.example.com:80", "/api/v0/id?token={token}"),
            0,
            (None, None, "query"),
            id="a-bare-path-goes-to-its-host-line",
        ),
        pytest.param(
            ("-H", "host: ipfs.example.com", "http://nowhere/{token}"),
            1,
            (404, "unknown_service", None),
            id="the-url-host-counts-before-the-host-line",
        ),
        pytest.param(
            ("--proxy-mode", "reverse", "http://nowhere.example.com/x"),
            1,
            (404, "unknown_service", None),
        ),
        pytest.param(
            ("--proxy-mode", "regular", "http://nowhere.example.com/x"), 0, (None, None, None)
        ),
        pytest.param(
            ("--proxy-mode", "regular", "http://nowhere.example.com/x?token={token}"),
            1,
            (403, "token_to_unknown_host", None),
        ),
        pytest.param(
            ("--proxy-mode", "regular", "--unknown-hosts", "pass", "http://nowhere/?t={token}"),
            0,
            (None, None, None),
        ),
        pytest.param(
            ("--proxy-mode", "regular", "-H", "x-auth-token: {token}", "http://IPFS.example.com./"),
            0,
            (None, None, "header"),
            id="regular-reaches-a-service",
        ),
        pytest.param(
            # The Host header routes nothing: the URL's host is where the request goes.
            ("--proxy-mode", "regular", "-H", "host: ipfs.example.com", "http://nowhere/{token}"),
            1,
            (403, "token_to_unknown_host", None),
            id="regular-host-header-routes-nothing",
        ),
    ],
)
def test_exit_status_follows_the_verdict(
    store: Store, args: tuple[str, ...], exit_code: int, verdict: tuple[Any, ...]
) -> None:
    filled = [arg.format(token=store.token) for arg in args]
    ran = explained(store, "--json", *filled)
    assert ran.exit_code == exit_code, (ran.stdout, ran.stderr)
    shown = ran.json()
    assert verdict_of(shown) == verdict
    assert (shown["upstream"] is None) == (exit_code == 1)
    text = explained(store, *filled)
    assert text.exit_code == exit_code
    assert store.token not in ran.stdout + text.stdout + ran.stderr + text.stderr


@pytest.mark.parametrize(
    ("args", "quoted"),
    [
        (("ftp://{token}@host/",), "'ftp://{hint}@host/'"),
        (("http:///{token}",), "'http:///{hint}'"),
        # urlsplit's own error quotes the authority as it is, here with the token in it
        (("http://{token}\uff20host/x",), "'http://{hint}\uff20host/x'"),
        (("-H", "{token}", "http://ipfs.example.com/"), "'{hint}'"),
        (("-H", ": {token}", "http://ipfs.example.com/"), "': {hint}'"),
    ],
)
def test_usage_errors_quote_the_token_as_its_hint(
    store: Store, args: tuple[str, ...], quoted: str
) -> None:
    ran = explained(store, *(arg.format(token=store.token) for arg in args))
    assert ran.exit_code == 2
    assert quoted.format(hint=token_hint(store.token)) in ran.stderr
    assert store.token not in ran.stdout + ran.stderr


def test_unknown_option_values_are_usage_errors(store: Store) -> None:
    for option in ("--proxy-mode", "--mode", "--forward", "--preflight", "--unknown-hosts"):
        ran = explained(store, option, "sideways", "http://ipfs.example.com/")
        assert ran.exit_code == 2, option
        assert "sideways" in ran.stderr


# What a store that cannot be read leaves to judge: rows 1 to 4, and 503 where rows 5 to 8
# would need it. No services are known then, so the default service (generic) judges.
STORE_FAILS: list[tuple[tuple[str, ...], tuple[Any, ...]]] = [
    (("http://h/graphql",), (401, "missing_token", None)),
    (("-H", "x-auth-token: sm_pat_short", "http://h/"), (401, "malformed_token", "header")),
    (("http://h/a/{token}/b",), (400, "misplaced_token", None)),
    (("-H", "x-auth-token: {token}", "http://h/?token={other}"), (400, "ambiguous_token", None)),
    (("-H", "x-auth-token: {token}", "http://h/"), (503, "store_unavailable", "header")),
    (("http://h/graphql/{token}",), (503, "store_unavailable", "path")),
    (("http://h/?token=sm_aat_UnknownUnknownUnknown00",), (503, "store_unavailable", "query")),
]


@pytest.mark.parametrize("broken", ["missing", "not a store"])
@pytest.mark.parametrize(("args", "verdict"), STORE_FAILS)
def test_a_store_that_cannot_be_read(
    store: Store, tmp_path: Path, broken: str, args: tuple[str, ...], verdict: tuple[Any, ...]
) -> None:
    path = tmp_path / "broken.db"
    if broken == "not a store":
        path.write_bytes(b"this is no SQLite file\n" * 100)
    filled = [arg.format(token=store.token, other=store.other) for arg in args]
    ran = cli("explain", "--db", str(path), "--json", *filled)
    assert ran.exit_code == 1, (ran.stdout, ran.stderr)
    assert verdict_of(ran.json()) == verdict
    observed = cli("explain", "--db", str(path), "--mode", "observe", *filled)
    assert observed.exit_code == 0  # observe mode refuses nothing, not even then
    assert f"verdict   {verdict[0]} {verdict[1]}" in observed.stdout
    assert store.token not in ran.stdout + observed.stdout + ran.stderr + observed.stderr


@pytest.mark.parametrize(
    ("args", "verdict"),
    [
        (("-H", "x-auth-token: {token}", "http://h/"), (503, "store_unavailable", "header")),
        (("http://h/graphql",), (401, "missing_token", None)),
        (("-H", "x-auth-token: x", "http://h/"), (401, "malformed_token", "header")),
    ],
)
def test_a_missing_store_gives_what_the_proxy_gives(
    store: Store, tmp_path: Path, args: tuple[str, ...], verdict: tuple[Any, ...]
) -> None:
    """The addon whose store file went away, and explain on that path, side by side."""
    filled = [arg.format(token=store.token) for arg in args]
    model = StoreModel({store.token: ModelToken("ci", TokenKind.PAT)})
    with InProcessGateway(model, tmp_path) as gateway:
        for file in tmp_path.glob("tokenward.db*"):
            file.unlink()
        time.sleep(0.06)  # the addon looks at the store's path every 50 ms
        headers = tuple(parse_header(line) for line in filled[1:-1:2])
        target = filled[-1].removeprefix("http://h")
        sent = HarnessRequest("GET", target, headers)
        observation = gateway.send(sent, Scenario(NOW))
    ran = cli("explain", "--db", str(tmp_path / "tokenward.db"), "--json", *filled)
    assert addon_verdict(observation) == (*verdict, True)
    assert (*verdict_of(ran.json()), ran.exit_code == 1) == (*verdict, True)


def test_a_real_process(store: Store, tmp_path: Path) -> None:
    """Exit statuses 0, 1 and 2 as a shell sees them, and bytes that are no UTF-8 taken as
    bytes (they crashed explain before: a traceback and exit status 1)."""
    db = ["--db", str(store.path)]
    forwarded = process("explain", *db, "--json", f"http://{IPFS_HOST}/{store.token}/api/v0/id")
    assert forwarded.exit_code == 0, forwarded.stderr
    assert verdict_of(forwarded.json()) == (None, None, "path")
    refused = process("explain", *db, f"http://{IPFS_HOST}/api/v0/id")
    assert refused.exit_code == 1 and "401 missing_token" in refused.stdout
    usage = process("explain", *db, f"gopher://{store.token}")
    assert usage.exit_code == 2 and token_hint(store.token) in usage.stderr
    for args in (
        ["-H", b"x-auth-token: \xff", f"http://{IPFS_HOST}/".encode()],
        [b"http://ipfs.example.com/\xff/" + store.token.encode()],
        ["-X", b"G\xffT", f"http://{IPFS_HOST}/{store.token}/api/v0/id".encode()],
        [b"http://ipfs.example.com\xff/api"],
    ):
        ran = process("explain", *db, *args)
        assert "Traceback" not in ran.stderr, ran.stderr
        assert ran.exit_code in (0, 1) and "verdict" in ran.stdout, (ran.stdout, ran.stderr)
    for ran in (forwarded, refused, usage):
        assert store.token not in ran.stdout + ran.stderr


def test_nothing_explain_prints_holds_a_full_token(store: Store) -> None:
    token, other = store.token, store.other
    encoded = "%73" + token[1:]
    runs = [
        (f"http://{IPFS_HOST}/{token}/api/v0/id?token={token}",),
        (f"http://{IPFS_HOST}/{encoded}/api/v0/id",),
        (f"http://{IPFS_HOST}/x/{token}.json?{other}=1",),
        ("--forward", "query", "-H", f"x-auth-token: {token}", f"http://{IPFS_HOST}/api/v0/id"),
        ("--forward", "path", "-H", f"x-auth-token: {token}", f"http://{IPFS_HOST}/api/v0/id"),
        ("--forward", "keep", "-H", f"x-auth-token: {token}", f"http://{IPFS_HOST}/api/v0/id"),
        (
            "-H",
            f"referer: http://a/?t={token}",
            "-H",
            f"x-auth-token: {token}",
            f"http://{IPFS_HOST}/",
        ),
        ("--mode", "observe", "-H", f"{token}: {other}", f"http://{IPFS_HOST}/api/v0/id"),
        ("--mode", "observe", "-X", token, f"http://{IPFS_HOST}/{other}/api/v0/id"),
        ("-X", other, f"http://{IPFS_HOST}/api/v0/id"),
        (f"http://{token}/",),
        (f"http://{IPFS_HOST}:{token}/",),
        ("--proxy-mode", "regular", f"http://{token}.example.com/?x={other}"),
        ("--proxy-mode", "regular", "--mode", "observe", f"http://elsewhere/{token}"),
        ("--proxy-mode", "regular", "--unknown-hosts", "pass", f"http://elsewhere/{token}"),
        (f"ws://{IPFS_HOST}/api/v0/id#{token}",),
        (f"http://{other}@{IPFS_HOST}/{token}/api/v0/id",),
        (f"ftp://{token}",),
        ("-H", f"{token}", f"http://{IPFS_HOST}/"),
        ("-X", token, f"http://{IPFS_HOST}\uff20{token}/"),
    ]
    for args in runs:
        for json_flag in ((), ("--json",)):
            ran = explained(store, *json_flag, *args)
            assert ran.exit_code in (0, 1, 2), args
            for secret in (token, other):
                assert secret not in ran.stdout + ran.stderr, (args, ran.stdout, ran.stderr)
                assert secret.lower() not in (ran.stdout + ran.stderr).lower(), args
    missing = cli("explain", "--db", str(store.path) + ".gone", f"http://h/{token}")
    assert token not in missing.stdout + missing.stderr


# --- the docs ---------------------------------------------------------------------------------

DOC = Path(__file__).resolve().parent.parent / "docs" / "debugging.md"
COMMAND = re.compile(r"^\$ (?P<command>.+?)\s+# exit (?P<status>\d)$")


@dataclass(frozen=True)
class DocCommand:
    command: str
    status: int
    shown: tuple[str, ...]  # lines printed under it in the doc


def doc_commands() -> list[DocCommand]:
    """Each `$ command  # exit N` line of the doc's plain code blocks and the lines under it
    (the `session` blocks, with a running proxy, are tests/test_proxy.py's)."""
    commands: list[DocCommand] = []
    fence: str | None = None  # the open block's language
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            fence = line.removeprefix("```") if fence is None else None
            continue
        if fence != "":
            continue
        match = COMMAND.match(line)
        if match is not None:
            commands.append(DocCommand(match["command"], int(match["status"]), ()))
        elif commands and line.strip():
            last = commands[-1]
            commands[-1] = replace(last, shown=(*last.shown, line))
    return commands


def test_the_docs_commands_do_what_the_docs_say(tmp_path: Path) -> None:
    commands = doc_commands()
    assert len(commands) >= 8 and all(
        c.command.startswith(("tokenward", "TOKEN=")) for c in commands
    )
    # One shell runs them all, as a reader would, each followed by a marker with its status.
    marker = "::tokenward-doc-exit"
    script = "\n".join(f'{c.command}\necho "{marker} $?"' for c in commands)
    environment = {
        **os.environ,
        "PATH": f"{Path(tokenward_program()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    environment.pop("TOKENWARD_DB", None)
    completed = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=environment,
        timeout=120,
        check=False,
    )
    ran: list[tuple[int, str]] = []
    output: list[str] = []
    for line in completed.stdout.splitlines():
        if line.startswith(marker):
            ran.append((int(line.removeprefix(marker)), "\n".join(output)))
            output = []
        else:
            output.append(line)
    assert len(ran) == len(commands), (completed.stdout, completed.stderr)
    for doc_command, (status, printed) in zip(commands, ran, strict=True):
        assert status == doc_command.status, (doc_command.command, printed, completed.stderr)
        for line in doc_command.shown:
            assert line in printed, (doc_command.command, line, printed)
    printed = completed.stdout + completed.stderr
    assert re.search(r"sm_(pat|aat|sat)_[A-Za-z0-9]{16,}", printed) is None, printed

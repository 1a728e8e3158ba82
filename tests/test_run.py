"""Running the suite: comparing observations, plans, the matrix, shrinking, the CLI command.

The addon's own conformance in process is here too: the exhaustive matrix under every option
combination and hypothesis examples under every forward value and mode. It must pass.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.cli import main
from tokenward.fixtures.broken_gateways import BrokenGateway, Flaw
from tokenward.fixtures.upstream import RecordingUpstream
from tokenward.harness.drivers import Answer, Observation, UpstreamSeen
from tokenward.harness.inprocess import InProcessGateway
from tokenward.harness.oracle import (
    ErrorCode,
    Expectation,
    Forward,
    HarnessRequest,
    Layout,
    Mode,
    Preflight,
    Scenario,
    StrictCheck,
    TokenKind,
    expect,
    is_token_shaped,
)
from tokenward.harness.run import (
    EXAMPLES_ROW,
    Examination,
    Options,
    Outcome,
    ambiguity_matrix,
    examine,
    example_requests,
    external_plan,
    extra_cases,
    new_token,
    planned_checks,
    run_conformance,
    self_test_plan,
    strict_checks_explaining,
)
from tokenward.harness.strategies import TokenState, classify_tokens, exhaustive_matrix

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
BASE_URL = "http://gateway.tokenward.test"
PLAN = self_test_plan("http://127.0.0.1:9", base_url=BASE_URL, clock=lambda: NOW)
T = PLAN.tokens.valid
GENERIC = Scenario(NOW, Layout.GENERIC, service=PLAN.hosts[Layout.GENERIC])


def expectation(request: HarnessRequest, scenario: Scenario = GENERIC) -> Expectation:
    return expect(request, PLAN.store, scenario)


def forwarded(target: str, headers: tuple[tuple[str, str], ...], body: bytes = b"") -> Observation:
    seen = UpstreamSeen.of_parts(target, headers, body)
    return Observation(None, (seen,), added_headers=frozenset({"host"}))


def rejected(status: int, document: object, *headers: tuple[str, str]) -> Observation:
    answer = Answer(status, headers, json.dumps(document).encode())
    return Observation(answer, ())


def problems_of(request: HarnessRequest, observation: Observation) -> tuple[str, ...]:
    return examine(
        request,
        expectation(request),
        observation,
        secrets=PLAN.secrets(),
        env_vars=PLAN.env_vars(),
    ).problems


# --- comparing ----------------------------------------------------------------------------------


def test_a_forward_that_should_be_a_rejection() -> None:
    request = HarnessRequest("GET", "/graphql")
    examination = examine(request, expectation(request), forwarded("/graphql", ()))
    assert examination.signature == "expected 401 missing_token, got forwarded"


def test_a_rejection_must_say_everything_the_contract_asks() -> None:
    request = HarnessRequest(
        "GET", "/graphql?token=sm_pat_short", (("Origin", "https://app.example"),)
    )
    # malformed, in the query: 401, placement "query", the realm, the origin
    body = {"error": "malformed_token", "message": "no", "placement": None}
    problems = problems_of(request, rejected(401, body))
    assert problems == (
        "body: placement is None, expected <Placement.QUERY: 'query'>",
        "www-authenticate: expected 'Token realm=\"tokenward\"', got None",
        "access-control-allow-origin: expected 'https://app.example', got None",
    )


def test_an_answer_holding_a_token_is_a_leak() -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", PLAN.tokens.revoked),))
    body = {"error": "revoked_token", "message": f"{PLAN.tokens.revoked} is revoked"}
    realm = ("WWW-Authenticate", 'Token realm="tokenward"')
    problems = problems_of(request, rejected(401, {**body, "placement": "header"}, realm))
    assert problems == ("leak: the answer holds a full token",)


def test_upstream_problems_name_tokens_by_their_variables() -> None:
    request = HarnessRequest("GET", f"/graphql?token={T}&b=a+b")
    identity = (("x-tokenward-token", "a-valid"), ("x-tokenward-kind", "pat"))
    problems = problems_of(request, forwarded(f"/graphql?b=a+b&token={T}", identity))
    assert problems == (
        "upstream target: expected '/graphql?b=a+b', "
        "got '/graphql?b=a+b&token=$TOKENWARD_VALID_TOKEN'",
    )


def test_client_identity_headers_must_not_pass() -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", T), ("X-Tokenward-Token", "eve")))
    kept = (
        ("X-Tokenward-Token", "eve"),
        ("x-tokenward-token", "a-valid"),
        ("x-tokenward-kind", "pat"),
    )
    (problem,) = problems_of(request, forwarded("/graphql", kept))
    assert problem.startswith("upstream identity headers:")


def test_unknown_token_names_are_checked_for_presence_only() -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", T),))
    seen = forwarded("/graphql", (("x-tokenward-token", "theirs"), ("x-tokenward-kind", "pat")))
    known = examine(request, expectation(request), seen)
    unknown = examine(request, expectation(request), seen, token_names_known=False)
    assert known.signature == "forwarded: upstream identity headers differs"
    assert unknown.passed


def test_headers_other_than_the_token_arrive_unchanged() -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", T), ("Accept", "*/*")))
    identity = (("x-tokenward-token", "a-valid"), ("x-tokenward-kind", "pat"))
    moved = forwarded("/graphql", (("accept", "*/*"), *identity))
    assert problems_of(request, moved) == (
        "upstream headers: expected (('Accept', '*/*'),), got (('accept', '*/*'),)",
    )


def test_an_opened_websocket_must_echo() -> None:
    headers = (
        ("x-auth-token", T),
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "13"),
    )
    request = HarnessRequest("GET", "/graphql", headers, websocket=True)
    identity = (("x-tokenward-token", "a-valid"), ("x-tokenward-kind", "pat"))
    seen = UpstreamSeen.of_parts("/graphql", (*headers[1:], *identity), b"")
    silent = Observation(Answer(101, (), b""), (seen,), websocket_echo=False)
    assert problems_of(request, silent) == (
        "websocket: the opened WebSocket did not echo the probe message",
    )


def test_without_the_upstream_any_other_answer_counts_as_forwarded() -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", T),))
    upstream_error = Observation(Answer(500, (), b'{"error": "node down"}'), None)
    assert examine(request, expectation(request), upstream_error).passed
    refused = Observation(Answer(401, (), b'{"error": "missing_token"}'), None)
    assert examine(request, expectation(request), refused).actual == "401 missing_token"


# --- plans and the matrix -----------------------------------------------------------------------


@pytest.mark.parametrize("layout", list(Layout))
def test_the_self_test_store_has_each_state_for_each_layout(layout: Layout) -> None:
    by_state = classify_tokens(PLAN.store, now=NOW, service_name=PLAN.service_name(layout))
    for state in TokenState:
        if state not in (TokenState.UNKNOWN, TokenState.MALFORMED):
            assert by_state[state] == (PLAN.tokens.value(state),), state


def test_external_plans_need_a_valid_token_and_never_print_one() -> None:
    with pytest.raises(ValueError, match=r"\$TOKENWARD_VALID_TOKEN"):
        external_plan(BASE_URL, Layout.IPFS, {})
    with pytest.raises(ValueError, match=r"^\$TOKENWARD_EXPIRED_TOKEN does not hold a token$"):
        external_plan(BASE_URL, Layout.IPFS, {TokenState.VALID: T, TokenState.EXPIRED: "secret"})
    with pytest.raises(ValueError, match="a token of its own"):
        external_plan(BASE_URL, Layout.IPFS, {TokenState.VALID: T, TokenState.REVOKED: T})


def test_states_without_a_token_are_not_tested() -> None:
    plan = external_plan(BASE_URL, Layout.IPFS, {TokenState.VALID: T}, clock=lambda: NOW)
    assert plan.untested == {
        TokenState.SECOND_VALID,
        TokenState.REVOKED,
        TokenState.EXPIRED,
        TokenState.OUT_OF_SCOPE,
    }
    assert plan.env_vars() == {T: "TOKENWARD_VALID_TOKEN"}


@pytest.mark.parametrize("layout", list(Layout))
def test_the_two_token_rows_are_all_ambiguous(layout: Layout) -> None:
    cases = ambiguity_matrix(PLAN.tokens, layout)
    assert len(cases) == (7 if layout is Layout.GENERIC else 6)
    scenario = PLAN.scenario(layout)
    for name, _, request in cases:
        assert expect(request, PLAN.store, scenario).error is ErrorCode.AMBIGUOUS_TOKEN, name


def test_planned_checks_count_every_progress_step() -> None:
    steps: list[int] = []
    with InProcessGateway(PLAN.store) as gateway:
        run_conformance(gateway, PLAN, title="t", examples=3, progress=steps.append)
    assert len(steps) == planned_checks(PLAN, 3)


# --- the addon's conformance, in process --------------------------------------------------------

OPTION_SETS = [
    Options(forward, mode, preflight)
    for forward in Forward
    for mode in Mode
    for preflight in Preflight
]


@pytest.fixture(scope="module")
def addon() -> Iterator[InProcessGateway]:
    with InProcessGateway(PLAN.store) as gateway:
        yield gateway


@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda options: options.label)
def test_the_addon_passes_the_matrix(addon: InProcessGateway, options: Options) -> None:
    plan = replace(PLAN, options=options)
    result = run_conformance(addon, plan, title="in", examples=0)
    assert result.passed_strict, [(f.name, f.problems) for f in result.failures]
    extra = sum(len(extra_cases(plan, layout)) for layout in Layout)
    assert len(result.results) == len(exhaustive_matrix(PLAN.tokens)) + 25 + extra


@pytest.mark.parametrize(
    "options",
    [Options(forward, mode) for forward in Forward for mode in Mode],
    ids=lambda options: options.label,
)
def test_the_addon_passes_hypothesis_examples(addon: InProcessGateway, options: Options) -> None:
    plan = replace(PLAN, options=options)
    result = run_conformance(addon, plan, title="in-process", examples=12)
    assert result.passed_strict, [(f.name, f.problems) for f in result.failures]
    assert sum(r.row == EXAMPLES_ROW for r in result.results) == 12 * len(Layout)


# --- shrinking ----------------------------------------------------------------------------------


class FirstHeaderOnly:
    """The addon, shown only the first x-auth-token field: ambiguity it cannot see."""

    def __init__(self, gateway: InProcessGateway) -> None:
        self.gateway = gateway

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation:
        fields = [
            i for i, (name, _) in enumerate(request.headers) if name.lower() == "x-auth-token"
        ]
        headers = tuple(h for i, h in enumerate(request.headers) if i not in fields[1:])
        return self.gateway.send(replace(request, headers=headers), scenario)


def test_failures_shrink_to_a_minimal_example(addon: InProcessGateway) -> None:
    plan = replace(PLAN, layouts=(Layout.GENERIC,))
    result = run_conformance(FirstHeaderOnly(addon), plan, title="shrink", examples=60, run_seed=9)
    assert not result.passed
    by_kind = {r.signature: r for r in result.minimal}
    minimal = by_kind["expected 400 ambiguous_token, got forwarded"]
    assert minimal.minimal and minimal.outcome is Outcome.FAILED
    fields = [v for n, v in minimal.request.headers if n.lower() == "x-auth-token"]
    assert len(fields) == 2 and len(minimal.request.headers) <= 3
    assert "?" not in minimal.request.target and minimal.request.body == b""


# --- levels: required against strict -------------------------------------------------------------


class KindSpelledOut:
    """The addon, with x-tokenward-kind spelled out on the way up: a strict difference only."""

    WORDS: ClassVar[dict[str, str]] = {
        "pat": "personal",
        "aat": "application",
        "sat": "service_account",
    }

    def __init__(self, gateway: InProcessGateway) -> None:
        self.gateway = gateway

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation:
        observation = self.gateway.send(request, scenario)
        seen = tuple(
            replace(
                up,
                headers=tuple(
                    (n, self.WORDS.get(v, v) if n.lower() == "x-tokenward-kind" else v)
                    for n, v in up.headers
                ),
            )
            for up in observation.upstream or ()
        )
        return replace(observation, upstream=seen)


class ChallengeEverywhere:
    """The addon, with WWW-Authenticate added to every answer it gives itself."""

    def __init__(self, gateway: InProcessGateway) -> None:
        self.gateway = gateway

    def send(self, request: HarnessRequest, scenario: Scenario) -> Observation:
        observation = self.gateway.send(request, scenario)
        answer = observation.answer
        if answer is None or answer.header("www-authenticate") is not None:
            return observation
        challenged = (*answer.headers, ("WWW-Authenticate", 'Token realm="tokenward"'))
        return replace(observation, answer=replace(answer, headers=challenged))


@pytest.mark.parametrize(
    ("wrapper", "check"),
    [
        (KindSpelledOut, StrictCheck.IDENTITY_KIND_CODE),
        (ChallengeEverywhere, StrictCheck.WWW_AUTHENTICATE_ONLY_ON_401),
    ],
)
def test_a_permissive_choice_is_a_strict_finding_not_a_failure(
    addon: InProcessGateway, wrapper: type[KindSpelledOut | ChallengeEverywhere], check: StrictCheck
) -> None:
    plan = replace(PLAN, layouts=(Layout.GENERIC,))
    result = run_conformance(wrapper(addon), plan, title="lenient", examples=20, run_seed=3)
    assert result.passed and not result.passed_strict
    assert result.strict_checks_found() == (check,)
    assert {r.signature for r in result.strict_findings} == {f"strict: {check}"}


def test_a_required_difference_stays_a_failure_under_every_relaxation(
    addon: InProcessGateway,
) -> None:
    request = HarnessRequest("GET", "/graphql", (("x-auth-token", T), ("x-auth-token", T + "x")))
    observation = FirstHeaderOnly(addon).send(request, GENERIC)

    def examined(relaxed: frozenset[StrictCheck]) -> Examination:
        return examine(request, expect(request, PLAN.store, GENERIC, relaxed), observation)

    assert not examined(frozenset()).passed
    assert strict_checks_explaining(examined) == ()


@pytest.mark.parametrize(
    ("check", "request_", "strict", "permissive"),
    [
        (
            StrictCheck.EMPTY_LIST_ELEMENT,
            HarnessRequest("GET", "/graphql", (("x-auth-token", f"{T},"),)),
            ErrorCode.AMBIGUOUS_TOKEN,
            None,
        ),
        (
            StrictCheck.BARE_TOKEN_PARAMETER,
            HarnessRequest("GET", "/graphql?token"),
            ErrorCode.MALFORMED_TOKEN,
            ErrorCode.MISSING_TOKEN,
        ),
        (
            StrictCheck.DEEP_PERCENT_ENCODING,
            HarnessRequest("GET", f"/graphql/%25{ord(T[0]):02X}{T[1:]}"),
            ErrorCode.MISPLACED_TOKEN,
            ErrorCode.MISSING_TOKEN,
        ),
        (
            StrictCheck.DEEP_PERCENT_ENCODING,
            HarnessRequest("GET", f"/graphql/a%2F{T}/x"),
            ErrorCode.MISPLACED_TOKEN,
            ErrorCode.MISSING_TOKEN,
        ),
        (
            StrictCheck.NON_ASCII_BOUNDARY,
            HarnessRequest("GET", f"/graphql?x=%C3%A9{T}"),
            ErrorCode.MISPLACED_TOKEN,
            ErrorCode.MISSING_TOKEN,
        ),
    ],
)
def test_each_relaxation_takes_the_permissive_side(
    check: StrictCheck,
    request_: HarnessRequest,
    strict: ErrorCode,
    permissive: ErrorCode | None,
) -> None:
    assert expect(request_, PLAN.store, GENERIC).error is strict
    assert expect(request_, PLAN.store, GENERIC, frozenset({check})).error is permissive


def test_the_avalanche_endpoint_case_is_strict() -> None:
    scenario = PLAN.scenario(Layout.AVALANCHE)
    request = HarnessRequest("POST", f"/ext/bc/c/rpc/{T}")
    assert expect(request, PLAN.store, scenario).error is ErrorCode.MISPLACED_TOKEN
    relaxed = expect(request, PLAN.store, scenario, frozenset({StrictCheck.ENDPOINT_CASE}))
    assert relaxed.error is None and relaxed.upstream is not None
    assert relaxed.upstream.target == "/ext/bc/c/rpc"


# The generated requests never hold these features, so relaxing them must change nothing there.
ABSENT_FROM_EXAMPLES = frozenset(
    {StrictCheck.EMPTY_LIST_ELEMENT, StrictCheck.BARE_TOKEN_PARAMETER, StrictCheck.ENDPOINT_CASE}
)


@given(st.data())
def test_a_relaxation_changes_nothing_where_its_feature_is_absent(data: st.DataObject) -> None:
    layout = data.draw(st.sampled_from(Layout))
    request = data.draw(example_requests(PLAN, layout))
    scenario = PLAN.scenario(layout)
    strict = expect(request, PLAN.store, scenario)
    relaxed = expect(request, PLAN.store, scenario, ABSENT_FROM_EXAMPLES)
    assert replace(relaxed, relaxed=frozenset()) == strict


# --- the command --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording() -> Iterator[RecordingUpstream]:
    upstream = RecordingUpstream()
    upstream.start_in_thread()
    try:
        yield upstream
    finally:
        upstream.stop_thread()


def given_tokens() -> dict[TokenState, str]:
    return {
        TokenState.VALID: new_token(TokenKind.PAT),
        TokenState.SECOND_VALID: new_token(TokenKind.AAT),
        TokenState.REVOKED: new_token(TokenKind.SAT),
    }


def token_environment(tokens: dict[TokenState, str]) -> dict[str, str]:
    names = {
        TokenState.VALID: "TOKENWARD_VALID_TOKEN",
        TokenState.SECOND_VALID: "TOKENWARD_SECOND_TOKEN",
        TokenState.REVOKED: "TOKENWARD_REVOKED_TOKEN",
    }
    return {names[state]: token for state, token in tokens.items()}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ([], "give either --target URL or --self"),
        (["--self", "--target", "http://x"], "give either --target URL or --self"),
        (["--target", "http://x"], "--target needs --layout and --valid-token"),
        (["--self", "--upstream-log", "http://x"], "--upstream-log is for --target"),
    ],
)
def test_the_command_refuses_unclear_requests(arguments: list[str], message: str) -> None:
    outcome = CliRunner().invoke(
        main, ["conformance", *arguments], env={"TOKENWARD_VALID_TOKEN": ""}
    )
    assert outcome.exit_code == 2
    assert message in outcome.output


def test_the_command_reports_a_broken_gateway(recording: RecordingUpstream, tmp_path: Path) -> None:
    tokens = given_tokens()
    plan = external_plan("http://x", Layout.IPFS, tokens)
    with BrokenGateway(Flaw.AMBIGUITY_BLIND, plan.store, Layout.IPFS, recording.url) as gateway:
        outcome = CliRunner().invoke(
            main,
            [
                "conformance",
                "--target",
                gateway.url,
                "--layout",
                "ipfs",
                "--upstream-log",
                recording.control_url,
                "--examples",
                "5",
                "--json",
                str(tmp_path / "report.json"),
                "--junit",
                str(tmp_path / "report.xml"),
            ],
            env=token_environment(tokens),
        )
    assert outcome.exit_code == 1, outcome.output
    assert "NOT TESTED: no token given for expired ($TOKENWARD_EXPIRED_TOKEN)" in outcome.output
    assert "FAILED [ipfs] expected 400 ambiguous_token, got forwarded" in outcome.output
    assert re.search(r"\nheader \(2 tokens\) +0/1\n", outcome.output)
    assert re.search(r'"\$TOKENWARD_(VALID|SECOND)_TOKEN"', outcome.output)  # in curl
    written = (tmp_path / "report.json").read_text() + (tmp_path / "report.xml").read_text()
    for token in tokens.values():
        assert token not in outcome.output and token not in written
    assert json.loads((tmp_path / "report.json").read_text())["passed"] is False
    suite = ElementTree.parse(tmp_path / "report.xml").getroot().find("testsuite")
    assert suite is not None and int(suite.get("failures", "0")) > 0
    assert int(suite.get("skipped", "0")) > 0


def test_the_command_passes_a_correct_gateway_with_status_and_body_only(
    recording: RecordingUpstream,
) -> None:
    # A gateway that keeps query tokens is wrong only upstream: without the log it passes.
    tokens = given_tokens()
    plan = external_plan("http://x", Layout.GENERIC, tokens)
    with BrokenGateway(Flaw.QUERY_TOKEN_KEPT, plan.store, Layout.GENERIC, recording.url) as gw:
        arguments = ["conformance", "--target", gw.url, "--layout", "generic", "--examples", "5"]
        outcome = CliRunner().invoke(main, arguments, env=token_environment(tokens))
    assert outcome.exit_code == 0, outcome.output
    assert "0 failed" in outcome.output


@pytest.mark.e2e
def test_the_command_checks_the_proxy_it_starts(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    arguments = ["conformance", "--self", "--examples", "5", "--json", str(report)]
    outcome = CliRunner().invoke(main, arguments)
    assert outcome.exit_code == 0, outcome.output
    assert re.search(r"\nheader\+query\+path +14/14 +7/7 +7/7 +7/7\n", outcome.output)
    assert re.search(r"\nheader\+path \(2 tokens\) +1/1 +1/1 +1/1 +1/1\n", outcome.output)
    document = json.loads(report.read_text())
    assert document["passed"] is True
    assert {case["outcome"] for case in document["runs"][0]["cases"]} == {"passed"}


@given(layout=st.sampled_from(Layout), examples=st.integers(0, 50))
@example(layout=Layout.GENERIC, examples=0)
def test_planned_checks_grow_with_examples(layout: Layout, examples: int) -> None:
    plan = replace(PLAN, layouts=(layout,))
    matrix = len(exhaustive_matrix(PLAN.tokens, [layout]))
    two_tokens = len(ambiguity_matrix(PLAN.tokens, layout))
    extra = len(extra_cases(plan, layout))
    assert planned_checks(plan, examples) == matrix + two_tokens + extra + examples


def test_plans_refuse_untested_made_up_states() -> None:
    with pytest.raises(ValueError, match="made up"):
        replace(PLAN, untested=frozenset({TokenState.UNKNOWN}))


def test_the_addon_passes_on_an_unreadable_store() -> None:
    plan = replace(PLAN, store=replace(PLAN.store, available=False), layouts=(Layout.IPFS,))
    with InProcessGateway(plan.store) as gateway:
        result = run_conformance(gateway, plan, title="unreadable", examples=20, run_seed=2)
    assert result.passed_strict, [(f.name, f.problems) for f in result.failures]
    unavailable = [r for r in result.results if r.expected == "503 store_unavailable"]
    # rows 5-8 need the store: every token-shaped value alone in its placements gets there
    assert {r.name for r in unavailable} >= {"header@ipfs:valid", "query@ipfs:unknown"}


def test_the_matrix_malformed_token_is_not_token_shaped() -> None:
    assert not is_token_shaped(PLAN.tokens.malformed)
    (case,) = [
        c for c in exhaustive_matrix(PLAN.tokens, [Layout.IPFS]) if c.id == "header@ipfs:malformed"
    ]
    assert expectation(case.request, PLAN.scenario(Layout.IPFS)).error is ErrorCode.MALFORMED_TOKEN

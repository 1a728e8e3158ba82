"""Proof that the harness can fail: deliberately wrong gateways are caught, in the right rows.

The broken gateways and the recording upstream run in threads; the real proxy (marked e2e)
runs as a process, once declared with a forward mode other than its own, and once per forward
mode correctly declared: then everything must pass.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
from click.testing import CliRunner

from tokenward.cli import main
from tokenward.fixtures.broken_gateways import BrokenGateway, Flaw, MisbehavingGateway, Misbehaviour
from tokenward.fixtures.upstream import RecordingUpstream
from tokenward.harness.drivers import HttpGateway, TransportFailure
from tokenward.harness.oracle import Forward, Layout, TokenKind
from tokenward.harness.report import render
from tokenward.harness.run import (
    EXAMPLES_ROW,
    GIVE_UP_AFTER,
    NOT_SENT,
    Options,
    Outcome,
    Plan,
    RunResult,
    external_plan,
    new_token,
    run_conformance,
    self_test_target,
    two_tokens_row,
)
from tokenward.harness.strategies import TokenState, placement_subsets

EXAMPLES = 20
TWO_TOKEN_ROWS = {two_tokens_row(subset) for subset in placement_subsets()}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


def plan_for(layout: Layout) -> Plan:
    kinds = {TokenState.SECOND_VALID: TokenKind.AAT, TokenState.REVOKED: TokenKind.SAT}
    given: dict[TokenState, str] = {
        state: new_token(kinds.get(state, TokenKind.PAT))
        for state in TokenState
        if state not in (TokenState.UNKNOWN, TokenState.MALFORMED)
    }
    return external_plan("http://broken", layout, given)


def check(
    flaw: Flaw, layout: Layout, upstream: RecordingUpstream, *, upstream_log: bool
) -> RunResult:
    plan = plan_for(layout)
    with BrokenGateway(flaw, plan.store, layout, upstream.url) as gateway:
        control_url = upstream.control_url if upstream_log else None
        with HttpGateway(gateway.url, control_url=control_url) as driver:
            plan = replace(plan, base_url=gateway.url)
            return run_conformance(
                driver, plan, title=str(flaw), examples=EXAMPLES, run_seed=1, shrink_calls=100
            )


def failed_rows(result: RunResult) -> set[str]:
    return {r.row for r in result.failures if r.row != EXAMPLES_ROW}


@pytest.mark.parametrize("upstream_log", [True, False], ids=["live", "external"])
def test_a_gateway_taking_the_first_of_two_tokens_fails_the_two_token_rows(
    upstream: RecordingUpstream, upstream_log: bool
) -> None:
    result = check(Flaw.AMBIGUITY_BLIND, Layout.GENERIC, upstream, upstream_log=upstream_log)
    assert failed_rows(result) == TWO_TOKEN_ROWS
    assert {r.expected for r in result.failures} == {"400 ambiguous_token"}
    assert all(r.actual == "forwarded" for r in result.failures if r.row in TWO_TOKEN_ROWS)


def test_a_gateway_keeping_the_query_token_fails_upstream(upstream: RecordingUpstream) -> None:
    result = check(Flaw.QUERY_TOKEN_KEPT, Layout.IPFS, upstream, upstream_log=True)
    assert {r.signature for r in result.failures} == {"forwarded: upstream target differs"}
    accepted_in_query = {
        r.name
        for r in result.results
        if "query" in r.row.split("+") and r.name.endswith((":valid", ":second_valid"))
    }
    matrix_failures = {r.name for r in result.failures if r.row != EXAMPLES_ROW}
    assert matrix_failures == accepted_in_query
    assert any(r.minimal for r in result.minimal)


def test_without_the_upstream_log_a_kept_query_token_goes_unseen(
    upstream: RecordingUpstream,
) -> None:
    result = check(Flaw.QUERY_TOKEN_KEPT, Layout.IPFS, upstream, upstream_log=False)
    assert result.passed


@pytest.mark.parametrize("upstream_log", [True, False], ids=["live", "external"])
def test_a_gateway_reading_the_header_alone_fails_url_tokens(
    upstream: RecordingUpstream, upstream_log: bool
) -> None:
    result = check(Flaw.HEADER_ONLY, Layout.AVALANCHE, upstream, upstream_log=upstream_log)
    rows = failed_rows(result)
    assert "header" not in rows  # a token in the header alone it judges right
    assert {"query", "path", "query+path"} <= rows
    for name in ("query@avalanche:valid", "path@avalanche/endpoint:valid"):
        (found,) = [r for r in result.results if r.name == name]
        assert (found.outcome, found.signature) == (
            Outcome.FAILED,
            "expected forwarded, got 401 missing_token",
        )


def test_every_flaw_fails_at_the_required_level(upstream: RecordingUpstream) -> None:
    for flaw in Flaw:
        result = check(flaw, Layout.GENERIC, upstream, upstream_log=True)
        assert result.failures, flaw
        assert all(r.strict_checks == () for r in result.failures)


# --- gateways that break HTTP itself ------------------------------------------------------------

TIMEOUT = 0.4
KIND_OF = {
    Misbehaviour.HANGS: TransportFailure.TIMEOUT,
    Misbehaviour.RESETS: TransportFailure.RESET,
    Misbehaviour.NOT_HTTP: TransportFailure.NOT_HTTP,
    Misbehaviour.ENDLESS_BODY: TransportFailure.TIMEOUT,
}


@pytest.mark.parametrize("misbehaviour", list(Misbehaviour))
def test_a_gateway_breaking_http_is_reported_per_request(misbehaviour: Misbehaviour) -> None:
    plan = plan_for(Layout.GENERIC)
    with (
        MisbehavingGateway(misbehaviour) as gateway,
        HttpGateway(gateway.url, timeout=TIMEOUT) as driver,
    ):
        result = run_conformance(
            driver, replace(plan, base_url=gateway.url), title=str(misbehaviour), examples=5
        )
    kind = KIND_OF[misbehaviour]
    assert all(r.outcome is Outcome.FAILED for r in result.results)
    answered = [r for r in result.results if r.actual != NOT_SENT]
    # the harness stops sending after GIVE_UP_AFTER requests in a row got no answer
    assert len(answered) == GIVE_UP_AFTER
    assert {r.no_answer for r in answered} == {kind}
    assert {r.actual for r in answered} == {f"no answer ({kind})"}
    assert result.no_answer_counts()[kind] == GIVE_UP_AFTER
    not_sent = len(result.results) - GIVE_UP_AFTER
    assert f"{GIVE_UP_AFTER} {kind}" in render(result)
    assert f"; {not_sent} not sent" in render(result)


def test_the_command_bounds_each_request_by_its_timeout() -> None:
    plan = plan_for(Layout.GENERIC)
    with MisbehavingGateway(Misbehaviour.HANGS) as gateway:
        outcome = CliRunner().invoke(
            main,
            [
                "conformance",
                "--target",
                gateway.url,
                "--layout",
                "generic",
                "--examples",
                "2",
                "--timeout",
                str(TIMEOUT),
            ],
            env={"TOKENWARD_VALID_TOKEN": plan.tokens.valid},
        )
    assert outcome.exit_code == 1, outcome.output
    assert f"NO ANSWER: {GIVE_UP_AFTER} timeout, 0 reset, 0 not HTTP" in outcome.output


# --- the real proxy -----------------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("declared", "running"),
    [(Forward.STRIP, Forward.KEEP), (Forward.QUERY, Forward.HEADER)],
    ids=["keep-declared-strip", "header-declared-query"],
)
def test_the_proxy_under_another_forward_mode_is_caught(
    declared: Forward, running: Forward
) -> None:
    with self_test_target(
        Options(declared), layouts=(Layout.GENERIC,), running=Options(running)
    ) as (driver, plan):
        result = run_conformance(driver, plan, title="misdeclared", examples=10, run_seed=1)
    assert not result.passed
    # rejections are the same in every forward mode; what reaches the upstream is not
    assert all(r.expected == r.actual == "forwarded" for r in result.failures)
    assert {"header", "query", "path"} <= failed_rows(result)
    assert all(
        r.signature.startswith("forwarded: upstream") for r in [*result.failures, *result.minimal]
    )


@pytest.mark.e2e
@pytest.mark.parametrize("forward", list(Forward))
def test_the_proxy_passes_when_declared_right(forward: Forward) -> None:
    with self_test_target(Options(forward)) as (driver, plan):
        result = run_conformance(driver, plan, title=f"proxy {forward}", examples=10)
    assert result.passed, [(r.name, r.problems) for r in result.failures]
    assert all(r.outcome is Outcome.PASSED for r in result.results)

"""The lenient reference gateway: required-level conformant, strict findings by name.

It is a gateway written from the contract alone that takes the permissive side wherever the
contract is silent: the harness must pass it at the required level, name each permissive
choice as a strict finding, and fail it only with ``--strict``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.cli import main
from tokenward.fixtures.lenient_gateway import (
    LenientGateway,
    LenientToken,
    decode_unreserved,
    holds_token,
    token_shaped,
)
from tokenward.fixtures.upstream import RecordingUpstream
from tokenward.harness.drivers import HttpGateway
from tokenward.harness.oracle import (
    Layout,
    StrictCheck,
    TokenKind,
    holds_token_shaped,
    is_token_shaped,
)
from tokenward.harness.oracle import decode_unreserved as oracle_decode_unreserved
from tokenward.harness.run import Plan, RunResult, external_plan, new_token, run_conformance
from tokenward.harness.strategies import TokenState

# Every permissive choice the lenient gateway makes, by the layouts where a case shows it.
EVERYWHERE = {
    StrictCheck.DEEP_PERCENT_ENCODING,
    StrictCheck.NON_ASCII_BOUNDARY,
    StrictCheck.EMPTY_LIST_ELEMENT,
    StrictCheck.BARE_TOKEN_PARAMETER,
    StrictCheck.MISPLACED_PLACEMENT_NULL,
    StrictCheck.IDENTITY_KIND_CODE,
    StrictCheck.WWW_AUTHENTICATE_ONLY_ON_401,
}
FINDINGS = {
    Layout.GENERIC: EVERYWHERE,
    Layout.IPFS: EVERYWHERE,
    Layout.AVALANCHE: EVERYWHERE | {StrictCheck.ENDPOINT_CASE},
    Layout.FUJI: EVERYWHERE | {StrictCheck.ENDPOINT_CASE},
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    with RecordingUpstream() as recording:
        yield recording


def plan_for(layout: Layout) -> Plan:
    kinds = {TokenState.SECOND_VALID: TokenKind.AAT, TokenState.REVOKED: TokenKind.SAT}
    given_tokens: dict[TokenState, str] = {
        state: new_token(kinds.get(state, TokenKind.PAT))
        for state in TokenState
        if state not in (TokenState.UNKNOWN, TokenState.MALFORMED)
    }
    return external_plan("http://lenient", layout, given_tokens)


def lenient_store(plan: Plan) -> dict[str, LenientToken]:
    return {
        value: LenientToken(token.name, token.expires_at, token.revoked, token.scope)
        for value, token in plan.store.tokens.items()
    }


def check(layout: Layout, upstream: RecordingUpstream) -> RunResult:
    plan = plan_for(layout)
    with (
        LenientGateway(lenient_store(plan), str(layout), upstream.url) as gateway,
        HttpGateway(gateway.url, control_url=upstream.control_url) as driver,
    ):
        return run_conformance(
            driver, replace(plan, base_url=gateway.url), title="lenient", examples=30, run_seed=5
        )


@pytest.mark.parametrize("layout", list(Layout))
def test_the_lenient_gateway_passes_at_the_required_level(
    layout: Layout, upstream: RecordingUpstream
) -> None:
    result = check(layout, upstream)
    assert result.passed, [(r.name, r.problems) for r in result.failures]
    assert not result.passed_strict
    assert set(result.strict_checks_found()) == FINDINGS[layout]
    # each contract-silent case is a strict finding named by its check, at least
    silent = {r.name.rpartition(":")[2]: r for r in result.results if r.name.startswith("silent@")}
    for check_name, case in silent.items():
        named = check_name.removesuffix("_path")
        if named in {str(c) for c in FINDINGS[layout]}:
            assert named in case.strict_checks, (check_name, case.strict_checks)


def test_the_command_fails_it_only_with_strict(upstream: RecordingUpstream, tmp_path: Path) -> None:
    plan = plan_for(Layout.AVALANCHE)
    env = {
        "TOKENWARD_VALID_TOKEN": plan.tokens.valid,
        "TOKENWARD_SECOND_TOKEN": plan.tokens.second_valid,
    }
    with LenientGateway(lenient_store(plan), "avalanche", upstream.url) as gateway:
        arguments = [
            "conformance",
            "--target",
            gateway.url,
            "--layout",
            "avalanche",
            "--upstream-log",
            upstream.control_url,
            "--examples",
            "10",
        ]
        required = CliRunner().invoke(main, arguments, env=env)
        report = tmp_path / "strict.json"
        strict = CliRunner().invoke(main, [*arguments, "--strict", "--json", str(report)], env=env)
    assert required.exit_code == 0, required.output
    assert " 0 failed, " in required.output and "STRICT [avalanche]" in required.output
    assert strict.exit_code == 1, strict.output
    document = json.loads(report.read_text())
    assert document["passed"] and not document["passed_strict"]
    assert StrictCheck.ENDPOINT_CASE in document["runs"][0]["strict_findings"]
    for token in (plan.tokens.valid, plan.tokens.second_valid):
        assert token not in required.output + strict.output + report.read_text()


# --- its reading, against the oracle's where both read alike -------------------------------------

ASCII_TEXT = st.text(st.sampled_from("sm_patA19-./%x"), max_size=40)


@example(f"x.sm_pat_{'A' * 16}.json")
@example(f"sm_pat_{'A' * 65}")
@given(ASCII_TEXT)
def test_on_ascii_it_finds_tokens_where_the_oracle_does(text: str) -> None:
    assert holds_token(text) is holds_token_shaped(text)
    assert token_shaped(text) is is_token_shaped(text)


def test_a_letter_of_another_script_is_no_boundary_to_it() -> None:
    hidden = "é".encode().decode("latin-1") + f"sm_pat_{'A' * 16}"
    assert not holds_token(hidden)
    assert holds_token_shaped(hidden)  # the oracle's strict side


@example("%73m_pat_%2F%7e")
@given(st.text(st.sampled_from("%2F7e3a_sm"), max_size=30))
def test_it_decodes_unreserved_escapes_as_the_oracle_does(text: str) -> None:
    assert decode_unreserved(text) == oracle_decode_unreserved(text)

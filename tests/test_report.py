"""Reports: the matrix table, failures as curl commands, JSON and JUnit, never a token."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from tokenward.harness.oracle import STRICT_REASONS, HarnessRequest, Layout, StrictCheck
from tokenward.harness.report import (
    curl_of,
    failure_groups,
    matrix_table,
    render,
    to_json,
    to_junit,
    write_json,
    write_junit,
)
from tokenward.harness.run import EXAMPLES_ROW, CaseResult, Outcome, RunResult, external_plan
from tokenward.harness.strategies import TokenState, requests_for, token_placements

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
T = "sm_pat_Va1idPersonalToken0000000000000000"
R = "sm_sat_RevokedServiceAccountToken0000000"
PLAN = external_plan(
    "http://gw.example:8080",
    Layout.GENERIC,
    {TokenState.VALID: T, TokenState.REVOKED: R},
    clock=lambda: NOW,
)
IN_QUERY = HarnessRequest("GET", f"/graphql?page=2&token={T}", (("Accept", "*/*"),))
MISSING = "expected forwarded, got 401 missing_token"
NO_EXPIRED = "no expired token was given ($TOKENWARD_EXPIRED_TOKEN)"


def case(
    name: str,
    row: str,
    outcome: Outcome,
    request: HarnessRequest,
    *,
    actual: str = "forwarded",
    minimal: bool = False,
    why: str = "accepted",
) -> CaseResult:
    problems = () if actual == "forwarded" else (f"outcome: {MISSING}",)
    return CaseResult(
        name=name,
        layout=Layout.GENERIC,
        row=row,
        outcome=outcome,
        request=request,
        host=None,
        expected="forwarded" if outcome is not Outcome.NOT_TESTED else "-",
        actual=actual,
        problems=problems,
        why=why,
        minimal=minimal,
    )


RUN = RunResult(
    title="tokenward conformance: http://gw.example:8080",
    plan=PLAN,
    results=(
        case("header@generic:valid", "header", Outcome.PASSED, HarnessRequest("GET", "/")),
        case("query@generic:valid", "query", Outcome.FAILED, IN_QUERY, actual="401 missing_token"),
        case("query@generic:expired", "query", Outcome.NOT_TESTED, IN_QUERY, why=NO_EXPIRED),
        case("path@generic:expired", "path", Outcome.NOT_TESTED, IN_QUERY, why=NO_EXPIRED),
        case("generic#1", EXAMPLES_ROW, Outcome.PASSED, HarnessRequest("GET", "/")),
    ),
    minimal=(
        case(
            "generic minimal",
            EXAMPLES_ROW,
            Outcome.FAILED,
            HarnessRequest("GET", f"/?token={T}"),
            actual="401 missing_token",
            minimal=True,
        ),
    ),
    seed=42,
    seconds=1.5,
    sent=4,
    checking_seconds=0.5,
)


def test_the_table_has_a_row_per_placement_combination_and_a_column_per_layout() -> None:
    assert matrix_table(RUN).splitlines() == [
        "placements  generic",
        "header      1/1",
        "query       0/1",
        "path        -",
        "examples    1/1",
    ]


def test_a_failure_is_shown_once_per_kind_with_its_minimal_example() -> None:
    ((layout, signature, cases, shown),) = failure_groups(RUN)
    assert (layout, signature) == (Layout.GENERIC, MISSING)
    assert [c.name for c in cases] == ["query@generic:valid"]
    assert shown.minimal


def test_the_report_names_tokens_by_their_variables() -> None:
    text = render(RUN)
    assert T not in text
    assert f"FAILED [generic] {MISSING}: 1 request; minimal example:" in text
    assert "curl -sS -i --http1.1 --path-as-is -g " in text
    assert "'http://gw.example:8080/?token='\"$TOKENWARD_VALID_TOKEN\"" in text
    assert "1 failed" in text and "2 not tested" in text
    assert re.search(
        r"NOT TESTED: no token given for .*expired \(\$TOKENWARD_EXPIRED_TOKEN\)", text
    )


def test_curl_commands_carry_the_host_a_service_is_addressed_by() -> None:
    addressed = replace(RUN.results[0], host="ipfs.tokenward.test")
    assert "-H 'Host: ipfs.tokenward.test'" in curl_of(RUN, addressed)


def test_json_holds_every_case_and_no_token(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    write_json([RUN], path)
    text = path.read_text()
    assert T not in text
    document = json.loads(text)
    assert document["passed"] is False
    (run,) = document["runs"]
    assert [c["outcome"] for c in run["cases"]] == [
        "passed",
        "failed",
        "not tested",
        "not tested",
        "passed",
    ]
    assert run["cases"][1]["request"]["target"] == "/graphql?page=2&token=$TOKENWARD_VALID_TOKEN"
    assert run["minimal_failures"][0]["minimal"] is True
    assert run["not_tested"] == ["expired", "out_of_scope", "second_valid"]


def test_junit_is_valid_with_failures_and_skips(tmp_path: Path) -> None:
    path = tmp_path / "report.xml"
    write_junit([RUN], path)
    root = ElementTree.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("6", "2", "2")
    cases = suite.findall("testcase")
    failure = cases[1].find("failure")
    assert failure is not None and failure.get("message") == MISSING
    assert failure.text is not None and "$TOKENWARD_VALID_TOKEN" in failure.text
    skipped = cases[2].find("skipped")
    assert skipped is not None
    assert skipped.get("message") == NO_EXPIRED
    assert cases[-1].get("name") == f"minimal: {MISSING}"
    assert T not in path.read_text()


@given(data=st.data())
@example(data=None)
def test_no_report_shows_a_token_wherever_it_stood(data: st.DataObject | None) -> None:
    request = IN_QUERY
    if data is not None:
        placement = data.draw(token_placements(Layout.GENERIC))
        request = data.draw(requests_for(Layout.GENERIC, T, placement))
    failed = case("x", "header", Outcome.FAILED, request, actual="401 missing_token")
    run = replace(RUN, results=(failed,), minimal=())
    junit = ElementTree.tostring(to_junit([run]), encoding="unicode")
    for text in (render(run), json.dumps(to_json([run])), junit):
        assert T not in unquote(unquote(text))  # nor any percent-encoded spelling of it


# --- strict findings, apart from failures --------------------------------------------------------

KIND_PROBLEM = "upstream identity headers: expected kind pat, got personal"
STRICT_CASE = replace(
    case("header@generic:second_valid", "header", Outcome.STRICT, HarnessRequest("GET", "/")),
    problems=(KIND_PROBLEM,),
    strict_checks=(StrictCheck.IDENTITY_KIND_CODE,),
)
STRICT_RUN = replace(RUN, results=(*RUN.results, STRICT_CASE))


def test_a_strict_finding_is_counted_and_shown_apart() -> None:
    assert matrix_table(STRICT_RUN).splitlines()[1] == "header      1/2 s1"
    text = render(STRICT_RUN)
    assert "1 failed, 1 strict, 2 not tested" in text
    assert "STRICT [generic] strict: identity_kind_code: 1 request; example:" in text
    assert (
        f"why strict: identity_kind_code: {STRICT_REASONS[StrictCheck.IDENTITY_KIND_CODE]}" in text
    )
    assert text.index("FAILED [generic]") < text.index("STRICT [generic]")
    assert failure_groups(STRICT_RUN, Outcome.STRICT)[0][2] == [STRICT_CASE]
    assert all(r.outcome is Outcome.FAILED for _, _, g, _ in failure_groups(STRICT_RUN) for r in g)


def test_json_tells_required_from_strict() -> None:
    passing = replace(STRICT_RUN, results=(RUN.results[0], STRICT_CASE), minimal=())
    document = to_json([passing])
    assert document["passed"] is True and document["passed_strict"] is False
    (run,) = document["runs"]
    assert run["strict_findings"] == ["identity_kind_code"]
    assert run["counts"] == {"passed": 1, "failed": 0, "strict": 1, "not tested": 0}
    assert run["cases"][1]["strict_checks"] == ["identity_kind_code"]


@pytest.mark.parametrize(("strict", "tag"), [(False, "skipped"), (True, "failure")])
def test_junit_marks_a_strict_finding_by_the_level_asked_for(strict: bool, tag: str) -> None:
    suite = to_junit([STRICT_RUN], strict=strict).find("testsuite")
    assert suite is not None
    failures = 3 if strict else 2
    assert suite.get("failures") == str(failures)
    (found,) = [c for c in suite.findall("testcase") if c.get("name") == STRICT_CASE.name]
    finding = found.find(tag)
    assert finding is not None and finding.get("type") == "strict"
    assert finding.get("message") == "strict: identity_kind_code"

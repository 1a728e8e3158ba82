"""Reports of conformance runs: a matrix table, the failures as curl commands, JSON and JUnit.

Strict findings (a strict check the gateway does otherwise, see ``harness.oracle.StrictCheck``)
are shown apart from failures everywhere: their own count, their own section, their own cell
mark. No report prints a token: requests are shown as curl commands and texts with every token
replaced by the environment variable that holds it (``$TOKENWARD_VALID_TOKEN``, ...).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tokenward.harness.oracle import (
    STRICT_REASONS,
    TOKEN_ENV_VARS,
    HarnessRequest,
    Layout,
    curl_command,
    redact,
)
from tokenward.harness.run import (
    EXAMPLES_ROW,
    HYGIENE_ROW,
    NOT_SENT,
    SILENT_ROW,
    CaseResult,
    Outcome,
    RunResult,
    two_tokens_row,
)
from tokenward.harness.strategies import placement_subsets

ROWS = (
    "none",
    *("+".join(subset) for subset in placement_subsets()),
    *(two_tokens_row(subset) for subset in placement_subsets()),
    HYGIENE_ROW,
    SILENT_ROW,
    EXAMPLES_ROW,
)
CELL_LEGEND = "cells: passed/tested, then sN for N strict findings; - where nothing was tested"


def cell(results: Sequence[CaseResult]) -> str:
    """``passed/tested``, `` sN`` with N strict findings; ``-`` when nothing was tested."""
    tested = [r for r in results if r.outcome is not Outcome.NOT_TESTED]
    if not tested:
        return "-"
    passed = sum(r.outcome is Outcome.PASSED for r in tested)
    strict = sum(r.outcome is Outcome.STRICT for r in tested)
    return f"{passed}/{len(tested)}" + (f" s{strict}" if strict else "")


def matrix_table(run: RunResult) -> str:
    """Rows: placement combinations (and the hypothesis examples); columns: layouts."""
    layouts = run.plan.layouts
    header = ["placements", *layouts]
    rows = [header]
    for row in ROWS:
        in_row = [r for r in run.results if r.row == row]
        if in_row:
            rows.append([row, *(cell([r for r in in_row if r.layout is lay]) for lay in layouts)])
    widths = [max(len(line[i]) for line in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in rows
    )


def curl_of(run: RunResult, result: CaseResult) -> str:
    """The request as a curl command against the run's target, tokens as variables."""
    return curl_command(_with_host(result), run.plan.base_url, run.plan.env_vars())


def _with_host(result: CaseResult) -> HarnessRequest:
    request = result.request
    if result.host is None:
        return request
    headers = (("Host", result.host), *request.headers)
    return HarnessRequest(request.method, request.target, headers, request.body, request.websocket)


Group = tuple[Layout, str, list[CaseResult], CaseResult]


def failure_groups(run: RunResult, outcome: Outcome = Outcome.FAILED) -> list[Group]:
    """Failures (or strict findings) by layout and kind: the cases and the example to show (the
    minimal one hypothesis found, else the case with the shortest command)."""
    groups: dict[tuple[Layout, str], list[CaseResult]] = {}
    for result in run.results:
        if result.outcome is outcome:
            groups.setdefault((result.layout, result.signature), []).append(result)
    for result in run.minimal:
        if result.outcome is outcome:
            groups.setdefault((result.layout, result.signature), [])
    shown: list[tuple[Layout, str, list[CaseResult], CaseResult]] = []
    for (layout, signature), cases in groups.items():
        minimal = [r for r in run.minimal if (r.layout, r.signature) == (layout, signature)]
        example = min(minimal or cases, key=lambda r: len(curl_of(run, r)))
        shown.append((layout, signature, cases, example))
    return shown


def summary_line(run: RunResult) -> str:
    counts = run.counts()
    return (
        f"{counts[Outcome.PASSED]} passed, {counts[Outcome.FAILED]} failed, "
        f"{counts[Outcome.STRICT]} strict, {counts[Outcome.NOT_TESTED]} not tested; "
        f"{run.sent} requests in {run.seconds:.1f} s "
        f"({run.requests_per_second:.0f} requests/s sent, judged and compared)"
    )


def no_answer_line(run: RunResult) -> str | None:
    """How many requests got no answer, by kind, and how many were not sent; None if none."""
    counts = run.no_answer_counts()
    not_sent = sum(r.actual == NOT_SENT for r in run.results)
    if not any(counts.values()) and not not_sent:
        return None
    kinds = ", ".join(f"{count} {kind}" for kind, count in counts.items())
    return f"NO ANSWER: {kinds}; {not_sent} not sent (the harness gave up on the gateway)"


def render(run: RunResult) -> str:
    """The report for people: title, table, summary, then each kind of failure and each
    strict finding."""
    lines = [
        f"{run.title}",
        f"options: {run.plan.options.label}; seed {run.seed}",
        "",
        matrix_table(run),
        CELL_LEGEND,
        "",
        summary_line(run),
    ]
    if (no_answer := no_answer_line(run)) is not None:
        lines.append(no_answer)
    if run.plan.untested:
        missing = ", ".join(
            f"{state} (${TOKEN_ENV_VARS[state]})" for state in sorted(run.plan.untested)
        )
        lines.append(f"NOT TESTED: no token given for {missing}")
    env_vars = run.plan.env_vars()
    for outcome, label in ((Outcome.FAILED, "FAILED"), (Outcome.STRICT, "STRICT")):
        for layout, signature, cases, example in failure_groups(run, outcome):
            how = "minimal example" if example.minimal else "example"
            count = {0: "found while shrinking", 1: "1 request"}.get(
                len(cases), f"{len(cases)} requests"
            )
            lines += [
                "",
                f"{label} [{layout}] {signature}: {count}; {how}:",
                *(
                    f"  why strict: {check}: {STRICT_REASONS[check]}"
                    for check in example.strict_checks
                ),
                f"  {curl_of(run, example)}",
                f"  expected: {example.expected}  ({redact(example.why, env_vars)})",
                f"  actual:   {example.actual}",
                *(f"  - {problem}" for problem in example.problems),
            ]
            if cases:
                names = ", ".join(case.name for case in cases[:6])
                more = f" and {len(cases) - 6} more" if len(cases) > 6 else ""
                lines.append(f"  cases: {names}{more}")
    return "\n".join(lines)


def _case_json(run: RunResult, result: CaseResult) -> dict[str, Any]:
    env_vars = run.plan.env_vars()
    request = result.request
    return {
        "name": result.name,
        "layout": str(result.layout),
        "row": result.row,
        "outcome": str(result.outcome),
        "strict_checks": [str(check) for check in result.strict_checks],
        "no_answer": None if result.no_answer is None else str(result.no_answer),
        "minimal": result.minimal,
        "expected": result.expected,
        "actual": result.actual,
        "problems": list(result.problems),
        "why": redact(result.why, env_vars),
        "request": {
            "method": request.method,
            "target": redact(request.target, env_vars),
            "headers": [[name, redact(value, env_vars)] for name, value in request.headers],
            "host": result.host,
            "websocket": request.websocket,
        },
        "curl": curl_of(run, result),
    }


def to_json(runs: Sequence[RunResult]) -> dict[str, Any]:
    """``passed``: no required failure; ``passed_strict``: no strict finding either."""
    return {
        "passed": all(run.passed for run in runs),
        "passed_strict": all(run.passed_strict for run in runs),
        "runs": [
            {
                "title": run.title,
                "target": run.plan.base_url,
                "options": run.plan.options.label,
                "layouts": [str(layout) for layout in run.plan.layouts],
                "seed": run.seed,
                "seconds": round(run.seconds, 3),
                "requests": run.sent,
                "passed": run.passed,
                "passed_strict": run.passed_strict,
                "counts": {str(outcome): count for outcome, count in run.counts().items()},
                "no_answer": {str(kind): n for kind, n in run.no_answer_counts().items()},
                "strict_findings": [str(check) for check in run.strict_checks_found()],
                "not_tested": sorted(str(state) for state in run.plan.untested),
                "cases": [_case_json(run, result) for result in run.results],
                "minimal_failures": [_case_json(run, result) for result in run.minimal],
            }
            for run in runs
        ],
    }


def write_json(runs: Sequence[RunResult], path: Path) -> None:
    path.write_text(json.dumps(to_json(runs), indent=2) + "\n")


def to_junit(runs: Sequence[RunResult], *, strict: bool = False) -> ElementTree.Element:
    """JUnit XML: a testsuite per run, a testcase per request (and per minimal failure).

    A strict finding is a ``failure`` of type ``strict`` with ``strict``, else ``skipped``
    with a message starting ``strict:``, so a CI that only fails on failures sees them apart.
    """
    suites = ElementTree.Element("testsuites", name="tokenward conformance")
    failing = {Outcome.FAILED, Outcome.STRICT} if strict else {Outcome.FAILED}
    for run in runs:
        cases = [*run.results, *run.minimal]
        suite = ElementTree.SubElement(
            suites,
            "testsuite",
            name=run.title,
            tests=str(len(cases)),
            failures=str(sum(r.outcome in failing for r in cases)),
            errors="0",
            skipped=str(sum(r.outcome not in failing | {Outcome.PASSED} for r in cases)),
            time=f"{run.seconds:.3f}",
        )
        for result in cases:
            name = f"minimal: {result.signature}" if result.minimal else result.name
            case = ElementTree.SubElement(
                suite, "testcase", classname=f"conformance.{result.layout}", name=name
            )
            if result.outcome is Outcome.FAILED:
                failure = ElementTree.SubElement(case, "failure", message=result.signature)
                failure.text = "\n".join(
                    [curl_of(run, result), f"expected: {result.expected}", *result.problems]
                )
            elif result.outcome is Outcome.STRICT:
                tag = "failure" if strict else "skipped"
                finding = ElementTree.SubElement(case, tag, message=result.signature, type="strict")
                finding.text = "\n".join(
                    [
                        curl_of(run, result),
                        *(f"{check}: {STRICT_REASONS[check]}" for check in result.strict_checks),
                        f"expected: {result.expected}",
                        *result.problems,
                    ]
                )
            elif result.outcome is Outcome.NOT_TESTED:
                ElementTree.SubElement(case, "skipped", message=result.why)
    return suites


def write_junit(runs: Sequence[RunResult], path: Path, *, strict: bool = False) -> None:
    tree = ElementTree.ElementTree(to_junit(runs, strict=strict))
    ElementTree.indent(tree)
    tree.write(path, encoding="utf-8", xml_declaration=True)

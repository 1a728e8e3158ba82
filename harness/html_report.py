"""The conformance report as one self-contained HTML page.

The page needs nothing from outside (no script, no font, no image, no stylesheet link): the
summary line, the matrix (placement combination by layout, each cell coloured by its worst
outcome and carrying its counts, linking to its cases), then each kind of failure and each
strict finding with its curl command, expected and actual outcome. Every cell carries its
counts as ``data-`` attributes too, so a browser test can compare them with the JSON report.
Tokens appear as their variables only, as in every report.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

from tokenward.harness.oracle import STRICT_REASONS, Layout, redact
from tokenward.harness.report import (
    ROWS,
    Group,
    curl_of,
    failure_groups,
    no_answer_line,
    summary_line,
)
from tokenward.harness.run import CaseResult, Outcome, RunResult

# A cell's colour is its worst outcome's: a failure outweighs a strict finding, and so on.
CELL_STATES = (Outcome.FAILED, Outcome.STRICT, Outcome.PASSED, Outcome.NOT_TESTED)
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #1d1d1f; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 2em; }
table.matrix { border-collapse: collapse; }
.matrix th, .matrix td { border: 1px solid #bbb; padding: 4px 10px; text-align: center; }
.matrix th.row { text-align: left; font-weight: normal; }
.passed { background: #c8f0c8; } .failed { background: #f6b3b3; }
.strict { background: #fde6a8; } .not-tested { background: #e4e4e4; }
td a { color: inherit; text-decoration: none; display: block; }
.legend span { padding: 2px 8px; margin-right: 6px; border: 1px solid #bbb; }
pre { background: #f4f4f4; padding: 8px; white-space: pre-wrap; word-break: break-all; }
div.finding { border-left: 4px solid #d33; padding-left: 12px; margin: 1em 0; background: none; }
div.finding.strict { border-color: #d9a400; }
.summary { font-weight: bold; }
ul.cases { columns: 2; }
"""


def cell_state(results: Sequence[CaseResult]) -> Outcome:
    """The worst outcome among a cell's cases; NOT_TESTED for an empty cell."""
    outcomes = {result.outcome for result in results}
    return next((state for state in CELL_STATES if state in outcomes), Outcome.NOT_TESTED)


def cell_id(layout: Layout, row: str) -> str:
    return "cases-" + re.sub(r"[^a-z0-9]+", "-", f"{layout}-{row}".lower()).strip("-")


def _class(outcome: Outcome) -> str:
    return str(outcome).replace(" ", "-")


def _matrix(run: RunResult) -> list[str]:
    layouts = run.plan.layouts
    lines = ['<table class="matrix">', "<tr><th>placements</th>"]
    lines += [f"<th>{escape(str(layout))}</th>" for layout in layouts]
    lines.append("</tr>")
    for row in ROWS:
        in_row = [r for r in run.results if r.row == row]
        if not in_row:
            continue
        lines.append(f'<tr><th class="row">{escape(row)}</th>')
        for layout in layouts:
            cases = [r for r in in_row if r.layout is layout]
            counts = {outcome: sum(r.outcome is outcome for r in cases) for outcome in Outcome}
            state = cell_state(cases)
            data = " ".join(
                f'data-{_class(outcome)}="{count}"' for outcome, count in counts.items()
            )
            text = _cell_text(counts)
            attributes = f'class="{_class(state)}" data-layout="{layout}" data-row="{escape(row)}"'
            if cases:
                link = f'<a href="#{cell_id(layout, row)}">{text}</a>'
                lines.append(f"<td {attributes} {data}>{link}</td>")
            else:
                lines.append(f"<td {attributes} {data}>-</td>")
        lines.append("</tr>")
    lines.append("</table>")
    return lines


def _cell_text(counts: dict[Outcome, int]) -> str:
    tested = counts[Outcome.PASSED] + counts[Outcome.FAILED] + counts[Outcome.STRICT]
    if not tested:
        return "not tested"
    parts = [f"{counts[Outcome.PASSED]}/{tested} passed"]
    parts += [
        f"{counts[outcome]} {outcome}"
        for outcome in (Outcome.FAILED, Outcome.STRICT, Outcome.NOT_TESTED)
        if counts[outcome]
    ]
    return escape(", ".join(parts))


def _finding(run: RunResult, outcome: Outcome, group: Group) -> list[str]:
    layout, signature, cases, example = group
    env_vars = run.plan.env_vars()
    label = "FAILED" if outcome is Outcome.FAILED else "STRICT"
    count = {0: "found while shrinking", 1: "1 request"}.get(len(cases), f"{len(cases)} requests")
    how = "minimal example" if example.minimal else "example"
    lines = [
        f'<div class="finding {_class(outcome)}">',
        f"<h3>{label} [{escape(str(layout))}] {escape(signature)}</h3>",
        f"<p>{escape(count)}; {how}:</p>",
    ]
    lines += [
        f"<p>why strict: <b>{escape(check)}</b>: {escape(STRICT_REASONS[check])}</p>"
        for check in example.strict_checks
    ]
    lines += [
        f"<pre>{escape(curl_of(run, example))}</pre>",
        f"<p>expected: <b>{escape(example.expected)}</b> ({escape(redact(example.why, env_vars))})"
        f"<br>actual: <b>{escape(example.actual)}</b></p>",
    ]
    if example.problems:
        lines.append("<ul>" + "".join(f"<li>{escape(p)}</li>" for p in example.problems))
        lines.append("</ul>")
    lines.append("</div>")
    return lines


def _cell_cases(run: RunResult) -> list[str]:
    lines = ["<h2>Cases by cell</h2>"]
    for layout in run.plan.layouts:
        for row in ROWS:
            cases = [r for r in run.results if r.row == row and r.layout is layout]
            if not cases:
                continue
            lines.append(f'<h3 id="{cell_id(layout, row)}">{escape(f"{row} @ {layout}")}</h3>')
            lines.append('<ul class="cases">')
            lines += [
                f"<li>{escape(case.name)}: {escape(str(case.outcome))}"
                + (f" ({escape(case.actual)})" if case.outcome is not Outcome.PASSED else "")
                + "</li>"
                for case in cases
            ]
            lines.append("</ul>")
    return lines


def render_html(run: RunResult) -> str:
    """The page for one run."""
    legend = "".join(
        f'<span class="{_class(state)}">{escape(str(state))}</span>' for state in CELL_STATES
    )
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(run.title)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{escape(run.title)}</h1>",
        f"<p>options: {escape(run.plan.options.label)}; seed {run.seed}</p>",
        f'<p class="summary" id="summary">{escape(summary_line(run))}</p>',
    ]
    if (no_answer := no_answer_line(run)) is not None:
        lines.append(f'<p class="summary">{escape(no_answer)}</p>')
    lines.append(f'<p class="legend">{legend}</p>')
    lines += _matrix(run)
    for outcome, heading in ((Outcome.FAILED, "Failures"), (Outcome.STRICT, "Strict findings")):
        groups = failure_groups(run, outcome)
        lines.append(f"<h2>{heading} ({len(groups)} kinds)</h2>")
        for group in groups:
            lines += _finding(run, outcome, group)
    lines += _cell_cases(run)
    lines.append("</body></html>")
    return "\n".join(lines) + "\n"


def write_html(run: RunResult, path: Path) -> None:
    path.write_text(render_html(run), encoding="utf-8")

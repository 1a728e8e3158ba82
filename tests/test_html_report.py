"""The HTML report: one self-contained page, checked in headless Chromium (Debian's).

The browser test opens the page, expects no console error and no request beyond the page
itself, compares every matrix cell with the JSON report and leaves a screenshot (its path is
printed and kept as the test's ``screenshot`` property in JUnit output).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tokenward.fixtures.broken_gateways import BrokenGateway, Flaw
from tokenward.fixtures.lenient_gateway import LenientGateway, LenientToken
from tokenward.fixtures.processes import CHROMIUM, CHROMIUM_ARGS
from tokenward.fixtures.upstream import RecordingUpstream
from tokenward.harness.drivers import HttpGateway
from tokenward.harness.html_report import cell_id, render_html, write_html
from tokenward.harness.oracle import Layout, TokenKind
from tokenward.harness.report import to_json
from tokenward.harness.run import (
    Outcome,
    Plan,
    RunResult,
    external_plan,
    new_token,
    run_conformance,
)
from tokenward.harness.strategies import TokenState


def plan_for(layout: Layout) -> Plan:
    kinds = {TokenState.SECOND_VALID: TokenKind.AAT, TokenState.REVOKED: TokenKind.SAT}
    given_tokens: dict[TokenState, str] = {
        state: new_token(kinds.get(state, TokenKind.PAT))
        for state in TokenState
        if state not in (TokenState.UNKNOWN, TokenState.MALFORMED)
    }
    return external_plan("http://gateway", layout, given_tokens)


@pytest.fixture(scope="module")
def runs() -> Iterator[dict[str, RunResult]]:
    """A run with strict findings (the lenient gateway) and one with failures."""
    plan = plan_for(Layout.AVALANCHE)
    store = {
        value: LenientToken(token.name, token.expires_at, token.revoked, token.scope)
        for value, token in plan.store.tokens.items()
    }
    found: dict[str, RunResult] = {}
    with RecordingUpstream() as upstream:
        with (
            LenientGateway(store, "avalanche", upstream.url) as lenient,
            HttpGateway(lenient.url, control_url=upstream.control_url) as driver,
        ):
            found["lenient"] = run_conformance(
                driver, replace(plan, base_url=lenient.url), title="lenient", examples=20
            )
        with (
            BrokenGateway(Flaw.AMBIGUITY_BLIND, plan.store, Layout.AVALANCHE, upstream.url) as gw,
            HttpGateway(gw.url, control_url=upstream.control_url) as driver,
        ):
            found["broken"] = run_conformance(
                driver, replace(plan, base_url=gw.url), title="ambiguity blind", examples=20
            )
    yield found


def test_the_page_is_self_contained_and_holds_no_token(runs: dict[str, RunResult]) -> None:
    for run in runs.values():
        page = render_html(run)
        assert not re.search(r"<script|<link|<img|<iframe|\bsrc=|url\(|@import", page)
        for given_token in run.plan.env_vars():  # made-up tokens are no secret
            assert given_token not in page
        assert page.count("<table") == 1


def test_every_failure_and_strict_finding_has_its_curl(runs: dict[str, RunResult]) -> None:
    strict_page = render_html(runs["lenient"])
    assert "STRICT [avalanche] strict: endpoint_case" in strict_page
    assert "<h2>Failures (0 kinds)</h2>" in strict_page
    failed_page = render_html(runs["broken"])
    assert "FAILED [avalanche] expected 400 ambiguous_token, got forwarded" in failed_page
    assert failed_page.count("<pre>curl ") >= 1


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.mark.e2e
@pytest.mark.parametrize("which", ["lenient", "broken"])
def test_chromium_renders_the_matrix_as_the_json_reports_it(
    browser: object,
    runs: dict[str, RunResult],
    which: str,
    tmp_path: Path,
    record_property: Callable[[str, object], None],
) -> None:
    from playwright.sync_api import Browser, ConsoleMessage, Request

    assert isinstance(browser, Browser)
    run = runs[which]
    path = tmp_path / f"conformance-{which}.html"
    write_html(run, path)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    requests: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            errors.append(message.text)

    def on_request(request: Request) -> None:
        requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("request", on_request)
    page.goto(path.as_uri())
    cells = page.eval_on_selector_all(
        "td[data-layout]",
        """cells => cells.map(cell => ({
            layout: cell.dataset.layout, row: cell.dataset.row, state: cell.className,
            passed: Number(cell.dataset.passed), failed: Number(cell.dataset.failed),
            strict: Number(cell.dataset.strict),
            href: cell.querySelector('a') ? cell.querySelector('a').getAttribute('href') : null,
        }))""",
    )
    screenshot = tmp_path / f"conformance-{which}.png"
    page.screenshot(path=str(screenshot), full_page=True)
    record_property("screenshot", str(screenshot))
    print(f"screenshot: {screenshot}")
    assert errors == []
    assert requests == [path.as_uri()]

    cases = to_json([run])["runs"][0]["cases"]
    counted = Counter((c["layout"], c["row"], c["outcome"]) for c in cases)
    assert cells, "the page shows no matrix cell"
    shown_rows = {(cell["layout"], cell["row"]) for cell in cells}
    assert shown_rows == {(c["layout"], c["row"]) for c in cases}
    for cell in cells:
        key = (cell["layout"], cell["row"])
        assert cell["passed"] == counted[(*key, str(Outcome.PASSED))]
        assert cell["failed"] == counted[(*key, str(Outcome.FAILED))]
        assert cell["strict"] == counted[(*key, str(Outcome.STRICT))]
        worst = "failed" if cell["failed"] else "strict" if cell["strict"] else "passed"
        assert cell["state"] == worst
        assert cell["href"] == f"#{cell_id(Layout(cell['layout']), cell['row'])}"
        assert page.locator(cell["href"]).count() == 1
    summary = page.inner_text("#summary")
    assert summary.startswith(f"{counted_total(cases, Outcome.PASSED)} passed, ")
    assert f"{counted_total(cases, Outcome.STRICT)} strict" in summary
    page.close()
    assert screenshot.stat().st_size > 0


def counted_total(cases: list[dict[str, object]], outcome: Outcome) -> int:
    return sum(case["outcome"] == str(outcome) for case in cases)

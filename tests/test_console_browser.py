"""The console's page in a real browser: headless Debian Chromium driven by Playwright.

One person's flow, end to end, on a real console, a real store and a running proxy: sign in
with an admin key; add a token; copy it from the one-time view with its copy button; send it
through the proxy (200); reload (the token is gone); delete it with a wrong word (refused), then
with DELETE; the proxy's next request gets 401 `revoked_token`. Forms are filled with the
keyboard where a person would, every field must have a label, and the page may load nothing
but the console's own files. A screenshot of each step is written under `reports/console/`
(the path is printed). Skipped where Chromium or Playwright is missing.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tokenward.core.tokens import is_token_shaped
from tokenward.fixtures.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    REPO_ROOT,
    RunningConsole,
    RunningProxy,
    RunningUpstream,
    create_console_key,
    start_console,
    start_proxy,
)
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.e2e

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright is not installed (pip install -e '.[dev]')"
)

SCREENSHOTS = REPO_ROOT / "reports" / "console"
JSON_RPC = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists() and shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (Debian package chromium)")
    return str(CHROMIUM) if CHROMIUM.exists() else str(shutil.which("chromium"))


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[tuple[RunningConsole, RunningProxy, str]]:
    db = tmp_path_factory.mktemp("browser") / "tokenward.db"
    key = create_console_key(db, "ops")
    with TokenStore.open(db, create=False) as store:
        store.add_service("rpc", "generic", ("rpc.localhost",), upstream.url)
    settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
    with start_console(db) as console, start_proxy(settings) as proxy:
        yield console, proxy, key


def through_proxy(proxy: RunningProxy, token: str) -> tuple[int, object]:
    answer = proxy.request(
        "POST",
        "/",
        [("Host", "rpc.localhost"), ("Content-Type", "application/json"), ("x-auth-token", token)],
        JSON_RPC,
    )
    return answer.status, answer.json().get("error")


class Steps:
    """Screenshots, numbered in the order taken, and the checks every page gets."""

    def __init__(self, page: Page, folder: Path, origin: str) -> None:
        self.page = page
        self.folder = folder
        self.count = 0
        self.origin = origin
        self.requests: list[str] = []
        page.on("request", lambda request: self.requests.append(request.url))

    def shot(self, name: str) -> None:
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=self.folder / f"{self.count:02d}-{name}.png", full_page=True)
        self.check_page()

    def check_page(self) -> None:
        unlabelled = self.page.evaluate(
            """() => [...document.querySelectorAll('input, select, textarea')]
                .filter(field => field.type !== 'hidden')
                .filter(field => field.labels.length === 0 && !field.getAttribute('aria-label'))
                .map(field => field.name || field.id)"""
        )
        assert unlabelled == [], f"fields without a label on {self.page.url}: {unlabelled}"
        foreign = [url for url in self.requests if not url.startswith(self.origin)]
        assert foreign == [], f"the page loaded something from elsewhere: {foreign}"


def test_sign_in_add_copy_use_reload_and_delete_in_chromium(
    chromium: str, site: tuple[RunningConsole, RunningProxy, str]
) -> None:
    console, proxy, key = site
    origin = console.url.rstrip("/")
    print(f"screenshots: {SCREENSHOTS}")
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=origin)
            context.set_default_timeout(TIMEOUT_MS)
            page = context.new_page()
            steps = Steps(page, SCREENSHOTS, origin)
            expect = playwright_api.expect

            # Sign in with the keyboard alone: the key field has the focus.
            page.goto(console.url)
            expect(page).to_have_url(f"{origin}/signin")
            steps.shot("sign-in")
            expect(page.get_by_label("Admin key")).to_be_focused()
            page.keyboard.type(key)
            page.keyboard.press("Enter")
            expect(page).to_have_url(f"{origin}/")
            expect(page.get_by_role("heading", name="Access tokens")).to_be_visible()
            steps.shot("tokens-empty")

            # Add a personal access token: name typed, 90 days and the scope chosen by label.
            page.get_by_role("link", name="Add a personal access token").click()
            expect(page.get_by_role("heading", name="Add a personal access token")).to_be_visible()
            expect(page.get_by_label("Name")).to_be_focused()
            page.keyboard.type("laptop")
            page.get_by_label("90 days").check()
            page.get_by_label("Only the services chosen here").check()
            page.get_by_label("rpc").check()
            steps.shot("add-form")
            page.get_by_role("button", name="Confirm").click()

            # The one-time view: the warning, the token, the copy button.
            expect(page.get_by_text("You will not be able to see it again")).to_be_visible()
            shown = page.get_by_label("Token laptop")
            token = shown.input_value()
            assert is_token_shaped(token) and token.startswith("sm_pat_")
            page.get_by_role("button", name="Copy").focus()
            page.keyboard.press("Enter")
            expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
            copied = page.evaluate("navigator.clipboard.readText()")
            assert copied == token
            steps.shot("shown-once")
            assert through_proxy(proxy, copied) == (200, None)

            # Reload, and back then forward: the token is gone from the page for good.
            shown_at = page.url
            page.reload()
            expect(page.get_by_role("heading", name="Shown once")).to_be_visible()
            assert token not in page.content()
            steps.shot("after-reload")
            page.go_back()
            page.go_forward()
            expect(page).to_have_url(shown_at)
            assert token not in page.content()

            page.get_by_role("link", name="Back to the tokens").click()
            row = page.locator("tr[data-token='laptop']")
            expect(row).to_contain_text(f"sm_pat_…{token[-4:]}")
            expect(row).to_contain_text("live")
            assert token not in page.content()
            steps.shot("token-listed")

            # Delete: a wrong word is refused, DELETE deletes.
            row.get_by_role("link", name="Delete token laptop").click()
            expect(page.get_by_label("Type DELETE to confirm")).to_be_focused()
            page.keyboard.type("delete")
            page.keyboard.press("Enter")
            expect(page.get_by_role("alert")).to_contain_text("not deleted")
            steps.shot("delete-wrong-word")
            assert through_proxy(proxy, token) == (200, None)
            page.get_by_label("Type DELETE to confirm").fill("DELETE")
            page.get_by_role("button", name="Delete").click()
            expect(page.get_by_role("status")).to_contain_text("Deleted token 'laptop'")
            expect(page.locator("tr[data-token='laptop']")).to_contain_text("revoked")
            steps.shot("deleted")
            assert through_proxy(proxy, token) == (401, "revoked_token")

            # Sign out: the page needs signing in again.
            page.get_by_role("button", name="Sign out").click()
            expect(page).to_have_url(f"{origin}/signin")
            page.goto(console.url)
            expect(page).to_have_url(f"{origin}/signin")
            steps.shot("signed-out")
        finally:
            browser.close()
    taken = sorted(path.name for path in SCREENSHOTS.glob("*.png"))
    assert len(taken) >= 9 and all(re.fullmatch(r"\d\d-[a-z-]+\.png", name) for name in taken)
    assert token not in console.output()

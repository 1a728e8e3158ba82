"""`tokenward proxy --web`: replay from mitmweb and from a saved file, and the flow list in a
real browser (headless Debian Chromium driven by Playwright).

The contract's Modes section: a replay is judged again like a new request. Within the process
that recorded it, it carries the token the client sent (held in memory, never in the record),
so a token still valid is forwarded again and one deleted since gets `revoked_token`; a flow
loaded from a saved file has no token, and its replay gets 401 with advice to put it back.
mitmweb is driven through its REST API as its page drives it (session cookie, XSRF header).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tokenward.addons.gateway import REPLAY_ADVICE
from tokenward.fixtures.processes import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LOOPBACK,
    RunningProxy,
    RunningUpstream,
    delete_token_in_another_process,
    free_port,
    start_proxy_command,
)
from tokenward.store import TokenStore

pytestmark = pytest.mark.e2e

HOST = [("Host", LOOPBACK)]
XSRF = "tokenward-test-xsrf"
WAIT_SECONDS = 10.0
TIMEOUT_MS = 15_000


@dataclass
class MitmWeb:
    """A running `tokenward proxy --web` and a session with its REST API."""

    proxy: RunningProxy
    url: str
    password: str
    api: httpx.Client
    db: Path

    def flows(self) -> list[dict[str, Any]]:
        answer = self.api.get("/flows")
        answer.raise_for_status()
        flows: list[dict[str, Any]] = answer.json()
        return flows

    def replay(self, flow_id: str) -> None:
        self.api.post(f"/flows/{flow_id}/replay", headers={"X-XSRFToken": XSRF}).raise_for_status()

    def flow_when(self, flow_id: str, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The flow once `ready` holds for it (a replay answers in the background)."""
        deadline = time.monotonic() + WAIT_SECONDS
        while time.monotonic() < deadline:
            flow = next(f for f in self.flows() if f["id"] == flow_id)
            if ready(flow):
                return flow
            time.sleep(0.1)
        raise AssertionError(f"flow {flow_id} is not as awaited: {self.proxy.output()}")


def start_web(folder: Path, upstream: RunningUpstream, *options: str) -> tuple[RunningProxy, int]:
    port = free_port()
    arguments = ["--db", str(folder / "tokenward.db"), "proxy", "--listen-port", "0", "--web"]
    arguments += ["--web-port", str(port), *options]
    return start_proxy_command(arguments), port


@pytest.fixture
def web(tmp_path: Path, upstream: RunningUpstream) -> Iterator[tuple[MitmWeb, str]]:
    with TokenStore.open(tmp_path / "tokenward.db", create=True) as store:
        store.add_service("rpc", "generic", (LOOPBACK,), upstream.url)
        token, _ = store.create_token("dev", "pat", None, None, "test", datetime.now(UTC))
    password = secrets.token_hex(8)
    proxy, port = start_web(
        tmp_path, upstream, "--save", str(tmp_path / "flows"), "--set", f"web_password={password}"
    )
    with proxy, httpx.Client(base_url=f"http://{LOOPBACK}:{port}", trust_env=False) as api:
        api.get("/", params={"token": password}).raise_for_status()  # the session cookie
        api.cookies.set("_mitmproxy_xsrf", XSRF)
        yield (
            MitmWeb(proxy, f"http://{LOOPBACK}:{port}/", password, api, tmp_path / "tokenward.db"),
            token,
        )


def test_replay_from_mitmweb_sends_the_clients_token_again_and_judges_it_again(
    web: tuple[MitmWeb, str], upstream: RunningUpstream
) -> None:
    mitmweb, token = web
    first = mitmweb.proxy.request("GET", f"/{token}/rpc?a=1", HOST)
    assert first.status == 200
    (flow,) = mitmweb.flows()
    assert token not in json.dumps(flow)  # the record shows hints only
    mark = upstream.last_seq()

    mitmweb.replay(flow["id"])
    replayed = mitmweb.flow_when(
        flow["id"], lambda f: bool(f.get("response")) and bool(upstream.records(since=mark))
    )
    assert replayed["is_replay"] == "request" and replayed["response"]["status_code"] == 200
    (again,) = upstream.records(since=mark)
    assert again.target == "/rpc?a=1"  # the token was sent where the client put it, stripped
    assert token not in json.dumps(replayed)

    delete_token_in_another_process(mitmweb.db, "dev")
    mitmweb.replay(flow["id"])
    refused = mitmweb.flow_when(
        flow["id"], lambda f: (f.get("response") or {}).get("status_code") == 401
    )
    assert refused["response"]["status_code"] == 401
    assert refused["marked"] and "revoked_token" in refused["comment"]
    assert upstream.records(since=mark) == [again]
    dump = mitmweb.api.get("/flows/dump").content
    assert token.encode() not in dump and token not in mitmweb.proxy.output()


def test_a_replay_of_a_saved_flow_gets_401_with_advice_to_put_the_token_back(
    web: tuple[MitmWeb, str], upstream: RunningUpstream, tmp_path: Path
) -> None:
    mitmweb, token = web
    assert mitmweb.proxy.request("GET", "/rpc", [*HOST, ("x-auth-token", token)]).status == 200
    mitmweb.proxy.stop()  # writes the flow file
    saved = tmp_path / "flows"
    assert token.encode() not in saved.read_bytes()
    mark = upstream.last_seq()
    # Another process: mitmproxy replays the file's flows at start (option client_replay).
    proxy, _ = start_web(tmp_path, upstream, "--set", f"client_replay={saved}")
    with proxy:
        deadline = time.monotonic() + WAIT_SECONDS
        while "rejected" not in proxy.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        output = proxy.output()
    assert "tokenward: GET rejected: 401 missing_token, service rpc" in output
    assert REPLAY_ADVICE in output
    assert upstream.records(since=mark) == []


# --------------------------------------------------------------------------- the browser


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="Playwright is not installed")
    found = str(CHROMIUM) if CHROMIUM.exists() else shutil.which("chromium")
    if found is None:
        pytest.skip("Chromium is not installed (Debian package chromium)")
    return found


def test_the_flow_list_marks_and_comments_refused_flows_in_chromium(
    chromium: str, web: tuple[MitmWeb, str], tmp_path: Path
) -> None:
    from playwright.sync_api import sync_playwright

    mitmweb, token = web
    assert mitmweb.proxy.request("GET", "/rpc", [*HOST, ("x-auth-token", token)]).status == 200
    assert mitmweb.proxy.request("GET", "/no/token/here", HOST).status == 401
    assert mitmweb.proxy.request("GET", f"/a/{token}/b", HOST).status == 400
    screenshot = tmp_path / "mitmweb-flows.png"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(
            executable_path=chromium, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 600})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{mitmweb.url}?token={mitmweb.password}")
            rows = page.locator(".flow-table tbody tr")
            rows.filter(has_text="misplaced_token").wait_for()
            refused = rows.filter(has_text="401 missing_token")
            misplaced = rows.filter(has_text="400 misplaced_token")
            accepted = rows.filter(has_text="/rpc")
            for row in (refused, misplaced):
                assert row.count() == 1
                assert "\N{NO ENTRY}" in row.inner_text()  # the mark, :no_entry:
            assert accepted.count() == 1 and "\N{NO ENTRY}" not in accepted.inner_text()
            assert "tokenward:" not in accepted.inner_text()  # enforce: accepted, no comment
            page_text = page.inner_text("body")
            assert token not in page_text
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    print(f"screenshot: {screenshot}")
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert screenshot.stat().st_size > 1000

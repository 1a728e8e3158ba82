"""Issue #12's bypasses, each sent over a real socket through a real mitmdump with the addon.

What reached the upstream is read from the raw-socket recorder (`fixtures.raw_upstream`): the
bytes each connection delivered, not what a parser made of them.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fixtures.processes import RunningProxy, delete_token_in_another_process, start_proxy
from fixtures.raw_upstream import RawUpstream
from fixtures.store_files import SHM_FAULTS, shm_of
from tokenward_lib.proxy import ProxySettings
from tokenward_lib.store import TokenStore

pytestmark = pytest.mark.e2e


# --- finding 4: the store's change check

REFUSAL_WAIT_SECONDS = 10.0


def new_bytes(before: list[bytes], after: list[bytes]) -> bytes:
    """What the upstream's connections delivered between two looks at `connections()`."""
    return b"".join(
        data[len(before[i]) if i < len(before) else 0 :] for i, data in enumerate(after)
    )


def assert_refused_from_now_on(proxy: RunningProxy, token: str) -> None:
    """Every answer is 401 revoked_token, or 503 while the proxy is in doubt, never 200; polled
    until the 401 comes, then a few more."""
    deadline = time.monotonic() + REFUSAL_WAIT_SECONDS
    seen: list[tuple[int, str]] = []
    while not seen or seen[-1] != (401, "revoked_token"):
        assert time.monotonic() < deadline, f"no 401 revoked_token, answers: {seen}"
        answer = proxy.request("GET", "/rpc", [("x-auth-token", token)])
        assert token not in answer.body.decode(errors="replace")
        seen.append(
            (answer.status, str(answer.json()["error"])) if answer.status != 200 else (200, "")
        )
        assert seen[-1] in {(401, "revoked_token"), (503, "store_unavailable")}, seen
    for _ in range(5):
        answer = proxy.request("GET", "/rpc", [("x-auth-token", token)])
        assert (answer.status, answer.json()["error"]) == (401, "revoked_token")


@pytest.mark.parametrize("fault", list(SHM_FAULTS))
def test_deletes_count_after_the_shm_is_lost(tmp_path: Path, fault: str) -> None:
    db = tmp_path / "tokenward.db"
    now = datetime.now(UTC)
    with TokenStore.open(db, create=True) as store:
        first, _ = store.create_token("first", "pat", None, None, "", now)
        second, _ = store.create_token("second", "pat", None, None, "", now)
    with (
        RawUpstream() as upstream,
        start_proxy(ProxySettings(db=db, upstream=upstream.url, listen_port=0)) as proxy,
    ):
        for token in (first, second):
            assert proxy.request("GET", "/rpc", [("x-auth-token", token)]).status == 200
        assert len(upstream.requests()) == 2
        SHM_FAULTS[fault](shm_of(db))

        delete_token_in_another_process(db, "first")
        committed = upstream.connections()
        assert_refused_from_now_on(proxy, first)
        assert new_bytes(committed, upstream.connections()) == b""

        # The proxy reads the store's files as they are now: a live token still passes, and a
        # later delete counts too.
        assert proxy.request("GET", "/rpc", [("x-auth-token", second)]).status == 200
        delete_token_in_another_process(db, "second")
        committed = upstream.connections()
        assert_refused_from_now_on(proxy, second)
        assert new_bytes(committed, upstream.connections()) == b""
        assert proxy.alive()
    assert "Traceback" not in proxy.output()

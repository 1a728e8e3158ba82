"""Reliability under load and faults, with real processes on loopback only.

- Load: keep-alive clients through one proxy, then three proxies on one store, while another
  process creates, re-scopes and deletes tokens (bench/soak.py runs the same for longer).
- Upstream faults: down, hanging up, slow, stalled.
- Store faults while the proxy runs: removed, replaced, not a file, corrupted in place.
- The CLI killed with SIGKILL in the middle of create, delete and import.
- A full disk (a small tmpfs) and a read-only folder (a tmpfs remounted read-only).

Every process started here is stopped on leaving its `with` block, also on failure. Nothing
asserts on a timing: deadlines are orderings ("the answer to a request sent after the commit").
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import socket
import sqlite3
import string
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.load import wrk_program
from bench.soak import LoadReport, prepare_store, run_load, run_wrk_with_churn
from tokenward.addons.gateway import FILE_CHECK_SECONDS
from tokenward.core.tokens import holds_token_shaped
from tokenward.fixtures.processes import (
    HttpAnswer,
    RunningProxy,
    RunningUpstream,
    exchange,
    free_port,
    start_proxy,
)
from tokenward.fixtures.store_files import SHM_FAULTS, replace_by_a_copy, shm_of, wal_of
from tokenward.proxy import ProxySettings
from tokenward.store import TokenStore

pytestmark = pytest.mark.e2e

LOAD_SECONDS = 8.0
TOKENWARD = str(Path(sys.executable).with_name("tokenward"))
CLI_TIMEOUT = 60.0
JSON_RPC = b'{"jsonrpc": "2.0", "id": 1, "method": "eth_blockNumber"}'


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_token(db: Path, name: str, scope: frozenset[str] | None = None) -> str:
    with TokenStore.open(db, create=False) as store:
        token, _ = store.create_token(name, "pat", None, scope, "reliability", utc_now())
    return token


def error_of(answer: HttpAnswer) -> tuple[int, str]:
    body = answer.json()
    return answer.status, str(body["error"])


@contextmanager
def nothing_reaches(upstream: RunningUpstream) -> Iterator[None]:
    mark = upstream.last_seq()
    yield
    reached = [record.target for record in upstream.records(since=mark)]
    assert reached == [], f"the upstream was contacted: {reached}"


# --------------------------------------------------------------------------- load


def assert_load_held(report: LoadReport) -> None:
    shown = "\n".join(report.lines())
    assert report.requests > 0, shown
    assert report.deletes > 0, shown
    assert report.server_errors == 0, shown
    assert report.socket_errors == 0, shown
    assert report.accepted_after_delete == 0, shown
    assert report.violations == [], shown + "\n" + "\n".join(report.violations[:20])
    assert report.locked_lines == [], shown + "\n" + "\n".join(report.locked_lines[:5])
    assert report.upstream_token_leaks == 0, shown
    # Deletes that were requested again were refused; the figures are printed for the record.
    assert report.refusal_delays, shown
    print("\n" + shown)


@pytest.mark.parametrize("proxies", [1, 3], ids=["one-proxy", "three-proxies-one-store"])
def test_load_while_another_process_churns_tokens(
    tmp_path: Path, upstream: RunningUpstream, proxies: int
) -> None:
    db = prepare_store(tmp_path, upstream)
    report = run_load(db, upstream, proxies=proxies, seconds=LOAD_SECONDS, seed=proxies)
    assert_load_held(report)


@pytest.mark.skipif(wrk_program() is None, reason="wrk is not installed")
def test_wrk_keep_alive_load_while_tokens_churn(tmp_path: Path, upstream: RunningUpstream) -> None:
    db = prepare_store(tmp_path, upstream)
    report = run_wrk_with_churn(db, upstream, seconds=3)
    shown = "\n".join(report.lines())
    assert report.requests > 0, shown
    assert report.changes > 0, shown
    assert report.ok, shown
    print("\n" + shown)


# --------------------------------------------------------------------------- upstream faults


class StallingUpstream:
    """A listener on loopback that reads each request head, then hangs up or holds it.

    `hang-up` closes the connection without an answer; `hold` answers 200 only once `release`
    is set, and closes without an answer when `give_up` is set instead.
    """

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.received = threading.Event()
        self.release = threading.Event()
        self.give_up = threading.Event()
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(30.0)
            head = b""
            try:
                while b"\r\n\r\n" not in head:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                self.received.set()
                if self.behaviour == "hang-up":
                    return
                while not (self.release.wait(0.05) or self.give_up.is_set()):
                    if self._stopped.is_set():
                        return
                if self.give_up.is_set():
                    return
                body = b'{"slow": "answered"}'
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
                )
            except OSError:
                return

    def close(self) -> None:
        self._stopped.set()
        self.release.set()
        self._server.close()
        self._accepting.join(5.0)
        for thread in self._threads:
            thread.join(5.0)


@pytest.fixture(scope="module")
def stalling() -> Iterator[dict[str, StallingUpstream]]:
    servers = {"hangup": StallingUpstream("hang-up")}
    try:
        yield servers
    finally:
        for server in servers.values():
            server.close()


@dataclass
class FaultGateway:
    proxy: RunningProxy
    forward: str
    token: str


@pytest.fixture(scope="module", params=["strip", "keep"])
def fault_gateway(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: RunningUpstream,
    stalling: dict[str, StallingUpstream],
) -> Iterator[FaultGateway]:
    """Services `good` (the recording upstream), `down` (a port nobody listens on) and
    `hangup` (reads the request, closes); `keep` forwards the token as the client sent it."""
    forward: str = request.param
    db = tmp_path_factory.mktemp(f"faults-{forward}") / "tokenward.db"
    with TokenStore.open(db, create=True) as store:
        store.add_service("good", "generic", ("good.localhost",), upstream.url)
        store.add_service("down", "generic", ("down.localhost",), f"http://127.0.0.1:{free_port()}")
        store.add_service("hangup", "generic", ("hangup.localhost",), stalling["hangup"].url)
    token = new_token(db, "faults")
    settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0, forward=forward)
    with start_proxy(settings) as proxy:
        yield FaultGateway(proxy, forward, token)


def assert_clear_bad_gateway(answer: HttpAnswer, token: str) -> None:
    """mitmproxy's own 502: the addon's hooks cannot shape it (see README, Reliability)."""
    assert answer.status == 502, answer
    everything = answer.body.decode("utf-8", "replace") + repr(answer.headers)
    assert token not in everything
    assert not holds_token_shaped(everything)
    assert "502 Bad Gateway" in answer.body.decode()


@pytest.mark.parametrize("service", ["down", "hangup"])
@pytest.mark.parametrize("placement", ["path", "header", "query"])
def test_an_unusable_upstream_gets_a_clear_502_and_leaves_others_alone(
    fault_gateway: FaultGateway, service: str, placement: str
) -> None:
    token = fault_gateway.token
    target, headers = {
        "path": (f"/rpc/{token}", []),
        "header": ("/rpc", [("x-auth-token", token)]),
        "query": (f"/rpc?token={token}", []),
    }[placement]
    proxy = fault_gateway.proxy
    good = proxy.connection()  # a keep-alive connection that lives through the failures
    try:
        for _ in range(3):
            failed = proxy.request(
                "POST", target, [("Host", f"{service}.localhost"), *headers], JSON_RPC
            )
            assert_clear_bad_gateway(failed, token)
            answer = exchange(
                good, "POST", target, [("Host", "good.localhost"), *headers], JSON_RPC
            )
            assert answer.status == 200 and answer.json()["result"] == "0x10"
    finally:
        good.close()
    assert "Traceback" not in proxy.output()
    assert token not in proxy.output()


def test_a_slow_upstream_holds_only_its_own_request(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    slow = StallingUpstream("hold")
    try:
        db = tmp_path / "tokenward.db"
        with TokenStore.open(db, create=True) as store:
            store.add_service("good", "generic", ("good.localhost",), upstream.url)
            store.add_service("slow", "generic", ("slow.localhost",), slow.url)
        token = new_token(db, "slow")
        settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
        with start_proxy(settings) as proxy:
            answers: list[HttpAnswer] = []
            slow_request = threading.Thread(
                target=lambda: answers.append(
                    proxy.request("GET", f"/{token}", [("Host", "slow.localhost")])
                )
            )
            slow_request.start()
            try:
                assert slow.received.wait(10.0), "the slow upstream got no request"
                # While the slow answer is held, other requests come and go as usual.
                for _ in range(20):
                    good = proxy.request("GET", f"/{token}", [("Host", "good.localhost")])
                    assert good.status == 200
                assert slow_request.is_alive() and answers == []
            finally:
                slow.release.set()
                slow_request.join(15.0)
            assert [answer.status for answer in answers] == [200]
            assert answers[0].json() == {"slow": "answered"}
    finally:
        slow.close()


def test_a_stalled_upstream_that_gives_up_gets_a_502(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    stalled = StallingUpstream("hold")
    try:
        db = tmp_path / "tokenward.db"
        with TokenStore.open(db, create=True) as store:
            store.add_service("stalled", "generic", ("stalled.localhost",), stalled.url)
        token = new_token(db, "stalled")
        settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0, forward="header")
        with start_proxy(settings) as proxy:
            answers: list[HttpAnswer] = []
            waiting = threading.Thread(
                target=lambda: answers.append(
                    proxy.request("GET", f"/{token}", [("Host", "stalled.localhost")])
                )
            )
            waiting.start()
            try:
                assert stalled.received.wait(10.0), "the stalled upstream got no request"
            finally:
                stalled.give_up.set()
                waiting.join(15.0)
            assert len(answers) == 1
            assert_clear_bad_gateway(answers[0], token)
    finally:
        stalled.close()


# --------------------------------------------------------------------------- store faults


def backup_of(db: Path) -> Path:
    """A consistent copy (SQLite's backup includes what the WAL holds)."""
    backup = db.with_name(db.name + ".backup")
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(backup)) as copy:
        source.backup(copy)
    return backup


def replace_with(db: Path, make: Callable[[Path], None]) -> None:
    """Put what `make` builds at `db` in one rename, as a careful operator or a tool would."""
    staged = db.with_name(db.name + ".staged")
    make(staged)
    if db.is_dir():
        shutil.rmtree(db)
    os.replace(staged, db)


def copy_of(backup: Path) -> Callable[[Path], None]:
    def copy(path: Path) -> None:
        shutil.copyfile(backup, path)

    return copy


def remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def overwrite(db: Path, offset: int, length: int | None = None) -> None:
    """Write random bytes over the file in place (same inode), from `offset`."""
    size = db.stat().st_size
    with db.open("r+b") as file:
        file.seek(offset)
        file.write(os.urandom((size - offset) if length is None else length))


def another_store(path: Path) -> None:
    with TokenStore.open(path, create=True) as store:
        store.create_token("someone-else", "pat", None, None, "", utc_now())


def become_directory(db: Path) -> None:
    db.unlink()
    db.mkdir()


def become_fifo(db: Path) -> None:
    # Opening a FIFO would block until a writer comes: the proxy must not even try.
    db.unlink()
    os.mkfifo(db)


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(32768))


def empty(path: Path) -> None:
    path.write_bytes(b"")


STORE_FAULTS: dict[str, Callable[[Path], None]] = {
    "removed": Path.unlink,
    "replaced-by-a-directory": become_directory,
    "replaced-by-a-fifo": become_fifo,
    "replaced-by-garbage": lambda db: replace_with(db, garbage),
    "replaced-by-an-empty-file": lambda db: replace_with(db, empty),
    "truncated-in-place": lambda db: os.truncate(db, 0),
    "header-corrupted-in-place": lambda db: overwrite(db, 0, 100),
    "pages-corrupted-in-place": lambda db: overwrite(db, 4096),
}


@pytest.fixture(scope="module")
def store_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstream: RunningUpstream
) -> Iterator[tuple[RunningProxy, Path, str]]:
    db = tmp_path_factory.mktemp("store-faults") / "tokenward.db"
    TokenStore.open(db, create=True).close()
    token = new_token(db, "steady")
    settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
    with start_proxy(settings) as proxy:
        yield proxy, db, token


@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_a_store_fault_while_running_fails_closed_then_recovers(
    store_gateway: tuple[RunningProxy, Path, str], upstream: RunningUpstream, fault: str
) -> None:
    proxy, db, token = store_gateway
    assert proxy.request("GET", f"/{token}").status == 200
    backup = backup_of(db)
    STORE_FAULTS[fault](db)
    until_the_proxy_looks_at_the_file()
    try:
        with nothing_reaches(upstream):
            for target, headers in [
                (f"/{token}", []),
                ("/rpc", [("x-auth-token", token)]),
                (f"/rpc?token={token}", []),
            ]:
                answer = proxy.request("GET", target, headers)
                assert error_of(answer) == (503, "store_unavailable"), (fault, answer)
                assert token not in answer.body.decode()
            # Rows that need no store answer as usual.
            assert error_of(proxy.request("GET", "/rpc")) == (401, "missing_token")
            assert error_of(proxy.request("GET", f"/a/{token}/b")) == (400, "misplaced_token")
    finally:
        remove_path(db)
        replace_with(db, copy_of(backup))
    # No wait here: a store in trouble is looked at again on every request.
    assert proxy.request("GET", f"/{token}").status == 200
    assert proxy.alive()
    assert "Traceback" not in proxy.output()


def test_a_store_replaced_by_another_store_is_read_once_the_proxy_looks(
    store_gateway: tuple[RunningProxy, Path, str], upstream: RunningUpstream
) -> None:
    proxy, db, token = store_gateway
    backup = backup_of(db)
    replace_with(db, another_store)
    until_the_proxy_looks_at_the_file()
    try:
        with nothing_reaches(upstream):
            assert error_of(proxy.request("GET", f"/{token}")) == (401, "unknown_token")
    finally:
        replace_with(db, copy_of(backup))
    until_the_proxy_looks_at_the_file()
    assert proxy.request("GET", f"/{token}").status == 200


# SQLite's files beside the store: the proxy opens the ones at the path again, and goes on.
# The -wal removed loses whatever it held that was not yet in the main file (here: last-used
# times), as it would for any SQLite program.
COMPANION_FAULTS: dict[str, tuple[Callable[[Path], Path], Callable[[Path], None]]] = {
    **{f"shm-{name}": (shm_of, fault) for name, fault in SHM_FAULTS.items()},
    "wal-removed": (wal_of, Path.unlink),
    "wal-replaced-by-a-copy": (wal_of, replace_by_a_copy),
}


@pytest.mark.parametrize("fault", list(COMPANION_FAULTS))
def test_a_lost_wal_or_shm_while_running_is_seen_and_changes_count_after(
    store_gateway: tuple[RunningProxy, Path, str], upstream: RunningUpstream, fault: str
) -> None:
    proxy, db, token = store_gateway
    assert proxy.request("GET", f"/{token}").status == 200
    companion_of, make = COMPANION_FAULTS[fault]
    make(companion_of(db))
    until_the_proxy_looks_at_the_file()
    assert proxy.request("GET", f"/{token}").status == 200
    name = f"churned-{fault}"
    churned = new_token(db, name)
    assert proxy.request("GET", f"/{churned}").status == 200
    with TokenStore.open(db, create=False) as cli:  # this process is not the proxy's
        cli.delete_token(name, utc_now())
    with nothing_reaches(upstream):
        assert error_of(proxy.request("GET", f"/{churned}")) == (401, "revoked_token")
    assert proxy.alive()
    assert "Traceback" not in proxy.output()


def until_the_proxy_looks_at_the_file() -> None:
    """The proxy looks at the store's path at most every FILE_CHECK_SECONDS: wait that out."""
    time.sleep(2 * FILE_CHECK_SECONDS)


# --------------------------------------------------------------------------- the CLI killed


@dataclass(frozen=True)
class Row:
    name: str
    kind: str
    digest: str
    hint: str
    expires_at: str | None
    scope: str | None
    revoked_at: str | None


def rows_of(db: Path) -> dict[str, Row]:
    """Every token row by digest, read after checking the file's integrity."""
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        rows = connection.execute(
            "SELECT name, kind, digest, hint, expires_at, scope, revoked_at FROM tokens"
        ).fetchall()
    return {row[2]: Row(*row) for row in rows}


def cli(*arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TOKENWARD, *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        check=False,
    )


def killed_at(arguments: list[str], delay: float, stdin: str | None) -> int | None:
    """Run the CLI and SIGKILL it after `delay` s; its exit status when it ended first."""
    process = subprocess.Popen(
        [TOKENWARD, *arguments],
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        if stdin is not None:
            assert process.stdin is not None
            process.stdin.write(stdin.encode())
            process.stdin.close()
        try:
            return process.wait(delay)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(CLI_TIMEOUT)
            return None
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(CLI_TIMEOUT)


def random_import_token(rng: random.Random) -> str:
    # Imported tokens may be as short as 16 characters after the prefix.
    return "sm_sat_" + "".join(rng.choices(string.ascii_letters + string.digits, k=16))


def test_the_cli_killed_at_any_moment_leaves_all_or_nothing(tmp_path: Path) -> None:
    db = tmp_path / "tokenward.db"
    rng = random.Random(20240601)
    # One run to completion of each command, to know how long one takes here.
    started = time.monotonic()
    timing = cli("tokens", "create", "--name", "timing", "--expires", "90d", "--db", str(db))
    duration = time.monotonic() - started
    assert timing.returncode == 0, timing.stderr
    outcomes: Counter[str] = Counter()
    iterations = 20
    for number in range(iterations):
        # Most kills fall near the end, where the write happens; some anywhere.
        delay = duration * (rng.uniform(0.75, 1.1) if number % 4 else rng.uniform(0.0, 1.0))

        # create
        before = rows_of(db)
        name = f"created-{number}"
        status = killed_at(
            ["tokens", "create", "--name", name, "--expires", "90d", "--db", str(db)], delay, None
        )
        after = rows_of(db)
        added = {d: row for d, row in after.items() if d not in before}
        assert {d: row for d, row in after.items() if d in before} == before
        if added:
            (row,) = added.values()
            assert (row.name, row.kind, row.scope, row.revoked_at) == (name, "pat", None, None)
            assert row.hint.startswith("sm_pat_…") and row.expires_at is not None
        assert status in (None, 0)
        if status == 0:
            assert added
        outcomes[f"create {'finished' if status == 0 else 'killed'}, {len(added)} row"] += 1

        # delete
        victim = f"victim-{number}"
        new_token(db, victim)
        before = rows_of(db)
        status = killed_at(["tokens", "delete", victim, "--yes", "--db", str(db)], delay, None)
        after = rows_of(db)
        assert set(after) == set(before)
        changed = [d for d in after if after[d] != before[d]]
        if changed:
            (digest,) = changed
            assert after[digest].name == victim and after[digest].revoked_at is not None
            assert after[digest] == replace(before[digest], revoked_at=after[digest].revoked_at)
        if status == 0:
            assert changed
        outcomes[f"delete {'finished' if status == 0 else 'killed'}, {len(changed)} row"] += 1

        # import
        token = random_import_token(rng)
        before = rows_of(db)
        status = killed_at(
            [
                "tokens",
                "import",
                "--name",
                f"imported-{number}",
                "--expires",
                "never",
                "--db",
                str(db),
            ],
            delay,
            token + "\n",
        )
        after = rows_of(db)
        added = {d: row for d, row in after.items() if d not in before}
        assert {d: row for d, row in after.items() if d in before} == before
        if added:
            (row,) = added.values()
            assert (row.name, row.kind, row.expires_at) == (f"imported-{number}", "sat", None)
        if status == 0:
            assert added
        outcomes[f"import {'finished' if status == 0 else 'killed'}, {len(added)} row"] += 1

    listed = cli("tokens", "list", "--db", str(db))
    assert listed.returncode == 0, listed.stderr
    print(f"\nSIGKILL outcomes over {iterations} runs each: {dict(sorted(outcomes.items()))}")


# --------------------------------------------------------------------------- disk full, ro


@contextmanager
def small_tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `where`; skips the test when mounting is not permitted."""
    where.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        unmounted = subprocess.run(
            ["umount", str(where)], capture_output=True, text=True, timeout=30, check=False
        )
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], timeout=30, check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; the file."""
    filler = directory / "filler"
    chunk = b"\0" * 4096
    with filler.open("wb") as file:
        try:
            while True:
                file.write(chunk)
                file.flush()
        except OSError as error:
            assert error.errno == errno.ENOSPC, error
    return filler


def assert_one_clear_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    return lines[0]


def test_a_full_disk_gives_one_clear_error_and_no_partial_state(
    tmp_path: Path, upstream: RunningUpstream
) -> None:
    with small_tmpfs(tmp_path / "small", "1m") as small:
        db = small / "tokenward.db"
        created = cli("tokens", "create", "--name", "before", "--expires", "90d", "--db", str(db))
        assert created.returncode == 0, created.stderr
        token = created.stdout.strip()
        settings = ProxySettings(db=db, upstream=upstream.url, listen_port=0)
        with start_proxy(settings) as proxy:
            filler = fill(small)
            before = rows_of(db)
            errors = [
                assert_one_clear_error(
                    cli("tokens", "create", "--name", "after", "--expires", "90d", "--db", str(db))
                ),
                assert_one_clear_error(cli("tokens", "delete", "before", "--yes", "--db", str(db))),
                assert_one_clear_error(
                    cli(
                        "tokens",
                        "import",
                        "--name",
                        "imported",
                        "--expires",
                        "never",
                        "--db",
                        str(db),
                        stdin=random_import_token(random.Random(1)),
                    )
                ),
            ]
            assert rows_of(db) == before
            # A new store on a full disk: refused, and nothing left behind.
            fresh = small / "fresh.db"
            errors.append(
                assert_one_clear_error(
                    cli("tokens", "create", "--name", "x", "--expires", "90d", "--db", str(fresh))
                )
            )
            assert sorted(small.glob("fresh.db*")) == []
            # The running proxy only reads: it keeps answering.
            assert proxy.request("GET", f"/{token}").status == 200
            filler.unlink()
            again = cli("tokens", "create", "--name", "after", "--expires", "90d", "--db", str(db))
            assert again.returncode == 0, again.stderr
            assert proxy.request("GET", f"/{again.stdout.strip()}").status == 200
        print("\nfull disk errors:\n" + "\n".join(errors))


def test_a_read_only_folder_gives_one_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "ro", "1m") as folder:
        db = folder / "tokenward.db"
        created = cli("tokens", "create", "--name", "before", "--expires", "90d", "--db", str(db))
        assert created.returncode == 0, created.stderr
        before = rows_of(db)
        remount = subprocess.run(
            ["mount", "-o", "remount,ro", str(folder)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
        try:
            errors = [
                assert_one_clear_error(
                    cli("tokens", "create", "--name", "after", "--expires", "90d", "--db", str(db))
                ),
                assert_one_clear_error(cli("tokens", "delete", "before", "--yes", "--db", str(db))),
                assert_one_clear_error(
                    cli(
                        "tokens",
                        "create",
                        "--name",
                        "x",
                        "--expires",
                        "90d",
                        "--db",
                        str(folder / "fresh.db"),
                    )
                ),
            ]
            assert sorted(folder.glob("fresh.db*")) == []
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], timeout=30, check=False)
        assert rows_of(db) == before
        print("\nread-only folder errors:\n" + "\n".join(errors))

"""The PostgreSQL store's background: one thread running an asyncio loop that listens for the
store's notices (LISTEN), confirms every `BEAT_SECONDS` that it still hears them, and runs the
reads and writes a proxy must not wait for on its own event loop, each with a deadline.

Hearing is confirmed by a beat: a notice this listener sends itself on the store's channel.
Notices reach a listener in commit order, so once a beat sent at time T comes back, every
change committed before T has been heard: `heard_at` is then T. A beat that does not come back
in time, a statement or a connection that fails or hangs (a server stopped, paused, cut off)
ends the connection; the listener connects again by itself, and calls `on_reconnect` before
its first beat (notices may have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import psycopg

from tokenward.store.errors import StoreUnavailable
from tokenward.store.pg_schema import NOTICE_CHANNEL

BEAT_SECONDS = 0.25
# A statement or a connection attempt that takes longer is taken for a hung server.
DEADLINE_SECONDS = 0.75
RETRY_SECONDS = 0.1
# Connections for the reads a proxy waits for in the background, and how many such reads may
# wait at once: beyond that, the store answers StoreUnavailable at once rather than queue.
READERS = 4
MAX_WAITING = 64
BEAT_PREFIX = "b"
_listener_ids = itertools.count(1)

type Work[T] = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]


class NoticeListener:
    """The background of one PostgreSQL store. `heard_at` (time.monotonic) is when the last
    confirmed beat was sent; `-inf` before the first."""

    def __init__(
        self,
        url: str,
        shown: str,
        on_notice: Callable[[str], None],
        on_reconnect: Callable[[], Coroutine[Any, Any, None]],
    ) -> None:
        self._url = url
        self._shown = shown
        self._on_notice = on_notice
        self._on_reconnect = on_reconnect
        self.heard_at = -math.inf
        self._beat_prefix = f"{BEAT_PREFIX}{id(self):x}.{next(_listener_ids)} "
        self._loop = asyncio.new_event_loop()
        self._stopping = False
        # Reads waiting, by kind: a flood of tokens never seen fills its places, not those of
        # the tokens known to have a row (dropped by a notice, read again).
        self._waiting = {False: 0, True: 0}
        self._waiting_lock = threading.Lock()
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._readers: asyncio.Semaphore | None = None
        self._main: concurrent.futures.Future[None] | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.name = "tokenward-store-notices"

    def start(self) -> None:
        self._thread.start()
        self._main = asyncio.run_coroutine_threadsafe(self._listen_forever(), self._loop)

    def stop(self) -> None:
        """End the listening and close every connection; waits for the thread."""
        self._stopping = True
        if self._main is not None:
            self._loop.call_soon_threadsafe(self._main.cancel)
            with contextlib.suppress(concurrent.futures.CancelledError, Exception):
                self._main.result(timeout=2 * DEADLINE_SECONDS)
            closing = asyncio.run_coroutine_threadsafe(self._close_idle(), self._loop)
            with contextlib.suppress(Exception):
                closing.result(timeout=2 * DEADLINE_SECONDS)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=2 * DEADLINE_SECONDS)

    def on_loop(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the listener's thread (where the notices are handled)."""
        self._loop.call_soon_threadsafe(callback)

    def submit[T](self, work: Work[T], *, known: bool = False) -> concurrent.futures.Future[T]:
        """Run `work` with a connection of its own, in the background, before the deadline.
        StoreUnavailable at once when `MAX_WAITING` of its kind (`known`) wait already."""
        with self._waiting_lock:
            if self._waiting[known] >= MAX_WAITING:
                raise StoreUnavailable(
                    f"too many reads of the token store {self._shown!r} are waiting"
                )
            self._waiting[known] += 1
        try:
            return asyncio.run_coroutine_threadsafe(self._run(work, known), self._loop)
        except BaseException:
            self._done_waiting(known)
            raise

    def _done_waiting(self, known: bool) -> None:
        with self._waiting_lock:
            self._waiting[known] -= 1

    async def _run[T](self, work: Work[T], known: bool) -> T:
        try:
            if self._readers is None:
                self._readers = asyncio.Semaphore(READERS)
            async with self._readers:
                connection = self._idle.pop() if self._idle else None
                try:
                    if connection is None:
                        connection = await self._connect()
                    result = await _within_deadline(connection, work(connection))
                except (psycopg.Error, OSError, TimeoutError) as error:
                    if connection is not None:
                        await _close_quietly(connection)
                    raise StoreUnavailable(
                        f"cannot read the token store {self._shown!r}: {_reason(error)}"
                    ) from None
                self._idle.append(connection)
                return result
        finally:
            self._done_waiting(known)

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        connecting = psycopg.AsyncConnection.connect(
            self._url, autocommit=True, connect_timeout=max(1, math.ceil(DEADLINE_SECONDS))
        )
        return await asyncio.wait_for(connecting, DEADLINE_SECONDS)

    async def _close_idle(self) -> None:
        while self._idle:
            await _close_quietly(self._idle.pop())

    async def _listen_forever(self) -> None:
        while not self._stopping:
            connection: psycopg.AsyncConnection[Any] | None = None
            try:
                connection = await self._connect()
                await _within_deadline(connection, connection.execute(f"LISTEN {NOTICE_CHANNEL}"))
                await self._on_reconnect()
                await self._beat(connection)
            except (psycopg.Error, OSError, TimeoutError, StoreUnavailable):
                pass
            finally:
                if connection is not None:
                    await _close_quietly(connection)
            await asyncio.sleep(RETRY_SECONDS)

    async def _beat(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Send a beat every BEAT_SECONDS and hand on every other notice as it comes; return
        (to reconnect) when a beat is not back within the deadline."""
        for count in itertools.count():
            beat = f"{self._beat_prefix}{count}"
            sent_at = time.monotonic()
            await _within_deadline(
                connection,
                connection.execute("SELECT pg_notify(%s, %s)", (NOTICE_CHANNEL, beat)),
            )
            async for notice in connection.notifies(timeout=BEAT_SECONDS):
                payload = notice.payload
                if payload == beat:
                    self.heard_at = sent_at
                elif not payload.startswith(BEAT_PREFIX):
                    self._on_notice(payload)
            if time.monotonic() - self.heard_at > BEAT_SECONDS + DEADLINE_SECONDS:
                return


async def _within_deadline[T](
    connection: psycopg.AsyncConnection[Any], operation: Awaitable[T]
) -> T:
    """`operation` on `connection`, or TimeoutError after DEADLINE_SECONDS.

    Not by cancelling it: psycopg answers a cancelled query by asking the server to cancel it
    and waiting up to 10 s for that, which a hung server never answers. The connection's socket
    is shut down instead, so psycopg sees the end of the stream and fails at once.
    """
    task = asyncio.ensure_future(operation)
    done, _ = await asyncio.wait({task}, timeout=DEADLINE_SECONDS)
    if done:
        return task.result()
    _shut_down(connection)
    finished, _ = await asyncio.wait({task}, timeout=DEADLINE_SECONDS)
    if finished:
        with contextlib.suppress(Exception):
            task.result()  # its failure is the timeout's doing
    else:
        task.cancel()
    raise TimeoutError


def _shut_down(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(OSError, psycopg.Error):
        descriptor = connection.pgconn.socket
        # A duplicate of the descriptor: shutting it down ends the stream of the original.
        with socket.socket(fileno=os.dup(descriptor)) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)


async def _close_quietly(connection: psycopg.AsyncConnection[Any]) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(connection.close(), DEADLINE_SECONDS)


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {DEADLINE_SECONDS} s"
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__

"""Group commit of the refresh worker's fences: requests that start together share a statement.

Each refresh request is fenced before it is sent (`ConnectionStore.begin_attempts`: the
lease confirmed and extended, the attempt recorded). A request that wants its fence while no
fence statement is in flight gets one at once, alone; those that come while one is in flight
queue, and go together in the next statement as soon as it returns. No timer: a lone request
waits for nothing, and under load a statement (and its commit) serves many requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from uuid import UUID

from linkvault.stores.common import AttemptStart

FenceStatement = Callable[[Sequence[AttemptStart]], Awaitable[dict[UUID, datetime]]]


class Fences:
    """Coalesces fences into as few statements as keep one in flight at a time.

    `statement` fences the attempts it is given in one statement and returns those it fenced
    (see `begin_attempts`); `most()` caps how many one statement takes.
    """

    def __init__(self, statement: FenceStatement, *, most: Callable[[], int]) -> None:
        self._statement = statement
        self._most = most
        self._queue: deque[tuple[AttemptStart, asyncio.Future[datetime | None]]] = deque()
        self._draining: asyncio.Task[None] | None = None
        self.statements = 0  # fence statements issued
        self.fenced = 0  # requests that went in one (fenced or not)

    async def begin(self, attempt: AttemptStart) -> datetime | None:
        """Fence one request: the attempt's first time, or None when it must not be sent.

        Raises what the statement raised when it failed: every request in it fails alike.
        """
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[datetime | None] = loop.create_future()
        self._queue.append((attempt, answer))
        draining = self._draining
        # (A drain left behind by an event loop that closed under it drains nothing here.)
        if draining is None or draining.done() or draining.get_loop() is not loop:
            self._draining = asyncio.create_task(self._drain())
        return await answer

    async def _drain(self) -> None:
        batch: list[tuple[AttemptStart, asyncio.Future[datetime | None]]] = []
        try:
            while self._queue:
                batch = self._take()
                if not batch:
                    continue
                self.statements += 1
                self.fenced += len(batch)
                try:
                    held = await self._statement([a for a, _ in batch])
                except Exception as exc:
                    for _, answer in batch:
                        if not answer.done():
                            answer.set_exception(exc)
                else:
                    for a, answer in batch:
                        if not answer.done():
                            answer.set_result(held.get(a.connection_id))
                batch = []
        except BaseException:
            # Cancelled (the loop is closing): nobody waits on an answer that cannot come.
            for _, answer in (*batch, *self._queue):
                answer.cancel()
            self._queue.clear()
            raise
        finally:
            if self._draining is asyncio.current_task():
                self._draining = None

    def _take(self) -> list[tuple[AttemptStart, asyncio.Future[datetime | None]]]:
        """The next statement's requests, oldest first: those still waiting, each connection
        once (a second request for one waits for the next statement)."""
        most = max(1, self._most())
        batch: list[tuple[AttemptStart, asyncio.Future[datetime | None]]] = []
        later: list[tuple[AttemptStart, asyncio.Future[datetime | None]]] = []
        ids: set[UUID] = set()
        loop = asyncio.get_running_loop()
        while self._queue and len(batch) < most:
            attempt, answer = self._queue.popleft()
            # Its refresh was cancelled while it waited (or its loop is gone): send nothing.
            if answer.done() or answer.get_loop() is not loop:
                continue
            if attempt.connection_id in ids:
                later.append((attempt, answer))
                continue
            ids.add(attempt.connection_id)
            batch.append((attempt, answer))
        self._queue.extendleft(reversed(later))
        return batch

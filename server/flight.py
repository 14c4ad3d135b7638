"""Single-flight: concurrent callers with the same key share one execution,
so N simultaneous misses for one packument or tarball cost one upstream request."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class SingleFlight(Generic[K, T]):
    """Concurrent callers with the same key share one execution.

    The work runs in its own task, so a caller that is cancelled (a client that
    hung up) neither cancels it for the others nor leaves it half done. The
    entry disappears when the task finishes: later callers start afresh.
    """

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[T]] = {}

    def running(self, key: K) -> asyncio.Task[T] | None:
        return self._tasks.get(key)

    def start(self, key: K, work: Awaitable[T]) -> asyncio.Task[T]:
        """Run ``work`` as the flight for ``key`` (there must be none running)."""
        assert key not in self._tasks, key
        task: asyncio.Task[T] = asyncio.ensure_future(work)
        self._tasks[key] = task
        task.add_done_callback(lambda t: self._finished(key, t))
        return task

    async def do(self, key: K, work: Callable[[], Awaitable[T]]) -> T:
        """``await work()``, or join the flight already running for ``key``."""
        task = self._tasks.get(key)
        if task is None:
            task = self.start(key, work())
        return await asyncio.shield(task)

    def _finished(self, key: K, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    def __len__(self) -> int:
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

"""Admission control: at most `max_concurrency` requests decode at once, `max_queue` more may wait.

A request beyond that is refused at once (HTTP 429 with `Retry-After`) rather than queued without
bound: a queue longer than clients are willing to wait only turns overload into timeouts.
"""

from __future__ import annotations

import asyncio
from collections import deque


class QueueFull(Exception):
    """Every decoding slot is busy and the waiting line is full."""


class Admission:
    """Decoding slots plus a bounded FIFO line of waiters (single event loop, no locks needed)."""

    def __init__(self, max_concurrency: int, max_queue: int) -> None:
        if max_concurrency < 1 or max_queue < 0:
            raise ValueError("max_concurrency must be ≥ 1 and max_queue ≥ 0")
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def ticket(self) -> Ticket:
        """Reserve a place now (raises QueueFull); `await ticket.acquire()` waits for the slot."""
        if self.in_flight < self.max_concurrency and not self._waiters:
            self.in_flight += 1
            return Ticket(self, granted=True)
        if len(self._waiters) >= self.max_queue:
            raise QueueFull(
                f"server busy: {self.in_flight} requests decoding and {len(self._waiters)} waiting "
                f"(limits: maxConcurrency {self.max_concurrency}, maxQueue {self.max_queue})"
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        return Ticket(self, granted=False, future=future)

    def _release_slot(self) -> None:
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes to the waiter: in_flight unchanged
                return
        self.in_flight -= 1

    def _abandon(self, future: asyncio.Future[None]) -> None:
        if future in self._waiters:
            self._waiters.remove(future)


class Ticket:
    """One request's place: waiting, then holding a slot, until `release()` (idempotent)."""

    def __init__(self, admission: Admission, granted: bool, future: asyncio.Future[None] | None = None) -> None:
        self._admission = admission
        self._future = future
        self.granted = granted
        self._released = False

    async def acquire(self) -> None:
        """Wait for a slot. Cancelled while waiting (client gone): the place in line is given up."""
        if self.granted:
            return
        assert self._future is not None
        try:
            await asyncio.shield(self._future)
        except asyncio.CancelledError:
            if self._future.done() and not self._future.cancelled():
                self.granted = True  # the slot arrived as we were cancelled: release() hands it on
            else:
                self._future.cancel()
                self._admission._abandon(self._future)
                self._released = True
            raise
        self.granted = True

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        if self.granted:
            self._admission._release_slot()
        elif self._future is not None:
            self._future.cancel()
            self._admission._abandon(self._future)

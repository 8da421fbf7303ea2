"""Admission: slots, a bounded FIFO line, what cancellation does to a place in it, and the gauges read from it."""

from __future__ import annotations

import asyncio

import pytest

from metaspec.server.limits import Admission, QueueFull
from metaspec.server.metrics import ServerMetrics


async def test_slots_then_line_then_refusal() -> None:
    admission = Admission(max_concurrency=2, max_queue=1)
    first, second = admission.ticket(), admission.ticket()
    assert first.granted and second.granted and admission.in_flight == 2
    third = admission.ticket()
    assert not third.granted and admission.waiting == 1
    with pytest.raises(QueueFull, match="maxConcurrency 2, maxQueue 1"):
        admission.ticket()
    waiter = asyncio.create_task(third.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    first.release()
    await waiter
    assert third.granted and admission.in_flight == 2 and admission.waiting == 0
    first.release()  # idempotent: must not free a second slot
    assert admission.in_flight == 2
    second.release()
    third.release()
    assert admission.in_flight == 0


async def test_line_is_first_in_first_out() -> None:
    admission = Admission(max_concurrency=1, max_queue=3)
    holder = admission.ticket()
    tickets = [admission.ticket() for _ in range(3)]
    order: list[int] = []

    async def wait(i: int) -> None:
        await tickets[i].acquire()
        order.append(i)
        tickets[i].release()

    tasks = [asyncio.create_task(wait(i)) for i in (2, 0, 1)]  # waiting order must not matter
    await asyncio.sleep(0)
    holder.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2] and admission.in_flight == 0


async def test_cancelled_waiter_gives_up_its_place() -> None:
    admission = Admission(max_concurrency=1, max_queue=1)
    holder = admission.ticket()
    waiting = admission.ticket()
    task = asyncio.create_task(waiting.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert admission.waiting == 0
    waiting.release()  # after cancellation: a no-op
    late = admission.ticket()  # the freed place can be taken
    holder.release()
    await late.acquire()
    assert late.granted and admission.in_flight == 1


async def test_released_before_waiting_frees_the_place() -> None:
    admission = Admission(max_concurrency=1, max_queue=1)
    holder = admission.ticket()
    admission.ticket().release()  # e.g. the request failed validation after admission
    assert admission.waiting == 0
    holder.release()
    assert admission.in_flight == 0


async def test_slot_granted_while_being_cancelled_is_passed_on() -> None:
    """The holder releases (granting the waiter) in the same tick the waiter is cancelled."""
    admission = Admission(max_concurrency=1, max_queue=2)
    holder = admission.ticket()
    racing, next_in_line = admission.ticket(), admission.ticket()
    task = asyncio.create_task(racing.acquire())
    await asyncio.sleep(0)
    holder.release()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    racing.release()
    await asyncio.wait_for(next_in_line.acquire(), 1)
    assert admission.in_flight == 1


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        Admission(max_concurrency=0, max_queue=1)


async def test_gateway_gauges_follow_admission() -> None:
    """Running and waiting requests, and KV-cache usage as the share of slots in use, under the names and label
    an inference gateway's endpoint picker reads."""
    admission = Admission(max_concurrency=4, max_queue=2)
    metrics = ServerMetrics("m", lambda: admission.in_flight, lambda: admission.waiting, admission.max_concurrency)

    def gauges() -> tuple[float | None, ...]:
        names = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
        return tuple(metrics.registry.get_sample_value(n, {"model_name": "m"}) for n in names)

    assert gauges() == (0, 0, 0)
    tickets = [admission.ticket() for _ in range(5)]
    assert gauges() == (4, 1, 1.0)
    tickets[0].release()
    await tickets[4].acquire()
    tickets[1].release()
    assert gauges() == (3, 0, 0.75)

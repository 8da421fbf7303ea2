"""The progress writer's API budget: with many runs reporting, status writes stay within both limits."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

from metaspec.api.summaries import ProgressReport
from metaspec.operator.kube import Kube
from metaspec.operator.progress import ProgressService, Reporter, RunReports
from metaspec.operator.settings import OperatorSettings

RUNS = 200


def test_many_reporting_runs_stay_within_the_write_budget():
    """200 runs report every 20 ms for 2.5 s; writes are recorded instead of sent (no API involved).

    Budget: at most one write per run per `progress_seconds`, at most `progress_writes_per_second`
    in all, and no run starves.
    """
    settings = OperatorSettings(progress_seconds=0.5, progress_writes_per_second=200.0)
    writes: list[tuple[float, str]] = []

    async def record_write(run: RunReports) -> bool:
        writes.append((time.monotonic(), run.reporter.name))
        return True

    async def main() -> float:
        service = ProgressService(Kube(), settings, write=record_write)
        flusher = asyncio.create_task(service.flush_forever())
        reporters = [
            Reporter("TrainingRun", "ns", f"run-{i}", f"uid-{i}", f"run-{i}-g1", f"pod-{i}", 0) for i in range(RUNS)
        ]
        started = time.monotonic()
        step = 0
        while time.monotonic() - started < 2.5:
            step += 1
            for reporter in reporters:
                service.record(reporter, ProgressReport(step=step, total_steps=1000))
            await asyncio.sleep(0.02)
        flusher.cancel()
        return time.monotonic() - started

    elapsed = asyncio.run(main())
    assert len(writes) <= settings.progress_writes_per_second * elapsed + 1
    per_run = Counter(name for _, name in writes)
    assert len(per_run) == RUNS, "every run got its progress written"
    assert max(per_run.values()) <= elapsed / settings.progress_seconds + 1
    by_run: dict[str, list[float]] = {}
    for at, name in writes:
        by_run.setdefault(name, []).append(at)
    gaps = [b - a for times in by_run.values() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= settings.progress_seconds - 0.01


def test_serving_pods_reports_are_bounded_and_every_shard_is_kept():
    """A SpecServe keeps its newest serving pods' reports (a pod that reports again moves to the end),
    never more than a bound over its lifetime; a TeacherGeneration keeps one report per shard, however many."""
    service = ProgressService(Kube(), OperatorSettings())
    serving = [Reporter("SpecServe", "ns", "s", "uid", "s", f"s-{i}", f"s-{i}") for i in range(100)]
    for reporter in [*serving, serving[0]]:
        service.record(reporter, ProgressReport())
    kept = list(service.runs[serving[0].key].reports)
    assert len(kept) == 64 and kept[-1] == "s-0" and kept[0] == "s-37"
    for shard in range(100):
        service.record(Reporter("TeacherGeneration", "ns", "g", "uid", "g-g1", f"g-{shard}", shard), ProgressReport())
    assert len(service.runs[("TeacherGeneration", "ns", "g")].reports) == 100

"""Prometheus metrics of the operator: reconciles, errors and latency per kind, phase changes, failed gates.

The chart's Grafana dashboard and alert rules query these names; a test checks each one is exported."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram, start_http_server

from metaspec.api import RESOURCES

RECONCILES = Counter("metaspec_operator_reconciles_total", "Reconcile passes, by kind and result.", ["kind", "result"])
ERRORS = Counter("metaspec_operator_errors_total", "Reconcile errors, by kind and error class.", ["kind", "error"])
LATENCY = Histogram(
    "metaspec_operator_reconcile_seconds",
    "Time of one reconcile pass (API calls included), by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
TRANSITIONS = Counter(
    "metaspec_operator_phase_transitions_total",
    "Phase changes, by kind, new phase and the reason of the Ready condition (the Event's reason).",
    ["kind", "phase", "reason"],
)
FAILURES = Counter("metaspec_operator_failures_total", "Resources that turned Failed, by kind.", ["kind"])
QUALITY_FAILURES = Counter(
    "metaspec_operator_quality_gate_failures_total",
    "Runs that failed a quality gate (natural-stop rate, merge degradation), by kind.",
    ["kind"],
)
# Alerts fire on `increase()`, which misses a series' first sample: every kind starts at 0.
for _kind in RESOURCES:
    FAILURES.labels(_kind)
    QUALITY_FAILURES.labels(_kind)

#: The latest reconcile latencies (seconds) per kind, for the benchmark's percentiles.
SAMPLES: dict[str, deque[float]] = {}
_KEEP = 100_000


@contextmanager
def timed(kind: str) -> Iterator[None]:
    """Count and time one reconcile; errors are counted by class and re-raised."""
    start = time.perf_counter()
    try:
        yield
    except Exception as e:
        ERRORS.labels(kind, type(e).__name__).inc()
        RECONCILES.labels(kind, "error").inc()
        raise
    else:
        RECONCILES.labels(kind, "ok").inc()
    finally:
        elapsed = time.perf_counter() - start
        LATENCY.labels(kind).observe(elapsed)
        SAMPLES.setdefault(kind, deque(maxlen=_KEEP)).append(elapsed)


def serve(port: int) -> None:
    """Expose `/metrics` on `port` (a daemon thread; 0 disables)."""
    if port:
        start_http_server(port)

"""Prometheus metrics of the router, in a registry of its own (one per app, so tests can build several).

Counters are the source of truth (`rate()` them in PromQL); the two `*_rate` gauges are the same ratios
since start, for a glance at `/metrics` without a Prometheus server.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine.protocol import RequestStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models")
#: Status for requests whose client went away before the response: nginx's "client closed request".
CLIENT_CLOSED = 499

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)


class ServerMetrics:
    """The router's series; `queue_depth` and `in_flight` are read from admission at scrape time."""

    def __init__(self, queue_depth: Callable[[], int], in_flight: Callable[[], int]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "metaspec_requests", "HTTP requests by endpoint and status code.", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter("metaspec_prompt_tokens", "Prompt tokens of completed requests.", registry=r)
        self.completion_tokens = Counter("metaspec_completion_tokens", "Generated tokens.", registry=r)
        self.routed = Counter(
            "metaspec_routed_requests", "Completed generations by route taken.", ["route"], registry=r
        )
        self.proposed = Counter("metaspec_proposed_tokens", "Draft tokens proposed to the target.", registry=r)
        self.accepted = Counter("metaspec_accepted_tokens", "Draft tokens the target accepted.", registry=r)
        self.speculation_rate = Gauge(
            "metaspec_speculation_rate", "Share of generations routed speculative, since start.", registry=r
        )
        self.acceptance_rate = Gauge(
            "metaspec_acceptance_rate", "Accepted / proposed draft tokens, since start.", registry=r
        )
        self.ttft = Histogram(
            "metaspec_time_to_first_token_seconds",
            "From admission of the request to its first generated text (queue wait included).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "metaspec_queue_wait_seconds",
            "Time spent waiting for a decoding slot.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_per_second = Histogram(
            "metaspec_generation_tokens_per_second",
            "Per request: generated tokens / generation time (prefill and decoding, queue wait excluded).",
            buckets=_RATE_BUCKETS,
            registry=r,
        )
        self.request_seconds = Histogram(
            "metaspec_request_duration_seconds", "Whole generation requests.", buckets=_LATENCY_BUCKETS, registry=r
        )
        Gauge("metaspec_queue_depth", "Requests waiting for a decoding slot.", registry=r).set_function(queue_depth)
        Gauge("metaspec_in_flight", "Requests decoding now.", registry=r).set_function(in_flight)
        self._generations = {"speculative": 0, "target-only": 0}
        self._tokens = {"proposed": 0, "accepted": 0}

    def request(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(endpoint=endpoint, status=str(status)).inc()

    def generation(self, stats: RequestStats, request_seconds: float) -> None:
        """Account one finished generation."""
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        self.routed.labels(route=stats.route).inc()
        self.proposed.inc(stats.proposed_tokens)
        self.accepted.inc(stats.accepted_tokens)
        self.request_seconds.observe(request_seconds)
        generation_seconds = (stats.time_to_first_token or 0.0) + stats.decode_seconds
        if generation_seconds > 0 and stats.completion_tokens:
            self.tokens_per_second.observe(stats.completion_tokens / generation_seconds)
        self._generations[stats.route] += 1
        self._tokens["proposed"] += stats.proposed_tokens
        self._tokens["accepted"] += stats.accepted_tokens
        self.speculation_rate.set(self._generations["speculative"] / sum(self._generations.values()))
        if self._tokens["proposed"]:
            self.acceptance_rate.set(self._tokens["accepted"] / self._tokens["proposed"])

    def render(self) -> bytes:
        return generate_latest(self.registry)

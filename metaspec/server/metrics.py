"""Prometheus metrics of the server, in a registry of its own (one per app, so tests can build several).

Every series carries a `model` label (the served model name), so replicas and models aggregate in
PromQL. Ratios are left to queries over counters, e.g. the acceptance rate
`rate(metaspec_accepted_tokens_total[5m]) / rate(metaspec_proposed_tokens_total[5m])` and the mean
acceptance length `1 + rate(metaspec_accepted_tokens_total[5m]) / rate(metaspec_speculation_rounds_total[5m])`.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .engine.protocol import RequestStats

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: The namespace of the series vLLM exports and inference gateways read; we export a few under it too.
VLLM_PREFIX = "vllm:"
ENDPOINTS = ("/v1/completions", "/v1/chat/completions", "/v1/models")
#: Status for requests whose client went away before the response: nginx's "client closed request".
CLIENT_CLOSED = 499
#: Why generations end: the engine's `stop`/`length`, a failure, or the client leaving first.
FINISH_REASONS = ("stop", "length", "error", "cancelled")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)
_RATE_BUCKETS = (1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 1000)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServerMetrics:
    """The server's series; running and waiting sequences are read from admission at scrape time, whose
    `slots` (maxConcurrency) bound the running ones."""

    def __init__(self, model: str, running: Callable[[], int], waiting: Callable[[], int], slots: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.model = model
        r = self.registry

        def counter(name: str, doc: str, *labels: str) -> Counter:
            return Counter(name, doc, ["model", *labels], registry=r)

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, ["model"], buckets=buckets, registry=r)

        def gauge(name: str, doc: str, read: Callable[[], float]) -> None:
            Gauge(name, doc, ["model"], registry=r).labels(model).set_function(read)

        self.requests = counter("metaspec_requests", "HTTP requests by endpoint and status code.", "endpoint", "status")
        self.prompt_tokens = counter("metaspec_prompt_tokens", "Prompt tokens of finished generations.")
        self.completion_tokens = counter("metaspec_completion_tokens", "Generated tokens.")
        self.routed = counter("metaspec_routed_requests", "Finished generations by route taken.", "route")
        self.finished = counter(
            "metaspec_finished_requests",
            "Generations by how they ended: stop (stop token or string), length (token budget), error, "
            "cancelled (the client left).",
            "reason",
        )
        self.proposed = counter("metaspec_proposed_tokens", "Draft tokens proposed to the target.")
        self.accepted = counter("metaspec_accepted_tokens", "Draft tokens the target accepted.")
        self.lookup_proposed = counter(
            "metaspec_lookup_proposed_tokens", "Of the proposed tokens, those prompt lookup proposed (promptLookup)."
        )
        self.lookup_accepted = counter(
            "metaspec_lookup_accepted_tokens", "Of the accepted tokens, those prompt lookup proposed."
        )
        self.rounds = counter(
            "metaspec_speculation_rounds",
            "Target passes that verified draft tokens; mean acceptance length = 1 + accepted / rounds.",
        )
        self.steps = counter(
            "metaspec_decode_steps", "Batched decoding steps, by whether the draft proposed.", "speculative"
        )
        self.batch_size = histogram("metaspec_batch_size", "Sequences decoded together per step.", _BATCH_BUCKETS)
        self.ttft = histogram(
            "metaspec_time_to_first_token_seconds",
            "From arrival of the request to its first generated text (queue wait included).",
            _LATENCY_BUCKETS,
        )
        self.itl = histogram(
            "metaspec_inter_token_latency_seconds",
            "Between consecutive generated tokens of a request, as streamed (a round's tokens share its time).",
            _TOKEN_LATENCY_BUCKETS,
        )
        self.queue_wait = histogram(
            "metaspec_queue_wait_seconds", "Time spent waiting for a decoding slot.", _LATENCY_BUCKETS
        )
        self.tokens_per_second = histogram(
            "metaspec_generation_tokens_per_second",
            "Per request: generated tokens / generation time (prefill and decoding, queue wait excluded).",
            _RATE_BUCKETS,
        )
        self.request_seconds = histogram(
            "metaspec_request_duration_seconds", "Whole generation requests.", _LATENCY_BUCKETS
        )
        gauge("metaspec_running_sequences", "Requests holding a decoding slot.", running)
        gauge("metaspec_waiting_sequences", "Requests waiting for a decoding slot.", waiting)
        self._endpoint_picker_gauges(running, waiting, slots)

    def _endpoint_picker_gauges(self, running: Callable[[], int], waiting: Callable[[], int], slots: int) -> None:
        """The model-server metrics an inference gateway's endpoint picker reads (the Gateway API Inference
        Extension's defaults, which are vLLM's names and `model_name` label), so our pods and vLLM's sit
        behind the same gateway, HPA rule and alerts."""
        r, m = self.registry, ["model_name"]
        for name, doc, read in (
            (f"{VLLM_PREFIX}num_requests_running", "Requests holding a decoding slot.", running),
            (f"{VLLM_PREFIX}num_requests_waiting", "Requests waiting for a decoding slot.", waiting),
            (
                f"{VLLM_PREFIX}kv_cache_usage_perc",
                "Share of the KV cache reserved (0 to 1): decoding slots in use over maxConcurrency, each slot "
                "holding room for the longest allowed sequence.",
                lambda: running() / slots,
            ),
        ):
            Gauge(name, doc, m, registry=r).labels(self.model).set_function(read)

    def request(self, path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def step(self, batch: int, speculative: bool) -> None:
        """Account one decoding step (called from the engine's thread; the client library is thread-safe)."""
        self.batch_size.labels(self.model).observe(batch)
        self.steps.labels(self.model, str(speculative).lower()).inc()

    def token_latency(self, seconds: float, tokens: int) -> None:
        """`tokens` arrived `seconds` after the previous ones: each gets an equal share."""
        for _ in range(tokens):
            self.itl.labels(self.model).observe(seconds / tokens)

    def end(self, reason: str) -> None:
        self.finished.labels(self.model, reason).inc()

    def generation(self, stats: RequestStats, request_seconds: float) -> None:
        """Account one finished generation."""
        m = self.model
        self.prompt_tokens.labels(m).inc(stats.prompt_tokens)
        self.completion_tokens.labels(m).inc(stats.completion_tokens)
        self.routed.labels(m, stats.route).inc()
        self.proposed.labels(m).inc(stats.proposed_tokens)
        self.accepted.labels(m).inc(stats.accepted_tokens)
        self.lookup_proposed.labels(m).inc(stats.lookup_proposed_tokens)
        self.lookup_accepted.labels(m).inc(stats.lookup_accepted_tokens)
        self.rounds.labels(m).inc(stats.speculative_rounds)
        self.request_seconds.labels(m).observe(request_seconds)
        generation_seconds = (stats.time_to_first_token or 0.0) + stats.decode_seconds
        if generation_seconds > 0 and stats.completion_tokens:
            self.tokens_per_second.labels(m).observe(stats.completion_tokens / generation_seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)

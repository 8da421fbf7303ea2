"""`/healthz`, `/readyz`, `/health` while the models load, and the counters `/metrics` exposes after requests."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metaspec.server.app import create_app
from metaspec.server.engine import SpeculativeEngine
from metaspec.server.serving import ServerSettings
from metaspec_testing.monitoring import dashboard_queries, exported_metrics, queried_metrics
from metaspec_testing.servers import serve_in_thread

MODEL = "tiny-spec"


def test_readyz_flips_when_the_models_are_loaded(
    tiny_llama: Path, tiny_llama_draft: Path, tmp_path: Path, tiny_spec
) -> None:
    engine = SpeculativeEngine.from_spec(tiny_spec(tiny_llama, tiny_llama_draft), "late", tmp_path, device="cpu")
    with (
        serve_in_thread(create_app(engine, ServerSettings(model_name="late"))) as url,
        httpx.Client(base_url=url) as http,
    ):
        assert http.get("/healthz").status_code == 200
        assert http.get("/readyz").status_code == 503
        assert http.get("/health").json() == {"status": "loading"}
        early = http.post("/v1/completions", json={"model": "late", "prompt": "Hi", "max_tokens": 2})
        assert early.status_code == 503 and early.headers["Retry-After"] == "1"
        assert early.json()["error"]["code"] == "model_loading"
        engine.load()
        assert http.get("/readyz").json() == {"ready": True}
        assert http.get("/health").json() == {"status": "ok"}
        assert http.post("/v1/completions", json={"model": "late", "prompt": "Hi", "max_tokens": 2}).status_code == 200
    engine.close()


def scrape(router) -> dict[str, float]:
    """Every sample of /metrics as `name{label=value,...}` -> value, without the `model` label (which
    every sample must carry, naming the served model)."""
    text = httpx.get(f"{router.url}/metrics").text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith("metaspec_"):
                continue
            labels = dict(sample.labels)
            assert labels.pop("model") == MODEL, sample
            labels = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def test_metrics_count_requests_tokens_and_speculation(router) -> None:
    router.wait_idle()
    before = scrape(router)
    with router.client() as http:
        ok = [
            http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 5}).json()
            for _ in range(2)
        ]
        chat = http.post("/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
        assert chat.status_code == 200
        assert http.post("/v1/completions", json={"model": MODEL, "prompt": "Hi", "n": 3}).status_code == 400
    after = scrape(router)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    answers = [*ok, chat.json()]
    assert delta("metaspec_requests_total{endpoint=/v1/completions,status=200}") == 2
    assert delta("metaspec_requests_total{endpoint=/v1/completions,status=400}") == 1
    assert delta("metaspec_requests_total{endpoint=/v1/chat/completions,status=200}") == 1
    assert delta("metaspec_prompt_tokens_total{}") == sum(a["usage"]["prompt_tokens"] for a in answers)
    assert delta("metaspec_completion_tokens_total{}") == sum(a["usage"]["completion_tokens"] for a in answers)
    assert delta("metaspec_routed_requests_total{route=speculative}") == 3
    assert delta("metaspec_proposed_tokens_total{}") == sum(a["metaspec"]["proposed_tokens"] for a in answers)
    assert delta("metaspec_accepted_tokens_total{}") == sum(a["metaspec"]["accepted_tokens"] for a in answers)
    for field in ("lookup_proposed_tokens", "lookup_accepted_tokens"):  # a draft model alone: none from lookup
        assert delta(f"metaspec_{field}_total{{}}") == sum(a["metaspec"][field] for a in answers) == 0
    assert (
        delta("metaspec_finished_requests_total{reason=length}")
        + delta("metaspec_finished_requests_total{reason=stop}")
        == 3
    )
    rounds = delta("metaspec_speculation_rounds_total{}")
    assert 0 < rounds <= delta("metaspec_completion_tokens_total{}")
    assert delta("metaspec_decode_steps_total{speculative=true}") > 0
    assert delta("metaspec_batch_size_count{}") > 0
    assert delta("metaspec_inter_token_latency_seconds_count{}") > 0
    assert delta("metaspec_time_to_first_token_seconds_count{}") == 3
    assert delta("metaspec_generation_tokens_per_second_count{}") == 3
    assert after["metaspec_waiting_sequences{}"] == 0 and after["metaspec_running_sequences{}"] == 0


def test_head_probes_huge_model_names_and_a_body_cut_short(router, caplog: pytest.LogCaptureFixture) -> None:
    """HEAD health checks answer 200; a 1 MB model name or unknown key is not echoed back whole; a client that leaves while
    sending its body is a quiet 499, not a 500 logged as an unexpected error."""
    with router.client() as http:
        assert http.head("/healthz").status_code == 200
        assert http.head("/readyz").status_code == 200
        missing = http.post("/v1/completions", json={"model": "m" * 1_000_000, "prompt": "Hi", "max_tokens": 1})
        assert missing.status_code == 404 and len(missing.content) < 1000, missing.content[:200]
        unknown = http.post(
            "/v1/completions", json={"model": MODEL, "prompt": "Hi", "k" * 1_000_000: 1, "max_tokens": 1}
        )
        assert unknown.status_code == 200 and len(unknown.headers["Warning"]) < 200, unknown.headers["Warning"][:200]
    router.wait_idle()
    before = scrape(router)
    host, port = router.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as raw:
        raw.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": "'
        )
    name = "metaspec_requests_total{{endpoint=/v1/completions,status={}}}"
    deadline = time.monotonic() + 10
    while scrape(router).get(name.format(499)) == before.get(name.format(499)) and time.monotonic() < deadline:
        time.sleep(0.1)
    after = scrape(router)
    assert after.get(name.format(499), 0) == before.get(name.format(499), 0) + 1
    assert after.get(name.format(500), 0) == before.get(name.format(500), 0)
    assert "unexpected error" not in caplog.text


def test_dashboard_queries_only_what_the_server_exports(router) -> None:
    """The chart's Grafana dashboard (and so its alerts, whose serving names are all on it) queries only series
    the real `/metrics` offers, for the metaspec engine (vLLM's own names: test_server_vllm.py). The names an
    inference gateway's endpoint picker reads are there under vLLM's names and `model_name` label."""
    router.wait_idle()
    text = httpx.get(f"{router.url}/metrics").text
    exported = exported_metrics(text)
    queried = {n for q in dashboard_queries() for n in queried_metrics(q)}
    ours = {n for n in queried if n.startswith("metaspec_") and not n.startswith("metaspec_operator_")}
    assert ours and ours <= exported, sorted(ours - exported)
    gateway = {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
    assert gateway <= queried & exported
    samples = {s.name: s for family in text_string_to_metric_families(text) for s in family.samples}
    for name in gateway:
        assert samples[name].labels == {"model_name": MODEL} and samples[name].value == 0, samples[name]

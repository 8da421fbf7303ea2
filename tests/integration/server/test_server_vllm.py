"""SpecServe `engine: vllm` for real: vLLM's OpenAI server on CPU (`make vllm-venv`), started with the
arguments a cluster pod gets, SmolLM2-135M-Instruct as target and its first two layers as a draft
model (`speculativeMethod: draft_model`). The OpenAI-client tests of plain OpenAI behaviour that our
router passes run against it (those left out say why in their docstrings).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from test_server_openai_client import (
    MODEL,
    test_chat_uses_the_chat_template,
    test_completion,
    test_completion_n,
    test_models_lists_the_served_name,
    test_stop_string_is_cut_and_not_returned,
    test_streaming_completion,
    test_streaming_matches_non_streaming,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from metaspec.api import SpecServe
from metaspec.local.vllm import start_vllm_server
from metaspec_testing.models import cut_draft
from metaspec_testing.monitoring import dashboard_queries, exported_metrics, queried_metrics

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

__all__ = [
    "test_chat_uses_the_chat_template",
    "test_completion",
    "test_completion_n",
    "test_models_lists_the_served_name",
    "test_stop_string_is_cut_and_not_returned",
    "test_streaming_completion",
    "test_streaming_matches_non_streaming",
]

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "Water boils at"]
K = 3  # draft tokens per step


@pytest.fixture(scope="module")
def vllm_url(smollm2: Path, vllm_process_env: dict[str, str], tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vllm-serve")
    draft = cut_draft(smollm2, tmp / "draft", num_layers=2)
    serve = SpecServe.model_validate(
        {
            "metadata": {"name": "vllm-spec", "uid": "u"},
            "spec": {
                "engine": "vllm",
                "servedModelName": MODEL,
                "target": {"uri": str(smollm2)},
                "draft": {"uri": str(draft)},
                "routing": {"maxSpeculativeTokens": K},
                "dtype": "float32",
                "compile": False,
                "sampling": {"maxPromptTokens": 256, "maxTokensLimit": 256, "maxConcurrency": 4},
            },
        }
    )
    uris = {"target": str(smollm2), "draft": str(draft)}
    child, url = start_vllm_server(serve, uris, tmp / "cache", tmp / "log.txt", vllm_process_env, "cpu", timeout=800)
    yield url
    child.stop(15)


@pytest.fixture(scope="module")
def client(vllm_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{vllm_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def target(smollm2: Path):
    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32), AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def served_tokenizer(target):
    return target[1]


def speculated_tokens(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    found = re.findall(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    return sum(float(value) for value in found)


def test_greedy_speculation_gives_the_targets_own_output(client: openai.OpenAI, vllm_url: str, target) -> None:
    """Draft-model speculation in vLLM's server: the greedy text is the target's alone (transformers)."""
    model, tokenizer = target
    before = speculated_tokens(vllm_url)
    for prompt in PROMPTS:
        served = client.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        assert served.choices[0].text == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), prompt
    assert speculated_tokens(vllm_url) > before  # the draft proposed tokens: speculation ran


def test_dashboard_queries_only_what_vllm_exports(vllm_url: str) -> None:
    """Every `vllm:` series the chart's dashboard (and so its alerts) queries is on vLLM's real `/metrics`:
    its own names for `engine: vllm`, and the inference gateway's, which our engine exports too."""
    exported = exported_metrics(httpx.get(f"{vllm_url}/metrics", timeout=10).text)
    wanted = {n for q in dashboard_queries() for n in queried_metrics(q) if n.startswith("vllm:")}
    assert wanted and wanted <= exported, sorted(wanted - exported)

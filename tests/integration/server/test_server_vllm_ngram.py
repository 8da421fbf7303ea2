"""SpecServe `engine: vllm` with prompt lookup for real: vLLM's OpenAI server on CPU (`make vllm-venv`)
with `vllm.speculativeMethod: ngram`, its match lengths from `promptLookup`, no draft model. Greedy text
equals the target's alone (transformers), and vLLM's own counters show that it proposed tokens.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from metaspec.api import SpecServe
from metaspec.local.vllm import start_vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

#: Asked to copy a sentence, SmolLM2 repeats n-grams of its prompt: lookup has something to propose.
PROMPT = "Repeat this sentence exactly: the quick brown fox jumps over the lazy dog near the river bank."


@pytest.fixture(scope="module")
def vllm_url(smollm2: Path, vllm_process_env: dict[str, str], tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("vllm-ngram")
    serve = SpecServe.model_validate(
        {
            "metadata": {"name": "vllm-ngram", "uid": "u"},
            "spec": {
                "engine": "vllm",
                "target": {"uri": str(smollm2)},
                "promptLookup": {"minMatch": 1, "maxMatch": 3},
                "vllm": {"speculativeMethod": "ngram"},
                "routing": {"maxSpeculativeTokens": 3},
                "dtype": "float32",
                "compile": False,
                "sampling": {"maxPromptTokens": 128, "maxTokens": 16, "maxTokensLimit": 128, "maxConcurrency": 2},
            },
        }
    )
    child, url = start_vllm_server(
        serve, {"target": str(smollm2)}, tmp / "cache", tmp / "log.txt", vllm_process_env, "cpu", timeout=800
    )
    yield url
    child.stop(15)


def test_vllm_prompt_lookup_keeps_the_targets_greedy_output(vllm_url: str, smollm2: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    messages = [{"role": "user", "content": PROMPT}]
    body = {"model": "vllm-ngram", "messages": messages, "max_tokens": 24, "temperature": 0}
    served = httpx.post(f"{vllm_url}/v1/chat/completions", json=body, timeout=120).json()
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    expected = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert served["choices"][0]["message"]["content"] == expected
    metrics = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    proposed = re.findall(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    assert sum(float(v) for v in proposed) > 0  # prompt lookup proposed tokens: speculation ran

"""SpecServe `engine: vllm` with an EAGLE-3 draft for real: vLLM's OpenAI server on CPU (`make vllm-venv`)
loads the folder our trainer saves (`vllm.speculativeMethod: eagle3`), here a fresh draft over
SmolLM2-135M-Instruct whose head is pruned to the 2048 most frequent tokens of the built-in prompts, so
vLLM maps draft ids through a `d2t` of non-zero offsets. A draft with the whole vocabulary (no `d2t`
saved, as vLLM's loader wants it) is covered by the unit tests of the folder format.
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
from metaspec.artifacts import upload_dir
from metaspec.builtin import records
from metaspec.drafts import Eagle3Draft, draft_vocabulary, save_eagle3
from metaspec.local.vllm import start_vllm_server

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):"]
VOCABULARY = 2048


@pytest.fixture(scope="module")
def target(smollm2: Path):
    return AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32), AutoTokenizer.from_pretrained(smollm2)


@pytest.fixture(scope="module")
def vllm_url(smollm2: Path, target, vllm_process_env: dict[str, str], tmp_path_factory) -> Iterator[str]:
    model, tokenizer = target
    tmp = tmp_path_factory.mktemp("vllm-eagle3")
    counts = torch.zeros(model.config.vocab_size, dtype=torch.long)
    for record in records("prompts"):
        counts += torch.bincount(torch.tensor(tokenizer(record.input)["input_ids"]), minlength=counts.numel())
    ids = draft_vocabulary(counts, VOCABULARY, tokenizer.all_special_ids)
    draft = Eagle3Draft.init_from_target(model, ids)
    assert draft.d2t.any()  # offsets, not the identity: vLLM has to map them
    save_eagle3(draft, tmp / "draft", tokenizer=tokenizer)
    upload_dir(tmp / "draft", tmp / "draft", metadata={})
    serve = SpecServe.model_validate(
        {
            "metadata": {"name": "vllm-eagle3", "uid": "u"},
            "spec": {
                "engine": "vllm",
                "target": {"uri": str(smollm2)},
                "draft": {"uri": str(tmp / "draft")},
                "vllm": {"speculativeMethod": "eagle3"},
                "routing": {"maxSpeculativeTokens": 3},
                "dtype": "float32",
                "compile": False,
                "sampling": {"maxPromptTokens": 128, "maxTokens": 16, "maxTokensLimit": 128, "maxConcurrency": 2},
            },
        }
    )
    uris = {"target": str(smollm2), "draft": str(tmp / "draft")}
    child, url = start_vllm_server(serve, uris, tmp / "cache", tmp / "log.txt", vllm_process_env, "cpu", timeout=800)
    yield url
    child.stop(15)


def test_vllm_serves_our_eagle3_folder_exactly(vllm_url: str, target) -> None:
    """vLLM loads the folder (config, fused features' layers, pruned head, `d2t`), speculates with it, and
    its greedy text is the target's alone (transformers)."""
    model, tokenizer = target
    for prompt in PROMPTS:
        body = {"model": "vllm-eagle3", "prompt": prompt, "max_tokens": 16, "temperature": 0}
        served = httpx.post(f"{vllm_url}/v1/completions", json=body, timeout=120).json()
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, do_sample=False)
        assert served["choices"][0]["text"] == tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    metrics = httpx.get(f"{vllm_url}/metrics", timeout=10).text
    proposed = re.findall(r"^vllm:spec_decode_num_draft_tokens_total\{[^}]*\} ([0-9.e+]+)$", metrics, re.MULTILINE)
    assert sum(float(v) for v in proposed) > 0  # the EAGLE-3 draft proposed tokens: speculation ran

"""The vLLM engine for real, on vLLM's CPU build (`make vllm-venv`), with SmolLM2-135M-Instruct.

`metaspec generate` runs in the vLLM environment, as in the generator image; `vllm_worker.py` drives
it there with one engine start for the whole module. A shard of all 200 built-in prompts (a real
job's size) with the default seeded sampling, and a resumed one, then the engine's finish reasons, stops and greedy outputs
against the transformers engine's.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from metaspec.api import TeacherGeneration
from metaspec.api.generation import Sampling
from metaspec.artifacts import Uri
from metaspec.datasets import read_records
from metaspec.generator import Prompt, prompt_seed, vllm_sampling_kwargs
from metaspec.generator.engines.transformers import TransformersEngine
from metaspec.generator.sharding import shard_file
from metaspec.local.processes import Child
from metaspec.local.vllm import vllm_python
from metaspec.prompts import chat_prompt_ids
from metaspec.records import Record, dump_jsonl

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

# Many scheduling steps of prompt tokens: seeded sampling across them once crashed vLLM on CPU. The module
# takes about 77 s on 2 cores (45 s with 48 prompts).
PROMPTS = 200
RESUMED = 190  # records the resumed run finds in its partial shard
MAX_TOKENS = 8
CHECKED = 8  # prompts of the engine-level checks
WORKER_TIMEOUT = 840  # seconds; the worker takes about 2 minutes on an idle 2-core machine
SAMPLING = {"maxTokens": MAX_TOKENS, "seed": 7}  # otherwise the default: temperature 0.3, penalty 1.2
CHECKS = [
    {"temperature": 0.0, "max_tokens": 2, "stop": []},
    {"temperature": 0.0, "max_tokens": 24, "stop": [], "repetition_penalty": 1.0},
    {"temperature": 0.0, "max_tokens": 24, "stop": ["."], "repetition_penalty": 1.0},
]


@pytest.fixture(scope="module")
def inputs() -> list[Record]:
    """Built-in prompts of every domain."""
    return read_records("builtin://prompts", require_output=False, max_examples=PROMPTS)[0]


def config(tmp: Path, name: str, smollm2: Path, dataset: Path) -> Path:
    body = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "TeacherGeneration",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": str(smollm2)},
            "dataset": {"uri": str(dataset)},
            "output": {"uri": str(tmp / name)},
            "engine": "vllm",
            "resources": {"gpus": 0},
            "maxModelLen": 512,  # gpuMemoryUtilization stays at its 0.9: the CPU build must not use it
            "sampling": SAMPLING,
            "quality": {"minNaturalStopRate": 0},  # short outputs: most stop at maxTokens
        },
    }
    TeacherGeneration.model_validate(body)
    (tmp / f"{name}.json").write_text(json.dumps(body))
    return tmp / f"{name}.json"


def resumable_partial(tmp: Path, smollm2: Path, inputs: list[Record]) -> tuple[Path, dict[str, str]]:
    """What an interrupted attempt leaves in its work folder: the first RESUMED records, with the
    generation parameters the vLLM engine reports (kept), and two made with other parameters (dropped
    and generated again). Their outputs are marked, so keeping them is visible."""
    params = {
        "engine": "vllm",
        **vllm_sampling_kwargs(Sampling(max_tokens=MAX_TOKENS, seed=7), AutoTokenizer.from_pretrained(smollm2)),
        "per_prompt_seed": "sha256(f'{seed}:{id}')",
        "dtype": "float32",
        "tensor_parallel_size": 1,
    }
    output = str(tmp / "resumed")
    folder = tmp / "work-resumed" / hashlib.sha256(str(Uri.of(output)).encode()).hexdigest()[:16]
    folder.mkdir(parents=True)
    bodies, kept = [], {}
    for n, record in enumerate(inputs[:RESUMED]):
        other = n < 2
        meta = {
            "teacher_model": str(smollm2),
            "generation_params": {**params, "dtype": "bfloat16"} if other else params,
            "num_tokens_generated": 1,
            "finish_reason": "stop",
            "generation_time": 0.1,
        }
        fields = {"id": record.id, "input": record.input, "domain": record.domain, "difficulty": record.difficulty}
        bodies.append({**fields, "output": f"resumed {record.id}", "metadata": meta})
        if not other:
            kept[record.id] = f"resumed {record.id}"
    (folder / shard_file(0, 1)).write_text("".join(json.dumps(b) + "\n" for b in bodies))
    return tmp / "work-resumed", kept


@pytest.fixture(scope="module")
def vllm_run(smollm2: Path, inputs: list[Record], vllm_process_env, tmp_path_factory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("vllm-gen")
    dataset = tmp / "prompts.jsonl"
    dataset.write_text("".join(dump_jsonl(inputs)))
    work, kept = resumable_partial(tmp, smollm2, inputs)
    common = ["--shard-index", "0", "--num-shards", "1", "--cache-dir", str(tmp / "cache"), "--no-progress"]
    request = {
        "runs": [
            ["--config", str(config(tmp, "fresh", smollm2, dataset)), "--work-dir", str(tmp / "work"), *common],
            ["--config", str(config(tmp, "resumed", smollm2, dataset)), "--work-dir", str(work), *common],
        ],
        "checks": {"records": [{"id": r.id, "input": r.input} for r in inputs[:CHECKED]], "sampling": CHECKS},
    }
    (tmp / "request.json").write_text(json.dumps(request))
    worker = Path(__file__).with_name("vllm_worker.py")
    argv = [str(vllm_python()), str(worker), str(tmp / "request.json"), str(tmp / "result.json")]
    worker = Child(argv, tmp / "worker.log", vllm_process_env)  # its own process group, vLLM's processes too
    try:
        deadline = time.monotonic() + WORKER_TIMEOUT
        while worker.poll() is None and time.monotonic() < deadline:
            time.sleep(1)
    finally:
        code = worker.stop(10)
    assert code == 0, f"exit {code}:\n{worker.tail(40)}"
    result = json.loads((tmp / "result.json").read_text())
    result["records"] = {name: read_records(str(tmp / name), require_output=True)[0] for name in ("fresh", "resumed")}
    result["kept"] = kept
    return result


def test_a_job_sized_shard_with_seeded_sampling(vllm_run, inputs) -> None:
    run = vllm_run["runs"][0]
    assert run["code"] == 0 and run["summary"]["complete"], run["summary"]
    assert run["summary"]["examplesGenerated"] == PROMPTS
    records = vllm_run["records"]["fresh"]
    assert [r.id for r in records] == [r.id for r in inputs]
    assert all(r.output for r in records)
    # the CPU settings reached vLLM: float32 as in the transformers engine, no chunked prefill (seeded
    # sampling over several scheduling steps of prompts), the KV cache not sized by gpuMemoryUtilization
    kwargs = vllm_run["kwargs"]
    assert kwargs["dtype"] == "float32" and kwargs["enable_chunked_prefill"] is False
    assert kwargs["max_model_len"] == 512 and "gpu_memory_utilization" not in kwargs


def test_resume_keeps_matching_records_and_regenerates_the_same_text(vllm_run) -> None:
    """Per-prompt seeds make an output independent of the batch it was generated in: the resumed run
    generates the prompts it misses in other batches than the fresh run, and must give the same text."""
    run = vllm_run["runs"][1]
    assert run["code"] == 0 and run["summary"]["examplesGenerated"] == PROMPTS - len(vllm_run["kept"])
    fresh = {r.id: r.output for r in vllm_run["records"]["fresh"]}
    resumed = {r.id: r.output for r in vllm_run["records"]["resumed"]}
    assert resumed.keys() == fresh.keys()
    for key, text in resumed.items():
        assert text == vllm_run["kept"].get(key, fresh[key]), key


def test_finish_reasons_and_stops(vllm_run) -> None:
    short, full, cut = vllm_run["checks"]
    assert {tuple(c[1:]) for c in short.values()} == {(2, "length")}
    assert any("." in text for text, _, _ in full.values())
    for key, (text, tokens, reason) in full.items():
        assert reason == ("length" if tokens == 24 else "stop"), (key, text)
        if "." in text:
            assert cut[key][0] == text[: text.index(".")] and cut[key][2] == "stop", key


def test_greedy_outputs_equal_the_transformers_engines(vllm_run, smollm2, inputs) -> None:
    """Both engines in float32 on the CPU: the same greedy text, token for token."""
    sampling = Sampling(temperature=0.0, max_tokens=24, stop=[], repetition_penalty=1.0)
    ours = TransformersEngine.load(smollm2, "smollm2", sampling, 16, torch.device("cpu"), torch.float32)
    batch = [Prompt(r.id, chat_prompt_ids(ours.tokenizer, r.input), prompt_seed(0, r.id)) for r in inputs[:CHECKED]]
    expected = {c.id: c.text for b in ours.plan(batch) for c in ours.generate(b)}
    vllm_greedy = {key: text for key, (text, _, _) in vllm_run["checks"][1].items()}
    differing = [key for key in expected if expected[key] != vllm_greedy[key]]
    assert not differing, {key: (expected[key], vllm_greedy[key]) for key in differing}

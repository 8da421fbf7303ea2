"""The lora-sft recipe: plain LoRA supervised fine-tuning, the baseline ANIL-MAML is compared with."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from trainer_helpers import tiny_anil_spec, training_run, write_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from metaspec.artifacts import read_manifest
from metaspec.trainer.data import collate
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.recipes.common import BatchStream, Context, load_datasets
from metaspec.trainer.run import train


def lora_sft_spec(model, tmp_path, out, per_domain: int, **optimization) -> dict:
    """A `lora-sft` TrainingRun spec on the tiny model, batch 4, with `optimization` fields on top."""
    spec = tiny_anil_spec(
        model,
        write_dataset(tmp_path / "train.jsonl", per_domain),
        write_dataset(tmp_path / "eval.jsonl", 1, tag="eval", offset=100),
        str(out),
        batchSize=4,
        **optimization,
    )
    spec.update(method="lora-sft")
    del spec["anil"]
    return spec


def test_lora_sft_trains_merges_and_evaluates(tiny_llama, tmp_path):
    out = tmp_path / "out"
    run = training_run(lora_sft_spec(tiny_llama, tmp_path, out, 4))
    summary = train(run, work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())

    assert summary["artifacts"]["model"] == f"file://{out}/merged"
    assert summary["artifacts"]["adapter"] == f"file://{out}/adapter"
    assert summary["artifacts"]["baseModelDigest"] == read_manifest(tiny_llama).digest
    metrics = summary["metrics"]
    assert metrics["perplexityLora"] < metrics["perplexityBase"]
    assert abs(metrics["mergeDegradation"]) < 1e-3
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"], [r["loss"] for r in history]
    files = read_manifest(out).files
    assert {"adapter/adapter_model.safetensors", "merged/model.safetensors"} <= files.keys()
    assert "/checkpoints/step-" in summary["artifacts"]["lastCheckpoint"]

    # The first step's loss is the base model's own next-token loss on the first batch: LoRA starts as
    # the identity (B = 0), and transformers computes the reference independently of our chunked loss.
    base = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    ctx = Context(run, torch.device("cpu"), torch.float32, tmp_path / "ref", LogReporter())
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    data = load_datasets(ctx, tokenizer)
    batch = collate(BatchStream(data.train, 4, run.spec.optimization.seed).next(), tokenizer.pad_token_id)
    with torch.no_grad():
        reference = base(**{k: batch[k] for k in ("input_ids", "attention_mask", "labels")}).loss.item()
    assert abs(history[0]["loss"] - reference) < 1e-4, (history[0]["loss"], reference)
    adapted = PeftModel.from_pretrained(base, out / "adapter")
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in adapted.named_parameters())


def test_compiled_decoder_layers_train_like_eager(tiny_llama, tmp_path, inductor_cache):
    """`optimization.compile` runs every decoder layer and each chunk's loss through torch.compile
    (inductor, for real: on the CPU it builds C++ kernels) and takes the same steps as the eager run."""
    from torch._dynamo.utils import counters

    histories = []
    for compiled in (False, True):
        out = tmp_path / f"out-{compiled}"
        spec = lora_sft_spec(tiny_llama, tmp_path, out, 2, compile=compiled, maxSteps=3)
        counters.clear()
        train(training_run(spec), work_dir=tmp_path / f"work-{compiled}", device="cpu", reporter=LogReporter())
        assert (counters["stats"]["unique_graphs"] > 0) == compiled
        histories.append([json.loads(line)["loss"] for line in (out / "history.jsonl").read_text().splitlines()])
    eager, compiled_run = histories
    assert len(eager) == 3 and max(eager) - min(eager) > 2e-2  # the steps move the loss...
    assert compiled_run == pytest.approx(eager, abs=5e-3)  # ...and compiled kernels only reorder sums

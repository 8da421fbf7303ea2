"""Checkpoints and resume on the tiny random Llama: a run stopped by SIGTERM after a checkpoint and
restarted ends exactly where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_helpers import tiny_anil_spec, training_run, write_dataset

from metaspec.runtime import PermanentError, TransientError
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.run import train


class SigtermAt(LogReporter):
    """Sends this process SIGTERM during step `step`, as the kubelet does to a preempted pod."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_step(self, record):
        super().on_step(record)
        if record["step"] == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("data")
    return write_dataset(root / "train.jsonl", 8), write_dataset(root / "eval.jsonl", 1, tag="eval", offset=100)


@pytest.fixture(scope="module")
def uninterrupted(tiny_llama, data, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    run = training_run(tiny_anil_spec(tiny_llama, *data, str(out)))
    return train(run, work_dir=out.parent / "work", device="cpu", reporter=LogReporter()), out


def history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tiny_llama, data, uninterrupted, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    expected, expected_out = uninterrupted
    out = tmp_path / "out"
    run = training_run(tiny_anil_spec(tiny_llama, *data, str(out)))
    with pytest.raises(TransientError, match="SIGTERM"):
        train(run, work_dir=tmp_path / "work", device="cpu", reporter=SigtermAt(3))
    assert (out / "checkpoints" / "step-3" / "_manifest.json").is_file()
    assert not (out / "_manifest.json").exists()
    # A newer checkpoint that was being uploaded when the pod died: files, no manifest.
    half = out / "checkpoints" / "step-5"
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"partial")

    resumed = train(run, work_dir=tmp_path / "work2", device="cpu", reporter=LogReporter())

    assert "skipping checkpoint" in caplog.text and "step-5" in caplog.text
    assert "resumed from" in caplog.text and "step-3" in caplog.text
    assert [r["step"] for r in history(out)] == [1, 2, 3, 4, 5, 6]
    for got, want in zip(history(out), history(expected_out), strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-6), got["step"]
        assert ("eval_loss" in got) == ("eval_loss" in want)
        assert got.get("eval_loss", 0) == pytest.approx(want.get("eval_loss", 0), rel=1e-6)
    for key in ("trainLoss", "evalLoss", "perplexityBase", "perplexityLora", "perplexityMerged"):
        assert resumed["metrics"][key] == pytest.approx(expected["metrics"][key], rel=1e-6), key
    adapter, expected_adapter = (load_file(o / "adapter" / "adapter_model.safetensors") for o in (out, expected_out))
    for name, tensor in adapter.items():
        torch.testing.assert_close(tensor, expected_adapter[name], rtol=1e-5, atol=1e-7)


def test_corrupted_checkpoint_is_skipped(tiny_llama, data, tmp_path, caplog):
    """A checkpoint whose file no longer matches its manifest is not loaded; the older one is."""
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    run = training_run(tiny_anil_spec(tiny_llama, *data, str(out), maxSteps=4, evalSteps=4))
    with pytest.raises(TransientError):
        train(run, work_dir=tmp_path / "work", device="cpu", reporter=SigtermAt(3))
    (out / "checkpoints" / "step-3" / "optimizer.pt").write_bytes(b"bit rot")
    summary = train(run, work_dir=tmp_path / "work2", device="cpu", reporter=LogReporter())
    assert "skipping checkpoint" in caplog.text and "does not match its manifest" in caplog.text
    assert "step-2" in caplog.text
    assert summary["progress"]["step"] == 4


def test_outputs_and_no_fast_weights(uninterrupted):
    summary, out = uninterrupted
    manifest = json.loads((out / "_manifest.json").read_text())
    assert {"metrics.json", "history.jsonl", "adapter/adapter_model.safetensors", "merged/config.json"} <= set(
        manifest["files"]
    )
    for sub in ("adapter", "merged"):
        assert (out / sub / "_manifest.json").is_file()
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter), sorted(adapter)[:5]
    merged_keys = set(load_file(out / "merged" / "model.safetensors"))
    assert not [k for k in merged_keys if "lora" in k or "fast" in k or "delta" in k]
    assert summary["training"]["bestStep"] in (2, 4, 6)


def test_a_complete_output_is_not_trained_again(tiny_llama, data, uninterrupted, tmp_path):
    expected, out = uninterrupted
    run = training_run(tiny_anil_spec(tiny_llama, *data, str(out)))
    again = train(run, work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())
    assert again["metrics"] == expected["metrics"]
    assert again["artifacts"]["manifestDigest"] == expected["artifacts"]["manifestDigest"]


def test_a_changed_spec_is_refused_an_existing_output(tiny_llama, data, uninterrupted, tmp_path):
    """The output's manifest records the spec digest and input digests that produced it; another spec
    into the same prefix is refused naming both, instead of being handed the old artifacts."""
    _, out = uninterrupted
    recorded = json.loads((out / "_manifest.json").read_text())["metadata"]["producedBy"]
    assert set(recorded["inputs"]) == {"spec.baseModel.uri", "spec.dataset.uri", "spec.evaluation.uri"}
    changed = training_run(tiny_anil_spec(tiny_llama, *data, str(out), outerLr=1e-2))
    with pytest.raises(PermanentError, match=rf"config digest {recorded['configDigest'][:12]} ≠ [0-9a-f]{{12}}"):
        train(changed, work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())
    # Scheduling and storage are not what is produced: the same output is still reused.
    moved = tiny_anil_spec(tiny_llama, *data, str(out))
    moved["resources"] = {"gpus": 0, "memory": "1Gi"}
    train(training_run(moved), work_dir=tmp_path / "work", device="cpu", reporter=LogReporter())

"""`metaspec train --config` as the container runs it: a subprocess, the real S3 server, the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from trainer_helpers import tiny_anil_spec, training_run, write_dataset

from metaspec.artifacts import is_complete, list_files, read_manifest, upload_file
from metaspec.runtime import EXIT_PERMANENT


def run_cli(config: dict, tmp_path: Path) -> tuple[subprocess.CompletedProcess, dict]:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    termination = tmp_path / "termination-log"
    env = {**__import__("os").environ, "METASPEC_TERMINATION_MESSAGE_PATH": str(termination)}
    command = [sys.executable, "-m", "metaspec.cli", "train", "--config", str(config_path)]
    command += ["--work-dir", str(tmp_path / "work"), "--device", "cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads(termination.read_text()) if termination.is_file() else {}
    return result, summary


def test_train_writes_artifacts_to_s3(tiny_llama, s3_prefix, tmp_path):
    train_file = write_dataset(tmp_path / "train.jsonl", 6)
    upload_file(train_file, f"{s3_prefix}/data/train.jsonl")
    eval_file = write_dataset(tmp_path / "eval.jsonl", 1, tag="eval", offset=100)
    output = f"{s3_prefix}/run"
    spec = tiny_anil_spec(tiny_llama, f"{s3_prefix}/data/train.jsonl", eval_file, output, maxSteps=3, checkpointSteps=2)
    config = training_run(spec).model_dump(by_alias=True, exclude_none=True, mode="json")

    result, summary = run_cli(config, tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["phase"] == "Succeeded"
    assert summary["artifacts"]["model"] == f"{output}/merged"
    assert summary["artifacts"]["adapter"] == f"{output}/adapter"
    assert summary["artifacts"]["lastCheckpoint"] == f"{output}/checkpoints/step-2"
    assert summary["progress"] == {"step": 3, "totalSteps": 3, "epoch": summary["progress"]["epoch"]}
    assert {"trainLoss", "evalLoss", "perplexityBase", "perplexityLora", "perplexityMerged"} <= summary[
        "metrics"
    ].keys()
    manifest = read_manifest(output)
    assert manifest.digest == summary["artifacts"]["manifestDigest"]
    assert {"metrics.json", "history.jsonl", "merged/model.safetensors", "adapter/adapter_config.json"} <= set(
        manifest.files
    )
    for sub in ("merged", "adapter", "checkpoints/step-2"):
        assert is_complete(f"{output}/{sub}"), sub
    checkpoint_files = {rel for rel, _ in list_files(f"{output}/checkpoints/step-2")}
    assert {"trainable.safetensors", "optimizer.pt", "scheduler.pt", "rng.pt", "state.json"} <= checkpoint_files
    log_lines = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    steps = [line for line in log_lines if "tokens_per_second" in line]
    assert [line["step"] for line in steps] == [1, 2, 3]


def test_bad_dataset_line_is_a_permanent_error(tiny_llama, tmp_path):
    train_file = write_dataset(tmp_path / "train.jsonl", 6)
    lines = train_file.read_text().splitlines(keepends=True)
    lines[2] = json.dumps({"id": "broken", "input": "x", "output": "y", "difficulty": "extreme"}) + "\n"
    train_file.write_text("".join(lines))
    spec = tiny_anil_spec(tiny_llama, train_file, train_file, str(tmp_path / "out"))
    config = training_run(spec).model_dump(by_alias=True, exclude_none=True, mode="json")

    result, summary = run_cli(config, tmp_path)

    assert result.returncode == EXIT_PERMANENT, result.stderr[-3000:]
    assert summary["phase"] == "Failed" and summary["errorKind"] == "permanent"
    assert "line 3" in summary["message"] and "difficulty" in summary["message"]
    assert not (tmp_path / "out" / "_manifest.json").exists()

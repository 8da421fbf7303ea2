"""Checkpoints under `<output>/checkpoints/step-N/`, each a complete artifact with its own manifest.

A checkpoint holds everything a restarted pod needs to continue as if it had never stopped:

    trainable.safetensors   the trained parameters (LoRA weights, or the whole draft model)
    best.safetensors        the best-by-evaluation parameters, when they are not the current ones
    optimizer.pt            AdamW state          scheduler.pt   learning-rate schedule state
    rng.pt                  torch CPU/CUDA generator states
    state.json              step, best evaluation, early-stopping count, sampler position, python RNG
    history.jsonl           per-step metrics so far
    config.json             the resolved TrainingRun it was trained with

The manifest is uploaded last, so a pod killed mid-upload leaves a prefix that is skipped on resume.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from metaspec.artifacts import ChecksumMismatch, IncompleteArtifact, NotFound, Uri, list_files, materialize, upload_dir

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)/")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes, by name, as contiguous CPU tensors."""
    return {n: p.detach().to("cpu").contiguous() for n, p in model.named_parameters() if p.requires_grad}


def save_trainable(model: nn.Module, path: Path) -> None:
    save_file(trainable_state(model), str(path))


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy saved parameters into `model`; the names must match exactly (same recipe and config)."""
    saved = load_file(str(path))
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if saved.keys() != params.keys():
        extra, missing = sorted(saved.keys() - params.keys()), sorted(params.keys() - saved.keys())
        raise ValueError(f"{path} does not fit this model (unexpected {extra[:3]}, missing {missing[:3]})")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def set_python_rng_state(state: list[Any]) -> None:
    random.setstate((state[0], tuple(state[1]), state[2]))


@dataclass
class Checkpoint:
    """A verified local copy of a checkpoint."""

    step: int
    uri: Uri
    path: Path

    @property
    def state(self) -> dict[str, Any]:
        return json.loads((self.path / "state.json").read_text())

    @property
    def history(self) -> list[dict[str, Any]]:
        text = (self.path / "history.jsonl").read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def load_torch(self, name: str) -> Any:
        # weights_only: a checkpoint is data; it must not be able to run code when loaded
        return torch.load(self.path / name, map_location="cpu", weights_only=True)


def write_checkpoint(
    output: Uri,
    staging: Path,
    step: int,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    config: dict[str, Any],
    best: Path | None,
) -> Uri:
    """Write step `step`'s checkpoint locally, upload it (manifest last), and drop the local copy."""
    local = staging / f"step-{step}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    save_trainable(model, local / "trainable.safetensors")
    if best is not None:
        shutil.copyfile(best, local / "best.safetensors")
    torch.save(optimizer.state_dict(), local / "optimizer.pt")
    torch.save(scheduler.state_dict(), local / "scheduler.pt")
    torch.save(rng_state(), local / "rng.pt")
    (local / "state.json").write_text(json.dumps({**state, "python_rng": python_rng_state()}))
    (local / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    (local / "config.json").write_text(json.dumps(config, indent=1))
    uri = checkpoint_uri(output, step)
    upload_dir(local, uri, metadata={"step": step})
    shutil.rmtree(local)
    return uri


def checkpoint_uri(output: Uri, step: int) -> Uri:
    return output.join(CHECKPOINTS, f"step-{step}")


def latest_checkpoint(output: Uri, cache_dir: Path) -> Checkpoint | None:
    """The newest complete, verified checkpoint; incomplete or corrupted ones are skipped with a warning."""
    try:
        listing = list_files(output.join(CHECKPOINTS))
    except NotFound:
        return None
    steps = sorted({int(m.group(1)) for rel, _ in listing if (m := _STEP_DIR.match(rel))}, reverse=True)
    for step in steps:
        uri = checkpoint_uri(output, step)
        try:
            path, _ = materialize(uri, cache_dir / CHECKPOINTS)
        except (IncompleteArtifact, ChecksumMismatch, NotFound) as e:
            log.warning("skipping checkpoint %s: %s", uri, e)
            continue
        return Checkpoint(step, uri, path)
    return None

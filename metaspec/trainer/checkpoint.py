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

Parameters and optimizer state are saved as full tensors whatever the strategy: under FSDP the shards
are gathered (every rank calls `trainable_state` and `optimizer_state`) and loading shards them again,
so a checkpoint resumes with `ddp` or `fsdp` on any number of processes.
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
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from metaspec.artifacts import ChecksumMismatch, IncompleteArtifact, NotFound, Uri, list_files, materialize, upload_dir

from .distributed import is_sharded

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)/")


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters training changes, by name, as contiguous CPU tensors. Sharded (FSDP), every rank
    must call: rank 0 gets the gathered tensors, the others an empty dict."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if is_sharded(model):
        gathered = get_model_state_dict(model, options=_FULL)  # also a frozen weight tied to a trained one
        return {n: gathered[n].contiguous() for n in names if n in gathered}
    params = dict(model.named_parameters())
    return {n: params[n].detach().to("cpu").contiguous() for n in names}


def save_trainable(model: nn.Module, path: Path) -> None:
    """`trainable_state` to `path` (sharded: an empty file on ranks other than 0)."""
    save_file(trainable_state(model), str(path))


def load_trainable(model: nn.Module, path: Path) -> None:
    """Copy the parameters saved at `path` into `model` (`set_trainable`)."""
    set_trainable(model, load_file(str(path)), str(path))


def set_trainable(model: nn.Module, saved: dict[str, torch.Tensor], source: str) -> None:
    """Copy `saved` (a `trainable_state`, from `source`) into `model`; the names must match exactly (same
    recipe and config). Sharded, every rank must call: rank 0's tensors are broadcast and each rank
    keeps its shard."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    sharded = is_sharded(model)
    if (saved or not sharded) and saved.keys() != params.keys():
        extra, missing = sorted(saved.keys() - params.keys()), sorted(params.keys() - saved.keys())
        raise ValueError(f"{source} does not fit this model (unexpected {extra[:3]}, missing {missing[:3]})")
    if sharded:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, saved, options=options)
        return
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])


def optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` with sharded (FSDP) moments gathered into full tensors: the same layout
    as an unsharded run's. Sharded, every rank must call (each gets the full state)."""
    state = optimizer.state_dict()
    state["state"] = {
        i: {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in s.items()}
        for i, s in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a full optimizer state; for sharded parameters, each rank keeps its shard of the moments."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for i, s in state["state"].items():
        param = params[int(i)]
        if isinstance(param, DTensor):
            for k, v in s.items():
                if v.shape == param.shape:  # the moments; `step` is a scalar
                    s[k] = distribute_tensor(
                        v.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                    )
    optimizer.load_state_dict(state)


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
    trainable: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    scheduler: Any,
    state: dict[str, Any],
    history: list[dict[str, Any]],
    config: dict[str, Any],
    best: Path | None,
) -> Uri:
    """Write step `step`'s checkpoint locally, upload it (manifest last), and drop the local copy.
    `trainable` and `optimizer` are full states (`trainable_state`, `optimizer_state`)."""
    local = staging / f"step-{step}"
    shutil.rmtree(local, ignore_errors=True)
    local.mkdir(parents=True)
    save_file(trainable, str(local / "trainable.safetensors"))
    if best is not None:
        shutil.copyfile(best, local / "best.safetensors")
    torch.save(optimizer, local / "optimizer.pt")
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

"""Model artifacts for tests and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from metaspec.artifacts import upload_dir
from metaspec.trainer.models import derive_draft


def cut_draft(target_dir: Path, dest: Path, num_layers: int) -> Path:
    """The trainer's draft derivation (`metaspec.trainer.models.derive_draft`) saved as an artifact.

    Untrained, the draft agrees with the target on few tokens; it stands in for a trained draft in
    tests and benchmarks. Saved as safetensors with the target's tokenizer and a manifest.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = AutoModelForCausalLM.from_pretrained(target_dir, dtype=torch.float32, use_safetensors=True)
    derive_draft(target, num_layers).save_pretrained(dest, safe_serialization=True)
    AutoTokenizer.from_pretrained(target_dir).save_pretrained(dest)
    upload_dir(dest, dest, metadata={"derived_from": str(target_dir), "num_layers": num_layers})
    return dest

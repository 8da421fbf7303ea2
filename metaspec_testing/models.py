"""Model artifacts for tests and benchmarks."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from metaspec.artifacts import upload_dir
from metaspec.trainer.models import derive_draft


def random_llama(
    seed: int, vocab: int, layers: int, hidden: int = 16, heads: int = 2, positions: int = 64, **config: Any
) -> Any:
    """A randomly initialised Llama (`seed`), small enough for unit tests: untied head, two query heads
    per key/value head, an MLP twice the hidden size; `config`: further `LlamaConfig` fields."""
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads // 2,
        max_position_embeddings=positions,
        tie_word_embeddings=False,
        **config,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(llama)


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


def hub_repo(cache: Path, repo: str, refs: dict[str, tuple[str, Path]]) -> Path:
    """`repo` (`org/name`) in the layout huggingface_hub's cache uses, under `cache/hf` (where the
    components keep Hub snapshots): each ref (branch or tag) names a commit whose snapshot is a copy
    of a model folder. With the Hub client offline, `snapshot_download` resolves the refs from it."""
    root = cache / "hf" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    for ref, (commit, source) in refs.items():
        shutil.copytree(source, root / "snapshots" / commit, ignore=shutil.ignore_patterns("_manifest.json"))
        (root / "refs" / ref).write_text(commit)
    return cache

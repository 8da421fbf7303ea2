"""SmolLM2-135M-Instruct as target and a draft cut from it, loaded once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from metaspec_testing.models import cut_draft

DRAFT_LAYERS = 4


@pytest.fixture(scope="session")
def derived_draft(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2's embeddings, first 4 layers, final norm and head: a safetensors artifact with manifest."""
    return cut_draft(smollm2, tmp_path_factory.mktemp("draft") / "smollm2-4l", DRAFT_LAYERS)


@pytest.fixture(scope="session")
def smollm2_models(smollm2: Path, derived_draft: Path):
    """(target, draft, tokenizer) in float32 on CPU."""
    load = lambda path: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()  # noqa: E731
    return load(smollm2), load(derived_draft), AutoTokenizer.from_pretrained(smollm2)

"""Merging a LoRA adapter into its base model, and saving models as self-contained artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def save_model(model: nn.Module, tokenizer: Any, dest: Path) -> None:
    """safetensors weights, config, generation config and tokenizer: a model any stage can load."""
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def save_adapter(peft_model: nn.Module, tokenizer: Any, dest: Path) -> None:
    """The peft adapter (adapter_config.json + adapter_model.safetensors) and the tokenizer it was trained with."""
    peft_model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)


def merge_lora(peft_model: nn.Module) -> nn.Module:
    """W ← W + (α/r)·B·A in every adapted layer, in the base's own dtype (bf16 on GPU, fp32 on CPU).

    Consumes the wrapper: the returned plain model has no LoRA modules left. Rounding the sum into
    bf16 is where merged and LoRA perplexities can part; the recipe measures both.
    """
    return peft_model.merge_and_unload(progressbar=False, safe_merge=True)


def merge_degradation(lora_perplexity: float, merged_perplexity: float) -> float:
    """(merged − LoRA) / LoRA perplexity: positive when merging made the model worse."""
    return (merged_perplexity - lora_perplexity) / lora_perplexity

"""Evaluation loss and perplexity on a held-out set, with the same chunked head as training."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .data import Example, collate
from .losses import DEFAULT_CHUNK, chunked_cross_entropy, select_targets


def body_of(model: nn.Module) -> nn.Module:
    """The transformer body of a causal LM (everything before the head): hidden states, no logits."""
    return model.base_model


@torch.no_grad()
def evaluation_loss(
    model: nn.Module,
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int = 8,
    chunk_size: int = DEFAULT_CHUNK,
) -> float:
    """Mean cross-entropy per target token of causal LM `model` (not a peft wrapper) over `examples`.

    Batches are formed in the examples' order, so the figure is the same on every call.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    head = model.get_output_embeddings()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start : start + batch_size], pad_id)
            hidden = body_of(model)(
                input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
            ).last_hidden_state  # (B, T, D)
            h, y = select_targets(hidden, batch["labels"])
            total += chunked_cross_entropy(h, y, head, chunk_size).item()
            count += y.numel()
    finally:
        model.train(was_training)
    if not count:
        raise ValueError("the evaluation set has no target tokens")
    return total / count


def perplexity(loss: float) -> float:
    return math.exp(loss)

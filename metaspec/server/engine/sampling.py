"""Logits processing shared by target and draft: repetition penalty, temperature, top-p.

Speculative sampling is exact only if the target distribution p and the draft distribution q are the
distributions actually sampled from (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling"). So both models go through exactly these functions, with the same context per position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .protocol import SamplingParams

#: Temperatures below this decode greedily, as vLLM does: dividing float32 logits by a subnormal
#: temperature overflows to inf and the softmax to NaN.
GREEDY_BELOW = 1e-5


@dataclass(frozen=True)
class Processing:
    """The logits transformations of one request."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def of(cls, params: SamplingParams) -> Processing:
        return cls(params.temperature, params.top_p, params.repetition_penalty)

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1


def seen_rows(seen: torch.Tensor, tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """Context masks for `rows` consecutive positions: row i = `seen` plus `tokens[:i]`.

    `seen` (V,) bool marks tokens already in the context; `tokens` (J,) are the proposals that extend it.
    Returns (rows, V) bool with rows ≤ J + 1.
    """
    vocab = seen.shape[0]
    added = torch.zeros(rows, vocab, dtype=torch.int32, device=seen.device)  # (R, V)
    if rows > 1:
        onehot = torch.nn.functional.one_hot(tokens[: rows - 1], vocab).to(torch.int32)  # (R-1, V)
        added[1:] = onehot.cumsum(0)
    return seen.unsqueeze(0) | (added > 0)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """Repetition penalty of CTRL (Keskar et al. 2019), as transformers applies it: logits of tokens
    already in the context are divided by the penalty when positive and multiplied when negative.
    `logits` (N, V) float, `seen` (N, V) bool."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the most likely tokens until their mass reaches
    `top_p` (at least one), renormalised. `probs` (N, V)."""
    ordered, order = probs.sort(dim=-1, descending=True)  # (N, V)
    mass_before = ordered.cumsum(-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered)
    return kept / kept.sum(-1, keepdim=True)


def processed_logits(logits: torch.Tensor, seen: torch.Tensor | None, proc: Processing) -> torch.Tensor:
    """Logits after the repetition penalty, in float32. `logits` (N, V); `seen` (N, V) or None."""
    logits = logits.float()
    if proc.penalized and seen is not None:
        logits = penalize(logits, seen, proc.repetition_penalty)
    return logits


def probabilities(logits: torch.Tensor, seen: torch.Tensor | None, proc: Processing) -> torch.Tensor:
    """The sampling distribution (N, V) for temperature > 0."""
    probs = torch.softmax(processed_logits(logits, seen, proc) / proc.temperature, dim=-1)
    return top_p_filter(probs, proc.top_p) if proc.top_p < 1 else probs


def greedy_tokens(logits: torch.Tensor, seen: torch.Tensor | None, proc: Processing) -> torch.Tensor:
    """Argmax (N,) after the repetition penalty: temperature 0 (top-p never removes the argmax)."""
    return processed_logits(logits, seen, proc).argmax(-1)


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The draft's confidence for routing: max probability of its raw softmax (temperature 1, no
    penalty, no top-p), so a threshold means the same thing for every request. `logits` (V,) -> ()."""
    return torch.softmax(logits.float(), dim=-1).max()

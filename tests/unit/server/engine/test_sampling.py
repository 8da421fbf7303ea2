"""Logits processing against transformers' own processors (an independent implementation)."""

from __future__ import annotations

import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper

from metaspec.server.engine.sampling import (
    Processing,
    greedy_tokens,
    probabilities,
    seen_rows,
)
from metaspec.server.engine.speculative import residual_distribution


def reference_probs(logits: torch.Tensor, context: torch.Tensor, proc: Processing) -> torch.Tensor:
    """transformers' pipeline: repetition penalty, temperature, top-p, softmax. `logits` (1, V)."""
    scores = RepetitionPenaltyLogitsProcessor(proc.repetition_penalty)(context[None], logits.clone())
    scores = TemperatureLogitsWarper(proc.temperature)(context[None], scores)
    if proc.top_p < 1:
        scores = TopPLogitsWarper(proc.top_p)(context[None], scores)
    return torch.softmax(scores, -1)


@pytest.mark.parametrize(
    "proc",
    [Processing(1.0), Processing(0.7, 0.9), Processing(1.3, 0.5, 1.4), Processing(0.5, 1.0, 0.8)],
)
def test_probabilities_match_transformers(proc: Processing) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1, 50, generator=gen) * 3
        context = torch.randint(0, 50, (7,), generator=gen)
        seen = torch.zeros(50, dtype=torch.bool)
        seen[context] = True
        ours = probabilities(logits, seen[None], proc)
        torch.testing.assert_close(ours, reference_probs(logits, context, proc), atol=1e-6, rtol=1e-5)


def test_greedy_applies_the_penalty() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    seen = torch.tensor([[True, False, False]])
    assert greedy_tokens(logits, seen, Processing(0.0, 1.0, 1.2)).item() == 1
    assert greedy_tokens(logits, seen, Processing(0.0)).item() == 0


def test_seen_rows_extend_the_context_one_proposal_at_a_time() -> None:
    seen = torch.tensor([True, False, False, False, False])
    rows = seen_rows(seen, torch.tensor([3, 1]), 3)
    assert rows.tolist() == [
        [True, False, False, False, False],
        [True, False, False, True, False],
        [True, True, False, True, False],
    ]


def test_residual_is_the_normalised_positive_part() -> None:
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.2, 0.6, 0.2], [0.2, 0.3, 0.5]])
    r = residual_distribution(p, q)
    torch.testing.assert_close(r[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(r[1], p[1])  # p == q: no residual mass, never sampled; stays finite


def test_subnormal_temperatures_decode_greedily() -> None:
    """Dividing logits by 5e-324 gives inf and a NaN softmax: such temperatures are greedy."""
    from metaspec.server.engine.sampling import Processing

    assert Processing(temperature=5e-324).greedy and Processing(temperature=1e-6).greedy
    assert not Processing(temperature=1e-4).greedy

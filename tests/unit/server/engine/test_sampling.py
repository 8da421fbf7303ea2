"""Logits processing against transformers' own processors (an independent implementation)."""

from __future__ import annotations

import pytest
import torch
from _pytest.monkeypatch import MonkeyPatch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from metaspec.server.engine import sampling
from metaspec.server.engine.sampling import (
    History,
    Processing,
    draw,
    greedy_tokens,
    logprobs,
    probabilities,
    seen_rows,
)
from metaspec.server.engine.speculative import residual_distribution


def reference_logits(logits: torch.Tensor, prompt: torch.Tensor, generated: torch.Tensor, proc: Processing):
    """The penalties and the `min_tokens` ban, with transformers' processors where it has them and
    OpenAI's presence/frequency formula written out. `logits` (1, V)."""
    context = torch.cat([prompt, generated])[None]
    scores = RepetitionPenaltyLogitsProcessor(proc.repetition_penalty)(context, logits.clone().float())
    counts = torch.bincount(generated, minlength=scores.shape[-1]).float()
    scores = scores - proc.presence_penalty * (counts > 0) - proc.frequency_penalty * counts
    if proc.min_tokens:
        ban = MinNewTokensLengthLogitsProcessor(len(prompt), proc.min_tokens, list(proc.end_ids))
        scores = ban(context, scores)
    return scores


def reference_probs(logits: torch.Tensor, prompt: torch.Tensor, generated: torch.Tensor, proc: Processing):
    """transformers' pipeline, in the order vLLM applies them: penalties, temperature, min-p, top-k,
    top-p, softmax. `logits` (1, V)."""
    context = torch.cat([prompt, generated])[None]
    scores = TemperatureLogitsWarper(proc.temperature)(context, reference_logits(logits, prompt, generated, proc))
    if proc.min_p:
        scores = MinPLogitsWarper(proc.min_p)(context, scores)
    if proc.top_k:
        scores = TopKLogitsWarper(proc.top_k)(context, scores)
    if proc.top_p < 1:
        scores = TopPLogitsWarper(proc.top_p)(context, scores)
    return torch.softmax(scores, -1)


PROCS = [
    Processing(1.0),
    Processing(0.7, 0.9),
    Processing(1.3, 0.5, 1.4),
    Processing(0.5, 1.0, 0.8),
    Processing(1.0, top_k=5),
    Processing(0.8, 0.9, min_p=0.1, top_k=12),
    Processing(1.1, presence_penalty=1.5, frequency_penalty=-0.7),
    Processing(1.0, 0.95, 1.2, min_p=0.05, frequency_penalty=0.4, min_tokens=5, end_ids=(0, 3)),
]


def _contexts(gen: torch.Generator, vocab: int):
    prompt = torch.randint(0, vocab, (5,), generator=gen)
    generated = torch.randint(0, vocab, (int(torch.randint(0, 8, (), generator=gen)),), generator=gen)
    return prompt, generated


def _history(proc: Processing, vocab: int, prompt: torch.Tensor, generated: torch.Tensor) -> History:
    history = History(proc, vocab, prompt)
    history.extend(generated)
    return history


@pytest.mark.parametrize("proc", PROCS, ids=repr)
def test_probabilities_match_transformers(proc: Processing) -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        logits = torch.randn(1, 50, generator=gen) * 3
        prompt, generated = _contexts(gen, 50)
        context = _history(proc, 50, prompt, generated).rows(torch.empty(0, dtype=torch.long), 1)
        ours = probabilities(logits, context, proc)
        torch.testing.assert_close(ours, reference_probs(logits, prompt, generated, proc), atol=1e-6, rtol=1e-5)
        expected = reference_logits(logits, prompt, generated, proc).argmax(-1)
        assert greedy_tokens(logits, context, proc).tolist() == expected.tolist()


@pytest.mark.parametrize("proc", PROCS[-2:], ids=repr)
def test_history_rows_are_the_contexts_of_consecutive_positions(proc: Processing) -> None:
    """Row i of a verify pass is scored as if the proposals before it had been emitted one by one."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 50, generator=gen) * 3
    prompt, generated = _contexts(gen, 50)
    proposals = torch.tensor([7, 7, 0])
    rows = _history(proc, 50, prompt, generated).rows(proposals, 4)
    together = probabilities(logits, rows, proc)
    for i in range(4):
        one = _history(proc, 50, prompt, torch.cat([generated, proposals[:i]])).rows(proposals[:0], 1)
        torch.testing.assert_close(together[i : i + 1], probabilities(logits[i : i + 1], one, proc))


def _sorted_rows(monkeypatch: MonkeyPatch) -> list[int]:
    """Rows that top-p sorts in full from now on, one entry per call (the pre-selection's fallback)."""
    calls: list[int] = []
    full = sampling._sorted_nucleus

    def spy(probs: torch.Tensor, top_p: float) -> torch.Tensor:
        calls.append(probs.shape[0])
        return full(probs, top_p)

    monkeypatch.setattr(sampling, "_sorted_nucleus", spy)
    return calls


def _nucleus_both_ways(monkeypatch: MonkeyPatch, logits: torch.Tensor, proc: Processing):
    """`probabilities` sorting every row, then with the pre-selection; and the rows the latter sorted."""
    with monkeypatch.context() as sorting:
        sorting.setattr(sampling, "NUCLEUS_CANDIDATES", logits.shape[-1])
        full = probabilities(logits, None, proc)
    sorted_rows = _sorted_rows(monkeypatch)
    return full, probabilities(logits, None, proc), sum(sorted_rows)


NUCLEUS_PROCS = [
    Processing(0.7, 0.9),
    Processing(1.0, 0.5),
    Processing(1.5, 0.98),
    Processing(1.3, 0.95, min_p=0.05),
    Processing(0.8, 0.9, top_k=50),
    Processing(1.0, 0.9, top_k=1000),
    Processing(0.6, 0.8, min_p=0.02, top_k=300),
    Processing(1.0, 0.99, top_k=260),
]


@pytest.mark.parametrize("proc", NUCLEUS_PROCS, ids=repr)
def test_top_p_pre_selection_keeps_the_sorted_distribution(monkeypatch: MonkeyPatch, proc: Processing) -> None:
    """Rows whose nucleus fits in the top `NUCLEUS_CANDIDATES` tokens skip the sort and get the same
    distribution, bit for bit on the CPU; the others (here the flat rows, unless top-k or min-p
    shrink them) are sorted. Flat and peaked rows are scored together."""
    gen = torch.Generator().manual_seed(2)
    vocab, k = 4096, sampling.NUCLEUS_CANDIDATES
    scales = torch.tensor([0.3, 0.5, 1.0, 4.0, 8.0, 16.0]).repeat_interleave(3)[:, None]  # flat to peaked
    logits = torch.randn(len(scales), vocab, generator=gen) * scales
    full, fast, sorted_rows = _nucleus_both_ways(monkeypatch, logits, proc)
    torch.testing.assert_close(fast, full, rtol=0, atol=0)
    nucleus = (full > 0).sum(-1)
    assert sorted_rows == int((nucleus > k).sum()), "exactly the rows whose nucleus outgrows the candidates sort"
    assert bool((nucleus[-3:] <= k).all()), "the peaked rows must take the pre-selection"
    if not proc.top_k and not proc.min_p:
        assert bool((nucleus[:3] > k).all()), "the flat rows must fall back to the sort"


@pytest.mark.parametrize(("top_p", "sorted_rows"), [(0.6, 1), (0.9, 0)])
def test_top_p_pre_selection_sorts_when_the_nucleus_ends_in_a_tie(
    monkeypatch: MonkeyPatch, top_p: float, sorted_rows: int
) -> None:
    """Four equally likely tokens: a nucleus ending among them keeps those the sort puts first, so only
    the sort can say which; one holding all four is the same whatever the order."""
    logits = torch.full((1, 4096), -10.0)
    logits[0, [3, 700, 701, 4000]] = 10.0
    full, fast, rows = _nucleus_both_ways(monkeypatch, logits, Processing(1.0, top_p))
    torch.testing.assert_close(fast, full, rtol=0, atol=0)
    assert rows == sorted_rows


def test_min_tokens_bans_end_tokens_until_enough_are_generated() -> None:
    proc = Processing(1.0, min_tokens=2, end_ids=(1,))
    logits = torch.zeros(3, 4)
    rows = History(proc, 4, torch.tensor([2])).rows(torch.tensor([3, 3]), 3)
    assert probabilities(logits, rows, proc)[:, 1].tolist() == [0.0, 0.0, 0.25]


def test_logprobs_are_the_raw_log_softmax() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 3.0]])
    chosen, values, ids = logprobs(logits, torch.tensor([1, 2]), 2)
    expected = torch.log_softmax(logits, -1)
    torch.testing.assert_close(chosen, expected[[0, 1], [1, 2]])
    assert ids.tolist() == [[0, 1], [2, 0]] or ids.tolist() == [[0, 1], [2, 1]]
    torch.testing.assert_close(values, expected.topk(2, -1).values)
    assert logprobs(logits, torch.tensor([1, 2]), 0)[1].shape == (2, 0)


def test_greedy_applies_the_penalty() -> None:
    logits = torch.tensor([[2.0, 1.9, -1.0]])
    proc = Processing(0.0, 1.0, 1.2)
    seen = History(proc, 3, torch.tensor([0])).rows(torch.tensor([], dtype=torch.long), 1)
    assert greedy_tokens(logits, seen, proc).item() == 1
    assert greedy_tokens(logits, None, Processing(0.0)).item() == 0


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


def test_draw_follows_the_weights_and_never_draws_a_zero(monkeypatch: MonkeyPatch) -> None:
    weights = torch.tensor([[0.0, 0.5, 0.0, 1.5, 0.0]])  # unnormalised, zeros at both ends and between
    generator = torch.Generator().manual_seed(0)
    drawn = torch.cat([draw(weights, generator) for _ in range(4000)])
    assert set(drawn.tolist()) == {1, 3}
    assert 0.72 < (drawn == 3).float().mean() < 0.78  # 0.75, ±5 standard deviations
    for u in (0.0, 1 - 2**-53):  # the extremes of the uniform draw land on weighted tokens too
        monkeypatch.setattr(torch, "rand", lambda *args, u=u, **kwargs: torch.tensor([u], dtype=torch.float64))
        assert draw(weights, None).tolist() in ([1], [3])
    for bad in (torch.zeros(1, 3), torch.tensor([[0.5, float("nan"), 0.5]])):
        with pytest.raises(ValueError, match="no distribution"):
            draw(bad, None)


def test_draw_rows_draws_what_draw_draws_from_each_row() -> None:
    """Each row with its own generator, as `draw` would from that row alone; −1 where a row has no
    distribution (zeros, NaN), the others unaffected."""
    rows = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(1)) * 3, dim=-1)
    rows[2] = 0.0
    rows[4, 7] = float("nan")
    for step in range(20):
        together = sampling.draw_rows(rows, [torch.Generator().manual_seed(10 * i + step) for i in range(6)]).tolist()
        alone = [
            int(draw(rows[i : i + 1], torch.Generator().manual_seed(10 * i + step))) if i not in (2, 4) else -1
            for i in range(6)
        ]
        assert together == alone


def test_subnormal_temperatures_decode_greedily() -> None:
    """Dividing logits by 5e-324 gives inf and a NaN softmax: such temperatures are greedy."""
    assert Processing(temperature=5e-324).greedy and Processing(temperature=1e-6).greedy
    assert not Processing(temperature=1e-4).greedy

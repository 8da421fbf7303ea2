"""The transformers engine's sampling pieces, against transformers' own processors and the softmax."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, RepetitionPenaltyLogitsProcessor

from metaspec.api.generation import Sampling
from metaspec.generator.engines import cut_at_stop, prompt_seed
from metaspec.generator.engines.transformers import SeededSampler, finish


def test_repetition_penalty_matches_transformers_and_skips_padding() -> None:
    torch.manual_seed(0)
    scores = torch.randn(2, 10)
    ids = torch.tensor([[7, 7, 1, 2, 3], [4, 5, 2, 2, 9]])  # row 0 is left-padded with two 7s
    sampler = SeededSampler(Sampling(temperature=0, repetition_penalty=1.5), seeds=[1, 2], pad_lengths=[2, 0])
    ours = sampler(ids, scores.clone())
    reference = RepetitionPenaltyLogitsProcessor(1.5)
    assert torch.equal(ours[0], reference(ids[:1, 2:], scores[:1].clone())[0])  # padding ignored
    assert torch.equal(ours[1], reference(ids[1:], scores[1:].clone())[0])


def test_greedy_leaves_the_logits_to_argmax() -> None:
    scores = torch.tensor([[0.1, 3.0, -1.0]])
    out = SeededSampler(Sampling(temperature=0, repetition_penalty=1.0), [0], [0])(torch.tensor([[0]]), scores.clone())
    assert torch.equal(out, scores)


def test_draws_follow_the_tempered_distribution() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    sampling = Sampling(temperature=0.8, repetition_penalty=1.0, top_p=1.0)
    n = 4000
    sampler = SeededSampler(sampling, seeds=range(n), pad_lengths=[0] * n)
    out = sampler(torch.zeros(n, 1, dtype=torch.long), logits.repeat(n, 1))
    chosen = out.argmax(dim=-1)
    assert torch.isinf(out).sum(dim=-1).eq(3).all()  # one finite logit per row: greedy must pick the draw
    frequencies = torch.bincount(chosen, minlength=4).float() / n
    expected = torch.softmax(logits[0] / 0.8, dim=-1)
    assert torch.allclose(frequencies, expected, atol=0.03)  # ~4.5 standard errors at n=4000


def test_top_k_and_top_p_restrict_the_draws() -> None:
    logits = torch.tensor([[3.0, 1.9, 0.0, -1.0]])  # p = 0.71, 0.25, 0.04, 0.01
    n = 300
    for sampling in (Sampling(temperature=1.0, top_k=2), Sampling(temperature=1.0, top_p=0.5)):
        sampler = SeededSampler(sampling.model_copy(update={"repetition_penalty": 1.0}), range(n), [0] * n)
        chosen = sampler(torch.zeros(n, 1, dtype=torch.long), logits.repeat(n, 1)).argmax(dim=-1)
        assert set(chosen.tolist()) <= {0, 1}
    assert set(chosen.tolist()) == {0}  # top-p 0.5 keeps only the most likely token here


def test_a_row_draw_depends_only_on_its_seed() -> None:
    logits = torch.zeros(1, 50)
    sampling = Sampling(temperature=1.0, repetition_penalty=1.0)
    alone = SeededSampler(sampling, [prompt_seed(0, "a")], [0])(torch.zeros(1, 1, dtype=torch.long), logits.clone())
    batch = SeededSampler(sampling, [prompt_seed(0, "b"), prompt_seed(0, "a")], [0, 0])
    together = batch(torch.zeros(2, 1, dtype=torch.long), logits.repeat(2, 1))
    assert alone.argmax() == together[1].argmax()
    assert prompt_seed(0, "a") != prompt_seed(1, "a") != prompt_seed(0, "b")


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path):
    return AutoTokenizer.from_pretrained(smollm2)


def test_finish_reasons_and_token_counts(tokenizer) -> None:
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    hello = tokenizer.encode("Hello world. More text")
    decode = tokenizer.decode
    # the model ended its turn: the end-of-turn token is counted, not shown
    assert finish([*hello, eot, eot, eot], [eot], [], 10, decode) == ("Hello world. More text", len(hello) + 1, "stop")
    # max_tokens reached without a stop
    assert finish(hello, [eot], [], len(hello), decode) == ("Hello world. More text", len(hello), "length")
    # a stop string ended the row; generate padded the rest with the stop id
    assert finish([*hello, eot, eot], [eot], [". "], 10, decode) == ("Hello world", len(hello), "stop")


def test_cut_at_the_earliest_stop_string() -> None:
    assert cut_at_stop("abc\nUser: x ### y", ["###", "\nUser:"]) == ("abc", True)
    assert cut_at_stop("plain", ["###", ""]) == ("plain", False)


def test_degenerate_sampling_is_greedy_or_refused() -> None:
    """A subnormal temperature decodes greedily (as the server and vLLM do) instead of NaN probabilities
    that make the draw emit the last vocabulary id; penalties and top_p below 1e-6 are refused."""
    scores = torch.tensor([[0.1, 3.0, -1.0, 0.5]])
    tiny = Sampling(temperature=1e-300, repetition_penalty=1.0)
    out = SeededSampler(tiny, [0], [0])(torch.tensor([[0]]), scores.clone())
    assert torch.equal(out, scores) and out.argmax() == 1
    from metaspec.generator.engines.vllm import vllm_sampling_kwargs

    class Tokenizer:
        eos_token_id = 2

        def convert_tokens_to_ids(self, token: str) -> None:
            return None

    assert vllm_sampling_kwargs(tiny, Tokenizer())["temperature"] == 0.0
    for field in ("repetition_penalty", "top_p"):
        with pytest.raises(ValueError, match=field):
            Sampling(**{field: 1e-300})

"""A draft's recommended confidence threshold (`routing.confidenceThreshold: auto`), chosen by the engine's
cost model from held-out prompts.

`first-token` routing speculates on a whole request when the draft's first-token confidence reaches the
threshold. A request of n tokens whose draft accepts at rate α takes n target steps alone and, by
Leviathan et al.'s (2023) expected speedup S(α, k, c) (`metaspec.server.engine.routing.speedup`, the
model the `adaptive` policy decides with), n / S steps speculating. Over held-out prompts the threshold
is the confidence that saves the most steps, Σ over the prompts at or above it of n·(1 − 1/S): prompts
whose draft loses (S < 1) count against it, so the threshold is where speculation's expected gain over
the prompts it admits is largest and positive. When no threshold saves anything it is 1: speculate only
where the draft is certain.

What it is computed from: per held-out prompt, the draft's first-token confidence (the one `first-token`
reads, `metaspec.server.engine.sampling.confidence`), its acceptance rate α on the answer and the
answer's length; and c, one proposal's cost on this device. α is Leviathan et al.'s at temperature 1:
a proposal drawn from q is accepted with probability β = Σ_x min(p(x), q(x)) at its position, averaged
over the answer's positions with the answer as the prefix (teacher forcing: the answers are the
target's or its teacher's outputs).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from metaspec.api.serving import ThresholdCalibration
from metaspec.server.engine.routing import speedup
from metaspec.server.engine.sampling import confidence
from metaspec.server.engine.speculative import CausalLM

from .data import IGNORE_INDEX, Example, collate
from .evaluate import body_of

#: Positions scored at once: two (positions, vocabulary) probability tables in fp32 per chunk.
_CHUNK = 256


@dataclass
class PromptStatistics:
    confidences: list[float]
    alphas: list[float]
    lengths: list[int]


@torch.no_grad()
def prompt_statistics(
    target: nn.Module,
    draft: nn.Module,
    draft_head: Callable[[torch.Tensor], torch.Tensor],
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    vocabulary: torch.Tensor | None = None,
) -> PromptStatistics:
    """Per example with an answer: the draft's first-token confidence, α and the answer's length.
    `draft_head` maps draft hidden states (N, D) to logits over its `vocabulary` (ascending target ids;
    None: the whole vocabulary)."""
    device = next(target.parameters()).device
    target_head = target.get_output_embeddings()
    out = PromptStatistics([], [], [])
    for start in range(0, len(examples), batch_size):
        batch = collate(examples[start : start + batch_size], pad_id)
        inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
        h_p = body_of(target)(**inputs).last_hidden_state[:, :-1]  # (B, T-1, D): position t predicts t + 1
        h_q = body_of(draft)(**inputs).last_hidden_state[:, :-1]
        answer = batch["labels"][:, 1:].to(device) != IGNORE_INDEX  # (B, T-1)
        for row in range(answer.shape[0]):
            keep = answer[row]
            n = int(keep.sum())
            if not n:
                continue
            hp, hq = h_p[row][keep], h_q[row][keep]  # (n, D): the answer's positions
            beta = []
            for s in range(0, n, _CHUNK):
                p_logits = target_head(hp[s : s + _CHUNK]).float()  # (N, V)
                q_logits = draft_head(hq[s : s + _CHUNK]).float()  # (N, V_draft)
                if s == 0:
                    out.confidences.append(float(confidence(q_logits[0])))
                p = torch.softmax(p_logits, -1)
                p = p[:, vocabulary] if vocabulary is not None else p[:, : q_logits.shape[-1]]
                beta.append(torch.minimum(p, torch.softmax(q_logits, -1)).sum(-1))  # (N,)
            out.alphas.append(float(torch.cat(beta).mean()))
            out.lengths.append(n)
    return out


def recommend(
    confidences: Sequence[float], alphas: Sequence[float], lengths: Sequence[int], cost: float, k: int
) -> ThresholdCalibration:
    """The threshold for held-out prompts with these first-token `confidences`, acceptance rates α
    (`alphas`) and answer `lengths` (tokens), for k proposals per round of cost c each."""
    if not (len(confidences) == len(alphas) == len(lengths)) or not confidences:
        raise ValueError("calibration needs the same positive number of confidences, alphas and lengths")
    saving = [n * (1 - 1 / speedup(a, k, cost)) for a, n in zip(alphas, lengths, strict=True)]
    order = sorted(range(len(confidences)), key=lambda i: -confidences[i])
    threshold, best, saved = 1.0, 0.0, 0.0
    for rank, i in enumerate(order):
        saved += saving[i]
        last_of_ties = rank + 1 == len(order) or confidences[order[rank + 1]] < confidences[i]
        if last_of_ties and saved > best:  # a threshold admits every prompt of equal confidence
            threshold, best = confidences[i], saved
    admitted = [i for i, c in enumerate(confidences) if c >= threshold]
    total = sum(lengths)
    decode = total - sum(saving[i] for i in admitted)
    return ThresholdCalibration(
        confidence_threshold=threshold,
        max_speculative_tokens=k,
        cost=cost,
        prompts=len(confidences),
        speculated_share=len(admitted) / len(confidences),
        predicted_speedup=total / decode,  # each saving is below its n, so decode > 0
    )


@torch.no_grad()
def measure_cost(target: nn.Module, draft: nn.Module, prompt: torch.Tensor, k: int, repeats: int = 5) -> float:
    """c as the `adaptive` policy measures it: (t_round / t_step − 1) / k, a round being k draft steps and
    a target pass over k + 1 tokens, a step one target pass over one token, through the server's own
    one-request path (`CausalLM` sessions) with both caches holding `prompt` (1, T). Medians of `repeats`
    interleaved timings after one warm-up each."""
    device = next(target.parameters()).device
    prompt = prompt.to(device)
    length = prompt.shape[1]
    t, d = (CausalLM(m, m.config.vocab_size).session() for m in (target, draft))
    t.feed(prompt)
    d.feed(prompt)
    token = prompt[:, -1:]

    def step() -> None:
        t.feed(token)
        t.truncate(length)

    def round_() -> None:
        for _ in range(k):
            d.feed(token)
        d.truncate(length)
        t.feed(token.expand(1, k + 1))
        t.truncate(length)

    def timed(fn: Callable[[], None]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        begin = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - begin

    step()  # warm-up
    round_()
    steps, rounds = [], []
    for _ in range(repeats):
        steps.append(timed(step))
        rounds.append(timed(round_))
    return max(0.0, (statistics.median(rounds) / statistics.median(steps) - 1) / k)


def calibrate(
    target: nn.Module,
    draft: nn.Module,
    draft_head: Callable[[torch.Tensor], torch.Tensor],
    examples: Sequence[Example],
    pad_id: int,
    batch_size: int,
    k: int,
    vocabulary: torch.Tensor | None = None,
) -> ThresholdCalibration:
    """The recommended `routing.confidenceThreshold` of `draft` over `target` from held-out `examples`."""
    was_training = draft.training
    draft.eval()
    try:
        stats = prompt_statistics(target, draft, draft_head, examples, pad_id, batch_size, vocabulary)
        if not stats.lengths:
            raise ValueError("the evaluation set has no answers to calibrate a confidence threshold on")
        cost = measure_cost(target, draft, _first_prompt(examples), k)
    finally:
        draft.train(was_training)
    return recommend(stats.confidences, stats.alphas, stats.lengths, cost, k)


def _first_prompt(examples: Sequence[Example]) -> torch.Tensor:
    """(1, T): the prompt of the first example with an answer (its tokens before the first label)."""
    example = next(ex for ex in examples if any(label != IGNORE_INDEX for label in ex.labels))
    start = next(i for i, label in enumerate(example.labels) if label != IGNORE_INDEX)
    return torch.tensor([example.input_ids[: max(1, start)]])

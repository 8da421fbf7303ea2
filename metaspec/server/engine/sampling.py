"""Logits processing shared by target and draft: penalties, `min_tokens`, temperature, min-p, top-k, top-p.

Speculative sampling is exact only if the target distribution p and the draft distribution q are the
distributions actually sampled from (Leviathan et al. 2023, "Fast Inference from Transformers via
Speculative Decoding"; Chen et al. 2023, "Accelerating Large Language Model Decoding with Speculative
Sampling"). So both models go through exactly these functions, with the same context per position.
The rejection rule is exact for any pair of distributions p and q; it only needs p to be what
target-only sampling would draw from. Every transform here is a function of a position's logits and of
the tokens before it (never of a token drawn at or after it), so applied to the target's logits it gives
exactly target-only sampling's distribution, and applied to the draft's it gives the q that was sampled.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from metaspec.api import GREEDY_BELOW

from .protocol import SamplingParams


@dataclass(frozen=True)
class Processing:
    """The logits transformations of one request, in the order they apply: repetition penalty,
    presence/frequency penalties, the `min_tokens` ban on end tokens, temperature, min-p, top-k, top-p."""

    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    top_k: int = 0
    """Keep the k most likely tokens (ties at the k-th kept too); 0: all."""
    min_p: float = 0.0
    """Drop tokens less likely than `min_p` × the most likely one (Nguyen et al. 2024); 0: none."""
    presence_penalty: float = 0.0
    """Subtracted from the logit of every token generated at least once (OpenAI's, as in vLLM: generated
    tokens only, not the prompt's)."""
    frequency_penalty: float = 0.0
    """Subtracted from a token's logit once per time it was generated."""
    min_tokens: int = 0
    """The end tokens (`end_ids`) cannot be drawn before this many tokens are generated."""
    end_ids: tuple[int, ...] = ()

    @classmethod
    def of(cls, params: SamplingParams, end_ids: tuple[int, ...] = ()) -> Processing:
        """`end_ids`: the tokens that end this request (what `min_tokens` holds back)."""
        return cls(
            params.temperature,
            params.top_p,
            params.repetition_penalty,
            top_k=max(params.top_k, 0),
            min_p=params.min_p,
            presence_penalty=params.presence_penalty,
            frequency_penalty=params.frequency_penalty,
            min_tokens=params.min_tokens,
            end_ids=end_ids if params.min_tokens else (),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    @property
    def penalized(self) -> bool:
        return self.repetition_penalty != 1

    @property
    def counted(self) -> bool:
        """Reads how often each token was generated (presence/frequency penalties)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0

    @property
    def contextual(self) -> bool:
        """Depends on the tokens before each position, beyond the model's logits."""
        return self.penalized or self.counted or bool(self.min_tokens and self.end_ids)


@dataclass(frozen=True)
class Context:
    """What the context-dependent transforms read, one row per position scored together."""

    seen: torch.Tensor | None
    """(N, V) bool: the token occurs in the prompt or the generated text (repetition penalty)."""
    counts: torch.Tensor | None
    """(N, V) int32: times the token was generated (presence/frequency penalties)."""
    produced: torch.Tensor
    """(N,) long: tokens generated before the position (`min_tokens`)."""


class History:
    """One sequence's context for `Processing`: updated as tokens are emitted, read as `Context` rows
    for a run of positions (a verify pass scores the pending position and every proposal at once)."""

    def __init__(self, proc: Processing, vocab: int, prompt: torch.Tensor) -> None:
        """`prompt` (P,) long token ids on the models' device."""
        device = prompt.device
        self.proc = proc
        self.seen: torch.Tensor | None = None  # (V,) bool
        self.counts: torch.Tensor | None = None  # (V,) int32
        self.produced = 0
        if proc.penalized:
            self.seen = torch.zeros(vocab, dtype=torch.bool, device=device)
            self.seen[prompt] = True
        if proc.counted:
            self.counts = torch.zeros(vocab, dtype=torch.int32, device=device)

    def copy(self) -> History:
        other = copy.copy(self)
        other.seen = None if self.seen is None else self.seen.clone()
        other.counts = None if self.counts is None else self.counts.clone()
        return other

    def extend(self, tokens: torch.Tensor | list[int]) -> None:
        """Append emitted tokens (J,)."""
        self.produced += len(tokens)
        if self.seen is None and self.counts is None:
            return
        device = (self.seen if self.seen is not None else self.counts).device  # type: ignore[union-attr]
        ids = torch.as_tensor(tokens, dtype=torch.long, device=device)
        if self.seen is not None:
            self.seen[ids] = True
        if self.counts is not None:
            self.counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.int32))

    def rows(self, tokens: torch.Tensor, rows: int) -> Context | None:
        """Contexts of `rows` consecutive positions: row i is this history plus `tokens[:i]` (the
        proposals before it). None when the request has no context-dependent transform."""
        if not self.proc.contextual:
            return None
        device = tokens.device
        produced = self.produced + torch.arange(rows, device=device)
        seen = seen_rows(self.seen, tokens, rows) if self.seen is not None else None
        counts = None
        if self.counts is not None:
            counts = self.counts.unsqueeze(0) + _added(tokens, rows, self.counts.shape[0])
        return Context(seen, counts, produced)


def _added(tokens: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """(rows, V) int32: row i counts each token among `tokens[:i]`."""
    added = torch.zeros(rows, vocab, dtype=torch.int32, device=tokens.device)  # (R, V)
    if rows > 1:
        added[1:] = torch.nn.functional.one_hot(tokens[: rows - 1], vocab).to(torch.int32).cumsum(0)
    return added


def seen_rows(seen: torch.Tensor, tokens: torch.Tensor, rows: int) -> torch.Tensor:
    """Context masks for `rows` consecutive positions: row i = `seen` plus `tokens[:i]`.

    `seen` (V,) bool marks tokens already in the context; `tokens` (J,) are the proposals that extend it.
    Returns (rows, V) bool with rows ≤ J + 1.
    """
    return seen.unsqueeze(0) | (_added(tokens, rows, seen.shape[0]) > 0)


def penalize(logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor) -> torch.Tensor:
    """Repetition penalty of CTRL (Keskar et al. 2019), as transformers applies it: logits of tokens
    already in the context are divided by the penalty when positive and multiplied when negative.
    `logits` (N, V) float, `seen` (N, V) bool."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


NUCLEUS_CANDIDATES = 256
"""Tokens top-p reads before sorting the whole vocabulary: `topk(256)` costs a seventeenth of the sort
on a CPU at 49152 tokens (docs/benchmarks.md), and a peaked distribution's nucleus fits in it."""


def top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2020): keep the most likely tokens until their mass reaches
    `top_p` (at least one), renormalised. `probs` (N, V), rows summing to 1.

    Rows whose nucleus fits in their `NUCLEUS_CANDIDATES` most likely tokens keep what the sort of
    the whole row would keep (`_candidate_nucleus`); the others sort. k tokens reach `top_p` only if k
    times the top probability does: when no row can, the candidates are not looked for. On the CPU
    only: each choice reads the device, a host round trip on an accelerator, where the sort is cheap."""
    k = NUCLEUS_CANDIDATES
    if probs.device.type != "cpu" or probs.shape[-1] <= k or not bool((probs.amax(-1) * k >= top_p).any()):
        kept = _sorted_nucleus(probs, top_p)
    else:
        kept, fits = _candidate_nucleus(probs, top_p, k)
        if not bool(fits.all()):
            kept[~fits] = _sorted_nucleus(probs[~fits], top_p)
    return kept / kept.sum(-1, keepdim=True)


def _sorted_nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """`probs` (N, V) outside the nucleus set to 0 (not renormalised), from a sort of each row."""
    ordered, order = probs.sort(dim=-1, descending=True)  # (N, V)
    mass_before = ordered.cumsum(-1) - ordered
    ordered = ordered.masked_fill(mass_before >= top_p, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, ordered)


def _candidate_nucleus(probs: torch.Tensor, top_p: float, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_sorted_nucleus` from the k + 1 most likely tokens of each row, and (N,) bool: where it is
    exactly the sort's. The k + 1 largest values are the sorted row's first k + 1, so their cumulative
    masses are the sort's too (a CPU cumsum adds in order; a GPU scan may round differently). Where the
    (k+1)-th token is already outside the nucleus, so is every later one (masses only grow), and the
    kept tokens are the row's m most likely — unless the m-th ties with the (m+1)-th, where which of
    the tied tokens the sort keeps depends on its order: such rows, and those whose nucleus is larger,
    are not exact."""
    ordered, order = probs.topk(k + 1, dim=-1)  # (N, k+1), descending
    mass_before = ordered.cumsum(-1) - ordered
    inside = mass_before < top_p
    last = (inside.sum(-1, keepdim=True) - 1).clamp(0, k - 1)  # (N, 1): the last kept position
    boundary = ordered.gather(-1, last).squeeze(-1) > ordered.gather(-1, last + 1).squeeze(-1)
    fits = ~inside[:, -1] & boundary  # (N,)
    kept = torch.zeros_like(probs).scatter_(-1, order, ordered.masked_fill(~inside, 0.0))
    return kept, fits


def min_p_filter(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Min-p sampling (Nguyen et al. 2024): drop tokens below `min_p` × the row's top probability,
    renormalised. `probs` (N, V)."""
    kept = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    return kept / kept.sum(-1, keepdim=True)


def top_k_filter(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k sampling (Fan et al. 2018): keep the k most likely tokens (and any tied with the k-th),
    renormalised. `probs` (N, V)."""
    if k >= probs.shape[-1]:
        return probs
    kth = probs.topk(k, dim=-1).values[..., -1:]  # (N, 1)
    kept = probs.masked_fill(probs < kth, 0.0)
    return kept / kept.sum(-1, keepdim=True)


def processed_logits(logits: torch.Tensor, context: Context | None, proc: Processing) -> torch.Tensor:
    """Logits after the penalties and the `min_tokens` ban, in float32. `logits` (N, V)."""
    logits = logits.float()
    if context is None:
        return logits
    if proc.penalized and context.seen is not None:
        logits = penalize(logits, context.seen, proc.repetition_penalty)
    if proc.counted and context.counts is not None:
        counts = context.counts.float()
        logits = logits - proc.presence_penalty * (counts > 0) - proc.frequency_penalty * counts
    if proc.min_tokens and proc.end_ids:
        early = (context.produced < proc.min_tokens).unsqueeze(1)  # (N, 1)
        ends = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        ends[[t for t in proc.end_ids if t < logits.shape[-1]]] = True
        logits = logits.masked_fill(early & ends, float("-inf"))
    return logits


def probabilities(logits: torch.Tensor, context: Context | None, proc: Processing) -> torch.Tensor:
    """The sampling distribution (N, V) for temperature > 0."""
    probs = torch.softmax(processed_logits(logits, context, proc) / proc.temperature, dim=-1)
    if proc.min_p > 0:
        probs = min_p_filter(probs, proc.min_p)
    if proc.top_k > 0:
        probs = top_k_filter(probs, proc.top_k)
    return top_p_filter(probs, proc.top_p) if proc.top_p < 1 else probs


NO_DISTRIBUTION = "no distribution to draw from: the weights are not finite or sum to 0"


def draw(dist: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token (1,) long from `dist` (1, V), non-negative weights (as `torch.multinomial` takes): the
    first token whose cumulative mass passes a uniform draw times the total, in float64. That token has
    positive weight (a zero adds no mass), and it is drawn with probability its weight over the total,
    to float64 rounding. `torch.multinomial` draws an exponential per vocabulary entry instead: 1.7 ms
    a row at 49152 tokens on a CPU, a tenth of a 16-sequence step of SmolLM2-135M when half the batch
    samples (docs/benchmarks.md)."""
    cdf = dist.reshape(1, -1).double().cumsum(-1)  # (1, V)
    if not bool(cdf[0, -1] > 0) or not bool(cdf[0, -1].isfinite()):  # NaN fails the first test
        raise ValueError(NO_DISTRIBUTION)
    u = torch.rand(1, generator=generator, dtype=torch.float64, device=dist.device)
    return _inverse_cdf(dist.reshape(1, -1), cdf, u)


def draw_rows(dists: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """`draw` for every row of `dists` (R, V), each with its own generator, without reading the device:
    (R,) long on its device. A row takes the one uniform from its generator that `draw` takes, so it draws
    what `draw` would draw from it alone. −1 for a row without a distribution (`NO_DISTRIBUTION`)."""
    cdf = dists.double().cumsum(-1)  # (R, V)
    u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=dists.device) for g in generators])
    total = cdf[:, -1]
    tokens = _inverse_cdf(dists, cdf, u)
    return torch.where((total > 0) & total.isfinite(), tokens, -1)


def _inverse_cdf(weights: torch.Tensor, cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row (R, V), the first token whose cumulative mass `cdf` passes u (R,) times the row's total."""
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1)  # (R,)
    return torch.where(tokens < cdf.shape[1], tokens, weights.argmax(-1))  # u · total rounded up to it


def greedy_tokens(logits: torch.Tensor, context: Context | None, proc: Processing) -> torch.Tensor:
    """Argmax (N,) after the penalties: temperature 0 (min-p, top-k and top-p never remove the argmax)."""
    return processed_logits(logits, context, proc).argmax(-1)


def logprobs(logits: torch.Tensor, tokens: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model's own log-probabilities (log-softmax of the raw logits: before temperature, penalties and
    filters, as vLLM reports by default) of `tokens` (N,) at their positions, and the `top` most likely
    tokens there. `logits` (N, V). Returns chosen (N,), top values (N, top), top ids (N, top)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
    chosen = logp.gather(1, tokens[:, None]).squeeze(1)
    values, ids = logp.topk(top, dim=-1) if top else (logp[:, :0], tokens[:, None][:, :0])
    return chosen, values, ids


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """The draft's confidence for routing: max probability of its raw softmax (temperature 1, no
    penalty, no top-p), so a threshold means the same thing for every request. `logits` (V,) -> ()."""
    return torch.softmax(logits.float(), dim=-1).max()

"""Speculative sampling is exact: completions sampled with speculation follow the target's distribution.

Reference: the exact distribution of the first three tokens under target-only sampling, enumerated with
transformers' own logits processors (repetition penalty, `min_tokens`, temperature, min-p, top-k, top-p)
and OpenAI's presence/frequency penalties written out (`test_sampling.reference_probs`). Statistic: a G-test of
the sampled completions against it (cells with expected count < 5 pooled), rejected at
ALPHA = 1e-3 — the false-alarm rate of each test. Seeds are fixed, so results are reproducible; a
deliberately broken rule (no residual resampling after a rejection) must be rejected by the same test.
Power: with SAMPLES = 600 the broken rule gives G ≈ 94 on 11 degrees of freedom (p ≈ 1e-15); a rule
that far off is rejected with probability > 0.9999 (noncentral χ², λ ≈ 83, against the critical value
31 at ALPHA). The batched tests (test_batch.py) sample more: interleaved with other requests the same
broken rule shows less (G ≈ 48 on 16 degrees of freedom at 1500 samples).
"""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
import torch
from test_sampling import reference_logits, reference_probs

from metaspec.server.engine import speculative
from metaspec.server.engine.protocol import RequestStats
from metaspec.server.engine.routing import RoutingPolicy
from metaspec.server.engine.sampling import Processing, confidence
from metaspec.server.engine.speculative import CausalLM, SpeculativeDecoder

ALPHA = 1e-3
PROMPT = [1, 2, 3]
LENGTH = 3
SAMPLES = 600


@torch.inference_mode()
def exact_distribution(
    model: torch.nn.Module, proc: Processing, prompt: list[int] = PROMPT
) -> dict[tuple[int, ...], float]:
    """P(x_1..x_LENGTH | prompt) under target-only sampling, by enumeration."""
    vocab = model.config.vocab_size
    probs: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(LENGTH):
        nxt = {}
        for prefix, mass in probs.items():
            context = torch.tensor(prompt + list(prefix))
            logits = model(context[None]).logits[0, -1:]
            step = reference_probs(logits, torch.tensor(prompt), torch.tensor(prefix, dtype=torch.long), proc)[0]
            for token in range(vocab):
                nxt[(*prefix, token)] = mass * step[token].item()
        probs = nxt
    return probs


def sample(decoder: SpeculativeDecoder, proc: Processing, seed: int) -> tuple[Counter, RequestStats]:
    generator = torch.Generator().manual_seed(seed)
    counts: Counter = Counter()
    total = RequestStats()
    for _ in range(SAMPLES):
        stats = RequestStats()
        tokens = [t for chunk in decoder.decode(PROMPT, proc, LENGTH, stats, generator) for t in chunk]
        counts[tuple(tokens)] += 1
        total.proposed_tokens += stats.proposed_tokens
        total.accepted_tokens += stats.accepted_tokens
        total.rounds += stats.rounds
    return counts, total


def g_test_p_value(counts: Counter, expected: dict[tuple[int, ...], float]) -> float:
    """p-value of the G-test of `counts` against the distribution `expected`."""
    n = sum(counts.values())
    impossible = {k: v for k, v in counts.items() if expected.get(k, 0.0) == 0.0}
    assert not impossible, f"sampled completions the target can never produce: {impossible}"
    cells: list[tuple[float, float]] = []  # (observed, expected count)
    pooled_o = pooled_e = 0.0
    for key, prob in expected.items():
        if n * prob < 5:
            pooled_o, pooled_e = pooled_o + counts.get(key, 0), pooled_e + n * prob
        else:
            cells.append((counts.get(key, 0), n * prob))
    if pooled_e > 0:
        cells.append((pooled_o, pooled_e))
    g = 2 * sum(o * torch.log(torch.tensor(o / e)).item() for o, e in cells if o > 0)
    df = len(cells) - 1
    return torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(g / 2)).item()


pytestmark = pytest.mark.usefixtures("one_thread")


CASES = {
    "always-t1": (RoutingPolicy("always", 0.5, 2), Processing(1.0)),
    # every transform a request can ask for, applied to both p and q, in one case (each costs SAMPLES decodes)
    "per-token-every-transform": (
        RoutingPolicy("per-token", 0.93, 3),
        Processing(
            1.5,
            0.95,
            1.2,
            top_k=5,
            min_p=0.02,
            presence_penalty=0.8,
            frequency_penalty=0.6,
            min_tokens=2,
            end_ids=(0, 5),
        ),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_speculative_sampling_matches_target_distribution(
    case: str, tiny_target, tiny_draft, monkeypatch: pytest.MonkeyPatch
) -> None:
    routing, proc = CASES[case]
    seen: list[float] = []
    recorded = lambda logits: seen.append(value := confidence(logits)) or value  # noqa: E731
    monkeypatch.setattr(speculative, "confidence", recorded)
    decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    counts, stats = sample(decoder, proc, seed=1234)
    # every path ran: acceptances, rejections (residuals) and, for per-token, rounds cut short
    assert 0 < stats.accepted_tokens < stats.proposed_tokens, stats
    if routing.checks_each_token:
        below = sum(c < routing.threshold for c in seen)
        assert 0 < below < len(seen), "per-token should both draft and stop drafting"
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc)) >= ALPHA


def test_a_broken_rule_is_detected(tiny_target, tiny_draft, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resampling from p instead of norm(max(0, p − q)) after a rejection over-weights the draft's
    tokens; the same statistic must reject it, or the tests above could not fail."""
    monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    routing, proc = CASES["always-t1"]
    decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    counts, _ = sample(decoder, proc, seed=1234)
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc)) < ALPHA


def test_target_only_sampling_matches_too(tiny_target) -> None:
    proc = Processing(1.2, 0.8, 1.5)
    decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), None, RoutingPolicy("never"))
    counts, stats = sample(decoder, proc, seed=99)
    assert stats.proposed_tokens == 0 and stats.rounds == SAMPLES * LENGTH
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc)) >= ALPHA


@pytest.mark.parametrize("policy", ["always", "per-token", "first-token", "never", "adaptive", "adaptive-rounds"])
@pytest.mark.usefixtures("any_k")
def test_greedy_equals_target_greedy(policy: str, tiny_target, tiny_draft) -> None:
    """`adaptive` with a random k per round (`any_k`); with `-rounds`, through the draft's one-call
    rounds (the compiled path's, run eagerly)."""
    draft = CausalLM(tiny_draft, 8, draft_rounds=policy.endswith("-rounds"))
    decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), draft, RoutingPolicy(policy.removesuffix("-rounds"), 0.3, 3))
    for prompt in itertools.islice(itertools.permutations(range(8), 3), 40):
        expected = tiny_target.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
        stats = RequestStats()
        got = [t for chunk in decoder.decode(list(prompt), Processing(), 12, stats, None) for t in chunk]
        expected = expected[0, 3:].tolist()  # `generate` stops at the config's EOS id; the decoder does not
        assert got[: len(expected)] == expected, (prompt, stats)


def test_adaptive_neither_decides_nor_times_the_prefill(tiny_target, tiny_draft) -> None:
    """The first round of a request prefills the prompt, a pass many times a step's cost: timed as a
    target-only step, it would make every proposal look cheap next to it."""
    routing = RoutingPolicy("adaptive", 0.3, 3)
    decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    stats = RequestStats()
    for _ in decoder.decode([1, 2, 3, 4, 5, 6], Processing(), 8, stats, None):
        pass
    assert decoder.adaptive is not None and decoder.adaptive.steps == stats.rounds - 1


def test_greedy_with_penalties_equals_the_reference_argmax(tiny_target, tiny_draft) -> None:
    """Greedy decoding under presence/frequency penalties and `min_tokens` (the step-by-step draft loop,
    since a round in one graph applies the repetition penalty only) picks the argmax of transformers'
    pipeline at every position, speculating or not."""
    proc = Processing(0.0, presence_penalty=1.0, frequency_penalty=0.5, min_tokens=3, end_ids=(2,))
    for policy in ("always", "never"):
        draft = CausalLM(tiny_draft, 8, draft_rounds=True) if policy == "always" else None
        decoder = SpeculativeDecoder(CausalLM(tiny_target, 8), draft, RoutingPolicy(policy, 0.3, 3))
        for prompt in itertools.islice(itertools.permutations(range(8), 3), 10):
            got = [t for chunk in decoder.decode(list(prompt), proc, 8, RequestStats(), None) for t in chunk]
            expected: list[int] = []
            with torch.inference_mode():
                for _ in range(8):
                    logits = tiny_target(torch.tensor([[*prompt, *expected]])).logits[0, -1:]
                    generated = torch.tensor(expected, dtype=torch.long)
                    expected.append(reference_logits(logits, torch.tensor(prompt), generated, proc).argmax().item())
            assert got == expected, (policy, prompt)


CASES_PROC = (Processing(), Processing(1.0, 0.9, 1.2))


def assert_same_outputs(reference: SpeculativeDecoder, other: SpeculativeDecoder, seed: int) -> None:
    """Both decoders emit the same tokens, greedy and sampled with the same seed, over 6 prompts each
    (requests that reuse one cache)."""
    for prompt, proc in itertools.product(itertools.islice(itertools.permutations(range(8), 3), 6), CASES_PROC):
        outputs = []
        for decoder in (reference, other):
            generator = torch.Generator().manual_seed(seed)
            outputs.append([t for c in decoder.decode(list(prompt), proc, 16, RequestStats(), generator) for t in c])
        assert outputs[0] == outputs[1], (prompt, proc)


def test_static_cache_path_decodes_the_same(tiny_target, tiny_draft) -> None:
    """The preallocated cache of the compiled CUDA path (run eagerly here): same greedy tokens, same
    sample for the same seed, across requests that reuse the cache."""
    routing = RoutingPolicy("always", 0.5, 3)
    dynamic = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    static = SpeculativeDecoder(
        CausalLM(tiny_target, 8, static_cache_len=40), CausalLM(tiny_draft, 8, static_cache_len=40), routing
    )
    assert_same_outputs(dynamic, static, seed=3)


def test_compiled_inputs_come_in_two_lengths(tiny_target, tiny_draft) -> None:
    """The compiled path pads every input of up to k+1 tokens to 1 or k+1 tokens (one CUDA graph each),
    and cropping the padding leaves the output unchanged. The compiled forward is replaced by a spy
    around the eager one: compiling is what the GPU benchmark measures; here the shapes and the
    exactness of padding are the point."""
    routing = RoutingPolicy("always", 0.5, 3)
    lengths: set[int] = set()

    def compiled(lm: CausalLM) -> CausalLM:
        def spy(**kwargs):
            lengths.add(kwargs["input_ids"].shape[1])
            return lm.model(**kwargs)

        lm._compiled = spy
        lm._round = lm._greedy_round  # a greedy draft round: one graph of its own, run eagerly here
        return lm

    options = {"static_cache_len": 40, "compile": True, "compile_max_tokens": routing.max_speculative_tokens + 1}
    padded = SpeculativeDecoder(
        compiled(CausalLM(tiny_target, 8, **options)), compiled(CausalLM(tiny_draft, 8, **options)), routing
    )
    dynamic = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    assert_same_outputs(dynamic, padded, seed=5)
    assert lengths == {1, routing.max_speculative_tokens + 1}


GREEDY_PROCS = (Processing(), Processing(0.0, 1.0, 1.3))  # plain and with a repetition penalty


@pytest.mark.parametrize("policy", ["always", "first-token"])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_whole_draft_rounds_decode_the_same(policy: str, static: bool, tiny_target, tiny_draft) -> None:
    """A draft round proposed in one call (the compiled path's one CUDA graph, run eagerly here) emits the
    same greedy tokens, and proposes and accepts the same counts, as the draft's step-by-step loop; the
    draft takes no other input than the prompt and its rounds. Sampled requests keep the loop, so the
    seeded samples agree too."""
    routing = RoutingPolicy(policy, 0.3, 3)
    options = {"static_cache_len": 40} if static else {}
    steps = SpeculativeDecoder(CausalLM(tiny_target, 8), CausalLM(tiny_draft, 8), routing)
    rounds = SpeculativeDecoder(
        CausalLM(tiny_target, 8, **options), CausalLM(tiny_draft, 8, draft_rounds=True, **options), routing
    )
    assert_same_outputs(steps, rounds, seed=11)
    feeds = Counter()
    forward = rounds.draft.forward
    rounds.draft.forward = lambda *args, **kwargs: feeds.update(["feed"]) or forward(*args, **kwargs)
    totals = []
    for decoder in (steps, rounds):
        total = Counter()
        for prompt, proc in itertools.product(itertools.islice(itertools.permutations(range(8), 3), 8), GREEDY_PROCS):
            stats = RequestStats()
            for _ in decoder.decode(list(prompt), proc, 14, stats, None):
                pass
            total.update(proposed=stats.proposed_tokens, accepted=stats.accepted_tokens, rounds=stats.rounds)
        totals.append(total)
    assert totals[0] == totals[1]
    assert feeds["feed"] == 16, "a draft fed outside its rounds (the prompt aside) lost track of its cache"
    assert 0 < totals[1]["accepted"] < totals[1]["proposed"], totals  # rejections and acceptances both occur

"""Continuous batching keeps speculative decoding exact for every sequence, whatever shares its batch.

Tiny random Llamas (vocabulary 8, `conftest.py`): requests of different prompt lengths and budgets,
greedy and sampled, with and without a repetition penalty, arriving at different steps into a batch
smaller than the number of requests (so some wait for a slot). Greedy: each completion equals
transformers' `generate` on the target alone. Sampling: the G-test of `test_speculative_sampling.py`
on completions sampled inside such a mixed batch.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest
import torch
from test_speculative_sampling import ALPHA, LENGTH, PROMPT, exact_distribution, g_test_p_value

from metaspec.server.engine import batch as batch_module
from metaspec.server.engine import slots, speculative
from metaspec.server.engine.batch import BatchDecoder, Draft, Proposal, Sequence, SequenceFailed, read_rows
from metaspec.server.engine.drafts import ModelDraft
from metaspec.server.engine.routing import Adaptive, RoutingPolicy
from metaspec.server.engine.sampling import History, Processing
from metaspec.server.engine.slots import Chunk, SlotModel

VOCAB = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def decoder(
    target, draft, routing: RoutingPolicy, max_batch: int, length: int = 64, graphs: bool = False, overlap: bool = False
) -> BatchDecoder:
    """`draft`: a causal LM (drafting through `ModelDraft`), another kind of `Draft`, or None. `overlap`:
    `BatchDecoder.overlap`, a GPU's default, switched on here on the CPU."""
    if draft is not None and not isinstance(draft, Draft):
        draft = ModelDraft(SlotModel(draft, VOCAB, length, graphs))
    dec = BatchDecoder(SlotModel(target, VOCAB, length, graphs), draft, routing, max_batch)
    dec.overlap = overlap
    return dec


@dataclass
class Job:
    arrival: int
    """The step before which the request is submitted."""
    prompt: list[int]
    proc: Processing
    budget: int
    seed: int = 0
    stop: int | None = None
    """A token that ends the request (its sink says stop) when it comes."""
    logprobs: bool = False
    out: list[int] = field(default_factory=list)
    seq: Sequence | None = None


def run(dec: BatchDecoder, jobs: list[Job]) -> None:
    """Submit each job at its arrival step (or as soon as a slot is free after it) and decode to the end."""
    waiting = sorted(jobs, key=lambda j: j.arrival)
    step = 0
    while waiting or dec.running:
        joining = []
        while waiting and waiting[0].arrival <= step and len(dec.running) + len(joining) < dec.max_batch:
            joining.append(job := waiting.pop(0))
            job.seq = Sequence(job.prompt, job.proc, job.budget, sink(job), torch.Generator().manual_seed(job.seed))
            if job.logprobs:
                job.seq.logprobs = (2, [])
        if joining:
            dec.add([job.seq for job in joining])
        dec.step()
        step += 1


def sink(job: Job):
    def take(tokens: list[int]) -> bool:
        job.out.extend(tokens)
        return job.stop is not None and job.stop in tokens

    return take


def recorded(draft: Draft) -> list[Proposal]:
    """Every non-empty proposal `draft` makes from now on (`accepted` is set when its round settles)."""
    made: list[Proposal] = []
    propose = draft.propose

    def spy(seqs: list[Sequence], ks: list[int], threshold: float | None, *then: list[int]) -> list[Proposal]:
        out = propose(seqs, ks, threshold, *then)
        made.extend(p for p in out if p.tokens)
        return out

    draft.propose = spy  # type: ignore[method-assign]
    return made


def greedy_jobs(penalty: float = 1.0) -> list[Job]:
    prompts = list(itertools.islice(itertools.permutations(range(VOCAB), 4), 0, 200, 17))
    return [
        Job(
            arrival=i // 3,
            prompt=list(p[: 1 + i % 4]) * (1 + i % 3),
            proc=Processing(0.0, 1.0, penalty),
            budget=4 + i % 9,
        )
        for i, p in enumerate(prompts)
    ]


def target_greedy(target, job: Job) -> list[int]:
    ids = torch.tensor([job.prompt])
    out = target.generate(
        ids, max_new_tokens=job.budget, do_sample=False, repetition_penalty=job.proc.repetition_penalty
    )
    return out[0, len(job.prompt) :].tolist()  # `generate` stops at the config's EOS id; the decoder does not


ROUTINGS = {
    "always": RoutingPolicy("always", 0.5, 3),
    "per-token": RoutingPolicy("per-token", 0.3, 3),
    "first-token": RoutingPolicy("first-token", 0.3, 3),
    "never": RoutingPolicy("never"),
    "always-up-to-batch-3": RoutingPolicy("always", 0.5, 3, max_speculative_batch=3),
    "adaptive": RoutingPolicy("adaptive", 0.5, 3),
}


def check_greedy(target, dec: BatchDecoder, penalty: float, jobs: list[Job] | None = None) -> tuple[int, int]:
    """Decode `jobs` (default: `greedy_jobs(penalty)`) with `dec`: every completion must be the target's own
    greedy one. Returns the tokens proposed and accepted over all of them."""
    jobs = jobs or greedy_jobs(penalty)
    run(dec, jobs)
    for job in jobs:
        expected = target_greedy(target, job)
        assert job.out[: len(expected)] == expected, (job.prompt, job.seq.stats if job.seq else None)
        assert len(job.out) == job.budget
    stats = [j.seq.stats for j in jobs if j.seq]
    return sum(s.proposed_tokens for s in stats), sum(s.accepted_tokens for s in stats)


@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.parametrize("penalty", [1.0, 1.3])
@pytest.mark.usefixtures("any_k")
def test_greedy_in_a_batch_equals_target_greedy(name: str, penalty: float, tiny_target, tiny_draft) -> None:
    routing = ROUTINGS[name]
    dec = decoder(tiny_target, tiny_draft if routing.uses_draft else None, routing, max_batch=5)
    proposed, accepted = check_greedy(tiny_target, dec, penalty)
    if routing.uses_draft:
        assert 0 < accepted < proposed  # acceptances and rejections both happened


@pytest.mark.parametrize("name", ["never", "always", "per-token", "adaptive"])
@pytest.mark.usefixtures("any_k")
def test_padded_steps_decode_what_ragged_steps_decode(name: str, tiny_target, tiny_draft) -> None:
    """`SlotModel(graphs=True)` runs steps and short prompts' prefills at padded shapes (replayed from CUDA
    graphs on a GPU, run eagerly here): completions stay the target's own greedy ones while sequences join and
    leave, the batch, the tokens a row and the positions attended cross several padded sizes, the caches
    grow under them, and a draft proposes exactly what it proposes unpadded."""
    routing = ROUTINGS[name]
    target, draft = longer(tiny_target, 256), longer(tiny_draft, 256)

    def jobs() -> list[Job]:
        made = greedy_jobs(1.3)
        for job, length, arrival in zip(made[1::4], (70, 150, 200), (5, 40, 80), strict=True):  # past 64, 128
            job.prompt, job.budget, job.arrival = (job.prompt * length)[:length], job.budget + 20, arrival
        return made

    padded, ragged = jobs(), jobs()
    dec = decoder(target, draft if routing.uses_draft else None, routing, 5, length=256, graphs=True)
    check_greedy(target, dec, 1.3, padded)
    assert dec.target.cache.allocations > 3  # grown while padded steps ran (each growth drops the shapes' runs)
    shapes = dec.target.padded.shapes
    assert {b for b, _, _ in shapes} == {1, 2, 4, 8} and {w for _, _, w in shapes} == {64, 128, 256}
    assert {t for _, t, _ in shapes} >= {1, 128, 256}  # decode steps, and the long prompts' prefills
    if routing.uses_draft:  # verify passes of 2 (per-token) to 4 tokens a row, and the draft's own steps
        assert 4 in {t for _, t, _ in shapes} and dec.draft.lm.padded.shapes
    if not routing.adaptive:  # the draft proposed what it proposes unpadded (`adaptive` picks k at random)
        run(decoder(target, draft if routing.uses_draft else None, routing, 5, length=256), ragged)
        counts = [[(j.seq.stats.proposed_tokens, j.seq.stats.accepted_tokens) for j in js] for js in (padded, ragged)]
        assert counts[0] == counts[1]


STEPS = {  # slots 0..4 hold prompts of 9..13 tokens
    "decode": [Chunk(0, 9, [6]), Chunk(1, 10, [6, 7, 1], keep=2), Chunk(2, 11, [7, 2], keep=2)],
    "prefill": [Chunk(6, 0, [5, 4, 3, 2, 1] * 4), Chunk(5, 0, [2, 3, 4])],  # joining after the live slots
}


@pytest.mark.parametrize("name", STEPS)
def test_a_padded_step_writes_only_its_own_tokens(name: str, tiny_target) -> None:
    """A decode step of 1, 3 and 2 tokens for slots 0..2 runs as 4 rows of 4 tokens; prompts of 20 and 3
    tokens joining in slots 6 and 5 run as 2 rows of 32 tokens reading their own rows. The padding reads
    the cache but must write nowhere a sequence lives (not the other slots, not a row's positions after
    its own tokens), and the real rows get the ragged step's logits."""
    padded, ragged = SlotModel(tiny_target, VOCAB, 64, graphs=True), SlotModel(tiny_target, VOCAB, 64)
    prompts = [([1, 2, 3, 4, 5, 6, 7] * 2)[: 9 + s] for s in range(5)]
    for lm in (padded, ragged):
        lm.forward([Chunk(s, 0, p) for s, p in enumerate(prompts)])
        lm.cache.reserve(8, 64)  # the steps below neither grow the cache nor reach past it
    assert padded.padded is not None and padded.padded.shapes == {(8, 16, 64)}  # the prompts, padded too
    caches = (padded.cache.keys + padded.cache.values, ragged.cache.keys + ragged.cache.values)
    for mine, theirs in zip(*caches, strict=True):
        for slot, prompt in enumerate(prompts):  # each prompt's positions as the ragged prefill wrote them, and
            torch.testing.assert_close(mine[slot, :, : len(prompt)], theirs[slot, :, : len(prompt)])
            assert not mine[slot, :, len(prompt) :].any()  # nothing after them (the ragged pass writes padding)
    before = [t.clone() for t in (*padded.cache.keys, *padded.cache.values)]
    step = STEPS[name]
    logits, _ = padded.forward(step)
    expected, _ = ragged.forward(step)
    assert (4, 4, 64) in padded.padded.shapes if name == "decode" else (2, 32, 64) in padded.padded.shapes
    torch.testing.assert_close(logits, expected)
    written = {chunk.slot for chunk in step}
    for old, new in zip(before, (*padded.cache.keys, *padded.cache.values), strict=True):
        for slot in set(range(7)) - written:  # the live slots outside the step, and the unused one
            assert torch.equal(old[slot], new[slot])
        for chunk in step:  # each row wrote its own tokens' positions only
            kept = torch.ones(old.shape[2], dtype=torch.bool)
            kept[chunk.start : chunk.start + len(chunk.ids)] = False
            assert torch.equal(old[chunk.slot][:, kept], new[chunk.slot][:, kept])
            assert not torch.equal(old[chunk.slot], new[chunk.slot])


@pytest.mark.parametrize("graphs", [False, True])
def test_a_pass_padded_to_more_tokens_a_row_returns_what_the_pass_does(graphs: bool, tiny_target) -> None:
    """`tokens`: rows padded to a wider pass (and the head run over as many rows), which some CPUs run
    faster. The logits and layer inputs of the real tokens are the unpadded pass's, and the next pass
    reads the same cache: the padding's positions lie after each row's own, where its next tokens write."""
    wide, plain = SlotModel(tiny_target, VOCAB, 64, graphs=graphs), SlotModel(tiny_target, VOCAB, 64, graphs=graphs)
    prompts = [([1, 2, 3, 4, 5, 6, 7] * 2)[: 9 + s] for s in range(3)]
    for lm in (wide, plain):
        lm.forward([Chunk(s, 0, p) for s, p in enumerate(prompts)])
    step = [Chunk(0, 9, [6, 2], keep=2), Chunk(1, 10, [6]), Chunk(2, 11, [7, 2, 3], keep=3)]
    (logits, features), (expected, expected_features) = (
        wide.forward(step, (0, 1), tokens=6),
        plain.forward(step, (0, 1)),
    )
    assert logits.shape == (6, VOCAB)
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(features, expected_features)
    after = [Chunk(0, 10, [3]), Chunk(1, 11, [4]), Chunk(2, 12, [5])]  # the first proposal accepted in each row
    torch.testing.assert_close(wide.forward(after)[0], plain.forward(after)[0])


def test_padded_steps_split_what_one_step_cannot_take(tiny_target, monkeypatch: pytest.MonkeyPatch) -> None:
    """Five prompts of 9..13 tokens (rows of 16) where a padded step takes 64 tokens: two steps, of 4 rows
    and of 1 (its slot read gathered), with the ragged pass's logits and layer inputs in chunk order."""
    monkeypatch.setattr(slots, "MAX_STEP_TOKENS", 64)
    padded, ragged = SlotModel(tiny_target, VOCAB, 64, graphs=True), SlotModel(tiny_target, VOCAB, 64)
    chunks = [Chunk(s, 0, ([1, 2, 3, 4, 5, 6, 7] * 2)[: 9 + s]) for s in range(5)]
    (logits, features), (expected, expected_features) = (lm.forward(chunks, (0, 1)) for lm in (padded, ragged))
    assert padded.padded is not None and padded.padded.shapes == {(4, 16, 64), (1, 16, 64)}
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(features, expected_features)


@pytest.mark.parametrize("slots_", [[0, 1, 2], [1, 3, 4]], ids=["packed", "gathered"])
def test_a_round_in_one_call_proposes_what_a_call_a_token_proposes(slots_: list[int], tiny_draft) -> None:
    """`ModelDraft` proposes a greedy round in one call (`PaddedSteps.chain`: one CUDA graph on a GPU, run
    eagerly here), each row with its own k, after 1 to 3 tokens it has not taken yet: the proposals, the
    draft's bookkeeping and what its cache holds below it are those of one call a token."""
    drafts = [ModelDraft(SlotModel(tiny_draft, VOCAB, 64, graphs=True)) for _ in range(2)]
    drafts[1].chained = False
    made, kept = [], []
    for draft in drafts:
        seqs = []
        for slot in range(5):
            seq = Sequence([1 + slot, 2, 3, 4, 5][: 3 + slot % 3], Processing(), 20, lambda tokens: False)
            seq.slot, seq.history = slot, History(seq.proc, VOCAB, torch.tensor(seq.prompt))
            seqs.append(seq)
        draft.admit(seqs)
        proposing = [seqs[s] for s in slots_]
        for behind, seq in enumerate(proposing):  # emitted since: the last token, or two or three more
            seq.tokens += [6, 7, 1][: behind + 1]
        proposals = draft.propose(proposing, [3, 1, 2], None)
        made.append([(p.tokens, s.draft_length) for p, s in zip(proposals, proposing, strict=True)])
        cache = draft.lm.cache
        kept.append([cache.keys[0][s.slot, :, : s.draft_length].clone() for s in proposing])
    assert made[0] == made[1] and [len(tokens) for tokens, _ in made[0]] == [3, 1, 2]
    for mine, theirs in zip(*kept, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert {key[0] for key in drafts[0].lm.padded._runs} == {"chain", 8}  # the prompts' prefill, then the round
    assert not any(key[0] == "chain" for key in drafts[1].lm.padded._runs)


def test_a_round_left_on_the_device_decodes_what_a_round_read_first_decodes(tiny_target, tiny_draft) -> None:
    """Where every sequence of the batch proposes k tokens greedily, the draft leaves its round on the
    device (`Draft.greedy_round`), the target's pass takes the proposals in from there, and the host reads
    them with the pass's own tokens: completions stay the target's greedy ones, and every sequence's
    proposals and acceptances are those of rounds the host reads before the pass (`ModelDraft.propose`)."""
    outcomes, rounds = [], []
    for left_on_device in (True, False):
        dec = decoder(tiny_target, tiny_draft, ROUTINGS["always"], max_batch=5, graphs=True)
        greedy_round = dec.draft.greedy_round
        made: list[int] = []

        def counted(seqs: list[Sequence], k: int, greedy_round=greedy_round, made=made) -> torch.Tensor | None:
            out = greedy_round(seqs, k)
            made += [len(seqs)] if out is not None else []
            return out

        dec.draft.greedy_round, dec.draft.left_on_device = counted, left_on_device  # type: ignore[method-assign]
        jobs = greedy_jobs(1.0)
        for job in jobs:
            job.budget += 12  # room for k proposals in every row, most rounds
        jobs.append(Job(40, [3, 1, 4, 1, 5], Processing(), 30))  # alone at the end: a batch of one
        check_greedy(tiny_target, dec, 1.0, jobs)
        outcomes.append([(j.out, j.seq.stats.proposed_tokens, j.seq.stats.accepted_tokens) for j in jobs if j.seq])
        rounds.append(made)
    assert outcomes[0] == outcomes[1]
    assert len(rounds[0]) > 10 and {1, 5} <= set(rounds[0]) and not rounds[1]


def test_caches_reserved_up_front_take_every_step_without_growing(tiny_target, tiny_draft) -> None:
    """`BatchDecoder.reserve` allocates both caches once, for `max_batch` sequences (a padded step's rows: the
    next power of two) of the longest length, and nothing grows them after (on a GPU a growth drops every
    CUDA graph); they decode what caches grown as steps need decode. A budget too small for that length
    reserves the most positions, a power of two, that fit in it; a model's own limit caps them."""
    outcomes = []
    for reserved in (True, False):
        dec = decoder(tiny_target, tiny_draft, ROUTINGS["always"], max_batch=5, graphs=True)
        caches = [dec.target.cache, dec.draft.lm.cache]
        if reserved:
            assert dec.reserve(64, sum(c.nbytes(8, 64) for c in caches)) == 64
            assert [(c.capacity, c.allocations) for c in caches] == [((8, 64), 1)] * 2
        jobs = greedy_jobs(1.0)
        check_greedy(tiny_target, dec, 1.0, jobs)
        outcomes.append([(j.out, j.seq.stats.proposed_tokens, j.seq.stats.accepted_tokens) for j in jobs if j.seq])
        assert all(c.allocations == 1 for c in caches) == reserved
    assert outcomes[0] == outcomes[1]
    # (the models' positions, positions asked for, the positions whose bytes the budget falls short of, reserved)
    for length, positions, short, expected in ((256, 200, 256, 128), (100, 90, 0, 100), (100, 90, 100, 64)):
        target, draft = longer(tiny_target, length), longer(tiny_draft, length)
        dec = decoder(target, draft, ROUTINGS["always"], max_batch=5, length=length, graphs=True)
        caches = [dec.target.cache, dec.draft.lm.cache]
        budget = sum(c.nbytes(8, short) for c in caches) - 1 if short else 1 << 40
        assert dec.reserve(positions, budget) == expected
        assert [c.capacity for c in caches] == [(8, expected)] * 2


def longer(model, positions: int):
    """`model` with room for `positions` positions (the tiny models are configured for 64)."""
    model = copy.deepcopy(model)
    model.config.max_position_embeddings = positions
    return model


def test_speculation_stops_above_max_speculative_batch(tiny_target, tiny_draft) -> None:
    dec = decoder(tiny_target, tiny_draft, RoutingPolicy("always", 0.5, 3, max_speculative_batch=2), max_batch=4)
    jobs = [Job(0, [1, 2, 3], Processing(), 10) for _ in range(4)]
    run(dec, jobs)  # four decode together from the first step to the last: none ever speculates
    assert all(j.seq and j.seq.stats.proposed_tokens == 0 and j.seq.stats.route == "speculative" for j in jobs)


def test_an_adaptive_probe_drafts_for_a_few_sequences_only(
    tiny_target, tiny_draft, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe (a speculating step while speculation is off) catches the draft up on at most
    `probe_rows` sequences, those it has seen most of; the others' draft state stays untouched."""
    dec = decoder(tiny_target, tiny_draft, RoutingPolicy("adaptive", 0.5, 3), max_batch=5)
    assert dec.adaptive is not None
    (arm,) = dec.adaptive.arms
    monkeypatch.setattr(dec.adaptive, "choose", lambda batch: [2])
    monkeypatch.setattr(arm, "probe_rows", 2)
    seqs = [Sequence([1 + i % 7] * (2 + i), Processing(), 8, lambda tokens: False) for i in range(5)]
    dec.add(seqs)
    dec.step()
    drafted = [s for s in seqs if s.stats.proposed_tokens]
    assert drafted == seqs[:2]  # the shortest: the least for the draft to catch up on
    assert all(s.draft_length == 0 for s in seqs[2:])
    monkeypatch.setattr(arm, "speculating", lambda batch: True)
    dec.step()  # speculation on: every sequence drafts
    assert all(s.stats.proposed_tokens for s in seqs)


def mixed_batch(
    target, draft, routing: RoutingPolicy, proc: Processing, samples: int, prompt: list[int] = PROMPT
) -> Counter:
    """Completions of `prompt` sampled under `proc`, each decoded in a batch with other requests: greedy
    and sampled, longer prompts and budgets, arriving in between."""
    dec = decoder(target, draft, routing, max_batch=12)
    jobs: list[Job] = []
    for i in range(samples):
        jobs.append(Job(i // 8, prompt, proc, LENGTH, seed=i))
        if i % 4 == 0:
            other = Processing(0.0) if i % 8 == 0 else Processing(0.8, 0.9, 1.1)
            jobs.append(Job(i // 8, [i % VOCAB, 5, 6, 7, 1][: 2 + i % 4], other, 2 + i % 7, seed=-i))
    run(dec, jobs)
    return Counter(tuple(j.out) for j in jobs if j.prompt == prompt and j.proc == proc)


CASES = {
    "always-t1": (RoutingPolicy("always", 0.5, 2), Processing(1.0)),
    "per-token-penalty-top-p": (RoutingPolicy("per-token", 0.93, 3), Processing(1.5, 0.95, 1.2)),
    "adaptive-penalty": (RoutingPolicy("adaptive", 0.5, 3), Processing(1.0, 1.0, 1.2)),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.usefixtures("any_k")
def test_sampling_in_a_mixed_batch_matches_target_distribution(case: str, tiny_target, tiny_draft) -> None:
    routing, proc = CASES[case]
    counts = mixed_batch(tiny_target, tiny_draft, routing, proc, samples=1500)
    assert sum(counts.values()) == 1500
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc)) >= ALPHA


def test_a_broken_rule_is_detected_in_a_batch(tiny_target, tiny_draft, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(speculative, "residual_distribution", lambda p, q: p)
    routing, proc = CASES["always-t1"]
    counts = mixed_batch(tiny_target, tiny_draft, routing, proc, samples=1500)
    assert g_test_p_value(counts, exact_distribution(tiny_target, proc)) < ALPHA


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_read_rows_finds_every_non_finite_row_and_each_argmax(dtype: torch.dtype) -> None:
    nan, inf = float("nan"), float("inf")
    logits = torch.tensor([[0.0, 1.0, -2.0], [nan, 0.0, 1.0], [0.0, inf, 1.0], [-inf, 0.0, 1.0], [inf, -inf, 0.0]])
    large = torch.full((1, 49152), min(1e30, torch.finfo(dtype).max))  # beyond any model's logits, summed finitely
    finite, best, drawn = read_rows(logits.to(dtype), torch.tensor([7, -1]))
    assert finite == [True, False, False, False, False] and best[0] == 1 and best[3] == 2 and drawn == [7, -1]
    assert read_rows(large.to(dtype)) == ([True], [0], [])


@pytest.mark.parametrize(("policy", "overlap"), [("always", False), ("never", False), ("never", True)])
def test_a_failing_sequence_fails_alone_and_leaves_its_slot_clean(
    policy: str, overlap: bool, tiny_target, tiny_draft
) -> None:
    """Non-finite values in one sequence's rows (here: its embeddings, so its keys and values in the cache
    are NaN too) fail that sequence; the batch decodes on, and the next sequence in its slot is exact.
    `never`: target-only rows, no proposals; with `overlap`, the step is read while the next one runs
    (which the failing sequence's row is in, on whatever token it drew)."""
    dec = decoder(tiny_target, tiny_draft, RoutingPolicy(policy, 0.5, 3), max_batch=3, overlap=overlap)
    jobs = [
        Job(0, [1, 2, 3, 4], Processing(), 12),
        Job(0, [5, 6], Processing(), 12),
        Job(0, [7, 1, 2], Processing(), 12),
    ]
    for job in jobs:
        job.seq = Sequence(job.prompt, job.proc, job.budget, sink(job))
    dec.add([job.seq for job in jobs])
    victim = jobs[1].seq
    assert victim is not None

    def poison(module, args, output):
        if victim.slot >= 0 and output.shape[0] == len(dec.running) > 1:
            output[victim.slot] = float("nan")
        return output

    hook = tiny_target.model.embed_tokens.register_forward_hook(poison)
    try:
        dec.step()
    finally:
        hook.remove()
    if overlap:
        assert victim.error is None  # its step is in flight
        dec.step()
    assert isinstance(victim.error, SequenceFailed) and victim.slot == -1
    late = Job(0, [3, 3, 1], Processing(), 10)
    run(dec, [late])
    while dec.running:
        dec.step()
    for job in [jobs[0], jobs[2], late]:
        expected = target_greedy(tiny_target, job)
        assert job.out[: len(expected)] == expected


def test_sampled_rows_drawn_together_draw_what_each_draws_alone(tiny_target, monkeypatch) -> None:
    """Sampled sequences without proposals or context draw their tokens together, per processing, read
    with the batch's argmax in one read (`BatchDecoder._choices`; on accelerators only, switched on here):
    each from its own generator, so a sequence draws the tokens it draws when it decodes alone."""
    monkeypatch.setattr(batch_module, "draws_together", lambda device: True)
    group_sizes: list[int] = []
    draw_rows = batch_module.draw_rows
    monkeypatch.setattr(batch_module, "draw_rows", lambda d, g: group_sizes.append(len(g)) or draw_rows(d, g))
    read_sizes: list[int] = []
    read_rows = batch_module.read_rows
    monkeypatch.setattr(
        batch_module, "read_rows", lambda x, d=None: read_sizes.append(0 if d is None else len(d)) or read_rows(x, d)
    )
    procs = [Processing(0.7, 0.9), Processing(1.2), Processing(), Processing(0.7, 0.9, 1.3)]  # 2 plain, greedy, penalty

    def jobs() -> list[Job]:
        return [Job(0, [1 + i % 7, 2, 3][: 1 + i % 3], procs[i % 4], 6 + i % 5, seed=i) for i in range(12)]

    together, alone = jobs(), jobs()
    run(decoder(tiny_target, None, RoutingPolicy("never"), max_batch=12), together)
    assert max(group_sizes) == 3  # the 3 jobs of each plain processing drawn together
    assert max(read_sizes) == 6  # both processings' draws read with the argmax, in one read
    run(decoder(tiny_target, None, RoutingPolicy("never"), max_batch=1), alone)
    assert [j.out for j in together] == [j.out for j in alone]


@pytest.mark.parametrize("policy", ["always", "never"])
def test_a_sequence_whose_choice_raises_fails_alone(policy: str, tiny_target, tiny_draft) -> None:
    """A sampled sequence that bans every token (`min_tokens`, every token an end token) has no
    distribution to draw from: it fails as it joins, and those beside it decode exactly."""
    dec = decoder(tiny_target, tiny_draft, RoutingPolicy(policy, 0.5, 3), max_batch=3)
    banned = Processing(1.0, min_tokens=4, end_ids=tuple(range(VOCAB)))
    jobs = [Job(0, [1, 2, 3], Processing(), 8), Job(0, [4, 5], banned, 8), Job(0, [6, 7, 1], Processing(), 8)]
    run(dec, jobs)
    assert jobs[1].seq is not None and jobs[1].seq.error is not None and jobs[1].out == []
    for job in (jobs[0], jobs[2]):
        assert job.out == target_greedy(tiny_target, job)


@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("name", ["never", "adaptive"])
@pytest.mark.usefixtures("any_k")
def test_overlapped_steps_decode_what_steps_read_one_at_a_time_decode(
    name: str, graphs: bool, tiny_target, tiny_draft, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`BatchDecoder.overlap`: a target-only step launched on the step before's tokens, still on the device,
    before the host reads them. Greedy and seeded sampled requests of two processings, ending by their
    budget or by a stop token (so a step runs with rows that ended in the step in flight), joining as
    others leave, decode exactly what they decode with every step read before the next, token for token
    and draw for draw. A request that reads its context (a repetition penalty) or asks for
    log-probabilities, and `adaptive`'s draft rounds (k chosen at random each step, `any_k`), need what the
    host has not read: the step in flight settles first, and the overlap resumes after them."""
    landed: list[int] = []
    land = BatchDecoder._land
    monkeypatch.setattr(BatchDecoder, "_land", lambda self, step: landed.append(len(step.batch)) or land(self, step))
    procs = [Processing(), Processing(0.8, 0.9), Processing(1.1)]

    def jobs() -> list[Job]:
        made = [
            Job(i // 4, [1 + i % 7, 2, 3, 4][: 1 + i % 4], procs[i % 3], 5 + i % 7, seed=i,
                stop=(i % 5) + 1 if i % 4 == 0 else None, logprobs=i == 21)
            for i in range(28)
        ]  # fmt: skip
        made[6].proc = Processing(0.0, 1.0, 1.3)
        return made

    routing = ROUTINGS[name]
    overlapped, one_at_a_time = jobs(), jobs()
    dec = decoder(tiny_target, tiny_draft, routing, 6, graphs=graphs, overlap=True)
    forward = dec.target.forward

    def bounded(chunks: list[Chunk], *args, **kwargs):
        for chunk in chunks:  # a row thrown away too: the pass is as wide as the sequences' own positions
            seq = dec.running[chunk.slot]
            assert chunk.start + len(chunk.ids) <= len(seq.prompt) + seq.budget - 1
        return forward(chunks, *args, **kwargs)

    monkeypatch.setattr(dec.target, "forward", bounded)
    run(dec, overlapped)
    assert landed and max(landed) >= 4  # steps of several rows were read while the next one ran
    run(decoder(tiny_target, tiny_draft, routing, 6, graphs=graphs), one_at_a_time)
    # under `adaptive`, which steps draft (and so what a sampled request's draws are spent on) depends on
    # when each joined: its greedy requests only are the same token for token
    compared = [i for i, j in enumerate(overlapped) if name == "never" or j.proc.greedy]
    assert [overlapped[i].out for i in compared] == [one_at_a_time[i].out for i in compared]
    stopped = [j for j in overlapped if j.stop is not None and j.stop in j.out]
    assert stopped and all(j.out[-1] == j.stop for j in stopped if name == "never")  # nothing after a stop
    asked = [j for j in overlapped if j.logprobs]
    assert asked and all(j.seq and j.seq.logprobs and len(j.seq.logprobs[1]) == len(j.out) for j in asked)


@pytest.mark.parametrize(("policy", "overlap"), [("always", False), ("never", True)])
def test_a_cancelled_sequence_leaves_at_the_next_step(policy: str, overlap: bool, tiny_target, tiny_draft) -> None:
    """With `overlap`, the step in flight when it is cancelled emits nothing to it."""
    dec = decoder(tiny_target, tiny_draft, RoutingPolicy(policy, 0.5, 3), max_batch=2, overlap=overlap)
    a, b = Job(0, [1, 2], Processing(), 30), Job(0, [4, 5, 6], Processing(), 12)
    for job in (a, b):
        job.seq = Sequence(job.prompt, job.proc, job.budget, sink(job))
    dec.add([a.seq, b.seq])
    dec.step()
    assert a.seq is not None and b.seq is not None
    a.seq.cancelled = True
    produced = len(a.out)
    dec.step()
    assert dec.running == [b.seq] and b.seq.slot == 0 and len(a.out) == produced
    while dec.running:
        dec.step()
    assert b.out[: len(expected := target_greedy(tiny_target, b))] == expected


def test_graph_captures_are_kept_out_of_adaptives_step_times(tiny_target, tiny_draft, monkeypatch) -> None:
    """A step at shapes run for the first time captures CUDA graphs (simulated here: each new shape takes
    0.4 seconds more, counted as capture). `adaptive` never gets that time, as the step's or as overhead
    against probing: one capture cannot make a width or a plain step look 100 times dearer than it is,
    nor hold probes back for thousands of steps."""
    dec = decoder(tiny_target, tiny_draft, ROUTINGS["adaptive"], 5, length=64, graphs=True)
    steps = [dec.target.padded, dec.draft.lm.padded]
    for padded in steps:
        prepare = padded._prepare

        def capturing(*shape, padded=padded, prepare=prepare):
            time.sleep(0.4)
            padded.capture_seconds += 0.4
            return prepare(*shape)

        monkeypatch.setattr(padded, "_prepare", capturing)
    recorded = []
    record = Adaptive.record
    monkeypatch.setattr(Adaptive, "record", lambda self, *a: recorded.append(a) or record(self, *a))
    check_greedy(tiny_target, dec, 1.3)
    assert recorded and all(seconds < 0.4 and overhead < 0.4 for *_, seconds, overhead in recorded)
    assert sum(padded.capture_seconds for padded in steps) >= 0.4 * 8  # a few shapes of each, captured

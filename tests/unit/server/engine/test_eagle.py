"""EAGLE-3 drafts in the batch engine stay exact (their folder format: tests/unit/drafts).

A tiny random 4-layer Llama target (vocabulary 8, `conftest.py`) and an EAGLE-3 draft over it: started
from the target (`Eagle3Draft.init_from_target`) and perturbed, so that proposals are accepted and
rejected. Greedy: every completion equals transformers' `generate` on the target alone, under every
routing policy, in a batch, with the full head and with a pruned one. Sampling: the G-test of
`test_speculative_sampling.py` on completions sampled inside a mixed batch.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from test_batch import ROUTINGS, Job, greedy_jobs, recorded, run, sink, target_greedy
from test_speculative_sampling import ALPHA, LENGTH, PROMPT, exact_distribution, g_test_p_value

from metaspec.api.serving import PromptLookup
from metaspec.drafts import Eagle3Draft
from metaspec.server.engine.batch import BatchDecoder, Sequence
from metaspec.server.engine.eagle import FeatureDraft, FeatureModel
from metaspec.server.engine.lookup import LookupDraft, LookupFirstDraft
from metaspec.server.engine.routing import RoutingPolicy
from metaspec.server.engine.sampling import Processing
from metaspec.server.engine.slots import Chunk, PaddedSteps, SlotModel

VOCAB = 8
#: a pruned draft vocabulary holding both edges of the target's (0 and V − 1) and skipping the middle
PRUNED = torch.tensor([0, 2, 3, 7])


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def target(deep_target) -> torch.nn.Module:
    return deep_target


def eagle(target: torch.nn.Module, vocabulary: torch.Tensor | None, noise: float = 0.3) -> Eagle3Draft:
    draft = Eagle3Draft.init_from_target(target, vocabulary)
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * noise)
    return draft.eval()


@pytest.fixture(scope="module")
def full(target) -> Eagle3Draft:
    return eagle(target, None)


@pytest.fixture(scope="module")
def pruned(target) -> Eagle3Draft:
    return eagle(target, PRUNED)


def decoder(target, draft: Eagle3Draft, routing: RoutingPolicy, max_batch: int, overlap: bool = False) -> BatchDecoder:
    """`overlap`: `BatchDecoder.overlap` (a GPU's default), on here on the CPU."""
    lm = FeatureDraft(FeatureModel(draft, VOCAB, 64))
    dec = BatchDecoder(SlotModel(target, VOCAB, 64), lm, routing, max_batch)
    dec.overlap = overlap
    return dec


@pytest.mark.parametrize("head", ["full", "pruned"])
@pytest.mark.parametrize("name", ROUTINGS)
@pytest.mark.usefixtures("any_k")
def test_greedy_in_a_batch_equals_target_greedy(name: str, head: str, target, request) -> None:
    routing = ROUTINGS[name]
    dec = decoder(target, request.getfixturevalue(head), routing, max_batch=5)
    proposed: list[int] = []
    propose = dec.draft.propose

    def spy(seqs, ks, threshold):
        out = propose(seqs, ks, threshold)
        proposed.extend(t for p in out for t in p.tokens)
        return out

    dec.draft.propose = spy  # type: ignore[method-assign]
    jobs = greedy_jobs(1.3 if name == "per-token" else 1.0)
    run(dec, jobs)
    emitted = set()
    for job in jobs:
        expected = target_greedy(target, job)
        assert job.out[: len(expected)] == expected, (job.prompt, job.seq.stats if job.seq else None)
        emitted.update(job.out)
    if routing.uses_draft and name != "always-up-to-batch-3":
        accepted = sum(j.seq.stats.accepted_tokens for j in jobs if j.seq)
        assert 0 < accepted < len(proposed)
    if head == "pruned" and proposed:
        outside = set(range(VOCAB)) - set(PRUNED.tolist())
        assert not set(proposed) & outside, "a token outside the draft vocabulary was proposed"
        assert emitted & outside, "the target's own choices outside the draft vocabulary must be emitted"


def test_overlapped_steps_hand_the_draft_the_features_it_reads(target, full, monkeypatch) -> None:
    """`adaptive` between rounds of the draft runs target-only steps, which overlap (`BatchDecoder.overlap`):
    the draft observes each one's features when the host reads it, in the slots its sequences hold then
    (a sequence leaving moves the last one into its slot). So each round (every fourth step here) starts
    from the target features it starts from when every step is read in turn, to float rounding (the
    steps' batches differ by the rows thrown away), proposes the same tokens, and every completion is
    the target's own greedy one."""
    moved: list[bool] = []  # whether a row's sequence changed slots between the step's launch and its read
    land = BatchDecoder._land

    def spy(self, step) -> None:
        moved.append(any(seq.slot not in (row, -1) for row, seq in enumerate(step.batch)))
        land(self, step)

    monkeypatch.setattr(BatchDecoder, "_land", spy)
    outs, proposals, features = [], [], []
    for overlap in (True, False):
        dec = decoder(target, full, ROUTINGS["adaptive"], max_batch=5, overlap=overlap)
        assert dec.adaptive is not None
        steps = iter(range(1000))
        monkeypatch.setattr(dec.adaptive, "choose", lambda batch, steps=steps: [3 * (next(steps) % 4 == 3)])
        made = recorded(dec.draft)
        seen: list[tuple[int, list[float]]] = []  # the target features each round starts from
        propose = dec.draft.propose

        def snapshot(seqs, *args, propose=propose, seen=seen, lm=dec.draft.lm):
            seen.extend((lm.features[s.slot][0], lm.features[s.slot][1].sum(-1).tolist()) for s in seqs)
            return propose(seqs, *args)

        dec.draft.propose = snapshot
        jobs = [Job(0, [1 + i, 2, 3, 4][: 2 + i % 3], Processing(), 10 + 4 * i) for i in range(5)]
        run(dec, jobs)
        features.append(seen)
        for job in jobs:
            expected = target_greedy(target, job)
            assert job.out[: len(expected)] == expected and len(job.out) == job.budget
        outs.append([job.out for job in jobs])
        proposals.append([(p.tokens, p.accepted) for p in made])
    assert any(moved)
    assert [first for first, _ in features[0]] == [first for first, _ in features[1]]
    for (_, mine), (_, theirs) in zip(*features, strict=True):  # the same positions' features, to rounding
        torch.testing.assert_close(torch.tensor(mine), torch.tensor(theirs), rtol=1e-4, atol=1e-3)
    assert proposals[0] == proposals[1] and sum(accepted for _, accepted in proposals[0]) > 0


@pytest.mark.parametrize("head", ["full", "pruned"])
@pytest.mark.parametrize("name", ["always", "per-token"])
def test_padded_steps_hand_the_draft_the_same_features(name: str, head: str, target, request, monkeypatch) -> None:
    """With `graphs` the target's steps and the draft's run padded (replayed from CUDA graphs on a GPU) and
    the target hands the draft its features from there: output, proposals and acceptances are those of
    unpadded steps, whether the draft steps one call a token or proposes a greedy round in one call
    (`FeatureModel.chain`, chaining its own output features; not under `per-token`'s threshold)."""
    routing = ROUTINGS[name]
    chains: list[int] = []
    chain = PaddedSteps.chain

    def counted(self, chunks, k, pick, inputs=None):
        chains.append(k)
        return chain(self, chunks, k, pick, inputs)

    monkeypatch.setattr(PaddedSteps, "chain", counted)
    draft, outcomes, dec = request.getfixturevalue(head), [], None
    for graphs, chained in ((False, True), (True, False), (True, True)):
        dec = BatchDecoder(
            SlotModel(target, VOCAB, 64, graphs), FeatureDraft(FeatureModel(draft, VOCAB, 64, graphs)), routing, 5
        )
        dec.draft.chained = chained
        jobs = greedy_jobs(1.0)
        run(dec, jobs)
        outcomes.append([(j.out, j.seq.stats.proposed_tokens, j.seq.stats.accepted_tokens) for j in jobs if j.seq])
    assert outcomes[0] == outcomes[1] == outcomes[2] and sum(o[1] for o in outcomes[1]) > 0
    assert (len(chains) > 10) == (name == "always")  # the last run's rounds only
    assert dec is not None and dec.target.padded is not None and dec.draft.lm.padded is not None
    assert {t for _, t, _ in dec.target.padded.shapes} >= {1, 4}
    assert {t for _, t, _ in dec.draft.lm.padded.shapes} >= {1, 2}  # drafting steps, and catch-ups after a round
    assert {b for b, _, _ in dec.draft.lm.padded.shapes} >= {1, 2, 4}


def test_a_round_takes_in_what_the_last_one_accepted_itself(target) -> None:
    """A feature-level draft makes again, from the target's features, the entries its last round made from
    its own (`FeatureDraft.rewind`), so in steady state a round starts up to k + 1 tokens behind.
    `catch_up` (which `adaptive` runs before a round, timed apart) leaves those to the round's first step
    and takes in, in a call of its own, only what a sequence emitted while the draft sat out: here while
    two sequences ran, above `maxSpeculativeBatch`."""
    draft = eagle(target, None, noise=0.0)  # the target's logit lens, unperturbed: most proposals accepted
    dec = decoder(target, draft, RoutingPolicy("always", 0.5, 3, max_speculative_batch=1), max_batch=2)
    calls: list[list[int]] = []
    forward = dec.draft.lm.forward
    dec.draft.lm.forward = lambda chunks: calls.append([len(c.ids) for c in chunks]) or forward(chunks)  # type: ignore[method-assign]
    jobs = [Job(0, [1, 2, 3, 4], Processing(), 10), Job(0, [5, 6, 7], Processing(), 40)]
    for job in jobs:
        job.seq = Sequence(job.prompt, job.proc, job.budget, sink(job))
    dec.add([job.seq for job in jobs])
    seq, behind, caught = jobs[1].seq, [], []
    while dec.running:
        if dec.running == [seq]:  # alone: it speculates
            calls.clear()
            behind.append(len(seq.tokens) - seq.draft_length)
            with torch.inference_mode():  # as in `BatchDecoder.step`
                dec.draft.catch_up([seq], [3])
            caught.append(calls[:])
        dec.step()
    assert behind[0] > 4 and caught[0] == [[behind[0] - 1]]  # what it emitted while the draft sat out
    assert max(behind[1:]) > 2 and not any(caught[1:])  # a round's own: left to the round
    assert jobs[1].out == target_greedy(target, jobs[1])[: len(jobs[1].out)] and len(jobs[1].out) == 40


def test_sampling_in_a_batch_matches_target_distribution(target, pruned) -> None:
    """Pruned head, per-token routing, repetition penalty and top-p: every rule that reads q at once."""
    routing, proc = RoutingPolicy("per-token", 0.5, 3), Processing(1.5, 0.95, 1.2)
    dec = decoder(target, pruned, routing, max_batch=64)
    jobs = [Job(i // 64, PROMPT, proc, LENGTH, seed=i) for i in range(1500)]
    jobs += [Job(i, [i % VOCAB, 5, 6, 7], Processing(0.8), 2 + i % 5, seed=-i) for i in range(0, 24, 3)]
    run(dec, jobs)
    counts = Counter(tuple(job.out) for job in jobs[:1500])
    stats = [j.seq.stats for j in jobs[:1500] if j.seq]
    assert 0 < sum(s.accepted_tokens for s in stats) < sum(s.proposed_tokens for s in stats)
    assert g_test_p_value(counts, exact_distribution(target, proc)) >= ALPHA


@pytest.mark.parametrize("favourite", range(4))
def test_pruned_head_maps_draft_ids_to_target_ids(favourite: int, target, pruned, monkeypatch) -> None:
    """Draft id j scores target id PRUNED[j] (draft ids 0 and N − 1 are the target's 0 and V − 1);
    every target id outside the subset gets −inf, so it is never proposed."""
    assert pruned.d2t.tolist() == [0, 1, 1, 4] and pruned.t2d.nonzero().flatten().tolist() == PRUNED.tolist()
    scores = torch.zeros(1, len(PRUNED))
    scores[0, favourite] = 5.0
    monkeypatch.setattr(pruned, "logits", lambda out: scores.expand(out.shape[0], -1))
    lm = FeatureModel(pruned, VOCAB, 64)
    lm.observe(0, 0, torch.randn(3, pruned.config.hidden_size))
    logits, _ = lm.forward([Chunk(0, 0, [1, 4, 5])])
    assert int(logits[0].argmax()) == int(PRUNED[favourite])
    assert torch.isinf(logits[0, [1, 4, 5, 6]]).all() and torch.isfinite(logits[0, PRUNED]).all()


def lookup_first(target, draft: Eagle3Draft, routing: RoutingPolicy, max_batch: int) -> BatchDecoder:
    """Prompt lookup (matches of 2-3 tokens) first, the EAGLE-3 draft where it finds none."""
    lookup = LookupDraft(PromptLookup(min_match=2, max_match=3), VOCAB, 64, torch.device("cpu"))
    both = LookupFirstDraft(lookup, FeatureDraft(FeatureModel(draft, VOCAB, 64)))
    return BatchDecoder(SlotModel(target, VOCAB, 64), both, routing, max_batch)


@pytest.mark.parametrize("name", ["always", "adaptive"])
@pytest.mark.usefixtures("any_k")
def test_greedy_with_lookup_first_equals_target_greedy(name: str, target, full, caplog) -> None:
    """Rounds of lookup and rounds of the draft interleave within a sequence: the draft then takes in what
    lookup's rounds added (with the target's features of those positions) before it drafts again, without
    failing (a failed proposal would decode that step target-only, exact but slower). Each request's
    stats count lookup's proposals apart from the draft's."""
    dec = lookup_first(target, full, ROUTINGS[name], max_batch=5)
    assert isinstance(dec.draft, LookupFirstDraft)
    looked_up, drafted = recorded(dec.draft.lookup), recorded(dec.draft.model)
    jobs = greedy_jobs(1.0)
    run(dec, jobs)
    for job in jobs:
        expected = target_greedy(target, job)
        assert job.out[: len(expected)] == expected, (job.prompt, job.seq.stats if job.seq else None)
    assert looked_up and drafted and "draft proposal failed" not in caplog.text
    proposals = looked_up + drafted
    assert 0 < sum(p.accepted for p in proposals) < sum(len(p.tokens) for p in proposals)
    stats = [job.seq.stats for job in jobs if job.seq]
    for field, made in (("proposed", lambda p: len(p.tokens)), ("accepted", lambda p: p.accepted)):
        assert sum(getattr(s, f"lookup_{field}_tokens") for s in stats) == sum(made(p) for p in looked_up) > 0
        assert sum(getattr(s, f"{field}_tokens") for s in stats) == sum(made(p) for p in proposals)


def test_sampling_with_lookup_first_matches_target_distribution(target, full) -> None:
    """Each round's proposals carry their own proposer's q (lookup's one-hot, the draft's distribution)."""
    routing, proc = RoutingPolicy("always", 0.5, 3), Processing(1.0)
    dec = lookup_first(target, full, routing, max_batch=64)
    assert isinstance(dec.draft, LookupFirstDraft)
    looked_up, drafted = recorded(dec.draft.lookup), recorded(dec.draft.model)
    prompt = [1, 2, 3, 1, 2]  # "1 2" repeats: lookup proposes at the start, the draft after
    jobs = [Job(i // 64, prompt, proc, LENGTH, seed=i) for i in range(1500)]
    run(dec, jobs)
    outcomes = Counter(tuple(job.out) for job in jobs)
    assert looked_up and drafted
    assert g_test_p_value(outcomes, exact_distribution(target, proc, prompt)) >= ALPHA

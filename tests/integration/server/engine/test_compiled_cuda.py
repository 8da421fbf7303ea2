"""The compiled CUDA paths decode what the eager paths decode: at batch 1 static caches, CUDA graphs and
a draft round in one graph; in batches decode steps, verify passes and a draft's greedy rounds replayed
from CUDA graphs (`PaddedSteps`), with Liger's fused kernels where liger-kernel is installed (and then
target-only at batch 1 too).
SmolLM2-135M-Instruct with its 4-layer cut or an EAGLE-3 draft (started from the target, perturbed),
float32 on the GPU, greedy with and without a repetition
penalty. Skipped without a CUDA GPU (the `gpu` marker): CUDA graphs exist only there; the CPU tests run
the same round, and the same padded steps, eagerly."""

from __future__ import annotations

import copy
import importlib.util
import itertools

import pytest
import torch

from metaspec import builtin
from metaspec.drafts import Eagle3Draft
from metaspec.prompts import chat_prompt_ids
from metaspec.server.engine import SamplingParams, SpeculativeEngine
from metaspec.server.engine.batch import BatchDecoder, Sequence
from metaspec.server.engine.drafts import ModelDraft
from metaspec.server.engine.eagle import FeatureDraft, FeatureModel
from metaspec.server.engine.protocol import RequestStats
from metaspec.server.engine.routing import RoutingPolicy
from metaspec.server.engine.sampling import Processing
from metaspec.server.engine.slots import SlotModel
from metaspec.server.engine.speculative import CausalLM, SpeculativeDecoder

pytestmark = [pytest.mark.gpu, pytest.mark.slow]

K = 4
TOKENS = 24


@pytest.fixture(scope="module")
def cuda_models(smollm2_models):
    target, draft, tokenizer = smollm2_models
    vocab = target.config.vocab_size
    return copy.deepcopy(target).cuda(), copy.deepcopy(draft).cuda(), tokenizer, vocab


def decode(decoder: SpeculativeDecoder, prompt: list[int], proc: Processing) -> tuple[list[int], RequestStats]:
    stats = RequestStats()
    return [t for chunk in decoder.decode(prompt, proc, TOKENS, stats, None) for t in chunk], stats


@pytest.mark.parametrize("policy", ["always", "per-token", "never"])
def test_compiled_decodes_like_eager(policy: str, cuda_models) -> None:
    target, draft, tokenizer, vocab = cuda_models
    torch._dynamo.config.recompile_limit = 64  # each parametrization compiles the shared Llama code anew
    routing = RoutingPolicy(policy, 0.5, K)
    eager = SpeculativeDecoder(CausalLM(target, vocab), CausalLM(draft, vocab), routing)
    options = {"static_cache_len": 512, "compile": True, "compile_max_tokens": K + 1}
    compiled_draft = CausalLM(draft, vocab, **options)
    rounds = []
    propose = compiled_draft.propose
    compiled_draft.propose = lambda *args: rounds.append(args[-1]) or propose(*args)
    compiled = SpeculativeDecoder(CausalLM(target, vocab, **options), compiled_draft, routing)
    prompts = [chat_prompt_ids(tokenizer, r.input) for r in builtin.records("prompts")[:4]]
    for prompt, proc in itertools.product(prompts, (Processing(), Processing(0.0, 1.0, 1.3))):
        expected, _ = decode(eager, prompt, proc)
        got, stats = decode(compiled, prompt, proc)
        assert got == expected, (policy, proc, stats)
    # `always` proposes each greedy round in one graph; `per-token` steps, `never` has no draft
    assert bool(rounds) == (policy == "always") and set(rounds) <= {K}
    assert compiled.target.capture_seconds > 0  # compiling and recording: kept out of `adaptive`'s times


def decode_batch(dec: BatchDecoder, prompts: list[list[int]], procs: list[Processing]) -> list[list[int]]:
    """Every prompt through `dec`, three joining every other step (the batch and its caches grow as they come)."""
    outs: list[list[int]] = [[] for _ in prompts]
    waiting = list(range(len(prompts)))
    step = 0
    while waiting or dec.running:
        if step % 2 == 0 and waiting:
            joining, waiting = waiting[:3], waiting[3:]
            dec.add(
                [Sequence(prompts[i], procs[i], TOKENS, lambda t, o=outs[i]: o.extend(t) and False) for i in joining]
            )
        dec.step()
        step += 1
    return outs


def eagle3(target: torch.nn.Module) -> Eagle3Draft:
    """An EAGLE-3 draft over `target` whose attention and MLP count: the target's logit lens, perturbed."""
    draft = Eagle3Draft.init_from_target(target, torch.arange(0, 4096, device=target.device))
    generator = torch.Generator(target.device).manual_seed(5)
    with torch.no_grad():
        for weight in draft.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator, device=target.device) * 0.02)
    return draft.eval()


@pytest.mark.parametrize(
    ("policy", "kind", "penalty"),
    [
        ("never", None, 1.3),
        ("always", "cut", 1.3),
        ("always", "eagle3", 1.3),
        ("always", "cut", 1.0),
        ("always", "eagle3", 1.0),
    ],
)
def test_batched_graphs_decode_like_eager(policy: str, kind: str | None, penalty: float, cuda_models) -> None:
    """Half the prompts with a repetition penalty (the draft steps one call a token), or none (the draft
    proposes each round in one graph: `PaddedSteps.chain`)."""
    target, draft, tokenizer, vocab = cuda_models
    routing = RoutingPolicy(policy, 0.5, K)
    prompts = [chat_prompt_ids(tokenizer, r.input) for r in builtin.records("prompts")[:10]]
    procs = [Processing(0.0, 1.0, penalty if i % 2 else 1.0) for i in range(len(prompts))]
    features = eagle3(target) if kind == "eagle3" else None
    decoders = []
    for graphs in (False, True):
        lm = None
        if kind == "cut":
            lm = ModelDraft(SlotModel(draft, vocab, 1024, graphs))
        elif features is not None:
            lm = FeatureDraft(FeatureModel(features, vocab, 1024, graphs))
        decoders.append(BatchDecoder(SlotModel(target, vocab, 1024, graphs), lm, routing, max_batch=8))
    expected, got = (decode_batch(dec, prompts, procs) for dec in decoders)
    assert got == expected
    for lm in (decoders[1].target, *([decoders[1].draft.lm] if kind else [])):
        assert lm.padded is not None and lm.padded.capture and lm.padded.shapes  # captured, not fallen back
        # Liger's fused kernels in the graphs wherever it is installed (the `cuda` extra), and still exact
        assert lm.padded.fused == (importlib.util.find_spec("liger_kernel") is not None)
    if kind:
        chained = any(key[0] == "chain" for key in decoders[1].draft.lm.padded._runs)
        assert chained == (penalty == 1.0)


def test_overlapped_steps_decode_what_steps_read_one_at_a_time_decode(cuda_models) -> None:
    """`BatchDecoder.overlap` (a GPU's default): each target-only step launched on the step before's tokens
    while they are still on the GPU, read through pinned memory behind an event. Greedy and seeded sampled
    requests (each its own CUDA generator), joining as others leave, decode token for token what they
    decode with every step read before the next."""
    target, _, tokenizer, vocab = cuda_models
    prompts = [chat_prompt_ids(tokenizer, r.input) for r in builtin.records("prompts")[:10]]
    procs = [Processing(0.8, 0.9) if i % 2 else Processing() for i in range(len(prompts))]
    outs = []
    for overlap in (True, False):
        dec = BatchDecoder(SlotModel(target, vocab, 1024, True), None, RoutingPolicy("never"), max_batch=8)
        assert dec.overlap
        dec.overlap = overlap
        seeds = iter(range(len(prompts)))
        add = dec.add

        def seeded(seqs: list[Sequence], add=add, seeds=seeds) -> None:
            for seq in seqs:
                seq.generator = torch.Generator(target.device).manual_seed(next(seeds))
            add(seqs)

        dec.add = seeded  # type: ignore[method-assign]
        landed: list[int] = []
        land = dec._land
        dec._land = lambda step, land=land, landed=landed: landed.append(len(step.batch)) or land(step)  # type: ignore[method-assign]
        outs.append(decode_batch(dec, prompts, procs))
        assert bool(landed) == overlap and max(landed, default=8) >= 3
    assert outs[0] == outs[1]
    assert all(len(out) == TOKENS for out in outs[0])


def test_target_only_at_a_batch_of_one_replays_fused_graphs_where_liger_is(cuda_models) -> None:
    """`compile` with no draft at maxConcurrency 1: where liger-kernel is installed the engine serves through
    the batch decoder's fused graphs (faster there than the sequential decoder), and decodes what the eager
    engine decodes."""
    target, _, tokenizer, _ = cuda_models
    never = RoutingPolicy("never", 0.5, K)
    engines = [
        SpeculativeEngine.from_models(
            target, None, tokenizer, never, static_cache_len=512, compile=compile, max_batch=1
        )
        for compile in (False, True)
    ]
    liger = importlib.util.find_spec("liger_kernel") is not None
    assert (engines[1].sequential is None) == liger
    params = SamplingParams(max_tokens=TOKENS)
    for record in builtin.records("prompts")[:4]:
        prompt = chat_prompt_ids(tokenizer, record.input)
        expected, got = ([t for d in engine.generate_here(prompt, params) for t in d.token_ids] for engine in engines)
        assert got == expected
    if liger:  # the batch decoder served: its cache was allocated once, up front (`BatchDecoder.reserve`)
        assert engines[1].decoder is not None and engines[1].decoder.target.cache.allocations == 1

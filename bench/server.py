"""Batch-1 decode speed of speculative serving, side by side on the same prompts and greedy outputs.

Methods: transformers `generate` on the target alone (what a user would run), transformers assisted
generation with the same draft (`assistant_model=`, constant k), and the metaspec engine under each
routing policy (`never` = our own target-only path, the baseline for the gain from speculation alone).
With `--lookup MIN MAX` also prompt lookup, ours (`promptLookup`, no draft model) and transformers'
(`prompt_lookup_num_tokens`). Every method must produce the same greedy tokens; mismatches are counted
and reported. Eagerly, the methods take turns prompt by prompt. `--temperature T` samples instead (every
method at temperature T alone, seeded per prompt): tokens/s and acceptance under sampling, where the
outputs differ from method to method and only their distribution is exact.

    python bench/server.py                                  # CPU, SmolLM2 target, 4-layer derived draft
    python bench/server.py --draft s3://bucket/drafts/x     # a trained draft from the pipeline
    python bench/server.py --policies never --lookup 2 5 -k 3   # prompt lookup against target-only
    python bench/server.py --device cuda --dtype bfloat16 [--compile]
    python bench/server.py --device cuda --dtype bfloat16 --arch llama-8b --arch-draft llama-1b  # random init

Prompts: by default the held-out `builtin://prompts` split, spread over its domains and difficulties —
the traffic a draft trained by the pipeline on the built-in data is meant for; `--prompt-set general`
uses a dozen everyday questions outside that distribution instead.

An EAGLE-3 draft (and a draft behind prompt lookup) is served by the batch decoder even at batch 1, so
`ours-never` is that decoder's target-only path; row `ours-never-alone` is then our target-only path
without the draft, as SpecServe serves it at `maxConcurrency` 1 (the batch decoder where Liger-Kernel fuses
its graphs, else the sequential decoder, compiled with `--compile`), and `speedup_vs_ours_never_alone` the
gain over it.

A derived draft (the target's first layers, untrained) agrees with the target on few tokens: it measures
the machinery's overhead, not the speedup a trained draft gives. Results: a table on stdout and JSON in
bench/results/.

Ours runs the models as the server does: on the CPU, copies with their linear layers packed for oneDNN
(`_common.served`); transformers' methods run them as transformers loads them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).parent))
from _common import served

from metaspec.api.serving import PromptLookup
from metaspec.artifacts import materialize
from metaspec.builtin import records
from metaspec.causal_lm import load_causal_lm
from metaspec.drafts import Eagle3Draft, is_eagle3, load_eagle3
from metaspec.local.bundled import bundled_model_dir
from metaspec.prompts import chat_prompt_ids
from metaspec.server.engine import LookupFirst, RoutingPolicy, SamplingParams, SpeculativeEngine
from metaspec.server.engine.drafts import ModelDraft
from metaspec_testing.models import cut_draft

RESULTS = Path(__file__).parent / "results"
POLICIES = ("never", "always", "first-token", "per-token")
WARM_UP = "Say hello in three languages."
GENERAL_PROMPTS = [
    "What is the capital of France?",
    "Explain photosynthesis in two sentences.",
    "Write a Python function that checks whether a number is prime.",
    "List three tips for staying focused while studying.",
    "What is 17 times 23? Show your steps.",
    "Summarize the plot of Romeo and Juliet in a few sentences.",
    "Why is the sky blue?",
    "Give me a short recipe for pancakes.",
    "What are the differences between a list and a tuple in Python?",
    "Describe the water cycle.",
    "Translate 'Where is the train station?' into French and German.",
    "Write a haiku about the ocean.",
]
#: random-init architectures (no download): the seed's target and drafts of two sizes
ARCHS = {
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32),
    "llama-1b": dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, tie_word_embeddings=True
    ),
    "llama-160m": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=4
    ),
    # one 16-wide layer: next to the host's work per step, its compute is nothing
    "host": dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1
    ),
}


def random_llama(name: str, device: str, dtype: torch.dtype) -> LlamaForCausalLM:
    config = LlamaConfig(
        **{
            "vocab_size": 128256,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "rope_theta": 500000.0,
            "eos_token_id": None,
            **ARCHS[name],
        }
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def load(uri: str | Path, device: str, dtype: torch.dtype, target: Any = None) -> Any:
    """A causal LM, or given its `target`, an EAGLE-3 draft folder over it."""
    local, _ = materialize(uri, Path(tempfile.gettempdir()) / "metaspec-bench-cache")
    if target is not None and is_eagle3(local):
        return load_eagle3(local, target.get_input_embeddings(), target.config).to(device, dtype)
    model = load_causal_lm(local, dtype)
    return model.to(device).eval()


def prompt_texts(prompt_set: str, n: int) -> list[str]:
    """`n` prompts: held-out built-in prompts evenly spread over the split, or the general ones."""
    if prompt_set == "general":
        return GENERAL_PROMPTS[:n]
    held_out = [r.input for r in records("prompts")]
    return held_out[:: max(1, len(held_out) // n)][:n]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_hf(
    target: Any, prompt: list[int], args: argparse.Namespace, assistant: Any = None, lookup: bool = False
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if lookup:  # transformers' prompt lookup decoding: k tokens after a match of up to the longest n-gram
        extra |= {"prompt_lookup_num_tokens": args.k, "max_matching_ngram_size": args.lookup[1]}
    if assistant is not None:
        assistant.generation_config.num_assistant_tokens = args.k
        assistant.generation_config.num_assistant_tokens_schedule = "constant"
        assistant.generation_config.assistant_confidence_threshold = 0.0
        extra["assistant_model"] = assistant
    # transformers' assisted generation refuses a static cache with a draft; with prompt lookup it takes
    # one, and its compiled forward then hit a device-side index assert on the H100 (transformers 5.25)
    if args.compile and assistant is None and not lookup:
        extra["cache_implementation"] = "static"
    if args.temperature:  # the distribution ours samples from: temperature alone, no top-k/top-p cut
        extra |= {"do_sample": True, "temperature": args.temperature, "top_k": 0, "top_p": 1.0}
        torch.manual_seed(len(prompt))
    else:
        extra["do_sample"] = False
    ids = torch.tensor([prompt], device=args.device)
    sync(args.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = target.generate(ids, max_new_tokens=args.max_tokens, **extra)
    sync(args.device)
    return {"ids": out[0, len(prompt) :].tolist(), "seconds": time.perf_counter() - start}


def run_ours(engine: SpeculativeEngine, prompt: list[int], args: argparse.Namespace) -> dict[str, Any]:
    sync(args.device)
    start = time.perf_counter()
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=len(prompt))
    deltas = engine.generate_here(prompt, params)
    sync(args.device)
    seconds = time.perf_counter() - start
    final = deltas[-1]
    ids = [t for d in deltas for t in d.token_ids]
    if final.finish_reason == "stop" and final.stats.completion_tokens > len(ids):
        ids.append(-1)  # the end-of-turn token, left out of the text; matched against `generate`'s below
    return {"ids": ids, "seconds": seconds, "stats": final.stats}


def same(ours: list[int], reference: list[int], stop_ids: set[int]) -> bool:
    if ours and ours[-1] == -1:
        return ours[:-1] == reference[:-1] and bool(reference) and reference[-1] in stop_ids
    return ours == reference


def summarize(
    name: str, runs: list[dict[str, Any]], reference: list[dict[str, Any]], stop_ids: set[int], sampled: bool
) -> dict:
    tokens = sum(len(r["ids"]) for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    row: dict[str, Any] = {
        "method": name,
        "tokens": tokens,
        "seconds": round(seconds, 4),
        "tokens_per_second": round(tokens / seconds, 2),
        "ms_per_token": round(1000 * seconds / tokens, 2),
        "mismatches": sum(not same(r["ids"], ref["ids"], stop_ids) for r, ref in zip(runs, reference, strict=True)),
    }
    if sampled:  # samples differ from run to run: what is exact is their distribution (the G-tests' business)
        row["mismatches"] = None
    stats = [r["stats"] for r in runs if "stats" in r]
    if stats:
        proposed = sum(s.proposed_tokens for s in stats)
        row["acceptance_rate"] = round(sum(s.accepted_tokens for s in stats) / proposed, 4) if proposed else None
        row["speculation_rate"] = round(sum(s.route == "speculative" for s in stats) / len(stats), 4)
        row["tokens_per_round"] = round(sum(s.completion_tokens for s in stats) / sum(s.rounds for s in stats), 3)
        row["mean_ttft_ms"] = round(1000 * statistics.mean(s.time_to_first_token or 0 for s in stats), 2)
    return row


def models(args: argparse.Namespace, dtype: torch.dtype) -> tuple[Any, Any, Any, str]:
    tokenizer_dir = bundled_model_dir()
    if args.arch:
        target = random_llama(args.arch, args.device, dtype)
        draft = random_llama(args.arch_draft, args.device, dtype)
        return target, draft, AutoTokenizer.from_pretrained(tokenizer_dir), f"random {args.arch} + {args.arch_draft}"
    target_uri = args.target or str(tokenizer_dir)
    draft_uri = args.draft
    label = f"draft {draft_uri}"
    if draft_uri is None:
        draft_uri = str(Path(tempfile.mkdtemp()) / "derived-draft")
        cut_draft(Path(materialize(target_uri, Path(tempfile.gettempdir()))[0]), Path(draft_uri), args.draft_layers)
        label = f"derived draft: first {args.draft_layers} layers of the target, untrained"
    tokenizer = AutoTokenizer.from_pretrained(materialize(target_uri, Path(tempfile.gettempdir()))[0])
    target = load(target_uri, args.device, dtype)
    return target, load(draft_uri, args.device, dtype, target), tokenizer, label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", help="draft model URI (default: derived from the target, untrained)")
    parser.add_argument("--draft-layers", type=int, default=4, help="layers of a derived draft")
    parser.add_argument("--arch", choices=["llama-8b"], help="random-init target architecture (no download)")
    parser.add_argument("--arch-draft", default="llama-1b", choices=["llama-1b", "llama-160m"])
    parser.add_argument("--prompts", type=int, default=6, help="prompts to run")
    parser.add_argument("--prompt-set", default="builtin", choices=["builtin", "general"])
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("-k", type=int, default=5, help="maxSpeculativeTokens")
    parser.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="sample at this temperature (seeded per prompt) instead of greedy decoding: outputs then differ "
        "between methods, so mismatches are not counted",
    )
    parser.add_argument(
        "--also-k", type=int, nargs="*", default=[], help="more k for `always`: rows ours-always-k<K> (one run)"
    )
    parser.add_argument(
        "--stepwise",
        action="store_true",
        help="also row ours-always-stepwise: `always` with the batch decoder's draft stepping one call a token "
        "instead of proposing a greedy round in one call (`ModelDraft.chained`)",
    )
    parser.add_argument(
        "--serial",
        action="store_true",
        help="also rows ours-never-serial, the batch decoder's target-only steps read one at a time "
        "(`BatchDecoder.overlap` off), and ours-always-read-first, `always` with the host reading each round's "
        "proposals before the target's pass over them (`ModelDraft.left_on_device` off)",
    )
    parser.add_argument(
        "--policies", nargs="+", default=list(POLICIES), choices=[*POLICIES, "adaptive"], help="policies to run"
    )
    parser.add_argument("--threshold", type=float, default=0.7, help="confidenceThreshold")
    parser.add_argument(
        "--lookup",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="also prompt lookup with these minMatch and maxMatch: rows ours-lookup-<adaptive|always> and "
        "hf-prompt-lookup (transformers' prompt lookup decoding, k tokens, n-grams up to MAX)",
    )
    parser.add_argument(
        "--lookup-history",
        type=int,
        default=0,
        help="with --lookup, also row ours-lookup-history-adaptive: promptLookup.history of this many tokens "
        "(the engine keeps the prompts decoded before, in the order they run)",
    )
    parser.add_argument(
        "--lookup-first",
        action="store_true",
        help="with --lookup, also the draft behind lookup (`draft` and `promptLookup` both set): rows "
        "ours-lookup-draft-adaptive, and with --lookup-history ours-lookup-history-draft-adaptive",
    )
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile (CUDA)")
    parser.add_argument(
        "--passes",
        type=int,
        default=1,
        help="with --compile, decode the prompts this many times per method and measure the last pass: the "
        "batch decoder captures a CUDA graph for each new shape as it comes, which a first pass over new "
        "lengths measures too",
    )
    parser.add_argument(
        "--cache-len", type=int, default=1024, help="static cache length (compiled): attention spans all of it"
    )
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/server-<device>-<model>.json)")
    args = parser.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    if args.compile:  # HF generate's static-cache compilation and ours share the model's forward code
        torch._dynamo.config.recompile_limit = 32
    target, draft, tokenizer, label = models(args, dtype)
    ours, ours_draft = served(target), served(draft)  # transformers' methods run the models as loaded
    prompts = [chat_prompt_ids(tokenizer, text) for text in prompt_texts(args.prompt_set, args.prompts)]
    # one engine's models (and compiled graphs) decode under every policy: compiling per policy would
    # measure four compilations and exhaust dynamo's recompile limit for the shared forward code
    first = SpeculativeEngine.from_models(
        ours,
        ours_draft,
        tokenizer,
        RoutingPolicy(POLICIES[0], args.threshold, args.k),
        static_cache_len=args.cache_len if args.compile else None,
        compile=args.compile,
        max_batch=1,  # batch-1 decoding: the sequential decoder (compiled on CUDA)
    )
    engines = {
        p: first.with_routing(RoutingPolicy(p, args.threshold, args.k))
        for p in dict.fromkeys(["never", *args.policies])
    }
    if first.sequential is None:  # the draft is served by the batch decoder: our target-only path without it
        engines["never-alone"] = SpeculativeEngine.from_models(
            ours,
            None,
            tokenizer,
            RoutingPolicy("never", args.threshold, args.k),
            static_cache_len=args.cache_len if args.compile else None,
            compile=args.compile,
            max_batch=1,
        )
    if args.stepwise:  # what a round in one call saves (a draft at batch 1 in the batch decoder: EAGLE-3)
        engine = first.with_routing(RoutingPolicy("always", args.threshold, args.k))
        if engine.decoder is None or not isinstance(engine.decoder.draft, ModelDraft):
            parser.error("--stepwise needs a draft that the batch decoder serves at batch 1 (an EAGLE-3 draft)")
        engine.decoder.draft.chained = False
        engines["always-stepwise"] = engine
    if args.serial:  # what overlapped steps and rounds read once save (the batch decoder at batch 1: EAGLE-3)
        serial, read_first = (first.with_routing(RoutingPolicy(p, args.threshold, args.k)) for p in ("never", "always"))
        if first.sequential is not None or not isinstance(read_first.decoder.draft, ModelDraft):
            parser.error("--serial needs a draft that the batch decoder serves at batch 1 (an EAGLE-3 draft)")
        serial.decoder.overlap, read_first.decoder.draft.left_on_device = False, False
        engines |= {"never-serial": serial, "always-read-first": read_first}
    for k in args.also_k:  # another k is another verify length: an engine of its own over the same models
        routing = RoutingPolicy("always", args.threshold, k)
        engines[f"always-k{k}"] = SpeculativeEngine.from_models(
            ours,
            ours_draft,
            tokenizer,
            routing,
            static_cache_len=args.cache_len if args.compile else None,
            compile=args.compile,
            max_batch=1,
        )
    if args.lookup:  # no draft model: a lookup proposes in the sequential decoder (compiled with --compile)
        variants = {"lookup-adaptive": ("adaptive", 0), "lookup-always": ("always", 0)}
        if args.lookup_history:
            variants["lookup-history-adaptive"] = ("adaptive", args.lookup_history)
        if args.lookup_first:
            variants |= {f"{name}-draft": variant for name, variant in variants.items() if variant[0] == "adaptive"}
        for name, (policy, history) in variants.items():
            proposer: Any = PromptLookup(min_match=args.lookup[0], max_match=args.lookup[1], history=history)
            if name.endswith("-draft"):  # served in batches of one by the batch decoder
                proposer = LookupFirst(proposer, ours_draft)
            routing = RoutingPolicy(policy, args.threshold, args.k)
            cache_len = args.cache_len if args.compile else None
            engines[name] = SpeculativeEngine.from_models(
                ours, proposer, tokenizer, routing, static_cache_len=cache_len, compile=args.compile, max_batch=1
            )
    # ours first: transformers' own static-cache compilation of the same forward, run before ours,
    # left our compiled `always` path re-recording graphs (10+ s per prompt on the H100)
    methods = {
        **{f"ours-{policy}": (lambda p, e=engine: run_ours(e, p, args)) for policy, engine in engines.items()},
        "hf-generate": lambda p: run_hf(target, p, args),
    }
    if not isinstance(draft, Eagle3Draft):  # transformers' assisted generation takes causal LMs only
        methods["hf-assisted"] = lambda p: run_hf(target, p, args, assistant=draft)
    if args.lookup:
        methods["hf-prompt-lookup"] = lambda p: run_hf(target, p, args, lookup=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in methods}
    if args.compile:  # each method compiles, then runs every prompt: switching can re-record graphs (above)
        for name, method in methods.items():
            method(prompts[0])
            for _ in range(args.passes - 1):
                for prompt in prompts:
                    method(prompt)
            runs[name] = [method(p) for p in prompts]
    else:  # methods take turns per prompt, so drift in a shared machine's load hits them all alike
        warm_up = chat_prompt_ids(tokenizer, WARM_UP)  # not a measured prompt: lookup's history would know it
        for method in methods.values():
            method(warm_up)
        for prompt in prompts:
            for name, method in methods.items():
                runs[name].append(method(prompt))
    print(f"  {len(prompts)} prompts x {len(methods)} methods: done", file=sys.stderr)
    stop_ids = set(engines["never"]._stop_ids)
    rows = [summarize(name, r, runs["hf-generate"], stop_ids, bool(args.temperature)) for name, r in runs.items()]
    base = {r["method"]: r["tokens_per_second"] for r in rows}
    for row in rows:
        row["speedup_vs_hf_generate"] = round(row["tokens_per_second"] / base["hf-generate"], 3)
        row["speedup_vs_ours_never"] = round(row["tokens_per_second"] / base["ours-never"], 3)
        if "ours-never-alone" in base:
            row["speedup_vs_ours_never_alone"] = round(row["tokens_per_second"] / base["ours-never-alone"], 3)
        assisted = base.get("hf-assisted")
        row["speedup_vs_hf_assisted"] = round(row["tokens_per_second"] / assisted, 3) if assisted else None
    report(rows, args, label)
    result = {
        "benchmark": "server batch-1 decode",
        "models": label,
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "rows": rows,
    }
    out = args.out or RESULTS / f"server-{args.device}-{args.arch or 'smollm2'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 1 if any(r["mismatches"] for r in rows) else 0


def report(rows: list[dict[str, Any]], args: argparse.Namespace, label: str) -> None:
    decode = f"sampled (temperature {args.temperature})" if args.temperature else "greedy"
    print(f"\nbatch-1 {decode} decode, {args.device} {args.dtype}, {label}, k={args.k}, threshold={args.threshold}")
    header = f"{'method':<22}{'tok/s':>9}{'ms/tok':>9}{'×gen':>7}{'×never':>8}{'×assist':>8}{'accept':>8}{'spec':>6}{'tok/rnd':>8}{'mism':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        print(
            f"{r['method']:<22}{r['tokens_per_second']:>9.2f}{r['ms_per_token']:>9.2f}"
            f"{r['speedup_vs_hf_generate']:>7.2f}{r['speedup_vs_ours_never']:>8.2f}"
            f"{fmt(r['speedup_vs_hf_assisted'], '.2f'):>8}"
            f"{fmt(r.get('acceptance_rate'), '.2f'):>8}{fmt(r.get('speculation_rate'), '.2f'):>6}"
            f"{fmt(r.get('tokens_per_round'), '.2f'):>8}{fmt(r['mismatches'], 'd'):>6}"
        )


if __name__ == "__main__":
    sys.exit(main())

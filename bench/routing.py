"""Routing: which policy and threshold pay, and does the draft's first-token confidence predict acceptance?

    .venv/bin/python bench/routing.py --smoke --target DIR --draft DIR              # CPU, tiny sizes
    python bench/draft.py --device cuda --target /tmp/anil --layers 4 --serve --work /tmp/anil-draft
    python bench/routing.py --device cuda --compile --target /tmp/anil --draft /tmp/anil-draft/draft-4/model

The seed routes each request by the draft's confidence in the first token (threshold 0.7, k = 5) and
claims 75% acceptance and a 3× speedup. On the inputs of the first `--prompts` held-out built-in
records (`builtin://eval`: easy and hard, every domain, none seen by the target's or the draft's
training; `--split prompts` for the teacher prompts), greedy, batch 1, with the metaspec engine (`metaspec.server.engine`, one engine
whose models and compiled graphs every policy shares), for `never`, `always`, and `first-token` and
`per-token` at each `--thresholds` value: acceptance rate (accepted / proposed draft tokens),
speculation rate (requests decoded speculatively), tokens/s, speedup over `never` (our own target-only
path with the same cache/compile settings), tokens per target pass, and outputs differing from
`never`'s (greedy speculative decoding must reproduce them; bf16 kernels may round differently).

Confidence = the draft's max softmax probability (temperature 1) for a position, given the prompt and
the target's greedy tokens before it (what the draft sees when it proposes that token). Measured at:

    first token    the first generated position (what `first-token` routing reads)
    content token  the first generated token that carries answer content: the first position i whose
                   decoded output prefix, after removing a leading answer label `Answer:` (every
                   built-in answer starts "Answer: …"; a prefix that is still part of the label counts
                   as label), contains a letter or digit. For "Answer: 11" that is the token of "1";
                   for an output without the label it is its first alphanumeric token.

Per request, the confidences are correlated (Pearson and Spearman, with n) with its acceptance rate
under `always`. The draft (`--draft DIR`) is the pipeline's: `bench/draft.py --target DIR` generates
the target's own outputs for the training inputs and distils a draft cut from the target on them.
Writes `bench/results/routing-<device>.json`; histograms and tables: `bench/plots.py`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, served, setup, sync, write_result

from metaspec.causal_lm import load_causal_lm
from metaspec.datasets import read_records
from metaspec.local.bundled import bundled_model_dir
from metaspec.prompts import chat_prompt_ids
from metaspec.records import Record
from metaspec.server.engine import RequestStats, RoutingPolicy, SamplingParams, SpeculativeEngine

LABEL = "Answer:"
DEFAULT_THRESHOLDS = "0.5,0.6,0.7,0.8,0.9"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "routing")
    parser.add_argument("--target", type=Path, help="target model dir (default: the bundled SmolLM2)")
    parser.add_argument("--draft", type=Path, required=True, help="trained draft dir (bench/draft.py makes one)")
    parser.add_argument("--split", default="eval", choices=["eval", "prompts"], help="built-in split to prompt with")
    parser.add_argument("--prompts", type=int, help="its first N inputs (default: cuda 32, cpu 6)")
    parser.add_argument("--max-tokens", type=int, help="new tokens per request (default: cuda 128, cpu 32)")
    parser.add_argument("-k", type=int, default=5, help="maxSpeculativeTokens")
    parser.add_argument("--thresholds", default=DEFAULT_THRESHOLDS)
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile (CUDA only)")
    parser.add_argument(
        "--cache-len", type=int, default=1024, help="static cache length (compiled): attention spans all of it"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompts, args.max_tokens = args.prompts or 2, args.max_tokens or 8
    args.prompts = args.prompts or (32 if args.device == "cuda" else 6)
    args.max_tokens = args.max_tokens or (128 if args.device == "cuda" else 32)
    args.target = args.target or bundled_model_dir()
    return args


def load(path: Path, device: torch.device, dtype: torch.dtype) -> Any:
    return served(load_causal_lm(path, dtype).to(device).eval())  # as the server runs it


def policies(args: argparse.Namespace) -> list[RoutingPolicy]:
    thresholds = [float(t) for t in args.thresholds.split(",")]
    fixed = [RoutingPolicy("never", 1.0, args.k), RoutingPolicy("always", 0.0, args.k)]
    by_threshold = [RoutingPolicy(p, t, args.k) for p in ("first-token", "per-token") for t in thresholds]
    return fixed + by_threshold


def label(policy: RoutingPolicy) -> str:
    return policy.policy if policy.policy in ("never", "always") else f"{policy.policy}@{policy.threshold:g}"


def decode(engine: SpeculativeEngine, prompt: list[int], max_tokens: int, device: torch.device) -> dict[str, Any]:
    """One greedy request: its tokens (the end-of-turn token as -1), wall time and stats."""
    sync(device)
    started = time.perf_counter()
    deltas = engine.generate_here(prompt, SamplingParams(max_tokens=max_tokens))
    sync(device)
    stats: RequestStats = deltas[-1].stats
    ids = [t for d in deltas for t in d.token_ids]
    if stats.completion_tokens > len(ids):
        ids.append(-1)
    return {"ids": ids, "seconds": time.perf_counter() - started, "stats": stats}


def run_policies(
    engine: SpeculativeEngine, prompts: list[list[int]], args: argparse.Namespace, device: torch.device
) -> dict[str, list[dict[str, Any]]]:
    """Every policy decodes every prompt. All warm up first (compiling their shapes), then the timed
    requests interleave the policies prompt by prompt, so no policy is timed on a colder machine."""
    engines = {label(policy): engine.with_routing(policy) for policy in policies(args)}
    for routed in engines.values():
        decode(routed, prompts[0], args.max_tokens, device)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    for i, prompt in enumerate(prompts):
        for name, routed in engines.items():
            runs[name].append(decode(routed, prompt, args.max_tokens, device))
        print(f"  prompt {i + 1}/{len(prompts)}: done", file=sys.stderr, flush=True)
    return runs


def summarize(name: str, runs: list[dict[str, Any]], never: list[dict[str, Any]]) -> dict[str, Any]:
    stats = [r["stats"] for r in runs]
    tokens = sum(s.completion_tokens for s in stats)
    seconds = sum(r["seconds"] for r in runs)
    proposed = sum(s.proposed_tokens for s in stats)
    return {
        "policy": name,
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_second": tokens / seconds,
        "acceptance_rate": sum(s.accepted_tokens for s in stats) / proposed if proposed else None,
        "speculation_rate": sum(s.route == "speculative" for s in stats) / len(stats),
        "tokens_per_round": tokens / sum(s.rounds for s in stats),
        "mean_ttft_ms": 1000 * statistics.mean(s.time_to_first_token or 0.0 for s in stats),
        "mismatches_vs_never": sum(r["ids"] != n["ids"] for r, n in zip(runs, never, strict=True)),
    }


def content_position(tokenizer: Any, ids: list[int]) -> int | None:
    """Index of the first generated token carrying answer content (see the module docstring)."""
    for i in range(len(ids)):
        text = tokenizer.decode(ids[: i + 1], skip_special_tokens=True).lstrip()
        rest = text[len(LABEL) :] if text.startswith(LABEL) else ("" if LABEL.startswith(text) else text)
        if any(ch.isalnum() for ch in rest):
            return i
    return None


@torch.inference_mode()
def draft_confidences(
    draft: Any, prompt: list[int], output: list[int], position: int | None
) -> tuple[float, float | None]:
    """The draft's max probability at the first generated position and at `position` (teacher-forced
    on the target's output)."""
    last = 0 if position is None else position
    ids = torch.tensor([prompt + output[:last]], device=draft.device)
    logits = draft(input_ids=ids, logits_to_keep=last + 1).logits[0]  # (last + 1, V)
    probs = torch.softmax(logits.float(), dim=-1).amax(-1)  # (last + 1,)
    return probs[0].item(), (None if position is None else probs[-1].item())


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else None


def ranks(values: list[float]) -> list[float]:
    """Ranks 1..n, ties sharing their mean rank (as Spearman's rho needs)."""
    order = sorted(range(len(values)), key=values.__getitem__)
    result = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for m in range(i, j + 1):
            result[order[m]] = (i + j) / 2 + 1
        i = j + 1
    return result


def correlation(x: list[float | None], y: list[float | None]) -> dict[str, Any]:
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if a is not None and b is not None]
    xs, ys = [a for a, _ in pairs], [b for _, b in pairs]
    spearman = pearson(ranks(xs), ranks(ys)) if len(pairs) >= 3 else None
    return {"n": len(pairs), "pearson": pearson(xs, ys), "spearman": spearman}


def per_request(
    records: list[Record], prompts: list[list[int]], runs: dict[str, list[dict[str, Any]]], draft: Any, tokenizer: Any
) -> list[dict[str, Any]]:
    rows = []
    for record, prompt, never, always in zip(records, prompts, runs["never"], runs["always"], strict=True):
        output = [t for t in never["ids"] if t >= 0]
        position = content_position(tokenizer, output)
        first, content = draft_confidences(draft, prompt, output, position)
        rows.append(
            {
                "id": record.id,
                "difficulty": record.difficulty,
                "domain": record.domain,
                "first_token_confidence": always["stats"].first_token_confidence,
                "first_token_confidence_recomputed": first,
                "content_position": position,
                "content_token": None if position is None else tokenizer.decode(output[position : position + 1]),
                "content_token_confidence": content,
                "acceptance_rate": always["stats"].acceptance_rate,
                "tokens": always["stats"].completion_tokens,
            }
        )
    return rows


def confidence_summary(requests: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("first_token_confidence", "content_token_confidence"):
        out[key] = {
            "correlation_with_acceptance": correlation(
                [r[key] for r in requests], [r["acceptance_rate"] for r in requests]
            ),
            **{kind: _describe([r[key] for r in requests if r["difficulty"] == kind]) for kind in ("easy", "hard")},
        }
    return out


def _describe(values: list[float | None]) -> dict[str, Any]:
    present = sorted(v for v in values if v is not None)
    if not present:
        return {"n": 0}
    return {
        "n": len(present),
        "mean": statistics.fmean(present),
        "median": statistics.median(present),
        "values": present,
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device, dtype = setup(args)
    tokenizer = AutoTokenizer.from_pretrained(args.target)
    target, draft = load(args.target, device, dtype), load(args.draft, device, dtype)
    records, _ = read_records(f"builtin://{args.split}", require_output=False, max_examples=args.prompts)
    prompts = [chat_prompt_ids(tokenizer, r.input) for r in records]
    compile = args.compile and device.type == "cuda"
    engine = SpeculativeEngine.from_models(
        target,
        draft,
        tokenizer,
        RoutingPolicy("always", 0.0, args.k),
        static_cache_len=args.cache_len if compile else None,
        compile=compile,
        max_batch=1,  # batch-1 decoding: the sequential decoder (compiled on CUDA)
    )
    runs = run_policies(engine, prompts, args, device)
    rows = [summarize(name, r, runs["never"]) for name, r in runs.items()]
    for row in rows:
        row["speedup_vs_never"] = row["tokens_per_second"] / rows[0]["tokens_per_second"]
    requests = per_request(records, prompts, runs, draft, tokenizer)
    confidences = confidence_summary(requests)
    report(args, rows, confidences)
    body = {
        "machine": machine(device, dtype),
        "rows": rows,
        "confidence": confidences,
        "requests": requests,
    }
    write_result(args, argv, "routing", device, body)
    return 0


def report(args: argparse.Namespace, rows: list[dict[str, Any]], confidences: dict[str, Any]) -> None:
    print(
        f"\n{args.prompts} builtin://{args.split} inputs, greedy, max {args.max_tokens} tokens, k={args.k}, {args.device} {args.dtype}"
        f"{' compiled' if args.compile else ''}; draft {args.draft}"
    )
    print(f"{'policy':<18}{'accept':>8}{'spec':>6}{'tok/s':>9}{'×never':>8}{'tok/pass':>9}{'mism':>6}")
    for r in rows:
        accept = "-" if r["acceptance_rate"] is None else f"{r['acceptance_rate']:.2f}"
        print(
            f"{r['policy']:<18}{accept:>8}{r['speculation_rate']:>6.2f}{r['tokens_per_second']:>9.1f}"
            f"{r['speedup_vs_never']:>8.2f}{r['tokens_per_round']:>9.2f}{r['mismatches_vs_never']:>6}"
        )
    print(f"\n{'confidence at':<16}{'easy mean':>10}{'hard mean':>10}{'pearson':>9}{'spearman':>9}{'n':>4}")
    for key, name in (("first_token_confidence", "first token"), ("content_token_confidence", "content token")):
        c = confidences[key]
        corr = c["correlation_with_acceptance"]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(
            f"{name:<16}{fmt(c['easy'].get('mean')):>10}{fmt(c['hard'].get('mean')):>10}"
            f"{fmt(corr['pearson']):>9}{fmt(corr['spearman']):>9}{corr['n']:>4}"
        )


if __name__ == "__main__":
    sys.exit(main())

"""Prompt lookup's settings side by side: minMatch × history × k against target-only, at batch 1.

One engine per setting over the same target in one process (`SpeculativeEngine.from_models` with a
`PromptLookup`, the `adaptive` policy), plus `never`; every round builds them afresh (an empty history),
warms each up on a prompt outside the set, then sends the prompts one by one with the engines taking
turns, so drift in a shared machine's load hits every setting alike. Reported per setting: the median
over rounds of its tokens/s relative to `never` in the same round, and tokens per target pass (greedy,
so the same every round). Greedy outputs must equal `never`'s; mismatches are counted.

    python bench/lookup.py --target DIR                          # the demo's prompts, 32 tokens
    python bench/lookup.py --target DIR --prompt-set held-out --prompts 12 --max-tokens 64
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from _common import served

from metaspec.api.serving import PromptLookup
from metaspec.builtin import records
from metaspec.causal_lm import load_causal_lm
from metaspec.local.bundled import bundled_model_dir
from metaspec.local.demo_bench import WARM_UP, demo_prompts
from metaspec.server.engine import RoutingPolicy, SamplingParams, SpeculativeEngine

RESULTS = Path(__file__).parent / "results"


def prompt_texts(prompt_set: str, n: int) -> list[str]:
    if prompt_set == "demo":  # what `make demo` sends
        return [p["input"] for p in demo_prompts()]
    held_out = [r.input for r in records("prompts")]
    return held_out[:: max(1, len(held_out) // n)][:n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="target model folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt-set", default="demo", choices=["demo", "held-out"])
    parser.add_argument("--prompts", type=int, default=12, help="held-out prompts (the demo has 6)")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--min-match", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--history", type=int, nargs="+", default=[0, 16384])
    parser.add_argument("-k", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "lookup-settings-cpu.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    source = args.target or str(bundled_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(source)
    target = served(load_causal_lm(source, torch.float32).eval())  # as the server runs it
    settings: dict[str, tuple[PromptLookup | None, str, int]] = {"never": (None, "never", 1)}
    for min_match, history, k in itertools.product(args.min_match, args.history, args.k):
        lookup = PromptLookup(min_match=min_match, max_match=5, history=history)
        settings[f"min{min_match}-history{history}-k{k}"] = (lookup, "adaptive", k)
    texts = prompt_texts(args.prompt_set, args.prompts)
    ratios: dict[str, list[float]] = {name: [] for name in settings}
    per_pass, mismatches = {}, dict.fromkeys(settings, 0)
    for round_ in range(args.rounds):
        engines = {
            name: SpeculativeEngine.from_models(target, lookup, tokenizer, RoutingPolicy(policy, 0.7, k), max_batch=16)
            for name, (lookup, policy, k) in settings.items()
        }
        seconds, tokens, passes = dict.fromkeys(engines, 0.0), dict.fromkeys(engines, 0), dict.fromkeys(engines, 0)
        for engine in engines.values():
            engine.generate_here(
                engine.encode_chat([{"role": "user", "content": WARM_UP}]), SamplingParams(max_tokens=4)
            )
        for text in texts:
            outputs = {}
            for name, engine in engines.items():
                prompt = engine.encode_chat([{"role": "user", "content": text}])
                start = time.perf_counter()
                deltas = engine.generate_here(prompt, SamplingParams(max_tokens=args.max_tokens))
                seconds[name] += time.perf_counter() - start
                stats = deltas[-1].stats
                tokens[name] += stats.completion_tokens
                passes[name] += stats.rounds
                outputs[name] = [t for d in deltas for t in d.token_ids]
            for name, out in outputs.items():
                mismatches[name] += out != outputs["never"]
        for name in engines:
            ratios[name].append((tokens[name] / seconds[name]) / (tokens["never"] / seconds["never"]))
            per_pass[name] = tokens[name] / passes[name]
        print(f"round {round_ + 1}:", {n: round(r[-1], 3) for n, r in ratios.items()}, file=sys.stderr)
    rows: list[dict[str, Any]] = [
        {
            "setting": name,
            "speedup_vs_never_median": round(statistics.median(ratios[name]), 3),
            "speedups": [round(r, 3) for r in ratios[name]],
            "tokens_per_pass": round(per_pass[name], 3),
            "mismatches": mismatches[name],
        }
        for name in settings
    ]
    print(f"\n{'setting':<24}{'×never (median)':>16}{'tokens/pass':>13}{'mism':>6}")
    for row in rows:
        print(
            f"{row['setting']:<24}{row['speedup_vs_never_median']:>16.3f}{row['tokens_per_pass']:>13.2f}"
            f"{row['mismatches']:>6}"
        )
    result = {
        "benchmark": "prompt lookup settings, batch 1",
        "device": platform.processor() or "cpu",
        "torch": torch.__version__,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 1 if any(mismatches.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

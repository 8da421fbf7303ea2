"""Teacher outputs: do greedy outputs run to the length limit, and does the seed's fixed sampling stop them?

    .venv/bin/python bench/teacher.py --smoke                                   # CPU, tiny sizes
    python bench/teacher.py --device cuda --model /tmp/anil                     # H100 (≈ 2–5 min per model)

The seed reports that 84% of greedy teacher outputs (max 1024 new tokens) hit the length limit until
it switched to temperature 0.3, repetition penalty 1.2 and max 512 tokens. Here both configurations
run on the same `--prompts` built-in prompts (`builtin://prompts`: every domain, easy and hard) with the
generator's own transformers engine (`metaspec.generator`, batched, per-prompt seeds), on each
`--model` (the ANIL-merged model from `bench/method.py --save-merged`, and for contrast the base):

    greedy       temperature 0, no repetition penalty, max `--greedy-max-tokens` (1024)
    greedy@512   derived, not re-run: greedy decoding is deterministic, so a max-512 run is the same
                 outputs cut at 512 tokens; an output stops naturally at 512 iff it stopped within 512
    seed         temperature 0.3, repetition penalty 1.2, max `--seed-max-tokens` (512)
    seed-no-penalty  the same without the repetition penalty: separates the penalty's effect. The
                 penalty (CTRL-style, as in vLLM and transformers) applies to every token already in
                 the context, the prompt's chat-template end-of-turn tokens included, so it also makes
                 ending the turn less likely

Both use the generator's default stop strings (the end-of-turn token always stops). Reported per
configuration: natural-stop rate (end of turn or stop string, not the limit), mean/median/p95 output
tokens, degenerate-loop rate and distinct-4 (`metaspec.generator.stats`), per difficulty, and time.
Writes `bench/results/teacher-<device>.json`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, setup, sync, write_result

from metaspec.api.generation import Sampling
from metaspec.datasets import read_records
from metaspec.generator import Completion, Prompt, compute_stats, prompt_seed, record_body
from metaspec.generator.engines.transformers import TransformersEngine
from metaspec.local.bundled import bundled_model_dir
from metaspec.prompts import chat_prompt_ids
from metaspec.records import Record

KEPT_STATS = (
    "naturalStopRate",
    "truncatedRate",
    "meanOutputTokens",
    "medianOutputTokens",
    "p95OutputTokens",
    "maxOutputTokens",
    "loopRate",
    "distinct4",
    "tokensPerSecond",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "teacher")
    parser.add_argument(
        "--model", type=Path, action="append", help="model dir, repeatable (default: the bundled SmolLM2)"
    )
    parser.add_argument("--prompts", type=int, help="first N of builtin://prompts (default: cuda 64, cpu 8)")
    parser.add_argument("--batch-size", type=int, help="engine batch (default: all prompts at once on cuda, 8 on cpu)")
    parser.add_argument("--greedy-max-tokens", type=int, default=1024)
    parser.add_argument("--seed-max-tokens", type=int, default=512)
    args = parser.parse_args(argv)
    if args.smoke:
        args.prompts, args.greedy_max_tokens, args.seed_max_tokens = args.prompts or 4, 24, 12
    args.prompts = args.prompts or (64 if args.device == "cuda" else 8)
    args.batch_size = args.batch_size or (args.prompts if args.device == "cuda" else 8)
    args.model = args.model or [bundled_model_dir()]
    return args


def configurations(args: argparse.Namespace) -> dict[str, Sampling]:
    return {
        "greedy": Sampling(temperature=0.0, repetition_penalty=1.0, max_tokens=args.greedy_max_tokens),
        "seed": Sampling(temperature=0.3, repetition_penalty=1.2, max_tokens=args.seed_max_tokens),
        "seed-no-penalty": Sampling(temperature=0.3, repetition_penalty=1.0, max_tokens=args.seed_max_tokens),
    }


def generate(engine: TransformersEngine, records: list[Record]) -> tuple[list[Completion], float]:
    prompts = [
        Prompt(r.id, chat_prompt_ids(engine.tokenizer, r.input), prompt_seed(engine.sampling.seed, r.id))
        for r in records
    ]
    device = engine.model.device
    sync(device)
    started = time.perf_counter()
    completions = []
    for batch in engine.plan(prompts):
        completions += engine.generate(batch)
        print(f"  {len(completions)}/{len(prompts)} done, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    sync(device)
    return completions, time.perf_counter() - started


def summarize(bodies: list[dict[str, Any]], seconds: float | None) -> dict[str, Any]:
    stats = compute_stats(bodies, len(bodies), min_natural_stop_rate=0.9)
    row = {k: stats[k] for k in KEPT_STATS} | {"seconds": seconds}
    row["byDifficulty"] = {}
    for kind in ("easy", "hard"):
        group = [b for b in bodies if b["difficulty"] == kind]
        if group:
            part = compute_stats(group, len(group), min_natural_stop_rate=0.9)
            row["byDifficulty"][kind] = {k: part[k] for k in ("naturalStopRate", "meanOutputTokens", "loopRate")}
    return row


def cut_at(bodies: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Greedy outputs as a run with max `limit` tokens would have ended (greedy is deterministic);
    the texts are not cut, so only token counts and finish reasons are meaningful."""
    cut = []
    for body in bodies:
        meta = dict(body["metadata"])
        if meta["num_tokens_generated"] > limit:
            meta.update(num_tokens_generated=limit, finish_reason="length")
        cut.append({**body, "metadata": meta})
    return cut


def run_model(args: argparse.Namespace, model_dir: Path, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    records, _ = read_records("builtin://prompts", require_output=False, max_examples=args.prompts)
    configs = configurations(args)
    first = next(iter(configs.values()))
    engine = TransformersEngine.load(model_dir, model_dir.name, first, args.batch_size, device, dtype)
    rows: dict[str, Any] = {}
    examples: dict[str, list[dict[str, Any]]] = {}
    for name, sampling in configs.items():
        engine = TransformersEngine(engine.model, engine.tokenizer, model_dir.name, sampling, args.batch_size)
        completions, seconds = generate(engine, records)
        by_id = {c.id: c for c in completions}
        bodies = [record_body(r, by_id[r.id], model_dir.name, engine.generation_params()) for r in records]
        rows[name] = summarize(bodies, seconds) | {"sampling": sampling.model_dump()}
        examples[name] = [
            {"id": b["id"], "finish": b["metadata"]["finish_reason"], "output": b["output"][:400]} for b in bodies[:3]
        ]
        if name == "greedy" and args.seed_max_tokens < sampling.max_tokens:
            rows[f"greedy@{args.seed_max_tokens}"] = summarize(cut_at(bodies, args.seed_max_tokens), None) | {
                "derived_from": "greedy"
            }
    del engine
    return {"model": str(model_dir), "configurations": rows, "examples": examples}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device, dtype = setup(args)
    results = []
    for model_dir in args.model:
        results.append(run_model(args, model_dir, device, dtype))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    report(args, results)
    write_result(args, argv, "teacher", device, {"machine": machine(device, dtype), "models": results})
    return 0


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    print(f"\n{args.prompts} built-in prompts, {args.device} {args.dtype}")
    header = f"{'model':<28}{'config':<17}{'natural stop':>13}{'easy':>7}{'hard':>7}{'mean tok':>9}{'p95':>7}{'loops':>7}{'sec':>7}"
    print(header)
    for result in results:
        for name, row in result["configurations"].items():
            easy, hard = (_rate(row["byDifficulty"], kind) for kind in ("easy", "hard"))
            print(
                f"{Path(result['model']).name[:27]:<28}{name:<17}{row['naturalStopRate']:>13.0%}{easy:>7}"
                f"{hard:>7}{row['meanOutputTokens']:>9.1f}{row['p95OutputTokens']:>7.0f}{row['loopRate']:>7.0%}"
                f"{'-' if row['seconds'] is None else format(row['seconds'], '.0f'):>7}"
            )


def _rate(by_difficulty: dict[str, Any], kind: str) -> str:
    return f"{by_difficulty[kind]['naturalStopRate']:.0%}" if kind in by_difficulty else "-"


if __name__ == "__main__":
    sys.exit(main())

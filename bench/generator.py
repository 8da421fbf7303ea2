"""Teacher generation throughput: the one-prompt-at-a-time loop a user writes first (the seed's
starting point) against the transformers engine's batched, length-bucketed `generate`, and against
vLLM where it can run, side by side on the same prompts with the same greedy settings.

    .venv/bin/python bench/generator.py                     # CPU: SmolLM2-135M-Instruct, fp32
    .venv/bin/python bench/generator.py --device cuda       # GPU: bf16, plus vLLM when importable

Prints a table (examples/s, generated tokens/s, speedup over the loop, outputs that differ from the
loop's) and writes `bench/results/generator-<device>.json`. Greedy outputs should match the loop's;
mismatches are counted and shown, not hidden (batched bf16 kernels may round differently).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from metaspec.api import TeacherGenerationSpec
from metaspec.api.generation import Sampling
from metaspec.datasets import read_records
from metaspec.devices import resolve_device, resolve_dtype
from metaspec.generator import Prompt, prompt_seed
from metaspec.generator.engines.transformers import TransformersEngine, finish
from metaspec.local.bundled import bundled_model_dir
from metaspec.prompts import chat_prompt_ids, end_of_turn_ids

RESULTS = Path(__file__).parent / "results"


@dataclass
class Row:
    mode: str
    examples: int
    seconds: float
    generated_tokens: int
    examples_per_second: float
    tokens_per_second: float
    speedup: float | None  # over the sequential loop, in examples/s
    mismatches: int | None  # outputs differing from the sequential loop's


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="model directory (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--prompts", type=int, help="built-in prompts to answer (default: 16 on CPU, 64 on GPU)")
    parser.add_argument("--max-tokens", type=int, help="new tokens per output (default: 32 on CPU, 96 on GPU)")
    parser.add_argument("--batch-size", type=int, help="transformers engine batch (default: 16 on CPU, 64 on GPU)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--out", type=Path, help="JSON results (default: bench/results/generator-<device>.json)")
    return parser.parse_args(argv)


def sequential(model: Any, tokenizer: Any, prompts: list[Prompt], max_tokens: int) -> tuple[dict[str, str], int]:
    """The loop a user writes first: one `generate` call per prompt, greedy, stopping at end of turn."""
    stops = end_of_turn_ids(tokenizer)
    texts, tokens = {}, 0
    for prompt in prompts:
        ids = torch.tensor([prompt.token_ids], device=model.device)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=stops,
                pad_token_id=stops[0],
            )
        text, count, _ = finish(out[0, ids.shape[1] :].tolist(), stops, [], max_tokens, tokenizer.decode)
        texts[prompt.id], tokens = text, tokens + count
    return texts, tokens


def batched(engine: Any, prompts: list[Prompt]) -> tuple[dict[str, str], int]:
    completions = [c for batch in engine.plan(prompts) for c in engine.generate(batch)]
    return {c.id: c.text for c in completions}, sum(c.num_tokens for c in completions)


def timed(mode: str, run: Any, reference: dict[str, str] | None, baseline: float | None) -> tuple[Row, dict[str, str]]:
    started = time.perf_counter()
    texts, tokens = run()
    seconds = time.perf_counter() - started
    rate = len(texts) / seconds
    mismatches = None if reference is None else sum(texts[k] != v for k, v in reference.items())
    speedup = rate / baseline if baseline else None
    row = Row(mode, len(texts), seconds, tokens, rate, tokens / seconds, speedup, mismatches)
    return row, texts


def vllm_row(
    args: argparse.Namespace, model_dir: Path, prompts: list[Prompt], reference: dict[str, str], baseline: float
) -> Row | str:
    """vLLM on the same prompts, or the reason it cannot run here."""
    if args.skip_vllm:
        return "skipped (--skip-vllm)"
    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install 'metaspec[vllm]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU; none is visible"
    from metaspec.generator.engines.vllm import VllmEngine

    spec = TeacherGenerationSpec.model_validate(
        {
            "model": {"uri": str(model_dir)},
            "dataset": {"uri": "builtin://prompts"},
            "output": {"uri": "/unused"},
            "engine": "vllm",
            "dtype": "bfloat16" if args.dtype == "auto" else args.dtype,
            "gpuMemoryUtilization": 0.5,
            "sampling": {"temperature": 0.0, "maxTokens": args.max_tokens, "repetitionPenalty": 1.0, "stop": []},
        }
    )
    engine = VllmEngine(spec, model_dir, "bench")
    batched(engine, prompts[:2])  # warm-up: CUDA graphs, allocator
    row, texts = timed("vllm", lambda: batched(engine, prompts), reference, baseline)
    show_mismatches("vllm", reference, texts)
    return row


def show_mismatches(mode: str, reference: dict[str, str], texts: dict[str, str], limit: int = 2) -> None:
    for key in [k for k in reference if texts[k] != reference[k]][:limit]:
        print(f"  {mode} differs on {key}:\n    loop:    {reference[key]!r}\n    {mode}: {texts[key]!r}")


def transformers_rows(
    args: argparse.Namespace, device: torch.device, model_dir: Path
) -> tuple[list[Row], list[Prompt], dict[str, str]]:
    """The sequential loop and the batched engine on one loaded model; the engine is freed on return."""
    sampling = Sampling(temperature=0.0, max_tokens=args.max_tokens, repetition_penalty=1.0, stop=[])
    dtype = resolve_dtype(args.dtype, device)
    engine = TransformersEngine.load(model_dir, "bench", sampling, args.batch_size, device, dtype)
    inputs, _ = read_records("builtin://prompts", require_output=False, max_examples=args.prompts)
    prompts = [Prompt(r.id, chat_prompt_ids(engine.tokenizer, r.input), prompt_seed(0, r.id)) for r in inputs]
    model, tokenizer = engine.model, engine.tokenizer
    sequential(model, tokenizer, prompts[:1], 4)  # warm-up
    loop, reference = timed(
        "sequential loop", lambda: sequential(model, tokenizer, prompts, args.max_tokens), None, None
    )
    mode = f"batched (batch {args.batch_size})"
    row, texts = timed(mode, lambda: batched(engine, prompts), reference, loop.examples_per_second)
    show_mismatches("batched", reference, texts)
    return [loop, row], prompts, reference


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    args.prompts = args.prompts or (64 if gpu else 16)
    args.max_tokens = args.max_tokens or (96 if gpu else 32)
    args.batch_size = args.batch_size or (64 if gpu else 16)
    model_dir = args.model or bundled_model_dir()
    rows, prompts, reference = transformers_rows(args, device, model_dir)
    if gpu:
        torch.cuda.empty_cache()
    vllm = vllm_row(args, model_dir, prompts, reference, rows[0].examples_per_second)
    if isinstance(vllm, Row):
        rows.append(vllm)
    report(args, device, rows, vllm if isinstance(vllm, str) else None)
    return 0


def report(args: argparse.Namespace, device: torch.device, rows: list[Row], vllm_reason: str | None) -> None:
    header = f"{'mode':<22} {'examples/s':>10} {'tokens/s':>9} {'speedup':>8} {'mismatches':>10} {'seconds':>8}"
    print(
        f"\n{args.prompts} prompts, max {args.max_tokens} new tokens, greedy, {device} "
        f"({torch.cuda.get_device_name() if device.type == 'cuda' else platform.machine()}, "
        f"{torch.get_num_threads()} threads)\n{header}"
    )
    for r in rows:
        speedup = f"{r.speedup:.1f}x" if r.speedup else "1.0x"
        mismatches = "-" if r.mismatches is None else f"{r.mismatches}/{r.examples}"
        print(
            f"{r.mode:<22} {r.examples_per_second:>10.2f} {r.tokens_per_second:>9.1f} {speedup:>8} {mismatches:>10} {r.seconds:>8.1f}"
        )
    if vllm_reason:
        print(f"vllm: could not run: {vllm_reason}")
    out = args.out or RESULTS / f"generator-{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],  # other work on the machine skews CPU timings
        "torch": torch.__version__,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "batch_size": args.batch_size,
        "rows": [asdict(r) for r in rows],
        "vllm": vllm_reason or "ran",
    }
    out.write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

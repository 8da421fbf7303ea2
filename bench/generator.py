"""Teacher generation throughput: the one-prompt-at-a-time loop a user writes first (the seed's
starting point) against the transformers engine's batched, length-bucketed `generate`, and against
vLLM, side by side on the same prompts with the same settings.

    .venv/bin/python bench/generator.py                     # CPU: SmolLM2-135M-Instruct, fp32
    .venv/bin/python bench/generator.py --prompts 512 --sequential-prompts 32 --sampling seed
    .venv/bin/python bench/generator.py --device cuda       # GPU: bf16

vLLM runs in this process when it is importable (the generator image), else in the vLLM environment
(`make vllm-venv`: on this machine the CPU build) as a child process that runs this file with
`--vllm-worker`. `--sampling greedy` (temperature 0) or `seed` (the seed's fixed sampling:
temperature 0.3, repetition penalty 1.2, per-prompt seeds). Prints a table (examples/s, generated
tokens/s, speedup over the loop, outputs that differ from the loop's when greedy) and writes
`bench/results/generator-<device>-<prompts>-<sampling>.json`. Greedy outputs should match the
loop's; mismatches are counted and shown, not hidden (batched bf16 kernels may round differently).
With `--sequential-prompts N` the loop answers only the first N prompts: its examples/s is the
baseline (one prompt at a time, its rate does not depend on how many there are).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from metaspec.api import TeacherGenerationSpec
from metaspec.api.generation import Sampling
from metaspec.causal_lm import load_causal_lm
from metaspec.datasets import read_records
from metaspec.devices import resolve_device, resolve_dtype
from metaspec.generator import Prompt, prompt_seed
from metaspec.generator.engines.transformers import TransformersEngine, finish
from metaspec.local.bundled import bundled_model_dir
from metaspec.local.vllm import INSTALL_HINT, vllm_env, vllm_python
from metaspec.prompts import chat_prompt_ids, end_of_turn_ids
from metaspec.runtime import scratch_dir

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
    parser.add_argument("--sampling", choices=["greedy", "seed"], default="greedy", help="see above")
    parser.add_argument("--sequential-prompts", type=int, help="prompts the loop answers (default: all)")
    parser.add_argument("--vllm-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--out", type=Path, help="JSON results (default: bench/results/generator-<device>-<prompts>-<sampling>.json)"
    )
    return parser.parse_args(argv)


def sequential(model: Any, tokenizer: Any, prompts: list[Prompt], sampling: Sampling) -> tuple[dict[str, str], int]:
    """The loop a user writes first: one `generate` call per prompt, stopping at end of turn."""
    stops = end_of_turn_ids(tokenizer)
    texts, tokens = {}, 0
    sample: dict[str, Any] = {"do_sample": False}
    if sampling.temperature > 0:
        sample = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p}
    for prompt in prompts:
        ids = torch.tensor([prompt.token_ids], device=model.device)
        torch.manual_seed(prompt.seed)
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=sampling.max_tokens,
                repetition_penalty=sampling.repetition_penalty,
                eos_token_id=stops,
                pad_token_id=stops[0],
                **sample,
            )
        text, count, _ = finish(out[0, ids.shape[1] :].tolist(), stops, [], sampling.max_tokens, tokenizer.decode)
        texts[prompt.id], tokens = text, tokens + count
    return texts, tokens


def batched(engine: Any, prompts: list[Prompt]) -> tuple[dict[str, str], int]:
    completions = [c for batch in engine.plan(prompts) for c in engine.generate(batch)]
    return {c.id: c.text for c in completions}, sum(c.num_tokens for c in completions)


def timed(mode: str, run: Any, reference: dict[str, str] | None, baseline: float | None) -> tuple[Row, dict[str, str]]:
    started = time.perf_counter()
    texts, tokens = run()
    seconds = time.perf_counter() - started
    return row(mode, texts, tokens, seconds, reference, baseline), texts


def row(
    mode: str,
    texts: dict[str, str],
    tokens: int,
    seconds: float,
    reference: dict[str, str] | None,
    baseline: float | None,
) -> Row:
    rate = len(texts) / seconds
    mismatches = None if reference is None else sum(texts[k] != v for k, v in reference.items())
    return Row(
        mode, len(texts), seconds, tokens, rate, tokens / seconds, rate / baseline if baseline else None, mismatches
    )


def sampling_of(args: argparse.Namespace) -> Sampling:
    if args.sampling == "seed":
        return Sampling(max_tokens=args.max_tokens, stop=[])
    return Sampling(temperature=0.0, max_tokens=args.max_tokens, repetition_penalty=1.0, stop=[])


def bench_prompts(tokenizer: Any, count: int) -> list[Prompt]:
    """`count` built-in prompts, the 200 repeated with new IDs (so new seeds) past 200."""
    inputs, _ = read_records("builtin://prompts", require_output=False)
    picked = [(f"{r.id}#{n // len(inputs)}", r.input) for n, r in zip(range(count), itertools.cycle(inputs))]
    return [Prompt(key, chat_prompt_ids(tokenizer, text), prompt_seed(0, key)) for key, text in picked]


def vllm_spec(args: argparse.Namespace, model_dir: Path) -> TeacherGenerationSpec:
    return TeacherGenerationSpec.model_validate(
        {
            "model": {"uri": str(model_dir)},
            "dataset": {"uri": "builtin://prompts"},
            "output": {"uri": "/unused"},
            "engine": "vllm",
            "dtype": args.dtype,
            "gpuMemoryUtilization": 0.5,
            "sampling": sampling_of(args).model_dump(),
        }
    )


def vllm_worker(args: argparse.Namespace, model_dir: Path) -> int:
    """The vLLM side, in an environment with vLLM: times the engine, writes the texts to `--out`."""
    from metaspec.generator.engines.vllm import VllmEngine

    started = time.perf_counter()
    engine = VllmEngine(vllm_spec(args, model_dir), model_dir, "bench")
    start_seconds = time.perf_counter() - started
    prompts = bench_prompts(engine.tokenizer, args.prompts)
    batched(engine, prompts[:2])  # warm-up: allocator, CUDA graphs on a GPU
    started = time.perf_counter()
    texts, tokens = batched(engine, prompts)
    seconds = time.perf_counter() - started
    body = {"texts": texts, "tokens": tokens, "seconds": seconds, "start_seconds": start_seconds}
    args.out.write_text(json.dumps(body))
    return 0


def vllm_row(args: argparse.Namespace, model_dir: Path, reference: dict[str, str] | None, baseline: float) -> Row | str:
    """vLLM on the same prompts (here, or in the vLLM environment), or the reason it cannot run."""
    if args.skip_vllm:
        return "skipped (--skip-vllm)"
    with tempfile.TemporaryDirectory(prefix="bench-vllm-") as tmp:
        out = Path(tmp) / "vllm.json"
        argv = [*sys.argv[1:], "--vllm-worker", "--out", str(out), "--model", str(model_dir)]
        if importlib.util.find_spec("vllm") is not None:
            vllm_worker(parse_args(argv), model_dir)
        elif (python := vllm_python()) is not None:
            env = {**os.environ, **vllm_env(scratch_dir()), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            subprocess.run([str(python), __file__, *argv], env=env, check=True)
        else:
            return f"no vLLM here: {INSTALL_HINT}"
        result = json.loads(out.read_text())
    print(f"vllm: engine start {result['start_seconds']:.0f} s (not in the timing)")
    if reference:
        show_mismatches("vllm", reference, result["texts"])
    return row("vllm", result["texts"], result["tokens"], result["seconds"], reference, baseline)


def show_mismatches(mode: str, reference: dict[str, str], texts: dict[str, str], limit: int = 2) -> None:
    for key in [k for k in reference if texts[k] != reference[k]][:limit]:
        print(f"  {mode} differs on {key}:\n    loop:    {reference[key]!r}\n    {mode}: {texts[key]!r}")


def transformers_rows(
    args: argparse.Namespace, device: torch.device, model_dir: Path
) -> tuple[list[Row], dict[str, str] | None]:
    """The sequential loop on the model as transformers loads it and the batched engine as the generator
    loads it (on the CPU, its linear layers packed: `metaspec.packed`); both are freed on return. Also
    the loop's texts when greedy over every prompt (the reference the others must match)."""
    sampling = sampling_of(args)
    dtype = resolve_dtype(args.dtype, device)
    engine = TransformersEngine.load(model_dir, "bench", sampling, args.batch_size, device, dtype)
    prompts = bench_prompts(engine.tokenizer, args.prompts)
    model, tokenizer = load_causal_lm(model_dir, dtype).to(device).eval(), engine.tokenizer
    sequential(model, tokenizer, prompts[:1], sampling.model_copy(update={"max_tokens": 4}))  # warm-up
    looped = prompts[: args.sequential_prompts or len(prompts)]
    loop, texts = timed("sequential loop", lambda: sequential(model, tokenizer, looped, sampling), None, None)
    reference = texts if args.sampling == "greedy" and len(looped) == len(prompts) else None
    mode = f"batched (batch {args.batch_size})"
    batch_row, batch_texts = timed(mode, lambda: batched(engine, prompts), reference, loop.examples_per_second)
    if reference:
        show_mismatches("batched", reference, batch_texts)
    return [loop, batch_row], reference


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
    if args.vllm_worker:
        return vllm_worker(args, model_dir)
    rows, reference = transformers_rows(args, device, model_dir)
    if gpu:
        torch.cuda.empty_cache()
    vllm = vllm_row(args, model_dir, reference, rows[0].examples_per_second)
    if isinstance(vllm, Row):
        rows.append(vllm)
    report(args, device, rows, vllm if isinstance(vllm, str) else None)
    return 0


def report(args: argparse.Namespace, device: torch.device, rows: list[Row], vllm_reason: str | None) -> None:
    header = f"{'mode':<22} {'examples/s':>10} {'tokens/s':>9} {'speedup':>8} {'mismatches':>10} {'seconds':>8}"
    print(
        f"\n{args.prompts} prompts, max {args.max_tokens} new tokens, {args.sampling} sampling, {device} "
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
    out = args.out or RESULTS / f"generator-{device.type}-{args.prompts}-{args.sampling}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if device.type == "cuda" else platform.machine(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg()[0],  # other work on the machine skews CPU timings
        "torch": torch.__version__,
        "prompts": args.prompts,
        "max_tokens": args.max_tokens,
        "sampling": args.sampling,
        "sequential_prompts": args.sequential_prompts or args.prompts,
        "batch_size": args.batch_size,
        "rows": [asdict(r) for r in rows],
        "vllm": vllm_reason or "ran",
    }
    out.write_text(json.dumps(body, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

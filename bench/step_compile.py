"""Padded decode steps (`PaddedSteps`): graphs of the eager body with transformers' kernels, with Liger's
fused kernels, or of the body compiled by `torch.compile` first.

`compile` in batches replays each padded step from a CUDA graph captured from the eager body: launching a
small model's kernels costs nothing then, but each kernel still runs on its own (a norm, the rotary
embedding, an activation: several kernels each). This measures what fusing that element-wise work buys
and what it costs: `graphs` captures transformers' own kernels; `fused` the same body with Liger-Kernel's
norm, rotary embedding and SwiGLU (`metaspec/server/engine/kernels.py`: what `compile` serves on CUDA
where liger-kernel is installed); `body` wraps the padded step (the whole body, every layer) in
`torch.compile(dynamic=True)` before the same capture (minutes of compiling a shape).

Per mode, over the same prompts (random ids, 40 to 46 tokens a row) on a target of its own: the prefill
of `--batch` prompts together, then `--steps` decode steps of one token a row fed with the step's
argmax, as the engine runs them (each step read back to the host); the median step after the first 8
(captures and compilation stay out of it), then the GPU time of one replay of the decode step's graph
(CUDA events over 100 replays; none where a capture failed and the steps fell back to eager), the
whole run's time, compilation included, and how many graphs `torch.compile` built (dynamo's count: one
per shape class it specialised on). The share of greedy tokens where the two modes agree shows how far
bf16 rounding of fused kernels moves the argmax of a random-id prompt (a divergence carries through the
rest of its row).

    python bench/step_compile.py --device cuda --dtype bfloat16 --batch 1 4 16 64 --modes graphs fused body
    python bench/step_compile.py --smoke    # a tiny random Llama on the CPU, `aot_eager`: the script's path
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch._dynamo.utils import counters

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, setup, sync, write_result

from metaspec.causal_lm import load_causal_lm
from metaspec.server.engine.slots import Chunk, SlotModel
from metaspec_testing.models import random_llama

MODES = ("graphs", "fused", "body")


def run(model: Any, args: argparse.Namespace, mode: str, batch: int) -> tuple[list[list[int]], dict[str, Any]]:
    """The greedy tokens of each step (prefill first), and the mode's timings."""
    device = next(model.parameters()).device
    lm = SlotModel(model, model.config.vocab_size, 1024 if not args.smoke else 64, graphs=True)
    padded = lm.padded
    assert padded is not None
    padded.fused = padded.fused and mode == "fused"  # `PaddedSteps` fused the model on CUDA where it could
    if mode == "fused" and not padded.fused:
        raise SystemExit("fused: Liger-Kernel is not installed (the `cuda` extra), or the device is not CUDA")
    if mode == "body":
        padded._step = torch.compile(padded._step, backend=args.backend, dynamic=True)  # type: ignore[method-assign]
    graphs_before = counters["stats"]["unique_graphs"]
    ids = torch.Generator().manual_seed(args.seed)
    vocab = model.config.vocab_size
    prompts = [
        torch.randint(min(100, vocab // 2), min(20000, vocab), (args.prompt + i % 7,), generator=ids).tolist()
        for i in range(batch)
    ]
    start = time.perf_counter()
    with torch.inference_mode():
        logits, _ = lm.forward([Chunk(i, 0, p) for i, p in enumerate(prompts)])
        tokens, lengths, times = [logits.argmax(-1).tolist()], [len(p) for p in prompts], []
        for _ in range(args.steps):
            begin = time.perf_counter()
            logits, _ = lm.forward([Chunk(i, lengths[i], [tokens[-1][i]]) for i in range(batch)])
            tokens.append(logits.argmax(-1).tolist())
            times.append(time.perf_counter() - begin)
            lengths = [n + 1 for n in lengths]
        total = time.perf_counter() - start
        replay = None
        if padded.capture:  # the decode step's graph alone (the widest one captured); False after a failed capture
            graph = padded._runs[max(k for k in padded._runs if k[1] == 1)]
            for _ in range(5):
                graph()
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(100):
                graph()
            end.record()
            sync(device)
            replay = round(begin.elapsed_time(end) / 100, 3)
    return tokens, {
        "mode": mode,
        "batch": batch,
        "step_ms_p50": round(1000 * statistics.median(times[8:] or times), 3),
        "replay_gpu_ms": replay,
        "seconds_with_compilation": round(total, 1),
        "compilations": counters["stats"]["unique_graphs"] - graphs_before,
        "captured": padded.capture,
        "shapes": sorted(padded.shapes),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=48, help="decode steps after the prefill")
    parser.add_argument("--prompt", type=int, default=40, help="prompt tokens of the first row (up to 6 more)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES[:2]), help="first: the reference")
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend for `body`")
    add_common_args(parser, "step_compile")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.prompt, args.backend = [2], 10, 8, "aot_eager"
        args.modes = ["graphs", "body"]
    device, dtype = setup(args)
    if args.smoke:
        model = random_llama(args.seed, 64, 2, positions=64)
    else:
        from metaspec.local.bundled import bundled_model_dir

        model = load_causal_lm(bundled_model_dir(), dtype)
    model = model.to(device, dtype).eval()
    rows = []
    print(
        "| batch | mode | step ms (p50) | replay GPU ms | s with compilation | compilations | greedy tokens agreeing |"
    )
    print("|---|---|---|---|---|---|---|")
    for batch in args.batch:
        reference = None
        for mode in args.modes:
            tokens, row = run(model, args, mode, batch)
            if reference is None:
                reference = tokens
            pairs = [(a, b) for r, o in zip(reference, tokens, strict=True) for a, b in zip(r, o, strict=True)]
            row["greedy_agreement"] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
            rows.append(row)
            print(
                f"| {batch} | {mode} | {row['step_ms_p50']} | {row['replay_gpu_ms']} | "
                f"{row['seconds_with_compilation']} | {row['compilations']} | {row['greedy_agreement']} |"
            )
    write_result(args, argv, "step_compile", device, {"machine": machine(device, dtype), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

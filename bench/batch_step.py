"""Where a continuous-batching step's CPU time goes: the target's forward pass against the rest of the
step (settling: choosing each sequence's tokens from its logits and emitting them).

A tiny random Llama with SmolLM2's vocabulary (49152): the forward is cheap, so what settling costs
per sequence (the finite check and argmax of every row, the softmax and top-p of each sampled row)
stands out; that cost grows with the batch and the vocabulary, not with the model. The random model's
next-token distributions are nearly flat (top-p 0.9 at temperature 0.7 keeps ~42000 tokens), so top-p
sorts the whole vocabulary; `--logit-scale 30` multiplies its head's weights and makes them peaked like
a trained model's (a median of 5 tokens kept), where top-p reads only its top candidates. Every request
runs target-only, greedy or sampled (temperature 0.7, top-p 0.9, seeded, as in `serving_load.py`), all
joining at once, each generating `--tokens` tokens; the prefill is not counted. On the CPU, times are
the thread's CPU time (`time.thread_time`) with one torch thread, which other work on a shared machine
disturbs least; on a GPU, wall time, with the forward's kernels waited for before its time is read (so
the rest is what settling costs the host, its own waits included).

    python bench/batch_step.py --batch 16 64 --tokens 64
    python bench/batch_step.py --modes sampled --logit-scale 30
    python bench/batch_step.py --device cuda --dtype float32   # not run on a GPU yet
    python bench/batch_step.py --batch 64 --modes greedy --profile 16   # where a step's host time goes
    python bench/batch_step.py --device cuda --dtype bfloat16 --layers 30 --hidden 576 --steps eager padded

`--steps padded` runs the target's steps at padded shapes (`PaddedSteps`), replayed from CUDA graphs on a
GPU: what `compile` serves in batches. Each (steps, mode, batch) gets a target of its own, warmed up on
a 4-token run first, so the measured run replays graphs captured before it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, setup, sync, write_result

from metaspec.server.engine.batch import BatchDecoder, Sequence
from metaspec.server.engine.routing import RoutingPolicy
from metaspec.server.engine.sampling import Processing
from metaspec.server.engine.slots import SlotModel
from metaspec_testing.models import random_llama

MODES = {"greedy": Processing(), "sampled": Processing(temperature=0.7, top_p=0.9)}


def clock(device: torch.device) -> Callable[[], float]:
    """The thread's CPU time on the CPU; on a GPU, wall time once the queued kernels are done."""
    if device.type == "cpu":
        return time.thread_time

    def now() -> float:
        sync(device)
        return time.perf_counter()

    return now


def timed(function: Callable[..., Any], now: Callable[[], float], spent: list[float]) -> Callable[..., Any]:
    """`function`, adding its time to `spent[0]`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = now()
        try:
            return function(*args, **kwargs)
        finally:
            spent[0] += now() - start

    return wrapper


PROMPT = 16


def slot_model(model: Any, args: argparse.Namespace, steps: str) -> SlotModel:
    """The target, its steps `eager` (ragged) or `padded` (`PaddedSteps`: CUDA graphs on a GPU)."""
    return SlotModel(model, args.vocab, PROMPT + args.tokens + 8, graphs=steps == "padded")


def run(target: SlotModel, args: argparse.Namespace, mode: str, batch: int) -> dict[str, Any]:
    prompt_length = PROMPT
    decoder = BatchDecoder(target, None, RoutingPolicy("never", 0.7, 5), batch)
    forward, now = [0.0], clock(target.device)
    eager_forward = target.forward
    target.forward = timed(eager_forward, now, forward)  # type: ignore[method-assign]
    ids = torch.Generator().manual_seed(args.seed)
    seqs = [
        Sequence(
            torch.randint(args.vocab, (prompt_length,), generator=ids).tolist(),
            MODES[mode],
            args.tokens,
            lambda tokens: False,
            torch.Generator(target.device).manual_seed(args.seed + i),
        )
        for i in range(batch)
    ]
    decoder.add(seqs)
    forward[0], steps, start = 0.0, 0, now()
    while decoder.running:
        decoder.step()
        steps += 1
    step = now() - start
    target.forward = eager_forward  # type: ignore[method-assign]
    assert all(s.error is None and s.produced == args.tokens for s in seqs)
    return {
        "steps_kind": "eager" if target.padded is None else "padded",
        "mode": mode,
        "batch": batch,
        "steps": steps,
        "step_s": round(step, 3),
        "forward_s": round(forward[0], 3),
        "settle_s": round(step - forward[0], 3),
        "settle_ms_per_step": round(1000 * (step - forward[0]) / steps, 2),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["eager"],
        choices=["eager", "padded"],
        help="the target's steps: ragged and eager, or padded (replayed from CUDA graphs on a GPU)",
    )
    parser.add_argument("--tokens", type=int, default=64, help="tokens each request generates")
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument(
        "--logit-scale", type=float, default=1.0, help="multiplies the head: 30 gives peaked distributions"
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="then profile N steps of the last mode and batch (torch.profiler)"
    )
    add_common_args(parser, "batch_step")
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    model = random_llama(args.seed, args.vocab, args.layers, hidden=args.hidden, heads=4, positions=128)
    with torch.no_grad():
        model.lm_head.weight.mul_(args.logit_scale)
    model = model.to(device, dtype).eval()
    rows = []
    print(
        "| target steps | mode | batch | steps | step s | forward s | rest (settle) s | rest ms/step |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    for mode in args.modes:
        for batch in args.batch:
            for kind in args.steps:
                target = slot_model(model, args, kind)
                # warm-up: first kernels (and the padded shapes' CUDA graphs), on the target measured next
                run(target, argparse.Namespace(**{**vars(args), "tokens": 4}), mode, batch)
                row = run(target, args, mode, batch)
                rows.append(row)
                print(
                    f"| {kind} | {mode} | {batch} | {row['steps']} | {row['step_s']} | {row['forward_s']} | "
                    f"{row['settle_s']} | {row['settle_ms_per_step']} |"
                )
    write_result(args, argv, "batch_step", device, {"machine": machine(device, dtype), "rows": rows})
    if args.profile:
        profile(model, args, args.modes[-1], args.batch[-1])
    return 0


def profile(model: Any, args: argparse.Namespace, mode: str, batch: int) -> None:
    """The host's view of `args.profile` steps: which operators the step's CPU time goes to."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    target = slot_model(model, args, args.steps[-1])
    run(target, argparse.Namespace(**{**vars(args), "tokens": 4}), mode, batch)  # warm-up, as measured above
    with torch_profile(activities=activities) as prof:
        run(target, argparse.Namespace(**{**vars(args), "tokens": args.profile}), mode, batch)
    print(f"{args.profile} steps, {mode}, batch {batch}:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    raise SystemExit(main())

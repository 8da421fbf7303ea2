"""What a verify pass costs at each width on this machine: the measurements behind `Adaptive.width`.

One sequence's target pass over n new tokens (n = 1: a decode step; n = k + 1: a verify pass of k
proposals) after `--context` cached positions, through the engine's own `SlotModel`, run at n tokens a
row and padded to every wider width up to `--widest` (`SlotModel.forward(tokens=)`: the padding's
logits are dropped); and the head's matrix product alone over 1..8 rows. Medians of `--repeat` passes,
the widths taking turns. Where small matrix products take a slow path below some number of rows (on a
2-core AMD EPYC with MKL, 2 and 3 rows cost more than 5), a padded pass runs faster than the narrower
pass it stands for, and `adaptive` pads its speculating steps to the width it measured fastest.

On the CPU the model runs twice, in turns: as transformers loads it (`stock`: MKL's sgemm) and as the
server serves it (`packed`: its linear layers packed for oneDNN, `metaspec.packed`).

    python bench/verify_width.py --threads 2              # the bundled SmolLM2-135M-Instruct, CPU
    python bench/verify_width.py --target DIR --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, served, setup, sync, write_result

from metaspec.causal_lm import load_causal_lm
from metaspec.local.bundled import bundled_model_dir
from metaspec.server.engine.slots import Chunk, SlotModel


def seconds(run: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call of `run`, the device's queued work waited for on both sides."""
    sync(device)
    start = time.perf_counter()
    run()
    sync(device)
    return time.perf_counter() - start


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "verify_width")
    parser.add_argument("--target", type=Path, help="model folder (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--context", type=int, default=200, help="cached positions before each pass")
    parser.add_argument("--widest", type=int, default=6, help="widest pass: maxSpeculativeTokens + 1")
    parser.add_argument("--repeat", type=int, default=15, help="passes per width, in turns")
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    folder = args.target or bundled_model_dir()
    stock = load_causal_lm(folder, dtype).to(device).eval()
    variants = {"stock": stock, "packed": served(stock)} if device.type == "cpu" else {"stock": stock}
    vocab, hidden_size = stock.config.vocab_size, stock.config.hidden_size
    lms = {name: SlotModel(model, vocab, args.context + args.widest + 8) for name, model in variants.items()}
    pairs = [(n, t) for n in range(1, args.widest + 1) for t in range(n, args.widest + 1)]
    passes = {name: {pair: [] for pair in pairs} for name in lms}
    heads: dict[str, dict[int, list[float]]] = {name: {m: [] for m in range(1, 9)} for name in lms}
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, vocab, (args.context + args.widest,), generator=generator).tolist()
    hidden = torch.randn(8, hidden_size, generator=generator).to(device, dtype)
    chunks = {(n, t): Chunk(0, args.context, ids[args.context : args.context + n], keep=n) for n, t in pairs}
    with torch.inference_mode():
        for lm in lms.values():
            lm.forward([Chunk(0, 0, ids[: args.context])])
            for _ in range(2):  # warm-up
                for (_, t), chunk in chunks.items():
                    lm.forward([chunk], tokens=t)
        for _ in range(args.repeat):  # every width once a turn: drift in the machine's load hits all alike
            for name, lm in lms.items():
                for (n, t), chunk in chunks.items():
                    passes[name][n, t].append(seconds(lambda c=chunk, t=t, lm=lm: lm.forward([c], tokens=t), device))
                for m in heads[name]:
                    heads[name][m].append(seconds(lambda m=m, lm=lm: lm._head(hidden[:m]), device))
    result: dict[str, object] = {"model": str(folder)}
    for name in lms:
        step = statistics.median(passes[name][1, 1])
        rows = {f"{n}@{t}": round(statistics.median(passes[name][n, t]) / step, 3) for n, t in pairs}
        head = {str(m): round(statistics.median(v) * 1e3, 2) for m, v in heads[name].items()}
        print(f"{name}: one decode step {step * 1e3:.1f} ms; a pass over n tokens padded to t, in decode steps:")
        print("n \\ t " + "".join(f"{t:>7}" for t in range(1, args.widest + 1)))
        for n in range(1, args.widest + 1):
            cells = [f"{rows[f'{n}@{t}']:>7.2f}" if t >= n else " " * 7 for t in range(1, args.widest + 1)]
            print(f"{n:>5} " + "".join(cells))
        print("head product, ms by rows: " + ", ".join(f"{m}: {ms}" for m, ms in head.items()))
        result[name] = {"decode_step_ms": round(step * 1e3, 2), "relative": rows, "head_ms": head}
    write_result(args, argv, "verify_width", device, {"machine": machine(device, dtype), **result})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

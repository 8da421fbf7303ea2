"""What speculation can gain, from measured costs: the draft/target cost ratio and the verify cost.

For a target and a draft this times, through the server's own `CausalLM` sessions (static cache, and
with `--compile` the same CUDA graphs the server uses), at a context of `--context` tokens:

- t_target: one target decode step; t_draft: one draft decode step, c_step = t_draft / t_target;
- t_verify: one target pass over k+1 tokens (the verify step); v = t_verify / t_target;
- t_round: a whole greedy draft round of k proposals in one call, as the compiled server drafts
  (`CausalLM.propose`: one CUDA graph); c_round = t_round / (k · t_target), the per-proposal cost the
  predictions use (`c_step` is that of a draft stepped one call per token).

Leviathan et al. 2023 ("Fast Inference from Transformers via Speculative Decoding", eq. 1): with a
per-token acceptance rate α and k proposals per round, a round emits E = (1 − α^(k+1)) / (1 − α)
tokens on average, and costs t_round + t_verify = (k·c + v)·t_target. So the predicted speedup over
target-only decoding is

    S(α) = E / (k·c + v)

printed for α = 0.1 … 0.9 and for runs measured with trained drafts (`--acceptance PAIR=FILE.json`: a
bench/server.py result of that pair, its `ours-always` row), next to the speedup that run measured.
Leviathan's α is the chance that a proposal is accepted given that the ones before it were; the
server's acceptance rate (accepted / proposed, every round proposing k) is smaller: with α = 0.5 and
k = 5 it is 0.19. So a run's α is recovered from its tokens per round, E(α) = tokens per round.
Pairs: the real SmolLM2-135M target with drafts cut to N layers (cost depends on the architecture
only), and randomly initialised Llama-3.1-8B with Llama-3.2-1B and ~160M drafts.

    python bench/costs.py --device cuda --dtype bfloat16 --compile \
        --acceptance smollm2:4=bench/results/draft-cuda-4layers.json
    python bench/costs.py --pairs smollm2:4 --steps 5                  # CPU, a quick look
    python bench/costs.py --pairs smollm2:4 smollm2:eagle3 smollm2:eagle3@2048 llama-8b:eagle3@32000

EAGLE-3 drafts (`eagle3`, `eagle3@V` with a V-token head) are timed through the batch engine's models
(`SlotModel`, `FeatureModel`) at batch 1, the path that serves them; their target step and verify pass
are that path's too (the verify pass returning the three aux layers' features).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import sync
from server import random_llama

from metaspec.causal_lm import load_causal_lm
from metaspec.drafts import Eagle3Config, Eagle3Draft
from metaspec.local.bundled import bundled_model_dir
from metaspec.server.engine import CausalLM
from metaspec.server.engine.eagle import FeatureModel
from metaspec.server.engine.slots import Chunk, SlotModel
from metaspec.server.engine.speculative import Session

RESULTS = Path(__file__).parent / "results"
ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def expected_tokens(alpha: float, k: int) -> float:
    """E[tokens per round] = (1 − α^(k+1)) / (1 − α) (Leviathan et al. 2023, eq. 1)."""
    return k + 1.0 if alpha >= 1 else (1 - alpha ** (k + 1)) / (1 - alpha)


def alpha_from_tokens_per_round(tokens: float, k: int) -> float:
    """The α whose E(α) (increasing in α) equals a measured mean of tokens per round, by bisection."""
    low, high = 0.0, 1.0
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if expected_tokens(mid, k) < tokens else (low, mid)
    return round(low, 3)


def predicted_speedup(alpha: float, k: int, c: float, v: float) -> float:
    return expected_tokens(alpha, k) / (k * c + v)


def smollm2_pair(layers: int, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    target = load_causal_lm(bundled_model_dir(), dtype)
    config = target.config.to_dict() | {"num_hidden_layers": layers}
    config.pop("layer_types", None)
    draft = type(target)(type(target.config)(**config)).to(dtype)  # timing only: weights do not matter
    return target.to(device).eval(), draft.to(device).eval()


def time_steps(lm: CausalLM, tokens: int, context: int, steps: int) -> float:
    """Median seconds of one forward over `tokens` new tokens after `context` cached ones."""
    new = torch.randint(0, lm.vocab, (1, tokens), device=lm.device)
    return _median_seconds(lm, context, steps, lambda session: session.feed(new, keep=tokens))


def time_round(lm: CausalLM, k: int, context: int, steps: int) -> float:
    """Median seconds of one greedy draft round of k proposals (`CausalLM.propose`) after `context`."""
    last = torch.randint(0, lm.vocab, (1, 1), device=lm.device)
    seen = torch.zeros(lm.vocab, dtype=torch.bool, device=lm.device)
    penalty = torch.tensor(1.0, device=lm.device)
    return _median_seconds(lm, context, steps, lambda session: session.propose(last, seen, penalty, k))


def _median_seconds(lm: CausalLM, context: int, steps: int, call: Callable[[Session], object]) -> float:
    """Median seconds of `call` on a session holding `context` random tokens, cropped back after each."""
    with torch.inference_mode():
        session = lm.session()
        session.feed(torch.randint(0, lm.vocab, (1, context), device=lm.device))
        times = []
        for i in range(steps + 3):  # the first calls compile and record graphs
            sync(lm.device)
            start = time.perf_counter()
            call(session)
            sync(lm.device)
            if i >= 3:
                times.append(time.perf_counter() - start)
            session.truncate(context)
    return statistics.median(times)


def measure(name: str, target: Any, draft: Any, args: argparse.Namespace) -> dict[str, Any]:
    options = {"static_cache_len": args.context + 64, "compile": args.compile, "compile_max_tokens": args.k + 1}
    vocab = min(target.config.vocab_size, draft.config.vocab_size)
    target_lm, draft_lm = CausalLM(target, vocab, **options), CausalLM(draft, vocab, **options)
    t_target = time_steps(target_lm, 1, args.context, args.steps)
    t_verify = time_steps(target_lm, args.k + 1, args.context, args.steps)
    t_draft = time_steps(draft_lm, 1, args.context, args.steps)
    t_round = time_round(draft_lm, args.k, args.context, args.steps)
    return cost_row(name, t_target, t_draft, t_round, t_verify, args)


def eagle_draft(target: Any, spec: str, device: str, dtype: torch.dtype) -> Eagle3Draft:
    """A random EAGLE-3 draft for `target` (timing only), `eagle3@N` with an N-token head."""
    _, _, size = spec.partition("@")
    vocabulary = torch.arange(int(size)) if size else None
    config = Eagle3Config.for_target(target.config, int(size) if size else None)
    draft = Eagle3Draft(config, target.get_input_embeddings())
    if vocabulary is not None:
        draft.set_vocabulary(vocabulary)
    return draft.to(device, dtype).eval()


def measure_eagle(name: str, target: Any, draft: Eagle3Draft, args: argparse.Namespace) -> dict[str, Any]:
    """The same costs for a feature-level draft, through the batch engine's models at batch 1 (the
    engine serves EAGLE-3 drafts there): target step, verify pass returning the aux features, draft step
    and round of k draft steps on the draft's own features."""
    vocab, length = target.config.vocab_size, args.context + 64
    target_lm, draft_lm = SlotModel(target, vocab, length), FeatureModel(draft, vocab, length)
    layers = draft.config.aux_layers
    context = torch.randint(0, vocab, (args.context,)).tolist()
    with torch.inference_mode():
        _, features = target_lm.forward([Chunk(0, 0, context)], layers)
        draft_lm.observe(0, 0, draft.fuse(features))
        draft_lm.forward([Chunk(0, 0, context)])
        token = [int(context[-1])]

        def timed(call: Callable[[], object]) -> float:
            times = []
            for i in range(args.steps + 3):
                sync(target_lm.device)
                start = time.perf_counter()
                call()
                sync(target_lm.device)
                if i >= 3:
                    times.append(time.perf_counter() - start)
            return statistics.median(times)

        def draft_round() -> None:
            for i in range(args.k):  # step i writes the position after the last target-based entry + i
                draft_lm.forward([Chunk(0, args.context + i, token)])

        t_target = timed(lambda: target_lm.forward([Chunk(0, args.context, token)]))
        verify = Chunk(0, args.context, token * (args.k + 1), keep=args.k + 1)
        t_verify = timed(lambda: target_lm.forward([verify], layers))
        t_draft = timed(lambda: draft_lm.forward([Chunk(0, args.context, token)]))
        t_round = timed(draft_round)
    return cost_row(name, t_target, t_draft, t_round, t_verify, args)


def cost_row(
    name: str, t_target: float, t_draft: float, t_round: float, t_verify: float, args: argparse.Namespace
) -> dict[str, Any]:
    c, v = t_round / (args.k * t_target), t_verify / t_target
    row = {
        "pair": name,
        "target_ms": round(1000 * t_target, 3),
        "draft_ms": round(1000 * t_draft, 3),
        "draft_round_ms": round(1000 * t_round, 3),
        "verify_ms": round(1000 * t_verify, 3),
        "c": round(c, 3),
        "c_step": round(t_draft / t_target, 3),
        "v": round(v, 3),
        "predicted": {f"{a:.1f}": round(predicted_speedup(a, args.k, c, v), 3) for a in ALPHAS},
        "break_even_alpha": break_even(args.k, c, v),
    }
    print(
        f"  {name}: target {row['target_ms']} ms, draft {row['draft_ms']} ms, draft round {row['draft_round_ms']} ms,"
        f" verify {row['verify_ms']} ms",
        file=sys.stderr,
    )
    return row


def break_even(k: int, c: float, v: float) -> float | None:
    """Smallest α (to 0.01) at which speculation with k proposals beats target-only decoding."""
    return next((a / 100 for a in range(101) if predicted_speedup(a / 100, k, c, v) >= 1), None)


def measured_runs(specs: list[str], rows: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """Acceptance and measured speedup of `ours-always` vs `ours-never` in server benchmark results
    (`PAIR=FILE`), with the speedup predicted from that acceptance and the pair's measured costs."""
    costs = {r["pair"]: r for r in rows}
    runs = []
    for spec in specs:
        pair, path = spec.split("=", 1)
        result = json.loads(Path(path).read_text())
        rows = {r["method"]: r for r in result["rows"]}
        always = rows["ours-always"]
        alpha, cost = alpha_from_tokens_per_round(always["tokens_per_round"], k), costs.get(pair)
        runs.append(
            {
                "pair": pair,
                "source": Path(path).name,
                "models": result["models"],
                "acceptance_rate": always["acceptance_rate"],
                "alpha": alpha,
                "measured_speedup": always["speedup_vs_ours_never"],
                "predicted_speedup": round(predicted_speedup(alpha, k, cost["c"], cost["v"]), 3) if cost else None,
            }
        )
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--compile", action="store_true", help="static cache + torch.compile (CUDA graphs)")
    parser.add_argument(
        "--pairs",
        nargs="+",
        default=["smollm2:2", "smollm2:4", "smollm2:8", "llama-8b:llama-1b", "llama-8b:llama-160m"],
        help="target:draft pairs; smollm2:N is SmolLM2 with an N-layer draft; DRAFT eagle3 or eagle3@V is an "
        "EAGLE-3 draft (with a V-token head), timed through the batch engine",
    )
    parser.add_argument("-k", type=int, default=5, help="proposals per round")
    parser.add_argument("--context", type=int, default=256, help="cached tokens before the timed step")
    parser.add_argument("--steps", type=int, default=30, help="timed passes per measurement (median)")
    parser.add_argument("--acceptance", nargs="*", default=[], help="PAIR=FILE: bench/server.py results of a pair")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    for spec in args.acceptance:  # before minutes of measuring
        pair, _, path = spec.partition("=")
        if pair not in args.pairs or not Path(path).is_file():
            parser.error(f"--acceptance {spec}: expected PAIR=FILE with PAIR in --pairs and FILE a result file")
    if args.compile:
        torch._dynamo.config.recompile_limit = 64  # every pair compiles the shared Llama forward code anew
    dtype = getattr(torch, args.dtype)
    rows = []
    for pair in args.pairs:
        target_name, draft_name = pair.split(":")
        if draft_name.startswith("eagle3"):
            target = smollm2_pair(1, args.device, dtype)[0] if target_name == "smollm2" else None
            target = target or random_llama(target_name, args.device, dtype)
            draft = eagle_draft(target, draft_name, args.device, dtype)
            rows.append(measure_eagle(pair, target, draft, args))
        else:
            if target_name == "smollm2":
                target, draft = smollm2_pair(int(draft_name), args.device, dtype)
            else:
                target, draft = (
                    random_llama(target_name, args.device, dtype),
                    random_llama(draft_name, args.device, dtype),
                )
            rows.append(measure(pair, target, draft, args))
        del target, draft
        if args.device == "cuda":
            torch.cuda.empty_cache()
    runs = measured_runs(args.acceptance, rows, args.k)
    report(rows, runs, args)
    result = {
        "benchmark": "speculation costs",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "settings": {k: str(v) for k, v in vars(args).items()},
        "torch": torch.__version__,
        "rows": rows,
        "measured": runs,
    }
    out = args.out or RESULTS / f"costs-{args.device}{'-compile' if args.compile else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


def report(rows: list[dict[str, Any]], runs: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nper-token costs, {args.device} {args.dtype}{' compiled' if args.compile else ''}, k={args.k}")
    header = f"{'pair':<22}{'target ms':>10}{'draft ms':>10}{'round ms':>10}{'c_step':>7}{'c':>7}{'v':>7}"
    print(f"{header}{'S(.5)':>7}{'S(.7)':>7}{'S(.9)':>7}{'α*':>6}")
    for r in rows:
        p = r["predicted"]
        print(
            f"{r['pair']:<22}{r['target_ms']:>10.3f}{r['draft_ms']:>10.3f}{r['draft_round_ms']:>10.3f}"
            f"{r['c_step']:>7.3f}{r['c']:>7.3f}{r['v']:>7.3f}"
            f"{p['0.5']:>7.2f}{p['0.7']:>7.2f}{p['0.9']:>7.2f}{r['break_even_alpha'] or '-':>6}"
        )
    for run in runs:
        print(
            f"measured {run['pair']} ({run['source']}): acceptance {run['acceptance_rate']}, α={run['alpha']},"
            f" speedup {run['measured_speedup']}×"
            f" (predicted {run['predicted_speedup']}×)"
        )


if __name__ == "__main__":
    sys.exit(main())

"""Where a batch-1 speculative round's time goes in the batch decoder: the draft's steps, the target's
verify pass, the rest (routing, settling, the host's bookkeeping).

The prompts are decoded twice by one engine (`maxConcurrency` 1, `always`, k proposals a round); the
second pass is timed, with each part wrapped in a device synchronisation so that its own time is read
(this slows the whole a little: the tokens/s here are below `bench/server.py --passes 2`'s). With
`--compile` on CUDA every new shape is captured into a CUDA graph during the first pass, so the second
one measures replays. A draft model behind the engine is served by the batch decoder when it is an
EAGLE-3 draft (any other draft at batch 1 would take the sequential decoder, which this does not time).

    python bench/round_profile.py --device cuda --dtype bfloat16 --compile --draft DRAFT -k 4 [--stepwise]

A greedy round's draft steps run in one call (`ModelDraft.chained`: one CUDA graph with `--compile`);
`--stepwise` times the draft stepping one call a token instead.

Results: a table on stdout and JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, served, setup, sync, write_result
from server import models, prompt_texts, run_ours

from metaspec.prompts import chat_prompt_ids
from metaspec.server.engine import RoutingPolicy, SpeculativeEngine

PARTS = (
    "round",
    "target: verify pass",
    "draft: k steps",
    "draft: one step",
    "draft: one step's body",
    "draft: k steps in one call",
    "draft: takes the target's features",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "round_profile")
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", required=True, help="an EAGLE-3 draft's URI")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("-k", type=int, default=4, help="maxSpeculativeTokens")
    parser.add_argument("--compile", action="store_true", help="CUDA graphs of the batch decoder's steps")
    parser.add_argument(
        "--stepwise", action="store_true", help="the draft steps one call a token (`ModelDraft.chained` off)"
    )
    args = parser.parse_args(argv)
    device, dtype = setup(args)
    if args.smoke:
        args.prompts, args.max_tokens = 2, 8
    args.arch, args.draft_layers, args.temperature, args.prompt_set = None, 4, 0.0, "builtin"
    target, draft, tokenizer, label = models(args, dtype)
    target, draft = served(target), served(draft)  # as the server runs them (packed on the CPU)
    prompts = [chat_prompt_ids(tokenizer, text) for text in prompt_texts("builtin", args.prompts)]
    routing = RoutingPolicy("always", 0.7, args.k)
    engine = SpeculativeEngine.from_models(target, draft, tokenizer, routing, compile=args.compile, max_batch=1)
    if engine.sequential is not None:
        parser.error("this draft is decoded by the sequential decoder at batch 1: give an EAGLE-3 draft")
    engine.decoder.draft.chained = not args.stepwise
    for prompt in prompts:  # the first pass: warm-up, and a CUDA graph for each new shape
        run_ours(engine, prompt, args)
    decoder = engine.decoder
    spent: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    rounds = [0]  # rounds running: the parts are timed within rounds only (not in a prompt's prefill)

    def timed(owner: Any, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(owner, name)

        def wrapper(*a: Any, **kw: Any) -> Any:
            if label != "round" and not rounds[0]:
                return inner(*a, **kw)
            sync(device)
            start = time.perf_counter()
            rounds[0] += label == "round"
            try:
                return inner(*a, **kw)
            finally:
                rounds[0] -= label == "round"
                sync(device)
                spent[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(owner, name, wrapper)

    draft = decoder.draft
    parts = [(decoder, "step"), (decoder.target, "forward"), (draft, "propose"), (draft.lm, "forward")]
    parts += [(draft.lm.padded, "run"), (draft.lm.padded, "chain"), (draft, "observe")]
    for (owner, name), part in zip(parts, PARTS, strict=True):
        if owner is not None:  # no padded steps without --compile on CUDA
            timed(owner, name, part)
    tokens = seconds = 0.0
    for prompt in prompts:
        out = run_ours(engine, prompt, args)
        tokens, seconds = tokens + len(out["ids"]), seconds + out["seconds"]
    rows = [
        {
            "part": part,
            "ms_per_call": round(1000 * spent[part] / calls[part], 3),
            "calls": calls[part],
            "share_of_wall": round(spent[part] / seconds, 4),
        }
        for part in sorted(spent, key=list(PARTS).index)
    ]
    print(f"\n{label}, {args.device} {args.dtype}, k={args.k}, compile={args.compile}: {tokens / seconds:.1f} tok/s")
    print(f"{'part':<38}{'ms/call':>9}{'calls':>7}{'share':>8}")
    for row in rows:
        print(f"{row['part']:<38}{row['ms_per_call']:>9.3f}{row['calls']:>7}{row['share_of_wall']:>8.1%}")
    body = {"machine": machine(device, dtype), "models": label, "tokens_per_second": round(tokens / seconds, 2)}
    write_result(args, sys.argv[1:] if argv is None else argv, "round_profile", device, {**body, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())

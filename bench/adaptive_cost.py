"""Where `adaptive` spends its time against target-only, one request at a time (the batch-1 decoder).

The same requests from the `serving_load` mix are decoded under `never` and `adaptive` in turns (the
order alternating turn by turn, so drift in a shared machine's load hits both), each turn with a fresh
decoder (as a fresh replica: `adaptive` learns from nothing), and the decoding thread's CPU time is
summed per part of a round: the prompt's `prefill`, the target's verify pass by proposals scored
(`verify0` is a target-only step), the draft's proposals (`propose`) and its catch-up on a request before
a probe (`catch_up`). With `--threads 1` every part runs on the decoding thread, and CPU time is what
other work on a shared machine disturbs least (it still slows memory-bound steps).

The summary splits `adaptive`'s extra time into what its speculating rounds cost beyond target-only
steps emitting the same tokens (`probes`: catch-up, proposals and the longer verify pass, less the
steps they spared), and the rest (`steps`: its target-only steps' time against `never`'s per step,
which no routing decision changes: interference from other work). It also reports `adaptive`'s
estimates at the end of each turn: α, and per batch-size range the time of a target-only step and a
proposal's cost c relative to it.

    cd bench && python adaptive_cost.py --requests 6 --turns 4 --threads 1   # docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from _common import add_common_args, machine, setup, write_result
from server import models
from serving_load import POLICIES, request_mix

from metaspec.server.engine import SpeculativeEngine
from metaspec.server.engine import speculative as sp
from metaspec.server.engine.protocol import RequestStats
from metaspec.server.engine.routing import Adaptive
from metaspec.server.engine.sampling import Processing


@contextmanager
def timed_parts(seconds: defaultdict[str, float], calls: Counter, tokens: Counter) -> Iterator[None]:
    """Sum the CPU time of the sequential decoder's round parts into `seconds` while inside; `tokens`:
    what the verify passes of each kind emitted."""

    def wrap(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(run: Any, *args: Any) -> Any:
            part = name
            if name == "verify":
                part = f"verify{args[0].shape[0]}" if run.target.length else "prefill"
            start = time.thread_time()
            out = method(run, *args)
            if name != "propose" or args[0]:  # a round without proposals drafts nothing
                seconds[part] += time.thread_time() - start
                calls[part] += 1
            if name == "verify":
                tokens[part] += len(out)
            return out

        return timed

    originals = {name: getattr(sp._Run, f"_{name}") for name in ("catch_up", "propose", "verify")}
    try:
        for name, method in originals.items():
            setattr(sp._Run, f"_{name}", wrap(name, method))
        yield
    finally:
        for name, method in originals.items():
            setattr(sp._Run, f"_{name}", method)


def decode_all(engine: SpeculativeEngine, requests: list[Any], max_tokens: int) -> int:
    decoder = engine.sequential
    assert decoder is not None
    tokens = 0
    for request in requests:
        proc = Processing.of(request.params, ())
        generator = torch.Generator().manual_seed(request.params.seed or 0)
        for new in decoder.decode(request.prompt, proc, max_tokens, RequestStats(), generator):
            tokens += len(new)
    return tokens


def estimates(adaptive: Adaptive | None) -> dict[str, Any] | None:
    if adaptive is None:
        return None
    buckets = {f"batch<={1 << key}": {"plain_seconds": b.plain, "costs": b.costs, "on": b.on} for key, b in adaptive.buckets.items()}  # fmt: skip
    return {"alpha": adaptive.alpha, "steps": adaptive.steps, "buckets": buckets}


def turn(base: SpeculativeEngine, policy: str, requests: list[Any], max_tokens: int) -> dict[str, Any]:
    seconds: defaultdict[str, float] = defaultdict(float)
    calls: Counter = Counter()
    emitted: Counter = Counter()
    engine = base.with_routing(POLICIES[policy], max_batch=1)
    wall, cpu = time.perf_counter(), time.thread_time()
    with timed_parts(seconds, calls, emitted):
        tokens = decode_all(engine, requests, max_tokens)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    parts = {p: {"calls": calls[p], "tokens": emitted[p], "cpu_seconds": round(s, 4)} for p, s in seconds.items()}
    assert engine.sequential is not None
    return {"policy": policy, "tokens": tokens, "wall_seconds": round(wall, 3), "cpu_seconds": round(cpu, 3),
            "parts": parts, "estimates": estimates(engine.sequential.adaptive)}  # fmt: skip


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """adaptive / never tokens per second (wall and CPU), and adaptive's extra CPU time split into its
    speculating rounds' cost and its target-only steps' drift, as shares of `never`'s time."""

    def total(policy: str, key: str) -> float:
        return sum(r[key] for r in rows if r["policy"] == policy)

    def part(policy: str, name: str, key: str = "cpu_seconds") -> float:
        return sum(r["parts"].get(name, {}).get(key, 0) for r in rows if r["policy"] == policy)

    step = part("never", "verify0") / part("never", "verify0", "calls")  # a target-only step, CPU seconds
    verifies = {p for r in rows for p in r["parts"] if p.startswith("verify") and p != "verify0"}  # with proposals
    spent = sum(part("adaptive", p) for p in [*verifies, "propose", "catch_up"])
    probes = spent - step * sum(part("adaptive", p, "tokens") for p in verifies)  # less the steps they spared
    steps = part("adaptive", "verify0") - step * part("adaptive", "verify0", "calls")
    never = total("never", "cpu_seconds")
    speed = {
        clock: round((total("adaptive", "tokens") / total("adaptive", clock)) / (total("never", "tokens") / total("never", clock)), 3)
        for clock in ("wall_seconds", "cpu_seconds")
    }  # fmt: skip
    return {"adaptive_over_never": speed, "step_cpu_seconds": round(step, 4),
            "extra_share": {"probes": round(probes / never, 4), "steps": round(steps / never, 4)}}  # fmt: skip


def add_model_args(parser: argparse.ArgumentParser, name: str) -> None:
    """The flags of the adaptive benchmarks (this one and `adaptive_batch.py`): the common ones, the
    target, the draft, and the length of each request of the mix."""
    add_common_args(parser, name)
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", help="draft model URI (default: derived from the target, untrained)")
    parser.add_argument("--draft-layers", type=int, default=4, help="layers of a derived draft")
    parser.add_argument("--max-tokens", type=int, default=64)


@dataclass
class Setup:
    device: torch.device
    dtype: torch.dtype
    label: str
    base: SpeculativeEngine
    """A target-only engine over the models, whose `with_routing` gives each policy its own decoder."""
    requests: list[Any]
    """The serving benchmark's request mix (`serving_load.request_mix`), 64 requests."""


def load(args: argparse.Namespace, max_batch: int) -> Setup:
    """The models (real weights only), the mix, and the base engine of `add_model_args`' flags."""
    args.arch, args.arch_draft = None, None  # `models` reads them
    device, dtype = setup(args)
    args.device = device.type
    target, draft, tokenizer, label = models(args, dtype)
    base = SpeculativeEngine.from_models(target, draft, tokenizer, POLICIES["never"], max_batch=max_batch)
    return Setup(device, dtype, label, base, request_mix(tokenizer, 64, args.max_tokens))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, "adaptive_cost")
    parser.add_argument("--requests", type=int, default=4, help="requests of the mix decoded per turn")
    parser.add_argument("--turns", type=int, default=4, help="turns of each policy, the order alternating")
    args = parser.parse_args(argv)
    loaded = load(args, max_batch=1)
    base, requests = loaded.base, loaded.requests[: args.requests]
    rows = []
    for n in range(args.turns):
        for policy in ("never", "adaptive") if n % 2 == 0 else ("adaptive", "never"):
            rows.append({"turn": n, **turn(base, policy, requests, args.max_tokens)})
            print(rows[-1], file=sys.stderr, flush=True)
    result = summary(rows)
    body = {"models": loaded.label, "machine": machine(loaded.device, loaded.dtype), "rows": rows, **result}
    write_result(args, argv, "adaptive_cost", loaded.device, body)
    speed, extra = result["adaptive_over_never"], result["extra_share"]
    print(f"adaptive / never tokens per second: wall {speed['wall_seconds']:.3f}, CPU {speed['cpu_seconds']:.3f}")
    print(
        f"adaptive's extra CPU time, share of never's: probes {extra['probes']:.2%}, target-only steps {extra['steps']:.2%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

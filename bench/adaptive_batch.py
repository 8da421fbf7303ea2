"""`adaptive` against target-only in a full batch: two batch decoders over the same models, one per
policy, stepped in turns (the order alternating step by step, so drift in a shared machine's load hits
both) on the same workload: `--batch` requests of the `serving_load` mix running, each finished one
replaced at once by the next of the mix (as under that many clients), `--max-tokens` each.

It reports each decoder's wall time in its steps and in its joins (the prompts' prefill), how many of
its steps speculated (`adaptive`'s probes, with this untrained draft), what the draft's catch-up before
them and its proposals cost, and `adaptive`'s estimates at the end. `bench/adaptive_cost.py` splits
the same comparison by round part one request at a time.

    cd bench && python adaptive_batch.py --batch 16 --steps 200   # docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from _common import machine, write_result
from adaptive_cost import add_model_args, estimates, load
from serving_load import POLICIES

from metaspec.server.engine import SpeculativeEngine
from metaspec.server.engine.batch import BatchDecoder, Sequence
from metaspec.server.engine.sampling import Processing


class Replica:
    """One policy's decoder, kept at `batch` running sequences, its time summed by part."""

    def __init__(self, base: SpeculativeEngine, policy: str, requests: list[Any], args: argparse.Namespace) -> None:
        self.policy, self.requests, self.args = policy, requests, args
        decoder = base.with_routing(POLICIES[policy], max_batch=args.batch).decoder
        assert decoder is not None
        self.decoder: BatchDecoder = decoder
        self.seconds: Counter = Counter()
        self.joined = 0
        if decoder.draft is not None:
            for name in ("catch_up", "propose"):
                setattr(decoder.draft, name, self._timed(name, getattr(decoder.draft, name)))

    def _timed(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any) -> Any:
            start = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.seconds[name] += time.perf_counter() - start

        return timed

    def tick(self) -> None:
        """Fill the batch, then one step."""
        room = self.args.batch - len(self.decoder.running)
        if room > 0:
            seqs = [self._next() for _ in range(room)]
            start = time.perf_counter()
            self.decoder.add(seqs)
            self.seconds["join"] += time.perf_counter() - start
        start = time.perf_counter()
        _, speculative = self.decoder.step()
        self.seconds["step"] += time.perf_counter() - start
        self.seconds["speculating_steps"] += speculative

    def _next(self) -> Sequence:
        request = self.requests[self.joined % len(self.requests)]
        self.joined += 1
        generator = torch.Generator().manual_seed(request.params.seed or 0)
        proc = Processing.of(request.params, ())
        return Sequence(request.prompt, proc, self.args.max_tokens, lambda tokens: False, generator)

    def row(self) -> dict[str, Any]:
        seconds = {k: round(v, 3) for k, v in self.seconds.items()}
        return {"policy": self.policy, "joined": self.joined, **seconds, "estimates": estimates(self.decoder.adaptive)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser, "adaptive_batch")
    parser.add_argument("--batch", type=int, default=16, help="sequences running at every step")
    parser.add_argument("--steps", type=int, default=200, help="steps of each decoder")
    args = parser.parse_args(argv)
    loaded = load(args, max_batch=args.batch)
    replicas = [Replica(loaded.base, policy, loaded.requests, args) for policy in ("never", "adaptive")]
    for n in range(args.steps):
        for replica in replicas if n % 2 == 0 else replicas[::-1]:
            replica.tick()
    rows = [r.row() for r in replicas]
    for row in rows:
        print(row)
    never, adaptive = rows
    ratio = (never["step"] + never["join"]) / (adaptive["step"] + adaptive["join"])
    print(f"adaptive / never tokens per second (steps and joins, wall): {ratio:.3f}")
    body = {"models": loaded.label, "machine": machine(loaded.device, loaded.dtype), "rows": rows}
    write_result(args, argv, "adaptive_batch", loaded.device, body | {"adaptive_over_never": round(ratio, 3)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

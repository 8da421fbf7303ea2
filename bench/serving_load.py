"""Serving under load: aggregate throughput and latency with 1, 4, 16 and 64 concurrent clients.

Closed-loop clients (each sends its next request as soon as the previous one ends) draw from one fixed
mix of `builtin://eval` prompts, alternately greedy and sampled (temperature 0.7, top-p 0.9, seeded;
`--greedy`: all greedy), for a bounded time per cell, after `--warm-up` seconds of the same load
unmeasured. Per cell: aggregate output tokens/s (tokens streamed before the deadline over the cell's
time), p50/p95 time to first token and inter-token latency (a round's tokens share its time). A request
still waiting for its first token at the deadline counts with its wait so far (a lower bound), so a
queue that never drains shows in the TTFT tail rather than vanishing from it.

Systems, each with a fresh engine per cell over the same loaded models:
- `metaspec:<policy>`: the continuous-batching engine, batch up to the number of clients (`adaptive` is
  the shipped default; `default` measures whatever `Routing()` is);
- `batch-1`: the engine at maxConcurrency 1 without a draft, one request at a time, as SpecServe serves
  it: the batch decoder at one row where `--compile` replays graphs of Liger-Kernel's fused body
  (`kernels.fusible`), else the sequential decoder (on a static cache, torch.compiled with `--compile`);
- with `--serial`, each `metaspec:<policy>` and `batch-1` next to its `-serial` twin
  (`metaspec-serial:<policy>`, `batch-1-serial`): the same engine with the batch decoder's `overlap` off,
  every step read by the host before the next one is launched (what a CPU runs);
- `lookup:<policy>` (with `--lookup`): the engine with prompt lookup in place of the draft
  (`promptLookup`, `--lookup-history`, k = `--lookup-k`);
- `lookup-draft:<policy>` (with `--lookup`): the draft behind prompt lookup (`draft` and `promptLookup`
  both set; under `adaptive` each decided apart), k = `--lookup-k`;
- `hf-batched`: transformers' `generate` over left-padded batches of whatever requests are waiting
  (static batching: a batch runs to its longest member), the library a user could pick instead. Its
  continuous-batching manager (`init_continuous_batching`) did not produce a token on CPU here (paged
  attention), so padded `generate` it is; it decodes every request greedily (one processing per batch).

    python bench/serving_load.py                               # CPU, SmolLM2 + 4-layer derived draft
    python bench/serving_load.py --draft s3://bucket/drafts/x  # the pipeline's trained draft
    python bench/serving_load.py --systems metaspec lookup --policies never adaptive --lookup 1 5
    python bench/serving_load.py --draft DRAFT --systems lookup lookup-draft --policies adaptive --lookup 1 5
    python bench/serving_load.py --device cuda --dtype bfloat16 --arch llama-8b --arch-draft llama-160m
    python bench/serving_load.py --device cuda --dtype bfloat16 --compile   # what `compile: true` serves
    python bench/serving_load.py --arch host --arch-draft host --greedy --systems metaspec --policies never

`--compile` (CUDA) is what `SpecServe.spec.compile` turns on: batches replay their decode steps from CUDA
graphs, `batch-1` runs on a static cache and torch.compile; every cache holds `--cache-len` positions.
Ours runs the models as the server does (on the CPU their linear layers packed for oneDNN: `served`),
`hf-batched` as transformers loads them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import queue
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, off_main, percentile, served, setup, write_result
from server import models

from metaspec.api.serving import THRESHOLD_POLICIES, PromptLookup, Routing
from metaspec.builtin import records
from metaspec.prompts import chat_prompt_ids
from metaspec.server.engine import RoutingPolicy, SamplingParams, SpeculativeEngine
from metaspec.server.engine import engine as engine_module
from metaspec.server.engine.engine import LookupFirst

POLICIES = {
    "never": RoutingPolicy("never", 0.7, 5),
    "always": RoutingPolicy("always", 0.7, 5),
    "per-token": RoutingPolicy("per-token", 0.7, 5),
    "first-token@0.7": RoutingPolicy("first-token", 0.7, 5),
    "adaptive": RoutingPolicy("adaptive", 0.7, 5),
}


@dataclass
class Request:
    prompt: list[int]
    params: SamplingParams


@dataclass
class Cell:
    """What the clients of one (system, clients) cell observed."""

    tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    requests: int = 0
    finished: int = 0


class System(Protocol):
    def stream(self, request: Request) -> AsyncIterator[int]:
        """Token counts as they arrive."""

    def close(self) -> None: ...


class Metaspec:
    def __init__(self, engine: SpeculativeEngine) -> None:
        self.engine = engine

    async def stream(self, request: Request) -> AsyncIterator[int]:
        async with contextlib.aclosing(self.engine.generate(request.prompt, request.params)) as deltas:
            async for delta in deltas:
                if delta.token_ids:
                    yield len(delta.token_ids)

    def close(self) -> None:
        self.engine.close()


class _Steps(LogitsProcessor):
    """Posts one token to every still-running row at each step of `generate`."""

    def __init__(self, posts: list[Callable[[Any], None]], eos: set[int], prompt_length: int) -> None:
        self.posts, self.eos, self.start = posts, eos, prompt_length
        self.done = [False] * len(posts)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if input_ids.shape[1] > self.start:  # the previous step's tokens exist now
            last = input_ids[:, -1].tolist()
            for row, token in enumerate(last):
                if not self.done[row]:
                    self.posts[row](1)
                    self.done[row] = token in self.eos
        return scores


class HFBatched:
    """Padded `generate` over the requests waiting when the previous batch ends (one worker thread)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch: int, max_tokens: int, eos: set[int]) -> None:
        self.model, self.tokenizer, self.max_batch, self.max_tokens, self.eos = (
            model,
            tokenizer,
            max_batch,
            max_tokens,
            eos,
        )
        self.waiting: queue.SimpleQueue[tuple[Request, Callable[[Any], None]]] = queue.SimpleQueue()
        self.stopped = threading.Event()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    async def stream(self, request: Request) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def post(item: Any) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(inbox.put_nowait, item)

        self.waiting.put((request, post))
        while (item := await inbox.get()) is not None:
            yield item

    def _work(self) -> None:
        while not self.stopped.is_set():
            try:
                batch = [self.waiting.get(timeout=0.1)]
            except queue.Empty:
                continue
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            self._generate(batch)

    @torch.inference_mode()
    def _generate(self, batch: list[tuple[Request, Callable[[Any], None]]]) -> None:
        width = max(len(r.prompt) for r, _ in batch)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r, _ in batch], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r, _ in batch], device=ids.device)
        posts = [post for _, post in batch]
        steps = _Steps(posts, self.eos, width)
        out = self.model.generate(
            ids, attention_mask=mask, max_new_tokens=self.max_tokens, do_sample=False, pad_token_id=pad,
            logits_processor=LogitsProcessorList([steps]), stopping_criteria=StoppingCriteriaList([self._stop]),
        )  # fmt: skip
        for row, post in enumerate(posts):
            if not steps.done[row] and out.shape[1] > width:
                post(1)  # the last step's token (no processor call follows it)
            post(None)

    def _stop(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """At the end of a cell: end the batch in progress (its clients are gone)."""
        return torch.full((input_ids.shape[0],), self.stopped.is_set(), dtype=torch.bool, device=input_ids.device)

    def close(self) -> None:
        self.stopped.set()
        self.worker.join()


async def run_cell(system: System, mix: list[Request], clients: int, seconds: float) -> tuple[Cell, float]:
    cell = Cell()
    start = time.monotonic()
    deadline = start + seconds
    counter = iter(range(1 << 30))

    async def client() -> None:
        while time.monotonic() < deadline:
            request = mix[next(counter) % len(mix)]
            cell.requests += 1
            sent = last = time.monotonic()
            first = True
            try:
                async with asyncio.timeout(deadline - sent), contextlib.aclosing(system.stream(request)) as stream:
                    async for n in stream:
                        now = time.monotonic()
                        if first:
                            cell.ttft.append(now - sent)
                            first = False
                        else:
                            cell.itl.extend([(now - last) / n] * n)
                        cell.tokens += n
                        last = now
                cell.finished += 1
            except TimeoutError:
                if first:
                    cell.ttft.append(deadline - sent)  # censored: at least this long
                return

    await asyncio.gather(*(client() for _ in range(clients)))
    return cell, time.monotonic() - start


async def warm_up(system: System, mix: list[Request], clients: int, seconds: float) -> None:
    """The cell's own load for `seconds`, then `clients` short requests at once, unmeasured: the level's
    batch shapes meet their first kernels (on a GPU cuBLAS's heuristics, and with `--compile` the CUDA
    graphs' captures, again whenever the KV slots grow) here rather than in the measured cell. The short
    requests end only once the system has finished what the load left running (`hf-batched` cannot stop
    a batch its clients left), so every system starts the cell idle."""

    async def one(request: Request) -> None:
        short = Request(request.prompt, SamplingParams(max_tokens=2))
        async with contextlib.aclosing(system.stream(short)) as stream:
            async for _ in stream:
                pass

    if seconds > 0:
        await run_cell(system, mix, clients, seconds)
    await asyncio.gather(*(one(mix[i % len(mix)]) for i in range(clients)))


def row(system: str, clients: int, cell: Cell, elapsed: float) -> dict[str, Any]:
    ms = lambda v: None if v is None else round(1000 * v, 1)  # noqa: E731
    return {
        "system": system,
        "clients": clients,
        "tokens_per_second": round(cell.tokens / elapsed, 2),
        "ttft_p50_ms": ms(percentile(cell.ttft, 50)),
        "ttft_p95_ms": ms(percentile(cell.ttft, 95)),
        "itl_p50_ms": ms(percentile(cell.itl, 50)),
        "itl_p95_ms": ms(percentile(cell.itl, 95)),
        "requests": cell.requests,
        "finished": cell.finished,
        "seconds": round(elapsed, 1),
    }


def request_mix(tokenizer: Any, n: int, max_tokens: int, greedy: bool = False) -> list[Request]:
    inputs = [r.input for r in records("eval")]
    chosen = inputs[:: max(1, len(inputs) // n)][:n]
    mix = []
    for i, text in enumerate(chosen):
        sampled = i % 2 == 1 and not greedy
        params = SamplingParams(max_tokens, temperature=0.7 if sampled else 0.0, top_p=0.9 if sampled else 1.0, seed=i)
        mix.append(Request(chat_prompt_ids(tokenizer, text), params))
    return mix


def systems(
    args: argparse.Namespace,
    engines: tuple[SpeculativeEngine, SpeculativeEngine | None],
    target: Any,
    ours: tuple[Any, Any],
    tokenizer: Any,
    clients: int,
) -> dict:
    """Factories of each system for a cell of `clients`; `engines`: ours with the draft and without it
    (None where `batch-1` does not run), `ours`: the target and the draft as served."""
    base, alone = engines
    policies = {name: POLICIES[name] for name in args.policies if name in POLICIES}
    if "default" in args.policies:
        policies["default"] = RoutingPolicy.of(Routing())
    made: dict[str, Callable[[], System]] = {
        f"metaspec:{name}": (lambda p=policy: Metaspec(base.with_routing(p, max_batch=clients)))
        for name, policy in policies.items()
    }
    if alone is not None:
        made["batch-1"] = lambda: Metaspec(alone.with_routing(POLICIES["never"], max_batch=1))
    if args.lookup:  # prompt lookup in place of the draft, or in front of it, at its own k
        lookup = PromptLookup(min_match=args.lookup[0], max_match=args.lookup[1], history=args.lookup_history)
        proposers = {"lookup": lookup, "lookup-draft": LookupFirst(lookup, ours[1])}
        for name, policy in policies.items():
            if policy.policy in THRESHOLD_POLICIES:
                continue
            routing = replace(policy, max_speculative_tokens=args.lookup_k)
            for system, proposer in proposers.items():
                made[f"{system}:{name}"] = lambda r=routing, p=proposer: Metaspec(
                    SpeculativeEngine.from_models(
                        ours[0], p, tokenizer, r, max_batch=clients, compile=args.compile, **static(args)
                    )
                )
    eos = set(base._stop_ids)
    made["hf-batched"] = lambda: HFBatched(target, tokenizer, clients, args.max_tokens, eos)
    made = {name: make for name, make in made.items() if name.split(":")[0] in args.systems or name in args.systems}
    if args.serial:
        for name in [n for n in made if n.split(":")[0] in ("metaspec", "batch-1")]:
            kind, _, policy = name.partition(":")
            made[f"{kind}-serial" + (f":{policy}" if policy else "")] = lambda make=made[name]: serial(make())
    return made


def serial(system: Metaspec) -> Metaspec:
    """`system` with every step read before the next is launched (`BatchDecoder.overlap` off)."""
    if system.engine.decoder is not None:
        system.engine.decoder.overlap = False
    return system


def static(args: argparse.Namespace) -> dict[str, Any]:
    """With --compile, every cache's length (the static cache at batch 1, the bound of the batch caches)."""
    return {"static_cache_len": args.cache_len} if args.compile else {}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "serving_load")
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", help="draft model URI (default: derived from the target, untrained)")
    parser.add_argument("--draft-layers", type=int, default=4, help="layers of a derived draft")
    parser.add_argument(
        "--arch",
        choices=["llama-8b", "host"],
        help="random-init target architecture (no download); `host`: one 16-wide layer, the host's work alone",
    )
    parser.add_argument("--arch-draft", default="llama-1b", choices=["llama-1b", "llama-160m", "host"])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=25.0, help="time per cell")
    parser.add_argument("--warm-up", type=float, default=5.0, help="unmeasured seconds of each cell's load first")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each cell, systems alternating (pooled)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--mix", type=int, default=64, help="distinct requests in the mix")
    parser.add_argument(
        "--greedy",
        action="store_true",
        help="every request greedy (a random model's flat distribution makes top-p sort the whole vocabulary)",
    )
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument("--systems", nargs="+", default=["metaspec", "batch-1", "hf-batched"])
    parser.add_argument(
        "--lookup",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="systems lookup:<policy> and lookup-draft:<policy> (add `lookup`, `lookup-draft` to --systems): "
        "promptLookup with these minMatch and maxMatch instead of the draft, or in front of it, under each of "
        "--policies that needs no draft confidence",
    )
    parser.add_argument("--lookup-history", type=int, default=0, help="promptLookup.history of the lookup systems")
    parser.add_argument("--lookup-k", type=int, default=2, help="maxSpeculativeTokens of the lookup systems")
    parser.add_argument("--serial", action="store_true", help="each metaspec system next to its -serial twin")
    parser.add_argument(
        "--switch-interval",
        type=float,
        help="the engine's SWITCH_INTERVAL in seconds (the interpreter's default is 0.005)",
    )
    parser.add_argument(
        "--cache-share",
        type=float,
        help="the engine's CACHE_SHARE: the share of free GPU memory its batch caches take up front (0: none, "
        "they grow as steps need)",
    )
    parser.add_argument("--compile", action="store_true", help="CUDA graphs in batches, torch.compile at batch 1")
    parser.add_argument("--cache-len", type=int, default=1024, help="positions per sequence with --compile")
    args = parser.parse_args(argv)
    if args.switch_interval is not None:
        engine_module.SWITCH_INTERVAL = args.switch_interval
    if args.cache_share is not None:
        engine_module.CACHE_SHARE = args.cache_share
    device, dtype = setup(args)
    args.device = device.type
    # models and systems are built off the main thread, which then runs no torch: each system's worker
    # thread is the process's only OpenMP pool while it runs, as in a server (`off_main`)
    target, draft, tokenizer, label = off_main(lambda: models(args, dtype))
    ours, ours_draft = off_main(lambda: (served(target), served(draft)))  # hf-batched runs the models as loaded
    mix = request_mix(tokenizer, args.mix, args.max_tokens, args.greedy)

    def engine(proposer: Any | None) -> SpeculativeEngine:
        return off_main(
            lambda: SpeculativeEngine.from_models(
                ours, proposer, tokenizer, POLICIES["never"], max_batch=1, compile=args.compile, **static(args)
            )
        )

    base = engine(ours_draft)
    alone = engine(None) if "batch-1" in args.systems else None  # batch-1's: only when it runs
    rows: list[dict[str, Any]] = []
    for clients in args.clients:
        made = systems(args, (base, alone), target, (ours, ours_draft), tokenizer, clients)
        pooled = {name: (Cell(), 0.0) for name in made}
        # systems take turns, in reverse order every other turn: drift in a shared machine's load hits all alike
        for turn in range(args.repeat):
            for name in list(made)[:: -1 if turn % 2 else 1]:
                system = off_main(made[name])
                asyncio.run(warm_up(system, mix, clients, args.warm_up))
                cell, elapsed = asyncio.run(run_cell(system, mix, clients, args.seconds))
                system.close()
                print(_line(row(name, clients, cell, elapsed)), file=sys.stderr, flush=True)
                pooled[name] = _pool(*pooled[name], cell, elapsed)
        rows += [row(name, clients, cell, elapsed) for name, (cell, elapsed) in pooled.items()]
        body = {"models": label, "machine": machine(device, dtype), "rows": rows}
        write_result(args, argv, "serving_load", device, body)  # after every level: a time limit keeps them
    report(rows, label)
    return 0


def _pool(total: Cell, seconds: float, cell: Cell, elapsed: float) -> tuple[Cell, float]:
    """Two runs of one (system, clients) cell as one: tokens and time add, latencies pool."""
    total.tokens += cell.tokens
    total.ttft += cell.ttft
    total.itl += cell.itl
    total.requests += cell.requests
    total.finished += cell.finished
    return total, seconds + elapsed


def _line(r: dict[str, Any]) -> str:
    return (
        f"{r['system']:<26}{r['clients']:>4}{r['tokens_per_second']:>9.1f}{_ms(r['ttft_p50_ms'])}{_ms(r['ttft_p95_ms'])}"
        f"{_ms(r['itl_p50_ms'])}{_ms(r['itl_p95_ms'])}{r['finished']:>6}"
    )


def _ms(v: float | None) -> str:
    return f"{'-' if v is None else format(v, '.0f'):>9}"


def report(rows: list[dict[str, Any]], label: str) -> None:
    print(f"\nserving under load, {label}")
    print(f"{'system':<26}{'cl':>4}{'tok/s':>9}{'TTFT p50':>9}{'TTFT p95':>9}{'ITL p50':>9}{'ITL p95':>9}{'done':>6}")
    for r in rows:
        print(_line(r))


if __name__ == "__main__":
    raise SystemExit(main())

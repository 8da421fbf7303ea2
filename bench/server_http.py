"""What the HTTP layer costs: the same greedy chat requests through the engine directly, through the API
without streaming (httpx), and streamed through the official `openai` client, side by side in one run.

    .venv/bin/python bench/server_http.py                      # CPU: SmolLM2-135M + a 4-layer derived draft
    .venv/bin/python bench/server_http.py --device cuda        # GPU: bf16, static cache + torch.compile

Prints a table (tokens/s, time to first token, latency, overhead against the engine alone) and writes
`bench/results/server_http-<device>.json`. Greedy outputs must be identical in all three modes; the
script says so, and exits 1 if they are not. The derived draft is untrained: this measures the HTTP
layer, not speculation (see bench/server.py for that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import openai

from metaspec.api.serving import ServeSampling, SpecServeSpec
from metaspec.builtin import records
from metaspec.local.bundled import bundled_model_dir
from metaspec.server.app import create_app
from metaspec.server.engine import SamplingParams, SpeculativeEngine
from metaspec.server.serving import ServerSettings
from metaspec_testing.models import cut_draft
from metaspec_testing.servers import serve_in_thread

RESULTS = Path(__file__).parent / "results"
MODEL = "bench"


@dataclass
class Run:
    """One request: its output, tokens, and timings in seconds."""

    text: str
    tokens: int
    ttft: float | None  # None without streaming: the first token arrives with the last
    seconds: float


def add_model_args(parser: argparse.ArgumentParser) -> None:
    """The served pair and its routing policy (what `build_engine` reads)."""
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", help="draft model URI (default: the target's first --draft-layers layers)")
    parser.add_argument("--draft-layers", type=int, default=4)
    parser.add_argument("--policy", default="first-token", choices=["first-token", "per-token", "always", "never"])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--prompts", type=int, default=8, help="chat prompts from the built-in eval split")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-compile", action="store_true", help="GPU: skip static cache + torch.compile")
    return parser.parse_args(argv)


def build_engine(args: argparse.Namespace, scratch: Path) -> SpeculativeEngine:
    target = args.target or str(bundled_model_dir())
    draft = args.draft or str(cut_draft(Path(target), scratch / "draft", args.draft_layers))
    spec = SpecServeSpec.model_validate(
        {
            "target": {"uri": target},
            "draft": {"uri": draft},
            "routing": {"policy": args.policy},
            "compile": not args.no_compile,
            "sampling": {"maxTokens": args.max_tokens, "maxTokensLimit": args.max_tokens, "maxPromptTokens": 1024},
        }
    )
    engine = SpeculativeEngine.from_spec(spec, MODEL, scratch / "cache", device=args.device)
    engine.load()
    return engine


def prompts(count: int) -> list[list[dict[str, str]]]:
    """Inputs spread over the eval split's domains."""
    pool = records("eval")
    step = max(1, len(pool) // count)
    return [[{"role": "user", "content": r.input}] for r in pool[::step][:count]]


async def direct(engine: SpeculativeEngine, messages: list[dict[str, str]], max_tokens: int) -> Run:
    start = time.perf_counter()
    ttft, pieces, tokens = None, [], 0
    async for delta in engine.generate(engine.encode_chat(messages), SamplingParams(max_tokens=max_tokens)):
        if ttft is None and delta.text:
            ttft = time.perf_counter() - start
        pieces.append(delta.text)
        if delta.stats is not None:
            tokens = delta.stats.completion_tokens
    return Run("".join(pieces), tokens, ttft, time.perf_counter() - start)


def whole(url: str, messages: list[dict[str, str]], max_tokens: int) -> Run:
    start = time.perf_counter()
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    answer = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=600).raise_for_status().json()
    seconds = time.perf_counter() - start
    return Run(answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"], None, seconds)


def streamed(client: openai.OpenAI, messages: list[dict[str, str]], max_tokens: int) -> Run:
    start = time.perf_counter()
    ttft, pieces, tokens = None, [], 0
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        text = chunk.choices[0].delta.content if chunk.choices else None
        if text:
            ttft = ttft or time.perf_counter() - start
            pieces.append(text)
    return Run("".join(pieces), tokens, ttft, time.perf_counter() - start)


@contextlib.contextmanager
def serving(engine: SpeculativeEngine, max_tokens: int) -> Iterator[str]:
    sampling = ServeSampling(max_tokens=max_tokens, max_tokens_limit=max_tokens, max_prompt_tokens=1024)
    app = create_app(engine, ServerSettings(model_name=MODEL, sampling=sampling))
    with serve_in_thread(app) as url:
        yield url


def summarize(mode: str, runs: list[Run], baseline: float | None) -> dict[str, float | str | None]:
    tokens = sum(r.tokens for r in runs)
    seconds = sum(r.seconds for r in runs)
    ttfts = [r.ttft for r in runs if r.ttft is not None]
    return {
        "mode": mode,
        "requests": len(runs),
        "tokens": tokens,
        "tokens_per_s": tokens / seconds,
        "ttft_ms": 1000 * statistics.mean(ttfts) if ttfts else None,
        "p50_latency_ms": 1000 * statistics.median(r.seconds for r in runs),
        "overhead_pct": 100 * (seconds / baseline - 1) if baseline else 0.0,
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as scratch:
        engine = build_engine(args, Path(scratch))
        conversations = prompts(args.prompts)
        asyncio.run(direct(engine, conversations[0], args.max_tokens))  # warm-up (compilation on GPU)
        runs: dict[str, list[Run]] = {"engine": [], "http": [], "http-stream (openai)": []}
        with serving(engine, args.max_tokens) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
            for m in conversations:  # modes interleaved per prompt, so drifting machine load hits all alike
                runs["engine"].append(asyncio.run(direct(engine, m, args.max_tokens)))
                runs["http"].append(whole(url, m, args.max_tokens))
                runs["http-stream (openai)"].append(streamed(client, m, args.max_tokens))
        engine.close()
    baseline = sum(r.seconds for r in runs["engine"])
    rows = [summarize(mode, rs, None if mode == "engine" else baseline) for mode, rs in runs.items()]
    same = all([r.text for r in rs] == [r.text for r in runs["engine"]] for rs in runs.values())
    print(f"{'mode':<22}{'req':>5}{'tokens':>8}{'tok/s':>9}{'TTFT ms':>10}{'p50 ms':>9}{'overhead':>10}")
    for row in rows:
        print(
            f"{row['mode']:<22}{row['requests']:>5}{row['tokens']:>8}{row['tokens_per_s']:>9.1f}"
            f"{_ms(row['ttft_ms']):>10}{row['p50_latency_ms']:>9.0f}{row['overhead_pct']:>9.1f}%"
        )
    print(f"identical greedy outputs in all modes: {'yes' if same else 'NO'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"server_http-{args.device.split(':')[0]}.json"
    body = {
        "args": vars(args),
        "identical_outputs": same,
        "rows": rows,
        "runs": {m: [asdict(r) for r in rs] for m, rs in runs.items()},
    }
    out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {out}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())

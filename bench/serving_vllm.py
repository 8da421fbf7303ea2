"""Serving under concurrent clients: vLLM's OpenAI server against the metaspec server, same models, same
requests, side by side in one run.

    .venv/bin/python bench/serving_vllm.py                          # CPU: SmolLM2-135M + a derived draft
    .venv/bin/python bench/serving_vllm.py --clients 1 4 16 --max-tokens 32

Both servers are started as `metaspec local` starts them (`metaspec serve --config`, and vLLM's server
from the vLLM environment, `make vllm-venv`, with the arguments a cluster pod gets), from one SpecServe:
the bundled SmolLM2-135M-Instruct as target, its first `--draft-layers` layers as draft (untrained: this
measures serving, not a draft), greedy, `maxConcurrency` = the largest client count. Each client sends
streamed chat requests from the built-in eval split one after another; reported per server and client
count: completion tokens/s over the wall time, p50/p95 time to first token (the first chunk with text)
and request latency, and whether every greedy output equals the metaspec server's. Writes
`bench/results/serving_vllm-<device>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import percentile

from metaspec.api import SpecServe
from metaspec.builtin import records
from metaspec.local.bundled import bundled_model_dir
from metaspec.local.processes import Child
from metaspec.local.serving import start_server
from metaspec.local.vllm import start_vllm_server
from metaspec.runtime import scratch_dir
from metaspec_testing.models import cut_draft

RESULTS = Path(__file__).parent / "results"
MODEL = "bench"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-client", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--draft-layers", type=int, default=4)
    parser.add_argument("--k", type=int, default=3, help="draft tokens per step")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--servers", nargs="+", default=["metaspec", "vllm"], choices=["metaspec", "vllm"])
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def serve_spec(engine: str, target: Path, draft: Path, args: argparse.Namespace) -> SpecServe:
    return SpecServe.model_validate(
        {
            "metadata": {"name": f"bench-{engine}", "uid": "bench"},
            "spec": {
                "engine": engine,
                "servedModelName": MODEL,
                "target": {"uri": str(target)},
                "draft": {"uri": str(draft)},
                "routing": {"maxSpeculativeTokens": args.k},
                "dtype": "float32" if args.device == "cpu" else "bfloat16",
                "compile": args.device != "cpu",
                "resources": {"gpus": 0 if args.device == "cpu" else 1},
                "sampling": {"maxPromptTokens": 512, "maxTokensLimit": 256, "maxConcurrency": max(args.clients)},
            },
        }
    )


def start(engine: str, serve: SpecServe, scratch: Path, args: argparse.Namespace) -> tuple[Child, str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    log = scratch / f"{engine}.log"
    if engine == "vllm":
        uris = {"target": serve.spec.target.uri, "draft": serve.spec.draft.uri}
        return start_vllm_server(serve, uris, scratch_dir(), log, env, args.device)
    config = scratch / f"{engine}.json"
    config.write_text(json.dumps({**serve.dump(), "apiVersion": "metaspec.dev/v1alpha1", "kind": "SpecServe"}))
    return start_server(config, log, env, ["--device", args.device, "--model-cache", str(scratch / "work")])


async def streamed(http: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[str, int, float, float]:
    """One streamed chat request: (text, completion tokens, seconds to the first text, seconds in all)."""
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    parts, tokens, first = [], 0, None
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line.removeprefix("data: "))
            if "error" in chunk:
                raise RuntimeError(f"{prompt[:40]!r}: {chunk['error']}")
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            text = "".join(c["delta"].get("content") or "" for c in chunk.get("choices", []))
            if text and first is None:
                first = time.perf_counter() - started
            parts.append(text)
    seconds = time.perf_counter() - started
    return "".join(parts), tokens, seconds if first is None else first, seconds


async def client(url: str, prompts: list[str], max_tokens: int) -> list[tuple[str, str, int, float, float]]:
    """Requests one after another: (prompt, text, completion tokens, TTFT, seconds) each."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        return [(prompt, *await streamed(http, prompt, max_tokens)) for prompt in prompts]


async def load(url: str, clients: int, args: argparse.Namespace, pool: list[str]) -> dict[str, Any]:
    n = args.requests_per_client
    work = [pool[(c * n + i) % len(pool)] for c in range(clients) for i in range(n)]
    started = time.perf_counter()
    results = await asyncio.gather(*(client(url, work[c * n : (c + 1) * n], args.max_tokens) for c in range(clients)))
    seconds = time.perf_counter() - started
    runs = [r for per_client in results for r in per_client]
    ttft, latency = [r[3] for r in runs], [r[4] for r in runs]
    return {
        "clients": clients,
        "requests": len(runs),
        "seconds": seconds,
        "tokens_per_second": sum(r[2] for r in runs) / seconds,
        "ttft_p50": percentile(ttft, 50),
        "ttft_p95": percentile(ttft, 95),
        "latency_p50": percentile(latency, 50),
        "latency_p95": percentile(latency, 95),
        "texts": {r[0]: r[1] for r in runs},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    pool = [r.input for r in records("eval")][:64]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        scratch = Path(tmp)
        target = bundled_model_dir()
        draft = cut_draft(target, scratch / "draft", num_layers=args.draft_layers)
        for engine in args.servers:
            started = time.perf_counter()
            child, url = start(engine, serve_spec(engine, target, draft, args), scratch, args)
            print(f"{engine}: ready in {time.perf_counter() - started:.0f} s")
            try:
                asyncio.run(load(url, 1, args, pool[:1]))  # warm-up
                for clients in args.clients:
                    row = {"server": engine, **asyncio.run(load(url, clients, args, pool))}
                    rows.append(row)
                    print(
                        f"{engine:<9} {clients:>3} clients: {row['tokens_per_second']:7.1f} tok/s, "
                        f"TTFT p50 {row['ttft_p50']:.2f} s, p95 {row['ttft_p95']:.2f} s, "
                        f"latency p50 {row['latency_p50']:.2f} s, p95 {row['latency_p95']:.2f} s"
                    )
            finally:
                child.stop(15)
    report(args, rows)
    return 0


def report(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    ours = {r["clients"]: r["texts"] for r in rows if r["server"] == "metaspec"}
    for row in rows:
        reference = ours.get(row["clients"], {})
        row["outputs_differing_from_metaspec"] = sum(reference.get(p, t) != t for p, t in row.pop("texts").items())
    out = args.out or RESULTS / f"serving_vllm-{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],  # other work on the machine skews CPU timings
        "max_tokens": args.max_tokens,
        "draft_layers": args.draft_layers,
        "k": args.k,
        "rows": rows,
    }
    out.write_text(json.dumps(body, indent=1) + "\n")
    print(json.dumps(rows, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

"""The long server-abuse runs behind tests/reliability/test_server_abuse.py: a large schemathesis fuzz of
`/openapi.json`, the hand-written abuse corpus repeated while the server's RSS is sampled, and sustained
load at increasing concurrency (latency percentiles, 429 share, deepest queue seen).

    .venv/bin/python bench/reliability_server.py                    # CPU: SmolLM2-135M + 4-layer derived draft
    .venv/bin/python bench/reliability_server.py --device cuda      # GPU: bf16, static cache + torch.compile
    .venv/bin/python bench/reliability_server.py --fuzz-examples 100 --rounds 5 --seconds 5   # quick look

The server is the real container entry point (`metaspec serve --config`, a subprocess) with the test's
limits (maxConcurrency 1, maxQueue 4, maxTokensLimit 256, maxPromptTokens 128) and the test's corpus,
imported from the test file so both always abuse the same way. Prints tables and writes
`bench/results/reliability-server[-<device>].json`; exits 1 if any check failed (a 5xx, a dead server,
an unexpected status).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import Case, GenerationMode

from metaspec.local.bundled import bundled_model_dir
from metaspec.local.serving import free_port
from metaspec_testing.models import cut_draft

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "reliability"))
from test_server_abuse import CORPUS, FUZZ_CHECKS, MODEL, SAMPLING, cap_tokens, server_ready

RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="target model URI (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--draft", help="draft model URI (default: the target's first --draft-layers layers)")
    parser.add_argument("--draft-layers", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--fuzz-examples", type=int, default=500, help="fuzz cases per endpoint and mode")
    parser.add_argument(
        "--fuzz-max-tokens",
        type=int,
        help="lower valid max_tokens of fuzz cases to this (default: 4 on CPU, where 256 tokens of SmolLM2 "
        "take over a minute; uncapped on GPU)",
    )
    parser.add_argument("--rounds", type=int, default=40, help="rounds of the abusive corpus for the RSS run")
    parser.add_argument("--levels", default="1,4,16,64", help="concurrent clients per load level")
    parser.add_argument("--seconds", type=float, default=30, help="duration of each load level")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens per load-test request")
    parser.add_argument("--out", type=Path, help="result file (default bench/results/reliability-server[-DEVICE].json)")
    return parser.parse_args(argv)


# the server


@contextmanager
def serve(args: argparse.Namespace, scratch: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    target = args.target or str(bundled_model_dir())
    draft = args.draft or str(cut_draft(Path(target), scratch / "draft", args.draft_layers))
    spec = {"target": {"uri": target}, "draft": {"uri": draft}, "servedModelName": MODEL, "sampling": SAMPLING}
    resource = {"apiVersion": "metaspec.dev/v1alpha1", "kind": "SpecServe", "metadata": {"name": "abuse"}}
    (scratch / "config.json").write_text(json.dumps({**resource, "spec": spec}))
    port = free_port()
    command = [sys.executable, "-m", "metaspec.cli", "serve", "--config", str(scratch / "config.json")]
    command += ["--host", "127.0.0.1", "--port", str(port), "--model-cache", str(scratch / "cache")]
    command += ["--device", args.device]
    env = {**os.environ, "METASPEC_LOG_FORMAT": "text", "METASPEC_TERMINATION_MESSAGE_PATH": str(scratch / "term")}
    log = (scratch / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not server_ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not become ready:\n{(scratch / 'server.log').read_text()}")
            time.sleep(0.2)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        log.close()


def rss_mib(pid: int) -> float:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


# fuzz


def fuzz(url: str, examples: int, cap: int | None) -> list[dict[str, Any]]:
    """Each POST endpoint in both modes: random (not derandomized) cases, every response checked."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    rows = []
    for path in ("/v1/completions", "/v1/chat/completions"):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            started = time.monotonic()
            statuses, failure = _fuzz_operation(schema[path]["POST"], mode, examples, cap)
            rows.append(
                {
                    "endpoint": path,
                    "mode": str(mode),
                    "requests": sum(statuses.values()),
                    "statuses": dict(sorted(statuses.items())),
                    "server_errors": sum(n for s, n in statuses.items() if s >= 500),
                    "failure": failure,
                    "seconds": round(time.monotonic() - started, 1),
                }
            )
    return rows


def _fuzz_operation(
    operation: Any, mode: GenerationMode, examples: int, cap: int | None
) -> tuple[Counter[int], str | None]:
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def one_case(case: Case) -> None:
        if cap is not None:
            cap_tokens(case.body, cap)
        response = case.call(timeout=300)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=FUZZ_CHECKS)

    try:
        one_case()
    except Exception as error:  # a failed check: recorded (hypothesis has shrunk it) and reported
        return statuses, f"{type(error).__name__}: {str(error)[:2000]}"
    return statuses, None


# memory under the abusive corpus


def memory(url: str, pid: int, rounds: int) -> dict[str, Any]:
    abusive = [a for a in CORPUS if a.status >= 400]
    unexpected: list[str] = []
    samples = []
    with httpx.Client(base_url=url, timeout=120) as http:
        for index in range(rounds + 1):
            for abuse in abusive:
                headers = {"content-type": abuse.content_type} if abuse.content_type else {}
                status = http.post(abuse.path, content=abuse.body, headers=headers).status_code
                if status != abuse.status:
                    unexpected.append(f"{abuse.name}: {status} (expected {abuse.status})")
            samples.append(rss_mib(pid))
            if index == 0:
                warm = samples[0]  # after one warm-up round: allocator arenas and caches in place
    return {
        "requests": len(abusive) * rounds,
        "corpus_entries": len(abusive),
        "rss_after_warmup_mib": round(warm, 1),
        "rss_end_mib": round(samples[-1], 1),
        "rss_max_mib": round(max(samples), 1),
        "growth_mib": round(samples[-1] - warm, 1),
        "rss_per_round_mib": [round(x, 1) for x in samples],
        "unexpected_statuses": unexpected[:20],
    }


# load


async def load_level(url: str, clients: int, seconds: float, max_tokens: int) -> dict[str, Any]:
    """`clients` closed-loop clients for `seconds`; a 429 waits 50 ms before the next try (impatient
    clients, the worst case for the queue), not the advertised Retry-After."""
    body = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": max_tokens, "temperature": 0}
    latencies: dict[int, list[float]] = {}
    errors: Counter[str] = Counter()
    deepest = 0.0
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=httpx.Limits(max_connections=clients + 2)) as http:

        async def client() -> None:
            while time.monotonic() < stop:
                started = time.monotonic()
                try:
                    response = await http.post("/v1/completions", json=body)
                except httpx.TransportError as error:
                    errors[type(error).__name__] += 1
                    continue
                latencies.setdefault(response.status_code, []).append(time.monotonic() - started)
                if response.status_code == 429:
                    await asyncio.sleep(0.05)

        async def watch() -> None:
            nonlocal deepest
            while time.monotonic() < stop:
                text = (await http.get("/metrics")).text
                line = next(x for x in text.splitlines() if x.startswith("metaspec_waiting_sequences{"))
                deepest = max(deepest, float(line.split()[1]))
                await asyncio.sleep(0.05)

        await asyncio.gather(watch(), *(client() for _ in range(clients)))
    total = sum(len(v) for v in latencies.values())
    ok = sorted(latencies.get(200, []))
    refused = sorted(latencies.get(429, []))
    return {
        "clients": clients,
        "requests": total,
        "statuses": {str(s): len(v) for s, v in sorted(latencies.items())},
        "share_429": round(len(refused) / total, 3) if total else None,
        "ok_per_second": round(len(ok) / seconds, 2),
        "latency_200_s": _percentiles(ok),
        "latency_429_s": _percentiles(refused),
        "deepest_queue": deepest,
        "transport_errors": dict(errors),
    }


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    cuts = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {
        "p50": round(cuts[49], 3),
        "p90": round(cuts[89], 3),
        "p99": round(cuts[98], 3),
        "max": round(values[-1], 3),
    }


# report


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench-abuse-") as tmp, serve(args, Path(tmp)) as (url, process):
        cap = args.fuzz_max_tokens if args.fuzz_max_tokens is not None or args.device != "cpu" else 4
        fuzzed = fuzz(url, args.fuzz_examples, cap)
        rss = memory(url, process.pid, args.rounds)
        loads = [asyncio.run(load_level(url, c, args.seconds, args.max_tokens)) for c in levels]
        alive = process.poll() is None and server_ready(url)
        log = (Path(tmp) / "server.log").read_text()
    result = {
        "device": args.device,
        "machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "python": platform.python_version()},
        "limits": SAMPLING,
        "fuzz_max_tokens": cap,
        "load_max_tokens": args.max_tokens,
        "fuzz": fuzzed,
        "memory": rss,
        "load": loads,
        "server_alive_after": alive,
        "server_tracebacks": log.count("Traceback"),
    }
    print_tables(result)
    RESULTS.mkdir(exist_ok=True)
    device = "" if args.device == "cpu" else "-" + args.device.split(":")[0]
    out = args.out or RESULTS / f"reliability-server{device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    failed = (
        any(r["failure"] or r["server_errors"] for r in fuzzed)
        or rss["unexpected_statuses"]
        or any(set(level["statuses"]) - {"200", "429"} or level["transport_errors"] for level in loads)
        or any(level["deepest_queue"] > SAMPLING["maxQueue"] for level in loads)
        or not alive
        or result["server_tracebacks"]
    )
    return 1 if failed else 0


def print_tables(result: dict[str, Any]) -> None:
    print("\nfuzz (schemathesis, /openapi.json)")
    print(f"{'endpoint':<22} {'mode':<9} {'requests':>8} {'5xx':>4}  statuses  failure")
    for r in result["fuzz"]:
        failure = (r["failure"] or "-").splitlines()[0][:60]
        print(
            f"{r['endpoint']:<22} {r['mode']:<9} {r['requests']:>8} {r['server_errors']:>4}  {r['statuses']}  {failure}"
        )
    m = result["memory"]
    print(f"\nmemory: {m['requests']} abusive requests, RSS {m['rss_after_warmup_mib']} -> {m['rss_end_mib']} MiB")
    print(
        f"        (max {m['rss_max_mib']}, growth {m['growth_mib']} MiB), unexpected statuses: {len(m['unexpected_statuses'])}"
    )
    print("\nload (closed-loop clients)")
    print(
        f"{'clients':>7} {'requests':>8} {'429 share':>9} {'ok/s':>6} {'p50 200':>8} {'p99 200':>8} {'p99 429':>8} {'queue max':>9}  statuses"
    )
    for r in result["load"]:
        ok, no = r["latency_200_s"] or {}, r["latency_429_s"] or {}
        print(
            f"{r['clients']:>7} {r['requests']:>8} {r['share_429']!s:>9} {r['ok_per_second']:>6} "
            f"{ok.get('p50', '-')!s:>8} {ok.get('p99', '-')!s:>8} {no.get('p99', '-')!s:>8} {r['deepest_queue']:>9}  "
            f"{r['statuses']}"
        )
    print(f"\nserver alive after: {result['server_alive_after']}, tracebacks in its log: {result['server_tracebacks']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

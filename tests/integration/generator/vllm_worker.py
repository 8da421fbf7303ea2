"""The vLLM side of `test_gen_vllm.py`, run with the vLLM environment's python (vLLM cannot be imported
next to the project's transformers). One engine start serves every scenario: `load_engine` is wrapped
to hand the same loaded `VllmEngine` to each `metaspec generate` run (through the component's real
`main`) instead of starting vLLM again; everything else is the component as it runs in a pod.

    python vllm_worker.py REQUEST.json RESULT.json

REQUEST: {"runs": [[argv, ...], ...], "checks": {"records": [{"id", "input"}], "sampling": [{...}, ...]}}
RESULT: {"runs": [{"code", "summary"}], "checks": [{id: [text, num_tokens, finish_reason]}], "kwargs": {...}}
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from metaspec.generator import Prompt, cli, generate, prompt_seed
from metaspec.prompts import chat_prompt_ids

_engines: dict[str, Any] = {}


def _one_engine(spec: Any, model_dir: Path, model_name: str, device: str = "auto") -> Any:
    if "engine" not in _engines:
        _engines["engine"] = _load_engine(spec, model_dir, model_name, device)
    return _engines["engine"]


_load_engine = generate.load_engine
generate.load_engine = _one_engine


def run(argv: list[str], summary: Path) -> dict[str, Any]:
    os.environ["METASPEC_TERMINATION_MESSAGE_PATH"] = str(summary)
    code = cli.main(argv)
    return {"code": code, "summary": json.loads(summary.read_text())}


def check(engine: Any, records: list[dict[str, str]], sampling: dict[str, Any]) -> dict[str, list[Any]]:
    """Generate with the configured sampling changed by `sampling` (seed: the per-prompt seeds' base)."""
    seed = sampling.pop("seed", 0)
    saved = engine.sampling
    engine.sampling = {**saved, **sampling}
    try:
        prompts = [
            Prompt(r["id"], chat_prompt_ids(engine.tokenizer, r["input"]), prompt_seed(seed, r["id"])) for r in records
        ]
        done = [c for batch in engine.plan(prompts) for c in engine.generate(batch)]
    finally:
        engine.sampling = saved
    return {c.id: [c.text, c.num_tokens, c.finish_reason] for c in done}


def main(request_path: str, result_path: str) -> None:
    request = json.loads(Path(request_path).read_text())
    work = Path(result_path).parent
    started = time.perf_counter()
    runs = []
    for n, argv in enumerate(request["runs"]):
        runs.append(run(argv, work / f"summary-{n}.json"))
        print(f"run {n} done at {time.perf_counter() - started:.0f} s", flush=True)
    engine = _engines["engine"]
    records = request["checks"]["records"]
    checks = [check(engine, records, dict(sampling)) for sampling in request["checks"]["sampling"]]
    print(f"checks done at {time.perf_counter() - started:.0f} s", flush=True)
    result = {"runs": runs, "checks": checks, "kwargs": engine.llm_kwargs}
    Path(result_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])

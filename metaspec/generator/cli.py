"""`metaspec generate --config FILE [--shard-index I --num-shards N] [--work-dir DIR] [--device ...]`.

Exit codes (`metaspec.runtime`): 0 outputs written — a natural-stop rate below
`quality.minNaturalStopRate` is reported in the summary (`quality.passed: false`; the operator sets
`QualityCheckPassed=False`) without failing the Job, so dependents may still use the outputs;
`EXIT_QUALITY` the same failed check with `quality.failOnQuality` (never retried: the Job fails);
`EXIT_PERMANENT` bad config or data; `EXIT_TRANSIENT` storage unreachable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from metaspec.api import TeacherGeneration
from metaspec.artifacts import cache_outcomes
from metaspec.runtime import (
    CONFIG_PATH,
    EXIT_QUALITY,
    PermanentError,
    load_config,
    model_cache_dir,
    run_component,
    scratch_dir,
    setup_logging,
    write_summary,
)

from .generate import Options, ShardResult, run_shard
from .sharding import check_shard, shard_index_from_env
from .stats import generation_stats

log = logging.getLogger(__name__)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="metaspec generate", description="run one shard of a TeacherGeneration")
    parser.add_argument("--config", type=Path, default=Path(CONFIG_PATH), help="the TeacherGeneration (JSON)")
    parser.add_argument("--shard-index", type=int, help="this shard (default: $JOB_COMPLETION_INDEX, or 0)")
    parser.add_argument("--num-shards", type=int, help="shards in all (default: spec.shards)")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=scratch_dir() / "generate",
        help="local shard state; survives container restarts (default: $METASPEC_CACHE/generate)",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=model_cache_dir(), help="the model cache (default: $METASPEC_MODEL_CACHE)"
    )
    parser.add_argument("--device", default="auto", help="transformers engine: auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--upload-every", type=float, default=60.0, help="seconds between uploads of the partial shard (default 60)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging()
    return run_component("generate", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    spec = load_config(args.config, TeacherGeneration).spec
    count = args.num_shards or spec.shards
    try:
        index = args.shard_index if args.shard_index is not None else shard_index_from_env(count)
        check_shard(index, count)
    except ValueError as e:
        raise PermanentError(str(e)) from None
    options = Options(args.work_dir, args.cache_dir, args.device, args.upload_every, not args.no_progress)
    result = run_shard(spec, index, count, options)
    summary, code = summarize(result, spec.quality.fail_on_quality)
    if cached := cache_outcomes(args.cache_dir):
        summary["modelCache"] = cached
    if code:
        log.warning("quality check failed: %s", summary["message"], extra={"fields": summary})
    write_summary(summary)
    return code


def summarize(result: ShardResult, fail_on_quality: bool) -> tuple[dict[str, Any], int]:
    """The termination-message summary and the exit code. The shard that completed the output judges
    the whole output too (its `mergedStats`), so its verdict is the run's."""
    judged = [result.stats] + ([result.merged] if result.merged else [])
    failed = next((s for s in reversed(judged) if not s["qualityCheckPassed"]), None)
    summary: dict[str, Any] = {
        "phase": "Succeeded",
        "outputUri": result.output_uri,
        "shard": {"index": result.index, "count": result.count},
        "complete": result.merged is not None,
        "qualityCheckPassed": failed is None,
        "examplesGenerated": result.generated,
        "stats": generation_stats(result.stats),
    }
    if result.model_digest:
        summary["modelDigest"] = result.model_digest
    if result.merged is not None:
        summary["mergedStats"] = generation_stats(result.merged)
    if failed is None:
        summary["quality"] = {"passed": True, "message": "natural-stop rate at least quality.minNaturalStopRate"}
        return summary, 0
    summary["reason"] = "QualityCheckFailed"
    summary["message"] = (
        f"natural-stop rate {failed['naturalStopRate']:.3f} is below quality.minNaturalStopRate "
        f"{failed['minNaturalStopRate']}: {failed['truncatedRate']:.1%} of outputs hit sampling.maxTokens; "
        "raise maxTokens or repetitionPenalty, or add stop strings"
    )
    summary["quality"] = {"passed": False, "message": summary["message"]}
    if fail_on_quality:
        summary["phase"] = "Failed"
        return summary, EXIT_QUALITY
    return summary, 0

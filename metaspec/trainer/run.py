"""One TrainingRun from configuration to published artifacts.

<output>/checkpoints/step-N/   while training (each with its own manifest)
<output>/adapter/              LoRA adapter (anil-maml)          ─┐ each a model artifact with
<output>/merged/               merged model (anil-maml, merge)    │ its own _manifest.json, so a
<output>/model/                trained draft (causal-lm)         ─┘ later stage can load it by URI
<output>/metrics.json, history.jsonl
<output>/_manifest.json        last: the whole output; a run whose manifest exists is complete

Under data parallelism every rank trains; rank 0 alone writes checkpoints and the output, so the
output's manifest is still written last, once. A sharded (FSDP) model is gathered first: rank 0
finishes on an unsharded copy holding the trained adapter (`LoraRecipe.unshard`).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch

from metaspec.api import TrainingRun
from metaspec.api.training import TrainingArtifacts, TrainingMetrics, TrainingProgress
from metaspec.artifacts import (
    MANIFEST,
    Manifest,
    Uri,
    cache_outcomes,
    is_complete,
    read_bytes,
    read_manifest,
    upload_dir,
    upload_file,
    write_bytes,
)
from metaspec.devices import resolve_dtype
from metaspec.runtime import QualityError, check_provenance, model_cache_dir, provenance, to_json

from .distributed import World, init_world
from .loop import TrainLoop
from .progress import Reporter, Reporters, default_reporter
from .recipes import RECIPES
from .recipes.common import Context

log = logging.getLogger(__name__)


def train(
    run: TrainingRun,
    *,
    work_dir: Path,
    device: str | None = None,
    reporter: Reporter | None = None,
    model_cache: Path | None = None,
) -> dict[str, Any] | None:
    """Train (resuming from the newest complete checkpoint), evaluate, publish; return the summary
    (None on ranks other than 0, which only train). Joins the process group when launched by
    `torch.distributed.run` (`distributed.launch`).

    `work_dir` is this run's scratch; models are fetched into `model_cache` (default
    `metaspec.runtime.model_cache_dir()`), which other runs, and the other ranks, may share."""
    world = init_world(device)
    try:
        return _train(run, world, work_dir, reporter, model_cache or model_cache_dir())
    finally:
        world.close()


def _train(
    run: TrainingRun, world: World, work_dir: Path, reporter: Reporter | None, model_cache: Path
) -> dict[str, Any] | None:
    spec = run.spec
    output = Uri.parse(spec.output.uri)
    produced = provenance(run.kind, spec.dump(), _inputs(run))
    if is_complete(output):
        check_provenance(str(output), read_manifest(output).metadata.get("producedBy"), produced)
        log.info("%s is already complete (same spec and inputs): nothing to do", output)
        return _finished_summary(output)
    dtype = resolve_dtype(spec.base_model.dtype, world.device)
    reporter = (reporter or default_reporter()) if world.main else Reporters()  # rank 0 speaks for all
    ctx = Context(run, world.device, dtype, work_dir, reporter, model_cache, world)
    if world.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 fast weights' matmuls
    torch.manual_seed(spec.optimization.seed)
    recipe = RECIPES[spec.method](ctx)
    world.seed_rank(spec.optimization.seed)
    loop = TrainLoop(
        recipe,
        spec.optimization,
        output=output,
        work_dir=work_dir if world.main else work_dir / f"rank-{world.rank}",
        config=run.model_dump(by_alias=True, exclude_none=True, mode="json"),
        reporter=ctx.reporter,
        world=world,
    )
    loop.resume()
    loop.run()
    recipe.unshard()
    if not world.main:
        return None
    staging = work_dir / "output"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    quality = recipe.finish(staging, loop.state.best_eval_loss)
    degradation = quality.get("merge_degradation")
    merge_failed = degradation is not None and degradation > spec.output.max_merge_degradation
    model_uri = None if merge_failed or not recipe.model_dir else str(output.join(recipe.model_dir))
    adapter_uri = str(output.join(recipe.adapter_dir)) if recipe.adapter_dir else None
    summary = _summary(run, loop, quality, model_uri, adapter_uri, recipe.base_digest, recipe.data.report)
    if cached := cache_outcomes(ctx.model_cache):
        summary["modelCache"] = cached
    _publish(output, staging, summary, loop.history, complete=not merge_failed, produced=produced)
    ctx.reporter.on_finish(summary["metrics"])
    if merge_failed:
        raise QualityError(
            f"merging the adapter degraded perplexity by {degradation:.2%} (LoRA {quality['perplexity_lora']:.4f}, "
            f"merged {quality['perplexity_merged']:.4f}), beyond spec.output.maxMergeDegradation "
            f"{spec.output.max_merge_degradation:.2%}; the adapter and metrics are saved, the merged model is not"
        )
    return summary


def _inputs(run: TrainingRun) -> dict[str, str]:
    spec = run.spec
    uris = {"baseModel": spec.base_model.uri, "dataset": spec.dataset.uri, "evaluation": spec.evaluation.uri}
    return {f"spec.{field}.uri": uri for field, uri in uris.items() if uri}


def _finished_summary(output: Uri) -> dict[str, Any]:
    summary = json.loads(read_bytes(output.join("metrics.json")))
    summary["artifacts"]["manifestDigest"] = read_manifest(output).digest
    return summary


def _summary(
    run: TrainingRun,
    loop: TrainLoop,
    quality: dict[str, Any],
    model_uri: str | None,
    adapter_uri: str | None,
    base_digest: str | None,
    data: dict[str, Any],
) -> dict[str, Any]:
    output = Uri.parse(run.spec.output.uri)
    metrics = TrainingMetrics(
        train_loss=loop.history[-1]["loss"] if loop.history else None,
        eval_loss=loop.state.best_eval_loss,
        hard_token_share=data["stats"]["hard_token_share"],
        tokens_per_second=loop.tokens_per_second,
        **quality,
    )
    artifacts = TrainingArtifacts(
        model=model_uri,
        adapter=adapter_uri,
        metrics=str(output.join("metrics.json")),
        last_checkpoint=str(loop.last_checkpoint) if loop.last_checkpoint else None,
        base_model_digest=base_digest,
    )
    progress = TrainingProgress(
        step=loop.state.step,
        total_steps=loop.total_steps,
        epoch=loop.history[-1]["epoch"] if loop.history else None,
    )
    return {
        "phase": "Succeeded",
        "metrics": metrics.dump(),
        "artifacts": artifacts.dump(),
        "progress": progress.dump(),
        "training": {"bestStep": loop.state.best_step, "stoppedEarly": loop.state.stopped_early},
        "data": {k: data[k] for k in ("source", "valid", "invalid", "contaminated")},
    }


def _publish(
    output: Uri,
    staging: Path,
    summary: dict[str, Any],
    history: list[dict[str, Any]],
    complete: bool,
    produced: dict[str, Any],
) -> None:
    """Sub-artifacts first (each with its manifest), then metrics, then, if `complete`, the output's manifest."""
    for sub in ("adapter", "merged", "model"):
        if (staging / sub).is_dir():
            upload_dir(staging / sub, output.join(sub), metadata={"kind": sub})
    (staging / "history.jsonl").write_text("".join(to_json(r) + "\n" for r in history))
    (staging / "metrics.json").write_text(to_json(summary, indent=1))
    for name in ("history.jsonl", "metrics.json"):
        upload_file(staging / name, output.join(name))
    if complete:
        manifest, raw = Manifest.build(staging, metadata={"kind": "training-output", "producedBy": produced})
        write_bytes(raw, output.join(MANIFEST))
        summary["artifacts"]["manifestDigest"] = manifest.digest

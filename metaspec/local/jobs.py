"""TrainingRun and TeacherGeneration on this machine: what the operator's Job does, as subprocesses.

Each attempt is `metaspec train|generate --config FILE`; retries follow the Job's rules (fail-fast exit
codes are not retried, others up to `spec.backoffLimit`) and the shards of a TeacherGeneration run one
after another. The status comes from the exit codes and summaries through `metaspec.status`, as the
operator's comes from its Job and pods.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from metaspec import pipeline
from metaspec import status as R
from metaspec.api import Phase, Resource, TeacherGeneration, TrainingRun, now
from metaspec.api import conditions as C
from metaspec.api.generation import ShardCounts
from metaspec.api.summaries import FailureSummary
from metaspec.artifacts import (
    MANIFEST,
    ArtifactError,
    Uri,
    is_complete,
    list_files,
    read_bytes,
    store_for,
    verify_artifact,
)
from metaspec.local.context import Context
from metaspec.local.vllm import INSTALL_HINT, vllm_python
from metaspec.runtime import EXIT_PERMANENT

#: Files of a finished stage copied next to the state for `metaspec report` (small by construction).
REPORT_FILES = {
    "TrainingRun": ("metrics.json", "history.jsonl"),
    "TeacherGeneration": ("stats.json",),
}
MAX_COPIED_BYTES = 64 * 2**20


def config_digest(rendered: Resource, resolved: dict[str, pipeline.Resolved]) -> str:
    """What a stage's result depends on: its rendered config and the exact artifacts it consumes."""
    body = {"config": rendered.dump(), "inputs": {k: [v.uri, v.digest] for k, v in sorted(resolved.items())}}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def run(ctx: Context, resource: TrainingRun | TeacherGeneration, check: pipeline.DependencyCheck) -> None:
    """Run a resource whose references resolved, unless it succeeded before with the same config."""
    rs = ctx.of(resource)
    rendered = pipeline.resolve(resource, check.resolved)
    digest = config_digest(rendered, check.resolved)
    if rs.phase == Phase.SUCCEEDED and rs.config_digest == digest and output_complete(ctx, resource):
        ctx.set_status(resource, message=rs.status.get("message") or "done")
        ctx.display.say(f"{rs.key}: succeeded before with the same config; reusing its artifacts")
        return
    if rs.config_digest not in (None, digest) and rs.phase != Phase.PENDING:
        ctx.display.say(f"{rs.key}: config or inputs changed since the last run; running it again")
    rs.config_digest = digest
    rs.progress = {}
    fresh = {k: v for k, v in rs.status.items() if k not in ("startTime", "completionTime")}
    shards = ShardCounts(total=rendered.spec.shards if isinstance(rendered, TeacherGeneration) else 1)
    running = R.RunState(Phase.RUNNING, C.RUN_RUNNING, "running", now(), shards=shards)
    ctx.replace_status(resource, R.observe(resource, fresh, running))
    if isinstance(rendered, TrainingRun):
        _run_training(ctx, rendered)
    else:
        _run_generation(ctx, rendered)


def output_complete(ctx: Context, resource: Resource) -> bool:
    """Whether the stage's output is whole: every file present with its size and sha256. One that
    fails loses its manifest, so that the stage runs again and rewrites what is missing or damaged."""
    artifact = pipeline.artifact_of(ctx.with_status(resource))
    if artifact is None:
        return False
    try:
        verify_artifact(artifact.uri)
    except ArtifactError as e:
        if is_complete(artifact.uri):
            ctx.display.say(f"{resource.kind}/{resource.metadata.name}: its output fails verification ({e})")
            manifest = Uri.of(artifact.uri).join(MANIFEST)
            store_for(manifest).delete(manifest)
        return False
    return True


def _attempts(
    ctx: Context,
    resource: Resource,
    argv: list[str],
    summary: Path,
    failures: list[FailureSummary],
    python: Path | None = None,
) -> tuple[int, dict[str, Any]]:
    """One pod's worth of attempts, as the Job retries them; every summary goes to `failures`, newest first."""
    for attempt in range(resource.spec.backoff_limit + 1):
        code, body = ctx.run_component(resource, argv, summary, python)
        failures.insert(0, FailureSummary.read({**body, "exitCode": code}))
        if code == 0 or code in R.FAIL_FAST_CODES or attempt == resource.spec.backoff_limit:
            return code, body
        ctx.display.say(f"{resource.kind}/{resource.metadata.name}: exit {code}, retrying (resumes from checkpoint)")
    raise AssertionError("unreachable: the last attempt returns")


def _run_training(ctx: Context, resource: TrainingRun) -> None:
    stage, config = ctx.stage_dir(resource), ctx.write_config(resource)
    argv = ["train", "--config", str(config), "--work-dir", str(stage / "work"), *ctx.device_args()]
    processes = ctx.training_processes(resource)
    if processes > 1:
        argv += ["--nproc-per-node", str(processes)]
    failures: list[FailureSummary] = []
    code, summary = _attempts(ctx, resource, argv, stage / "summary.json", failures)
    shards = ShardCounts(total=1, succeeded=int(code == 0), failed=sum(f.failed for f in failures))
    _finish(ctx, resource, code, shards, failures, [summary] if code == 0 else [])


def _run_generation(ctx: Context, resource: TeacherGeneration) -> None:
    """One process per shard, one after another (a local machine runs them sequentially);
    `engine: vllm` runs them with the vLLM environment's python."""
    stage, config = ctx.stage_dir(resource), ctx.write_config(resource)
    n = resource.spec.shards
    shards = ShardCounts(total=n)
    failures: list[FailureSummary] = []
    results: list[dict[str, Any]] = []
    python = vllm_python() if resource.spec.engine == "vllm" else None
    if resource.spec.engine == "vllm" and python is None:
        message = f"spec.engine is vllm and no vLLM environment was found. {INSTALL_HINT}"
        failures.append(
            FailureSummary.read({"message": message, "reason": "VllmNotInstalled", "exitCode": EXIT_PERMANENT})
        )
        _finish(ctx, resource, EXIT_PERMANENT, shards, failures, results)
        return
    code = 0
    for index in range(n):
        argv = ["generate", "--config", str(config), "--shard-index", str(index), "--num-shards", str(n)]
        argv += ["--work-dir", str(stage / "work"), "--no-progress", *ctx.device_args()]
        code, summary = _attempts(ctx, resource, argv, stage / f"summary-{index}.json", failures, python)
        shards.failed = sum(f.failed for f in failures)
        if code != 0:
            break
        results.append(summary)
        shards.succeeded += 1
        ctx.set_status(resource, shards=shards.dump())
    _finish(ctx, resource, code, shards, failures, results)


def _finish(
    ctx: Context,
    resource: Resource,
    code: int,
    shards: ShardCounts,
    failures: list[FailureSummary],
    results: list[dict[str, Any]],
) -> None:
    """The status after the last process exited, from exit codes and summaries (as the operator does)."""
    rs = ctx.of(resource)
    state = R.exit_state(code, shards, rs.status.get("startTime"), rs.log or "")
    ctx.replace_status(resource, R.finish(resource, rs.status, state, failures, results))
    if code == 0:
        _copy_report_files(ctx, resource)
    ctx.refresh(force=True)
    if code != 0:
        ctx.display.say(f"{rs.key} failed: {rs.status['message']}\n  log: {rs.log}")


def _copy_report_files(ctx: Context, resource: Resource) -> None:
    """Keep the small result files next to the state so `metaspec report` needs no S3 server."""
    output = resource.spec.output.uri
    dest = ctx.stage_dir(resource) / "artifacts"
    dest.mkdir(exist_ok=True)
    try:
        names = [(n, size) for n, size in list_files(output) if "/" not in n]
    except ArtifactError as e:
        ctx.display.say(f"{resource.kind}/{resource.metadata.name}: cannot list {output}: {e}")
        return
    wanted = REPORT_FILES.get(resource.kind, ())
    for name, size in names:
        teacher_output = isinstance(resource, TeacherGeneration) and name.endswith(".jsonl")
        if (name in wanted or teacher_output) and size <= MAX_COPIED_BYTES:
            (dest / name).write_bytes(read_bytes(f"{output.rstrip('/')}/{name}"))

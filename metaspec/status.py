"""From a run's state and its components' summaries to the resource's status: one reducer, two executors.

The operator reads Kubernetes children (a Job and its pods' termination messages, a Deployment) and
`metaspec local` reads its own subprocesses (exit codes and summary files); both turn what they saw
into a `RunState` or `ServingState` plus typed summaries (`metaspec.api.summaries`) and let this module
compute the status, so a pipeline reports the same phases, conditions, metrics and digests wherever it
runs. The config a component receives is rendered here too (`render_config`), for the operator's
ConfigMap and the local executor's config file alike.

Nothing here talks to Kubernetes or starts processes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from metaspec import pipeline
from metaspec.api import Condition, Phase, Resource, SpecServe, TeacherGeneration, TrainingRun, now
from metaspec.api import conditions as C
from metaspec.api.generation import GenerationProgress, GenerationStats, ShardCounts
from metaspec.api.sources import ModelSource
from metaspec.api.summaries import FailureSummary, ProgressReport, ShardSummary, TrainingSummary
from metaspec.api.training import TrainingMetrics, TrainingProgress
from metaspec.runtime import EXIT_PERMANENT, EXIT_QUALITY

#: Exit codes no retry can fix: bad config or data, and a finished run that failed its quality gate
#: (training's merge check; generation's natural-stop rate, which the generator exits with only when
#: `quality.failOnQuality` is set, and otherwise reports in its summary with exit code 0).
FAIL_FAST_CODES = (EXIT_PERMANENT, EXIT_QUALITY)

# ---- the config a component receives ----


def render_config(resolved: Resource) -> dict[str, Any]:
    """What the component reads: kind, identity and spec; no status and no executor bookkeeping."""
    meta = resolved.metadata
    return {
        "apiVersion": resolved.api_version,
        "kind": resolved.kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid, "generation": meta.generation},
        "spec": resolved.spec.dump(),
    }


def config_text(resolved: Resource) -> str:
    """The rendered config as the file `config.json` holds it."""
    return json.dumps(render_config(resolved), indent=2, sort_keys=True) + "\n"


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical config JSON: equal configs give equal names, changed ones roll pods."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---- conditions ----


def with_condition(
    status: dict[str, Any], resource: Resource, type_: str, value: bool | str, reason: str, msg: str
) -> dict[str, Any]:
    """`status` with one condition set (KEP-1623 transition times kept)."""
    conditions = [Condition.model_validate(c) for c in status.get("conditions", [])]
    updated = pipeline.set_condition(conditions, type_, value, reason, msg, resource.metadata.generation)
    return {**status, "conditions": [c.dump() for c in updated]}


def failed(status: dict[str, Any], resource: Resource, reason: str, message: str) -> dict[str, Any]:
    """`status` of a resource that failed for `reason`."""
    status = {**status, "phase": Phase.FAILED.value, "message": message}
    status["observedGeneration"] = resource.metadata.generation
    status = with_condition(status, resource, C.READY, False, reason, message)
    return with_condition(status, resource, C.FAILED, True, reason, message)


def waiting(resource: Resource, status: dict[str, Any], check: pipeline.DependencyCheck) -> dict[str, Any]:
    """Waiting on dependencies, or failed because one failed (or a cycle makes it impossible)."""
    status = with_condition(status, resource, C.DEPENDENCIES_READY, False, check.reason, check.message)
    status["observedGeneration"] = resource.metadata.generation
    if check.failed:
        return failed(status, resource, check.reason, check.message)
    status = with_condition(status, resource, C.READY, False, check.reason, check.message)
    return {**status, "phase": Phase.WAITING.value, "message": check.message}


def started(resource: Resource, status: dict[str, Any], check: pipeline.DependencyCheck) -> dict[str, Any]:
    """The status of a run whose references all resolved: the URIs it uses, `DependenciesReady`."""
    status = {**status, **resolved_fields(resource, check.resolved, status)}
    return with_condition(status, resource, C.DEPENDENCIES_READY, True, check.reason, check.message)


def resolved_fields(
    resource: Resource, resolved: dict[str, pipeline.Resolved], status: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The URIs a run actually uses (`resolvedBaseModel`…), or for a SpecServe what it serves."""
    spec = resource.spec

    def uri(path: str, source: Any) -> str | None:
        return resolved[path].uri if path in resolved else source.uri

    if isinstance(resource, TrainingRun):
        return {
            "resolvedBaseModel": uri("spec.baseModel", spec.base_model),
            "resolvedDataset": uri("spec.dataset", spec.dataset),
        }
    if isinstance(resource, TeacherGeneration):
        return {"resolvedModel": uri("spec.model", spec.model)}
    return served(resource, resolved, status)


#: A Hub commit: the only revision that names exact weights (a branch or tag may move).
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _pinned(source: ModelSource) -> bool:
    """Whether the spec names exact weights: another resource's output (its manifest digest) or a Hub commit."""
    return source.from_ is not None or bool(source.hub_revision and _COMMIT.fullmatch(source.hub_revision))


def _served_digest(source: ModelSource, named: str | None, reported: str | None) -> str | None:
    """The digest the status gives a served model: what a serving pod `reported` loading, unless the spec
    pins the weights and the status already `named` their digest."""
    return reported if reported and not (_pinned(source) and named) else named


def served(
    resource: SpecServe, resolved: dict[str, pipeline.Resolved], status: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`status.target` / `status.draft`: the URIs and manifest digests this generation serves.

    Where the spec does not pin the weights (a Hub branch or tag, a plain `s3://` URI), the digest a
    serving pod reported for the same URI (`serving_reports`) is kept: that is what is served.
    """
    out: dict[str, Any] = {}
    for role, source in (("target", resource.spec.target), ("draft", resource.spec.draft)):
        if source is None:
            continue
        found = resolved.get(f"spec.{role}")
        here = {"uri": found.uri, "digest": found.digest} if found else {"uri": source.location}
        here.setdefault("digest", source.hub_digest)
        reported = (status or {}).get(role) or {}
        if reported.get("uri") == here["uri"]:
            here["digest"] = _served_digest(source, here["digest"], reported.get("digest"))
        out[role] = {k: v for k, v in here.items() if v is not None}
    return out


# ---- a run: TrainingRun, TeacherGeneration ----


@dataclass
class RunState:
    """What an executor says about a run: the operator from its Job, `metaspec local` from exit codes."""

    phase: Phase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    shards: ShardCounts = field(default_factory=ShardCounts)

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED)


def exit_state(code: int, shards: ShardCounts, start_time: str | None = None, log: str = "") -> RunState:
    """A finished run's state from its last exit code, as the Job controller would judge it."""
    if code == 0:
        return RunState(Phase.SUCCEEDED, C.RUN_COMPLETE, COMPLETE_MESSAGE, start_time, now(), shards)
    reason = C.FAIL_FAST if code in FAIL_FAST_CODES else C.RETRIES_EXHAUSTED
    message = f"exit code {code}" + (f"; see {log}" if log else "")
    return RunState(Phase.FAILED, reason, message, start_time, now(), shards)


#: The message of a finished run when its executor has none of its own.
COMPLETE_MESSAGE = "all pods succeeded"


def observe(resource: Resource, status: dict[str, Any], state: RunState) -> dict[str, Any]:
    """The status of a run from its state alone (phase, times, shard counts, `Suspended`)."""
    status = {**status, "observedGeneration": resource.metadata.generation}
    status["startTime"] = status.get("startTime") or state.start_time or now()
    if isinstance(resource, TeacherGeneration):
        status["shards"] = state.shards.dump()
    suspended = state.phase == Phase.SUSPENDED
    status = with_condition(status, resource, C.SUSPENDED, suspended, state.reason, state.message)
    status = with_condition(status, resource, C.READY, state.phase == Phase.SUCCEEDED, state.reason, state.message)
    return {**status, "phase": state.phase.value, "message": state.message}


def finish(
    resource: Resource,
    status: dict[str, Any],
    state: RunState,
    failures: list[FailureSummary],
    results: list[dict[str, Any]],
) -> dict[str, Any]:
    """The status of a finished run: `observe`'s, plus what the summaries add.

    `failures`: every attempt's summary, newest first; `results`: the raw summaries of the successful
    attempts, one per shard in shard order (one for a TrainingRun).
    """
    status = without_estimates(resource, observe(resource, status, state))
    if state.phase == Phase.FAILED:
        status["message"] = failure_message(failures, state.message)
        if any(f.exit_code == EXIT_QUALITY for f in failures):
            message = status["message"]
            status = with_condition(status, resource, C.QUALITY_CHECK_PASSED, False, C.QUALITY_CHECK_FAILED, message)
    elif isinstance(resource, TrainingRun):
        status = {**status, **(training_fields(TrainingSummary.read(results[0])) if results else {})}
    else:
        status = generation_fields(resource, status, [ShardSummary.read(r) for r in results])
    status["completionTime"] = state.completion_time or now()
    type_ = C.COMPLETE if state.phase == Phase.SUCCEEDED else C.FAILED
    ready = state.phase == Phase.SUCCEEDED
    status = with_condition(status, resource, C.READY, ready, state.reason, status["message"])
    return with_condition(status, resource, type_, True, state.reason, status["message"])


def live_progress(
    resource: Resource, status: dict[str, Any], reports: dict[int | str, ProgressReport], at: str
) -> dict:
    """`status` with what the running pods last reported (`reports` by shard index, for a SpecServe by
    pod name, oldest report first), stamped `at`.

    Only a running run takes live progress: the summaries of a finished one are the final word.
    """
    if isinstance(resource, SpecServe):
        return serving_reports(resource, status, list(reports.values()))
    if status.get("phase") != Phase.RUNNING.value or not reports:
        return status
    if isinstance(resource, TrainingRun):
        report = reports[max(reports)]
        progress = TrainingProgress(
            step=report.step or 0,
            total_steps=report.total_steps,
            epoch=report.epoch,
            eta_seconds=report.eta_seconds,
            update_time=at,
        )
        live = TrainingMetrics(
            train_loss=report.loss, eval_loss=report.eval_loss, tokens_per_second=report.tokens_per_second
        )
        metrics = {**(status.get("metrics") or {}), **live.dump()}
        return {**status, "progress": progress.dump(), **({"metrics": metrics} if metrics else {})}
    shards = list(reports.values())

    def total(name: str) -> Any:
        values = [getattr(r, name) for r in shards if getattr(r, name) is not None]
        return sum(values) if values else None

    etas = [r.eta_seconds for r in shards if r.eta_seconds is not None]
    counts = GenerationStats(
        examples_done=total("examples_done"),
        examples_total=total("examples_total"),  # of the shards that reported: `shardsReporting` says how many
        examples_per_second=total("examples_per_second"),
        tokens_per_second=total("tokens_per_second"),
    )
    progress = GenerationProgress(eta_seconds=max(etas) if etas else None, shards_reporting=len(shards), update_time=at)
    return {**status, "stats": {**(status.get("stats") or {}), **counts.dump()}, "progress": progress.dump()}


def without_estimates(resource: Resource, status: dict[str, Any]) -> dict[str, Any]:
    """`status` without the live estimates, which mean nothing once the run has ended."""
    if isinstance(resource, TeacherGeneration):
        return {k: v for k, v in status.items() if k != "progress"}
    progress = {k: v for k, v in (status.get("progress") or {}).items() if k != "etaSeconds"}
    return {**status, "progress": progress} if progress else {k: v for k, v in status.items() if k != "progress"}


def failure_message(failures: list[FailureSummary], fallback: str) -> str:
    """The newest failed attempt's own account of the failure, else the executor's."""
    for summary in failures:
        if summary.failed and summary.message:
            return f"{summary.reason}: {summary.message}" if summary.reason else summary.message
    return fallback


def training_fields(summary: TrainingSummary) -> dict[str, Any]:
    """The status fields a TrainingRun's summary fills in."""
    fields = {name: getattr(summary, name) for name in ("artifacts", "metrics", "progress")}
    out = {name: value.dump() for name, value in fields.items() if value is not None and value.dump()}
    return {**out, **({"modelCache": summary.model_cache} if summary.model_cache else {})}


def merge_cache_outcomes(reports: Iterable[dict[str, str] | None]) -> dict[str, str]:
    """One outcome per model over several pods' reports: `miss` when any pod downloaded it, else `hit`."""
    merged: dict[str, str] = {}
    for outcomes in reports:
        for uri, outcome in (outcomes or {}).items():
            merged[uri] = "miss" if "miss" in (outcome, merged.get(uri)) else "hit"
    return merged


def _weighted(stats: list[GenerationStats], name: str) -> float | None:
    pairs = [(getattr(s, name), s.examples_done or 0) for s in stats if getattr(s, name) is not None]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def merge_generation_stats(stats: list[GenerationStats]) -> GenerationStats:
    """One set of statistics from the shards': counts and throughputs add, rates weigh by examples."""

    def total(name: str) -> float | None:
        values = [getattr(s, name) for s in stats if getattr(s, name) is not None]
        return sum(values) if values else None

    return GenerationStats(
        examples_done=total("examples_done"),
        examples_total=total("examples_total"),
        natural_stop_rate=_weighted(stats, "natural_stop_rate"),
        truncated_rate=_weighted(stats, "truncated_rate"),
        mean_output_tokens=_weighted(stats, "mean_output_tokens"),
        examples_per_second=total("examples_per_second"),
        tokens_per_second=total("tokens_per_second"),
    )


@dataclass
class Quality:
    passed: bool | None  # None: nothing to judge by
    message: str


def generation_quality(resource: TeacherGeneration, stats: GenerationStats, shards: list[ShardSummary]) -> Quality:
    """The quality gate: the natural-stop rate against `quality.minNaturalStopRate`, or the shards' verdicts."""
    minimum = resource.spec.quality.min_natural_stop_rate
    if stats.natural_stop_rate is not None:
        rate = stats.natural_stop_rate
        verdict = "at least" if rate >= minimum else "below"
        return Quality(rate >= minimum, f"natural-stop rate {rate:.3f} is {verdict} the minimum {minimum:.3f}")
    verdicts = [s.quality for s in shards if s.quality is not None]
    if not verdicts:
        return Quality(None, "no shard reported statistics")
    failed_ = [v for v in verdicts if not v.passed]
    return Quality(not failed_, "; ".join(v.message for v in failed_) or "all shards passed")


def generation_fields(resource: TeacherGeneration, status: dict[str, Any], shards: list[ShardSummary]) -> dict:
    """`status` with the shards' output URI, merged statistics and the quality gate's condition."""
    stats = [s.stats for s in shards if s.stats is not None]
    merged = merge_generation_stats(stats)
    uris = {s.output_uri for s in shards} - {None}
    status = {**status, "outputUri": uris.pop() if len(uris) == 1 else resource.spec.output.uri}
    if stats:
        status["stats"] = merged.dump()
    if cache := merge_cache_outcomes(s.model_cache for s in shards):
        status["modelCache"] = cache
    if digests := sorted({s.model_digest for s in shards} - {None}):
        status["modelDigest"] = ", ".join(digests)
    quality = generation_quality(resource, merged, shards)
    if quality.passed is None:
        return status
    reason = C.QUALITY_PASSED if quality.passed else C.NATURAL_STOP_RATE_TOO_LOW
    return with_condition(status, resource, C.QUALITY_CHECK_PASSED, quality.passed, reason, quality.message)


# ---- serving: SpecServe ----


@dataclass
class ServingState:
    """What an executor says about a SpecServe's servers: the operator from its Deployment."""

    phase: Phase
    reason: str
    message: str
    replicas: int
    ready_replicas: int


def serving_reports(resource: SpecServe, status: dict[str, Any], reports: list[ProgressReport]) -> dict[str, Any]:
    """`status` with what its serving pods reported once their models were loaded (`reports` oldest first).

    Only pods serving what the status names count (a pod of an earlier rollout may report late), and of
    those the newest `spec.replicas`: `modelCache` merges their outcomes, and where the spec does not pin
    the weights each model's digest is the newest pod's (a Hub branch becomes the commit it loaded).
    """
    roles = [role for role in ("target", "draft") if status.get(role)]
    if status.get("phase") == Phase.FAILED.value or not roles:
        return status

    def current(report: ProgressReport) -> bool:
        return all((m := getattr(report, role)) is not None and m.uri == status[role]["uri"] for role in roles)

    newest = [r for r in reports if current(r)][-max(1, resource.spec.replicas) :]
    if not newest:
        return status
    out = dict(status)
    for role in roles:
        named = status[role].get("digest")
        digest = _served_digest(getattr(resource.spec, role), named, getattr(newest[-1], role).digest)
        if digest != named:
            out[role] = {**status[role], "digest": digest}
    if cache := merge_cache_outcomes(r.model_cache for r in newest):
        out["modelCache"] = cache
    return threshold_condition(resource, out, newest[-1])


def threshold_condition(resource: SpecServe, status: dict[str, Any], report: ProgressReport) -> dict[str, Any]:
    """`ConfidenceThresholdCalibrated` from what `confidenceThreshold: auto` resolved to in the newest pod."""
    if report.threshold_calibrated is None:
        return status
    value, draft = report.confidence_threshold, (report.draft.uri if report.draft else "the draft")
    if report.threshold_calibrated:
        reason, message = (
            C.THRESHOLD_CALIBRATED,
            f"routing.confidenceThreshold: auto is {value}, calibrated with {draft}",
        )
    else:
        reason = C.DRAFT_HAS_NO_CALIBRATION
        message = (
            f"routing.confidenceThreshold: auto: {draft} has no calibration.json, so the default {value} serves; "
            "set a number, or serve a draft whose TrainingRun calibrated one (causal-lm, initFrom: target)"
        )
    return with_condition(
        status, resource, C.CONFIDENCE_THRESHOLD_CALIBRATED, report.threshold_calibrated, reason, message
    )


def serving_status(resource: SpecServe, status: dict[str, Any], state: ServingState) -> dict[str, Any]:
    """Phase, replicas and the `Ready`, `TargetReady`, `DraftReady`, `Suspended` conditions."""
    status = {
        **status,
        "phase": state.phase.value,
        "message": state.message,
        "replicas": state.replicas,
        "readyReplicas": state.ready_replicas,
        "observedGeneration": resource.metadata.generation,
    }
    ready = state.phase == Phase.READY
    status = with_condition(status, resource, C.READY, ready, state.reason, state.message)
    # A server turns ready only after loading both models, so readiness vouches for each of them.
    roles = [C.TARGET_READY] + ([C.DRAFT_READY] if resource.spec.draft is not None else [])
    for role in roles:
        reason = C.MODEL_LOADED if ready else C.MODEL_NOT_LOADED
        status = with_condition(status, resource, role, ready, reason, state.message)
    suspended = state.phase == Phase.SUSPENDED
    reason = C.SCALED_TO_ZERO if suspended else C.SERVING
    return with_condition(status, resource, C.SUSPENDED, suspended, reason, state.message)

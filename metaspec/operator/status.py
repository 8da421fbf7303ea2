"""From children to the resource's status: Job and Deployment state, and the components' summaries.

The summary contract (JSON in the container's termination message, written by
`metaspec.runtime.write_summary`; camelCase or snake_case keys; unknown keys are ignored):

- TrainingRun:        `{"artifacts": {"model", "adapter", "metrics", "lastCheckpoint", "manifestDigest"},
                        "metrics": {...TrainingMetrics}, "progress": {"step", "totalSteps", "epoch"}}`
- TeacherGeneration:  one per shard: `{"outputUri", "stats": {...GenerationStats},
                        "quality": {"passed": bool, "message": str}}`
- on failure (any):   `{"phase": "Failed", "reason", "message", "errorKind"}` (`run_component` writes it)

A dependent starts from `artifacts.model` (TrainingRun) or `outputUri` (TeacherGeneration, defaulting
to `spec.output.uri`), so a trainer must report `artifacts.model`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from metaspec.api import Phase, TeacherGeneration
from metaspec.api.generation import GenerationStats, ShardCounts
from metaspec.api.training import TrainingArtifacts, TrainingMetrics, TrainingProgress
from metaspec.operator.builders.pod import CONTAINER

log = logging.getLogger(__name__)

QUALITY_CHECK_PASSED = "QualityCheckPassed"
COMPLETE = "Complete"
SUSPENDED = "Suspended"
READY = "Ready"


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


@dataclass
class JobState:
    """What a Job says about its run."""

    phase: Phase
    reason: str
    message: str
    start_time: str | None = None
    completion_time: str | None = None
    shards: ShardCounts = field(default_factory=ShardCounts)

    @property
    def finished(self) -> bool:
        return self.phase in (Phase.SUCCEEDED, Phase.FAILED)


def job_state(job: dict[str, Any]) -> JobState:
    """The phase of a Job from its conditions (the Job controller's verdict) and counters."""
    status = job.get("status") or {}
    spec = job.get("spec") or {}
    shards = ShardCounts(
        total=spec.get("completions") or 1,
        succeeded=status.get("succeeded") or 0,
        failed=status.get("failed") or 0,
        active=status.get("active") or 0,
    )
    times = {"start_time": status.get("startTime"), "completion_time": status.get("completionTime")}
    if cond := _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        return JobState(
            Phase.SUCCEEDED, "JobComplete", cond.get("message") or "all pods succeeded", **times, shards=shards
        )
    if cond := _condition(job, "Failed") or _condition(job, "FailureTarget"):
        reason = cond.get("reason") or "JobFailed"
        message = cond.get("message") or "the Job failed"
        return JobState(Phase.FAILED, reason, message, times["start_time"], cond.get("lastTransitionTime"), shards)
    if spec.get("suspend") or _condition(job, "Suspended"):
        return JobState(Phase.SUSPENDED, "JobSuspended", "the Job is suspended", **times, shards=shards)
    done = f"{shards.succeeded}/{shards.total} pods succeeded" if shards.total > 1 else "the Job is running"
    return JobState(Phase.RUNNING, "JobRunning", done, **times, shards=shards)


def termination_summaries(pods: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod, summary) for each terminated main container, newest pod first.

    A message that is not JSON is the log tail Kubernetes substitutes when the component crashed
    before writing its summary (`FallbackToLogsOnError`): it becomes the failure message.
    """
    out = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated")
            if cs.get("name") != CONTAINER or not terminated:
                continue
            out.append((pod, _parse_summary(terminated)))
    out.sort(key=lambda ps: (ps[0].get("metadata") or {}).get("creationTimestamp") or "", reverse=True)
    return out


def _parse_summary(terminated: dict[str, Any]) -> dict[str, Any]:
    text = (terminated.get("message") or "").strip()
    try:
        summary = json.loads(text) if text else {}
    except ValueError:
        summary = {"message": text[-1000:]}
    if not isinstance(summary, dict):
        summary = {"message": text[-1000:]}
    summary.setdefault("exitCode", terminated.get("exitCode"))
    return summary


def _known(model: type[BaseModel], data: Any, where: str) -> dict[str, Any] | None:
    """`data` validated against `model`, unknown keys dropped: a component may report more than we show."""
    if not isinstance(data, dict):
        return None
    names = {f.alias or n for n, f in model.model_fields.items()} | set(model.model_fields)
    extra = model.model_config.get("extra") == "allow"
    picked = {k: v for k, v in data.items() if extra or k in names}
    try:
        return model.model_validate(picked).dump()
    except ValidationError as e:
        log.warning("ignoring an invalid %s in a component summary: %s", where, e)
        return None


def training_summary_status(summary: dict[str, Any]) -> dict[str, Any]:
    """The status fields a TrainingRun's summary fills in."""
    fields = {
        "artifacts": _known(TrainingArtifacts, summary.get("artifacts"), "artifacts"),
        "metrics": _known(TrainingMetrics, summary.get("metrics"), "metrics"),
        "progress": _known(TrainingProgress, summary.get("progress"), "progress"),
    }
    return {k: v for k, v in fields.items() if v}


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


def generation_quality(resource: TeacherGeneration, stats: GenerationStats, summaries: list[dict[str, Any]]) -> Quality:
    """The quality gate: the natural-stop rate against `quality.minNaturalStopRate`, or the shards' verdicts."""
    minimum = resource.spec.quality.min_natural_stop_rate
    if stats.natural_stop_rate is not None:
        rate = stats.natural_stop_rate
        verdict = "at least" if rate >= minimum else "below"
        return Quality(rate >= minimum, f"natural-stop rate {rate:.3f} is {verdict} the minimum {minimum:.3f}")
    verdicts = [s["quality"] for s in summaries if isinstance(s.get("quality"), dict) and "passed" in s["quality"]]
    if not verdicts:
        return Quality(None, "no shard reported statistics")
    failed = [v for v in verdicts if not v["passed"]]
    return Quality(not failed, "; ".join(str(v.get("message", "")) for v in failed) or "all shards passed")


def generation_summary_status(
    resource: TeacherGeneration, summaries: list[dict[str, Any]]
) -> tuple[dict[str, Any], Quality]:
    """The status fields the shards' summaries fill in, and the quality verdict."""
    known = [_known(GenerationStats, s.get("stats"), "stats") for s in summaries]
    stats = [GenerationStats.model_validate(k) for k in known if k]
    merged = merge_generation_stats(stats)
    uris = {s.get("outputUri") or s.get("output_uri") for s in summaries} - {None}
    fields: dict[str, Any] = {"outputUri": uris.pop() if len(uris) == 1 else resource.spec.output.uri}
    if stats:
        fields["stats"] = merged.dump()
    return fields, generation_quality(resource, merged, summaries)


def failure_message(summaries: list[dict[str, Any]], fallback: str) -> str:
    """The newest failed pod's own account of the failure, else the Job's."""
    for summary in summaries:
        if summary.get("exitCode") not in (0, None) and summary.get("message"):
            reason = summary.get("reason")
            return f"{reason}: {summary['message']}" if reason else str(summary["message"])
    return fallback


def succeeded_summaries(
    pods_and_summaries: list[tuple[dict[str, Any], dict[str, Any]]], indexed: bool
) -> list[dict[str, Any]]:
    """The summaries of the successful pods: the newest one, or the newest per shard index."""
    by_index: dict[str, dict[str, Any]] = {}
    for pod, summary in pods_and_summaries:
        if summary.get("exitCode") != 0:
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        index = annotations.get("batch.kubernetes.io/job-completion-index", "0") if indexed else "0"
        by_index.setdefault(index, summary)
    return [by_index[k] for k in sorted(by_index, key=int)]


@dataclass
class DeploymentState:
    phase: Phase
    reason: str
    message: str
    replicas: int
    ready_replicas: int


def deployment_state(deployment: dict[str, Any]) -> DeploymentState:
    """Ready when every desired replica runs the current template and passes its readiness probe."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = spec.get("replicas", 1)
    ready = status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    current = status.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 0)
    if desired == 0:
        return DeploymentState(Phase.SUSPENDED, "ScaledToZero", "no replicas requested", 0, ready)
    if ready >= desired and updated >= desired and current:
        return DeploymentState(Phase.READY, "ReplicasReady", f"{ready}/{desired} replicas ready", desired, ready)
    failing = _condition(deployment, "ReplicaFailure")
    message = failing.get("message", "") if failing else f"{ready}/{desired} replicas ready"
    return DeploymentState(Phase.PENDING, "ReplicasNotReady", message, desired, ready)

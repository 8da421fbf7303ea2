"""What the operator reads from Kubernetes children: a Job's state, its pods' summaries, a Deployment's state.

The status itself is computed from these by `metaspec.status`, as `metaspec local` computes it from
its subprocesses. The summaries are in each terminated main container's termination message (see
`metaspec.api.summaries`).
"""

from __future__ import annotations

from typing import Any

from metaspec.api import Phase
from metaspec.api import conditions as C
from metaspec.api.generation import ShardCounts
from metaspec.operator.builders.pod import CONTAINER
from metaspec.operator.labels import JOB_COMPLETION_INDEX
from metaspec.runtime import from_json
from metaspec.status import COMPLETE_MESSAGE, RunState, ServingState


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def job_state(job: dict[str, Any]) -> RunState:
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
        message = cond.get("message") or COMPLETE_MESSAGE
        return RunState(Phase.SUCCEEDED, C.RUN_COMPLETE, message, **times, shards=shards)
    if cond := _condition(job, "Failed") or _condition(job, "FailureTarget"):
        reason = cond.get("reason") or C.RUN_FAILED
        message = cond.get("message") or "the Job failed"
        return RunState(Phase.FAILED, reason, message, times["start_time"], cond.get("lastTransitionTime"), shards)
    if spec.get("suspend") or _condition(job, "Suspended"):
        return RunState(Phase.SUSPENDED, C.RUN_SUSPENDED, "the Job is suspended", **times, shards=shards)
    done = f"{shards.succeeded}/{shards.total} pods succeeded" if shards.total > 1 else "the Job is running"
    return RunState(Phase.RUNNING, C.RUN_RUNNING, done, **times, shards=shards)


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
        summary = from_json(text) if text else {}
    except ValueError:
        summary = {"message": text[-1000:]}
    if not isinstance(summary, dict):
        summary = {"message": text[-1000:]}
    summary.setdefault("exitCode", terminated.get("exitCode"))
    return summary


def succeeded_summaries(
    pods_and_summaries: list[tuple[dict[str, Any], dict[str, Any]]], indexed: bool
) -> list[dict[str, Any]]:
    """The summaries of the successful pods: the newest per shard index, or (not `indexed`) the newest
    of index 0, which is the one pod of a plain Job and node 0 of a multi-node training run (the node
    whose rank 0 publishes)."""
    by_index: dict[str, dict[str, Any]] = {}
    for pod, summary in pods_and_summaries:
        if summary.get("exitCode") != 0:
            continue
        annotations = (pod.get("metadata") or {}).get("annotations") or {}
        by_index.setdefault(annotations.get(JOB_COMPLETION_INDEX, "0"), summary)
    if not indexed:
        return [by_index["0"]] if "0" in by_index else []
    return [by_index[k] for k in sorted(by_index, key=int)]


def deployment_state(deployment: dict[str, Any]) -> ServingState:
    """Ready when every desired replica runs the current template and passes its readiness probe."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    desired = spec.get("replicas", 1)
    ready = status.get("readyReplicas") or 0
    updated = status.get("updatedReplicas") or 0
    current = status.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 0)
    if desired == 0:
        return ServingState(Phase.SUSPENDED, C.SCALED_TO_ZERO, "no replicas requested", 0, ready)
    if ready >= desired and updated >= desired and current:
        return ServingState(Phase.READY, C.REPLICAS_READY, f"{ready}/{desired} replicas ready", desired, ready)
    failing = _condition(deployment, "ReplicaFailure")
    message = failing.get("message", "") if failing else f"{ready}/{desired} replicas ready"
    return ServingState(Phase.PENDING, C.REPLICAS_NOT_READY, message, desired, ready)

"""The `batch/v1` Job of a TrainingRun (one pod) or a TeacherGeneration (Indexed: one pod per shard)."""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource, TeacherGeneration, TrainingRun
from metaspec.operator import labels as L
from metaspec.operator.builders import pod
from metaspec.operator.builders.names import child_metadata, generation_name
from metaspec.operator.settings import OperatorSettings
from metaspec.status import FAIL_FAST_CODES


def pod_failure_policy() -> dict[str, Any]:
    """Fail the Job at once on permanent errors; preemption and node drains do not count as failures."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {"containerName": pod.CONTAINER, "operator": "In", "values": list(FAIL_FAST_CODES)},
            },
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]
    }


def _labels(resource: Resource) -> dict[str, str]:
    meta = resource.metadata
    labels = {**L.owner_labels(resource.kind, meta.name, resource.component, meta.generation), L.ROLE: "job"}
    if resource.spec.queue_name:
        labels[L.KUEUE_QUEUE] = resource.spec.queue_name
    return labels


def _shards(resource: Resource) -> dict[str, Any]:
    if not isinstance(resource, TeacherGeneration):
        return {"completions": 1, "parallelism": 1}
    spec = resource.spec
    return {
        "completionMode": "Indexed",
        "completions": spec.shards,
        "parallelism": min(spec.parallelism or spec.shards, spec.shards),
    }


def build_job(resource: TrainingRun | TeacherGeneration, settings: OperatorSettings, config_map: str) -> dict[str, Any]:
    """The Job running `resource`'s current generation, reading its config from `config_map`."""
    spec = resource.spec
    labels = _labels(resource)
    template_labels = {k: v for k, v in labels.items() if k != L.KUEUE_QUEUE}
    main = pod.container(resource, settings, config_map)
    channel = pod.progress_channel(resource, settings)
    if channel is not None:
        main["volumeMounts"].append(channel[1])
        main["env"] += channel[2]
    pod_spec = pod.pod_spec(resource, settings, [main], config_map)
    if channel is not None:
        pod_spec["volumes"].append(channel[0])
    job_spec: dict[str, Any] = {
        **_shards(resource),
        "backoffLimit": spec.backoff_limit,
        "podFailurePolicy": pod_failure_policy(),
        "suspend": spec.suspend,
        "template": {
            "metadata": pod.template_metadata(resource, template_labels, {}),
            "spec": {
                **pod_spec,
                # podFailurePolicy needs `Never`: every retry is a new pod whose exit code the Job sees.
                "restartPolicy": "Never",
            },
        },
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(resource, generation_name(resource), labels),
        "spec": job_spec,
    }

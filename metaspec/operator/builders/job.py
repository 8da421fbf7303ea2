"""The `batch/v1` Job of a TrainingRun (one pod, or Indexed: one pod per node) or a TeacherGeneration
(Indexed: one pod per shard).

A TrainingRun with several GPUs runs one training process per GPU (`metaspec train --nproc-per-node`,
which launches them through torch.distributed.run); with `resources.nodes` above 1 its Job is
Indexed with one pod per node, all started together (`parallelism = completions = nodes`), and the
pods meet at an elastic (c10d) rendezvous whose store node 0 hosts behind the headless Service. The
group restarts as a whole inside the pods: after a process fails, every node's agent restarts its
processes from the last checkpoint (`--max-restarts` = `spec.backoffLimit`); a pod that is lost is
replaced by the Job and its replacement joining restarts the others (the reasoning is in
`metaspec.trainer.launcher`). The Job's `backoffLimit` counts those replacements: losing node 0
costs every pod, so it is the spec's times `nodes`. A permanent error on any node, or a group out of
restarts, fails the Job at once (`podFailurePolicy`), which removes the other pods. Kueue's batch/v1
Job integration admits the Job as one workload with all its pods' resources (gang admission); JobSet
is not needed and not used.
"""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource, TeacherGeneration, TrainingRun
from metaspec.operator import labels as L
from metaspec.operator.builders import pod
from metaspec.operator.builders.names import child_metadata, generation_name
from metaspec.operator.builders.service import RENDEZVOUS_PORT
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
    if isinstance(resource, TrainingRun):
        nodes = resource.spec.resources.nodes
        indexed = {"completionMode": "Indexed"} if nodes > 1 else {}
        return {**indexed, "completions": nodes, "parallelism": nodes}
    spec = resource.spec
    return {
        "completionMode": "Indexed",
        "completions": spec.shards,
        "parallelism": min(spec.parallelism or spec.shards, spec.shards),
    }


def _distributed(run: TrainingRun, job: str, container: dict[str, Any]) -> dict[str, Any]:
    """One training process per GPU, and the rendezvous of the nodes through torchrun's own variables;
    returns what the pod spec needs for it."""
    res = run.spec.resources
    if res.nodes == 1 and res.processes_per_node == 1:
        return {}
    container["command"] += ["--nproc-per-node", str(res.processes_per_node), "--nnodes", str(res.nodes)]
    if res.nodes == 1:
        return {}
    container["command"] += ["--max-restarts", str(run.spec.backoff_limit)]
    index = {"fieldRef": {"fieldPath": f"metadata.annotations['{L.JOB_COMPLETION_INDEX}']"}}
    container["env"] += [
        {"name": "PET_NODE_RANK", "valueFrom": index},
        {"name": "PET_RDZV_ENDPOINT", "value": f"{job}-0.{job}:{RENDEZVOUS_PORT}"},
    ]
    container["ports"] = [{"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}]
    # pod i is `<job>-<i>.<job>` in the rendezvous Service's DNS, and its FQDN, which the rendezvous
    # ranks the nodes by (torchrun's default node address), starts so: node 0 sorts first, holds rank 0
    return {"subdomain": job}


def build_job(resource: TrainingRun | TeacherGeneration, settings: OperatorSettings, config_map: str) -> dict[str, Any]:
    """The Job running `resource`'s current generation, reading its config from `config_map`."""
    spec = resource.spec
    labels = _labels(resource)
    template_labels = {k: v for k, v in labels.items() if k != L.KUEUE_QUEUE}
    name = generation_name(resource)
    main = pod.container(resource, settings, config_map)
    channel = pod.progress_channel(resource, settings, main)
    extra = _distributed(resource, name, main) if isinstance(resource, TrainingRun) else {}
    pod_spec = {**pod.pod_spec(resource, settings, [main], config_map), **extra}
    pod_spec["volumes"] += channel
    shards = _shards(resource)
    job_spec: dict[str, Any] = {
        **shards,
        "backoffLimit": spec.backoff_limit * (shards["completions"] if isinstance(resource, TrainingRun) else 1),
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
        "metadata": child_metadata(resource, name, labels),
        "spec": job_spec,
    }

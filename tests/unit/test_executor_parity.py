"""The operator and `metaspec local` turn the same component summaries into the same status and config.

Each scenario feeds one set of summaries to both executors' own code: the operator's Job mirror
(`handlers.jobs.mirror`, `handlers.specserve.deployment_fields`) reads them from the terminated pods a
Job would leave, and `LocalRun` from its component processes. No Kubernetes and no processes run
here: the pod list and the processes' (exit code, summary) are given, which is the whole input of both
executors once a run ends. Only executor bookkeeping differs and is left out of the comparison: the
child's name (`jobName`, `deploymentName`, `selector`), where it serves (`url`) and wall-clock times.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from metaspec import pipeline
from metaspec.api import Resource, parse_resource
from metaspec.local import specserve as specserve_local
from metaspec.local.context import RunOptions
from metaspec.local.runner import LocalRun
from metaspec.operator.builders import build_configmap
from metaspec.operator.handlers import jobs, specserve
from metaspec.operator.settings import OperatorSettings
from metaspec.status import started

BOOKKEEPING = {"jobName", "deploymentName", "selector", "url", "startTime", "completionTime"}


def resource(kind: str, spec: dict[str, Any]) -> Resource:
    meta = {"name": kind.lower(), "namespace": "default", "uid": "0f0e0d0c", "generation": 1}
    return parse_resource({"apiVersion": "metaspec.dev/v1alpha1", "kind": kind, "metadata": meta, "spec": spec})


def training(tmp_path: Path) -> Resource:
    return resource(
        "TrainingRun",
        {
            "baseModel": {"uri": "s3://bkt/base"},
            "dataset": {"uri": "builtin://train"},
            "output": {"uri": str(tmp_path)},
        },
    )


def generation(tmp_path: Path, fail_on_quality: bool = False) -> Resource:
    spec = {"model": {"uri": "s3://bkt/m"}, "dataset": {"uri": "builtin://prompts"}, "output": {"uri": str(tmp_path)}}
    spec |= {"engine": "transformers", "shards": 2, "quality": {"failOnQuality": fail_on_quality}}
    return resource("TeacherGeneration", spec)


def pod(code: int, summary: dict[str, Any], index: int, minute: int) -> dict[str, Any]:
    terminated = {"exitCode": code, "message": json.dumps(summary)}
    return {
        "metadata": {
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
            "creationTimestamp": f"2026-01-01T00:{minute:02d}:00Z",
        },
        "status": {"containerStatuses": [{"name": "main", "state": {"terminated": terminated}}]},
    }


def job(total: int, succeeded: int, failed: int, condition: dict[str, str] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"succeeded": succeeded, "failed": failed, "active": 0 if condition else 1}
    status["conditions"] = [{"status": "True", **condition}] if condition else []
    return {"metadata": {"name": "run-g1"}, "spec": {"completions": total}, "status": status}


class PodList:
    """The pods of the finished Job, as the API server would list them."""

    def __init__(self, pods: list[dict[str, Any]]):
        self.pods = pods

    async def list(self, kind: str, namespace: str, labels: dict[str, str]) -> list[dict[str, Any]]:
        return self.pods


def operator_run(res: Resource, pods: list[dict[str, Any]], final_job: dict[str, Any]) -> tuple[dict, str]:
    """The status the operator computes: references resolved, the Job running, then finished."""
    ctx = SimpleNamespace(kube=PodList(pods), settings=OperatorSettings())
    check = pipeline.check_dependencies(res, lambda kind, name: None)
    status = started(res, {}, check)
    running = job(final_job["spec"]["completions"], 0, 0, None)
    status = asyncio.run(jobs.mirror(ctx, res, running, status))
    status = asyncio.run(jobs.mirror(ctx, res, final_job, status))
    config = build_configmap(res, pipeline.resolve(res, check.resolved), "cm")["data"]["config.json"]
    return status, config


def local_executor(tmp_path: Path, res: Resource, exits: list[tuple[int, dict[str, Any]]]) -> LocalRun:
    """`metaspec local` after executing `res`, its processes exiting with the scripted (code, summary)s."""
    run = LocalRun(tmp_path / "pipeline.yaml", RunOptions(state_dir=tmp_path / "state"))
    run.ctx.resources = [res]
    scripted = iter(exits)
    run.ctx.run_component = lambda resource, argv, summary, python=None: next(scripted)  # type: ignore[method-assign]
    run.execute(res)
    assert next(scripted, None) is None, "the local executor ran fewer processes than the scenario has"
    return run


def result(run: LocalRun, res: Resource, tmp_path: Path) -> tuple[dict, str]:
    """The status `metaspec local` computed and the config file it wrote."""
    stage = tmp_path / "state" / "stages" / f"{res.kind.lower()}-{res.metadata.name}"
    return run.ctx.of(res).status, (stage / "config.json").read_text()


def local_run(res: Resource, tmp_path: Path, exits: list[tuple[int, dict[str, Any]]]) -> tuple[dict, str]:
    return result(local_executor(tmp_path, res, exits), res, tmp_path)


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    conditions = [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions", [])]
    kept = {k: v for k, v in status.items() if k not in BOOKKEEPING}
    return {**kept, "conditions": sorted(conditions, key=lambda c: c["type"])}


def wordless(status: dict[str, Any]) -> dict[str, Any]:
    kept = comparable(status)
    conditions = [{k: v for k, v in c.items() if k != "message"} for c in kept["conditions"]]
    return {**{k: v for k, v in kept.items() if k != "message"}, "conditions": conditions}


TRAINED = {
    "phase": "Succeeded",
    "artifacts": {"model": "s3://bkt/out/merged", "manifestDigest": "abc", "unknown": 1},
    "metrics": {"perplexityBase": 9.5, "perplexityMerged": 7.25, "trainLoss": "not a number"},
    "progress": {"step": 8, "totalSteps": 8},
    "data": {"valid": 12},
}
PERMANENT = {"phase": "Failed", "reason": "PermanentError", "message": "line 3 of the dataset: no `output`"}


def shard(done: int, rate: float, passed: bool) -> dict[str, Any]:
    stats = {"examplesDone": done, "examplesTotal": done, "naturalStopRate": rate, "truncatedRate": 1 - rate}
    return {"phase": "Succeeded", "stats": stats, "quality": {"passed": passed, "message": "shard verdict"}}


LOW = {**shard(5, 0.4, False), "phase": "Failed", "reason": "QualityCheckFailed", "message": "natural-stop rate 0.400"}

SCENARIOS = {
    "training succeeds": (
        training,
        [pod(0, TRAINED, 0, 1)],
        job(1, 1, 0, {"type": "Complete"}),
        [(0, TRAINED)],
    ),
    "training fails fast": (
        training,
        [pod(3, PERMANENT, 0, 1)],
        job(1, 0, 1, {"type": "Failed", "reason": "PodFailurePolicy", "message": "exit code 3"}),
        [(3, PERMANENT)],
    ),
    "training retried then succeeds": (
        training,
        [pod(1, {"message": "CUDA error"}, 0, 1), pod(0, TRAINED, 0, 2)],
        job(1, 1, 1, {"type": "Complete"}),
        [(1, {"message": "CUDA error"}), (0, TRAINED)],
    ),
    "two shards, gate recomputed from merged stats": (
        generation,
        [pod(0, shard(30, 0.8, True), 0, 1), pod(0, {**shard(10, 1.0, True), "mergedStats": {}}, 1, 2)],
        job(2, 2, 0, {"type": "Complete"}),
        [(0, shard(30, 0.8, True)), (0, {**shard(10, 1.0, True), "mergedStats": {}})],
    ),
    "failOnQuality stops at the failing shard": (
        lambda tmp_path: generation(tmp_path, fail_on_quality=True),
        [pod(4, LOW, 0, 1)],
        job(2, 0, 1, {"type": "Failed", "reason": "PodFailurePolicy", "message": "exit code 4"}),
        [(4, LOW)],
    ),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_runs_report_the_same_status_and_config(name: str, tmp_path: Path) -> None:
    make, pods, final_job, exits = SCENARIOS[name]
    res = make(tmp_path / "out")
    op_status, op_config = operator_run(res, pods, final_job)
    local_status, local_config = local_run(res, tmp_path, exits)
    assert comparable(local_status) == comparable(op_status)
    assert local_config == op_config
    assert op_status["phase"] in ("Succeeded", "Failed")


def test_servers_report_the_same_status_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    res = resource(
        "SpecServe",
        {"target": {"uri": "s3://bkt/target"}, "draft": {"uri": "s3://bkt/draft"}, "engine": "metaspec"},
    )
    ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
    deployment = {"metadata": {"name": "specserve", "generation": 1}, "spec": {"replicas": 1}, "status": ready}
    ctx = SimpleNamespace(settings=OperatorSettings())
    check = pipeline.check_dependencies(res, lambda kind, name: None)
    op_status = specserve.deployment_fields(ctx, res, deployment, started(res, {}, check))
    config_map, _ = specserve.desired(ctx, res, pipeline.resolve(res, check.resolved), {})

    server = SimpleNamespace(pid=0, stop=lambda grace: None, poll=lambda: None)
    monkeypatch.setattr("metaspec.local.serving.start_server", lambda *a, **k: (server, "http://127.0.0.1:1/v1"))
    run = local_executor(tmp_path, res, [])
    local_status, local_config = result(run, res, tmp_path)
    assert comparable(local_status) == comparable(op_status)
    assert local_config == config_map["data"]["config.json"]
    assert {c["type"] for c in op_status["conditions"]} >= {"Ready", "TargetReady", "DraftReady", "Suspended"}

    scaled_down = {**deployment, "spec": {"replicas": 0}, "status": {"observedGeneration": 1}}
    op_stopped = specserve.deployment_fields(ctx, res, scaled_down, op_status)
    specserve_local.stop(run.ctx, run.servers)
    local_stopped = run.ctx.of(res).status
    assert local_stopped["phase"] == "Suspended"
    assert wordless(local_stopped) == wordless(op_stopped)  # each executor says why in its own words

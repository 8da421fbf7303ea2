"""Job/Deployment status and the components' termination summaries, as the operator reads them."""

from __future__ import annotations

from metaspec.api import Phase
from metaspec.api.generation import GenerationStats
from metaspec.operator import status as S


def pod(exit_code: int, message: str, index: int | None = None, created: str = "2026-01-01T00:00:00Z") -> dict:
    annotations = {"batch.kubernetes.io/job-completion-index": str(index)} if index is not None else {}
    terminated = {"exitCode": exit_code, "message": message}
    return {
        "metadata": {"annotations": annotations, "creationTimestamp": created},
        "status": {"containerStatuses": [{"name": "main", "state": {"terminated": terminated}}]},
    }


def test_job_state_from_conditions_and_counters():
    running = S.job_state({"spec": {"completions": 4}, "status": {"active": 2, "succeeded": 2}})
    assert running.phase == Phase.RUNNING and running.shards.succeeded == 2 and "2/4" in running.message
    failed = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "too many"}
    state = S.job_state({"spec": {}, "status": {"conditions": [failed]}})
    assert state.phase == Phase.FAILED and state.reason == "BackoffLimitExceeded" and state.finished
    assert S.job_state({"spec": {"suspend": True}, "status": {}}).phase == Phase.SUSPENDED


def test_summaries_newest_first_with_log_tail_fallback():
    pods = [pod(1, "Traceback ...\nOSError: disk full", created="2026-01-01T00:01:00Z"), pod(0, '{"a": 1}')]
    summaries = [s for _, s in S.termination_summaries(pods)]
    assert summaries[0]["message"].endswith("disk full") and summaries[0]["exitCode"] == 1
    assert S.failure_message(summaries, "job failed").endswith("disk full")


def test_training_summary_keeps_known_fields_only():
    summary = {"artifacts": {"model": "s3://b/m", "unknown": 1}, "metrics": {"perplexityMerged": 47.2, "extra": 3}}
    fields = S.training_summary_status(summary)
    assert fields["artifacts"] == {"model": "s3://b/m"} and fields["metrics"]["extra"] == 3


def test_generation_stats_merge_and_quality_gate():
    from metaspec.api import parse_resource

    teacher = parse_resource(
        {
            "apiVersion": "metaspec.dev/v1alpha1",
            "kind": "TeacherGeneration",
            "metadata": {"name": "t"},
            "spec": {"model": {"uri": "s3://bkt/m"}, "dataset": {"uri": "s3://bkt/p"}, "output": {"uri": "s3://bkt/o"}},
        }
    )
    shards = [
        pod(0, '{"stats": {"examplesDone": 30, "naturalStopRate": 0.8}}', index=0),
        pod(0, '{"stats": {"examplesDone": 10, "naturalStopRate": 1.0}}', index=1),
    ]
    ok = S.succeeded_summaries(S.termination_summaries(shards), indexed=True)
    fields, quality = S.generation_summary_status(teacher, ok)
    assert fields["outputUri"] == "s3://bkt/o" and fields["stats"]["examplesDone"] == 40
    assert abs(fields["stats"]["naturalStopRate"] - 0.85) < 1e-9
    assert quality.passed is False and "below the minimum 0.900" in quality.message
    assert S.merge_generation_stats([]) == GenerationStats()


def test_deployment_ready_only_when_updated_and_ready():
    deployment = {"metadata": {"generation": 2}, "spec": {"replicas": 2}}
    deployment["status"] = {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 1}
    assert S.deployment_state(deployment).phase == Phase.PENDING
    deployment["status"]["updatedReplicas"] = 2
    assert S.deployment_state(deployment).phase == Phase.READY
    assert S.deployment_state({"spec": {"replicas": 0}}).phase == Phase.SUSPENDED

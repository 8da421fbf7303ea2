"""Job/Deployment status and the components' termination summaries, as the operator reads them."""

from __future__ import annotations

from metaspec.api import Phase
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


def test_succeeded_summaries_newest_per_shard_index():
    pods = [
        pod(0, '{"n": "old"}', index=1, created="2026-01-01T00:00:00Z"),
        pod(0, '{"n": "new"}', index=1, created="2026-01-01T00:02:00Z"),
        pod(1, '{"n": "failed"}', index=0, created="2026-01-01T00:03:00Z"),
        pod(0, '{"n": "zero"}', index=0),
    ]
    ok = S.succeeded_summaries(S.termination_summaries(pods), indexed=True)
    assert [s["n"] for s in ok] == ["zero", "new"]
    # A multi-node training run: node 0's summary (its rank 0 published), even when node 1's is newer.
    assert [s["n"] for s in S.succeeded_summaries(S.termination_summaries(pods), indexed=False)] == ["zero"]


def test_deployment_ready_only_when_updated_and_ready():
    deployment = {"metadata": {"generation": 2}, "spec": {"replicas": 2}}
    deployment["status"] = {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 1}
    assert S.deployment_state(deployment).phase == Phase.PENDING
    deployment["status"]["updatedReplicas"] = 2
    assert S.deployment_state(deployment).phase == Phase.READY
    assert S.deployment_state({"spec": {"replicas": 0}}).phase == Phase.SUSPENDED

"""The real `metaspec operator` process against the API emulator, hurt on purpose.

The emulator has no controllers: `metaspec_testing.chaos.Kubelet` plays the Job controller, kubelets
and Deployment controller (pods with component summaries, Jobs Complete, Deployments ready). Faults
are injected inside the emulated API server (kmock has reactions, but they cannot apply a write and
then fail its answer, kill the client at a chosen request, or cut open watch streams; the server's
own `faults` hook can). Many more seeded trials: `bench/reliability_operator.py`.
"""

from __future__ import annotations

import random
import time

import pytest

from metaspec_testing import chaos
from metaspec_testing.emulator import Cluster, Fault

TR, TG = "TrainingRun", "TeacherGeneration"


def explain(trial: chaos.Trial, cluster: Cluster) -> str:
    return f"{trial}\n--- operator log (tail) ---\n{cluster.operator_log[-4000:]}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_operator_sigkilled_at_seeded_writes_converges(emulator: Cluster, pipeline_yaml: list[dict], seed: int):
    """SIGKILLs at three seeded writes of a pipeline (each landed or lost); the operator is restarted."""
    trial = chaos.kill_trial(emulator, pipeline_yaml, f"kill-{seed}", seed)
    # A run's write count varies with timing, so the last point may not be reached; most are.
    assert len(trial.faults) >= 2, trial.faults
    assert trial.survived, explain(trial, emulator)


def test_api_errors_slow_answers_and_cut_watches_converge(emulator: Cluster, pipeline_yaml: list[dict]):
    """409 on create (object made or not) and on status writes, 429/500/503, delays, watches cut every second."""
    trial = chaos.error_trial(emulator, pipeline_yaml, "api-errors", seed=0)
    injected = {k: v for k, v in trial.faults.items() if k != "watch streams cut"}
    assert sum(injected.values()) >= 5 and trial.faults["watch streams cut"] > 0, trial.faults
    assert trial.survived, explain(trial, emulator)


class FailStatusWrites:
    """Fail the operator's status writes to one resource with 500 while `active`."""

    def __init__(self, path_part: str):
        self.path_part = path_part
        self.active = False
        self.failed = 0

    def __call__(self, request) -> Fault | None:
        if self.active and request.subresource == "status" and self.path_part in request.url.path:
            self.failed += 1
            return Fault(status=500)
        return None


def test_event_lost_to_an_api_error_is_recovered_by_the_resync(emulator: Cluster, pipeline_yaml: list[dict]):
    """kopf does not retry event handlers: the Job's completion, mirrored by `job_changed`, is lost to a
    500 on the status write. Nothing else changes afterwards, so only the periodic resync can finish it."""
    ns = "lost-event"
    policy = FailStatusWrites(f"/namespaces/{ns}/trainingruns/llama-anil/status")
    emulator.api.faults = policy
    try:
        if emulator.process is None or emulator.process.poll() is not None:
            emulator.start_operator_process(chaos.OPERATOR_ENV)
        emulator.apply(pipeline_yaml[0], ns)
        job = emulator.wait_get("Job", "llama-anil-g1", ns)
        emulator.wait_phase(TR, "llama-anil", ns, "Running")
        policy.active = True
        emulator.run_pod(job, 0, {"artifacts": {"model": "s3://artifacts/lost-event/model"}})
        emulator.finish_job(job, succeeded=True)
        emulator.wait_for(lambda: policy.failed > 0, message="job_changed to try its status write")
        time.sleep(0.5)
        policy.active = False
        status = emulator.wait_phase(TR, "llama-anil", ns, "Succeeded", timeout=15)
    finally:
        emulator.api.faults = None
    assert status["artifacts"]["model"] == "s3://artifacts/lost-event/model"


def snapshot(cluster: Cluster, ns: str, docs: list[dict]) -> dict:
    """Statuses and children's identities: what a re-run stage would change."""
    statuses = {d["metadata"]["name"]: cluster.status(d["kind"], d["metadata"]["name"], ns) for d in docs}
    children = {
        kind: sorted((o["metadata"]["name"], o["metadata"]["uid"]) for o in cluster.list(kind, ns))
        for kind in ("Job", "ConfigMap", "Deployment", "Service")
    }
    return {"statuses": statuses, "children": children}


def test_restarted_watches_and_operator_do_not_rerun_finished_stages(emulator: Cluster, pipeline_yaml: list[dict]):
    ns = "rewatch"
    trial = chaos.run_pipeline(emulator, pipeline_yaml, ns, random.Random(0))
    assert trial.survived, explain(trial, emulator)
    before = snapshot(emulator, ns, pipeline_yaml)
    recorder = chaos.Recorder()
    emulator.api.faults = recorder
    try:
        assert emulator.drop_watches() > 0
        emulator.wait_for(lambda: ("GET", "/apis/batch/v1/jobs") in recorder.requests, message="jobs re-watched")
        emulator.kill_operator_process()
        emulator.start_operator_process(chaos.OPERATOR_ENV)
        # The resumed operator has gone over every resource once its SpecServe was reconciled again.
        emulator.wait_for(lambda: recorder.writes("POST", f"/namespaces/{ns}/services"), message="resume")
        time.sleep(2.5)  # one resync period more
    finally:
        emulator.api.faults = None
    assert snapshot(emulator, ns, pipeline_yaml) == before
    assert not recorder.writes("POST", f"/namespaces/{ns}/jobs"), "a finished stage's Job was created again"
    assert not [p for m, p in recorder.requests if m == "PATCH" and f"/namespaces/{ns}/" in p and "status" in p]

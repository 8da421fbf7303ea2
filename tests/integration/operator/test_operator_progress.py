"""Live progress: running pods post to the operator's endpoint with their projected token; the run's
status shows it within the write interval, and the termination summaries still have the last word.
Serving pods post what they loaded once, into their SpecServe's status.

TokenReview is emulated: the emulated API server answers reviews for the tokens a test issues with
`Cluster.issue_token` (audience-checked, vouching for the pod's name and uid, as a real API server does
for pod-bound projected tokens). The operator (real kopf), its endpoint and the components' poster are
the real ones.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import yaml

from metaspec.api import API_VERSION
from metaspec.local.serving import free_port
from metaspec.operator import rbac
from metaspec.progress import TOKEN_ENV, URL_ENV, ProgressPoster
from metaspec_testing.chaos import Recorder
from metaspec_testing.emulator import Cluster
from metaspec_testing.models import hub_repo

REPO = Path(__file__).resolve().parents[3]
AUDIENCE = "metaspec.dev/progress"
TR, TG, SS = "TrainingRun", "TeacherGeneration", "SpecServe"
COMMIT = "c0ffee" * 6 + "0123"


def resource(file: str, name: str) -> dict:
    doc = copy.deepcopy(yaml.safe_load((REPO / "examples" / file).read_text()))
    doc["metadata"] = {"name": name}
    return doc


def running_pod(cluster: Cluster, kind: str, name: str, ns: str, tmp_path: Path, index: int | None = None):
    """A running pod of the run's Job, the progress URL the operator gave it, and a poster with its token."""
    cluster.wait_phase(kind, name, ns, "Running")
    job = cluster.wait_get("Job", f"{name}-g1", ns)
    env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[TOKEN_ENV].startswith("/var/run/secrets/")
    pod = cluster.start_pod(job, index)
    token = tmp_path / f"{pod['metadata']['name']}.token"
    token.write_text(cluster.issue_token(pod, AUDIENCE))
    return job, env[URL_ENV], ProgressPoster(env[URL_ENV], token, interval=0)


def test_a_pods_progress_reaches_its_runs_status_within_the_interval(cluster: Cluster, namespace: str, tmp_path):
    ns, interval = namespace, cluster.memo.settings.progress_seconds
    cluster.apply(resource("training-run.yaml", "live"), ns)
    job, _, poster = running_pod(cluster, TR, "live", ns, tmp_path)

    report = {"step": 7, "totalSteps": 100, "epoch": 0.07, "loss": 2.5, "evalLoss": 2.75, "tokensPerSecond": 4800.0}
    assert poster.post({**report, "etaSeconds": 930.0}) == 202
    progress = cluster.wait_for(lambda: cluster.status(TR, "live", ns).get("progress"), timeout=5)
    assert progress["step"] == 7 and progress["totalSteps"] == 100 and progress["etaSeconds"] == 930.0
    metrics = cluster.status(TR, "live", ns)["metrics"]
    assert metrics == {"trainLoss": 2.5, "evalLoss": 2.75, "tokensPerSecond": 4800.0}

    started = time.monotonic()
    assert poster.post({**report, "step": 8}) == 202
    step = lambda: cluster.status(TR, "live", ns)["progress"]["step"]  # noqa: E731
    cluster.wait_for(lambda: step() == 8, timeout=interval + 5)
    assert time.monotonic() - started < interval + 2

    # The termination summary is the final word: its progress replaces the live one, the ETA goes.
    cluster.run_pod(job, 0, {"progress": {"step": 100, "totalSteps": 100}, "metrics": {"evalLoss": 2.1}})
    cluster.finish_job(job, succeeded=True)
    done = cluster.wait_phase(TR, "live", ns, "Succeeded")
    assert done["progress"] == {"step": 100, "totalSteps": 100} and done["metrics"] == {"evalLoss": 2.1}
    assert poster.post({**report, "step": 9}) == 202  # a late report changes nothing
    time.sleep(interval + 0.5)
    assert cluster.status(TR, "live", ns)["progress"]["step"] == 100


def test_shards_add_up_and_the_summaries_replace_them(cluster: Cluster, namespace: str, tmp_path):
    ns, interval = namespace, cluster.memo.settings.progress_seconds
    doc = resource("teacher-generation.yaml", "gen")
    doc["spec"]["shards"] = 2
    cluster.apply(doc, ns)
    job, _, first = running_pod(cluster, TG, "gen", ns, tmp_path, index=0)
    second = running_pod(cluster, TG, "gen", ns, tmp_path, index=1)[2]
    first.post({"examplesDone": 30, "examplesTotal": 50, "examplesPerSecond": 2.0, "etaSeconds": 10.0})
    second.post({"examplesDone": 10, "examplesTotal": 50, "examplesPerSecond": 1.0, "etaSeconds": 40.0})

    def both() -> dict | None:
        status = cluster.status(TG, "gen", ns)
        return status if (status.get("progress") or {}).get("shardsReporting") == 2 else None

    status = cluster.wait_for(both, timeout=interval + 5)
    assert status["stats"] == {"examplesDone": 40, "examplesTotal": 100, "examplesPerSecond": 3.0}
    assert status["progress"]["etaSeconds"] == 40.0

    for shard in (0, 1):
        stats = {"examplesDone": 50, "examplesTotal": 50, "naturalStopRate": 0.95}
        cluster.run_pod(job, 0, {"stats": stats, "modelDigest": f"hf:{COMMIT}"}, index=shard)
    cluster.finish_job(job, succeeded=True)
    done = cluster.wait_phase(TG, "gen", ns, "Succeeded")
    assert done["stats"]["examplesDone"] == 100 and "examplesPerSecond" not in done["stats"]
    assert "progress" not in done
    assert done["modelDigest"] == f"hf:{COMMIT}"  # what the shards loaded, as a TrainingRun's baseModelDigest


def test_no_token_a_foreign_token_or_another_runs_pod_is_refused(cluster: Cluster, namespace: str, tmp_path):
    ns, interval = namespace, cluster.memo.settings.progress_seconds
    for name in ("mine", "theirs"):
        cluster.apply(resource("training-run.yaml", name), ns)
    _, mine_url, _ = running_pod(cluster, TR, "mine", ns, tmp_path)
    _, _, theirs = running_pod(cluster, TR, "theirs", ns, tmp_path)
    report = {"step": 1, "totalSteps": 10}

    assert httpx.post(mine_url, json=report).status_code == 401
    assert httpx.post(mine_url, json=report, headers={"Authorization": "Bearer made-up"}).status_code == 401
    # Another run's pod, with a valid token of its own, may not write this run's progress.
    foreign = ProgressPoster(mine_url, theirs.token_file, interval=0)
    assert foreign.post(report) == 403
    # A token minted for the API server (another audience) is no good here.
    pod = next(p for p in cluster.list("Pod", ns) if p["metadata"]["name"].startswith("mine-"))
    api_token = tmp_path / "api.token"
    api_token.write_text(cluster.issue_token(pod, "https://kubernetes.default.svc"))
    assert ProgressPoster(mine_url, api_token, interval=0).post(report) == 401
    # A pod's own token with a malformed report: refused, naming the field.
    mine = next(p for p in tmp_path.glob("mine-*.token"))
    bad = httpx.post(mine_url, json={"step": -1}, headers={"Authorization": f"Bearer {mine.read_text()}"})
    assert bad.status_code == 400 and "step" in bad.json()["error"]

    time.sleep(interval + 0.5)
    assert "progress" not in cluster.status(TR, "mine", ns)
    assert ("authentication.k8s.io", "tokenreviews", "create") in cluster.calls
    assert all(rbac.allowed(*call) for call in cluster.calls)


def test_200_reporting_runs_stay_within_the_documented_write_budget(cluster: Cluster, namespace: str, tmp_path):
    """The budget of docs/observability.md ("API write budget"): a run's status is written at most once
    per `progress_seconds`, and at most `progress_writes_per_second` times a second over all runs.

    200 runs post several reports each, all at once, with the components' poster; every status write
    the API server receives for them is counted, from the first post until each run's last report has
    landed. The fixture's limit over all runs (50/s) is below what the operator writes here when
    unthrottled (about 90/s on 2 cores), so a writer that ignored it fails this test.
    """
    ns, settings, runs, steps = namespace, cluster.memo.settings, 200, 4
    names = [f"run-{i:03d}" for i in range(runs)]
    for name in names:
        cluster.apply(resource("training-run.yaml", name), ns)
    running = lambda: [r for r in cluster.list(TR, ns) if r.get("status", {}).get("phase") == "Running"]  # noqa: E731
    cluster.wait_for(lambda: len(running()) == runs, timeout=60, message=f"{runs} Running TrainingRuns")
    posters = [running_pod(cluster, TR, name, ns, tmp_path)[2] for name in names]

    def report(poster: ProgressPoster) -> list[int | None]:
        return [poster.post({"step": step, "totalSteps": 100}) for step in range(1, steps + 1)]

    def landed() -> bool:
        return all((r["status"].get("progress") or {}).get("step") == steps for r in cluster.list(TR, ns))

    recorder = Recorder()
    cluster.api.faults = recorder
    started = time.monotonic()
    try:
        with ThreadPoolExecutor(32) as pool:
            assert {code for codes in pool.map(report, posters) for code in codes} == {202}
        cluster.wait_for(landed, timeout=60, message="every run's last report in its status")
    finally:
        cluster.api.faults = None
    elapsed = time.monotonic() - started

    writes = [path for path in recorder.writes("PATCH", f"/namespaces/{ns}/trainingruns/") if path.endswith("/status")]
    per_second = min(runs / settings.progress_seconds, settings.progress_writes_per_second)
    assert len(writes) <= per_second * elapsed + 1, f"{len(writes)} status writes in {elapsed:.1f} s"
    assert max(Counter(writes).values()) <= elapsed / settings.progress_seconds + 1


# ---- serving pods: what they loaded, into their SpecServe's status ----


def serving_pod(cluster: Cluster, name: str, ns: str, tmp_path: Path, replica_set: dict | None = None):
    """A running pod of the SpecServe's Deployment (through a ReplicaSet), its progress URL and a poster."""
    cluster.wait_for(lambda: cluster.status(SS, name, ns).get("deploymentName"), message=f"{name}'s Deployment")
    deployment = cluster.wait_get("Deployment", name, ns)
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    pod = cluster.start_serving_pod(deployment, replica_set)
    token = tmp_path / f"{pod['metadata']['name']}.token"
    token.write_text(cluster.issue_token(pod, AUDIENCE))
    return pod, env[URL_ENV], ProgressPoster(env[URL_ENV], token, interval=0)


def model_cache_events(cluster: Cluster, name: str, ns: str) -> list[str]:
    events = cluster.list("Event", ns)
    return [e["message"] for e in events if e["involvedObject"]["name"] == name and e["reason"] == "ModelCache"]


@pytest.mark.slow
def test_a_serving_pod_reports_the_commit_of_its_branch_and_its_model_cache(
    cluster: Cluster, namespace: str, tmp_path: Path, tiny_llama: Path
):
    """The real `metaspec serve`, given the pod's progress URL and token, loads `hf://acme/tiny@main`
    from a model cache that holds it (Hub client offline) and reports it: the SpecServe's status names
    the commit `main` points to instead of the branch, says the cache had it, and an Event says so."""
    ns = namespace
    cache = hub_repo(tmp_path / "cache", "acme/tiny", {"main": (COMMIT, tiny_llama)})
    spec = {"target": {"uri": "hf://acme/tiny", "revision": "main"}, "replicas": 1, "routing": {"policy": "never"}}
    cluster.apply({"apiVersion": API_VERSION, "kind": SS, "metadata": {"name": "tiny"}, "spec": spec}, ns)
    pod, url, poster = serving_pod(cluster, "tiny", ns, tmp_path)
    assert cluster.status(SS, "tiny", ns)["target"] == {"uri": "hf://acme/tiny@main", "digest": "hf:main"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    config = cluster.get("ConfigMap", volumes["config"]["configMap"]["name"], ns)["data"]["config.json"]
    (tmp_path / "config.json").write_text(config)

    env = {
        **os.environ,
        URL_ENV: url,
        TOKEN_ENV: str(poster.token_file),
        "HF_HUB_OFFLINE": "1",
        "METASPEC_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination"),
        "METASPEC_LOG_FORMAT": "text",
    }
    command = [sys.executable, "-m", "metaspec.cli", "serve", "--config", str(tmp_path / "config.json")]
    command += ["--host", "127.0.0.1", "--port", str(free_port()), "--model-cache", str(cache), "--device", "cpu"]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        reported = lambda: cluster.status(SS, "tiny", ns).get("modelCache")  # noqa: E731
        cluster.wait_for(lambda: reported() or server.poll() is not None, timeout=180)
        assert server.poll() is None, server.communicate()[0]
    finally:
        server.send_signal(signal.SIGTERM)
        output = server.communicate(timeout=60)[0]
    status = cluster.status(SS, "tiny", ns)
    assert status["target"] == {"uri": "hf://acme/tiny@main", "digest": f"hf:{COMMIT}"}, output
    assert status["modelCache"] == {"hf://acme/tiny@main": "hit"}
    messages = cluster.wait_for(lambda: model_cache_events(cluster, "tiny", ns), timeout=5)
    assert messages == ["hf://acme/tiny@main: found in the model cache"]

    # The next reconcile (a spec change that keeps the model) keeps the commit the pod reported.
    cluster.patch(SS, "tiny", {"spec": {"sampling": {"maxTokens": 64}}}, ns)
    cluster.wait_for(lambda: cluster.status(SS, "tiny", ns).get("observedGeneration") == 2)
    assert cluster.status(SS, "tiny", ns)["target"]["digest"] == f"hf:{COMMIT}"


def test_serving_pods_report_only_for_their_own_specserve(cluster: Cluster, namespace: str, tmp_path: Path):
    """pod → ReplicaSet → Deployment → SpecServe, uids checked: another SpecServe's pod, the pod of a
    Deployment no SpecServe owns, and a pod under a ReplicaSet that names the Deployment with a forged uid
    are all refused; the own pods' reports of the served URI land, a late one of another URI does not."""
    ns, interval = namespace, cluster.memo.settings.progress_seconds
    for name in ("mine", "theirs"):
        cluster.apply(resource("spec-serve.yaml", name), ns)
    target, draft = "s3://artifacts/llama-anil/merged", "s3://artifacts/llama-draft/model"
    digest = "e" * 64
    report = {"target": {"uri": target, "digest": digest}, "draft": {"uri": draft}, "modelCache": {target: "miss"}}
    _, mine_url, mine = serving_pod(cluster, "mine", ns, tmp_path)
    theirs = serving_pod(cluster, "theirs", ns, tmp_path)[2]
    assert ProgressPoster(mine_url, theirs.token_file, interval=0).post(report) == 403

    rogue = copy.deepcopy(cluster.get("Deployment", "mine", ns))
    rogue["metadata"] = {"name": "rogue"}  # the same pods, but no SpecServe owns this Deployment
    rogue = cluster.apply(rogue, ns)
    rogue_pod = cluster.start_serving_pod(rogue)
    token = tmp_path / "rogue.token"
    token.write_text(cluster.issue_token(rogue_pod, AUDIENCE))
    assert ProgressPoster(mine_url, token, interval=0).post(report) == 403

    deployment = cluster.get("Deployment", "mine", ns)
    forged = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "mine", "uid": "forged", "controller": True}
    replica_set = cluster.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "mine-forged", "ownerReferences": [forged]},
            "spec": {"selector": deployment["spec"]["selector"], "template": deployment["spec"]["template"]},
        },
        ns,
    )
    _, _, forged_pod = serving_pod(cluster, "mine", ns, tmp_path, replica_set=replica_set)
    assert forged_pod.post(report) == 403
    time.sleep(interval + 0.5)
    assert "modelCache" not in cluster.status(SS, "mine", ns)

    assert mine.post(report) == 202
    cluster.wait_for(lambda: cluster.status(SS, "mine", ns).get("modelCache"), timeout=interval + 5)
    status = cluster.status(SS, "mine", ns)
    assert status["target"] == {"uri": target, "digest": digest} and status["modelCache"] == {target: "miss"}
    assert "modelCache" not in cluster.status(SS, "theirs", ns)
    # A pod of an earlier rollout (another target) reporting late changes nothing.
    assert mine.post({**report, "target": {"uri": "s3://old", "digest": "0" * 64}, "modelCache": {}}) == 202
    time.sleep(interval + 0.5)
    assert cluster.status(SS, "mine", ns)["target"]["digest"] == digest
    assert ("apps", "replicasets", "get") in cluster.calls
    assert all(rbac.allowed(*call) for call in cluster.calls)


def test_auto_threshold_without_a_calibrated_draft_sets_a_condition_and_a_warning_event(
    cluster: Cluster, namespace: str, tmp_path: Path
):
    """`confidenceThreshold: auto` over a draft without `calibration.json`: the serving pod reports the
    default it fell back to, and the SpecServe gets `ConfidenceThresholdCalibrated` False and a Warning."""
    ns, interval = namespace, cluster.memo.settings.progress_seconds
    body = resource("spec-serve.yaml", "auto")
    body["spec"]["routing"] = {"policy": "first-token", "confidenceThreshold": "auto"}
    cluster.apply(body, ns)
    _, _, poster = serving_pod(cluster, "auto", ns, tmp_path)
    served = cluster.status(SS, "auto", ns)
    report = {role: {"uri": served[role]["uri"]} for role in ("target", "draft")}
    assert poster.post({**report, "confidenceThreshold": 0.7, "thresholdCalibrated": False}) == 202

    def condition() -> dict | None:
        found = cluster.status(SS, "auto", ns).get("conditions", [])
        return next((c for c in found if c["type"] == "ConfidenceThresholdCalibrated"), None)

    found = cluster.wait_for(condition, timeout=interval + 5)
    assert found["status"] == "False" and found["reason"] == "DraftHasNoCalibration"
    assert "routing.confidenceThreshold: auto" in found["message"] and served["draft"]["uri"] in found["message"]
    events = lambda: [  # noqa: E731
        e for e in cluster.list("Event", ns) if e["involvedObject"]["name"] == "auto" and e["reason"] == found["reason"]
    ]
    (event,) = cluster.wait_for(events, timeout=5)
    assert event["type"] == "Warning" and event["message"] == found["message"]

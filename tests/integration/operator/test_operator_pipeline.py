"""The whole pipeline of examples/pipeline.yaml through the real operator; the tests play the controllers.

kmock's emulator has no Job/Deployment controllers and no kubelet: the tests create the pods a Job
would run and patch Job and Deployment statuses, exactly as those controllers would.
"""

from __future__ import annotations

import json
from typing import Any

from metaspec.runtime import EXIT_PERMANENT
from metaspec_testing.emulator import Cluster

TR, TG, SS = "TrainingRun", "TeacherGeneration", "SpecServe"
MERGED = "s3://artifacts/llama-anil/merged"
DRAFT = "s3://artifacts/llama-draft/model"


def config(cluster: Cluster, name: str, ns: str) -> dict[str, Any]:
    return json.loads(cluster.wait_get("ConfigMap", name, ns)["data"]["config.json"])


def jobs(cluster: Cluster, ns: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in cluster.list("Job", ns))


def succeed_training(cluster: Cluster, name: str, ns: str, model: str, cache: dict | None = None) -> dict[str, Any]:
    j = cluster.wait_get("Job", f"{name}-g1", ns)
    summary = {
        "artifacts": {"model": model, "adapter": f"{model}/../adapter", "manifestDigest": f"sha-{name}"},
        "metrics": {"perplexityBase": 127.84, "perplexityLora": 46.37, "perplexityMerged": 47.18},
        "progress": {"step": 100, "totalSteps": 100},
        **({"modelCache": cache} if cache else {}),
    }
    cluster.run_pod(j, 0, summary)
    cluster.finish_job(j, succeeded=True)
    return cluster.wait_phase(TR, name, ns, "Succeeded")


def apply_all(cluster: Cluster, docs: list[dict], ns: str) -> None:
    for doc in docs:
        cluster.apply(doc, ns)


def test_pipeline_runs_stage_by_stage_with_resolved_uris(cluster: Cluster, docs: list[dict], namespace: str):
    ns = namespace
    for doc in docs:  # one model cache shared by every stage, created by the first that starts
        doc["spec"]["storage"]["modelCache"] = {"claimName": "model-cache", "size": "500Gi"}
    apply_all(cluster, docs, ns)

    # Stage 1 starts alone; everything else waits for it.
    volumes = cluster.wait_get("Job", "llama-anil-g1", ns)["spec"]["template"]["spec"]["volumes"]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}} in volumes
    claim = cluster.wait_get("PersistentVolumeClaim", "model-cache", ns)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and "ownerReferences" not in claim["metadata"]
    assert config(cluster, "llama-anil-g1", ns)["spec"]["baseModel"]["uri"].endswith("Llama-3.1-8B-Instruct")
    cluster.wait_phase(TG, "llama-teacher", ns, "Waiting")
    ready = cluster.condition(TG, "llama-teacher", ns, "DependenciesReady")
    assert ready["status"] == "False" and ready["reason"] == "DependencyNotSucceeded"
    assert jobs(cluster, ns) == ["llama-anil-g1"]

    anil = succeed_training(cluster, "llama-anil", ns, MERGED)
    assert anil["artifacts"]["model"] == MERGED and anil["metrics"]["perplexityMerged"] == 47.18
    assert cluster.condition(TR, "llama-anil", ns, "Complete")["status"] == "True"

    # Stage 2: the teacher reads the merged model; an Indexed Job with one pod per shard.
    teacher = cluster.wait_get("Job", "llama-teacher-g1", ns)
    assert teacher["spec"]["completionMode"] == "Indexed" and teacher["spec"]["completions"] == 4
    assert config(cluster, "llama-teacher-g1", ns)["spec"]["model"] == {"uri": MERGED, "trustRemoteCode": False}
    assert cluster.wait_phase(TG, "llama-teacher", ns, "Running")["resolvedModel"] == MERGED
    assert cluster.phase(TR, "llama-draft", ns) == "Waiting"
    for shard in range(4):
        stats = {"examplesDone": 10, "examplesTotal": 10, "naturalStopRate": 0.9 + 0.02 * shard}
        cache = {MERGED: "miss" if shard == 0 else "hit"}  # the first shard downloaded it, the others found it
        summary = {"outputUri": "s3://artifacts/llama-teacher", "stats": stats, "modelCache": cache}
        cluster.run_pod(teacher, 0, summary, index=shard)
    cluster.finish_job(teacher, succeeded=True)
    tg = cluster.wait_phase(TG, "llama-teacher", ns, "Succeeded")
    assert tg["stats"]["examplesDone"] == 40 and abs(tg["stats"]["naturalStopRate"] - 0.93) < 1e-9
    assert tg["shards"]["succeeded"] == 4 and tg["modelCache"] == {MERGED: "miss"}
    assert cluster.condition(TG, "llama-teacher", ns, "QualityCheckPassed")["status"] == "True"

    # Stage 3: the draft trains on the teacher's outputs.
    assert config(cluster, "llama-draft-g1", ns)["spec"]["dataset"]["uri"] == "s3://artifacts/llama-teacher"
    assert cluster.phase(SS, "llama-spec", ns) == "Waiting"
    assert succeed_training(cluster, "llama-draft", ns, DRAFT, {MERGED: "hit"})["modelCache"] == {MERGED: "hit"}

    # Stage 4: the server, with both models resolved and their digests recorded.
    deployment = cluster.wait_for(lambda: cluster.get("Deployment", "llama-spec", ns), message="Deployment")
    cm_name = deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"]
    served = config(cluster, cm_name, ns)["spec"]
    assert served["target"]["uri"] == MERGED and served["draft"]["uri"] == DRAFT
    assert cluster.get("Service", "llama-spec", ns)["spec"]["ports"][0]["port"] == 8000
    ss = cluster.wait_for(
        lambda: cluster.status(SS, "llama-spec", ns).get("draft") and cluster.status(SS, "llama-spec", ns)
    )
    assert ss["target"] == {"uri": MERGED, "digest": "sha-llama-anil"}
    assert ss["draft"] == {"uri": DRAFT, "digest": "sha-llama-draft"}
    ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
    cluster.patch_status("Deployment", "llama-spec", ready, ns)
    ss = cluster.wait_phase(SS, "llama-spec", ns, "Ready")
    assert ss["url"] == f"http://llama-spec.{ns}.svc.cluster.local:8000/v1"
    assert cluster.condition(SS, "llama-spec", ns, "DraftReady")["status"] == "True"

    # One Job per stage, and Events recording the transitions.
    assert jobs(cluster, ns) == ["llama-anil-g1", "llama-draft-g1", "llama-teacher-g1"]
    reasons = {(e["involvedObject"]["name"], e["reason"]) for e in cluster.list("Event", ns)}
    expected = {
        ("llama-anil", "JobRunning"),
        ("llama-anil", "JobComplete"),
        ("llama-teacher", "DependencyNotSucceeded"),
    }
    assert expected <= reasons, "Events carry the reason of the condition that explains the phase"
    cached = {
        (e["involvedObject"]["name"], e["message"]) for e in cluster.list("Event", ns) if e["reason"] == "ModelCache"
    }
    assert cached == {
        ("llama-teacher", f"{MERGED}: downloaded into the model cache"),
        ("llama-draft", f"{MERGED}: found in the model cache"),
    }


def test_failed_stage_fails_its_dependents(cluster: Cluster, docs: list[dict], namespace: str):
    ns = namespace
    apply_all(cluster, docs, ns)
    j = cluster.wait_get("Job", "llama-anil-g1", ns)
    failure = {"phase": "Failed", "reason": "PermanentError", "message": "train.jsonl line 3: `output` is missing"}
    cluster.run_pod(j, EXIT_PERMANENT, failure)
    cluster.finish_job(j, succeeded=False, message="Container main for pod failed with exit code 3")

    anil = cluster.wait_phase(TR, "llama-anil", ns, "Failed")
    assert "line 3" in anil["message"]
    for kind, name in ((TG, "llama-teacher"), (TR, "llama-draft"), (SS, "llama-spec")):
        failed = cluster.wait_phase(kind, name, ns, "Failed")
        assert cluster.condition(kind, name, ns, "DependenciesReady")["reason"] == "DependencyFailed", failed
    assert jobs(cluster, ns) == ["llama-anil-g1"]
    assert cluster.get("Deployment", "llama-spec", ns) is None


def test_operator_restart_mid_pipeline_converges_without_duplicates(cluster: Cluster, docs: list[dict], namespace: str):
    ns = namespace
    apply_all(cluster, docs, ns)
    first = cluster.wait_get("Job", "llama-anil-g1", ns)
    cluster.wait_phase(TG, "llama-teacher", ns, "Waiting")

    # The first stage finishes while no operator runs: the restarted one must notice on resume.
    cluster.stop_operator()
    cluster.run_pod(first, 0, {"artifacts": {"model": MERGED}})
    cluster.finish_job(first, succeeded=True)
    cluster.start_operator()
    cluster.wait_phase(TR, "llama-anil", ns, "Succeeded")
    cluster.wait_get("Job", "llama-teacher-g1", ns)

    cluster.stop_operator()
    cluster.start_operator()
    cluster.wait_phase(TG, "llama-teacher", ns, "Running")
    assert jobs(cluster, ns) == ["llama-anil-g1", "llama-teacher-g1"]
    config_maps = sorted(c["metadata"]["name"] for c in cluster.list("ConfigMap", ns))
    assert config_maps == ["llama-anil-g1", "llama-teacher-g1"]

"""Suspend, cycles, deleted dependencies, invalid specs, re-pointed servers, and RBAC coverage of real calls."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

from metaspec.operator import labels as L
from metaspec.operator import rbac
from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parents[3]

TRAINING = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
SERVE = yaml.safe_load((REPO / "examples" / "spec-serve.yaml").read_text())


def training(name: str, **spec: object) -> dict:
    doc = copy.deepcopy(TRAINING)
    doc["metadata"] = {"name": name}
    doc["spec"].update(spec)
    return doc


def test_suspend_and_resume_patch_the_same_job(cluster: Cluster, namespace: str):
    ns = namespace
    cluster.apply(training("paused", suspend=True), ns)
    assert cluster.wait_get("Job", "paused-g1", ns)["spec"]["suspend"] is True
    cluster.wait_phase("TrainingRun", "paused", ns, "Suspended")
    assert cluster.condition("TrainingRun", "paused", ns, "Suspended")["status"] == "True"

    cluster.patch("TrainingRun", "paused", {"spec": {"suspend": False}}, ns)
    cluster.wait_for(lambda: cluster.get("Job", "paused-g1", ns)["spec"]["suspend"] is False, message="unsuspend")
    cluster.wait_phase("TrainingRun", "paused", ns, "Running")
    assert [j["metadata"]["name"] for j in cluster.list("Job", ns)] == ["paused-g1"]
    assert cluster.get("TrainingRun", "paused", ns)["status"]["observedGeneration"] == 2


def test_reference_cycle_is_refused(cluster: Cluster, namespace: str):
    ns = namespace
    docs = list(yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()))[:2]
    docs[0]["spec"]["dataset"] = {"from": {"teacherGeneration": "llama-teacher"}}
    for doc in docs:
        cluster.apply(doc, ns)
    for kind, name in (("TrainingRun", "llama-anil"), ("TeacherGeneration", "llama-teacher")):
        cluster.wait_phase(kind, name, ns, "Failed")
        assert cluster.condition(kind, name, ns, "DependenciesReady")["reason"] == "DependencyCycle"
    assert cluster.list("Job", ns) == []


def test_deleted_dependency_fails_its_waiting_dependent(cluster: Cluster, namespace: str):
    ns = namespace
    draft = training("draft", method="causal-lm", dataset={"from": {"teacherGeneration": "gone"}})
    cluster.apply(draft, ns)
    ready = cluster.wait_phase("TrainingRun", "draft", ns, "Waiting")
    assert "does not exist" in ready["message"]
    teacher = yaml.safe_load((REPO / "examples" / "teacher-generation.yaml").read_text())
    teacher["metadata"]["name"] = "gone"
    cluster.apply(teacher, ns)
    cluster.wait_phase("TeacherGeneration", "gone", ns, "Running")
    cluster.delete("TeacherGeneration", "gone", ns)
    failed = cluster.wait_phase("TrainingRun", "draft", ns, "Failed")
    assert "was deleted" in failed["message"]
    assert cluster.condition("TrainingRun", "draft", ns, "DependenciesReady")["reason"] == "DependencyFailed"


def test_invalid_spec_fails_with_the_field(cluster: Cluster, namespace: str):
    """The emulator has no schema validation, so a cross-field error reaches the operator's own check: the run
    fails with `Ready=False` and reason InvalidSpec (`kubectl get` shows it), counted as a failure."""
    failures = ("metaspec_operator_failures_total", {"kind": "TrainingRun"})
    before = REGISTRY.get_sample_value(*failures)
    bad = training("bad")
    bad["spec"]["draft"] = {"initFrom": "target", "numLayers": 4}  # draft settings with method anil-maml
    cluster.apply(bad, namespace)
    failed = cluster.wait_phase("TrainingRun", "bad", namespace, "Failed")
    assert "spec" in failed["message"] and "causal-lm" in failed["message"]
    assert cluster.list("Job", namespace) == []
    conditions = {c["type"]: c for c in failed["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("False", "InvalidSpec")
    assert (conditions["Failed"]["status"], conditions["Failed"]["message"]) == ("True", failed["message"])
    assert REGISTRY.get_sample_value(*failures) == before + 1


def test_scaling_a_server_as_an_autoscaler_does(cluster: Cluster, namespace: str):
    """What an HPA does through the scale subresource: read `status.selector` (it must select the server
    pods) and write `spec.replicas` (the emulator has no subresources, so the test writes the field the
    CRD's `specReplicasPath` names); the Deployment follows."""
    serve = copy.deepcopy(SERVE)
    name = serve["metadata"]["name"]
    cluster.apply(serve, namespace)
    deployment = cluster.wait_get("Deployment", name, namespace)
    selector = cluster.wait_for(
        lambda: cluster.status("SpecServe", name, namespace).get("selector"), message="selector"
    )
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    assert dict(term.split("=") for term in selector.split(",")).items() <= pods.items()
    cluster.patch("SpecServe", name, {"spec": {"replicas": 3}}, namespace)
    cluster.wait_for(lambda: cluster.get("Deployment", name, namespace)["spec"]["replicas"] == 3, message="replicas")


def test_repointing_a_server_rolls_its_deployment(cluster: Cluster, namespace: str):
    ns = namespace
    serve = copy.deepcopy(SERVE)
    cluster.apply(serve, ns)
    name = serve["metadata"]["name"]
    first = cluster.wait_for(lambda: cluster.get("Deployment", name, ns), message="Deployment")
    before = first["spec"]["template"]["metadata"]["annotations"][L.CONFIG_HASH]
    cluster.patch("SpecServe", name, {"spec": {"target": {"uri": "s3://artifacts/llama-anil-v2/merged"}}}, ns)

    def rolled() -> bool:
        annotations = cluster.get("Deployment", name, ns)["spec"]["template"]["metadata"]["annotations"]
        return annotations[L.CONFIG_HASH] != before

    cluster.wait_for(rolled, message="the Deployment's template to change")
    served = lambda: (cluster.status("SpecServe", name, ns).get("target") or {}).get("uri")  # noqa: E731
    cluster.wait_for(lambda: served() == "s3://artifacts/llama-anil-v2/merged", message="status.target")
    assert len(cluster.list("Deployment", ns)) == 1


def test_every_api_call_made_is_granted_by_rbac(cluster: Cluster):
    """Runs after the other tests of this module: the calls they caused are all covered by the rules."""
    assert cluster.calls, "no API calls were recorded"
    missing = {call for call in cluster.calls if not rbac.allowed(*call)}
    assert not missing, f"not granted by metaspec/operator/rbac.py: {sorted(missing)}"


def test_an_exposed_server_without_an_api_key_is_warned_about(cluster: Cluster, namespace: str):
    """A LoadBalancer in front of a server that needs no key: a False `APIKeyRequired` condition and a
    Warning Event; naming a Secret of keys turns the condition True."""
    ns = namespace
    serve = copy.deepcopy(SERVE)
    serve["spec"]["service"] = {"type": "LoadBalancer"}
    cluster.apply(serve, ns)
    name = serve["metadata"]["name"]

    def condition() -> dict | None:
        found = [
            c for c in cluster.status("SpecServe", name, ns).get("conditions", []) if c["type"] == "APIKeyRequired"
        ]
        return found[0] if found else None

    exposed = cluster.wait_for(condition, message="the APIKeyRequired condition")
    assert exposed["status"] == "False" and exposed["reason"] == "ExposedWithoutAPIKey"
    warned = lambda: [e for e in cluster.list("Event", ns) if e["reason"] == "ExposedWithoutAPIKey"]  # noqa: E731
    assert cluster.wait_for(warned, message="the Warning Event")[0]["type"] == "Warning"
    cluster.patch("SpecServe", name, {"spec": {"auth": {"apiKeySecretRef": {"name": "api-keys"}}}}, ns)
    cluster.wait_for(lambda: condition()["status"] == "True", message="APIKeyRequired to turn True")
    env = cluster.get("Deployment", name, ns)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "METASPEC_API_KEY_0", "valueFrom": {"secretKeyRef": {"name": "api-keys", "key": "api-key"}}} in env

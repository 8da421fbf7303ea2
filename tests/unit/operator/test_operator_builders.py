"""Golden manifests for every builder (regenerate: METASPEC_UPDATE_GOLDEN=1), plus the rules they encode."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaspec.api import Resource, SpecServe, parse_resource
from metaspec.api._base import ModelCache
from metaspec.api.serving import Auth
from metaspec.operator import labels as L
from metaspec.operator.builders import (
    build_configmap,
    build_deployment,
    build_job,
    build_model_cache_claim,
    build_rendezvous_service,
    build_service,
    build_vllm_deployment,
)
from metaspec.operator.builders.deployment import VLLM_SERVER_MODULE
from metaspec.operator.builders.pod import MODEL_CACHE_DIR
from metaspec.operator.settings import OperatorSettings
from metaspec.runtime import EXIT_PERMANENT, EXIT_QUALITY
from metaspec.status import config_hash

REPO = Path(__file__).resolve().parents[3]
GOLDEN = Path(__file__).parent / "golden"
SETTINGS = OperatorSettings(
    images={c: f"registry.test/{c}:1.0" for c in ("trainer", "generator", "server")},
    progress_url="http://metaspec.metaspec-system.svc:8082",
)
UID = "00000000-0000-0000-0000-000000000001"


def example(file: str, name: str | None = None) -> Resource:
    docs = list(yaml.safe_load_all((REPO / "examples" / file).read_text()))
    doc = next(d for d in docs if name is None or d["metadata"]["name"] == name)
    doc["metadata"].update(uid=UID, namespace="ml", generation=2)
    return parse_resource(doc)


def check_golden(name: str, manifest: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(manifest, sort_keys=True)
    if os.environ.get("METASPEC_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with METASPEC_UPDATE_GOLDEN=1 to create it"
    assert yaml.safe_load(path.read_text()) == manifest, f"{name} differs from {path} (METASPEC_UPDATE_GOLDEN=1)"


def serve_manifests(serve: SpecServe) -> tuple[dict, dict]:
    digests = {"target": "sha-target", "draft": "sha-draft"}
    if serve.spec.engine == "vllm":
        uris = {"target": serve.spec.target.uri, "draft": serve.spec.draft.uri}
        return build_vllm_deployment(serve, SETTINGS, "cm", "hash", uris, digests), build_service(serve)
    return build_deployment(serve, SETTINGS, "cm", "hash", digests), build_service(serve)


def test_training_job_golden():
    run = example("pipeline.yaml", "llama-anil")
    check_golden("training-job", build_job(run, SETTINGS, "llama-anil-g2"))
    check_golden("training-configmap", build_configmap(run, run, "llama-anil-g2"))


def test_multinode_training_goldens():
    """2 nodes × 8 GPUs: an Indexed Job of 2 pods started together, each launching 8 processes that
    restart as a group up to backoffLimit times, node rank from the completion index, node 0 hosting the
    rendezvous behind the headless Service and, its FQDN sorting first, holding rank 0."""
    run = example("training-run-multinode.yaml")
    job = build_job(run, SETTINGS, "llama-sft-2x8-g2")
    check_golden("training-multinode-job", job)
    check_golden("training-multinode-service", build_rendezvous_service(run, "llama-sft-2x8-g2"))
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 2 * run.spec.backoff_limit  # losing node 0 costs every node's pod
    pod = spec["template"]["spec"]
    main = pod["containers"][0]
    restarts = str(run.spec.backoff_limit)
    assert main["command"][-6:] == ["--nproc-per-node", "8", "--nnodes", "2", "--max-restarts", restarts]
    env = {e["name"]: e for e in main["env"]}
    assert env["PET_RDZV_ENDPOINT"]["value"] == f"llama-sft-2x8-g2-0.{pod['subdomain']}:29500"
    index = env["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert job["metadata"]["labels"][L.KUEUE_QUEUE] == "gpu-training"


def test_one_pod_with_several_gpus_launches_a_process_per_gpu():
    doc = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
    doc["metadata"].update(uid=UID)
    doc["spec"]["resources"]["gpus"] = 4
    doc["spec"]["anil"] = {"tasksPerBatch": 4}
    job = build_job(parse_resource(doc), SETTINGS, "x")
    assert "completionMode" not in job["spec"] and job["spec"]["completions"] == 1
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert main["command"][-4:] == ["--nproc-per-node", "4", "--nnodes", "1"]
    assert not any(e["name"].startswith("PET_") for e in main["env"])
    doc["spec"]["anil"] = {"tasksPerBatch": 3}
    with pytest.raises(ValueError, match=r"`anil.tasksPerBatch` \(3\) is below the 4 training processes"):
        parse_resource(doc)


def test_generation_job_golden():
    check_golden("generation-job", build_job(example("teacher-generation.yaml"), SETTINGS, "teacher-v1-g2"))


def test_serve_goldens():
    deployment, service = serve_manifests(example("spec-serve.yaml"))
    check_golden("serve-deployment", deployment)
    check_golden("serve-service", service)
    check_golden("serve-vllm-deployment", serve_manifests(example("spec-serve-vllm.yaml"))[0])


def test_job_fails_fast_on_permanent_errors_and_ignores_disruptions():
    job = build_job(example("pipeline.yaml", "llama-anil"), SETTINGS, "x")
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [EXIT_PERMANENT, EXIT_QUALITY]
    assert rules[1] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_container_contract_security_and_credentials():
    run = example("pipeline.yaml", "llama-anil")
    pod = build_job(run, SETTINGS, "x")["spec"]["template"]["spec"]
    main = pod["containers"][0]
    assert main["command"] == ["metaspec", "train", "--config", "/etc/metaspec/config.json"]
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    security = main["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e for e in main["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert all("value" not in env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"))
    assert main["resources"]["limits"]["nvidia.com/gpu"] == "1"
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"


def test_suspend_queue_and_owner_pass_through():
    doc = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
    doc["metadata"].update(uid=UID, generation=3)
    doc["spec"].update(suspend=True, queueName="gpu-queue")
    job = build_job(parse_resource(doc), SETTINGS, "x")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][L.KUEUE_QUEUE] == "gpu-queue"
    owner = job["metadata"]["ownerReferences"][0]
    assert owner["uid"] == UID and owner["controller"] is True


def test_suspended_serve_scales_to_zero_and_config_hash_rolls_pods():
    serve = example("spec-serve.yaml")
    suspended = serve.model_copy(update={"spec": serve.spec.model_copy(update={"suspend": True})})
    assert serve_manifests(suspended)[0]["spec"]["replicas"] == 0
    a = build_deployment(serve, SETTINGS, "cm", config_hash({"a": 1}), {})
    b = build_deployment(serve, SETTINGS, "cm", config_hash({"a": 2}), {})
    annotations = lambda d: d["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(a)[L.CONFIG_HASH] != annotations(b)[L.CONFIG_HASH]
    assert a["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0


def test_vllm_deployment_fetches_s3_models_and_refuses_repetition_penalty():
    serve = example("spec-serve-vllm.yaml")
    deployment, _ = serve_manifests(serve)
    pod = deployment["spec"]["template"]["spec"]
    assert [c["command"][:3] for c in pod["initContainers"]] == [["metaspec", "artifacts", "pull"]] * 2
    for init in pod["initContainers"]:  # a namespace with a ResourceQuota refuses containers without them
        assert init["resources"] == {
            "requests": {"cpu": "1", "memory": "48Gi"},
            "limits": {"cpu": "1", "memory": "48Gi"},
        }
    args = pod["containers"][0]["command"]
    assert args[:5] == ["python3", "-m", VLLM_SERVER_MODULE, "--model", "/var/cache/metaspec/models/target"]
    assert json.loads(args[args.index("--speculative-config") + 1]) == {
        "method": "draft_model",
        "model": "/var/cache/metaspec/models/draft",
        "num_speculative_tokens": 5,
    }
    penalised = serve.spec.sampling.model_copy(update={"repetition_penalty": 1.2})
    bad = serve.model_copy(update={"spec": serve.spec.model_copy(update={"sampling": penalised})})
    with pytest.raises(ValueError, match="repetitionPenalty"):
        serve_manifests(bad)


def hub_serve(engine: str) -> SpecServe:
    """A SpecServe of a gated Hub target at a revision and a draft on a PersistentVolumeClaim."""
    doc = yaml.safe_load((REPO / "examples" / "spec-serve-vllm.yaml").read_text())
    doc["metadata"]["uid"] = UID
    token = {"name": "hf-token", "key": "token"}
    doc["spec"].update(
        engine=engine,
        target={"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "revision": "0e9e39f", "hfTokenSecretRef": token},
        draft={"uri": "pvc://models/llama-draft"},
    )
    return parse_resource(doc)


@pytest.mark.parametrize("engine", ["metaspec", "vllm"])
def test_hub_token_and_claims_reach_every_container(engine: str) -> None:
    """HF_TOKEN by reference to the Secret (never a value), claims mounted read-only, nothing fetched."""
    serve = hub_serve(engine)
    pod = serve_manifests(serve)[0]["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # neither the Hub model nor the claim is copied first
    main = pod["containers"][0]
    hf = next(e for e in main["env"] if e["name"] == "HF_TOKEN")
    assert hf == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}}
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    mount = next(m for m in main["volumeMounts"] if m["name"] == claim["name"])
    assert mount == {"name": claim["name"], "mountPath": "/mnt/pvc/models", "readOnly": True}
    if engine == "vllm":
        args = main["command"]
        assert option(args, "--model") == "meta-llama/Llama-3.1-8B-Instruct"
        assert "--revision=0e9e39f" in args and "--tokenizer-revision=0e9e39f" in args
        assert '"model":"/mnt/pvc/models/llama-draft"' in args[args.index("--speculative-config") + 1]


@pytest.mark.parametrize("claim", [None, "model-cache"])
def test_every_pod_of_every_kind_mounts_the_model_cache(claim: str | None) -> None:
    """`storage.modelCache`: a claim shared read-write (or a per-pod emptyDir) at the model-cache path, named
    by METASPEC_MODEL_CACHE and HF_HUB_CACHE in every container, vLLM's fetches included; scratch stays apart."""
    resources = [example("training-run.yaml"), example("teacher-generation.yaml")]
    resources += [example(f) for f in ("spec-serve.yaml", "spec-serve-vllm.yaml")]
    for resource in resources:
        resource.spec.storage.model_cache = ModelCache(claim_name=claim)
        manifest = build_job(resource, SETTINGS, "cm") if resource.kind != "SpecServe" else serve_manifests(resource)[0]
        pod = manifest["spec"]["template"]["spec"]
        volume = next(v for v in pod["volumes"] if v["name"] == "model-cache")
        expected = {"persistentVolumeClaim": {"claimName": claim}} if claim else {"emptyDir": {"sizeLimit": "100Gi"}}
        assert volume == {"name": "model-cache", **expected}, resource.kind
        if resource.kind == "SpecServe" and resource.spec.engine == "vllm":
            assert len(pod["initContainers"]) == 2  # the target and the draft are fetched from S3
        for c in pod["containers"] + pod.get("initContainers", []):
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["METASPEC_MODEL_CACHE"] == MODEL_CACHE_DIR and env["HF_HUB_CACHE"] == f"{MODEL_CACHE_DIR}/hf"
            assert env["METASPEC_CACHE"] != MODEL_CACHE_DIR
            assert {"name": "model-cache", "mountPath": MODEL_CACHE_DIR} in c["volumeMounts"]
        for init in pod.get("initContainers", []):
            assert init["command"][:5] == ["metaspec", "artifacts", "pull", "--cache", MODEL_CACHE_DIR]


def test_model_cache_claim_is_created_only_when_sized() -> None:
    """`size` asks the operator for the claim (no owner: shared and kept); without it the claim is the user's."""
    serve = example("spec-serve.yaml")
    assert build_model_cache_claim(serve) is None
    assert parse_resource(serve.dump()).spec.storage == serve.spec.storage  # a component reads it back
    serve.spec.storage.model_cache = ModelCache(claim_name="models", size="500Gi", storage_class_name="nfs-client")
    check_golden("model-cache-claim", build_model_cache_claim(serve))
    for bad, error in (
        ({"size": "1Ti"}, "give `claimName` too"),
        ({"claimName": "m", "storageClassName": "nfs"}, "give its `size` too"),
        ({"claimName": "m", "accessMode": "ReadWriteOnce"}, "give its `size` too"),
        ({"claimName": "m", "size": "1Ti", "accessMode": "ReadWriteOncePod"}, "ReadWriteMany"),
    ):
        with pytest.raises(ValueError, match=error):
            ModelCache.model_validate(bad)


def test_training_job_gets_the_hub_token() -> None:
    doc = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
    doc["metadata"]["uid"] = UID
    doc["spec"]["baseModel"] = {"uri": "hf://org/base@v1", "hfTokenSecretRef": {"name": "hf"}}
    env = build_job(parse_resource(doc), SETTINGS, "x")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in env


def test_api_keys_reach_both_engines_by_secret_reference_only():
    """Our server gets one variable per key; vLLM its one `VLLM_API_KEY` (never on the command line)."""
    auth = {"apiKeySecretRef": {"name": "api-keys", "keys": ["current", "next"]}}
    serve = example("spec-serve.yaml")
    serve = serve.model_copy(update={"spec": serve.spec.model_copy(update={"auth": Auth.model_validate(auth)})})
    env = {e["name"]: e for e in serve_manifests(serve)[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["METASPEC_API_KEY_0"]["valueFrom"]["secretKeyRef"] == {"name": "api-keys", "key": "current"}
    assert env["METASPEC_API_KEY_1"]["valueFrom"]["secretKeyRef"] == {"name": "api-keys", "key": "next"}
    vllm = example("spec-serve-vllm.yaml")
    one = Auth.model_validate({"apiKeySecretRef": {"name": "api-keys"}})
    vllm = vllm.model_copy(update={"spec": vllm.spec.model_copy(update={"auth": one})})
    main = serve_manifests(vllm)[0]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in main["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "api-keys", "key": "api-key"}
    assert not any("api-key" in arg for arg in main["command"])
    defaults = json.loads(main["command"][main["command"].index("--override-generation-config") + 1])
    assert defaults == {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": vllm.spec.sampling.max_tokens}
    with pytest.raises(ValueError, match="one key with `engine: vllm`"):
        SpecServe.model_validate(
            {**vllm.model_dump(by_alias=True), "spec": {**vllm.spec.model_dump(by_alias=True), "auth": auth}}
        )


def vllm_serve(**spec: Any) -> SpecServe:
    body = yaml.safe_load((REPO / "examples" / "spec-serve-vllm.yaml").read_text())
    body["metadata"]["uid"] = UID
    body["spec"].update(spec)
    return SpecServe.model_validate(body)


def vllm_command(serve: SpecServe) -> list[str]:
    uris = {role: getattr(serve.spec, role).uri for role in ("target", "draft") if getattr(serve.spec, role)}
    return build_vllm_deployment(serve, SETTINGS, "cm", "hash", uris, {})["spec"]["template"]["spec"]["containers"][0][
        "command"
    ]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_vllm_takes_the_specs_limits_defaults_revision_and_extra_args():
    serve = vllm_serve(
        target={"uri": "hf://org/target", "revision": "v2"},
        draft={"uri": "hf://org/draft", "revision": "abc123"},
        sampling={"maxConcurrency": 8, "maxPromptTokens": 1000, "maxTokensLimit": 500, "temperature": 0.5},
        compile=False,
        vllm={"extraArgs": ["--enable-prefix-caching", "--kv-cache-dtype=fp8"]},
    )
    argv = vllm_command(serve)
    assert option(argv, "--model") == "org/target" and "--revision=v2" in argv
    assert json.loads(option(argv, "--speculative-config"))["revision"] == "abc123"
    assert (option(argv, "--max-num-seqs"), option(argv, "--max-model-len")) == ("8", "1500")
    assert json.loads(option(argv, "--override-generation-config")) == {
        "temperature": 0.5,
        "top_p": 1.0,
        "max_new_tokens": 256,
    }
    assert "--enforce-eager" in argv
    assert argv[-6:] == ["--enable-prefix-caching", "--kv-cache-dtype=fp8", "--host", "0.0.0.0", "--port", "8000"]


@pytest.mark.parametrize(
    ("method", "draft", "expected"),
    [
        ("eagle3", {"uri": "s3://artifacts/eagle"}, {"method": "eagle3", "model": "/var/cache/metaspec/models/draft"}),
        ("ngram", None, {"method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 5}),
    ],
)
def test_vllm_speculative_methods(method: str, draft: dict | None, expected: dict):
    argv = vllm_command(vllm_serve(draft=draft, vllm={"speculativeMethod": method}))
    assert json.loads(option(argv, "--speculative-config")) == {**expected, "num_speculative_tokens": 5}


def test_vllm_ngram_takes_its_match_lengths_from_prompt_lookup():
    serve = vllm_serve(draft=None, vllm={"speculativeMethod": "ngram"}, promptLookup={"minMatch": 2, "maxMatch": 3})
    config = json.loads(option(vllm_command(serve), "--speculative-config"))
    assert (config["prompt_lookup_min"], config["prompt_lookup_max"]) == (2, 3)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"vllm": {"extraArgs": ["--chat-template=/etc/passwd"]}}, "not one of the allowed vLLM options"),
        ({"vllm": {"extraArgs": ["enable-prefix-caching"]}}, "should match pattern"),
        ({"vllm": {"extraArgs": ["--quantization=-x"]}}, "may not start with '-'"),
        ({"vllm": {"extraArgs": ["--quantization=$(HOME)"]}}, r"contain '\$\('"),
        ({"routing": {"policy": "per-token"}}, "routing.policy` is not used by `engine: vllm`"),
        ({"routing": {"confidenceThreshold": 0.5}}, "routing.confidenceThreshold` is not used"),
        ({"vllm": {"speculativeMethod": "ngram"}}, "`draft` with `vllm.speculativeMethod: ngram`: vLLM proposes by"),
        ({"draft": None}, "`draft` is required"),
        ({"promptLookup": {}}, "`promptLookup` with `engine: vllm` needs `vllm.speculativeMethod: ngram`"),
    ],
)
def test_vllm_refuses_what_it_would_not_honour(spec: dict, error: str):
    with pytest.raises(ValueError, match=error):
        vllm_serve(**spec)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"promptLookup": {}, "routing": {"policy": "first-token"}}, "reads a draft model's confidence"),
        ({"draft": None, "promptLookup": {}, "routing": {"policy": "first-token"}}, "reads a draft model's confidence"),
        ({"draft": None, "promptLookup": {}, "routing": {"policy": "per-token"}}, "`routing.policy: per-token`"),
        ({"draft": None, "promptLookup": {"minMatch": 4, "maxMatch": 3}}, r"`minMatch` \(4\) must not exceed"),
        ({"draft": None, "promptLookup": {"maxMatch": 0}}, "greater than or equal to 1"),
    ],
)
def test_prompt_lookup_refuses_what_it_cannot_do(spec: dict, error: str):
    with pytest.raises(ValueError, match=error):
        vllm_serve(engine="metaspec", **spec)


def test_prompt_lookup_and_a_draft_propose_together_on_our_engine():
    spec = vllm_serve(engine="metaspec", promptLookup={"minMatch": 2}, routing={"policy": "adaptive"}).spec
    assert spec.draft is not None and spec.prompt_lookup is not None and spec.prompt_lookup.min_match == 2


def test_vllm_options_need_engine_vllm():
    with pytest.raises(ValueError, match="applies to `engine: vllm` only"):
        vllm_serve(engine="metaspec", vllm={"extraArgs": ["--enable-prefix-caching"]})

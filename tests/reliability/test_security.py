"""Security: unprivileged pods, an operator that cannot read Secrets, safetensors
only, no remote code unless a spec says so, and credentials that never surface.

Covered elsewhere and not repeated: the Dockerfiles' numeric non-root USER
(tests/unit/packaging/test_dockerfiles.py), Secrets absent from the RBAC module, the chart and the
Kustomize base (tests/unit/operator/test_operator_rbac.py, tests/unit/packaging/test_helm_chart.py,
tests/unit/packaging/test_kustomize_base.py), pickle-only models refused by the server's loader
(tests/integration/server/engine/test_loader.py).
"""

from __future__ import annotations

import ast
import copy
import json
import logging
import pickle
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from reliability_helpers import REPO, load

from metaspec.api import parse_resource
from metaspec.api.sources import ModelSource
from metaspec.api.training import BaseModelSource
from metaspec.artifacts import upload_dir
from metaspec.operator import rbac
from metaspec.operator.builders import build_deployment, build_job, build_vllm_deployment
from metaspec.operator.builders.pod import MODEL_CACHE_VOLUME
from metaspec.operator.settings import OperatorSettings
from metaspec.runtime import CREDENTIAL_LOGGERS, EXIT_PERMANENT, PermanentError, setup_logging
from metaspec_testing.emulator import Cluster

PACKAGE = REPO / "metaspec"
sys.path.insert(0, str(REPO / "tests" / "unit" / "packaging"))
from chart_objects import by_kind, render, values  # noqa: E402

jobs = load(REPO / "bench" / "reliability_jobs.py")
trainer_helpers = load(REPO / "tests" / "integration" / "trainer" / "trainer_helpers.py")

SETTINGS = OperatorSettings(images={c: f"registry.test/{c}:1.0" for c in ("trainer", "generator", "server")})
#: Containers that keep a writable root filesystem, and why.
WRITABLE_ROOT = {
    ("serve-vllm", "main"): "vLLM's own server (engine: vllm) writes compile and kernel caches whose paths "
    "are not all configurable; not verified read-only without a GPU here",
}


def example(file: str, name: str | None = None, **spec: Any):
    docs = list(yaml.safe_load_all((REPO / "examples" / file).read_text()))
    doc = copy.deepcopy(next(d for d in docs if name is None or d["metadata"]["name"] == name))
    doc["metadata"].update(uid="00000000-0000-0000-0000-000000000001", namespace="ml", generation=1)
    doc["spec"].update(spec)
    return parse_resource(doc)


def component_pods() -> dict[str, dict[str, Any]]:
    """The pod spec of every child the operator builds, by builder and engine."""
    serve, serve_vllm = example("spec-serve.yaml"), example("spec-serve-vllm.yaml")
    uris = {"target": serve_vllm.spec.target.uri, "draft": serve_vllm.spec.draft.uri}
    manifests = {
        "training-job": build_job(example("pipeline.yaml", "llama-anil"), SETTINGS, "cm"),
        "generation-job-vllm": build_job(example("teacher-generation.yaml"), SETTINGS, "cm"),
        "generation-job-transformers": build_job(
            example("teacher-generation.yaml", engine="transformers"), SETTINGS, "cm"
        ),
        "serve": build_deployment(serve, SETTINGS, "cm", "hash", {}),
        "serve-vllm": build_vllm_deployment(serve_vllm, SETTINGS, "cm", "hash", uris, {}),
        "training-job-hub-and-claim": build_job(
            example(
                "training-run.yaml",
                baseModel={"uri": "hf://org/base@v1", "hfTokenSecretRef": {"name": "hf-token"}},
                dataset={"uri": "pvc://datasets/train.jsonl"},
            ),
            SETTINGS,
            "cm",
        ),
    }
    return {name: m["spec"]["template"]["spec"] for name, m in manifests.items()}


def check_pod(name: str, pod: dict[str, Any]) -> None:
    """Non-root, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp, nothing
    from the host, and a read-only root filesystem whose writable paths are emptyDirs and the model cache
    (`storage.modelCache.claimName`, the one claim a spec names to be written)."""
    pod_security = pod.get("securityContext", {})
    assert pod_security.get("runAsUser", 1) != 0 and pod_security.get("runAsGroup", 1) != 0, name
    assert not {"hostNetwork", "hostPID", "hostIPC"} & {k for k, v in pod.items() if v}, name
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    assert all(set(v) - {"name"} <= {"emptyDir", "configMap", "persistentVolumeClaim"} for v in volumes.values())
    claims = [
        v["persistentVolumeClaim"]
        for n, v in volumes.items()
        if "persistentVolumeClaim" in v and n != MODEL_CACHE_VOLUME
    ]
    assert all(claim.get("readOnly") for claim in claims), (name, claims)
    for container in pod["containers"] + pod.get("initContainers", []):
        where = (name, container["name"])
        security = container.get("securityContext", {})
        effective = {**pod_security, **security}
        assert effective.get("runAsNonRoot") is True, where
        assert security.get("allowPrivilegeEscalation") is False, where
        assert not security.get("privileged"), where
        assert security.get("capabilities") == {"drop": ["ALL"]}, where
        assert effective.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        if where in WRITABLE_ROOT:
            assert security.get("readOnlyRootFilesystem") is False, f"{where} is read-only now: drop the exception"
            continue
        assert security.get("readOnlyRootFilesystem") is True, where
        for mount in container.get("volumeMounts", []):
            if not mount.get("readOnly") and mount["name"] != MODEL_CACHE_VOLUME:
                assert "emptyDir" in volumes[mount["name"]], (where, mount)


@pytest.mark.parametrize("name", list(component_pods()))
def test_component_pods_are_unprivileged(name: str) -> None:
    pod = component_pods()[name]
    check_pod(name, pod)
    assert pod["automountServiceAccountToken"] is False, "components need no Kubernetes API access"
    for container in pod["containers"] + pod.get("initContainers", []):
        for variable in container.get("env", []):
            credential = variable["name"].startswith("AWS_") or variable["name"] == "HF_TOKEN"
            if credential and variable["name"] not in ("AWS_ENDPOINT_URL", "AWS_REGION"):
                assert "value" not in variable and "secretKeyRef" in variable["valueFrom"], variable


def test_operator_pod_is_unprivileged_in_chart_and_kustomize() -> None:
    for vals in (values(), values(watch__allNamespaces=False, watch__namespaces=["ml"])):
        (deployment,) = by_kind(render(vals), "Deployment")
        check_pod("chart", deployment["spec"]["template"]["spec"])
    kustomize = yaml.safe_load((REPO / "deploy" / "kustomize" / "operator-deployment.yaml").read_text())
    check_pod("kustomize", kustomize["spec"]["template"]["spec"])


#: Grants that read a Secret without naming it: exec/attach into a pod that mounts one, minting tokens,
#: impersonating someone who may, or granting oneself more.
INDIRECT = {"pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token", "serviceaccounts", "secrets"}


def test_rbac_cannot_read_secrets_directly_or_indirectly() -> None:
    shipped = [
        *rbac.cluster_rules(),
        *yaml.safe_load((REPO / "deploy" / "kustomize" / "operator-clusterrole.yaml").read_text())["rules"],
        *(rule for obj in render(values()) for rule in obj.get("rules", [])),
    ]
    for rule in shipped:
        assert not INDIRECT & set(rule["resources"]), rule
        assert not {"impersonate", "escalate", "bind", "*"} & set(rule["verbs"]), rule
        assert "*" not in rule["resources"] + rule["apiGroups"], rule
        if "pods" in rule["resources"]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, "creating pods directly could mount any Secret"


# ---- models: safetensors only, no remote code ----

LOADERS_OF_PICKLES = ("pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve")
#: `from_pretrained` calls that load weights without `use_safetensors=True`, and why that is safe.
NOT_SAFETENSORS = {"local/bundled.py": "reads the bundled GGUF file (a data format, not a pickle)"}


@cache
def package_nodes() -> list[tuple[str, ast.AST]]:
    """Every AST node of the package, with its file."""
    nodes = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        nodes += [(rel, node) for node in ast.walk(ast.parse(path.read_text()))]
    return nodes


def package_calls() -> list[tuple[str, ast.Call]]:
    return [(rel, node) for rel, node in package_nodes() if isinstance(node, ast.Call)]


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_package_never_unpickles() -> None:
    for rel, node in package_nodes():
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        assert not {n.split(".")[0] for n in names} & set(LOADERS_OF_PICKLES), (rel, names)
    loads = [(rel, call) for rel, call in package_calls() if ast.unparse(call.func) == "torch.load"]
    assert loads, "the checkpoint loader calls torch.load: the scan must see it"
    for rel, call in loads:
        value = keyword(call, "weights_only")
        assert value is not None and ast.literal_eval(value) is True, (
            f"{rel}:{call.lineno} torch.load without weights_only"
        )


def test_models_load_from_safetensors_without_remote_code_unless_the_spec_allows() -> None:
    model_loads = [
        (rel, call)
        for rel, call in package_calls()
        if ast.unparse(call.func).startswith("AutoModel") and ast.unparse(call.func).endswith(".from_pretrained")
    ]
    assert {rel for rel, _ in model_loads} == {"causal_lm.py", *NOT_SAFETENSORS}, model_loads
    loaders = {rel.split("/")[0] for rel, call in package_calls() if ast.unparse(call.func) == "load_causal_lm"}
    assert loaders == {"trainer", "generator", "server"}, loaders
    for rel, call in package_calls():
        if ast.unparse(call.func) == "load_causal_lm":
            assert keyword(call, "trust_remote_code") is not None, f"{rel}:{call.lineno} passes trust_remote_code"
    for rel, call in model_loads:
        safetensors = keyword(call, "use_safetensors")
        if rel not in NOT_SAFETENSORS:
            assert safetensors is not None and ast.literal_eval(safetensors) is True, f"{rel}:{call.lineno}"
    for rel, call in package_calls():
        value = keyword(call, "trust_remote_code")
        if value is None:
            continue
        text = ast.unparse(value)
        # either the spec field itself or a local copied from it (`trust = source.trust_remote_code`)
        assert text.endswith("trust_remote_code") or text == "trust", f"{rel}:{call.lineno} trust_remote_code={text}"
    for source in (ModelSource, BaseModelSource):
        assert source.model_fields["trust_remote_code"].default is False


@pytest.fixture(scope="module")
def trapped_models(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two hostile model directories (each a complete artifact) whose code writes a marker file if run:
    `pickled` holds only a `pytorch_model.bin` that runs code when unpickled; `remote_code` is the
    tiny Llama plus an `auto_map` pointing at a Python file of the repository."""
    root = tmp_path_factory.mktemp("trapped")
    pickled = root / "pickled"
    pickled.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (pickled / name).write_bytes((tiny_llama / name).read_bytes())
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Trap(root / "unpickled")))
    upload_dir(pickled, pickled)
    remote = root / "remote-code"
    remote.mkdir()
    for path in tiny_llama.iterdir():
        if path.is_file() and path.name != "_manifest.json":
            (remote / path.name).write_bytes(path.read_bytes())
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "trap.TrapConfig", "AutoModelForCausalLM": "trap.TrapModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "trap.py").write_text(
        f"from pathlib import Path\nPath({str(root / 'remote-code-ran')!r}).touch()\n"
        "from transformers import LlamaConfig, LlamaForCausalLM\n\n\n"
        "class TrapConfig(LlamaConfig):\n    pass\n\n\n"
        "class TrapModel(LlamaForCausalLM):\n    config_class = TrapConfig\n"
    )
    upload_dir(remote, remote)
    return {"pickled": pickled, "remote_code": remote, "root": root}


class Trap:
    """Unpickling this touches a file: the proof that something unpickled it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def loaders(tmp_path: Path) -> dict[str, Any]:
    """Each component's model loader with a spec that leaves remote code off (the default)."""
    from metaspec.api import TeacherGeneration
    from metaspec.generator.engines import load_engine
    from metaspec.server.engine.loader import load_model as load_served
    from metaspec.trainer.models import load_model as load_trained

    cpu = torch.device("cpu")

    def generator(model: Path):
        spec = {
            "model": {"uri": str(model)},
            "dataset": {"uri": "builtin://prompts"},
            "output": {"uri": "s3://artifacts/teacher"},
        }
        body = {"apiVersion": "metaspec.dev/v1alpha1", "kind": "TeacherGeneration", "metadata": {"name": "t"}}
        generation = TeacherGeneration.model_validate({**body, "spec": {**spec, "engine": "transformers"}})
        return load_engine(generation.spec, model, str(model), "cpu")

    return {
        "trainer": lambda model: load_trained(BaseModelSource(uri=str(model)), tmp_path, cpu, torch.float32),
        "generator": generator,
        "server": lambda model: load_served(ModelSource(uri=str(model)), "target", tmp_path, cpu, torch.float32),
    }


@pytest.mark.parametrize("component", ["trainer", "generator", "server"])
def test_pickle_only_model_is_refused_unopened(component: str, trapped_models, tmp_path) -> None:
    with pytest.raises(PermanentError, match=r"safetensors") as caught:
        loaders(tmp_path)[component](trapped_models["pickled"])
    assert "pytorch_model.bin" in str(caught.value) and str(trapped_models["pickled"]) in str(caught.value)
    assert not (trapped_models["root"] / "unpickled").exists()


@pytest.mark.parametrize("component", ["trainer", "generator", "server"])
def test_remote_code_is_not_run_by_default(component: str, trapped_models, tmp_path) -> None:
    loaded = loaders(tmp_path)[component](trapped_models["remote_code"])
    assert loaded is not None
    assert not (trapped_models["root"] / "remote-code-ran").exists()


def test_the_remote_code_trap_works(trapped_models, monkeypatch, tmp_path) -> None:
    """The control: the same directory with remote code explicitly trusted does run its code."""
    import transformers.dynamic_module_utils as dynamic
    from transformers import AutoConfig

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    AutoConfig.from_pretrained(trapped_models["remote_code"], trust_remote_code=True)
    assert (trapped_models["root"] / "remote-code-ran").exists()
    (trapped_models["root"] / "remote-code-ran").unlink()


# ---- credentials never surface ----

SESSION_TOKEN = "FwoGZXIvYXdzE-session-token-" + "q" * 40
HF_TOKEN = "hf_" + "k" * 34


def test_credentials_never_reach_logs_summaries_statuses_events_or_configmaps(
    s3, s3_prefix, tiny_llama, tmp_path, caplog
) -> None:
    """The trainer (succeeding) and the generator (refused: a session token S3 does not accept) run
    with DEBUG logs, real credentials in AWS_* and a Hugging Face token in HF_TOKEN; the operator
    renders both resources with a `secretRef` (and the TrainingRun's Hub base model with an
    `hfTokenSecretRef`) and mirrors the two real termination summaries into statuses and events. None
    of the credential values appears in any log line, summary, status, event, ConfigMap or Job."""
    train = trainer_helpers.write_dataset(tmp_path / "train.jsonl", 8)
    evaluation = trainer_helpers.write_dataset(tmp_path / "eval.jsonl", 1, tag="eval", offset=100)
    setup = jobs.Setup(tiny_llama, train, evaluation, jobs.write_prompts(tmp_path / "prompts.jsonl"), tmp_path)
    config = tmp_path / "train.json"
    body = jobs.trainer_config(setup, f"{s3_prefix}/train")
    body["spec"]["optimization"].update(maxSteps=2, checkpointSteps=1)
    config.write_text(json.dumps(body))
    debug = {"METASPEC_LOG_LEVEL": "DEBUG", "HF_TOKEN": HF_TOKEN}
    trained = jobs.run_trainer(
        config, tmp_path / "train-work", env={**jobs.component_env(tmp_path / "t.json"), **debug}
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    config = tmp_path / "generate.json"
    config.write_text(json.dumps(jobs.generator_config(setup, f"{s3_prefix}/generated", shards=1, seed=0)))
    token_env = {**jobs.component_env(tmp_path / "gen-work-summary.json"), **debug, "AWS_SESSION_TOKEN": SESSION_TOKEN}
    refused = jobs.run_generator(config, tmp_path / "gen-work", 0, env=token_env)
    assert refused.returncode == EXIT_PERMANENT and refused.summary["reason"] == "AccessDenied", refused.stderr[-3000:]

    caplog.set_level("DEBUG")
    objects = _operator_objects(trained.summary, refused.summary)

    secrets = {
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "token": SESSION_TOKEN,
        "HF_TOKEN": HF_TOKEN,
    }
    places = {
        "trainer log": trained.stderr,
        "trainer summary": json.dumps(trained.summary),
        "generator log": refused.stderr,
        "generator summary": json.dumps(refused.summary),
        "operator log": caplog.text,
        **{f"{o['kind']} {o['metadata']['name']}": json.dumps(o) for o in objects},
    }
    assert {"TrainingRun", "TeacherGeneration", "ConfigMap", "Job", "Event"} <= {o["kind"] for o in objects}
    for place, text in places.items():
        for name, value in secrets.items():
            assert value not in text, f"{name} appears in the {place}"


def test_debug_logs_keep_the_aws_libraries_at_info(monkeypatch) -> None:
    """What keeps the test above honest at DEBUG: botocore logs signed headers (the access key id and
    AWS_SESSION_TOKEN) at DEBUG, so `setup_logging` holds the AWS libraries at INFO."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in CREDENTIAL_LOGGERS}
    monkeypatch.setenv("METASPEC_LOG_LEVEL", "DEBUG")
    try:
        setup_logging(json_logs=True)
        assert root.level == logging.DEBUG
        assert {logging.getLogger(n).getEffectiveLevel() for n in CREDENTIAL_LOGGERS} == {logging.INFO}
        assert "botocore" in CREDENTIAL_LOGGERS
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


def _operator_objects(train_summary: dict[str, Any], generation_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the real operator: a TrainingRun whose pod succeeds and a TeacherGeneration whose pod fails,
    with the components' real summaries; return every object of the namespace afterwards."""
    ns = "secrets"
    cluster = Cluster().start()
    try:
        cluster.start_operator()
        training = yaml.safe_load((REPO / "examples" / "training-run.yaml").read_text())
        generation = yaml.safe_load((REPO / "examples" / "teacher-generation.yaml").read_text())
        hub = {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "hfTokenSecretRef": {"name": "hf-token"}}
        training["spec"]["baseModel"] = hub
        for doc in (training, generation):
            cluster.apply(doc, ns)
        job = cluster.wait_get("Job", f"{training['metadata']['name']}-g1", ns)
        cluster.run_pod(job, 0, train_summary)
        cluster.finish_job(job, succeeded=True)
        cluster.wait_phase("TrainingRun", training["metadata"]["name"], ns, "Succeeded")
        job = cluster.wait_get("Job", f"{generation['metadata']['name']}-g1", ns)
        cluster.run_pod(job, EXIT_PERMANENT, generation_summary, index=0)
        cluster.finish_job(job, succeeded=False, message="Pod failed with a permanent exit code")
        cluster.wait_phase("TeacherGeneration", generation["metadata"]["name"], ns, "Failed")
        kinds = ("TrainingRun", "TeacherGeneration", "ConfigMap", "Job", "Pod", "Event")
        return [{**obj, "kind": kind} for kind in kinds for obj in cluster.list(kind, ns)]
    finally:
        cluster.close()

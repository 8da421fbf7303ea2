"""A generated corpus of malformed and hostile custom resources: each refused naming its field, or
accepted and carried verbatim, never through a shell.

Who refuses what:

- the CRD schema (checked here with jsonschema against `crds/*.yaml`, unknown fields refused as by
  kubectl's strict field validation): types, ranges, lengths, patterns, enums, unknown fields;
- CEL rules of the CRD (`x-kubernetes-validations`; jsonschema does not evaluate them): the name rule
  (≤ 45 characters, no dots, SpecServes start with a letter) and spec immutability. The pydantic models
  mirror them, so they are checked here through `parse_resource`, which the operator runs first;
- the models alone (the operator fails the resource, naming the field): cross-field rules (`uri` or
  `from`, `from` naming the right kind, vLLM's repetition penalty), map keys (the schema cannot
  constrain them), URI schemes and shapes, and everything the emulator lets through because it has no
  schema. Dependency cycles are found by `metaspec.pipeline` (DependencyCycle).

The whole corpus is checked against models and builders (fast); a sample goes through the real
operator process against the API emulator, which has no schema, so the operator's own checks must hold.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from metaspec import pipeline
from metaspec.api import InvalidResource, parse_resource
from metaspec.operator.builders import (
    build_configmap,
    build_deployment,
    build_job,
    build_service,
    build_vllm_deployment,
)
from metaspec.operator.settings import OperatorSettings
from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parents[2]
TR, TG, SS = "TrainingRun", "TeacherGeneration", "SpecServe"
EXAMPLES = {TR: "training-run.yaml", TG: "teacher-generation.yaml", SS: "spec-serve.yaml"}
CRDS = {TR: "trainingruns", TG: "teachergenerations", SS: "specserves"}
#: What the schema cannot see, by reason (the `why` of a case that only the models refuse).
CEL = "CEL name rule"
MODEL = "model-only rule"


def base(kind: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / EXAMPLES[kind]).read_text())
    doc["metadata"] = {"name": "victim", "namespace": "default", "uid": "uid-1", "generation": 1}
    return doc


def put(doc: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """`doc` with `value` at the dotted `path` (intermediate objects created)."""
    doc = copy.deepcopy(doc)
    *parents, leaf = path.split(".")
    node = doc
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return doc


@dataclass(frozen=True)
class Case:
    id: str
    kind: str
    path: str  # the field set, and the field the refusal must name
    value: Any
    why: str | None = None  # None: the CRD schema refuses it; else why only CEL / the models do

    def body(self) -> dict[str, Any]:
        return put(base(self.kind), self.path, self.value)


def _cases(category: str, kind: str, entries: list[tuple]) -> Iterator[Case]:
    for i, (path, value, *why) in enumerate(entries):
        yield Case(f"{category}-{kind}-{i}-{path}", kind, path, value, why[0] if why else None)


WRONG_TYPES = {
    TR: [
        ("spec.lora.r", "64"),
        ("spec.lora.alpha", "high"),
        ("spec.lora.targetModules", "q_proj"),
        ("spec.anil.firstOrder", "yes"),
        ("spec.optimization.epochs", [1]),
        ("spec.suspend", "false"),
        ("spec.baseModel", "s3://models/m"),
        ("spec.output.uri", 42),
        ("spec.pod.nodeSelector", ["gpu"]),
        ("spec.resources.gpus", 1.5),
        ("spec.pod.tolerations", {"key": "x"}),
    ],
    TG: [
        ("spec.shards", "4"),
        ("spec.sampling.temperature", "hot"),
        ("spec.sampling.stop", "\n"),
        ("spec.engine", 1),
        ("spec.quality", True),
        ("spec.dataset", []),
    ],
    SS: [
        ("spec.replicas", "1"),
        ("spec.routing.policy", ["always"]),
        ("spec.service.port", "8000"),
        ("spec.compile", "no"),
        ("spec.target", "s3://models/t"),
        ("spec.sampling.maxQueue", 1.5),
    ],
}
OUT_OF_RANGE = {
    TR: [
        ("spec.lora.r", 0),
        ("spec.lora.r", 100000),
        ("spec.lora.dropout", 1),
        ("spec.anil.innerLr", 0),
        ("spec.anil.innerSteps", 101),
        ("spec.optimization.outerLr", -1e-4),
        ("spec.optimization.maxSeqLength", 8),
        ("spec.optimization.warmupRatio", 1.0),
        ("spec.backoffLimit", -1),
        ("spec.activeDeadlineSeconds", 0),
        ("spec.resources.gpus", 65),
        ("spec.method", "sft"),
        ("spec.baseModel.dtype", "int4"),
    ],
    TG: [
        ("spec.shards", 0),
        ("spec.shards", 1025),
        ("spec.sampling.temperature", -1),
        ("spec.sampling.topP", 0),
        ("spec.sampling.maxTokens", 0),
        ("spec.gpuMemoryUtilization", 1.5),
        ("spec.quality.minNaturalStopRate", 1.5),
        ("spec.engine", "tgi"),
    ],
    SS: [
        ("spec.routing.confidenceThreshold", 0),
        ("spec.routing.confidenceThreshold", 1.5),
        ("spec.routing.maxSpeculativeTokens", 0),
        ("spec.routing.maxSpeculativeTokens", 65),
        ("spec.replicas", -1),
        ("spec.service.port", 70000),
        ("spec.service.type", "ExternalName"),
    ],
}
HUGE = {
    TR: [
        ("spec.baseModel.uri", "s3://models/" + "a" * 2000),
        ("spec.baseModel.revision", "r" * 200),
        ("spec.queueName", "q" * 64),
        ("spec.pod.image", "registry/" + "i" * 600),
        ("spec.pod.priorityClassName", "p" * 300),
        ("spec.storage.endpoint", "http://" + "e" * 600),
        ("spec.storage.region", "r" * 65),
        ("spec.lora.targetModules", ["m" * 200]),
        ("spec.lora.targetModules", [f"m{i}" for i in range(65)]),
        ("spec.pod.labels", {"team": "v" * 64}),
        ("spec.pod.imagePullSecrets", [f"s{i}" for i in range(17)]),
    ],
    TG: [
        ("spec.sampling.stop", ["x"] * 33),
        ("spec.sampling.stop", ["x" * 1000]),
        ("spec.output.uri", "s3://out/" + "o" * 1100),
    ],
    SS: [
        ("spec.servedModelName", "n" * 300),
        ("spec.pod.nodeSelector", {"zone": "z" * 64}),
    ],
}
UNKNOWN_FIELDS = {
    TR: [
        ("spec.loraRank", 8),
        ("spec.lora.rank", 8),
        ("spec.baseModel.path", "/models"),
        ("spec.pod.hostNetwork", True),
        ("spec.pod.privileged", True),
        ("spec.storage.accessKey", "AKIA..."),
    ],
    TG: [("spec.sampling.temp", 0.7), ("spec.command", ["sh", "-c", "id"])],
    SS: [("spec.routing.threshold", 0.7), ("spec.pod.securityContext", {"privileged": True})],
}
NAMES = {
    TR: [
        ("metadata.name", "a" * 46, CEL),
        ("metadata.name", "a" * 63, CEL),
        ("metadata.name", "llama.v2", CEL),
        ("metadata.name", "Llama", CEL),
        ("metadata.name", "llama_anil", CEL),
        ("metadata.name", "-llama", CEL),
        ("metadata.name", "llama-", CEL),
        ("metadata.name", "llama anil", CEL),
        ("metadata.name", "lläma", CEL),
        ("metadata.name", "", CEL),
    ],
    TG: [("metadata.name", "teacher." + "x" * 40, CEL)],
    SS: [("metadata.name", "0serve", CEL), ("metadata.name", "s" * 46, CEL)],
}
URI_FIELDS = {
    TR: ["spec.baseModel.uri", "spec.dataset.uri", "spec.evaluation.uri", "spec.output.uri"],
    TG: ["spec.model.uri", "spec.dataset.uri", "spec.output.uri"],
    SS: ["spec.target.uri", "spec.draft.uri"],
}
BAD_URIS = [
    "ftp://host/models/m",
    "http://host/models/m",
    "gs://bucket/m",
    "S3://Models/m",
    "s3://UPPER/m",
    "s3://a/m",
    "s3:///m",
    "file:///models/m\nrm -rf /",
    "--trust-remote-code",
    # The part after the scheme reaches vLLM's argv: it must not read as an option or a root path.
    "hf://--trust-remote-code",
    "file://--enable-auto-tool-choice",
    "hf:///etc",
    # A query or fragment would be cut off: two URIs naming one artifact.
    "s3://models/m?versionId=1",
    "s3://models/m#v2",
    "file:///models/m?x",
]
#: Rules the structural schema cannot express: the models (and so the operator) refuse these.
MODEL_ONLY = {
    TR: [
        ("spec.dataset", {"uri": "s3://data/x.jsonl", "from": {"teacherGeneration": "t"}}, MODEL),
        ("spec.dataset", {"from": {"trainingRun": "t"}}, MODEL),
        ("spec.dataset", {"from": {}}, MODEL),
        ("spec.baseModel", {"from": {"teacherGeneration": "t"}}, MODEL),
        ("spec.baseModel", {"uri": "s3://models/Llama-3.1-8B-AWQ"}, MODEL),
        ("spec.draft", {"initFrom": "target", "numLayers": 4}, MODEL),
        ("spec.pod.labels", {"bad key!": "v"}, MODEL),
        ("spec.pod.annotations", {"-x/y": "v"}, MODEL),
    ],
    TG: [
        ("spec.model", {"uri": "s3://models/t", "from": {"trainingRun": "r"}}, MODEL),
        ("spec.model", {"from": {"trainingRun": "r", "teacherGeneration": "g"}}, MODEL),
        ("spec.maxModelLen", 256, MODEL),  # maxTokens 512 leaves no room for the prompt
    ],
    SS: [
        ("spec.draft", {"from": {"teacherGeneration": "g"}}, MODEL),
        ("spec.pod.nodeSelector", {"$(id)": "x"}, MODEL),
    ],
}
#: Pod settings that would undo what the builders set (security profiles, the Kueue queue, ownership,
#: the GPU limit) or that the API server would refuse on the child (Kubernetes structure).
POD = {
    TR: [
        ("spec.pod.annotations", {"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}, MODEL),
        ("spec.pod.annotations", {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}, MODEL),
        ("spec.pod.annotations", {"container.seccomp.security.alpha.kubernetes.io/main": "unconfined"}, MODEL),
        ("spec.pod.annotations", {"io.kubernetes.cri-o.userns-mode": "host"}, MODEL),
        ("spec.pod.annotations", {"x": "v" * 70_000}, MODEL),
        ("spec.pod.labels", {"kueue.x-k8s.io/queue-name": "elsewhere"}, MODEL),
        ("spec.pod.labels", {"metaspec.dev/owner": "someone-else"}, MODEL),
        ("spec.pod.labels", {"team\n": "a"}, MODEL),
        ("spec.pod.nodeSelector", {"zone\n": "a"}, MODEL),
        ("spec.resources.gpuResourceName", "memory", MODEL),
        ("spec.resources.gpuResourceName", "cpu", MODEL),
        ("spec.resources.gpuResourceName", "hugepages-2Mi", MODEL),
        ("spec.resources.gpuResourceName", "kubernetes.io/gpu", MODEL),
    ],
    TG: [
        ("spec.pod.tolerations", [{"key": "gpu", "operator": "Maybe"}]),
        ("spec.pod.tolerations", [{"key": "gpu", "operator": "Exists", "value": "x"}], MODEL),
        ("spec.pod.tolerations", [{"operator": "Equal", "value": "x"}], MODEL),
        ("spec.pod.tolerations", [{"key": "gpu", "tolerationSecond": 5}]),
        ("spec.pod.affinity", {"nodeAfinity": {}}),
        ("spec.pod.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {}}}),
        ("spec.pod.affinity", {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{}]}}),
    ],
    SS: [
        (
            "spec.pod.affinity",
            {
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In"}]}]
                    }
                }
            },
            MODEL,
        ),
        (
            "spec.pod.affinity",
            {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 500}]}},
        ),
    ],
}
SHELL = ["$(touch /tmp/pwned)", "`id`", "x; rm -rf / #", "a|b&&c>d", "'\"\\", "${IFS}cat${IFS}/etc/passwd"]
#: Free string fields a hostile string may legitimately land in: accepted, then carried verbatim.
SHELL_FIELDS = {
    TR: [
        ("spec.baseModel.uri", "s3://models/{}"),
        ("spec.dataset.uri", "s3://data/{}"),
        ("spec.output.uri", "s3://out/{}"),
        ("spec.evaluation.uri", "/data/{}"),
    ],
    TG: [("spec.sampling.stop", ["{}"]), ("spec.dataset.uri", "s3://data/{}")],
    SS: [("spec.target.uri", "s3://models/{}"), ("spec.draft.uri", "file:///models/{}")],
}
#: Fields whose pattern refuses shell metacharacters outright (the schema does).
SHELL_REFUSED = {
    TR: [
        "spec.storage.region",
        "spec.queueName",
        "spec.pod.priorityClassName",
        "spec.resources.gpuResourceName",
        "spec.baseModel.revision",
    ],
    TG: ["spec.pod.serviceAccountName", "spec.model.revision"],
    SS: ["spec.pod.image", "spec.servedModelName", "spec.target.revision"],
}


def refused_cases() -> list[Case]:
    out: list[Case] = []
    for category, table in (
        ("type", WRONG_TYPES),
        ("range", OUT_OF_RANGE),
        ("huge", HUGE),
        ("unknown", UNKNOWN_FIELDS),
        ("name", NAMES),
        ("model", MODEL_ONLY),
        ("pod", POD),
    ):
        for kind, entries in table.items():
            out += _cases(category, kind, entries)
    for kind, fields in URI_FIELDS.items():
        for field in fields:
            # Schemes and S3 shapes are checked by the models: the schema only bounds the length.
            out += _cases("uri", kind, [(field, uri, MODEL) for uri in BAD_URIS])
    for kind, fields in SHELL_REFUSED.items():
        out += _cases("shell-refused", kind, [(f, s) for f in fields for s in (SHELL[0], SHELL[2])])
    return out


def accepted_cases() -> list[Case]:
    out: list[Case] = []
    for kind, fields in SHELL_FIELDS.items():
        for path, template in fields:
            for i, hostile in enumerate(SHELL):
                if "://" in str(template) and "#" in hostile:
                    continue  # a fragment in a URI: refused (BAD_URIS)
                value = (
                    [t.format(hostile) for t in template] if isinstance(template, list) else template.format(hostile)
                )
                out.append(Case(f"shell-{kind}-{path}-{i}", kind, path, value))
    return out


REFUSED, ACCEPTED = refused_cases(), accepted_cases()


def schema_validator(kind: str) -> jsonschema.Draft4Validator:
    """The CRD's OpenAPI v3.0 schema as the API server applies it (nullable; unknown fields refused).

    Read from crds/*.yaml, the files users install (tests/unit/api/test_crds.py checks they match the models).
    """
    text = (REPO / "crds" / f"metaspec.dev_{CRDS[kind]}.yaml").read_text()
    schema = yaml.safe_load(text)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(_strict(schema))


def _strict(node: Any) -> Any:
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if out.get("properties") and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


VALIDATORS = {kind: schema_validator(kind) for kind in CRDS}


def schema_errors(body: dict[str, Any]) -> list[str]:
    return [".".join(map(str, e.absolute_path)) for e in VALIDATORS[body["kind"]].iter_errors(body)]


def test_the_corpus_is_big_and_covers_every_class():
    assert len(REFUSED) + len(ACCEPTED) >= 100
    categories = {c.id.split("-")[0] for c in REFUSED + ACCEPTED}
    assert categories >= {"type", "range", "huge", "unknown", "name", "uri", "model", "shell", "pod"}


def model_refusal(body: dict[str, Any]) -> list[str] | None:
    """The fields `parse_resource` (the operator's first step) names, or None when it accepts."""
    try:
        parse_resource(body)
    except InvalidResource as e:
        return [path for path, _ in e.errors]
    return None


def names(paths: list[str], field: str) -> bool:
    return any(path.startswith(field) or field.startswith(path) for path in paths)


@pytest.mark.parametrize("case", REFUSED, ids=lambda c: c.id)
def test_refused_naming_the_field(case: Case):
    body = case.body()
    errors, refused = schema_errors(body), model_refusal(body)
    if case.why is None:
        assert errors, f"the CRD schema accepts {case.path}={case.value!r}"
        field = case.path.removeprefix("spec.").split(".")[0]
        assert any(field in e for e in errors) or errors == ["spec"], errors
        # Behind the schema the models refuse it too, naming the field, or (lax mode) coerce a
        # numeric string losslessly: `"64"` is 64 and `"false"` is False.
        if refused is None:
            assert isinstance(case.value, str) and case.value.strip("-").replace(".", "").isalnum(), case
        else:
            assert names(refused, case.path), refused
        return
    assert refused is not None and names(refused, case.path), refused
    if case.why == CEL:
        assert not errors, errors  # metadata is not in the schema: only the CEL rule (mirrored) refuses it


def children(resource: Any) -> list[dict[str, Any]]:
    """Every child the builders make for `resource`, as the operator would create them."""
    settings = OperatorSettings()
    config_map = build_configmap(resource, resource, "victim-g1")
    if resource.kind != SS:
        return [config_map, build_job(resource, settings, "victim-g1")]
    uris = {"target": resource.spec.target.uri, "draft": resource.spec.draft.uri}
    return [
        config_map,
        build_deployment(resource, settings, "victim-cfg", "hash", {}),
        build_vllm_deployment(resource, settings, "victim-cfg", "hash", uris, {}),
        build_service(resource),
    ]


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ((manifest.get("spec") or {}).get("template") or {}).get("spec") or {}
    return [*spec.get("containers", []), *spec.get("initContainers", [])]


def get(doc: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        doc = doc[key]
    return doc


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda c: c.id)
def test_hostile_strings_reach_no_shell_and_stay_verbatim(case: Case):
    body = case.body()
    if case.kind == SS:
        body["spec"]["sampling"]["repetitionPenalty"] = 1  # so that the vLLM Deployment builds too
    assert not schema_errors(body)
    resource = parse_resource(body)
    built = children(resource)
    config = json.loads(built[0]["data"]["config.json"])
    assert get(config, case.path) == case.value  # verbatim, as JSON data
    for manifest in built[1:]:
        for container in containers(manifest):
            argv = [*container.get("command", []), *container.get("args", [])]
            assert all(isinstance(a, str) for a in argv) and argv[0] in {"metaspec", "python3"}, argv
            assert not {"sh", "bash", "/bin/sh", "-c"} & set(argv), argv
            # A hostile value is one whole argv element at most: never spliced into a command string.
            hostile = case.value if isinstance(case.value, str) else case.value[0]
            assert all(hostile not in a or a == hostile or a.endswith(hostile) for a in argv), argv


def test_reference_cycles_and_self_references_fail_naming_the_reference():
    def tr(name: str, **spec: Any) -> Any:
        return parse_resource(put(put(base(TR), "metadata.name", name), "spec", {**base(TR)["spec"], **spec}))

    def tg(name: str, model_from: str) -> Any:
        return parse_resource(
            put(put(base(TG), "metadata.name", name), "spec.model", {"from": {"trainingRun": model_from}})
        )

    scenarios = {
        "self": [tr("loop", baseModel={"from": {"trainingRun": "loop"}})],
        "pair": [tr("a", dataset={"from": {"teacherGeneration": "b"}}), tg("b", "a")],
        "triangle": [
            tr("a", dataset={"from": {"teacherGeneration": "b"}}),
            tg("b", "c"),
            tr("c", baseModel={"from": {"trainingRun": "a"}}),
        ],
    }
    for name, resources in scenarios.items():
        known = {(r.kind, r.metadata.name): r for r in resources}
        check = pipeline.check_dependencies(resources[0], lambda k, n, known=known: known.get((k, n)))
        assert check.failed and check.reason == pipeline.DEPENDENCY_CYCLE, (name, check)
        assert ".from)" in check.message and "spec." in check.message, check.message


#: Through the live operator: the emulator has no schema, so schema-level refusals reach the operator too.
LIVE = [
    "name-TrainingRun-0-metadata.name",
    "name-SpecServe-0-metadata.name",
    "type-TrainingRun-1-spec.lora.alpha",
    "range-TeacherGeneration-0-spec.shards",
    "huge-TeacherGeneration-1-spec.sampling.stop",
    "unknown-TrainingRun-3-spec.pod.hostNetwork",
    "model-TrainingRun-0-spec.dataset",
    "model-SpecServe-1-spec.pod.nodeSelector",
    "uri-TeacherGeneration-8-spec.model.uri",
    "shell-refused-SpecServe-0-spec.pod.image",
]


@pytest.fixture(scope="module")
def live_failures() -> Iterator[tuple[Cluster, dict[str, str]]]:
    """One operator process; the sample applied under distinct names, plus a good resource."""
    cluster = Cluster().start()
    cluster.start_operator_process()
    by_id = {c.id: c for c in REFUSED}
    names = {}
    try:
        for i, case_id in enumerate(LIVE):
            body = by_id[case_id].body()
            if by_id[case_id].path != "metadata.name":
                body["metadata"] = {"name": f"bad-{i}"}
            else:
                body["metadata"] = {"name": body["metadata"]["name"]}
            names[case_id] = body["metadata"]["name"]
            cluster.apply(body, "bad")
        good = base(TR)
        good["metadata"] = {"name": "good"}
        cluster.apply(good, "bad")
        yield cluster, names
    finally:
        cluster.close()


@pytest.mark.parametrize("case_id", LIVE)
def test_live_operator_fails_the_resource_naming_the_field(live_failures, case_id: str):
    cluster, names = live_failures
    case = next(c for c in REFUSED if c.id == case_id)
    status = cluster.wait_phase(case.kind, names[case_id], "bad", "Failed", timeout=30)
    assert case.path.split(".")[-1] in status["message"] or case.path in status["message"], status["message"]
    assert not [j for j in cluster.list("Job", "bad") if j["metadata"]["name"].startswith(names[case_id])]


def test_live_operator_survives_the_sample(live_failures):
    cluster, _ = live_failures
    assert cluster.wait_get("Job", "good-g1", "bad")  # still reconciling good resources
    assert cluster.process is not None and cluster.process.poll() is None
    assert "Traceback" not in cluster.operator_log, cluster.operator_log[-3000:]

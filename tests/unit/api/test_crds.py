"""Generated CRDs: in sync with the models, structural, and validating the same things the models do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from metaspec.api import RESOURCES, InvalidResource, parse_resource
from metaspec.api.crd import crd, render_all

REPO = Path(__file__).resolve().parents[3]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def all_examples() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{path.name}#{i}", doc)
        for path in EXAMPLES
        for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
        if doc
    ]


def openapi_validator(kind: str) -> jsonschema.Draft4Validator:
    """What the API server checks: the OpenAPI v3.0 schema (a Draft 4 validator with `nullable`), and
    unknown fields refused as by server-side strict field validation (kubectl's default)."""
    schema = crd(RESOURCES[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft4Validator(_nullable(schema))


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if not k.startswith("x-kubernetes")}
    if "properties" in out and not node.get("x-kubernetes-preserve-unknown-fields") and out["properties"]:
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    return out


def walk(node: Any, path: str = ""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            yield from walk(value, f"{path}.{key}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                yield from walk(node[key], f"{path}[{key}]")


#: The fields of Kubernetes' JSONSchemaProps (apiextensions.k8s.io/v1): anything else fails a strict apply.
SCHEMA_FIELDS = {
    "description", "type", "format", "default", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "multipleOf", "enum",
    "maxProperties", "minProperties", "required", "items", "properties", "additionalProperties", "nullable",
    "example", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations",
    "x-kubernetes-embedded-resource",
}  # fmt: skip


def test_crds_on_disk_match_the_models() -> None:
    for name, text in render_all().items():
        on_disk = REPO / "crds" / name
        assert on_disk.is_file(), f"{on_disk} missing: run `make crds`"
        assert on_disk.read_text() == text, f"{on_disk} is out of date: run `make crds`"


@pytest.mark.parametrize("kind", list(RESOURCES))
def test_schema_is_structural(kind: str) -> None:
    schema = crd(RESOURCES[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert set(node) <= SCHEMA_FIELDS, f"{path}: {set(node) - SCHEMA_FIELDS} are not Kubernetes schema fields"
        preserved = node.get("x-kubernetes-preserve-unknown-fields")
        assert "type" in node or preserved, f"{path} has no type"
        if path.startswith(".spec") or path.startswith(".status"):
            assert path.count(".") == 1 or "description" in node or path.endswith("]"), f"{path} has no description"
        assert not (isinstance(node.get("exclusiveMinimum"), float | int) and node.get("exclusiveMinimum") is not True)


@pytest.mark.parametrize("kind", list(RESOURCES))
def test_crd_metadata(kind: str) -> None:
    cls = RESOURCES[kind]
    body = crd(cls)
    names = body["spec"]["names"]
    assert names["shortNames"] == [cls.short_name]
    assert names["categories"] == ["metaspec"]
    version = body["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["subresources"]["status"] == {}
    assert any(c["jsonPath"] == ".status.phase" for c in version["additionalPrinterColumns"])
    rules = version["schema"]["openAPIV3Schema"]["x-kubernetes-validations"]
    if kind == "SpecServe":
        assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
        assert len(rules) == 1  # serving specs stay mutable: changing them rolls the Deployment
    else:
        immutable = rules[1]
        assert "oldSelf.status.startTime" in immutable["rule"] and "spec.suspend" not in immutable["rule"]
        fixed = ["storage"] + (["dtype", "maxModelLen"] if kind == "TeacherGeneration" else [])
        assert all(f"oldSelf.spec.{field}" in immutable["rule"] for field in fixed), immutable["rule"]


@pytest.mark.parametrize("where,body", all_examples(), ids=[w for w, _ in all_examples()])
def test_examples_validate_against_schema_and_models(where: str, body: dict[str, Any]) -> None:
    errors = sorted(openapi_validator(body["kind"]).iter_errors(body), key=str)
    assert not errors, [f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors]
    parse_resource(body, where=where)


def base_training_run(**spec: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "t"},
        "spec": {
            "baseModel": {"uri": "s3://models/base"},
            "dataset": {"uri": "s3://data/train.jsonl"},
            "output": {"uri": "s3://artifacts/t"},
        },
    }
    body["spec"].update(spec)
    return body


INVALID = [
    # (spec overrides, field path that must be named, words in the message)
    ({"baseModel": {"uri": "s3://models/Llama-3.1-8B-GPTQ"}}, "spec.baseModel", "quantized"),
    ({"baseModel": {"uri": "s3://models/base", "loadIn4bit": True}}, "spec.baseModel", "merging"),
    ({"baseModel": {"uri": "s3://models/base", "dtype": "int8"}}, "spec.baseModel", "quantized"),
    (
        {"dataset": {"uri": "s3://data/x.jsonl", "from": {"teacherGeneration": "t"}}},
        "spec.dataset",
        "not both",
    ),
    ({"dataset": {}}, "spec.dataset", "one of"),
    ({"anil": {"innerLr": 0}}, "spec.anil.innerLr", "greater than 0"),
    ({"optimization": {"outerLr": -1}}, "spec.optimization.outerLr", "greater than 0"),
    ({"method": "sft"}, "spec.method", "anil-maml"),
    ({"lora": {"r": 0}}, "spec.lora.r", "greater than or equal to 1"),
    ({"output": {"uri": "ftp://host/x"}}, "spec.output.uri", "unsupported URI scheme"),
    ({"anil": {"supportMix": "three"}}, "spec.anil.supportMix", "pattern"),
    ({"draft": {"initFrom": "target"}, "method": "causal-lm"}, "spec.draft", "numLayers"),
    ({"unknownField": 1}, "spec.unknownField", "Extra inputs"),
    ({"distributed": {"strategy": "zero3"}}, "spec.distributed.strategy", "'ddp' or 'fsdp'"),
    ({"method": "causal-lm", "distributed": {"strategy": "fsdp"}}, "spec", "fsdp` applies to the LoRA methods"),
    (
        {"distributed": {"strategy": "fsdp"}, "optimization": {"compile": True}},
        "spec",
        "fsdp` does not combine with `optimization.compile`",
    ),
]


@pytest.mark.parametrize("overrides,field,words", INVALID, ids=[f for _, f, _ in INVALID])
def test_invalid_training_runs_name_the_field(overrides: dict, field: str, words: str) -> None:
    body = base_training_run(**overrides)
    with pytest.raises(InvalidResource) as caught:
        parse_resource(body)
    assert any(path.startswith(field) and words in message for path, message in caught.value.errors), caught.value


def test_invalid_other_kinds_name_the_field() -> None:
    serve = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "SpecServe",
        "metadata": {"name": "s"},
        "spec": {
            "target": {"uri": "s3://models/t"},
            "draft": {"uri": "s3://models/d"},
            "routing": {"confidenceThreshold": 1.5},
        },
    }
    with pytest.raises(InvalidResource, match=r"spec.routing.confidenceThreshold"):
        parse_resource(serve)
    serve["spec"]["routing"] = {}
    serve["spec"].update(engine="vllm", sampling={"repetitionPenalty": 1.2})
    with pytest.raises(InvalidResource, match="silently skips"):
        parse_resource(serve)
    gen = {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "TeacherGeneration",
        "metadata": {"name": "g"},
        "spec": {
            "model": {"uri": "s3://models/t"},
            "dataset": {"uri": "s3://data/p.jsonl"},
            "output": {"uri": "s3://out/g"},
        },
    }
    gen["spec"]["shards"] = 0
    with pytest.raises(InvalidResource, match=r"spec.shards: .*greater than or equal to 1"):
        parse_resource(gen)
    bad_name = {**gen, "metadata": {"name": "x" * 60}, "spec": {**gen["spec"], "shards": 1}}
    with pytest.raises(InvalidResource, match=r"metadata.name"):
        parse_resource(bad_name)


def serve_with_threshold(value: Any) -> dict[str, Any]:
    return {
        "apiVersion": "metaspec.dev/v1alpha1",
        "kind": "SpecServe",
        "metadata": {"name": "s"},
        "spec": {
            "target": {"uri": "s3://models/t"},
            "draft": {"uri": "s3://models/d"},
            "routing": {"policy": "first-token", "confidenceThreshold": value},
        },
    }


@pytest.mark.parametrize("value", ["auto", 0.5, 1])
def test_confidence_threshold_is_a_number_or_auto(value: Any) -> None:
    body = serve_with_threshold(value)
    assert not list(openapi_validator("SpecServe").iter_errors(body))
    assert parse_resource(body).spec.routing.confidence_threshold == value


@pytest.mark.parametrize("value,schema", [(0, True), (1.5, True), ("high", True), ("0.5", True), ({"a": 1}, False)])
def test_a_bad_confidence_threshold_is_refused_naming_the_field(value: Any, schema: bool) -> None:
    """The schema cannot type "a number or `auto`" (see `ConfidenceThreshold`) but still bounds numbers and
    strings; the models refuse the rest, naming the field and what it takes."""
    body = serve_with_threshold(value)
    assert bool(list(openapi_validator("SpecServe").iter_errors(body))) == schema
    with pytest.raises(InvalidResource) as caught:
        parse_resource(body)
    assert any(
        path == "spec.routing.confidenceThreshold" and "0 < t ≤ 1, or `auto`" in message
        for path, message in caught.value.errors
    ), caught.value


def test_auto_threshold_is_refused_with_vllm() -> None:
    body = serve_with_threshold("auto")
    body["spec"].update(engine="vllm", routing={"confidenceThreshold": "auto"})
    with pytest.raises(InvalidResource, match=r"routing.confidenceThreshold` is not used by `engine: vllm`"):
        parse_resource(body)


SCHEMA_REJECTS = [
    {"anil": {"innerLr": 0}},
    {"optimization": {"outerLr": -1}},
    {"method": "sft"},
    {"lora": {"r": 0}},
    {"lora": {"dropout": 1}},
    {"anil": {"supportMix": "three"}},
    {"unknownField": 1},
    {"baseModel": {"uri": "s3://models/base", "loadIn4bit": True}},
    {"distributed": {"strategy": "zero3"}},
]


@pytest.mark.parametrize("overrides", SCHEMA_REJECTS, ids=str)
def test_api_server_schema_refuses_what_the_models_refuse(overrides: dict) -> None:
    """The API server (CRD schema) already refuses these, before the operator sees them."""
    body = base_training_run(**overrides)
    with pytest.raises(InvalidResource):
        parse_resource(body)
    assert list(openapi_validator("TrainingRun").iter_errors(body)), f"the CRD schema accepts {overrides}"

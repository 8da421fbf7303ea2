"""No spec string is expanded by the kubelet: every string field of every resource, walked from the CRD
schema, set to `$(SECRET)` forms, through every builder (training Job, generation Job with each
engine, SpecServe Deployment with each engine, init containers included).

The kubelet replaces `$(NAME)` in a container's command, args and env values with that variable of
the container's environment; `expand` below follows its rules (`$$` is a literal `$`, an undefined
name is left as written) so the test sees what the process would get.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from metaspec.api import InvalidResource, Resource, parse_resource
from metaspec.api.crd import openapi_schema
from metaspec.api.generation import TeacherGenerationSpec
from metaspec.api.serving import SpecServeSpec
from metaspec.api.training import TrainingRunSpec
from metaspec.operator.builders import build_deployment, build_job, build_vllm_deployment
from metaspec.operator.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[3]
SPECS = {
    "TrainingRun": ("training-run.yaml", TrainingRunSpec),
    "TeacherGeneration": ("teacher-generation.yaml", TeacherGenerationSpec),
    "SpecServe": ("spec-serve.yaml", SpecServeSpec),
}
SECRET = "s3cr3t-value"
#: Forms a hostile `$(…)` takes in fields with a shape: the first one the models accept is used.
PAYLOADS = [
    "$(AWS_SECRET_ACCESS_KEY)",
    "s3://models/$(AWS_SECRET_ACCESS_KEY)",
    "hf://org/$(AWS_SECRET_ACCESS_KEY)",
    "https://s3.example.com/$(AWS_SECRET_ACCESS_KEY)",
    "$$(AWS_SECRET_ACCESS_KEY)",
]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion (third_party/forked/golang/expansion) of one string."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            if text[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if text[i + 1] == "(" and (end := text.find(")", i + 2)) != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def string_paths(schema: dict[str, Any], path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place a string can go in a spec: object properties, list items (index 0), map values."""
    kind = schema.get("type")
    if kind == "string":
        yield path
    elif kind == "object":
        for key, sub in schema.get("properties", {}).items():
            yield from string_paths(sub, (*path, key))
        if isinstance(schema.get("additionalProperties"), dict):
            yield from string_paths(schema["additionalProperties"], (*path, "k"))
    elif kind == "array":
        yield from string_paths(schema["items"], (*path, 0))


def put(doc: Any, path: tuple[Any, ...], value: Any) -> None:
    for key, nxt in itertools.pairwise(path):
        empty: Any = [] if isinstance(nxt, int) else {}
        if isinstance(key, int):
            if not doc:
                doc.append(empty)
            doc = doc[0]
        else:
            if not isinstance(doc.get(key), dict | list) or (isinstance(nxt, int) != isinstance(doc[key], list)):
                doc[key] = empty
            doc = doc[key]
    if isinstance(path[-1], int):
        doc[:] = [value]
    else:
        doc[path[-1]] = value


@cache
def base(kind: str) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "examples" / SPECS[kind][0]).read_text())
    doc["metadata"] = {"name": "victim", "namespace": "ns", "uid": "u", "generation": 1}
    doc["spec"]["storage"] = {"secretRef": {"name": "s3"}, "endpoint": "http://s3.test:8333"}
    return doc


def variants(resource: Resource) -> Iterator[Resource]:
    """The resource with each engine its kind has, so that every builder sees the field."""
    yield resource
    body = resource.dump()
    if body["kind"] == "TeacherGeneration":
        body["spec"]["engine"] = "transformers" if body["spec"].get("engine", "vllm") == "vllm" else "vllm"
    elif body["kind"] == "SpecServe":
        body["spec"]["engine"] = "vllm"
        body["spec"].setdefault("sampling", {})["repetitionPenalty"] = 1
    else:
        return
    with contextlib.suppress(InvalidResource):  # the other engine may refuse this combination
        yield parse_resource(body)


SETTINGS = OperatorSettings()


def containers(resource: Resource) -> list[dict[str, Any]]:
    settings = SETTINGS
    if resource.kind != "SpecServe":
        manifests = [build_job(resource, settings, "cm")]
    elif resource.spec.engine == "vllm":
        uris = {"target": resource.spec.target.uri, "draft": resource.spec.draft.uri}
        manifests = [build_vllm_deployment(resource, settings, "cm", "hash", uris, {})]
    else:
        manifests = [build_deployment(resource, settings, "cm", "hash", {})]
    out = []
    for manifest in manifests:
        spec = manifest["spec"]["template"]["spec"]
        out += [*spec["containers"], *spec.get("initContainers", [])]
    return out


def cases() -> Iterator[tuple[str, tuple[Any, ...]]]:
    for kind, (_, model) in SPECS.items():
        for path in string_paths(openapi_schema(model)):
            yield kind, ("spec", *path)


CASES = list(cases())


def test_the_walk_covers_the_fields_that_reach_containers():
    dotted = {".".join(map(str, p)) for _, p in CASES}
    assert {"spec.servedModelName", "spec.target.uri", "spec.storage.endpoint", "spec.model.uri"} <= dotted
    assert len(CASES) > 60


def leaks(kind: str, path: tuple[Any, ...]) -> Iterator[str]:
    """How a `$(…)` payload at `path` reaches a process other than literally (nothing, when it holds)."""
    for payload in PAYLOADS:
        body = copy.deepcopy(base(kind))
        put(body, path, payload)
        try:
            resource = parse_resource(body)
        except InvalidResource:
            continue
        for variant in variants(resource):
            for container in containers(variant):
                env = {e["name"]: SECRET for e in container.get("env", [])}
                strings = [*container.get("command", []), *container.get("args", [])]
                strings += [e["value"] for e in container.get("env", []) if "value" in e]
                for text in strings:
                    seen = expand(text, env)
                    # What the process gets is what the spec said: the payload arrives literally.
                    arrived = payload in seen or payload.replace("$$", "$") in seen
                    if SECRET in seen or (
                        re.search(re.escape(payload.split("$", 1)[0]) + r"\$+\(", text) and not arrived
                    ):
                        yield f"{'.'.join(map(str, path))}={payload!r} in {container['name']}: {text!r} -> {seen!r}"


@pytest.mark.parametrize("kind", SPECS)
def test_no_spec_string_is_expanded_by_the_kubelet(kind: str):
    found = [leak for k, path in CASES if k == kind for leak in leaks(kind, path)]
    assert not found, "\n".join(found)

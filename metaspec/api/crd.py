"""CustomResourceDefinitions generated from the pydantic models.

Kubernetes wants structural OpenAPI v3.0 schemas: no `$ref`, `nullable` instead of `anyOf [X, null]`,
boolean `exclusiveMinimum`, no `title`, free-form objects marked `x-kubernetes-preserve-unknown-fields`.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import yaml

from ._base import GROUP, MAX_NAME_LENGTH, NAME_PATTERN, SERVICE_NAME_PATTERN, VERSION
from .generation import TeacherGeneration
from .serving import SpecServe
from .training import TrainingRun
from .workload import Resource


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve `$ref`s and rewrite JSON Schema 2020-12 idioms into Kubernetes' OpenAPI v3.0 dialect."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        return _inline({**target, **node}, defs)
    node.pop("title", None)
    # Kubernetes' schemas constrain no map keys (no `propertyNames`; `patternProperties` is refused): the
    # models check them (label keys), refusing a bad one as InvalidSpec; the API server checks the values.
    node.pop("propertyNames", None)
    if "patternProperties" in node:
        values = list(node.pop("patternProperties").values())
        node.setdefault("additionalProperties", values[0] if len(values) == 1 else True)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally: {options}")
        return _inline({**options[0], **node, "nullable": True}, defs)
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, inclusive in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node:
            node[inclusive] = node.pop(bound)
            node[bound] = True
    if node.get("default", 0) is None:
        del node["default"]
    if node.get("type") == "object" and node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    if node.get("type") == "object" and "properties" not in node and "additionalProperties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    # Structural schemas forbid both: free-form extras on a typed object (metrics) are preserved.
    if "properties" in node and node.pop("additionalProperties", False) is not False:
        node["x-kubernetes-preserve-unknown-fields"] = True
    for key in ("properties",):
        if key in node:
            node[key] = {k: _inline(v, defs) for k, v in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _inline(node[key], defs)
    if "type" not in node and "enum" in node:
        node["type"] = "string"
    return node


def openapi_schema(model: type) -> dict[str, Any]:
    """The structural schema of a pydantic model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _inline(raw, raw.pop("$defs", {}))


def _immutability_rule(resource: type[Resource]) -> dict[str, str]:
    def same(field: str) -> str:
        new, old = f"self.spec.{field}", f"oldSelf.spec.{field}"
        return f"(has({new}) ? has({old}) && {new} == {old} : !has({old}))"

    started = "has(oldSelf.status) && has(oldSelf.status.startTime)"
    fields = " && ".join(same(f) for f in resource.immutable_spec)
    return {
        "rule": f"!({started}) || ({fields})",
        "message": f"spec is immutable once the {resource.model_fields['kind'].default} has started "
        f"(fields {', '.join(resource.immutable_spec)}): create a new resource with a new name "
        "for a new version; suspend, scheduling and resources may still change",
    }


def _name_rule(resource: type[Resource]) -> dict[str, str]:
    """CEL: the API server checks CR names only as DNS subdomains; children need more (see ObjectMeta)."""
    pattern = SERVICE_NAME_PATTERN if resource is SpecServe else NAME_PATTERN
    return {
        "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH} && self.metadata.name.matches('{pattern}')",
        "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters (child names derive from it), "
        "lowercase alphanumerics and '-' (no dots: it becomes label values and pod names)"
        + (", starting with a letter (it names the Service)" if resource is SpecServe else ""),
    }


def crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource kind."""
    kind = resource.model_fields["kind"].default
    spec_schema = openapi_schema(resource.model_fields["spec"].annotation)
    status_schema = openapi_schema(resource.model_fields["status"].annotation.__args__[0])
    rules = [_name_rule(resource)]
    if resource.immutable_spec:
        rules.append(_immutability_rule(resource))
    schema = {
        "type": "object",
        "description": resource.__doc__.strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
        "x-kubernetes-validations": rules,
    }
    subresources: dict[str, Any] = {"status": {}}
    if resource is SpecServe:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    columns = [{"name": name, "type": type_, "jsonPath": path} for name, type_, path in resource.printer_columns]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{GROUP}", "labels": dict(CRD_LABELS)},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": resource.plural,
                "singular": kind.lower(),
                "shortNames": [resource.short_name],
                "categories": ["metaspec"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": schema},
                    "subresources": subresources,
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


#: On every CRD the operator needs: `kubectl wait --for=condition=Established crd -l ...` selects them.
CRD_LABELS = {"app.kubernetes.io/part-of": "metaspec"}


class CrdDumper(yaml.SafeDumper):
    """Writes floats in positional notation (`0.000001`, not `1.0e-06`), a number to YAML 1.1 and 1.2
    readers alike. (kustomize still re-emits small floats as `1e-06`, which YAML 1.1 readers such as
    PyYAML take for a string: read its output with YAML 1.2's number rules.) Shared subschemas are written
    out in full, not as YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _positional_float(dumper: yaml.SafeDumper, value: float) -> yaml.ScalarNode:
    if value != value or value in (float("inf"), float("-inf")):
        return dumper.represent_float(value)
    text = format(Decimal(repr(value)), "f")
    return dumper.represent_scalar("tag:yaml.org,2002:float", text if "." in text else f"{text}.0")


CrdDumper.add_representer(float, _positional_float)


def dump(documents: list[dict[str, Any]], header: str) -> str:
    """A CRD file: `---` first (tools concatenate the files of a folder), the header comment, the documents."""
    body = yaml.dump_all(documents, Dumper=CrdDumper, sort_keys=False, width=120, allow_unicode=True)
    return f"---\n{header}{body}"


def render_all() -> dict[str, str]:
    """`{file name: YAML}` for every CRD, as written to `crds/`."""
    header = "# Generated by `metaspec crds` from metaspec/api. Do not edit.\n"
    return {
        f"{GROUP}_{cls.plural}.yaml": dump([crd(cls)], header) for cls in (TrainingRun, TeacherGeneration, SpecServe)
    }

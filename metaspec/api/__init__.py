"""The resource API: pydantic models of every CRD's spec and status, the single source of truth.

The CRDs (`metaspec crds`), the operator, the local runner and every component's `--config` file are
all derived from these models.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ._base import API_VERSION, GREEDY_BELOW, GROUP, VERSION, Condition, Phase, now
from .generation import TeacherGeneration, TeacherGenerationSpec, TeacherGenerationStatus
from .serving import SpecServe, SpecServeSpec, SpecServeStatus
from .training import TrainingRun, TrainingRunSpec, TrainingRunStatus
from .workload import Resource

#: JSON bytes of a spec: it is rendered whole into its component's ConfigMap (1 MiB at most, with
#: the resolved URIs and some indentation added), and a CR beyond this is a mistake, not a pipeline.
MAX_SPEC_BYTES = 256 * 1024
RESOURCES: dict[str, type[Resource]] = {
    cls.model_fields["kind"].default: cls for cls in (TrainingRun, TeacherGeneration, SpecServe)
}


class InvalidResource(ValueError):
    """A resource that does not validate; `errors` are `(field path, message)` pairs."""

    def __init__(self, where: str, errors: list[tuple[str, str]]):
        self.where = where
        self.errors = errors
        lines = "\n".join(f"  {path}: {message}" for path, message in errors)
        super().__init__(f"{where} is invalid:\n{lines}")


def field_errors(error: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    """Pydantic errors as `(spec.baseModel.uri, message)` pairs, in wire (camelCase) names."""
    out = []
    for e in error.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        message = e["msg"].removeprefix("Value error, ")
        out.append((path or "<root>", message))
    return out


def parse_resource(body: dict[str, Any], where: str = "resource") -> Resource:
    """Validate a whole CR (`apiVersion`, `kind`, `metadata`, `spec`) into its model."""
    kind = body.get("kind")
    if not isinstance(kind, str) or kind not in RESOURCES:
        raise InvalidResource(where, [("kind", f"unknown kind {kind!r}: expected one of {', '.join(RESOURCES)}")])
    if body.get("apiVersion") != API_VERSION:
        raise InvalidResource(where, [("apiVersion", f"expected {API_VERSION!r}, got {body.get('apiVersion')!r}")])
    size = len(json.dumps(body.get("spec"), default=str))
    if size > MAX_SPEC_BYTES:
        raise InvalidResource(where, [("spec", f"{size} bytes of JSON; at most {MAX_SPEC_BYTES} are accepted")])
    try:
        return RESOURCES[kind].model_validate(body)
    except ValidationError as e:
        raise InvalidResource(where, field_errors(e)) from None


__all__ = [
    "API_VERSION",
    "GREEDY_BELOW",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Condition",
    "InvalidResource",
    "Phase",
    "Resource",
    "SpecServe",
    "SpecServeSpec",
    "SpecServeStatus",
    "TeacherGeneration",
    "TeacherGenerationSpec",
    "TeacherGenerationStatus",
    "TrainingRun",
    "TrainingRunSpec",
    "TrainingRunStatus",
    "field_errors",
    "now",
    "parse_resource",
]

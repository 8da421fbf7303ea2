"""Render the chart like `helm template` (with the test-only renderer) and pick objects out of it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from gotemplate import render_chart

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "charts" / "metaspec"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
NAMESPACE = "metaspec-system"


def values(**overrides: Any) -> dict[str, Any]:
    """The chart's defaults with dotted-path overrides (`metrics__enabled=False`)."""
    out = copy.deepcopy(VALUES)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = out
        for key in parents:
            node = node[key]
        node[leaf] = value
    jsonschema.validate(out, SCHEMA)
    return out


def render(vals: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object the chart renders, parsed (the chart's YAML must parse)."""
    objects = []
    for name, text in render_chart(CHART, vals, namespace=NAMESPACE).items():
        if name.endswith("NOTES.txt"):
            continue
        try:
            docs = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            pytest.fail(f"{name} does not render to YAML: {exc}\n{text}")
        objects += [d for d in docs if d]
    return objects


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = by_kind(objects, "Deployment")
    (main,) = deployment["spec"]["template"]["spec"]["containers"]
    return main


def env(main: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in main["env"]}

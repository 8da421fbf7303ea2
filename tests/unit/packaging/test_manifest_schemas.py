"""Every rendered object validates against the Kubernetes OpenAPI schemas (bundled by `kubernetes-validate`)
of the oldest Kubernetes the chart supports and the newest one bundled, strictly (no unknown fields)."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chart_objects import CHART

#: Kinds defined by CRDs, which no Kubernetes schema describes (the CRDs' own schemas are tested elsewhere).
CUSTOM_KINDS = {"ClusterKopfPeering", "KopfPeering", "PodMonitor", "PrometheusRule", "ServiceMonitor"}
MINIMUM = re.fullmatch(r">=\s*(\d+\.\d+\.\d+)(-0)?", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"])
VERSIONS = [MINIMUM.group(1), kubernetes_validate.latest_version()]


@pytest.fixture
def cached_schemas(monkeypatch: pytest.MonkeyPatch) -> None:
    """kubernetes-validate reads its schema files (megabytes of JSON) for every object: read each once."""
    utils = kubernetes_validate.utils
    monkeypatch.setattr(utils, "schema_contents", functools.cache(utils.schema_contents))


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.usefixtures("cached_schemas")
def test_every_object_matches_the_kubernetes_schema(rendered: dict[str, list[dict[str, Any]]], version: str) -> None:
    failures, checked, seen = [], 0, set()
    for source, objects in rendered.items():
        for obj in objects:
            text = json.dumps(obj, sort_keys=True)
            if obj["kind"] in CUSTOM_KINDS or text in seen:
                continue
            seen.add(text)
            name = f"{source}: {obj['kind']} {obj['metadata']['name']}"
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                failures.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                failures.append(f"{name}: {exc}")
            checked += 1
    assert checked > 50 and not failures, "\n".join(failures)

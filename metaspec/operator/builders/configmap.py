"""The ConfigMap holding a component's config: the resolved resource, mounted as `config.json`."""

from __future__ import annotations

import json
from typing import Any

from metaspec.api import Resource
from metaspec.operator import labels as L
from metaspec.operator.builders.names import child_metadata
from metaspec.operator.builders.pod import CONFIG_FILE


def config_body(resolved: Resource) -> dict[str, Any]:
    """What the component reads: kind, identity and spec; no status and no operator bookkeeping."""
    meta = resolved.metadata
    return {
        "apiVersion": resolved.api_version,
        "kind": resolved.kind,
        "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid, "generation": meta.generation},
        "spec": resolved.spec.dump(),
    }


def build_configmap(owner: Resource, resolved: Resource, name: str) -> dict[str, Any]:
    """The ConfigMap `name` with `config.json`; immutable, since a new config gets a new name."""
    labels = {**L.owner_labels(owner.kind, owner.metadata.name, owner.component), L.ROLE: "config"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, name, labels),
        "immutable": True,
        "data": {CONFIG_FILE: json.dumps(config_body(resolved), indent=2, sort_keys=True) + "\n"},
    }

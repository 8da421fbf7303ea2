"""The ConfigMap holding a component's config: the resolved resource (`metaspec.status.render_config`)."""

from __future__ import annotations

from typing import Any

from metaspec.api import Resource
from metaspec.operator import labels as L
from metaspec.operator.builders.names import child_metadata
from metaspec.operator.builders.pod import CONFIG_FILE
from metaspec.status import config_text


def build_configmap(owner: Resource, resolved: Resource, name: str) -> dict[str, Any]:
    """The ConfigMap `name` with `config.json`; immutable, since a new config gets a new name."""
    labels = {**L.owner_labels(owner.kind, owner.metadata.name, owner.component), L.ROLE: "config"}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(owner, name, labels),
        "immutable": True,
        "data": {CONFIG_FILE: config_text(resolved)},
    }

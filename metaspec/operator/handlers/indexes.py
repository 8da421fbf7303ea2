"""kopf indexes: every resource parsed once per event, and dependents by what they reference."""

from __future__ import annotations

from typing import Any

import kopf

from metaspec import pipeline
from metaspec.api import GROUP, RESOURCES, InvalidResource, Resource, parse_resource

#: kind -> plural of the three resources; kopf passes each index to handlers as `<plural>_idx`.
PLURALS = {kind: cls.plural for kind, cls in RESOURCES.items()}


def _parsed(body: kopf.Body) -> Resource | None:
    try:
        return parse_resource(dict(body))
    except InvalidResource:
        return None


def _index(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], Resource | None]:
    return {(namespace, name): _parsed(body)}


def _dependents(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str, str], tuple[str, str]]:
    resource = _parsed(body)
    refs = pipeline.references(resource) if resource is not None else []
    return {(namespace, ref.kind, ref.name): (body["kind"], name) for ref in refs}


for _plural in PLURALS.values():
    kopf.index(GROUP, _plural, id=f"{_plural}_idx")(_index)
    kopf.index(GROUP, _plural, id="dependents_idx")(_dependents)


def lookup(indexes: dict[str, Any], namespace: str) -> pipeline.Lookup:
    """`(kind, name) -> Resource | None` over the operator's indexes of one namespace."""

    def find(kind: str, name: str) -> Resource | None:
        index = indexes[f"{PLURALS[kind]}_idx"]
        found = index.get((namespace, name), [])
        return next(iter(found), None)

    return find

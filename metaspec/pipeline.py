"""Dependencies between resources: one implementation for both executors (the operator, `metaspec local`).

A resource references another of its namespace through `from` (`baseModel.from.trainingRun`,
`dataset.from.teacherGeneration`, `model.from.trainingRun`, `target/draft.from.trainingRun`). It may start
once every referenced resource has succeeded; the reference then resolves to the artifact that resource
produced (a TrainingRun's `status.artifacts.model`, a TeacherGeneration's `status.outputUri`), and the
component receives the same model with `from` replaced by `uri`.

Everything here is pure: callers pass a `lookup(kind, name)` over the resources they know of.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from metaspec.api import (
    Condition,
    InvalidResource,
    Phase,
    Resource,
    SpecServe,
    TeacherGeneration,
    TrainingRun,
    field_errors,
    now,
)
from metaspec.api.conditions import (
    DEPENDENCIES_RESOLVED,
    DEPENDENCY_CYCLE,
    DEPENDENCY_FAILED,
    DEPENDENCY_HAS_NO_ARTIFACT,
    DEPENDENCY_NOT_FOUND,
    DEPENDENCY_NOT_SUCCEEDED,
)

TRAINING_RUN = "TrainingRun"
TEACHER_GENERATION = "TeacherGeneration"

#: Resources whose work is over; nothing is reconciled for them until the spec changes.
TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


#: Reasons from least to most severe: the DependenciesReady condition shows the worst one.
_SEVERITY = (
    DEPENDENCIES_RESOLVED,
    DEPENDENCY_NOT_SUCCEEDED,
    DEPENDENCY_NOT_FOUND,
    DEPENDENCY_HAS_NO_ARTIFACT,
    DEPENDENCY_FAILED,
    DEPENDENCY_CYCLE,
)

Lookup = Callable[[str, str], Resource | None]
Node = tuple[str, str]  # (kind, name) within one namespace


def uri_fields(value: Any) -> Iterator[str]:
    """Every URI field of a spec (wire form): the fields named `uri` throughout the api. Other strings
    (a stop string `s3://`, an annotation) are not artifacts."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "uri" and isinstance(item, str):
                yield item
            else:
                yield from uri_fields(item)
    elif isinstance(value, list):
        for item in value:
            yield from uri_fields(item)


def claims(resource: Resource) -> list[str]:
    """PersistentVolumeClaims named by the spec's `pvc://` URIs, in first-use order (both executors
    mount them: the operator as read-only volumes, `metaspec local` as host folders)."""
    uris = uri_fields(resource.spec.dump())
    return list(dict.fromkeys(u.removeprefix("pvc://").split("/", 1)[0] for u in uris if u.startswith("pvc://")))


@dataclass(frozen=True)
class Reference:
    """One `from` reference: where it is in the spec and what it names."""

    field: str  # wire path of the source object, e.g. `spec.baseModel`
    kind: str  # `TrainingRun` or `TeacherGeneration`
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name!r} ({self.field}.from)"


@dataclass(frozen=True)
class Resolved:
    """What a reference resolved to: an artifact URI and, where known, its manifest digest."""

    uri: str
    digest: str | None = None


def _sources(resource: Resource) -> list[tuple[str, Any]]:
    """The (wire path, source model) pairs of a resource that may carry `from`."""
    spec = resource.spec
    if isinstance(resource, TrainingRun):
        return [("spec.baseModel", spec.base_model), ("spec.dataset", spec.dataset)]
    if isinstance(resource, TeacherGeneration):
        return [("spec.model", spec.model)]
    if isinstance(resource, SpecServe):
        return [("spec.target", spec.target), ("spec.draft", spec.draft)]
    raise TypeError(f"unknown resource type {type(resource).__name__}")


def references(resource: Resource) -> list[Reference]:
    """Every `from` reference of a resource, in spec order."""
    out = []
    for path, source in _sources(resource):
        ref = getattr(source, "from_", None) if source is not None else None
        if ref is None:
            continue
        if ref.training_run:
            out.append(Reference(path, TRAINING_RUN, ref.training_run))
        if ref.teacher_generation:
            out.append(Reference(path, TEACHER_GENERATION, ref.teacher_generation))
    return out


def key(resource: Resource) -> Node:
    return resource.kind, resource.metadata.name


def graph(resources: Iterable[Resource]) -> dict[Node, list[Node]]:
    """The reference graph of one namespace: (kind, name) -> the (kind, name)s it references."""
    return {key(r): [(ref.kind, ref.name) for ref in references(r)] for r in resources}


def find_cycle(start: Node, edges: Callable[[Node], list[Node]]) -> list[Node]:
    """A reference cycle through `start` (as the path start → … → start), or [] when there is none.

    `edges` is called only for nodes reachable from `start`, so a lookup-backed graph stays cheap.
    """
    path: list[Node] = [start]
    seen: set[Node] = set()

    def visit(node: Node) -> bool:
        for nxt in edges(node):
            if nxt == start:
                path.append(nxt)
                return True
            if nxt in seen:
                continue
            seen.add(nxt)
            path.append(nxt)
            if visit(nxt):
                return True
            path.pop()
        return False

    return path if visit(start) else []


def topological_order(resources: Iterable[Resource]) -> list[Resource]:
    """Resources ordered so that each comes after those it references; refuses cycles."""
    by_key = {key(r): r for r in resources}
    edges = graph(by_key.values())
    order: list[Resource] = []
    done: set[Node] = set()

    def place(node: Node) -> None:
        if node in done or node not in by_key:
            return
        cycle = find_cycle(node, lambda n: edges.get(n, []))
        if cycle:
            raise ValueError("reference cycle: " + " -> ".join(f"{k}/{n}" for k, n in cycle))
        done.add(node)
        for dep in edges[node]:
            place(dep)
        order.append(by_key[node])

    for node in by_key:
        place(node)
    return order


def artifact_of(resource: Resource) -> Resolved | None:
    """The artifact a succeeded resource offers to its dependents, if it reported one."""
    status = resource.status
    if isinstance(resource, TrainingRun) and status is not None and status.artifacts and status.artifacts.model:
        return Resolved(status.artifacts.model, status.artifacts.manifest_digest)
    if isinstance(resource, TeacherGeneration) and status is not None and status.output_uri:
        return Resolved(status.output_uri)
    return None


def _phase(resource: Resource) -> Phase:
    return Phase(resource.status.phase) if resource.status is not None else Phase.PENDING


@dataclass
class DependencyCheck:
    """Where a resource's references stand: all resolved, some still pending, or one that failed."""

    resolved: dict[str, Resolved] = field(default_factory=dict)  # wire path -> artifact
    pending: list[str] = field(default_factory=list)  # human-readable reasons
    failed: list[str] = field(default_factory=list)
    reason: str = DEPENDENCIES_RESOLVED  # the most severe reason seen

    @property
    def ready(self) -> bool:
        return not self.pending and not self.failed

    def note(self, reason: str, message: str, failed: bool) -> None:
        (self.failed if failed else self.pending).append(message)
        if _SEVERITY.index(reason) > _SEVERITY.index(self.reason):
            self.reason = reason

    @property
    def message(self) -> str:
        return "; ".join(self.failed or self.pending) or "all references resolved"


def check_dependencies(resource: Resource, lookup: Lookup) -> DependencyCheck:
    """Check every reference of `resource` against the resources `lookup` finds.

    A resource on a reference cycle can never start: that is a failure, not a wait.
    """
    check = DependencyCheck()
    cycle = find_cycle(key(resource), lambda node: _edges(resource, lookup, node))
    if cycle:
        # Name the field that starts the cycle, so the user knows which reference to change.
        first = next(ref for ref in references(resource) if (ref.kind, ref.name) == cycle[1])
        path = " -> ".join(f"{k}/{n}" for k, n in cycle)
        check.note(DEPENDENCY_CYCLE, f"reference cycle through {first}: {path}", failed=True)
        return check
    for ref in references(resource):
        _check_one(ref, lookup(ref.kind, ref.name), check)
    return check


def _edges(resource: Resource, lookup: Lookup, node: Node) -> list[Node]:
    found = resource if node == key(resource) else lookup(*node)
    return [(ref.kind, ref.name) for ref in references(found)] if found is not None else []


def _check_one(ref: Reference, dep: Resource | None, check: DependencyCheck) -> None:
    if dep is None:
        check.note(DEPENDENCY_NOT_FOUND, f"{ref} does not exist", failed=False)
        return
    phase = _phase(dep)
    if phase == Phase.FAILED:
        message = dep.status.message if dep.status else ""
        check.note(DEPENDENCY_FAILED, f"{ref} failed" + (f": {message}" if message else ""), failed=True)
    elif phase != Phase.SUCCEEDED:
        check.note(DEPENDENCY_NOT_SUCCEEDED, f"{ref} has not succeeded yet", failed=False)
    elif (artifact := artifact_of(dep)) is None:
        check.note(DEPENDENCY_HAS_NO_ARTIFACT, f"{ref} succeeded without reporting its output artifact", failed=True)
    else:
        check.resolved[ref.field] = artifact


def resolve(resource: Resource, resolved: dict[str, Resolved]) -> Resource:
    """The resource with every `from` replaced by the URI it resolved to (the component's config)."""
    body = resource.dump()
    body.pop("status", None)
    for path, artifact in resolved.items():
        node = body
        for part in path.split(".")[:-1]:
            node = node[part]
        source = node[path.split(".")[-1]]
        source.pop("from", None)
        source["uri"] = artifact.uri
    try:
        return type(resource).model_validate(body)
    except ValidationError as e:
        where = f"{resource.kind} {resource.metadata.name}"
        raise InvalidResource(f"{where} with its references resolved", field_errors(e)) from None


def dependents(resources: Iterable[Resource], kind: str, name: str) -> list[Resource]:
    """The resources that reference `kind/name` directly."""
    return [r for r in resources if any(ref.kind == kind and ref.name == name for ref in references(r))]


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: bool | str,
    reason: str,
    message: str = "",
    generation: int | None = None,
    at: str | None = None,
) -> list[Condition]:
    """Conditions with `type_` set (KEP-1623): `lastTransitionTime` moves only when `status` changes."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = next((c for c in conditions if c.type == type_), None)
    changed = old is None or old.status != value
    new = Condition(
        type=type_,
        status=value,
        reason=reason,
        message=message,
        last_transition_time=(at or now()) if changed else old.last_transition_time,
        observed_generation=generation,
    )
    return [new if c.type == type_ else c for c in conditions] if old else [*conditions, new]


def is_terminal(resource: Resource) -> bool:
    """Whether the resource's current generation has finished (succeeded or failed)."""
    status = resource.status
    return (
        status is not None
        and Phase(status.phase) in TERMINAL_PHASES
        and status.observed_generation == resource.metadata.generation
    )

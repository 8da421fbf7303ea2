"""Dependency logic shared by the operator and `metaspec local`: graph, cycles, checks, resolution."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from metaspec import pipeline
from metaspec.api import Condition, InvalidResource, Resource, parse_resource

REPO = Path(__file__).resolve().parents[2]
DOCS = list(yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()))


def resources(**statuses: dict) -> dict[tuple[str, str], Resource]:
    out = {}
    for doc in copy.deepcopy(DOCS):
        doc["status"] = statuses.get(doc["metadata"]["name"].replace("-", "_"))
        if doc["status"] is None:
            doc.pop("status")
        resource = parse_resource(doc)
        out[pipeline.key(resource)] = resource
    return out


def lookup(found: dict[tuple[str, str], Resource]) -> pipeline.Lookup:
    return lambda kind, name: found.get((kind, name))


def test_references_and_topological_order():
    found = resources()
    spec = found[("SpecServe", "llama-spec")]
    assert [(r.field, r.kind, r.name) for r in pipeline.references(spec)] == [
        ("spec.target", "TrainingRun", "llama-anil"),
        ("spec.draft", "TrainingRun", "llama-draft"),
    ]
    order = [r.metadata.name for r in pipeline.topological_order(reversed(list(found.values())))]
    assert order.index("llama-anil") < order.index("llama-teacher") < order.index("llama-draft")
    assert order[-1] == "llama-spec"


def test_waiting_then_resolved_with_digest():
    check = pipeline.check_dependencies(resources()[("TeacherGeneration", "llama-teacher")], lookup(resources()))
    assert not check.ready and not check.failed and check.reason == pipeline.DEPENDENCY_NOT_SUCCEEDED

    done = {"phase": "Succeeded", "artifacts": {"model": "s3://art/anil/merged", "manifestDigest": "abc"}}
    found = resources(llama_anil=done)
    check = pipeline.check_dependencies(found[("SpecServe", "llama-spec")], lookup(found))
    assert not check.ready and list(check.resolved) == ["spec.target"]
    assert check.resolved["spec.target"] == pipeline.Resolved("s3://art/anil/merged", "abc")


def test_failed_missing_and_artifactless_dependencies():
    found = resources(llama_anil={"phase": "Failed", "message": "bad data"})
    check = pipeline.check_dependencies(found[("TeacherGeneration", "llama-teacher")], lookup(found))
    assert check.failed and check.reason == pipeline.DEPENDENCY_FAILED and "bad data" in check.message

    check = pipeline.check_dependencies(found[("TeacherGeneration", "llama-teacher")], lambda kind, name: None)
    assert check.pending and check.reason == pipeline.DEPENDENCY_NOT_FOUND

    found = resources(llama_anil={"phase": "Succeeded"})
    check = pipeline.check_dependencies(found[("TeacherGeneration", "llama-teacher")], lookup(found))
    assert check.reason == pipeline.DEPENDENCY_HAS_NO_ARTIFACT and check.failed


def test_cycle_is_refused():
    docs = copy.deepcopy(DOCS)
    docs[0]["spec"]["dataset"] = {"from": {"teacherGeneration": "llama-teacher"}}  # anil <- teacher <- anil
    found = {pipeline.key(r): r for r in map(parse_resource, docs)}
    check = pipeline.check_dependencies(found[("TrainingRun", "llama-anil")], lookup(found))
    assert check.reason == pipeline.DEPENDENCY_CYCLE and "TeacherGeneration/llama-teacher" in check.message
    with pytest.raises(ValueError, match="reference cycle"):
        pipeline.topological_order(found.values())


def test_resolve_replaces_from_with_uri_and_validates():
    teacher = resources()[("TeacherGeneration", "llama-teacher")]
    resolved = pipeline.resolve(teacher, {"spec.model": pipeline.Resolved("s3://art/anil/merged")})
    assert resolved.spec.model.uri == "s3://art/anil/merged" and resolved.spec.model.from_ is None
    assert resolved.status is None and resolved.metadata == teacher.metadata
    with pytest.raises(InvalidResource, match=r"spec\.model"):
        pipeline.resolve(teacher, {"spec.model": pipeline.Resolved("ftp://nope")})


def test_condition_transition_time_moves_only_on_status_change():
    conditions = pipeline.set_condition([], "Ready", False, "Loading", at="2026-01-01T00:00:00Z")
    same = pipeline.set_condition(conditions, "Ready", False, "StillLoading", "m", at="2026-01-02T00:00:00Z")
    assert same[0].last_transition_time == "2026-01-01T00:00:00Z" and same[0].reason == "StillLoading"
    flipped = pipeline.set_condition(same, "Ready", True, "Loaded", at="2026-01-03T00:00:00Z")
    assert flipped[0].last_transition_time == "2026-01-03T00:00:00Z" and len(flipped) == 1
    assert isinstance(flipped[0], Condition)


def test_terminal_only_for_the_observed_generation():
    run = resources(llama_anil={"phase": "Succeeded", "observedGeneration": 1})[("TrainingRun", "llama-anil")]
    assert pipeline.is_terminal(run)
    newer = run.model_copy(update={"metadata": run.metadata.model_copy(update={"generation": 2})})
    assert not pipeline.is_terminal(newer)

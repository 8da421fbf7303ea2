"""Argo CD's health check for our CRDs, run by a real Lua 5.1 interpreter (`lupa`; Argo CD's gopher-lua is 5.1).

The sample resources are built with the `metaspec.api` models, so the Lua reads the field names the
operator actually writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from metaspec.api import Condition, Phase
from metaspec.api.generation import TeacherGenerationStatus
from metaspec.api.serving import SpecServeStatus
from metaspec.api.training import TrainingRunStatus

REPO = Path(__file__).resolve().parents[3]
SCRIPT = (REPO / "deploy" / "argocd" / "health.lua").read_text()
NOW = "2026-11-25T00:00:00Z"


def health(resource: dict[str, Any]) -> tuple[str, str]:
    """Run the script like Argo CD does: `obj` is the resource, the chunk returns {status, message}."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(resource, recursive=True)
    result = lua.execute(SCRIPT)
    return result["status"], result["message"]


def cond(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason=reason, message=message, last_transition_time=NOW)


def resource(kind: str, status: Any = None, generation: int = 1) -> dict[str, Any]:
    obj = {"apiVersion": "metaspec.dev/v1alpha1", "kind": kind, "metadata": {"name": "x", "generation": generation}}
    if status is not None:
        obj["status"] = status.dump()
    return obj


def test_no_status_yet_is_progressing() -> None:
    assert health(resource("TrainingRun"))[0] == "Progressing"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (TrainingRunStatus(phase=Phase.PENDING, observed_generation=1), "Progressing"),
        (TrainingRunStatus(phase=Phase.RUNNING, observed_generation=1, message="step 10/100"), "Progressing"),
        (TrainingRunStatus(phase=Phase.SUCCEEDED, observed_generation=1), "Healthy"),
        (TrainingRunStatus(phase=Phase.FAILED, observed_generation=1, message="merge degraded ppl"), "Degraded"),
        (TrainingRunStatus(phase=Phase.SUSPENDED, observed_generation=1), "Suspended"),
    ],
)
def test_training_run_phases(status: TrainingRunStatus, expected: str) -> None:
    assert health(resource("TrainingRun", status))[0] == expected


def test_failure_message_is_shown() -> None:
    status = TrainingRunStatus(phase=Phase.FAILED, observed_generation=1, message="quantized base model refused")
    assert health(resource("TrainingRun", status)) == ("Degraded", "quantized base model refused")


def test_waiting_names_the_dependency() -> None:
    waiting = cond("DependenciesReady", "False", "DependencyNotReady", "TrainingRun llama-anil is Running")
    status = TeacherGenerationStatus(phase=Phase.WAITING, observed_generation=1, conditions=[waiting])
    assert health(resource("TeacherGeneration", status)) == (
        "Progressing",
        "DependencyNotReady: TrainingRun llama-anil is Running",
    )


def test_failed_dependency_is_degraded() -> None:
    failed = cond("DependenciesReady", "False", "DependencyFailed", "TrainingRun llama-anil failed")
    status = TeacherGenerationStatus(phase=Phase.FAILED, observed_generation=1, message="dependency failed")
    status.conditions = [failed]
    assert health(resource("TeacherGeneration", status))[0] == "Degraded"


def test_quality_gate_failure_is_degraded_even_when_pods_succeeded() -> None:
    gate = cond("QualityCheckPassed", "False", "QualityCheckFailed", "natural-stop rate 0.71 < 0.9")
    status = TeacherGenerationStatus(phase=Phase.SUCCEEDED, observed_generation=1, conditions=[gate])
    assert health(resource("TeacherGeneration", status)) == (
        "Degraded",
        "QualityCheckFailed: natural-stop rate 0.71 < 0.9",
    )
    status.conditions = [cond("QualityCheckPassed", "True", "QualityCheckPassed")]
    assert health(resource("TeacherGeneration", status))[0] == "Healthy"


def test_spec_serve_readiness() -> None:
    ready = SpecServeStatus(
        phase=Phase.READY, observed_generation=2, ready_replicas=2, conditions=[cond("Ready", "True", "Ready")]
    )
    assert health(resource("SpecServe", ready, generation=2))[0] == "Healthy"
    rolling = SpecServeStatus(
        phase=Phase.READY,
        observed_generation=2,
        conditions=[cond("Ready", "False", "RolloutInProgress", "1/2 replicas ready")],
    )
    assert health(resource("SpecServe", rolling, generation=2)) == (
        "Progressing",
        "RolloutInProgress: 1/2 replicas ready",
    )


def test_a_new_generation_not_yet_observed_is_progressing() -> None:
    """Pointing a SpecServe at a new model bumps its generation; old Ready status must not read as Healthy."""
    stale = SpecServeStatus(phase=Phase.READY, observed_generation=1, conditions=[cond("Ready", "True", "Ready")])
    status, message = health(resource("SpecServe", stale, generation=2))
    assert status == "Progressing" and "generation 2" in message


def test_argocd_cm_patch_registers_the_script_for_each_kind() -> None:
    patch = yaml.safe_load((REPO / "deploy" / "argocd" / "argocd-cm-patch.yaml").read_text())
    for kind in ("TrainingRun", "TeacherGeneration", "SpecServe"):
        assert patch["data"][f"resource.customizations.health.metaspec.dev_{kind}"] == SCRIPT

"""Shared by the trainer's integration tests: a small JSONL dataset and TrainingRun configs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from metaspec.api import API_VERSION, TrainingRun
from metaspec.records import DOMAINS


def write_dataset(path: Path, per_domain: int = 8, tag: str = "train", offset: int = 0) -> Path:
    """Records in every domain, a quarter of them hard (longer answers), one answer style; sets with
    different `offset`s share no input."""
    lines = []
    for d, domain in enumerate(DOMAINS):
        for i in range(offset, offset + per_domain):
            a, b = 3 + 7 * i + d, 11 + 5 * i + 2 * d
            hard = i % 4 == 3
            output = f"Answer: {a + b}\nWhy: {a} plus {b} is {a + b}."
            if hard:
                output += f"\nSteps:\n1. Take {a}.\n2. Add {b}.\n3. Get {a + b}."
            record = {
                "id": f"{tag}-{domain}-{i}",
                "domain": domain,
                "difficulty": "hard" if hard else "easy",
                "input": f"({domain}) What is {a} plus {b}?",
                "output": output,
            }
            lines.append(json.dumps(record) + "\n")
    path.write_text("".join(lines))
    return path


def training_run(spec: dict[str, Any], name: str = "test-run") -> TrainingRun:
    return TrainingRun.model_validate(
        {"apiVersion": API_VERSION, "kind": "TrainingRun", "metadata": {"name": name}, "spec": spec}
    )


def tiny_anil_spec(model: Path, train: Path, evaluation: Path, output: str, **optimization: Any) -> dict[str, Any]:
    return {
        "method": "anil-maml",
        "baseModel": {"uri": str(model)},
        "dataset": {"uri": str(train)},
        "evaluation": {"uri": str(evaluation), "batchSize": 8},
        "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj", "down_proj"]},
        # first order: these tests are about the pipeline; the second-order math has its own tests
        "anil": {"supportSize": 2, "querySize": 2, "innerSteps": 2, "innerLr": 0.5, "firstOrder": True},
        "optimization": {
            "maxSteps": 6,
            "maxSeqLength": 48,
            "outerLr": 5e-3,
            "evalSteps": 2,
            "checkpointSteps": 2,
            "warmupRatio": 0.2,
            **optimization,
        },
        "output": {"uri": output},
    }


def tiny_draft_spec(model: Path, work: Path, draft: dict[str, Any], per_domain: int = 4, **optimization: Any) -> dict:
    """A `causal-lm` run of `draft` over the tiny target, its data written under `work`, output in `work/out`."""
    return {
        "method": "causal-lm",
        "baseModel": {"uri": str(model)},
        "dataset": {"uri": str(write_dataset(work / "train.jsonl", per_domain))},
        "evaluation": {"uri": str(write_dataset(work / "eval.jsonl", 1, tag="eval", offset=100))},
        "draft": draft,
        "optimization": {
            "maxSteps": 6,
            "batchSize": 4,
            "maxSeqLength": 48,
            "outerLr": 3e-3,
            "evalSteps": 3,
            **optimization,
        },
        "output": {"uri": str(work / "out")},
    }

"""Helpers for generator integration tests: prompt files and TeacherGeneration configs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from metaspec.api import TeacherGeneration

TOPICS = ["rivers", "prime numbers", "photosynthesis", "sorting lists", "the moon", "tea", "bridges", "rain"]


@pytest.fixture(autouse=True, scope="module")
def single_threaded(one_thread: None) -> None:
    """Every generator test decodes with one intra-op thread (`one_thread`)."""


@pytest.fixture
def write_prompts() -> Callable[[Path, int], list[str]]:
    """Writes a prompt JSONL of `count` records and returns their IDs (the tiny random model does not
    care what they ask)."""
    return _write_prompts


def _write_prompts(path: Path, count: int) -> list[str]:
    ids = [f"p{i:03d}" for i in range(count)]
    lines = [
        {
            "id": i,
            "input": f"Tell me one fact about {TOPICS[n % len(TOPICS)]}.",
            "domain": "science",
            "difficulty": "easy",
        }
        for n, i in enumerate(ids)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return ids


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Path]:
    """Write a validated TeacherGeneration config file; keyword arguments are spec fields (camelCase)."""

    def make(model: Path | str, dataset: Path | str, output: str, **spec: Any) -> Path:
        body = {
            "apiVersion": "metaspec.dev/v1alpha1",
            "kind": "TeacherGeneration",
            "metadata": {"name": "teacher"},
            "spec": {
                "model": {"uri": str(model)},
                "dataset": {"uri": str(dataset)},
                "output": {"uri": output},
                "engine": "transformers",
                "resources": {"gpus": 0},
                **spec,
            },
        }
        TeacherGeneration.model_validate(body)
        path = tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}.json"
        path.write_text(json.dumps(body))
        return path

    return make

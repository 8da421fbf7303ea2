"""Fixtures shared by the reliability tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pipeline_yaml() -> list[dict]:
    """The four resources of examples/pipeline.yaml."""
    return list(yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()))


@pytest.fixture(scope="module")
def emulator() -> Iterator[Cluster]:
    """An emulated API server; tests start the real `metaspec operator` process against it."""
    cluster = Cluster().start()
    yield cluster
    cluster.close()

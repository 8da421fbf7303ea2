"""The real kopf operator against kmock's Kubernetes API emulator over HTTP, shared by this directory."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from metaspec.local.serving import free_port
from metaspec_testing.emulator import Cluster

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One emulated API server and one operator (all namespaces, its progress endpoint on a free
    port); each test uses its own namespace.

    Live progress is written at most every second per run and 50 times a second in all (the chart's
    defaults are 20 s and 10/s): a test sees a report land within seconds, and 200 reporting runs
    are still held back by the limit over all runs.
    """
    port = free_port()
    cluster = Cluster().start()
    url = f"http://127.0.0.1:{port}"
    cluster.start_operator(progress_port=port, progress_url=url, progress_seconds=1.0, progress_writes_per_second=50.0)
    yield cluster
    cluster.close()


@pytest.fixture
def namespace(request: pytest.FixtureRequest) -> str:
    return request.node.name.replace("_", "-").replace("[", "-").replace("]", "")[:50].strip("-").lower()


@pytest.fixture(scope="session")
def pipeline_docs() -> list[dict]:
    return list(yaml.safe_load_all((REPO / "examples" / "pipeline.yaml").read_text()))


@pytest.fixture
def docs(pipeline_docs: list[dict]) -> list[dict]:
    return copy.deepcopy(pipeline_docs)

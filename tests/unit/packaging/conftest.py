"""Fixtures of the packaging tests: everything rendered once per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from rendered import everything


@pytest.fixture(scope="session")
def rendered_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `manifests/<source>.yaml` for every rendering (chart cases, Kustomize, operator)."""
    folder = tmp_path_factory.mktemp("rendered")
    everything(folder)
    return folder


@pytest.fixture(scope="session")
def rendered(rendered_folder: Path) -> dict[str, list[dict[str, Any]]]:
    """{source: objects} as written to `rendered_folder`."""
    from chart_objects import parse

    return {p.stem: parse(p.read_text()) for p in sorted((rendered_folder / "manifests").glob("*.yaml"))}

"""Helpers shared by the reliability tests (a plain module: conftest names are ambiguous to import)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def load(path: Path) -> Any:
    """A module by path, once per session: a benchmark whose trials the tests share, or the trainer
    tests' dataset helpers."""
    if path.stem not in sys.modules:
        spec = importlib.util.spec_from_file_location(path.stem, path)
        sys.modules[path.stem] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[path.stem])
    return sys.modules[path.stem]

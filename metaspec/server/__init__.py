"""The speculative router (`metaspec serve`): the decoding engine (`engine/`, pure torch) behind an
OpenAI-compatible HTTP layer (`protocol` models, `serving` logic, thin `app` routes, `metrics`, `limits`).

The HTTP names are imported lazily so that `metaspec.server.engine` can be used without FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ApiError", "ServerSettings", "Serving", "create_app"]
_HOME = {"ApiError": "serving", "ServerSettings": "serving", "Serving": "serving", "create_app": "app"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)

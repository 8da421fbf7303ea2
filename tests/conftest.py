"""Session-scoped fixtures: a real S3 server, the real small instruct model, tiny random models."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from metaspec.artifacts import S3Store, s3_environment, upload_dir
from metaspec.local.bundled import bundled_model_dir
from metaspec.local.s3server import EmbeddedS3
from metaspec.local.vllm import INSTALL_HINT, vllm_env, vllm_python
from metaspec.runtime import scratch_dir
from metaspec_testing.models import random_llama

REPO = Path(__file__).resolve().parent.parent
TEST_BUCKET = "metaspec-test"


def _gpu_absent() -> str | None:
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    return None if torch.cuda.is_available() else "needs a CUDA GPU; none is visible"


REQUIREMENTS = {
    "gpu": _gpu_absent,
    "cluster": lambda: None if os.environ.get("KUBECONFIG") else "needs a real cluster: set KUBECONFIG",
    "vllm": lambda: None if vllm_python() else f"needs vLLM. {INSTALL_HINT}",
}


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs a worker per core), each worker and the processes it starts
    get an equal share of the cores: torch's and OpenMP's default of one thread per core in every
    worker would oversubscribe the machine, and spinning OpenMP threads then slow everything down."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = max(1, len(os.sched_getaffinity(0)) // int(workers))
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import torch

        torch.set_num_threads(threads)


#: The modules that take a minute or more on a 2-core machine, longest first. `make test` hands whole
#: modules to its workers in collection order (`--dist loadfile --no-loadscope-reorder`): these start
#: first, so that no worker is left running a long module alone at the end. (pytest-xdist's own order,
#: by number of tests, would start them last.) A module missing here only runs later, never less.
LONGEST_FIRST = (
    "integration/local/test_local_run.py",
    "reliability/test_job_faults.py",
    "integration/generator/test_gen_vllm.py",
    "integration/server/engine/test_greedy_exactness.py",
    "integration/trainer/test_trainer_smollm2.py",
    "integration/server/test_server_vllm.py",
    "integration/server/test_server_vllm_eagle3.py",
    "unit/server/engine/test_speculative_sampling.py",
    "reliability/test_server_abuse.py",
    "unit/bench/test_bench_smoke.py",
    "integration/generator/test_gen_cli.py",
    "integration/generator/test_gen_smollm2.py",
    "reliability/test_operator_faults.py",
    "unit/server/engine/test_batch.py",
    "integration/trainer/test_trainer_cli.py",
    "integration/server/test_server_cli.py",
    "reliability/test_security.py",
    "unit/packaging/test_scanners.py",
    "unit/test_builtin.py",
)


def _start_rank(item: pytest.Item) -> int:
    module = item.nodeid.split("::")[0].removeprefix("tests/")
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reasons = {name: check() for name, check in REQUIREMENTS.items()}
    for item in items:
        for name, reason in reasons.items():
            if reason and item.get_closest_marker(name):
                item.add_marker(pytest.mark.skip(reason=reason))
    items.sort(key=_start_rank)  # stable: the order within a module and among the rest stays


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedS3]:
    """A real S3 server (SeaweedFS) with enforced credentials; the AWS_* environment points at it."""
    server = EmbeddedS3(tmp_path_factory.mktemp("s3")).start()
    with s3_environment(server.env):
        S3Store().ensure_bucket(TEST_BUCKET)
        yield server
    server.stop()


@pytest.fixture
def s3_prefix(s3: EmbeddedS3, request: pytest.FixtureRequest) -> str:
    """A fresh `s3://` prefix per test."""
    return f"s3://{TEST_BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a shared 2-core machine, OpenMP threads waiting for each other make
    small-model decoding ten times slower than one thread (tiny models are pure launch overhead)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def inductor_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A kernel cache of the test's own for torch.compile's inductor, with its C++ precompiled header
    off: a cold shared cache once handed the compiler a truncated header (inductor's parallel compile
    workers racing to build it), which fails the build, not the code under test."""
    from torch._inductor import config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    with inductor_config.patch(cpp_cache_precompile_headers=False):
        yield tmp_path / "inductor"


@pytest.fixture(scope="session")
def smollm2() -> Path:
    """SmolLM2-135M-Instruct as float32 safetensors with tokenizer and manifest (converted once, cached)."""
    return bundled_model_dir()


@pytest.fixture(scope="session")
def vllm_process_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment of a process in the vLLM environment (`make vllm-venv`): this checkout's metaspec
    first on the path, offline, vLLM's caches in metaspec's (what vLLM learns about a model there saves
    a start its minute of inspection), temporary files in the test's folders, one OpenMP thread and
    one process (a shared 2-core machine), no usage reports."""
    work = tmp_path_factory.mktemp("vllm")
    return {
        **os.environ,
        **vllm_env(scratch_dir()),
        "TMPDIR": str(work),
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(work / "hf"),
        "OMP_NUM_THREADS": "1",
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # vLLM's engine in the calling process: each process it spawns otherwise imports vLLM again
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }


@pytest.fixture(scope="session")
def tiny_llama(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer Llama with SmolLM2's tokenizer and chat template (a file:// artifact)."""
    return make_tiny_llama(smollm2, tmp_path_factory.mktemp("tiny-llama"), num_layers=2, seed=0)


@pytest.fixture(scope="session")
def tiny_draft_llama(smollm2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 1-layer Llama with the same tokenizer: a draft for `tiny_llama`."""
    return make_tiny_llama(smollm2, tmp_path_factory.mktemp("tiny-draft-llama"), num_layers=1, seed=1)


def make_tiny_llama(tokenizer_source: Path, dest: Path, num_layers: int = 2, seed: int = 0) -> Path:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
    model = random_llama(
        seed,
        len(tokenizer),
        num_layers,
        hidden=64,
        heads=4,
        positions=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    shutil.rmtree(dest, ignore_errors=True)
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    upload_dir(dest, dest, metadata={"tiny": True})
    return dest

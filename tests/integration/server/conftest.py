"""One running router per session: uvicorn in a thread on a free port, in front of the engine."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from metaspec.api.serving import ServeSampling, SpecServeSpec
from metaspec.server.app import create_app
from metaspec.server.engine import SpeculativeEngine
from metaspec.server.serving import ServerSettings, Serving
from metaspec_testing.models import cut_draft
from metaspec_testing.servers import serve_in_thread

MODEL = "tiny-spec"
#: Small limits so the limit tests are cheap; one slot and one waiter so the 429 test needs 3 requests.
SAMPLING = ServeSampling(max_tokens=16, max_tokens_limit=600, max_prompt_tokens=200, max_concurrency=1, max_queue=1)


@dataclass
class RunningServer:
    url: str
    serving: Serving
    model: str = MODEL

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    @contextlib.contextmanager
    def beside(self, settings: ServerSettings) -> Iterator[str]:
        """Another app with other settings on this server's engine, for as long as the block lasts; yields
        its URL. An engine reports its decoding steps to one server's metrics (the last attached): this
        server gets them back afterwards, or its step counters would stay silent for later tests."""
        engine = self.serving.engine
        assert engine is not None
        try:
            with serve_in_thread(create_app(engine, settings)) as url:
                yield url
        finally:
            self.serving.attach(engine)

    def wait_idle(self, timeout: float = 30) -> None:
        """Until no request decodes or waits (cancellations finish asynchronously)."""
        deadline = time.monotonic() + timeout
        while self.serving.admission.in_flight or self.serving.admission.waiting:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server still busy after {timeout}s: {self.serving.admission.in_flight} in flight, "
                    f"{self.serving.admission.waiting} waiting"
                )
            time.sleep(0.02)


def _tiny_spec(target: Path, draft: Path, policy: str = "always") -> SpecServeSpec:
    return SpecServeSpec.model_validate(
        {"target": {"uri": str(target)}, "draft": {"uri": str(draft)}, "routing": {"policy": policy}}
    )


@pytest.fixture(scope="session")
def tiny_spec() -> Callable[..., SpecServeSpec]:
    """SpecServe spec of a target/draft pair given as local artifacts."""
    return _tiny_spec


@pytest.fixture(scope="session")
def tiny_llama_draft(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny target's first layer, embeddings and head: a derived draft sharing its tokenizer."""
    return cut_draft(tiny_llama, tmp_path_factory.mktemp("tiny-draft"), num_layers=1)


@pytest.fixture(scope="session")
def router_engine(
    tiny_llama: Path, tiny_llama_draft: Path, tmp_path_factory: pytest.TempPathFactory
) -> SpeculativeEngine:
    """The real speculative engine on the tiny pair; `always` so every request takes the speculative path."""
    engine = SpeculativeEngine.from_spec(
        _tiny_spec(tiny_llama, tiny_llama_draft), MODEL, tmp_path_factory.mktemp("cache"), device="cpu"
    )
    engine.load()
    return engine


@pytest.fixture(scope="session")
def router(router_engine: SpeculativeEngine) -> Iterator[RunningServer]:
    app = create_app(router_engine, ServerSettings(model_name=MODEL, sampling=SAMPLING))
    with serve_in_thread(app) as url:
        yield RunningServer(url, app.state.serving)

"""One running router per session: uvicorn in a thread on a free port, in front of the engine."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn

from metaspec.api.serving import ServeSampling, SpecServeSpec
from metaspec.server.app import create_app
from metaspec.server.engine import SpeculativeEngine, derive_draft
from metaspec.server.serving import ServerSettings, Serving

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


def serve_in_thread(app, host: str = "127.0.0.1") -> tuple[uvicorn.Server, threading.Thread, str]:
    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://{host}:{port}"


@pytest.fixture(scope="session")
def tiny_llama_draft(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny target's first layer, embeddings and head: a derived draft sharing its tokenizer."""
    return derive_draft(tiny_llama, tmp_path_factory.mktemp("tiny-draft"), num_layers=1)


def tiny_spec(target: Path, draft: Path, policy: str = "always") -> SpecServeSpec:
    return SpecServeSpec.model_validate(
        {"target": {"uri": str(target)}, "draft": {"uri": str(draft)}, "routing": {"policy": policy}}
    )


@pytest.fixture(scope="session")
def router_engine(
    tiny_llama: Path, tiny_llama_draft: Path, tmp_path_factory: pytest.TempPathFactory
) -> SpeculativeEngine:
    """The real speculative engine on the tiny pair; `always` so every request takes the speculative path."""
    engine = SpeculativeEngine.from_spec(
        tiny_spec(tiny_llama, tiny_llama_draft), MODEL, tmp_path_factory.mktemp("cache"), device="cpu"
    )
    engine.load()
    return engine


@pytest.fixture(scope="session")
def router(router_engine: SpeculativeEngine) -> Iterator[RunningServer]:
    app = create_app(router_engine, ServerSettings(model_name=MODEL, sampling=SAMPLING))
    uv, thread, url = serve_in_thread(app)
    yield RunningServer(url, app.state.serving)
    uv.should_exit = True
    thread.join(timeout=10)

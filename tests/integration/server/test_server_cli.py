"""`metaspec serve` as the container runs it: a subprocess with a SpecServe config file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from metaspec.local.serving import free_port
from metaspec.runtime import EXIT_PERMANENT
from metaspec_testing.models import cut_draft


def write_config(path: Path, spec: dict) -> Path:
    resource = {"apiVersion": "metaspec.dev/v1alpha1", "kind": "SpecServe", "metadata": {"name": "smol"}, "spec": spec}
    path.write_text(json.dumps(resource))
    return path


def start(config: Path, port: int, tmp_path: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "METASPEC_TERMINATION_MESSAGE_PATH": str(tmp_path / "termination"),
        "METASPEC_LOG_FORMAT": "text",
    }
    command = [sys.executable, "-m", "metaspec.cli", "serve", "--config", str(config), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--model-cache", str(tmp_path / "cache"), "--device", "cpu"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_until(process: subprocess.Popen, url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{process.stdout.read()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout}s")


@pytest.fixture
def served(tmp_path: Path, smollm2: Path) -> Iterator[str]:
    """SmolLM2-135M-Instruct with a 4-layer draft cut from it, served by the real CLI."""
    draft = cut_draft(smollm2, tmp_path / "draft", num_layers=4)
    spec = {
        "target": {"uri": str(smollm2)},
        "draft": {"uri": str(draft)},
        "routing": {"policy": "first-token", "confidenceThreshold": 0.5},
        "sampling": {"maxTokens": 24},
    }
    port = free_port()
    process = start(write_config(tmp_path / "config.json", spec), port, tmp_path)
    try:
        wait_until(process, f"http://127.0.0.1:{port}/healthz")
        wait_until(process, f"http://127.0.0.1:{port}/readyz")
        yield f"http://127.0.0.1:{port}"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_real_model_answers_through_the_cli(served: str) -> None:
    client = openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list()] == ["smol"]
    response = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
    )
    assert "Paris" in response.choices[0].message.content
    assert response.choices[0].finish_reason == "stop"  # the answer ends with <|im_end|> well within 24 tokens
    info = response.model_extra["metaspec"]
    assert 0 < info["first_token_confidence"] <= 1
    assert info["route"] == ("speculative" if info["first_token_confidence"] >= 0.5 else "target-only")


def test_a_model_that_cannot_load_stops_the_server_with_a_permanent_error(tmp_path: Path) -> None:
    """Liveness comes up before the load; the failed load then ends the process with the runtime's code."""
    config = write_config(tmp_path / "config.json", {"target": {"uri": str(tmp_path / "no-such-model")}})
    process = start(config, free_port(), tmp_path)
    try:
        assert process.wait(timeout=120) == EXIT_PERMANENT, process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    summary = json.loads((tmp_path / "termination").read_text())
    assert summary["phase"] == "Failed" and "no-such-model" in summary["message"]

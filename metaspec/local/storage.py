"""Artifact storage of a local run: the embedded S3 server (or any S3 given by endpoint), its buckets,
and the bundled model seeded into it.

The embedded server keeps its data and its credentials under the state directory, so artifacts and
finished stages survive between runs. Components find it the way they find any S3: through the
standard `AWS_*` environment variables, which is all a stage's environment needs.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from metaspec.api import Resource
from metaspec.artifacts import S3Store, Uri, is_complete, s3_environment, upload_dir
from metaspec.local.s3server import EmbeddedS3
from metaspec.pipeline import uri_fields

#: Where `examples/pipeline-local.yaml` finds SmolLM2-135M-Instruct. The runner uploads the bundled
#: copy (`metaspec.local.bundled`) here before the first stage when a resource references it and it is
#: not there yet: pipeline YAML stays plain S3 URIs, as it would be in a cluster.
BUNDLED_MODEL_URI = "s3://metaspec/models/smollm2-135m-instruct"

_AWS_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")


@dataclass
class Storage:
    """Where a local run keeps its artifacts."""

    env: dict[str, str]  # AWS_* variables for every stage
    endpoint: str
    server: EmbeddedS3 | None  # None: an external S3 (`--s3-endpoint`)


def credentials(s3_dir: Path) -> tuple[str, str]:
    """The embedded server's key pair, created once and kept (mode 0600) so the data stays readable."""
    path = s3_dir / "credentials.json"
    if path.is_file():
        body = json.loads(path.read_text())
        return body["accessKeyId"], body["secretAccessKey"]
    s3_dir.mkdir(parents=True, exist_ok=True)
    access, secret = "metaspec-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"accessKeyId": access, "secretAccessKey": secret}, f)
    return access, secret


@contextmanager
def open_storage(state_dir: Path, endpoint: str | None = None) -> Iterator[Storage]:
    """Start the embedded S3 server under `state_dir/s3` (or use `endpoint`) and point this process's
    `AWS_*` environment at it for the duration."""
    server = None
    if endpoint:
        env = {key: os.environ[key] for key in _AWS_KEYS if key in os.environ}
        env["AWS_ENDPOINT_URL"] = endpoint
    else:
        access, secret = credentials(state_dir / "s3")
        server = EmbeddedS3(state_dir / "s3" / "data", access, secret, die_with_parent=True).start()
        env = server.env
    try:
        with s3_environment(env):
            yield Storage(env, env["AWS_ENDPOINT_URL"], server)
    finally:
        if server is not None:
            server.stop()


def s3_uris(spec: dict[str, Any]) -> Iterator[str]:
    """Every `s3://` URI field of a spec (wire form)."""
    return (uri for uri in uri_fields(spec) if uri.startswith("s3://"))


def ensure_buckets(resources: list[Resource]) -> None:
    """Create the buckets the pipeline names (a fresh embedded server has none)."""
    buckets = sorted({Uri.parse(uri).bucket for r in resources for uri in s3_uris(r.spec.dump())})
    store = S3Store()
    for bucket in buckets:
        store.ensure_bucket(bucket)


def seed_bundled_model(resources: list[Resource], say: Any = print) -> None:
    """Upload the bundled SmolLM2-135M-Instruct to BUNDLED_MODEL_URI if the pipeline uses it."""
    used = any(uri.rstrip("/") == BUNDLED_MODEL_URI for r in resources for uri in s3_uris(r.spec.dump()))
    if not used or is_complete(BUNDLED_MODEL_URI):
        return
    from metaspec.local.bundled import bundled_model_dir

    say(f"uploading the bundled SmolLM2-135M-Instruct to {BUNDLED_MODEL_URI}")
    upload_dir(bundled_model_dir(), BUNDLED_MODEL_URI, metadata={"source": "metaspec.local.bundled"})

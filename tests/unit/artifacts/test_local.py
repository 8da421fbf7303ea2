"""Artifacts on the local filesystem: URIs, manifests, in-place verification."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaspec.artifacts import ChecksumMismatch, IncompleteArtifact, Uri, materialize, upload_dir


@pytest.mark.parametrize(
    "text,scheme,bucket,path",
    [
        ("s3://bucket/a/b", "s3", "bucket", "a/b"),
        ("s3://bucket", "s3", "bucket", ""),
        ("file:///tmp/x", "file", "", "/tmp/x"),
        ("/tmp/x", "file", "", "/tmp/x"),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "hf", "", "HuggingFaceTB/SmolLM2-135M-Instruct"),
    ],
)
def test_uri_parse(text: str, scheme: str, bucket: str, path: str) -> None:
    uri = Uri.parse(text)
    assert (uri.scheme, uri.bucket, uri.path) == (scheme, bucket, path)


def test_uri_join_and_str() -> None:
    assert str(Uri.parse("s3://b/x/").join("merged", "config.json")) == "s3://b/x/merged/config.json"
    assert str(Uri.parse("/tmp/a").join("b")) == "file:///tmp/a/b"
    with pytest.raises(ValueError, match="unsupported URI scheme 'ftp'"):
        Uri.parse("ftp://host/x")


def test_local_artifact_verified_in_place(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    upload_dir(tmp_path, tmp_path)
    path, manifest = materialize(str(tmp_path), tmp_path / "cache")
    assert path == tmp_path and "model.safetensors" in manifest.files
    (tmp_path / "model.safetensors").write_bytes(b"other!!")
    with pytest.raises(ChecksumMismatch):
        materialize(str(tmp_path), tmp_path / "cache")


def test_local_prefix_without_manifest_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(IncompleteArtifact, match="metaspec artifacts push"):
        materialize(f"file://{tmp_path}", tmp_path / "cache")

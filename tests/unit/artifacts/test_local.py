"""Artifacts on the local filesystem: URIs, manifests, in-place verification."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from metaspec.artifacts import (
    MANIFEST,
    ChecksumMismatch,
    IncompleteArtifact,
    UnsafeArtifact,
    Uri,
    download_dir,
    is_complete,
    materialize,
    upload_dir,
)


@pytest.mark.parametrize(
    "text,scheme,bucket,path",
    [
        ("s3://bucket/a/b", "s3", "bucket", "a/b"),
        ("s3://bucket", "s3", "bucket", ""),
        ("file:///tmp/x", "file", "", "/tmp/x"),
        ("/tmp/x", "file", "", "/tmp/x"),
        ("hf://HuggingFaceTB/SmolLM2-135M-Instruct", "hf", "", "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ("hf://org/name@v1.0", "hf", "", "org/name"),
        ("pvc://models/llama/8b", "pvc", "models", "llama/8b"),
    ],
)
def test_uri_parse(text: str, scheme: str, bucket: str, path: str) -> None:
    uri = Uri.parse(text)
    assert (uri.scheme, uri.bucket, uri.path) == (scheme, bucket, path)
    assert Uri.parse(str(uri)) == uri


def test_pvc_artifacts_are_read_in_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A claim is a folder under METASPEC_PVC_ROOT: read where it is, verified when it has a manifest."""
    monkeypatch.setenv("METASPEC_PVC_ROOT", str(tmp_path / "claims"))
    model = tmp_path / "claims" / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    assert materialize("pvc://models/tiny", tmp_path / "cache") == (model, None)
    upload_dir(model, model)
    path, manifest = materialize("pvc://models/tiny", tmp_path / "cache")
    assert path == model and "model.safetensors" in manifest.files
    assert not (tmp_path / "cache").exists()  # nothing copied
    with pytest.raises(ValueError, match="may not leave"):
        Uri.parse("pvc://models/../etc")


def test_push_refuses_a_missing_or_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from metaspec.cli import main

    (tmp_path / "empty").mkdir()
    for source in (tmp_path / "nonexistent", tmp_path / "empty"):
        assert main(["artifacts", "push", str(source), f"file://{tmp_path}/out"]) != 0
        assert str(source) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


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


def _hostile_manifest(root: Path, key: str) -> None:
    """An artifact whose manifest (written by whoever wrote the artifact) lists `key`."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "x").write_bytes(b"owned")
    digest = hashlib.sha256(b"owned").hexdigest()
    (root / MANIFEST).write_text(json.dumps({"version": 1, "files": {key: {"size": 5, "sha256": digest}}}))


@pytest.mark.parametrize("key", ["/tmp/evil", "../evil", "a/../../evil", "", "a//b", "./a", "a\\..\\evil", "a\nb"])
def test_manifest_keys_that_leave_the_artifact_are_refused_on_read(tmp_path: Path, key: str) -> None:
    source, dest = tmp_path / "src", tmp_path / "dest" / "inner"
    _hostile_manifest(source, key)
    for read in (lambda: download_dir(source, dest), lambda: materialize(source, tmp_path / "cache")):
        with pytest.raises(UnsafeArtifact):
            read()
    assert not is_complete(source)
    assert not (tmp_path / "evil").exists() and not (tmp_path / "dest" / "evil").exists()


def test_symlink_out_of_the_artifact_is_refused_on_write_and_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("key")
    art = tmp_path / "art"
    art.mkdir()
    (art / "link").symlink_to(secret)
    with pytest.raises(UnsafeArtifact, match="outside"):
        upload_dir(art, tmp_path / "uploaded")
    (art / "link").unlink()
    (art / "model").write_text("w")
    upload_dir(art, art)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "model").symlink_to(secret)  # a download would write through it
    with pytest.raises(UnsafeArtifact, match="outside"):
        download_dir(art, dest)
    assert secret.read_text() == "key"


def test_backslash_names_are_refused_on_write(tmp_path: Path) -> None:
    (tmp_path / "a\\b").write_text("x")
    with pytest.raises(UnsafeArtifact, match="backslash"):
        upload_dir(tmp_path, tmp_path / "out")


@pytest.mark.parametrize(
    "text", ["s3://b/k?versionId=1", "s3://b/k#frag", "hf://--trust-remote-code", "file://--x", "hf:///etc", "hf://"]
)
def test_uris_that_would_be_cut_or_read_as_options_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Uri.parse(text)

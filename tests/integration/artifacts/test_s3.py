"""Artifacts against a real S3 server (SeaweedFS started by the `s3` fixture)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from metaspec import cli
from metaspec.artifacts import (
    MANIFEST,
    AccessDenied,
    ChecksumMismatch,
    IncompleteArtifact,
    NotFound,
    S3Store,
    Unreachable,
    Uri,
    cache_outcomes,
    download_dir,
    is_complete,
    materialize,
    read_manifest,
    s3_environment,
    upload_dir,
    verify_artifact,
    write_bytes,
)


def make_tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    return root


def test_directory_round_trip_with_manifest(tmp_path: Path, s3_prefix: str) -> None:
    src = make_tree(tmp_path / "src")
    written = upload_dir(src, s3_prefix, metadata={"kind": "test"})
    assert set(written.files) == {"config.json", "sub/weights.bin"}
    read = read_manifest(s3_prefix)
    assert read.digest == written.digest and read.metadata == {"kind": "test"}
    download_dir(s3_prefix, tmp_path / "dst")
    for rel in written.files:
        assert (tmp_path / "dst" / rel).read_bytes() == (src / rel).read_bytes()


def test_corrupted_object_is_detected_by_checksum(tmp_path: Path, s3_prefix: str) -> None:
    upload_dir(make_tree(tmp_path / "src"), s3_prefix)
    write_bytes(b"tampered", Uri.parse(s3_prefix).join("config.json"))
    with pytest.raises(ChecksumMismatch, match=r"config\.json"):
        download_dir(s3_prefix, tmp_path / "dst")
    assert not (tmp_path / "dst" / "config.json").exists(), "a corrupted file must not be left behind"


def test_prefix_without_manifest_is_refused(tmp_path: Path, s3_prefix: str) -> None:
    src = make_tree(tmp_path / "src")
    upload_dir(src, s3_prefix)
    S3Store().delete(Uri.parse(s3_prefix).join(MANIFEST))  # as if the writer died before finishing
    assert not is_complete(s3_prefix)
    with pytest.raises(IncompleteArtifact, match=r"no _manifest\.json"):
        download_dir(s3_prefix, tmp_path / "dst")
    with pytest.raises(IncompleteArtifact):
        materialize(s3_prefix, tmp_path / "cache")


def test_materialize_caches_by_digest(tmp_path: Path, s3_prefix: str) -> None:
    src = make_tree(tmp_path / "src")
    upload_dir(src, s3_prefix)
    first, manifest = materialize(s3_prefix, tmp_path / "cache")
    assert cache_outcomes(tmp_path / "cache") == {s3_prefix: "miss"}
    again, _ = materialize(s3_prefix, tmp_path / "cache")
    assert first == again and manifest.digest[:32] == first.name
    assert cache_outcomes(tmp_path / "cache") == {s3_prefix: "hit"} and not cache_outcomes(tmp_path)
    (src / "config.json").write_text('{"a": 2}')
    upload_dir(src, s3_prefix)
    changed, _ = materialize(s3_prefix, tmp_path / "cache")
    assert changed != first and (changed / "config.json").read_text() == '{"a": 2}'


def test_a_cached_copy_is_verified_on_every_use(tmp_path: Path, s3_prefix: str) -> None:
    """A byte flipped or a file lost in the download cache is found and fetched again, never loaded."""
    src = make_tree(tmp_path / "src")
    upload_dir(src, s3_prefix)
    path, _ = materialize(s3_prefix, tmp_path / "cache")
    weights = path / "sub" / "weights.bin"
    weights.write_bytes(bytes([weights.read_bytes()[0] ^ 1]) + weights.read_bytes()[1:])
    (path / "config.json").unlink()
    again, _ = materialize(s3_prefix, tmp_path / "cache")
    assert again == path
    for rel in ("config.json", "sub/weights.bin"):
        assert (path / rel).read_bytes() == (src / rel).read_bytes()


FILL = """
import hashlib, sys
from pathlib import Path
from metaspec.artifacts import cache_outcomes, materialize
print("ready", flush=True)
sys.stdin.readline()
path, manifest = materialize(sys.argv[1], Path(sys.argv[2]))
for rel, meta in manifest.files.items():  # what a loader reads once materialize returns
    assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == meta["sha256"], rel
print(path, *cache_outcomes(Path(sys.argv[2])).values(), flush=True)
"""


def test_processes_filling_one_cache_entry_at_once_get_one_complete_copy(tmp_path: Path, s3_prefix: str) -> None:
    """Two real processes (pods sharing a ReadWriteMany cache) released at the same moment: the entry
    is filled once under its lock, and both read a complete, verified copy."""
    src = tmp_path / "src"
    for i in range(12):
        (src / f"part-{i}.bin").parent.mkdir(parents=True, exist_ok=True)
        (src / f"part-{i}.bin").write_bytes(os.urandom(200_000))
    upload_dir(src, s3_prefix)
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FILL, s3_prefix, str(cache)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [proc.communicate(timeout=120)[0].split() for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0]
    paths, outcomes = {path for path, _ in outputs}, sorted(outcome for _, outcome in outputs)
    assert paths == {str(cache / read_manifest(s3_prefix).digest[:32])} and outcomes == ["hit", "miss"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [Path(paths.pop()).name]


def test_pull_into_the_model_cache_links_the_entry(
    tmp_path: Path, s3_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`metaspec artifacts pull --cache` (a vLLM pod's init container): the first pod downloads into the
    cache, the next finds it there; both get a link to the verified entry where vLLM reads the model."""
    src = make_tree(tmp_path / "src")
    upload_dir(src, s3_prefix)
    cache, dest = tmp_path / "models", tmp_path / "scratch" / "models" / "target"
    for outcome in ("miss", "hit"):
        assert cli.main(["artifacts", "pull", "--cache", str(cache), s3_prefix, str(dest)]) == 0
        assert f": {outcome} (model cache" in capsys.readouterr().out
        assert dest.resolve() == cache / read_manifest(s3_prefix).digest[:32]
        assert (dest / "sub" / "weights.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()


def test_a_truncated_cache_entry_is_fetched_again(tmp_path: Path, s3_prefix: str) -> None:
    src = make_tree(tmp_path / "src")
    upload_dir(src, s3_prefix)
    path, _ = materialize(s3_prefix, tmp_path / "cache")
    weights = path / "sub" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short (disk full, pod killed)
    assert materialize(s3_prefix, tmp_path / "cache")[0] == path
    assert weights.read_bytes() == (src / "sub" / "weights.bin").read_bytes()


def test_verify_artifact_reads_every_object(tmp_path: Path, s3_prefix: str) -> None:
    """Whether a finished stage's output may be reused: a deleted or changed object fails it."""
    upload_dir(make_tree(tmp_path / "src"), s3_prefix)
    assert verify_artifact(s3_prefix).files
    write_bytes(b"tampered", Uri.parse(s3_prefix).join("config.json"))
    with pytest.raises(ChecksumMismatch, match=r"config\.json"):
        verify_artifact(s3_prefix)
    S3Store().delete(Uri.parse(s3_prefix).join("sub/weights.bin"))
    with pytest.raises(IncompleteArtifact, match="missing"):
        verify_artifact(s3_prefix)


def test_missing_bucket_and_key_are_clear(tmp_path: Path, s3) -> None:
    with pytest.raises(NotFound, match="bucket 'no-such-bucket' does not exist"):
        read_manifest_or_bytes("s3://no-such-bucket/x")
    with pytest.raises(IncompleteArtifact):
        read_manifest("s3://metaspec-test/never-written")


def read_manifest_or_bytes(uri: str) -> None:
    S3Store().get_bytes(Uri.parse(uri))


def test_wrong_credentials_give_a_clear_error(s3, tmp_path: Path) -> None:
    denied = s3_environment({"AWS_SECRET_ACCESS_KEY": "wrong-secret"})
    with denied, pytest.raises(AccessDenied, match="AWS_SECRET_ACCESS_KEY"):
        upload_dir(make_tree(tmp_path / "src"), "s3://metaspec-test/denied")


def test_unreachable_endpoint_is_transient() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9",  # discard port: nothing listens
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "y",
        "METASPEC_S3_MAX_ATTEMPTS": "2",
        "METASPEC_S3_RETRY_SECONDS": "0",  # no waiting: the retry window has its own test
    }
    with s3_environment(env), pytest.raises(Unreachable) as caught:
        read_manifest("s3://metaspec-test/anything")
    assert caught.value.transient and "127.0.0.1:9" in str(caught.value)

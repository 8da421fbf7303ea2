"""`read_records` against a real S3 server: manifest'd prefixes, single objects, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from metaspec import builtin
from metaspec.artifacts import MANIFEST, ChecksumMismatch, IncompleteArtifact, S3Store, Uri, upload_dir, write_bytes
from metaspec.datasets import read_records
from metaspec.records import InvalidData, dump_jsonl


def shards(root: Path, n: int = 3) -> list[str]:
    """The built-in eval split as `n` shard files plus a stats file, like a TeacherGeneration output."""
    records = builtin.records("eval")
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"shard-{i:05d}-of-{n:05d}.jsonl").write_text("".join(dump_jsonl(records[i::n])))
    (root / "stats.json").write_text("{}")
    return [r.id for i in range(n) for r in records[i::n]]


def test_prefix_with_manifest_is_read_in_manifest_order(tmp_path: Path, s3_prefix: str) -> None:
    expected = shards(tmp_path / "out")
    upload_dir(tmp_path / "out", s3_prefix)
    for uri in (s3_prefix, s3_prefix + "/"):
        records, report = read_records(uri)
        assert [r.id for r in records] == expected and report.valid == len(expected)
    assert len(read_records(s3_prefix, max_examples=5)[0]) == 5


def test_prefix_without_manifest_is_refused(tmp_path: Path, s3_prefix: str) -> None:
    shards(tmp_path / "out")
    upload_dir(tmp_path / "out", s3_prefix)
    S3Store().delete(Uri.parse(s3_prefix).join(MANIFEST))  # as if the generator died before finishing
    with pytest.raises(IncompleteArtifact, match=r"no _manifest\.json"):
        read_records(s3_prefix)


def test_object_changed_after_the_manifest_is_refused(tmp_path: Path, s3_prefix: str) -> None:
    shards(tmp_path / "out")
    upload_dir(tmp_path / "out", s3_prefix)
    write_bytes(b"", Uri.parse(s3_prefix).join("shard-00001-of-00003.jsonl"))
    with pytest.raises(ChecksumMismatch, match=r"shard-00001-of-00003\.jsonl"):
        read_records(s3_prefix)


def test_single_objects_with_and_without_extension(s3_prefix: str) -> None:
    data = "".join(dump_jsonl(builtin.records("train")[:7])).encode()
    for key in ("data.jsonl", "data"):
        write_bytes(data, f"{s3_prefix}/{key}")
        records, _ = read_records(f"{s3_prefix}/{key}")
        assert [r.id for r in records] == [r.id for r in builtin.records("train")[:7]]


def test_bad_line_in_an_object_names_uri_line_and_field(s3_prefix: str) -> None:
    rows = (
        "".join(dump_jsonl(builtin.records("train")[:3]))
        + '{"id": "x", "input": "q", "output": "a", "difficulty": "extreme"}\n'
    )
    write_bytes(rows.encode(), f"{s3_prefix}/bad.jsonl")
    with pytest.raises(InvalidData, match=rf"{s3_prefix}/bad\.jsonl line 4: field `difficulty`"):
        read_records(f"{s3_prefix}/bad.jsonl")


def test_dataset_command_writes_a_split_to_s3(s3_prefix: str) -> None:
    assert builtin.main(["--split", "prompts", "--out", f"{s3_prefix}/prompts.jsonl"]) == 0
    records, _ = read_records(f"{s3_prefix}/prompts.jsonl", require_output=False)
    assert [r.id for r in records] == [r.id for r in builtin.records("prompts")]


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_prefix_of_jsonl_and_parquet_shards(tmp_path: Path, s3_prefix: str) -> None:
    """A prefix mixing JSONL and Parquet shards is read in manifest order; a bad Parquet row is named
    by its shard and row number, like a JSONL line."""
    records = [r.model_dump(exclude_none=True) for r in builtin.records("eval")[:6]]
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "part-0.jsonl").write_text("".join(dump_jsonl(records[:3])))
    write_parquet(root / "part-1.parquet", records[3:])
    upload_dir(root, s3_prefix)
    read, report = read_records(s3_prefix)
    assert [r.id for r in read] == [r["id"] for r in records] and report.valid == 6
    single, _ = read_records(f"{s3_prefix}/part-1.parquet")
    assert [r.id for r in single] == [r["id"] for r in records[3:]]

    bad = write_parquet(tmp_path / "bad.parquet", [records[0], {**records[1], "difficulty": "medium"}])
    with pytest.raises(InvalidData, match=r"bad\.parquet line 2: field `difficulty`"):
        read_records(str(bad))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InvalidData, match="not a readable Parquet file"):
        read_records(str(tmp_path / "broken.parquet"))


def test_pvc_datasets_are_read_from_the_mounted_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METASPEC_PVC_ROOT", str(tmp_path))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.jsonl").write_text("".join(dump_jsonl(builtin.records("eval")[:2])))
    assert len(read_records("pvc://data/eval.jsonl")[0]) == 2

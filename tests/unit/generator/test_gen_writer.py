"""The shard writer on local files: durable appends, torn lines, resume from local or uploaded state."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaspec.artifacts import Uri
from metaspec.generator.writer import ShardWriter, read_shard
from metaspec.runtime import PermanentError

IDS = [f"r{i}" for i in range(6)]


def body(record_id: str, model: str = "m") -> dict:
    return {"id": record_id, "output": f"out {record_id}", "metadata": {"teacher_model": model}}


def same_model(b: dict) -> bool:
    return b["metadata"]["teacher_model"] == "m"


def writer(tmp_path: Path, local: str = "work", upload_every: float = 0.0) -> ShardWriter:
    out = Uri.of(tmp_path / "out")
    return ShardWriter(
        tmp_path / local / "shard.jsonl", out.join(".partial/shard.jsonl"), out.join("shard.jsonl"), upload_every
    )


def test_appends_are_durable_and_uploaded_as_partial(tmp_path: Path) -> None:
    w = writer(tmp_path)
    assert w.resume(set(IDS), same_model) == {}
    w.append([body("r0"), body("r1")])
    assert [json.loads(x)["id"] for x in (tmp_path / "work/shard.jsonl").read_text().splitlines()] == ["r0", "r1"]
    assert (tmp_path / "out/.partial/shard.jsonl").read_text() == (tmp_path / "work/shard.jsonl").read_text()
    with pytest.raises(RuntimeError, match="generated twice"):
        w.append([body("r1")])


def test_upload_is_periodic(tmp_path: Path) -> None:
    w = writer(tmp_path, upload_every=3600)
    w.resume(set(IDS), same_model)
    w.append([body("r0")])
    assert not (tmp_path / "out/.partial/shard.jsonl").exists()


def test_resume_drops_a_torn_line_and_foreign_records(tmp_path: Path) -> None:
    local = tmp_path / "work/shard.jsonl"
    local.parent.mkdir()
    lines = [body("r0"), body("r1", model="other"), body("zz"), body("r2"), body("r0")]
    local.write_text("".join(json.dumps(b) + "\n" for b in lines) + '{"id": "r3", "outp')
    w = writer(tmp_path)
    assert set(w.resume(set(IDS), same_model)) == {"r0", "r2"}
    assert [json.loads(x)["id"] for x in local.read_text().splitlines()] == ["r0", "r2"]


def test_a_new_pod_resumes_from_the_uploaded_partial(tmp_path: Path) -> None:
    first = writer(tmp_path, local="pod-1")
    first.resume(set(IDS), same_model)
    first.append([body("r0"), body("r3")])
    first.close()
    second = writer(tmp_path, local="pod-2")
    assert set(second.resume(set(IDS), same_model)) == {"r0", "r3"}
    second.append([body(i) for i in IDS if i not in {"r0", "r3"}])
    records = second.finish(IDS)
    assert [r["id"] for r in records] == IDS  # input order, each once
    assert read_shard(Uri.of(tmp_path / "out/shard.jsonl")) == records
    assert not (tmp_path / "out/.partial/shard.jsonl").exists()


def test_finish_refuses_gaps(tmp_path: Path) -> None:
    w = writer(tmp_path)
    w.resume(set(IDS), same_model)
    w.append([body("r0")])
    with pytest.raises(RuntimeError, match="5 IDs missing"):
        w.finish(IDS)
    assert not (tmp_path / "out/shard.jsonl").exists()


def test_a_corrupt_partial_is_a_permanent_error(tmp_path: Path) -> None:
    local = tmp_path / "work/shard.jsonl"
    local.parent.mkdir()
    local.write_text("not json\n")
    with pytest.raises(PermanentError, match="line 1 is not JSON"):
        writer(tmp_path).resume(set(IDS), same_model)

"""The quality gate's exit codes, the termination-message summary the operator reads, input errors."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from metaspec.api import TeacherGenerationSpec
from metaspec.generator import ShardResult, compute_stats
from metaspec.generator.cli import summarize
from metaspec.generator.generate import load_inputs
from metaspec.runtime import EXIT_QUALITY, TERMINATION_MESSAGE_LIMIT, PermanentError


def records(stopped: int, truncated: int) -> list[dict]:
    def one(i: int, reason: str) -> dict:
        meta = {"num_tokens_generated": 8, "finish_reason": reason, "generation_time": 0.1}
        return {"id": str(i), "output": "an answer", "domain": "math", "metadata": meta}

    return [one(i, "stop") for i in range(stopped)] + [one(stopped + i, "length") for i in range(truncated)]


def result(shard: tuple[int, int], merged: tuple[int, int] | None = None) -> ShardResult:
    stats = compute_stats(records(*shard), sum(shard), 0.9)
    whole = compute_stats(records(*merged), sum(merged), 0.9) if merged else None
    return ShardResult(1, 2, "s3://b/out", stats, whole, generated=sum(shard))


def test_passing_shard() -> None:
    summary, code = summarize(result((10, 0)), fail_on_quality=False)
    assert code == 0 and summary["qualityCheckPassed"] is True and summary["quality"]["passed"] is True
    assert summary["stats"]["naturalStopRate"] == 1.0 and summary["complete"] is False
    assert summary["outputUri"] == "s3://b/out" and summary["shard"] == {"index": 1, "count": 2}


def test_failed_gate_writes_outputs_and_reports_it_in_the_summary() -> None:
    summary, code = summarize(result((5, 5)), fail_on_quality=False)
    assert code == 0 and summary["phase"] == "Succeeded"
    assert summary["qualityCheckPassed"] is False and summary["reason"] == "QualityCheckFailed"
    assert "0.500 is below quality.minNaturalStopRate 0.9" in summary["message"]
    assert summary["quality"] == {"passed": False, "message": summary["message"]}


def test_fail_on_quality_fails_with_the_quality_code() -> None:
    summary, code = summarize(result((5, 5)), fail_on_quality=True)
    assert code == EXIT_QUALITY and summary["phase"] == "Failed"


def test_the_completing_shard_judges_the_whole_output() -> None:
    summary, code = summarize(result((10, 0), merged=(12, 8)), fail_on_quality=False)
    assert code == 0 and summary["complete"] is True and summary["quality"]["passed"] is False
    assert summary["mergedStats"]["examplesDone"] == 20 and "0.600" in summary["message"]
    assert len(json.dumps(summary)) < TERMINATION_MESSAGE_LIMIT


def test_a_bad_dataset_line_is_a_permanent_error_naming_the_line(tmp_path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"id": "a", "input": "hi", "domain": "math", "difficulty": "easy"}\n{"id": "b", "input": ""}\n')
    spec = TeacherGenerationSpec.model_validate(
        {"model": {"uri": "/m"}, "dataset": {"uri": str(path)}, "output": {"uri": "/o"}, "engine": "transformers"}
    )
    with pytest.raises(PermanentError, match=r"spec.dataset.uri: .*line 2: field `input`"):
        load_inputs(spec)


def test_n_outputs_need_sampling_and_ids_that_stay_in_bounds(tmp_path) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "x" * 254, "input": "hi"}) + "\n")
    spec = {"model": {"uri": "/m"}, "dataset": {"uri": str(path)}, "output": {"uri": "/o"}, "engine": "transformers"}
    with pytest.raises(ValidationError, match=r"sampling[\s\S]*`n` > 1 needs `temperature` > 0"):
        TeacherGenerationSpec.model_validate({**spec, "sampling": {"temperature": 0, "n": 2}})
    assert len(load_inputs(TeacherGenerationSpec.model_validate({**spec, "sampling": {"n": 10}}))) == 10
    with pytest.raises(PermanentError, match=r"spec.dataset.uri: record 'xxx.*sampling.n = 11 .* exceed 256"):
        load_inputs(TeacherGenerationSpec.model_validate({**spec, "sampling": {"n": 11}}))

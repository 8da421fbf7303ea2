"""The one status reducer: summaries read leniently, shard statistics merged, the quality gate."""

from __future__ import annotations

from metaspec import status as R
from metaspec.api import Phase, TeacherGeneration, parse_resource
from metaspec.api.generation import GenerationStats, ShardCounts
from metaspec.api.summaries import FailureSummary, ShardSummary, TrainingSummary


def teacher(min_rate: float = 0.9) -> TeacherGeneration:
    resource = parse_resource(
        {
            "apiVersion": "metaspec.dev/v1alpha1",
            "kind": "TeacherGeneration",
            "metadata": {"name": "t"},
            "spec": {
                "model": {"uri": "s3://bkt/m"},
                "dataset": {"uri": "s3://bkt/p"},
                "output": {"uri": "s3://bkt/o"},
                "quality": {"minNaturalStopRate": min_rate},
            },
        }
    )
    assert isinstance(resource, TeacherGeneration)
    return resource


def test_training_summary_keeps_known_fields_and_drops_invalid_parts():
    summary = TrainingSummary.read(
        {
            "artifacts": {"model": "s3://b/m", "unknown": 1},
            "metrics": {"perplexityMerged": 47.2, "extra": 3},
            "progress": {"step": "many"},
            "training": {"bestStep": 4},
        }
    )
    fields = R.training_fields(summary)
    assert fields == {"artifacts": {"model": "s3://b/m"}, "metrics": {"perplexityMerged": 47.2, "extra": 3}}
    assert TrainingSummary.read("not an object") == TrainingSummary()


def test_failure_message_prefers_the_newest_failed_attempt():
    failures = [
        FailureSummary.read({"exitCode": 0, "message": "fine"}),
        FailureSummary.read({"exitCode": 3, "reason": "PermanentError", "message": "bad line 4"}),
        FailureSummary.read({"exitCode": 1, "message": "older"}),
    ]
    assert R.failure_message(failures, "the Job failed") == "PermanentError: bad line 4"
    assert R.failure_message(failures[:1], "the Job failed") == "the Job failed"


def test_generation_stats_merge_weighted_per_shard_and_gate_recomputed():
    shards = [
        ShardSummary.read({"stats": {"examplesDone": 30, "naturalStopRate": 0.8}, "quality": {"passed": True}}),
        ShardSummary.read({"stats": {"examplesDone": 10, "naturalStopRate": 1.0}, "quality": {"passed": True}}),
    ]
    status = R.generation_fields(teacher(), {}, shards)
    assert status["outputUri"] == "s3://bkt/o" and status["stats"]["examplesDone"] == 40
    assert abs(status["stats"]["naturalStopRate"] - 0.85) < 1e-9
    gate = status["conditions"][0]
    assert (gate["status"], gate["reason"]) == ("False", "NaturalStopRateTooLow")  # the shards' own verdicts lose
    assert "below the minimum 0.900" in gate["message"]
    assert R.merge_generation_stats([]) == GenerationStats()
    assert R.generation_fields(teacher(0.8), {}, shards)["conditions"][0]["status"] == "True"


def test_exit_codes_judged_like_the_job_controller():
    shards = ShardCounts(total=1)
    assert R.exit_state(0, shards).phase == Phase.SUCCEEDED
    assert R.exit_state(3, shards).reason == "PodFailurePolicy"
    assert R.exit_state(4, shards).reason == "PodFailurePolicy"
    retried = R.exit_state(1, shards, log="/tmp/log.txt")
    assert retried.reason == "BackoffLimitExceeded" and retried.message == "exit code 1; see /tmp/log.txt"


def test_model_cache_outcomes_reach_the_status():
    """A run's status says whether its model came from the model cache; over shards a miss anywhere wins,
    and an invalid outcome is dropped like any invalid part of a summary."""
    training = TrainingSummary.read({"modelCache": {"s3://b/base": "hit"}})
    assert R.training_fields(training) == {"modelCache": {"s3://b/base": "hit"}}
    assert TrainingSummary.read({"modelCache": {"s3://b/base": "maybe"}}).model_cache is None
    shards = [
        ShardSummary.read({"modelCache": {"s3://bkt/m": "hit", "hf://org/x": "hit"}}),
        ShardSummary.read({"modelCache": {"s3://bkt/m": "miss", "hf://org/x": "hit"}}),
        ShardSummary.read({}),
    ]
    status = R.generation_fields(teacher(), {}, shards)
    assert status["modelCache"] == {"s3://bkt/m": "miss", "hf://org/x": "hit"}
    assert "modelCache" not in R.generation_fields(teacher(), {}, shards[2:])


def test_the_teacher_digest_reaches_the_status_and_disagreeing_shards_show_each():
    one, other = "a" * 64, "hf:" + "b" * 40
    shards = [ShardSummary.read({"modelDigest": one}), ShardSummary.read({}), ShardSummary.read({"modelDigest": one})]
    assert R.generation_fields(teacher(), {}, shards)["modelDigest"] == one
    shards.append(ShardSummary.read({"modelDigest": other}))
    assert R.generation_fields(teacher(), {}, shards)["modelDigest"] == f"{one}, {other}"
    assert "modelDigest" not in R.generation_fields(teacher(), {}, shards[1:2])

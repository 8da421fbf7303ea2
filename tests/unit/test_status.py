"""The one status reducer: summaries read leniently, shard statistics merged, the quality gate."""

from __future__ import annotations

from metaspec import status as R
from metaspec.api import Phase, SpecServe, TeacherGeneration, parse_resource
from metaspec.api.generation import GenerationStats, ShardCounts
from metaspec.api.summaries import FailureSummary, ProgressReport, ShardSummary, TrainingSummary


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


COMMIT, MOVED = "c" * 40, "d" * 40


def serve(target: dict, draft: dict | None = None, replicas: int = 2) -> SpecServe:
    spec = {"target": target, "replicas": replicas, **({"draft": draft} if draft else {})}
    resource = parse_resource(
        {"apiVersion": "metaspec.dev/v1alpha1", "kind": "SpecServe", "metadata": {"name": "s"}, "spec": spec}
    )
    assert isinstance(resource, SpecServe)
    return resource


def loaded(target: str, digest: str, cache: dict | None = None, draft: tuple[str, str] | None = None):
    body = {"target": {"uri": target, "digest": digest}, "modelCache": cache}
    if draft:
        body["draft"] = {"uri": draft[0], "digest": draft[1]}
    return ProgressReport.model_validate(body)


def test_a_hub_branch_becomes_the_commit_the_newest_serving_pod_loaded_and_stays_through_reconciles():
    resource = serve({"uri": "hf://acme/tiny", "revision": "main"})
    status = R.served(resource, {})
    assert status == {"target": {"uri": "hf://acme/tiny@main", "digest": "hf:main"}}
    reports = [loaded("hf://acme/tiny@main", f"hf:{COMMIT}"), loaded("hf://acme/tiny@main", f"hf:{MOVED}")]
    status = R.live_progress(resource, status, dict(enumerate(reports)), "now")
    assert status["target"]["digest"] == f"hf:{MOVED}"
    assert R.served(resource, {}, status) == {"target": {"uri": "hf://acme/tiny@main", "digest": f"hf:{MOVED}"}}
    # Another revision is another URI: the reported commit of the old one is not carried over.
    moved = serve({"uri": "hf://acme/tiny", "revision": "v2"})
    assert R.served(moved, {}, status) == {"target": {"uri": "hf://acme/tiny@v2", "digest": "hf:v2"}}


def test_what_the_spec_pins_is_not_replaced_and_a_plain_s3_uri_gets_the_pods_digest():
    pinned = serve({"uri": f"hf://acme/tiny@{COMMIT}"})
    status = R.served(pinned, {})
    report = loaded(f"hf://acme/tiny@{COMMIT}", f"hf:{MOVED}")
    assert R.live_progress(pinned, status, {"p": report}, "now")["target"]["digest"] == f"hf:{COMMIT}"
    plain = serve({"uri": "s3://bkt/m"})
    status = R.live_progress(plain, R.served(plain, {}), {"p": loaded("s3://bkt/m", "e" * 64)}, "now")
    assert status["target"] == {"uri": "s3://bkt/m", "digest": "e" * 64}


def test_auto_threshold_condition_says_whether_the_draft_was_calibrated():
    resource = serve({"uri": "s3://bkt/m"}, {"uri": "s3://bkt/d"}, replicas=1)
    status = {**R.served(resource, {}), "phase": Phase.READY.value}
    report = loaded("s3://bkt/m", "e" * 64, draft=("s3://bkt/d", "f" * 64))
    assert "conditions" not in R.live_progress(resource, status, {"p": report}, "now")  # not `auto`
    fallback = report.model_copy(update={"confidence_threshold": 0.7, "threshold_calibrated": False})
    out = R.live_progress(resource, status, {"p": fallback}, "now")
    (condition,) = [c for c in out["conditions"] if c["type"] == "ConfidenceThresholdCalibrated"]
    assert condition["status"] == "False" and condition["reason"] == "DraftHasNoCalibration"
    assert "routing.confidenceThreshold: auto" in condition["message"] and "s3://bkt/d" in condition["message"]
    calibrated = report.model_copy(update={"confidence_threshold": 0.42, "threshold_calibrated": True})
    out = R.live_progress(resource, out, {"p": fallback, "q": calibrated}, "now")
    (condition,) = [c for c in out["conditions"] if c["type"] == "ConfidenceThresholdCalibrated"]
    assert (condition["status"], condition["reason"]) == ("True", "Calibrated") and "0.42" in condition["message"]


def test_serving_pods_model_cache_merges_the_newest_replicas_of_what_is_served():
    resource = serve({"uri": "s3://bkt/m"}, {"uri": "s3://bkt/d"}, replicas=2)
    status = {**R.served(resource, {}), "phase": Phase.READY.value}
    both = ("s3://bkt/d", "f" * 64)
    reports = {
        "first": loaded("s3://bkt/m", "e" * 64, {"s3://bkt/m": "miss", "s3://bkt/d": "miss"}, both),
        "old-rollout": loaded("s3://bkt/old", "0" * 64, {"s3://bkt/old": "miss"}, both),
        "second": loaded("s3://bkt/m", "e" * 64, {"s3://bkt/m": "hit", "s3://bkt/d": "miss"}, both),
        "third": loaded("s3://bkt/m", "e" * 64, {"s3://bkt/m": "hit", "s3://bkt/d": "hit"}, both),
    }
    out = R.live_progress(resource, status, reports, "now")
    assert out["modelCache"] == {"s3://bkt/m": "hit", "s3://bkt/d": "miss"}
    assert out["draft"]["digest"] == "f" * 64
    # A report without the draft is not of this generation; a failed SpecServe takes none.
    assert R.live_progress(resource, status, {"x": loaded("s3://bkt/m", "e" * 64)}, "now") is status
    failed = {**status, "phase": Phase.FAILED.value}
    assert R.live_progress(resource, failed, reports, "now") is failed

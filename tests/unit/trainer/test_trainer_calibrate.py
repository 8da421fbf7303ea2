"""The confidence threshold a draft's training recommends: chosen by the engine's cost model over held-out
prompts, saved with the draft, and what `confidenceThreshold: auto` resolves to when the server loads it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from metaspec.api.serving import CALIBRATION_FILE, Routing
from metaspec.drafts import DraftFormatError
from metaspec.drafts.calibration import load_calibration, save_calibration
from metaspec.server.engine.routing import RoutingPolicy, speedup
from metaspec.trainer.calibrate import recommend

K, COST = 5, 0.2


def test_the_threshold_admits_the_prompts_whose_draft_pays() -> None:
    # confident prompts accept most proposals, unconfident ones almost none
    confidences = [0.95, 0.9, 0.8, 0.4, 0.3, 0.2]
    alphas = [0.9, 0.8, 0.7, 0.1, 0.05, 0.6]
    lengths = [10, 20, 30, 40, 50, 60]
    found = recommend(confidences, alphas, lengths, COST, K)
    assert found.confidence_threshold == 0.8
    assert found.speculated_share == pytest.approx(0.5) and found.prompts == 6
    saved = sum(n * (1 - 1 / speedup(a, K, COST)) for a, n in zip(alphas[:3], lengths[:3], strict=True))
    assert found.predicted_speedup == pytest.approx(210 / (210 - saved))
    assert found.predicted_speedup > 1 and (found.cost, found.max_speculative_tokens) == (COST, K)


def test_a_paying_prompt_below_losing_ones_is_admitted_only_if_it_makes_up_for_them() -> None:
    # the 0.2 prompt pays a lot, the 0.3 and 0.4 ones lose a little: admitting all three pays most
    found = recommend([0.9, 0.4, 0.3, 0.2], [0.9, 0.2, 0.2, 0.95], [10, 5, 5, 100], COST, K)
    assert found.confidence_threshold == 0.2 and found.speculated_share == 1


def test_a_draft_that_never_pays_gets_threshold_one() -> None:
    found = recommend([0.9, 0.5, 0.1], [0.1, 0.0, 0.2], [10, 10, 10], COST, K)
    assert found.confidence_threshold == 1.0
    assert found.speculated_share == 0 and found.predicted_speedup == pytest.approx(1.0)


def test_prompts_of_equal_confidence_are_admitted_together() -> None:
    # a threshold cannot split ties: the losing twin of the paying 0.7 prompt comes along or neither does
    found = recommend([0.7, 0.7], [0.95, 0.0], [10, 100], COST, K)
    assert found.confidence_threshold == 1.0
    found = recommend([0.7, 0.7], [0.95, 0.3], [100, 10], COST, K)
    assert found.confidence_threshold == 0.7 and found.speculated_share == 1


def test_mismatched_or_empty_statistics_are_refused() -> None:
    with pytest.raises(ValueError, match="same positive number"):
        recommend([0.5], [0.5, 0.5], [1], COST, K)
    with pytest.raises(ValueError, match="same positive number"):
        recommend([], [], [], COST, K)


def test_the_calibration_travels_with_the_draft(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) is None
    found = recommend([0.9, 0.2], [0.9, 0.1], [10, 10], COST, K)
    save_calibration(tmp_path, found)
    assert load_calibration(tmp_path) == found
    (tmp_path / CALIBRATION_FILE).write_text('{"confidenceThreshold": 3}')
    with pytest.raises(DraftFormatError, match=rf"{CALIBRATION_FILE} is not a threshold calibration"):
        load_calibration(tmp_path)


def test_auto_resolves_to_the_drafts_threshold(caplog: pytest.LogCaptureFixture) -> None:
    calibration = recommend([0.9, 0.6, 0.2], [0.9, 0.8, 0.1], [10, 10, 10], COST, K)
    routing = Routing(policy="first-token", confidence_threshold="auto")
    resolved = RoutingPolicy.of(routing, calibration, "s3://d")
    assert (resolved.threshold, resolved.calibrated) == (calibration.confidence_threshold, True) == (0.6, True)
    with caplog.at_level(logging.WARNING, logger="metaspec.server.engine.routing"):
        fallback = RoutingPolicy.of(routing, None, "s3://d")
    assert (fallback.threshold, fallback.calibrated) == (0.7, False)  # reported: ConfidenceThresholdCalibrated
    assert "routing.confidenceThreshold: auto" in caplog.text and "s3://d" in caplog.text
    number = RoutingPolicy.of(Routing(policy="first-token", confidence_threshold=0.3), calibration)
    assert (number.threshold, number.calibrated) == (0.3, None)  # a number wins
    unused = RoutingPolicy.of(Routing(confidence_threshold="auto"), None)  # `adaptive` reads no threshold
    assert unused.calibrated is None

"""The file in a draft's folder that carries its recommended confidence threshold to the server
(`routing.confidenceThreshold: auto`); `metaspec.trainer.calibrate` computes it."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from metaspec.api.serving import CALIBRATION_FILE, ThresholdCalibration

from .vocabulary import DraftFormatError


def save_calibration(folder: Path, calibration: ThresholdCalibration) -> None:
    """Next to the draft's weights, before its manifest is written (so the manifest covers it)."""
    (folder / CALIBRATION_FILE).write_text(calibration.model_dump_json(by_alias=True, indent=1) + "\n")


def load_calibration(folder: Path) -> ThresholdCalibration | None:
    """The calibration saved with a draft, or None when it has none."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        return ThresholdCalibration.model_validate_json(path.read_text())
    except ValidationError as e:
        raise DraftFormatError(f"{CALIBRATION_FILE} is not a threshold calibration: {e}") from None

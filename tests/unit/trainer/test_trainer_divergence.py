"""A diverged run fails with reason `Diverged` before it checkpoints or publishes anything, and every
summary is strict JSON (no NaN literals a status patch would choke on)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from metaspec.api.training import Optimization
from metaspec.artifacts import Uri, list_files
from metaspec.operator.status import _parse_summary
from metaspec.runtime import (
    EXIT_PERMANENT,
    EXIT_QUALITY,
    TERMINATION_MESSAGE_LIMIT,
    PermanentError,
    QualityError,
    exit_code_for,
    run_component,
    write_summary,
)
from metaspec.trainer.distributed import DataParallel, World
from metaspec.trainer.loop import Diverged, StepStats, TrainLoop
from metaspec.trainer.progress import LogReporter


class Quadratic:
    """A one-weight recipe whose loss, (w·x)², overflows float32 once w·x passes about 1.8e19."""

    units_per_step = 1
    adapter_dir = model_dir = None

    def __init__(self, start: float, x: float, eval_loss: float | None = None):
        self.model = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.model.weight.fill_(start)
        self.parallel = DataParallel(self.model, World())
        self.x, self.eval_loss = x, eval_loss

    @property
    def units_per_epoch(self) -> int:
        return 100

    def train_step(self, scale: float) -> StepStats:
        loss = (self.model(torch.tensor([[self.x]])) ** 2).sum()
        (loss * scale).backward()
        return StepStats(float(loss.detach()), tokens=1)

    def evaluate(self) -> float:
        return float(self.eval_loss if self.eval_loss is not None else self.train_step(0).loss)

    def sampler_state(self) -> dict[str, Any]:
        return {}

    def load_sampler_state(self, state: dict[str, Any]) -> None:
        pass


def loop(recipe: Quadratic, tmp_path: Path) -> TrainLoop:
    opt = Optimization(max_steps=4, eval_steps=2, checkpoint_steps=1, outer_lr=1e-3)
    config = {"kind": "TrainingRun", "spec": {}}
    return TrainLoop(
        recipe,
        opt,
        output=Uri.parse(str(tmp_path / "out")),
        work_dir=tmp_path / "work",
        config=config,
        reporter=LogReporter(1),
    )


def test_a_non_finite_loss_fails_the_run_before_anything_is_written(tmp_path: Path):
    run = loop(Quadratic(start=1e30, x=1.0), tmp_path)
    with pytest.raises(Diverged, match=r"diverged at step 1: loss inf"):
        run.run()
    assert not (tmp_path / "out").exists() or not list_files(tmp_path / "out")  # no checkpoint
    assert exit_code_for(Diverged("x")) == 3  # permanent: the Job fails fast, no retries


def test_a_failed_quality_gate_has_its_own_exit_code():
    """Merge degradation beyond the bound raises a QualityError: the quality exit code (fail-fast, as a
    permanent error), which the status reducer turns into `QualityCheckPassed=False`."""
    assert exit_code_for(QualityError("merging degraded perplexity")) == EXIT_QUALITY
    assert exit_code_for(PermanentError("bad config")) == EXIT_PERMANENT


def test_a_non_finite_evaluation_loss_fails_the_run(tmp_path: Path):
    with pytest.raises(Diverged, match="evaluation loss nan"):
        loop(Quadratic(start=0.5, x=1.0, eval_loss=math.nan), tmp_path).run()


def test_summaries_are_strict_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture):
    path = tmp_path / "termination"
    monkeypatch.setenv("METASPEC_TERMINATION_MESSAGE_PATH", str(path))
    write_summary({"phase": "Succeeded", "metrics": {"trainLoss": math.nan, "perplexity": math.inf}})
    body = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert body["metrics"] == {"trainLoss": None, "perplexity": None}
    # Readers (the operator, metaspec local) take a foreign writer's NaN as null too.
    foreign = _parse_summary({"message": '{"metrics": {"trainLoss": NaN, "evalLoss": -Infinity}}', "exitCode": 0})
    assert foreign["metrics"] == {"trainLoss": None, "evalLoss": None}
    # Too long for the termination message: shortened, still whole JSON, reason kept.
    assert run_component("trainer", lambda: (_ for _ in ()).throw(Diverged("é" * 5000))) == 3
    text = path.read_text()
    assert len(text.encode()) <= TERMINATION_MESSAGE_LIMIT
    assert json.loads(text)["reason"] == "Diverged"
    # A summary too long for it loses its detail in the status only: the pod log names and keeps it.
    with caplog.at_level(logging.WARNING, logger="metaspec"):
        write_summary({"phase": "Succeeded", "data": {"shards": ["x" * 64] * 80}})
    assert json.loads(path.read_text()) == {"phase": "Succeeded", "message": "", "truncated": True}
    assert "the status keeps phase, not data" in caplog.text and "x" * 64 in caplog.text

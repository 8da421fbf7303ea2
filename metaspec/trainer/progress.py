"""Progress reporting: one interface, rendered as a rich progress bar, structured log lines, or both.

The training loop calls a `Reporter`; the CLI picks the renderers. Log lines carry their numbers as
JSON fields (`runtime.setup_logging` writes them in pods), so log pipelines and the operator can read
step, loss and tokens/s without parsing text.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Protocol

from metaspec import progress

log = logging.getLogger("metaspec.trainer")


class Reporter(Protocol):
    def on_start(self, total_steps: int, step: int) -> None:
        """Training starts (or resumes at `step`)."""

    def on_step(self, record: dict[str, Any]) -> None:
        """An optimizer step finished; `record` is its `history.jsonl` line."""

    def on_event(self, message: str, fields: dict[str, Any]) -> None:
        """Something worth a line: evaluation, checkpoint, early stop, resume."""

    def on_finish(self, metrics: dict[str, Any]) -> None:
        """Training and evaluation are done."""


class LogReporter:
    """Structured log lines: the first step, every `every` steps, evaluations, and every event."""

    def __init__(self, every: int = 1):
        self.every = every

    def on_start(self, total_steps: int, step: int) -> None:
        log.info(
            "training: %d steps (starting at %d)", total_steps, step, extra={"fields": {"total_steps": total_steps}}
        )

    def on_step(self, record: dict[str, Any]) -> None:
        if record["step"] == 1 or record["step"] % self.every == 0 or "eval_loss" in record:
            text = " ".join(f"{k}={_fmt(v)}" for k, v in record.items())
            log.info("step %s", text, extra={"fields": record})

    def on_event(self, message: str, fields: dict[str, Any]) -> None:
        log.info(message, extra={"fields": fields})

    def on_finish(self, metrics: dict[str, Any]) -> None:
        log.info("finished: %s", " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items()), extra={"fields": metrics})


class RichReporter:
    """A progress bar with the latest loss and throughput (for terminals)."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"),
            transient=False,
        )
        self.task: Any = None

    def on_start(self, total_steps: int, step: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("train", total=total_steps, completed=step, status="")

    def on_step(self, record: dict[str, Any]) -> None:
        status = f"loss {record['loss']:.4f}  {record.get('tokens_per_second', 0):.0f} tok/s"
        if "eval_loss" in record:
            status += f"  eval {record['eval_loss']:.4f}"
        self.progress.update(self.task, completed=record["step"], status=status)

    def on_event(self, message: str, fields: dict[str, Any]) -> None:
        self.progress.console.log(message, markup=False, highlight=False)  # messages carry URIs: user text

    def on_finish(self, metrics: dict[str, Any]) -> None:
        self.progress.stop()


class PostReporter:
    """Live progress to the operator (`metaspec.progress`): step, loss, best eval loss, tokens/s, ETA."""

    def __init__(self, poster: progress.ProgressPoster):
        self.poster = poster
        self.total = self.first = 0
        self.started = time.monotonic()
        self.best_eval: float | None = None

    def on_start(self, total_steps: int, step: int) -> None:
        self.total, self.first, self.started = total_steps, step, time.monotonic()

    def on_step(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if "eval_loss" in record and (self.best_eval is None or record["eval_loss"] < self.best_eval):
            self.best_eval = record["eval_loss"]
        per_step = (time.monotonic() - self.started) / max(1, step - self.first)
        report = {
            "step": step,
            "totalSteps": self.total,
            "epoch": record.get("epoch"),
            "loss": record.get("loss"),
            "evalLoss": self.best_eval,
            "tokensPerSecond": record.get("tokens_per_second"),
            "etaSeconds": max(0, self.total - step) * per_step,
        }
        self.poster.report({k: v for k, v in report.items() if v is not None})

    def on_event(self, message: str, fields: dict[str, Any]) -> None:
        pass

    def on_finish(self, metrics: dict[str, Any]) -> None:
        pass


class Reporters:
    """Fan-out to several reporters."""

    def __init__(self, *reporters: Reporter):
        self.reporters = reporters

    def on_start(self, total_steps: int, step: int) -> None:
        for r in self.reporters:
            r.on_start(total_steps, step)

    def on_step(self, record: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_step(record)

    def on_event(self, message: str, fields: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_event(message, fields)

    def on_finish(self, metrics: dict[str, Any]) -> None:
        for r in self.reporters:
            r.on_finish(metrics)


def default_reporter(every: int = 10) -> Reporter:
    """A progress bar on a terminal plus log lines; log lines only elsewhere (pods), where the
    operator's progress endpoint also gets live progress when the pod was given one."""
    if sys.stderr.isatty():
        return Reporters(RichReporter(), LogReporter(every))
    poster = progress.from_env()
    return Reporters(LogReporter(every), PostReporter(poster)) if poster else LogReporter(every)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

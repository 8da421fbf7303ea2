"""What a person watching `metaspec local run` sees: one row per resource with phase, a progress bar
and key metrics, live on a terminal (rich) and as plain transition lines elsewhere (CI logs, tests).

Progress comes from the components' structured log lines (JSON, one object per line, extra fields
next to `msg`): whatever counts steps or examples, and whatever numbers they report on the way.
"""

from __future__ import annotations

import json
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from metaspec.local.state import ResourceState, State

#: (done, total, unit) field names components log progress with; camelCase or snake_case.
PROGRESS_KEYS = (
    ("step", "total_steps", "steps"),
    ("examples_done", "examples_total", "examples"),
    ("done", "total", ""),
)
#: Metrics shown in the table, most telling first (others are kept in the state file).
SHOWN_METRICS = (
    "eval_loss",
    "loss",
    "train_loss",
    "query_loss",
    "tokens_per_second",
    "natural_stop_rate",
    "examples_per_second",
    "perplexity_merged",
    "acceptance_rate",
)
_NOT_FIELDS = {"time", "level", "logger", "msg", "exc", "message"}
PHASE_STYLE = {
    "Succeeded": "green",
    "Ready": "green",
    "Running": "cyan",
    "Waiting": "yellow",
    "Failed": "red",
    "Pending": "dim",
    "Suspended": "dim",
}


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)


def parse_progress_line(line: str, progress: dict[str, Any]) -> bool:
    """Fold one component log line into `progress` (done, total, unit, metrics, message).
    Returns whether anything changed. Lines that are not JSON objects only update the message."""
    try:
        body = json.loads(line)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        text = line.strip()
        if text and not text.startswith(("$ ", "Traceback", "  ")):
            progress["message"] = text[-200:]
            return True
        return False
    fields = {_snake(k): v for k, v in body.items() if k not in _NOT_FIELDS}
    if body.get("msg"):
        progress["message"] = str(body["msg"])[-200:]
    for done_key, total_key, unit in PROGRESS_KEYS:
        done, total = fields.pop(done_key, None), fields.pop(total_key, None)
        if isinstance(done, int | float) or isinstance(total, int | float):
            if isinstance(done, int | float):
                progress["done"] = done
            if isinstance(total, int | float):
                progress["total"] = total
            progress["unit"] = unit or progress.get("unit", "")
            break
    metrics = progress.setdefault("metrics", {})
    metrics.update({k: v for k, v in fields.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    return True


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def metrics_text(r: ResourceState, limit: int = 3) -> str:
    """The few numbers worth a glance: final status metrics once done, live ones while running."""
    final = {_snake(k): v for k, v in _status_numbers(r.status).items()}
    live = r.progress.get("metrics", {})
    source = final if final and r.phase in ("Succeeded", "Ready", "Failed") else {**final, **live}
    shown = [f"{k}={_fmt(source[k])}" for k in SHOWN_METRICS if k in source][:limit]
    if r.url:
        shown.append(r.url)
    return "  ".join(shown)


def _status_numbers(status: dict[str, Any]) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    for section in ("metrics", "stats"):
        for key, value in (status.get(section) or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                numbers[key] = value
    return numbers


def progress_of(r: ResourceState) -> tuple[float | None, float | None, str]:
    status_progress = r.status.get("progress") or {}
    stats = r.status.get("stats") or {}
    final = (status_progress.get("step"), status_progress.get("totalSteps"), "steps")
    if stats:
        final = (stats.get("examplesDone"), stats.get("examplesTotal"), "examples")
    if r.phase in ("Succeeded", "Failed") and final[0] is not None:
        return final  # the whole resource, not the last shard's or attempt's log lines
    return r.progress.get("done", final[0]), r.progress.get("total", final[1]), r.progress.get("unit", final[2])


def render_table(state: State, now: float | None = None) -> Table:
    table = Table(expand=False, show_edge=False, pad_edge=False)
    for column in ("stage", "phase", "progress", "", "metrics", "message"):
        table.add_column(column, no_wrap=column != "message", overflow="ellipsis", max_width=60)
    for r in state.resources.values():
        done, total, unit = progress_of(r)
        bar: Any = ""
        count = ""
        if done is not None:
            finished = r.phase in ("Succeeded", "Ready")
            bar = ProgressBar(total=float(total or 0) or None, completed=float(done), width=24)
            count = f"{_fmt(done)}/{_fmt(total) if total else '?'} {unit}".strip()
            if finished and total:
                bar = ProgressBar(total=float(total), completed=float(total), width=24)
        message = r.status.get("message") or r.progress.get("message", "")
        table.add_row(  # Text, never str: user text is not read as rich markup
            Text(r.key),
            Text(r.phase, style=PHASE_STYLE.get(r.phase, "")),
            bar,
            Text(count),
            Text(metrics_text(r)),
            Text(message, style="dim"),
        )
    return table


class LiveDisplay:
    """Live table on a terminal; plain lines (phase changes, progress every `every` seconds) elsewhere."""

    def __init__(self, console: Console | None = None, every: float = 30):
        self.console = console or Console(soft_wrap=True, markup=False)
        self.every = every
        self._live: Live | None = None
        self._seen: dict[str, tuple[str, str]] = {}
        self._last_line = 0.0

    def __enter__(self) -> LiveDisplay:
        if self.console.is_terminal:
            self._live = Live(console=self.console, refresh_per_second=2, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def say(self, text: str) -> None:
        """A line above the table (or in the log); user text (paths, names, messages) is printed as it
        is, never read as rich markup (`[/x]` in a message would raise MarkupError mid-run)."""
        self.console.print(text, highlight=False, markup=False)

    def update(self, state: State) -> None:
        if self._live is not None:
            self._live.update(Group(render_table(state)))
            return
        periodic = time.monotonic() - self._last_line >= self.every
        for r in state.resources.values():
            done, total, unit = progress_of(r)
            where = f"{_fmt(done)}/{_fmt(total) if total else '?'} {unit}".strip() if done is not None else ""
            if self._seen.get(r.key, ("", ""))[0] != r.phase or (periodic and r.phase == "Running"):
                message = r.status.get("message", "")
                parts = [time.strftime("%H:%M:%S"), f"{r.key:<32}", f"{r.phase:<10}", where, metrics_text(r)]
                self.say("  ".join(p for p in [*parts, message] if p))
            self._seen[r.key] = (r.phase, where)
        if periodic:
            self._last_line = time.monotonic()

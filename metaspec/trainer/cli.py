"""`metaspec train --config FILE [--work-dir DIR] [--device cpu|cuda]`: a TrainingRun's container."""

from __future__ import annotations

import argparse
from pathlib import Path

from metaspec.api import TrainingRun
from metaspec.runtime import CONFIG_PATH, load_config, run_component, scratch_dir, setup_logging, write_summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaspec train", description="run a TrainingRun's trainer")
    parser.add_argument(
        "--config", type=Path, default=Path(CONFIG_PATH), help=f"TrainingRun JSON (default {CONFIG_PATH})"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="this run's scratch: staging and checkpoints (default: $METASPEC_CACHE/trainer or "
        "~/.cache/metaspec/trainer); models go to the model cache ($METASPEC_MODEL_CACHE)",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when visible, else cpu)")
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from .run import train  # torch and transformers load here, after the arguments parsed

        run = load_config(args.config, TrainingRun)
        summary = train(run, work_dir=args.work_dir or default_work_dir(), device=args.device)
        write_summary(summary)
        return 0

    return run_component("trainer", body)


def default_work_dir() -> Path:
    return scratch_dir() / "trainer"

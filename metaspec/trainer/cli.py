"""`metaspec train --config FILE [--work-dir DIR] [--device cpu|cuda] [--nproc-per-node N] [--nnodes M]
[--max-restarts R]`: a TrainingRun's container."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from metaspec.api import TrainingRun
from metaspec.runtime import (
    CONFIG_PATH,
    TERMINATION_MESSAGE_ENV,
    load_config,
    run_component,
    scratch_dir,
    setup_logging,
    termination_message_path,
    write_summary,
)


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
    parser.add_argument(
        "--nproc-per-node",
        type=int,
        default=1,
        help="training processes on this machine, one per GPU (default 1); with more, or with --nnodes above 1, "
        "they are launched by torch.distributed.run (torchrun) and train data-parallel",
    )
    parser.add_argument(
        "--nnodes",
        type=int,
        default=1,
        help="machines training together (default 1); each runs this command with its node rank in "
        "PET_NODE_RANK and node 0's rendezvous store in PET_RDZV_ENDPOINT (host:port; torchrun's variables)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="with --nnodes above 1: times the processes of all nodes restart together after one fails or a "
        "lost node's replacement joins, resuming from the last checkpoint (default 0)",
    )
    args = parser.parse_args(argv)
    if args.nnodes > 1 and not os.environ.get("PET_RDZV_ENDPOINT"):
        parser.error("--nnodes above 1 needs node 0's rendezvous address in PET_RDZV_ENDPOINT (host:port)")
    setup_logging()
    from .launcher import launch, launched, rank_summary

    if (args.nproc_per_node > 1 or args.nnodes > 1) and not launched():
        return launch(_worker_argv(args), args.nproc_per_node, args.nnodes, args.max_restarts)
    if launched():
        os.environ[TERMINATION_MESSAGE_ENV] = str(rank_summary(termination_message_path(), int(os.environ["RANK"])))

    def body() -> int:
        run = load_config(args.config, TrainingRun)
        from .run import train  # torch and transformers load here, after the arguments and config parsed

        summary = train(run, work_dir=args.work_dir or default_work_dir(), device=args.device)
        if summary is not None:
            write_summary(summary)
        return 0

    code = run_component("trainer", body)
    if launched():
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End a launched worker without the interpreter's teardown, its outputs written and flushed.

    With gloo (CPU), a worker that finished its run can still abort in the C++ destructors that run
    after Python's last line (`terminate called without an active exception`, exit -6: seen in about
    one two-process FSDP test run in 30), and the launcher would then fail a run that succeeded."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """What each launched process runs: this command without the launcher's options."""
    argv = ["train", "--config", str(args.config)]
    if args.work_dir:
        argv += ["--work-dir", str(args.work_dir)]
    if args.device:
        argv += ["--device", args.device]
    return argv


def default_work_dir() -> Path:
    return scratch_dir() / "trainer"

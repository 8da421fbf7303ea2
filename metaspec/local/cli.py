"""`metaspec local run|status|stop`: the embedded default, the same pipeline YAML on one machine."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from rich.console import Console

from metaspec.local import demo_bench
from metaspec.local.state import StateError, load_state, pid_alive

DEFAULT_STATE_DIR = Path(".metaspec")


def _state_dir(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} exists and is not a directory")
    return path


def _state_dir_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=_state_dir,
        default=DEFAULT_STATE_DIR,
        help="statuses, logs, embedded S3 data and reports (default: .metaspec)",
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaspec local", description="run pipeline YAML on this machine")
    sub = p.add_subparsers(dest="verb", required=True)
    run = sub.add_parser("run", help="run every resource of a pipeline file, resuming a previous run")
    run.add_argument("pipeline", type=Path, help="YAML with TrainingRun / TeacherGeneration / SpecServe resources")
    _state_dir_arg(run)
    run.add_argument(
        "--s3-endpoint", help="use this S3 endpoint (credentials from AWS_* variables) instead of the embedded one"
    )
    run.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where components compute: auto (a GPU if visible), cpu, or cuda (default: auto)",
    )
    run.add_argument(
        "--nproc-per-node",
        type=int,
        default=None,
        metavar="N",
        help="training processes per TrainingRun, data-parallel through torch.distributed.run (gloo on CPU, "
        "NCCL on GPUs; default: the run's resources.gpus × nodes, at most the visible GPUs, 1 on CPU)",
    )
    run.add_argument("--report", action="store_true", help="benchmark the served model, then write the report")
    run.add_argument(
        "--serve",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep SpecServe servers running until Ctrl-C (default: yes, unless --report)",
    )
    run.add_argument(
        "--bench-prompts",
        type=int,
        default=demo_bench.PROMPTS_PER_DIFFICULTY,
        help=f"--report benchmark: prompts per difficulty (default {demo_bench.PROMPTS_PER_DIFFICULTY})",
    )
    run.add_argument(
        "--bench-max-tokens",
        type=int,
        default=demo_bench.MAX_TOKENS,
        help=f"--report benchmark: tokens per answer at most (default {demo_bench.MAX_TOKENS})",
    )
    run.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="read pvc://NAME/… from the host folder DIR, as a pod reads a mounted claim (repeatable)",
    )
    status = sub.add_parser("status", help="show the statuses of the last run")
    _state_dir_arg(status)
    stop = sub.add_parser("stop", help="stop a running `metaspec local run` (stages checkpoint first)")
    _state_dir_arg(stop)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    return {"run": run, "status": status, "stop": stop}[args.verb](args)


def run(args: argparse.Namespace) -> int:
    from metaspec.local.context import RunOptions
    from metaspec.local.loading import PipelineError
    from metaspec.local.runner import LocalRun
    from metaspec.local.state import StateLocked

    if args.nproc_per_node is not None and args.nproc_per_node < 1:
        print(f"--nproc-per-node {args.nproc_per_node}: must be at least 1", file=sys.stderr)
        return 2
    if args.device == "cuda" and not _cuda_visible():
        print("--device cuda: no CUDA GPU is visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    options = RunOptions(
        state_dir=args.state_dir,
        s3_endpoint=args.s3_endpoint,
        device=args.device,
        report=args.report,
        serve=(not args.report) if args.serve is None else args.serve,
        bench_prompts=args.bench_prompts,
        bench_max_tokens=args.bench_max_tokens,
        claims=_claims(args.claim),
        nproc_per_node=args.nproc_per_node,
    )
    try:
        return LocalRun(args.pipeline, options).run()
    except PipelineError as e:
        print(e, file=sys.stderr)
        return 2
    except (StateLocked, StateError) as e:
        print(e, file=sys.stderr)
        return 1
    except OSError as e:  # the state directory cannot be made or written
        print(f"metaspec local run: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; `metaspec local run {args.pipeline}` resumes where it stopped", file=sys.stderr)
        return 130


def _claims(values: list[str]) -> dict[str, Path]:
    pairs = [value.partition("=") for value in values]
    bad = [value for value, (name, eq, folder) in zip(values, pairs, strict=True) if not (name and eq and folder)]
    if bad:
        raise SystemExit(f"--claim {bad[0]!r}: expected NAME=DIR")
    return {name: Path(folder) for name, _, folder in pairs}


def _cuda_visible() -> bool:
    import torch

    return torch.cuda.is_available()


def status(args: argparse.Namespace) -> int:
    from metaspec.local.display import render_table

    try:
        state = load_state(args.state_dir)
    except StateError as e:
        print(e, file=sys.stderr)
        return 1
    # No markup: paths, names and messages are user text.
    console = Console(markup=False) if sys.stdout.isatty() else Console(width=240, soft_wrap=True, markup=False)
    if not state.resources:
        console.print(f"no run in {args.state_dir} yet: `metaspec local run PIPELINE.yaml`")
        return 1
    running = pid_alive(state.runner_pid)
    console.print(
        f"pipeline: {state.pipeline}  ({'running, pid ' + str(state.runner_pid) if running else 'not running'})"
    )
    console.print(render_table(state))
    for r in state.resources.values():
        if r.log:
            console.print(f"  {r.key}: log {r.log}", style="dim", highlight=False)
    if state.report:
        console.print(f"report: {state.report}")
    return 0


def stop(args: argparse.Namespace, timeout: float = 240) -> int:
    """SIGTERM the runner: it stops its current stage (which checkpoints) and its servers, then exits."""
    try:
        state = load_state(args.state_dir)
    except StateError as e:
        print(e, file=sys.stderr)
        return 1
    pid = state.runner_pid
    if not pid_alive(pid):
        print(f"no `metaspec local run` is running on {args.state_dir}")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if pid_alive(pid):
        print(f"pid {pid} still running after {timeout:.0f} s", file=sys.stderr)
        return 1
    print(f"stopped pid {pid}; `metaspec local run` resumes where it stopped")
    return 0

"""What the method benchmarks (`method.py`, `teacher.py`, `routing.py`) share: the command-line flags
every one of them takes, the machine description stored next to every result, and writing the JSON.

Nothing here imports matplotlib, boto3 or fastapi: the scripts run on a bare GPU machine with torch,
transformers, peft, pydantic and rich only.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shlex
import statistics
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from metaspec.devices import resolve_device, resolve_dtype
from metaspec.packed import pack_linears

RESULTS = Path(__file__).parent / "results"
T = TypeVar("T")


def add_common_args(parser: argparse.ArgumentParser, name: str) -> None:
    """`--device --dtype --out --smoke --threads --seed`, the same in every method benchmark."""
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"], help="auto: bf16 on cuda")
    parser.add_argument("--out", type=Path, help=f"JSON result (default: bench/results/{name}-<device>.json)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end, not the method")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=42)


def setup(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    return device, resolve_dtype(args.dtype, device)


def machine(device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    """Where and when a result was measured: every table in docs/ cites this."""
    import transformers

    gpu = device.type == "cuda"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name() if gpu else (platform.processor() or platform.machine()),
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg()[0],  # other work on a shared CPU skews timings
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_result(
    args: argparse.Namespace, argv: list[str], name: str, device: torch.device, body: dict[str, Any]
) -> Path:
    """The result as JSON, with the command line that reproduces it."""
    out = args.out or RESULTS / f"{name}-{device.type}{'-smoke' if args.smoke else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["python", f"bench/{name}.py", *argv])
    body = {"benchmark": name, "command": command, "settings": vars(args), **body}
    out.write_text(json.dumps(body, indent=1, default=str) + "\n")  # default: paths in the settings
    print(f"wrote {out}")
    return out


def sync(device: torch.device) -> None:
    """Wait for queued GPU work before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (1-99) of `values`, None when there are none."""
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def off_main(make: Callable[[], T]) -> T:
    """`make()` run on a thread that then ends, and its OpenMP pool with it. A script whose engines decode
    on threads of their own builds models and engines this way, so that its main thread keeps no pool
    beside theirs, as a server's does not (why it matters on a CPU: `SpeculativeEngine.generate_here`)."""
    made: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            made.append(make())
        except BaseException as error:  # re-raised on the caller's thread
            failed.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def served(model: T) -> T:
    """`model` as the server runs it: on the CPU, a copy with its linear layers packed for oneDNN, as the
    server's loader packs them (`pack_linears`); transformers' methods keep the model as loaded. Anything
    else (a model on a GPU, a prompt lookup's settings) as it is."""
    if not isinstance(model, torch.nn.Module) or next(model.parameters()).device.type != "cpu":
        return model
    model = copy.deepcopy(model)
    pack_linears(model)
    return model

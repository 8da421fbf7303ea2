"""Child processes of `metaspec local run`: started in their own process group, logged line by line,
stopped by PID with SIGTERM first (the trainer checkpoints on SIGTERM, as on pod preemption).

Every child asks the kernel to SIGTERM it when the runner dies (`PR_SET_PDEATHSIG`), so killing the
runner — even with SIGKILL — behaves like a preemption instead of leaving orphans behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """`preexec_fn`: SIGTERM this child when the process that started it exits (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Child:
    """A running component: its output goes to `log` and, line by line, to `on_line`."""

    def __init__(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str],
        on_line: Callable[[str], None] | None = None,
    ):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._log_file = open(log, "a", buffering=1)  # noqa: SIM115 - closed when the output ends
        self._log_file.write(f"$ {' '.join(argv)}\n")
        self.process = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
            bufsize=1,
            start_new_session=True,  # a terminal's Ctrl-C reaches the runner, which stops us in order
            preexec_fn=die_with_parent,
        )
        self._reader = threading.Thread(target=self._pump, args=(on_line,), daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def _pump(self, on_line: Callable[[str], None] | None) -> None:
        with self._log_file:
            for line in self.process.stdout:
                self._log_file.write(line)
                if on_line is not None:
                    with contextlib.suppress(Exception):  # a display problem never stops a stage
                        on_line(line.rstrip("\n"))

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self) -> int:
        code = self.process.wait()
        self._reader.join(timeout=10)
        return code

    def stop(self, grace: float = 30) -> int:
        """SIGTERM the process group, SIGKILL after `grace` seconds."""
        terminate_group(self.process.pid, grace, self.process)
        return self.wait()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def terminate_group(pid: int, grace: float = 30, process: subprocess.Popen | None = None) -> None:
    """Stop a process group started by us: SIGTERM, then SIGKILL after `grace` seconds."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return
        if process is None and not _group_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

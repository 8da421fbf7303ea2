"""A SpecServe on this machine: `metaspec serve --config FILE --port P` (or vLLM's server, `engine: vllm`)
on loopback, ready when it answers, and how to call it."""

from __future__ import annotations

import itertools
import random
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from metaspec.local.processes import Child

READY_TIMEOUT = 600.0  # seconds: loading a model from S3 on a slow disk takes a while


def free_port(preferred: int | None = None) -> int:
    """`preferred` if nothing listens on it, else any free port (`free_ports`)."""
    if preferred and _binds(preferred):
        return preferred
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct ports that bind on loopback now, drawn at random from 10000 up to the kernel's
    ephemeral range: a port freed inside that range can be handed to any outgoing connection before the
    server it was chosen for binds it."""
    # Not the `random` module's shared generator: a seeded one would give two processes the same ports.
    candidates = random.SystemRandom().sample(range(10000, max(_ephemeral_start(), 10000 + 4 * n)), 4 * n)
    ports = list(itertools.islice((port for port in candidates if _binds(port)), n))
    if len(ports) < n:
        raise RuntimeError(f"fewer than {n} free TCP ports below {_ephemeral_start()}")
    return ports


def _binds(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def start_server(
    config: Path,
    log: Path,
    env: dict[str, str],
    extra_args: Sequence[str] = (),
    port: int | None = None,
    timeout: float = READY_TIMEOUT,
) -> tuple[Child, str]:
    """Start the router on loopback and wait until it is ready; the child and its base URL.

    Raises RuntimeError (with the log's tail) if it exits or is not ready within `timeout`."""

    def argv(port: int) -> list[str]:
        serve = [sys.executable, "-m", "metaspec.cli", "serve", "--config", str(config)]
        return [*serve, "--host", "127.0.0.1", "--port", str(port), *extra_args]

    return launch(argv, log, env, port, timeout, "/readyz")


def launch(
    argv: Callable[[int], list[str]], log: Path, env: dict[str, str], port: int | None, timeout: float, ready: str
) -> tuple[Child, str]:
    """Start `argv(port)` on a free port (`port` if free) and wait until `ready` answers 200."""
    port = free_port(port)
    child = Child(argv(port), log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, child, timeout, ready)
    except BaseException:
        child.stop(10)
        raise
    return child, url


def wait_ready(url: str, child: Child, timeout: float, path: str = "/readyz") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"the server exited with code {child.poll()}:\n{child.tail(12)}")
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server was not ready within {timeout:.0f} s:\n{child.tail(12)}")


def usage_snippet(url: str, model: str) -> str:
    """How to call a served model: curl and the `openai` client."""
    return f"""
Serving {model!r} at {url} (OpenAI-compatible; each response has a `metaspec` field with the route taken)

  curl -s {url}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "What is 12 * 7?"}}], "max_tokens": 64}}'

  from openai import OpenAI
  client = OpenAI(base_url="{url}/v1", api_key="unused")
  reply = client.chat.completions.create(
      model="{model}", messages=[{{"role": "user", "content": "What is 12 * 7?"}}], max_tokens=64)
  print(reply.choices[0].message.content)

  metrics: curl -s {url}/metrics
"""

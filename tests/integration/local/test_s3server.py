"""The embedded S3 server's start against a taken port: the real `weed`, a real listening socket."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from metaspec.local import s3server, serving
from metaspec.local.s3server import EmbeddedS3


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    ports = serving.free_ports(11)
    assert len(set(ports)) == 11
    assert all(10000 <= port < serving._ephemeral_start() for port in ports)


def test_a_port_taken_before_weed_binds_it_is_retried_with_fresh_ports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first draw of ports includes one that another process listens on (as when a port is taken
    between the draw and weed's bind); `free_ports` is wrapped to hand it out once, which is the only
    stand-in here: the race itself cannot be timed from a test."""
    draw = serving.free_ports
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        draws = []

        def first_draw_taken(n: int) -> list[int]:
            ports = draw(n)
            if not draws:
                ports[s3server._PORTS.index("s3.port")] = taken.getsockname()[1]
            draws.append(ports)
            return ports

        monkeypatch.setattr(s3server, "free_ports", first_draw_taken)
        with EmbeddedS3(tmp_path / "s3") as server:
            assert len(draws) == 2
            assert server.endpoint.endswith(f":{draws[1][s3server._PORTS.index('s3.port')]}")
    assert b"is not available on" in (tmp_path / "s3" / "weed.log").read_bytes()

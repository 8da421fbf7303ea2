"""Admission limits and cancellation against the running server (1 decoding slot, 1 waiting place)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import httpx

MODEL = "tiny-spec"
#: Long enough (hundreds of tokens) that these requests are still decoding while the test acts.
LONG = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 600, "temperature": 0}
SHORT = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}


def counter(router, name: str, **labels: str) -> float:
    return router.serving.metrics.registry.get_sample_value(name, {"model": router.model, **labels}) or 0.0


def wait_for(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def raw_request(url: str, path: str, body: bytes) -> socket.socket:
    """Send a request on a bare socket, so the test decides when the client disappears."""
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port))
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def test_full_queue_gets_429_and_a_closed_stream_frees_its_slot(router) -> None:
    router.wait_idle()
    tokens_before = counter(router, "metaspec_completion_tokens_total")
    with httpx.Client(base_url=router.url, timeout=60) as streaming, ThreadPoolExecutor(1) as pool:
        with streaming.stream("POST", "/v1/completions", json={**LONG, "stream": True}) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()  # kept: dropping the iterator would close the connection
            next(line for line in lines if line.startswith("data: {"))  # decoding now
            queued = pool.submit(httpx.post, f"{router.url}/v1/completions", json=SHORT, timeout=60)
            wait_for(lambda: router.serving.admission.waiting == 1, "the second request to queue")
            rejected = httpx.post(f"{router.url}/v1/completions", json=SHORT, timeout=60)
            assert rejected.status_code == 429, rejected.text
            assert rejected.headers["Retry-After"] == "1"
            error = rejected.json()["error"]
            assert error["type"] == "rate_limit_error" and "maxQueue 1" in error["message"]
            assert router.serving.admission.in_flight == 1
        # leaving the block closes the connection mid-stream: the slot must pass to the queued request
        assert queued.result(timeout=60).status_code == 200
    router.wait_idle()
    time.sleep(0.2)
    # the abandoned stream's 600 tokens were never finished: only the short request's tokens count
    assert counter(router, "metaspec_completion_tokens_total") - tokens_before <= SHORT["max_tokens"]


def test_disconnect_while_decoding_or_queued_cancels(router) -> None:
    router.wait_idle()
    closed_before = counter(router, "metaspec_requests_total", endpoint="/v1/completions", status="499")
    tokens_before = counter(router, "metaspec_completion_tokens_total")
    body = httpx.Request("POST", "/", json=LONG).content
    decoding = raw_request(router.url, "/v1/completions", body)
    wait_for(lambda: router.serving.admission.in_flight == 1, "the first request to decode")
    waiting = raw_request(router.url, "/v1/completions", body)
    wait_for(lambda: router.serving.admission.waiting == 1, "the second request to queue")
    waiting.close()
    wait_for(lambda: router.serving.admission.waiting == 0, "the queued request to give up its place")
    assert router.serving.admission.in_flight == 1
    decoding.close()
    router.wait_idle()
    time.sleep(0.2)
    assert counter(router, "metaspec_requests_total", endpoint="/v1/completions", status="499") == closed_before + 2
    assert counter(router, "metaspec_completion_tokens_total") == tokens_before
    assert httpx.post(f"{router.url}/v1/completions", json=SHORT, timeout=60).status_code == 200

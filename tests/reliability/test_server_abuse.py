"""Server abuse: hostile input, slow and vanishing clients, memory and overload, against
a real router process (tiny random Llama target + its 1-layer derived draft, uvicorn in a subprocess, so
a crash shows as a dead process and its RSS is its own).

The field-by-field validation table, the 429 of a full queue and a disconnect while decoding or queued
are tested in tests/integration/server/ (test_server_validation.py, test_server_limits.py); this file
adds what those do not reach. Long runs (thousands of fuzz cases, more load levels) are in
bench/reliability_server.py.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client.parser import text_string_to_metric_families
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.specs.openapi.schemas import OpenApiSchema

from metaspec.local.serving import free_port
from metaspec_testing.models import cut_draft

MODEL = "abuse"
#: One decoding at a time and 4 waiting: a burst of 16 must see 429s. Short default generations keep CI
#: cheap; the limit is high enough that a stream can be cut off while it decodes.
SAMPLING = {"maxTokens": 2, "maxTokensLimit": 256, "maxPromptTokens": 128, "maxConcurrency": 1, "maxQueue": 4}
#: Fuzzed requests that ask for a valid number of tokens get at most this many (the fuzzer likes the limit).
FUZZ_MAX_TOKENS = 4
BODY_TIMEOUT = 3.0
MAX_BODY = 4 * 1024 * 1024
#: Fuzz cases per operation in CI (deterministic); bench/reliability_server.py runs thousands.
FUZZ_EXAMPLES = 50
#: Rounds of the abusive corpus in the memory test, and the steady growth allowed per round, the median of
#: the round-to-round growths after the first three. Keeping the request bodies alone would retain ~7.5 MiB
#: every round (two 3 MB prompts, a 1 MB stop string, ...). The allocator grows in steps instead (new
#: arenas, a raised mmap threshold putting the next large body on the heap): 1-6 MiB over the first rounds
#: on the 2-core dev machine, and now and then one 20 MiB step later, which the median ignores as it
#: ignores anything that does not recur. Anonymous memory only: the file-backed pages of the mapped
#: weights and libraries leave and re-enter RSS as other processes need the page cache.
RSS_ROUNDS = 10
RSS_STEADY_GROWTH_MIB = 1.5


def serve(config_json: str) -> None:
    """The server process: the real app and engine, with this file's limits and body timeout."""
    import torch
    import uvicorn

    from metaspec.api.serving import ServeSampling, SpecServeSpec
    from metaspec.server.app import create_app
    from metaspec.server.engine import SpeculativeEngine
    from metaspec.server.serving import ServerSettings

    torch.set_num_threads(1)  # tiny model on a shared 2-core machine: more threads only contend
    config = json.loads(config_json)
    spec = SpecServeSpec.model_validate({**config["spec"], "routing": {"policy": "always"}})
    engine = SpeculativeEngine.from_spec(spec, MODEL, Path(config["cache"]), device="cpu")
    engine.load()
    sampling = ServeSampling.model_validate(SAMPLING)
    settings_ = ServerSettings(model_name=MODEL, sampling=sampling, body_timeout_seconds=BODY_TIMEOUT)
    app = create_app(engine, settings_)
    uvicorn.run(app, host="127.0.0.1", port=config["port"], log_level="warning", timeout_graceful_shutdown=5)


@dataclass
class AbuseServer:
    url: str
    process: subprocess.Popen

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics as `name{label=value,...}` -> value."""
        samples = {}
        for family in text_string_to_metric_families(httpx.get(f"{self.url}/metrics", timeout=30).text):
            for sample in family.samples:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "model")
                samples[f"{sample.name}{{{labels}}}"] = sample.value
        return samples

    def busy(self) -> tuple[float, float]:
        samples = self.metrics()
        return samples["metaspec_running_sequences{}"], samples["metaspec_waiting_sequences{}"]

    def wait_idle(self, timeout: float = 60) -> None:
        """Until no request decodes or waits, read from the gauges (cancellations finish asynchronously)."""
        deadline = time.monotonic() + timeout
        while (busy := self.busy()) != (0, 0):
            assert time.monotonic() < deadline, f"still busy after {timeout}s: (in flight, queued) = {busy}"
            time.sleep(0.05)

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no RssAnon in /proc status")

    def assert_healthy(self) -> None:
        """Alive, ready, and still answering a normal request."""
        assert self.process.poll() is None, f"server died with {self.process.returncode}"
        assert httpx.get(f"{self.url}/readyz", timeout=30).status_code == 200
        good = httpx.post(f"{self.url}/v1/completions", json={"model": MODEL, "prompt": "Hello"}, timeout=60)
        assert good.status_code == 200, good.text


@pytest.fixture(scope="module")
def abuse_server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AbuseServer]:
    work = tmp_path_factory.mktemp("abuse")
    draft = cut_draft(tiny_llama, work / "draft", num_layers=1)
    port = free_port()
    config = {"spec": {"target": {"uri": str(tiny_llama)}, "draft": {"uri": str(draft)}}, "port": port}
    config["cache"] = str(work / "cache")
    code = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import {Path(__file__).stem} as t; "
    code += "t.serve(sys.argv[1])"
    log = (work / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "-c", code, json.dumps(config)], stdout=log, stderr=subprocess.STDOUT)
    server = AbuseServer(f"http://127.0.0.1:{port}", process)
    try:
        deadline = time.monotonic() + 120
        while not server_ready(server.url):
            assert process.poll() is None, (work / "server.log").read_text()
            assert time.monotonic() < deadline, "server not ready after 120 s"
            time.sleep(0.1)
        yield server
        assert process.poll() is None, f"server died during the tests:\n{(work / 'server.log').read_text()}"
        assert "Traceback" not in (work / "server.log").read_text(), (work / "server.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def server_ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def assert_names_its_subject(method: str, path: str, response: httpx.Response) -> None:
    """A 4xx body is OpenAI's error shape and its message names what was wrong: the field in `param`,
    or the request body, or the route."""
    if not 400 <= response.status_code < 500:
        return
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    message = error["message"]
    if error["param"]:
        assert error["param"] in message, error
    elif response.status_code in (404, 405):
        assert f"{method} {path}" in message, error
    else:
        assert "request body" in message or "`" in message or response.status_code == 429, error


# fuzzing against /openapi.json
#
# Not through schemathesis' pytest plugin (its lazy `from_fixture` breaks on pytest 9: `Function._nodeid`),
# but the same strategies and checks driven by hypothesis directly.

FUZZ_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture(scope="module")
def abuse_schema(abuse_server: AbuseServer) -> OpenApiSchema:
    return schemathesis.openapi.from_url(f"{abuse_server.url}/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_fuzz_from_the_openapi_schema(
    abuse_schema: OpenApiSchema, abuse_server: AbuseServer, path: str, mode: GenerationMode
) -> None:
    """Schema-valid and schema-violating requests: no 5xx, every status and body as documented, every
    violation refused with a 4xx that names its field."""
    operation = abuse_schema[path]["POST"]
    statuses: list[int] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def one_case(case: Case) -> None:
        cap_tokens(case.body, FUZZ_MAX_TOKENS)
        response = case.call(timeout=60)
        statuses.append(response.status_code)
        case.validate_response(response, checks=FUZZ_CHECKS)
        if 400 <= response.status_code < 500:
            error = response.json()["error"]
            assert error["param"] is None or error["param"] in error["message"], error
            assert error["param"] or "request body" in error["message"], error

    one_case()
    print(f"{path} {mode}: statuses {sorted(set(statuses))} over {len(statuses)} requests")
    # the run did exercise the server: valid requests were served, invalid ones refused
    assert (200 in statuses) if mode == GenerationMode.POSITIVE else statuses and max(statuses) < 500
    abuse_server.wait_idle()


def cap_tokens(body: object, cap: int) -> None:
    """Valid token counts (only) are lowered to `cap`: the case stays as valid or invalid as it was, and
    CI does not spend minutes decoding (bench/reliability_server.py on a GPU fuzzes without the cap)."""
    if not isinstance(body, dict):
        return
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if type(value) is int and 1 <= value <= SAMPLING["maxTokensLimit"]:
            body[name] = min(value, cap)


# a hand-written corpus


@dataclass(frozen=True)
class Abuse:
    name: str
    body: bytes
    status: int
    words: str
    param: str | None = None
    path: str = "/v1/completions"
    content_type: str | None = "application/json"


def _json(**fields: object) -> bytes:
    return json.dumps({"model": MODEL, **fields}).encode()


def _chat(messages: object, **fields: object) -> bytes:
    return _json(messages=messages, **fields)


CHAT = "/v1/chat/completions"
HI = [{"role": "user", "content": "Hi"}]
CORPUS = [
    # malformed JSON and bodies that are not JSON objects
    Abuse("truncated", b'{"model": "abuse", "prompt": "x"', 400, "not valid JSON"),
    Abuse("trailing-garbage", _json(prompt="x") + b"}}", 400, "not valid JSON"),
    Abuse("single-quotes", b"{'model': 'abuse', 'prompt': 'x'}", 400, "not valid JSON"),
    Abuse("empty-body", b"", 400, "not valid JSON"),
    Abuse("bare-string", b'"prompt"', 400, "JSON object"),
    Abuse("bare-number", b"1e999", 400, "JSON object"),
    Abuse("nul-bytes", b"\x00" * 64, 400, "not valid JSON"),
    Abuse("deep-array", b"[" * 200_000 + b"]" * 200_000, 400, "nested too deeply"),
    Abuse(
        "deep-object-in-field",
        _chat(HI)[:-1] + b', "metadata": ' + b'{"a":' * 500 + b"1" + b"}" * 501,
        400,
        "`metadata.a`",
        "metadata.a",
        CHAT,
    ),
    Abuse("huge-integer", b'{"model": "abuse", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", 400, "4300"),
    # wrong content types
    Abuse("text-plain", _json(prompt="x"), 415, "application/json", "Content-Type", content_type="text/plain"),
    Abuse(
        "form",
        b"model=abuse&prompt=x",
        415,
        "application/json",
        "Content-Type",
        content_type="application/x-www-form-urlencoded",
    ),
    Abuse(
        "multipart",
        b"--b\r\n\r\nx\r\n--b--",
        415,
        "multipart/form-data",
        "Content-Type",
        content_type="multipart/form-data; boundary=b",
    ),
    Abuse("no-content-type-is-json", _json(prompt="Hi", max_tokens=1), 200, "", content_type=None),
    Abuse(
        "json-with-charset", _json(prompt="Hi", max_tokens=1), 200, "", content_type="application/json; charset=utf-8"
    ),
    # invalid UTF-8 and text that is not text
    Abuse("invalid-utf8", b'{"model": "abuse", "prompt": "\xff\xfe"}', 400, "UTF-8"),
    Abuse("overlong-utf8", b'{"model": "abuse", "prompt": "\xc0\xaf"}', 400, "UTF-8"),
    Abuse("lone-surrogate-prompt", b'{"model": "abuse", "prompt": "a\\ud800"}', 400, "surrogate", "prompt.0"),
    Abuse(
        "lone-surrogate-chat",
        _chat([{"role": "user", "content": "\ud800"}]),
        400,
        "surrogate",
        "messages.0.content",
        CHAT,
    ),
    Abuse("lone-surrogate-field-name", b'{"model": "abuse", "prompt": "x", "\\udc80": 1}', 400, "request body: "),
    # huge prompts, beyond the limit by tokens and by characters
    Abuse("prompt-over-token-limit", _json(prompt="word " * 200), 400, "maxPromptTokens", "prompt"),
    Abuse("prompt-3-mib", _json(prompt="x" * 3_000_000), 400, "characters long", "prompt"),
    Abuse(
        "chat-3-mib", _chat([{"role": "user", "content": "y " * 1_500_000}]), 400, "characters long", "messages", CHAT
    ),
    Abuse("many-messages", _chat([{"role": "user", "content": "a"}] * 5_000), 400, "maxPromptTokens", "messages", CHAT),
    Abuse("body-over-limit", b" " * (MAX_BODY + 1), 413, "request body exceeds"),
    # max_tokens beyond the limits, negative, NaN and infinite numbers
    Abuse("max-tokens-over-limit", _json(prompt="x", max_tokens=257), 400, "maxTokensLimit", "max_tokens"),
    Abuse("max-tokens-2-63", _json(prompt="x", max_tokens=2**63), 400, "maxTokensLimit", "max_tokens"),
    Abuse(
        "max-completion-tokens-huge",
        _chat(HI, max_completion_tokens=10**30),
        400,
        "maxTokensLimit",
        "max_completion_tokens",
        CHAT,
    ),
    Abuse("max-tokens-negative", _json(prompt="x", max_tokens=-1), 400, "greater than", "max_tokens"),
    Abuse("max-tokens-integral-float", _json(prompt="x", max_tokens=1.0), 200, ""),
    Abuse("max-tokens-float", _json(prompt="x", max_tokens=4.5), 400, "integer", "max_tokens"),
    Abuse("max-tokens-1e400", b'{"model": "abuse", "prompt": "x", "max_tokens": 1e400}', 400, "integer", "max_tokens"),
    Abuse("temperature-nan", b'{"model": "abuse", "prompt": "x", "temperature": NaN}', 400, "less than", "temperature"),
    Abuse(
        "temperature-inf",
        b'{"model": "abuse", "prompt": "x", "temperature": Infinity}',
        400,
        "less than",
        "temperature",
    ),
    Abuse("temperature-negative", _json(prompt="x", temperature=-0.1), 400, "greater than", "temperature"),
    Abuse("top-p-nan", b'{"model": "abuse", "prompt": "x", "top_p": NaN}', 400, "equal to", "top_p"),
    Abuse("top-p-subnormal", _json(prompt="x", top_p=5e-324), 400, "greater than", "top_p"),
    Abuse("penalty-subnormal", _json(prompt="x", repetition_penalty=5e-324), 400, "greater than", "repetition_penalty"),
    Abuse(
        "penalty-minus-inf",
        b'{"model": "abuse", "prompt": "x", "repetition_penalty": -Infinity}',
        400,
        "greater than",
        "repetition_penalty",
    ),
    Abuse("seed-beyond-64-bits", _json(prompt="x", seed=2**64), 400, "less than", "seed"),
    Abuse("seed-nan", b'{"model": "abuse", "prompt": "x", "seed": NaN}', 400, "integer", "seed"),
    Abuse(
        "frequency-penalty-nan",
        b'{"model": "abuse", "prompt": "x", "frequency_penalty": NaN}',
        400,
        "less than",
        "frequency_penalty",
    ),
    Abuse("temperature-subnormal-is-greedy", _json(prompt="Hi", max_tokens=2, temperature=5e-324), 200, ""),
    # huge stop lists and stop strings
    Abuse("stop-10000", _json(prompt="x", stop=["s"] * 10_000), 400, "at most 4", "stop"),
    Abuse("stop-1-mib-string", _json(prompt="x", stop="s" * 1_000_000), 400, "at most 256", "stop.0"),
    Abuse("stop-not-strings", _json(prompt="x", stop=[1, None]), 400, "string", "stop.0"),
    # unknown fields, at the top and nested, are ignored (and named in a Warning header)
    Abuse("unknown-top", _json(prompt="x", functions=[]), 200, ""),
    Abuse("unknown-in-message", _chat([{"role": "user", "content": "x", "audio": {"id": "1"}}]), 200, "", path=CHAT),
    Abuse("unknown-in-stream-options", _json(prompt="x", stream=True, stream_options={"x": 1}), 200, ""),
    # known fields asking for what cannot be done
    Abuse(
        "json-schema", _chat(HI, response_format={"type": "json_schema"}), 400, "structured", "response_format", CHAT
    ),
    Abuse("tool-required", _chat(HI, tool_choice="required"), 400, "not supported", "tool_choice", CHAT),
    Abuse("n-beyond-places", _json(prompt="x", n=6), 400, "maxQueue", "n"),
    # empty and malformed conversations, wrong roles
    Abuse("messages-null", _chat(None), 400, "valid list", "messages", CHAT),
    Abuse("messages-object", _chat({"role": "user", "content": "x"}), 400, "valid list", "messages", CHAT),
    Abuse("message-not-object", _chat(["hello"]), 400, "valid dictionary", "messages.0", CHAT),
    Abuse("content-empty-parts-is-served", _chat([{"role": "user", "content": []}], max_tokens=1), 200, "", path=CHAT),
    Abuse("content-null", _chat([{"role": "user", "content": None}]), 400, "required", "messages.0.content", CHAT),
    Abuse("assistant-content-null", _chat([*HI, {"role": "assistant", "content": None}, *HI]), 200, "", path=CHAT),
    Abuse("role-bot", _chat([{"role": "bot", "content": "x"}]), 400, "'user'", "messages.0.role", CHAT),
    Abuse("role-uppercase", _chat([{"role": "USER", "content": "x"}]), 400, "'user'", "messages.0.role", CHAT),
    Abuse("role-missing", _chat([{"content": "x"}]), 400, "required", "messages.0.role", CHAT),
    Abuse("prompt-on-chat", _json(prompt="x"), 400, "required", "messages", CHAT),
    Abuse(
        "model-unknown", _json(prompt="x").replace(b'"abuse"', b'"../../etc/passwd"'), 404, "does not exist", "model"
    ),
    Abuse("model-number", b'{"model": 7, "prompt": "x"}', 400, "string", "model"),
]


@pytest.mark.parametrize("abuse", CORPUS, ids=[a.name for a in CORPUS])
def test_hand_written_corpus(abuse_server: AbuseServer, abuse: Abuse) -> None:
    headers = {"content-type": abuse.content_type} if abuse.content_type else {}
    response = httpx.post(f"{abuse_server.url}{abuse.path}", content=abuse.body, headers=headers, timeout=60)
    assert response.status_code == abuse.status, response.text
    assert_names_its_subject("POST", abuse.path, response)
    if abuse.status >= 400:
        error = response.json()["error"]
        assert abuse.words in error["message"], error
        assert error["param"] == abuse.param, error


def test_corpus_leaves_the_server_healthy(abuse_server: AbuseServer) -> None:
    abuse_server.wait_idle()
    abuse_server.assert_healthy()


# slow and vanishing clients


def raw_connection(url: str) -> socket.socket:
    parts = urlsplit(url)
    sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
    return sock


def request_head(path: str, length: int) -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n".encode()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one response (the server closes or the body is complete)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length"))
    while len(body) < length:
        body += sock.recv(65536)
    return int(head.split()[1]), body


def test_a_body_trickled_byte_by_byte_is_served_and_others_are_not_held_up(abuse_server: AbuseServer) -> None:
    body = _json(prompt="Hello there", max_tokens=1)
    with raw_connection(abuse_server.url) as sock:
        sock.sendall(request_head("/v1/completions", len(body)))
        for index, byte in enumerate(body):
            sock.sendall(bytes([byte]))
            time.sleep(0.02)
            if index == len(body) // 2:  # meanwhile the server answers everyone else at once
                started = time.monotonic()
                assert httpx.get(f"{abuse_server.url}/healthz", timeout=5).status_code == 200
                assert time.monotonic() - started < 1
        status, answer = read_response(sock)
    assert status == 200, answer
    assert json.loads(answer)["usage"]["completion_tokens"] == 1


def test_a_stalled_body_gets_408_and_frees_the_connection(abuse_server: AbuseServer) -> None:
    body = _json(prompt="Hello")
    with raw_connection(abuse_server.url) as sock:
        sock.sendall(request_head("/v1/completions", len(body)) + body[:10])
        started = time.monotonic()
        status, answer = read_response(sock)
        waited = time.monotonic() - started
    assert status == 408, answer
    assert "not received within 3 s (10 bytes arrived)" in json.loads(answer)["error"]["message"]
    assert BODY_TIMEOUT - 0.5 < waited < BODY_TIMEOUT + 5


def test_a_slow_stream_reader_gets_every_event(abuse_server: AbuseServer) -> None:
    """A reader that takes 50 ms per event still receives the whole stream in order; the slot is freed."""
    abuse_server.wait_idle()
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 32, "stream": True}
    events = []
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{abuse_server.url}/v1/completions", json=body) as stream,
    ):
        for line in stream.iter_lines():
            time.sleep(0.05)
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["metaspec"]["route"] == "speculative"
    abuse_server.wait_idle()


def test_disconnects_mid_stream_cancel_generation(abuse_server: AbuseServer) -> None:
    """Streams closed after their first event, some decoding and some queued: the in-flight and queue
    gauges return to zero, and far fewer tokens are generated than the streams asked for."""
    abuse_server.wait_idle()
    before = abuse_server.metrics()["metaspec_completion_tokens_total{}"]
    body = json.dumps({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 256, "stream": True}).encode()
    sockets = [raw_connection(abuse_server.url) for _ in range(5)]  # 1 decoding + 4 queued
    for sock in sockets:
        sock.sendall(request_head("/v1/completions", len(body)) + body)
        time.sleep(0.05)  # in this order: the first one decodes
    first = sockets[0].recv(65536)
    assert b"200 OK" in first and b"data: " in first
    deadline = time.monotonic() + 30
    while abuse_server.busy() != (1, 4):
        assert time.monotonic() < deadline, f"(in flight, queued) = {abuse_server.busy()}, expected (1, 4)"
        time.sleep(0.02)
    for sock in sockets:
        sock.close()
    abuse_server.wait_idle()
    generated = abuse_server.metrics()["metaspec_completion_tokens_total{}"] - before
    assert generated < 256, f"{generated} tokens counted for streams closed after their first event"
    abuse_server.assert_healthy()


# memory and overload


def test_memory_stays_bounded_under_abuse(abuse_server: AbuseServer) -> None:
    """RSS after each of 10 rounds of the corpus (55 abusive requests each): a leak grows it every round,
    the allocator in a few steps, so the median growth per round after the first three stays small."""
    abusive = [a for a in CORPUS if a.status >= 400]

    def round_of_abuse(http: httpx.Client) -> None:
        for abuse in abusive:
            headers = {"content-type": abuse.content_type} if abuse.content_type else {}
            assert http.post(abuse.path, content=abuse.body, headers=headers).status_code == abuse.status

    rss = []
    with httpx.Client(base_url=abuse_server.url, timeout=60) as http:
        for _ in range(RSS_ROUNDS):
            round_of_abuse(http)
            rss.append(abuse_server.rss_mib())
    print(
        f"server anonymous RSS per round of {len(abusive)} abusive requests (MiB):", " ".join(f"{r:.1f}" for r in rss)
    )
    steady = statistics.median(after - before for before, after in itertools.pairwise(rss[2:]))
    assert steady < RSS_STEADY_GROWTH_MIB, (
        f"anonymous RSS grew a median {steady:.1f} MiB per round after the third: {' '.join(f'{r:.0f}' for r in rss)}"
    )
    abuse_server.assert_healthy()


async def burst(url: str, clients: int) -> tuple[list[int], float]:
    """`clients` requests at once; their statuses and the deepest queue seen on /metrics meanwhile."""
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 2}
    limits = httpx.Limits(max_connections=clients + 1)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        deepest = 0.0

        async def watch() -> None:
            nonlocal deepest
            while True:
                text = (await http.get("/metrics")).text
                depth = next(line for line in text.splitlines() if line.startswith("metaspec_waiting_sequences{"))
                deepest = max(deepest, float(depth.split()[1]))
                await asyncio.sleep(0.01)

        watcher = asyncio.create_task(watch())
        responses = await asyncio.gather(*(http.post("/v1/completions", json=body) for _ in range(clients)))
        watcher.cancel()
    return [r.status_code for r in responses], deepest


def test_load_at_increasing_concurrency_gets_429_not_queues(abuse_server: AbuseServer) -> None:
    abuse_server.wait_idle()
    capacity = SAMPLING["maxConcurrency"] + SAMPLING["maxQueue"]
    for clients in (1, 4, 16, 64):
        statuses, deepest = asyncio.run(burst(abuse_server.url, clients))
        assert set(statuses) <= {200, 429}, statuses
        assert deepest <= SAMPLING["maxQueue"]
        assert statuses.count(200) >= min(clients, capacity)
        assert (429 in statuses) == (clients > capacity), statuses
    abuse_server.wait_idle()
    abuse_server.assert_healthy()

"""Payloads as the OpenAI and vLLM documentation's examples send them (data/client_payloads.json, with the
served model's name put in): each gets 200, or a deliberate 400 naming the field it cannot honour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

MODEL = "tiny-spec"  # the session server's name (tests/integration/server/conftest.py)
PAYLOADS = json.loads((Path(__file__).parent / "data" / "client_payloads.json").read_text())


@pytest.mark.parametrize("case", PAYLOADS, ids=[case["name"] for case in PAYLOADS])
def test_documented_payload(router, case: dict) -> None:
    body = {**case["body"], "model": MODEL}
    if "max_tokens" not in body and "max_completion_tokens" not in body and case["path"].startswith("/v1"):
        body["max_tokens"] = 4  # the examples' own lengths are the server default's business; keep CI short
    with router.client() as http:
        response = http.post(case["path"], json=body)
    assert response.status_code == case["status"], (case["source"], response.text)
    if case["status"] == 400:
        error = response.json()["error"]
        assert error["param"] == case["param"] and f"`{case['param']}`" in error["message"], error
        assert "not supported" in error["message"] or "only" in error["message"], error
    elif body.get("stream"):
        assert response.text.rstrip().endswith("data: [DONE]")
    router.wait_idle()

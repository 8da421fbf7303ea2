"""Streaming text: multi-byte characters are never split, stop strings never leak."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from metaspec.server.engine.detokenize import REPLACEMENT, IncrementalDetokenizer, StopStrings

TEXT = "Café für 世界 — naïve 🙂🚀 emoji, Ωmega and ünïcödé: 東京タワー ok."


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path):
    return AutoTokenizer.from_pretrained(smollm2)


def test_token_by_token_text_equals_full_decode(tokenizer) -> None:
    prompt = tokenizer("Say something:")["input_ids"]
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids), "the text must split characters across tokens"
    stream = IncrementalDetokenizer(tokenizer, prompt)
    pieces = [stream.add([i]) for i in ids] + [stream.flush()]
    assert all(REPLACEMENT not in p for p in pieces)
    assert "".join(pieces) == tokenizer.decode(ids)


def test_chunks_of_several_tokens(tokenizer) -> None:
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    stream = IncrementalDetokenizer(tokenizer, [])
    pieces = [stream.add(ids[i : i + 3]) for i in range(0, len(ids), 3)] + [stream.flush()]
    assert "".join(pieces) == tokenizer.decode(ids)


def test_flush_emits_an_incomplete_character(tokenizer) -> None:
    ids = tokenizer("🙂", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1
    stream = IncrementalDetokenizer(tokenizer, [])
    assert stream.add(ids[:1]) == ""
    assert stream.flush() == tokenizer.decode(ids[:1])


def test_stop_string_is_cut_and_never_streamed() -> None:
    stops = StopStrings(("END", "\n\n"))
    out = [stops.add(p) for p in ("Hello E", "N", "D and more")]
    assert out == [("Hello ", False), ("", False), ("", True)]
    assert stops.text[: stops.sent] == "Hello "


def test_partial_match_released_when_it_turns_out_not_to_stop() -> None:
    stops = StopStrings(("END",))
    assert stops.add("an EN") == ("an ", False)
    assert stops.add("Ding") == ("", True)
    stops = StopStrings(("END",))
    assert stops.add("an EN") == ("an ", False)
    assert stops.add("TRY") == ("ENTRY", False)
    assert stops.flush() == ""


def test_no_stop_strings_streams_everything() -> None:
    stops = StopStrings(())
    assert stops.add("abc") == ("abc", False)

"""Teacher-output records: what the generator writes for `input` records and for chat records."""

from __future__ import annotations

from metaspec.generator.engines import Completion
from metaspec.generator.generate import record_body
from metaspec.generator.stats import compute_stats
from metaspec.records import Record

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "Times 3?"},
]


def completion(record: Record) -> Completion:
    return Completion(record.id, "12", 2, "stop", 0.5)


def test_a_chat_prompt_becomes_a_chat_training_record() -> None:
    old_answer = Record.model_validate({"messages": [*CHAT, {"role": "assistant", "content": "36"}]})
    assert old_answer.prompt_messages() == CHAT, "the teacher answers the turn before the final assistant one"
    body = record_body(old_answer, completion(old_answer), "s3://models/t", {})
    assert body["messages"] == CHAT and body["output"] == "12" and "domain" not in body and "input" not in body
    trained = Record.model_validate(body)
    assert trained.training_problem() is None and trained.answer == "12"
    assert compute_stats([body], 1, 0.9)["byDomain"]["unlabelled"]["examples"] == 1


def test_an_input_record_keeps_its_shape_and_labels() -> None:
    record = Record.model_validate({"id": "a", "input": "2 + 2?", "domain": "math", "difficulty": "easy"})
    body = record_body(record, completion(record), "s3://models/t", {})
    assert {k: body[k] for k in ("id", "input", "output", "domain", "difficulty")} == {
        "id": "a",
        "input": "2 + 2?",
        "output": "12",
        "domain": "math",
        "difficulty": "easy",
    }

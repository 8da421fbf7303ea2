"""The data contract between stages: the JSONL record every dataset, prompt file and teacher output holds.

Reading them from URIs is `metaspec.datasets`; turning a record's input into a prompt is
`metaspec.prompts`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DOMAINS = (
    "math",
    "coding",
    "science",
    "reasoning",
    "tool_use",
    "reading",
    "summarization",
    "common_sense",
)


class Record(BaseModel):
    """One example: `{"id", "input", "output", "domain", "difficulty"}` (output absent in prompt files)."""

    model_config = ConfigDict(extra="allow")  # teacher outputs carry `metadata`

    id: str = Field(min_length=1, max_length=256)
    input: str = Field(min_length=1)
    output: str | None = None
    domain: str = Field(min_length=1, max_length=64)
    difficulty: Literal["easy", "hard"]


class TeacherMetadata(BaseModel):
    teacher_model: str
    generation_params: dict[str, Any]
    num_tokens_generated: int
    finish_reason: Literal["stop", "length"]
    generation_time: float


class InvalidData(ValueError):
    """A dataset that cannot be used; the message names the source, line and field."""


def dump_jsonl(records: Iterable[Record | dict[str, Any]]) -> Iterator[str]:
    for record in records:
        body = record.model_dump(exclude_none=True) if isinstance(record, BaseModel) else record
        yield json.dumps(body, ensure_ascii=False) + "\n"

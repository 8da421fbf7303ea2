"""The data contract between stages: JSONL records and how a record's input becomes a prompt.

Training data, teacher prompts and teacher outputs are JSONL files of these records. Every stage
formats prompts with `chat_prompt_ids`, so the trainer, the generator and the server see the same
tokens for the same input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

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


@dataclass
class LoadReport:
    """What reading a JSONL source found."""

    source: str
    valid: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, message)
    duplicate_ids: list[str] = field(default_factory=list)

    def describe(self, limit: int = 10) -> str:
        lines = [f"{self.source}: {self.valid} valid, {len(self.invalid)} invalid"]
        lines += [f"  line {n}: {msg}" for n, msg in self.invalid[:limit]]
        if len(self.invalid) > limit:
            lines.append(f"  … and {len(self.invalid) - limit} more")
        if self.duplicate_ids:
            lines.append(f"  duplicate ids: {', '.join(self.duplicate_ids[:limit])}")
        return "\n".join(lines)


class InvalidData(ValueError):
    """A dataset that cannot be used; the message names the source, line and field."""


def parse_jsonl(
    lines: Iterable[str], source: str, require_output: bool = True, skip_invalid: bool = False
) -> tuple[list[Record], LoadReport]:
    """Validate JSONL line by line. Invalid lines raise InvalidData (naming line and field) unless
    `skip_invalid`, in which case they are counted in the report. Duplicate ids are always an error
    for the later occurrence (counted as invalid)."""
    report = LoadReport(source)
    records: list[Record] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = _parse_line(line, require_output)
            if record.id in seen:
                report.duplicate_ids.append(record.id)
                raise ValueError(f"field `id`: duplicate id {record.id!r}")
        except ValueError as e:
            report.invalid.append((number, str(e)))
            if not skip_invalid:
                raise InvalidData(f"{source} line {number}: {e}") from None
            continue
        seen.add(record.id)
        records.append(record)
    report.valid = len(records)
    return records, report


def _parse_line(line: str, require_output: bool) -> Record:
    try:
        body = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(body, dict):
        raise ValueError(f"expected a JSON object, got {type(body).__name__}")
    try:
        record = Record.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<record>"
        raise ValueError(f"field `{where}`: {first['msg']}") from None
    if require_output and not record.output:
        raise ValueError("field `output`: missing or empty (training records need an output)")
    return record


def dump_jsonl(records: Iterable[Record | dict[str, Any]]) -> Iterator[str]:
    for record in records:
        body = record.model_dump(exclude_none=True) if isinstance(record, BaseModel) else record
        yield json.dumps(body, ensure_ascii=False) + "\n"


def chat_messages(user_input: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user_input}]


def chat_prompt_ids(tokenizer: Any, user_input: str, system: str | None = None) -> list[int]:
    """Token ids of the prompt for `user_input`: the tokenizer's chat template with the generation
    prompt appended, or the raw text when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        encoded = tokenizer.apply_chat_template(
            chat_messages(user_input, system), add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return list(ids)
    return list(tokenizer(user_input, add_special_tokens=True)["input_ids"])


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: EOS plus the chat template's end-of-turn tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return sorted(ids)

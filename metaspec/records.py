"""The data contract between stages: the JSONL record every dataset, prompt file and teacher output holds.

Two shapes are accepted: our own `{"id", "input", "output"}` and the chat format most fine-tuning tools
use, `{"messages": [{"role", "content"}, ...]}` (multi-turn, system prompts). `domain` and `difficulty`
are optional metadata in both. Reading records from URIs is `metaspec.datasets`; turning a record into a
prompt is `metaspec.prompts`; into a training example, `metaspec.trainer.data`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

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

#: Most characters of a record's `id`.
ID_LENGTH = 256


class Message(BaseModel):
    """One turn of a chat record, as OpenAI's and TRL's chat datasets write it."""

    model_config = ConfigDict(extra="allow")  # e.g. `name`, `tool_calls`: handed to the chat template as they are

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    weight: Literal[0, 1] | None = None  # OpenAI's fine-tuning format: 0 keeps an assistant turn out of the loss


class Record(BaseModel):
    """One example, in one of two shapes:

    - `{"id", "input", "output"}`: one user turn and its answer (no `output` in prompt files);
    - `{"messages": [...]}`: a conversation. Its answer is the final assistant turn, or `output` when
      given (teacher outputs write the prompt conversation as `messages` and the answer as `output`).
      Without `id`, one is derived from the conversation's content.

    `domain` and `difficulty` are optional metadata: token statistics are reported per domain and
    difficulty, and ANIL-MAML builds its tasks per domain (`task`).
    """

    model_config = ConfigDict(extra="allow")  # teacher outputs carry `metadata`

    id: str = Field(min_length=1, max_length=ID_LENGTH)
    input: str | None = Field(default=None, min_length=1)
    messages: list[Message] | None = Field(default=None, min_length=1)
    output: str | None = None
    domain: str | None = Field(default=None, min_length=1, max_length=64)
    difficulty: Literal["easy", "hard"] | None = None
    _source: str | None = PrivateAttr(default=None)  # the file the record was read from

    @model_validator(mode="before")
    @classmethod
    def _derive_chat_id(cls, body: Any) -> Any:
        if isinstance(body, dict) and "id" not in body and isinstance(body.get("messages"), list):
            canonical = json.dumps(body["messages"], sort_keys=True, ensure_ascii=False)
            return {**body, "id": "chat-" + hashlib.sha256(canonical.encode()).hexdigest()[:16]}
        return body

    @model_validator(mode="after")
    def _one_shape(self) -> Record:
        if self.input is None and self.messages is None:
            raise ValueError("field `input`: missing (a record holds `input` and `output`, or chat `messages`)")
        if self.input is not None and self.messages is not None:
            raise ValueError("fields `input` and `messages`: a record holds one or the other, not both")
        if self.messages is not None and self.output is not None and self.messages[-1].role == "assistant":
            raise ValueError(
                "field `output`: the conversation already ends with an assistant turn; give one or the other"
            )
        return self

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def prompt_messages(self) -> list[dict[str, Any]]:
        """The conversation up to the answer: what a teacher or a server is asked (without `weight`)."""
        if self.messages is None:
            return [{"role": "user", "content": self.input}]
        turns = self.messages[:-1] if self.output is None and self.messages[-1].role == "assistant" else self.messages
        return [turn.model_dump(exclude={"weight"}, exclude_none=True) for turn in turns]

    @property
    def answer(self) -> str | None:
        """The final assistant turn's text (`output`, or a conversation's last assistant message)."""
        if self.output is not None or self.messages is None:
            return self.output
        last = self.messages[-1]
        return last.content if last.role == "assistant" else None

    def training_problem(self) -> str | None:
        """Why this record cannot be trained on, naming the field; None when it can."""
        if self.messages is None:
            return None if self.output else "field `output`: missing or empty (training records need an output)"
        if not self.answer:
            return (
                "field `messages`: the conversation does not end with a non-empty assistant turn "
                "(training records need an answer; a conversation without one is a prompt)"
            )
        if self.output is None and all(m.weight == 0 for m in self.messages if m.role == "assistant"):
            return "field `messages`: every assistant turn has weight 0, so nothing is trained on"
        return None

    @property
    def user_text(self) -> str:
        """What the user said (every user turn): used to find the same prompt in two datasets."""
        if self.messages is None:
            return self.input or ""
        return "\n".join(m.content for m in self.messages if m.role == "user")

    @property
    def task(self) -> str:
        """ANIL-MAML's task group: the domain, or for records without one, the file they were read from
        (`file:<name>`), so a prefix of several files without domains gives one task group per file."""
        if self.domain:
            return self.domain
        return f"file:{PurePosixPath(self._source).name}" if self._source else "all"

    def read_from(self, source: str) -> Record:
        self._source = source
        return self


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

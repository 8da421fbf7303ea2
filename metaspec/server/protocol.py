"""The OpenAI API subset the router serves, as pydantic models (requests strict, responses plain).

Requests refuse unknown fields so a typo (`max_token`) is a 400 naming the field instead of a silently
ignored setting. Optional OpenAI fields that clients commonly send are accepted when their value asks for
nothing we would ignore (`user`, `logprobs: null`, `echo: false`, zero penalties, ...); a value that asks
for an unsupported feature (`n: 2`, `logprobs: 5`, tools) is refused with the reason.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_STOP_STRINGS = 4
#: Longest stop string. Matching holds back text that could begin one, so its cost per round grows with
#: this length; real stop sequences (`\n\n`, `</answer>`, `User:`) are far shorter.
MAX_STOP_CHARS = 256
#: Smallest nonzero `top_p` / `repetition_penalty`: below it float32 logits overflow or the nucleus is
#: empty. 1e-6 < 1/vocab for any real vocabulary, so `top_p` at the bound already means "top token only".
MIN_FACTOR = 1e-6


def _listify(value: Any) -> Any:
    """OpenAI accepts one string or a list of them; normalise so error locations stay plain."""
    return [value] if isinstance(value, str) else value


def _unicode(value: str) -> str:
    """JSON's `\\ud800` escapes can smuggle unpaired UTF-16 surrogates into a str; they are not text and
    no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        raise ValueError(f"character {e.start} is an unpaired UTF-16 surrogate (\\u{code:04x}), not text") from None
    return value


Text = Annotated[str, AfterValidator(_unicode)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_unicode)]
StopList = Annotated[list[StopText], BeforeValidator(_listify, json_schema_input_type=StopText | list[StopText])]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields shared by completions and chat completions. `None` means "the server's default"."""

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # below engine.sampling.GREEDY_BELOW: greedy, as in vLLM
    top_p: float | None = Field(None, ge=MIN_FACTOR, le=1)
    repetition_penalty: float | None = Field(None, ge=MIN_FACTOR, le=10)  # vLLM's extension, same name
    n: int | None = None
    stop: StopList | None = Field(None, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # abuse-tracking id in OpenAI; accepted and ignored
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only n=1 is supported (one choice per request); send several requests instead")
        return value

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_openai_penalties(cls, value: float | None) -> float | None:
        if value not in (None, 0):
            raise ValueError("not supported: use `repetition_penalty` (multiplicative, as in CTRL and vLLM)")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _no_logit_bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value:
            raise ValueError("not supported: logit bias would change the distribution the draft must match")
        return value

    @field_validator("stream_options")
    @classmethod
    def _stream_options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed with `stream: true`")
        return value


class CompletionRequest(_SamplingRequest):
    """`POST /v1/completions`: a plain text prompt, no chat template."""

    prompt: Annotated[list[Text], BeforeValidator(_listify, json_schema_input_type=Text | list[Text])] = Field(
        min_length=1, max_length=1
    )
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            raise ValueError("token-id prompts are not supported: send the prompt as text")
        if isinstance(value, list) and len(value) > 1:
            raise ValueError("only one prompt per request is supported")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("`echo: true` is not supported")
        return value

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: int | None) -> int | None:
        if value is not None:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("best_of")
    @classmethod
    def _one_best_of(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError("only best_of=1 is supported")
        return value

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("`suffix` (insertion) is not supported")
        return value

    @property
    def text(self) -> str:
        return self.prompt[0]


def _content_text(value: Any) -> Any:
    """Chat content is a string or a list of parts; only text parts can be served by a text model."""
    if not isinstance(value, list):
        return value
    texts = []
    for index, part in enumerate(value):
        kind = part.get("type") if isinstance(part, dict) else type(part).__name__
        if kind != "text":
            raise ValueError(f"content part {index} has type {kind!r}: only text parts are supported")
        if not isinstance(part.get("text"), str):
            raise ValueError(f"content part {index} is a text part without a `text` string")
        texts.append(part["text"])
    return "".join(texts)


class TextPart(_Request):
    """A content part of a chat message (its schema only: `_content_text` reads the parts)."""

    type: Literal["text"]
    text: str


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[Text, BeforeValidator(_content_text, json_schema_input_type=str | list[TextPart])]
    name: str | None = None  # participant name; the chat template has no place for it

    def template_dict(self) -> dict[str, str]:
        # `developer` is OpenAI's newer name for the system role; chat templates only know `system`
        return {"role": "system" if self.role == "developer" else self.role, "content": self.content}


class ResponseFormat(_Request):
    type: Literal["text"]


class ChatCompletionRequest(_SamplingRequest):
    """`POST /v1/chat/completions`: messages rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["none"] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _no_top_logprobs(cls, value: int | None) -> int | None:
        if value:
            raise ValueError("logprobs are not supported")
        return value

    @field_validator("tools")
    @classmethod
    def _no_tools(cls, value: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
        if value:
            raise ValueError("tool calling is not supported")
        return value

    @field_validator("store")
    @classmethod
    def _no_store(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("stored completions are not supported")
        return value

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("max_tokens") is not None:
            raise ValueError("give `max_tokens` or `max_completion_tokens`, not both")
        return value

    @model_validator(mode="after")
    def _max_from_max_completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self


# Responses: plain models (no strictness needed); field names are OpenAI's.


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MetaspecInfo(BaseModel):
    """What speculation did for this request (the `metaspec` field of every response)."""

    route: Literal["speculative", "target-only"]
    proposed_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None
    rounds: int
    first_token_confidence: float | None


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: None = None
    finish_reason: Literal["stop", "length"] | None = None


class _Response(BaseModel):
    id: str
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    usage: Usage | None = None
    metaspec: MetaspecInfo | None = None


class CompletionResponse(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]


class ChatCompletionResponse(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class ChatCompletionChunk(_Response):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "metaspec"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"

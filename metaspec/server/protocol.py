"""The OpenAI API served here, as pydantic models (requests validated, responses plain).

Lenient where clients are, strict where it matters, as vLLM's server is:

- a field this server does not know (`service_tier`, `reasoning_effort`, a vendor extension, a typo) is
  accepted and ignored; the response says which in a warning header and the server logs it
  (`ignored_fields`). Clients send many such fields by default, and refusing them breaks them;
- a field it knows is validated without coercion (`"5"` is not a number, `"yes"` not a boolean; only an
  integral float such as `64.0` counts as an integer), and a bad value is a 400 naming the field;
- a value asking for something this server cannot do (structured output, a forced tool call, `echo`) is a
  400 saying so (`_REFUSED`, one table), never a silent ignore.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
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
MAX_STOP_TOKEN_IDS = 64
#: Smallest nonzero `top_p` / `repetition_penalty`: below it float32 logits overflow or the nucleus is
#: empty. 1e-6 < 1/vocab for any real vocabulary, so `top_p` at the bound already means "top token only".
MIN_FACTOR = 1e-6
#: Most samples per request (`n`): each is a sequence of its own in the engine.
MAX_N = 16
#: Most alternatives per position (`top_logprobs`, completions' `logprobs`), OpenAI's limit.
MAX_LOGPROBS = 20


def _listify(value: Any) -> Any:
    """OpenAI accepts one string or a list of them; normalise so error locations stay plain."""
    return [value] if isinstance(value, str) else value


def _integral(value: Any) -> Any:
    """JSON has one number type and some clients write every number as a float (`max_tokens: 64.0`): an
    integral float is that integer; anything else is left for the strict integer check to refuse."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _unicode(value: str) -> str:
    """JSON's `\\ud800` escapes can smuggle unpaired UTF-16 surrogates into a str; they are not text and
    no tokenizer can encode them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(value[e.start])
        raise ValueError(f"character {e.start} is an unpaired UTF-16 surrogate (\\u{code:04x}), not text") from None
    return value


Int = Annotated[int, BeforeValidator(_integral)]
Text = Annotated[str, AfterValidator(_unicode)]
StopText = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS), AfterValidator(_unicode)]
StopList = Annotated[list[StopText], BeforeValidator(_listify, json_schema_input_type=StopText | list[StopText])]

#: Parameters of transformers' `apply_chat_template` (not template variables): the server sets them.
_TEMPLATE_CALL_PARAMETERS = frozenset(
    [
        "conversation",
        "messages",
        "tools",
        "documents",
        "chat_template",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
    ]
)
#: Known fields whose values ask for what this server cannot do: field → (refuses(value), why). One table
#: instead of a validator per field; a value the test does not refuse is served.
_REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "logit_bias": (bool, "`logit_bias` is not supported"),
    "echo": (bool, "`echo: true` (the prompt repeated in the answer) is not supported"),
    "best_of": (lambda v: v != 1, "`best_of` above 1 is not supported: ask for `n` samples and rank them yourself"),
    "suffix": (bool, "`suffix` (insertion between a prompt and a suffix) is not supported"),
    "store": (bool, "stored completions (`store: true`) are not supported"),
    "response_format": (
        lambda v: v.type != "text",
        "structured output (`response_format` of type `json_object` or `json_schema`) is not supported: "
        "decoding here is not constrained to a grammar, so the answer could not be guaranteed to match",
    ),
    "chat_template_kwargs": (
        lambda v: bool(set(v) & _TEMPLATE_CALL_PARAMETERS),
        "`chat_template_kwargs` may only set template variables, not the parameters of the template call ("
        + ", ".join(sorted(_TEMPLATE_CALL_PARAMETERS))
        + ")",
    ),
    **{
        name: (
            lambda v: v is not None,
            f"`{name}` (vLLM's constrained decoding) is not supported: decoding here is not constrained to a grammar",
        )
        for name in ("structured_outputs", "guided_json", "guided_regex", "guided_choice", "guided_grammar")
    },
    "tool_choice": (
        lambda v: v not in ("none", "auto"),
        "`tool_choice` that requires a tool call (`required` or a named function) is not supported: tool "
        "calls are not parsed out of the answer here; `auto` and `none` are",
    ),
}


class _Request(BaseModel):
    """Strict for known fields; unknown ones are kept in `model_extra` (see `ignored_fields`)."""

    model_config = ConfigDict(extra="allow", strict=True)

    @field_validator(*_REFUSED, check_fields=False)
    @classmethod
    def _refuse(cls, value: Any, info: ValidationInfo) -> Any:
        refuses, why = _REFUSED[str(info.field_name)]
        if value is not None and refuses(value):
            raise ValueError(why)
        return value


def ignored_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Dotted names of the unknown fields anywhere in a request (`messages.0.audio`), in order."""
    found = [f"{prefix}{name}" for name in model.model_extra or {}]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, item in items:
            if isinstance(item, BaseModel):
                path = f"{prefix}{name}." + ("" if index is None else f"{index}.")
                found += ignored_fields(item, path)
    return found


class StreamOptions(_Request):
    include_usage: bool = False


class _SamplingRequest(_Request):
    """Fields shared by completions and chat completions. `None` means "the server's default"."""

    model: str = Field(min_length=1)
    max_tokens: Int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # below api.GREEDY_BELOW: greedy, as in vLLM
    top_p: float | None = Field(None, ge=MIN_FACTOR, le=1)
    top_k: Int | None = Field(None, ge=-1, description="Keep the k most likely tokens; 0 or -1: all (vLLM's).")
    min_p: float | None = Field(None, ge=0, le=1, description="Drop tokens below min_p × the top probability.")
    repetition_penalty: float | None = Field(None, ge=MIN_FACTOR, le=10)  # vLLM's extension, same name
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    n: Int = Field(1, ge=1, le=MAX_N, description="Independent samples of the same prompt, decoded together.")
    stop: StopList | None = Field(None, max_length=MAX_STOP_STRINGS)
    stop_token_ids: list[Annotated[Int, Field(ge=0)]] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    ignore_eos: bool = False
    min_tokens: Int = Field(0, ge=0, description="Tokens generated before an end or stop token may end it.")
    seed: Int | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # abuse-tracking id in OpenAI; accepted and ignored
    logit_bias: dict[str, float] | None = None
    # vLLM's constrained decoding: named here so that asking for it is refused, not silently ignored
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None

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
    logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: Int | None = None
    suffix: str | None = None

    @field_validator("prompt", mode="before")
    @classmethod
    def _text_prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and not isinstance(value[0], str):
            raise ValueError("token-id prompts are not supported: send the prompt as text")
        if isinstance(value, list) and len(value) > 1:
            raise ValueError("only one prompt per request is supported: send one request per prompt")
        return value

    @property
    def text(self) -> str:
        return self.prompt[0]

    @property
    def top_logprob_count(self) -> int | None:
        """Alternatives per position when log-probabilities are asked for (0: the chosen token only)."""
        return self.logprobs


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


class FunctionCall(_Request):
    name: str
    arguments: str = Field(description="The arguments as a JSON text, as OpenAI sends them.")


class ToolCall(_Request):
    """A tool call of an earlier assistant turn, given back in the history."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


Content = Annotated[Text, BeforeValidator(_content_text, json_schema_input_type=str | list[TextPart])]


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Content | None = Field(None, validate_default=True)
    name: str | None = None  # participant name; passed to the chat template, which may use it
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    @field_validator("content", mode="after")
    @classmethod
    def _content_unless_assistant(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Only an assistant turn may have no content (it made tool calls instead)."""
        role = info.data.get("role")
        if value is None and role not in (None, "assistant"):
            raise ValueError(f"`content` is required in a {role} message: a string or a list of text parts")
        return value

    def template_dict(self) -> dict[str, Any]:
        """The message as chat templates read it: `developer` is OpenAI's newer name for `system`, which is
        all templates know; a tool call's arguments stay the JSON text they came as."""
        message: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.content or "",
        }
        for key in ("name", "tool_call_id"):
            if getattr(self, key) is not None:
                message[key] = getattr(self, key)
        if self.tool_calls:
            message["tool_calls"] = [call.model_dump(exclude_none=True) for call in self.tool_calls]
        return message


class ResponseFormat(_Request):
    type: Literal["text", "json_object", "json_schema"]


class FunctionDefinition(_Request):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Request):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(_Request):
    type: Literal["function"] = "function"
    function: dict[str, Any]


class ChatCompletionRequest(_SamplingRequest):
    """`POST /v1/chat/completions`: messages rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: Int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(
        None, description="Extra variables for the chat template (vLLM's), e.g. `enable_thinking`."
    )

    @field_validator("max_completion_tokens")
    @classmethod
    def _one_max(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and info.data.get("max_tokens") is not None:
            raise ValueError("give `max_tokens` or `max_completion_tokens`, not both")
        return value

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("only allowed with `logprobs: true`")
        return value

    @model_validator(mode="after")
    def _max_from_max_completion_tokens(self) -> ChatCompletionRequest:
        if self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return self

    @property
    def top_logprob_count(self) -> int | None:
        """Alternatives per position when log-probabilities are asked for (0: the chosen token only)."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools for the chat template; none when `tool_choice: none` says not to use them."""
        if not self.tools or self.tool_choice == "none":
            return None
        return [tool.model_dump(exclude_none=True) for tool in self.tools]


class TokenizeRequest(_Request):
    """`POST /tokenize` (vLLM's): the token ids of a prompt, or of a conversation with the chat template."""

    model: str | None = None
    prompt: Text | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either `prompt` or `messages`")
        return self


class DetokenizeRequest(_Request):
    """`POST /detokenize` (vLLM's): the text of token ids."""

    model: str | None = None
    tokens: list[Annotated[Int, Field(ge=0)]] = Field(max_length=1 << 20)


# Responses: plain models (no strictness needed); field names are OpenAI's.


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class MetaspecInfo(BaseModel):
    """What speculation did for this request (the `metaspec` field of every response), summed over its
    samples when `n` > 1."""

    route: Literal["speculative", "target-only"]
    proposed_tokens: int
    accepted_tokens: int
    acceptance_rate: float | None
    lookup_proposed_tokens: int
    """Of `proposed_tokens`, those prompt lookup proposed (`promptLookup`); the draft model proposed the rest."""
    lookup_accepted_tokens: int
    """Of `accepted_tokens`, those prompt lookup proposed."""
    rounds: int
    first_token_confidence: float | None


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(BaseModel):
    """A chat choice's log-probabilities, one entry per generated token."""

    content: list[ChatTokenLogprob] | None


class CompletionLogprobs(BaseModel):
    """A completion choice's log-probabilities (the legacy shape): parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float] = Field(default_factory=list)
    top_logprobs: list[dict[str, float]] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


FinishReason = Literal["stop", "length"]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: FinishReason | None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int = 0
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None = None
    finish_reason: FinishReason | None = None


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
    max_model_len: int | None = Field(None, description="Longest prompt + completion, in tokens (vLLM's field).")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class Health(BaseModel):
    status: Literal["ok", "loading"]


class Readiness(BaseModel):
    ready: bool


class Version(BaseModel):
    version: str


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


def request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"

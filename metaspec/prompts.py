"""How a record's input becomes a prompt, and which tokens end a turn: one place for every stage.

The trainer, the generator and the server format prompts here, so they see the same tokens for the
same input.
"""

from __future__ import annotations

from typing import Any

from metaspec.records import InvalidData, Record


def chat_messages(user_input: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    return [*messages, {"role": "user", "content": user_input}]


def chat_prompt_ids(tokenizer: Any, user_input: str, system: str | None = None) -> list[int]:
    """Token ids of the prompt for `user_input`: the tokenizer's chat template with the generation
    prompt appended, or the raw text when the tokenizer has no template."""
    if getattr(tokenizer, "chat_template", None):
        return encode_chat(tokenizer, chat_messages(user_input, system))
    return list(tokenizer(user_input, add_special_tokens=True)["input_ids"])


def record_prompt_ids(tokenizer: Any, record: Record) -> list[int]:
    """Token ids of the prompt a record asks: its input (`chat_prompt_ids`) or its conversation up to
    the answer (`Record.prompt_messages`) through the chat template."""
    if not record.is_chat:
        return chat_prompt_ids(tokenizer, record.input or "")
    require_chat_template(tokenizer, record)
    return encode_chat(tokenizer, record.prompt_messages())


def require_chat_template(tokenizer: Any, record: Record) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidData(
            f"record {record.id!r}: a `messages` record needs a tokenizer with a chat template, and this "
            "model's has none; use an instruct model or `input`/`output` records"
        )


def encode_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    template_kwargs: dict[str, Any] | None = None,
    generation: bool = True,
) -> list[int]:
    """Token ids of a conversation through the tokenizer's chat template, ready for the assistant's turn
    (`generation`); `tools` and `template_kwargs` are the template's variables of those names."""
    encoded = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation, tokenize=True, **(template_kwargs or {})
    )
    return list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Ids that end an assistant turn: EOS plus the chat template's end-of-turn tokens."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for token in ("<|im_end|>", "<|eot_id|>", "<|end_of_turn|>", "<end_of_turn>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return sorted(ids)

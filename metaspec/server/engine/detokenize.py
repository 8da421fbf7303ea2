"""Streaming text from token ids: incremental detokenisation and stop strings.

Byte-level BPE splits multi-byte characters across tokens, and SentencePiece-style tokenizers decide
a token's leading space from its neighbours, so decoding tokens one at a time gives wrong text. As in
vLLM and TGI, each step decodes a short window (a few tokens already shown + the new ones) and emits
only what the window adds, holding it back while it ends in an incomplete character (U+FFFD).
"""

from __future__ import annotations

from typing import Any

REPLACEMENT = "\ufffd"
CONTEXT_TOKENS = 5  # tokens of already-emitted text that give the new ones their spacing


class IncrementalDetokenizer:
    """Text of generated tokens, piece by piece; `context` (the prompt's tail) fixes the first spacing."""

    def __init__(self, tokenizer: Any, context: list[int]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(context[-CONTEXT_TOKENS:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def add(self, tokens: list[int]) -> str:
        """The new text these tokens complete (may be empty while a character is incomplete)."""
        self.ids.extend(tokens)
        return self._emit(final=False)

    def flush(self) -> str:
        """Whatever is still held back, incomplete characters included (end of the request)."""
        return self._emit(final=True)

    def _emit(self, final: bool) -> str:
        shown = self._decode(self.ids[self.prefix_offset : self.read_offset])
        text = self._decode(self.ids[self.prefix_offset :])
        if len(text) <= len(shown) or (text.endswith(REPLACEMENT) and not final):
            return ""
        # the tokens just shown become the next window's context
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return text[len(shown) :]


class StopStrings:
    """Finds the first stop string in the generated text and never streams part of one: text that
    could be the start of a stop string is held back until it is known not to be."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.sent = 0

    def add(self, piece: str) -> tuple[str, bool]:
        """(text safe to stream now, whether a stop string ended the completion)."""
        start = max(0, len(self.text) - self.longest + 1)
        self.text += piece
        hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if hits:
            return self._send(min(hits)), True
        return self._send(len(self.text) - self._partial_suffix()), False

    def flush(self) -> str:
        return self._send(len(self.text))

    def _partial_suffix(self) -> int:
        """Length of the longest end of the text that begins some stop string."""
        for size in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-size:]
            if any(s.startswith(tail) for s in self.stops):
                return size
        return 0

    def _send(self, upto: int) -> str:
        upto = max(upto, self.sent)
        piece, self.sent = self.text[self.sent : upto], upto
        return piece

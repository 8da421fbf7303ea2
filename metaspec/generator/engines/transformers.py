"""The transformers engine: batched `generate` with left padding, the fallback when vLLM cannot run.

Prompts are bucketed by length (sorted, then cut into batches) so a batch pads little. Sampling is
done by `SeededSampler` rather than by `generate(do_sample=True)`: each row draws from its own
generator seeded per prompt, so a prompt's output does not depend on which prompts share its batch,
its shard, or a restart. What holds: the same seed, model, dtype and device give the same outputs.
Across different batch compositions the random draws are identical, and the outputs are too unless
padding changes the logits' floating-point rounding enough to flip a draw (rare in fp32, more
frequent in bf16).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteriaList,
    StopStringCriteria,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from metaspec.api.generation import Sampling
from metaspec.causal_lm import load_causal_lm
from metaspec.packed import pack_linears
from metaspec.prompts import end_of_turn_ids

from .base import Completion, FinishReason, Prompt, cut_at_stop


class SeededSampler(LogitsProcessor):
    """Repetition penalty, then temperature, top-k, top-p and a per-row seeded draw.

    The repetition penalty is CTRL's (Keskar et al. 2019, as in vLLM and transformers): logits of
    tokens already in the prompt or output are divided by the penalty when positive and multiplied
    when negative. Unlike transformers' own processor it skips left padding, which would otherwise
    penalise the pad token in short rows only. The sampled token is returned as the only finite
    logit, so `generate`'s greedy step picks exactly it; when greedy (temperature below GREEDY_BELOW)
    no draw is made.
    """

    def __init__(self, sampling: Sampling, seeds: Sequence[int], pad_lengths: Sequence[int]):
        self.sampling = sampling
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.pad_lengths = torch.tensor(pad_lengths)  # (B,)
        self.warpers = [TopKLogitsWarper(sampling.top_k)] if sampling.top_k else []
        if sampling.top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling.top_p))

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = self._penalize(input_ids, scores)  # (B, V)
        if self.sampling.greedy:
            return scores
        scores = scores / self.sampling.temperature
        for warper in self.warpers:
            scores = warper(input_ids, scores)
        chosen = self._draw(torch.softmax(scores.float(), dim=-1))  # (B, 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, chosen, 0.0)

    def _penalize(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        penalty = self.sampling.repetition_penalty
        if penalty == 1.0:
            return scores
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        real = positions[None, :] >= self.pad_lengths.to(input_ids.device)[:, None]  # (B, T)
        # Padding positions point at the row's last token (always real with left padding), which is
        # penalised anyway; duplicate indices then scatter identical values.
        ids = torch.where(real, input_ids, input_ids[:, -1:])  # (B, T)
        seen = scores.gather(1, ids)  # (B, T)
        return scores.scatter(1, ids, torch.where(seen < 0, seen * penalty, seen / penalty))

    def _draw(self, probs: torch.Tensor) -> torch.Tensor:
        """Inverse-CDF sampling with one uniform per row from that row's own generator."""
        uniforms = torch.tensor([torch.rand(1, generator=g).item() for g in self.generators])  # (B,)
        cdf = probs.cumsum(dim=-1)  # (B, V)
        targets = (uniforms.to(probs.device) * cdf[:, -1])[:, None]  # (B, 1)
        # side="right": the first token whose cumulative mass exceeds the draw never has zero mass.
        return torch.searchsorted(cdf, targets, side="right").clamp_(max=probs.shape[-1] - 1)


class TransformersEngine:
    """A Hugging Face causal LM behind the `Engine` protocol. `load` reads one from a directory; the
    constructor takes a loaded model, so one model can serve several sampling settings."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str, sampling: Sampling, batch_size: int):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.sampling = sampling
        self.batch_size = batch_size
        self.stop_ids = end_of_turn_ids(tokenizer)
        if not self.stop_ids:
            raise ValueError(f"{model_name}: the tokenizer has no EOS or end-of-turn token; outputs could not stop")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        # Built once: preparing the vocabulary's stop-string tables takes a noticeable fraction of a second.
        self.stopping = StoppingCriteriaList(
            [StopStringCriteria(tokenizer, list(sampling.stop))] if sampling.stop else []
        )

    @classmethod
    def load(
        cls,
        model_dir: Path,
        model_name: str,
        sampling: Sampling,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype,
        trust_remote_code: bool = False,
    ) -> TransformersEngine:
        tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        model = load_causal_lm(model_dir, dtype, trust_remote_code=trust_remote_code).to(device)
        pack_linears(model)  # on the CPU: oneDNN, weights reordered once (`metaspec.packed`)
        return cls(model, tokenizer, model_name, sampling, batch_size)

    def generation_params(self) -> dict[str, Any]:
        return {
            "engine": "transformers",
            "temperature": self.sampling.temperature,
            "max_tokens": self.sampling.max_tokens,
            "repetition_penalty": self.sampling.repetition_penalty,
            "top_p": self.sampling.top_p,
            "top_k": self.sampling.top_k,
            "stop": list(self.sampling.stop),
            "stop_token_ids": self.stop_ids,
            "seed": self.sampling.seed,
            "per_prompt_seed": "sha256(f'{seed}:{id}')",
            "dtype": str(self.model.dtype).removeprefix("torch."),
            "batch_size": self.batch_size,
        }

    def plan(self, prompts: Sequence[Prompt]) -> list[list[Prompt]]:
        """Longest first, so an out-of-memory batch fails at once rather than hours in."""
        ordered = sorted(prompts, key=lambda p: len(p.token_ids), reverse=True)
        return [ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    def generate(self, batch: Sequence[Prompt]) -> list[Completion]:
        started = time.perf_counter()
        width = max(len(p.token_ids) for p in batch)
        pads = [width - len(p.token_ids) for p in batch]
        input_ids = torch.tensor([[self.pad_id] * n + p.token_ids for n, p in zip(pads, batch, strict=True)])
        attention_mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads])
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids.to(self.model.device),
                attention_mask=attention_mask.to(self.model.device),
                generation_config=self._generation_config(),
                logits_processor=LogitsProcessorList([SeededSampler(self.sampling, [p.seed for p in batch], pads)]),
                stopping_criteria=self.stopping,
            )
        generated = output[:, width:].tolist()  # (B, new tokens)
        share = (time.perf_counter() - started) / len(batch)
        return [self._completion(p, ids, share) for p, ids in zip(batch, generated, strict=True)]

    def _generation_config(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.sampling.max_tokens,
            do_sample=False,  # SeededSampler samples; greedy then picks its choice
            num_beams=1,
            eos_token_id=self.stop_ids,
            # Finished rows are filled with a stop id, so the first stop id marks where a row ended.
            pad_token_id=self.stop_ids[0],
        )

    def _completion(self, prompt: Prompt, ids: list[int], time_share: float) -> Completion:
        text, num_tokens, reason = finish(
            ids, self.stop_ids, self.sampling.stop, self.sampling.max_tokens, self.tokenizer.decode
        )
        return Completion(prompt.id, text, num_tokens, reason, time_share)


def finish(
    ids: list[int], stop_ids: Sequence[int], stops: Sequence[str], max_tokens: int, decode: Any
) -> tuple[str, int, FinishReason]:
    """Text, generated-token count and finish reason of one row of `generate`'s output.

    A row ends at its first stop id: either the EOS/end-of-turn token the model produced (counted),
    or the padding `generate` appends once a stop string ended the row (not counted).
    """
    end = next((i for i, t in enumerate(ids) if t in stop_ids), None)
    body = ids if end is None else ids[:end]
    text, stopped_by_string = cut_at_stop(decode(body, skip_special_tokens=True), stops)
    num_tokens = len(body) if stopped_by_string or end is None else end + 1  # + the stop token it produced
    # A row shorter than max_tokens without a stop id was ended by a stop string that straddles the
    # prompt/output boundary (transformers checks the whole sequence's tail).
    reason: FinishReason = "stop" if end is not None or stopped_by_string or num_tokens < max_tokens else "length"
    return text, num_tokens, reason

"""Tiny random causal LMs with a small vocabulary: cheap enough to sample thousands of completions."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from transformers import LlamaForCausalLM

from metaspec.server.engine.routing import Adaptive
from metaspec_testing.models import random_llama

VOCAB = 8


def tiny_lm(seed: int, vocab: int = VOCAB, layers: int = 1) -> LlamaForCausalLM:
    """A random 1-layer Llama; a large init scale makes its next-token distributions far from uniform,
    so target and draft differ clearly and a wrong acceptance rule shows up in few samples."""
    return random_llama(seed, vocab, layers, initializer_range=0.6).eval()


@pytest.fixture(scope="session")
def tiny_target() -> LlamaForCausalLM:
    return tiny_lm(seed=0)


@pytest.fixture(scope="session")
def deep_target() -> LlamaForCausalLM:
    """A 4-layer target: feature-level drafts read three of its layers' inputs."""
    return tiny_lm(seed=3, layers=4)


@pytest.fixture(scope="session")
def tiny_draft(tiny_target: LlamaForCausalLM) -> LlamaForCausalLM:
    return perturbed(tiny_target)


def perturbed(model: LlamaForCausalLM) -> LlamaForCausalLM:
    """The model with every weight perturbed (30% of its spread): related enough that about half the
    proposals are accepted, different enough that rejections, residuals and bonus tokens all occur."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for weight in draft.parameters():
            if weight.numel() > 1:
                weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * 0.3)
    return draft


@pytest.fixture
def any_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """`adaptive` choosing a random k in 0..max each step (on tiny models its timings would settle on one
    and keep it): any choice made before a step must keep the output exact, rounds without the draft
    and the draft's catch-up after them included; deciding at random whether a speculating step is a
    probe (which drafts for at most `probe_rows` sequences, here 1); and padding the verify pass to a
    random width (`Adaptive.width`)."""
    rng = random.Random(5)
    monkeypatch.setattr(Adaptive, "choose", lambda self, batch: rng.randint(0, self.max_k))
    monkeypatch.setattr(Adaptive, "width", lambda self, batch, tokens: rng.randint(tokens, self.max_k + 1))
    monkeypatch.setattr(Adaptive, "speculating", lambda self, batch: rng.random() < 0.5)
    monkeypatch.setattr(Adaptive, "probe_rows", 1)

"""A draft's vocabulary: the target tokens it may propose, by frequency in the training outputs.

FR-Spec (Zhao et al. 2025, "FR-Spec: Accelerating Large-Vocabulary Language Models via
Frequency-Ranked Speculative Sampling") and EAGLE-3 restrict the draft's head to the most frequent
tokens: on a small target the head is most of a draft step (SmolLM2: 49,152 × 576), and a token the
draft never proposes costs nothing but the acceptance it would have had.

Verification still uses the target's full distribution p, so output stays exact. Greedy: the target's
argmax is emitted whether or not the draft could propose it. Sampling: the draft's q is a
distribution over the target vocabulary that is zero outside the subset. A proposal x always has
q(x) > 0, so the acceptance probability min(1, p(x)/q(x)) is defined; after a rejection the token is
drawn from norm(max(0, p − q)), which equals p on every token outside the subset, so those tokens
keep exactly the mass p gives them (Leviathan et al. 2023, Theorem 1 holds for any q).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch

#: A separate draft's vocabulary, next to its weights: the `d2t` offsets of EAGLE-3's convention.
VOCABULARY_FILE = "draft_vocabulary.safetensors"


class DraftFormatError(ValueError):
    """A draft folder (EAGLE-3, or a draft vocabulary) that cannot be served as it is; the message names
    the file and field."""


def check_d2t(d2t: torch.Tensor, t2d: torch.Tensor | None, n: int, vocab: int, where: str) -> None:
    """Refuse a draft-to-target mapping of `n` draft ids that would propose tokens the target (`vocab`
    ids) cannot score, or put two draft ids on one target token (its probability would count twice)."""
    if d2t.dtype.is_floating_point or d2t.dtype == torch.bool or d2t.shape != (n,):
        raise DraftFormatError(f"{where}: d2t must be {n} integer offsets, got {d2t.dtype} {tuple(d2t.shape)}")
    target = torch.arange(n) + d2t.long()
    outside = ((target < 0) | (target >= vocab)).nonzero().flatten()
    if outside.numel():
        i = int(outside[0])
        raise DraftFormatError(
            f"{where}: d2t maps draft id {i} to target id {int(target[i])}, outside the target's vocabulary "
            f"[0, {vocab}) ({outside.numel()} draft ids do); d2t[i] is the offset target_id − i"
        )
    if target.unique().numel() != n:
        values, counts = target.unique(return_counts=True)
        raise DraftFormatError(
            f"{where}: d2t maps several draft ids to target id {int(values[counts > 1][0])}; each target id "
            "may appear once"
        )
    marks = t2d is not None and t2d.shape == (vocab,) and int(t2d.bool().sum()) == n and bool(t2d.bool()[target].all())
    if t2d is not None and not marks:
        raise DraftFormatError(f"{where}: t2d does not mark exactly the {n} target ids of d2t")


def save_draft_vocabulary(dest: Path, ids: torch.Tensor) -> None:
    """Record a separate draft's vocabulary (ascending target ids) beside its weights."""
    from safetensors.torch import save_file

    d2t = ids.cpu() - torch.arange(ids.numel())
    save_file({"d2t": d2t.contiguous()}, str(dest / VOCABULARY_FILE))


def load_draft_vocabulary(folder: Path, vocab: int) -> torch.Tensor | None:
    """A separate draft's vocabulary (target ids), checked like EAGLE-3's `d2t`; None without one."""
    from safetensors.torch import load_file

    path = folder / VOCABULARY_FILE
    if not path.is_file():
        return None
    d2t = load_file(str(path)).get("d2t")
    if d2t is None:
        raise DraftFormatError(f"{path}: no d2t tensor")
    check_d2t(d2t, None, d2t.numel(), vocab, str(path))
    return torch.arange(d2t.numel()) + d2t.long()


def token_counts(sequences: Iterable[Iterable[int]], vocab: int) -> torch.Tensor:
    """(vocab,) how often each token id occurs in `sequences`."""
    counts = torch.zeros(vocab, dtype=torch.long)
    for seq in sequences:
        ids = torch.as_tensor(list(seq), dtype=torch.long)
        if ids.numel():
            counts += torch.bincount(ids, minlength=vocab)[:vocab]
    return counts


def draft_vocabulary(counts: torch.Tensor, size: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The `size` target ids to keep, ascending: every id of `always` (special tokens: a draft that
    cannot propose the end of turn cannot finish a round there), then the most frequent by `counts`
    (ties by lower id). Raises ValueError when `size` is not between len(always) and the vocabulary."""
    vocab = counts.numel()
    forced = sorted({int(i) for i in always if 0 <= int(i) < vocab})
    if not len(forced) <= size <= vocab:
        raise ValueError(f"a draft vocabulary of {size} tokens must hold the {len(forced)} special tokens and "
                         f"at most the target's {vocab}")  # fmt: skip
    # a stable descending sort keeps ties in id order
    ranked = torch.sort(counts, descending=True, stable=True).indices
    chosen = torch.zeros(vocab, dtype=torch.bool)
    chosen[forced] = True
    ranked = ranked[~chosen[ranked]][: size - len(forced)]
    chosen[ranked] = True
    return chosen.nonzero().flatten()


class SubsetHead(torch.nn.Module):
    """A draft's output layer restricted to `ids` (N,) of a `vocab`-token vocabulary: logits (…, vocab),
    −inf outside the subset, at the cost of N rows. It replaces a separate draft's head at load time."""

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor, vocab: int) -> None:
        super().__init__()
        weight = head.weight.detach()[ids]  # (N, H)
        self.rows = torch.nn.Linear(weight.shape[1], len(ids), bias=False, device=weight.device, dtype=weight.dtype)
        self.rows.weight = torch.nn.Parameter(weight, requires_grad=False)  # a layer: packed like any on the CPU
        self.register_buffer("ids", ids.to(weight.device))
        self.vocab = vocab

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        scores = self.rows(hidden)  # (…, N)
        out = scores.new_full((*scores.shape[:-1], self.vocab), float("-inf"))
        out[..., self.ids] = scores
        return out

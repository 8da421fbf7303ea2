"""Token-chunked losses over a linear output head.

A 128K-vocabulary head turns 8K tokens into 4 GiB of fp32 logits. These losses look at `chunk_size`
tokens at a time and, when gradients are needed over several chunks, recompute each chunk's logits in
the backward pass (activation checkpointing) instead of keeping them, so peak memory is one chunk's
logits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
#: Tokens per chunk. A chunk no larger than a set's tokens is not recomputed in backward: on an H100,
#: Llama-3.1-8B, 2048-token sets, 4096 instead of 1024 made the ANIL step 11% and the SFT step 3% faster
#: for 1.7 GiB more at peak (`bench/trainer.py --chunk`, docs/benchmarks.md). A 4096-token chunk of a
#: 128K-vocabulary head holds 2 GiB of fp32 logits.
DEFAULT_CHUNK = 4096

#: Maps hidden states (n, D) to logits (n, V).
LogitsFn = Callable[[Tensor], Tensor]


def upcast(x: Tensor) -> Tensor:
    """At least fp32: softmax and accumulation in bf16/fp16 lose too much; fp64 stays fp64 (tests)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def select_targets(hidden: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Hidden states that predict a supervised token, and those tokens.

    Position t predicts token t + 1; positions whose next label is `IGNORE_INDEX` (prompt, padding)
    are dropped before the head ever sees them.
    """
    h = hidden[:, :-1]  # (B, T-1, D)
    y = labels[:, 1:].to(h.device)  # (B, T-1)
    keep = y != IGNORE_INDEX
    return h[keep], y[keep]  # (N, D), (N,)


def token_weights(labels: Tensor, example_weights: Tensor) -> Tensor:
    """Each supervised token's weight, its example's, aligned with `select_targets`' tokens.

    labels: (B, T), example_weights: (B,) -> (N,)."""
    y = labels[:, 1:]  # (B, T-1)
    return example_weights[:, None].expand_as(y)[y != IGNORE_INDEX]  # (N,)


@functools.cache
def compiled(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """`fn`, a function of one token chunk, under `torch.compile` with dynamic sizes (one graph for any
    chunk length): its element-wise work over the chunk's (n, V) logits (casts, softmax, the error or
    the cross-entropy, and their backward) fuses into a few kernels instead of a pass over memory each."""
    return torch.compile(fn, dynamic=True)


def run_chunked(fn: Callable[..., Tensor], *tensors: Tensor, chunk_size: int, total: Tensor | None = None) -> Tensor:
    """Sum `fn(*chunks)` over token chunks of `tensors` (all chunked along dim 0).

    With autograd on and more than one chunk, each chunk is checkpointed: only its inputs are saved
    and its intermediate (n, V) tensors are recomputed during backward, so memory holds one chunk's
    at a time. A single chunk is already as small as a chunk gets; recomputing it would only cost time.
    """
    n = tensors[0].shape[0]
    recompute = torch.is_grad_enabled() and n > chunk_size
    for start in range(0, n, chunk_size):
        chunk = [t[start : start + chunk_size] for t in tensors]
        part = checkpoint(fn, *chunk, use_reentrant=False, preserve_rng_state=False) if recompute else fn(*chunk)
        total = part if total is None else total + part
    if total is None:
        raise ValueError("no supervised tokens: every label is masked")
    return total


def cross_entropy_sum(logits_fn: LogitsFn, h: Tensor, y: Tensor, w: Tensor | None = None) -> Tensor:
    """Σ (w ·) CE over one chunk, in fp32. h: (n, D), y: (n,), w: (n,)."""
    ce = F.cross_entropy(upcast(logits_fn(h)), y, reduction="sum" if w is None else "none")  # logits (n, V)
    return ce if w is None else (ce * w).sum()


def chunked_cross_entropy(
    h: Tensor,
    y: Tensor,
    logits_fn: LogitsFn,
    chunk_size: int = DEFAULT_CHUNK,
    weights: Tensor | None = None,
    compile: bool = False,
) -> Tensor:
    """Sum (not mean) of token cross-entropies, in fp32, each scaled by its token's weight if
    `weights` is given; `compile`: each chunk's through `compiled`. h: (N, D), y: (N,), weights: (N,)."""
    chunk = functools.partial(compiled(cross_entropy_sum) if compile else cross_entropy_sum, logits_fn)
    return run_chunked(chunk, h, y, *(() if weights is None else (weights,)), chunk_size=chunk_size)


def chunked_distillation(
    h_student: Tensor,
    h_teacher: Tensor,
    student_fn: LogitsFn,
    teacher_fn: LogitsFn,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK,
) -> Tensor:
    """Sum over tokens of T² · KL(p_teacher,T ‖ p_student,T) (Hinton et al. 2015, "Distilling the
    Knowledge in a Neural Network": the T² keeps gradient magnitudes comparable across temperatures).

    h_student: (N, D_s), h_teacher: (N, D_t), aligned token by token; the teacher gets no gradient.
    """

    def kl_sum(hs: Tensor, ht: Tensor) -> Tensor:
        with torch.no_grad():
            teacher = F.log_softmax(upcast(teacher_fn(ht)) / temperature, dim=-1)  # (n, V)
        student = F.log_softmax(upcast(student_fn(hs)) / temperature, dim=-1)  # (n, V)
        kl = F.kl_div(student, teacher, log_target=True, reduction="sum")
        return kl * temperature**2

    return run_chunked(kl_sum, h_student, h_teacher, chunk_size=chunk_size)

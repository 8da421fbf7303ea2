"""ANIL-MAML math against an independent reference, and the chunked losses against unchunked ones.

The reference re-runs the WHOLE model with `torch.func.functional_call` at every inner step, takes
the head gradient with `autograd.grad(create_graph=...)` on full logits, and differentiates the query
loss by double backward: a different route from the trainer's (body once per set, closed-form
chunked head gradient, checkpointed chunks). Everything runs in float64, except that Llama's RMSNorm
computes in float32 whatever the input dtype: the reference's three separate support passes and the
trainer's single one round differently there, which bounds agreement at ~1e-8 of the gradient scale.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.func import functional_call
from transformers import LlamaConfig, LlamaForCausalLM

from metaspec.trainer.data import Example
from metaspec.trainer.losses import (
    IGNORE_INDEX,
    chunked_cross_entropy,
    chunked_distillation,
    select_targets,
    token_weights,
)
from metaspec.trainer.meta import adapt_head, head_projection, output_head, task_loss
from metaspec.trainer.recipes.anil_maml import set_features

VOCAB = 53


def tiny_lora_model(seed: int = 0, head_lora: bool = False):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).double().eval()
    targets = ["q_proj", "v_proj", "down_proj"] + (["lm_head"] if head_lora else [])
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets))
    with torch.no_grad():  # LoRA B starts at zero, which would hide most terms of the meta-gradient
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.normal_(0, 0.3)
    return peft_model


def batch(seed: int, rows: int = 3, length: int = 9) -> dict[str, torch.Tensor]:
    """Right-padded sequences with a masked prompt, like the trainer's collated batches."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (rows, length), generator=g)
    mask = torch.ones(rows, length, dtype=torch.long)
    mask[0, -3:] = 0
    labels = ids.clone()
    labels[:, :3] = IGNORE_INDEX
    labels[mask == 0] = IGNORE_INDEX
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lora_params(peft_model) -> dict[str, torch.Tensor]:
    return {n: p for n, p in peft_model.named_parameters() if p.requires_grad}


def trainer_route(
    peft_model, support, query, steps, lr, first_order, rank=None, chunk=4, split=None, span=True, compile=False
):
    lm = peft_model.get_base_model()
    body = lm.base_model

    def features(b):
        hidden = body(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).last_hidden_state
        h, y = select_targets(hidden, b["labels"])
        return (h, y) if "example_weights" not in b else (h, y, token_weights(b["labels"], b["example_weights"]))

    head = output_head(lm, head_projection(16, rank, seed=7) if rank else None, split=split)
    sets = features(support), features(query)
    loss = task_loss(head, *sets, steps, lr, first_order, chunk_size=chunk, span=span, compile=compile)
    params = lora_params(peft_model)
    return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


def reference_route(peft_model, support, query, steps, lr, first_order, rank=None):
    """Whole model per inner step; the head (or W + U R) substituted by name; double backward."""
    lm = peft_model.get_base_model()
    head_name = next(n for n, p in peft_model.named_parameters() if p is lm.lm_head.weight)
    weight = lm.lm_head.weight.detach()
    params = {n: p.detach().clone().requires_grad_() for n, p in lora_params(peft_model).items()}
    if rank is None:
        fast, to_weight = weight.clone().requires_grad_(), lambda f: f
    else:
        proj = head_projection(16, rank, seed=7)
        fast = torch.zeros(weight.shape[0], rank, dtype=torch.float64, requires_grad=True)
        to_weight = lambda f: weight + f @ proj  # noqa: E731

    def loss_with(head_weight, b):
        out = functional_call(
            peft_model,
            {**params, head_name: head_weight},
            args=(),
            kwargs={"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]},
        )
        logits = out.logits[:, :-1].reshape(-1, VOCAB)
        labels = b["labels"][:, 1:]
        ce = F.cross_entropy(logits, labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")  # (B·T,)
        weights = b.get("example_weights", torch.ones(labels.shape[0], dtype=ce.dtype))[:, None].expand_as(labels)
        return (ce * weights.reshape(-1)).sum() / (labels != IGNORE_INDEX).sum()

    for _ in range(steps):
        (grad,) = torch.autograd.grad(loss_with(to_weight(fast), support), fast, create_graph=not first_order)
        fast = fast - lr * grad
    loss = loss_with(to_weight(fast), query)
    return loss, dict(zip(params, torch.autograd.grad(loss, list(params.values())), strict=True))


@pytest.mark.parametrize(
    ("first_order", "rank", "split", "chunk"),
    [
        (False, None, False, 4),
        (True, None, False, 4),
        (False, 3, False, 4),
        (False, None, True, 4),
        (False, None, False, 64),
        (True, None, False, 64),
        (False, None, True, 64),
    ],
    ids=["second-order", "first-order", "delta", "split-head", "span", "span-first-order", "span-split"],
)
def test_meta_gradient_matches_whole_model_reference(first_order: bool, rank: int | None, split: bool, chunk: int):
    """`split-head`: the head a bf16 model adapts (W + Δ, Δ separate), here in float64 like the rest.
    `span`: the 15 support tokens fit one 64-token chunk and are fewer than the 16 hidden units, so the
    head adapts in their span (`Head.span`); with 4-token chunks it cannot."""
    model = tiny_lora_model()
    support, query = batch(1), batch(2)
    loss, grads = trainer_route(
        model, support, query, steps=3, lr=0.7, first_order=first_order, rank=rank, chunk=chunk, split=split
    )
    ref_loss, ref_grads = reference_route(model, support, query, steps=3, lr=0.7, first_order=first_order, rank=rank)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    for name, grad in grads.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_span_form_is_taken_only_where_it_is_cheaper():
    """The support set's span replaces the (V, D) delta when the set fits one chunk and has at most D
    tokens; otherwise (or with `span=False`) the head adapts as before."""
    lm = tiny_lora_model().get_base_model()
    head = output_head(lm)
    h, y = torch.randn(15, 16, dtype=torch.float64), torch.randint(0, VOCAB, (15,))
    assert adapt_head(head, h, y, 1, 0.1, False).delta.shape == (VOCAB, 15)
    assert adapt_head(head, h, y, 1, 0.1, False, chunk_size=8).span is None
    assert adapt_head(head, h, y, 1, 0.1, False, span=False).span is None
    many = torch.randn(17, 16, dtype=torch.float64), torch.randint(0, VOCAB, (17,))
    assert adapt_head(head, *many, 1, 0.1, False).span is None


def test_token_weighted_meta_gradient_matches_reference():
    """`balance: tokens` weights each example's tokens in the support (inner) and query (outer) losses."""
    model = tiny_lora_model()
    support = {**batch(1), "example_weights": torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)}
    query = {**batch(2), "example_weights": torch.tensor([1.5, 0.25, 1.0], dtype=torch.float64)}
    loss, grads = trainer_route(model, support, query, steps=2, lr=0.7, first_order=False)
    ref_loss, ref_grads = reference_route(model, support, query, steps=2, lr=0.7, first_order=False)
    plain_loss, _ = trainer_route(model, batch(1), batch(2), steps=2, lr=0.7, first_order=False)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert abs(loss.item() - plain_loss.item()) > 1e-3  # the weights change the loss
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.slow
def test_compiled_head_work_matches_reference(inductor_cache):
    """`optimization.compile` runs each chunk's inner gradient and query loss through torch.compile
    (inductor, on this CPU): the same function in float64, in the span form (one 64-token chunk) and
    over checkpointed 4-token chunks, with token weights."""
    model = tiny_lora_model()
    support = {**batch(1), "example_weights": torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)}
    query = {**batch(2), "example_weights": torch.tensor([1.5, 0.25, 1.0], dtype=torch.float64)}
    ref_loss, ref_grads = reference_route(model, support, query, steps=2, lr=0.7, first_order=False)
    for chunk in (64, 4):
        loss, grads = trainer_route(
            model, support, query, steps=2, lr=0.7, first_order=False, chunk=chunk, compile=True
        )
        torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, ref_grads[name], rtol=1e-6, atol=1e-7, msg=f"{name}, chunk {chunk}")


def test_one_body_pass_gives_each_set_its_own_features():
    """The recipe runs the support and query sets through the body as one batch, padded to the longer
    set's length: each set's features, labels and token weights are those of a pass of its own."""
    lm = tiny_lora_model().get_base_model()

    def example(n: int, seed: int) -> Example:
        ids = torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
        return Example(f"e{seed}", "d", None, ids, [IGNORE_INDEX] * 2 + ids[2:])

    support, query = (example(5, 1), example(11, 2)), (example(7, 3), example(4, 4), example(9, 5))
    weights = ((0.5, 2.0), (1.0, 1.5, 0.25))
    cpu = torch.device("cpu")
    together = set_features(lm, (support, query), pad_id=0, device=cpu, weights=weights)
    apart = set_features(lm, (support, query), pad_id=0, device=cpu, weights=weights, together=False)
    for mine, own in zip(together, apart, strict=True):
        assert len(mine) == 3 and mine[0].shape[0] == mine[1].shape[0] == mine[2].shape[0]
        for got, want in zip(mine, own, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-9)
    assert together[0][1].numel() == 3 + 9 and together[1][1].numel() == 5 + 2 + 7  # n - 2 labels each
    assert together[1][2].unique().tolist() == [0.25, 1.0, 1.5]


def test_second_order_terms_are_present():
    """The second-order gradient is not the first-order one: the reference test checks both."""
    model = tiny_lora_model()
    support, query = batch(1), batch(2)
    _, second = trainer_route(model, support, query, steps=2, lr=0.7, first_order=False)
    _, first = trainer_route(model, support, query, steps=2, lr=0.7, first_order=True)
    differences = [(second[n] - first[n]).abs().max().item() for n in second]
    assert max(differences) > 1e-4


def test_bf16_head_adapts_like_float64():
    """An inner update of ~2e-4 of the head's weights: folded into bf16 weights it mostly rounds away
    (the control below keeps under half of the loss drop); the split head keeps it apart and lowers the
    query loss by what float64 says, with its matmuls in bf16."""
    model = tiny_lora_model()
    lm = model.get_base_model()
    with torch.no_grad():
        hidden = lm.base_model(input_ids=batch(1)["input_ids"]).last_hidden_state
    h, y = select_targets(hidden, batch(1)["labels"])
    lr = 5e-3 * lm.lm_head.weight.abs().mean().item()

    def drop(head, adapted) -> float:
        return (
            (chunked_cross_entropy(h, y, head.logits) - chunked_cross_entropy(h, y, adapted.logits)) / y.numel()
        ).item()

    head = output_head(lm)
    reference = drop(head, adapt_head(head, h, y, steps=2, lr=lr, first_order=True, span=False))
    assert reference > 0
    lm.lm_head.to(torch.bfloat16)
    head = output_head(lm)
    assert head.split and head.weight.dtype == torch.bfloat16
    for span in (False, True):  # Δ (V, D), or U (V, S) over the support features
        adapted = adapt_head(head, h.to(torch.bfloat16), y, steps=2, lr=lr, first_order=True, span=span)
        assert adapted.weight.dtype == torch.bfloat16 and (adapted.span is not None) == span
        assert drop(head, adapted) == pytest.approx(reference, rel=0.02)
        delta = adapted.delta if adapted.span is None else adapted.delta @ adapted.span.float()
        folded = replace(head, weight=(head.weight.float() + delta).to(torch.bfloat16))
        assert drop(head, folded) < 0.5 * reference


def test_head_with_lora_starts_from_the_effective_weight():
    model = tiny_lora_model(head_lora=True)
    lm = model.get_base_model()
    h = torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(output_head(lm).logits(h), lm.lm_head(h))


def test_inner_loop_changes_no_model_weight():
    model = tiny_lora_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    lm = model.get_base_model()
    hidden = lm.base_model(input_ids=batch(1)["input_ids"]).last_hidden_state
    h, y = select_targets(hidden, batch(1)["labels"])
    head = output_head(lm)
    adapted = adapt_head(head, h, y, steps=3, lr=1.0, first_order=False, chunk_size=4)
    assert not torch.equal(adapted.weight, head.weight)
    assert adapted.weight is not lm.lm_head.weight
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_chunked_cross_entropy_matches_full_logits_and_gradients():
    torch.manual_seed(0)
    h = torch.randn(37, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(29, 8, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 29, (37,))
    chunked = chunked_cross_entropy(h, y, lambda x: x @ w.T, chunk_size=5)
    full = F.cross_entropy(h @ w.T, y, reduction="sum")
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(torch.autograd.grad(chunked, (h, w)), torch.autograd.grad(full, (h, w)))


def test_chunked_distillation_matches_full_kl():
    torch.manual_seed(0)
    hs = torch.randn(23, 8, dtype=torch.float64, requires_grad=True)
    ht = torch.randn(23, 6, dtype=torch.float64)
    ws, wt = torch.randn(31, 8, dtype=torch.float64), torch.randn(31, 6, dtype=torch.float64)
    temperature = 2.0
    chunked = chunked_distillation(hs, ht, lambda x: x @ ws.T, lambda x: x @ wt.T, temperature, chunk_size=4)
    p_teacher = F.softmax(ht @ wt.T / temperature, -1)
    log_student = F.log_softmax(hs @ ws.T / temperature, -1)
    full = (p_teacher * (p_teacher.log() - log_student)).sum() * temperature**2
    torch.testing.assert_close(chunked, full)
    torch.testing.assert_close(torch.autograd.grad(chunked, hs)[0], torch.autograd.grad(full, hs)[0])


def test_select_targets_shifts_and_masks():
    hidden = torch.arange(2 * 4, dtype=torch.float32).reshape(2, 4, 1)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 5, 6], [IGNORE_INDEX, 7, IGNORE_INDEX, IGNORE_INDEX]])
    h, y = select_targets(hidden, labels)
    assert y.tolist() == [5, 6, 7]
    assert h.squeeze(-1).tolist() == [1.0, 2.0, 4.0]

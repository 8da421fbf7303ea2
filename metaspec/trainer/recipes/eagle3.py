"""Training an EAGLE-3 feature-level draft (`method: causal-lm`, `draft.architecture: eagle3`).

The target (`baseModel`, frozen) runs over each training sequence; its residual stream entering the
three aux layers is the draft's input, its final hidden states the teacher. Being frozen, it gives an
example the same features every epoch: they are kept from the first (up to `FEATURE_CACHE_BYTES`), so
later epochs cost the draft's passes alone, a third of an epoch's work with SmolLM2 on a CPU. Position q of
a sequence x gives the draft the fused target features g_q and the next token x_{q+1}; the draft's
head must then predict x_{q+2}, scored against the target's distribution there (`distill`: KL, Hinton
et al. 2015) or the token itself (`next-token`), over the draft's vocabulary (`draft.vocabulary`).

Training-time test (Li et al. 2025, EAGLE-3, §3.2): at serving time only the first draft step sees
target features; step s reads the feature the draft itself produced at step s − 1. So training unrolls
`draft.unroll` steps. Step s at query position q continues the round based at p = q − s + 1: its
feature is the step-(s−1) output at q − 1, and it attends to what the serving-time cache would hold
then — the step-1 entries (made from target features) at positions ≤ p, and the step-k entry
(2 ≤ k ≤ s) of the same round, at position q − (s − k). The attention bias below encodes exactly that,
so the unrolled loss trains the loop the engine runs (`metaspec.server.engine.eagle`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from metaspec.drafts import Eagle3Draft, aux_hidden_states, save_eagle3

from ..data import IGNORE_INDEX, Example, collate
from ..distributed import DataParallel
from ..loop import StepStats
from ..losses import chunked_distillation
from .common import BatchRecipe, Context, batch_share, body_inputs, training_vocabulary

#: Most bytes of target features kept between epochs (fp32 SmolLM2: 9 KB a token, so 2 GiB hold about
#: 230k tokens). Examples past it have theirs computed again each time they come.
FEATURE_CACHE_BYTES = 2 << 30


def unroll_bias(length: int, step: int, device: torch.device) -> torch.Tensor:
    """Additive attention bias (1, 1, T, s·T) of step `step` (s ≥ 1) over the keys of steps 1..s
    concatenated: step 1's up to the round's base q − s + 1, step k's at q − (s − k) only."""
    q = torch.arange(length, device=device)[:, None]  # (T, 1)
    key = torch.arange(length, device=device)[None, :]  # (1, T)
    blocks = [key <= q - (step - 1)] + [key == q - (step - k) for k in range(2, step + 1)]
    allowed = torch.cat(blocks, dim=1)  # (T, s·T); row q always sees its own step-s entry
    return torch.zeros(allowed.shape, device=device).masked_fill(~allowed, float("-inf"))[None, None]


class Eagle3Recipe(BatchRecipe):
    adapter_dir = None
    model_dir = "model"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.target = self.load().model.eval().requires_grad_(False)
        vocabulary = training_vocabulary(ctx, self.data.train, self.tokenizer, self.vocab)
        self.model = Eagle3Draft.init_from_target(self.target, vocabulary).float()
        self.model.train()
        # target id -> draft id (-1 outside the draft vocabulary), for `next-token` labels
        self.to_draft = torch.full((self.vocab,), -1, dtype=torch.long, device=ctx.device)
        self.to_draft[self.model.target_ids()] = torch.arange(self.model.config.draft_vocab_size, device=ctx.device)
        half = ctx.dtype in (torch.bfloat16, torch.float16)
        self.autocast = torch.autocast(ctx.device.type, dtype=ctx.dtype, enabled=half)
        self.parallel = DataParallel(self.model, ctx.world)
        self.agreement: float | None = None
        self.features: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        """id(example) -> its aux features (n, 3H) and final hidden states (n, H): the target's, kept."""
        self.feature_bytes = 0
        self.initial_loss = self.evaluate()

    @property
    def vocab(self) -> int:
        return self.target.get_output_embeddings().weight.shape[0]

    def train_step(self, scale: float) -> StepStats:
        """This rank's share of the global batch: its mean loss over the unrolled steps, divided by the
        number of processes (the ranks' means are averaged, each over its own predicted positions)."""
        mine, weight = batch_share(self.ctx.world, self.stream.next())
        share = weight / self.ctx.world.size
        batch = collate(mine, self.pad_id)
        with self.autocast:
            target = self._teacher(mine)
            losses = self.parallel.run(lambda: torch.stack(self._losses(batch, target, self.spec.draft.unroll)))
        loss = losses.mean() * share
        self.parallel.backward(loss * scale)
        extra = {f"loss_step{i + 1}": x.item() * share for i, x in enumerate(losses)}
        return StepStats(loss.item(), int(batch["attention_mask"].sum() * weight), extra)

    def _teacher(self, examples: list[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """The target's aux features (B, T, 3H) and final normed hidden states (B, T, H) over `examples`,
        padded as `collate` pads them (zeros past each example's end): the kept ones, and one target pass
        over the others."""
        found = {id(ex): self.features[id(ex)] for ex in examples if id(ex) in self.features}
        missing = [ex for ex in examples if id(ex) not in found]
        if missing:
            with torch.no_grad():
                inputs = body_inputs(collate(missing, self.pad_id), self.ctx.device)
                out = self.target.base_model(**inputs, output_hidden_states=True)
            aux = aux_hidden_states(out.hidden_states, self.model.config.aux_layers)
            for row, ex in enumerate(missing):
                pair = aux[row, : ex.n_tokens], out.last_hidden_state[row, : ex.n_tokens]
                size = sum(t.numel() * t.element_size() for t in pair)
                if self.feature_bytes + size <= FEATURE_CACHE_BYTES:  # kept: a copy, not a view of the batch
                    pair = self.features[id(ex)] = (pair[0].clone(), pair[1].clone())
                    self.feature_bytes += size
                found[id(ex)] = pair
        pairs = [found[id(ex)] for ex in examples]
        pad = torch.nn.utils.rnn.pad_sequence
        return pad([a for a, _ in pairs], batch_first=True), pad([f for _, f in pairs], batch_first=True)

    def _losses(
        self, batch: dict[str, torch.Tensor], target: tuple[torch.Tensor, torch.Tensor], steps: int
    ) -> list[torch.Tensor]:
        """Mean loss per predicted token of each unrolled step, given the target's outputs (`_teacher`)."""
        aux, final = target
        ids, labels = batch["input_ids"].to(self.ctx.device), batch["labels"].to(self.ctx.device)
        t = ids.shape[1] - 1  # query positions q = 0..T-2: feature g_q, token x_{q+1}
        hidden = self.model.fuse(aux[:, :t].float())  # (B, T-1, H)
        tokens = ids[:, 1:]  # (B, T-1)
        teacher = final[:, 1:]  # (B, T-1, H): the target at q + 1 predicts x_{q+2}
        wanted = F.pad(labels[:, 2:] != IGNORE_INDEX, (0, 1), value=False)  # (B, T-1): x_{q+2} is supervised
        positions = torch.arange(t, device=ids.device).expand_as(tokens)
        keys: list[tuple[torch.Tensor, torch.Tensor]] = []
        losses = []
        for step in range(1, steps + 1):
            past = None if not keys else tuple(torch.cat(kv, dim=2) for kv in zip(*keys, strict=True))
            out, kv = self.model.step(hidden, tokens, positions, past, unroll_bias(t, step, ids.device))
            keys.append(kv)
            keep = wanted.clone()
            keep[:, : step - 1] = False  # no round reaches back before position 0
            if keep.any():
                losses.append(self._loss(out[keep], teacher[keep], labels[:, 2:][keep[:, : t - 1]]))
            hidden = F.pad(out[:, :-1], (0, 0, 1, 0))  # step s + 1 at q reads step s's output at q − 1
        return losses or [out.sum() * 0]

    def _loss(self, out: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(N, H) draft outputs against the teacher's hidden states (N, H) or next tokens (N,)."""
        if self.spec.draft.objective == "distill":
            head = self.target.get_output_embeddings().weight[self.model.target_ids()]  # (N_draft, H)
            kl = chunked_distillation(
                out, teacher, self.model.logits, lambda h: F.linear(h, head), self.spec.draft.distill_temperature
            )
            return kl / out.shape[0]
        draft_targets = self.to_draft[targets]
        inside = draft_targets >= 0  # a token outside the draft vocabulary cannot be learnt
        logits = self.model.logits(out[inside]).float()
        return F.cross_entropy(logits, draft_targets[inside], reduction="sum") / out.shape[0]

    @torch.no_grad()
    def evaluate(self) -> float:
        """First-step loss on the evaluation set; also records `agreement`: the share of positions
        where the draft's argmax (as a target id) is the target's full-vocabulary argmax."""
        was_training = self.model.training
        self.model.eval()
        total, count, agree = 0.0, 0, 0
        head = self.target.get_output_embeddings()
        examples = self.data.evaluation
        size = self.spec.evaluation.batch_size
        try:
            for start in range(0, len(examples), size):
                part = examples[start : start + size]
                batch = collate(part, self.pad_id)
                with self.autocast:
                    aux, final = self._teacher(part)
                    t = aux.shape[1] - 1
                    ids, labels = batch["input_ids"].to(self.ctx.device), batch["labels"].to(self.ctx.device)
                    out, _ = self.model.step(
                        self.model.fuse(aux[:, :t].float()),
                        ids[:, 1:],
                        torch.arange(t, device=ids.device).expand(ids.shape[0], t),
                    )
                keep = F.pad(labels[:, 2:] != IGNORE_INDEX, (0, 1), value=False)
                if not keep.any():
                    continue
                out, teacher = out[keep], final[:, 1:][keep]
                total += self._loss(out, teacher, labels[:, 2:][keep[:, : t - 1]]).item() * out.shape[0]
                count += out.shape[0]
                drafted = self.model.target_ids()[self.model.logits(out).argmax(-1)]
                agree += int((drafted == head(teacher).argmax(-1)).sum())
        finally:
            self.model.train(was_training)
        if not count:
            raise ValueError("the evaluation set has no target tokens two positions into an answer")
        self.agreement = agree / count
        return total / count

    def finish(self, out: Path, eval_loss: float | None) -> dict[str, Any]:
        """The trained draft under `out/model` in the EAGLE-3 layout, with the target's tokenizer."""
        del eval_loss  # the loop's figure; the agreement needs a pass of its own
        self.evaluate()  # the weights the model now holds (the best ones): their agreement
        save_eagle3(self.model, out / self.model_dir, dtype=self.ctx.dtype, tokenizer=self.tokenizer)
        return {"draft_agreement": self.agreement}

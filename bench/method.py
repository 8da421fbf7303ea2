"""Does the method hold? Base vs LoRA SFT vs ANIL-MAML vs full MAML on the built-in dataset, side by side.

    .venv/bin/python bench/method.py --smoke                          # CPU: checks every arm end to end
    python bench/method.py --device cuda --save-merged /tmp/anil     # H100: the measurement (≈ 6 min)

Every arm trains SmolLM2-135M-Instruct (`--model` to override) with the real trainer code: a
`TrainingRun` spec, `AnilMamlRecipe` (or a subclass below), `TrainLoop` (AdamW, cosine schedule,
clipping), LoRA r `--lora-r` on all seven projections, the same task stream (same seed, same LoRA
initialisation) and the SAME TOKEN BUDGET: `--steps` steps of the full-distribution arms' tasks, in
tokens (prompt + target, no padding); an arm whose examples are longer (hard-only) gets fewer steps.
Evaluation is on `builtin://eval`, whose inputs, people, places and facts never occur in training;
perplexity is reported overall and on its easy and hard halves (forgetting shows on easy).

Arms (`--arms`, comma-separated; default all):

    sft            LoRA SFT: next-token loss on each task's support ∪ query, no inner loop
    anil           ANIL-MAML (Raghu et al. 2020): inner SGD on the head only, second order (the default)
    anil-fo        the same, first order (FOMAML through the head)
    maml@LR        MAML (Finn et al. 2017) with the inner loop on EVERY LoRA weight at inner lr LR, second
                   order: the body is re-run on the support set per inner step (`torch.func.functional_call`
                   with the fast weights) and the query loss is differentiated through the inner updates
    anil@LR        ANIL at inner lr LR (with maml@LR: "MAML with fast inner learning rates is unstable")
    anil-hard      ANIL on the hard examples only ("train only on the failures": forgetting on easy?)
    anil-tokens    ANIL with `anil.balance: tokens` (hard tokens carry the mix's 1/4 of the loss, not ~1/2)

Full MAML is implemented here, as a recipe subclass, not as a trainer option: it is the comparison the
seed's claim is about, not a configuration we recommend; as a trainer option it would be API surface
(a CRD field, validation, checkpoint compatibility) for a method that costs `innerSteps` extra
forward+backward passes of the whole body per task and is measured here to decide whether it is worth
anything. Per arm: perplexities of base (evaluated once), LoRA and merged (`merged − LoRA`), the share
of the loss's target tokens that come from hard examples, the training-loss curve, the largest
gradient norm and non-finite losses (instability), time and tokens/s. `--save-merged DIR` writes the
`anil` arm's merged model (with a manifest) for `teacher.py` and `routing.py`. Writes
`bench/results/method-<device>.json`; tables and plots: `bench/plots.py`.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import shutil
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_args, machine, setup, sync, write_result

from metaspec.api import API_VERSION, TrainingRun
from metaspec.artifacts import Uri, upload_dir
from metaspec.datasets import read_records
from metaspec.local.bundled import bundled_model_dir
from metaspec.records import dump_jsonl
from metaspec.trainer.data import Example, TaskSampler, collate
from metaspec.trainer.evaluate import body_of, evaluation_loss, perplexity
from metaspec.trainer.loop import StepStats, TrainLoop
from metaspec.trainer.losses import chunked_cross_entropy, select_targets
from metaspec.trainer.progress import LogReporter
from metaspec.trainer.recipes import AnilMamlRecipe
from metaspec.trainer.recipes.anil_maml import set_features
from metaspec.trainer.recipes.common import Context, body_inputs

log = logging.getLogger("bench.method")
DEFAULT_LRS = "1e-3,1e-2,1e-1"


class SftRecipe(AnilMamlRecipe):
    """LoRA SFT on the ANIL recipe's own task stream: one next-token loss over support ∪ query.

    Same examples in the same order, same LoRA initialisation and optimizer as the ANIL arms: only the
    objective differs."""

    def train_step(self, scale: float) -> StepStats:
        per_batch = self.spec.anil.tasks_per_batch
        losses, tokens = [], 0
        for _ in range(per_batch):
            task = self._next_task()
            examples = task.support + task.query
            balanced = self.spec.anil.balance == "tokens"
            weights = (task.support_weights + task.query_weights,) if balanced else None  # one set: all examples
            ((h, y, *w),) = set_features(self.lm, (examples,), self.pad_id, self.ctx.device, weights)
            loss = chunked_cross_entropy(h, y, self.lm.get_output_embeddings(), weights=w[0] if w else None)
            loss = loss / y.numel()
            (loss * (scale / per_batch)).backward()
            losses.append(loss.item())
            tokens += sum(ex.n_tokens for ex in examples)
        return StepStats(sum(losses) / len(losses), tokens)


class FullMamlRecipe(AnilMamlRecipe):
    """MAML (Finn et al. 2017) with the inner loop on every LoRA weight θ (not only the head):

        θ'_i = θ'_{i−1} − α ∇_θ L_support(θ'_{i−1}),  θ'_0 = θ,  i = 1..innerSteps
        outer loss L_query(θ'), differentiated through the inner updates (second order) unless firstOrder.

    Each inner step re-runs the whole body on the support set with the fast weights
    (`torch.func.functional_call`), which is what ANIL's design avoids. Tokens are counted once per
    example (the data budget), although the support set passes the body `innerSteps` times."""

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.body = body_of(self.lm)

    def _set_loss(self, params: dict[str, torch.Tensor], examples: tuple[Example, ...]) -> torch.Tensor:
        """Mean next-token loss of `examples` with the LoRA weights replaced by `params`."""
        batch = collate(examples, self.pad_id)
        hidden = functional_call(self.body, params, args=(), kwargs=body_inputs(batch, self.ctx.device))
        h, y = select_targets(hidden.last_hidden_state, batch["labels"])  # (N, D), (N,)
        # One chunk: a checkpointed chunk would have to support double backward.
        return chunked_cross_entropy(h, y, self.lm.get_output_embeddings(), chunk_size=y.numel()) / y.numel()

    def train_step(self, scale: float) -> StepStats:
        anil, per_batch = self.spec.anil, self.spec.anil.tasks_per_batch
        params = {n: p for n, p in self.body.named_parameters() if p.requires_grad}
        losses, tokens = [], 0
        # The fused attention kernels (CPU and CUDA) have no double backward; the math kernel has.
        attention = nullcontext() if anil.first_order else sdpa_kernel([SDPBackend.MATH])
        with attention:
            for _ in range(per_batch):
                task = self._next_task()
                fast = params
                for _ in range(anil.inner_steps):
                    support_loss = self._set_loss(fast, task.support)
                    grads = torch.autograd.grad(support_loss, list(fast.values()), create_graph=not anil.first_order)
                    fast = {n: w - anil.inner_lr * g for (n, w), g in zip(fast.items(), grads, strict=True)}
                loss = self._set_loss(fast, task.query)
                (loss * (scale / per_batch)).backward()
                losses.append(loss.item())
                tokens += sum(ex.n_tokens for ex in task.support + task.query)
        return StepStats(sum(losses) / len(losses), tokens)


RECIPES = {"anil": AnilMamlRecipe, "sft": SftRecipe, "maml": FullMamlRecipe}


@dataclass(frozen=True)
class Arm:
    name: str
    recipe: Literal["anil", "sft", "maml"]
    experiment: str  # which question of docs/method.md the arm answers
    inner_lr: float | None = None  # None: the spec's default
    first_order: bool = False
    data: Literal["all", "hard"] = "all"
    balance: Literal["samples", "tokens"] = "samples"


def all_arms(lrs: list[float]) -> dict[str, Arm]:
    arms = [
        Arm("sft", "sft", "method"),
        Arm("anil", "anil", "method"),
        Arm("anil-fo", "anil", "method", first_order=True),
        *(Arm(f"maml@{lr:g}", "maml", "inner-lr", inner_lr=lr) for lr in lrs),
        *(Arm(f"anil@{lr:g}", "anil", "inner-lr", inner_lr=lr) for lr in lrs),
        Arm("anil-hard", "anil", "hard-only", data="hard"),
        Arm("anil-tokens", "anil", "balance", balance="tokens"),
    ]
    return {a.name: a for a in arms}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "method")
    parser.add_argument("--model", type=Path, help="base model dir (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--arms", help="comma-separated arm names (default: all; see above)")
    parser.add_argument("--lrs", default=DEFAULT_LRS, help=f"inner learning rates of the sweep ({DEFAULT_LRS})")
    parser.add_argument("--steps", type=int, help="steps of a full-distribution arm: the token budget (cuda 120)")
    parser.add_argument("--support", type=int, default=4, help="anil.supportSize (SFT: half its batch)")
    parser.add_argument("--query", type=int, default=4, help="anil.querySize")
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--lora-r", type=int, default=64, help="LoRA rank (alpha = 2r, the seed's ratio)")
    parser.add_argument("--outer-lr", type=float, default=2e-4)
    parser.add_argument("--seq", type=int, default=512, help="maxSeqLength (the built-in set's longest is 414)")
    parser.add_argument("--eval-examples", type=int, help="first N of builtin://eval (default: all 96)")
    parser.add_argument("--save-merged", type=Path, help="write the `anil` arm's merged model here")
    parser.add_argument("--work", type=Path, help="scratch directory (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps = args.steps or 2
        args.support, args.query, args.lora_r, args.seq = 2, 2, 8, 256
        args.eval_examples = args.eval_examples or 16
    args.steps = args.steps or (120 if args.device == "cuda" else 8)
    return args


def spec_of(args: argparse.Namespace, arm: Arm, dataset: str, out: Path) -> dict[str, Any]:
    anil: dict[str, Any] = {
        "supportSize": args.support,
        "querySize": args.query,
        "innerSteps": args.inner_steps,
        "firstOrder": arm.first_order,
        "balance": arm.balance,
    }
    if arm.inner_lr is not None:
        anil["innerLr"] = arm.inner_lr
    evaluation: dict[str, Any] = {"uri": "builtin://eval", "batchSize": 16}
    if args.eval_examples:
        evaluation["maxExamples"] = args.eval_examples
    return {
        "method": "anil-maml",
        "baseModel": {"uri": str(args.model), "dtype": args.dtype},
        "dataset": {"uri": dataset},
        "evaluation": evaluation,
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r},
        "anil": anil,
        # evaluation only at the end: no early stopping, no best-weights selection, no checkpoints
        "optimization": {
            "maxSteps": 1,  # replaced per arm by the token budget (see `steps_for`)
            "maxSeqLength": args.seq,
            "outerLr": args.outer_lr,
            "earlyStoppingPatience": 0,
            "seed": args.seed,
        },
        "output": {"uri": str(out), "maxMergeDegradation": 1.0},  # the bench reports degradation itself
    }


def steps_for(budget: float, examples: list[Example], per_step: int) -> int:
    """Steps whose expected token count matches `budget` (the sampler visits every example once per
    epoch, so an epoch's mean is exact)."""
    mean = sum(ex.n_tokens for ex in examples) / len(examples)
    return max(1, round(budget / (per_step * mean)))


def hard_loss_share(sampler: TaskSampler) -> float:
    """Share of the loss's (weighted) target tokens that come from hard examples over one epoch."""
    hard = total = 0.0
    for task in sampler.plan(0):
        pairs = zip(task.support + task.query, task.support_weights + task.query_weights, strict=True)
        for ex, weight in pairs:
            mass = weight * ex.n_target_tokens
            total += mass
            hard += mass if ex.difficulty == "hard" else 0.0
    return hard / total


def split_losses(recipe: AnilMamlRecipe) -> dict[str, float]:
    """Evaluation loss of the model as it is now, on the easy and the hard examples separately."""
    out = {}
    for kind in ("easy", "hard"):
        subset = [ex for ex in recipe.data.evaluation if ex.difficulty == kind]
        if subset:  # a short --eval-examples prefix may hold one kind only
            out[kind] = evaluation_loss(recipe.lm, subset, recipe.pad_id, recipe.spec.evaluation.batch_size)
    return out


def curve(history: list[dict[str, Any]]) -> dict[str, Any]:
    losses = [r["loss"] for r in history]
    norms = [r["grad_norm"] for r in history]
    finite = [x for x in losses if math.isfinite(x)]
    head = max(1, len(finite) // 10)
    return {
        "loss_first": sum(finite[:head]) / head if finite else None,
        "loss_last": sum(finite[-head:]) / head if finite else None,
        "max_grad_norm": max(norms) if norms else None,
        "nonfinite_steps": sum(not math.isfinite(x) for x in losses),
        "history": [{"step": r["step"], "loss": r["loss"], "grad_norm": r["grad_norm"]} for r in history],
    }


def run_arm(arm: Arm, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path, budget: float):
    """Train one arm; return its result row and the recipe (its model now holds the trained LoRA)."""
    dataset = "builtin://train" if arm.data == "all" else str(hard_only_dataset(work))
    spec = spec_of(args, arm, dataset, work / arm.name / "out")
    run = TrainingRun.model_validate(
        {"apiVersion": API_VERSION, "kind": "TrainingRun", "metadata": {"name": "bench"}, "spec": spec}
    )
    ctx = Context(run, device, dtype, work / arm.name, LogReporter(every=max(1, args.steps // 5)))
    torch.manual_seed(args.seed)
    recipe = RECIPES[arm.recipe](ctx)
    per_step = (args.support + args.query) * run.spec.anil.tasks_per_batch
    steps = steps_for(budget, recipe.data.train, per_step)
    opt = run.spec.optimization.model_copy(update={"max_steps": steps, "eval_steps": steps, "checkpoint_steps": steps})
    loop = TrainLoop(
        recipe,
        opt,
        output=Uri.parse(spec["output"]["uri"]),
        work_dir=work / arm.name,
        config=run.model_dump(by_alias=True, exclude_none=True, mode="json"),
        reporter=ctx.reporter,
    )
    sync(device)
    started = time.perf_counter()
    loop.run()
    sync(device)
    seconds = time.perf_counter() - started
    row = {
        **asdict(arm),
        "inner_lr": run.spec.anil.inner_lr,
        "steps": steps,
        "tokens": loop.state.tokens,
        "seconds": seconds,
        "tokens_per_second": loop.state.tokens / seconds,
        "hard_token_share_data": recipe.data.report["stats"]["hard_token_share"],
        "hard_loss_share": hard_loss_share(recipe.sampler),
        "perplexity": {"overall": perplexity(loop.state.best_eval_loss)}
        | {k: perplexity(v) for k, v in split_losses(recipe).items()},
        **curve(loop.history),
    }
    return row, recipe


def hard_only_dataset(work: Path) -> Path:
    path = work / "train-hard.jsonl"
    if not path.is_file():
        records, _ = read_records("builtin://train")
        path.write_text("".join(dump_jsonl(r for r in records if r.difficulty == "hard")))
    return path


def base_row(recipe: AnilMamlRecipe) -> dict[str, Any]:
    """The untrained base model (the adapter switched off) on the same evaluation examples."""
    batch_size = recipe.spec.evaluation.batch_size
    with recipe.model.disable_adapter():
        overall = evaluation_loss(recipe.lm, recipe.data.evaluation, recipe.pad_id, batch_size)
        split = split_losses(recipe)
    return {
        "name": "base",
        "perplexity": {"overall": perplexity(overall)} | {k: perplexity(v) for k, v in split.items()},
    }


def finish_arm(row: dict[str, Any], recipe: AnilMamlRecipe, work: Path, save: Path | None) -> None:
    """Merge through the recipe's own `finish` (LoRA vs merged perplexity); keep the merged model if asked."""
    staging = work / row["name"] / "staging-out"
    quality = recipe.finish(staging, math.log(row["perplexity"]["overall"]))
    row["perplexity"]["merged"] = quality.get("perplexity_merged")
    row["merge_degradation"] = quality.get("merge_degradation")
    if save is not None and (staging / "merged").is_dir():
        shutil.rmtree(save, ignore_errors=True)
        upload_dir(staging / "merged", Uri.parse(str(save.resolve())), metadata={"kind": "merged", "arm": row["name"]})
        row["saved_merged"] = str(save)
    shutil.rmtree(work / row["name"], ignore_errors=True)


def full_budget(args: argparse.Namespace, device: torch.device, dtype: torch.dtype, work: Path) -> dict[str, Any]:
    """Token budget from the full training set, and the base model's perplexities."""
    probe = Arm("probe", "anil", "method")
    spec = spec_of(args, probe, "builtin://train", work / "probe")
    run = TrainingRun.model_validate(
        {"apiVersion": API_VERSION, "kind": "TrainingRun", "metadata": {"name": "bench"}, "spec": spec}
    )
    recipe = AnilMamlRecipe(Context(run, device, dtype, work / "probe", LogReporter()))
    per_step = (args.support + args.query) * run.spec.anil.tasks_per_batch
    mean = sum(ex.n_tokens for ex in recipe.data.train) / len(recipe.data.train)
    base = base_row(recipe)
    base["eval_examples"] = len(recipe.data.evaluation)
    return {"budget_tokens": args.steps * per_step * mean, "base": base}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device, dtype = setup(args)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    args.model = args.model or bundled_model_dir()
    arms = all_arms([float(x) for x in args.lrs.split(",")])
    names = args.arms.split(",") if args.arms else list(arms)
    unknown = [n for n in names if n not in arms]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; known: {', '.join(arms)}")
    work = args.work or Path(tempfile.mkdtemp(prefix="metaspec-method-"))
    started = time.perf_counter()
    setup_info = full_budget(args, device, dtype, work)
    rows = []
    for name in names:
        row, recipe = run_arm(arms[name], args, device, dtype, work, setup_info["budget_tokens"])
        finish_arm(row, recipe, work, args.save_merged if name == "anil" else None)
        rows.append(row)
        print_row(row)
        del recipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    report(args, setup_info, rows, time.perf_counter() - started)
    write_result(
        args,
        argv,
        "method",
        device,
        {"machine": machine(device, dtype), "total_seconds": time.perf_counter() - started, **setup_info, "arms": rows},
    )
    return 0


HEADER = (
    f"{'arm':<13}{'steps':>6}{'tokens':>8}{'sec':>7}{'ppl':>9}{'easy':>9}{'hard':>9}{'merged':>9}{'merge Δ':>9}"
    f"{'hard%':>7}{'loss0':>7}{'loss1':>7}{'max|g|':>8}{'nan':>5}"
)


def print_row(row: dict[str, Any]) -> None:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    p = row["perplexity"]
    print(
        f"{row['name']:<13}{fmt(row.get('steps'), 'd'):>6}{fmt(row.get('tokens'), 'd'):>8}"
        f"{fmt(row.get('seconds'), '.1f'):>7}{p['overall']:>9.2f}{fmt(p.get('easy'), '.2f'):>9}"
        f"{fmt(p.get('hard'), '.2f'):>9}"
        f"{fmt(p.get('merged'), '.2f'):>9}{fmt(row.get('merge_degradation'), '+.2%'):>9}"
        f"{fmt(row.get('hard_loss_share'), '.0%'):>7}{fmt(row.get('loss_first'), '.2f'):>7}"
        f"{fmt(row.get('loss_last'), '.2f'):>7}{fmt(row.get('max_grad_norm'), '.1f'):>8}"
        f"{fmt(row.get('nonfinite_steps'), 'd'):>5}",
        flush=True,
    )


def report(args: argparse.Namespace, setup_info: dict[str, Any], rows: list[dict[str, Any]], seconds: float) -> None:
    print(
        f"\nheld-out perplexity after the same token budget ({setup_info['budget_tokens']:.0f} tokens, "
        f"{args.steps} steps of {args.support}+{args.query} examples), {args.model.name}, {args.device} {args.dtype}, "
        f"{setup_info['base']['eval_examples']} eval examples; {seconds:.0f} s in all\n{HEADER}"
    )
    print_row(setup_info["base"])
    for row in rows:
        print_row(row)


if __name__ == "__main__":
    sys.exit(main())

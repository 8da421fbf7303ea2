"""ANIL-MAML step vs a plain LoRA SFT step on the same tokens: time, tokens/s, peak memory.

    .venv/bin/python bench/trainer.py                                   # CPU: SmolLM2-135M-Instruct, fp32
    .venv/bin/python bench/trainer.py --arch llama-3.1-8b --device cuda --dtype bfloat16 --seq 2048
    .venv/bin/python bench/trainer.py --variants sft,anil --nproc 2               # data-parallel scaling
    .venv/bin/python bench/trainer.py --variants sft,anil --nproc 2 --strategy fsdp   # the same, sharded

Every variant sees the same `support + query` sequences of `--seq` tokens (10% of each masked as
prompt) and takes a full optimizer step (forward, backward, AdamW) with LoRA on all seven projections:

    sft          one LoRA step on all support + query sequences as one batch
    anil         the trainer's ANIL-MAML step: one body pass over both sets, `--inner-steps` head steps,
                 second order (in the support set's span when it fits one `--chunk` and has at most
                 hidden-size tokens)
    anil-two-passes  the same with a body pass per set
    anil-nospan  the same with the head's (V, D) delta whatever the support set's size
    anil-fo      the same, first order (a body pass per set, as the trainer does: no gradient reaches the
                 support set's features, so their pass needs no backward)
    anil-delta   the same with a rank-`--delta-rank` head delta instead of the full head
    anil-unsplit anil-nospan with a bf16 model's inner updates folded into an fp32 copy of the head
                 (every inner-loop matmul in fp32/TF32), as the trainer did before the split head
    sft-eager-loss, anil-eager-loss
                 sft and anil with `--compile` compiling the decoder layers only, not the head's chunks
    naive        (--naive) MAML done the obvious way: the whole model re-run on the support set for
                 every inner step, full logits, double backward — what ANIL's design avoids

Variants run interleaved (sft, anil, …, sft, anil, …) and the median step time is reported, with the
ratio to sft. The goal: anil ≤ 1.2× sft with the same optimisations (`--compile`, `--liger`,
`--gradient-checkpointing` apply to every variant's body alike). Peak memory is torch's CUDA peak per variant; on
CPU it is the process's peak RSS so far (monotonic, so only growth is meaningful). Writes
`bench/results/trainer-<model>-<device>.json`. `--arch` builds a randomly initialised model from the
architecture's config (no download).

`--nproc N` measures data parallelism as the trainer does it (`metaspec.trainer.distributed`: one
process per device, DDP all-reducing the LoRA gradients in backward): first one process, then N
processes launched by torch.distributed.run, each stepping on its own batch of the same shape (N× the
tokens per step). It reports each variant's N-process tokens/s and the scaling efficiency, N-process
tokens/s ÷ (N × 1-process tokens/s). On CPU every process, the single one included, computes on one
thread, so the figure is about the parallel machinery and not about threads competing for cores.
`--strategy fsdp` shards the N processes' model as the trainer's `distributed.strategy: fsdp` does
(FSDP2 per decoder layer, then the root); the one-process baseline is unsharded either way.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from torch.func import functional_call

from metaspec.causal_lm import load_causal_lm
from metaspec.trainer.distributed import DataParallel, World, init_world
from metaspec.trainer.launcher import launched
from metaspec.trainer.losses import DEFAULT_CHUNK, IGNORE_INDEX, chunked_cross_entropy, select_targets
from metaspec.trainer.meta import head_projection, output_head, task_loss

RESULTS = Path(__file__).parent / "results"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ARCHS = {
    "llama-3.1-8b": {
        "vocab_size": 128256,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    },
    "llama-3.2-1b": {
        "vocab_size": 128256,
        "hidden_size": 2048,
        "intermediate_size": 8192,
        "num_hidden_layers": 16,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
    },
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", help="smollm2 (the bundled model) or a model directory")
    parser.add_argument("--arch", choices=sorted(ARCHS), help="random init from this architecture instead of --model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--support", type=int, default=4, help="sequences in the support set")
    parser.add_argument("--query", type=int, default=4, help="sequences in the query set")
    parser.add_argument("--inner-steps", type=int, default=2)
    parser.add_argument("--delta-rank", type=int, default=64, help="rank of the anil-delta variant")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument(
        "--chunk", type=int, default=DEFAULT_CHUNK, help="tokens per head chunk (more than a set's: no recompute)"
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each decoder layer (one graph, reused) and each head chunk's loss or inner gradient, as "
        "the trainer's `optimization.compile` does",
    )
    parser.add_argument(
        "--liger",
        action="store_true",
        help="Liger-Kernel's fused RMSNorm, RoPE and SwiGLU in the body, and its fused linear cross-entropy for sft",
    )
    parser.add_argument("--naive", action="store_true", help="also time the whole-model-per-inner-step MAML")
    parser.add_argument("--variants", default="sft,anil,anil-fo,anil-delta")
    parser.add_argument("--nproc", type=int, default=1, help="also measure N data-parallel processes (scaling)")
    parser.add_argument(
        "--strategy", default="ddp", choices=["ddp", "fsdp"], help="how the N processes share the model"
    )
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def build_model(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> tuple[torch.nn.Module, str]:
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.liger:  # patches the Llama classes, so it must come before the model is built
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False)
    if args.arch:
        config = LlamaConfig(**ARCHS[args.arch])
        torch.manual_seed(0)
        with device:
            model = LlamaForCausalLM(config).to(dtype)
        name = args.arch
    else:
        from metaspec.local.bundled import bundled_model_dir

        path = bundled_model_dir() if args.model == "smollm2" else Path(args.model)
        model = load_causal_lm(path, dtype).to(device)
        name = "smollm2-135m" if args.model == "smollm2" else path.name
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    torch.manual_seed(0)
    config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules=PROJECTIONS)
    model = get_peft_model(model, config).train()
    if args.compile:
        for layer in model.get_base_model().model.layers:
            layer.compile()
    return model, name


def make_batch(rows: int, seq: int, vocab: int, device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    labels = ids.clone()
    labels[:, : seq // 10] = IGNORE_INDEX  # the prompt
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels}


def features(lm: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    hidden = lm.base_model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).last_hidden_state
    return select_targets(hidden, batch["labels"])


def sft_loss(lm, support, query, args, proj) -> torch.Tensor:
    both = {k: torch.cat([support[k], query[k]]) for k in support}
    h, y = features(lm, both)
    if args.liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss()(lm.get_output_embeddings().weight, h, y)
    return chunked_cross_entropy(h, y, lm.get_output_embeddings(), args.chunk, compile=args.compile) / y.numel()


def anil_loss(
    first_order: bool, delta: bool, split: bool | None = None, span: bool = True, one_pass: bool = True
) -> Callable[..., torch.Tensor]:
    def loss(lm, support, query, args, proj) -> torch.Tensor:
        head = output_head(lm, proj if delta else None, split)
        if one_pass and not first_order:  # the trainer's: both sets in one body pass, unless first order
            hidden = lm.base_model(
                input_ids=torch.cat([support["input_ids"], query["input_ids"]]),
                attention_mask=torch.cat([support["attention_mask"], query["attention_mask"]]),
                use_cache=False,
            ).last_hidden_state
            rows = support["input_ids"].shape[0]
            sets = select_targets(hidden[:rows], support["labels"]), select_targets(hidden[rows:], query["labels"])
        else:
            sets = features(lm, support), features(lm, query)
        steps, lr = args.inner_steps, 5e-3
        return task_loss(head, *sets, steps, lr, first_order, args.chunk, span, args.compile)

    return loss


def naive_loss(lm, support, query, args, proj) -> torch.Tensor:
    """MAML as first written: the whole model per inner step, `autograd.grad(create_graph=True)`."""
    name = "lm_head.weight"
    fast = lm.lm_head.weight
    for _ in range(args.inner_steps):
        logits = functional_call(lm, {name: fast}, (support["input_ids"],)).logits  # (B, T, V)
        loss = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), support["labels"][:, 1:].flatten().to(logits.device)
        )
        (grad,) = torch.autograd.grad(loss, fast, create_graph=True)
        fast = fast - 5e-3 * grad
    logits = functional_call(lm, {name: fast}, (query["input_ids"],)).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), query["labels"][:, 1:].flatten().to(logits.device))


def eager_loss(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """`loss` with its head work uncompiled, whatever `--compile` does to the decoder layers."""

    def uncompiled(lm, support, query, args, proj) -> torch.Tensor:
        return loss(lm, support, query, argparse.Namespace(**{**vars(args), "compile": False}), proj)

    return uncompiled


LOSSES = {
    "sft": sft_loss,
    "anil": anil_loss(first_order=False, delta=False),
    "anil-fo": anil_loss(first_order=True, delta=False),
    "anil-delta": anil_loss(first_order=False, delta=True),
    "anil-unsplit": anil_loss(first_order=False, delta=False, split=False, span=False),
    "anil-nospan": anil_loss(first_order=False, delta=False, span=False),
    "anil-two-passes": anil_loss(first_order=False, delta=False, one_pass=False),
    "naive": naive_loss,
}
LOSSES |= {f"{name}-eager-loss": eager_loss(LOSSES[name]) for name in ("sft", "anil")}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def time_step(model, parallel, optimizer, loss_fn, support, query, args, proj, device) -> float:
    lm = model.get_base_model()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    parallel.backward(parallel.run(lambda: loss_fn(lm, support, query, args, proj)))
    optimizer.step()
    sync(device)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.nproc > 1 and not launched():
        return scaling(args, argv)
    world = init_world(args.device) if launched() else World(device=torch.device(args.device))
    rows, name, dtype = measure(args, world)
    if world.main:
        print_table(name, world.device, dtype, args, rows)
        write_results(name, world.device, dtype, args, rows, (args.support + args.query) * args.seq)
    world.close()
    return 0


def scaling(args: argparse.Namespace, argv: list[str]) -> int:
    """One process, then `--nproc` processes under torch.distributed.run; efficiency side by side."""
    from torch.distributed.run import parse_args as torchrun_args
    from torch.distributed.run import run

    if args.device == "cpu":  # one thread per process, the single one too (see the module docstring)
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)
    single, name, dtype = measure(args, World(device=torch.device(args.device)))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ranks.json"
        options = [f"--nproc-per-node={args.nproc}", "--standalone", "--max-restarts=0"]
        run(torchrun_args([*options, __file__, *_worker_argv(argv), "--out", str(out)]))
        parallel = json.loads(out.read_text())["results"]
    base = {r["variant"]: r["tokens_per_second"] for r in single}
    for row in parallel:
        row["single_tokens_per_second"] = base[row["variant"]]
        row["scaling_efficiency"] = row["tokens_per_second"] / (args.nproc * base[row["variant"]])
    device = torch.device(args.device)
    print_table(name, device, dtype, args, parallel)
    write_results(name, device, dtype, args, parallel, args.nproc * (args.support + args.query) * args.seq)
    return 0


def _worker_argv(argv: list[str]) -> list[str]:
    """The command line without `--nproc N`: a worker knows it is one (`launched`), and torchrun's
    parser, which sees the script's options too, refuses `--nproc` as an ambiguous abbreviation of
    its own `--nproc-per-node`."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if not skip and arg != "--nproc" and not arg.startswith("--nproc="):
            out.append(arg)
        skip = arg == "--nproc"
    return out


def measure(args: argparse.Namespace, world: World) -> tuple[list[dict[str, Any]], str, torch.dtype]:
    """Every variant's median step on this process's batches; with several ranks, tokens/s of them all."""
    device = world.device
    dtype = (
        getattr(torch, args.dtype)
        if args.dtype != "auto"
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    model, name = build_model(args, device, dtype)
    layers = model.get_base_model().model.layers
    parallel = DataParallel(model, world, args.strategy, layers, dtype)
    vocab, hidden = model.get_base_model().lm_head.weight.shape
    support = make_batch(args.support, args.seq, vocab, device, seed=1 + 2 * world.rank)
    query = make_batch(args.query, args.seq, vocab, device, seed=2 + 2 * world.rank)
    proj = head_projection(hidden, args.delta_rank)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    variants = args.variants.split(",") + (["naive"] if args.naive else [])
    times: dict[str, list[float]] = {v: [] for v in variants}
    memory: dict[str, float] = {}
    for round_ in range(args.steps + 1):
        for variant in variants:
            seconds = time_step(model, parallel, optimizer, LOSSES[variant], support, query, args, proj, device)
            memory[variant] = max(memory.get(variant, 0.0), peak_memory_gib(device))
            if round_:  # the first round warms up kernels and allocators
                times[variant].append(seconds)
    tokens = world.size * (args.support + args.query) * args.seq
    base = statistics.median(times["sft"]) if "sft" in times else None
    rows = []
    for variant in variants:
        median = statistics.median(times[variant])
        rows.append(
            {
                "variant": variant,
                "step_seconds": median,
                "tokens_per_second": tokens / median,
                "ratio_to_sft": median / base if base else None,
                "peak_memory_gib": memory[variant],
                "step_times": times[variant],
            }
        )
    return rows, name, dtype


def print_table(
    name: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace, rows: list[dict]
) -> None:
    from rich.console import Console
    from rich.table import Table

    memory = "peak GiB (CUDA)" if device.type == "cuda" else "process peak RSS GiB"
    table = Table(
        title=f"{name} {dtype} on {device}: {args.support}+{args.query} × {args.seq} tokens, "
        f"LoRA r{args.lora_r}, {args.inner_steps} inner steps"
    )
    scaled = "scaling_efficiency" in rows[0]
    columns = ["variant", "step s", "tokens/s", "× sft", memory]
    if scaled:
        columns[2] = f"tokens/s ({args.nproc} proc)"
        columns += ["tokens/s (1 proc)", "scaling efficiency"]
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        ratio = f"{r['ratio_to_sft']:.2f}" if r["ratio_to_sft"] else "-"
        cells = [r["variant"], f"{r['step_seconds']:.3f}", f"{r['tokens_per_second']:.0f}", ratio]
        cells.append(f"{r['peak_memory_gib']:.2f}")
        if scaled:
            cells += [f"{r['single_tokens_per_second']:.0f}", f"{r['scaling_efficiency']:.0%}"]
        table.add_row(*cells)
    Console().print(table)


def write_results(
    name: str, device: torch.device, dtype: torch.dtype, args: argparse.Namespace, rows: list[dict], tokens: int
) -> None:
    suffix = f"-{args.nproc}proc" + ("-fsdp" if args.strategy == "fsdp" else "") if args.nproc > 1 else ""
    out = args.out or RESULTS / f"trainer-{name}-{device.type}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {
        "model": name,
        "device": device.type,
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or platform.machine(),
        "dtype": str(dtype),
        "torch": torch.__version__,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "tokens_per_step": tokens,
        "results": rows,
    }
    out.write_text(json.dumps(body, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())

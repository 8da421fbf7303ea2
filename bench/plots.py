"""Markdown tables and PNG plots from the method benchmarks' JSON (run where matplotlib is installed).

    .venv/bin/python bench/plots.py bench/results/method-cuda.json bench/results/teacher-cuda.json \\
        bench/results/routing-cuda.json --img docs/img > /tmp/tables.md

Each table is headed by the command, hardware and date stored in its JSON; `docs/method.md` quotes them.
PNGs (`--img DIR`): method-loss.png (training-loss curves, the inner-lr sweep's stability),
method-perplexity.png (easy/hard held-out perplexity per arm), routing-confidence.png (first- and
content-token confidence of easy vs hard prompts, and against each request's acceptance rate).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def heading(result: dict[str, Any], title: str) -> str:
    m = result["machine"]
    command = result.get("command") or f"python bench/{result['benchmark']}.py (settings: {result['settings']})"
    smoke = (
        " — **smoke run: tiny sizes, checks the pipeline, says nothing about the method**"
        if result["settings"].get("smoke")
        else ""
    )
    return (
        f"### {title}{smoke}\n\n`{command}`  \n{m['device_name'] or m['device']} ({m['device']}, {m['dtype']}, "
        f"{m['threads']} threads, load {m['load_average']:.1f}), torch {m['torch']}, transformers "
        f"{m['transformers']}, {m['date']}\n"
    )


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def fmt(value: Any, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def method_tables(result: dict[str, Any]) -> str:
    s = result["settings"]
    base = result["base"]["perplexity"]
    rows = [
        [
            "base (no training)",
            "–",
            "–",
            "–",
            *(fmt(base.get(k), ".2f") for k in ("overall", "easy", "hard")),
            *"––––––",
        ]
    ]
    for a in result["arms"]:
        p = a["perplexity"]
        rows.append(
            [
                a["name"],
                str(a["steps"]),
                str(a["tokens"]),
                f"{a['seconds']:.0f}",
                f"{p['overall']:.2f}",
                fmt(p.get("easy"), ".2f"),
                fmt(p.get("hard"), ".2f"),
                fmt(p.get("merged"), ".2f"),
                fmt(a.get("merge_degradation"), "+.2%"),
                f"{a['hard_loss_share']:.0%}",
                f"{a['loss_first']:.2f} → {a['loss_last']:.2f}",
                f"{a['max_grad_norm']:.2f}",
                str(a["nonfinite_steps"]),
            ]
        )
    header = ["arm", "steps", "tokens", "s", "ppl", "easy ppl", "hard ppl", "merged ppl", "merged − LoRA"]
    header += ["hard share of loss", "train loss", "max grad norm", "non-finite"]
    intro = (
        f"Token budget {result['budget_tokens']:.0f} tokens per arm ({s['steps']} steps of "
        f"{s['support']}+{s['query']} examples), LoRA r {s['lora_r']}, outer lr {s['outer_lr']}, "
        f"{s['inner_steps']} inner steps, {result['base'].get('eval_examples', '?')} held-out examples.\n\n"
    )
    return heading(result, "Method arms (bench/method.py)") + "\n" + intro + table(header, rows)


def teacher_tables(result: dict[str, Any]) -> str:
    rows = []
    for model in result["models"]:
        for name, c in model["configurations"].items():
            by = c["byDifficulty"]
            rows.append(
                [
                    Path(model["model"]).name,
                    name,
                    f"{c['naturalStopRate']:.0%}",
                    *(fmt(by.get(k, {}).get("naturalStopRate"), ".0%") for k in ("easy", "hard")),
                    f"{c['meanOutputTokens']:.0f}",
                    f"{c['p95OutputTokens']:.0f}",
                    f"{c['loopRate']:.0%}",
                    fmt(c["distinct4"], ".2f"),
                    fmt(c["seconds"], ".0f"),
                ]
            )
    header = ["model", "config", "natural stop", "easy", "hard", "mean tokens", "p95 tokens", "loops", "distinct-4"]
    return heading(result, "Teacher outputs (bench/teacher.py)") + "\n" + table([*header, "s"], rows)


def routing_tables(result: dict[str, Any]) -> str:
    rows = [
        [
            r["policy"],
            fmt(r["acceptance_rate"], ".2f"),
            f"{r['speculation_rate']:.2f}",
            f"{r['tokens_per_second']:.1f}",
            f"{r['speedup_vs_never']:.2f}×",
            f"{r['tokens_per_round']:.2f}",
            str(r["mismatches_vs_never"]),
        ]
        for r in result["rows"]
    ]
    header = ["policy", "acceptance", "speculation rate", "tokens/s", "vs never", "tokens per target pass"]
    out = heading(result, "Routing (bench/routing.py)") + "\n" + table([*header, "outputs ≠ never"], rows) + "\n"
    conf_rows = []
    for key, name in (("first_token_confidence", "first token"), ("content_token_confidence", "content token")):
        c = result["confidence"][key]
        corr = c["correlation_with_acceptance"]
        conf_rows.append(
            [
                name,
                *(
                    f"{fmt(c[k].get('mean'), '.2f')} / {fmt(c[k].get('median'), '.2f')} (n {c[k]['n']})"
                    for k in ("easy", "hard")
                ),
                fmt(corr["pearson"], ".2f"),
                fmt(corr["spearman"], ".2f"),
                str(corr["n"]),
            ]
        )
    header = ["confidence at", "easy mean / median", "hard mean / median", "Pearson r", "Spearman ρ", "n"]
    return out + table(header, conf_rows)


def method_plots(result: dict[str, Any], img: Path, plt: Any) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm in result["arms"]:
        history = arm["history"]
        ax.plot([h["step"] for h in history], [h["loss"] for h in history], label=arm["name"], lw=1)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="Training loss per arm")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(img / "method-loss.png", dpi=120)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    arms = [{"name": "base", **result["base"]}, *result["arms"]]
    x = range(len(arms))
    for offset, kind in ((-0.2, "easy"), (0.2, "hard")):
        ax.bar([i + offset for i in x], [a["perplexity"].get(kind, 0) for a in arms], width=0.4, label=kind)
    ax.set_xticks(list(x), [a["name"] for a in arms], rotation=45, ha="right", fontsize=8)
    ax.set(ylabel="held-out perplexity", yscale="log", title="Easy vs hard held-out perplexity")
    ax.legend()
    fig.tight_layout()
    fig.savefig(img / "method-perplexity.png", dpi=120)


def routing_plots(result: dict[str, Any], img: Path, plt: Any) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    requests = result["requests"]
    for ax, key, name in zip(
        axes[:2], ("first_token_confidence", "content_token_confidence"), ("first token", "content token"), strict=True
    ):
        for kind in ("easy", "hard"):
            values = [r[key] for r in requests if r["difficulty"] == kind and r[key] is not None]
            ax.hist(values, bins=[i / 20 for i in range(21)], alpha=0.6, label=f"{kind} (n {len(values)})")
        ax.axvline(0.7, color="k", ls="--", lw=1)
        ax.set(xlabel=f"draft confidence at the {name}", ylabel="prompts", title=name)
        ax.legend()
    for key, marker in (("first_token_confidence", "o"), ("content_token_confidence", "x")):
        pairs = [
            (r[key], r["acceptance_rate"]) for r in requests if r[key] is not None and r["acceptance_rate"] is not None
        ]
        axes[2].scatter([p[0] for p in pairs], [p[1] for p in pairs], marker=marker, label=key.split("_")[0], alpha=0.7)
    axes[2].set(xlabel="draft confidence", ylabel="acceptance rate (always)", title="confidence vs acceptance")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(img / "routing-confidence.png", dpi=120)


TABLES = {"method": method_tables, "teacher": teacher_tables, "routing": routing_tables}
PLOTS = {"method": method_plots, "routing": routing_plots}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="JSON files written by method/teacher/routing.py")
    parser.add_argument("--img", type=Path, help="write PNGs here (needs matplotlib)")
    args = parser.parse_args(argv)
    plt = None
    if args.img:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        args.img.mkdir(parents=True, exist_ok=True)
    for path in args.results:
        result = json.loads(path.read_text())
        print(TABLES[result["benchmark"]](result))
        if plt is not None and result["benchmark"] in PLOTS:
            PLOTS[result["benchmark"]](result, args.img, plt)
    return 0


if __name__ == "__main__":
    sys.exit(main())

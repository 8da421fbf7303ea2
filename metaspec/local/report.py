"""`metaspec report STATE_DIR`: a Markdown summary of a local run with PNG plots (matplotlib).

Everything comes from the state directory: the statuses in `state.json`, the result files each
finished stage left in `stages/<kind>-<name>/artifacts/` (metrics, per-step history, teacher outputs
and their statistics) and the demo benchmark's JSON. No S3 server is needed to write it again.
A figure whose data is missing says so in the report instead of disappearing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from metaspec.local import demo_bench
from metaspec.local.state import ResourceState, State, StateError, load_state

REPORT_DIR = "report"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metaspec report", description="write a report of a local run")
    parser.add_argument("state_dir", type=Path, help="the run's state directory (default of `local run`: .metaspec)")
    parser.add_argument("--out", type=Path, help="output directory (default: STATE_DIR/report)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not (args.state_dir / "state.json").is_file():
        print(f"{args.state_dir} holds no state.json: give the --state-dir of a `metaspec local run`", file=sys.stderr)
        return 2
    try:
        path = write_report(args.state_dir, args.out)
    except StateError as e:
        print(e, file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0


def write_report(state_dir: Path, out: Path | None = None) -> Path:
    """Write `report.md` and its PNGs; returns the Markdown file's path."""
    import matplotlib

    matplotlib.use("Agg")
    state = load_state(state_dir)
    out = Path(out or state_dir / REPORT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    report = _Report(state_dir, state, out)
    sections = [
        report.overview(),
        report.training(),
        report.generation(),
        report.serving(),
    ]
    text = "\n\n".join(s for s in sections if s) + "\n"
    path = out / "report.md"
    path.write_text(text)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class _Report:
    def __init__(self, state_dir: Path, state: State, out: Path):
        self.state_dir, self.state, self.out = state_dir, state, out

    def artifacts(self, r: ResourceState) -> Path:
        return self.state_dir / "stages" / f"{r.kind.lower()}-{r.name}" / "artifacts"

    def of_kind(self, kind: str) -> list[ResourceState]:
        return [r for r in self.state.resources.values() if r.kind == kind]

    def save(self, fig: Any, name: str) -> str:
        fig.tight_layout()
        fig.savefig(self.out / name, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return f"![{name}]({name})"

    # --- sections ----------------------------------------------------------------------------------

    def overview(self) -> str:
        rows = ["| resource | phase | started | finished | message |", "|---|---|---|---|---|"]
        for r in self.state.resources.values():
            s = r.status
            rows.append(
                f"| {r.key} | {r.phase} | {s.get('startTime', '–')} | {s.get('completionTime', '–')} "
                f"| {s.get('message', '')} |"
            )
        return f"# metaspec local run\n\nPipeline: `{self.state.pipeline}`\n\n" + "\n".join(rows)

    def training(self) -> str:
        runs = self.of_kind("TrainingRun")
        if not runs:
            return ""
        parts = ["## Training", self._metrics_table(runs), self._hard_share(runs)]
        parts += [self._loss_curves(runs), self._perplexity(runs)]
        return "\n\n".join(p for p in parts if p)

    def _hard_share(self, runs: list[ResourceState]) -> str:
        shares = [(r.name, self._metrics(r).get("hardTokenShare")) for r in runs]
        lines = [f"{name}: {_pct(share)}" for name, share in shares if share is not None]
        if not lines:
            return ""
        return (
            "Hard-token share (share of the loss's target tokens that come from hard examples; a 3:1 easy:hard "
            "mix by examples can still be mostly hard by tokens): " + "; ".join(lines) + "."
        )

    def _metrics(self, r: ResourceState) -> dict[str, Any]:
        path = self.artifacts(r) / "metrics.json"
        from_file = json.loads(path.read_text()) if path.is_file() else {}
        return {**from_file, **(r.status.get("metrics") or {})}

    def _metrics_table(self, runs: list[ResourceState]) -> str:
        keys = [
            ("trainLoss", "train loss"),
            ("evalLoss", "best eval loss"),
            ("perplexityBase", "perplexity base"),
            ("perplexityLora", "perplexity LoRA"),
            ("perplexityMerged", "perplexity merged"),
            ("perplexityModel", "perplexity trained"),
            ("mergeDegradation", "merge degradation"),
            ("hardTokenShare", "hard-token share"),
            ("tokensPerSecond", "train tokens/s"),
        ]
        rows = ["| run | " + " | ".join(label for _, label in keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for r in runs:
            m = self._metrics(r)
            values = [
                _pct(m.get(k)) if k in ("hardTokenShare", "mergeDegradation") else _fmt(m.get(k)) for k, _ in keys
            ]
            rows.append(f"| {r.name} | " + " | ".join(values) + " |")
        return "\n".join(rows)

    def _loss_curves(self, runs: list[ResourceState]) -> str:
        import matplotlib.pyplot as plt

        histories = {r.name: read_jsonl(self.artifacts(r) / "history.jsonl") for r in runs}
        if not any(histories.values()):
            return "_Loss curves: no `history.jsonl` was found for any training run._"
        fig, axes = plt.subplots(1, len(histories), figsize=(5.5 * len(histories), 3.8), squeeze=False)
        for ax, (name, history) in zip(axes[0], histories.items(), strict=True):
            for series, points in loss_series(history).items():
                ax.plot(*zip(*points, strict=True), marker="o" if "eval" in series else None, ms=3, label=series)
            ax.set(title=name, xlabel="step", ylabel="loss")
            ax.legend()
            ax.grid(alpha=0.3)
        return "### Training and evaluation loss\n\n" + self.save(fig, "loss_curves.png")

    def _perplexity(self, runs: list[ResourceState]) -> str:
        import matplotlib.pyplot as plt

        labels = (
            ("perplexityBase", "base"),
            ("perplexityLora", "LoRA"),
            ("perplexityMerged", "merged"),
            ("perplexityModel", "trained"),
        )
        found = {r.name: {label: self._metrics(r).get(k) for k, label in labels} for r in runs}
        found = {n: {k: v for k, v in ppl.items() if v is not None} for n, ppl in found.items()}
        found = {n: ppl for n, ppl in found.items() if ppl}
        if not found:
            return "_Perplexity: no run reported perplexities._"
        fig, axes = plt.subplots(1, len(found), figsize=(4.5 * len(found), 3.5), squeeze=False)
        for ax, (name, ppl) in zip(axes[0], found.items(), strict=True):
            bars = ax.bar(list(ppl), list(ppl.values()), color=["#999", "#3a7", "#37a", "#c73"][: len(ppl)])
            ax.bar_label(bars, fmt="%.4g")
            # an untrained derived draft starts orders of magnitude above where training takes it
            scale = "log" if max(ppl.values()) > 100 * min(ppl.values()) else "linear"
            ax.set(title=f"{name}: held-out perplexity", ylabel="perplexity", yscale=scale)
        return "### Perplexity of base, LoRA, merged and trained models\n\n" + self.save(fig, "perplexity.png")

    def generation(self) -> str:
        runs = self.of_kind("TeacherGeneration")
        if not runs:
            return ""
        parts = ["## Teacher outputs"]
        for r in runs:
            parts.append(self._teacher(r))
        return "\n\n".join(parts)

    def _teacher(self, r: ResourceState) -> str:
        import matplotlib.pyplot as plt

        records = [rec for p in sorted(self.artifacts(r).glob("*.jsonl")) for rec in read_jsonl(p)]
        stats = r.status.get("stats") or {}
        if not records:
            return f"_{r.name}: no teacher-output files were found._"
        lengths = {"stop": [], "length": []}
        for rec in records:
            meta = rec.get("metadata") or {}
            lengths.setdefault(meta.get("finish_reason", "?"), []).append(meta.get("num_tokens_generated", 0))
        natural = len(lengths["stop"]) / len(records)
        everything = [n for values in lengths.values() for n in values]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([lengths["stop"], lengths["length"]], bins=20, stacked=True, label=["natural stop", "hit maxTokens"])
        ax.set(title=f"{r.name}: output length (natural stop {natural:.0%})", xlabel="output tokens", ylabel="outputs")
        ax.legend()
        summary = (
            f"### {r.name}\n\n{len(records)} outputs; natural-stop rate {natural:.1%} "
            f"(status: {_pct(stats.get('naturalStopRate'))}); output tokens mean {statistics.mean(everything):.1f}, "
            f"median {statistics.median(everything):.0f}, max {max(everything)}; "
            f"throughput {_fmt(stats.get('tokensPerSecond'))} tokens/s."
        )
        return summary + "\n\n" + self.save(fig, f"teacher_lengths_{r.name}.png")

    def serving(self) -> str:
        servers = self.of_kind("SpecServe")
        bench = json.loads(Path(self.state.bench).read_text()) if self.state.bench else None
        if not servers and not bench:
            return ""
        parts = ["## Speculative serving"]
        for r in servers:
            target, draft = r.status.get("target") or {}, r.status.get("draft") or {}
            proposer = f"draft `{draft['uri']}`" if draft.get("uri") else "no draft model"
            parts.append(f"{r.name}: target `{target.get('uri', '–')}`, {proposer}.")
        if bench is None:
            parts.append("_No benchmark was run (`metaspec local run --report` runs it)._")
            return "\n\n".join(parts)
        parts += [self._policy_table(bench), self._policy_plot(bench), self._confidence(bench)]
        return "\n\n".join(p for p in parts if p)

    def _policy_table(self, bench: dict[str, Any]) -> str:
        rows = [
            f"{bench['prompts']} prompts from `builtin://eval`, greedy, at most {bench['maxTokens']} tokens, "
            "one request at a time on this machine.",
            "",
            "| policy | tokens/s | vs never | acceptance | speculated | output = target-only |",
            "|---|---|---|---|---|---|",
        ]
        base = bench["policies"].get("never", {}).get("tokensPerSecond")
        for policy, s in bench["policies"].items():
            speedup = f"{s['tokensPerSecond'] / base:.2f}×" if base and s["tokensPerSecond"] else "–"
            acceptance = _pct(s["acceptanceRate"])
            if s.get("lookupAcceptanceRate") is not None:  # a draft behind prompt lookup: each proposer's own
                acceptance += f" (lookup {_pct(s['lookupAcceptanceRate'])}, draft {_pct(s['draftAcceptanceRate'])})"
            rows.append(
                f"| {policy} | {_fmt(s['tokensPerSecond'], 3)} | {speedup} | {acceptance} "
                f"| {_pct(s['speculationRate'])} | {'yes' if s.get('identicalToTargetOnly') else 'NO'} |"
            )
        return "\n".join([*rows, "", f"**{demo_bench.verdict(bench)}**"])

    def _policy_plot(self, bench: dict[str, Any]) -> str:
        import matplotlib.pyplot as plt

        policies = list(bench["policies"])
        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        speed = left.bar(policies, [bench["policies"][p]["tokensPerSecond"] or 0 for p in policies], color="#37a")
        left.bar_label(speed, fmt="%.1f")
        left.set(title="decode tokens/s", ylabel="tokens/s")
        acceptance = [bench["policies"][p]["acceptanceRate"] or 0 for p in policies]
        bars = right.bar(policies, acceptance, color="#3a7")
        right.bar_label(bars, fmt="%.2f")
        right.set(title="acceptance rate", ylim=(0, 1))
        return self.save(fig, "policies.png")

    def _confidence(self, bench: dict[str, Any]) -> str:
        import matplotlib.pyplot as plt

        by_difficulty = confidence_by_difficulty(bench)
        if not any(by_difficulty.values()):
            return "_First-token confidence: the server reported none._"
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist([by_difficulty["easy"], by_difficulty["hard"]], bins=10, range=(0, 1), label=["easy", "hard"])
        threshold = bench.get("confidenceThreshold")
        if isinstance(threshold, int | float):  # `auto` is resolved by the server, which does not report it
            ax.axvline(threshold, color="k", ls="--", label=f"threshold {threshold}")
        ax.set(title="draft's first-token confidence", xlabel="max probability", ylabel="prompts")
        ax.legend()
        means = {d: statistics.mean(v) if v else None for d, v in by_difficulty.items()}
        text = (
            "### First-token confidence: easy vs hard prompts\n\nThe seed routes on the draft's confidence in "
            "its first token, assuming easy prompts get confident drafts. Measured here: mean confidence "
            f"{_fmt(means['easy'], 3)} on easy prompts, {_fmt(means['hard'], 3)} on hard ones "
            f"({len(by_difficulty['easy'])} and {len(by_difficulty['hard'])} prompts)."
        )
        return text + "\n\n" + self.save(fig, "first_token_confidence.png")


# --- pure helpers (tested directly) ------------------------------------------------------------------


def loss_series(history: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """`{series: [(step, value)]}` for every numeric `*loss*` field of the per-step history."""
    series: dict[str, list[tuple[float, float]]] = {}
    for row in history:
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for k, v in row.items():
            if "loss" in k.lower() and isinstance(v, int | float) and not isinstance(v, bool):
                series.setdefault(k, []).append((step, v))
    return series


def confidence_by_difficulty(bench: dict[str, Any]) -> dict[str, list[float]]:
    """First-token confidences from the policy that measures them for every request."""
    for policy in ("first-token", "per-token", "always", "never"):
        requests = bench["policies"].get(policy, {}).get("requests", [])
        values = [(r["difficulty"], r["firstTokenConfidence"]) for r in requests]
        if values and all(v is not None for _, v in values):
            return {d: [v for dd, v in values if dd == d] for d in ("easy", "hard")}
    return {"easy": [], "hard": []}

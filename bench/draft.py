"""Train drafts the way the pipeline does, then measure them with bench/server.py.

The pipeline's draft (examples/pipeline.yaml) learns from teacher outputs: here the target's own greedy
completions of built-in inputs (a `TeacherGeneration`, transformers engine), because greedy serving accepts a
proposal exactly when it is the target's greedy token; or, with `--samples N --temperature T`, N sampled
completions of each (`sampling.n`), N times the text to learn the target's distribution along. The inputs are
`--inputs`, by default `builtin://distill` (3936 training-side inputs, none of them in `builtin://prompts` or
`builtin://eval`); the runs recorded before 2026-11-26 used the 600 of `builtin://train` (`--inputs
builtin://train`), too few: the draft trained on them accepted only about half of its proposals on held-out
prompts. Each draft is a `TrainingRun` with `method: causal-lm`, cut from the target (`initFrom: target`,
`numLayers: N`) and trained with `objective: distill` (KL to the target's logits along those outputs); an
`eagle3` draft is a feature-level draft over the target (`draft.architecture: eagle3`), and `@V` limits a
draft's head to V tokens (`draft.vocabulary`). Both stages run through the real `metaspec generate` /
`metaspec train` commands with the configs the operator would render; serving is then measured on the held-out
`builtin://prompts` split.

    python bench/draft.py --device cuda --layers 2 4 8 --work ~/draft-work      # the GPU machine
    python bench/draft.py --device cuda --layers 4 4@8192 eagle3 eagle3@8192     # separate vs feature-level
    python bench/draft.py --device cpu --layers 2 --examples 16 --max-tokens 32 --epochs 1 --smoke

Results: bench/results/draft-<device>-<N>layers.json (server benchmark per draft) and the stage
summaries in draft-<device>-training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from metaspec.local.bundled import bundled_model_dir

RESULTS = Path(__file__).parent / "results"
API = "metaspec.dev/v1alpha1"


def teacher_config(target: str, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "TeacherGeneration",
        "metadata": {"name": "draft-teacher"},
        "spec": {
            "model": {"uri": target},
            "dataset": {"uri": args.inputs, "maxExamples": args.examples},
            "output": {"uri": str(out)},
            "engine": "transformers",
            "sampling": {
                "temperature": args.temperature,
                "maxTokens": args.max_tokens,
                "repetitionPenalty": 1.0,
                "n": args.samples,
            },
            "batchSize": args.batch_size,
            "quality": {"minNaturalStopRate": 0},
        },
    }


def draft_name(spec: str) -> str:
    """`4` -> draft-4, `4@8192` -> draft-4-v8192, `eagle3@8192` -> draft-eagle3-v8192."""
    kind, _, vocabulary = spec.partition("@")
    return f"draft-{kind}" + (f"-v{vocabulary}" if vocabulary else "")


def draft_config(target: str, teacher: Path, out: Path, spec: str, args: argparse.Namespace) -> dict[str, Any]:
    """A draft spec: N (the target's first N layers) or `eagle3`, with `@V` for a V-token draft vocabulary."""
    kind, _, vocabulary = spec.partition("@")
    if kind == "eagle3":
        draft: dict[str, Any] = {"architecture": "eagle3", "objective": "distill", "unroll": args.unroll}
    else:
        draft = {"initFrom": "target", "numLayers": int(kind), "objective": "distill"}
    if vocabulary:
        draft["vocabulary"] = int(vocabulary)
    return {
        "apiVersion": API,
        "kind": "TrainingRun",
        "metadata": {"name": draft_name(spec)},
        "spec": {
            "method": "causal-lm",
            "baseModel": {"uri": target},
            "draft": draft,
            "dataset": {"uri": str(teacher)},
            "evaluation": {"uri": "builtin://eval"},
            "optimization": {
                "outerLr": args.eagle_lr if kind == "eagle3" else args.lr,
                "epochs": args.epochs,
                "batchSize": 16,
                "maxSeqLength": args.max_seq,
                "evalSteps": 10_000,
                "checkpointSteps": 10_000,
                "earlyStoppingPatience": 0,
            },
            "output": {"uri": str(out), "merge": False},
        },
    }


def run_stage(command: str, config: dict[str, Any], work: Path, device: str) -> dict[str, Any]:
    """`metaspec <command> --config` in a subprocess; its termination summary and wall time."""
    name = config["metadata"]["name"]
    path, summary = work / f"{name}.json", work / f"{name}.summary.json"
    path.write_text(json.dumps(config))
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "metaspec.cli", command, "--config", str(path), "--device", device]
    if command == "generate":
        cmd += ["--work-dir", str(work / "generate"), "--no-progress"]
    subprocess.run(cmd, check=True, env={**os.environ, "METASPEC_TERMINATION_MESSAGE_PATH": str(summary)})
    return {"stage": name, "seconds": round(time.perf_counter() - start, 1), **json.loads(summary.read_text())}


def reusable(config: dict[str, Any], out: Path, work: Path) -> bool:
    """Whether a stage finished earlier in `work` with this same config (a re-run reuses it); a
    finished stage with another config (other `--inputs`, say) asks for a fresh `--work`."""
    if not (out / "_manifest.json").exists():
        return False
    saved = work / f"{config['metadata']['name']}.json"
    if not saved.exists() or json.loads(saved.read_text()) != config:
        sys.exit(f"{out} was made with another config than {saved} would now hold: use a fresh --work")
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--target", help="target model directory (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument(
        "--layers",
        nargs="*",
        default=["4"],
        help="drafts: N (the target's first N layers) or eagle3 (feature-level), each with @V for a V-token "
        "draft vocabulary (e.g. 4 4@8192 eagle3 eagle3@8192); bare --layers: the teacher outputs alone",
    )
    parser.add_argument("--work", type=Path, default=Path("/tmp/metaspec-draft-bench"))
    parser.add_argument(
        "--inputs", default="builtin://distill", help="the teacher's inputs: a dataset URI (default: builtin://distill)"
    )
    parser.add_argument("--examples", type=int, default=None, help="the first N of --inputs (default: all)")
    parser.add_argument("--max-tokens", type=int, default=256, help="teacher output length limit")
    parser.add_argument("--batch-size", type=int, default=64, help="teacher generation batch")
    parser.add_argument("--temperature", type=float, default=0.0, help="teacher sampling temperature (0: greedy)")
    parser.add_argument(
        "--samples", type=int, default=1, help="teacher outputs per input (`sampling.n`; needs --temperature > 0)"
    )
    parser.add_argument("--tag", help="result files end in -TAG (runs side by side)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-4, help="draft learning rate (full fine-tuning)")
    parser.add_argument("--eagle-lr", type=float, default=1e-3, help="learning rate of eagle3 drafts")
    parser.add_argument("--unroll", type=int, default=3, help="eagle3 drafts: training-time-test steps")
    parser.add_argument("--max-seq", type=int, default=512, help="training sequence length")
    parser.add_argument(
        "--serve",
        nargs="*",
        help="drafts (as in --layers) to benchmark serving with (default: all; bare --serve: none)",
    )
    parser.add_argument("--prompts", type=int, default=16, help="held-out prompts served per draft")
    parser.add_argument("--serve-tokens", type=int, default=128, help="max tokens per served prompt")
    parser.add_argument("--smoke", action="store_true", help="CPU check of the plumbing: eager, 2 prompts")
    args = parser.parse_args(argv)
    target = args.target or str(bundled_model_dir())
    suffix = f"-{args.tag}" if args.tag else ""
    args.work.mkdir(parents=True, exist_ok=True)
    teacher = args.work / "teacher"
    stages = []
    if not reusable(config := teacher_config(target, teacher, args), teacher, args.work):
        stages.append(run_stage("generate", config, args.work, args.device))
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    for spec in args.layers:
        out = args.work / draft_name(spec)
        if not reusable(config := draft_config(target, teacher, out, spec, args), out, args.work):
            stages.append(run_stage("train", config, args.work, args.device))
    if stages:  # before serving, which a time limit may cut short
        (RESULTS / f"draft-{args.device}-training{suffix}.json").write_text(
            json.dumps({"stages": stages}, indent=1) + "\n"
        )
    for stage in stages:
        print(json.dumps(stage))
    for spec in args.layers if args.serve is None else args.serve:
        out = args.work / draft_name(spec)
        serve = [sys.executable, str(Path(__file__).parent / "server.py"), "--device", args.device, "--dtype", dtype]
        serve += [
            "--target",
            target,
            "--draft",
            str(out / "model"),
            "--prompts",
            str(2 if args.smoke else args.prompts),
        ]
        serve += ["--max-tokens", str(16 if args.smoke else args.serve_tokens)]
        serve += [] if args.smoke or args.device != "cuda" else ["--compile"]
        label = f"{spec}layers" if spec.isdigit() else draft_name(spec).removeprefix("draft-")
        serve += ["--out", str(RESULTS / f"draft-{args.device}-{label}{suffix}.json")]
        subprocess.run(serve, check=False)  # exits 1 on a bf16 mismatch; the JSON records it
    return 0


if __name__ == "__main__":
    sys.exit(main())

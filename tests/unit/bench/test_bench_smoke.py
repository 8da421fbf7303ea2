"""The method benchmarks (`bench/method.py`, `teacher.py`, `routing.py`), prompt lookup's settings
(`bench/lookup.py`), serving under load (`bench/serving_load.py`, its lookup and serial systems), a batched step's
time (`bench/batch_step.py`, eager and padded), a verify pass's time by width (`bench/verify_width.py`), padded steps with a compiled body
(`bench/step_compile.py`), where a batch-1 round's time goes (`bench/round_profile.py`) and the trainer's scaling (`bench/trainer.py --nproc`) end to end on tiny
random Llamas.

They check that every arm and configuration runs through the real trainer, generator and engine code
and that the figures the docs quote are computed from what ran (budgets, shares, exactness); the
figures themselves come from the scripts' real runs, recorded in bench/results/ and docs/method.md.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from metaspec.artifacts import is_complete

BENCH = Path(__file__).resolve().parents[3] / "bench"


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_method_arms_share_a_token_budget_and_save_the_merged_model(tiny_llama: Path, tmp_path: Path) -> None:
    out, merged = tmp_path / "method.json", tmp_path / "merged"
    arms = "sft,anil,maml@0.1,anil-hard,anil-tokens"
    argv = ["--smoke", "--model", str(tiny_llama), "--arms", arms, "--out", str(out)]
    argv += ["--save-merged", str(merged)]
    assert script("method").main(argv) == 0

    result = json.loads(out.read_text())
    rows = {row["name"]: row for row in result["arms"]}
    assert list(rows) == arms.split(",")
    budget = result["budget_tokens"]
    for row in rows.values():
        assert row["tokens"] > 0 and row["nonfinite_steps"] == 0
        assert all(math.isfinite(v) for v in row["perplexity"].values()), row
    assert rows["sft"]["tokens"] == rows["anil"]["tokens"] == rows["maml@0.1"]["tokens"]  # the same task stream
    assert rows["anil-hard"]["steps"] < rows["anil"]["steps"]  # longer examples: fewer steps for the budget
    hard = rows["anil-hard"]
    assert abs(hard["tokens"] - budget) < hard["tokens"] / hard["steps"]  # within one step of the budget
    assert rows["anil-hard"]["hard_loss_share"] == 1.0
    assert rows["anil-tokens"]["hard_loss_share"] < rows["anil"]["hard_loss_share"]
    assert rows["anil"]["perplexity"] != rows["sft"]["perplexity"] != rows["maml@0.1"]["perplexity"]
    assert set(result["base"]["perplexity"]) == {"overall", "easy", "hard"}
    assert is_complete(merged) and (merged / "config.json").is_file()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_trainer_scaling_runs_two_processes(tiny_llama: Path, tmp_path: Path, strategy: str) -> None:
    """`bench/trainer.py --nproc 2 [--strategy fsdp]`: one process, then two under torch.distributed.run
    (gloo), each variant's efficiency computed from both."""
    out = tmp_path / "trainer.json"
    argv = [sys.executable, str(BENCH / "trainer.py"), "--model", str(tiny_llama), "--variants", "sft,anil"]
    argv += ["--nproc", "2", "--steps", "1", "--seq", "16", "--support", "1", "--query", "1", "--lora-r", "4"]
    argv += ["--strategy", strategy]
    result = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    body = json.loads(out.read_text())
    assert body["tokens_per_step"] == 2 * 2 * 16 and body["settings"]["nproc"] == 2
    assert body["settings"]["strategy"] == strategy
    for row in body["results"]:
        assert row["single_tokens_per_second"] > 0 and row["scaling_efficiency"] > 0, row
    assert [row["variant"] for row in body["results"]] == ["sft", "anil"]


def test_teacher_compares_greedy_with_the_seed_configuration(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "teacher.json"
    assert script("teacher").main(["--smoke", "--model", str(tiny_llama), "--out", str(out)]) == 0

    configs = json.loads(out.read_text())["models"][0]["configurations"]
    assert list(configs) == ["greedy", "greedy@12", "seed", "seed-no-penalty"]
    assert (
        configs["seed"]["sampling"].items() >= {"temperature": 0.3, "repetition_penalty": 1.2, "max_tokens": 12}.items()
    )
    # a random model never emits its end-of-turn token within a few tokens: every output hits its limit
    assert configs["greedy"]["maxOutputTokens"] == 24 and configs["greedy@12"]["maxOutputTokens"] == 12
    assert configs["greedy@12"]["naturalStopRate"] <= configs["greedy"]["naturalStopRate"]


def test_routing_measures_every_policy_exactly(tiny_llama: Path, tiny_draft_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "routing.json"
    argv = ["--smoke", "--target", str(tiny_llama), "--draft", str(tiny_draft_llama), "--thresholds", "0.5,0.9"]
    argv += ["--prompts", "3", "--out", str(out)]
    assert script("routing").main(argv) == 0

    result = json.loads(out.read_text())
    rows = {row["policy"]: row for row in result["rows"]}
    assert len(rows) == 6 and rows["never"]["speculation_rate"] == 0 and rows["always"]["speculation_rate"] == 1
    assert all(row["mismatches_vs_never"] == 0 for row in rows.values())  # greedy speculation is exact (fp32)
    for request in result["requests"]:
        assert request["first_token_confidence"] == pytest.approx(request["first_token_confidence_recomputed"])
    assert result["confidence"]["first_token_confidence"]["correlation_with_acceptance"]["n"] == 3


def test_lookup_settings_decode_exactly(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "lookup.json"
    argv = ["--target", str(tiny_llama), "--max-tokens", "8", "--min-match", "1", "--history", "0", "64"]
    argv += ["-k", "2", "--rounds", "1", "--threads", "1", "--out", str(out)]
    assert script("lookup").main(argv) == 0  # non-zero when any setting's greedy output differs from `never`

    rows = {row["setting"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"never", "min1-history0-k2", "min1-history64-k2"}
    assert rows["never"]["tokens_per_pass"] == 1 and rows["never"]["speedup_vs_never_median"] == 1
    assert all(row["mismatches"] == 0 and row["tokens_per_pass"] >= 1 for row in rows.values())


def test_serving_load_runs_batch_1_and_lookup_systems_beside_the_engine(
    tiny_llama: Path, tiny_draft_llama: Path, tmp_path: Path
):
    out = tmp_path / "load.json"
    argv = ["--target", str(tiny_llama), "--draft", str(tiny_draft_llama), "--clients", "2", "--seconds", "1"]
    argv += [
        "--systems",
        "metaspec",
        "batch-1",
        "lookup",
        "lookup-draft",
        "--policies",
        "never",
        "adaptive",
        "per-token",
    ]
    argv += ["--lookup", "1", "3"]
    argv += ["--mix", "4", "--max-tokens", "6", "--threads", "1", "--warm-up", "0.5", "--out", str(out)]
    assert script("serving_load").main(argv) == 0

    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    # per-token reads a draft model's confidence: no lookup system for it
    assert set(rows) == {"batch-1"} | {f"metaspec:{p}" for p in ("never", "adaptive", "per-token")} | {
        f"{system}:{p}" for system in ("lookup", "lookup-draft") for p in ("never", "adaptive")
    }
    assert all(row["tokens_per_second"] > 0 for row in rows.values())


def test_serving_load_runs_each_engine_next_to_its_serial_twin(
    tiny_llama: Path, tiny_draft_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--serial`: each metaspec system and batch-1 beside the same engine with `BatchDecoder.overlap` off
    (here, on the CPU, off in both); `--switch-interval`: the interval the engines' decode thread sets
    where steps overlap (`engine.SWITCH_INTERVAL`); `--cache-share`: what the engines' caches take up front on
    a GPU (`engine.CACHE_SHARE`)."""
    from metaspec.server.engine import engine as engine_module

    monkeypatch.setattr(engine_module, "SWITCH_INTERVAL", engine_module.SWITCH_INTERVAL)  # restored after
    monkeypatch.setattr(engine_module, "CACHE_SHARE", engine_module.CACHE_SHARE)
    out = tmp_path / "load.json"
    argv = ["--target", str(tiny_llama), "--draft", str(tiny_draft_llama), "--clients", "2", "--seconds", "0.5"]
    argv += ["--systems", "metaspec", "batch-1", "--policies", "never", "--serial", "--switch-interval", "0.004"]
    argv += ["--cache-share", "0.25"]
    argv += ["--mix", "4", "--max-tokens", "4", "--threads", "1", "--warm-up", "0.2", "--out", str(out)]
    assert script("serving_load").main(argv) == 0
    assert engine_module.SWITCH_INTERVAL == 0.004 and engine_module.CACHE_SHARE == 0.25
    rows = {row["system"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"metaspec:never", "metaspec-serial:never", "batch-1", "batch-1-serial"}
    assert all(row["tokens_per_second"] > 0 for row in rows.values())


def test_step_compile_decodes_the_same_tokens_with_the_body_compiled(tmp_path: Path) -> None:
    """On the CPU the padded steps run eagerly (no graphs), and `aot_eager` compiles without generating
    code: the same float32 arithmetic, so both modes decode the same greedy tokens."""
    out = tmp_path / "compile.json"
    assert script("step_compile").main(["--smoke", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["graphs", "body"]
    assert all(r["greedy_agreement"] == 1.0 and r["replay_gpu_ms"] is None and not r["captured"] for r in rows)
    assert rows[0]["shapes"] == rows[1]["shapes"] == [[2, 1, 64], [2, 16, 64]]  # the decode step, the prefill
    assert rows[0]["compilations"] == 0 and rows[1]["compilations"] == 2  # a graph for each


def test_batch_step_times_eager_and_padded_steps(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    argv = ["--batch", "3", "--modes", "greedy", "sampled", "--tokens", "4", "--vocab", "64", "--layers", "1"]
    argv += ["--steps", "eager", "padded", "--out", str(out)]
    assert script("batch_step").main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["steps_kind"], r["mode"]) for r in rows] == [
        ("eager", "greedy"),
        ("padded", "greedy"),
        ("eager", "sampled"),
        ("padded", "sampled"),
    ]
    assert all(r["steps"] == 3 and r["forward_s"] > 0 for r in rows)  # the prefill's token, then 3 steps


def test_verify_width_times_every_pass_at_every_wider_width(tiny_llama: Path, tmp_path: Path) -> None:
    out = tmp_path / "width.json"
    argv = ["--target", str(tiny_llama), "--context", "8", "--widest", "3", "--repeat", "2", "--out", str(out)]
    assert script("verify_width").main(argv) == 0
    result = json.loads(out.read_text())
    for variant in ("stock", "packed"):  # as transformers loads the model, and as the server serves it
        relative = result[variant]["relative"]
        assert list(relative) == ["1@1", "1@2", "1@3", "2@2", "2@3", "3@3"]
        assert relative["1@1"] == 1.0 and all(v > 0 for v in relative.values())
        assert list(result[variant]["head_ms"]) == [str(m) for m in range(1, 9)]


def test_server_samples_with_lookup_beside_transformers(tiny_llama: Path, tiny_draft_llama: Path, tmp_path: Path):
    """`bench/server.py --temperature`: every method samples; mismatches are not counted, speeds are."""
    out = tmp_path / "server.json"
    argv = ["--target", str(tiny_llama), "--draft", str(tiny_draft_llama), "--prompts", "2", "--max-tokens", "6"]
    argv += ["--policies", "never", "always", "--lookup", "1", "3", "-k", "2", "--temperature", "0.8"]
    assert script("server").main([*argv, "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"ours-never", "ours-always", "ours-lookup-always", "hf-generate", "hf-prompt-lookup"} <= set(rows)
    assert all(r["mismatches"] is None and r["tokens"] > 0 for r in rows.values())
    assert rows["ours-lookup-always"]["speculation_rate"] == 1.0


def eagle3_draft(target_folder: Path, folder: Path) -> Path:
    """An untrained EAGLE-3 draft of the model in `target_folder`, saved as an artifact in `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from metaspec.artifacts import upload_dir
    from metaspec.drafts import Eagle3Draft, save_eagle3

    target = AutoModelForCausalLM.from_pretrained(target_folder)
    tokenizer = AutoTokenizer.from_pretrained(target_folder)
    save_eagle3(Eagle3Draft.init_from_target(target, None), folder, torch.float32, tokenizer)
    upload_dir(folder, folder)
    return folder


def test_server_times_serial_twins_of_the_batch_decoders_paths(tiny_llama: Path, tmp_path: Path) -> None:
    """`bench/server.py --serial` with an EAGLE-3 draft (served by the batch decoder at batch 1): target-only
    steps read one at a time and rounds whose proposals the host reads first, next to the default rows,
    all decoding the target's greedy output (the exit code counts mismatches)."""
    out, folder = tmp_path / "server.json", eagle3_draft(tiny_llama, tmp_path / "eagle")
    argv = ["--target", str(tiny_llama), "--draft", str(folder), "--prompts", "2", "--max-tokens", "6", "-k", "2"]
    assert script("server").main([*argv, "--policies", "never", "always", "--serial", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert {"ours-never", "ours-never-serial", "ours-always", "ours-always-read-first"} <= set(rows)
    assert rows["ours-always-read-first"]["speculation_rate"] == rows["ours-always"]["speculation_rate"] > 0


def test_round_profile_times_the_parts_of_eagle3_rounds(tiny_llama: Path, tmp_path: Path) -> None:
    """`bench/round_profile.py`: the parts are timed within rounds only, and the draft's k steps hold its steps."""
    folder, out = eagle3_draft(tiny_llama, tmp_path / "eagle"), tmp_path / "profile.json"
    argv = ["--target", str(tiny_llama), "--draft", str(folder), "--prompts", "2", "--max-tokens", "8", "-k", "3"]
    assert script("round_profile").main([*argv, "--out", str(out)]) == 0
    rows = {r["part"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == [
        "round",
        "target: verify pass",
        "draft: k steps",
        "draft: one step",
        "draft: takes the target's features",
    ]
    # a round whose sequence has room for its last token only drafts nothing
    assert rows["round"]["calls"] == rows["target: verify pass"]["calls"] >= rows["draft: k steps"]["calls"] > 0
    assert rows["draft: one step"]["calls"] >= rows["draft: k steps"]["calls"]
    assert rows["round"]["share_of_wall"] >= rows["target: verify pass"]["share_of_wall"] > 0

"""The built-in dataset: sizes, determinism, held-out evaluation inputs, answer style, correct content."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from metaspec import builtin
from metaspec.builtin import _base, coding, science
from metaspec.datasets import read_records
from metaspec.records import DOMAINS, InvalidData
from metaspec.trainer.data import find_contamination, normalize_input


def digest(split: str) -> str:
    return hashlib.sha256(
        "".join(json.dumps(r.model_dump(), sort_keys=True) for r in builtin.records(split)).encode()
    ).hexdigest()


@pytest.mark.parametrize("split", ["train", "eval", "prompts"])
def test_sizes_domains_and_hard_share(split: str) -> None:
    records = builtin.records(split)
    easy, hard = builtin.SIZES[split]
    counts = Counter((r.domain, r.difficulty) for r in records)
    assert counts == {(d, k): n for d in DOMAINS for k, n in (("easy", easy), ("hard", hard))}
    assert 0.2 <= sum(r.difficulty == "hard" for r in records) / len(records) <= 0.25
    assert {"train": 600, "eval": 96, "prompts": 200}[split] == len(records)


def test_distill_takes_what_the_generators_make_up_to_its_size() -> None:
    """`distill` is bounded by SIZES, not exact: coding/hard has only a few dozen distinct inputs."""
    records = builtin.records("distill")
    easy, hard = builtin.SIZES["distill"]
    counts = Counter((r.domain, r.difficulty) for r in records)
    assert set(counts) == {(d, k) for d in DOMAINS for k in ("easy", "hard")}
    for (domain, difficulty), n in counts.items():
        assert 30 <= n <= {"easy": easy, "hard": hard}[difficulty], (domain, difficulty, n)
    assert sum(n == easy for (_, k), n in counts.items() if k == "easy") >= 6
    assert len(records) >= 2500
    assert 0.1 <= sum(r.difficulty == "hard" for r in records) / len(records) <= 0.25


def test_distill_has_no_outputs_and_never_repeats_a_prompt_or_evaluation_input() -> None:
    """Serving benchmarks on builtin://prompts and builtin://eval stay held out from a distilled draft."""
    distill = builtin.records("distill")
    assert all(r.output is None for r in distill)
    assert find_contamination(distill, builtin.records("prompts") + builtin.records("eval")) == []


@pytest.mark.parametrize("split", builtin.SPLITS)
def test_every_prefix_mixes_domains_and_difficulties(split: str) -> None:
    """`maxExamples: N` takes the first N records: they must be a small version of the whole split."""
    records = builtin.records(split)
    for n in (8, 16, 40, 64):
        head = records[:n]
        assert len({r.domain for r in head}) == len(DOMAINS)
        if n >= 40:
            assert 0.1 <= sum(r.difficulty == "hard" for r in head) / n <= 0.35


@pytest.mark.parametrize("split", builtin.SPLITS)
def test_ids_are_unique_and_stable_looking(split: str) -> None:
    records = builtin.records(split)
    prefix = builtin.INPUTS_ONLY.get(split, "")
    assert len({r.id for r in records}) == len(records)
    for r in records:
        assert re.fullmatch(rf"{prefix}{r.domain}-{r.difficulty}-\d{{4}}", r.id), r.id
    assert len({normalize_input(r.input) for r in records}) == len(records), "inputs repeat within a split"


@pytest.mark.parametrize("split", ["train", "distill"])
def test_same_records_in_a_fresh_interpreter_with_another_hash_seed(split: str) -> None:
    code = (
        "import hashlib, json; from metaspec import builtin; "
        "print(hashlib.sha256(''.join(json.dumps(r.model_dump(), sort_keys=True) "
        f"for r in builtin.records({split!r})).encode()).hexdigest())"
    )
    for seed in ("0", "12345"):
        out = subprocess.run(
            [sys.executable, "-c", code], env={"PYTHONHASHSEED": seed}, capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == digest(split)


def test_records_are_fresh_copies() -> None:
    first = builtin.records("eval")
    first[0].output = "changed"
    assert builtin.records("eval")[0].output != "changed"


def test_evaluation_inputs_never_appear_in_training_or_prompts() -> None:
    evaluation = builtin.records("eval")
    assert find_contamination(builtin.records("train"), evaluation) == []
    assert find_contamination(builtin.records("prompts"), evaluation) == []


def test_evaluation_uses_held_out_parameter_values() -> None:
    """People, cities and facts of evaluation inputs are ones that training inputs never mention."""
    training = [r.input for split in ("train", "prompts", "distill") for r in builtin.records(split)]
    evaluation = " ".join(r.input for r in builtin.records("eval"))
    for pool in (_base.NAMES, _base.CITIES):
        held = _base.sides(pool)[1]
        assert any(re.search(rf"\b{value}\b", evaluation) for value in held)
        for value in held:
            assert not any(re.search(rf"\b{value}\b", text) for text in training), value
    facts = [q for _, q, _, _ in science.SCIENCE_FACTS if q in evaluation]
    assert facts and not any(q in text for q in facts for text in training)


def test_answer_style_is_aligned() -> None:
    for split in ("train", "eval"):
        for r in builtin.records(split):
            first, second, *rest = r.output.split("\n")
            assert first.startswith("Answer: ") and len(first) > len("Answer: "), r.id
            if r.difficulty == "easy":
                assert second.startswith("Why: ") and not rest, r.id
            else:
                labels = [line for line in (second, *rest) if line in ("Steps:", "Key points:")]
                assert len(labels) == 1, r.id
                assert re.search(r"^1\. .+\n2\. .+\n3\. ", r.output, re.M), r.id


def test_prompts_have_no_outputs_and_come_from_training_pools() -> None:
    prompts = builtin.records("prompts")
    assert all(r.output is None for r in prompts)
    train_ids = {r.id for r in builtin.records("train")}
    assert not train_ids & {r.id for r in prompts}


def test_output_lengths_suit_cpu_training(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    lengths: dict[str, list[int]] = {"easy": [], "hard": []}
    for r in builtin.records("train"):
        lengths[r.difficulty].append(len(tokenizer(r.output, add_special_tokens=False)["input_ids"]))
    easy, hard = lengths["easy"], lengths["hard"]
    assert 15 <= sum(easy) / len(easy) <= 60 and min(easy) >= 10 and max(easy) <= 90
    assert 80 <= sum(hard) / len(hard) <= 250 and min(hard) >= 70 and max(hard) <= 260


@pytest.mark.parametrize("function", coding.FUNCTIONS, ids=lambda f: f[0])
def test_coding_answers_are_correct_code(function: tuple) -> None:
    _, _, _, code, _, checks = function
    namespace: dict = {}
    exec(code, namespace)
    for call, expected in checks:
        assert eval(call, namespace) == expected, call


def test_arithmetic_in_answers_is_right() -> None:
    days = _base.WEEKDAYS
    checks = {
        r"(?:What is|Compute|Multiply) (\d+) (?:×|times|by) (\d+)[.?]": lambda m, a: a == f"{int(m[1]) * int(m[2]):,}",
        r"(?:What is|Find|How much is) (\d+)(?:%| percent) of (\d+)[.?]": lambda m, a: (
            int(a) * 100 == int(m[1]) * int(m[2])
        ),
        r".*?(\d+)x \+ (\d+) = (-?\d+).*": lambda m, a: (
            int(m[1]) * int(a.removeprefix("x = ")) + int(m[2]) == int(m[3])
        ),
        r".*today is (\w+)[,.] \w+ .*?(\d+) days.*": lambda m, a: a == days[(days.index(m[1]) + int(m[2])) % 7],
        r".* with (\d+) people, everyone shakes hands.*": lambda m, a: (
            a == f"{int(m[1]) * (int(m[1]) - 1) // 2} handshakes"
        ),
    }
    used: Counter[str] = Counter()
    for r in builtin.records("train") + builtin.records("eval"):
        answer = r.output.split("\n")[0].removeprefix("Answer: ")
        for pattern, check in checks.items():
            if m := re.fullmatch(pattern, r.input, re.S):
                assert check(m, answer), (r.id, r.input, answer)
                used[pattern] += 1
    assert set(used) == set(checks) and sum(used.values()) >= 40


def test_tool_calls_are_json_naming_an_offered_tool() -> None:
    for r in builtin.records("train"):
        if r.domain != "tool_use":
            continue
        offered = set(re.findall(r"^- (\w+)\(", r.input, re.M))
        calls = (
            [r.output.split("\n")[0].removeprefix("Answer: ")]
            if r.difficulty == "easy"
            else re.findall(r"^Call \d: (.+)$", r.output, re.M)
        )
        assert calls, r.id
        for call in calls:
            assert json.loads(call)["name"] in offered, r.id


@pytest.mark.parametrize("split", builtin.SPLITS)
def test_read_as_a_dataset_uri(split: str) -> None:
    records, report = read_records(f"builtin://{split}", require_output=split not in builtin.INPUTS_ONLY)
    assert report.valid == len(records) == len(builtin.records(split))


@pytest.mark.parametrize("split", builtin.INPUTS_ONLY)
def test_input_only_splits_are_refused_for_training(split: str) -> None:
    with pytest.raises(InvalidData, match=rf"builtin://{split}: the built-in {split} split holds inputs without"):
        read_records(f"builtin://{split}")


def test_cli_writes_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.jsonl"
    assert builtin.main(["--split", "eval", "--out", str(out)]) == 0
    records, _ = read_records(str(out))
    assert [r.model_dump() for r in records] == [r.model_dump() for r in builtin.records("eval")]
    assert builtin.main(["--split", "prompts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 200 and "output" not in json.loads(lines[0])

"""The trainer's data pipeline: formatting and masking, truncation, token statistics, tasks, batches."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from metaspec import builtin
from metaspec.prompts import chat_prompt_ids, record_prompt_ids
from metaspec.records import InvalidData, Record
from metaspec.trainer.data import (
    IGNORE_INDEX,
    Example,
    TaskSampler,
    batches,
    collate,
    end_of_turn_id,
    find_contamination,
    format_example,
    load_training_data,
    parse_mix,
    token_stats,
)


@pytest.fixture(scope="module")
def tokenizer(smollm2: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2)


def record(i: int = 1, **overrides: Any) -> Record:
    body = {"id": f"r{i}", "input": "What is 2 + 2?", "output": "Answer: 4\nWhy: 2 + 2 = 4.", "domain": "math"}
    return Record.model_validate({"difficulty": "easy", **body, **overrides})


# --- formatting ---------------------------------------------------------------------------------


def test_end_of_turn_comes_from_the_template(tokenizer: Any) -> None:
    assert end_of_turn_id(tokenizer) == tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_without_a_template_targets_end_with_eos(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    class Plain:
        chat_template = None
        eos_token_id = 7
        unk_token_id = 0

        def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
            return {"input_ids": [ord(c) % 50 + 10 for c in text]}

        def convert_tokens_to_ids(self, token: str) -> int:
            return 0

    example = format_example(Plain(), record(), 512)
    assert example.input_ids[-1] == 7 and example.labels[-1] == 7


def test_prompt_is_masked_and_target_is_output_plus_end_of_turn(tokenizer: Any) -> None:
    r = builtin.records("train")[80]
    example = format_example(tokenizer, r, 1024)
    prompt = chat_prompt_ids(tokenizer, r.input)
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    target = [t for t in example.labels if t != IGNORE_INDEX]
    assert target == example.input_ids[len(prompt) :]
    assert tokenizer.decode(target) == r.output + "<|im_end|>"
    assert not example.truncated and example.n_target_tokens == len(target)


def test_long_target_loses_its_tail_and_keeps_the_prompt(tokenizer: Any) -> None:
    r = record(output="Answer: " + "very long " * 200)
    prompt = chat_prompt_ids(tokenizer, r.input)
    example = format_example(tokenizer, r, len(prompt) + 10)
    assert example.truncated and not example.prompt_truncated
    assert example.n_tokens == len(prompt) + 10 and example.input_ids[: len(prompt)] == prompt
    assert example.n_target_tokens == 10 and example.labels[-1] != end_of_turn_id(tokenizer)


def test_prompt_longer_than_the_limit_loses_its_beginning(tokenizer: Any, caplog: pytest.LogCaptureFixture) -> None:
    r = record(input="word " * 400, output="Answer: short\nWhy: it is.")
    target_len = len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) + 1
    with caplog.at_level(logging.WARNING):
        example = format_example(tokenizer, r, 64)
    assert example.truncated and example.prompt_truncated and example.n_tokens == 64
    assert example.n_target_tokens == min(target_len, 32)
    assert (
        example.input_ids[: 64 - example.n_target_tokens]
        == chat_prompt_ids(tokenizer, r.input)[-(64 - example.n_target_tokens) :]
    )
    assert "r1" in caplog.text and "prompt alone exceeds" in caplog.text


def test_record_without_output_cannot_be_a_training_example(tokenizer: Any) -> None:
    with pytest.raises(InvalidData, match="field `output`"):
        format_example(tokenizer, record(output=None), 128)


CONVERSATION = [
    {"role": "system", "content": "You answer arithmetic questions briefly."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4"},
    {"role": "user", "content": "And times 3?"},
    {"role": "assistant", "content": "It is 12, since 4 × 3 = 12."},
]


def chatml_labels(tokenizer: Any, input_ids: list[int], skipped_turns: set[int]) -> list[int]:
    """The reference mask, read off the ChatML tokens alone: inside an assistant turn (after its
    `<|im_start|>assistant\n` header, up to and including its `<|im_end|>`) a token is its own label,
    anywhere else it is masked; assistant turns numbered in `skipped_turns` are masked too."""
    start, end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    labels, role, header, assistant_turns = [], None, None, -1
    for token in input_ids:
        trained = False
        if token == start:
            role, header = None, ""
        elif header is not None:
            header += tokenizer.decode([token])
            if header.endswith("\n"):
                role, header = header.strip(), None
                assistant_turns += role == "assistant"
        else:
            trained = role == "assistant" and assistant_turns not in skipped_turns
            role = None if token == end else role
        labels.append(token if trained else IGNORE_INDEX)
    return labels


def test_chat_loss_is_on_every_assistant_turn_and_nothing_else(tokenizer: Any) -> None:
    example = format_example(tokenizer, Record.model_validate({"messages": CONVERSATION}), 1024)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    full = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert example.input_ids == full[: example.n_tokens] and tokenizer.decode(full[example.n_tokens :]) == "\n"
    assert example.labels == chatml_labels(tokenizer, example.input_ids, skipped_turns=set())
    trained = tokenizer.decode([t for t in example.labels if t != IGNORE_INDEX])
    assert trained == "4<|im_end|>It is 12, since 4 × 3 = 12.<|im_end|>"
    assert example.domain == "all" and example.difficulty is None

    weighted = [*CONVERSATION[:2], {**CONVERSATION[2], "weight": 0}, *CONVERSATION[3:]]
    skipped = format_example(tokenizer, Record.model_validate({"messages": weighted}), 1024)
    assert skipped.input_ids == example.input_ids
    assert skipped.labels == chatml_labels(tokenizer, example.input_ids, skipped_turns={0})


def test_one_turn_chat_and_teacher_output_records_format_like_input_output_ones(tokenizer: Any) -> None:
    r = record()
    ours = format_example(tokenizer, r, 256)
    turns = [{"role": "user", "content": r.input}, {"role": "assistant", "content": r.output}]
    chat = format_example(tokenizer, Record.model_validate({"id": "c", "messages": turns}), 256)
    teacher = Record.model_validate({"id": "t", "messages": turns[:1], "output": r.output})
    assert format_example(tokenizer, teacher, 256).input_ids == ours.input_ids
    assert (
        record_prompt_ids(tokenizer, teacher) == record_prompt_ids(tokenizer, r) == chat_prompt_ids(tokenizer, r.input)
    )
    assert chat.input_ids == ours.input_ids and chat.labels == ours.labels


def test_anil_tasks_without_domains_are_one_group_per_file(tokenizer: Any, tmp_path: Path) -> None:
    from metaspec.artifacts import upload_dir
    from metaspec.datasets import read_records

    for name in ("arithmetic", "geography"):
        rows = [
            json.dumps(
                {"messages": [{"role": "user", "content": f"{name} {i}?"}, {"role": "assistant", "content": f"{i}"}]}
            )
            for i in range(6)
        ]
        write_jsonl(tmp_path / f"{name}.jsonl", rows)
    upload_dir(tmp_path, tmp_path)
    records, _ = read_records(str(tmp_path))
    sampler = TaskSampler([format_example(tokenizer, r, 64) for r in records], support_size=2, query_size=1, seed=0)
    tasks = sampler.plan(0)
    assert sorted(t.domain for t in tasks) == ["file:arithmetic.jsonl"] * 2 + ["file:geography.jsonl"] * 2
    for task in tasks:
        assert {ex.domain for ex in task.support + task.query} == {task.domain} and not task.fills


# --- token statistics ---------------------------------------------------------------------------


def test_token_stats_match_the_tokenizer(tokenizer: Any) -> None:
    records = builtin.records("eval")
    examples = [format_example(tokenizer, r, 2048) for r in records]
    stats = token_stats(examples)
    expected: Counter[tuple[str, str]] = Counter()
    for r in records:
        expected[r.domain, r.difficulty] += len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) + 1
    for (domain, difficulty), tokens in expected.items():
        assert stats["by_domain"][domain][difficulty]["target_tokens"] == tokens
        assert stats["by_domain"][domain][difficulty]["examples"] == sum(
            1 for r in records if (r.domain, r.difficulty) == (domain, difficulty)
        )
    r = records[0]
    total = (
        len(chat_prompt_ids(tokenizer, r.input)) + len(tokenizer(r.output, add_special_tokens=False)["input_ids"]) + 1
    )
    assert token_stats(examples[:1])["total_tokens"] == total
    hard = sum(v for (_, k), v in expected.items() if k == "hard")
    assert stats["target_tokens"] == sum(expected.values())
    assert stats["hard_token_share"] == pytest.approx(hard / sum(expected.values()))
    assert stats["hard_token_share"] > 0.4, "3:1 easy:hard by examples is about half hard by tokens"
    assert stats["truncated"] == 0 and stats["examples"] == len(records)
    json.dumps(stats)


def test_contamination_is_found_despite_case_and_spacing() -> None:
    train = [record(1, input="What is  2 + 2?"), record(2, input="Name a colour.")]
    held_out = [record(9, input="what is 2 + 2")]
    assert find_contamination(train, held_out) == ["r1"]


# --- loading ------------------------------------------------------------------------------------


def write_jsonl(path: Path, rows: list[str]) -> str:
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_load_training_data_reports_counts_stats_and_contamination(tokenizer: Any, tmp_path: Path) -> None:
    eval_record = builtin.records("eval")[0]
    rows = [r.model_dump_json() for r in builtin.records("train")[:20]]
    rows += ['{"id": "bad"}', record(99, input=eval_record.input).model_dump_json()]
    uri = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(InvalidData, match=r"line 21: field `input`"):
        load_training_data(uri, tokenizer, 512)
    examples, report = load_training_data(uri, tokenizer, 512, skip_invalid=True, evaluation_uri="builtin://eval")
    assert len(examples) == 21 and report["valid"] == 21 and report["invalid"] == 1
    assert report["invalid_lines"][0].startswith("line 21: field `input`")
    assert report["contaminated_ids"] == ["r99"] and report["stats"]["examples"] == 21
    json.dumps(report)


def test_load_training_data_limits_examples_and_refuses_empty_data(tokenizer: Any, tmp_path: Path) -> None:
    examples, report = load_training_data("builtin://train", tokenizer, 256, max_examples=10)
    assert len(examples) == 10 and report["valid"] == 10
    uri = write_jsonl(tmp_path / "empty.jsonl", ['{"id": 1}'])
    with pytest.raises(InvalidData, match="no valid records"):
        load_training_data(uri, tokenizer, 256, skip_invalid=True)


# --- tasks --------------------------------------------------------------------------------------


def fake_examples(domains: dict[str, tuple[int, int]]) -> list[Example]:
    """Examples without a tokenizer: hard ones have four times the target tokens."""
    examples = []
    for domain, (easy, hard) in domains.items():
        for kind, count, length in (("easy", easy, 10), ("hard", hard, 40)):
            for i in range(count):
                ids = list(range(5 + length))
                examples.append(Example(f"{domain}-{kind}-{i}", domain, kind, ids, [IGNORE_INDEX] * 5 + ids[5:]))
    return examples


DATA = {"math": (30, 10), "coding": (23, 9), "science": (12, 2)}


def test_tasks_are_one_domain_with_disjoint_mixed_sets() -> None:
    sampler = TaskSampler(fake_examples(DATA), support_size=4, query_size=4, seed=3)
    tasks = sampler.plan(0)
    assert len(tasks) == len(sampler) == 5 + 4 + 2
    for task in tasks:
        ids = [ex.id for ex in task.support + task.query]
        assert len(ids) == len(set(ids)) == 8
        assert {ex.domain for ex in task.support + task.query} == {task.domain}
        if not task.fills:
            for part in (task.support, task.query):
                assert Counter(ex.difficulty for ex in part) == {"easy": 3, "hard": 1}


def test_an_epoch_covers_every_example_once_apart_from_recorded_fills() -> None:
    examples = fake_examples(DATA)
    sampler = TaskSampler(examples, support_size=4, query_size=4, seed=3)
    tasks = sampler.plan(0)
    seen = Counter(ex.id for task in tasks for ex in task.support + task.query)
    assert set(seen) == {ex.id for ex in examples}, "every example, not only the hard ones"
    repeats = sum(n - 1 for n in seen.values())
    assert repeats == sum(task.fills.count("repeat") for task in tasks) == 11 * 8 - len(examples)
    summary = sampler.summary()
    assert summary["tasks"] == 11 and summary["fills"]["repeat"] == repeats
    science = [t for t in tasks if t.domain == "science"]
    assert sum(t.fills.count("hard->easy") for t in science) == 2, "4 hard slots, 2 hard examples"


def test_tasks_are_deterministic_under_the_seed_and_differ_by_epoch() -> None:
    def ids(seed: int, epoch: int) -> list[list[str]]:
        tasks = TaskSampler(fake_examples(DATA), 4, 4, seed=seed).plan(epoch)
        return [[ex.id for ex in t.support + t.query] for t in tasks]

    assert ids(1, 0) == ids(1, 0)
    assert ids(1, 0) != ids(2, 0)
    assert ids(1, 0) != ids(1, 1)


def test_resume_continues_with_exactly_the_same_next_task() -> None:
    def flat(tasks: list) -> list[list[str]]:
        return [[ex.id for ex in t.support + t.query] for t in tasks]

    reference = TaskSampler(fake_examples(DATA), 4, 4, seed=5)
    uninterrupted = [t for _ in range(3) for t in reference]
    assert len(uninterrupted) == 3 * len(reference)

    first = TaskSampler(fake_examples(DATA), 4, 4, seed=5)
    done = list(first)
    it = iter(first)
    done += [next(it) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))
    assert state["epoch"] == 1 and state["position"] == 4

    resumed = TaskSampler(fake_examples(DATA), 4, 4, seed=5)
    resumed.load_state_dict(state)
    rest = list(resumed) + list(resumed)
    assert flat(done + rest) == flat(uninterrupted)
    assert resumed.state_dict()["epoch"] == 3 and resumed.state_dict()["position"] == 0


def test_a_checkpoint_at_the_end_of_an_epoch_does_not_disturb_the_running_iterator() -> None:
    sampler = TaskSampler(fake_examples(DATA), 4, 4, seed=5)
    running = iter(sampler)
    for _ in range(len(sampler)):
        next(running)
    state = sampler.state_dict()  # taken while the iterator is suspended after the last task
    assert (state["epoch"], state["position"]) == (1, 0)
    assert next(running, None) is None
    resumed = TaskSampler(fake_examples(DATA), 4, 4, seed=5)
    resumed.load_state_dict(state)
    assert [t.support for t in sampler] == [t.support for t in resumed] == [t.support for t in sampler.plan(1)]


def test_state_from_other_data_or_settings_is_refused() -> None:
    state = TaskSampler(fake_examples(DATA), 4, 4, seed=5).state_dict()
    with pytest.raises(ValueError, match="other data or settings"):
        TaskSampler(fake_examples({"math": (30, 10)}), 4, 4, seed=5).load_state_dict(state)
    with pytest.raises(ValueError, match="other data or settings"):
        TaskSampler(fake_examples(DATA), 4, 4, seed=5, mix="1:1").load_state_dict(state)


def test_token_balance_gives_hard_tokens_the_mix_share_of_the_loss() -> None:
    sampler = TaskSampler(fake_examples(DATA), 4, 4, seed=0, balance="tokens")
    task = next(t for t in sampler.plan(0) if not t.fills)
    for part, weights in ((task.support, task.support_weights), (task.query, task.query_weights)):
        weighted = {
            k: sum(w * ex.n_target_tokens for ex, w in zip(part, weights, strict=True) if ex.difficulty == k)
            for k in ("easy", "hard")
        }
        assert weighted["hard"] / (weighted["easy"] + weighted["hard"]) == pytest.approx(0.25)
        assert weighted["easy"] + weighted["hard"] == pytest.approx(sum(ex.n_target_tokens for ex in part))
    plain = TaskSampler(fake_examples(DATA), 4, 4, seed=0).plan(0)[0]
    assert set(plain.support_weights) == {1.0}


def test_bad_sizes_and_small_domains_are_explained() -> None:
    with pytest.raises(ValueError, match=r"science \(5\)"):
        TaskSampler(fake_examples({"math": (30, 10), "science": (4, 1)}), 4, 4)
    with pytest.raises(ValueError, match="easy:hard"):
        parse_mix("3-1")
    assert parse_mix("3:1") == (3, 1) and parse_mix([1, 0]) == (1, 0)


# --- batches ------------------------------------------------------------------------------------


def test_collate_right_pads_and_masks_padding() -> None:
    short = Example("a", "math", "easy", [1, 2, 3], [IGNORE_INDEX, 2, 3])
    long = Example("b", "math", "hard", [4, 5, 6, 7, 8], [IGNORE_INDEX, IGNORE_INDEX, 6, 7, 8])
    batch = collate([short, long], pad_id=0, weights=[1.0, 0.5])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [[-100, 2, 3, -100, -100], [-100, -100, 6, 7, 8]]
    assert batch["example_weights"].tolist() == [1.0, 0.5]


def test_batches_cover_the_epoch_with_little_padding() -> None:
    examples = [
        Example(f"e{i}", "math", "easy", [1] * (5 + (i * 37) % 200), [1] * (5 + (i * 37) % 200)) for i in range(300)
    ]
    epoch = batches(examples, batch_size=8, seed=1, epoch=0)
    assert sorted(ex.id for b in epoch for ex in b) == sorted(ex.id for ex in examples)
    assert all(len(b) <= 8 for b in epoch)
    assert [[ex.id for ex in b] for b in epoch] == [[ex.id for ex in b] for b in batches(examples, 8, 1, 0)]
    assert [[ex.id for ex in b] for b in epoch] != [[ex.id for ex in b] for b in batches(examples, 8, 1, 1)]
    padded = sum(len(b) * max(ex.n_tokens for ex in b) for b in epoch)
    unsorted = sum(8 * max(ex.n_tokens for ex in examples[i : i + 8]) for i in range(0, 300, 8))
    assert padded < 0.7 * unsorted

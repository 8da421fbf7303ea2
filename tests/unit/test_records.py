"""Reading JSONL records: validation errors that name line and field, files, directory artifacts, built-ins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metaspec.artifacts import ChecksumMismatch, IncompleteArtifact, NotFound, upload_dir
from metaspec.datasets import parse_jsonl, read_records
from metaspec.records import InvalidData


def line(i: int, **overrides: object) -> str:
    body = {"id": f"r{i}", "input": f"question {i}", "output": f"Answer: {i}", "domain": "math", "difficulty": "easy"}
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not None}, ensure_ascii=False)


def write(path: Path, *lines: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{text}\n" for text in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "bad,field",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (line(2, difficulty="medium"), "field `difficulty`"),
        (line(2, input=""), "field `input`"),
        (json.dumps({"id": "r2", "output": "x"}), "field `input`: missing"),
        (line(2, messages=[{"role": "user", "content": "hi"}]), "fields `input` and `messages`"),
        (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "field `messages.0.role`"),
        (
            json.dumps({"messages": [{"role": "user", "content": "hi"}]}),
            "field `messages`: the conversation does not end",
        ),
        (line(2, output=None), "field `output`"),
        (line(1), "field `id`: duplicate id 'r1'"),
    ],
)
def test_errors_name_source_line_and_field(tmp_path: Path, bad: str, field: str) -> None:
    path = write(tmp_path / "data.jsonl", line(1), "", bad, line(3))
    with pytest.raises(InvalidData) as caught:
        read_records(str(path))
    assert str(caught.value).startswith(f"file://{path} line 3: ") and field in str(caught.value)


def test_skip_invalid_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", line(1), "{oops", line(2, difficulty="x"), line(3), line(1))
    records, report = read_records(str(path), skip_invalid=True)
    assert [r.id for r in records] == ["r1", "r3"]
    assert report.valid == 2 and [n for n, _ in report.invalid] == [2, 3, 5]
    assert report.duplicate_ids == ["r1"]
    assert report.source == f"file://{path}" and report.invalid[1] == (3, report.invalid[1][1])
    assert "2 valid, 3 invalid" in report.describe() and "line 3: field `difficulty`:" in report.describe()
    assert "(in " not in report.describe(), "a single file needs no file name per line"


def test_output_is_optional_for_prompt_files(tmp_path: Path) -> None:
    path = write(tmp_path / "prompts.jsonl", line(1, output=None))
    records, _ = read_records(f"file://{path}", require_output=False)
    assert records[0].output is None


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "2 + 2?"},
    {"role": "assistant", "content": "4"},
]


def test_chat_records_sit_beside_ours_with_optional_labels(tmp_path: Path) -> None:
    chat = json.dumps({"messages": CHAT})
    path = write(
        tmp_path / "mixed.jsonl", line(1, domain=None, difficulty=None), chat, json.dumps({"messages": CHAT[:2]})
    )
    records, report = read_records(str(path), require_output=False)
    ours, conversation, prompt = records
    assert report.valid == 3 and ours.domain is None and ours.difficulty is None and ours.task == "file:mixed.jsonl"
    assert conversation.id.startswith("chat-") and conversation.answer == "4"
    assert conversation.prompt_messages() == CHAT[:2] == prompt.prompt_messages() and prompt.answer is None
    assert conversation.user_text == "2 + 2?"
    with pytest.raises(InvalidData, match=r"mixed\.jsonl line 3: field `messages`: the conversation does not end"):
        read_records(str(path))
    twice = write(tmp_path / "twice.jsonl", chat, chat)
    with pytest.raises(InvalidData, match=r"line 2: field `id`: duplicate id 'chat-.*this conversation repeats"):
        read_records(str(twice))


def test_max_examples_stops_after_that_many_valid_records(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", *(line(i) for i in range(10)), "{broken")
    records, report = read_records(str(path), max_examples=4)
    assert [r.id for r in records] == ["r0", "r1", "r2", "r3"] and report.valid == 4
    with pytest.raises(ValueError, match="at least 1"):
        read_records(str(path), max_examples=0)


def test_line_separators_inside_strings_do_not_split_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "data.jsonl", line(1, output="Answer: a\u2028b\u0085c"), line(2))
    records, _ = read_records(str(path))
    assert records[0].output == "Answer: a\u2028b\u0085c" and len(records) == 2


def test_bytes_that_are_not_utf8_name_their_line(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_bytes((line(1) + "\n" + line(2) + "\n").encode() + b'{"id": "\xff"}\n')
    with pytest.raises(InvalidData, match=r"line 3: not UTF-8"):
        read_records(str(path))


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        read_records(str(tmp_path / "absent.jsonl"))


def test_unsupported_scheme_is_explained() -> None:
    with pytest.raises(InvalidData, match="not hf://"):
        read_records("hf://org/dataset")


def artifact(root: Path) -> Path:
    write(root / "shard-00001-of-00002.jsonl", line(3), line(4))
    write(root / "shard-00000-of-00002.jsonl", line(1), line(2))
    write(root / "stats.json", "{}")
    upload_dir(root, root)
    return root


def test_directory_artifact_is_read_in_manifest_order(tmp_path: Path) -> None:
    root = artifact(tmp_path / "out")
    records, report = read_records(str(root))
    assert [r.id for r in records] == ["r1", "r2", "r3", "r4"] and report.valid == 4
    assert [r.id for r in read_records(str(root), max_examples=3)[0]] == ["r1", "r2", "r3"]


def test_directory_errors_name_the_file_and_ids_are_unique_across_files(tmp_path: Path) -> None:
    root = tmp_path / "out"
    write(root / "a.jsonl", line(1), line(2))
    write(root / "b.jsonl", line(3), line(2))
    upload_dir(root, root)
    with pytest.raises(InvalidData, match=r"b\.jsonl line 2: field `id`: duplicate id 'r2'"):
        read_records(str(root))
    records, report = read_records(str(root), skip_invalid=True)
    assert len(records) == 3 and report.invalid == [
        (2, "field `id`: duplicate id 'r2' (in file://" + str(root / "b.jsonl") + ")")
    ]


def test_directory_without_manifest_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    write(root / "shard-00000-of-00002.jsonl", line(1))
    with pytest.raises(IncompleteArtifact, match=r"no _manifest\.json"):
        read_records(str(root))


def test_directory_file_changed_after_manifest_is_refused(tmp_path: Path) -> None:
    root = artifact(tmp_path / "out")
    write(root / "shard-00001-of-00002.jsonl", line(3))
    with pytest.raises(ChecksumMismatch, match=r"shard-00001-of-00002\.jsonl"):
        read_records(str(root))


def test_manifest_without_jsonl_files_is_invalid_data(tmp_path: Path) -> None:
    root = tmp_path / "model"
    write(root / "config.json", "{}")
    upload_dir(root, root)
    with pytest.raises(InvalidData, match=r"lists no \.jsonl or \.parquet files"):
        read_records(str(root))


def test_builtin_splits() -> None:
    records, report = read_records("builtin://eval", max_examples=5)
    assert len(records) == report.valid == 5 and report.source == "builtin://eval"
    with pytest.raises(InvalidData, match="without outputs"):
        read_records("builtin://prompts")
    with pytest.raises(InvalidData, match="no such built-in split"):
        read_records("builtin://test")


def test_parse_jsonl_keeps_its_contract() -> None:
    records, report = parse_jsonl([line(1), line(1)], "inline", skip_invalid=True)
    assert len(records) == 1 and report.source == "inline" and report.invalid == [(2, "field `id`: duplicate id 'r1'")]

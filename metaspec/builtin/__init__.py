"""The built-in dataset: small, deterministic, generated from templates and parameter pools (no network).

Eight domains (`records.DOMAINS`, one module each), mostly easy examples with short answers and about a
fifth hard ones with multi-step answers, all in one answer style so that a LoRA can learn it and carry
it to unseen inputs:

    Answer: <the direct answer>            Answer: <the direct answer>
    Why: <one or two sentences>            Steps:                      (summaries: "Key points:")
                                           1. …
                                           2. …

Splits:

- `train` (75 per domain);
- `eval` (12 per domain), built only from held-out parameter values (a fifth of every pool, and one
  parameter combination in five, is reserved for it, so no evaluation input and none of its people,
  places or facts appears in training);
- `prompts` (25 inputs per domain, no outputs, from the training side) for teacher generation;
- `distill` (up to 400 easy + 100 hard inputs per domain, no outputs, from the training side) for the
  teacher outputs a draft is distilled on: as many distinct inputs as the generators make, none of them
  in `prompts` or `eval` (so serving benchmarks on those stay held out); it may overlap `train`.

Every number is computed and every fact checked; the same records come out on every machine and Python
version (the only randomness is a counter-mode SHA-256 stream seeded by split, domain and difficulty).

`metaspec dataset --split train|eval|prompts|distill --out FILE_OR_URI` writes a split as JSONL.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from functools import cache
from typing import Literal

from metaspec.records import DOMAINS, Record, dump_jsonl

from . import coding, common_sense, mathematics, reading, reasoning, science, summarization, tool_use
from ._base import Generator, Rng

Split = Literal["train", "eval", "prompts", "distill"]
SPLITS: tuple[str, ...] = ("train", "eval", "prompts", "distill")
#: split -> id prefix, for the splits that hold inputs without outputs (teacher generation reads them)
INPUTS_ONLY: dict[str, str] = {"prompts": "prompt-", "distill": "distill-"}
#: (easy, hard) examples per domain and split; for `distill` an upper bound (`_generate`)
SIZES: dict[str, tuple[int, int]] = {"train": (58, 17), "eval": (9, 3), "prompts": (19, 6), "distill": (400, 100)}
#: splits whose inputs `distill` never repeats
_KEPT_FROM_DISTILL = ("prompts", "eval")
#: domain -> (easy generators, hard generators)
GENERATORS: dict[str, tuple[Sequence[Generator], Sequence[Generator]]] = {
    "math": mathematics.GENERATORS,
    "coding": coding.GENERATORS,
    "science": science.GENERATORS,
    "reasoning": reasoning.GENERATORS,
    "tool_use": tool_use.GENERATORS,
    "reading": reading.GENERATORS,
    "summarization": summarization.GENERATORS,
    "common_sense": common_sense.GENERATORS,
}
assert tuple(GENERATORS) == DOMAINS

__all__ = ["GENERATORS", "INPUTS_ONLY", "SIZES", "SPLITS", "Split", "main", "records"]


def records(split: Split) -> list[Record]:
    """The records of one split, freshly built each call (callers may modify them)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return [Record.model_validate(body) for body in _bodies(split)]


@cache
def _bodies(split: str) -> tuple[dict, ...]:
    """Records interleaved so that every prefix (`maxExamples: N`) mixes all domains and both
    difficulties in the split's proportions: the i-th of n records of a group sorts at (i - ½)/n."""
    excluded = _excluded_keys(split)
    keyed: list[tuple[float, int, str, dict]] = []
    for rank, (domain, (easy, hard)) in enumerate(GENERATORS.items()):
        for difficulty, generators, count in (("easy", easy, SIZES[split][0]), ("hard", hard, SIZES[split][1])):
            made = _generate(split, domain, difficulty, generators, count, excluded)
            for i, (text, output) in enumerate(made, start=1):
                if split in INPUTS_ONLY:
                    body = {"id": f"{INPUTS_ONLY[split]}{domain}-{difficulty}-{i:04d}", "input": text}
                else:
                    body = {"id": f"{domain}-{difficulty}-{i:04d}", "input": text, "output": output}
                body.update(domain=domain, difficulty=difficulty)
                keyed.append(((i - 0.5) / len(made), rank, difficulty, body))
    return tuple(body for *_, body in sorted(keyed, key=lambda k: k[:3]))


def _excluded_keys(split: str) -> frozenset[str]:
    """Inputs `split` must not repeat: for `distill`, every input of `prompts` and `eval`."""
    if split != "distill":
        return frozenset()
    return frozenset(_key(body["input"]) for kept in _KEPT_FROM_DISTILL for body in _bodies(kept))


def _key(text: str) -> str:
    """What counts as the same input: case-folded, whitespace collapsed."""
    return " ".join(text.casefold().split())


def _generate(
    split: str,
    domain: str,
    difficulty: str,
    generators: Sequence[Generator],
    count: int,
    excluded: frozenset[str] = frozenset(),
) -> list[tuple[str, str]]:
    """`count` examples with distinct inputs not in `excluded`, cycling through the generators for
    variety. Some generators make fewer than `distill` asks for (coding/hard about 40): `distill` takes
    what 50 × `count` attempts give; every other split's size is exact, and falling short raises."""
    rng = Rng(f"metaspec-builtin/{split}/{domain}/{difficulty}")
    held = split == "eval"
    seen: set[str] = set(excluded)
    made: list[tuple[str, str]] = []
    for attempt in range(1, 50 * count + 1):
        text, output = generators[attempt % len(generators)](rng, held)
        key = _key(text)
        if key not in seen:
            seen.add(key)
            made.append((text, output))
            if len(made) == count:
                return made
    if split != "distill":
        raise RuntimeError(f"built-in {split}/{domain}/{difficulty}: only {len(made)} distinct inputs of {count}")
    return made


def main(argv: list[str] | None = None) -> int:
    """`metaspec dataset --split train|eval|prompts|distill [--out FILE_OR_URI]`: write a split as JSONL."""
    from metaspec.artifacts import write_bytes

    parser = argparse.ArgumentParser(prog="metaspec dataset", description="write the built-in dataset as JSONL")
    parser.add_argument("--split", choices=SPLITS, default="train", help="which split (default: train)")
    parser.add_argument("--out", default="-", help="a path, file:// or s3:// URI; '-' (default) for stdout")
    args = parser.parse_args(argv)
    data = "".join(dump_jsonl(records(args.split))).encode()
    if args.out == "-":
        sys.stdout.buffer.write(data)
    else:
        write_bytes(data, args.out)
        print(f"wrote {len(records(args.split))} {args.split} records to {args.out}", file=sys.stderr)
    return 0

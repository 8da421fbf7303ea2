"""Training data: records -> token examples with the prompt masked, token statistics, ANIL tasks, batches.

- `format_example` renders a record with the base tokenizer's chat template (`prompts.chat_prompt_ids`,
  the same prompt the generator and the server use), appends the template's end-of-turn token to the
  target and masks the prompt from the loss (`IGNORE_INDEX`). A chat record's conversation is rendered
  turn by turn: every assistant turn (its text and end-of-turn token) is trained on, every other token
  (system prompt, user turns, the template's role headers) is masked.
- `token_stats` counts tokens per domain × difficulty with the real tokenizer: hard examples have long
  answers, so a 3:1 easy:hard mix by examples can still be mostly hard by tokens (`hard_token_share`).
- `TaskSampler` builds the meta-learning tasks of ANIL-MAML (Raghu et al. 2020): one task group per
  task (the record's domain, or for records without one the file they came from: `Record.task`),
  disjoint support and query sets mixing easy and hard examples, every example once per epoch.
- `collate` and `batches` serve plain next-token training (the causal-LM recipe) and evaluation.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, Protocol

from metaspec.datasets import read_records
from metaspec.prompts import chat_prompt_ids, end_of_turn_ids, require_chat_template
from metaspec.records import InvalidData, Message, Record

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # label of positions left out of the loss (PyTorch's cross-entropy default)
_SENTINEL = "metaspec-end-of-turn-probe"


@dataclass
class Example:
    """One tokenized record: `labels` equal `input_ids` on the target and `IGNORE_INDEX` on the prompt.

    `domain` is the record's task group (`Record.task`); `difficulty` is None when the record has none.
    """

    id: str
    domain: str
    difficulty: str | None
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # target (or prompt) cut to fit `max_seq_length`
    prompt_truncated: bool = False  # the prompt alone did not fit and lost its beginning

    @property
    def n_target_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)

    @property
    def n_tokens(self) -> int:
        return len(self.input_ids)


@lru_cache(maxsize=16)
def end_of_turn_id(tokenizer: Any) -> int:
    """The token the chat template writes right after an assistant turn's content (`<|im_end|>` for
    SmolLM2, `<|eot_id|>` for Llama 3); EOS for tokenizers without a template. Found by rendering a
    conversation, so a new template needs no table entry."""
    candidates = end_of_turn_ids(tokenizer)
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _SENTINEL}]
        text = tokenizer.apply_chat_template(conversation, tokenize=False)
        after = text[text.rindex(_SENTINEL) + len(_SENTINEL) :]
        for token_id in tokenizer(after, add_special_tokens=False)["input_ids"]:
            if token_id in candidates:
                return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no chat template end-of-turn token and no EOS token to end targets with")
    return tokenizer.eos_token_id


def format_example(tokenizer: Any, record: Record, max_seq_length: int) -> Example:
    """Prompt (chat template + generation prompt) followed by the output and the end-of-turn token; for
    a chat record, its whole conversation with the assistant turns as targets (`_chat_tokens`).

    Too long: the tail is cut (the prompt is kept). A prompt (everything before the first target token)
    that leaves no room for the target loses its beginning instead, keeping room for
    `min(rest, max_seq_length // 2)` tokens, and a warning names the example.
    """
    problem = record.training_problem()
    if problem:
        raise InvalidData(f"record {record.id!r}: {problem}")
    if max_seq_length < 2:
        raise ValueError(f"max_seq_length must be at least 2, got {max_seq_length}")
    input_ids, labels = _chat_tokens(tokenizer, record) if record.is_chat else _single_turn_tokens(tokenizer, record)
    prompt = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    truncated = len(input_ids) > max_seq_length
    prompt_truncated = prompt >= max_seq_length
    if prompt_truncated:
        keep = max(1, min(len(input_ids) - prompt, max_seq_length // 2))
        drop = prompt - (max_seq_length - keep)
        input_ids, labels = input_ids[drop:], labels[drop:]
        log.warning(
            "example %s: the prompt alone exceeds max_seq_length %d; its first tokens were dropped",
            record.id,
            max_seq_length,
        )
    return Example(
        id=record.id,
        domain=record.task,
        difficulty=record.difficulty,
        input_ids=input_ids[:max_seq_length],
        labels=labels[:max_seq_length],
        truncated=truncated,
        prompt_truncated=prompt_truncated,
    )


def _single_turn_tokens(tokenizer: Any, record: Record) -> tuple[list[int], list[int]]:
    prompt = chat_prompt_ids(tokenizer, record.input or "")
    target = [*_encode(tokenizer, record.answer or ""), end_of_turn_id(tokenizer)]
    return prompt + target, [IGNORE_INDEX] * len(prompt) + target


def _chat_tokens(tokenizer: Any, record: Record) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation: assistant turns are targets, everything else is masked.

    Each assistant turn is found by rendering the conversation before it (with the generation prompt)
    and up to it: the text between is the turn, cut after the template's end-of-turn token. Its text is
    tokenized on its own, as a model generates it after the prompt (the same as `input`/`output`
    records), and ends with the end-of-turn id. This needs a template that renders earlier turns the
    same way whatever follows (true of the usual ones); one that does not is refused.
    """
    require_chat_template(tokenizer, record)
    turns = [*(record.messages or []), *([Message(role="assistant", content=record.output)] if record.output else [])]
    messages = [turn.model_dump(exclude={"weight"}, exclude_none=True) for turn in turns]
    end = end_of_turn_id(tokenizer)
    end_text = tokenizer.convert_ids_to_tokens(end)
    input_ids: list[int] = []
    labels: list[int] = []
    consumed = ""
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], add_generation_prompt=True, tokenize=False)
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not before.startswith(consumed) or not upto.startswith(before):
            raise InvalidData(
                f"record {record.id!r}: the model's chat template renders earlier turns differently once later "
                "turns follow, so assistant turns cannot be told apart; train on one turn per record"
            )
        text = upto[len(before) :]
        cut = text.find(end_text)
        context = _encode(tokenizer, before[len(consumed) :])
        target = [*_encode(tokenizer, text[:cut] if cut >= 0 else text), end]
        consumed = before + (text[: cut + len(end_text)] if cut >= 0 else text)
        input_ids += context + target
        labels += [IGNORE_INDEX] * len(context) + (target if turn.weight != 0 else [IGNORE_INDEX] * len(target))
    return input_ids, labels


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def token_stats(examples: Iterable[Example]) -> dict[str, Any]:
    """Example and token counts per domain × difficulty and in total.

    `target_tokens` are the tokens the loss sees (output + end-of-turn); `total_tokens` include the
    prompt. `hard_token_share` is the share of target tokens that come from hard examples.
    """
    groups: dict[str, dict[str, dict[str, int]]] = defaultdict(dict)
    totals = {"examples": 0, "target_tokens": 0, "total_tokens": 0, "truncated": 0, "prompt_truncated": 0}
    hard_target = 0
    for ex in examples:
        group = groups[ex.domain].setdefault(
            ex.difficulty or "unlabelled", {"examples": 0, "target_tokens": 0, "total_tokens": 0}
        )
        counts = {"examples": 1, "target_tokens": ex.n_target_tokens, "total_tokens": ex.n_tokens}
        for key, value in counts.items():
            group[key] += value
            totals[key] += value
        totals["truncated"] += ex.truncated
        totals["prompt_truncated"] += ex.prompt_truncated
        if ex.difficulty == "hard":
            hard_target += ex.n_target_tokens
    return {
        **totals,
        "hard_token_share": hard_target / totals["target_tokens"] if totals["target_tokens"] else 0.0,
        "by_domain": {domain: dict(sorted(groups[domain].items())) for domain in sorted(groups)},
    }


class _HasUserText(Protocol):
    id: str
    user_text: str


def normalize_input(text: str) -> str:
    """What counts as "the same input": Unicode-normalised, case-folded, whitespace collapsed,
    trailing punctuation ignored."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip().rstrip(".?!").strip()


def find_contamination(train: Iterable[_HasUserText], evaluation: Iterable[_HasUserText]) -> list[str]:
    """Ids of training records whose normalised user text (input, or a conversation's user turns) also
    appears in the evaluation set."""
    held_out = {normalize_input(r.user_text) for r in evaluation}
    return [r.id for r in train if normalize_input(r.user_text) in held_out]


# --- ANIL-MAML tasks ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One meta-learning task: a domain's support set (inner loop) and query set (outer loss).

    `support_weights`/`query_weights` are per-example loss weights (1.0 with `balance="samples"`):
    scale each target token's loss by its example's weight and divide by the set's target-token count.
    `fills` names the slots filled against the mix: `"hard->easy"` (a hard slot got an easy example),
    `"easy->hard"`, or `"repeat"` (the domain ran out and an example already used this epoch came back).
    """

    domain: str
    support: tuple[Example, ...]
    query: tuple[Example, ...]
    support_weights: tuple[float, ...]
    query_weights: tuple[float, ...]
    fills: tuple[str, ...] = ()


def _kind(example: Example) -> str:
    return example.difficulty or "easy"


def parse_mix(mix: str | Sequence[int]) -> tuple[int, int]:
    """`"3:1"` or `(3, 1)` -> `(3, 1)`: easy:hard."""
    parts = mix.split(":") if isinstance(mix, str) else list(mix)
    try:
        easy, hard = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"mix {mix!r}: expected easy:hard, e.g. 3:1") from None
    if easy < 0 or hard < 0 or easy + hard == 0:
        raise ValueError(f"mix {mix!r}: counts must be non-negative and not both zero")
    return easy, hard


def _quota(size: int, mix: tuple[int, int]) -> tuple[int, int]:
    """(easy, hard) slots of a set of `size` examples."""
    hard = round(size * mix[1] / (mix[0] + mix[1]))
    if mix[1] and size >= 2:
        hard = max(hard, 1)  # a set the mix asks hard examples of gets at least one
    return size - hard, hard


class TaskSampler:
    """Tasks for ANIL-MAML: each a domain with disjoint support and query sets mixing easy:hard.

    An epoch splits every domain into `ceil(n_domain / (support_size + query_size))` tasks and visits
    each example exactly once; when a domain lacks examples of one kind, slots are filled with the
    other kind, and the domain's last task is completed with repeats from the same domain (both
    recorded in `Task.fills`). Tasks of all domains are shuffled together. Everything depends only on
    `seed` and the epoch number, so a run resumed from `state_dict()` sees the very same next task.

    `balance="samples"` weights every target token alike (hard examples, with their long answers,
    then dominate the loss by tokens). `balance="tokens"` keeps the same sets but weights each set's
    examples so that easy and hard examples contribute target tokens to its loss in the mix's ratio
    (3:1 -> hard tokens carry a quarter of the loss); a set of one kind only keeps weight 1.0.

    Examples without a difficulty count as easy; in a domain where none has one, the mix does not
    apply (no fills are recorded for missing hard examples).
    """

    def __init__(
        self,
        examples: Sequence[Example],
        support_size: int,
        query_size: int,
        mix: str | Sequence[int] = (3, 1),
        seed: int = 0,
        balance: Literal["samples", "tokens"] = "samples",
    ):
        if support_size < 1 or query_size < 1:
            raise ValueError(f"support_size and query_size must be at least 1, got {support_size}, {query_size}")
        if balance not in ("samples", "tokens"):
            raise ValueError(f"balance must be 'samples' or 'tokens', got {balance!r}")
        self.support_size, self.query_size, self.mix = support_size, query_size, parse_mix(mix)
        self.seed, self.balance = seed, balance
        self.by_domain: dict[str, list[Example]] = defaultdict(list)
        for ex in examples:
            self.by_domain[ex.domain].append(ex)
        need = support_size + query_size
        small = {d: len(xs) for d, xs in self.by_domain.items() if len(xs) < need}
        if not self.by_domain:
            raise ValueError("no examples to build tasks from")
        if small:
            listed = ", ".join(f"{d} ({n})" for d, n in sorted(small.items()))
            raise ValueError(
                f"domains with fewer examples than support_size + query_size = {need}: {listed}; "
                "add examples or lower anil.supportSize / anil.querySize"
            )
        self.epoch, self.position = 0, 0
        self._cached: tuple[int, list[Task]] | None = None

    def __len__(self) -> int:
        """Tasks per epoch."""
        need = self.support_size + self.query_size
        return sum(math.ceil(len(xs) / need) for xs in self.by_domain.values())

    def __iter__(self) -> Iterator[Task]:
        """The remaining tasks of the current epoch; the epoch advances once they are consumed.

        An iterator stops early when the sampler is moved to another epoch (`load_state_dict`)."""
        self.epoch, self.position = self._normalized()
        epoch, tasks = self.epoch, self.plan(self.epoch)
        while self.epoch == epoch and self.position < len(tasks):
            self.position += 1  # before yielding: a checkpoint taken while a task runs resumes after it
            yield tasks[self.position - 1]
        if self.epoch == epoch:
            self.epoch, self.position = self._normalized()

    def _normalized(self) -> tuple[int, int]:
        """(epoch, position) with a finished epoch counted as the start of the next one."""
        return (self.epoch + 1, 0) if self.position >= len(self) else (self.epoch, self.position)

    def state_dict(self) -> dict[str, Any]:
        epoch, position = self._normalized()
        return {"epoch": epoch, "position": position, "seed": self.seed, "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("fingerprint") != self.fingerprint or state.get("seed") != self.seed:
            raise ValueError(
                "the sampler state belongs to other data or settings (examples, sizes, mix, balance or seed "
                "changed since the checkpoint); resume with the same dataset and configuration"
            )
        self.epoch, self.position = int(state["epoch"]), int(state["position"])

    @property
    def fingerprint(self) -> str:
        """Identifies the examples and settings; a state from other data cannot be loaded."""
        digest = hashlib.sha256()
        for domain in sorted(self.by_domain):
            for ex in self.by_domain[domain]:
                digest.update(f"{ex.id}\0{ex.difficulty}\0{ex.n_tokens}\0".encode())
        digest.update(f"{self.support_size}/{self.query_size}/{self.mix}/{self.balance}".encode())
        return digest.hexdigest()[:16]

    def plan(self, epoch: int) -> list[Task]:
        """Every task of `epoch`, in order (a pure function of the examples, settings, seed and epoch)."""
        if self._cached is None or self._cached[0] != epoch:
            tasks = [t for d in sorted(self.by_domain) for t in self._domain_tasks(d, epoch)]
            random.Random(f"metaspec-tasks/{self.seed}/{epoch}/order").shuffle(tasks)
            self._cached = (epoch, tasks)
        return self._cached[1]

    def _domain_tasks(self, domain: str, epoch: int) -> list[Task]:
        rng = random.Random(f"metaspec-tasks/{self.seed}/{epoch}/{domain}")
        examples = self.by_domain[domain]
        pools = {kind: [ex for ex in examples if _kind(ex) == kind] for kind in ("easy", "hard")}
        mix = self.mix if any(ex.difficulty for ex in examples) else (1, 0)
        for pool in pools.values():
            rng.shuffle(pool)
        n_tasks = math.ceil(len(examples) / (self.support_size + self.query_size))
        tasks = []
        for _ in range(n_tasks):
            used: set[str] = set()
            fills: list[str] = []
            support = self._fill(self.support_size, mix, pools, examples, used, fills, rng)
            query = self._fill(self.query_size, mix, pools, examples, used, fills, rng)
            tasks.append(
                Task(domain, tuple(support), tuple(query), self._weights(support), self._weights(query), tuple(fills))
            )
        return tasks

    def _fill(
        self,
        size: int,
        mix: tuple[int, int],
        pools: dict[str, list[Example]],
        everything: list[Example],
        used: set[str],
        fills: list[str],
        rng: random.Random,
    ) -> list[Example]:
        easy, hard = _quota(size, mix)
        chosen: list[Example] = []
        for kind, other, count in (("hard", "easy", hard), ("easy", "hard", easy)):
            for _ in range(count):
                if pools[kind]:
                    chosen.append(pools[kind].pop())
                elif pools[other]:
                    chosen.append(pools[other].pop())
                    fills.append(f"{kind}->{other}")
                else:
                    taken = used | {ex.id for ex in chosen}
                    spare = [ex for ex in everything if ex.id not in taken]
                    chosen.append(rng.choice(spare))
                    fills.append("repeat")
        used.update(ex.id for ex in chosen)
        return chosen

    def _weights(self, examples: list[Example]) -> tuple[float, ...]:
        if self.balance == "samples":
            return (1.0,) * len(examples)
        tokens = {kind: sum(ex.n_target_tokens for ex in examples if _kind(ex) == kind) for kind in ("easy", "hard")}
        total = tokens["easy"] + tokens["hard"]
        if not tokens["easy"] or not tokens["hard"]:
            return (1.0,) * len(examples)
        share = {"easy": self.mix[0] / sum(self.mix), "hard": self.mix[1] / sum(self.mix)}
        # weight w_k = share_k * total / tokens_k: the weighted token count stays `total`, the split follows the mix
        return tuple(share[_kind(ex)] * total / tokens[_kind(ex)] for ex in examples)

    def summary(self, epoch: int | None = None) -> dict[str, Any]:
        """Tasks per domain and fill-ins of one epoch (the current one by default), for the run's log."""
        tasks = self.plan(self.epoch if epoch is None else epoch)
        fills: dict[str, int] = defaultdict(int)
        per_domain: dict[str, int] = defaultdict(int)
        for task in tasks:
            per_domain[task.domain] += 1
            for fill in task.fills:
                fills[fill] += 1
        return {"tasks": len(tasks), "tasks_per_domain": dict(sorted(per_domain.items())), "fills": dict(fills)}


# --- plain batches ------------------------------------------------------------------------------


def collate(examples: Sequence[Example], pad_id: int, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Right-padded `input_ids`, `attention_mask`, `labels` (padding -> IGNORE_INDEX), all (B, T) int64;
    with `weights`, also `example_weights` (B,) float32."""
    import torch

    if not examples:
        raise ValueError("cannot collate an empty batch")
    width = max(ex.n_tokens for ex in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)  # (B, T)
    for row, ex in enumerate(examples):
        n = ex.n_tokens
        input_ids[row, :n] = torch.tensor(ex.input_ids, dtype=torch.long)
        labels[row, :n] = torch.tensor(ex.labels, dtype=torch.long)
        attention_mask[row, :n] = 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
    if weights is not None:
        if len(weights) != len(examples):
            raise ValueError(f"{len(weights)} weights for {len(examples)} examples")
        batch["example_weights"] = torch.tensor(list(weights), dtype=torch.float32)  # (B,)
    return batch


def batches(examples: Sequence[Example], batch_size: int, seed: int, epoch: int) -> list[list[Example]]:
    """One epoch of batches: every example once, similar lengths together (less padding), order
    shuffled. Examples are shuffled, cut into windows of 50 batches, sorted by length within a window
    and batched; then the batches are shuffled. Deterministic in (seed, epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rng = random.Random(f"metaspec-batches/{seed}/{epoch}")
    order = list(examples)
    rng.shuffle(order)
    window = batch_size * 50
    result: list[list[Example]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda ex: ex.n_tokens)
        result += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(result)
    return result


# --- loading ------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What loading a dataset found; `as_dict()` goes into the run's metrics and log."""

    source: str
    valid: int
    invalid: int
    invalid_lines: list[tuple[int, str]] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    contaminated_ids: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    def as_dict(self, limit: int = 20) -> dict[str, Any]:
        return {
            "source": self.source,
            "valid": self.valid,
            "invalid": self.invalid,
            "invalid_lines": [f"line {n}: {msg}" for n, msg in self.invalid_lines[:limit]],
            "duplicate_ids": self.duplicate_ids[:limit],
            "contaminated": len(self.contaminated_ids),
            "contaminated_ids": self.contaminated_ids[:limit],
            "stats": self.stats,
        }


def load_training_data(
    spec_dataset_uri: str,
    tokenizer: Any,
    max_seq_length: int,
    *,
    skip_invalid: bool = False,
    max_examples: int | None = None,
    evaluation_uri: str | None = None,
) -> tuple[list[Example], dict[str, Any]]:
    """Read, validate and tokenize a dataset. Returns the examples and a report (`DataReport.as_dict`).

    Bad lines raise `InvalidData` naming source, line and field, unless `skip_invalid` (then counted).
    With `evaluation_uri`, training records whose input also appears in the evaluation set are
    reported as contaminated (kept: the report says which, the user decides).
    """
    records, loaded = read_records(spec_dataset_uri, skip_invalid=skip_invalid, max_examples=max_examples)
    if not records:
        raise InvalidData(f"{spec_dataset_uri}: no valid records ({len(loaded.invalid)} invalid lines)")
    examples = [format_example(tokenizer, record, max_seq_length) for record in records]
    report = DataReport(
        source=spec_dataset_uri,
        valid=loaded.valid,
        invalid=len(loaded.invalid),
        invalid_lines=loaded.invalid,
        duplicate_ids=loaded.duplicate_ids,
        stats=token_stats(examples),
    )
    if evaluation_uri is not None:
        held_out, _ = read_records(evaluation_uri, require_output=False)
        report.contaminated_ids = find_contamination(records, held_out)
        if report.contaminated_ids:
            log.warning(
                "%d training records also appear in the evaluation set %s (e.g. %s)",
                len(report.contaminated_ids),
                evaluation_uri,
                ", ".join(report.contaminated_ids[:5]),
            )
    if report.invalid:
        log.warning("%s: skipped %d invalid lines", spec_dataset_uri, report.invalid)
    if report.stats["truncated"]:
        log.warning(
            "%d of %d examples truncated to %d tokens", report.stats["truncated"], len(examples), max_seq_length
        )
    return examples, report.as_dict()

"""What every domain generator shares: the deterministic random stream, the train/eval split of
parameter pools, the answer style, number formatting and the common pools of names and places."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import TypeVar

T = TypeVar("T")


class Rng:
    """Counter-mode SHA-256: identical numbers on every platform and Python version, no global state."""

    def __init__(self, seed: str):
        self.seed, self.counter = seed, 0

    def below(self, n: int) -> int:
        self.counter += 1
        digest = hashlib.sha256(f"{self.seed}/{self.counter}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % n

    def int(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi]."""
        return lo + self.below(hi - lo + 1)

    def choice(self, items: Sequence[T]) -> T:
        return items[self.below(len(items))]

    def sample(self, items: Sequence[T], k: int) -> list[T]:
        pool = list(items)
        return [pool.pop(self.below(len(pool))) for _ in range(k)]


#: A generator makes one `(input, output)` example; `held` asks for evaluation-side parameters.
Generator = Callable[[Rng, bool], tuple[str, str]]


# --- train/eval sides ------------------------------------------------------------------------------


def digest(key: object) -> int:
    return int(hashlib.sha256(f"held-out/{key!r}".encode()).hexdigest(), 16)


def held_out(key: object) -> bool:
    """One parameter combination in five is reserved for the evaluation split."""
    return digest(key) % 5 == 0


def sides(pool: Sequence[T], key: Callable[[T], object] = lambda x: x) -> tuple[list[T], list[T]]:
    """(training side, evaluation side) of a pool: the fifth of it (at least one value) with the
    lowest digests is held out for evaluation."""
    ranked = sorted(pool, key=lambda x: digest(key(x)))
    n_held = max(1, round(len(ranked) / 5))
    return ranked[n_held:], ranked[:n_held]


def pick(rng: Rng, pool: Sequence[T], held: bool, key: Callable[[T], object] = lambda x: x) -> T:
    """A value from the evaluation side of `pool` (`held`) or from its training side."""
    return rng.choice(sides(pool, key)[held])


def pick_many(rng: Rng, pool: Sequence[T], held: bool, k: int) -> list[T]:
    """`k` distinct values from one side of `pool`."""
    return rng.sample(sides(pool)[held], k)


def pick_other(rng: Rng, pool: Sequence[T], held: bool, other: T) -> T:
    """A value from the same side of `pool` as `pick`, different from `other`."""
    while (value := pick(rng, pool, held)) == other:
        pass
    return value


def draw(rng: Rng, held: bool, make: Callable[[], T]) -> T:
    """Draw parameter combinations with `make` until one falls on the requested side."""
    for _ in range(1000):
        value = make()
        if held_out(value) == held:
            return value
    raise RuntimeError("no parameter combination on the requested side")


# --- the answer style -----------------------------------------------------------------------------


def answer_easy(answer: str, why: str) -> str:
    return f"Answer: {answer}\nWhy: {why}"


def answer_hard(answer: str, steps: Sequence[str], label: str = "Steps", body: str = "") -> str:
    """`Answer:` line, optional body (code, tool calls), then a numbered list under `label`."""
    numbered = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    return f"Answer: {answer}\n{body}{label}:\n{numbered}"


# --- words and numbers ----------------------------------------------------------------------------


def money(value: Decimal | Fraction | float | int) -> str:
    return f"${Decimal(str(float(value))).quantize(Decimal('0.01'), ROUND_HALF_UP):,}"


def num(value: Fraction | float | int) -> str:
    """An exact number as text: integers plain, terminating decimals as decimals, else a fraction."""
    value = Fraction(value)
    if value.denominator == 1:
        return f"{value.numerator:,}"
    if _terminates(value.denominator):
        return f"{float(value):,.6f}".rstrip("0")
    return frac(value)


def _terminates(denominator: int) -> bool:
    for p in (2, 5):
        while denominator % p == 0:
            denominator //= p
    return denominator == 1


def frac(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def article(spoken: str) -> str:
    """`a` or `an` before a word or a number written in digits ("an 8-week", "an 11 Ω")."""
    head = spoken.lstrip()
    vowel_sound = head[:1].lower() in "aeio" or head.startswith("8") or head.split(" ")[0].split("-")[0] in ("11", "18")
    return "an" if vowel_sound else "a"


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, 11th, 21st, …"""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def ordinal_word(n: int) -> str:
    return ("first", "second", "third", "fourth", "fifth", "sixth")[n - 1]


def clock(minutes: int) -> str:
    """Minutes after midnight as a 24-hour time, e.g. 545 -> 9:05."""
    return f"{minutes // 60 % 24}:{minutes % 60:02d}"


# --- shared pools ---------------------------------------------------------------------------------

NAMES = (
    "Maya", "Liam", "Sofia", "Noah", "Aisha", "Mateo", "Hana", "Oliver", "Zara", "Ethan", "Lena", "Kofi",
    "Priya", "Jonas", "Amara", "Diego", "Yuki", "Felix", "Nadia", "Omar", "Clara", "Ravi", "Elena", "Tom",
    "Ines", "Sam", "Mei", "Hugo", "Leila", "Arjun", "Freya", "Marco", "Ada", "Kenji", "Lucia", "Tariq",
    "Greta", "Pablo", "Ayla", "Victor",
)  # fmt: skip
CITIES = (
    "Lisbon", "Oslo", "Nairobi", "Lima", "Osaka", "Toronto", "Cairo", "Prague", "Melbourne", "Seoul",
    "Dublin", "Bogotá", "Hanoi", "Vienna", "Accra", "Santiago", "Helsinki", "Marrakesh", "Denver", "Porto",
    "Kraków", "Montreal", "Auckland", "Istanbul", "Bangalore", "Edinburgh", "Valencia", "Tallinn",
    "Cape Town", "Reykjavík",
)  # fmt: skip
#: Fictional towns, for stories where real places would make the distances absurd.
TOWNS = (
    "Millbrook", "Ashford", "Harlow Bay", "Pinecrest", "Stonebridge", "Rivertown", "Oakridge", "Fairhaven",
    "Kingsbury", "Westfield", "Elmstead", "Brookvale", "Maple Falls", "Northgate", "Silverlake",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip

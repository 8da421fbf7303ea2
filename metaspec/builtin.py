"""The built-in dataset: small, deterministic, generated from templates and parameter pools (no network).

Eight domains (`records.DOMAINS`), mostly easy examples with short answers and about a fifth hard ones
with multi-step answers, all in one answer style so that a LoRA can learn it and carry it to unseen
inputs:

    Answer: <the direct answer>            Answer: <the direct answer>
    Why: <one or two sentences>            Steps:                      (summaries: "Key points:")
                                           1. …
                                           2. …

Splits: `train` (75 per domain), `eval` (12 per domain) built only from held-out parameter values (one
value in five of every pool is reserved for it, so no evaluation input appears in training), and
`prompts` (25 inputs per domain, no outputs, from the training pools) for teacher generation. Every
number is computed, every fact checked; the same records come out on every machine and Python version
(the only randomness is a counter-mode SHA-256 stream seeded by split, domain and difficulty).

`metaspec dataset --split train|eval|prompts --out FILE_OR_URI` writes a split as JSONL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from functools import cache
from typing import Literal, TypeVar

from metaspec.records import DOMAINS, Record, dump_jsonl

Split = Literal["train", "eval", "prompts"]
SPLITS: tuple[str, ...] = ("train", "eval", "prompts")
#: (easy, hard) examples per domain and split
SIZES: dict[str, tuple[int, int]] = {"train": (58, 17), "eval": (9, 3), "prompts": (19, 6)}
T = TypeVar("T")


class _Rng:
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


def _digest(key: object) -> int:
    return int(hashlib.sha256(f"held-out/{key!r}".encode()).hexdigest(), 16)


def _held_out(key: object) -> bool:
    """One parameter combination in five is reserved for the evaluation split."""
    return _digest(key) % 5 == 0


def _sides(pool: Sequence[T], key: Callable[[T], object] = lambda x: x) -> tuple[list[T], list[T]]:
    """(training side, evaluation side) of a pool: the fifth of it (at least one value) with the
    lowest digests is held out for evaluation."""
    ranked = sorted(pool, key=lambda x: _digest(key(x)))
    n_held = max(1, round(len(ranked) / 5))
    return ranked[n_held:], ranked[:n_held]


def _pick(rng: _Rng, pool: Sequence[T], held: bool, key: Callable[[T], object] = lambda x: x) -> T:
    """A value from the evaluation side of `pool` (`held`) or from its training side."""
    return rng.choice(_sides(pool, key)[held])


def _pick_many(rng: _Rng, pool: Sequence[T], held: bool, k: int) -> list[T]:
    """`k` distinct values from one side of `pool`."""
    return rng.sample(_sides(pool)[held], k)


def _draw(rng: _Rng, held: bool, make: Callable[[], T]) -> T:
    """Draw parameter combinations with `make` until one falls on the requested side."""
    for _ in range(1000):
        value = make()
        if _held_out(value) == held:
            return value
    raise RuntimeError("no parameter combination on the requested side")


def _draw_other(rng: _Rng, pool: Sequence[T], held: bool, other: T) -> T:
    """A value from the same side of `pool` as `_pick`, different from `other`."""
    while (value := _pick(rng, pool, held)) == other:
        pass
    return value


def _easy(answer: str, why: str) -> str:
    return f"Answer: {answer}\nWhy: {why}"


def _hard(answer: str, steps: Sequence[str], label: str = "Steps", body: str = "") -> str:
    numbered = "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))
    return f"Answer: {answer}\n{body}{label}:\n{numbered}"


def _money(value: Decimal | Fraction | float | int) -> str:
    return f"${Decimal(str(float(value))).quantize(Decimal('0.01'), ROUND_HALF_UP):,}"


def _num(value: Fraction | float | int) -> str:
    """An exact number as text: integers plain, terminating decimals as decimals, else a fraction."""
    value = Fraction(value)
    if value.denominator == 1:
        return f"{value.numerator:,}"
    if all(p in (2, 5) for p in _prime_factors(value.denominator)):
        return f"{float(value):,.6f}".rstrip("0")
    return f"{value.numerator}/{value.denominator}"


def _prime_factors(n: int) -> list[int]:
    factors, p = [], 2
    while n > 1:
        while n % p == 0:
            factors.append(p)
            n //= p
        p += 1
    return factors


Generator = Callable[[_Rng, bool], tuple[str, str]]

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
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip


# --- math -----------------------------------------------------------------------------------------

ITEMS = ("stickers", "marbles", "apples", "books", "stamps", "cards", "pencils", "coins", "shells", "beads")


def _math_multiply(rng: _Rng, held: bool) -> tuple[str, str]:
    a, b = _draw(rng, held, lambda: (rng.int(12, 99), rng.int(11, 49)))
    question = rng.choice(("What is {a} × {b}?", "Compute {a} times {b}.", "Multiply {a} by {b}."))
    tens, ones = b - b % 10, b % 10
    if ones:
        why = f"{a} × {b} = {a} × {tens} + {a} × {ones} = {a * tens:,} + {a * ones:,} = {a * b:,}."
    else:
        why = f"{a} × {b} = {a} × {b // 10} × 10 = {a * b // 10:,} × 10 = {a * b:,}."
    return question.format(a=a, b=b), _easy(f"{a * b:,}", why)


def _math_percent(rng: _Rng, held: bool) -> tuple[str, str]:
    p, n = _draw(rng, held, lambda: (rng.choice((5, 10, 15, 20, 25, 30, 40, 60, 75)), 20 * rng.int(2, 48)))
    result = p * n // 100
    question = rng.choice(("What is {p}% of {n}?", "Find {p} percent of {n}.", "How much is {p}% of {n}?"))
    why = f"{p}% means {p}/100, so {p}/100 × {n} = {p * n:,}/100 = {result}."
    return question.format(p=p, n=n), _easy(str(result), why)


def _math_story(rng: _Rng, held: bool) -> tuple[str, str]:
    name = _pick(rng, NAMES, held)
    item = rng.choice(ITEMS)
    a, b = rng.int(20, 90), rng.int(3, 19)
    if rng.below(2):
        question = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} does {name} have left?"
        return question, _easy(f"{a - b} {item}", f"{name} starts with {a} and gives away {b}, so {a} − {b} = {a - b}.")
    question = f"{name} had {a} {item} and then got {b} more. How many {item} does {name} have now?"
    return question, _easy(f"{a + b} {item}", f"{name} had {a} and got {b} more, so {a} + {b} = {a + b}.")


CONVERSIONS = (  # (big unit, small unit, factor)
    ("hours", "minutes", 60),
    ("minutes", "seconds", 60),
    ("kilometres", "metres", 1000),
    ("kilograms", "grams", 1000),
    ("litres", "millilitres", 1000),
    ("days", "hours", 24),
    ("feet", "inches", 12),
    ("weeks", "days", 7),
    ("metres", "centimetres", 100),
)


def _math_convert(rng: _Rng, held: bool) -> tuple[str, str]:
    (big, small, factor), half = _draw(rng, held, lambda: (rng.choice(CONVERSIONS), rng.int(2, 19) / 2))
    amount = _num(Fraction(half).limit_denominator(2))
    result = _num(Fraction(half).limit_denominator(2) * factor)
    question = rng.choice(("How many {s} are in {x} {b}?", "Convert {x} {b} to {s}.", "{x} {b} is how many {s}?"))
    why = f"1 {big[:-1]} is {factor} {small}, so {amount} × {factor} = {result}."
    return question.format(s=small, x=amount, b=big), _easy(f"{result} {small}", why)


def _math_equation(rng: _Rng, held: bool) -> tuple[str, str]:
    a, x, b = _draw(rng, held, lambda: (rng.int(2, 12), rng.int(-9, 20), rng.int(1, 40)))
    c = a * x + b
    question = rng.choice(
        ("Solve for x: {a}x + {b} = {c}", "Find x if {a}x + {b} = {c}.", "What is x when {a}x + {b} = {c}?")
    )
    why = f"Subtract {b} from both sides to get {a}x = {c - b}, then divide by {a}: x = {x}."
    return question.format(a=a, b=b, c=c), _easy(f"x = {x}", why)


PROPER_FRACTIONS = [(a, b) for b in (2, 3, 4, 5, 6, 8, 10, 12) for a in range(1, b) if math.gcd(a, b) == 1]


def _math_fraction(rng: _Rng, held: bool) -> tuple[str, str]:
    (a, b), (c, d) = _draw(rng, held, lambda: (rng.choice(PROPER_FRACTIONS), rng.choice(PROPER_FRACTIONS)))
    total = Fraction(a, b) + Fraction(c, d)
    common = math.lcm(b, d)
    why = f"With the common denominator {common}, {a}/{b} + {c}/{d} = {a * common // b}/{common} + {c * common // d}/{common} = {a * common // b + c * common // d}/{common}"
    answer = _num(total) if total.denominator == 1 else f"{total.numerator}/{total.denominator}"
    why += "." if total.denominator == common else f", which simplifies to {answer}."
    return rng.choice(("What is {a}/{b} + {c}/{d}?", "Add {a}/{b} and {c}/{d}.")).format(a=a, b=b, c=c, d=d), _easy(
        answer, why
    )


def _math_average(rng: _Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, ...]:
        values = [rng.int(4, 60) for _ in range(rng.int(3, 5))]
        values[-1] += (-sum(values)) % len(values)
        return tuple(values)

    values = _draw(rng, held, make)
    listed = ", ".join(map(str, values[:-1])) + f" and {values[-1]}"
    total = sum(values)
    why = f"The sum is {' + '.join(map(str, values))} = {total}, and {total} ÷ {len(values)} = {total // len(values)}."
    return f"What is the average of {listed}?", _easy(str(total // len(values)), why)


SHOP = (("pencils", 35), ("notebooks", 240), ("erasers", 60), ("pens", 125), ("folders", 180), ("rulers", 95))


def _math_change(rng: _Rng, held: bool) -> tuple[str, str]:
    name = _pick(rng, NAMES, held)
    (item1, p1), (item2, p2) = rng.sample(SHOP, 2)
    q1, q2 = rng.int(2, 12), rng.int(2, 6)
    cost1, cost2 = Decimal(q1 * p1) / 100, Decimal(q2 * p2) / 100
    total = cost1 + cost2
    bill = next(b for b in (10, 20, 50, 100) if b > total)
    question = (
        f"A shop sells {item1} at {_money(p1 / 100)} each and {item2} at {_money(p2 / 100)} each. "
        f"{name} buys {q1} {item1} and {q2} {item2} and pays with a ${bill} bill. How much change does {name} get?"
    )
    steps = [
        f"{item1.capitalize()}: {q1} × {_money(p1 / 100)} = {_money(cost1)}.",
        f"{item2.capitalize()}: {q2} × {_money(p2 / 100)} = {_money(cost2)}.",
        f"Total cost: {_money(cost1)} + {_money(cost2)} = {_money(total)}.",
        f"Change: ${bill}.00 − {_money(total)} = {_money(bill - total)}.",
    ]
    return question, _hard(_money(bill - total), steps)


def _speed_pairs() -> list[tuple[int, int, int]]:
    pairs = []
    for v1 in range(30, 121, 10):
        for v2 in range(30, 121, 10):
            if v1 != v2 and (2 * v1 * v2) % (v1 + v2) == 0:
                pairs.append((v1, v2, math.lcm(v1, v2)))
    return pairs


def _math_round_trip(rng: _Rng, held: bool) -> tuple[str, str]:
    v1, v2, d = _pick(rng, _speed_pairs(), held)
    place = _pick(rng, CITIES, held)
    t1, t2 = Fraction(d, v1), Fraction(d, v2)
    mean = Fraction(2 * d) / (t1 + t2)
    question = (
        f"A driver goes {d} km to {place} at {v1} km/h and comes back the same way at {v2} km/h. "
        "What is the average speed for the whole round trip?"
    )
    steps = [
        f"Time there: {d} ÷ {v1} = {_num(t1)} h.",
        f"Time back: {d} ÷ {v2} = {_num(t2)} h.",
        f"Total distance: 2 × {d} = {2 * d} km; total time: {_num(t1)} + {_num(t2)} = {_num(t1 + t2)} h.",
        f"Average speed = total distance ÷ total time = {2 * d} ÷ {_num(t1 + t2)} = {_num(mean)} km/h.",
        f"It is not the plain average of the speeds ({_num(Fraction(v1 + v2, 2))} km/h): more time is spent at the lower speed.",
    ]
    return question, _hard(f"{_num(mean)} km/h", steps)


def _math_tickets(rng: _Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, int, int, int]:
        n = rng.int(20, 60)
        return rng.int(8, 15), rng.int(3, 7), n, rng.int(1, n - 1)

    adult, child, n, n_adult = _draw(rng, held, make)
    total = adult * n_adult + child * (n - n_adult)
    question = (
        f"A museum sold {n} tickets for ${total:,} in total. Adult tickets cost ${adult} and child tickets cost "
        f"${child}. How many adult tickets were sold?"
    )
    steps = [
        f"Let a be the adult tickets; then {n} − a are child tickets.",
        f"Revenue: {adult}a + {child}({n} − a) = {total}.",
        f"Expand: {adult}a + {child * n} − {child}a = {total}, so {adult - child}a = {total - child * n}.",
        f"Divide: a = {total - child * n} ÷ {adult - child} = {n_adult}.",
        f"Check: {n_adult} × ${adult} + {n - n_adult} × ${child} = ${adult * n_adult} + ${child * (n - n_adult)} = ${total}.",
    ]
    return question, _hard(f"{n_adult} adult tickets", steps)


def _math_interest(rng: _Rng, held: bool) -> tuple[str, str]:
    principal, rate, years = _draw(
        rng, held, lambda: (1000 * rng.int(1, 20), rng.choice((2, 3, 4, 5, 6, 8)), rng.int(2, 3))
    )
    question = (
        f"You deposit {_money(principal)} at {rate}% interest per year, compounded yearly. "
        f"How much is in the account after {years} years?"
    )
    amount, steps = Decimal(principal), []
    for year in range(1, years + 1):
        new = (amount * (100 + rate) / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
        steps.append(f"Year {year}: {_money(amount)} × {1 + Decimal(rate) / 100} = {_money(new)}.")
        amount = new
    steps.append(f"Interest earned: {_money(amount)} − {_money(principal)} = {_money(amount - principal)}.")
    return question, _hard(_money(amount), steps)


def _math_path(rng: _Rng, held: bool) -> tuple[str, str]:
    length, width, path = _draw(rng, held, lambda: (rng.int(6, 30), rng.int(4, 20), rng.int(1, 3)))
    outer_l, outer_w = length + 2 * path, width + 2 * path
    area = outer_l * outer_w - length * width
    question = (
        f"A rectangular garden is {length} m long and {width} m wide. A path {path} m wide runs all around the "
        "outside of it. What is the area of the path?"
    )
    steps = [
        f"The path adds {path} m on each side, so the outer rectangle is {length} + 2 × {path} = {outer_l} m by {width} + 2 × {path} = {outer_w} m.",
        f"Outer area: {outer_l} × {outer_w} = {outer_l * outer_w} m².",
        f"Garden area: {length} × {width} = {length * width} m².",
        f"Path area: {outer_l * outer_w} − {length * width} = {area} m².",
    ]
    return question, _hard(f"{area} m²", steps)


def _math_pipes(rng: _Rng, held: bool) -> tuple[str, str]:
    pairs = [(a, b) for a in range(2, 13) for b in range(a + 1, 25) if (60 * a * b) % (a + b) == 0]
    a, b = _pick(rng, pairs, held)
    together = Fraction(a * b, a + b)
    minutes = int(together * 60)
    hours_text = f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} hours"
    question = (
        f"Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. How long do they take to fill it together?"
    )
    steps = [
        f"Pipe A fills 1/{a} of the tank per hour and pipe B fills 1/{b}.",
        f"Together: 1/{a} + 1/{b} = {b + a}/{a * b} = {_frac(Fraction(a + b, a * b))} of the tank per hour.",
        f"Time = 1 ÷ {_frac(Fraction(a + b, a * b))} = {_frac(together)} hours = {minutes} minutes.",
    ]
    return question, _hard(hours_text, steps)


def _frac(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def _math_series(rng: _Rng, held: bool) -> tuple[str, str]:
    k, n = _draw(rng, held, lambda: (rng.int(2, 9), rng.int(10, 60)))
    last = k * n
    total = k * n * (n + 1) // 2
    question = f"What is the sum of all multiples of {k} from {k} to {last}?"
    steps = [
        f"The numbers are {k} × 1, {k} × 2, …, {k} × {n}: there are {n} of them.",
        f"Their sum is {k} × (1 + 2 + … + {n}).",
        f"1 + 2 + … + {n} = {n} × {n + 1} ÷ 2 = {n * (n + 1) // 2}.",
        f"So the sum is {k} × {n * (n + 1) // 2} = {total:,}.",
    ]
    return question, _hard(f"{total:,}", steps)


MATH = (
    [_math_multiply, _math_percent, _math_story, _math_convert, _math_equation, _math_fraction, _math_average],
    [_math_change, _math_round_trip, _math_tickets, _math_interest, _math_path, _math_pipes, _math_series],
)


# --- coding ---------------------------------------------------------------------------------------

WORDS = (
    "banana", "python", "keyboard", "elephant", "mississippi", "notebook", "sunflower", "galaxy", "computer",
    "umbrella", "pineapple", "strawberry", "volcano", "butterfly", "lighthouse", "teapot", "avocado", "marathon",
)  # fmt: skip
SENTENCES = (
    "the quick brown fox jumps over the lazy dog",
    "to be or not to be",
    "practice makes perfect",
    "a journey of a thousand miles begins with a single step",
    "all that glitters is not gold",
    "knowledge is power",
    "better late than never",
    "actions speak louder than words",
)


def _expression(rng: _Rng, held: bool) -> tuple[str, str]:
    """A Python expression whose value is computed by evaluating it."""
    kind, params = _draw(rng, held, lambda: _expression_params(rng))
    expr, why = _EXPRESSIONS[kind](*params)
    value = eval(
        expr,
        {
            "__builtins__": {
                "sum": sum,
                "range": range,
                "len": len,
                "sorted": sorted,
                "divmod": divmod,
                "max": max,
                "min": min,
            }
        },
    )
    question = rng.choice(
        (
            "What does this Python expression evaluate to?\n`{e}`",
            "In Python, what is the value of `{e}`?",
            "What does Python print for `print(repr({e}))`?",
        )
    )
    return question.format(e=expr), _easy(f"`{value!r}`", why.format(value=repr(value)))


def _expression_params(rng: _Rng) -> tuple[str, tuple]:
    kind = rng.choice(sorted(_EXPRESSIONS))
    word, sentence = rng.choice(WORDS), rng.choice(SENTENCES)
    numbers = tuple(rng.int(-9, 30) for _ in range(rng.int(4, 6)))
    params = {
        "slice": (word, rng.int(0, 3), rng.int(4, len(word))),
        "range_sum": (rng.int(0, 10), rng.int(11, 30)),
        "divmod": (rng.int(20, 200), rng.int(3, 12)),
        "comprehension": (rng.int(2, 5), rng.int(4, 8)),
        "filter": (rng.int(2, 4), rng.int(8, 16)),
        "split": (sentence,),
        "count": (word, rng.choice(sorted(set(word)))),
        "reverse": (word,),
        "sorted": (numbers,),
        "spread": (numbers,),
        "division": (rng.int(7, 60), rng.choice((2, 4, 5, 8))),
    }[kind]
    return kind, params


def _x_slice(word: str, i: int, j: int) -> tuple[str, str]:
    return (
        f'"{word}"[{i}:{j}]',
        f"Slicing takes the characters from index {i} up to, but not including, index {j}, giving {{value}}.",
    )


def _x_range_sum(a: int, b: int) -> tuple[str, str]:
    return f"sum(range({a}, {b}))", f"range({a}, {b}) stops before {b}, so this adds {a} + … + {b - 1} = {{value}}."


def _x_divmod(a: int, b: int) -> tuple[str, str]:
    q, r = divmod(a, b)
    return f"divmod({a}, {b})", f"{a} = {b} × {q} + {r}, so divmod returns the quotient and the remainder as a tuple."


def _x_comprehension(k: int, n: int) -> tuple[str, str]:
    return f"[x * {k} for x in range({n})]", f"range({n}) yields 0 to {n - 1} and each is multiplied by {k}."


def _x_filter(k: int, n: int) -> tuple[str, str]:
    return (
        f"[x for x in range({n}) if x % {k} == 0]",
        f"It keeps the numbers from 0 to {n - 1} that are divisible by {k}.",
    )


def _x_split(sentence: str) -> tuple[str, str]:
    return (
        f'len("{sentence}".split())',
        "split() with no argument splits on runs of whitespace, so the result counts the words.",
    )


def _x_count(word: str, letter: str) -> tuple[str, str]:
    return f'"{word}".count("{letter}")', f'count returns how many non-overlapping times "{letter}" occurs in "{word}".'


def _x_reverse(word: str) -> tuple[str, str]:
    return f'"{word}"[::-1]', "A slice with step -1 walks the string backwards, so it returns the reversed string."


def _x_sorted(numbers: tuple[int, ...]) -> tuple[str, str]:
    return f"sorted({list(numbers)})", "sorted returns a new list in ascending order and leaves the original unchanged."


def _x_spread(numbers: tuple[int, ...]) -> tuple[str, str]:
    return (
        f"max({list(numbers)}) - min({list(numbers)})",
        f"The largest value is {max(numbers)} and the smallest is {min(numbers)}, and their difference is {{value}}.",
    )


def _x_division(a: int, b: int) -> tuple[str, str]:
    return (
        f"{a} / {b}",
        f"In Python 3, / is true division and always returns a float; {a} // {b} would give the floor, {a // b}.",
    )


_EXPRESSIONS: dict[str, Callable[..., tuple[str, str]]] = {
    "slice": _x_slice,
    "range_sum": _x_range_sum,
    "divmod": _x_divmod,
    "comprehension": _x_comprehension,
    "filter": _x_filter,
    "split": _x_split,
    "count": _x_count,
    "reverse": _x_reverse,
    "sorted": _x_sorted,
    "spread": _x_spread,
    "division": _x_division,
}

LIST_NAMES = ("items", "names", "values", "words", "scores", "records", "numbers", "lines", "tokens", "prices")
DICT_NAMES = ("counts", "ages", "config", "stock", "totals", "settings", "inventory", "lookup")
#: (key, kind of variable, question, answer, why) — `{v}`/`{w}` are variable names
IDIOMS = (
    ("reverse", "list", "How do I reverse the list `{v}` in Python?", "`{v}[::-1]` for a reversed copy, or `{v}.reverse()` to reverse it in place.", "A slice with step -1 walks the list backwards; `.reverse()` changes the list itself and returns None."),
    ("dedupe", "list", "How do I remove duplicates from the list `{v}` but keep the original order?", "`list(dict.fromkeys({v}))`", "Dict keys are unique and keep insertion order, so the first occurrence of each item stays where it was."),
    ("counter", "list", "What is the easiest way to count how often each item occurs in `{v}`?", "`collections.Counter({v})`", "Counter maps every item to its number of occurrences, e.g. `Counter('aab') == {{'a': 2, 'b': 1}}`."),
    ("sort_by_value", "dict", "How do I sort the dict `{v}` by its values?", "`sorted({v}.items(), key=lambda kv: kv[1])`", "items() gives (key, value) pairs and the key function sorts them by the value; add `reverse=True` for largest first."),
    ("merge", "dict", "How do I merge the dicts `{v}` and `{w}` into a new one?", "`{v} | {w}` (Python 3.9+), or `{{**{v}, **{w}}}`", "Both build a new dict; where a key is in both, the value from `{w}` wins."),
    ("get_default", "dict", "How do I read `key` from the dict `{v}` without a KeyError if it is missing?", "`{v}.get(key, default)`", "get returns `default` (None if you leave it out) instead of raising KeyError for a missing key."),
    ("flatten", "list", "How do I flatten the list of lists `{v}` into one list?", "`[x for sub in {v} for x in sub]`", "The comprehension loops over each inner list and then over its items, keeping their order."),
    ("swap", "list", "How do I swap the values of the variables `{v}` and `{w}` in Python?", "`{v}, {w} = {w}, {v}`", "The right side builds a tuple of the old values first, then unpacks it into the two names."),
    ("join", "list", "How do I join the strings in `{v}` with a comma and a space?", "`', '.join({v})`", "join is a method of the separator string; every item must already be a string."),
    ("last", "list", "How do I get the last element of the list `{v}`?", "`{v}[-1]`", "Negative indices count from the end, so -1 is the last item; it raises IndexError on an empty list."),
    ("copy", "list", "How do I make a copy of the list `{v}` so that changing the copy leaves `{v}` alone?", "`{v}.copy()` (or `{v}[:]`)", "Both create a new list with the same items; use `copy.deepcopy({v})` when the items are lists themselves."),
    ("empty", "list", "What is the Pythonic way to check whether the list `{v}` is empty?", "`if not {v}:`", "Empty lists are falsy, so `not {v}` is True exactly when it has no items."),
    ("enumerate", "list", "How do I loop over `{v}` and also get the index of each item?", "`for i, item in enumerate({v}):`", "enumerate yields (index, item) pairs starting at 0; pass `start=1` to count from 1."),
    ("zip", "list", "How do I loop over the lists `{v}` and `{w}` side by side?", "`for a, b in zip({v}, {w}):`", "zip pairs items by position and stops at the end of the shorter list."),
    ("longest", "list", "How do I find the longest string in the list `{v}`?", "`max({v}, key=len)`", "max compares the items by their length and returns the first longest one."),
    ("sort_len", "list", "How do I sort the strings in `{v}` by length?", "`sorted({v}, key=len)`", "The key function makes sorted compare lengths; ties keep their original order because the sort is stable."),
    ("invert", "dict", "How do I swap the keys and values of the dict `{v}`?", "`{{value: key for key, value in {v}.items()}}`", "The comprehension builds a new dict from each pair reversed; if two keys share a value, the last one wins."),
    ("remove", "list", "How do I remove the first occurrence of `x` from the list `{v}`?", "`{v}.remove(x)`", "remove deletes the first item equal to x and raises ValueError if there is none."),
    ("keys_sorted", "dict", "How do I loop over the dict `{v}` in key order?", "`for key in sorted({v}):`", "Iterating a dict yields its keys, and sorted returns them as an ordered list."),
    ("index_max", "list", "How do I find the position of the largest number in `{v}`?", "`{v}.index(max({v}))`", "max finds the largest value and index returns the position of its first occurrence."),
    ("contains_key", "dict", "How do I check whether the dict `{v}` has the key `'name'`?", "`'name' in {v}`", "The in operator on a dict tests its keys, in constant time on average."),
    ("total", "list", "How do I add up all the numbers in the list `{v}`?", "`sum({v})`", "sum adds the items starting from 0; `sum({v}, start)` begins from another value."),
)  # fmt: skip


def _idiom(rng: _Rng, held: bool) -> tuple[str, str]:
    _, kind, question, answer, why = _pick(rng, IDIOMS, held, key=lambda idiom: idiom[0])
    v, w = rng.sample(LIST_NAMES if kind == "list" else DICT_NAMES, 2)
    fill = {"v": v, "w": w}
    return question.format(**fill), _easy(answer.format(**fill), why.format(**fill))


#: (key, signature, task description, code, steps, checks as (call, expected))
FUNCTIONS = (
    (
        "is_prime", "is_prime(n)", "returns True when n is a prime number",
        """def is_prime(n: int) -> bool:
    if n < 2:
        return False
    d = 2
    while d * d <= n:
        if n % d == 0:
            return False
        d += 1
    return True""",
        ["Numbers below 2 are not prime.", "A composite n has a divisor no larger than √n, so checking d while d × d ≤ n is enough.", "Any divisor found means n is not prime; otherwise it is."],
        [("is_prime(1)", False), ("is_prime(2)", True), ("is_prime(97)", True), ("is_prime(91)", False)],
    ),
    (
        "digit_sum", "digit_sum(n)", "returns the sum of the decimal digits of the integer n (also for negative n)",
        """def digit_sum(n: int) -> int:
    n = abs(n)
    total = 0
    while n:
        total += n % 10
        n //= 10
    return total""",
        ["Take the absolute value so negative numbers work.", "n % 10 is the last digit; add it to the total.", "n //= 10 drops that digit; stop when n reaches 0."],
        [("digit_sum(0)", 0), ("digit_sum(1234)", 10), ("digit_sum(-509)", 14)],
    ),
    (
        "run_length", "run_length(text)", "compresses runs of repeated characters, e.g. 'aaabcc' becomes 'a3b1c2'",
        """def run_length(text: str) -> str:
    parts = []
    i = 0
    while i < len(text):
        j = i
        while j < len(text) and text[j] == text[i]:
            j += 1
        parts.append(f"{text[i]}{j - i}")
        i = j
    return "".join(parts)""",
        ["Walk the string with i at the start of a run.", "Advance j while the characters equal text[i]; j − i is the run length.", "Append the character and its count, continue from j, and join the parts at the end."],
        [("run_length('aaabcc')", "a3b1c2"), ("run_length('')", ""), ("run_length('x')", "x1")],
    ),
    (
        "is_balanced", "is_balanced(s)", "checks whether the brackets (), [] and {} in s are balanced and properly nested",
        """def is_balanced(s: str) -> bool:
    pairs = {")": "(", "]": "[", "}": "{"}
    stack = []
    for ch in s:
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack""",
        ["Push every opening bracket on a stack.", "A closing bracket must match the most recent unmatched opening one, so pop and compare.", "At the end the stack must be empty: every opening bracket was closed."],
        [("is_balanced('([]{})')", True), ("is_balanced('([)]')", False), ("is_balanced('((')", False), ("is_balanced('a(b)c')", True)],
    ),
    (
        "merge_sorted", "merge_sorted(a, b)", "merges two sorted lists into one sorted list in linear time",
        """def merge_sorted(a: list, b: list) -> list:
    merged, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            merged.append(a[i])
            i += 1
        else:
            merged.append(b[j])
            j += 1
    return merged + a[i:] + b[j:]""",
        ["Keep one index into each list.", "Repeatedly append the smaller front element and advance that index.", "When one list runs out, the rest of the other is already sorted, so append it."],
        [("merge_sorted([1, 4, 9], [2, 3, 10])", [1, 2, 3, 4, 9, 10]), ("merge_sorted([], [5])", [5])],
    ),
    (
        "binary_search", "binary_search(xs, target)", "returns the index of target in the sorted list xs, or -1 if it is absent",
        """def binary_search(xs: list, target) -> int:
    lo, hi = 0, len(xs) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if xs[mid] == target:
            return mid
        if xs[mid] < target:
            lo = mid + 1
        else:
            hi = mid - 1
    return -1""",
        ["Search the window [lo, hi], starting with the whole list.", "Compare the middle element: if it is too small the target can only be to the right, otherwise to the left.", "Each step halves the window, so it takes O(log n) steps; an empty window means the target is absent."],
        [("binary_search([1, 3, 5, 7, 9], 7)", 3), ("binary_search([1, 3, 5], 4)", -1), ("binary_search([], 1)", -1)],
    ),
    (
        "second_largest", "second_largest(xs)", "returns the second largest distinct value in xs, or None if there is none",
        """def second_largest(xs: list):
    distinct = sorted(set(xs), reverse=True)
    return distinct[1] if len(distinct) > 1 else None""",
        ["set(xs) removes repeated values, so [5, 5, 3] gives 3 rather than 5.", "Sorting the distinct values in descending order puts the answer at index 1.", "With fewer than two distinct values there is no second largest, so return None."],
        [("second_largest([4, 1, 4, 3])", 3), ("second_largest([7, 7])", None), ("second_largest([2, 9])", 2)],
    ),
    (
        "chunk", "chunk(xs, size)", "splits the list xs into consecutive pieces of length size (the last one may be shorter)",
        """def chunk(xs: list, size: int) -> list:
    if size < 1:
        raise ValueError("size must be at least 1")
    return [xs[i : i + size] for i in range(0, len(xs), size)]""",
        ["Reject sizes below 1, which would loop forever or make no sense.", "range(0, len(xs), size) gives the start of each piece.", "Slicing past the end is safe in Python, so the last piece is simply shorter."],
        [("chunk([1, 2, 3, 4, 5], 2)", [[1, 2], [3, 4], [5]]), ("chunk([], 3)", [])],
    ),
    (
        "top_words", "top_words(text, k)", "returns the k most common words of text (lower-cased) with their counts",
        """from collections import Counter


def top_words(text: str, k: int) -> list:
    words = text.lower().split()
    return Counter(words).most_common(k)""",
        ["Lower-case the text so 'The' and 'the' count as one word.", "split() breaks it into words on whitespace.", "Counter counts them and most_common(k) returns the k most frequent (word, count) pairs."],
        [("top_words('the cat and the hat', 1)", [("the", 2)]), ("top_words('a b a', 2)", [("a", 2), ("b", 1)])],
    ),
    (
        "roman_to_int", "roman_to_int(s)", "converts a Roman numeral such as 'MCMXCIV' to an integer",
        """def roman_to_int(s: str) -> int:
    values = {"I": 1, "V": 5, "X": 10, "L": 50, "C": 100, "D": 500, "M": 1000}
    total = 0
    for i, ch in enumerate(s):
        value = values[ch]
        if i + 1 < len(s) and values[s[i + 1]] > value:
            total -= value
        else:
            total += value
    return total""",
        ["Map each numeral to its value.", "A numeral smaller than the one after it is subtracted (the I in IV), otherwise added.", "For 'MCMXCIV': 1000 − 100 + 1000 − 10 + 100 − 1 + 5 = 1994."],
        [("roman_to_int('MCMXCIV')", 1994), ("roman_to_int('XLII')", 42), ("roman_to_int('III')", 3)],
    ),
    (
        "rotate", "rotate(xs, k)", "rotates the list xs to the right by k positions",
        """def rotate(xs: list, k: int) -> list:
    if not xs:
        return []
    k %= len(xs)
    return xs[-k:] + xs[:-k] if k else list(xs)""",
        ["An empty list stays empty.", "k %= len(xs) handles k larger than the list (and negative k).", "The last k items move to the front: xs[-k:] + xs[:-k]; k = 0 returns a copy unchanged."],
        [("rotate([1, 2, 3, 4], 1)", [4, 1, 2, 3]), ("rotate([1, 2, 3], 5)", [2, 3, 1]), ("rotate([], 2)", [])],
    ),
    (
        "running_mean", "running_mean(xs)", "returns the list of averages of the first 1, 2, 3, … numbers of xs",
        """def running_mean(xs: list) -> list:
    means, total = [], 0
    for i, x in enumerate(xs, start=1):
        total += x
        means.append(total / i)
    return means""",
        ["Keep a running total instead of re-adding the prefix each time (linear, not quadratic).", "After the i-th number the mean is total / i.", "enumerate(xs, start=1) supplies i directly."],
        [("running_mean([2, 4, 6])", [2.0, 3.0, 4.0]), ("running_mean([])", [])],
    ),
    (
        "count_vowels", "count_vowels(text)", "counts the vowels (a, e, i, o, u, either case) in text",
        """def count_vowels(text: str) -> int:
    return sum(1 for ch in text.lower() if ch in "aeiou")""",
        ["Lower-case the text so upper-case vowels count too.", "The generator yields 1 for every character that is a vowel.", "sum adds those ones up."],
        [("count_vowels('Hello World')", 3), ("count_vowels('xyz')", 0)],
    ),
    (
        "is_anagram", "is_anagram(a, b)", "checks whether two words are anagrams of each other, ignoring case",
        """def is_anagram(a: str, b: str) -> bool:
    return sorted(a.lower()) == sorted(b.lower())""",
        ["Anagrams use exactly the same letters the same number of times.", "Sorting the letters of both words gives equal lists exactly in that case.", "Lower-casing first makes 'Listen' and 'Silent' match."],
        [("is_anagram('Listen', 'Silent')", True), ("is_anagram('abc', 'abd')", False)],
    ),
    (
        "gcd", "gcd(a, b)", "computes the greatest common divisor of two non-negative integers with Euclid's algorithm",
        """def gcd(a: int, b: int) -> int:
    while b:
        a, b = b, a % b
    return a""",
        ["Euclid: gcd(a, b) = gcd(b, a mod b), because any common divisor of a and b also divides a mod b.", "Repeat until b is 0.", "Then a is the greatest common divisor; gcd(48, 18) goes 48, 18 → 18, 12 → 12, 6 → 6, 0."],
        [("gcd(48, 18)", 6), ("gcd(7, 0)", 7), ("gcd(17, 5)", 1)],
    ),
    (
        "flatten", "flatten(nested)", "flattens arbitrarily nested lists into one flat list",
        """def flatten(nested: list) -> list:
    flat = []
    for item in nested:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat""",
        ["Go through the items in order.", "A list item is flattened recursively and its items are added.", "Anything else is appended as it is."],
        [("flatten([1, [2, [3, 4]], 5])", [1, 2, 3, 4, 5]), ("flatten([])", [])],
    ),
    (
        "caesar", "caesar(text, shift)", "shifts every letter of text by shift places in the alphabet, keeping case and leaving other characters unchanged",
        """def caesar(text: str, shift: int) -> str:
    out = []
    for ch in text:
        if ch.isascii() and ch.isalpha():
            base = ord("A") if ch.isupper() else ord("a")
            out.append(chr(base + (ord(ch) - base + shift) % 26))
        else:
            out.append(ch)
    return "".join(out)""",
        ["Only ASCII letters are shifted; spaces, digits and punctuation pass through.", "Work relative to 'A' or 'a' so the case is kept.", "% 26 wraps around the alphabet, so 'z' shifted by 1 becomes 'a' and negative shifts decode."],
        [("caesar('Hello, World!', 3)", "Khoor, Zruog!"), ("caesar('xyz', 2)", "zab"), ("caesar(caesar('abc', 5), -5)", "abc")],
    ),
    (
        "fizzbuzz", "fizzbuzz(n)", "returns the FizzBuzz strings for 1 to n: 'Fizz' for multiples of 3, 'Buzz' for multiples of 5, 'FizzBuzz' for both, else the number",
        """def fizzbuzz(n: int) -> list:
    out = []
    for i in range(1, n + 1):
        word = ("Fizz" if i % 3 == 0 else "") + ("Buzz" if i % 5 == 0 else "")
        out.append(word or str(i))
    return out""",
        ["Loop over 1 to n inclusive.", "Build the word from the two tests, so multiples of 15 get 'FizzBuzz' without a third case.", "An empty word means neither test matched, so use the number itself."],
        [("fizzbuzz(5)", ["1", "2", "Fizz", "4", "Buzz"]), ("fizzbuzz(15)[-1]", "FizzBuzz")],
    ),
)  # fmt: skip


def _function(rng: _Rng, held: bool) -> tuple[str, str]:
    _, signature, task, code, steps, _ = _pick(rng, FUNCTIONS, held, key=lambda f: f[0])
    question = rng.choice(
        (
            "Write a Python function `{s}` that {t}.",
            "Implement `{s}` in Python: it {t}. Explain it briefly.",
            "I need a Python function `{s}` that {t}. Keep it short.",
        )
    )
    body = f"```python\n{code}\n```\n"
    return question.format(s=signature, t=task), _hard(f"`{signature}` below {task}.", steps, body=body)


CODING = ([_expression, _idiom], [_function])


# --- science --------------------------------------------------------------------------------------

#: (name, symbol, atomic number, note on the symbol or None)
ELEMENTS = (
    ("hydrogen", "H", 1, None), ("helium", "He", 2, None), ("lithium", "Li", 3, None), ("carbon", "C", 6, None),
    ("nitrogen", "N", 7, None), ("oxygen", "O", 8, None), ("fluorine", "F", 9, None), ("neon", "Ne", 10, None),
    ("sodium", "Na", 11, "from its Latin name natrium"), ("magnesium", "Mg", 12, None), ("aluminium", "Al", 13, None),
    ("silicon", "Si", 14, None), ("phosphorus", "P", 15, None), ("sulfur", "S", 16, None), ("chlorine", "Cl", 17, None),
    ("argon", "Ar", 18, None), ("potassium", "K", 19, "from its Latin name kalium"), ("calcium", "Ca", 20, None),
    ("iron", "Fe", 26, "from its Latin name ferrum"), ("copper", "Cu", 29, "from its Latin name cuprum"),
    ("zinc", "Zn", 30, None), ("silver", "Ag", 47, "from its Latin name argentum"), ("tin", "Sn", 50, "from its Latin name stannum"),
    ("iodine", "I", 53, None), ("tungsten", "W", 74, "from its other name, wolfram"), ("platinum", "Pt", 78, None),
    ("gold", "Au", 79, "from its Latin name aurum"), ("mercury", "Hg", 80, "from its Latin name hydrargyrum"),
    ("lead", "Pb", 82, "from its Latin name plumbum"), ("uranium", "U", 92, None), ("nickel", "Ni", 28, None),
    ("cobalt", "Co", 27, None), ("titanium", "Ti", 22, None), ("boron", "B", 5, None), ("beryllium", "Be", 4, None),
)  # fmt: skip
#: (key, question, answer, why)
SCIENCE_FACTS = (
    ("boil", "At what temperature does pure water boil at sea level?", "100 °C (212 °F)", "At standard sea-level pressure, 101.325 kPa, the vapour pressure of water reaches the air pressure at 100 °C."),
    ("freeze", "At what temperature does pure water freeze?", "0 °C (32 °F)", "At normal atmospheric pressure liquid water turns to ice at 0 °C, which is also the Celsius scale's reference point."),
    ("photosynthesis_gas", "Which gas do plants take in from the air for photosynthesis?", "Carbon dioxide (CO₂)", "Plants combine carbon dioxide and water, using light energy, into glucose and release oxygen."),
    ("mitochondria", "Which part of the cell releases most of its energy from food?", "The mitochondria", "Cellular respiration in the mitochondria turns glucose and oxygen into ATP, the cell's energy currency."),
    ("bones", "How many bones does an adult human skeleton have?", "206", "Babies are born with around 300 bones or cartilage pieces; many fuse while growing, leaving 206 in adults."),
    ("light_speed", "How fast does light travel in a vacuum?", "About 300,000 km/s (299,792,458 m/s)", "The speed of light in a vacuum is a fixed constant: exactly 299,792,458 metres per second."),
    ("largest_planet", "What is the largest planet in the Solar System?", "Jupiter", "Jupiter's mass is more than twice that of all the other planets combined."),
    ("electron", "Which particle in an atom carries a negative charge?", "The electron", "Protons are positive, neutrons have no charge, and electrons, outside the nucleus, are negative."),
    ("salt", "What is the chemical formula of table salt?", "NaCl", "Table salt is sodium chloride: one sodium ion for every chloride ion."),
    ("orbit_force", "Which force keeps the planets in orbit around the Sun?", "Gravity", "The Sun's gravitational pull bends each planet's path into an orbit instead of a straight line."),
    ("white_cells", "Which blood cells fight infections?", "White blood cells", "White blood cells such as lymphocytes and neutrophils find and destroy germs; red cells carry oxygen."),
    ("ph_water", "What is the pH of pure water at 25 °C?", "7", "Pure water has equal amounts of H⁺ and OH⁻ ions, which makes it neutral, pH 7, at 25 °C."),
    ("ozone", "Which layer of the atmosphere absorbs most of the Sun's ultraviolet light?", "The ozone layer", "Ozone in the stratosphere absorbs most UV-B and UV-C radiation before it reaches the ground."),
    ("heart", "Which organ pumps blood around the human body?", "The heart", "The heart's muscular chambers contract about 60 to 100 times a minute at rest to push blood through the vessels."),
    ("nearest_star", "What is the closest star to Earth?", "The Sun", "The Sun is about 150 million km away; the next closest star, Proxima Centauri, is about 4.2 light-years away."),
    ("ohm", "What is the SI unit of electrical resistance?", "The ohm (Ω)", "One ohm is the resistance that lets one ampere flow under one volt, since R = V / I."),
    ("newton", "What is the SI unit of force?", "The newton (N)", "One newton accelerates one kilogram by one metre per second squared: 1 N = 1 kg·m/s²."),
    ("watt", "What is the SI unit of power?", "The watt (W)", "One watt is one joule of energy per second."),
    ("igneous", "What kind of rock forms when lava cools and hardens?", "Igneous rock", "Igneous rocks such as basalt form from cooled molten rock; sedimentary and metamorphic rocks form in other ways."),
    ("nitrogen_air", "Which gas makes up most of Earth's atmosphere?", "Nitrogen", "Dry air is about 78% nitrogen, 21% oxygen and about 1% argon, with a little carbon dioxide."),
    ("red_planet", "Which planet is known as the Red Planet?", "Mars", "Iron oxide, that is rust, in the dust on Mars's surface gives it a reddish colour."),
    ("diamond", "What element are diamonds made of?", "Carbon", "A diamond is carbon atoms bonded in a rigid three-dimensional lattice, which makes it very hard."),
    ("sound_vacuum", "Can sound travel through a vacuum?", "No", "Sound is a vibration passed from particle to particle, so it needs a medium such as air, water or a solid."),
    ("chlorophyll", "What pigment makes plant leaves green?", "Chlorophyll", "Chlorophyll absorbs red and blue light for photosynthesis and reflects green light."),
    ("insulin", "Which organ produces insulin?", "The pancreas", "Beta cells in the pancreas release insulin, which lets cells take up glucose from the blood."),
    ("absolute_zero", "What is absolute zero in degrees Celsius?", "−273.15 °C", "Absolute zero, 0 K, is the lowest possible temperature, and the kelvin scale is offset from Celsius by 273.15."),
    ("dna", "What does DNA stand for?", "Deoxyribonucleic acid", "DNA is a nucleic acid whose sugar, deoxyribose, lacks one oxygen atom compared with the ribose of RNA."),
    ("mercury_closest", "Which planet is closest to the Sun?", "Mercury", "Mercury orbits the Sun at about 58 million km on average, closer than any other planet."),
)  # fmt: skip


def _element(rng: _Rng, held: bool) -> tuple[str, str]:
    name, symbol, number, note = _pick(rng, ELEMENTS, held, key=lambda e: e[0])
    origin = f", {note}" if note else ""
    if rng.below(2):
        question = rng.choice(
            ("What is the chemical symbol for {n}?", "Which symbol stands for {n} in the periodic table?")
        )
        why = f"{name.capitalize()} has atomic number {number}, and its symbol is {symbol}{origin}."
        return question.format(n=name), _easy(symbol, why)
    question = rng.choice(("Which element has atomic number {z}?", "Which element has {z} protons in its nucleus?"))
    why = f"The atomic number counts protons; the element with {number} is {name} ({symbol})."
    return question.format(z=number), _easy(name.capitalize(), why)


def _science_fact(rng: _Rng, held: bool) -> tuple[str, str]:
    _, question, answer, why = _pick(rng, SCIENCE_FACTS, held, key=lambda f: f[0])
    return question, _easy(answer, why)


def _physics(rng: _Rng, held: bool) -> tuple[str, str]:
    kind, a, b = _draw(
        rng, held, lambda: (rng.choice(("speed", "force", "ohm", "density", "weight")), rng.int(2, 40), rng.int(2, 12))
    )
    if kind == "speed":
        d = a * b * 5
        return (
            f"A cyclist covers {d} km in {b} hours at a steady pace. What is the cyclist's speed?",
            _easy(
                f"{_num(Fraction(d, b))} km/h",
                f"Speed = distance ÷ time = {d} km ÷ {b} h = {_num(Fraction(d, b))} km/h.",
            ),
        )
    if kind == "force":
        return (
            f"What force is needed to accelerate a {a} kg mass at {b} m/s²?",
            _easy(f"{a * b} N", f"Newton's second law: F = m × a = {a} kg × {b} m/s² = {a * b} N."),
        )
    if kind == "ohm":
        return (
            f"A current of {b} A flows through a {a} Ω resistor. What is the voltage across it?",
            _easy(f"{a * b} V", f"Ohm's law: V = I × R = {b} A × {a} Ω = {a * b} V."),
        )
    if kind == "density":
        mass = a * b * 10
        return (
            f"A block has a mass of {mass} g and a volume of {b * 10} cm³. What is its density?",
            _easy(
                f"{_num(Fraction(mass, b * 10))} g/cm³",
                f"Density = mass ÷ volume = {mass} g ÷ {b * 10} cm³ = {_num(Fraction(mass, b * 10))} g/cm³.",
            ),
        )
    weight = Fraction(a * 98, 10)
    return (
        f"What is the weight on Earth of an object with a mass of {a} kg? Use g = 9.8 m/s².",
        _easy(f"{_num(weight)} N", f"Weight = m × g = {a} kg × 9.8 m/s² = {_num(weight)} N."),
    )


#: (key, question, answer, steps)
EXPLANATIONS = (
    ("sky", "Why is the sky blue during the day?", "Air molecules scatter blue sunlight much more than red light, so blue light reaches our eyes from every direction of the sky.",
     ["Sunlight contains all visible colours.", "Molecules of nitrogen and oxygen are much smaller than the wavelength of light, so they scatter it by Rayleigh scattering, which grows as 1/λ⁴.", "Blue light has a shorter wavelength than red, so it is scattered several times more strongly.", "The scattered blue light comes at us from all over the sky; violet is scattered even more, but sunlight has less of it and our eyes are less sensitive to it.", "At sunset the light crosses much more air, most blue is scattered away before it reaches us, and the sky near the Sun looks red and orange."]),
    ("seasons", "What causes the seasons on Earth?", "The tilt of Earth's axis, about 23.4°, not the distance to the Sun.",
     ["Earth's axis is tilted about 23.4° relative to its orbit and keeps pointing the same way all year.", "For part of the orbit the Northern Hemisphere leans towards the Sun: sunlight hits it more directly and days are longer, so it is summer there.", "Six months later it leans away: light arrives at a low angle, spreads over more ground, days are short, and it is winter.", "The Southern Hemisphere has the opposite seasons at the same time.", "Distance is not the cause: Earth is actually closest to the Sun in early January, during the northern winter."]),
    ("ice", "Why does ice float on water?", "Ice is less dense than liquid water, about 0.92 g/cm³ against 1.00 g/cm³.",
     ["An object floats when it is less dense than the liquid around it.", "When water freezes, hydrogen bonds lock the molecules into an open hexagonal lattice.", "That lattice holds the molecules further apart than in the liquid, so ice takes up about 9% more volume.", "The same mass in more volume means lower density, so ice floats with about 90% of it under the surface.", "This is why lakes freeze from the top down, which insulates the water and the life beneath."]),
    ("vaccines", "How does a vaccine protect you from a disease?", "It trains the immune system with a harmless version or piece of the germ, so the body is ready to fight the real one quickly.",
     ["A vaccine contains an inactivated or weakened germ, a protein from it, or instructions (such as mRNA) for cells to make that protein.", "The immune system treats it as foreign and produces antibodies and T cells against it.", "Some of these cells become memory cells that remain for months or years.", "If the real germ arrives later, the memory cells recognise it and respond within days instead of weeks.", "The infection is stopped or stays much milder, and with enough people vaccinated the germ also spreads less."]),
    ("water_cycle", "Explain the water cycle.", "Water continuously moves between the oceans, the air and the land by evaporation, condensation, precipitation and runoff.",
     ["The Sun heats oceans, lakes and soil, and water evaporates; plants also release water vapour (transpiration).", "Warm moist air rises and cools, and the vapour condenses into tiny droplets that form clouds.", "When the droplets or ice crystals grow heavy enough they fall as rain, snow or hail.", "On land the water runs off in rivers, soaks into the ground as groundwater, or is stored as ice.", "Rivers and groundwater eventually return it to the sea, and the cycle repeats."]),
    ("greenhouse", "What is the greenhouse effect?", "Gases such as carbon dioxide and water vapour trap part of the heat Earth radiates, keeping the surface warmer than it would otherwise be.",
     ["Sunlight, mostly visible light, passes through the atmosphere and warms the surface.", "The warm surface gives off energy as infrared radiation.", "Greenhouse gases (water vapour, CO₂, methane) absorb much of that infrared and re-emit it in all directions, including back down.", "Without this effect Earth's average temperature would be about −18 °C instead of about 15 °C.", "Adding more of these gases, for example by burning fossil fuels, strengthens the effect and warms the climate."]),
    ("metals", "Why do metals conduct electricity well?", "Their outer electrons are not bound to single atoms and can move freely through the metal.",
     ["In a metal the atoms sit in a lattice and give up their outer electrons to a shared 'sea' of electrons.", "These delocalised electrons can move through the whole piece of metal.", "When a voltage is applied, they drift towards the positive end, which is an electric current.", "In insulators such as rubber the electrons are held tightly by their atoms, so almost no current flows.", "The same free electrons also carry heat, which is why metals are good heat conductors too."]),
    ("rainbow", "How does a rainbow form?", "Sunlight is refracted, reflected and dispersed inside raindrops, which splits it into its colours.",
     ["A rainbow appears when the Sun is behind you and rain is in front of you.", "Light entering a drop is refracted, and each colour bends by a slightly different amount (dispersion).", "The light reflects off the back of the drop and refracts again on the way out.", "Red light leaves at about 42° from the direction opposite the Sun and violet at about 40°.", "Every drop on that cone sends one colour to your eye, so you see an arc with red outside and violet inside."]),
    ("tides", "What causes ocean tides?", "Mainly the Moon's gravity, which pulls unevenly on different sides of Earth and raises two bulges of water.",
     ["The Moon's pull is stronger on the side of Earth facing it and weaker on the far side.", "This difference stretches the oceans into two bulges, one towards the Moon and one away from it.", "As Earth rotates, a coast passes through both bulges, so most places get two high and two low tides about every 24 hours and 50 minutes.", "The Sun has a similar but smaller effect; when Sun and Moon line up (new and full moon) the tides are larger (spring tides).", "When they are at right angles the tides are smaller (neap tides)."]),
    ("moon_phases", "Why does the Moon have phases?", "We see different amounts of the Moon's sunlit half as it orbits Earth.",
     ["The Sun always lights half of the Moon.", "As the Moon orbits Earth, about once every 29.5 days, our view of that lit half changes.", "At new moon the lit side faces away from us; at full moon it faces us entirely.", "In between we see crescents and gibbous shapes as more (waxing) or less (waning) of the lit side turns towards us.", "Earth's shadow is not the cause; that only happens during a lunar eclipse."]),
    ("leaves", "Why do leaves change colour in autumn?", "Trees stop making chlorophyll, so the green fades and the yellow, orange and red pigments show.",
     ["Leaves are green because chlorophyll, which captures light for photosynthesis, dominates all other pigments.", "In autumn shorter days and cooler nights make deciduous trees stop producing chlorophyll.", "As the chlorophyll breaks down, yellow and orange carotenoids that were there all along become visible.", "Some trees also make red anthocyanins from sugars trapped in the leaf.", "Finally a layer of cells seals the leaf stem off and the leaf falls."]),
    ("sound", "How does sound travel from a speaker to your ear?", "As a pressure wave: the speaker pushes air molecules, which push their neighbours, until the vibration reaches your eardrum.",
     ["The speaker cone vibrates back and forth.", "Each push squeezes nearby air (a compression) and each pull thins it (a rarefaction).", "Air molecules pass these pressure changes on to their neighbours, so the wave travels at about 343 m/s in air at 20 °C, while each molecule only jiggles in place.", "The pressure changes make your eardrum vibrate at the same frequency.", "The inner ear turns those vibrations into nerve signals, which the brain hears as sound."]),
)  # fmt: skip


def _explanation(rng: _Rng, held: bool) -> tuple[str, str]:
    _, question, answer, steps = _pick(rng, EXPLANATIONS, held, key=lambda e: e[0])
    question = rng.choice(("{q}", "{q} Explain step by step.", "Can you explain this clearly? {q}")).format(q=question)
    return question, _hard(answer, steps)


def _kinematics(rng: _Rng, held: bool) -> tuple[str, str]:
    a, t = _draw(rng, held, lambda: (rng.int(1, 6), rng.int(3, 15)))
    v, d = a * t, Fraction(a * t * t, 2)
    question = (
        f"A car starts from rest and accelerates at a constant {a} m/s² for {t} seconds. "
        "What is its final speed, and how far does it travel in that time?"
    )
    steps = [
        "Starting from rest means the initial speed u is 0.",
        f"Final speed: v = u + a·t = 0 + {a} × {t} = {v} m/s.",
        f"Distance: s = u·t + ½·a·t² = ½ × {a} × {t}² = ½ × {a} × {t * t} = {_num(d)} m.",
        f"Check with the average speed: ({0} + {v}) ÷ 2 × {t} = {_num(d)} m.",
    ]
    return question, _hard(f"{v} m/s after travelling {_num(d)} m", steps)


def _circuit(rng: _Rng, held: bool) -> tuple[str, str]:
    r1, r2, volts = _draw(rng, held, lambda: (rng.int(2, 30), rng.int(2, 30), rng.choice((6, 9, 12, 24))))
    total = r1 + r2
    current = Fraction(volts, total)
    question = (
        f"A {r1} Ω resistor and a {r2} Ω resistor are connected in series to a {volts} V battery. "
        "What current flows, and what power does the circuit use?"
    )
    power = volts * current
    steps = [
        f"In series the resistances add: R = {r1} + {r2} = {total} Ω.",
        f"Ohm's law: I = V ÷ R = {volts} ÷ {total} = {_num(current) if current.denominator in (1, 2, 4, 5, 8, 10, 16, 20, 25) else f'{float(current):.3f}'} A.",
        f"Power: P = V × I = {volts} × {volts}/{total} = {volts * volts}/{total} ≈ {float(power):.2f} W.",
        f"The same current flows through both resistors, so the voltages are {r1} × I ≈ {float(r1 * current):.2f} V and {r2} × I ≈ {float(r2 * current):.2f} V, adding up to {volts} V.",
    ]
    return question, _hard(f"about {float(current):.3g} A and {float(power):.3g} W", steps)


ATOMIC_MASS = {
    "H": 1.008,
    "C": 12.011,
    "N": 14.007,
    "O": 15.999,
    "Na": 22.990,
    "Cl": 35.45,
    "S": 32.06,
    "Ca": 40.078,
    "K": 39.098,
    "Mg": 24.305,
}
COMPOUNDS = (  # (formula, name, {element: count})
    ("H₂O", "water", {"H": 2, "O": 1}), ("CO₂", "carbon dioxide", {"C": 1, "O": 2}), ("CH₄", "methane", {"C": 1, "H": 4}),
    ("NH₃", "ammonia", {"N": 1, "H": 3}), ("C₆H₁₂O₆", "glucose", {"C": 6, "H": 12, "O": 6}), ("NaCl", "sodium chloride", {"Na": 1, "Cl": 1}),
    ("C₂H₅OH", "ethanol", {"C": 2, "H": 6, "O": 1}), ("H₂SO₄", "sulfuric acid", {"H": 2, "S": 1, "O": 4}),
    ("CaCO₃", "calcium carbonate", {"Ca": 1, "C": 1, "O": 3}), ("NaOH", "sodium hydroxide", {"Na": 1, "O": 1, "H": 1}),
    ("HCl", "hydrogen chloride", {"H": 1, "Cl": 1}), ("C₃H₈", "propane", {"C": 3, "H": 8}), ("SO₂", "sulfur dioxide", {"S": 1, "O": 2}),
    ("KCl", "potassium chloride", {"K": 1, "Cl": 1}), ("MgO", "magnesium oxide", {"Mg": 1, "O": 1}), ("NO₂", "nitrogen dioxide", {"N": 1, "O": 2}),
)  # fmt: skip


def _molar_mass(rng: _Rng, held: bool) -> tuple[str, str]:
    formula, name, counts = _pick(rng, COMPOUNDS, held, key=lambda c: c[0])
    question = rng.choice(("What is the molar mass of {n} ({f})?", "Calculate the molar mass of {f}.")).format(
        n=name, f=formula
    )
    steps = [f"{el}: {n} × {ATOMIC_MASS[el]} g/mol = {n * ATOMIC_MASS[el]:.3f} g/mol." for el, n in counts.items()]
    total = sum(n * ATOMIC_MASS[el] for el, n in counts.items())
    steps.append(
        f"Add them: {' + '.join(f'{n * ATOMIC_MASS[el]:.3f}' for el, n in counts.items())} = {total:.3f} g/mol."
    )
    steps.insert(
        0,
        f"{name.capitalize()} has "
        + ", ".join(f"{n} {el}" for el, n in counts.items())
        + " per formula unit; multiply each by its atomic mass.",
    )
    return question, _hard(f"about {total:.2f} g/mol", steps)


def _heating(rng: _Rng, held: bool) -> tuple[str, str]:
    grams, t1, t2 = _draw(rng, held, lambda: (50 * rng.int(2, 20), rng.int(5, 25), rng.int(40, 95)))
    delta = t2 - t1
    joules = Decimal(grams) * Decimal("4.18") * delta
    question = f"How much energy does it take to heat {grams} g of water from {t1} °C to {t2} °C? The specific heat of water is 4.18 J/(g·°C)."
    steps = [
        "Use Q = m × c × ΔT.",
        f"Temperature change: ΔT = {t2} − {t1} = {delta} °C.",
        f"Q = {grams} g × 4.18 J/(g·°C) × {delta} °C = {joules:,.1f} J.",
        f"In kilojoules: {joules:,.1f} J ÷ 1000 = {joules / 1000:,.2f} kJ.",
    ]
    return question, _hard(f"{joules / 1000:,.2f} kJ", steps)


SCIENCE = ([_element, _science_fact, _physics], [_explanation, _kinematics, _circuit, _molar_mass, _heating])


# --- reasoning ------------------------------------------------------------------------------------


def _sequence(rng: _Rng, held: bool) -> tuple[str, str]:
    kind, start, step = _draw(
        rng, held, lambda: (rng.choice(("add", "multiply", "square")), rng.int(1, 12), rng.int(2, 9))
    )
    if kind == "add":
        terms = [start + step * i for i in range(5)]
        why = f"Each term is {step} more than the one before, so {terms[-1]} + {step} = {terms[-1] + step}."
        nxt = terms[-1] + step
    elif kind == "multiply":
        step = 2 + step % 3
        terms = [start * step**i for i in range(5)]
        why = f"Each term is {step} times the one before, so {terms[-1]:,} × {step} = {terms[-1] * step:,}."
        nxt = terms[-1] * step
    else:
        terms = [(start + i) ** 2 for i in range(5)]
        why = f"These are the squares {start}², {start + 1}², …, {start + 4}², so next is {start + 5}² = {(start + 5) ** 2}."
        nxt = (start + 5) ** 2
    listed = ", ".join(f"{t:,}" for t in terms)
    question = rng.choice(
        ("What number comes next: {s}, …?", "Continue the sequence: {s}, ?", "Find the next term of {s}, …")
    )
    return question.format(s=listed), _easy(f"{nxt:,}", why)


def _weekday(rng: _Rng, held: bool) -> tuple[str, str]:
    day, n = _draw(rng, held, lambda: (rng.choice(WEEKDAYS), rng.int(3, 100)))
    target = WEEKDAYS[(WEEKDAYS.index(day) + n) % 7]
    weeks, rest = divmod(n, 7)
    question = rng.choice(
        (
            "If today is {d}, what day of the week will it be in {n} days?",
            "Today is {d}. Which weekday is it {n} days from now?",
        )
    )
    why = f"{n} days = {weeks} weeks and {rest} days; whole weeks land on {day} again, and {rest} more days after {day} is {target}."
    return question.format(d=day, n=n), _easy(target, why)


COMPARISONS = (
    ("older", "youngest", "oldest"),
    ("taller", "shortest", "tallest"),
    ("faster", "slowest", "fastest"),
    ("heavier", "lightest", "heaviest"),
)


def _compare(rng: _Rng, held: bool) -> tuple[str, str]:
    a, b, c = _pick_many(rng, NAMES, held, 3)
    (more, least, most), asks_least = _draw(rng, held, lambda: ((rng.choice(COMPARISONS), rng.below(2) == 1)))
    question = f"{a} is {more} than {b}, and {b} is {more} than {c}. Who is the {least if asks_least else most}?"
    if asks_least:
        return question, _easy(c, f"The order from most to least is {a}, {b}, {c}, so {c} is the {least}.")
    return question, _easy(a, f"{a} is {more} than {b}, who is {more} than {c}, so {a} is the {most}.")


CATEGORIES = (  # (plural, singular-ish label for "a …", members)
    ("roses", "flowers"), ("sparrows", "birds"), ("squares", "rectangles"), ("violins", "string instruments"),
    ("oaks", "trees"), ("salmon", "fish"), ("trucks", "vehicles"), ("poodles", "dogs"), ("whales", "mammals"),
    ("diamonds", "gemstones"), ("novels", "books"), ("tulips", "plants"),
)  # fmt: skip


def _syllogism(rng: _Rng, held: bool) -> tuple[str, str]:
    (members, group), valid = _draw(rng, held, lambda: (rng.choice(CATEGORIES), rng.below(2) == 1))
    thing = rng.choice(("Pip", "Rex", "Item 7", "Specimen B", "Sample 12", "Exhibit Q"))
    if valid:
        question = f"All {members} are {group}. {thing} is one of the {members}. Is {thing} one of the {group}?"
        return question, _easy(
            "Yes", f"Everything in the group of {members} belongs to the {group}, and {thing} is in that group."
        )
    question = f"All {members} are {group}. {thing} is one of the {group}. Must {thing} be one of the {members}?"
    why = f"No: the rule says every one of the {members} is among the {group}, not that all {group} are {members}; {thing} could be another kind."
    return question, _easy("No, not necessarily", why)


GROUPS = {
    "fruits": ("apple", "banana", "cherry", "mango", "pear", "plum", "grape", "kiwi"),
    "vegetables": ("carrot", "potato", "onion", "spinach", "broccoli", "leek"),
    "planets": ("Mars", "Venus", "Saturn", "Neptune", "Jupiter", "Mercury"),
    "musical instruments": ("piano", "violin", "trumpet", "flute", "cello", "drum"),
    "metals": ("iron", "copper", "zinc", "silver", "aluminium", "nickel"),
    "colours": ("red", "green", "purple", "yellow", "orange", "teal"),
    "mammals": ("dolphin", "bat", "horse", "elephant", "otter", "camel"),
}


def _odd_one_out(rng: _Rng, held: bool) -> tuple[str, str]:
    main, other = _draw(rng, held, lambda: tuple(rng.sample(sorted(GROUPS), 2)))
    words = [*rng.sample(GROUPS[main], 3), rng.choice(GROUPS[other])]
    if set(words[:3]) & set(GROUPS[other]) or words[3] in GROUPS[main]:
        return _odd_one_out(rng, held)
    odd = words[3]
    shown = rng.sample(words, 4)
    question = rng.choice(("Which word does not belong: {w}?", "Find the odd one out: {w}.")).format(w=", ".join(shown))
    return question, _easy(
        odd, f"The others ({', '.join(w for w in shown if w != odd)}) are {main}; {odd} is one of the {other}."
    )


def _race(rng: _Rng, held: bool) -> tuple[str, str]:
    n = rng.int(4, 5)
    order = _pick_many(rng, NAMES, held, n)
    clues = [f"{order[i]} finished right ahead of {order[i + 1]}" for i in range(n - 1)]
    shown = rng.sample(clues, len(clues))
    names = sorted(order)
    question = (
        f"{ {4: 'Four', 5: 'Five'}[n] } runners, {', '.join(names[:-1])} and {names[-1]}, finished a race with no ties. "
        + " ".join(f"{clue}." for clue in shown)
        + " In what order did they finish?"
    )
    steps = [
        f"Nobody finished right ahead of {order[0]}, so {order[0]} came first.",
        *[
            f"{order[i]} finished right ahead of {order[i + 1]}, so {order[i + 1]} came {_ordinal(i + 2)}."
            for i in range(n - 1)
        ],
        f"{order[-1]} is not ahead of anyone, which confirms {order[-1]} came last.",
    ]
    return question, _hard(", ".join(order), steps)


def _ordinal(n: int) -> str:
    return {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", 6: "sixth"}[n]


def _ages(rng: _Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, int, int, int]:
        for _ in range(1000):
            k, m, n = rng.int(3, 7), rng.int(2, 4), rng.int(2, 20)
            if k > m and (n * (m - 1)) % (k - m) == 0:
                son = n * (m - 1) // (k - m)
                if 2 <= son <= 16 and 20 <= k * son <= 70:
                    return k, m, n, son
        raise RuntimeError("no age puzzle")

    k, m, n, son = _draw(rng, held, make)
    parent = rng.choice(("mother", "father"))
    question = (
        f"A {parent} is {k} times as old as her son. In {n} years she will be {m} times as old as him. How old are they now?"
        if parent == "mother"
        else f"A {parent} is {k} times as old as his son. In {n} years he will be {m} times as old as him. How old are they now?"
    )
    steps = [
        f"Let the son's age be s; the {parent} is {k}s.",
        f"In {n} years: {k}s + {n} = {m}(s + {n}).",
        f"Expand: {k}s + {n} = {m}s + {m * n}, so {k - m}s = {m * n - n}.",
        f"s = {m * n - n} ÷ {k - m} = {son}, and the {parent} is {k} × {son} = {k * son}.",
        f"Check: in {n} years they are {son + n} and {k * son + n}, and {k * son + n} = {m} × {son + n}.",
    ]
    return question, _hard(f"The son is {son} and the {parent} is {k * son}.", steps)


def _schedule(rng: _Rng, held: bool) -> tuple[str, str]:
    a, b, day = _draw(rng, held, lambda: (rng.int(2, 9), rng.int(3, 12), rng.choice(WEEKDAYS)))
    if a == b or math.lcm(a, b) > 60:
        return _schedule(rng, held)
    both = math.lcm(a, b)
    target = WEEKDAYS[(WEEKDAYS.index(day) + both) % 7]
    question = (
        f"A bus inspection happens every {a} days and a safety drill every {b} days. Both happened today, a {day}. "
        "In how many days will both happen on the same day again, and which weekday will that be?"
    )
    steps = [
        f"Both fall on the same day after a number of days that is a multiple of both {a} and {b}.",
        f"The least common multiple: lcm({a}, {b}) = {a} × {b} ÷ gcd({a}, {b}) = {a * b} ÷ {math.gcd(a, b)} = {both}.",
        f"{both} days = {both // 7} weeks and {both % 7} days.",
        f"{both % 7} days after {day} is {target}.",
    ]
    return question, _hard(f"In {both} days, on a {target}.", steps)


def _handshakes(rng: _Rng, held: bool) -> tuple[str, str]:
    n = _draw(rng, held, lambda: rng.int(5, 40))
    event = rng.choice(("meeting", "party", "workshop", "team dinner", "conference session"))
    question = f"At a {event} with {n} people, everyone shakes hands exactly once with everyone else. How many handshakes are there?"
    steps = [
        f"Each person shakes hands with the other {n - 1} people.",
        f"Counting per person gives {n} × {n - 1} = {n * (n - 1)}.",
        "That counts every handshake twice, once for each of the two people.",
        f"So there are {n * (n - 1)} ÷ 2 = {n * (n - 1) // 2} handshakes.",
    ]
    return question, _hard(f"{n * (n - 1) // 2} handshakes", steps)


REASONING = ([_sequence, _weekday, _compare, _syllogism, _odd_one_out], [_race, _ages, _schedule, _handshakes])


# --- tool use -------------------------------------------------------------------------------------

TOOLS = {
    "get_weather": 'get_weather(city: string, unit: "celsius" | "fahrenheit")',
    "convert_currency": "convert_currency(amount: number, from: string, to: string)  # ISO 4217 codes",
    "set_timer": "set_timer(minutes: integer, label: string)",
    "search_flights": "search_flights(origin: string, destination: string, date: string)  # date as YYYY-MM-DD",
    "send_email": "send_email(to: string, subject: string, body: string)",
    "create_event": "create_event(title: string, date: string, time: string)  # YYYY-MM-DD, HH:MM (24 h)",
    "translate": "translate(text: string, target_language: string)",
    "calculator": "calculator(expression: string)",
}
CURRENCIES = (
    ("euros", "EUR"),
    ("US dollars", "USD"),
    ("Japanese yen", "JPY"),
    ("British pounds", "GBP"),
    ("Swiss francs", "CHF"),
    ("Canadian dollars", "CAD"),
    ("Indian rupees", "INR"),
)
LANGUAGES = ("French", "German", "Spanish", "Japanese", "Portuguese", "Italian", "Korean", "Dutch")
PHRASES = (
    "Where is the train station?",
    "Thank you for your help.",
    "The meeting starts at nine.",
    "I would like a table for two.",
    "How much does this cost?",
    "Good morning, everyone.",
)
ACTIVITIES = ("the pasta", "the laundry", "a break", "the tea", "the bread dough", "the call with the bank")


def _call(name: str, **arguments: object) -> str:
    return json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)


def _tool_prompt(rng: _Rng, needed: Sequence[str], request: str) -> str:
    others = [t for t in sorted(TOOLS) if t not in needed]
    listed = rng.sample([*needed, *rng.sample(others, 2)], len(needed) + 2)
    tools = "\n".join(f"- {TOOLS[t]}" for t in listed)
    ask = "Reply with the tool call to make." if len(needed) == 1 else "Reply with the tool calls to make, in order."
    return f"Tools:\n{tools}\nRequest: {request}\n{ask}"


def _date(rng: _Rng) -> tuple[str, str]:
    month, day = rng.int(1, 12), rng.int(1, 28)
    return f"2025-{month:02d}-{day:02d}", f"{MONTHS[month - 1]} {day}"


def _single_call(rng: _Rng, held: bool) -> tuple[str, str]:
    city = _pick(rng, CITIES, held)
    kind = rng.choice(("weather", "currency", "timer", "translate", "calculator", "flight"))
    if kind == "weather":
        unit = rng.choice(("celsius", "fahrenheit"))
        request = rng.choice(
            (
                f"What's the weather like in {city} right now, in {unit.capitalize()}?",
                f"Is it cold in {city} today? Give me the temperature in {unit}.",
            )
        )
        return _tool_prompt(rng, ["get_weather"], request), _easy(
            _call("get_weather", city=city, unit=unit),
            f"The user wants the current weather in {city} in {unit}; get_weather takes exactly those two arguments.",
        )
    if kind == "currency":
        (src_name, src), (dst_name, dst) = rng.sample(CURRENCIES, 2)
        amount = rng.choice((25, 40, 120, 250, 600, 1500))
        request = f"I'm travelling to {city}. How much is {amount} {src_name} in {dst_name}?"
        return _tool_prompt(rng, ["convert_currency"], request), _easy(
            _call("convert_currency", amount=amount, **{"from": src, "to": dst}),
            f"It is a currency conversion from {src} to {dst}; the city is context and needs no tool.",
        )
    if kind == "timer":
        minutes, what = rng.int(3, 45), rng.choice(ACTIVITIES)
        request = f"Remind me in {minutes} minutes to check {what}. (I'm cooking for friends from {city}.)"
        return _tool_prompt(rng, ["set_timer"], request), _easy(
            _call("set_timer", minutes=minutes, label=f"check {what}"),
            f"A reminder after a fixed delay is a timer of {minutes} minutes, labelled with what to check.",
        )
    if kind == "translate":
        phrase, language = rng.choice(PHRASES), rng.choice(LANGUAGES)
        request = f'I\'m visiting {city}. How do I say "{phrase}" in {language}?'
        return _tool_prompt(rng, ["translate"], request), _easy(
            _call("translate", text=phrase, target_language=language),
            f"The user wants the phrase translated into {language}; translate takes the text and the target language.",
        )
    if kind == "calculator":
        a, b, c = rng.int(12, 99), rng.int(3, 19), rng.int(100, 999)
        request = f"Our group of {b} is splitting a {city} hotel bill: {c} plus {a} for breakfast. How much does each person pay?"
        return _tool_prompt(rng, ["calculator"], request), _easy(
            _call("calculator", expression=f"({c} + {a}) / {b}"),
            "The share is the total bill divided by the number of people, which the calculator evaluates exactly.",
        )
    origin = _draw_other(rng, CITIES, held, city)
    iso, spoken = _date(rng)
    request = f"Find me flights from {origin} to {city} on {spoken}, 2025."
    return _tool_prompt(rng, ["search_flights"], request), _easy(
        _call("search_flights", origin=origin, destination=city, date=iso),
        f"A flight search needs origin, destination and the date in YYYY-MM-DD form: {iso}.",
    )


def _two_calls(rng: _Rng, held: bool) -> tuple[str, str]:
    city = _pick(rng, CITIES, held)
    name = _pick(rng, NAMES, held)
    email = f"{name.lower()}@example.com"
    iso, spoken = _date(rng)
    kind = rng.choice(("flight_email", "weather_event", "currency_email"))
    if kind == "flight_email":
        origin = _draw_other(rng, CITIES, held, city)
        request = (
            f"Look up flights from {origin} to {city} on {spoken}, 2025, and email the options to {name} at {email}."
        )
        calls = [
            _call("search_flights", origin=origin, destination=city, date=iso),
            _call(
                "send_email",
                to=email,
                subject=f"Flights {origin} to {city} on {iso}",
                body="<flight options from the search>",
            ),
        ]
        steps = [
            "Two things are asked: a flight search and an email, so two tools are needed: search_flights and send_email.",
            f"The search comes first: origin {origin}, destination {city}, date {spoken} written as {iso}.",
            f"The email depends on the search results, so it is sent second, to {email}, with the options in the body.",
            "The other tools are not needed for this request.",
        ]
        return _tool_prompt(rng, ["search_flights", "send_email"], request), _hard_calls(calls, steps)
    if kind == "weather_event":
        hour = rng.int(7, 19)
        request = (
            f"Check the weather in {city} in Celsius, and put a picnic in my calendar for {spoken}, 2025 at {hour}:00."
        )
        calls = [
            _call("get_weather", city=city, unit="celsius"),
            _call("create_event", title=f"Picnic in {city}", date=iso, time=f"{hour:02d}:00"),
        ]
        steps = [
            "The request has two independent parts: a weather check and a calendar entry.",
            f"get_weather takes the city, {city}, and the unit the user asked for, celsius.",
            f"create_event needs a title, the date as YYYY-MM-DD ({iso}) and the time in 24-hour HH:MM form ({hour:02d}:00).",
            "Neither call needs the other's result, so they can run in the order asked.",
        ]
        return _tool_prompt(rng, ["get_weather", "create_event"], request), _hard_calls(calls, steps)
    (src_name, src), (dst_name, dst) = rng.sample(CURRENCIES, 2)
    amount = rng.choice((80, 150, 300, 750, 2000))
    request = (
        f"Convert {amount} {src_name} to {dst_name} for my trip to {city}, then email the result to {name} ({email})."
    )
    calls = [
        _call("convert_currency", amount=amount, **{"from": src, "to": dst}),
        _call("send_email", to=email, subject=f"{amount} {src} in {dst}", body="<converted amount>"),
    ]
    steps = [
        "Two actions are requested: a conversion and an email.",
        f"convert_currency runs first with amount {amount}, from {src} ({src_name}) and to {dst} ({dst_name}).",
        f"send_email comes second because its body needs the converted amount; it goes to {email}.",
        f"The trip to {city} is context: no weather or flight tool is needed.",
    ]
    return _tool_prompt(rng, ["convert_currency", "send_email"], request), _hard_calls(calls, steps)


def _hard_calls(calls: list[str], steps: list[str]) -> str:
    body = "".join(f"Call {i}: {call}\n" for i, call in enumerate(calls, start=1))
    return _hard(f"{len(calls)} calls, in this order", steps, body=body)


TOOL_USE = ([_single_call], [_two_calls])


# --- reading --------------------------------------------------------------------------------------

JOBS = (
    "nurse",
    "carpenter",
    "teacher",
    "software developer",
    "pharmacist",
    "electrician",
    "librarian",
    "architect",
    "chef",
    "bus driver",
)
PASTRIES = ("cinnamon rolls", "croissants", "apple turnovers", "almond tarts", "cheese scones")


def _reading_prompt(rng: _Rng, passage: str, question: str) -> str:
    intro = rng.choice(
        (
            "Read the passage and answer the question.",
            "Answer the question using only the text below.",
            "Use the passage to answer.",
        )
    )
    return f"{intro}\n\nPassage: {passage}\n\nQuestion: {question}"


def _library_facts(rng: _Rng, held: bool) -> dict:
    name = _pick(rng, NAMES, held)
    day, club_day = rng.sample(WEEKDAYS[:5], 2)
    return {"name": name, "job": rng.choice(JOBS), "town": _pick(rng, CITIES, held), "day": day, "club": club_day,
            "blocks": rng.int(2, 12), "books": rng.int(2, 5), "open": rng.int(8, 10), "close": rng.int(17, 21)}  # fmt: skip


def _library_passage(f: dict) -> str:
    return (
        f"{f['name']} works as a {f['job']} in {f['town']}. Every {f['day']}, {f['name']} walks {f['blocks']} blocks to the "
        f"public library and borrows {f['books']} books. The library opens at {f['open']}:00 and closes at {f['close']}:00. "
        f"Last spring {f['name']} also joined a chess club that meets on {f['club']} evenings at the community centre."
    )


def _reading_library(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _library_facts(rng, held)
    kind = rng.choice(("job", "books", "club", "open", "blocks"))
    question, answer, why = {
        "job": (
            f"What is {f['name']}'s job?",
            f"{f['name']} is a {f['job']}.",
            f'The first sentence says {f["name"]} "works as a {f["job"]}".',
        ),
        "books": (
            f"How many books does {f['name']} borrow on each visit?",
            f"{f['books']} books",
            f'The passage says {f["name"]} "borrows {f["books"]} books" every {f["day"]}.',
        ),
        "club": (
            "On which evenings does the chess club meet?",
            f"On {f['club']} evenings",
            f'The last sentence says the club "meets on {f["club"]} evenings at the community centre".',
        ),
        "open": (
            "When does the library open?",
            f"At {f['open']}:00",
            f'The passage says "the library opens at {f["open"]}:00".',
        ),
        "blocks": (
            f"How far does {f['name']} walk to the library?",
            f"{f['blocks']} blocks",
            f'The text says {f["name"]} "walks {f["blocks"]} blocks to the public library".',
        ),
    }[kind]
    return _reading_prompt(rng, _library_passage(f), question), _easy(answer, why)


def _reading_library_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _library_facts(rng, held)
    weeks = rng.int(3, 12)
    hours = f["close"] - f["open"]
    question = (
        f"Over {weeks} weeks, how many books does {f['name']} borrow and how many blocks does {f['name']} walk to the "
        "library in total? And how many hours a day is the library open?"
    )
    steps = [
        f"{f['name']} goes to the library once a week, every {f['day']}, so {weeks} weeks means {weeks} visits.",
        f"Books: {f['books']} per visit × {weeks} visits = {f['books'] * weeks} books.",
        f"Walking: {f['blocks']} blocks per visit × {weeks} = {f['blocks'] * weeks} blocks (the passage gives only the way there).",
        f"Opening hours: from {f['open']}:00 to {f['close']}:00 is {f['close']} − {f['open']} = {hours} hours.",
        "The chess club and the job do not affect these numbers.",
    ]
    answer = f"{f['books'] * weeks} books and {f['blocks'] * weeks} blocks; the library is open {hours} hours a day."
    return _reading_prompt(rng, _library_passage(f), question), _hard(answer, steps)


def _bakery_facts(rng: _Rng, held: bool) -> dict:
    name = _pick(rng, NAMES, held)
    year = rng.int(1978, 2012)
    return {"name": name, "shop": rng.choice(("Golden Crust", "Morning Loaf", "Hearth & Grain", "Little Oven", "Sunrise")),
            "town": _pick(rng, CITIES, held), "year": year, "worked": rng.int(3, 15), "job": rng.choice(JOBS),
            "loaves": 20 * rng.int(3, 12), "opens": rng.int(5, 8), "pastry": rng.choice(PASTRIES),
            "cafe": year + rng.int(2, 11), "seats": rng.int(8, 30)}  # fmt: skip


def _bakery_passage(f: dict) -> str:
    return (
        f"The {f['shop']} bakery in {f['town']} was opened in {f['year']} by {f['name']}, who had worked for {f['worked']} "
        f"years as a {f['job']} before. It bakes {f['loaves']} loaves of bread every morning and opens at {f['opens']} a.m. "
        f"On Saturdays it also sells {f['pastry']}, which usually sell out by noon. In {f['cafe']} the bakery added a "
        f"small café with {f['seats']} seats."
    )


def _reading_bakery(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _bakery_facts(rng, held)
    kind = rng.choice(("who", "year", "loaves", "saturday", "seats"))
    question, answer, why = {
        "who": (
            "Who opened the bakery?",
            f["name"],
            f'The passage says the bakery "was opened in {f["year"]} by {f["name"]}".',
        ),
        "year": (
            "In which year did the bakery open?",
            str(f["year"]),
            f'The first sentence says it "was opened in {f["year"]}".',
        ),
        "loaves": (
            "How many loaves does the bakery bake each morning?",
            f"{f['loaves']} loaves",
            f'The text says it "bakes {f["loaves"]} loaves of bread every morning".',
        ),
        "saturday": (
            "What does the bakery sell only on Saturdays?",
            f["pastry"].capitalize(),
            f'The passage says "on Saturdays it also sells {f["pastry"]}".',
        ),
        "seats": (
            "How many seats does the café have?",
            str(f["seats"]),
            f'The last sentence mentions "a small café with {f["seats"]} seats".',
        ),
    }[kind]
    return _reading_prompt(rng, _bakery_passage(f), question), _easy(answer, why)


def _reading_bakery_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _bakery_facts(rng, held)
    question = (
        f"How many years after opening did the bakery add its café, and how many years had {f['name']} worked before "
        f"the café opened (counting the years as a {f['job']} and at the bakery)? How many loaves does it bake in a 6-day week?"
    )
    gap = f["cafe"] - f["year"]
    steps = [
        f"The bakery opened in {f['year']} and the café was added in {f['cafe']}: {f['cafe']} − {f['year']} = {gap} years.",
        f"Before opening, {f['name']} worked {f['worked']} years as a {f['job']}.",
        f"Total working years until the café opened: {f['worked']} + {gap} = {f['worked'] + gap}.",
        f"Loaves: {f['loaves']} per morning × 6 days = {f['loaves'] * 6}.",
    ]
    answer = f"{gap} years after opening; {f['worked'] + gap} years of work in total; {f['loaves'] * 6} loaves a week."
    return _reading_prompt(rng, _bakery_passage(f), question), _hard(answer, steps)


def _clock(minutes: int) -> str:
    return f"{minutes // 60 % 24}:{minutes % 60:02d}"


def _train_facts(rng: _Rng, held: bool) -> dict:
    name = _pick(rng, NAMES, held)
    town, town2 = _pick_many(rng, CITIES, held, 2)
    depart = 60 * rng.int(6, 16) + 5 * rng.int(0, 11)
    ride, late, walk = 5 * rng.int(4, 30), rng.int(0, 25), rng.int(5, 20)
    meeting = depart + ride + walk + 5 * rng.int(-4, 4)
    return {
        "name": name,
        "town": town,
        "town2": town2,
        "day": rng.choice(WEEKDAYS),
        "depart": depart,
        "ride": ride,
        "late": late,
        "walk": walk,
        "meeting": meeting,
    }


def _train_passage(f: dict) -> str:
    late = "exactly on time" if f["late"] == 0 else f"{f['late']} minutes late"
    return (
        f"On {f['day']}, {f['name']} took the {_clock(f['depart'])} train from {f['town']} to {f['town2']}. The ride was "
        f"scheduled to take {f['ride']} minutes, and the train arrived {late}. From the station, {f['name']} walked "
        f"{f['walk']} minutes to a meeting that started at {_clock(f['meeting'])}."
    )


def _reading_train(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _train_facts(rng, held)
    kind = rng.choice(("depart", "ride", "walk", "where"))
    question, answer, why = {
        "depart": (
            "What time did the train leave?",
            _clock(f["depart"]),
            f'The passage says {f["name"]} "took the {_clock(f["depart"])} train".',
        ),
        "ride": (
            "How long was the ride scheduled to take?",
            f"{f['ride']} minutes",
            f'The text says the ride "was scheduled to take {f["ride"]} minutes".',
        ),
        "walk": (
            "How long was the walk from the station to the meeting?",
            f"{f['walk']} minutes",
            f'The last sentence says {f["name"]} "walked {f["walk"]} minutes to a meeting".',
        ),
        "where": (
            "Where was the train going?",
            f"To {f['town2']}",
            f'The train ran "from {f["town"]} to {f["town2"]}".',
        ),
    }[kind]
    return _reading_prompt(rng, _train_passage(f), question), _easy(answer, why)


def _reading_train_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    f = _train_facts(rng, held)
    arrive = f["depart"] + f["ride"] + f["late"]
    at_meeting = arrive + f["walk"]
    diff = f["meeting"] - at_meeting
    question = f"Did {f['name']} reach the meeting on time? Work out the times."
    steps = [
        f"Scheduled arrival: {_clock(f['depart'])} + {f['ride']} minutes = {_clock(f['depart'] + f['ride'])}.",
        f"The train was {f['late']} minutes late, so it arrived at {_clock(arrive)}."
        if f["late"]
        else f"The train was on time, so it arrived at {_clock(arrive)}.",
        f"After the {f['walk']}-minute walk, {f['name']} reached the meeting at {_clock(at_meeting)}.",
        f"The meeting started at {_clock(f['meeting'])}: "
        + (
            f"{diff} minutes after {f['name']} arrived."
            if diff > 0
            else "exactly when they arrived."
            if diff == 0
            else f"{-diff} minutes before {f['name']} arrived."
        ),
    ]
    if diff > 0:
        answer = f"Yes, {f['name']} arrived {diff} minutes early."
    elif diff == 0:
        answer = f"Yes, {f['name']} arrived exactly on time."
    else:
        answer = f"No, {f['name']} arrived {-diff} minutes late."
    return _reading_prompt(rng, _train_passage(f), question), _hard(answer, steps)


READING = (
    [_reading_library, _reading_bakery, _reading_train],
    [_reading_library_hard, _reading_bakery_hard, _reading_train_hard],
)


# --- summarization --------------------------------------------------------------------------------

#: (action, benefit, concern)
COUNCIL_PLANS = (
    ("build a protected bike lane along the main avenue", "make commuting safer and cut traffic", "about 60 parking spaces would disappear"),
    ("extend the public library's opening hours to 9 p.m.", "help students and shift workers", "the extra staff would strain the budget"),
    ("replace all streetlights with LED lamps", "lower the city's energy bill by about a third", "the upfront cost is high"),
    ("open a weekend farmers' market in the old town square", "support local growers and bring visitors", "traffic and noise would increase on Saturdays"),
    ("plant 2,000 street trees over three years", "cool the streets in summer and clean the air", "roots could damage pavements and pipes"),
    ("make buses free for residents under 18", "help families and get teenagers out of cars", "fares would have to rise for everyone else"),
)  # fmt: skip
#: (intervention, intervention in the past tense, outcome, finding, caveat)
STUDIES = (
    ("a daily 20-minute walk", "walked 20 minutes a day", "sleep", "fell asleep about 15 minutes faster on average", "the volunteers knew which group they were in"),
    ("reading on paper instead of a screen", "read on paper only", "recall of what was read", "remembered about 10% more details in a quiz", "the texts were short"),
    ("drinking two extra glasses of water a day", "drank two extra glasses of water a day", "afternoon headaches", "reported a third fewer headaches", "headaches were self-reported"),
    ("a short breathing exercise before exams", "did a five-minute breathing exercise before each exam", "exam anxiety", "rated their anxiety lower and scored slightly higher", "only one school took part"),
    ("turning off phone notifications", "turned off all phone notifications", "concentration at work", "finished focused tasks about 12% faster", "the effect faded in the last weeks"),
)  # fmt: skip


def _summary_prompt(rng: _Rng, text: str, hard: bool) -> str:
    if hard:
        ask = rng.choice(
            (
                "Summarize this in one sentence, then list the three most important points.",
                "Give a one-sentence summary followed by three key points.",
            )
        )
    else:
        ask = rng.choice(
            (
                "Summarize this in one sentence.",
                "Give a one-sentence summary of the text.",
                "What is the gist of this text, in one sentence?",
            )
        )
    return f"{ask}\n\nText: {text}"


def _council(rng: _Rng, held: bool) -> tuple[str, dict, str]:
    town = _pick(rng, CITIES, held)
    action, benefit, concern = rng.choice(COUNCIL_PLANS)
    seats = rng.choice((7, 9, 11))
    yes = rng.int(seats // 2 + 1, seats - 1)
    f = {"town": town, "action": action, "benefit": benefit, "concern": concern, "yes": yes, "no": seats - yes, "day": rng.choice(WEEKDAYS[:5]),
         "cost": f"{rng.int(2, 40) * 50:,},000 euros", "month": rng.choice(MONTHS), "chair": _pick(rng, NAMES, held)}  # fmt: skip
    text = (
        f"On {f['day']}, the city council of {town} voted {yes} to {f['no']} to {action}. The project will cost {f['cost']}, "
        f"and work is due to start in {f['month']}. Supporters said the plan would {benefit}. Opponents argued that {concern}. "
        f"Council chair {f['chair']} said the plan would be reviewed after one year."
    )
    summary = f"{town}'s council voted {yes}–{f['no']} to {action}, a {f['cost']} project starting in {f['month']}."
    return text, f, summary


def _summary_council(rng: _Rng, held: bool) -> tuple[str, str]:
    text, _, summary = _council(rng, held)
    why = "It keeps the decision, the vote, the cost and the start date, and leaves out the arguments for and against."
    return _summary_prompt(rng, text, hard=False), _easy(summary, why)


def _summary_council_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    text, f, summary = _council(rng, held)
    points = [
        f"Decision: the council of {f['town']} voted {f['yes']} to {f['no']} on {f['day']} to {f['action']}.",
        f"Cost and timing: {f['cost']}, with work starting in {f['month']} and a review after one year.",
        f"Debate: supporters expect it to {f['benefit']}, while opponents worry that {f['concern']}.",
    ]
    return _summary_prompt(rng, text, hard=True), _hard(summary, points, label="Key points")


def _study(rng: _Rng, held: bool) -> tuple[str, dict, str]:
    town = _pick(rng, CITIES, held)
    intervention, past, outcome, finding, caveat = rng.choice(STUDIES)
    f = {
        "town": town,
        "n": 2 * rng.int(20, 150),
        "weeks": rng.int(4, 16),
        "intervention": intervention,
        "past": past,
        "outcome": outcome,
        "finding": finding,
        "caveat": caveat,
    }
    text = (
        f"Researchers at the University of {town} followed {f['n']} adults for {f['weeks']} weeks to see whether "
        f"{intervention} affects {outcome}. Half of the group {past}, while the other half kept their usual routine. "
        f"By the end, the first group {finding}. The authors note that the study was small and that {caveat}, so the "
        "result needs confirming in a larger trial."
    )
    summary = f"A {f['weeks']}-week study of {f['n']} adults in {town} found that people who {past} {finding}, though the result is preliminary."
    return text, f, summary


def _summary_study(rng: _Rng, held: bool) -> tuple[str, str]:
    text, _, summary = _study(rng, held)
    why = "It keeps who was studied, what was tested, the main result and the caution, without the design details."
    return _summary_prompt(rng, text, hard=False), _easy(summary, why)


def _summary_study_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    text, f, summary = _study(rng, held)
    points = [
        f"Design: {f['n']} adults in {f['town']}, split in half for {f['weeks']} weeks; one half {f['past']} and the other kept their routine.",
        f"Result: the group that {f['past']} {f['finding']}.",
        f"Caution: the study was small and {f['caveat']}, so a larger trial is needed.",
    ]
    return _summary_prompt(rng, text, hard=True), _hard(summary, points, label="Key points")


def _storm(rng: _Rng, held: bool) -> tuple[str, dict, str]:
    town = _pick(rng, CITIES, held)
    i = rng.below(5)
    f = {"town": town, "cm": rng.int(15, 60), "day": WEEKDAYS[i], "next": WEEKDAYS[i + 1], "thaw": WEEKDAYS[(i + 2 + rng.below(3)) % 7],
         "schools": rng.int(12, 140), "plows": rng.int(20, 90)}  # fmt: skip
    text = (
        f"A storm brought {f['cm']} cm of snow to {town} on {f['day']} night. {f['schools']} schools stayed closed on "
        f"{f['next']}, and the city sent out {f['plows']} snowplows to clear the main roads. Buses ran on a reduced "
        f"schedule until the afternoon. Forecasters expect temperatures to rise above freezing by {f['thaw']}, when most "
        "of the snow should melt."
    )
    summary = f"{f['cm']} cm of overnight snow closed {f['schools']} schools in {town} and slowed buses, but a thaw is expected by {f['thaw']}."
    return text, f, summary


def _summary_storm(rng: _Rng, held: bool) -> tuple[str, str]:
    text, _, summary = _storm(rng, held)
    why = "It keeps the event, its size and its main effects, plus the outlook, and drops the operational details."
    return _summary_prompt(rng, text, hard=False), _easy(summary, why)


def _summary_storm_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    text, f, summary = _storm(rng, held)
    points = [
        f"Event: {f['cm']} cm of snow fell on {f['town']} on {f['day']} night.",
        f"Effects: {f['schools']} schools closed on {f['next']}, {f['plows']} snowplows cleared main roads, and buses ran a reduced schedule until the afternoon.",
        f"Outlook: temperatures should rise above freezing by {f['thaw']}, melting most of the snow.",
    ]
    return _summary_prompt(rng, text, hard=True), _hard(summary, points, label="Key points")


def _match(rng: _Rng, held: bool) -> tuple[str, dict, str]:
    town = _pick(rng, CITIES, held)
    rival = _draw_other(rng, CITIES, held, town)
    goals = rng.int(1, 3)
    s1 = goals + rng.int(0, 2)
    f = {"team": f"{town} United", "rival": f"{rival} City", "s1": s1, "s2": rng.int(0, s1 - 1), "day": rng.choice(("Saturday", "Sunday", "Wednesday")),
         "crowd": f"{rng.int(8, 60) * 1000:,}", "player": _pick(rng, NAMES, held), "goals": goals, "minute": rng.int(70, 90), "place": rng.choice(("second", "third", "fourth", "first"))}  # fmt: skip
    goal_words = {1: "one", 2: "two", 3: "three"}[goals]
    text = (
        f"{f['team']} beat {f['rival']} {f['s1']}–{f['s2']} on {f['day']} in front of {f['crowd']} fans. {f['player']} scored "
        f"{goal_words} of {f['team']}'s goals, including the winner in the {f['minute']}th minute. The win moves {f['team']} up "
        f"to {f['place']} place in the league table. {f['rival']}'s coach said the team had missed too many chances."
    )
    summary = f"{f['team']} beat {f['rival']} {f['s1']}–{f['s2']}, with {goal_words} goal{'s' if goals > 1 else ''} from {f['player']}, and moved up to {f['place']} in the league."
    return text, f, summary


def _summary_match(rng: _Rng, held: bool) -> tuple[str, str]:
    text, _, summary = _match(rng, held)
    why = "It keeps the result, the standout player and what the win means, and leaves out the crowd size and the coach's comment."
    return _summary_prompt(rng, text, hard=False), _easy(summary, why)


def _summary_match_hard(rng: _Rng, held: bool) -> tuple[str, str]:
    text, f, summary = _match(rng, held)
    points = [
        f"Result: {f['team']} won {f['s1']}–{f['s2']} against {f['rival']} on {f['day']}, watched by {f['crowd']} fans.",
        f"Key player: {f['player']} scored {f['goals']} of the goals, including the {f['minute']}th-minute winner.",
        f"Consequences: {f['team']} moves up to {f['place']} place, and {f['rival']}'s coach blamed missed chances.",
    ]
    return _summary_prompt(rng, text, hard=True), _hard(summary, points, label="Key points")


SUMMARIZATION = (
    [_summary_council, _summary_study, _summary_storm, _summary_match],
    [_summary_council_hard, _summary_study_hard, _summary_storm_hard, _summary_match_hard],
)


# --- common sense ---------------------------------------------------------------------------------

#: (object, typical mass in grams, how to say it)
MASSES = (
    ("paperclip", 1, "about 1 gram"), ("pencil", 6, "about 6 grams"), ("egg", 60, "about 60 grams"),
    ("apple", 180, "about 180 grams"), ("smartphone", 190, "about 190 grams"), ("football", 430, "about 430 grams"),
    ("loaf of bread", 800, "about 800 grams"), ("laptop", 1800, "about 2 kilograms"), ("house cat", 4500, "about 4 to 5 kilograms"),
    ("bicycle", 12000, "about 12 kilograms"), ("car tyre", 10000, "about 10 kilograms"), ("adult human", 70000, "about 70 kilograms"),
    ("washing machine", 70000, "about 70 kilograms"), ("piano", 250000, "about 250 kilograms"), ("horse", 500000, "about 500 kilograms"),
    ("car", 1400000, "about 1.4 tonnes"), ("elephant", 5000000, "about 5 tonnes"), ("feather", 0.1, "well under a gram"),
)  # fmt: skip
#: (thing, where it is usually found, why)
PLACES = (
    ("stethoscope", "In a doctor's office or a hospital", "Doctors and nurses use it to listen to the heart and lungs."),
    ("whisk", "In a kitchen", "It is a cooking tool for beating eggs and cream."),
    ("library card", "In someone's wallet or bag", "People carry it so they can borrow books whenever they visit the library."),
    ("lifeguard chair", "At a beach or a swimming pool", "Lifeguards sit high up on it to watch swimmers."),
    ("boarding pass", "At an airport, in a traveller's hand or phone", "It is needed to get on a plane."),
    ("chalkboard", "In a classroom", "Teachers write on it for the whole class to see."),
    ("shopping cart", "In a supermarket", "Shoppers push it around to carry their groceries."),
    ("anchor", "On a ship or a boat", "It is dropped to the seabed to keep the boat from drifting."),
    ("microscope", "In a laboratory or a science classroom", "Scientists and students use it to see very small things."),
    ("toothbrush", "In a bathroom", "People brush their teeth at the bathroom sink."),
    ("hammock", "In a garden or on a porch, hung between two trees or posts", "It is for resting outdoors."),
    ("fire extinguisher", "On the wall of a kitchen, hallway or public building", "It must be easy to reach quickly if a fire starts."),
    ("pillow", "On a bed", "It supports the head while sleeping."),
    ("price tag", "On goods in a shop", "It tells customers what an item costs."),
)  # fmt: skip
#: (task, tool, why)
TOOLS_FOR = (
    ("tighten a screw", "A screwdriver", "Its tip fits the screw head and turning it drives the screw in."),
    ("cut paper neatly", "Scissors", "Their two blades shear the paper along a line you control."),
    ("measure someone's body temperature", "A thermometer", "It reads the temperature directly, in degrees."),
    ("boil water for tea", "A kettle", "It heats water quickly to boiling and pours it safely."),
    ("see in a dark room during a power cut", "A torch (flashlight)", "It runs on batteries, so it works without mains power."),
    ("hang a picture on a wall", "A hammer and a nail (or a drill and a wall plug)", "The nail or plug holds the hook that carries the frame."),
    ("find your way in a city you don't know", "A map, or a navigation app on your phone", "It shows where you are and the route to where you want to go."),
    ("keep food cold", "A refrigerator", "It keeps food at about 4 °C, slowing the growth of bacteria."),
    ("dig a hole in the garden", "A spade", "Its flat, sharp blade cuts into the soil and lifts it out."),
    ("weigh flour for a recipe", "A kitchen scale", "It measures grams exactly, which is more reliable than cups."),
    ("sweep up broken glass", "A broom and a dustpan", "They collect the shards without touching them with your hands."),
)  # fmt: skip
#: (question, answer, why)
CONSEQUENCES = (
    ("What happens if you leave ice cream out of the freezer on a hot day?", "It melts", "Ice cream melts a little below 0 °C, so warm air turns it into a sweet liquid within minutes."),
    ("What happens to a phone if you never charge it?", "The battery runs flat and the phone switches off", "A phone draws power from its battery all the time, even when you are not using it."),
    ("Is it a good idea to put a metal fork in a microwave?", "No", "Metal with sharp edges can cause sparks in a microwave and damage the oven or start a fire."),
    ("Should you pour water on a pan of burning oil?", "No, cover it with a lid or a fire blanket and turn off the heat", "Water sinks under the oil, boils instantly and throws burning oil into the air."),
    ("Why do people carry umbrellas when it rains?", "To stay dry", "An umbrella blocks the rain from above, keeping your head, clothes and things dry."),
    ("Why should you not leave milk out of the fridge for a whole day?", "It goes sour and can make you ill", "At room temperature bacteria multiply quickly in milk."),
    ("What happens to a glass of water left in the freezer overnight?", "It turns to ice, and the glass may crack", "Water freezes below 0 °C and expands by about 9% as it turns to ice."),
    ("Why do we wear sunglasses on sunny days?", "To protect our eyes from glare and UV light", "Bright sunlight makes it hard to see, and ultraviolet light can damage the eyes over time."),
    ("Is it safe to swim right after a thunderstorm starts?", "No, get out of the water", "Lightning often strikes the highest point or travels through water, so swimmers are at risk."),
    ("Why do people wear helmets when cycling?", "To protect their heads in a fall", "A helmet absorbs much of the impact that would otherwise hit the skull."),
    ("What happens if you plant a seed and never water it?", "It will not grow", "A seed needs water to swell, break its coat and start to grow."),
    ("Why should you look both ways before crossing a street?", "To make sure no traffic is coming from either direction", "Cars can come from both sides, and drivers may not see you in time to stop."),
)  # fmt: skip


def _heavier(rng: _Rng, held: bool) -> tuple[str, str]:
    pairs = [(a, b) for a in MASSES for b in MASSES if a[0] < b[0] and max(a[1], b[1]) >= 5 * min(a[1], b[1])]
    a, b = _pick(rng, pairs, held, key=lambda p: (p[0][0], p[1][0]))
    if rng.below(2):
        a, b = b, a
    heavy, light = (a, b) if a[1] > b[1] else (b, a)
    question = rng.choice(("Which is heavier, a {a} or a {b}?", "Which weighs more: a {a} or a {b}?")).format(
        a=a[0], b=b[0]
    )
    return question, _easy(f"A {heavy[0]}", f"A {heavy[0]} weighs {heavy[2]}, while a {light[0]} weighs {light[2]}.")


def _where(rng: _Rng, held: bool) -> tuple[str, str]:
    thing, place, why = _pick(rng, PLACES, held, key=lambda p: p[0])
    question = rng.choice(("Where would you usually find a {t}?", "Where is a {t} most likely to be found?")).format(
        t=thing
    )
    return question, _easy(place, why)


def _tool_for(rng: _Rng, held: bool) -> tuple[str, str]:
    task, tool, why = _pick(rng, TOOLS_FOR, held, key=lambda t: t[0])
    question = rng.choice(("What would you use to {t}?", "Which everyday tool helps you {t}?")).format(t=task)
    return question, _easy(tool, why)


def _consequence(rng: _Rng, held: bool) -> tuple[str, str]:
    question, answer, why = _pick(rng, CONSEQUENCES, held, key=lambda c: c[0])
    return question, _easy(answer, why)


PLACES_TO_BE = (
    "the airport",
    "a job interview",
    "the train station",
    "a concert",
    "the dentist",
    "my sister's wedding",
    "a football match",
)


def _leave_time(rng: _Rng, held: bool) -> tuple[str, str]:
    place, due, drive, park, buffer = _draw(
        rng,
        held,
        lambda: (
            rng.choice(PLACES_TO_BE),
            60 * rng.int(7, 19) + 5 * rng.int(0, 11),
            5 * rng.int(3, 18),
            5 * rng.int(1, 4),
            5 * rng.int(1, 6),
        ),
    )
    leave = due - drive - park - buffer
    question = (
        f"I need to be at {place} by {_clock(due)}. The drive takes {drive} minutes, parking and walking in take another "
        f"{park} minutes, and I want {buffer} minutes of buffer in case of traffic. When should I leave home?"
    )
    steps = [
        f"Work backwards from {_clock(due)}.",
        f"Total time needed: {drive} (drive) + {park} (parking and walking) + {buffer} (buffer) = {drive + park + buffer} minutes.",
        f"{_clock(due)} minus {drive + park + buffer} minutes is {_clock(leave)}.",
        f"Leaving at {_clock(leave)} gets you there at {_clock(due - buffer)} if the traffic is normal, with the buffer to spare.",
    ]
    return question, _hard(f"Leave by {_clock(leave)}.", steps)


def _roast(rng: _Rng, held: bool) -> tuple[str, str]:
    dish, dinner, cook, rest, prep = _draw(
        rng,
        held,
        lambda: (
            rng.choice(("a chicken", "a leg of lamb", "a turkey", "a pork roast")),
            60 * rng.int(17, 21) + 15 * rng.int(0, 3),
            15 * rng.int(4, 16),
            5 * rng.int(2, 6),
            5 * rng.int(3, 8),
        ),
    )
    into_oven = dinner - rest - cook
    question = (
        f"I want to serve dinner at {_clock(dinner)}. {dish.capitalize()} needs {cook} minutes in the oven and should rest "
        f"for {rest} minutes before carving, and preparing it takes {prep} minutes. When do I start preparing, and when must it go in the oven?"
    )
    steps = [
        f"Resting comes last: it must come out of the oven at {_clock(dinner)} − {rest} min = {_clock(dinner - rest)}.",
        f"Cooking takes {cook} minutes ({cook // 60} h {cook % 60} min), so it goes in at {_clock(dinner - rest)} − {cook} min = {_clock(into_oven)}.",
        f"Preparation takes {prep} minutes, so start at {_clock(into_oven)} − {prep} min = {_clock(into_oven - prep)}.",
        "Preheat the oven during the preparation so it is hot when the dish goes in.",
    ]
    return question, _hard(
        f"Start preparing at {_clock(into_oven - prep)} and put it in the oven at {_clock(into_oven)}.", steps
    )


def _budget(rng: _Rng, held: bool) -> tuple[str, str]:
    income, rent, food, other, goal = _draw(
        rng,
        held,
        lambda: (
            100 * rng.int(20, 45),
            50 * rng.int(14, 24),
            25 * rng.int(12, 24),
            25 * rng.int(8, 20),
            100 * rng.int(10, 60),
        ),
    )
    left = income - rent - food - other
    if left <= 0:
        return _budget(rng, held)
    months = math.ceil(goal / left)
    question = (
        f"I take home {_money(income)} a month. Rent is {_money(rent)}, food about {_money(food)}, and other bills {_money(other)}. "
        f"If I save everything that is left, how many months will it take to save {_money(goal)} for a new laptop?"
    )
    steps = [
        f"Monthly costs: {_money(rent)} + {_money(food)} + {_money(other)} = {_money(rent + food + other)}.",
        f"Left each month: {_money(income)} − {_money(rent + food + other)} = {_money(left)}.",
        f"{_money(goal)} ÷ {_money(left)} = {goal / left:.2f} months.",
        f"Savings only reach the goal at the end of a whole month, so round up to {months} months ({_money(months * left)} saved by then).",
    ]
    return question, _hard(f"{months} months", steps)


#: (key, question, answer, steps)
ADVICE = (
    ("locked_out", "I locked myself out of my house. What should I do?", "Stay calm, try the people and places that may have a key, and call a licensed locksmith if none do.",
     ["Check every door and ground-floor window you are allowed to open; do not climb or break anything.", "Think of who has a spare key: a family member, a flatmate, a neighbour or your landlord.", "If you rent, call the landlord or building manager; many can let you in.", "If nobody has a key, call a licensed locksmith and ask for the price before they come; have ID ready to prove you live there.", "Afterwards, leave a spare key with someone you trust."]),
    ("plants_vacation", "How do I keep my houseplants alive during a two-week holiday?", "Water them well before you go, move them out of direct sun, and give the thirsty ones a slow water supply.",
     ["Water every plant thoroughly a day before leaving and let the excess drain.", "Move them away from hot, sunny windows; bright indirect light makes them use less water.", "Group them together in a cool room so they keep each other's air humid.", "For thirsty plants, use a wick from a water jar to the soil, or self-watering spikes.", "Skip fertiliser before leaving, and if possible ask a neighbour to check once."]),
    ("interview_prep", "How should I prepare the day before a job interview?", "Research the company, rehearse your answers, prepare what you need and get a good night's sleep.",
     ["Reread the job description and match each requirement to an example from your experience.", "Look up the company: what it does, recent news and, if you can, who will interview you.", "Practise answers to common questions aloud, including 'Tell me about yourself' and a time you solved a problem.", "Prepare two or three questions of your own about the role and the team.", "Lay out your clothes, print your CV, check the route and leave time to arrive 10 minutes early.", "Go to bed on time: being rested matters more than last-minute cramming."]),
    ("battery_drain", "My phone battery runs out much faster than it used to. What should I check?", "Look at which apps use the most battery, check the screen and connectivity settings, and check the battery's health.",
     ["Open the battery settings and see which apps used the most power; update, restrict or remove the worst ones.", "Lower the screen brightness or turn on automatic brightness, and shorten the screen timeout.", "Turn off location, Bluetooth or mobile data for apps that do not need them.", "Make sure the system and apps are up to date, since updates often fix battery bugs.", "Check battery health: after two or three years batteries hold much less charge, and replacing it may be the fix."]),
    ("moving_house", "What should I do in the week before moving house?", "Finish packing room by room, confirm the move, redirect your post and keep an essentials box apart.",
     ["Confirm the date and time with the movers or the friends who are helping.", "Pack room by room and label every box with its room and contents.", "Redirect your post and update your address with the bank, employer and doctor.", "Arrange for the utilities to be read on moving day and set up at the new home.", "Pack an essentials box: chargers, toiletries, medicines, documents, a kettle and a change of clothes.", "Defrost the freezer the day before and use up food you cannot take."]),
    ("first_aid_cut", "Someone cut their finger while cooking. What should I do?", "Press on the cut to stop the bleeding, clean it, cover it, and get medical help if it is deep or keeps bleeding.",
     ["Wash your hands, or use gloves, if you can.", "Press a clean cloth or bandage firmly on the cut and raise the hand above the heart for several minutes.", "Once the bleeding stops, rinse the cut under clean running water.", "Cover it with a plaster or a sterile dressing.", "Get medical help if the cut is deep or gaping, will not stop bleeding after 10 minutes of pressure, or was made by something dirty."]),
    ("study_plan", "I have an exam in two weeks and a lot to learn. How should I plan?", "Split the material over the days, study in short focused sessions, test yourself often and keep the last days for review.",
     ["List every topic and estimate how long each needs.", "Spread the topics over the first ten days, putting the hardest ones early.", "Study in focused blocks of 30 to 50 minutes with short breaks.", "Test yourself with past papers or flashcards instead of only rereading notes.", "Keep the last three or four days for review and practice exams.", "Sleep well, especially the night before the exam."]),
)  # fmt: skip


def _advice(rng: _Rng, held: bool) -> tuple[str, str]:
    _, question, answer, steps = _pick(rng, ADVICE, held, key=lambda a: a[0])
    return rng.choice(("{q}", "{q} Give me practical steps.")).format(q=question), _hard(answer, steps)


COMMON_SENSE = ([_heavier, _where, _tool_for, _consequence], [_leave_time, _roast, _budget, _advice])


# --- splits ---------------------------------------------------------------------------------------

GENERATORS: dict[str, tuple[Sequence[Generator], Sequence[Generator]]] = {
    "math": MATH,
    "coding": CODING,
    "science": SCIENCE,
    "reasoning": REASONING,
    "tool_use": TOOL_USE,
    "reading": READING,
    "summarization": SUMMARIZATION,
    "common_sense": COMMON_SENSE,
}
assert tuple(GENERATORS) == DOMAINS


def records(split: Split) -> list[Record]:
    """The records of one split, freshly built each call (callers may modify them)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return [Record.model_validate(body) for body in _bodies(split)]


@cache
def _bodies(split: str) -> tuple[dict, ...]:
    bodies: list[dict] = []
    for domain, (easy, hard) in GENERATORS.items():
        for difficulty, generators, count in (("easy", easy, SIZES[split][0]), ("hard", hard, SIZES[split][1])):
            for i, (text, output) in enumerate(_generate(split, domain, difficulty, generators, count), start=1):
                if split == "prompts":
                    body = {"id": f"prompt-{domain}-{difficulty}-{i:04d}", "input": text}
                else:
                    body = {"id": f"{domain}-{difficulty}-{i:04d}", "input": text, "output": output}
                bodies.append({**body, "domain": domain, "difficulty": difficulty})
    return tuple(bodies)


def _generate(
    split: str, domain: str, difficulty: str, generators: Sequence[Generator], count: int
) -> list[tuple[str, str]]:
    """`count` examples with distinct inputs, cycling through the generators for variety."""
    rng = _Rng(f"metaspec-builtin/{split}/{domain}/{difficulty}")
    held = split == "eval"
    seen: set[str] = set()
    made: list[tuple[str, str]] = []
    attempts = 0
    while len(made) < count:
        attempts += 1
        if attempts > 50 * count:
            raise RuntimeError(f"built-in {split}/{domain}/{difficulty}: only {len(made)} distinct inputs of {count}")
        text, output = generators[attempts % len(generators)](rng, held)
        key = " ".join(text.casefold().split())
        if key not in seen:
            seen.add(key)
            made.append((text, output))
    return made


def main(argv: list[str] | None = None) -> int:
    """`metaspec dataset --split train|eval|prompts [--out FILE_OR_URI]`: write a split as JSONL."""
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


if __name__ == "__main__":
    sys.exit(main())

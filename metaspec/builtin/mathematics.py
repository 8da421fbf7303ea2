"""Math: arithmetic, percentages, conversions, equations, fractions; multi-step word problems."""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction

from ._base import CITIES, NAMES, Rng, answer_easy, answer_hard, draw, frac, money, num, pick

ITEMS = ("stickers", "marbles", "apples", "books", "stamps", "cards", "pencils", "coins", "shells", "beads")


def _math_multiply(rng: Rng, held: bool) -> tuple[str, str]:
    a, b = draw(rng, held, lambda: (rng.int(12, 99), rng.int(11, 49)))
    question = rng.choice(("What is {a} × {b}?", "Compute {a} times {b}.", "Multiply {a} by {b}."))
    tens, ones = b - b % 10, b % 10
    if ones:
        why = f"{a} × {b} = {a} × {tens} + {a} × {ones} = {a * tens:,} + {a * ones:,} = {a * b:,}."
    else:
        why = f"{a} × {b} = {a} × {b // 10} × 10 = {a * b // 10:,} × 10 = {a * b:,}."
    return question.format(a=a, b=b), answer_easy(f"{a * b:,}", why)


def _math_percent(rng: Rng, held: bool) -> tuple[str, str]:
    p, n = draw(rng, held, lambda: (rng.choice((5, 10, 15, 20, 25, 30, 40, 60, 75)), 20 * rng.int(2, 48)))
    result = p * n // 100
    question = rng.choice(("What is {p}% of {n}?", "Find {p} percent of {n}.", "How much is {p}% of {n}?"))
    why = f"{p}% means {p}/100, so {p}/100 × {n} = {p * n:,}/100 = {result}."
    return question.format(p=p, n=n), answer_easy(str(result), why)


def _math_story(rng: Rng, held: bool) -> tuple[str, str]:
    name = pick(rng, NAMES, held)
    item = rng.choice(ITEMS)
    a, b = rng.int(20, 90), rng.int(3, 19)
    if rng.below(2):
        question = f"{name} has {a} {item} and gives {b} of them to a friend. How many {item} does {name} have left?"
        return question, answer_easy(
            f"{a - b} {item}", f"{name} starts with {a} and gives away {b}, so {a} − {b} = {a - b}."
        )
    question = f"{name} had {a} {item} and then got {b} more. How many {item} does {name} have now?"
    return question, answer_easy(f"{a + b} {item}", f"{name} had {a} and got {b} more, so {a} + {b} = {a + b}.")


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


def _math_convert(rng: Rng, held: bool) -> tuple[str, str]:
    (big, small, factor), half = draw(rng, held, lambda: (rng.choice(CONVERSIONS), rng.int(3, 19) / 2))
    amount = num(Fraction(half).limit_denominator(2))
    result = num(Fraction(half).limit_denominator(2) * factor)
    question = rng.choice(("How many {s} are in {x} {b}?", "Convert {x} {b} to {s}.", "{x} {b} is how many {s}?"))
    why = f"1 {big[:-1]} is {factor} {small}, so {amount} × {factor} = {result}."
    return question.format(s=small, x=amount, b=big), answer_easy(f"{result} {small}", why)


def _math_equation(rng: Rng, held: bool) -> tuple[str, str]:
    a, x, b = draw(rng, held, lambda: (rng.int(2, 12), rng.int(-9, 20), rng.int(1, 40)))
    c = a * x + b
    question = rng.choice(
        ("Solve for x: {a}x + {b} = {c}", "Find x if {a}x + {b} = {c}.", "What is x when {a}x + {b} = {c}?")
    )
    why = f"Subtract {b} from both sides to get {a}x = {c - b}, then divide by {a}: x = {x}."
    return question.format(a=a, b=b, c=c), answer_easy(f"x = {x}", why)


PROPER_FRACTIONS = [(a, b) for b in (2, 3, 4, 5, 6, 8, 10, 12) for a in range(1, b) if math.gcd(a, b) == 1]


def _math_fraction(rng: Rng, held: bool) -> tuple[str, str]:
    (a, b), (c, d) = draw(rng, held, lambda: (rng.choice(PROPER_FRACTIONS), rng.choice(PROPER_FRACTIONS)))
    total = Fraction(a, b) + Fraction(c, d)
    common = math.lcm(b, d)
    why = f"With the common denominator {common}, {a}/{b} + {c}/{d} = {a * common // b}/{common} + {c * common // d}/{common} = {a * common // b + c * common // d}/{common}"
    answer = num(total) if total.denominator == 1 else f"{total.numerator}/{total.denominator}"
    why += "." if total.denominator == common else f", which simplifies to {answer}."
    return rng.choice(("What is {a}/{b} + {c}/{d}?", "Add {a}/{b} and {c}/{d}.")).format(
        a=a, b=b, c=c, d=d
    ), answer_easy(answer, why)


def _math_average(rng: Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, ...]:
        values = [rng.int(4, 60) for _ in range(rng.int(3, 5))]
        values[-1] += (-sum(values)) % len(values)
        return tuple(values)

    values = draw(rng, held, make)
    listed = ", ".join(map(str, values[:-1])) + f" and {values[-1]}"
    total = sum(values)
    why = f"The sum is {' + '.join(map(str, values))} = {total}, and {total} ÷ {len(values)} = {total // len(values)}."
    return f"What is the average of {listed}?", answer_easy(str(total // len(values)), why)


SHOP = (("pencils", 35), ("notebooks", 240), ("erasers", 60), ("pens", 125), ("folders", 180), ("rulers", 95))


def _math_change(rng: Rng, held: bool) -> tuple[str, str]:
    name = pick(rng, NAMES, held)
    (item1, p1), (item2, p2) = rng.sample(SHOP, 2)
    q1, q2 = rng.int(2, 12), rng.int(2, 6)
    cost1, cost2 = Decimal(q1 * p1) / 100, Decimal(q2 * p2) / 100
    total = cost1 + cost2
    bill = next(b for b in (10, 20, 50, 100) if b > total)
    question = (
        f"A shop sells {item1} at {money(p1 / 100)} each and {item2} at {money(p2 / 100)} each. "
        f"{name} buys {q1} {item1} and {q2} {item2} and pays with a ${bill} bill. How much change does {name} get?"
    )
    steps = [
        f"{item1.capitalize()}: {q1} × {money(p1 / 100)} = {money(cost1)}.",
        f"{item2.capitalize()}: {q2} × {money(p2 / 100)} = {money(cost2)}.",
        f"Total cost: {money(cost1)} + {money(cost2)} = {money(total)}.",
        f"Change: ${bill}.00 − {money(total)} = {money(bill - total)}.",
    ]
    return question, answer_hard(money(bill - total), steps)


def _speed_pairs() -> list[tuple[int, int, int]]:
    pairs = []
    for v1 in range(30, 121, 10):
        for v2 in range(30, 121, 10):
            if v1 != v2 and (2 * v1 * v2) % (v1 + v2) == 0:
                pairs.append((v1, v2, math.lcm(v1, v2)))
    return pairs


def _math_round_trip(rng: Rng, held: bool) -> tuple[str, str]:
    v1, v2, d = pick(rng, _speed_pairs(), held)
    place = pick(rng, CITIES, held)
    t1, t2 = Fraction(d, v1), Fraction(d, v2)
    mean = Fraction(2 * d) / (t1 + t2)
    question = (
        f"A driver goes {d} km to {place} at {v1} km/h and comes back the same way at {v2} km/h. "
        "What is the average speed for the whole round trip?"
    )
    steps = [
        f"Time there: {d} ÷ {v1} = {num(t1)} h.",
        f"Time back: {d} ÷ {v2} = {num(t2)} h.",
        f"Total distance: 2 × {d} = {2 * d} km; total time: {num(t1)} + {num(t2)} = {num(t1 + t2)} h.",
        f"Average speed = total distance ÷ total time = {2 * d} ÷ {num(t1 + t2)} = {num(mean)} km/h.",
        f"It is not the plain average of the speeds ({num(Fraction(v1 + v2, 2))} km/h): more time is spent at the lower speed.",
    ]
    return question, answer_hard(f"{num(mean)} km/h", steps)


def _math_tickets(rng: Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, int, int, int]:
        n = rng.int(20, 60)
        return rng.int(8, 15), rng.int(3, 7), n, rng.int(1, n - 1)

    adult, child, n, n_adult = draw(rng, held, make)
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
    return question, answer_hard(f"{n_adult} adult tickets", steps)


def _math_interest(rng: Rng, held: bool) -> tuple[str, str]:
    principal, rate, years = draw(
        rng, held, lambda: (1000 * rng.int(1, 20), rng.choice((2, 3, 4, 5, 6, 8)), rng.int(2, 3))
    )
    question = (
        f"You deposit {money(principal)} at {rate}% interest per year, compounded yearly. "
        f"How much is in the account after {years} years?"
    )
    amount, steps = Decimal(principal), []
    for year in range(1, years + 1):
        new = (amount * (100 + rate) / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
        steps.append(f"Year {year}: {money(amount)} × {1 + Decimal(rate) / 100} = {money(new)}.")
        amount = new
    steps.append(f"Interest earned: {money(amount)} − {money(principal)} = {money(amount - principal)}.")
    return question, answer_hard(money(amount), steps)


def _math_path(rng: Rng, held: bool) -> tuple[str, str]:
    length, width, path = draw(rng, held, lambda: (rng.int(6, 30), rng.int(4, 20), rng.int(1, 3)))
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
    return question, answer_hard(f"{area} m²", steps)


def _math_pipes(rng: Rng, held: bool) -> tuple[str, str]:
    pairs = [(a, b) for a in range(2, 13) for b in range(a + 1, 25) if (60 * a * b) % (a + b) == 0]
    a, b = pick(rng, pairs, held)
    together = Fraction(a * b, a + b)
    minutes = int(together * 60)
    hours_text = f"{minutes // 60} h {minutes % 60} min" if minutes % 60 else f"{minutes // 60} hours"
    question = (
        f"Pipe A fills a tank in {a} hours and pipe B fills it in {b} hours. How long do they take to fill it together?"
    )
    steps = [
        f"Pipe A fills 1/{a} of the tank per hour and pipe B fills 1/{b}.",
        f"Together: 1/{a} + 1/{b} = {b + a}/{a * b} = {frac(Fraction(a + b, a * b))} of the tank per hour.",
        f"Time = 1 ÷ {frac(Fraction(a + b, a * b))} = {frac(together)} hours = {minutes} minutes.",
    ]
    return question, answer_hard(hours_text, steps)


def _math_series(rng: Rng, held: bool) -> tuple[str, str]:
    k, n = draw(rng, held, lambda: (rng.int(2, 9), rng.int(10, 60)))
    last = k * n
    total = k * n * (n + 1) // 2
    question = f"What is the sum of all multiples of {k} from {k} to {last}?"
    steps = [
        f"The numbers are {k} × 1, {k} × 2, …, {k} × {n}: there are {n} of them.",
        f"Their sum is {k} × (1 + 2 + … + {n}).",
        f"1 + 2 + … + {n} = {n} × {n + 1} ÷ 2 = {n * (n + 1) // 2}.",
        f"So the sum is {k} × {n * (n + 1) // 2} = {total:,}.",
    ]
    return question, answer_hard(f"{total:,}", steps)


GENERATORS = (
    [_math_multiply, _math_percent, _math_story, _math_convert, _math_equation, _math_fraction, _math_average],
    [_math_change, _math_round_trip, _math_tickets, _math_interest, _math_path, _math_pipes, _math_series],
)

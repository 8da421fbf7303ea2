"""Reasoning: sequences, calendars, comparisons, syllogisms, odd one out; ordering, age and scheduling puzzles."""

from __future__ import annotations

import math

from ._base import NAMES, WEEKDAYS, Rng, answer_easy, answer_hard, draw, ordinal_word, pick_many, plural


def _sequence(rng: Rng, held: bool) -> tuple[str, str]:
    kind, start, step = draw(
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
    return question.format(s=listed), answer_easy(f"{nxt:,}", why)


def _weekday(rng: Rng, held: bool) -> tuple[str, str]:
    day, n = draw(rng, held, lambda: (rng.choice(WEEKDAYS), rng.int(3, 100)))
    target = WEEKDAYS[(WEEKDAYS.index(day) + n) % 7]
    weeks, rest = divmod(n, 7)
    question = rng.choice(
        (
            "If today is {d}, what day of the week will it be in {n} days?",
            "Today is {d}. Which weekday is it {n} days from now?",
        )
    )
    why = f"{n} days = {plural(weeks, 'week')} and {plural(rest, 'day')}; whole weeks land on {day} again, and {plural(rest, 'day')} after {day} is {target}."
    return question.format(d=day, n=n), answer_easy(target, why)


COMPARISONS = (
    ("older", "youngest", "oldest"),
    ("taller", "shortest", "tallest"),
    ("faster", "slowest", "fastest"),
    ("heavier", "lightest", "heaviest"),
)


def _compare(rng: Rng, held: bool) -> tuple[str, str]:
    a, b, c = pick_many(rng, NAMES, held, 3)
    (more, least, most), asks_least = draw(rng, held, lambda: ((rng.choice(COMPARISONS), rng.below(2) == 1)))
    question = f"{a} is {more} than {b}, and {b} is {more} than {c}. Who is the {least if asks_least else most}?"
    if asks_least:
        return question, answer_easy(c, f"The order from most to least is {a}, {b}, {c}, so {c} is the {least}.")
    return question, answer_easy(a, f"{a} is {more} than {b}, who is {more} than {c}, so {a} is the {most}.")


CATEGORIES = (  # (plural, singular-ish label for "a …", members)
    ("roses", "flowers"), ("sparrows", "birds"), ("squares", "rectangles"), ("violins", "string instruments"),
    ("oaks", "trees"), ("salmon", "fish"), ("trucks", "vehicles"), ("poodles", "dogs"), ("whales", "mammals"),
    ("diamonds", "gemstones"), ("novels", "books"), ("tulips", "plants"),
)  # fmt: skip


def _syllogism(rng: Rng, held: bool) -> tuple[str, str]:
    (members, group), valid = draw(rng, held, lambda: (rng.choice(CATEGORIES), rng.below(2) == 1))
    thing = rng.choice(("Pip", "Rex", "Item 7", "Specimen B", "Sample 12", "Exhibit Q"))
    if valid:
        question = f"All {members} are {group}. {thing} is one of the {members}. Is {thing} one of the {group}?"
        return question, answer_easy(
            "Yes", f"Everything in the group of {members} belongs to the {group}, and {thing} is in that group."
        )
    question = f"All {members} are {group}. {thing} is one of the {group}. Must {thing} be one of the {members}?"
    why = f"The rule says every one of the {members} is among the {group}, not that all {group} are {members}; {thing} could be another kind."
    return question, answer_easy("No, not necessarily", why)


GROUPS = {
    "fruits": ("apple", "banana", "cherry", "mango", "pear", "plum", "grape", "kiwi"),
    "vegetables": ("carrot", "potato", "onion", "spinach", "broccoli", "leek"),
    "planets": ("Mars", "Venus", "Saturn", "Neptune", "Jupiter", "Mercury"),
    "musical instruments": ("piano", "violin", "trumpet", "flute", "cello", "drum"),
    "metals": ("iron", "copper", "zinc", "silver", "aluminium", "nickel"),
    "colours": ("red", "green", "purple", "yellow", "orange", "teal"),
    "mammals": ("dolphin", "bat", "horse", "elephant", "otter", "camel"),
}


def _odd_one_out(rng: Rng, held: bool) -> tuple[str, str]:
    main, other = draw(rng, held, lambda: tuple(rng.sample(sorted(GROUPS), 2)))
    words = [*rng.sample(GROUPS[main], 3), rng.choice(GROUPS[other])]
    if set(words[:3]) & set(GROUPS[other]) or words[3] in GROUPS[main]:
        return _odd_one_out(rng, held)
    odd = words[3]
    shown = rng.sample(words, 4)
    question = rng.choice(("Which word does not belong: {w}?", "Find the odd one out: {w}.")).format(w=", ".join(shown))
    return question, answer_easy(
        odd, f"The others ({', '.join(w for w in shown if w != odd)}) are {main}; {odd} is one of the {other}."
    )


def _race(rng: Rng, held: bool) -> tuple[str, str]:
    n = rng.int(4, 5)
    order = pick_many(rng, NAMES, held, n)
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
            f"{order[i]} finished right ahead of {order[i + 1]}, so {order[i + 1]} came {ordinal_word(i + 2)}."
            for i in range(n - 1)
        ],
        f"{order[-1]} is not ahead of anyone, which confirms {order[-1]} came last.",
    ]
    return question, answer_hard(", ".join(order), steps)


def _ages(rng: Rng, held: bool) -> tuple[str, str]:
    def make() -> tuple[int, int, int, int]:
        for _ in range(1000):
            k, m, n = rng.int(3, 7), rng.int(2, 4), rng.int(2, 20)
            if k > m and (n * (m - 1)) % (k - m) == 0:
                son = n * (m - 1) // (k - m)
                if 2 <= son <= 16 and 20 <= k * son <= 70:
                    return k, m, n, son
        raise RuntimeError("no age puzzle")

    k, m, n, son = draw(rng, held, make)
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
    return question, answer_hard(f"The son is {son} and the {parent} is {k * son}.", steps)


def _schedule(rng: Rng, held: bool) -> tuple[str, str]:
    a, b, day = draw(rng, held, lambda: (rng.int(2, 9), rng.int(3, 12), rng.choice(WEEKDAYS)))
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
        f"{both} days = {plural(both // 7, 'week')} and {plural(both % 7, 'day')}.",
        f"{plural(both % 7, 'day')} after {day} is {target}.",
    ]
    return question, answer_hard(f"In {both} days, on a {target}.", steps)


def _handshakes(rng: Rng, held: bool) -> tuple[str, str]:
    n = draw(rng, held, lambda: rng.int(5, 40))
    event = rng.choice(("meeting", "party", "workshop", "team dinner", "conference session"))
    question = f"At a {event} with {n} people, everyone shakes hands exactly once with everyone else. How many handshakes are there?"
    steps = [
        f"Each person shakes hands with the other {n - 1} people.",
        f"Counting per person gives {n} × {n - 1} = {n * (n - 1)}.",
        "That counts every handshake twice, once for each of the two people.",
        f"So there are {n * (n - 1)} ÷ 2 = {n * (n - 1) // 2} handshakes.",
    ]
    return question, answer_hard(f"{n * (n - 1) // 2} handshakes", steps)


GENERATORS = ([_sequence, _weekday, _compare, _syllogism, _odd_one_out], [_race, _ages, _schedule, _handshakes])

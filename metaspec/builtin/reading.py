"""Reading: answer from a short generated passage; questions that combine several of its facts."""

from __future__ import annotations

from ._base import (
    CITIES,
    NAMES,
    TOWNS,
    WEEKDAYS,
    Rng,
    answer_easy,
    answer_hard,
    article,
    clock,
    pick,
    pick_many,
    plural,
)

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


def _reading_prompt(rng: Rng, passage: str, question: str) -> str:
    intro = rng.choice(
        (
            "Read the passage and answer the question.",
            "Answer the question using only the text below.",
            "Use the passage to answer.",
        )
    )
    return f"{intro}\n\nPassage: {passage}\n\nQuestion: {question}"


def _library_facts(rng: Rng, held: bool) -> dict:
    name = pick(rng, NAMES, held)
    day, club_day = rng.sample(WEEKDAYS[:5], 2)
    return {"name": name, "job": rng.choice(JOBS), "town": pick(rng, CITIES, held), "day": day, "club": club_day,
            "blocks": rng.int(2, 12), "books": rng.int(2, 5), "open": rng.int(8, 10), "close": rng.int(17, 21)}  # fmt: skip


def _library_passage(f: dict) -> str:
    return (
        f"{f['name']} works as {article(f['job'])} {f['job']} in {f['town']}. Every {f['day']}, {f['name']} walks {f['blocks']} blocks to the "
        f"public library and borrows {f['books']} books. The library opens at {f['open']}:00 and closes at {f['close']}:00. "
        f"Last spring {f['name']} also joined a chess club that meets on {f['club']} evenings at the community centre."
    )


def _reading_library(rng: Rng, held: bool) -> tuple[str, str]:
    f = _library_facts(rng, held)
    kind = rng.choice(("job", "books", "club", "open", "blocks"))
    question, answer, why = {
        "job": (
            f"What is {f['name']}'s job?",
            f"{f['name']} is {article(f['job'])} {f['job']}.",
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
    return _reading_prompt(rng, _library_passage(f), question), answer_easy(answer, why)


def _reading_library_hard(rng: Rng, held: bool) -> tuple[str, str]:
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
    return _reading_prompt(rng, _library_passage(f), question), answer_hard(answer, steps)


def _bakery_facts(rng: Rng, held: bool) -> dict:
    name = pick(rng, NAMES, held)
    year = rng.int(1978, 2012)
    return {"name": name, "shop": rng.choice(("Golden Crust", "Morning Loaf", "Hearth & Grain", "Little Oven", "Sunrise")),
            "town": pick(rng, CITIES, held), "year": year, "worked": rng.int(3, 15), "job": rng.choice(JOBS),
            "loaves": 20 * rng.int(3, 12), "opens": rng.int(5, 8), "pastry": rng.choice(PASTRIES),
            "cafe": year + rng.int(2, 11), "seats": rng.int(8, 30)}  # fmt: skip


def _bakery_passage(f: dict) -> str:
    return (
        f"The {f['shop']} bakery in {f['town']} was opened in {f['year']} by {f['name']}, who had worked for {f['worked']} "
        f"years as {article(f['job'])} {f['job']} before. It bakes {f['loaves']} loaves of bread every morning and opens at {f['opens']} a.m. "
        f"On Saturdays it also sells {f['pastry']}, which usually sell out by noon. In {f['cafe']} the bakery added a "
        f"small café with {f['seats']} seats."
    )


def _reading_bakery(rng: Rng, held: bool) -> tuple[str, str]:
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
    return _reading_prompt(rng, _bakery_passage(f), question), answer_easy(answer, why)


def _reading_bakery_hard(rng: Rng, held: bool) -> tuple[str, str]:
    f = _bakery_facts(rng, held)
    question = (
        f"How many years after opening did the bakery add its café, and how many years had {f['name']} worked before "
        f"the café opened (counting the years as {article(f['job'])} {f['job']} and at the bakery)? How many loaves does it bake in a 6-day week?"
    )
    gap = f["cafe"] - f["year"]
    steps = [
        f"The bakery opened in {f['year']} and the café was added in {f['cafe']}: {f['cafe']} − {f['year']} = {gap} years.",
        f"Before opening, {f['name']} worked {f['worked']} years as {article(f['job'])} {f['job']}.",
        f"Total working years until the café opened: {f['worked']} + {gap} = {f['worked'] + gap}.",
        f"Loaves: {f['loaves']} per morning × 6 days = {f['loaves'] * 6}.",
    ]
    answer = f"{gap} years after opening; {f['worked'] + gap} years of work in total; {f['loaves'] * 6} loaves a week."
    return _reading_prompt(rng, _bakery_passage(f), question), answer_hard(answer, steps)


def _train_facts(rng: Rng, held: bool) -> dict:
    name = pick(rng, NAMES, held)
    town, town2 = pick_many(rng, TOWNS, held, 2)
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
    late = "exactly on time" if f["late"] == 0 else f"{plural(f['late'], 'minute')} late"
    return (
        f"On {f['day']}, {f['name']} took the {clock(f['depart'])} train from {f['town']} to {f['town2']}. The ride was "
        f"scheduled to take {f['ride']} minutes, and the train arrived {late}. From the station, {f['name']} walked "
        f"{f['walk']} minutes to a meeting that started at {clock(f['meeting'])}."
    )


def _reading_train(rng: Rng, held: bool) -> tuple[str, str]:
    f = _train_facts(rng, held)
    kind = rng.choice(("depart", "ride", "walk", "where"))
    question, answer, why = {
        "depart": (
            "What time did the train leave?",
            clock(f["depart"]),
            f'The passage says {f["name"]} "took the {clock(f["depart"])} train".',
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
    return _reading_prompt(rng, _train_passage(f), question), answer_easy(answer, why)


def _reading_train_hard(rng: Rng, held: bool) -> tuple[str, str]:
    f = _train_facts(rng, held)
    arrive = f["depart"] + f["ride"] + f["late"]
    at_meeting = arrive + f["walk"]
    diff = f["meeting"] - at_meeting
    question = f"Did {f['name']} reach the meeting on time? Work out the times."
    steps = [
        f"Scheduled arrival: {clock(f['depart'])} + {f['ride']} minutes = {clock(f['depart'] + f['ride'])}.",
        f"The train was {plural(f['late'], 'minute')} late, so it arrived at {clock(arrive)}."
        if f["late"]
        else f"The train was on time, so it arrived at {clock(arrive)}.",
        f"After the {f['walk']}-minute walk, {f['name']} reached the meeting at {clock(at_meeting)}.",
        f"The meeting started at {clock(f['meeting'])}: "
        + (
            f"{plural(diff, 'minute')} after {f['name']} arrived."
            if diff > 0
            else "exactly when they arrived."
            if diff == 0
            else f"{plural(-diff, 'minute')} before {f['name']} arrived."
        ),
    ]
    if diff > 0:
        answer = f"Yes, {f['name']} arrived {plural(diff, 'minute')} early."
    elif diff == 0:
        answer = f"Yes, {f['name']} arrived exactly on time."
    else:
        answer = f"No, {f['name']} arrived {plural(-diff, 'minute')} late."
    return _reading_prompt(rng, _train_passage(f), question), answer_hard(answer, steps)


GENERATORS = (
    [_reading_library, _reading_bakery, _reading_train],
    [_reading_library_hard, _reading_bakery_hard, _reading_train_hard],
)

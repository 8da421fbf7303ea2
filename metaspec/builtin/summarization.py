"""Summarization: one-sentence summaries of generated reports; a summary plus three key points."""

from __future__ import annotations

from collections.abc import Callable

from ._base import (
    CITIES,
    MONTHS,
    NAMES,
    WEEKDAYS,
    Generator,
    Rng,
    answer_easy,
    answer_hard,
    article,
    ordinal,
    pick,
    pick_other,
)

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


def _summary_prompt(rng: Rng, text: str, hard: bool) -> str:
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


def _summaries(
    scene: Callable[[Rng, bool], tuple[str, dict, str]], why: str, points: Callable[[dict], list[str]]
) -> tuple[Generator, Generator]:
    """The easy and the hard generator of one kind of report: its one-sentence summary (with `why` it
    is a good one), and that summary plus the three key `points` of the report's facts."""

    def easy(rng: Rng, held: bool) -> tuple[str, str]:
        text, _, summary = scene(rng, held)
        return _summary_prompt(rng, text, hard=False), answer_easy(summary, why)

    def hard(rng: Rng, held: bool) -> tuple[str, str]:
        text, f, summary = scene(rng, held)
        return _summary_prompt(rng, text, hard=True), answer_hard(summary, points(f), label="Key points")

    return easy, hard


def _council(rng: Rng, held: bool) -> tuple[str, dict, str]:
    town = pick(rng, CITIES, held)
    action, benefit, concern = rng.choice(COUNCIL_PLANS)
    seats = rng.choice((7, 9, 11))
    yes = rng.int(seats // 2 + 1, seats - 1)
    f = {"town": town, "action": action, "benefit": benefit, "concern": concern, "yes": yes, "no": seats - yes, "day": rng.choice(WEEKDAYS[:5]),
         "cost": f"{rng.int(2, 40) * 50:,},000 euros", "month": rng.choice(MONTHS), "chair": pick(rng, NAMES, held)}  # fmt: skip
    text = (
        f"On {f['day']}, the city council of {town} voted {yes} to {f['no']} to {action}. The project will cost {f['cost']}, "
        f"and work is due to start in {f['month']}. Supporters said the plan would {benefit}. Opponents argued that {concern}. "
        f"Council chair {f['chair']} said the plan would be reviewed after one year."
    )
    summary = f"{town}'s council voted {yes}–{f['no']} to {action}, {article(f['cost'])} {f['cost']} project starting in {f['month']}."
    return text, f, summary


_COUNCIL = _summaries(
    _council,
    "It keeps the decision, the vote, the cost and the start date, and leaves out the arguments for and against.",
    lambda f: [
        f"Decision: the council of {f['town']} voted {f['yes']} to {f['no']} on {f['day']} to {f['action']}.",
        f"Cost and timing: {f['cost']}, with work starting in {f['month']} and a review after one year.",
        f"Debate: supporters expect it to {f['benefit']}, while opponents worry that {f['concern']}.",
    ],
)


def _study(rng: Rng, held: bool) -> tuple[str, dict, str]:
    town = pick(rng, CITIES, held)
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
    summary = f"{article(str(f['weeks'])).capitalize()} {f['weeks']}-week study of {f['n']} adults in {town} found that people who {past} {finding}, though the result is preliminary."
    return text, f, summary


_STUDY = _summaries(
    _study,
    "It keeps who was studied, what was tested, the main result and the caution, without the design details.",
    lambda f: [
        f"Design: {f['n']} adults in {f['town']}, split in half for {f['weeks']} weeks; one half {f['past']} and the other kept their routine.",
        f"Result: the group that {f['past']} {f['finding']}.",
        f"Caution: the study was small and {f['caveat']}, so a larger trial is needed.",
    ],
)


def _storm(rng: Rng, held: bool) -> tuple[str, dict, str]:
    town = pick(rng, CITIES, held)
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


_STORM = _summaries(
    _storm,
    "It keeps the event, its size and its main effects, plus the outlook, and drops the operational details.",
    lambda f: [
        f"Event: {f['cm']} cm of snow fell on {f['town']} on {f['day']} night.",
        f"Effects: {f['schools']} schools closed on {f['next']}, {f['plows']} snowplows cleared main roads, and buses ran a reduced schedule until the afternoon.",
        f"Outlook: temperatures should rise above freezing by {f['thaw']}, melting most of the snow.",
    ],
)


def _match(rng: Rng, held: bool) -> tuple[str, dict, str]:
    town = pick(rng, CITIES, held)
    goals = rng.int(1, 3)
    s1 = goals + rng.int(0, 2)
    f = {
        "team": f"{town} United",
        "rival": f"{pick_other(rng, CITIES, held, town)} City",
        "s1": s1,
        "s2": rng.int(0, s1 - 1),
        "day": rng.choice(("Saturday", "Sunday", "Wednesday")),
        "crowd": f"{rng.int(8, 60) * 1000:,}",
        "player": pick(rng, NAMES, held),
        "goals": ("one", "two", "three")[goals - 1],
        "minute": ordinal(rng.int(70, 90)),
        "place": rng.choice(("first", "second", "third", "fourth")),
    }
    scored = (
        f"{f['player']} scored the winning goal in the {f['minute']} minute."
        if goals == 1
        else f"{f['player']} scored {f['goals']} of {f['team']}'s goals, including the winner in the {f['minute']} minute."
    )
    text = (
        f"{f['team']} beat {f['rival']} {s1}–{f['s2']} on {f['day']} in front of {f['crowd']} fans. {scored} The win "
        f"moves {f['team']} up to {f['place']} place in the league table. {f['rival']}'s coach said the team had "
        "missed too many chances."
    )
    goals_text = "the winning goal" if goals == 1 else f"{f['goals']} goals"
    summary = (
        f"{f['team']} beat {f['rival']} {s1}–{f['s2']}, with {goals_text} from {f['player']}, "
        f"and moved up to {f['place']} in the league."
    )
    return text, f, summary


_MATCH = _summaries(
    _match,
    "It keeps the result, the standout player and what the win means, and leaves out the crowd size and the coach's comment.",
    lambda f: [
        f"Result: {f['team']} won {f['s1']}–{f['s2']} against {f['rival']} on {f['day']}, watched by {f['crowd']} fans.",
        f"Key player: {f['player']} scored {'the' if f['goals'] == 'one' else f['goals'] + ' goals, including the'} winner in the {f['minute']} minute.",
        f"Consequences: {f['team']} moves up to {f['place']} place, and {f['rival']}'s coach blamed missed chances.",
    ],
)


GENERATORS = tuple(list(difficulty) for difficulty in zip(_COUNCIL, _STUDY, _STORM, _MATCH, strict=True))

"""Tool use: pick the tool and its JSON arguments from a listed set; two-call plans in the right order."""

from __future__ import annotations

import json
from collections.abc import Sequence

from ._base import CITIES, MONTHS, NAMES, Rng, answer_easy, answer_hard, pick, pick_other

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


def _tool_prompt(rng: Rng, needed: Sequence[str], request: str) -> str:
    others = [t for t in sorted(TOOLS) if t not in needed]
    listed = rng.sample([*needed, *rng.sample(others, 2)], len(needed) + 2)
    tools = "\n".join(f"- {TOOLS[t]}" for t in listed)
    ask = "Reply with the tool call to make." if len(needed) == 1 else "Reply with the tool calls to make, in order."
    return f"Tools:\n{tools}\nRequest: {request}\n{ask}"


def _date(rng: Rng) -> tuple[str, str]:
    month, day = rng.int(1, 12), rng.int(1, 28)
    return f"2025-{month:02d}-{day:02d}", f"{MONTHS[month - 1]} {day}"


def _single_call(rng: Rng, held: bool) -> tuple[str, str]:
    city = pick(rng, CITIES, held)
    kind = rng.choice(("weather", "currency", "timer", "translate", "calculator", "flight"))
    if kind == "weather":
        unit = rng.choice(("celsius", "fahrenheit"))
        request = rng.choice(
            (
                f"What's the weather like in {city} right now, in {unit.capitalize()}?",
                f"Is it cold in {city} today? Give me the temperature in {unit}.",
            )
        )
        return _tool_prompt(rng, ["get_weather"], request), answer_easy(
            _call("get_weather", city=city, unit=unit),
            f"The user wants the current weather in {city} in {unit}; get_weather takes exactly those two arguments.",
        )
    if kind == "currency":
        (src_name, src), (dst_name, dst) = rng.sample(CURRENCIES, 2)
        amount = rng.choice((25, 40, 120, 250, 600, 1500))
        request = f"I'm travelling to {city}. How much is {amount} {src_name} in {dst_name}?"
        return _tool_prompt(rng, ["convert_currency"], request), answer_easy(
            _call("convert_currency", amount=amount, **{"from": src, "to": dst}),
            f"It is a currency conversion from {src} to {dst}; the city is context and needs no tool.",
        )
    if kind == "timer":
        minutes, what = rng.int(3, 45), rng.choice(ACTIVITIES)
        request = f"Remind me in {minutes} minutes to check {what}. (I'm cooking for friends from {city}.)"
        return _tool_prompt(rng, ["set_timer"], request), answer_easy(
            _call("set_timer", minutes=minutes, label=f"check {what}"),
            f"A reminder after a fixed delay is a timer of {minutes} minutes, labelled with what to check.",
        )
    if kind == "translate":
        phrase, language = rng.choice(PHRASES), rng.choice(LANGUAGES)
        request = f'I\'m visiting {city}. How do I say "{phrase}" in {language}?'
        return _tool_prompt(rng, ["translate"], request), answer_easy(
            _call("translate", text=phrase, target_language=language),
            f"The user wants the phrase translated into {language}; translate takes the text and the target language.",
        )
    if kind == "calculator":
        a, b, c = rng.int(12, 99), rng.int(3, 19), rng.int(100, 999)
        request = f"Our group of {b} is splitting a {city} hotel bill: {c} plus {a} for breakfast. How much does each person pay?"
        return _tool_prompt(rng, ["calculator"], request), answer_easy(
            _call("calculator", expression=f"({c} + {a}) / {b}"),
            "The share is the total bill divided by the number of people, which the calculator evaluates exactly.",
        )
    origin = pick_other(rng, CITIES, held, city)
    iso, spoken = _date(rng)
    request = f"Find me flights from {origin} to {city} on {spoken}, 2025."
    return _tool_prompt(rng, ["search_flights"], request), answer_easy(
        _call("search_flights", origin=origin, destination=city, date=iso),
        f"A flight search needs origin, destination and the date in YYYY-MM-DD form: {iso}.",
    )


def _two_calls(rng: Rng, held: bool) -> tuple[str, str]:
    city = pick(rng, CITIES, held)
    name = pick(rng, NAMES, held)
    email = f"{name.lower()}@example.com"
    iso, spoken = _date(rng)
    kind = rng.choice(("flight_email", "weather_event", "currency_email"))
    if kind == "flight_email":
        origin = pick_other(rng, CITIES, held, city)
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
    return answer_hard(f"{len(calls)} calls, in this order", steps, body=body)


GENERATORS = ([_single_call], [_two_calls])

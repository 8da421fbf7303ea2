"""Common sense: weights, places, tools, consequences; planning times and budgets, practical advice."""

from __future__ import annotations

import math

from ._base import Rng, answer_easy, answer_hard, article, clock, draw, money, pick

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


def _heavier(rng: Rng, held: bool) -> tuple[str, str]:
    pairs = [(a, b) for a in MASSES for b in MASSES if a[0] < b[0] and max(a[1], b[1]) >= 5 * min(a[1], b[1])]
    a, b = pick(rng, pairs, held, key=lambda p: (p[0][0], p[1][0]))
    if rng.below(2):
        a, b = b, a
    heavy, light = (a, b) if a[1] > b[1] else (b, a)
    a_, b_, heavy_, light_ = (f"{article(x[0])} {x[0]}" for x in (a, b, heavy, light))
    question = rng.choice(("Which is heavier, {a} or {b}?", "Which weighs more: {a} or {b}?")).format(a=a_, b=b_)
    why = f"{heavy_.capitalize()} weighs {heavy[2]}, while {light_} weighs {light[2]}."
    return question, answer_easy(heavy_.capitalize(), why)


def _where(rng: Rng, held: bool) -> tuple[str, str]:
    thing, place, why = pick(rng, PLACES, held, key=lambda p: p[0])
    question = rng.choice(("Where would you usually find {t}?", "Where is {t} most likely to be found?"))
    return question.format(t=f"{article(thing)} {thing}"), answer_easy(place, why)


def _tool_for(rng: Rng, held: bool) -> tuple[str, str]:
    task, tool, why = pick(rng, TOOLS_FOR, held, key=lambda t: t[0])
    question = rng.choice(("What would you use to {t}?", "Which everyday tool helps you {t}?")).format(t=task)
    return question, answer_easy(tool, why)


def _consequence(rng: Rng, held: bool) -> tuple[str, str]:
    question, answer, why = pick(rng, CONSEQUENCES, held, key=lambda c: c[0])
    return question, answer_easy(answer, why)


PLACES_TO_BE = (
    "the airport",
    "a job interview",
    "the train station",
    "a concert",
    "the dentist",
    "my sister's wedding",
    "a football match",
)


def _leave_time(rng: Rng, held: bool) -> tuple[str, str]:
    place, due, drive, park, buffer = draw(
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
        f"I need to be at {place} by {clock(due)}. The drive takes {drive} minutes, parking and walking in take another "
        f"{park} minutes, and I want {buffer} minutes of buffer in case of traffic. When should I leave home?"
    )
    steps = [
        f"Work backwards from {clock(due)}.",
        f"Total time needed: {drive} (drive) + {park} (parking and walking) + {buffer} (buffer) = {drive + park + buffer} minutes.",
        f"{clock(due)} minus {drive + park + buffer} minutes is {clock(leave)}.",
        f"Leaving at {clock(leave)} gets you there at {clock(due - buffer)} if the traffic is normal, with the buffer to spare.",
    ]
    return question, answer_hard(f"Leave by {clock(leave)}.", steps)


def _roast(rng: Rng, held: bool) -> tuple[str, str]:
    dish, dinner, cook, rest, prep = draw(
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
        f"I want to serve dinner at {clock(dinner)}. {dish.capitalize()} needs {cook} minutes in the oven and should rest "
        f"for {rest} minutes before carving, and preparing it takes {prep} minutes. When do I start preparing, and when must it go in the oven?"
    )
    steps = [
        f"Resting comes last: it must come out of the oven at {clock(dinner)} − {rest} min = {clock(dinner - rest)}.",
        f"Cooking takes {cook} minutes ({cook // 60} h {cook % 60} min), so it goes in at {clock(dinner - rest)} − {cook} min = {clock(into_oven)}.",
        f"Preparation takes {prep} minutes, so start at {clock(into_oven)} − {prep} min = {clock(into_oven - prep)}.",
        "Preheat the oven during the preparation so it is hot when the dish goes in.",
    ]
    return question, answer_hard(
        f"Start preparing at {clock(into_oven - prep)} and put it in the oven at {clock(into_oven)}.", steps
    )


def _budget(rng: Rng, held: bool) -> tuple[str, str]:
    income, rent, food, other, goal = draw(
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
    purpose = rng.choice(("a holiday", "an emergency fund", "a used car", "a new laptop and a desk"))
    question = (
        f"I take home {money(income)} a month. Rent is {money(rent)}, food about {money(food)}, and other bills {money(other)}. "
        f"If I save everything that is left, how many months will it take to save {money(goal)} for {purpose}?"
    )
    steps = [
        f"Monthly costs: {money(rent)} + {money(food)} + {money(other)} = {money(rent + food + other)}.",
        f"Left each month: {money(income)} − {money(rent + food + other)} = {money(left)}.",
        f"{money(goal)} ÷ {money(left)} = {goal / left:.2f} months.",
        f"Savings only reach the goal at the end of a whole month, so round up to {months} months ({money(months * left)} saved by then).",
    ]
    return question, answer_hard(f"{months} months", steps)


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


def _advice(rng: Rng, held: bool) -> tuple[str, str]:
    _, question, answer, steps = pick(rng, ADVICE, held, key=lambda a: a[0])
    return rng.choice(("{q}", "{q} Give me practical steps.")).format(q=question), answer_hard(answer, steps)


GENERATORS = ([_heavier, _where, _tool_for, _consequence], [_leave_time, _roast, _budget, _advice])

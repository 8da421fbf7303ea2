"""Science: elements, facts, one-formula physics; explanations and multi-step calculations."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from ._base import Rng, answer_easy, answer_hard, article, draw, num, pick

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


def _element(rng: Rng, held: bool) -> tuple[str, str]:
    name, symbol, number, note = pick(rng, ELEMENTS, held, key=lambda e: e[0])
    origin = f", {note}" if note else ""
    if rng.below(2):
        question = rng.choice(
            ("What is the chemical symbol for {n}?", "Which symbol stands for {n} in the periodic table?")
        )
        why = f"{name.capitalize()} has atomic number {number}, and its symbol is {symbol}{origin}."
        return question.format(n=name), answer_easy(symbol, why)
    question = rng.choice(("Which element has atomic number {z}?", "Which element has {z} protons in its nucleus?"))
    why = f"The atomic number counts protons; the element with {number} is {name} ({symbol})."
    return question.format(z=number), answer_easy(name.capitalize(), why)


def _science_fact(rng: Rng, held: bool) -> tuple[str, str]:
    _, question, answer, why = pick(rng, SCIENCE_FACTS, held, key=lambda f: f[0])
    return question, answer_easy(answer, why)


def _physics(rng: Rng, held: bool) -> tuple[str, str]:
    kind, a, b = draw(
        rng, held, lambda: (rng.choice(("speed", "force", "ohm", "density", "weight")), rng.int(2, 40), rng.int(2, 12))
    )
    if kind == "speed":
        mover, slowest, step, steps = rng.choice(
            (("cyclist", 12, 2, 8), ("runner", 6, 1, 7), ("train", 60, 10, 15), ("car", 40, 5, 15))
        )
        speed, hours = slowest + step * (a % steps), 2 + b % 5
        return (
            f"A {mover} covers {speed * hours} km in {hours} hours at a steady pace. What is the {mover}'s speed?",
            answer_easy(f"{speed} km/h", f"Speed = distance ÷ time = {speed * hours} km ÷ {hours} h = {speed} km/h."),
        )
    if kind == "force":
        return (
            f"What force is needed to accelerate a {a} kg mass at {b} m/s²?",
            answer_easy(f"{a * b} N", f"Newton's second law: F = m × a = {a} kg × {b} m/s² = {a * b} N."),
        )
    if kind == "ohm":
        return (
            f"A current of {b} A flows through {article(str(a))} {a} Ω resistor. What is the voltage across it?",
            answer_easy(f"{a * b} V", f"Ohm's law: V = I × R = {b} A × {a} Ω = {a * b} V."),
        )
    if kind == "density":
        density, volume = Fraction(rng.int(5, 113), 10), 10 * b  # from cork-like 0.5 to lead-like 11.3 g/cm³
        mass = density * volume
        return (
            f"A block has a mass of {num(mass)} g and a volume of {volume} cm³. What is its density?",
            answer_easy(
                f"{num(density)} g/cm³",
                f"Density = mass ÷ volume = {num(mass)} g ÷ {volume} cm³ = {num(density)} g/cm³.",
            ),
        )
    weight = Fraction(a * 98, 10)
    return (
        f"What is the weight on Earth of an object with a mass of {a} kg? Use g = 9.8 m/s².",
        answer_easy(f"{num(weight)} N", f"Weight = m × g = {a} kg × 9.8 m/s² = {num(weight)} N."),
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


def _explanation(rng: Rng, held: bool) -> tuple[str, str]:
    _, question, answer, steps = pick(rng, EXPLANATIONS, held, key=lambda e: e[0])
    question = rng.choice(("{q}", "{q} Explain step by step.", "Can you explain this clearly? {q}")).format(q=question)
    return question, answer_hard(answer, steps)


def _kinematics(rng: Rng, held: bool) -> tuple[str, str]:
    a, t = draw(rng, held, lambda: (rng.int(1, 6), rng.int(3, 15)))
    v, d = a * t, Fraction(a * t * t, 2)
    question = (
        f"A car starts from rest and accelerates at a constant {a} m/s² for {t} seconds. "
        "What is its final speed, and how far does it travel in that time?"
    )
    steps = [
        "Starting from rest means the initial speed u is 0.",
        f"Final speed: v = u + a·t = 0 + {a} × {t} = {v} m/s.",
        f"Distance: s = u·t + ½·a·t² = ½ × {a} × {t}² = ½ × {a} × {t * t} = {num(d)} m.",
        f"Check with the average speed: ({0} + {v}) ÷ 2 × {t} = {num(d)} m.",
    ]
    return question, answer_hard(f"{v} m/s after travelling {num(d)} m", steps)


def _circuit(rng: Rng, held: bool) -> tuple[str, str]:
    r1, r2, volts = draw(rng, held, lambda: (rng.int(2, 30), rng.int(2, 30), rng.choice((6, 9, 12, 24))))
    total = r1 + r2
    current = Fraction(volts, total)
    question = (
        f"{article(str(r1)).capitalize()} {r1} Ω resistor and {article(str(r2))} {r2} Ω resistor are connected in series to a {volts} V battery. "
        "What current flows, and what power does the circuit use?"
    )
    power = volts * current
    steps = [
        f"In series the resistances add: R = {r1} + {r2} = {total} Ω.",
        f"Ohm's law: I = V ÷ R = {volts} ÷ {total} = {num(current) if current.denominator in (1, 2, 4, 5, 8, 10, 16, 20, 25) else f'{float(current):.3f}'} A.",
        f"Power: P = V × I = {volts} × {volts}/{total} = {volts * volts}/{total} ≈ {float(power):.2f} W.",
        f"The same current flows through both resistors, so the voltages are {r1} × I ≈ {float(r1 * current):.2f} V and {r2} × I ≈ {float(r2 * current):.2f} V, adding up to {volts} V.",
    ]
    return question, answer_hard(f"about {float(current):.3g} A and {float(power):.3g} W", steps)


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


def _molar_mass(rng: Rng, held: bool) -> tuple[str, str]:
    formula, name, counts = pick(rng, COMPOUNDS, held, key=lambda c: c[0])
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
    return question, answer_hard(f"about {total:.2f} g/mol", steps)


def _heating(rng: Rng, held: bool) -> tuple[str, str]:
    grams, t1, t2 = draw(rng, held, lambda: (50 * rng.int(2, 20), rng.int(5, 25), rng.int(40, 95)))
    delta = t2 - t1
    joules = Decimal(grams) * Decimal("4.18") * delta
    question = f"How much energy does it take to heat {grams} g of water from {t1} °C to {t2} °C? The specific heat of water is 4.18 J/(g·°C)."
    steps = [
        "Use Q = m × c × ΔT.",
        f"Temperature change: ΔT = {t2} − {t1} = {delta} °C.",
        f"Q = {grams} g × 4.18 J/(g·°C) × {delta} °C = {joules:,.1f} J.",
        f"In kilojoules: {joules:,.1f} J ÷ 1000 = {joules / 1000:,.2f} kJ.",
    ]
    return question, answer_hard(f"{joules / 1000:,.2f} kJ", steps)


GENERATORS = ([_element, _science_fact, _physics], [_explanation, _kinematics, _circuit, _molar_mass, _heating])

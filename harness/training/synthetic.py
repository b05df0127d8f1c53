"""Procedural memory dialogues: a user tells an assistant about their life over many turns, then asks.

Each conversation mixes facts (names of relatives, a pet, codes), dated events, preferences and their
later updates, and appointments, spread between small-talk turns; the assistant acknowledges each turn.
Every fact supports one or more questions whose answer needs it (for an updated preference, the answer
is the new value, or the old one when the question asks what it was before). A conversation yields
``questions`` episodes (same group, so the held-out split keeps them together).

Conversation ``i`` depends only on ``(seed, i)``: asking for more conversations never changes the first ones.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Callable

from harness.errors import ConfigError
from harness.training.episodes import Conversation
from harness.training.sources import Source, stable_hash

NAMES = ("Alice", "Bruno", "Chloe", "Dmitri", "Esther", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Keiko", "Luca",
         "Maya", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samir", "Tove", "Umar", "Valeria", "Wen", "Ximena",
         "Yusuf", "Zofia", "Amara", "Bjorn", "Carmen", "Dario", "Elif", "Femi", "Gideon", "Hana", "Ivo", "Jade",
         "Kofi", "Lena", "Mateo", "Noor", "Olga", "Pavel", "Rania", "Stellan", "Tamsin", "Uri", "Vera", "Wiktor")
PET_NAMES = ("Biscuit", "Pepper", "Mochi", "Ziggy", "Olive", "Noodle", "Captain", "Juniper", "Pixel", "Waffles",
             "Clementine", "Rocket", "Sage", "Tofu", "Marble", "Pumpkin", "Basil", "Comet", "Dumpling", "Hazel")
SPECIES = ("dog", "cat", "rabbit", "parrot", "hamster", "tortoise", "goldfish", "ferret")
RELATIONS = ("sister", "brother", "best friend", "manager", "neighbour", "cousin", "flatmate", "piano teacher",
             "dentist", "landlord", "grandmother", "football coach")
CITIES = ("Lisbon", "Oslo", "Nairobi", "Montreal", "Kyoto", "Valparaiso", "Tbilisi", "Glasgow", "Porto", "Hanoi",
          "Krakow", "Adelaide", "Bergen", "Cusco", "Ghent", "Izmir", "Ljubljana", "Marseille", "Nagoya", "Quito",
          "Reykjavik", "Seville", "Tallinn", "Utrecht", "Vilnius", "Windhoek", "Zagreb", "Bologna", "Dakar", "Halifax")
JOBS = ("nurse", "carpenter", "software tester", "librarian", "pastry chef", "bus driver", "translator",
        "physiotherapist", "architect", "beekeeper", "accountant", "florist", "lab technician", "journalist",
        "primary school teacher", "electrician", "museum guide", "data analyst", "tailor", "paramedic")
COMPANIES = ("Northwind", "Bluefield Labs", "Orchard & Sons", "Kestrel Logistics", "Pinecone Studio", "Harbor Bank",
             "Lumen Health", "Copperleaf", "Greystone Press", "Solano Foods")
FAVOURITES = {
    "food": ("lasagne", "ramen", "falafel", "paella", "dumplings", "tacos", "risotto", "pho", "moussaka", "curry"),
    "colour": ("teal", "mustard yellow", "burgundy", "lilac", "forest green", "coral", "navy blue", "amber"),
    "music genre": ("jazz", "techno", "bluegrass", "k-pop", "reggae", "opera", "punk", "bossa nova", "grime"),
    "sport": ("badminton", "rock climbing", "volleyball", "table tennis", "rowing", "fencing", "cricket"),
    "board game": ("chess", "Catan", "Scrabble", "Go", "Ticket to Ride", "backgammon", "Carcassonne"),
    "fruit": ("mango", "lychee", "blackberry", "persimmon", "kiwi", "fig", "pomegranate", "papaya"),
    "drink": ("green tea", "espresso", "lemonade", "hot chocolate", "kombucha", "mint tea", "oat latte"),
    "season": ("spring", "summer", "autumn", "winter"),
    "author": ("Ursula K. Le Guin", "Chimamanda Ngozi Adichie", "Haruki Murakami", "Italo Calvino", "Toni Morrison",
               "Terry Pratchett", "Olga Tokarczuk"),
}
# (past-tense phrase, question form "When did I ...?")
EVENTS = (
    ("ran my first half marathon", "run my first half marathon"),
    ("adopted a kitten from the shelter", "adopt a kitten from the shelter"),
    ("passed my driving test", "pass my driving test"),
    ("started learning {language}", "start learning {language}"),
    ("had a job interview at {company}", "have a job interview at {company}"),
    ("broke my left wrist", "break my left wrist"),
    ("bought a {color} bicycle", "buy a {color} bicycle"),
    ("visited {city} for the first time", "visit {city} for the first time"),
    ("planted an apple tree in the garden", "plant an apple tree in the garden"),
    ("went to my cousin's wedding", "go to my cousin's wedding"),
    ("got my first tattoo", "get my first tattoo"),
    ("sold my old car", "sell my old car"),
    ("finished reading War and Peace", "finish reading War and Peace"),
    ("moved into my new flat", "move into my new flat"),
)
LANGUAGES = ("Portuguese", "Korean", "Swahili", "Finnish", "Greek", "Hindi", "Turkish", "Dutch")
COLORS = ("red", "green", "silver", "orange", "black", "white", "purple")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
APPOINTMENTS = ("dentist appointment", "haircut", "yoga class", "parent-teacher meeting", "car service",
                "job interview", "eye test", "guitar lesson", "dinner with my parents")
CODES = (("locker code", "digits4"), ("gym membership number", "digits6"), ("flight number", "flight"),
         ("hotel room number", "digits3"), ("bike lock combination", "digits4"), ("library card number", "digits6"))

ACKS = ("Got it!", "Thanks for telling me.", "Noted.", "I'll remember that.", "Good to know!", "Okay, noted.",
        "Thanks, I've made a note of it.", "Understood.", "Thanks for the update.", "Alright, I have that down.")
SMALL_TALK = (
    ("The weather has been so grey all week.", "Grey weeks can be draining. A walk at lunchtime might help."),
    ("Any tips for sleeping better?", "Keep a regular bedtime, and avoid screens for the last hour before sleep."),
    ("I'm trying to drink more water.", "A bottle on your desk makes that much easier."),
    ("Work was exhausting today.", "Sorry to hear that. Try to take the evening off properly."),
    ("Can you recommend a quick dinner?", "A vegetable stir-fry with rice takes about twenty minutes."),
    ("I watched a documentary about octopuses.", "They are remarkable: each arm has its own cluster of neurons."),
    ("My phone battery keeps dying.", "Lowering the screen brightness and closing background apps usually helps."),
    ("I should really clean the kitchen.", "Putting on some music makes chores go faster."),
    ("What's a good stretch for a stiff back?", "Try a gentle cat-cow stretch, slowly, ten times."),
    ("I can't decide what to read next.", "Something short and light could be a nice change of pace."),
    ("The train was late again this morning.", "That's frustrating. Maybe a podcast would make the wait easier."),
    ("I'm thinking about learning to cook bread.", "A simple no-knead loaf is a friendly place to start."),
    ("Do you like rainy days?", "I don't experience weather, but many people find rain relaxing."),
    ("I finally fixed the squeaky door.", "Nice work, small fixes like that are satisfying."),
    ("Tell me a fun fact.", "Honey never spoils: edible honey has been found in ancient tombs."),
    ("I need motivation to go for a run.", "Lay out your running clothes now; it makes starting easier."),
    ("How do I keep basil alive?", "Give it lots of light, water it when the soil feels dry, and pinch off flowers."),
    ("I'm bored this evening.", "You could try a new recipe, call a friend, or start a jigsaw puzzle."),
    ("Is it worth learning to touch type?", "Yes, a few weeks of practice pays off for years."),
    ("My neighbours are so loud tonight.", "Earplugs or some white noise might get you through the night."),
    ("I keep forgetting to reply to emails.", "Setting aside ten minutes at the same time each day can help."),
    ("What should I do with overripe bananas?", "Banana bread or smoothies are both good ways to use them."),
    ("I'm nervous about a presentation.", "Rehearse it out loud twice; familiarity takes the edge off nerves."),
    ("How long should I steep black tea?", "About three to five minutes, depending on how strong you like it."),
    ("I spilled coffee on my notes.", "Blot it gently and let the pages dry flat under something heavy."),
    ("Can you suggest a weekend hobby?", "Sketching is cheap to start and easy to do anywhere."),
    ("I want to save more money.", "Automatic transfers to savings on payday make it effortless."),
    ("My plants keep dying.", "Overwatering is the most common cause; check the soil before watering."),
    ("Is it too late to start playing piano?", "Not at all, adults learn quickly with regular short sessions."),
    ("I feel like I'm always tired.", "Sleep, hydration and daylight are worth checking first."),
)


@dataclass
class _Item:
    kind: str
    statements: list[str]          # said in this order (an update comes later than what it updates)
    qa: list[tuple]  # (question, answer, value stated in the history that answers it[, value it superseded])


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28)} {rng.choice(MONTHS)} {rng.randint(2019, 2024)}"


def _code(rng: random.Random, kind: str) -> str:
    if kind == "flight":
        return f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randint(100, 9999)}"
    return "".join(rng.choice("0123456789") for _ in range(int(kind[-1])))


class _Pools:
    """Draw values without repeats inside one conversation, so every question has one right answer."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[tuple[str, str]] = set()

    def pick(self, pool: str, values: tuple[str, ...], k: int = 1) -> list[str]:
        free = [v for v in values if (pool, v) not in self.used]
        chosen = self.rng.sample(free, k)
        self.used.update((pool, v) for v in chosen)
        return chosen


def _relation(rng: random.Random, pools: _Pools) -> _Item:
    (rel,), (name,) = pools.pick("relation", RELATIONS), pools.pick("name", NAMES)
    said = rng.choice((f"My {rel} is called {name}.", f"By the way, my {rel}'s name is {name}.",
                       f"I had lunch with {name}, my {rel}, today."))
    return _Item("fact", [said], [(f"What is the name of my {rel}?", f"Your {rel} is called {name}.", name)])


def _pet(rng: random.Random, pools: _Pools) -> _Item:
    (species,), (pet,) = pools.pick("species", SPECIES), pools.pick("pet", PET_NAMES)
    age = rng.randint(2, 14)
    return _Item("fact", [f"I have a {species} named {pet}.", f"{pet} turned {age} last week."],
                 [(f"What is my {species} called?", f"Your {species} is called {pet}.", pet),
                  (f"How old is {pet}?", f"{pet} is {age} years old.", str(age))])


def _job(rng: random.Random, pools: _Pools) -> _Item:
    old, new = pools.pick("job", JOBS, 2)
    (company,) = pools.pick("company", COMPANIES)
    first = f"I work as a {old}."
    if rng.random() < 0.5:
        return _Item("fact", [first], [("What do I do for a living?", f"You work as a {old}.", old)])
    update = f"Big news: I left my old job and now I work as a {new} at {company}."
    return _Item("update", [first, update], [("What is my job now?", f"You work as a {new} at {company}.", new, old),
                                             ("What did I work as before my current job?", f"You worked as a {old}.", old)])


def _home(rng: random.Random, pools: _Pools) -> _Item:
    old, new = pools.pick("city", CITIES, 2)
    first = rng.choice((f"I live in {old}.", f"I've been living in {old} for a few years now."))
    if rng.random() < 0.4:
        return _Item("fact", [first], [("Which city do I live in?", f"You live in {old}.", old)])
    return _Item("update", [first, f"I just moved from {old} to {new}!"],
                 [("Which city do I live in now?", f"You live in {new}.", new, old),
                  ("Where did I live before I moved?", f"You lived in {old}.", old)])


def _favourite(rng: random.Random, pools: _Pools) -> _Item:
    (cat,) = pools.pick("category", tuple(FAVOURITES))
    old, new = rng.sample(FAVOURITES[cat], 2)
    first = rng.choice((f"My favourite {cat} is {old}.", f"I really love {old}; it's my favourite {cat}."))
    if rng.random() < 0.4:
        return _Item("preference", [first], [(f"What is my favourite {cat}?", f"Your favourite {cat} is {old}.", old)])
    update = rng.choice((f"I've changed my mind: my favourite {cat} is now {new}, not {old}.",
                         f"Honestly, I'm over {old}. These days my favourite {cat} is {new}."))
    return _Item("update", [first, update],
                 [(f"What is my favourite {cat} these days?", f"Your favourite {cat} is now {new}.", new, old),
                  (f"What was my favourite {cat} before I changed my mind?", f"It used to be {old}.", old)])


def _event(rng: random.Random, pools: _Pools) -> _Item:
    (event,) = pools.pick("event", tuple(e[0] for e in EVENTS))
    base = dict(EVENTS)[event]
    fill = {"language": rng.choice(LANGUAGES), "company": rng.choice(COMPANIES), "color": rng.choice(COLORS),
            "city": rng.choice(CITIES)}
    past, ask = event.format(**fill), base.format(**fill)
    (date,) = pools.pick("date", tuple(_date(rng) for _ in range(4)))
    said = rng.choice((f"On {date} I {past}.", f"I {past} on {date}.", f"Guess what, I {past}! It was {date}."))
    return _Item("event", [said], [(f"When did I {ask}?", f"On {date}.", date),
                                   (f"What did I do on {date}?", f"You {past.replace('my ', 'your ')}.", past)])


def _appointment(rng: random.Random, pools: _Pools) -> _Item:
    (what,) = pools.pick("appointment", APPOINTMENTS)
    day, hour = rng.choice(WEEKDAYS), rng.choice(("9 am", "10:30 am", "noon", "2 pm", "4:15 pm", "6 pm"))
    item = _Item("event", [f"Reminder for later: my {what} is on {day} at {hour}."],
                 [(f"When is my {what}?", f"On {day} at {hour}.", day)])
    if rng.random() < 0.4:
        new_day = rng.choice([d for d in WEEKDAYS if d != day])
        item.kind = "update"
        item.statements.append(f"My {what} got moved to {new_day}, same time.")
        item.qa = [(f"When is my {what}?", f"On {new_day} at {hour}.", new_day, day)]
    return item


def _code_item(rng: random.Random, pools: _Pools) -> _Item:
    (label,) = pools.pick("code", tuple(c[0] for c in CODES))
    value = _code(rng, dict(CODES)[label])
    return _Item("fact", [f"Note this down please: my {label} is {value}."],
                 [(f"What is my {label}?", f"Your {label} is {value}.", value)])


KINDS: dict[str, Callable[[random.Random, _Pools], _Item]] = {
    "relation": _relation, "pet": _pet, "job": _job, "home": _home, "favourite": _favourite, "event": _event,
    "appointment": _appointment, "code": _code_item,
}
_REPEATABLE = ("relation", "favourite", "event", "appointment", "code")


def generate_conversation(seed: int, index: int, *, items: tuple[int, int] = (6, 12),
                          small_talk: tuple[int, int] = (6, 24), questions: int = 3) -> list[tuple[list[dict], dict]]:
    """The ``index``-th dialogue of ``seed``: ``[(messages ending in question + answer, metadata), ...]``."""
    rng = random.Random(stable_hash("synthetic-memory", seed, index))
    pools = _Pools(rng)
    n_items = rng.randint(*items)
    kinds = rng.sample(tuple(KINDS), k=min(len(KINDS), n_items))
    kinds += [rng.choice(_REPEATABLE) for _ in range(n_items - len(kinds))]
    facts = []
    for kind in kinds:
        try:
            facts.append(KINDS[kind](rng, pools))
        except ValueError:  # that kind's values are used up in this dialogue
            continue
    # Order of what the user says: a random key per statement, later statements of an item strictly later.
    said: list[tuple[float, str]] = []
    for item in facts:
        key = rng.random()
        for s in item.statements:
            said.append((key, s))
            key += rng.uniform(0.15, 0.6)
    chat = [(k, s, None) for k, s in said]
    n_talk = rng.randint(*small_talk)
    talk = rng.sample(SMALL_TALK, k=min(n_talk, len(SMALL_TALK)))
    talk += [rng.choice(SMALL_TALK) for _ in range(n_talk - len(talk))]
    chat += [(rng.random() * 1.3, user, reply) for user, reply in talk]
    chat.sort(key=lambda x: x[0])
    history: list[dict[str, str]] = []
    for _, user, reply in chat:
        history.append({"role": "user", "content": user})
        history.append({"role": "assistant", "content": reply or rng.choice(ACKS)})
    pool = [(qa, item.kind) for item in facts for qa in item.qa]
    out = []
    for (q, a, value, *old), kind in rng.sample(pool, k=min(questions, len(pool))):
        out.append((history + [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                    {"question": q, "references": [a], "kind": kind, "evidence": value,
                     "superseded": old[0] if old else None}))
    return out


class SyntheticMemory(Source):
    """``conversations`` procedural dialogues × ``questions`` episodes each (see the module docstring)."""

    def __init__(self, conversations: int = 1000, questions: int = 3, seed: int = 0, items: Any = (6, 12),
                 small_talk: Any = (6, 24), system: str | None = None, name: str = "synthetic") -> None:
        if conversations < 1 or questions < 1:
            raise ConfigError(f"synthetic source: conversations and questions must be >= 1, "
                              f"got {conversations}, {questions}")
        self.n = int(conversations)
        self.questions = int(questions)
        self.seed = int(seed)
        self.items = (int(items[0]), int(items[1]))
        self.small_talk = (int(small_talk[0]), int(small_talk[1]))
        if not (1 <= self.items[0] <= self.items[1]) or not (0 <= self.small_talk[0] <= self.small_talk[1]):
            raise ConfigError(f"synthetic source: items={list(items)} and small_talk={list(small_talk)} "
                              "must be [min, max] ranges")
        self.system = system or None
        self.name = name

    def conversations(self) -> list[Conversation]:
        out = []
        for i in range(self.n):
            group = f"s{self.seed}-c{i}"
            for j, (messages, meta) in enumerate(generate_conversation(
                    self.seed, i, items=self.items, small_talk=self.small_talk, questions=self.questions)):
                if self.system:
                    messages = [{"role": "system", "content": self.system}] + messages
                out.append(Conversation(id=f"{self.name}/{group}/q{j}", source=self.name, group=group,
                                        messages=tuple(messages), metadata=meta))
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "conversations": self.n, "questions": self.questions, "seed": self.seed,
                "items": list(self.items), "small_talk": list(self.small_talk)}

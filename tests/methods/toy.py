"""A toy task and hand-made episodes for the text-memory method tests."""
from __future__ import annotations

from harness.types import ContextUnit, Episode, Query, Score
from tasks.base import Task


class ToyTask(Task):
    """Question after an optional context block; exact-match scoring."""

    name = "toy"

    def load_episodes(self):
        return []

    def prompt_messages(self, query, context):
        user = query.question if context is None else f"{context}\n\nQuestion: {query.question}"
        return [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": user}]

    def score(self, query, prediction):
        return Score(values={"em": float(prediction.strip() == query.gold)})


FACTS = [
    ("Caroline", "I adopted a grey cat called Pixel last week."),
    ("Melanie", "My sister moved to Lisbon for a job at a bakery."),
    ("Caroline", "The pottery class starts on Tuesday evening."),
    ("Melanie", "We hiked the river trail and saw a heron."),
    ("Caroline", "My favourite painter is Frida Kahlo."),
    ("Melanie", "The concert tickets cost forty dollars each."),
]
DATES = ["1:56 pm on 8 May, 2023", "10:00 am on 25 May, 2023", "4:04 pm on 20 June, 2023"]


def dialogue_episode(questions=(("What is the name of Caroline's cat?", "Pixel"),)) -> Episode:
    """Six turns over three dated sessions (two turns each), LoCoMo-style units."""
    units = []
    for i, (speaker, text) in enumerate(FACTS):
        s = i // 2
        units.append(ContextUnit(id=f"D{s + 1}:{i % 2 + 1}", text=f'{speaker} said, "{text}"\n', segment=f"session_{s + 1}",
                                 date=DATES[s], speaker=speaker))
    queries = tuple(Query(id=f"q{j}", question=q, gold=a) for j, (q, a) in enumerate(questions))
    return Episode("conv-toy", tuple(units), queries, {"speakers": ["Caroline", "Melanie"]})


def passages_episode(passages, question="Which city has the bridge?", gold="x") -> Episode:
    units = tuple(ContextUnit(id=f"p{i}", text=t, segment=f"p{i}") for i, t in enumerate(passages))
    return Episode("ep", units, (Query("q0", question, gold),))

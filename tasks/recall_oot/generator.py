"""Out-of-template one-question recall dialogues, written from scratch for evaluation only.

A dialogue is a user chatting with an assistant: 1–4 facts of different families (one is asked, the others are
distractors) at random depths among small-talk exchanges, padded to about ``target_tokens`` tokens of history,
then one question about the asked fact. Dialogue ``(seed, target_tokens, index)`` depends on nothing else, so
asking for more dialogues or other lengths never changes the ones already made.

Lengths are planned with a character estimate (``_est_tokens``: about four characters per token plus a few
tokens per message and the chat template's system prompt), so a bucket's histories scatter around its target;
the evaluation measures the real token counts with the backbone's tokenizer.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Sequence

from tasks.recall_oot.scoring import normalise, occurrences
from tasks.recall_oot.templates import (CODE_LETTERS, FACT_REPLIES, FAMILIES, MONTH_NAMES, PERSONS, PHRASE_FIRST,
                                        PHRASE_SECOND, PLACES, QUESTION_FRAMES, SMALL_TALK, STATEMENT_FRAMES,
                                        Family)

GENERATOR_VERSION = 1
MAX_FACTS = 4
_TEMPLATE_OVERHEAD = 30  # the chat template's default system prompt and role markers of the first turn
_MESSAGE_OVERHEAD = 5
_MAX_ATTEMPTS = 50


@dataclass(frozen=True)
class Turn:
    role: str  # user | assistant
    text: str


@dataclass(frozen=True)
class Fact:
    family: str
    kind: str
    value: str
    aliases: tuple[str, ...]  # every surface form the scorer accepts; ``value`` first
    statement: str


@dataclass(frozen=True)
class Dialogue:
    id: str
    seed: int
    target_tokens: int
    turns: tuple[Turn, ...]
    asked: Fact
    distractors: tuple[Fact, ...]
    question: str
    fact_turn: int  # index in ``turns`` of the user turn that states the asked fact
    metadata: dict = field(default_factory=dict)

    @property
    def history_text(self) -> str:
        return "\n".join(t.text for t in self.turns)


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256("\x1f".join(str(p) for p in ("recall-oot", *parts)).encode()).hexdigest()
    return random.Random(int(digest[:16], 16))


def _est_tokens(text: str) -> int:
    return len(text) // 4 + _MESSAGE_OVERHEAD


def _ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def draw_value(family: Family, rng: random.Random) -> tuple[str, tuple[str, ...], str]:
    """``(value, aliases, how the statement says it)`` for one fact of ``family``."""
    if family.kind == "digits":
        lo, hi = family.digits
        n = rng.randint(lo, hi)
        value = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))
        return value, (value,), value
    if family.kind == "code":
        letters = "".join(rng.choice(CODE_LETTERS) for _ in range(rng.randint(2, 3)))
        digits = "".join(str(rng.randint(0, 9)) for _ in range(rng.randint(2, 4)))
        shape = rng.randrange(3)
        value = (f"{letters}{digits}", f"{letters}-{digits}", f"{digits}{letters}")[shape]
        return value, (value,), value
    if family.kind == "person":
        value = rng.choice(PERSONS)
        return value, (value,), value
    if family.kind == "place":
        value = rng.choice(PLACES)
        return value, (value,), value
    if family.kind == "date":
        month = rng.choice(MONTH_NAMES)
        day = rng.randint(1, 28)
        said = rng.choice((f"the {_ordinal(day)} of {month}", f"{month} {_ordinal(day)}", f"{day} {month}"))
        aliases = (f"{day} {month}", f"{_ordinal(day)} {month}", f"{_ordinal(day)} of {month}", f"{month} {day}",
                   f"{month} {_ordinal(day)}")
        value = said[4:] if said.startswith("the ") else said
        return value, (value, *[a for a in aliases if a != value]), said
    if family.kind == "phrase":
        value = f"{rng.choice(PHRASE_FIRST)} {rng.choice(PHRASE_SECOND)}"
        return value, (value,), value
    raise ValueError(f"family {family.key}: unknown value kind {family.kind!r}")


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def make_fact(family: Family, rng: random.Random) -> Fact:
    value, aliases, said = draw_value(family, rng)
    generic = [f.format(noun=family.noun, Noun=_capitalise(family.noun), v="{v}") for f in STATEMENT_FRAMES]
    template = rng.choice(list(family.statements) + generic)
    return Fact(family.key, family.kind, value, aliases, _capitalise(template.format(v=said)))


def make_question(family: Family, rng: random.Random) -> str:
    generic = [f.format(noun=family.noun) for f in QUESTION_FRAMES]
    return rng.choice(list(family.questions) + generic)


def _compatible(fact: Fact, others: Sequence[Fact]) -> bool:
    """No fact's value may be stated, as whole words, inside another's (each is then said exactly once)."""
    for other in others:
        if occurrences(other.statement, fact.aliases) or occurrences(fact.statement, other.aliases):
            return False
    return True


def generate_dialogue(seed: int, target_tokens: int, index: int) -> Dialogue:
    if not isinstance(target_tokens, int) or target_tokens < 50:
        raise ValueError(f"target_tokens must be an integer >= 50, got {target_tokens!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    rng = _rng(GENERATOR_VERSION, seed, target_tokens, index)
    n_facts = rng.randint(1, max(1, min(MAX_FACTS, target_tokens // 50)))
    families = rng.sample(FAMILIES, n_facts)
    facts: list[Fact] = []
    for fam in families:
        for _ in range(_MAX_ATTEMPTS):
            fact = make_fact(fam, rng)
            if _compatible(fact, facts):
                facts.append(fact)
                break
        else:
            raise RuntimeError(f"no compatible value for family {fam.key} after {_MAX_ATTEMPTS} draws")
    asked = facts[0]
    question = make_question(families[0], rng)

    # Facts as (user statement, assistant reply) exchanges; small talk fills the rest of the budget.
    exchanges: list[tuple[str, str, int | None]] = [(f.statement, rng.choice(FACT_REPLIES), i)
                                                   for i, f in enumerate(facts)]
    used = _TEMPLATE_OVERHEAD + sum(_est_tokens(u) + _est_tokens(a) for u, a, _ in exchanges)
    talk = list(SMALL_TALK)
    rng.shuffle(talk)
    k = 0
    while True:
        user, reply = talk[k % len(talk)]
        cost = _est_tokens(user) + _est_tokens(reply)
        # stop at the exchange that would overshoot by more than it would leave missing
        if used + cost - target_tokens > target_tokens - used:
            break
        exchanges.append((user, reply, None))
        used += cost
        k += 1
    fact_slots = exchanges[:len(facts)]
    fillers = exchanges[len(facts):]
    for ex in fact_slots:  # each fact at a uniformly random depth among the fillers
        fillers.insert(rng.randint(0, len(fillers)), ex)
    turns: list[Turn] = []
    fact_turn = -1
    for user, reply, which in fillers:
        if which == 0:
            fact_turn = len(turns)
        turns.append(Turn("user", user))
        turns.append(Turn("assistant", reply))
    dialogue = Dialogue(
        id=f"oot-s{seed}-t{target_tokens}-{index:04d}", seed=seed, target_tokens=target_tokens, turns=tuple(turns),
        asked=asked, distractors=tuple(facts[1:]), question=question, fact_turn=fact_turn,
        metadata={"n_facts": n_facts, "n_turns": len(turns), "estimated_tokens": used,
                  "depth": fact_turn / max(1, len(turns) - 2)})
    _check(dialogue)
    return dialogue


def _check(d: Dialogue) -> None:
    """The guarantees the evaluation relies on; a violation is a generator bug, never silently skipped."""
    n = occurrences(d.history_text, d.asked.aliases)
    if n != 1:
        raise AssertionError(f"{d.id}: the asked value {d.asked.value!r} occurs {n} times in the history")
    if occurrences(d.question, d.asked.aliases):
        raise AssertionError(f"{d.id}: the question holds the asked value")
    if not normalise(d.asked.value):
        raise AssertionError(f"{d.id}: empty value")


def generate_set(seed: int, buckets: Sequence[int], per_bucket: int) -> list[Dialogue]:
    """``per_bucket`` dialogues per target length, ordered by length then index."""
    if per_bucket < 1:
        raise ValueError(f"per_bucket must be >= 1, got {per_bucket}")
    if not buckets or len(set(buckets)) != len(buckets):
        raise ValueError(f"buckets must be distinct target lengths, got {list(buckets)}")
    return [generate_dialogue(seed, int(b), i) for b in sorted(buckets) for i in range(per_bucket)]

"""The key-value match: does an answer name the asked value?

``normalise`` (applied to the value's every alias and to the answer alike):

1. Unicode NFKC, lower case;
2. separators inside a number are dropped: a space, comma, period or hyphen between two digits
   ("48 213", "48,213", "48-213" all read "48213");
3. a hyphen between two letters or digits is dropped ("KX-4471" reads "kx4471", as "KX4471" does);
4. every other character that is not a letter or digit becomes a space; runs of spaces become one.

``value_hit``: an answer names the value when some alias, normalised, occurs in the normalised answer as
whole words (bounded by the text's ends or spaces): "4471" is not found in "44712", "9 march" not in
"19 march". Aliases are given by the generator (a date's day–month orders and ordinals); nothing else is
lenient: a first name alone does not match a value that is a first name plus surname, and a number
written in words does not match its digits.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Iterable

_DIGIT_JOIN = re.compile(r"(?<=\d)[ ,.\-](?=\d)")
_HYPHEN_JOIN = re.compile(r"(?<=[^\W_])-(?=[^\W_])")
_NOT_WORD = re.compile(r"[\W_]+")


def normalise(text: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"normalise expects a string, got {type(text).__name__}")
    s = unicodedata.normalize("NFKC", text).lower()
    s = _DIGIT_JOIN.sub("", s)
    s = _HYPHEN_JOIN.sub("", s)
    return " ".join(_NOT_WORD.sub(" ", s).split())


def occurrences(text: str, aliases: Iterable[str]) -> int:
    """Distinct positions in ``text`` where some alias starts as whole words (after normalising both)."""
    hay = f" {normalise(text)} "
    starts: set[int] = set()
    for alias in aliases:
        needle = normalise(alias)
        if not needle:
            raise ValueError(f"alias {alias!r} is empty after normalisation")
        needle = f" {needle} "
        i = hay.find(needle)
        while i != -1:
            starts.add(i)
            i = hay.find(needle, i + 1)
    return len(starts)


def value_hit(answer: str, aliases: Iterable[str]) -> bool:
    aliases = list(aliases)
    if not aliases:
        raise ValueError("value_hit needs at least one alias of the value")
    return occurrences(answer, aliases) > 0

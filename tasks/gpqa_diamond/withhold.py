"""Keeping GPQA text out of everything the harness writes.

The dataset's authors ask that its questions never appear in plain text online, and a model's
output often echoes its prompt. :class:`Withholder` replaces every span of an output that shares a
run of ``MIN_RUN`` or more characters with any GPQA question or option by a marker that says how many
characters were withheld. Runs are compared case-insensitively in two views, with whitespace runs
collapsed to one space and with whitespace removed, so neither re-wrapping nor re-spacing hides an
echo. Shorter runs are kept: they are common phrases of any text.

The marker carries no letter that an answer extractor could read and no text of the dataset, so the
letters the scorers extract are the same before and after withholding (checked on the committed
records by ``tests/tasks/test_gpqa_withhold.py``).
"""
from __future__ import annotations

import re
from typing import Iterable

MIN_RUN = 30
MARKER = "[GPQA text withheld: {n} characters]"
# An option label at the start of a line ("B. ", "d) ", "**(C)** ") is the output's own structure: it stays, so
# the letters the scorers read do not change.
_LABEL = re.compile(r"[ \t]*[\*\(\[]*[A-Da-d][\)\]\.:]\**[ \t]*")


def _views(text: str) -> list[tuple[str, list[int]]]:
    """(normalised text, index in ``text`` of each normalised character) for both views."""
    collapsed, c_map, removed, r_map = [], [], [], []
    in_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if not in_space and collapsed:
                collapsed.append(" ")
                c_map.append(i)
            in_space = True
            continue
        in_space = False
        for low in ch.casefold():
            collapsed.append(low)
            c_map.append(i)
            removed.append(low)
            r_map.append(i)
    return [("".join(collapsed), c_map), ("".join(removed), r_map)]


class Withholder:
    """Built from every question and option of the dataset (all of them, not only the one asked: an
    output can echo anything its model memorised)."""

    def __init__(self, texts: Iterable[str], min_run: int = MIN_RUN):
        self.min_run = min_run
        self.runs: list[set[str]] = [set(), set()]
        for text in texts:
            for k, (norm, _) in enumerate(_views(str(text))):
                self.runs[k].update(norm[i:i + min_run] for i in range(len(norm) - min_run + 1))

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Merged ``[start, end)`` spans of ``text`` that lie in a shared run of ``min_run`` characters."""
        covered: list[tuple[int, int]] = []
        n = self.min_run
        for runs, (norm, index) in zip(self.runs, _views(text)):
            for i in range(len(norm) - n + 1):
                if norm[i:i + n] in runs:
                    covered.append((index[i], index[i + n - 1] + 1))
        covered.sort()
        merged: list[list[int]] = []
        for a, b in covered:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out = []
        for a, b in merged:
            line_start = text.rfind("\n", 0, a) + 1
            label = _LABEL.match(text, line_start)
            if label and line_start <= a < label.end():
                a = label.end()
            while a < b and text[a].isspace():  # line breaks and spacing are not GPQA text either
                a += 1
            while b > a and text[b - 1].isspace():
                b -= 1
            if a < b:
                out.append((a, b))
        return out

    def __call__(self, text: str) -> str:
        """``text`` with every shared span replaced by the marker (repeated until no shared run is left, since
        whitespace at a span's edge can join what is left on both sides)."""
        for _ in range(8):
            spans = self.spans(text)
            if not spans:
                return text
            out, last = [], 0
            for a, b in spans:
                out += [text[last:a], MARKER.format(n=b - a)]
                last = b
            text = "".join(out) + text[last:]
        raise RuntimeError("withholding GPQA text did not converge")  # cannot happen: each round shrinks the text

    def redact_tree(self, value):
        """Every string inside a JSON-like value withheld (method info, error messages)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {k: self.redact_tree(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.redact_tree(v) for v in value]
        return value

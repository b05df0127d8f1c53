"""Short-answer normalisers and scores shared by the QA tasks (HotpotQA, MemoryAgentBench).

Two normalisers exist because the δ-mem reference suite and the original benchmarks differ:

* ``normalize_lenient`` (reference suite, HotpotQA and MAB): lowercase, the words a/an/the
  replaced by a space, every non-word character (regex ``\\W``) replaced by a space,
  whitespace collapsed. "U.S." becomes "u s".
* ``normalize_squad`` (``hotpot_evaluate_v1`` and MAB's ``eval_other_utils``): lowercase,
  ASCII punctuation *deleted*, a/an/the replaced by a space, whitespace collapsed.
  "U.S." becomes "us".

F1 is the multiset token overlap F1. The reference variant gives 1.0 when both sides
normalise to nothing and never special-cases yes/no; the official variant scores 0 when
either side is one of yes/no/noanswer and the two differ (and 0 for no overlap).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Callable, Iterable

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NON_WORD = re.compile(r"\W")
_PUNCT = frozenset(string.punctuation)
_SPECIAL = ("yes", "no", "noanswer")


def normalize_lenient(text: str) -> str:
    text = str(text).lower()
    text = _ARTICLES.sub(" ", text)
    text = _NON_WORD.sub(" ", text)
    return " ".join(text.split())


def normalize_squad(text: str) -> str:
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _overlap_f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def f1_lenient(prediction: str, gold: str) -> float:
    pred, ref = normalize_lenient(prediction).split(), normalize_lenient(gold).split()
    if not pred and not ref:
        return 1.0
    if not pred or not ref:
        return 0.0
    return _overlap_f1(pred, ref)


def f1_official(prediction: str, gold: str) -> float:
    pred, ref = normalize_squad(prediction), normalize_squad(gold)
    if (pred in _SPECIAL or ref in _SPECIAL) and pred != ref:
        return 0.0
    return _overlap_f1(pred.split(), ref.split())


def em_lenient(prediction: str, gold: str) -> float:
    return float(normalize_lenient(prediction) == normalize_lenient(gold))


def em_official(prediction: str, gold: str) -> float:
    return float(normalize_squad(prediction) == normalize_squad(gold))


def substring_official(prediction: str, gold: str) -> float:
    """MAB's ``substring_exact_match``: the normalised gold occurs in the normalised prediction."""
    return float(normalize_squad(gold) in normalize_squad(prediction))


def first_line(text: str) -> str:
    """The first non-empty line, stripped ("" for an empty output)."""
    for line in str(text).splitlines():
        if line.strip():
            return line.strip()
    return ""


def best_over(metric: Callable[[str, str], float], predictions: Iterable[str], golds: Iterable[str]) -> float:
    """Maximum of ``metric`` over every (prediction, gold) pair; 0.0 when a side is empty."""
    golds = list(golds)
    return max((metric(p, g) for p in predictions for g in golds), default=0.0)


_FIELD = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def fill_template(template: str, **fields: str) -> str:
    """Substitute ``{name}`` for the given names in one pass.

    Unlike ``str.format`` this leaves other braces alone (prompts quote JSON such as
    ``{"answer": "C"}``) and never re-substitutes inside an inserted value (a context
    may itself contain ``{question}``).
    """
    def sub(m: re.Match) -> str:
        name = m.group(1)
        return str(fields[name]) if name in fields else m.group(0)

    return _FIELD.sub(sub, template)

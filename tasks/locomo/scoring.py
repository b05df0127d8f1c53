"""LoCoMo answer post-processing and F1 rules (official evaluation, as the reference runs it).

Normalisation: NFD, lowercase, ASCII punctuation and commas deleted, the words a/an/the/and
dropped, whitespace collapsed, every token Porter-stemmed. Token F1 uses multiset overlap
and is 0 when either side is empty. Category rules:
  1 (multi-hop): gold and prediction split on commas; each gold part takes its best F1
    over the prediction parts; the score is the mean over gold parts;
  2 (temporal), 4 (single-hop): plain F1;
  3 (open-domain): F1 against the gold text before the first ';';
  5 (adversarial): 1 if the answer says the information is not available, else 0.
Per-question scores are rounded to 4 decimals, as in the reference output.
"""
from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache

_PUNCT = set(string.punctuation)
_DROP_WORDS = re.compile(r"\b(a|an|the|and)\b")
_NOT_AVAILABLE = ("no information available", "not mentioned")


@lru_cache(maxsize=1)
def _stemmer():
    from nltk.stem import PorterStemmer

    return PorterStemmer()


@lru_cache(maxsize=65536)
def _stem(token: str) -> str:
    return _stemmer().stem(token)


def normalize_answer(text: str) -> str:
    text = unicodedata.normalize("NFD", str(text)).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)  # commas are punctuation too
    text = _DROP_WORDS.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return [_stem(t) for t in normalize_answer(text).split()]


def token_f1(prediction: str, gold: str) -> float:
    pred, ref = _tokens(prediction), _tokens(gold)
    if not pred or not ref:
        return 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def multi_answer_f1(prediction: str, gold: str) -> float:
    preds = [p.strip() for p in prediction.split(",")]
    golds = [g.strip() for g in gold.split(",")]
    return sum(max(token_f1(p, g) for p in preds) for g in golds) / len(golds)


def canonical_prediction(text: str, *, category: int, options: tuple[str, str] | None = None) -> str:
    """First non-empty line, lowercased, option markers and an 'answer:' label removed.

    For category 5 the chosen option letter is first mapped back to its option text.
    """
    text = str(text).replace('"', "'")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    line = lines[0].lower() if lines else ""
    if category == 5 and options is not None:
        if "(a)" in line or line.startswith("a)") or line in ("a", "a."):
            return options[0].lower()
        if "(b)" in line or line.startswith("b)") or line in ("b", "b."):
            return options[1].lower()
    for marker in ("(a)", "(b)", "a)", "b)", "answer:"):
        line = line.replace(marker, "")
    return line.strip()


def locomo_f1(prediction: str, gold, category: int) -> float:
    """Score an already canonicalised prediction against the gold answer."""
    if category == 5:
        return float(any(p in prediction.lower() for p in _NOT_AVAILABLE))
    gold = str(gold)
    if category == 1:
        score = multi_answer_f1(prediction, gold)
    elif category == 3:
        score = token_f1(prediction, gold.split(";")[0])
    elif category in (2, 4):
        score = token_f1(prediction, gold)
    else:
        raise ValueError(f"LoCoMo category must be 1-5, got {category!r}")
    return round(score, 4)

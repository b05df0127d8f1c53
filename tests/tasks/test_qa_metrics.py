"""Normalisers and short-answer scores, with hand-computed expectations."""
from __future__ import annotations

import pytest

from tasks.qa_metrics import (best_over, em_lenient, em_official, f1_lenient, f1_official, fill_template,
                              first_line, normalize_lenient, normalize_squad, substring_official)


@pytest.mark.parametrize("text, lenient, squad", [
    ("The U.S. Army", "u s army", "us army"),
    ("  An apple, a pear  ", "apple pear", "apple pear"),
    ("rock-and-roll", "rock and roll", "rockandroll"),
    ("theatre", "theatre", "theatre"),  # 'the' only as a word
    ("", "", ""),
])
def test_normalisers(text, lenient, squad):
    assert normalize_lenient(text) == lenient
    assert normalize_squad(text) == squad


def test_lenient_f1_hand_computed():
    # pred tokens [barack, obama, jr], gold [barack, obama]: P=2/3, R=1 -> F1=0.8
    assert f1_lenient("Barack Obama Jr.", "Barack Obama") == pytest.approx(0.8)
    # no yes/no rule: "yes it is" vs "yes": P=1/3, R=1 -> 0.5
    assert f1_lenient("yes it is", "yes") == pytest.approx(0.5)
    assert f1_lenient("", "") == 1.0 and f1_lenient("x", "") == 0.0 and f1_lenient("", "x") == 0.0
    # duplicates count as a multiset: [a,a,b] vs [a,b]: common 2 -> P=2/3 R=1 -> 0.8 ("a" is an article, so use x)
    assert f1_lenient("x x y", "x y") == pytest.approx(0.8)


def test_official_f1_and_em_hand_computed():
    assert f1_official("yes it is", "yes") == 0.0          # yes/no rule
    assert f1_official("no", "no") == 1.0
    assert f1_official("noanswer", "something") == 0.0
    assert f1_official("U.S. Army", "US army") == 1.0      # punctuation deleted, not spaced
    assert f1_lenient("U.S. Army", "US army") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert em_official("The U.S.", "us") == 1.0 and em_lenient("The U.S.", "us") == 0.0
    assert substring_official("It was the Oderzo council.", "oderzo") == 1.0
    assert substring_official("Oder zo", "Oderzo") == 0.0


def test_first_line_best_over_and_fill():
    assert first_line("\n\n  Paris \nFrance") == "Paris"
    assert first_line("   \n") == ""
    assert best_over(em_lenient, ["a Paris", "x"], ["London", "paris"]) == 1.0
    assert best_over(em_lenient, ["x"], []) == 0.0
    out = fill_template('Q: {question} {"answer": "C"} {keep}', question="has {question} inside")
    assert out == 'Q: has {question} inside {"answer": "C"} {keep}'

"""MemoryAgentBench scorers: the reference suite's lenient ones and MAB's official ones.

Reference suite (δ-mem ``benchmark_compare``):
  * ``correct``: lenient alias match. Prediction and aliases are normalised with
    :func:`~tasks.qa_metrics.normalize_lenient`; aliases are de-duplicated by normalised
    form. Correct when an alias equals the normalised prediction or its normalised first
    non-empty line, or when the normalised alias occurs as a substring of the normalised
    prediction (so gold "no" matches "I don't know"). Aliases that normalise to nothing
    are ignored (an empty string would match anything).
  * ``f1``: the best lenient token F1 over {full prediction, first line} x aliases.

Official MAB (``utils/eval_other_utils.py``, re-implemented here):
  * text normalised with SQuAD rules (punctuation deleted); ``parse_output`` takes the text
    after the first "Answer:" (any case) up to the end of its line, else the first line.
  * ICL sources score the parsed output only; EventQA scores the parsed output only and
    also logs ``eventqa_recall`` (every alias found, case-insensitive, in the raw output);
    every other source takes the max over the raw and the parsed output.
  * ``substring_exact_match`` (gold in prediction), ``exact_match`` (equality) and
    ``f1_official`` (token F1 with the yes/no/noanswer rule), max over aliases.
  * RecSys ``recall@{1,5,10}``: the numbered list after the first "1." (else the output with
    commas as line breaks) is split into lines, each line cleaned (parenthesised text and
    leading numbering removed) and mapped to the nearest movie title of ReDial's
    ``entity2id.json`` by case-insensitive Levenshtein distance; recall@k is the share of
    gold movies among the first k mapped lines. Empty lines stay in the list, as upstream.
    Upstream breaks distance ties by set iteration order (not reproducible); here the
    alphabetically first title wins.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from tasks.qa_metrics import f1_lenient, f1_official, first_line, normalize_lenient, normalize_squad


# ------------------------------------------------------------------ reference (lenient)
def lenient_correct(prediction: str, aliases: Sequence[str]) -> float:
    full = normalize_lenient(prediction)
    line = normalize_lenient(first_line(prediction))
    seen = set()
    for alias in aliases:
        a = normalize_lenient(alias)
        if not a or a in seen:
            continue
        seen.add(a)
        if a == full or a == line or a in full:
            return 1.0
    return 0.0


def lenient_f1(prediction: str, aliases: Sequence[str]) -> float:
    candidates = (prediction, first_line(prediction))
    return max((f1_lenient(p, a) for p in candidates for a in aliases), default=0.0)


# ------------------------------------------------------------------ official
def parse_output(text: str, prefix: str = "Answer:") -> str:
    """MAB's answer extraction: the rest of the line after ``prefix`` (first occurrence,
    case-insensitive), else the first line; a repeated leading prefix is removed."""
    text = str(text)
    m = re.search(re.escape(prefix) + r"(.*)(?:\n|$)", text, flags=re.IGNORECASE)
    if m is None:
        m = re.match(r"(.*)(?:\n|$)", text)
    answer = m.group(1).strip()
    return re.sub("^" + re.escape(prefix), "", answer, flags=re.IGNORECASE).strip()


def _sem(prediction: str, aliases: Sequence[str]) -> float:
    p = normalize_squad(prediction)
    return max((float(normalize_squad(a) in p) for a in aliases), default=0.0)


def _em(prediction: str, aliases: Sequence[str]) -> float:
    p = normalize_squad(prediction)
    return max((float(normalize_squad(a) == p) for a in aliases), default=0.0)


def official_scores(prediction: str, aliases: Sequence[str], family: str) -> dict[str, float]:
    """``substring_exact_match`` and ``exact_match`` with MAB's per-family post-processing."""
    parsed = parse_output(prediction)
    if family in ("icl", "eventqa"):
        texts = [parsed]
    else:
        texts = [prediction, parsed]
    out = {"substring_exact_match": max(_sem(t, aliases) for t in texts),
           "exact_match": max(_em(t, aliases) for t in texts),
           "f1_official": max((f1_official(t, a) for t in texts for a in aliases), default=0.0)}
    if family == "eventqa":
        low = str(prediction).lower()
        out["eventqa_recall"] = float(all(a.lower() in low for a in aliases))
    return out


# ------------------------------------------------------------------ recsys
def movie_name(entity: str) -> str:
    """Title of a ReDial entity key such as ``<http://dbpedia.org/resource/Water_(1985_film)>``."""
    name = entity.split("/")[-1].replace("_", " ").replace("-", " ").replace(">", " ")
    name = re.sub(r"\([^()]*\)", "", name)
    return re.sub(r"\s+", " ", name).strip()


_NUMBERING = re.compile(r"^(?:\d+[\.\)、]?\s*[\-\—\–]?\s*)?")


def clean_item(text: str) -> str:
    text = re.sub(r"\([^()]*\)", "", text)
    text = _NUMBERING.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


def recommendation_items(text: str) -> list[str]:
    text = str(text)
    if "1." in text:
        body = text.split("1.", 1)[1]
    else:
        body = text.replace(",", "\n")
    return [clean_item(line.strip()) for line in body.split("\n")]


class MovieCatalog:
    """ReDial ``entity2id.json``: id -> title, and nearest-title lookup by edit distance."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: ReDial entity2id.json not found (needed by recsys recall; "
                                    "set task.entity2id_path or HARNESS_MAB_ENTITY2ID)")
        mapping = json.loads(self.path.read_text())
        self.id_to_name = {int(v): movie_name(k) for k, v in mapping.items()}
        titles = sorted(set(self.id_to_name.values()))
        # Longest first, so the titles still being compared at column j are a prefix.
        order = sorted(range(len(titles)), key=lambda i: -len(titles[i].lower()))
        self._titles = [titles[i] for i in order]
        self._alpha = np.array(order, dtype=np.int64)  # alphabetical rank, for ties
        lowered = [t.lower() for t in self._titles]  # lowercasing can change a title's length
        self._lengths = np.array([len(t) for t in lowered], dtype=np.int64)
        width = int(self._lengths.max()) if len(titles) else 0
        codes = np.zeros((len(titles), width), dtype=np.int64)
        for i, t in enumerate(lowered):
            codes[i, :len(t)] = [ord(c) for c in t]
        self._codes = codes
        self._active = [int((self._lengths >= j).sum()) for j in range(width + 1)]
        self._cache: dict[str, str] = {}

    def distances(self, target: str) -> np.ndarray:
        """Levenshtein distance from ``target`` (lowercased) to every title, column by column.

        Column j of the DP table is updated for all titles of length >= j at once; the
        insertion chain along the target is resolved with a running minimum.
        """
        t = np.array([ord(c) for c in target.lower()], dtype=np.int64)
        m = len(t)
        n = len(self._titles)
        idx = np.arange(m + 1, dtype=np.int64)
        col = np.broadcast_to(idx, (n, m + 1)).copy()  # column 0: distance to the empty prefix
        result = np.where(self._lengths == 0, m, 0).astype(np.int64)
        for j in range(1, self._codes.shape[1] + 1):
            k = self._active[j]
            if k == 0:
                break
            prev = col[:k]
            cost = (self._codes[:k, j - 1, None] != t[None, :]).astype(np.int64)
            cand = np.empty((k, m + 1), dtype=np.int64)
            cand[:, 0] = prev[:, 0] + 1
            cand[:, 1:] = np.minimum(prev[:, 1:] + 1, prev[:, :-1] + cost)
            # D[i] = min_{l <= i} (cand[l] + i - l)
            new = np.minimum.accumulate(cand - idx, axis=1) + idx
            col = new
            done = self._lengths[:k] == j
            result[:k][done] = new[done, m]
        return result

    def nearest(self, target: str) -> str:
        if target not in self._cache:
            d = self.distances(target)
            best = np.lexsort((self._alpha, d))[0]
            self._cache[target] = self._titles[best]
        return self._cache[target]

    def recall(self, prediction: str, gold_ids: Iterable[str], ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
        gold = []
        for g in gold_ids:
            try:
                gid = int(str(g).strip())
            except ValueError as exc:
                raise ValueError(f"recsys gold id {g!r} is not an integer") from exc
            if gid not in self.id_to_name:
                raise ValueError(f"recsys gold id {gid} is not in {self.path}")
            gold.append(self.id_to_name[gid])
        predicted = [self.nearest(item) for item in recommendation_items(prediction)]
        return {f"recall@{k}": sum(g in predicted[:k] for g in gold) / len(gold) for k in ks}


@lru_cache(maxsize=4)
def load_catalog(path: str) -> MovieCatalog:
    return MovieCatalog(path)

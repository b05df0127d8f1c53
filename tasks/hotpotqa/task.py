"""HotpotQA, distractor setting, validation split: short-answer QA over 10 passages.

One episode = one question; its passages (2 gold + 8 distractors, in dataset order) are
the episode's context units, so retrieval methods index passages. The prompt follows the
δ-mem reference suite. Every sample is scored by both answer rules, kept side by side:
``em_reference``/``f1_reference`` (the reference suite's normaliser, no yes/no rule, F1 rounded
to 4 decimals) and ``em_official``/``f1_official`` (``hotpot_evaluate_v1``: punctuation deleted,
yes/no/noanswer F1 rule); ``task.scoring`` picks the pair that is ``em``/``f1``, the primary
metric. Both rules read the same extracted answer (``task.answer_extraction``).
Supporting-fact and joint metrics are not computed (no method predicts supporting facts).

The copy under ``shared/data/hotpotqa`` is a *partial* dev set (1,354 of 7,405 questions);
the data fingerprint of every run says how many questions the file holds.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

from harness.errors import DataError
from harness.types import ContextUnit, Episode, Query, RenderedContext, Score
from tasks.base import Task
from tasks.data_location import locate, where_to_put
from tasks.hub import HubSource, hub_fingerprint, is_hub_uri, load_hub_rows, parse_hub_uri
from tasks.qa_metrics import em_lenient, em_official, f1_lenient, f1_official, fill_template, first_line

FULL_DEV_SIZE = 7405
DEFAULT_FILE = Path("hotpotqa") / "hotpotqa_dev_distractor_subset.jsonl"
HUB = {"name": "distractor", "split": "validation"}  # defaults of an hf://hotpotqa/hotpot_qa data_path
SCORINGS = ("reference", "official")
EXTRACTIONS = ("first_line", "full")


def _fail(path: Path, line: int, message: str) -> DataError:
    return DataError(path, f"line {line}: {message}")


def validate_row(row: Any, fail: Callable[[str], DataError]) -> dict[str, Any]:
    """One question in the HF ``hotpot_qa``/``distractor`` layout, checked field by field."""
    if not isinstance(row, dict):
        raise fail("expected a JSON object")
    for key in ("id", "question", "answer", "type", "context"):
        if key not in row:
            raise fail(f"missing field {key!r}")
    if isinstance(row["id"], int) and not isinstance(row["id"], bool):
        # 4 records of the staged subset carry integer ids; an id only has to be unique.
        row["id"] = str(row["id"])
    for key in ("id", "question", "answer", "type"):
        if not isinstance(row[key], str):
            raise fail(f"field {key!r} must be a string, got {type(row[key]).__name__}")
    ctx = row["context"]
    if not isinstance(ctx, dict) or "title" not in ctx or "sentences" not in ctx:
        raise fail("field 'context' must be {title: [...], sentences: [[...]]}")
    titles, sentences = ctx["title"], ctx["sentences"]
    if not isinstance(titles, list) or not isinstance(sentences, list) or len(titles) != len(sentences):
        raise fail(f"context.title and context.sentences must be lists of equal length "
                   f"(got {len(titles) if isinstance(titles, list) else titles!r} titles)")
    if not titles:
        raise fail("context has no passages")
    for i, sents in enumerate(sentences):
        if not isinstance(sents, list) or not all(isinstance(s, str) for s in sents):
            raise fail(f"context.sentences[{i}] must be a list of strings")
    return row


def _check_unique(rows: list[dict[str, Any]], where: Any) -> list[dict[str, Any]]:
    if not rows:
        raise DataError(where, "no questions in the data")
    seen: set[str] = set()
    for row in rows:
        if row["id"] in seen:
            raise DataError(where, f"duplicate question id {row['id']!r}")
        seen.add(row["id"])
    return rows


def parse_hotpotqa(path: Path) -> list[dict[str, Any]]:
    """Read and validate the HF ``hotpot_qa``/``distractor`` layout, one JSON object per line."""
    if not path.is_file():
        raise DataError(path, "HotpotQA file not found (" + where_to_put("hotpotqa", "data_path", "HARNESS_HOTPOTQA", DEFAULT_FILE) + ")")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _fail(path, n, f"not valid JSON ({exc.msg})") from exc
            rows.append(validate_row(row, lambda m, n=n: _fail(path, n, m)))
    return _check_unique(rows, path)


def hub_hotpotqa(source: HubSource) -> list[dict[str, Any]]:
    """The same layout from the Hub (``hotpotqa/hotpot_qa``, config ``distractor``, split ``validation``)."""
    rows = load_hub_rows(source)
    return _check_unique([validate_row(r, lambda m, i=i: DataError(source.uri, f"row {i}: {m}"))
                          for i, r in enumerate(rows)], source.uri)


class HotpotQATask(Task):
    name = "hotpotqa"
    primary_metric = "f1"
    scorer_version = 2  # 2: both rules in every sample
    table_metrics = (("f1_official", "F1 by the official rule (hotpot_evaluate_v1's normaliser and yes/no rule)"),
                     ("f1_reference", "F1 by the δ-mem reference suite's rule (lenient normaliser, no yes/no rule)"))

    def __init__(self, *, data_path: str | None = None, scoring: str = "reference",
                 answer_extraction: str = "first_line", prompts: dict[str, str] | None = None, **kw: Any):
        super().__init__(**kw)
        if scoring not in SCORINGS:
            raise ValueError(f"task.scoring must be one of {SCORINGS}, got {scoring!r}")
        if answer_extraction not in EXTRACTIONS:
            raise ValueError(f"task.answer_extraction must be one of {EXTRACTIONS}, got {answer_extraction!r}")
        prompts = dict(prompts or {})
        missing = [k for k in ("with_context", "without_context", "passage") if k not in prompts]
        if missing:
            raise ValueError(f"task.prompts is missing {missing}")
        where = locate(data_path, "HARNESS_HOTPOTQA", DEFAULT_FILE, hub="hf://hotpotqa/hotpot_qa")
        self.hub = parse_hub_uri(where, **HUB) if is_hub_uri(where) else None
        self.path = Path(where).expanduser()
        self.scoring, self.answer_extraction, self.prompts = scoring, answer_extraction, prompts
        self._rows: list[dict[str, Any]] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = hub_hotpotqa(self.hub) if self.hub else parse_hotpotqa(self.path)
        return self._rows

    # ------------------------------------------------------------------ data
    def load_episodes(self) -> list[Episode]:
        episodes = []
        for row in self.rows():
            qid = row["id"]
            units = []
            for i, (title, sents) in enumerate(zip(row["context"]["title"], row["context"]["sentences"]), start=1):
                body = " ".join(s.strip() for s in sents if s.strip())
                text = self.prompts["passage"].format(index=i, title=title, text=body)
                units.append(ContextUnit(id=f"{qid}/p{i}", text=text, segment=f"passage_{i}",
                                         metadata={"title": title, "index": i}))
            query = Query(id=qid, question=row["question"], gold=row["answer"], category=row["type"],
                          metadata={"level": row.get("level")})
            episodes.append(Episode(id=qid, units=tuple(units), queries=(query,)))
        return episodes

    def data_fingerprint(self) -> dict[str, Any]:
        n = len(self.rows())
        note = (f"partial dev subset: {n} of the {FULL_DEV_SIZE} distractor-dev questions; "
                "not comparable to full-dev numbers") if n < FULL_DEV_SIZE else "full distractor dev set"
        where = (hub_fingerprint(self.hub, self.rows()) if self.hub else
                 {"path": str(self.path), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()})
        return {**where, "n_questions": n, "subset": n < FULL_DEV_SIZE, "note": note}

    # --------------------------------------------------------------- prompts
    def render_context(self, episode: Episode, *, count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None) -> RenderedContext:
        """All passages in dataset order; under a token budget, passages are kept from the first."""
        units = list(episode.units)
        kept = units
        if count_tokens is not None and max_tokens is not None:
            kept, used = [], 0
            for u in units:
                cost = count_tokens(u.text) + (2 if kept else 0)
                if used + cost > max_tokens:
                    break
                kept.append(u)
                used += cost
        text = self.render_units(kept)
        n = count_tokens(text) if count_tokens else 0
        total = count_tokens(self.render_units(units)) if count_tokens and len(kept) < len(units) else n
        return RenderedContext(text=text, kept_tokens=n, total_tokens=total,
                               kept_unit_ids=tuple(u.id for u in kept), truncated=len(kept) < len(units))

    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        if context is None:
            content = fill_template(self.prompts["without_context"], question=query.question)
        else:
            content = fill_template(self.prompts["with_context"], context=context, question=query.question)
        return [{"role": "user", "content": content}]

    # --------------------------------------------------------------- scoring
    def extract(self, prediction: str) -> str:
        return first_line(prediction) if self.answer_extraction == "first_line" else str(prediction).strip()

    def score(self, query: Query, prediction: str) -> Score:
        answer = self.extract(prediction)
        values = {"em_official": em_official(answer, query.gold), "f1_official": f1_official(answer, query.gold),
                  # the reference rounds each item's F1 to 4 decimals before averaging
                  "em_reference": em_lenient(answer, query.gold),
                  "f1_reference": round(f1_lenient(answer, query.gold), 4)}
        values.update(em=values[f"em_{self.scoring}"], f1=values[f"f1_{self.scoring}"])
        return Score(values=values, extracted=answer)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "scoring": self.scoring, "answer_extraction": self.answer_extraction,
                "data_note": self.data_fingerprint().get("note")}

"""LoCoMo: question answering over very long two-person conversations.

One episode = one conversation (19-32 dated sessions); its questions are the episode's
queries. The prompt follows the official LoCoMo evaluation layout used by the δ-mem
reference suite (system prompt, conversation block with a DATE header per session, the QA
instruction, a date hint for temporal questions); the wording lives in
``conf/task/locomo.yaml`` so a protocol variant is a config change, not a code change.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import DataError
from harness.types import ContextUnit, Episode, Query, RenderedContext, Score
from tasks.base import Task
from tasks.locomo.scoring import canonical_prediction, locomo_f1

PACKAGED_DATA = Path(__file__).parent / "data" / "locomo10.json"
CATEGORY_NAMES = {1: "multi_hop", 2: "temporal", 3: "open_domain", 4: "single_hop", 5: "adversarial"}
SESSION_ORDERS = ("newest_first", "chronological")
TRUNCATIONS = ("keep_earliest", "keep_latest")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _require(obj: dict, key: str, where: str, path: Path):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(path, f"{where}: missing field {key!r}")
    return obj[key]


def parse_locomo(path: Path) -> list[dict[str, Any]]:
    """Read and validate the official locomo10.json layout."""
    if not path.is_file():
        raise DataError(path, "LoCoMo data file not found (set task.data_path or HARNESS_LOCOMO)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc
    if not isinstance(data, list) or not data:
        raise DataError(path, "expected a non-empty JSON list of conversations")
    for i, sample in enumerate(data):
        where = f"conversation #{i}"
        sid = _require(sample, "sample_id", where, path)
        conv = _require(sample, "conversation", f"{where} ({sid})", path)
        for key in ("speaker_a", "speaker_b"):
            _require(conv, key, f"{sid}.conversation", path)
        qa = _require(sample, "qa", f"{where} ({sid})", path)
        if not isinstance(qa, list):
            raise DataError(path, f"{sid}.qa: expected a list")
        for j, item in enumerate(qa):
            _require(item, "question", f"{sid}.qa[{j}]", path)
            cat = _require(item, "category", f"{sid}.qa[{j}]", path)
            if cat not in CATEGORY_NAMES:
                raise DataError(path, f"{sid}.qa[{j}].category: expected 1-5, got {cat!r}")
            if cat != 5 and "answer" not in item:
                raise DataError(path, f"{sid}.qa[{j}]: missing field 'answer'")
            if cat == 5 and "adversarial_answer" not in item and "answer" not in item:
                raise DataError(path, f"{sid}.qa[{j}]: category 5 needs 'adversarial_answer'")
        for n in _session_numbers(conv):
            for k, turn in enumerate(conv[f"session_{n}"]):
                for key in ("speaker", "dia_id", "text"):
                    _require(turn, key, f"{sid}.conversation.session_{n}[{k}]", path)
            _require(conv, f"session_{n}_date_time", f"{sid}.conversation", path)
    return data


def _session_numbers(conv: dict) -> list[int]:
    nums = []
    for key in conv:
        parts = key.split("_")
        if len(parts) == 2 and parts[0] == "session" and parts[1].isdigit():
            nums.append(int(parts[1]))
    return sorted(nums)


class LoCoMoTask(Task):
    name = "locomo"
    primary_metric = "f1"
    history_keys = ("speakers",)

    def __init__(self, *, data_path: str | None = None, categories: Sequence[int] = (1, 2, 3, 4),
                 session_order: str = "newest_first", truncation: str = "keep_earliest",
                 prompts: dict[str, str] | None = None, **kw: Any):
        super().__init__(**kw)
        self.path = Path(data_path or os.environ.get("HARNESS_LOCOMO") or PACKAGED_DATA).expanduser()
        bad = [c for c in categories if c not in CATEGORY_NAMES]
        if bad or not categories:
            raise ValueError(f"task.categories must be a non-empty subset of 1-5, got {list(categories)}")
        if session_order not in SESSION_ORDERS:
            raise ValueError(f"task.session_order must be one of {SESSION_ORDERS}, got {session_order!r}")
        if truncation not in TRUNCATIONS:
            raise ValueError(f"task.truncation must be one of {TRUNCATIONS}, got {truncation!r}")
        required = ("system", "preamble", "session_header", "turn", "caption", "question", "temporal_hint", "adversarial")
        prompts = dict(prompts or {})
        missing = [k for k in required if k not in prompts]
        if missing:
            raise ValueError(f"task.prompts is missing {missing}")
        self.categories = tuple(int(c) for c in categories)
        self.session_order, self.truncation, self.prompts = session_order, truncation, prompts
        self._speakers: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ data
    def load_episodes(self) -> list[Episode]:
        episodes = []
        for sample in parse_locomo(self.path):
            sid = sample["sample_id"]
            conv = sample["conversation"]
            self._speakers[sid] = (conv["speaker_a"], conv["speaker_b"])
            units = []
            for n in _session_numbers(conv):
                date = conv[f"session_{n}_date_time"]
                for turn in conv[f"session_{n}"]:
                    units.append(ContextUnit(id=turn["dia_id"], text=self._turn_text(turn), segment=f"session_{n}",
                                             date=date, speaker=turn["speaker"],
                                             metadata={"session": n, "caption": turn.get("blip_caption")}))
            queries = []
            # The reference seeds a sampled answer by its index in the category-filtered list.
            per_cat = [(pos, q) for pos, q in enumerate(sample["qa"]) if q["category"] in self.categories]
            for idx, (pos, item) in enumerate(per_cat):
                cat = int(item["category"])
                gold = item.get("answer") if cat != 5 else item.get("adversarial_answer", item.get("answer"))
                qid = f"{sid}/q{pos:04d}"
                meta = {"seed_index": idx, "category_id": cat, "evidence": item.get("evidence", [])}
                if cat == 5:
                    meta["options"] = self._adversarial_options(qid, str(gold))
                queries.append(Query(id=qid, question=item["question"], gold=gold,
                                     category=CATEGORY_NAMES[cat], metadata=meta))
            episodes.append(Episode(id=sid, units=tuple(units), queries=tuple(queries),
                                    metadata={"speakers": [conv["speaker_a"], conv["speaker_b"]]}))
        return episodes

    def data_fingerprint(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": _sha256(self.path)}

    def _turn_text(self, turn: dict) -> str:
        text = self.prompts["turn"].format(speaker=turn["speaker"], text=turn["text"])
        if turn.get("blip_caption"):
            text += self.prompts["caption"].format(caption=turn["blip_caption"])
        # The official layout leaves a blank line after every turn (after the caption, if any).
        return text + "\n"

    def _adversarial_options(self, qid: str, adversarial: str) -> tuple[str, str]:
        # A deterministic coin per question decides which slot holds "not available".
        flip = hashlib.sha256(qid.encode()).digest()[0] % 2
        not_available = "No information available"
        return (not_available, adversarial) if flip == 0 else (adversarial, not_available)

    # --------------------------------------------------------------- prompts
    def render_context(self, episode: Episode, *, count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None) -> RenderedContext:
        speakers = episode.metadata.get("speakers") or self._speakers.get(episode.id, ("A", "B"))
        preamble = self.prompts["preamble"].format(speaker_a=speakers[0], speaker_b=speakers[1])
        units = list(episode.units)
        kept = units
        total = None
        if count_tokens is not None and max_tokens is not None:
            # Token cost of each piece measured alone; headers are charged to a session's first turn.
            costs, seen = [], set()
            for u in units:
                c = count_tokens(u.text)
                if u.segment not in seen:
                    seen.add(u.segment)
                    c += count_tokens(self.prompts["session_header"].format(date=u.date))
                costs.append(c)
            budget = max_tokens - count_tokens(preamble)
            total = sum(costs) + count_tokens(preamble)
            order = range(len(units)) if self.truncation == "keep_earliest" else range(len(units) - 1, -1, -1)
            keep_idx, used = [], 0
            for i in order:
                if used + costs[i] > budget:
                    break
                used += costs[i]
                keep_idx.append(i)
            kept = [units[i] for i in sorted(keep_idx)]
        text = preamble + self._sessions_block(kept)
        n = count_tokens(text) if count_tokens else 0
        # Pieces tokenised alone can undercount the joined text; drop turns from the
        # truncated end until the rendered block itself fits.
        while max_tokens is not None and count_tokens is not None and n > max_tokens and kept:
            kept = kept[:-1] if self.truncation == "keep_earliest" else kept[1:]
            text = preamble + self._sessions_block(kept)
            n = count_tokens(text)
        return RenderedContext(text=text, kept_tokens=n, total_tokens=total if total is not None else n,
                               kept_unit_ids=tuple(u.id for u in kept), truncated=len(kept) < len(units))

    def _sessions_block(self, units: Sequence[ContextUnit]) -> str:
        sessions: dict[str, list[ContextUnit]] = {}
        for u in units:
            sessions.setdefault(u.segment, []).append(u)
        blocks = [self.prompts["session_header"].format(date=us[0].date) + "".join(u.text for u in us)
                  for us in sessions.values()]
        if self.session_order == "newest_first":
            blocks.reverse()
        return "".join(blocks)

    def history_messages(self, episode: Episode) -> list[dict[str, str]]:
        """Chronological sessions, one user message each, for write-based memories."""
        sessions: dict[str, list[ContextUnit]] = {}
        for u in episode.units:
            sessions.setdefault(u.segment, []).append(u)
        return [{"role": "user",
                 "content": (self.prompts["session_header"].format(date=us[0].date) + "".join(u.text for u in us)).strip()}
                for us in sessions.values()]

    def question_text(self, query: Query) -> str:
        cat = query.metadata["category_id"]
        q = query.question
        if cat == 2:
            q += self.prompts["temporal_hint"]
        elif cat == 5:
            a, b = query.metadata["options"]
            q += self.prompts["adversarial"].format(option_a=a, option_b=b)
        return self.prompts["question"].format(question=q)

    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        question = self.question_text(query)
        user = question if context is None else f"{context}\n\n{question}"
        return [{"role": "system", "content": self.prompts["system"]}, {"role": "user", "content": user}]

    # --------------------------------------------------------------- scoring
    def score(self, query: Query, prediction: str) -> Score:
        cat = query.metadata["category_id"]
        extracted = canonical_prediction(prediction, category=cat, options=query.metadata.get("options"))
        return Score(values={"f1": locomo_f1(extracted, query.gold, cat)}, extracted=extracted)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "categories": list(self.categories), "session_order": self.session_order,
                "truncation": self.truncation}

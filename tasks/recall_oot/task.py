"""The out-of-template recall dialogues as a harness task (not registered in ``conf/task``: it is run by
``benchmarks/recall_out_of_template.py``, which hands the runner this task's config node).

One episode per dialogue: its turns are the context units (BM25 retrieves turns), the chat history a
write-based memory receives is the dialogue itself (user and assistant turns, not a transcript), and the
one query is the question. The question-only prompt is the question alone as the user's message, as the
δ-mem adapters were trained to read it; with a context (vanilla, BM25) the turns come as a transcript
block before the question (``context_format: chat``: as the chat turns themselves, then the question as the
next user message; only vanilla reads the task's rendering, BM25 always renders its own blocks).
``history: none`` drops every episode's context (δ-mem with nothing written).
Primary metric ``key_value``: the answer names the asked value (``tasks.recall_oot.scoring``);
``distractor_value``: it names a distractor's value instead or as well.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any, Callable, Sequence

from harness.types import ContextUnit, Episode, Query, RenderedContext, Score
from tasks.base import Task
from tasks.recall_oot.generator import GENERATOR_VERSION, Dialogue, generate_set
from tasks.recall_oot.scoring import value_hit

HISTORIES = ("own", "none")
CONTEXT_FORMATS = ("transcript", "chat")
# The harness hands a task's context to prompt_messages as one string; in the chat format that string carries
# the turns as JSON behind this marker, so the prompt can give them back as real chat messages.
_CHAT_MARK = "\x00recall_oot-chat\x00"
DEFAULT_PROMPT = "Here is our conversation so far:\n\n{context}\n\nNow my next message: {question}"
_ROLE_LABEL = {"user": "User", "assistant": "Assistant"}


class RecallOOTTask(Task):
    name = "recall_oot"
    primary_metric = "key_value"

    def __init__(self, *, seed: int = 0, buckets: Sequence[int] = (100, 250, 500, 1000, 2000), per_bucket: int = 40,
                 history: str = "own", with_context: str = DEFAULT_PROMPT, context_format: str = "transcript",
                 **kw: Any):
        super().__init__(**kw)
        if context_format not in CONTEXT_FORMATS:
            raise ValueError(f"task.context_format must be one of {CONTEXT_FORMATS}, got {context_format!r}")
        self.context_format = context_format
        if history not in HISTORIES:
            raise ValueError(f"task.history must be one of {HISTORIES}, got {history!r}")
        if "{context}" not in with_context or "{question}" not in with_context:
            raise ValueError("task.with_context needs {context} and {question} fields")
        self.seed, self.buckets, self.per_bucket = int(seed), [int(b) for b in buckets], int(per_bucket)
        self.history, self.with_context = history, with_context
        self._dialogues: list[Dialogue] | None = None

    def dialogues(self) -> list[Dialogue]:
        if self._dialogues is None:
            self._dialogues = generate_set(self.seed, self.buckets, self.per_bucket)
        return self._dialogues

    def load_episodes(self) -> list[Episode]:
        episodes = []
        for d in self.dialogues():
            units = () if self.history == "none" else tuple(
                ContextUnit(id=f"{d.id}/t{j}", text=f"{_ROLE_LABEL[t.role]}: {t.text}", segment=f"t{j}",
                            speaker=t.role, metadata={"role": t.role, "content": t.text})
                for j, t in enumerate(d.turns))
            query = Query(id=d.id, question=d.question, gold=d.asked.value, category=str(d.target_tokens),
                          metadata={"aliases": list(d.asked.aliases),
                                    "distractor_aliases": [list(f.aliases) for f in d.distractors]})
            episodes.append(Episode(id=d.id, units=units, queries=(query,)))
        return episodes

    def data_fingerprint(self) -> dict[str, Any]:
        blob = json.dumps([asdict(d) for d in self.dialogues()], sort_keys=True).encode()
        return {"generator": "tasks.recall_oot.generator", "generator_version": GENERATOR_VERSION, "seed": self.seed,
                "buckets": self.buckets, "per_bucket": self.per_bucket, "sha256": hashlib.sha256(blob).hexdigest()}

    # --------------------------------------------------------------- prompts
    def history_messages(self, episode: Episode) -> list[dict[str, str]]:
        return [{"role": u.metadata["role"], "content": u.metadata["content"]} for u in episode.units]

    def render_context(self, episode: Episode, *, count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None) -> RenderedContext:
        """The transcript; over budget, the oldest turns go first (the asked fact may then be lost: recorded)."""
        units = list(episode.units)
        kept = units
        if count_tokens is not None and max_tokens is not None:
            while kept and count_tokens(self.render_units(kept)) > max_tokens:
                kept = kept[1:]
        text = self.render_units(kept)
        n = count_tokens(text) if count_tokens else 0
        if self.context_format == "chat":  # counted as the transcript: the chat template adds a few per turn
            text = _CHAT_MARK + json.dumps([{"role": u.metadata["role"], "content": u.metadata["content"]}
                                            for u in kept])
        total = count_tokens(self.render_units(units)) if count_tokens and len(kept) < len(units) else n
        return RenderedContext(text=text, kept_tokens=n, total_tokens=total, kept_unit_ids=tuple(u.id for u in kept),
                               truncated=len(kept) < len(units))

    def render_units(self, units) -> str:
        return "\n".join(u.text for u in units)

    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        if context is None:
            return [{"role": "user", "content": query.question}]
        if context.startswith(_CHAT_MARK):
            return [*json.loads(context[len(_CHAT_MARK):]), {"role": "user", "content": query.question}]
        return [{"role": "user", "content": self.with_context.replace("{context}", context)
                 .replace("{question}", query.question)}]

    # --------------------------------------------------------------- scoring
    def score(self, query: Query, prediction: str) -> Score:
        hit = value_hit(prediction, query.metadata["aliases"])
        distractor = any(value_hit(prediction, a) for a in query.metadata["distractor_aliases"])
        return Score(values={"key_value": float(hit), "distractor_value": float(distractor)},
                     extracted=prediction.strip())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed, "buckets": self.buckets, "per_bucket": self.per_bucket,
                "history": self.history, "context_format": self.context_format}

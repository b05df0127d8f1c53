"""The task side of the protocol: data, prompts, generation settings, scoring, aggregation.

A task never runs a model. It yields episodes, turns a query (with or without a context
block) into chat messages, scores a prediction, and aggregates per-sample scores. Prompts
are built here so every method sees the same question wording.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.errors import DataError
from harness.metrics import aggregate_scores
from harness.types import ContextUnit, Episode, GenerationSettings, Query, RenderedContext, SampleRecord, Score

PROTOCOLS = ("context", "memory")


def data_root() -> Path:
    """Root for benchmark data; ``HARNESS_DATA`` overrides the default ``../shared/data``."""
    env = os.environ.get("HARNESS_DATA")
    if env:
        return Path(env).expanduser()
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def stratified_subset(queries: Sequence[Query], limit: int | None, seed: int) -> list[Query]:
    """A deterministic subset of ``limit`` queries, proportional per category.

    Within a category the picks follow a seeded hash order, so the same (limit, seed)
    always selects the same ids, independent of Python's hash randomisation. The result
    keeps the original order.
    """
    if limit is None or limit >= len(queries):
        return list(queries)
    if limit <= 0:
        raise ValueError(f"task.limit must be positive, got {limit}")
    by_cat: dict[Any, list[int]] = {}
    for i, q in enumerate(queries):
        by_cat.setdefault(q.category, []).append(i)
    total = len(queries)
    quotas = {c: limit * len(ix) / total for c, ix in by_cat.items()}
    take = {c: int(v) for c, v in quotas.items()}
    # Largest remainder gives the leftover picks; ties broken by category name for determinism.
    leftovers = sorted(by_cat, key=lambda c: (-(quotas[c] - take[c]), str(c)))
    for c in leftovers[: limit - sum(take.values())]:
        take[c] += 1

    def rank(i: int) -> str:
        return hashlib.sha256(f"{seed}:{queries[i].id}".encode()).hexdigest()

    chosen: set[int] = set()
    for c, ix in by_cat.items():
        chosen.update(sorted(ix, key=rank)[: take[c]])
    return [queries[i] for i in sorted(chosen)]


def limit_episodes(episodes: list[Episode], limit: int | None, seed: int) -> list[Episode]:
    """Apply a question-level ``limit`` across episodes, dropping episodes left empty."""
    if limit is None:
        return episodes
    flat = [q for e in episodes for q in e.queries]
    keep = {q.id for q in stratified_subset(flat, limit, seed)}
    out = []
    for e in episodes:
        qs = tuple(q for q in e.queries if q.id in keep)
        if qs:
            out.append(Episode(e.id, e.units, qs, e.metadata))
    return out


class Task(ABC):
    """Base class of every benchmark. Subclasses set the class attributes and implement
    ``load_episodes``, ``prompt_messages`` and ``score``."""

    name: str = "task"
    primary_metric: str = "score"
    higher_is_better: bool = True
    #: False for data whose license forbids redistribution of the questions (GPQA):
    #: records then keep ids, the public part of the gold and the prediction only.
    record_questions: bool = True
    #: Episode metadata that describes the context, not the questions (e.g. speaker names): under
    #: ``control=other_history`` it moves with the context to the episode answered from it.
    history_keys: tuple[str, ...] = ()
    #: Bumped whenever ``score`` changes what it computes; a record scored by an older version is rescored
    #: from its predictions (``harness.rescore``) before it is skipped or resumed, so no record mixes rules.
    scorer_version: int = 1
    #: What a report's table shows for this task, as (metric, label): the first is the cell's value, a second is
    #: shown beside it in brackets. Empty: the record's primary metric. Tasks scored by several rules name the
    #: rule here, so that no table shows a number without saying which rule made it.
    table_metrics: tuple[tuple[str, str], ...] = ()

    #: The method every other row of the task's breakdown report is paired against (per category, with
    #: intervals); None: no such section. For a memory benchmark, the question-only backbone is the floor.
    paired_reference: str | None = None

    @classmethod
    def report_name(cls, header: dict[str, Any]) -> str:
        """The task column a record fills in reports: its task name, unless one task config yields results that
        must never share a cell (the MAB recipe's context lengths); then the name says which."""
        return str(header.get("task"))

    def __init__(self, *, generation: dict | GenerationSettings | None = None, limit: int | None = None,
                 episode_ids: Sequence[str] | None = None, seed_offset: int = 0, name: str | None = None,
                 **options: Any):
        if name is not None:
            self.name = name  # the config file stem, so records and reports use one name
        self.generation = generation if isinstance(generation, GenerationSettings) else GenerationSettings(**(generation or {}))
        self.limit = limit
        self.episode_ids = list(episode_ids) if episode_ids else None
        self.seed_offset = seed_offset
        if options:
            raise TypeError(f"{type(self).__name__}: unknown options {sorted(options)}")

    # ------------------------------------------------------------------ data
    @abstractmethod
    def load_episodes(self) -> list[Episode]:
        """All episodes of the benchmark (before filtering)."""

    def episodes(self, seed: int) -> list[Episode]:
        episodes = self.load_episodes()
        if self.episode_ids is not None:
            known = {e.id for e in episodes}
            missing = [i for i in self.episode_ids if i not in known]
            if missing:
                raise DataError(self.name, f"task.episode_ids {missing} not in the data; known: {sorted(known)[:20]}")
            wanted = set(self.episode_ids)
            episodes = [e for e in episodes if e.id in wanted]
        for e in episodes:
            for q in e.queries:
                if q.gold is None or (isinstance(q.gold, (list, tuple)) and (not q.gold or None in q.gold)):
                    # a scorer would turn it into a silent 0
                    raise DataError(getattr(self, "path", self.name),
                                    f"question {q.id}: the gold answer is missing or null ({q.gold!r})")
        return limit_episodes(episodes, self.limit, seed)

    def data_fingerprint(self) -> dict[str, Any]:
        """Which data the run read (path and checksum), for the run record."""
        return {}

    def runner_problem(self, method_target: str) -> str | None:
        """Why this task as configured cannot be run with the method class ``method_target`` (checked by the
        runner before any model loads, so a doomed run fails at once)."""
        return None

    # --------------------------------------------------------------- prompts
    def render_context(self, episode: Episode, *, count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None) -> RenderedContext:
        """The episode's context block for the prompt, truncated to ``max_tokens``."""
        text = "\n\n".join(u.text for u in episode.units)
        n = count_tokens(text) if count_tokens else 0
        return RenderedContext(text=text, kept_tokens=n, total_tokens=n,
                               kept_unit_ids=tuple(u.id for u in episode.units))

    @abstractmethod
    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        """Chat messages for one query; ``context=None`` means the question alone."""

    def history_messages(self, episode: Episode) -> list[dict[str, str]]:
        """The context as a chat history, one user message per segment, for write-based
        memories (δ-mem SSW gives each message its own write segment)."""
        messages: list[dict[str, str]] = []
        current, buf = None, []
        for u in episode.units:
            if u.segment != current and buf:
                messages.append({"role": "user", "content": "\n".join(buf)})
                buf = []
            current = u.segment
            buf.append(u.text)
        if buf:
            messages.append({"role": "user", "content": "\n".join(buf)})
        return messages

    def retrieval_units(self, episode: Episode) -> list[ContextUnit]:
        """Units a retriever indexes; tasks with long undivided contexts override this."""
        return list(episode.units)

    def render_units(self, units: Iterable[ContextUnit]) -> str:
        """A context block made of selected units (used by retrieval methods)."""
        return "\n\n".join(u.text for u in units)

    def generation_for(self, query: Query) -> GenerationSettings:
        """Generation settings of one query. Tasks whose settings depend on the data
        (MemoryAgentBench's per-source answer lengths) override this; the queries of one
        episode must share one setting, since methods decode an episode's batches together."""
        return self.generation

    def query_seed(self, query: Query, seed: int) -> int:
        """Seed of a sampled answer; tasks with a reference seeding rule override it."""
        return seed + int(query.metadata.get("seed_index", 0)) + self.seed_offset

    def public_gold(self, query: Query):
        """What of the gold may be written to a record when ``record_questions`` is False."""
        return None

    # --------------------------------------------------------------- scoring
    @abstractmethod
    def score(self, query: Query, prediction: str) -> Score:
        ...

    def score_batch(self, queries: Sequence[Query], predictions: Sequence[str]) -> list[Score]:
        """Scores of a batch; tasks whose scorer has a per-call cost override it."""
        return [self.score(q, p) for q, p in zip(queries, predictions)]

    def withhold(self, value: Any) -> Any:
        """``value`` (a prediction, method info, an error message) as it may be written to disk: tasks whose data
        must not appear in plain text (GPQA) remove it here. Scoring always sees the unchanged prediction."""
        return value

    def aggregate(self, samples: Sequence[SampleRecord]) -> dict[str, Any]:
        """Aggregate metrics: mean per metric with standard errors clustered by episode,
        overall and per category (sample-weighted)."""
        return aggregate_scores(samples)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "primary_metric": self.primary_metric, "limit": self.limit,
                "episode_ids": self.episode_ids, "generation": self.generation.to_dict()}

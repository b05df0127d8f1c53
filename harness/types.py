"""Typed records shared by tasks, methods, the runner and the reports.

The unit of work is an :class:`Episode`: a context to remember (possibly empty) and the
queries asked about it. A method ingests the context once and answers all queries.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ContextUnit:
    """One retrievable / writable piece of an episode's context.

    ``text`` is the piece as a retriever or summariser should see it (speaker and date
    folded in where the task has them); ``segment`` groups units that belong together
    (a LoCoMo session, a HotpotQA passage) so write-based methods can treat a segment as
    one message.
    """

    id: str
    text: str
    segment: str
    date: str | None = None
    speaker: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Query:
    id: str
    question: str
    gold: Any  # str, list[str] of aliases, or a task-specific structure
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Episode:
    id: str
    units: tuple[ContextUnit, ...]
    queries: tuple[Query, ...]
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def has_context(self) -> bool:
        return bool(self.units)


@dataclass(frozen=True)
class RenderedContext:
    """The context block a task puts into a prompt, with what truncation kept."""

    text: str
    kept_tokens: int
    total_tokens: int
    kept_unit_ids: tuple[str, ...] = ()
    truncated: bool = False


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 50
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise ValueError(f"generation.max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.do_sample and self.temperature <= 0:
            raise ValueError("generation.temperature must be > 0 when do_sample is true")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"generation.top_k must be >= 0, got {self.top_k}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Prediction:
    """What a method returns for one query."""

    text: str
    prompt_tokens: int
    new_tokens: int
    context_tokens: int = 0
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Score:
    """Per-sample scores (metric -> value) and the answer the scorer extracted; ``extracted_by`` holds each
    named rule's extraction where a task scores by several rules (GPQA)."""

    values: dict[str, float]
    extracted: str | None = None
    extracted_by: dict[str, str] | None = None


@dataclass
class SampleRecord:
    """One line of a run's ``samples.jsonl``."""

    sample_id: str
    episode_id: str
    category: str | None
    question: str | None
    gold: Any
    prediction: str
    extracted: str | None
    scores: dict[str, float]
    prompt_tokens: int
    new_tokens: int
    context_tokens: int
    latency_s: float
    method_info: dict[str, Any] = field(default_factory=dict)
    extracted_by: dict[str, str] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["extracted_by"] is None:  # most tasks have one rule; their lines stay as they were
            del out["extracted_by"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SampleRecord":
        return cls(**data)

"""The method side of the protocol.

A method is set up once per run (backbone + task), then for each episode it ingests the
context once and answers the episode's queries in batches. Memory methods do their
writing in ``ingest`` (δ-mem state, BM25 index, summaries) and reuse it for every query.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

from harness.backbone import Backbone
from harness.types import Episode, Prediction, Query
from tasks.base import PROTOCOLS, Task


class Method(ABC):
    #: "context": the episode context is in the prompt; "memory": only the method's
    #: memory carries it (history removed). Reports keep the two apart.
    protocol: str = "context"

    def __init__(self, *, name: str, protocol: str | None = None, batch_size: int = 8, **options: Any):
        if options:
            raise TypeError(f"method {name}: unknown options {sorted(options)}")
        self.name = name
        if protocol is not None:
            self.protocol = protocol
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"method {name}: protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if batch_size <= 0:
            raise ValueError(f"method {name}: batch_size must be > 0, got {batch_size}")
        self.batch_size = batch_size
        self.backbone: Backbone | None = None
        self.task: Task | None = None
        self.seed = 0

    def setup(self, backbone: Backbone | None, task: Task, *, seed: int) -> None:
        self.backbone, self.task, self.seed = backbone, task, seed

    @abstractmethod
    def ingest(self, episode: Episode) -> dict[str, Any]:
        """Take in the episode's context; returns what to record about it."""

    @abstractmethod
    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        """Answer a batch of the episode's queries (after ``ingest``)."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "protocol": self.protocol, "batch_size": self.batch_size}

    def close(self) -> None:
        """Release what ``setup`` acquired (e.g. detach modules from the backbone)."""

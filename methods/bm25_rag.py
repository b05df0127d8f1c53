"""BM25 retrieval-augmented generation over the episode's context.

Write: the task's retrieval units (LoCoMo turns with speaker and session date, HotpotQA
passages, ...) become chunks; a unit longer than ``chunk_tokens`` is split into
sentence-packed chunks (the MemoryAgentBench rule). Read: ``rank_bm25.BM25Okapi``
(k1 1.5, b 0.75) scores every chunk against the question, the top-k go into the task's
question prompt in score order, each labelled ``Memory i:`` as in MemoryAgentBench's RAG
agent. Nothing is trained and no model is downloaded.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from harness.types import Episode, Prediction, Query
from methods.base import Method
from methods.retrieval import TOKENIZERS, BM25Index, pack_sentences, token_counter
from methods.text_memory import answer_with_contexts, budget_for, fit_to_budget, positive_int, unit_memory_text

ORDERS = ("score", "corpus")


@dataclass(frozen=True)
class Chunk:
    id: str
    unit_id: str
    text: str


class BM25RAG(Method):
    protocol = "memory"

    def __init__(self, *, top_k: int | None = None, top_k_defaults: Mapping[str, int] | None = None,
                 k1: float = 1.5, b: float = 0.75, epsilon: float = 0.25, tokenizer: str = "regex",
                 stopwords: bool = True, stem: bool = True, chunk_tokens: int = 512, chunk_counter: str = "backbone",
                 chunk_template: str = "Memory {rank}:\n{text}\n", date_template: str = "[{date}] {text}",
                 order: str = "score", reuse_prefix: bool = True, **kw: Any):
        super().__init__(**kw)
        if top_k is not None:
            positive_int(top_k, f"method {self.name}: top_k")
        self.top_k_defaults = dict(top_k_defaults or {"default": 10})
        for key, value in self.top_k_defaults.items():
            positive_int(value, f"method {self.name}: top_k_defaults.{key}")
        if "default" not in self.top_k_defaults:
            raise ValueError(f"method {self.name}: top_k_defaults needs a 'default' entry")
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"method {self.name}: BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if tokenizer not in TOKENIZERS:
            raise ValueError(f"method {self.name}: tokenizer must be one of {TOKENIZERS}, got {tokenizer!r}")
        if order not in ORDERS:
            raise ValueError(f"method {self.name}: order must be one of {ORDERS}, got {order!r}")
        if "{text}" not in chunk_template:
            raise ValueError(f"method {self.name}: chunk_template needs a {{text}} field")
        self.requested_top_k = top_k
        self.top_k = top_k
        self.bm25_opts = {"k1": k1, "b": b, "epsilon": epsilon, "tokenizer": tokenizer, "stopwords": stopwords,
                          "stem": stem}
        self.chunk_tokens = positive_int(chunk_tokens, f"method {self.name}: chunk_tokens")
        self.chunk_counter = chunk_counter
        self.chunk_template, self.date_template = chunk_template, date_template
        self.order, self.reuse_prefix = order, reuse_prefix
        self._chunks: list[Chunk] = []
        self._index: BM25Index | None = None
        self._count = None

    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if self.requested_top_k is None:
            self.top_k = self.top_k_defaults.get(task.name, self.top_k_defaults["default"])
        self._count = token_counter(self.chunk_counter, backbone)

    # ------------------------------------------------------------------ write
    def chunks_for(self, episode: Episode) -> list[Chunk]:
        chunks: list[Chunk] = []
        for u in self.task.retrieval_units(episode):
            text = unit_memory_text(u, self.date_template)
            if self._count(text) <= self.chunk_tokens:
                chunks.append(Chunk(u.id, u.id, text))
                continue
            parts = pack_sentences(u.text.strip(), self.chunk_tokens, self._count)
            for i, part in enumerate(parts):
                part_text = self.date_template.format(date=u.date, text=part) if u.date else part
                chunks.append(Chunk(f"{u.id}#{i}", u.id, part_text))
        return chunks

    def ingest(self, episode: Episode) -> dict[str, Any]:
        t0 = time.time()
        self._chunks = self.chunks_for(episode)
        self._index = BM25Index([c.text for c in self._chunks], **self.bm25_opts)
        return {"n_chunks": len(self._chunks), "index_s": round(time.time() - t0, 3)}

    # ------------------------------------------------------------------- read
    def retrieve(self, question: str) -> tuple[list[Chunk], dict[str, Any]]:
        ranking = self._index.rank(question, self.top_k)
        picked = [self._chunks[i] for i in ranking.order]
        info = {"retrieved_ids": [c.id for c in picked], "retrieval_scores": [round(s, 4) for s in ranking.scores],
                "retrieval_mode": ranking.mode, "top_k": self.top_k, "n_chunks": len(self._chunks)}
        if self.order == "corpus":
            pos = {c.id: i for i, c in enumerate(self._chunks)}
            picked = sorted(picked, key=lambda c: pos[c.id])
        return picked, info

    def render(self, picked: Sequence[Chunk]) -> str:
        return "".join(self.chunk_template.format(rank=i + 1, text=c.text) for i, c in enumerate(picked))

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        budget = budget_for(self.backbone, self.task, queries)
        contexts: dict[str, str | None] = {}
        infos: dict[str, dict[str, Any]] = {}
        for q in queries:
            picked, info = self.retrieve(q.question)
            blocks = [self.chunk_template.format(rank=i + 1, text=c.text) for i, c in enumerate(picked)]
            n = fit_to_budget(blocks, budget, self.backbone.count_tokens)
            if n < len(picked):
                info["dropped_for_budget"] = [c.id for c in picked[n:]]
                picked = picked[:n]
            info["in_prompt_ids"] = [c.id for c in picked]
            contexts[q.id] = self.render(picked) if picked else None
            infos[q.id] = info
        return answer_with_contexts(self.backbone, self.task, queries, contexts, self.seed, infos=infos,
                                    reuse_prefix=self.reuse_prefix)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "top_k": self.top_k, "top_k_requested": self.requested_top_k,
                "top_k_defaults": self.top_k_defaults, **self.bm25_opts, "chunk_tokens": self.chunk_tokens,
                "chunk_counter": self.chunk_counter, "order": self.order, "reuse_prefix": self.reuse_prefix}

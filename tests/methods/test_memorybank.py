"""MemoryBank: forgetting maths, seeded store, summaries cached by (model, prompt, text),
retrieval of the right memory, and end-to-end answers on a tiny random backbone."""
from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.errors import ConfigError
from methods import memorybank as mb
from methods.memorybank import MemoryBank, MemoryStore, Piece, parse_days, retention
from tests.methods.toy import DATES, ToyTask, dialogue_episode

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "memorybank.yaml"
PROMPTS = OmegaConf.to_container(OmegaConf.load(CONF).prompts)


def make(backbone, tmp_path, **kw):
    opts = {"name": "memorybank", "prompts": PROMPTS, "retriever": "bm25", "cache_dir": str(tmp_path / "cache"),
            "summary_generation": {"max_new_tokens": 6}, "batch_size": 4, **kw}
    m = MemoryBank(**opts)
    m.setup(backbone, ToyTask(generation={"max_new_tokens": 3}), seed=0)
    return m


# ----------------------------------------------------------------- forgetting
def test_retention_formulas():
    assert retention(1, 1, "paper") == pytest.approx(math.exp(-1))
    assert retention(2, 4, "paper") == pytest.approx(math.exp(-0.5))
    assert retention(2, 4, "code_literal") == pytest.approx(math.exp(-2 * 4 / 5))  # exp(-t / 5*S), as written
    assert retention(2, 4, "code_intended") == pytest.approx(math.exp(-2 / 20))
    assert retention(100, 1, "off") == 1.0
    assert retention(0, 1, "paper") == 1.0
    # A stronger memory is retained better, except in the literal code variant.
    assert retention(3, 2, "paper") > retention(3, 1, "paper")
    assert retention(3, 2, "code_literal") < retention(3, 1, "code_literal")
    with pytest.raises(ValueError):
        retention(1, 1, "bogus")


def test_locomo_dates_become_days_and_unparsable_ones_ordinals():
    days, clock = parse_days(DATES)
    assert clock == "dates"
    assert days[0] == 0 and days[1] == pytest.approx(17 - 236 / 1440) and days[2] == pytest.approx(43 + 128 / 1440)
    days, clock = parse_days(["2023-05-08", "not a date"])
    assert clock == "ordinal" and days == [0.0, 1.0]


def store_with(formula, seed, n=200, day=0.0):
    s = MemoryStore(formula, random.Random(seed))
    for i in range(n):
        s.add(Piece(id=str(i), text="x", day=day, date="", segment="a"))
    return s


def test_reload_is_seeded_and_follows_the_curve():
    a, b = store_with("paper", 1), store_with("paper", 1)
    assert a.reload(1.0) == b.reload(1.0)
    kept = len(a.alive()) / 200
    assert abs(kept - math.exp(-1)) < 0.1
    assert store_with("paper", 2).reload(1.0) != store_with("paper", 1).reload(1.0)
    assert store_with("off", 1).reload(50.0) == []
    assert store_with("paper", 1).reload(0.0) == []  # t = 0: nothing forgotten


def test_recall_reinforces_strength_and_resets_the_clock():
    s = store_with("paper", 0, n=2)
    s.recall(["0"], now=5.0)
    p0, p1 = s.pieces
    assert (p0.strength, p0.last_recall) == (2.0, 5.0)
    assert (p1.strength, p1.last_recall) == (1.0, 0.0)
    # Recalled at day 5, reloaded at day 6: R = e^(-1/2) for it, e^(-6) for the other.
    survivors = {"0": 0, "1": 0}
    for seed in range(300):
        t = store_with("paper", seed, n=2)
        t.recall(["0"], now=5.0)
        t.reload(6.0)
        for p in t.alive():
            survivors[p.id] += 1
    assert survivors["0"] / 300 == pytest.approx(math.exp(-0.5), abs=0.08)
    assert survivors["1"] / 300 < 0.02


# ------------------------------------------------------------------ configuration
@pytest.mark.parametrize("kw, match", [({"top_k": 0}, "top_k"), ({"top_k": -3}, "top_k"),
                                       ({"forgetting": "bogus"}, "forgetting"), ({"retriever": "faiss"}, "retriever"),
                                       ({"memory_order": "random"}, "memory_order"), ({"embedding_model": " "}, "empty"),
                                       ({"summary_batch_size": 0}, "summary_batch_size")])
def test_bad_config_is_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        MemoryBank(name="memorybank", prompts=PROMPTS, **kw)


def test_missing_prompts_are_refused():
    with pytest.raises(ValueError, match="missing"):
        MemoryBank(name="memorybank", prompts={k: v for k, v in PROMPTS.items() if k != "piece"})


def test_dense_without_embeddings_is_an_error_and_auto_falls_back(tiny_backbone, tmp_path, monkeypatch):
    def absent(verify=True):
        raise mb.EmbeddingsUnavailable("not installed")

    monkeypatch.setattr(mb, "minilm_path", absent)
    with pytest.raises(ConfigError, match="all-MiniLM-L6-v2"):
        make(tiny_backbone, tmp_path, retriever="dense")
    m = make(tiny_backbone, tmp_path, retriever="auto")
    assert m.retriever_used == "bm25" and "fallback" in m.retriever_note
    # a model the user named is never silently replaced by BM25
    with pytest.raises(ConfigError, match="embedding_model '/nowhere/minilm' cannot be loaded"):
        make(tiny_backbone, tmp_path, retriever="auto", embedding_model="/nowhere/minilm")


# ------------------------------------------------------------------ end to end
def test_summaries_are_written_once_and_then_served_from_the_cache(tiny_backbone, tmp_path):
    ep = dialogue_episode()
    m = make(tiny_backbone, tmp_path)
    info = m.ingest(ep)
    assert info["n_sessions"] == 3 and info["n_pieces"] == 6 and info["n_forgotten"] == 0
    assert info["summaries_generated"] == 2 * 3 + 2 and info["summaries_cached"] == 0
    assert info["n_docs"] == 6 + 3  # pieces + daily summaries
    again = make(tiny_backbone, tmp_path).ingest(ep)
    assert again["summaries_generated"] == 0 and again["summaries_cached"] == 8
    assert again["overall_personality"] == info["overall_personality"]
    # Another model (same name) must not reuse those summaries.
    from tests.conftest import make_backbone

    other = make(make_backbone(seed=1), tmp_path).ingest(ep)
    assert other["summaries_generated"] == 8


def test_the_right_memory_is_retrieved_dated_and_recorded(tiny_backbone, tmp_path):
    ep = dialogue_episode([("What is the name of Caroline's cat?", "Pixel"),
                           ("Which painter does Caroline like?", "Frida Kahlo")])
    m = make(tiny_backbone, tmp_path, top_k=2, summaries=False)
    m.ingest(ep)
    preds = m.answer(ep, ep.queries)
    assert preds[0].info["retrieved_ids"][0] == "D1:1"
    assert preds[1].info["retrieved_ids"][0] == "D3:1"
    for p in preds:
        assert p.info["top_k"] == 2 and p.info["retriever"] == "bm25"
        assert 0 < p.context_tokens < p.prompt_tokens
    block, kept = m.context_block(m.retrieve(ep.queries[0].question)[0], budget=400)
    assert "[1:56 pm on 8 May, 2023] Caroline said, \"I adopted a grey cat called Pixel" in block
    # Recall reinforced what was retrieved.
    strength = {p.id: p.strength for p in m.store.pieces}
    assert strength["D1:1"] >= 2 and strength["D2:2"] == 1


def test_personality_is_in_the_prompt_and_memories_are_chronological(tiny_backbone, tmp_path):
    ep = dialogue_episode()
    m = make(tiny_backbone, tmp_path, top_k=3)
    m.ingest(ep)
    m.overall = {"overall_personality": "Caroline is kind.", "overall_summary": "They chat."}
    picked, _ = m.retrieve("cat painter concert")
    block, kept = m.context_block(picked, budget=400)
    assert block.startswith("About Caroline and Melanie: Caroline is kind.")
    assert "Overview" not in block
    days = [next(d["day"] for d in m.docs if d["id"] == i) for i in kept]
    assert days == sorted(days)
    m.include_overall_summary = True
    assert "Overview of the earlier conversations: They chat." in m.context_block(picked, budget=400)[0]


def test_dense_retrieval_with_minilm_finds_the_semantic_match(tiny_backbone, tmp_path):
    ep = dialogue_episode([("What kind of pet does Caroline have?", "a cat")])
    m = make(tiny_backbone, tmp_path, retriever="dense", summaries=False, top_k=1)
    assert m.retriever_used == "dense"
    m.ingest(ep)
    (p,) = m.answer(ep, ep.queries)
    assert p.info["retrieved_ids"] == ["D1:1"] and p.info["retriever"] == "dense"


def test_forgetting_is_seeded_and_spares_the_last_day(tiny_backbone, tmp_path):
    ep = dialogue_episode()
    runs = []
    for _ in range(2):
        m = make(tiny_backbone, tmp_path, summaries=False, forgetting="paper")
        info = m.ingest(ep)
        runs.append(sorted(m.store.forgotten))
        assert info["n_forgotten"] == len(m.store.forgotten)
        assert {"D3:1", "D3:2"} <= {d["id"] for d in m.docs}  # t = 0 at the last day
    assert runs[0] == runs[1]
    # With sessions weeks apart, e^(-t/S) forgets almost every earlier turn.
    assert len(runs[0]) >= 3
    kept = make(tiny_backbone, tmp_path, summaries=False, forgetting="off")
    assert kept.ingest(ep)["n_forgotten"] == 0


def test_long_units_become_several_pieces_of_the_same_day(tiny_backbone, tmp_path):
    from harness.types import ContextUnit, Episode, Query

    long = " ".join(f"Fact {i}: the river city number {i} has a bridge." for i in range(20))
    units = (ContextUnit(id="c0", text=long, segment="chunk_0"), ContextUnit(id="c1", text="A short text.", segment="chunk_1"))
    ep = Episode("doc", units, (Query("q", "Which city has a bridge?", "x"),))
    m = make(tiny_backbone, tmp_path, summaries=False, piece_tokens=40)
    info = m.ingest(ep)
    parts = [p for p in m.store.pieces if p.segment == "chunk_0"]
    assert len(parts) > 3 and all(p.id.startswith("c0#") for p in parts)
    assert {p.day for p in parts} == {0.0} and info["clock"] == "ordinal"
    assert [p.day for p in m.store.pieces if p.segment == "chunk_1"] == [1.0]

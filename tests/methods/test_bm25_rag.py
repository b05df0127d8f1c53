"""BM25 RAG end to end on a tiny random backbone: the right chunk is retrieved and recorded."""
from __future__ import annotations

import pytest

from methods.bm25_rag import BM25RAG
from tests.methods.toy import ToyTask, dialogue_episode, passages_episode


def make(backbone, task=None, **kw):
    m = BM25RAG(name="bm25_rag", batch_size=4, **kw)
    m.setup(backbone, task or ToyTask(generation={"max_new_tokens": 3}), seed=0)
    return m


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_top_k_is_refused(bad):
    with pytest.raises(ValueError, match="top_k"):
        BM25RAG(name="bm25_rag", top_k=bad)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="default"):
        BM25RAG(name="bm25_rag", top_k_defaults={"hotpotqa": 3})
    with pytest.raises(ValueError, match="chunk_tokens"):
        BM25RAG(name="bm25_rag", chunk_tokens=0)
    with pytest.raises(ValueError, match="order"):
        BM25RAG(name="bm25_rag", order="random")


def test_top_k_defaults_follow_the_task_unless_set(tiny_backbone):
    hotpot = ToyTask(name="hotpotqa")
    assert make(tiny_backbone, hotpot, top_k_defaults={"default": 10, "hotpotqa": 3}).top_k == 3
    assert make(tiny_backbone, ToyTask(), top_k_defaults={"default": 10, "hotpotqa": 3}).top_k == 10
    assert make(tiny_backbone, hotpot, top_k=5, top_k_defaults={"default": 10, "hotpotqa": 3}).top_k == 5


def test_dialogue_turns_are_dated_and_the_right_turn_comes_first(tiny_backbone):
    ep = dialogue_episode([("What is the name of Caroline's cat?", "Pixel"),
                           ("Where did Melanie's sister move?", "Lisbon")])
    m = make(tiny_backbone, top_k=2)
    info = m.ingest(ep)
    assert info["n_chunks"] == 6
    assert m._chunks[0].text.startswith("[1:56 pm on 8 May, 2023] Caroline said")
    preds = m.answer(ep, ep.queries)
    assert [p.info["retrieved_ids"][0] for p in preds] == ["D1:1", "D1:2"]
    for p in preds:
        assert p.info["top_k"] == 2 and len(p.info["in_prompt_ids"]) == 2
        assert p.info["retrieval_mode"] == "bm25"
        assert 0 < p.context_tokens < p.prompt_tokens
        assert p.new_tokens <= 3


def test_prompt_holds_the_chunks_in_score_order(tiny_backbone):
    ep = dialogue_episode([("Which painter does Caroline like best?", "Frida Kahlo")])
    m = make(tiny_backbone, top_k=2)
    m.ingest(ep)
    picked, info = m.retrieve(ep.queries[0].question)
    block = m.render(picked)
    assert block.startswith("Memory 1:\n[4:04 pm on 20 June, 2023] Caroline said, \"My favourite painter is Frida")
    assert "Memory 2:" in block
    m.order = "corpus"
    corpus_order, info2 = m.retrieve(ep.queries[0].question)
    assert info2["retrieved_ids"] == info["retrieved_ids"]  # recorded in score order either way
    assert [c.id for c in corpus_order] == sorted(info["retrieved_ids"], key=lambda i: [c.id for c in m._chunks].index(i))


def test_small_corpus_returns_every_passage(tiny_backbone):
    ep = passages_episode(["Paris has the Pont Neuf bridge.", "Rome has the Colosseum."])
    m = make(tiny_backbone, top_k=3)
    m.ingest(ep)
    (p,) = m.answer(ep, ep.queries)
    assert p.info["retrieved_ids"] == ["p0", "p1"] and p.info["retrieval_mode"] == "all"


def test_long_units_are_split_into_sentence_packed_chunks(tiny_backbone):
    long = " ".join(f"Fact {i}: the river city number {i} has a bridge." for i in range(30))
    ep = passages_episode([long, "A short passage about a town."])
    m = make(tiny_backbone, top_k=2, chunk_tokens=40)
    m.ingest(ep)
    parts = [c for c in m._chunks if c.unit_id == "p0"]
    assert len(parts) > 3 and all(c.id.startswith("p0#") for c in parts)
    assert all(tiny_backbone.count_tokens(c.text) <= 40 for c in parts)
    assert m._chunks[-1].id == "p1"


def test_chunks_beyond_the_window_are_dropped_and_recorded(tiny_backbone):
    passages = [f"Passage {i}: " + "the bridge over the river " * 12 for i in range(8)]
    ep = passages_episode(passages, question="Which bridge is over the river?")
    m = make(tiny_backbone, top_k=8)
    m.ingest(ep)
    (p,) = m.answer(ep, ep.queries)
    assert p.info["dropped_for_budget"]
    assert len(p.info["in_prompt_ids"]) + len(p.info["dropped_for_budget"]) == 8
    assert p.prompt_tokens + 3 <= tiny_backbone.window

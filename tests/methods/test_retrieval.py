"""BM25 index guards, tokenisation and sentence packing (no model involved)."""
from __future__ import annotations

import pytest

from methods.retrieval import BM25Index, bm25_tokens, pack_sentences, split_sentences

DOCS = [
    "Caroline adopted a grey cat called Pixel.",
    "Melanie's sister moved to Lisbon for a bakery job.",
    "The pottery class starts on Tuesday evening.",
    "They hiked the river trail and saw a heron.",
    "The concert tickets cost forty dollars each.",
]


def test_the_right_document_ranks_first():
    idx = BM25Index(DOCS)
    r = idx.rank("Where did Melanie's sister move?", k=2)
    assert r.mode == "bm25"
    assert r.order[0] == 1
    assert r.scores[0] > r.scores[1]


def test_stemming_matches_inflections():
    idx = BM25Index(DOCS)
    assert idx.rank("hiking trails", k=1).order == [3]
    assert BM25Index(DOCS, stem=False).rank("hiking trails", k=1).mode == "no_match"  # "hiking" != "hiked"
    assert bm25_tokens("Hiking TRAILS, the end") == ["hike", "trail", "end"]


def test_default_k1_b_match_rank_bm25():
    idx = BM25Index(DOCS)
    assert (idx._bm25.k1, idx._bm25.b) == (1.5, 0.75)


def test_empty_corpus_returns_nothing():
    r = BM25Index([]).rank("anything", k=3)
    assert r.order == [] and r.mode == "empty"


def test_corpus_of_one_returns_it_whatever_the_idf():
    # rank_bm25 alone: idf = log(0.5/1.5) < 0 and the mean idf is negative too.
    r = BM25Index(["The cat sat on the mat."]).rank("cat", k=3)
    assert r.order == [0] and r.mode == "all"


def test_two_documents_where_idf_collapses_to_zero():
    # A term in exactly half the corpus gets idf 0, so every BM25 score is 0; the guard
    # still puts the document that contains the term first.
    idx = BM25Index(["the dog barked loudly", "a quiet afternoon nap"])
    assert max(idx.scores(idx.query_tokens("dog"))) <= 0
    r = idx.rank("dog", k=1)
    assert r.order == [0] and r.mode == "overlap"
    r = idx.rank("nap", k=1)
    assert r.order == [1] and r.mode == "overlap"


def test_stop_word_only_query_falls_back_to_the_stop_words():
    docs = ["what is that", "a heron on the river", "the cat", "who are they"]
    idx = BM25Index(docs)
    assert bm25_tokens("What is the?") == []
    r = idx.rank("What is the?", k=1)
    assert r.query_tokens == ["what", "is", "the"]
    assert r.order == [0]


def test_query_without_terms_or_matches_is_flagged_and_deterministic():
    idx = BM25Index(DOCS)
    r = idx.rank("?!", k=2)
    assert r.mode == "no_query_terms" and r.order == [0, 1]
    r = idx.rank("zebra xylophone", k=2)
    assert r.mode == "no_match" and r.order == [0, 1]


def test_documents_without_tokens_do_not_crash():
    r = BM25Index(["...", "!!"]).rank("cat", k=1)
    assert r.order == [0]  # nothing to score; corpus order
    assert BM25Index(["...", "!!", "??"]).rank("cat", k=1).mode == "no_match"


def test_ties_keep_corpus_order():
    idx = BM25Index(["red apple", "green pear", "red apple", "blue sky"])
    assert idx.rank("red apple", k=2).order == [0, 2]


def test_bad_k_is_refused():
    with pytest.raises(ValueError, match="top-k"):
        BM25Index(DOCS).rank("cat", k=0)


def test_whitespace_tokenizer_is_mab_rule():
    assert bm25_tokens("The Cat, sat.", tokenizer="whitespace") == ["The", "Cat,", "sat."]
    with pytest.raises(ValueError):
        bm25_tokens("x", tokenizer="nope")


def words(text):
    return len(text.split())


def test_sentence_packing_respects_the_budget_and_keeps_every_word():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(20))
    chunks = pack_sentences(text, 20, words)
    assert all(words(c) <= 20 for c in chunks)
    assert len(chunks) == 10  # two 7-word sentences per chunk (21 > 20)
    assert " ".join(chunks).split() == text.split()


def test_a_sentence_longer_than_the_budget_is_cut_at_words():
    long = " ".join(["word"] * 50) + "."
    chunks = pack_sentences("Short one. " + long, 12, words)
    assert all(words(c) <= 12 for c in chunks)
    assert " ".join(chunks).split() == ("Short one. " + long).split()


def test_sentence_split_uses_punkt_offline():
    assert split_sentences("Dr. Smith went home. He slept.") == ["Dr. Smith went home.", "He slept."]

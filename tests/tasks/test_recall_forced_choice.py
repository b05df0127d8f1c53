"""The forced-choice recall probe: its decoys, its donors, and its one-write-many-reads scoring against
rewriting the state for every candidate."""
from __future__ import annotations

import pytest
import torch

from benchmarks.recall_forced_choice import (SHAPED_KINDS, ConditionScores, decoys, donors, episode,
                                             score_conditions, shape, summarise)
from tasks.recall_oot.generator import generate_set
from tasks.recall_oot.scoring import normalise, occurrences


def test_shape_abstracts_digits_capitals_months_and_ordinals():
    assert shape("March 12th") == shape("July 23rd") == "# 99th" != shape("July 3rd")
    assert shape("KX4471") == shape("AB1234") != shape("AB123")
    assert shape("12 March") != shape("March 12")
    assert shape("48213") == shape("10000") != shape("4821")


def test_decoys_are_distinct_same_shaped_and_never_a_stated_value():
    dialogues = generate_set(0, [100, 250], 8)
    for d in dialogues:
        values = decoys(d, 7)
        assert values == decoys(d, 7)  # deterministic per dialogue
        normed = [normalise(v) for v in values]
        assert len(set(normed)) == 7
        stated = {normalise(a) for f in (d.asked, *d.distractors) for a in f.aliases}
        assert not stated & set(normed), d.id
        if d.asked.kind in SHAPED_KINDS:
            assert {shape(v) for v in values} == {shape(d.asked.value)}, d.id


def test_donors_are_other_dialogues_of_the_same_length_that_never_state_the_value():
    dialogues = generate_set(0, [100, 250], 6)
    for i, j in enumerate(donors(dialogues)):
        assert i != j
        assert dialogues[i].target_tokens == dialogues[j].target_tokens
        assert occurrences(dialogues[j].history_text, dialogues[i].asked.aliases) == 0
    with pytest.raises(ValueError, match="no other dialogue"):
        donors(generate_set(0, [100], 1))


def test_hits_and_ranks_by_hand():
    res = ConditionScores("x", scores=[[-1.0, -2.0, -3.0], [-3.0, -1.0, -2.0], [-2.0, -2.0, -5.0]])
    assert res.hits == [1.0, 0.0, 0.0]  # a tie is not a hit
    assert res.ranks == [1, 3, 1]
    assert res.margins == [1.0, -2.0, 0.0]


def test_one_write_then_every_read_equals_rewriting_per_candidate(tmp_path, tiny_backbone):
    from harness.training.episodes import ChatRenderer, tokenize_episode
    from harness.training.heldout import target_logp
    from methods.deltamem import DeltaMemConfig, attach
    from methods.deltamem.adapter import save_adapter

    bb = tiny_backbone
    torch.manual_seed(0)
    dm = attach(bb.model, DeltaMemConfig.msw(output_init="random"))
    save_adapter(dm, tmp_path)
    dm.detach()
    dialogues = generate_set(0, [100], 2)
    candidates = [[d.asked.value, *decoys(d, 2)] for d in dialogues]
    out = score_conditions(bb, dialogues, candidates, adapters={"m": str(tmp_path)}, context=True,
                           reply="It's {value}.", progress=False)
    assert set(out) == {"nocontext", "context", "m_own", "m_other"}

    renderer = ChatRenderer.for_backbone(bb)
    dm = attach(bb.model, DeltaMemConfig.msw(output_init="random"))
    dm.load_adapter(str(tmp_path))
    try:
        for i, d in enumerate(dialogues):
            for c, fast in zip(candidates[i], out["m_own"].scores[i]):
                tok = tokenize_episode(episode(d, f"It's {c}."), renderer, write_length=4096, read_length=512)
                with torch.no_grad():
                    dm.reset()
                    with dm.writes(True):
                        bb.model(input_ids=torch.tensor([tok.write_ids]), use_cache=False)
                    with dm.writes(False):
                        logp, target = target_logp(bb.model, tok.read_ids, tok.labels, torch.device("cpu"))
                assert fast == pytest.approx(float(logp.gather(-1, target[:, None]).sum()), rel=1e-5, abs=1e-5)
    finally:
        dm.detach()
    # the written history matters: another dialogue's moves the scores, and the bare read differs from both
    assert out["m_own"].scores != out["m_other"].scores
    assert out["m_own"].scores != out["nocontext"].scores
    blob = summarise(out, dialogues, 3)
    assert blob["chance"] == pytest.approx(1 / 3)
    assert set(blob["paired"]) >= {"m_own - m_other", "m_own - nocontext", "context - nocontext"}
    row = blob["paired"]["m_own - m_other"]
    assert row["margin_diff"] == pytest.approx(sum(a - b for a, b in zip(out["m_own"].margins, out["m_other"].margins)) / 2)

"""Held-out evaluation: conditions, paired gains with document-level bootstrap intervals."""
from __future__ import annotations

import pytest
import torch

from harness.training.data import build_training_data
from harness.training.episodes import ChatRenderer, tokenize_episode
from harness.training.heldout import evaluate, select
from harness.training.synthetic import SyntheticMemory
from harness.training.trainer import run_training
from tests.training.test_trainer import tiny, train_cfg


def test_select_is_deterministic_and_proportional():
    data = build_training_data([SyntheticMemory(conversations=20, questions=2, name="a"),
                                SyntheticMemory(conversations=10, questions=2, seed=1, name="b")],
                               heldout_fraction=0.5, split_seed=0)
    picked = select(data.heldout, 6)
    assert [e.id for e in picked] == [e.id for e in select(list(reversed(data.heldout)), 6)]
    assert sum(e.source == "a" for e in picked) == 4 and sum(e.source == "b" for e in picked) == 2


def test_heldout_conditions(tmp_path):
    bb = tiny()
    run_training(train_cfg(tmp_path, "train.max_steps=2"), load=lambda _: bb)
    bb.model._deltamem.detach()
    data = build_training_data([SyntheticMemory(conversations=8, questions=2)], heldout_fraction=0.25, split_seed=42)
    episodes = data.heldout[:3]
    out = evaluate(bb, episodes, adapters={"trained": str(tmp_path), "untrained": None}, write_length=96,
                   read_length=64, generate=True, max_new_tokens=3, progress=False)
    assert set(out["conditions"]) == {"nocontext", "context", "memory:trained", "memory:untrained"}
    assert set(out["vs_nocontext"]) == {"context", "memory:trained", "memory:untrained"}
    for row in out["conditions"].values():
        assert row["ce_ci95"][0] <= row["ce"] <= row["ce_ci95"][1] and 0 <= row["f1"] <= 1
    # nocontext is the bare backbone on system + question + target
    tok = tokenize_episode(episodes[0], ChatRenderer.for_backbone(bb), write_length=96, read_length=64)
    with torch.no_grad():
        bare = float(bb.model(input_ids=torch.tensor([tok.read_ids]), labels=torch.tensor([tok.labels])).loss)
    first = evaluate(bb, episodes[:1], adapters={}, write_length=96, read_length=64, conditions=("nocontext",),
                     progress=False)
    assert first["conditions"]["nocontext"]["ce"] == pytest.approx(bare, rel=1e-5)
    assert not hasattr(bb.model, "_deltamem") or bb.model._deltamem is None  # adapters detached afterwards
    assert out["n_episodes"] == 3 and len(out["examples"]) == 3

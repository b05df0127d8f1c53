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


def test_evidence_hit_is_whole_word_and_normalised():
    from harness.training.heldout import evidence_hit

    assert evidence_hit("Your library card number is 135415.", "135415") == 1.0
    assert evidence_hit("Your library card number is 2345.", "135415") == 0.0
    assert evidence_hit("It used to be Mustard-Yellow!", "mustard yellow") == 1.0
    assert evidence_hit("He is 140 years old", "14") == 0.0  # a substring of a number is not the number
    assert evidence_hit("anything", "") == 0.0


def test_other_history_donors_pair_distinct_documents_deterministically():
    from harness.training.heldout import other_history_donors

    data = build_training_data([SyntheticMemory(conversations=12, questions=2)], heldout_fraction=0.5,
                               split_seed=3)
    eps = data.heldout
    donors = other_history_donors(eps)
    assert all(eps[d].group != e.group for e, d in zip(eps, donors))
    # the same episode gets the same donor whatever the input order
    by_id = {e.id: eps[d].id for e, d in zip(eps, donors)}
    rev = list(reversed(eps))
    assert {e.id: rev[d].id for e, d in zip(rev, other_history_donors(rev))} == by_id
    with pytest.raises(ValueError, match="two documents"):
        other_history_donors([e for e in eps if e.group == eps[0].group])


def test_other_history_control_writes_the_donor_history(tmp_path):
    """The control equals the trained condition run on episodes whose write history was swapped by hand."""
    import dataclasses

    from harness.training.heldout import other_history_donors

    bb = tiny()
    run_training(train_cfg(tmp_path, "train.max_steps=2"), load=lambda _: bb)
    bb.model._deltamem.detach()
    data = build_training_data([SyntheticMemory(conversations=8, questions=2)], heldout_fraction=0.5, split_seed=42)
    episodes = data.heldout[:4]
    out = evaluate(bb, episodes, adapters={"trained": str(tmp_path)}, write_length=96, read_length=64,
                   conditions=("nocontext",), other_history=True, generate=True, max_new_tokens=2, progress=False)
    assert set(out["conditions"]) == {"nocontext", "memory:trained", "memory:trained:other"}
    assert set(out["vs_other_history"]) == {"memory:trained"}
    assert 0 <= out["conditions"]["memory:trained"]["evidence"] <= 1
    donors = other_history_donors(episodes)
    swapped = [dataclasses.replace(e, write=episodes[d].write) for e, d in zip(episodes, donors)]
    by_hand = evaluate(bb, swapped, adapters={"trained": str(tmp_path)}, write_length=96, read_length=64,
                       conditions=(), progress=False)
    assert out["conditions"]["memory:trained:other"]["ce"] == pytest.approx(
        by_hand["conditions"]["memory:trained"]["ce"], rel=1e-6)
    assert out["conditions"]["memory:trained:other"]["ce"] != pytest.approx(
        out["conditions"]["memory:trained"]["ce"], rel=1e-6)


def test_training_eval_tracks_the_other_history_control_like_the_benchmark(tmp_path):
    """The trainer's held-out CE with another document's history equals the benchmark's control condition
    on the same episodes (two separate code paths)."""
    import json

    from harness.training.heldout import select
    from harness.training.trainer import LOG_FILE

    bb = tiny()
    data_args = ["train_data=synthetic", "train_data.sources.synthetic.conversations=12",
                 "train_data.sources.synthetic.questions=1", "train_data.heldout_fraction=0.34"]
    cfg = train_cfg(tmp_path, "train.max_steps=1", "run.eval_episodes=3", data=data_args)
    run_training(cfg, load=lambda _: bb)
    bb.model._deltamem.detach()
    ev = [json.loads(l) for l in (tmp_path / LOG_FILE).read_text().splitlines() if '"eval"' in l][-1]
    assert ev["heldout_ce_other_history"] is not None and ev["heldout_ce_other_history"] != ev["heldout_ce"]
    data = build_training_data([SyntheticMemory(conversations=12, questions=1)], heldout_fraction=0.34,
                               split_seed=int(cfg.train_data.split_seed))
    picked = select(data.heldout, 3, seed=int(cfg.seed))
    out = evaluate(bb, picked, adapters={"t": str(tmp_path)}, write_length=96, read_length=64, conditions=(),
                   other_history=True, progress=False)
    assert out["conditions"]["memory:t"]["ce"] == pytest.approx(ev["heldout_ce"], rel=1e-5)
    assert out["conditions"]["memory:t:other"]["ce"] == pytest.approx(ev["heldout_ce_other_history"], rel=1e-5)


@pytest.mark.slow
def test_training_learns_recall_not_only_answer_form(tmp_path):
    """A copy task (the answer is a word said in the history, one of six) on the tiny model: after training,
    the held-out target CE with the episode's own history is clearly below the CE with another document's
    history. Early on both fall together (answer form is learned first); recall comes after (about 0.05 of
    gap at step 100, 0.3 at step 300 when this was written)."""
    import json
    import random

    from harness.training.trainer import LOG_FILE

    words = ["apple", "river", "stone", "cloud", "tiger", "maple"]
    rng = random.Random(0)
    chats = tmp_path / "chats.jsonl"
    chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": [
        {"role": "user", "content": f"The code is {w}."}, {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "What is the code?"}, {"role": "assistant", "content": w}]}) + "\n"
        for i, w in enumerate(rng.choice(words) for _ in range(400))))
    cfg = train_cfg(tmp_path / "run", "train.max_steps=300", "train.lr=1e-2", "train.grad_accum=4",
                    "run.eval_every=300", "run.eval_episodes=32", variant="msw",
                    data=["train_data=jsonl", f"train_data.sources.jsonl.path={chats}"])
    run_training(cfg, load=lambda _: tiny())
    ev = [json.loads(l) for l in (tmp_path / "run" / LOG_FILE).read_text().splitlines() if '"eval"' in l][-1]
    assert ev["step"] == 300 and ev["heldout_ce"] < 0.5 * ev["heldout_ce_nocontext"]
    assert ev["heldout_ce_other_history"] - ev["heldout_ce"] > 0.15, ev


def test_kl_to_the_bare_backbone_per_memory_condition(tmp_path):
    """--kl: the untrained memory (correction heads near zero) barely moves the backbone, a trained one more;
    both are measured against the bare backbone's distributions, so no condition can go below 0."""
    bb = tiny()
    run_training(train_cfg(tmp_path, "train.max_steps=2", "train.lr=0.01"), load=lambda _: bb)
    bb.model._deltamem.detach()
    data = build_training_data([SyntheticMemory(conversations=8, questions=2)], heldout_fraction=0.25, split_seed=42)
    out = evaluate(bb, data.heldout[:3], adapters={"trained": str(tmp_path), "untrained": None}, write_length=96,
                   read_length=64, conditions=("nocontext",), kl=True, progress=False)
    rows = out["conditions"]
    assert "kl_to_bare" not in rows["nocontext"]
    assert 0 <= rows["memory:untrained"]["kl_to_bare"] < rows["memory:trained"]["kl_to_bare"]


def test_online_conditions_prefill_the_read_with_writes_on(tmp_path):
    """--online: no write pass; the read sequence is prefilled with writes on from an empty state, so the CE is
    the one a hand-run prefill with writes on gives, and differs from the training protocol's."""
    from methods.deltamem import attach
    from methods.deltamem.adapter import read_config

    bb = tiny()
    run_training(train_cfg(tmp_path, "train.max_steps=2", "train.lr=0.01"), load=lambda _: bb)
    bb.model._deltamem.detach()
    data = build_training_data([SyntheticMemory(conversations=8, questions=2)], heldout_fraction=0.25, split_seed=42)
    ep = data.heldout[0]
    kw = dict(adapters={"trained": str(tmp_path)}, write_length=96, read_length=64, conditions=(), progress=False)
    online = evaluate(bb, [ep], online=True, generate=True, max_new_tokens=3, **kw)["conditions"]
    written = evaluate(bb, [ep], **kw)["conditions"]
    assert set(online) == {"memory:trained:online"}
    tok = tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=96, read_length=64)
    dm = attach(bb.model, read_config(str(tmp_path)))
    dm.load_adapter(str(tmp_path))
    with torch.no_grad(), dm.writes(True):
        dm.reset()
        by_hand = float(bb.model(input_ids=torch.tensor([tok.read_ids]), labels=torch.tensor([tok.labels])).loss)
    dm.detach()
    assert online["memory:trained:online"]["ce"] == pytest.approx(by_hand, rel=1e-5)
    assert abs(online["memory:trained:online"]["ce"] - written["memory:trained"]["ce"]) > 1e-4
    with pytest.raises(ValueError, match="no other history"):
        evaluate(bb, [ep], online=True, other_history=True, **kw)

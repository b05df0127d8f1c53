from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.errors import DataError
from tasks.locomo.task import LoCoMoTask

ROOT = Path(__file__).resolve().parents[2]


def make_task(**over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/locomo.yaml"))
    cfg.pop("_target_")
    cfg.update(over)
    return LoCoMoTask(**cfg)


def test_counts_match_the_published_statistics():
    eps = make_task().episodes(seed=42)
    assert len(eps) == 10
    cats = Counter(q.category for e in eps for q in e.queries)
    assert sum(cats.values()) == 1540
    assert cats == {"multi_hop": 282, "temporal": 321, "open_domain": 96, "single_hop": 841}
    all5 = make_task(categories=[1, 2, 3, 4, 5]).episodes(seed=42)
    assert sum(len(e.queries) for e in all5) == 1986
    assert sum(len(e.units) for e in eps) == 5882


def test_prompt_layout_newest_session_first_and_temporal_hint():
    task = make_task(episode_ids=["conv-26"])
    ep = task.episodes(seed=42)[0]
    ctx = task.render_context(ep).text
    assert ctx.startswith("Below is a conversation between two people: Caroline and Melanie.")
    dates = [line[len("DATE: "):] for line in ctx.splitlines() if line.startswith("DATE: ")]
    assert dates[0] == "9:55 am on 22 October, 2023" and dates[-1] == "1:56 pm on 8 May, 2023"
    assert 'Caroline said, "Hey Mel! Good to see you! How have you been?"\n\n' in ctx
    temporal = next(q for q in ep.queries if q.category == "temporal")
    msgs = task.prompt_messages(temporal, ctx)
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"].startswith(ctx + "\n\n")
    assert msgs[1]["content"].endswith(temporal.question + " Use DATE of CONVERSATION to answer with an approximate date.")
    single = next(q for q in ep.queries if q.category == "single_hop")
    assert task.prompt_messages(single, None)[1]["content"].endswith("Question: " + single.question)


def test_caption_is_rendered_after_the_turn():
    task = make_task(episode_ids=["conv-26"])
    ep = task.episodes(seed=42)[0]
    unit = next(u for u in ep.units if u.metadata["caption"])
    assert unit.text.endswith(f"\n and shared {unit.metadata['caption']}.\n")


def test_truncation_keeps_earliest_turns_within_budget():
    task = make_task(episode_ids=["conv-26"])
    ep = task.episodes(seed=42)[0]
    count = lambda s: len(s.split())  # a stand-in tokenizer: one token per word
    full = task.render_context(ep, count_tokens=count, max_tokens=10**9)
    assert not full.truncated
    cut = task.render_context(ep, count_tokens=count, max_tokens=2000)
    assert cut.truncated and cut.kept_tokens <= 2000
    kept = list(cut.kept_unit_ids)
    assert kept == [u.id for u in ep.units[: len(kept)]]  # a chronological head
    latest = make_task(episode_ids=["conv-26"], truncation="keep_latest").render_context(ep, count_tokens=count, max_tokens=2000)
    assert list(latest.kept_unit_ids) == [u.id for u in ep.units[-len(latest.kept_unit_ids):]]


def test_seed_index_follows_category_filtered_position():
    task = make_task(episode_ids=["conv-30"])
    qs = task.episodes(seed=42)[0].queries
    assert [q.metadata["seed_index"] for q in qs] == list(range(len(qs)))
    assert task.query_seed(qs[3], 42) == 45


def test_limit_is_deterministic_and_stratified():
    a = [q.id for e in make_task(limit=40).episodes(seed=42) for q in e.queries]
    b = [q.id for e in make_task(limit=40).episodes(seed=42) for q in e.queries]
    c = [q.id for e in make_task(limit=40).episodes(seed=7) for q in e.queries]
    assert a == b and a != c and len(a) == 40
    cats = Counter(q.category for e in make_task(limit=40).episodes(seed=42) for q in e.queries)
    assert cats == {"single_hop": 22, "temporal": 8, "multi_hop": 7, "open_domain": 3}


def _write(tmp_path, data):
    p = tmp_path / "locomo.json"
    p.write_text(json.dumps(data))
    return p


def test_malformed_data_names_file_and_field(tmp_path):
    with pytest.raises(DataError, match="not found"):
        make_task(data_path=str(tmp_path / "missing.json")).episodes(seed=0)
    bad = _write(tmp_path, [{"sample_id": "x", "conversation": {"speaker_a": "A", "speaker_b": "B"},
                             "qa": [{"question": "q?", "category": 2}]}])
    with pytest.raises(DataError, match=r"x\.qa\[0\]: missing field 'answer'"):
        make_task(data_path=str(bad)).episodes(seed=0)
    turns = _write(tmp_path, [{"sample_id": "y", "conversation": {"speaker_a": "A", "speaker_b": "B",
                                                                  "session_1": [{"speaker": "A", "text": "hi"}],
                                                                  "session_1_date_time": "today"}, "qa": []}])
    with pytest.raises(DataError, match=r"session_1\[0\]: missing field 'dia_id'"):
        make_task(data_path=str(turns)).episodes(seed=0)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        make_task(data_path=str(tmp_path / "broken.json")).episodes(seed=0)


def test_unknown_episode_id_is_refused():
    with pytest.raises(DataError, match="conv-999"):
        make_task(episode_ids=["conv-999"]).episodes(seed=0)

"""HotpotQA: loader, errors, prompt layout, both scorings, stratified limit."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.errors import DataError
from harness.types import SampleRecord
from tasks.base import data_root
from tasks.hotpotqa.task import HotpotQATask

ROOT = Path(__file__).resolve().parents[2]
REAL = data_root() / "hotpotqa" / "hotpotqa_dev_distractor_subset.jsonl"


def record(qid, qtype, answer="yes", n=3):
    return {"id": qid, "question": f"Question {qid}?", "answer": answer, "type": qtype, "level": "hard",
            "supporting_facts": {"title": ["T0"], "sent_id": [0]},
            "context": {"title": [f"T{i}" for i in range(n)],
                        "sentences": [[f"Sentence {i}a.", f" Sentence {i}b."] for i in range(n)]}}


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def make_task(path=None, **over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/hotpotqa.yaml"))
    cfg.pop("_target_")
    cfg.update(over)
    if path is not None:
        cfg["data_path"] = str(path)
    return HotpotQATask(**cfg)


def test_one_episode_per_question_with_passage_units(tmp_path):
    task = make_task(write(tmp_path / "h.jsonl", [record("q1", "bridge"), record("q2", "comparison")]))
    eps = task.episodes(seed=42)
    assert [e.id for e in eps] == ["q1", "q2"]
    assert [len(e.units) for e in eps] == [3, 3]
    assert eps[0].units[1].text == "Passage 2 - T1:\nSentence 1a. Sentence 1b."
    q = eps[1].queries[0]
    assert (q.category, q.gold) == ("comparison", "yes")
    msg = task.prompt_messages(q, task.render_context(eps[1]).text)
    assert len(msg) == 1 and msg[0]["role"] == "user"
    assert msg[0]["content"] == (
        "Answer the question using only the passages below.\nReply with a short span or yes/no only.\n\n"
        "Passage 1 - T0:\nSentence 0a. Sentence 0b.\n\nPassage 2 - T1:\nSentence 1a. Sentence 1b.\n\n"
        "Passage 3 - T2:\nSentence 2a. Sentence 2b.\n\nQuestion: Question q2?\nAnswer:")
    assert "passages" not in task.prompt_messages(q, None)[0]["content"]


def test_render_context_keeps_leading_passages_under_a_budget(tmp_path):
    task = make_task(write(tmp_path / "h.jsonl", [record("q1", "bridge", n=4)]))
    ep = task.episodes(seed=0)[0]
    count = len  # one "token" per character
    one = len(ep.units[0].text)
    rc = task.render_context(ep, count_tokens=count, max_tokens=2 * one + 2 + 5)
    assert rc.truncated and rc.kept_unit_ids == ("q1/p1", "q1/p2")
    assert rc.total_tokens == len(task.render_units(ep.units))


def test_reference_and_official_scoring_hand_computed(tmp_path):
    task = make_task(write(tmp_path / "h.jsonl", [record("q1", "comparison", answer="yes")]))
    q = task.episodes(seed=0)[0].queries[0]
    s = task.score(q, "Yes it is.\nSecond line")
    assert s.extracted == "Yes it is."
    assert s.values == {"em": 0.0, "f1": 0.5,           # tokens [yes, it, is] vs [yes]
                        "em_reference": 0.0, "f1_reference": 0.5, "em_official": 0.0, "f1_official": 0.0}
    official = make_task(tmp_path / "h.jsonl", scoring="official")
    assert official.score(q, "Yes it is.").values == {"em": 0.0, "f1": 0.0,  # yes/no rule
                                                      "em_reference": 0.0, "f1_reference": 0.5,
                                                      "em_official": 0.0, "f1_official": 0.0}
    assert official.score(q, "Yes.").values["f1"] == official.score(q, "Yes.").values["f1_official"] == 1.0
    full = make_task(tmp_path / "h.jsonl", answer_extraction="full")
    assert full.score(q, "yes\nno").extracted == "yes\nno"
    # reference rounds item F1 to 4 decimals: [barack, obama, jr] vs [barack, obama, ii, sr]
    task2 = make_task(write(tmp_path / "h2.jsonl", [record("q9", "bridge", answer="Barack Obama II Sr")]))
    q2 = task2.episodes(seed=0)[0].queries[0]
    assert task2.score(q2, "Barack Obama Jr").values["f1"] == round(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4), 4)


def test_aggregate_by_type(tmp_path):
    task = make_task(write(tmp_path / "h.jsonl", [record("q1", "bridge"), record("q2", "comparison", answer="no")]))
    eps = task.episodes(seed=0)
    recs = []
    for e, pred in zip(eps, ["yes", "yes"]):
        q = e.queries[0]
        s = task.score(q, pred)
        recs.append(SampleRecord(q.id, e.id, q.category, q.question, q.gold, pred, s.extracted, s.values, 0, 0, 0, 0.0))
    agg = task.aggregate(recs)
    assert agg["overall"]["em"]["mean"] == 0.5
    assert agg["by_category"]["bridge"]["em"]["mean"] == 1.0 and agg["by_category"]["comparison"]["em"]["mean"] == 0.0


@pytest.mark.parametrize("rows, message", [
    (["{not json"], "line 1: not valid JSON"),
    ([{"id": "a", "question": "q", "answer": "x", "type": "bridge"}], "line 1: missing field 'context'"),
    ([{**record("a", "bridge"), "answer": 3}], "line 1: field 'answer' must be a string"),
    ([{**record("a", "bridge"), "context": {"title": ["x", "y"], "sentences": [["s"]]}}],
     "line 1: context.title and context.sentences must be lists of equal length"),
    ([record("a", "bridge"), record("a", "bridge")], "duplicate question id 'a'"),
])
def test_loader_errors_name_the_line_and_field(tmp_path, rows, message):
    task = make_task(write(tmp_path / "bad.jsonl", rows))
    with pytest.raises(DataError, match=message):
        task.episodes(seed=0)


def test_missing_file_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="HotpotQA file not found"):
        make_task(tmp_path / "nope.jsonl").episodes(seed=0)
    with pytest.raises(ValueError, match="task.scoring"):
        make_task(scoring="exact")


def test_env_var_points_at_the_file(tmp_path, monkeypatch):
    path = write(tmp_path / "h.jsonl", [record("q1", "bridge")])
    monkeypatch.setenv("HARNESS_HOTPOTQA", str(path))
    assert make_task().path == path


@pytest.mark.skipif(not REAL.exists(), reason="shared HotpotQA subset not present")
def test_real_subset_counts_limit_and_fingerprint():
    task = make_task()
    eps = task.episodes(seed=42)
    assert len(eps) == 1354
    assert Counter(e.queries[0].category for e in eps) == {"bridge": 1076, "comparison": 278}
    assert all(len(e.units) <= 10 for e in eps)
    fp = task.data_fingerprint()
    assert fp["subset"] is True and fp["n_questions"] == 1354 and "partial dev subset" in fp["note"]
    small = make_task(limit=10)
    a, b = small.episodes(seed=42), small.episodes(seed=42)
    assert [e.id for e in a] == [e.id for e in b]
    assert Counter(e.queries[0].category for e in a) == {"bridge": 8, "comparison": 2}
    assert [e.id for e in small.episodes(seed=1)] != [e.id for e in a]

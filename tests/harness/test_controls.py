"""The other-history control: every episode is answered from another episode's context, nothing else moves."""
from __future__ import annotations

import pytest

from harness.controls import apply_control, other_history
from harness.errors import ConfigError
from harness.report import method_label
from harness.runner import run_experiment, semantic_config
from harness.types import ContextUnit, Episode, Query
from methods.bm25_rag import BM25RAG
from tests.harness.test_runner import cfg_for


def _episode(i: int, n_units: int = 2) -> Episode:
    units = tuple(ContextUnit(id=f"e{i}u{j}", text=f"episode {i} turn {j}", segment=f"e{i}") for j in range(n_units))
    queries = (Query(id=f"e{i}q0", question=f"question of {i}", gold=f"gold {i}"),)
    return Episode(id=f"e{i}", units=units, queries=queries, metadata={"speakers": [f"A{i}", f"B{i}"], "source": i})


def test_each_episode_takes_the_next_ones_history_and_keeps_its_questions():
    eps = [_episode(i, n_units=i + 1) for i in range(4)]
    out = other_history(eps, history_keys=("speakers",))
    assert [e.id for e in out] == [e.id for e in eps]
    for i, e in enumerate(out):
        donor = eps[(i + 1) % 4]
        assert e.units == donor.units and e.units != eps[i].units  # no episode keeps its own
        assert e.queries == eps[i].queries
        assert e.metadata == {"speakers": donor.metadata["speakers"], "source": i, "history_from": donor.id}
    assert sorted(e.metadata["history_from"] for e in out) == sorted(e.id for e in eps)  # a permutation


def test_control_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match="at least two episodes"):
        other_history([_episode(0)], task="hotpotqa")
    with pytest.raises(ConfigError, match="1 with a context"):
        other_history([_episode(0), Episode(id="x", units=(), queries=())], task="ifeval")
    with pytest.raises(ConfigError, match="'shuffle' is not known"):
        apply_control("shuffle", [_episode(0), _episode(1)])
    eps = [_episode(0), _episode(1)]
    assert apply_control(None, eps) == eps


def test_runner_answers_from_the_other_conversation_and_pairs_by_question(tmp_path, tiny_backbone, monkeypatch):
    seen: dict[str, tuple[str, list]] = {}
    real_ingest = BM25RAG.ingest

    def spy(self, episode):
        seen[episode.id] = (episode.units[0].text, episode.metadata["speakers"])
        return real_ingest(self, episode)

    monkeypatch.setattr(BM25RAG, "ingest", spy)
    method = ("method=bm25_rag", "method.top_k=2", "task.limit=4")
    normal = run_experiment(cfg_for(tmp_path, *method), load=lambda _: tiny_backbone)
    own = dict(seen)
    seen.clear()
    control = run_experiment(cfg_for(tmp_path, *method, "control=other_history"),
                             load=lambda _: tiny_backbone)
    assert control.path != normal.path
    assert set(seen) == set(own) == {"conv-30", "conv-26"}
    assert seen["conv-30"] == own["conv-26"] and seen["conv-26"] == own["conv-30"]  # text and speakers swapped

    from harness.records import RunRecord
    a, b = RunRecord(normal.path), RunRecord(control.path)
    assert list(a.samples()) == list(b.samples())  # same question ids: harness.compare pairs them
    assert b.header()["control"] == "other_history"
    assert method_label(b.header()) == "bm25_rag (control: other history)"
    assert method_label(a.header()) == "bm25_rag"


def test_no_control_leaves_the_config_hash_of_older_records_alone(tmp_path):
    assert "control" not in semantic_config(cfg_for(tmp_path))
    assert semantic_config(cfg_for(tmp_path, "control=other_history"))["control"] == "other_history"

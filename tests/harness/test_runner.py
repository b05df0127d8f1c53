"""Run records: resume after a crash without recomputing or duplicating samples."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.records import RunRecord
from harness.runner import run_experiment
from harness.types import SampleRecord
from methods.vanilla import Vanilla

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def cfg_for(tmp_path, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("config", overrides=[
            "method=vanilla_nocontext", "method.batch_size=2", "task.episode_ids=[conv-30,conv-26]", "task.limit=6",
            "task.generation.max_new_tokens=4", f"run.results_dir={tmp_path}", "run.progress=false", *extra])


def test_crash_then_resume_loses_nothing_and_duplicates_nothing(tmp_path, tiny_backbone, monkeypatch):
    cfg = cfg_for(tmp_path)
    calls = []
    real_answer = Vanilla.answer

    def crashing(self, episode, queries):
        calls.append([q.id for q in queries])
        if len(calls) == 2:
            raise RuntimeError("simulated crash")
        return real_answer(self, episode, queries)

    monkeypatch.setattr(Vanilla, "answer", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment(cfg, load=lambda _: tiny_backbone)
    records = list(Path(tmp_path).glob("**/header.json"))
    assert len(records) == 1
    rec = RunRecord(records[0].parent)
    assert rec.header()["status"] == "failed"
    first = rec.samples()
    assert list(first) == calls[0]

    monkeypatch.setattr(Vanilla, "answer", real_answer)
    answered = []
    monkeypatch.setattr(Vanilla, "answer", lambda self, e, qs: answered.extend(q.id for q in qs) or real_answer(self, e, qs))
    out = run_experiment(cfg, load=lambda _: tiny_backbone)
    assert out.status == "complete"
    assert not set(answered) & set(first)  # finished samples are not recomputed
    lines = rec.samples_path.read_text().splitlines()
    ids = [json.loads(l)["sample_id"] for l in lines]
    assert len(ids) == len(set(ids)) == 6
    header = rec.header()
    assert header["status"] == "complete" and header["metrics"]["n_samples"] == 6
    assert header["protocol"] == "memory"
    assert len(header["timings"]["sessions"]) == 2
    assert all(s["threads"] == torch.get_num_threads() for s in header["timings"]["sessions"])  # CPU-hours

    again = run_experiment(cfg, load=lambda _: pytest.fail("a complete record must not load the model"))
    assert again.status == "skipped"


def test_torn_last_line_is_repaired(tmp_path):
    rec = RunRecord(tmp_path / "r")
    row = SampleRecord(sample_id="a", episode_id="e", category=None, question="q", gold="g", prediction="p",
                       extracted="p", scores={"f1": 1.0}, prompt_tokens=1, new_tokens=1, context_tokens=0, latency_s=0.1)
    rec.append([row])
    with open(rec.samples_path, "a") as f:
        f.write('{"sample_id": "b", "episode')  # a writer killed mid-line
    assert list(rec.samples()) == ["a"]
    rec.samples(repair=True)
    rec.append([SampleRecord(**{**row.to_dict(), "sample_id": "c"})])
    assert list(rec.samples()) == ["a", "c"]


def test_different_configs_get_different_records(tmp_path, tiny_backbone):
    a = run_experiment(cfg_for(tmp_path, "task.limit=2"), load=lambda _: tiny_backbone)
    b = run_experiment(cfg_for(tmp_path, "task.limit=2", "seed=1"), load=lambda _: tiny_backbone)
    c = run_experiment(cfg_for(tmp_path, "task.limit=2", "run.progress=true"), load=lambda _: tiny_backbone)
    assert a.path != b.path
    assert c.path == a.path and c.status == "skipped"  # display settings are not part of the hash


def test_greedy_runs_are_bit_reproducible(tmp_path, tiny_backbone):
    a = run_experiment(cfg_for(tmp_path / "x", "task.generation.do_sample=false"), load=lambda _: tiny_backbone)
    b = run_experiment(cfg_for(tmp_path / "y", "task.generation.do_sample=false"), load=lambda _: tiny_backbone)
    strip = lambda p: [{k: v for k, v in json.loads(l).items() if k != "latency_s"}
                       for l in (p / "samples.jsonl").read_text().splitlines()]
    assert strip(a.path) == strip(b.path)


def test_a_setting_added_at_its_old_behaviour_keeps_older_records_hashes():
    """``method.write_generated`` came after records were made: at true (what they did) the hash is the one of a
    config without the key, so they still resume and skip; false is another record."""
    from omegaconf import open_dict

    from harness.records import config_hash
    from harness.runner import semantic_config

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        new = compose("config", overrides=["method=deltamem_msw", "task=ifeval"])
        off = compose("config", overrides=["method=deltamem_msw", "task=ifeval", "method.write_generated=false"])
    old = new.copy()
    with open_dict(old):
        del old.method["write_generated"]
    assert new.method.write_generated is True
    assert config_hash(semantic_config(new)) == config_hash(semantic_config(old))
    assert config_hash(semantic_config(off)) != config_hash(semantic_config(old))

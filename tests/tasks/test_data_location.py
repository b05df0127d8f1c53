"""Where each task finds its data, in a checkout with no ``../shared`` beside it."""
from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import DataError
from tasks import data_location
from tasks.data_location import locate


@pytest.fixture
def bare_clone(tmp_path, monkeypatch):
    """A checkout at tmp/clone with nothing beside it, offline, no data variables set."""
    monkeypatch.setattr(data_location, "PROJECT", tmp_path / "clone")
    for var in ("HARNESS_DATA", "HARNESS_IFEVAL", "HARNESS_GPQA", "HARNESS_HOTPOTQA", "HARNESS_MAB"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_the_lookup_order(bare_clone, monkeypatch):
    packaged = bare_clone / "packaged.jsonl"
    packaged.write_text("x")
    shared = bare_clone / "shared" / "data" / "ifeval" / "input_data.jsonl"
    rel = Path("ifeval") / "input_data.jsonl"
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=packaged) == str(packaged)
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=None) == str(shared)  # missing: the not-found message says so
    shared.parent.mkdir(parents=True)
    shared.write_text("y")
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=packaged) == str(packaged)  # the project's own copy first
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=None) == str(shared)
    monkeypatch.setenv("HARNESS_DATA", str(bare_clone / "mine"))
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=packaged) == str(bare_clone / "mine" / rel)
    monkeypatch.setenv("HARNESS_IFEVAL", "/data/ifeval.jsonl")
    assert locate(None, "HARNESS_IFEVAL", rel, packaged=packaged) == "/data/ifeval.jsonl"
    assert locate("given.jsonl", "HARNESS_IFEVAL", rel, packaged=packaged) == "given.jsonl"


def test_online_the_official_dataset_is_the_last_resort(bare_clone, monkeypatch):
    rel = Path("hotpotqa") / "dev.jsonl"
    assert locate(None, "HARNESS_HOTPOTQA", rel, hub="hf://hotpotqa/hotpot_qa") == str(bare_clone / "shared/data" / rel)
    monkeypatch.setattr(data_location, "hub_reachable", lambda timeout=3.0: True)
    assert locate(None, "HARNESS_HOTPOTQA", rel, hub="hf://hotpotqa/hotpot_qa") == "hf://hotpotqa/hotpot_qa"


def test_a_bare_clone_runs_the_shipped_tasks_and_says_what_to_set_for_the_others(bare_clone):
    from omegaconf import OmegaConf

    from harness.runner import build

    conf = Path(__file__).resolve().parents[2] / "conf" / "task"
    ifeval = build(OmegaConf.load(conf / "ifeval.yaml"), "task")
    assert len(ifeval.episodes(0)[0].queries) == 541 and "tasks/ifeval/data" in str(ifeval.path)
    gpqa = build(OmegaConf.load(conf / "gpqa_diamond.yaml"), "task")
    assert len(gpqa.episodes(42)[0].queries) == 198 and "tasks/gpqa_diamond/data" in str(gpqa.path)
    locomo = build(OmegaConf.load(conf / "locomo.yaml"), "task")
    assert len(locomo.episodes(42)) == 10
    hotpot = build(OmegaConf.load(conf / "hotpotqa.yaml"), "task")
    with pytest.raises(DataError, match=r"set task.data_path=PATH or \$HARNESS_HOTPOTQA.*hf://"):
        hotpot.episodes(0)

"""IFEval: our scores equal lm-eval's own process_results; hand-computed aggregates; loader errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import DataError
from harness.types import SampleRecord
from tasks.base import data_root
from tasks.ifeval.task import IFEvalTask, checkers, seeded_random

REAL = data_root() / "ifeval" / "input_data.jsonl"


def write(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def records(task, responses):
    qs = task.episodes(seed=0)[0].queries
    out = []
    for q, r in zip(qs, responses):
        s = task.score(q, r)
        out.append(SampleRecord(q.id, "ifeval", None, q.question, q.gold, r, None, s.values, 0, 0, 0, 0.0))
    return out


FIXED = [
    "hello world, this is a short lowercase answer without any title.",
    "<<My Title>>\n\nFirst paragraph about the topic.\n\n***\n\nSecond paragraph. P.S. thanks",
    "Sure Thing\n" + " ".join(["word"] * 420) + "\nTHE END",
]


@pytest.mark.skipif(not REAL.exists(), reason="shared IFEval file not present")
def test_scores_equal_lm_eval_process_results_on_fixed_responses():
    utils, _ = checkers()
    task = IFEvalTask(data_path=str(REAL))
    docs = [json.loads(l) for l in REAL.read_text().splitlines() if l.strip()]
    qs = task.episodes(seed=0)[0].queries
    assert len(qs) == 541 and sum(len(q.gold["instruction_id_list"]) for q in qs) == 834
    for k, response in enumerate(FIXED):
        recs, ref_inst = [], {"inst_level_strict_acc": [], "inst_level_loose_acc": []}
        for doc, q in zip(docs, qs):
            with seeded_random(doc["prompt"]):  # lm-eval leaves a few checkers' random draws unseeded
                ref = utils.process_results(doc, [response])
            ours = task.score(q, response).values
            for m in ("prompt_level_strict_acc", "prompt_level_loose_acc"):
                assert ours[m] == float(ref[m]), (doc["key"], m, k)
            for m in ref_inst:
                assert ours[m] == pytest.approx(sum(ref[m]) / len(ref[m]))
                ref_inst[m].append(ref[m])
            recs.append(SampleRecord(q.id, "ifeval", None, q.question, q.gold, response, None, ours, 0, 0, 0, 0.0))
        agg = task.aggregate(recs)["overall"]
        for m, lists in ref_inst.items():
            assert agg[m]["mean"] == pytest.approx(utils.agg_inst_level_acc(lists))
            assert agg[m]["n"] == 834


def test_hand_computed_prompt_and_instruction_levels(tmp_path):
    path = write(tmp_path / "i.jsonl", [
        {"key": 1, "prompt": "Write a poem.", "instruction_id_list": ["punctuation:no_comma", "change_case:english_lowercase"],
         "kwargs": [{}, {}]},
        {"key": 2, "prompt": "Write a title.", "instruction_id_list": ["detectable_format:title"], "kwargs": [{}]},
        {"key": 3, "prompt": "Reply in lowercase.", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{"capital_frequency": None}]},
    ])
    task = IFEvalTask(data_path=str(path))
    recs = records(task, ["hello world", "no title here", "Sure Thing\nhello there"])
    assert recs[0].scores == {"prompt_level_strict_acc": 1.0, "inst_level_strict_acc": 1.0,
                              "prompt_level_loose_acc": 1.0, "inst_level_loose_acc": 1.0}
    assert recs[2].scores["prompt_level_strict_acc"] == 0.0 and recs[2].scores["prompt_level_loose_acc"] == 1.0
    agg = task.aggregate(recs)
    o = agg["overall"]
    assert o["prompt_level_strict_acc"]["mean"] == pytest.approx(1 / 3)   # prompts 1 only
    assert o["prompt_level_loose_acc"]["mean"] == pytest.approx(2 / 3)    # prompts 1, 3
    assert o["inst_level_strict_acc"]["mean"] == pytest.approx(2 / 4)     # 2 of 4 instructions (micro)
    assert o["inst_level_loose_acc"]["mean"] == pytest.approx(3 / 4)
    assert agg["n_instructions"] == 4
    lower = agg["by_category"]["change_case:english_lowercase"]
    assert lower["inst_level_strict_acc"]["mean"] == 0.5 and lower["inst_level_strict_acc"]["n"] == 2
    assert lower["inst_level_loose_acc"]["mean"] == 1.0
    assert agg["by_category"]["detectable_format:title"]["inst_level_loose_acc"]["mean"] == 0.0
    assert agg["by_group"]["change_case"]["inst_level_strict_acc"]["n"] == 2
    assert task.prompt_messages(task.episodes(seed=0)[0].queries[0], None) == [{"role": "user", "content": "Write a poem."}]


def test_limit_is_deterministic(tmp_path):
    rows = [{"key": k, "prompt": f"P{k}", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]} for k in range(20)]
    path = write(tmp_path / "i.jsonl", rows)
    a = [q.id for q in IFEvalTask(data_path=str(path), limit=5).episodes(seed=42)[0].queries]
    b = [q.id for q in IFEvalTask(data_path=str(path), limit=5).episodes(seed=42)[0].queries]
    assert a == b and len(a) == 5


@pytest.mark.parametrize("rows, message", [
    (["{oops"], "line 1: not valid JSON"),
    ([{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"]}], "line 1: missing field 'kwargs'"),
    ([{"key": 1, "prompt": "p", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []}],
     "line 1 \\(key 1\\): field 'kwargs' must be a list of objects, one per instruction"),
    ([{"key": 1, "prompt": "p", "instruction_id_list": ["made:up"], "kwargs": [{}]}],
     "key 1: instruction ids \\['made:up'\\] are not in lm-eval's registry"),
])
def test_loader_errors(tmp_path, rows, message):
    with pytest.raises(DataError, match=message):
        IFEvalTask(data_path=str(write(tmp_path / "bad.jsonl", rows))).episodes(seed=0)
    with pytest.raises(DataError, match="IFEval input_data.jsonl not found"):
        IFEvalTask(data_path=str(tmp_path / "missing.jsonl")).episodes(seed=0)

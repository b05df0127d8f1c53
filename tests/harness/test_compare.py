"""Paired comparison of two records: shared samples only, hand-computed differences, clear errors."""
from __future__ import annotations

import pytest

from harness.compare import CompareError, main, paired_comparison
from harness.records import RunRecord
from harness.types import SampleRecord


def record(root, name, task, scores, metric="f1"):
    rec = RunRecord(root / name)
    rec.write_header({"status": "complete", "task": task, "method": name, "protocol": "context",
                      "primary_metric": metric})
    rec.append([SampleRecord(sid, ep, cat, None, "g", "p", None, {metric: v}, 1, 1, 0, 0.0)
                for sid, (ep, cat, v) in scores.items()])
    return rec.path


def test_paired_difference_on_shared_samples(tmp_path):
    a = record(tmp_path, "a", "locomo", {"q1": ("e1", "x", 1.0), "q2": ("e1", "y", 0.5), "q3": ("e2", "x", 0.0),
                                         "q9": ("e2", "x", 1.0)})
    b = record(tmp_path, "b", "locomo", {"q1": ("e1", "x", 0.5), "q2": ("e1", "y", 0.5), "q3": ("e2", "x", 0.25)})
    r = paired_comparison(a, b)
    assert r["n"] == 3 and r["episodes"] == 2  # q9 is only in A
    assert r["a"]["mean"] == pytest.approx(0.5) and r["b"]["mean"] == pytest.approx(0.4166667)
    assert r["diff"]["mean"] == pytest.approx((0.5 + 0.0 - 0.25) / 3)
    assert (r["diff"]["a_better"], r["diff"]["b_better"], r["diff"]["ties"]) == (1, 1, 1)
    x = r["by_category"]["x"]  # q1 (e1, +0.5) and q3 (e2, -0.25)
    assert (x["n"], x["episodes"], x["a"], x["b"]) == (2, 2, 0.5, 0.375) and x["diff"] == pytest.approx(0.125)
    # its own interval resamples its two episodes: e1 alone (+0.5), e2 alone (-0.25) or both (+0.125)
    assert x["ci95"] == [pytest.approx(-0.25), pytest.approx(0.5)]
    assert r["by_category"]["y"]["ci95"] == [0.0, 0.0]  # one tied question
    lo, hi = r["diff"]["ci95"]
    # two episodes: the bootstrap means are those of e1 only (+0.25), e2 only (-0.25) or both (+0.0833)
    assert lo == pytest.approx(-0.25) and hi == pytest.approx(0.25)


def test_errors_name_the_problem(tmp_path, capsys):
    a = record(tmp_path, "a", "locomo", {"q1": ("e1", "x", 1.0)})
    b = record(tmp_path, "b", "hotpotqa", {"q1": ("e1", "x", 1.0)})
    c = record(tmp_path, "c", "locomo", {"q7": ("e1", "x", 1.0)})
    with pytest.raises(CompareError, match="different tasks"):
        paired_comparison(a, b)
    with pytest.raises(CompareError, match="share no sample ids"):
        paired_comparison(a, c)
    with pytest.raises(CompareError, match="metric 'em' is missing"):
        paired_comparison(a, a, metric="em")
    assert main([str(a), str(tmp_path / "nowhere")]) == 2
    assert "no header.json" in capsys.readouterr().err

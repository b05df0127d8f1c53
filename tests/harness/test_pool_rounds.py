"""Pooling paired benchmark rounds across runs (benchmarks/pool_rounds.py)."""
from __future__ import annotations

import json

import pytest

from benchmarks.pool_rounds import main, paired_ratios


def cells(bare: list[float], dm: list[float]) -> list[dict]:
    return [{"part": "decode", "variant": "bare", "times_s": bare},
            {"part": "decode", "variant": "deltamem_tsw", "times_s": dm}]


def test_rounds_pair_within_a_run_and_pool_across_runs(tmp_path):
    assert paired_ratios(cells([1.0, 2.0], [2.0, 2.5]), "decode", "deltamem_tsw") == [0.5, 0.8]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(cells([1.0, 2.0], [2.0, 2.5])))  # ratios 0.5, 0.8
    b.write_text(json.dumps(cells([3.0, 1.0], [3.0, 1.0])))  # ratios 1.0, 1.0
    out = tmp_path / "pooled.json"
    assert main([str(a), str(b), "--json", str(out)]) == 0
    pooled = json.loads(out.read_text())["decode/deltamem_tsw"]
    assert pooled["rounds"] == 4
    assert pooled["median"] == pytest.approx(0.9)  # median of 0.5, 0.8, 1.0, 1.0
    assert pooled["share_at_least_0.95"] == 0.5


def test_unequal_rounds_and_unreadable_files_are_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="bare has 2 rounds"):
        paired_ratios(cells([1.0, 2.0], [1.0]), "decode", "deltamem_tsw")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main([str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err

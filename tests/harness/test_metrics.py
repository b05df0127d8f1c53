import math

import pytest

from harness.metrics import aggregate_scores, bootstrap_ci, clustered_stderr
from harness.types import SampleRecord


def rec(i, ep, cat, f1):
    return SampleRecord(sample_id=str(i), episode_id=ep, category=cat, question=None, gold=None, prediction="",
                        extracted=None, scores={"f1": f1}, prompt_tokens=0, new_tokens=0, context_tokens=0, latency_s=0)


def test_clustered_stderr_by_hand():
    # values 1,0 | 1,1 | 0,0 ; mean 0.5; cluster residual sums 0, 1, -1; G=3
    # se = sqrt(3/2 * (0 + 1 + 1)) / 6 = sqrt(3) / 6
    vals, cl = [1, 0, 1, 1, 0, 0], ["a", "a", "b", "b", "c", "c"]
    assert clustered_stderr(vals, cl) == pytest.approx(math.sqrt(3) / 6)


def test_single_cluster_falls_back_to_iid():
    assert clustered_stderr([1, 0, 1, 0], ["a"] * 4) == pytest.approx(math.sqrt((4 * 0.25 / 3) / 4))


def test_aggregate_is_sample_weighted_with_categories():
    rows = [rec(0, "e1", "x", 1.0), rec(1, "e1", "y", 0.0), rec(2, "e2", "y", 0.5), rec(3, "e2", "y", 0.5)]
    agg = aggregate_scores(rows)
    assert agg["overall"]["f1"]["mean"] == 0.5
    assert agg["by_category"]["y"]["f1"]["mean"] == pytest.approx(1 / 3)
    assert agg["by_category"]["x"]["f1"]["n"] == 1
    assert agg["n_episodes"] == 2


def test_bootstrap_interval_contains_the_mean():
    vals = [((i // 6) % 4) / 3 + (i % 2) * 0.1 for i in range(60)]  # cluster means differ
    cl = [str(i // 6) for i in range(60)]
    lo, hi = bootstrap_ci(vals, cl, iters=500)
    assert lo <= sum(vals) / 60 <= hi and lo < hi


def test_single_cluster_bootstrap_resamples_the_samples():
    # one episode of independent 0/1 answers (IFEval, GPQA): resampling the lone cluster would give [mean, mean]
    vals = [1.0] * 30 + [0.0] * 70
    lo, hi = bootstrap_ci(vals, ["ifeval"] * 100, iters=2000)
    se = math.sqrt(0.3 * 0.7 / 100)  # 0.0458; the percentile interval is about mean ± 1.96 se
    assert lo < 0.3 < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.2)

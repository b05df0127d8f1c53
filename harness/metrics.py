"""Aggregation of per-sample scores: means with episode-clustered standard errors.

Questions about one LoCoMo conversation (or one MemoryAgentBench context) are not
independent, so the standard error clusters by episode (the CR1 sandwich estimator of a
mean): se = sqrt(G/(G-1) * sum_g (sum_{i in g} (x_i - mean))^2) / n.
"""
from __future__ import annotations

import math
import random
from collections import defaultdict
from typing import Any, Iterable, Sequence

from harness.types import SampleRecord


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def clustered_stderr(values: Sequence[float], clusters: Sequence[str]) -> float:
    n = len(values)
    if n < 2:
        return float("nan")
    m = mean(values)
    sums: dict[str, float] = defaultdict(float)
    for x, c in zip(values, clusters):
        sums[c] += x - m
    g = len(sums)
    if g < 2:
        # One cluster: fall back to the i.i.d. standard error rather than report nothing.
        var = sum((x - m) ** 2 for x in values) / (n - 1)
        return math.sqrt(var / n)
    return math.sqrt(g / (g - 1) * sum(s * s for s in sums.values())) / n


def bootstrap_ci(values: Sequence[float], clusters: Sequence[str], *, iters: int = 2000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile interval of the mean, resampling whole clusters.

    With a single cluster (IFEval and GPQA are one episode of independent questions) resampling it
    would return the point estimate as the interval, so the samples are resampled instead, as
    :func:`clustered_stderr` falls back to the i.i.d. error."""
    groups: dict[str, list[float]] = defaultdict(list)
    for x, c in zip(values, clusters):
        groups[c].append(x)
    if len(groups) < 2:
        groups = {str(i): [x] for i, x in enumerate(values)}
    keys = sorted(groups)
    rng = random.Random(seed)
    stats = []
    for _ in range(iters):
        picked = [groups[keys[rng.randrange(len(keys))]] for _ in keys]
        flat = [x for g in picked for x in g]
        stats.append(mean(flat))
    stats.sort()
    lo = stats[int(alpha / 2 * iters)]
    hi = stats[min(iters - 1, int((1 - alpha / 2) * iters))]
    return lo, hi


def summarise(values: Sequence[float], clusters: Sequence[str]) -> dict[str, float]:
    return {"mean": mean(values), "stderr": clustered_stderr(values, clusters), "n": len(values)}


def aggregate_scores(samples: Iterable[SampleRecord], *, group_key: str = "category") -> dict[str, Any]:
    """``{"overall": {metric: {mean, stderr, n}}, "by_category": {cat: {...}}}``.

    Overall scores are sample-weighted (every question counts once), as the reference
    suite reports them; category scores use the same definition within a category.
    """
    samples = list(samples)
    metrics = sorted({m for s in samples for m in s.scores})

    def block(rows: list[SampleRecord]) -> dict[str, dict[str, float]]:
        out = {}
        for m in metrics:
            pairs = [(r.scores[m], r.episode_id) for r in rows if m in r.scores and r.scores[m] is not None]
            if pairs:
                out[m] = summarise([p[0] for p in pairs], [p[1] for p in pairs])
        return out

    by_cat: dict[str, list[SampleRecord]] = defaultdict(list)
    for s in samples:
        key = getattr(s, group_key)
        if key is not None:
            by_cat[str(key)].append(s)
    return {
        "overall": block(samples),
        "by_category": {c: block(rows) for c, rows in sorted(by_cat.items())},
        "n_samples": len(samples),
        "n_episodes": len({s.episode_id for s in samples}),
    }

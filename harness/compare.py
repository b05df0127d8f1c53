"""``python -m harness.compare RECORD_A RECORD_B``: paired comparison of two run records.

Two methods answered the same questions, so the question-level difference is the quantity to test:
it removes the variance shared by both (hard questions are hard for both). Only the samples both
records hold are compared, so a finished record can be compared with a subset run (``task.limit``)
on exactly that subset. The interval resamples whole episodes (a LoCoMo conversation's questions
are not independent), as the report's standard errors do.

    python -m harness.compare results/locomo/deltamem_msw/smollm2_135m/seed-42-* \
        results/locomo/vanilla_nocontext/smollm2_135m/seed-42-* [--metric f1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from harness.metrics import bootstrap_ci, clustered_stderr, mean
from harness.records import RunRecord
from harness.report import method_label


class CompareError(ValueError):
    pass


def _load(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    rec = RunRecord(path)
    header = rec.header()
    if header is None:
        raise CompareError(f"{path}: no header.json (not a run record folder)")
    return header, rec.samples()


def paired_comparison(path_a: str | Path, path_b: str | Path, metric: str | None = None,
                      iters: int = 2000) -> dict[str, Any]:
    ha, sa = _load(path_a)
    hb, sb = _load(path_b)
    if ha.get("task") != hb.get("task"):
        raise CompareError(f"the records are of different tasks: {ha.get('task')!r} vs {hb.get('task')!r}")
    metric = metric or ha.get("primary_metric") or hb.get("primary_metric")
    shared = sorted(set(sa) & set(sb))
    if not shared:
        raise CompareError(f"{path_a} and {path_b} share no sample ids")
    missing = [i for i in shared if metric not in sa[i].scores or metric not in sb[i].scores]
    if missing:
        raise CompareError(f"metric {metric!r} is missing from {len(missing)} shared samples (first: {missing[0]}); "
                           f"available: {sorted(sa[shared[0]].scores)}")
    a = [float(sa[i].scores[metric]) for i in shared]
    b = [float(sb[i].scores[metric]) for i in shared]
    d = [x - y for x, y in zip(a, b)]
    episodes = [sa[i].episode_id for i in shared]
    by_cat: dict[str, list[int]] = defaultdict(list)
    for k, i in enumerate(shared):
        by_cat[str(sa[i].category)].append(k)
    return {
        "task": ha.get("task"), "metric": metric, "n": len(shared), "episodes": len(set(episodes)),
        "a": {"method": method_label(ha), "protocol": ha.get("protocol"), "record": str(path_a),
              "status": ha.get("status"), "n_samples": len(sa), "mean": mean(a)},
        "b": {"method": method_label(hb), "protocol": hb.get("protocol"), "record": str(path_b),
              "status": hb.get("status"), "n_samples": len(sb), "mean": mean(b)},
        "diff": {"mean": mean(d), "stderr": clustered_stderr(d, episodes),
                 "ci95": list(bootstrap_ci(d, episodes, iters=iters)),
                 "a_better": sum(x > 0 for x in d), "b_better": sum(x < 0 for x in d), "ties": sum(x == 0 for x in d)},
        "by_category": {c: _category_diff(a, b, d, episodes, ks, iters) for c, ks in sorted(by_cat.items())},
    }


def _category_diff(a: list[float], b: list[float], d: list[float], episodes: list[str], ks: list[int],
                   iters: int) -> dict[str, Any]:
    # The same episode-resampling interval as the overall one, restricted to the category's questions: a
    # category can differ in sign from the pooled difference (MAB's competencies), so each needs its own.
    dk, ek = [d[k] for k in ks], [episodes[k] for k in ks]
    return {"n": len(ks), "episodes": len(set(ek)), "a": mean([a[k] for k in ks]), "b": mean([b[k] for k in ks]),
            "diff": mean(dk), "ci95": list(bootstrap_ci(dk, ek, iters=iters))}


def format_comparison(r: dict[str, Any]) -> str:
    a, b, d = r["a"], r["b"], r["diff"]
    lines = [f"{r['task']}, {r['metric']} ×100 on the {r['n']} samples both records hold ({r['episodes']} episodes)",
             f"  A {a['method']} ({a['protocol']}, {a['status']}, {a['n_samples']} samples): {100 * a['mean']:.2f}",
             f"  B {b['method']} ({b['protocol']}, {b['status']}, {b['n_samples']} samples): {100 * b['mean']:.2f}",
             f"  A − B: {100 * d['mean']:+.2f} ± {100 * d['stderr']:.2f} "
             f"(SE {'clustered by episode' if r['episodes'] > 1 else 'over samples'}), "
             f"95% {'episode' if r['episodes'] > 1 else 'sample'}-bootstrap interval "
             f"[{100 * d['ci95'][0]:+.2f}, {100 * d['ci95'][1]:+.2f}]; "
             f"A better on {d['a_better']}, B on {d['b_better']}, tied on {d['ties']}",
             "  by category (n, A, B, A − B [95% interval]):"]
    for c, v in r["by_category"].items():
        lo, hi = v["ci95"]
        lines.append(f"    {c:<24} {v['n']:>5}  {100 * v['a']:6.2f}  {100 * v['b']:6.2f}  {100 * v['diff']:+6.2f} "
                     f"[{100 * lo:+.2f}, {100 * hi:+.2f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Paired comparison of two run records on their shared samples.")
    ap.add_argument("record_a")
    ap.add_argument("record_b")
    ap.add_argument("--metric", default=None, help="a per-sample score name (default: the task's primary metric)")
    ap.add_argument("--iters", type=int, default=2000, help="bootstrap resamples")
    ap.add_argument("--json", default=None, help="also write the comparison here")
    args = ap.parse_args(argv)
    try:
        result = paired_comparison(args.record_a, args.record_b, args.metric, args.iters)
    except CompareError as exc:
        print(f"[compare] error: {exc}", file=sys.stderr)
        return 2
    print(format_comparison(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Pool the paired rounds of several ``benchmarks.deltamem_speed --json`` runs into one speed ratio per cell.

This VM drifts by several percent between rounds even with every other job paused, so one 10-round run
moves its median by ±1 point. Each round's ratio is still a fair comparison (its variants ran interleaved),
so rounds from several runs of the same code can be pooled:

    python -m benchmarks.pool_rounds reports/benchmarks/run1.json reports/benchmarks/run2.json --parts decode
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def paired_ratios(cells: list[dict], part: str, variant: str, reference: str = "bare") -> list[float]:
    """Per-round speed ratios ``reference time / variant time`` of one part of one run."""
    by_variant = {c["variant"]: c["times_s"] for c in cells if c["part"] == part}
    if variant not in by_variant or reference not in by_variant:
        return []
    ref, var = by_variant[reference], by_variant[variant]
    if len(ref) != len(var):
        raise ValueError(f"{part}: {reference} has {len(ref)} rounds, {variant} {len(var)}")
    return [r / v for r, v in zip(ref, var)]


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="JSON files written by benchmarks.deltamem_speed --json")
    ap.add_argument("--parts", default=None, help="comma-separated parts to pool (default: every timed part)")
    ap.add_argument("--json", default=None, help="write the pooled figures here")
    args = ap.parse_args(argv)
    runs = {}
    for path in args.runs:
        try:
            runs[path] = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
    pooled = {}
    parts = sorted({c["part"] for cells in runs.values() for c in cells if "times_s" in c and c["part"] != "overhead"})
    if args.parts:
        parts = [p for p in parts if p in args.parts.split(",")]
    variants = sorted({c["variant"] for cells in runs.values() for c in cells if c["variant"] != "bare"})
    for part in parts:
        for variant in variants:
            ratios, used = [], []
            for path, cells in runs.items():
                r = paired_ratios(cells, part, variant)
                if r:
                    ratios += r
                    used.append(path)
            if len(ratios) < 2:
                continue
            q1, med, q3 = quartiles(ratios)
            pooled[f"{part}/{variant}"] = {"rounds": len(ratios), "runs": used, "median": med, "q1": q1, "q3": q3,
                                           "share_at_least_0.95": sum(x >= 0.95 for x in ratios) / len(ratios)}
            print(f"{part:8s} {variant:14s} rounds {len(ratios):3d}  speed vs bare: median {med:.3f}× "
                  f"(IQR {q1:.3f}–{q3:.3f}), rounds ≥ 0.95×: {pooled[f'{part}/{variant}']['share_at_least_0.95']:.0%}")
    if args.json:
        Path(args.json).write_text(json.dumps(pooled, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m harness.export --format parquet|csv|sqlite``: the records as one table for other tools.

    python -m harness.export --format parquet                       # every record under results/ -> records.parquet
    python -m harness.export --format sqlite --task locomo --out locomo.sqlite   # table "samples"
    python -m harness.export --format csv results/locomo/vanilla/smollm2_135m/seed-42-*

The table is :func:`harness.frame.load_frame`'s: a row per sample with the run's identity and scores.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from harness.frame import load_frame

FORMATS = ("parquet", "csv", "sqlite")
SQLITE_TABLE = "samples"


def write_table(df, fmt: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(out, index=False)
    elif fmt == "csv":
        df.to_csv(out, index=False)
    elif fmt == "sqlite":
        with sqlite3.connect(out) as con:  # the table is replaced, so a re-export never mixes two snapshots
            df.to_sql(SQLITE_TABLE, con, if_exists="replace", index=False)
    else:
        raise ValueError(f"unknown format {fmt!r}; one of {FORMATS}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write the run records as one table (a row per sample).")
    ap.add_argument("records", nargs="*", help="record folders (default: every record under --results)")
    ap.add_argument("--format", choices=FORMATS, default="parquet")
    ap.add_argument("--results", default="results", help="results folder (default: results)")
    ap.add_argument("--task", default=None, help="only this task's records")
    ap.add_argument("--out", default=None, help="output file (default: records.<format>)")
    args = ap.parse_args(argv)
    df = load_frame(args.results, task=args.task, records=args.records or None)
    if df.empty:
        print(f"[export] no readable records under {args.records or args.results}", file=sys.stderr)
        return 1
    out = Path(args.out or f"records.{args.format}")
    write_table(df, args.format, out)
    print(f"[export] {len(df)} samples of {df.record.nunique()} records -> {out} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

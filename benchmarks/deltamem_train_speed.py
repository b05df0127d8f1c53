"""Seconds per training episode and peak memory of ``python -m harness.train``, per variant and write length.

    python -m benchmarks.deltamem_train_speed [--variants tsw,ssw,msw] [--write-lengths 1024,2048]
        [--steps 4] [--threads 1] [--train-data squality] [--backbone smollm2_135m] [--json out.json]

Each cell is a separate ``python -m harness.train`` process (so its peak RSS is its own) running ``--steps``
optimizer steps of one episode each (grad_accum=1) with the real trainer; the first step (JIT loading,
allocator warm-up) is dropped and the median of the rest is reported. SQuALITY stories are longer than
8k tokens, so every episode writes exactly the requested write length. The load from other processes is
read from /proc/stat: a figure taken with more than ~0.3 foreign cores is inflated by the sharing.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.deltamem_speed import _cpu_snapshot, _foreign


def run_cell(variant: str, write_length: int, *, steps: int, threads: int, train_data: str, backbone: str,
             read_length: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="dm-train-speed-") as out:
        cmd = [sys.executable, "-m", "harness.train", f"method=deltamem_{variant}", f"backbone={backbone}",
               f"train_data={train_data}", f"train.write_length={write_length}", f"train.read_length={read_length}",
               "train.grad_accum=1", f"train.max_steps={steps}", "run.progress=false", "run.save_every=100000",
               "run.eval_every=null",
               f"run.threads={threads}", f"out_dir={out}", f"hydra.run.dir={out}/hydra"]
        s0 = _cpu_snapshot()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        foreign = _foreign(s0, _cpu_snapshot())
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        rows = [json.loads(line) for line in Path(out, "train_log.jsonl").read_text().splitlines()]
    timed = rows[1:] or rows
    secs = [r["seconds"] for r in timed]
    return {"variant": variant, "write_length": write_length, "read_length": read_length, "threads": threads,
            "episodes_timed": len(timed), "s_per_episode": round(statistics.median(secs), 3),
            "s_per_episode_min": round(min(secs), 3),
            "cpu_s_per_episode": round(statistics.median(r["cpu_seconds"] for r in timed), 3),
            "write_tokens": round(statistics.mean(r["write_tokens"] for r in timed)),
            "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in timed), 1),
            "peak_rss_mb": max(r["peak_mem_mb"] for r in rows), "foreign_cores": round(foreign, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="tsw")
    ap.add_argument("--write-lengths", default="1024,2048")
    ap.add_argument("--read-length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-data", default="squality")
    ap.add_argument("--backbone", default="smollm2_135m")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    cells = []
    for variant in args.variants.split(","):
        for length in (int(x) for x in args.write_lengths.split(",")):
            cell = run_cell(variant, length, steps=args.steps, threads=args.threads, train_data=args.train_data,
                            backbone=args.backbone, read_length=args.read_length)
            cells.append(cell)
            print(f"{variant} write {cell['write_tokens']:>5} tok: {cell['s_per_episode']:7.2f} s/episode "
                  f"(min {cell['s_per_episode_min']:.2f}; CPU {cell['cpu_s_per_episode']:.2f} s; {cell['tokens_per_s']:.0f} tok/s), peak RSS "
                  f"{cell['peak_rss_mb']:.0f} MB, {cell['threads']} thread(s), foreign load {cell['foreign_cores']} cores",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(cells, indent=2) + "\n")


if __name__ == "__main__":
    main()

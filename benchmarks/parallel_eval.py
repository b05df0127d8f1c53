"""One evaluation run as 1 process × 2 threads against 2 processes × 1 thread (torchrun), side by side.

    python -m benchmarks.parallel_eval [--limit 40] [--rounds 2] [--out reports/benchmarks/parallel_eval.json]

The same LoCoMo question-only run (embedded SmolLM2-135M, sampled answers) into fresh folders, the two layouts
alternating round by round; wall time of the whole command (model loading included, as a user sees it) and the
ratio. The load of other processes on the machine during each run is printed: it moves both alike only roughly.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def run(layout: str, limit: int, folder: Path) -> float:
    args = ["-m", "harness", "method=vanilla_nocontext", "task=locomo", f"task.limit={limit}", "run.progress=false",
            f"run.results_dir={folder / 'r'}", f"hydra.run.dir={folder / 'h'}"]
    if layout == "1x2":
        cmd = [sys.executable, *args, "run.threads=2"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}", *args,
               "run.threads=1"]
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    times: dict[str, list[float]] = {"1x2": [], "2x1": []}
    loads: list[float] = []
    for r in range(args.rounds):
        for layout in (("1x2", "2x1") if r % 2 == 0 else ("2x1", "1x2")):
            with tempfile.TemporaryDirectory() as tmp:
                loads.append(_loadavg())
                times[layout].append(run(layout, args.limit, Path(tmp)))
            print(f"round {r + 1} {layout}: {times[layout][-1]:.1f} s (load average before {loads[-1]:.2f})",
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"questions": args.limit, "rounds": args.rounds, "seconds_median": {k: round(v, 1) for k, v in med.items()},
           "speedup_2x1_over_1x2": round(med["1x2"] / med["2x1"], 2), "load_average_before_runs": loads}
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

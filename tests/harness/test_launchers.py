"""Sweeps through Hydra's submitit launcher (local executor here; Slurm on a cluster) make the records the basic
launcher makes."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def sweep(tmp_path, name: str, *launcher: str):
    cmd = [sys.executable, "-m", "harness", "-m", *launcher, "method=vanilla_nocontext,vanilla", "task=hotpotqa",
           "task.limit=2", "task.generation.max_new_tokens=3", f"run.results_dir={tmp_path / name}",
           "run.progress=false", "run.threads=1", f"hydra.sweep.dir={tmp_path / ('hydra_' + name)}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-3000:]
    out = {}
    for h in sorted((tmp_path / name).glob("**/header.json")):
        rel = h.parent.relative_to(tmp_path / name)
        samples = [{k: v for k, v in json.loads(l).items() if k != "latency_s"}
                   for l in (h.parent / "samples.jsonl").read_text().splitlines()]
        out[str(rel)] = (json.loads(h.read_text())["status"], samples)
    return out


@pytest.mark.real_model
def test_submitit_local_makes_the_basic_launchers_records(tmp_path):
    basic = sweep(tmp_path, "basic")
    local = sweep(tmp_path, "submitit", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=20")
    assert len(basic) == 2 and basic == local
    assert all(status == "complete" for status, _ in local.values())

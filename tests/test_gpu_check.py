"""The GPU check runs end to end (on CPU, with a 2-layer model), so it is known to work before a GPU is at hand."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_cpu_with_a_tiny_model(tmp_path):
    run = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--tiny", "--rounds", "1", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={"PATH": "/usr/bin:/bin",
                                                                                      "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["scan"]["fp32_max_abs_diff"] < 1e-5
    tiny = result["models"]["tiny"]
    for part in ("prefill", "decode"):
        for cell in tiny[part].values():
            assert set(cell["speed_vs_bare"]) == {"bare", "deltamem_tsw", "deltamem_msw"}
            assert all(v > 0 for v in cell["tokens_per_s"].values())
    assert set(tiny["train_step"]["time_vs_lora"]) == {"tsw", "msw", "lora_r8"}

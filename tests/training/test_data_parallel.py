"""Data-parallel training: two processes (gloo, via torchrun) make the same optimizer step as one process on the
same global batch, and resume."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from hydra import compose, initialize_config_dir
from harness.training.trainer import run_training
from tests.conftest import make_backbone
with initialize_config_dir(config_dir={conf!r}, version_base="1.3"):
    cfg = compose("train", overrides={overrides!r})
print("STATUS", run_training(cfg, load=lambda _: make_backbone())["status"])
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(tmp_path, out, processes: int, grad_accum: int, *extra: str):
    overrides = ["method=context2lora", "method.adapter=null", "train_data=onefact",
                 "train_data.sources.synthetic.conversations=24", "train.write_length=96", "train.read_length=64",
                 f"train.grad_accum={grad_accum}", "train.max_steps=2", "train.lr=0.01", "run.progress=false",
                 "run.eval_every=null", f"out_dir={out}", *extra]
    script = tmp_path / f"train_{processes}.py"
    script.write_text(SCRIPT.format(root=str(ROOT), conf=str(ROOT / "conf"), overrides=overrides))
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", "--nnodes=1",
           f"--master_port={_port()}", str(script)]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def weights(out):
    return load_file(str(Path(out) / "adapter_model.safetensors"))


def test_two_processes_make_the_single_process_steps_and_resume(tmp_path):
    train(tmp_path, tmp_path / "one", 1, 4)
    two = train(tmp_path, tmp_path / "two", 2, 2)
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6
    assert "× 2 processes" in two.stderr
    # paused after one step and resumed, still two processes: the same weights
    train(tmp_path, tmp_path / "three", 2, 2, "run.stop_after_steps=1")
    train(tmp_path, tmp_path / "three", 2, 2, "resume=true")
    c = weights(tmp_path / "three")
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-6

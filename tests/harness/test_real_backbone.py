"""Smoke tests on the real embedded SmolLM2-135M-Instruct (cached by scripts/setup.sh)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.real_model


def test_smollm2_loads_with_chat_template(smollm2_backbone):
    b = smollm2_backbone
    assert b.window == 8192 and b.has_chat_template
    ids = b.chat_ids([{"role": "user", "content": "Hi"}])
    assert b.decode(ids).startswith("system")  # SmolLM2 inserts its default system prompt
    assert b.stop_ids == {2}


def _harness(*args, results):
    return [sys.executable, "-m", "harness", *args, f"run.results_dir={results}", "run.progress=false"]


def test_three_locomo_questions_end_to_end(tmp_path):
    # A 2k window keeps the smoke test quick; the full runs use the model's 8k.
    out = subprocess.run(_harness("method=vanilla", "task=locomo", "task.episode_ids=[conv-30]", "task.limit=3",
                                  "backbone.max_context=2048", results=tmp_path),
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    header = json.loads(next(tmp_path.glob("**/header.json")).read_text())
    assert header["status"] == "complete" and header["metrics"]["n_samples"] == 3
    rows = [json.loads(l) for l in next(tmp_path.glob("**/samples.jsonl")).read_text().splitlines()]
    assert all(r["prediction"] for r in rows)
    assert all(1500 < r["context_tokens"] <= 2048 and r["prompt_tokens"] <= 2048 - 50 for r in rows)
    assert header["backbone_info"]["embedded"] == "smollm2-135m-instruct"


def test_sigkill_then_resume(tmp_path):
    args = _harness("method=vanilla_nocontext", "task.episode_ids=[conv-30]", "task.limit=6", "method.batch_size=1",
                    results=tmp_path)
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    samples = None
    while time.time() < deadline:
        found = list(tmp_path.glob("**/samples.jsonl"))
        if found and len(found[0].read_text().splitlines()) >= 2:
            samples = found[0]
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert samples is not None, "the run wrote no samples in time"
    before = [json.loads(l) for l in samples.read_text().splitlines() if l.endswith("}")]
    assert json.loads((samples.parent / "header.json").read_text())["status"] == "running"
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    after = [json.loads(l) for l in samples.read_text().splitlines()]
    ids = [r["sample_id"] for r in after]
    assert len(ids) == len(set(ids)) == 6
    assert after[: len(before)] == before  # finished samples kept as they were


SHIPPED = sorted(p.parent.name for p in (ROOT / "adapters" / "smollm2_135m").glob("*/deltamem_model.safetensors"))


@pytest.mark.parametrize("method", SHIPPED)
def test_shipped_adapter_loads_on_the_embedded_backbone(smollm2_backbone, method):
    from safetensors.torch import load_file

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from methods.deltamem.method import DeltaMemMethod

    m = DeltaMemMethod(name=method, adapter="shipped", num_state_heads=4 if method.endswith("msw") else 1)
    task = instantiate(OmegaConf.load(ROOT / "conf" / "task" / "locomo.yaml"), _convert_="all")
    m.setup(smollm2_backbone, task, seed=0)  # the backbone signature check passes
    saved = load_file(str(ROOT / "adapters" / "smollm2_135m" / method / "deltamem_model.safetensors"))
    try:
        params = dict(m.dm.named_parameters())
        assert set(params) == set(saved)
        assert all(torch.equal(params[k].detach(), saved[k]) for k in saved)
    finally:
        m.close()

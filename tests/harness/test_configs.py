"""Every combination of config groups composes and instantiates; names equal file stems."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
GROUPS = ("backbone", "method", "task")


def choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("group", GROUPS)
def test_name_is_the_file_stem(group):
    from omegaconf import OmegaConf

    for stem in choices(group):
        assert OmegaConf.load(CONF / group / f"{stem}.yaml").name == stem


def test_every_combination_composes():
    combos = list(itertools.product(*(choices(g) for g in GROUPS)))
    assert combos
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for b, m, t in combos:
            cfg = compose("config", overrides=[f"backbone={b}", f"method={m}", f"task={t}"])
            assert (cfg.backbone.name, cfg.method.name, cfg.task.name) == (b, m, t)


def test_every_method_and_task_instantiates():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config")
        for m in choices("method"):
            c = compose("config", overrides=[f"method={m}"])
            assert instantiate(c.method, _convert_="all").name == m
        for t in choices("task"):
            c = compose("config", overrides=[f"task={t}"])
            assert instantiate(c.task, _convert_="all").name == t
    assert cfg.seed == 42


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_unknown_method_lists_the_choices():
    out = _cli("method=nope")
    assert out.returncode != 0
    assert "Could not find 'method/nope'" in out.stderr
    for m in choices("method"):
        assert m in out.stderr


def test_bad_value_is_one_line_and_nonzero(tmp_path):
    out = _cli("task.categories=[9]", f"run.results_dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: task=locomo: task.categories must be")
    assert not list(tmp_path.glob("**/header.json"))


def test_an_invisible_cuda_device_fails_with_one_line_before_anything_runs(tmp_path):
    import os

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no CUDA device, even on a machine that has one
    args = ["backbone.device=cuda:0", "task=locomo", "task.limit=1", f"run.results_dir={tmp_path}"]
    out = subprocess.run([sys.executable, "-m", "harness", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        "error: backbone.device=cuda:0: no CUDA device is visible to torch here; "
        "backbone.device=cpu or backbone.device=auto works"]
    assert not list(tmp_path.iterdir())  # no record of a run that never started

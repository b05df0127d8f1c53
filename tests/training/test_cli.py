"""``python -m harness.train``: config integrity, one-line errors, and a real-backbone smoke run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness.training.sources import QasperHF
from harness.training.trainer import build_sources

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared" / "data"
DATA_CHOICES = sorted(p.stem for p in (CONF / "train_data").glob("*.yaml"))
DELTAMEM = sorted(p.stem for p in (CONF / "method").glob("deltamem_*.yaml"))


def _train(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.train", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_train_data_names_are_file_stems():
    assert {"synthetic", "qasper", "qasper_leval", "squality", "jsonl", "mix", "onefact_self_replies"} <= set(DATA_CHOICES)
    for stem in DATA_CHOICES:
        assert OmegaConf.load(CONF / "train_data" / f"{stem}.yaml").name == stem


@pytest.mark.parametrize("method", DELTAMEM or ["deltamem_tsw"])
def test_every_deltamem_method_and_train_data_composes(method):
    from harness.training.trainer import deltamem_config_from_method

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for data in DATA_CHOICES:
            cfg = compose("train", overrides=[f"method={method}", f"train_data={data}"])
            assert cfg.train_data.name == data and cfg.method.name == method
            variant = deltamem_config_from_method(OmegaConf.to_container(cfg.method, resolve=True)).variant
            assert variant == method.rsplit("_", 1)[-1]


def test_offline_sources_instantiate():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        qasper = build_sources(compose("train", overrides=["train_data=qasper"]).train_data)
        assert isinstance(qasper[0], QasperHF) and qasper[0].hub_id == "allenai/qasper"
        if (SHARED / "squality").is_dir():
            mix = build_sources(compose("train", overrides=["train_data=mix"]).train_data)
            assert [s.name for s in mix] == ["synthetic", "squality", "qasper_leval"]
            off = build_sources(compose("train", overrides=["train_data=mix", "train_data.sources.squality=null"])
                                .train_data)
            assert [s.name for s in off] == ["synthetic", "qasper_leval"]


def test_repeat_weights_a_source_in_training_only(tmp_path):
    from harness.errors import ConfigError
    from harness.training.data import build_training_data

    chats = tmp_path / "chats.jsonl"
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    chats.write_text("".join(json.dumps({"id": f"c{i}", "messages": turns * 2}) + "\n" for i in range(20)))

    def data(repeat):
        spec = {"_target_": "harness.training.sources.ChatJsonl", "path": str(chats), "repeat": repeat}
        return build_training_data(build_sources({"sources": {"chats": spec}}), heldout_fraction=0.2, split_seed=0)

    once, thrice = data(1), data(3)
    assert len(thrice.train) == 3 * len(once.train) == 48
    assert [e.id for e in thrice.heldout] == [e.id for e in once.heldout]
    assert thrice.sources[0]["repeat"] == 3 and "repeat" not in once.sources[0]
    for bad in (0, 1.5, "2"):
        with pytest.raises(ConfigError, match="sources.chats.repeat must be an integer >= 1"):
            data(bad)


def test_cli_bad_training_file_is_one_line_and_nonzero(tmp_path):
    bad = tmp_path / "chats.jsonl"
    bad.write_text('{"messages": []}\n{"messages": "not a list"}\n')
    out = _train("method=deltamem_tsw", "train_data=jsonl", f"train_data.sources.jsonl.path={bad}",
                 f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == f"error: {bad}: line 2: field 'messages' must be list, got str"


def test_cli_refuses_benchmark_data_and_untrainable_methods(tmp_path):
    out = _train("method=deltamem_tsw", "train_data=jsonl", "train_data.sources.jsonl.path=tasks/locomo/data/locomo10.json",
                 f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert out.returncode == 2 and "must never be used for training" in out.stderr
    out = _train("method=vanilla", f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}")
    assert out.returncode == 2 and "method=vanilla: Vanilla has nothing to train" in out.stderr


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("method", ["deltamem_tsw", "deltamem_ssw"])
def test_cli_trains_the_embedded_backbone_and_resumes(tmp_path, smollm2_backbone, method):
    """The issue's command, ``python -m harness.train method=deltamem_tsw train_data=synthetic``, shrunk to two
    steps, paused after one and resumed (SSW too: its trainer takes a shortcut of its own)."""
    args = [f"method={method}", "train_data=synthetic", "train_data.sources.synthetic.conversations=4",
            "train.write_length=128", "train.read_length=64", "train.grad_accum=1", "train.max_steps=2",
            "run.progress=false", "run.threads=1", f"out_dir={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'h'}"]
    first = _train(*args, "run.stop_after_steps=1", timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "paused at step 1/2" in first.stdout
    second = _train(*args, "resume=true", timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads((tmp_path / "out" / "training.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 2 and summary["variant"] == method[-3:]
    assert summary["backbone"] == "smollm2_135m"
    config = json.loads((tmp_path / "out" / "deltamem_config.json").read_text())
    assert config["extra"]["backbone"]["num_hidden_layers"] == 30
    from methods.deltamem import DeltaMem
    from methods.deltamem.signature import check_backbone_signature

    check_backbone_signature(config["extra"]["backbone"], smollm2_backbone.model)
    dm = DeltaMem.from_adapter(smollm2_backbone.model, str(tmp_path / "out"))
    dm.detach()

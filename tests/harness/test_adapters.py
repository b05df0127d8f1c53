"""``method.adapter``: the shipped default is resolved per backbone and the weights are part of a run's identity."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import harness.adapters as adapters
from harness.errors import ConfigError

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def compose_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(name, overrides=list(overrides))


def fake_adapter(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "deltamem_model.safetensors").write_bytes(payload)
    (folder / "train_log.jsonl").write_text("{}\n")  # not a weight file: must not enter the hash
    return folder


def test_shipped_adapter_missing_for_backbone_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters, "SHIPPED_DIR", tmp_path)
    fake_adapter(tmp_path / "smollm2_135m" / "deltamem_msw", b"x")
    cfg = compose_cfg("config", "method=deltamem_msw", "method.adapter=shipped", "backbone.name=qwen3_4b")
    with pytest.raises(ConfigError, match=r"deltamem_msw on backbone qwen3_4b.*shipped: smollm2_135m/deltamem_msw"):
        adapters.resolve_adapter(cfg)


def test_shipped_adapter_resolves_and_weights_set_the_identity(tmp_path, monkeypatch):
    monkeypatch.setattr(adapters, "SHIPPED_DIR", tmp_path)
    folder = fake_adapter(tmp_path / "smollm2_135m" / "deltamem_msw", b"weights-1")
    cfg = compose_cfg("config", "method=deltamem_msw", "method.adapter=shipped")
    first = adapters.resolve_adapter(cfg)
    assert Path(cfg.method.adapter) == folder.resolve()
    (folder / "train_log.jsonl").write_text("changed\n")
    assert adapters.resolve_adapter(compose_cfg("config", "method=deltamem_msw", "method.adapter=shipped")) == first
    (folder / "deltamem_model.safetensors").write_bytes(b"weights-2")  # retrained: a new identity
    second = adapters.resolve_adapter(compose_cfg("config", "method=deltamem_msw", "method.adapter=shipped"))
    assert second["adapter_sha256"] != first["adapter_sha256"] and second["adapter"] == first["adapter"]


def test_adapter_null_and_bad_paths(tmp_path):
    assert adapters.resolve_adapter(compose_cfg("config", "method=deltamem_msw", "method.adapter=null")) is None
    assert adapters.resolve_adapter(compose_cfg("config", "method=vanilla")) is None  # methods without adapters
    with pytest.raises(ConfigError, match="not a directory"):
        adapters.resolve_adapter(compose_cfg("config", "method=deltamem_msw", f"method.adapter={tmp_path}/nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no weight file"):
        adapters.resolve_adapter(compose_cfg("config", "method=deltamem_msw", f"method.adapter={tmp_path}/empty"))


def test_training_never_starts_from_the_shipped_default():
    cfg = compose_cfg("train", "method=deltamem_msw")
    assert cfg.method.adapter is None

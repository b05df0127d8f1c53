"""δ-mem adapters on disk: this project's format and the official release format.

Own format (a directory):
  ``deltamem_config.json``       DeltaMemConfig with ``format_version``
  ``deltamem_model.safetensors`` every δ-mem parameter, keyed ``<attention path>.<name>``

Official format (declare-lab/delta-Mem, deltamem.md §8), read only:
  ``delta_mem_config.json``      the reference's HFDeltaMemConfig
  ``delta_mem_adapter.pt``       ``torch.save`` of a flat dict with the same key scheme

Both key schemes are ``<attention module path>.<parameter>`` (e.g.
``model.layers.0.self_attn.memory_q_proj``), so one loader serves both.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from methods.deltamem.config import DeltaMemConfig, from_reference_dict

if TYPE_CHECKING:
    from methods.deltamem.surgery import DeltaMem

CONFIG_NAME = "deltamem_config.json"
WEIGHTS_NAME = "deltamem_model.safetensors"
REF_CONFIG_NAME = "delta_mem_config.json"
REF_WEIGHTS_NAME = "delta_mem_adapter.pt"


class AdapterMismatch(ValueError):
    """The adapter does not fit the attached model."""


def save_adapter(dm: "DeltaMem", path: str | Path) -> Path:
    from safetensors.torch import save_file

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    dm.config.save(out / CONFIG_NAME)
    tensors = {name: p.detach().to("cpu").contiguous() for name, p in dm.named_parameters()}
    save_file(tensors, str(out / WEIGHTS_NAME), metadata={"format": "deltamem", "variant": dm.config.variant})
    return out


def adapter_format(path: str | Path) -> str:
    p = Path(path)
    if (p / CONFIG_NAME).is_file() and (p / WEIGHTS_NAME).is_file():
        return "deltamem"
    if (p / REF_CONFIG_NAME).is_file() and (p / REF_WEIGHTS_NAME).is_file():
        return "reference"
    raise FileNotFoundError(f"{p}: neither a δ-mem adapter ({CONFIG_NAME} + {WEIGHTS_NAME}) nor an official "
                            f"one ({REF_CONFIG_NAME} + {REF_WEIGHTS_NAME})")


def read_config(path: str | Path) -> DeltaMemConfig:
    p = Path(path)
    if adapter_format(p) == "deltamem":
        return DeltaMemConfig.load(p / CONFIG_NAME)
    return from_reference_dict(json.loads((p / REF_CONFIG_NAME).read_text()))


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    if adapter_format(p) == "deltamem":
        from safetensors.torch import load_file

        return load_file(str(p / WEIGHTS_NAME))
    data = torch.load(p / REF_WEIGHTS_NAME, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise AdapterMismatch(f"{p / REF_WEIGHTS_NAME}: expected a flat dict of tensors")
    return data


def _align(file_keys: set[str], model_keys: set[str]) -> dict[str, str]:
    """file key → model key. Exact names first; else one consistent prefix difference (e.g. an adapter
    saved from ``Qwen3ForCausalLM`` loaded into a bare ``Qwen3Model``: ``model.layers.…`` vs ``layers.…``)."""
    if file_keys & model_keys or not file_keys:
        return {k: k for k in file_keys}
    fk, mk = min(file_keys, key=len), None
    for cand in model_keys:
        if fk.endswith(cand) or cand.endswith(fk):
            mk = cand
            break
    if mk is None:
        return {k: k for k in file_keys}
    if fk.endswith(mk):
        strip = fk[: len(fk) - len(mk)]
        return {k: k[len(strip):] if k.startswith(strip) else k for k in file_keys}
    add = mk[: len(mk) - len(fk)]
    return {k: add + k for k in file_keys}


def load_adapter_weights(dm: "DeltaMem", path: str | Path, *, strict: bool = True) -> list[str]:
    """Copy an adapter's tensors into ``dm``; refuses an adapter trained on another backbone (its recorded
    signature) and missing, unexpected or mis-shaped parameters."""
    from methods.deltamem.signature import check_backbone_signature

    if adapter_format(path) == "deltamem":
        check_backbone_signature(read_config(path).extra.get("backbone"), dm.model, what=f"adapter {path}")
    weights = read_weights(path)
    params = dict(dm.named_parameters())
    mapping = _align(set(weights), set(params))
    mapped = {mapping[k]: v for k, v in weights.items()}
    unexpected = sorted(set(mapped) - set(params))
    missing = sorted(set(params) - set(mapped))
    if strict and (unexpected or missing):
        raise AdapterMismatch(f"{path}: adapter does not match the attached δ-mem "
                              f"(missing {missing[:4]}{'…' if len(missing) > 4 else ''}, "
                              f"unexpected {unexpected[:4]}{'…' if len(unexpected) > 4 else ''})")
    for name in sorted(set(mapped) & set(params)):
        if mapped[name].shape != params[name].shape:
            raise AdapterMismatch(f"{path}: parameter {name} has shape {tuple(mapped[name].shape)} in the adapter "
                                  f"but {tuple(params[name].shape)} in the model")
    with torch.no_grad():
        for name in sorted(set(mapped) & set(params)):
            params[name].copy_(mapped[name].to(device=params[name].device, dtype=params[name].dtype))
    return sorted(set(mapped) & set(params))


def attach_from_adapter(model: torch.nn.Module, path: str | Path, **overrides: Any) -> "DeltaMem":
    """Attach with the adapter's config (runtime-only fields such as ``scan_impl`` may be overridden)."""
    from dataclasses import replace

    from methods.deltamem.surgery import attach

    config = read_config(path)
    allowed = {"scan_impl", "target_layers"}
    bad = sorted(set(overrides) - allowed)
    if bad:
        raise ValueError(f"cannot override {bad} when loading an adapter (only {sorted(allowed)})")
    config = replace(config, **overrides)
    dm = attach(model, config)
    load_adapter_weights(dm, path)
    return dm

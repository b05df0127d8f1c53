"""Which backbone and which δ-mem weights a session outside the runner uses (the lm-eval model, the chat).

The runner resolves ``backbone=`` and ``method.adapter=`` through Hydra; these helpers give the same names the
same meaning without it:

* a backbone is a ``conf/backbone/<name>.yaml`` stem (``smollm2_135m``: the embedded default, built and cached
  on first use), a local Hugging Face folder, or a hub id;
* an adapter is ``shipped`` (the one in ``adapters/<backbone>/deltamem_<variant>/``), a directory in this
  project's format or the official release's, or ``null`` for an untrained memory.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.adapters import ROOT, SHIPPED, SHIPPED_DIR, display_path, shipped_adapter, weights_sha256
from harness.errors import ConfigError
from methods.deltamem.adapter import attach_from_adapter, read_config
from methods.deltamem.config import DeltaMemConfig
from methods.deltamem.signature import BackboneMismatch, check_backbone_signature
from methods.deltamem.surgery import DeltaMem, attach

BACKBONE_CONF = ROOT / "conf" / "backbone"
VARIANTS = ("tsw", "ssw", "msw")
_NULL = (None, "", "null", "none", "None")


def is_null(adapter: Any) -> bool:
    return adapter in _NULL


def backbone_config(name: str) -> Any | None:
    """The ``conf/backbone/<name>.yaml`` config, or None when ``name`` is not one of its stems."""
    from omegaconf import OmegaConf

    path = BACKBONE_CONF / f"{name}.yaml"
    if "/" in name or not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    return cfg if (cfg.get("embedded") or cfg.get("hub_id") or cfg.get("path")) else None


def resolve_pretrained(spec: str) -> tuple[str, str | None]:
    """``(what from_pretrained accepts, backbone name or None)``: an existing folder as it is, else a
    ``conf/backbone`` name resolved (the embedded model built on first use), else a hub id passed through."""
    if Path(spec).expanduser().is_dir():
        return str(Path(spec).expanduser()), None
    cfg = backbone_config(spec)
    if cfg is None:
        return spec, None
    from harness.backbone import resolve_location

    location, _ = resolve_location(cfg)
    return location, str(cfg.name)


def find_shipped(model: torch.nn.Module, variant: str, backbone_name: str | None = None) -> Path:
    """The shipped adapter of ``variant`` for ``model``: by backbone name when known, else the one whose recorded
    backbone signature matches the model (so a folder path to the embedded model finds its adapters too)."""
    method = f"deltamem_{variant}"
    if backbone_name is not None:
        return shipped_adapter(backbone_name, method)
    for folder in sorted(p for p in SHIPPED_DIR.glob(f"*/{method}") if p.is_dir()):
        try:
            signature = read_config(folder).extra.get("backbone")
        except (FileNotFoundError, ValueError):
            continue
        if not signature:
            continue
        try:
            check_backbone_signature(signature, model)
        except BackboneMismatch:
            continue
        return folder
    have = sorted(f"{p.parent.name}/{p.name}" for p in SHIPPED_DIR.glob("*/deltamem_*") if p.is_dir())
    raise ConfigError(f"adapter=shipped: no shipped {method} adapter was trained on this backbone (shipped: "
                      f"{', '.join(have) or 'none'}); pass adapter=DIR, or adapter=null for an untrained memory")


@dataclass(frozen=True)
class Memory:
    """δ-mem attached to a model, and what identifies its weights."""

    dm: DeltaMem
    adapter: str | None  # display path of the adapter directory; None: untrained
    sha256: str          # the adapter's weight files (as in run records); untrained: "params:" + parameter hash

    @property
    def label(self) -> str:
        return self.adapter or f"untrained {self.dm.config.variant} memory ({self.dm.config.output_init} heads)"

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.adapter, "adapter_sha256": self.sha256, "variant": self.dm.config.variant,
                "output_init": self.dm.config.output_init if self.adapter is None else None}


def params_sha256(dm: DeltaMem) -> str:
    h = hashlib.sha256()
    for name, p in sorted(dm.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def attach_memory(model: torch.nn.Module, adapter: str | None, *, variant: str = "msw",
                  output_init: str = "zero", seed: int = 0, scan_impl: str = "auto",
                  backbone_name: str | None = None) -> Memory:
    """Attach δ-mem to ``model`` from ``adapter`` (``shipped``, a directory, or null).

    ``variant`` picks the shipped adapter or the untrained memory's shape. An untrained memory gets
    ``output_init`` correction heads: ``zero`` (default here) adds nothing whatever it reads, so the model is
    exactly the backbone while the state is still written and read; ``base_slice_fixed`` is the reference's
    training initialisation, the harness's ``method.adapter=null``, which moves the logits slightly."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r}: expected one of {', '.join(VARIANTS)}")
    if is_null(adapter):
        config = getattr(DeltaMemConfig, variant)(output_init=output_init, scan_impl=scan_impl)
        with torch.random.fork_rng():  # the initialisation does not disturb the caller's RNG stream
            torch.manual_seed(seed)
            dm = attach(model, config)
        return Memory(dm=dm, adapter=None, sha256="params:" + params_sha256(dm))
    if str(adapter) == SHIPPED:
        path = find_shipped(model, variant, backbone_name)
    else:
        path = Path(str(adapter)).expanduser()
        if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
            path = ROOT / path
        if not path.is_dir():
            raise ConfigError(f"adapter={adapter}: not a directory (expected shipped, null or an adapter directory)")
    dm = attach_from_adapter(model, path, scan_impl=scan_impl)
    return Memory(dm=dm, adapter=display_path(path), sha256=weights_sha256(path))

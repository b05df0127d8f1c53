"""Which backbone an adapter was trained on, and a check that refuses it on another one.

Shapes alone do not tell SmolLM2-135M-Instruct from SmolLM2-135M (base) or from a fine-tune: the
signature also stores a probe of the input embedding weights (a few values at fixed positions), compared
with a tolerance loose enough for bf16 vs fp32 loading and tight enough to tell different weights apart.
Nothing depends on file paths, so an adapter moves between machines.
"""
from __future__ import annotations

from typing import Any

import torch

from harness.errors import HarnessError

_SHAPE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "intermediate_size")
_PROBE = 64


class BackboneMismatch(HarnessError):
    """The adapter was trained on another backbone."""


def _text_config(model: Any) -> Any:
    cfg = model.config
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _probe(model: Any) -> list[float]:
    w = model.get_input_embeddings().weight
    rows, cols = w.shape
    g = torch.Generator().manual_seed(20240601)
    r = torch.randint(0, rows, (_PROBE,), generator=g)
    c = torch.randint(0, cols, (_PROBE,), generator=g)
    with torch.no_grad():
        return [round(float(x), 6) for x in w.detach()[r.to(w.device), c.to(w.device)].float().cpu()]


def backbone_signature(model: Any, name: str | None = None) -> dict[str, Any]:
    cfg = _text_config(model)
    sig: dict[str, Any] = {k: getattr(cfg, k, None) for k in _SHAPE_KEYS}
    sig["embedding_probe"] = _probe(model)
    if name:
        sig["name"] = name
    return sig


def check_backbone_signature(signature: dict[str, Any] | None, model: Any, *, what: str = "adapter") -> None:
    """Raise :class:`BackboneMismatch` if ``signature`` (from :func:`backbone_signature`) is not ``model``'s.

    A missing signature (an adapter from elsewhere, e.g. the official release) is accepted: shapes are
    still checked when the weights are loaded.
    """
    if not signature:
        return
    here = backbone_signature(model)
    trained_on = signature.get("name") or signature.get("model_type")
    for key in _SHAPE_KEYS:
        if key in signature and signature[key] != here[key]:
            raise BackboneMismatch(f"{what} was trained on another backbone ({trained_on}): {key}={signature[key]} "
                                   f"there, {here[key]} here")
    probe = signature.get("embedding_probe")
    if probe:
        a, b = torch.tensor(probe), torch.tensor(here["embedding_probe"])
        if a.shape != b.shape or not torch.allclose(a, b, rtol=2e-2, atol=2e-3):
            raise BackboneMismatch(f"{what} was trained on another backbone ({trained_on}): same shapes, "
                                   "different weights (embedding probe differs)")

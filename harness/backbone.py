"""Loading the frozen backbone: model + tokenizer + chat formatting, once per run."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.errors import ConfigError, HarnessError

DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
          "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}

# Families whose chat templates think by default; the reference suite turns thinking off.
_THINKING_OFF_BY_DEFAULT = ("qwen3", "smollm3")


@dataclass
class Backbone:
    name: str
    model: Any
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    window: int
    chat_kwargs: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    def chat_ids(self, messages: Sequence[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a chat rendered with the backbone's own template."""
        if not self.has_chat_template:
            # Base models (e.g. Gemma-3-270m) have no template: a plain role-prefixed layout.
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
            if add_generation_prompt:
                text += "Assistant:"
            return self.encode(text, add_special_tokens=True)
        out = self.tokenizer.apply_chat_template(
            list(messages), tokenize=True, add_generation_prompt=add_generation_prompt,
            return_dict=True, **self.chat_kwargs,
        )
        ids = out["input_ids"]
        return list(ids[0] if ids and isinstance(ids[0], list) else ids)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    @property
    def stop_ids(self) -> set[int]:
        ids: set[int] = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for value in (gen_eos, self.tokenizer.eos_token_id):
            if isinstance(value, int):
                ids.add(value)
            elif value:
                ids.update(int(v) for v in value)
        return ids

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else min(self.stop_ids))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": str(self.dtype).removeprefix("torch."), "device": str(self.device),
                "window": self.window, "chat_kwargs": self.chat_kwargs,
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None),
                "num_parameters": sum(p.numel() for p in self.model.parameters()), **self.source}


def resolve_device(name: str) -> torch.device:
    """The torch device ``backbone.device`` names, refused at once when torch cannot see it (otherwise the
    failure comes only after the model has loaded, as a torch traceback)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"backbone.device={name!r} is not a torch device ({exc})") from exc
    if device.type == "cpu":
        return device
    kind = {"cuda": "CUDA", "mps": "MPS"}.get(device.type, device.type.upper())
    if device.type == "mps":
        count = int(torch.backends.mps.is_available())
    else:
        backend = getattr(torch, device.type, None)
        available = getattr(backend, "is_available", None)
        count = int(backend.device_count()) if available is not None and available() else 0
    if count == 0:
        raise ConfigError(f"backbone.device={name}: no {kind} device is visible to torch here; "
                          "backbone.device=cpu or backbone.device=auto works")
    if device.index is not None and device.index >= count:
        visible = ", ".join(f"{device.type}:{i}" for i in range(count))
        raise ConfigError(f"backbone.device={name}: torch sees {count} {kind} device{'s' * (count > 1)} "
                          f"({visible}); pick one of those, backbone.device=cpu or backbone.device=auto")
    return device


def resolve_location(cfg: Any) -> tuple[str, dict[str, Any]]:
    """Map the backbone config to something ``from_pretrained`` accepts, plus provenance."""
    if cfg.get("path"):
        path = Path(os.path.expanduser(str(cfg.path)))
        if not path.is_dir():
            raise HarnessError(f"backbone.path={cfg.path}: no such directory")
        return str(path), {"path": str(path)}
    if cfg.get("embedded"):
        from harness.embedded import ensure_embedded

        folder = ensure_embedded(str(cfg.embedded))
        return str(folder), {"embedded": str(cfg.embedded), "path": str(folder)}
    if cfg.get("hub_id"):
        return str(cfg.hub_id), {"hub_id": str(cfg.hub_id), "revision": cfg.get("revision")}
    raise ConfigError("backbone config needs one of: path, embedded, hub_id")


def _check_causal_lm(location: str, trust_remote_code: bool) -> None:
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(location, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise HarnessError(f"{location}: not a loadable model config ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not trust_remote_code:
        raise HarnessError(f"{location}: model_type {config.model_type!r} is not a causal LM known to transformers")


def chat_kwargs_for(name: str, tokenizer: Any, enable_thinking: bool | None) -> dict[str, Any]:
    template = getattr(tokenizer, "chat_template", None) or ""
    if "enable_thinking" not in template:
        return {}
    if enable_thinking is None:
        lowered = name.lower()
        enable_thinking = not any(f in lowered for f in _THINKING_OFF_BY_DEFAULT) or "instruct" in lowered
    return {"enable_thinking": bool(enable_thinking)}


def load_backbone(cfg: Any) -> Backbone:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the run's own progress bar is the one that matters
    device = resolve_device(str(cfg.get("device", "auto")))
    location, provenance = resolve_location(cfg)
    trust = bool(cfg.get("trust_remote_code", False))
    _check_causal_lm(location, trust)
    dtype_name = str(cfg.get("dtype", "fp32"))
    if dtype_name not in DTYPES:
        raise ConfigError(f"backbone.dtype={dtype_name!r}; expected one of {sorted(set(DTYPES))}")
    kwargs: dict[str, Any] = {"dtype": DTYPES[dtype_name], "trust_remote_code": trust}
    if cfg.get("attn_implementation"):
        kwargs["attn_implementation"] = str(cfg.attn_implementation)
    if cfg.get("revision"):
        kwargs["revision"] = str(cfg.revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, trust_remote_code=trust)
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    except Exception as exc:
        raise HarnessError(f"{location}: loading failed ({type(exc).__name__}: {str(exc).splitlines()[0]})") from exc
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    window = int(cfg.get("max_context") or getattr(model.config, "max_position_embeddings", 0) or 2048)
    name = str(cfg.get("name") or Path(location).name)
    provenance["config_sha256"] = _config_digest(model.config)
    return Backbone(name=name, model=model, tokenizer=tokenizer, device=device, dtype=DTYPES[dtype_name],
                    window=window, chat_kwargs=chat_kwargs_for(name, tokenizer, cfg.get("enable_thinking")),
                    source=provenance)


def _config_digest(config: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

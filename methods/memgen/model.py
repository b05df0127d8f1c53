"""MemGen's memory weaver on a frozen reasoner (Zhang, Fu, Yan, ICLR 2026; ``../shared/spec/baselines.md`` §6).

The reasoner is the frozen backbone. The weaver is *the same model* with a LoRA adapter switched on (no second
copy of the weights): at an insertion point it reads the reasoner's input so far, projected into its own space
(``to_weaver``), followed by a block of learned query latents (each block with its LayerNorm and scalar scale),
and its last-layer hidden states at the latent positions, projected back (``to_reasoner``), are appended to the
reasoner's input as latent tokens. Insertion points: the end of the prompt (the prompt latents) and, while
decoding, after a token whose text ends in a delimiter (the inference latents), up to the caps. The memory
trigger is off (always insert), as in the released SFT configurations.

The official code throws the reasoner's KV cache away and prefills everything again after every insertion, and
runs the weaver over the whole sequence each time. Attention is causal, so neither is needed: :class:`Weave`
keeps a KV cache for each of the two and only appends, the weaver's query latents being cropped from its cache
once read (``tests/methods/test_memgen.py`` checks the logits against the re-prefill path, ``reprefill=True``).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

from harness.errors import ConfigError

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "memgen_config.json"
MODULES_FILE = "memgen_modules.safetensors"


@dataclass(frozen=True)
class MemGenConfig:
    prompt_latents: int = 8
    inference_latents: int = 8
    max_prompt_aug_num: int = 1        # 0: no latents at the end of the prompt
    max_inference_aug_num: int = 5     # latent blocks inserted after delimiters while decoding (or in a target)
    delimiters: tuple[str, ...] = (",", ".", "\n")
    weaver_rank: int = 16
    weaver_alpha: float = 32.0
    weaver_dropout: float = 0.1
    weaver_target_modules: tuple[str, ...] = ALL_PROJECTIONS
    trigger: str = "off"               # off: insert at every eligible point (the released SFT configs)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        for name in ("prompt_latents", "inference_latents"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"memgen: {name} must be a positive integer, got {v!r}")
        for name in ("max_prompt_aug_num", "max_inference_aug_num"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"memgen: {name} must be an integer >= 0, got {v!r}")
        if self.trigger != "off":
            raise ConfigError(f"memgen: trigger={self.trigger!r}; only 'off' (always insert) is implemented, as in "
                              "the released SFT configurations (the trigger is trained by GRPO)")
        if not self.delimiters or not all(isinstance(d, str) and d for d in self.delimiters):
            raise ConfigError(f"memgen: delimiters must be non-empty strings, got {self.delimiters!r}")
        from methods.context2lora import check_lora_settings

        check_lora_settings("memgen", self.weaver_rank, self.weaver_alpha, self.weaver_dropout,
                            self.weaver_target_modules)

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> "MemGenConfig":
        names = {f for f in cls.__dataclass_fields__} - {"extra"}
        kw = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in node.items() if k in names}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def label(self) -> str:
        return (f"trigger {self.trigger}, {self.prompt_latents}+{self.inference_latents} latents, caps "
                f"{self.max_prompt_aug_num}/{self.max_inference_aug_num}")


class WeaverModules(nn.Module):
    """Everything MemGen trains besides the weaver's LoRA: query latents, their norms and scales, projections."""

    def __init__(self, hidden: int, config: MemGenConfig):
        super().__init__()
        self.prompt_latents = nn.Parameter(torch.randn(config.prompt_latents, hidden))
        self.inference_latents = nn.Parameter(torch.randn(config.inference_latents, hidden))
        self.prompt_ln = nn.LayerNorm(hidden)
        self.inference_ln = nn.LayerNorm(hidden)
        self.prompt_scale = nn.Parameter(torch.ones(1))
        self.inference_scale = nn.Parameter(torch.ones(1))
        self.to_weaver = nn.Linear(hidden, hidden)
        self.to_reasoner = nn.Linear(hidden, hidden)

    def queries(self, kind: str) -> torch.Tensor:
        if kind == "prompt":
            return self.prompt_ln(self.prompt_latents) * self.prompt_scale
        return self.inference_ln(self.inference_latents) * self.inference_scale


class MemGen:
    """A backbone fitted with MemGen's weaver: ``reasoner()`` and ``weaver()`` switch the LoRA off and on."""

    def __init__(self, model: nn.Module, config: MemGenConfig, *, peft_model=None, seed: int = 0):
        from peft import LoraConfig, get_peft_model

        self.model = model
        self.config = config
        if peft_model is None:
            lora = LoraConfig(r=config.weaver_rank, lora_alpha=config.weaver_alpha,
                              lora_dropout=config.weaver_dropout, target_modules=list(config.weaver_target_modules),
                              bias="none", task_type="CAUSAL_LM")
            peft_model = get_peft_model(model, lora)
        self.peft = peft_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
        hidden = model.get_input_embeddings().weight.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.modules = WeaverModules(hidden, config).to(model.get_input_embeddings().weight.device)

    # ---------------------------------------------------------------------------------- parameters
    def parameters(self) -> list[nn.Parameter]:
        """The weaver's own parameters, whether or not they are being trained (a loaded weaver is frozen; its
        LoRA still counts)."""
        lora = [p for name, p in sorted(self.peft.named_parameters()) if "lora_" in name]
        return lora + [p for _, p in sorted(self.modules.named_parameters())]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @contextlib.contextmanager
    def reasoner(self):
        """The frozen backbone: the weaver's LoRA layers switched off, then on again. peft's ``disable_adapter``
        walks the whole module tree for a status report and resets every adapter's ``requires_grad`` (0.19 s
        per switch on SmolLM2-135M, more than a decoded token costs); decoding switches twice per token, so the
        layers are collected once and only the flag their forward reads is flipped (tests: the reasoner equals
        the bare backbone exactly, and the weaver is back on afterwards)."""
        for layer in self._lora_layers:
            layer._disable_adapters = True
        try:
            yield
        finally:
            for layer in self._lora_layers:
                layer._disable_adapters = False

    @contextlib.contextmanager
    def weaver(self):
        yield

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    # ---------------------------------------------------------------------------------- save / load
    def save(self, folder: Path, *, extra: Mapping[str, Any] | None = None) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.peft.save_pretrained(str(folder))  # a standard PEFT folder for the weaver's LoRA
        save_file({k: v.detach().float().contiguous().cpu() for k, v in self.modules.state_dict().items()},
                  str(folder / MODULES_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps({**self.config.to_dict(), "extra": dict(extra or {})},
                                                     indent=2) + "\n")

    def load_weights(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        folder = Path(folder)
        set_peft_model_state_dict(self.peft, load_file(str(folder / "adapter_model.safetensors")))
        state = load_file(str(folder / MODULES_FILE))
        dtype = next(self.modules.parameters()).dtype
        self.modules.load_state_dict({k: v.to(dtype) for k, v in state.items()})

    @classmethod
    def from_folder(cls, model: nn.Module, folder: Path, **overrides: Any) -> "MemGen":
        """A trained MemGen; ``overrides`` may change the insertion caps only (what decoding does, not weights)."""
        from peft import PeftModel

        folder = Path(folder)
        data = json.loads((folder / CONFIG_FILE).read_text())
        bad = set(overrides) - {"max_prompt_aug_num", "max_inference_aug_num"}
        if bad:
            raise ConfigError(f"memgen: {sorted(bad)} are properties of the trained weights, not of decoding")
        config = MemGenConfig.from_mapping({**data, **{k: v for k, v in overrides.items() if v is not None}})
        peft = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
        mg = cls(model, config, peft_model=peft)
        mg.load_weights(folder)
        return mg

    def detach(self) -> None:
        self.peft.unload()


# ------------------------------------------------------------------------------------------ insertion points
def ends_with_delimiter(text: str, delimiters: Sequence[str]) -> bool:
    return any(text.endswith(d) for d in delimiters)


def target_insertion_points(ids: Sequence[int], labels: Sequence[int], tokenizer, config: MemGenConfig,
                            ignore: int = -100) -> list[tuple[int, str]]:
    """Where training inserts latents, as (index of the token the latents go before, kind): the first labelled
    token (prompt latents) and, inside the labelled span, every token that follows a text ending in a delimiter,
    the first ``max_inference_aug_num`` of them (the official trainer's rule)."""
    points: list[tuple[int, str]] = []
    n_inference = 0
    for i in range(1, len(ids)):
        here, before = labels[i] != ignore, labels[i - 1] != ignore
        if here and not before:
            if not points and config.max_prompt_aug_num > 0:
                points.append((i, "prompt"))
        elif here and before and n_inference < config.max_inference_aug_num:
            if ends_with_delimiter(tokenizer.decode(list(ids[:i])), config.delimiters):
                points.append((i, "inference"))
                n_inference += 1
    return points

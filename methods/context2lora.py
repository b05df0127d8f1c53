"""Context2LoRA: a static LoRA trained once by SFT on the memory episodes, then used on every prompt.

What the δ-mem paper compares against (``../shared/spec/baselines.md`` §5, inferred from its 5.90M
trainable parameters: rank 8 on q, k, v and o of every layer of Qwen3-4B): the benchmark prompt is
unchanged at evaluation (protocol ``context``) and nothing is written at test time, so the adapter also
acts on the context-free tasks (IFEval, GPQA). Whether the training prompts showed the episode's history
is not known: ``train_context`` is ``visible`` (the history and the question in one prompt, standard SFT)
by default and ``hidden`` (the question alone, closed-book); both choices are labelled unverified.

The adapter is a standard PEFT folder (``adapter_config.json`` + ``adapter_model.safetensors``, which
``PeftModel.from_pretrained`` opens outside this harness) plus ``harness_adapter.json`` with the backbone
signature that a load on another backbone is refused by.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.training.episodes import Episode, TokenizedEpisode, tokenize_episode
from harness.training.learner import Learner, target_positions, tokenize_visible
from methods.vanilla import Vanilla

TRAIN_CONTEXTS = ("visible", "hidden")
# The projections of the decoder families this harness runs (Llama, Qwen2/3, Mistral, Gemma 3).
KNOWN_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SIDECAR = "harness_adapter.json"


def check_lora_settings(name: str, rank: int, alpha: float, dropout: float, target_modules: Sequence[str]) -> None:
    """Refuse settings that cannot make a LoRA, before any model loads."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"method {name}: rank must be a positive integer, got {rank!r}")
    if not alpha > 0:
        raise ConfigError(f"method {name}: alpha must be > 0, got {alpha!r}")
    if not 0 <= dropout < 1:
        raise ConfigError(f"method {name}: dropout must be in [0, 1), got {dropout!r}")
    unknown = [m for m in target_modules if m not in KNOWN_MODULES]
    if not target_modules or unknown:
        raise ConfigError(f"method {name}: unknown target module(s) {unknown or '[]'}; expected a non-empty subset "
                          f"of {list(KNOWN_MODULES)}")


def lora_config(rank: int, alpha: float, dropout: float, target_modules: Sequence[str]):
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


def check_adapter_backbone(folder: Path, model) -> dict[str, Any]:
    """The sidecar of an adapter folder, after refusing one trained on another backbone."""
    from methods.deltamem.signature import check_backbone_signature

    sidecar = folder / SIDECAR
    info = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    check_backbone_signature(info.get("backbone"), model, what=f"adapter {folder}")
    return info


class Context2LoRA(Vanilla):
    """The frozen backbone with a static LoRA; the context stays in the prompt (``context`` protocol)."""

    LEARNER = "methods.context2lora.LoRALearner"
    ADAPTER_KIND = "context2lora"

    def __init__(self, *, adapter: str | None = None, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
                 target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
                 train_context: str = "visible", **kw: Any) -> None:
        super().__init__(**kw)
        self.check_training_config({"name": self.name, "rank": rank, "alpha": alpha, "dropout": dropout,
                                    "target_modules": target_modules, "train_context": train_context})
        self.adapter = adapter
        self.rank, self.alpha, self.dropout = rank, float(alpha), float(dropout)
        self.target_modules = tuple(target_modules)
        self.train_context = train_context
        self._peft = None

    @classmethod
    def check_training_config(cls, node: Mapping[str, Any]) -> None:
        name = str(node.get("name", cls.ADAPTER_KIND))
        check_lora_settings(name, node.get("rank", 8), float(node.get("alpha", 16.0)), float(node.get("dropout", 0.0)),
                            tuple(node.get("target_modules") or ()))
        if node.get("train_context", "visible") not in TRAIN_CONTEXTS:
            raise ConfigError(f"method {name}: train_context must be one of {TRAIN_CONTEXTS}, "
                              f"got {node.get('train_context')!r}")

    def setup(self, backbone, task, *, seed: int) -> None:
        from peft import PeftModel, get_peft_model

        super().setup(backbone, task, seed=seed)
        if self.adapter:
            folder = Path(self.adapter)
            check_adapter_backbone(folder, backbone.model)
            # LoRA layers are injected into the backbone's own modules, so every call of backbone.model (the
            # shared-prefix decoding included) goes through them; close() takes them out again.
            self._peft = PeftModel.from_pretrained(backbone.model, str(folder), is_trainable=False)
        else:  # untrained: B = 0, exactly the bare backbone
            self._peft = get_peft_model(backbone.model, lora_config(self.rank, self.alpha, self.dropout,
                                                                    self.target_modules))
        self._peft.eval()

    def close(self) -> None:
        if self._peft is not None:
            self._peft.unload()  # the backbone's original modules, untouched
            self._peft = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "adapter": self.adapter, "rank": self.rank, "alpha": self.alpha,
                "target_modules": list(self.target_modules), "train_context": self.train_context,
                "train_context_note": "unverified: the paper does not say whether training prompts showed the history",
                "trainable_parameters": None if self._peft is None else
                sum(p.numel() for n, p in self._peft.named_parameters() if "lora_" in n)}


class LoRALearner(Learner):
    """SFT of a LoRA on the episodes: cross-entropy on the target, the backbone frozen."""

    label = "context2lora"

    def __init__(self, backbone, method_cfg: Mapping[str, Any], settings) -> None:
        from peft import PeftModel, get_peft_model

        super().__init__(backbone, method_cfg, settings)
        Context2LoRA.check_training_config(method_cfg)
        self.train_context = str(method_cfg.get("train_context", "visible"))
        init = method_cfg.get("adapter")
        if init:  # warm start from an adapter of this backbone
            check_adapter_backbone(Path(init), self.model)
            self.peft = PeftModel.from_pretrained(self.model, str(init), is_trainable=True)
        else:
            self.peft = get_peft_model(self.model, lora_config(int(method_cfg.get("rank", 8)),
                                                               float(method_cfg.get("alpha", 16.0)),
                                                               float(method_cfg.get("dropout", 0.0)),
                                                               tuple(method_cfg.get("target_modules"))))
        for p in self.parameters():  # fp32 master weights whatever the backbone dtype
            p.data = p.data.float()
        from methods.deltamem.signature import backbone_signature

        self.signature = backbone_signature(self.model, backbone.name)

    def __repr__(self) -> str:
        return (f"Context2LoRA(rank={self.peft.peft_config['default'].r}, train_context={self.train_context}, "
                f"{self.num_parameters():,} trainable parameters)")

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, p in sorted(self.peft.named_parameters()) if p.requires_grad]

    def tokenize(self, ep: Episode, history_from: Episode | None = None) -> TokenizedEpisode:
        s = self.settings
        if self.train_context == "hidden":
            return tokenize_episode(ep, self.renderer, write_length=1, read_length=s.read_length)
        return tokenize_visible(ep, self.renderer, length=s.write_length + s.read_length, history_from=history_from)

    def _ce_sum(self, tok: TokenizedEpisode) -> tuple[torch.Tensor, int]:
        from harness.training.trainer import _model_call

        pos, targets = target_positions(tok, self.device)
        out = _model_call(self.model, torch.tensor([tok.read_ids], device=self.device), pos)
        return F.cross_entropy(out.logits[0].float(), targets, reduction="sum"), int(pos.numel())

    def backward(self, ep: TokenizedEpisode, *, group_target_tokens: int, group_size: int):
        from harness.training.trainer import EpisodeResult

        with self.autocast():
            ce_sum, n = self._ce_sum(ep)
        (ce_sum / max(1, group_target_tokens)).backward()
        return EpisodeResult(ce_sum=float(ce_sum.detach()), sparsity=0.0, target_tokens=n, write_tokens=0,
                             read_tokens=len(ep.read_ids))

    @torch.no_grad()
    def heldout_ce(self, ep: Episode, *, history_from: Episode | None = None, bare: bool = False) -> float:
        tok = self.tokenize(ep, history_from=history_from)
        with self.autocast(), (self.peft.disable_adapter() if bare else _nullcontext()):
            ce_sum, n = self._ce_sum(tok)
        return float(ce_sum) / max(1, n)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.peft.save_pretrained(str(folder))
        (folder / SIDECAR).write_text(json.dumps({
            "method": self.method_cfg.get("name"), "kind": Context2LoRA.ADAPTER_KIND, "backbone": self.signature,
            "train_context": self.train_context,
            "train_context_note": "unverified: the paper does not say whether training prompts showed the history"},
            indent=2) + "\n")

    def load(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(self.peft, load_file(str(Path(folder) / "adapter_model.safetensors")))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "train_context": self.train_context, "backbone": self.signature.get("name")}

    def close(self) -> None:
        pass  # tests inspect the trained model; a training process ends here anyway


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()

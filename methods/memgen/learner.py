"""MemGen's weaver SFT: cross-entropy on the target's tokens, the reasoner frozen, latents inserted at the start
of the target and after its delimiters (up to the caps), latent positions out of the loss."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from harness.training.episodes import IGNORE, Episode, TokenizedEpisode
from harness.training.learner import Learner, target_positions, tokenize_visible
from methods.context2lora import SIDECAR, check_adapter_backbone
from methods.memgen.model import MemGen, MemGenConfig, target_insertion_points
from methods.memgen.weave import teacher_forced_logits


class MemGenLearner(Learner):
    label = "memgen"

    def __init__(self, backbone, method_cfg: Mapping[str, Any], settings) -> None:
        from methods.deltamem.signature import backbone_signature

        super().__init__(backbone, method_cfg, settings)
        init = method_cfg.get("adapter")
        if init:  # warm start
            check_adapter_backbone(Path(init), self.model)
            self.mg = MemGen.from_folder(self.model, Path(init))
            for n, p in self.mg.peft.named_parameters():
                p.requires_grad_("lora_" in n)
        else:
            self.mg = MemGen(self.model, MemGenConfig.from_mapping(method_cfg))
        for p in self.mg.parameters():  # fp32 master weights whatever the backbone dtype
            p.data = p.data.float()
        self.signature = backbone_signature(self.model, backbone.name)

    def __repr__(self) -> str:
        return f"MemGen(weaver SFT, {self.mg.config.label()}, {self.num_parameters():,} trainable parameters)"

    def parameters(self) -> list[torch.nn.Parameter]:
        return self.mg.parameters()

    def tokenize(self, ep: Episode, history_from: Episode | None = None) -> TokenizedEpisode:
        s = self.settings
        # Labels start at the target's content, so the prompt latents go where decoding puts them: after the
        # generation header that ends every evaluation prompt, not before it.
        return tokenize_visible(ep, self.renderer, length=s.write_length + s.read_length, history_from=history_from,
                                label_header=False)

    def _ce_sum(self, tok: TokenizedEpisode, *, bare: bool = False) -> tuple[torch.Tensor, int]:
        from harness.training.trainer import _model_call

        pos, targets = target_positions(tok, self.device)
        if bare:
            with self.mg.reasoner():
                logits = _model_call(self.model, torch.tensor([tok.read_ids], device=self.device), pos).logits[0]
        else:
            points = target_insertion_points(tok.read_ids, tok.labels, self.backbone.tokenizer, self.mg.config, IGNORE)
            logits = teacher_forced_logits(self.mg, tok.read_ids, points)[pos]
        return F.cross_entropy(logits.float(), targets, reduction="sum"), int(pos.numel())

    def backward(self, ep: TokenizedEpisode, *, group_target_tokens: int, group_size: int):
        from harness.training.trainer import EpisodeResult

        with self.autocast():
            ce_sum, n = self._ce_sum(ep)
        (ce_sum / max(1, group_target_tokens)).backward()
        return EpisodeResult(ce_sum=float(ce_sum.detach()), sparsity=0.0, target_tokens=n, write_tokens=0,
                             read_tokens=len(ep.read_ids))

    @torch.no_grad()
    def heldout_ce(self, ep: Episode, *, history_from: Episode | None = None, bare: bool = False) -> float:
        with self.autocast():
            ce_sum, n = self._ce_sum(self.tokenize(ep, history_from=history_from), bare=bare)
        return float(ce_sum) / max(1, n)

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        self.mg.save(folder, extra={"backbone": self.signature})
        (folder / SIDECAR).write_text(json.dumps({"method": self.method_cfg.get("name"), "kind": "memgen",
                                                  "backbone": self.signature, "memgen": self.mg.config.label()},
                                                 indent=2) + "\n")

    def load(self, folder: Path) -> None:
        self.mg.load_weights(Path(folder))

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "memgen": self.mg.config.to_dict(), "backbone": self.signature.get("name")}

"""What the training loop trains: one :class:`Learner` per kind of method.

The loop (:class:`harness.training.trainer.Trainer`) owns the schedule, checkpoints, logs and held-out
evaluation; a learner owns the trainable weights and how an episode becomes a loss. δ-mem learns through a
write pass and a read pass (:class:`DeltaMemLearner`); the parametric baselines learn from the episode's
whole conversation in one prompt (``methods/context2lora``, ``methods/memgen``). The method class named by
``method._target_`` says which learner trains it (:func:`make_learner`), so the registry stays the config
groups.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F

from harness.errors import ConfigError
from harness.training.episodes import IGNORE, ChatRenderer, Episode, TokenizedEpisode, tokenize_episode


class Learner(ABC):
    """The trainable part of one method on one backbone."""

    #: a short name for progress bars and the training summary
    label: str = "learner"

    def __init__(self, backbone, method_cfg: Mapping[str, Any], settings) -> None:
        self.backbone = backbone
        self.model = backbone.model
        self.device = backbone.device
        self.method_cfg = dict(method_cfg)
        self.settings = settings
        self.renderer = ChatRenderer.for_backbone(backbone)
        self.autocast: Callable[[], Any] = contextlib.nullcontext

    @abstractmethod
    def parameters(self) -> list[torch.nn.Parameter]:
        """The trainable parameters, in a fixed order (the optimizer state follows it)."""

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @abstractmethod
    def tokenize(self, ep: Episode) -> TokenizedEpisode:
        """The episode as this learner trains on it."""

    @abstractmethod
    def backward(self, ep: TokenizedEpisode, *, group_target_tokens: int, group_size: int):
        """Loss of one episode (normalised by the group's target tokens), backward; returns an EpisodeResult."""

    @abstractmethod
    def heldout_ce(self, ep: Episode, *, history_from: Episode | None = None, bare: bool = False) -> float:
        """Mean target CE of one held-out episode, no gradient: as trained (``history_from=None``), with another
        document's history in place of the episode's own, or ``bare``: the backbone without what is trained."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the trained weights (and their config) as the method loads them."""

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Load weights written by :meth:`save` (checkpoint resume)."""

    def describe(self) -> dict[str, Any]:
        return {"label": self.label}

    def close(self) -> None:
        """Release hooks; the trained modules may stay attached (tests inspect them)."""


def make_learner(backbone, method_cfg: Mapping[str, Any], settings) -> Learner:
    """The learner of the method class ``method_cfg['_target_']`` names (its ``LEARNER`` attribute, a dotted
    path); δ-mem's when the config has no target (tests build bare δ-mem method nodes)."""
    target = str(method_cfg.get("_target_") or "methods.deltamem.method.DeltaMemMethod")
    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"method._target_={target}: cannot import it ({exc})") from exc
    path = getattr(cls, "LEARNER", None)
    if path is None:
        raise ConfigError(f"method={method_cfg.get('name')}: {name} has nothing to train (no LEARNER); trainable "
                          "methods: δ-mem, context2lora, memgen, mlp_memory")
    mod, _, attr = str(path).rpartition(".")
    return getattr(importlib.import_module(mod), attr)(backbone, method_cfg, settings)


def visible_messages(ep: Episode, history_from: Episode | None = None) -> tuple:
    """The episode's conversation in one prompt: leading system, the history (another episode's when
    ``history_from`` is given), the question and the target."""
    n_sys = len(ep.system)
    history = (history_from or ep).write[len((history_from or ep).system):]
    return tuple(ep.system) + tuple(history) + tuple(ep.read[n_sys:])


def tokenize_visible(ep: Episode, renderer: ChatRenderer, *, length: int, history_from: Episode | None = None,
                     label_header: bool = True) -> TokenizedEpisode:
    """The whole conversation as one read sequence with labels on the target (left-truncated to ``length``);
    nothing to write. A hidden-history variant is :func:`tokenize_episode`'s read part alone.
    ``label_header=False`` leaves the target turn's template header (e.g. ``<|im_start|>assistant\n``) out of
    the labels, so the first label is the first token a model generates after an evaluation prompt."""
    messages = visible_messages(ep, history_from)
    ids, owner = renderer.encode(messages)
    target = len(messages) - 1
    labels = [t if o == target else IGNORE for t, o in zip(ids, owner)]
    if not label_header:
        start = renderer.content_start(messages, ids)
        labels[:start] = [IGNORE] * start
    drop = max(0, len(ids) - length)
    return TokenizedEpisode(id=ep.id, source=ep.source, write_ids=(), write_message_ids=(),
                            read_ids=tuple(ids[drop:]), labels=tuple(labels[drop:]), read_dropped=drop)


def target_positions(ep: TokenizedEpisode, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions whose logits predict a labelled token, and those tokens."""
    labels = torch.tensor(ep.labels, dtype=torch.long, device=device)
    positions = (labels[1:] != IGNORE).nonzero().squeeze(-1)
    return positions, labels[positions + 1]


# ------------------------------------------------------------------------------------------ δ-mem
class DeltaMemLearner(Learner):
    """δ-mem's history-removed recipe (deltamem.md §7): the history is written into the state, the question is
    read with writes off, the loss reaches the memory through the state."""

    def __init__(self, backbone, method_cfg: Mapping[str, Any], settings) -> None:
        from harness.training.trainer import BetaProbe, deltamem_config_from_method
        from methods.deltamem import attach
        from methods.deltamem.adapter import load_adapter_weights, read_config
        from methods.deltamem.signature import backbone_signature, check_backbone_signature

        super().__init__(backbone, method_cfg, settings)
        config = deltamem_config_from_method(method_cfg)
        init_adapter = method_cfg.get("adapter")
        if init_adapter:  # warm start: the adapter's own shapes and init, then its weights
            config = read_config(init_adapter)
            check_backbone_signature(config.extra.get("backbone"), self.model, what=f"adapter {init_adapter}")
        self.signature = backbone_signature(self.model, backbone.name)
        config = dataclasses.replace(config, extra={**config.extra, "backbone": self.signature})
        self.dm = attach(self.model, config)
        if init_adapter:
            load_adapter_weights(self.dm, init_adapter)
        for p in self.dm.parameters(trainable_only=False):  # fp32 master weights whatever the backbone dtype
            p.data = p.data.float()
        self._params = self.dm.parameters(trainable_only=True)
        self.label = config.variant
        self.write_chunk = int(settings.write_chunk or min(settings.write_length, backbone.window))
        self.probe = BetaProbe(self.model) if settings.sparsity_weight > 0 else None

    def __repr__(self) -> str:
        return repr(self.dm)

    def parameters(self) -> list[torch.nn.Parameter]:
        return self._params

    def num_parameters(self) -> int:
        return self.dm.num_parameters()

    def tokenize(self, ep: Episode) -> TokenizedEpisode:
        return tokenize_episode(ep, self.renderer, write_length=self.settings.write_length,
                                read_length=self.settings.read_length)

    def backward(self, ep: TokenizedEpisode, *, group_target_tokens: int, group_size: int):
        from harness.training.trainer import episode_backward

        s = self.settings
        return episode_backward(self.model, self.dm, ep, device=self.device, write_chunk=self.write_chunk,
                                group_target_tokens=group_target_tokens, group_size=group_size,
                                sparsity_weight=s.sparsity_weight, sparsity_target=s.sparsity_target,
                                probe=self.probe, autocast=self.autocast)

    def _write(self, tok: TokenizedEpisode) -> None:
        from harness.training.trainer import _model_call

        segmented = self.dm.config.write_granularity != "token"
        write = torch.tensor([tok.write_ids], device=self.device)
        seg = torch.tensor([tok.write_message_ids], device=self.device)
        with self.dm.writes(True):
            for start in range(0, write.shape[1], self.write_chunk):
                if segmented:
                    self.dm.set_segment_ids(seg[:, start:start + self.write_chunk])
                _model_call(self.model, write[:, start:start + self.write_chunk], 1)

    @torch.no_grad()
    def heldout_ce(self, ep: Episode, *, history_from: Episode | None = None, bare: bool = False) -> float:
        from harness.training.trainer import _model_call

        tok = self.tokenize(ep)
        self.dm.reset()
        try:
            with self.autocast():
                if not bare:  # an empty state is inert: not writing is the bare backbone on the question alone
                    self._write(self.tokenize(history_from) if history_from is not None else tok)
                pos, targets = target_positions(tok, self.device)
                with self.dm.writes(False):
                    out = _model_call(self.model, torch.tensor([tok.read_ids], device=self.device), pos)
                return float(F.cross_entropy(out.logits[0].float(), targets))
        finally:
            self.dm.reset()

    def save(self, folder: Path) -> None:
        self.dm.save_adapter(str(folder))

    def load(self, folder: Path) -> None:
        from methods.deltamem.adapter import load_adapter_weights

        load_adapter_weights(self.dm, folder)

    def describe(self) -> dict[str, Any]:
        return {"label": self.label, "variant": self.dm.config.variant, "backbone": self.signature.get("name")}

    def close(self) -> None:
        if self.probe:
            self.probe.remove()

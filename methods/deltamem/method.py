"""δ-mem as a harness method: ``deltamem_tsw``, ``deltamem_ssw``, ``deltamem_msw``.

Protocols (recorded in every run):

* ``context`` — the reference suite's: the (window-truncated) episode context is in the prompt and is also
  written into the memory while it is prefilled; question and answer tokens are written too. The shared
  context prefix is prefilled once per episode, its state snapshot is expanded to every question of a
  batch (rows are independent, so this equals the reference's reset-per-question loop).
  ``write_generated=False`` (not the reference) stops writing once decoding starts: the prompt is written,
  the model's own answer is not, as in training, whose read pass never writes.
* ``memory`` — history removed: the episode's history (the task's chat-message view of the context) is
  written into the state in window-sized chunks that carry the state forward, then every question is
  answered from a snapshot of that state with only the question in the prompt and writes off.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.adapters import SHIPPED, display_path, shipped_adapter
from harness.backbone import Backbone
from harness.types import Episode, Prediction, Query
from methods.base import Method
from methods.deltamem.adapter import read_config
from methods.deltamem.api import chat_segments, write_tokens
from methods.deltamem.config import DeltaMemConfig
from methods.deltamem.state import Snapshot
from methods.deltamem.surgery import DeltaMem, attach
from methods.prompting import EpisodePrompts, answer_batch, build_episode_prompts, render_episode_context
from tasks.base import Task


class _StateRows:
    """generate_batch's BatchHooks: keep the per-row memory aligned with the KV cache rows.

    Each expansion starts from ``prefix_state`` with the prompt's write setting: a sliding-window backbone
    decodes the groups of equal-length prompts one after another, and a group must not inherit the rows (or
    the write switch) the group before it left behind."""

    def __init__(self, dm: DeltaMem, prefix_state: Snapshot, *, prompt_writes: bool,
                 write_generated: bool = True) -> None:
        self.dm = dm
        self.prefix_state = prefix_state
        self.prompt_writes = prompt_writes
        self.write_generated = write_generated

    def on_expand(self, batch_size: int) -> None:
        self.dm.restore(self.prefix_state)
        self.dm.write_enabled = self.prompt_writes
        self.dm.state.expand(batch_size)

    def on_select(self, rows: torch.Tensor) -> None:
        self.dm.state.select_rows(rows)

    def on_decode(self) -> None:
        if not self.write_generated:
            self.dm.write_enabled = False


class DeltaMemMethod(Method):
    LEARNER = "harness.training.learner.DeltaMemLearner"  # what `python -m harness.train` trains

    def __init__(self, *, rank: int = 8, alpha: float = 16.0, num_state_heads: int = 1,
                 write_granularity: str = "token", delta_heads: Sequence[str] = ("q", "o"),
                 output_init: str = "base_slice_fixed", beta_bias_init: float = -1.5, base_slice_ref_width: int = 8,
                 online_gain: float = 0.05, target_layers: Sequence[int] = (), scan_impl: str = "auto",
                 adapter: str | None = None, chunk_tokens: int | None = None, reuse_prefix: bool = True,
                 write_generated: bool = True, **kw: Any) -> None:
        kw.setdefault("protocol", "context")
        super().__init__(**kw)
        self.config = DeltaMemConfig(rank=rank, alpha=alpha, num_state_heads=num_state_heads,
                                     write_granularity=write_granularity,  # type: ignore[arg-type]
                                     delta_heads=tuple(delta_heads), output_init=output_init,  # type: ignore[arg-type]
                                     beta_bias_init=beta_bias_init, base_slice_ref_width=base_slice_ref_width,
                                     online_gain=online_gain, target_layers=tuple(target_layers),
                                     scan_impl=scan_impl)  # type: ignore[arg-type]
        self.adapter = adapter
        if chunk_tokens is not None and chunk_tokens <= 0:
            raise ValueError(f"method {self.name}: chunk_tokens must be > 0, got {chunk_tokens}")
        self.chunk_tokens = chunk_tokens
        self.reuse_prefix = reuse_prefix
        self.write_generated = bool(write_generated)
        self.dm: DeltaMem | None = None
        self._snapshot: Snapshot | None = None
        self._prompts: EpisodePrompts | None = None

    # ------------------------------------------------------------------ lifecycle
    def setup(self, backbone: Backbone | None, task: Task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if backbone is None:
            raise ValueError(f"method {self.name} needs a backbone")
        if self.adapter == SHIPPED:  # the runner resolves this; direct users of the class get the same rule
            self.adapter = str(shipped_adapter(backbone.name, self.name))
        if self.adapter:
            saved = read_config(self.adapter)
            for key in ("rank", "num_state_heads", "delta_heads"):
                if getattr(saved, key) != getattr(self.config, key):
                    raise ValueError(f"method {self.name}: adapter {self.adapter} has {key}={getattr(saved, key)!r} "
                                     f"but the method config says {getattr(self.config, key)!r}")
            # the write strategy is a runtime choice: a TSW-trained adapter may be run with SSW writes
            self.config = replace(saved, write_granularity=self.config.write_granularity,
                                  scan_impl=self.config.scan_impl)
            self.dm = attach(backbone.model, self.config)
            self.dm.load_adapter(self.adapter)
        else:
            with torch.random.fork_rng():  # initialisation does not disturb the run's RNG stream
                torch.manual_seed(seed)
                self.dm = attach(backbone.model, self.config)
        backbone.model.eval()

    def close(self) -> None:
        if self.dm is not None:
            self.dm.detach()
            self.dm = None

    # ------------------------------------------------------------------ episodes
    def ingest(self, episode: Episode) -> dict[str, Any]:
        dm, bb = self._require()
        dm.reset()
        info: dict[str, Any] = {"protocol": self.protocol}
        if self.protocol == "memory":
            messages = self.task.history_messages(episode) if episode.has_context else []
            if messages:
                ids, seg = chat_segments(bb.tokenizer, messages, granularity=self.config.write_granularity,
                                         chat_kwargs=bb.chat_kwargs)
                info.update(write_tokens(dm, ids, seg, chunk_tokens=self.chunk_tokens or bb.window))
            self._snapshot = dm.snapshot()
            with dm.writes(False):  # a shared question prefix (system prompt) only reads the memory
                self._prompts = build_episode_prompts(bb, self.task, episode, None, reuse_prefix=self.reuse_prefix)
        else:
            context = render_episode_context(bb, self.task, episode) if episode.has_context else None
            with dm.writes(True):  # the shared context prefix is written while it is prefilled
                self._prompts = build_episode_prompts(bb, self.task, episode, context, reuse_prefix=self.reuse_prefix)
            self._snapshot = dm.snapshot()
            if context is not None:
                info.update(context_tokens=context.kept_tokens, context_total_tokens=context.total_tokens,
                            context_truncated=context.truncated)
            info["tokens_written"] = self._prompts.prefix.length if self._prompts.prefix else 0
        info["state_bytes"] = dm.state.nbytes
        return info

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        dm, bb = self._require()
        if self._prompts is None or self._snapshot is None:
            raise RuntimeError(f"method {self.name}: answer() before ingest()")
        ctx = self._prompts.context
        writes = self.protocol == "context"
        rows = _StateRows(dm, self._snapshot, prompt_writes=writes, write_generated=self.write_generated)
        with dm.writes(writes):  # restores the switch the hooks flip
            preds = answer_batch(bb, self.task, self._prompts, queries, self.seed, hooks=[rows],
                                 context_tokens=ctx.kept_tokens if ctx else 0)
        dm.restore(self._snapshot)
        for p in preds:
            p.info["memory_bytes"] = dm.state.nbytes // max(dm.state.batch_size or 1, 1)
        return preds

    def describe(self) -> dict[str, Any]:
        out = {**super().describe(), "variant": self.config.variant, "deltamem": self.config.to_dict(),
               "adapter": display_path(Path(self.adapter)) if self.adapter else None, "reuse_prefix": self.reuse_prefix,
               "chunk_tokens": self.chunk_tokens, "write_generated": self.write_generated}
        if self.dm is not None:
            out["trainable_parameters"] = self.dm.num_parameters()
        return out

    def _require(self) -> tuple[DeltaMem, Backbone]:
        if self.dm is None or self.backbone is None:
            raise RuntimeError(f"method {self.name}: setup() has not run")
        return self.dm, self.backbone

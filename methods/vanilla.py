"""The frozen backbone, with the episode context in the prompt or without it."""
from __future__ import annotations

from typing import Any, Sequence

from harness.types import Episode, Prediction, Query
from methods.base import Method
from methods.prompting import EpisodePrompts, answer_batch, build_episode_prompts, render_episode_context


class Vanilla(Method):
    def __init__(self, *, use_context: bool = True, reuse_prefix: bool = True, **kw: Any):
        kw.setdefault("protocol", "context" if use_context else "memory")
        super().__init__(**kw)
        self.use_context = use_context
        self.reuse_prefix = reuse_prefix
        self._prompts: EpisodePrompts | None = None

    def ingest(self, episode: Episode) -> dict[str, Any]:
        context = None
        if self.use_context and episode.has_context:
            context = render_episode_context(self.backbone, self.task, episode)
        self._prompts = build_episode_prompts(self.backbone, self.task, episode, context, reuse_prefix=self.reuse_prefix)
        if context is None:
            return {}
        return {"context_tokens": context.kept_tokens, "context_total_tokens": context.total_tokens,
                "context_truncated": context.truncated}

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        ctx = self._prompts.context
        return answer_batch(self.backbone, self.task, self._prompts, queries, self.seed,
                            context_tokens=ctx.kept_tokens if ctx else 0)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "use_context": self.use_context, "reuse_prefix": self.reuse_prefix}

"""Prompt assembly and answering shared by the in-context methods.

The context budget follows the reference rule (window minus the answer reserve) with the
question part of every prompt of the episode also subtracted, so that one budget, and so
one truncated context, serves all questions of an episode and their prompts share a
prefix that is prefilled once.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from harness.backbone import Backbone
from harness.generation import BatchHooks, PrefixCache, common_prefix_len, generate_batch, prefill_prefix
from harness.types import Episode, GenerationSettings, Prediction, Query, RenderedContext
from tasks.base import Task

# Token counts of a context measured alone and inside a rendered prompt can differ at the
# joins; this margin keeps the rendered prompt inside the window.
_JOIN_MARGIN = 8


def context_budget(backbone: Backbone, task: Task, queries: Sequence[Query]) -> int:
    overhead = max(len(backbone.chat_ids(task.prompt_messages(q, ""))) for q in queries)
    reserve = max(task.generation_for(q).max_new_tokens for q in queries)
    return backbone.window - reserve - overhead - _JOIN_MARGIN


def render_episode_context(backbone: Backbone, task: Task, episode: Episode) -> RenderedContext:
    budget = context_budget(backbone, task, episode.queries)
    if budget <= 0:
        raise ValueError(f"{task.name}/{episode.id}: no room for context in a {backbone.window}-token window")
    return task.render_context(episode, count_tokens=backbone.count_tokens, max_tokens=budget)


@dataclass
class EpisodePrompts:
    """All prompts of one episode with their shared, prefilled prefix."""

    ids: dict[str, list[int]]
    prefix: PrefixCache | None
    context: RenderedContext | None


def build_episode_prompts(backbone: Backbone, task: Task, episode: Episode, context: RenderedContext | None,
                          *, reuse_prefix: bool = True) -> EpisodePrompts:
    text = context.text if context is not None else None
    ids = {q.id: backbone.chat_ids(task.prompt_messages(q, text)) for q in episode.queries}
    prefix = None
    if reuse_prefix:
        seqs = list(ids.values())
        # Keep at least one token per prompt outside the prefix: its logits start decoding.
        n = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1)
        if n > 0:
            prefix = prefill_prefix(backbone.model, seqs[0][:n])
    return EpisodePrompts(ids=ids, prefix=prefix, context=context)


def answer_batch(backbone: Backbone, task: Task, prompts: EpisodePrompts, queries: Sequence[Query], seed: int,
                 *, settings: GenerationSettings | None = None, hooks: Sequence[BatchHooks] = (),
                 context_tokens: int = 0) -> list[Prediction]:
    settings = settings or task.generation_for(queries[0])
    p = prompts.prefix.length if prompts.prefix else 0
    full = [prompts.ids[q.id] for q in queries]
    room = backbone.window - max(len(f) for f in full)
    if room <= 0:
        raise ValueError(f"{task.name}: a prompt of {max(len(f) for f in full)} tokens leaves no room to answer "
                         f"in the {backbone.window}-token window")
    capped = settings.max_new_tokens > room
    if capped:
        # An answer may not run past the backbone's window (e.g. GPQA's 8,192-token budget on an 8k model).
        settings = replace(settings, max_new_tokens=room)
    gens = generate_batch(backbone.model, [f[p:] for f in full], settings, stop_ids=backbone.stop_ids,
                          pad_id=backbone.pad_id, prefix=prompts.prefix,
                          seeds=[task.query_seed(q, seed) for q in queries], hooks=hooks)
    return [Prediction(text=backbone.decode(g.ids).strip(), prompt_tokens=len(f), new_tokens=len(g.ids),
                       context_tokens=context_tokens, info={"stopped": g.stopped, "prefix_tokens": p,
                                                             **({"max_new_tokens_capped_to": room} if capped else {})})
            for f, g in zip(full, gens)]

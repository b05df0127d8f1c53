"""Batched decoding that shares one prefilled prefix across many prompts.

All questions about one episode share the context block, so the context is prefilled
once and its KV cache is copied into each batch; only each question's suffix is
prefilled per batch. Suffixes of unequal length are left-padded *between* the prefix and
the suffix: the 2-D attention mask marks the holes and position ids are derived from the
mask, so every row sees exactly the positions it would see alone.

Sampling uses one ``torch.Generator`` per row, seeded per question, so a sampled answer
does not depend on which other questions share its batch.

Stateful memories (δ-mem) keep per-row state next to the KV cache; they register a
:class:`BatchHooks` so the loop can tell them when rows are expanded or dropped.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch

from harness.kv_cache import reserve
from harness.types import GenerationSettings


class BatchHooks(Protocol):
    def on_expand(self, batch_size: int) -> None:
        """The prefix state (batch 1) is being repeated to ``batch_size`` rows."""

    def on_select(self, rows: torch.Tensor) -> None:
        """Only these row indices stay in the batch from now on."""

    def on_decode(self) -> None:
        """The prompts are prefilled; every later forward call feeds generated tokens."""


@dataclass
class PrefixCache:
    """A prefilled prefix: its KV cache (batch 1) and length in tokens."""

    cache: Any
    length: int
    ids: tuple[int, ...]


@dataclass
class Generated:
    ids: list[int]
    stopped: bool  # True when a stop token ended it, False when the budget did


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    if not seqs:
        return 0
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs[1:]):
            return i
    return n


def _has_sliding_window(model) -> bool:
    cfg = model.config
    if "sliding_attention" in (getattr(cfg, "layer_types", None) or ()):
        return True
    return getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True)


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def prefill_prefix(model, ids: Sequence[int]) -> PrefixCache:
    """Run the shared prefix once and keep its cache."""
    from transformers import DynamicCache

    device = _model_device(model)
    cache = DynamicCache(config=model.config)
    if ids:
        x = torch.tensor([list(ids)], device=device)
        model(input_ids=x, attention_mask=torch.ones_like(x), past_key_values=cache, use_cache=True, logits_to_keep=1)
    return PrefixCache(cache=cache, length=len(ids), ids=tuple(ids))


def _filter_logits(logits: torch.Tensor, s: GenerationSettings) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order HF generate applies them)."""
    logits = logits / s.temperature
    if s.top_k and s.top_k < logits.shape[-1]:
        kth = torch.topk(logits, s.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the best token always stays.
        drop = probs.cumsum(-1) - probs >= s.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def _next_tokens(logits: torch.Tensor, s: GenerationSettings, generators: list[torch.Generator] | None) -> torch.Tensor:
    logits = logits.float()
    if not s.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(_filter_logits(logits, s), dim=-1).cpu()
    return torch.stack([torch.multinomial(probs[i], 1, generator=g)[0] for i, g in enumerate(generators)]).to(logits.device)


@torch.inference_mode()
def generate_batch(model, suffixes: Sequence[Sequence[int]], settings: GenerationSettings, *,
                   stop_ids: set[int], pad_id: int, prefix: PrefixCache | None = None,
                   seeds: Sequence[int] | None = None, hooks: Sequence[BatchHooks] = ()) -> list[Generated]:
    """Decode every suffix after the shared ``prefix``; returns new token ids per row."""
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("every prompt needs at least one token after the shared prefix")
    lengths = {len(s) for s in suffixes}
    if len(lengths) > 1 and _has_sliding_window(model):
        # Padding inside a sliding window would take the place of real tokens, so such
        # models decode each group of equal-length prompts without padding.
        out: list[Generated | None] = [None] * len(suffixes)
        for n in sorted(lengths):
            rows = [i for i, s in enumerate(suffixes) if len(s) == n]
            part = generate_batch(model, [suffixes[i] for i in rows], settings, stop_ids=stop_ids, pad_id=pad_id,
                                  prefix=prefix, seeds=[seeds[i] for i in rows] if seeds is not None else None,
                                  hooks=hooks)
            for i, g in zip(rows, part):
                out[i] = g
        return out
    device = _model_device(model)
    b = len(suffixes)
    width = max(len(s) for s in suffixes)
    p = prefix.length if prefix else 0
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((b, p + width), dtype=torch.long, device=device)
    mask[:, :p] = 1
    for i, s in enumerate(suffixes):
        ids[i, width - len(s):] = torch.tensor(list(s), device=device)
        mask[i, p + width - len(s):] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)

    if prefix is not None:
        cache = reserve(prefix.cache, b, width + settings.max_new_tokens)
    else:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
    for h in hooks:
        h.on_expand(b)

    generators = None
    if settings.do_sample:
        seeds = list(seeds) if seeds is not None else [0] * b
        generators = [torch.Generator().manual_seed(int(sd)) for sd in seeds]

    out = model(input_ids=ids, attention_mask=mask, position_ids=positions[:, p:], past_key_values=cache,
                use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1]
    if prefix is None:
        cache = reserve(cache, b, settings.max_new_tokens)
    for h in hooks:
        h.on_decode()
    rows = list(range(b))  # original index of each row still in the batch
    live = torch.ones(b, dtype=torch.bool, device=device)  # rows that have not stopped yet
    results: list[list[int]] = [[] for _ in range(b)]
    stopped = [False] * b
    last_pos = positions[:, -1]
    stop = torch.tensor(sorted(stop_ids), device=device) if stop_ids else None
    for step in range(settings.max_new_tokens):
        tok = _next_tokens(logits, settings, [generators[i] for i in rows] if generators else None)
        done = torch.isin(tok, stop) if stop is not None else torch.zeros_like(tok, dtype=torch.bool)
        for j, row in enumerate(rows):
            if not live[j]:
                continue
            if done[j]:
                stopped[row] = True
            else:
                results[row].append(int(tok[j]))
        live &= ~done
        if step == settings.max_new_tokens - 1 or not live.any():
            break
        finished = int((~live).sum())
        if 4 * finished >= len(rows):
            # Compacting copies the whole cache, so it waits until a quarter of the rows
            # are done; until then finished rows ride along and their tokens are ignored.
            keep = live.nonzero().flatten()
            cache.batch_select_indices(keep)
            for h in hooks:
                h.on_select(keep)
            rows = [rows[int(j)] for j in keep]
            tok, mask, last_pos, live = tok[keep], mask[keep], last_pos[keep], live[keep]
        tok = torch.where(live, tok, torch.full_like(tok, pad_id))
        mask = torch.cat([mask, torch.ones((len(rows), 1), dtype=mask.dtype, device=device)], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=tok[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
    return [Generated(ids=r, stopped=s) for r, s in zip(results, stopped)]

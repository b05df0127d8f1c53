"""Decoding and teacher-forced training with latent insertions, on KV caches that only grow.

A sequence's reasoner input is its token embeddings with latent blocks spliced in. :class:`Stream` holds the
reasoner's KV cache over that input and the weaver's KV cache over its projection (``to_weaver``), which lags
behind and catches up only when latents are read. Reading latents appends the query block to the weaver's cache,
takes the hidden states there and crops the block off again, so the next read sees the sequence alone, as a
fresh pass over it would. ``reprefill=True`` does what the official code does instead (a fresh reasoner prefill
after every insertion, the weaver over the whole sequence each time): the reference for tests and for the speed
benchmark.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from harness.generation import PrefixCache, _next_tokens
from harness.kv_cache import reserve
from harness.types import GenerationSettings
from methods.memgen.model import MemGen, ends_with_delimiter

# the text a delimiter check decodes: enough tokens for any delimiter to be whole at the end
_TAIL_TOKENS = 8


def _new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def _positions(start: int, n: int, device) -> torch.Tensor:
    return torch.arange(start, start + n, device=device).unsqueeze(0)


def weaver_hidden(mg: MemGen, embeds: torch.Tensor, start: int, cache) -> torch.Tensor:
    """The weaver's last hidden states (after the final norm) over ``embeds`` [1, n, H] at positions from
    ``start``, extending ``cache``. (The decoder's output, not ``hidden_states[-1]``, which transformers 5
    records before the final norm; the official code, on transformers 4, read the normed states.)"""
    decoder = mg.model.get_decoder()
    out = decoder(inputs_embeds=embeds, position_ids=_positions(start, embeds.shape[1], embeds.device),
                  past_key_values=cache, use_cache=True)
    return out.last_hidden_state


def reasoner_logits(mg: MemGen, embeds: torch.Tensor, start: int, cache, keep=1) -> torch.Tensor:
    with mg.reasoner():
        out = mg.model(inputs_embeds=embeds, position_ids=_positions(start, embeds.shape[1], embeds.device),
                       past_key_values=cache, use_cache=cache is not None, logits_to_keep=keep)
    return out.logits


@dataclass
class Stream:
    """One sequence: the reasoner's cache and input length, the weaver's cache and what it has not read yet."""

    mg: MemGen
    reasoner_cache: object
    weaver_cache: object
    length: int
    pending: list[torch.Tensor] = field(default_factory=list)  # reasoner input [1, n, H] the weaver lags behind
    reprefill: bool = False
    history: list[torch.Tensor] = field(default_factory=list)  # reprefill only: the whole reasoner input

    def feed(self, embeds: torch.Tensor) -> torch.Tensor:
        """Append reasoner input; the next-token logits after it."""
        self.pending.append(embeds)
        start, self.length = self.length, self.length + embeds.shape[1]
        if self.reprefill:
            self.history.append(embeds)
            return reasoner_logits(self.mg, torch.cat(self.history, dim=1), 0, None)[:, -1]
        return reasoner_logits(self.mg, embeds, start, self.reasoner_cache)[:, -1]

    def latents(self, kind: str) -> torch.Tensor:
        """Latent embeddings for the reasoner [1, n, H], woven from everything fed so far."""
        mods = self.mg.modules
        queries = mods.queries(kind).unsqueeze(0).to(mods.to_weaver.weight.dtype)
        if self.reprefill:
            seq = torch.cat([mods.to_weaver(torch.cat(self.history, dim=1)), queries], dim=1)
            hidden = weaver_hidden(self.mg, seq, 0, _new_cache(self.mg.model))
        else:
            if self.pending:
                caught = self.weaver_cache.get_seq_length()
                weaver_hidden(self.mg, mods.to_weaver(torch.cat(self.pending, dim=1)), caught, self.weaver_cache)
                self.pending = []
            hidden = weaver_hidden(self.mg, queries, self.length, self.weaver_cache)
            self.weaver_cache.crop(-queries.shape[1])  # the queries are read once, never attended to again
        return mods.to_reasoner(hidden[:, -queries.shape[1]:])


def weave_prefix(mg: MemGen, prefix: PrefixCache | None, ids: Sequence[int]) -> PrefixCache:
    """The weaver's cache over a prompt prefix the reasoner has prefilled (``prefix``), once per episode."""
    cache = _new_cache(mg.model)
    if ids:
        dev = mg.modules.to_weaver.weight.device
        embeds = mg.embed(torch.tensor([list(ids)], device=dev))
        weaver_hidden(mg, mg.modules.to_weaver(embeds), 0, cache)
    return PrefixCache(cache=cache, length=len(ids), ids=tuple(ids))


@dataclass
class Woven:
    ids: list[int]
    stopped: bool
    insertions: int  # latent blocks inserted after delimiters (the prompt's block not counted)
    prompt_block: bool


@torch.inference_mode()
def generate_one(mg: MemGen, tokenizer, suffix: Sequence[int], settings: GenerationSettings, *, stop_ids: set[int],
                 prefix: PrefixCache | None = None, weaver_prefix: PrefixCache | None = None, seed: int = 0,
                 reprefill: bool = False) -> Woven:
    """Decode one prompt (``prefix`` ids + ``suffix``) with latent insertions."""
    cfg = mg.config
    dev = mg.modules.to_weaver.weight.device
    p = prefix.length if prefix else 0
    room = len(suffix) + settings.max_new_tokens + cfg.prompt_latents + cfg.max_inference_aug_num * cfg.inference_latents
    if reprefill:
        stream = Stream(mg, None, None, 0, reprefill=True)
        ids = list(prefix.ids if prefix else ()) + list(suffix)
        logits = stream.feed(mg.embed(torch.tensor([ids], device=dev)))
    else:
        r_cache = reserve(prefix.cache, 1, room) if prefix else _new_cache(mg.model)
        w_cache = reserve(weaver_prefix.cache, 1, room) if weaver_prefix else _new_cache(mg.model)
        if weaver_prefix is not None and weaver_prefix.length != p:
            raise ValueError("the weaver's prefix must cover the reasoner's")
        stream = Stream(mg, r_cache, w_cache, p)
        logits = stream.feed(mg.embed(torch.tensor([list(suffix)], device=dev)))
        if prefix is None:  # caches that append in place from here on, as the bare decoder's do
            stream.reasoner_cache = reserve(stream.reasoner_cache, 1, room)
    prompt_block = cfg.max_prompt_aug_num > 0
    if prompt_block:
        logits = stream.feed(stream.latents("prompt"))
        if not reprefill and weaver_prefix is None:
            stream.weaver_cache = reserve(stream.weaver_cache, 1, room)
    generator = torch.Generator().manual_seed(int(seed)) if settings.do_sample else None
    out: list[int] = []
    inserted = 0
    tail = list((prefix.ids if prefix else ())[-_TAIL_TOKENS:]) + list(suffix)
    for step in range(settings.max_new_tokens):
        tok = int(_next_tokens(logits, settings, [generator] if generator else None)[0])
        if tok in stop_ids:
            return Woven(out, True, inserted, prompt_block)
        out.append(tok)
        if step == settings.max_new_tokens - 1:
            break
        tail = (tail + [tok])[-_TAIL_TOKENS:]
        embed = mg.embed(torch.tensor([[tok]], device=dev))
        if inserted < cfg.max_inference_aug_num and ends_with_delimiter(tokenizer.decode(tail), cfg.delimiters):
            stream.feed(embed)
            logits = stream.feed(stream.latents("inference"))
            inserted += 1
        else:
            logits = stream.feed(embed)
    return Woven(out, False, inserted, prompt_block)


def teacher_forced_logits(mg: MemGen, ids: Sequence[int], points: Sequence[tuple[int, str]]) -> torch.Tensor:
    """Next-token logits [len(ids), V] of the reasoner over ``ids`` with latent blocks inserted before the given
    token indices: row ``i`` predicts token ``i + 1`` (after the latents when a block sits between them), so
    latent positions never enter the loss. Gradients reach the weaver through the latents."""
    dev = mg.modules.to_weaver.weight.device
    embeds = mg.embed(torch.tensor([list(ids)], device=dev))
    weaver_cache = _new_cache(mg.model)
    pieces, origin = [], []  # reasoner input pieces; for each position, the token index it holds (-1: latent)
    cursor = 0
    for index, kind in points:
        pieces.append(embeds[:, cursor:index])
        origin += list(range(cursor, index))
        caught = weaver_cache.get_seq_length()
        new = torch.cat(pieces, dim=1)[:, caught:]
        if new.shape[1]:
            weaver_hidden(mg, mg.modules.to_weaver(new), caught, weaver_cache)
        queries = mg.modules.queries(kind).unsqueeze(0)
        length = len(origin)
        hidden = weaver_hidden(mg, queries, length, weaver_cache)
        weaver_cache.crop(-queries.shape[1])
        pieces.append(mg.modules.to_reasoner(hidden))
        origin += [-1] * queries.shape[1]
        cursor = index
    pieces.append(embeds[:, cursor:])
    origin += list(range(cursor, len(ids)))
    logits = reasoner_logits(mg, torch.cat(pieces, dim=1), 0, None, keep=0)[0]
    # the row that predicts token i+1 is the last position before token i+1's slot
    slot = {tok: pos for pos, tok in enumerate(origin) if tok >= 0}
    rows = [slot[i + 1] - 1 for i in range(len(ids) - 1)]
    return logits[torch.tensor(rows, device=logits.device)]

"""Decoding and teacher-forced training with latent insertions, on KV caches that only grow.

A sequence's reasoner input is its token embeddings with latent blocks spliced in. :class:`Stream` holds the
reasoner's KV cache over that input and the weaver's KV cache over its projection (``to_weaver``), which lags
behind and catches up only when latents are read. Reading latents appends the query block to the weaver's cache,
takes the hidden states there and crops the block off again, so the next read sees the sequence alone, as a
fresh pass over it would. ``reprefill=True`` does what the official code does instead (the reasoner's cache
discarded and everything prefilled again after every insertion, cached decoding in between; the weaver over the
whole sequence at each insertion): the reference for tests and for the speed benchmark.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Sequence

import torch

from harness.generation import PrefixCache, _next_tokens
from harness.kv_cache import ReservedLayer, extend, reserve, rows_copy, write_rows
from harness.types import GenerationSettings
from methods.memgen.model import MemGen, ends_with_delimiter

# the text a delimiter check decodes: enough tokens for any delimiter to be whole at the end
_TAIL_TOKENS = 8
# rows computed together on copies of their caches when a few rows of a batch insert latents (memory: this many
# copies of a row's reasoner and weaver caches, ~0.75 GB each at 8k tokens on SmolLM2-135M in fp32)
ROWS_PER_COPY = 2


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
    stale: bool = True  # reprefill only: the next feed prefills everything into a fresh cache

    def feed(self, embeds: torch.Tensor) -> torch.Tensor:
        """Append reasoner input; the next-token logits after it."""
        self.pending.append(embeds)
        start, self.length = self.length, self.length + embeds.shape[1]
        if self.reprefill:
            self.history.append(embeds)
            if self.stale:  # the prompt, or latents just woven: the official code's fresh prefill of everything
                self.reasoner_cache, self.stale = _new_cache(self.mg.model), False
                return reasoner_logits(self.mg, torch.cat(self.history, dim=1), 0, self.reasoner_cache)[:, -1]
        return reasoner_logits(self.mg, embeds, start, self.reasoner_cache)[:, -1]

    def latents(self, kind: str) -> torch.Tensor:
        """Latent embeddings for the reasoner [1, n, H], woven from everything fed so far."""
        mods = self.mg.modules
        queries = mods.queries(kind).unsqueeze(0).to(mods.to_weaver.weight.dtype)
        if self.reprefill:
            seq = torch.cat([mods.to_weaver(torch.cat(self.history, dim=1)), queries], dim=1)
            hidden = weaver_hidden(self.mg, seq, 0, _new_cache(self.mg.model))
            self.stale = True
        else:
            if self.pending:
                caught = self.weaver_cache.get_seq_length()
                weaver_hidden(self.mg, mods.to_weaver(torch.cat(self.pending, dim=1)), caught, self.weaver_cache)
                self.pending = []
            hidden = weaver_hidden(self.mg, queries, self.length, self.weaver_cache)
            self.weaver_cache.crop(-queries.shape[1])  # the queries are read once, never attended to again
        return mods.to_reasoner(hidden[:, -queries.shape[1]:])


@torch.inference_mode()
def weave_prefix(mg: MemGen, prefix: PrefixCache | None, ids: Sequence[int]) -> PrefixCache:
    """The weaver's cache over a prompt prefix the reasoner has prefilled (``prefix``), once per episode. (Without
    inference mode the weaver's trainable LoRA would record a graph over the whole prefix and keep it alive with
    the cache: 14 GB for an 8k-token LoCoMo context.)"""
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



class _Rows:
    """A batch of sequences on shared KV caches whose columns line up: a row that does not insert latents when
    another does gets masked columns there (holes), so each row attends to exactly its own sequence, at its own
    positions. The weaver lags behind the reasoner as :class:`Stream`'s does."""

    def __init__(self, mg: MemGen, r_cache, w_cache, mask: torch.Tensor, room: int):
        self.mg, self.r_cache, self.w_cache, self.room = mg, r_cache, w_cache, room
        self.mask = mask  # [B, columns]: 1 where the column is part of the row's sequence
        self.lengths = mask.sum(-1)  # positions used per row
        self.woven = mask.shape[1]  # columns the weaver has read
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # (reasoner input, positions) not yet woven

    def feed(self, embeds: torch.Tensor, real: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Append columns ``embeds`` [B, n, H]; ``real`` [B] or [B, n] says for which rows (and columns) they are
        part of the sequence. Returns the last column's logits [B, V]."""
        n = embeds.shape[1]
        real = (real[:, None].expand(-1, n) if real.dim() == 1 else real).to(self.mask.dtype)
        if positions is None:
            positions = self.lengths[:, None] + torch.arange(n, device=embeds.device)
        self.mask = torch.cat([self.mask, real], dim=1)
        self.lengths = self.lengths + real.sum(-1)
        self.pending.append((embeds, positions))
        with self.mg.reasoner():
            out = self.mg.model(inputs_embeds=embeds, attention_mask=self.mask, position_ids=positions,
                                past_key_values=self.r_cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def insert(self, kind: str, rows: torch.Tensor) -> torch.Tensor:
        """Weave a latent block for ``rows`` (indices) and append it to them, holes in the other rows; the
        logits after it [len(rows), V]. When most rows insert, every row is computed on the caches themselves
        (the others' results masked); when few do, only they are, on copies of their caches, at most
        ``ROWS_PER_COPY`` at a time so that a long context's copies stay small."""
        mods, decoder = self.mg.modules, self.mg.model.get_decoder()
        if self.pending:  # the weaver reads every row's new columns (it must some time), holes included
            embeds = torch.cat([e for e, _ in self.pending], dim=1)
            positions = torch.cat([q for _, q in self.pending], dim=1)
            self.woven += embeds.shape[1]
            decoder(inputs_embeds=mods.to_weaver(embeds), attention_mask=self.mask[:, :self.woven],
                    position_ids=positions, past_key_values=self.w_cache, use_cache=True)
            self.pending = []
        b, k = self.mask.shape[0], len(rows)
        queries = mods.queries(kind).unsqueeze(0).to(mods.to_weaver.weight.dtype)
        n = queries.shape[1]
        real = torch.zeros(b, dtype=torch.bool, device=queries.device)
        real[rows] = True
        if 2 * k > b:
            hidden = decoder(inputs_embeds=queries.expand(b, -1, -1),
                             attention_mask=torch.cat([self.mask, self.mask.new_ones((b, n))], 1),
                             position_ids=self.lengths[:, None] + torch.arange(n, device=queries.device),
                             past_key_values=self.w_cache, use_cache=True).last_hidden_state
            self.w_cache.crop(-n)  # read once, never attended to again
            return self.feed(mods.to_reasoner(hidden), real)[rows]
        self.w_cache, self.r_cache = self.in_place(self.w_cache), self.in_place(self.r_cache)
        start = self.mask.shape[1]
        extend(self.r_cache, n)
        latents = queries.new_zeros((b, n, queries.shape[-1]))
        logits = []
        for chunk in rows.split(ROWS_PER_COPY):
            mask = torch.cat([self.mask[chunk], self.mask.new_ones((len(chunk), n))], 1)
            positions = self.lengths[chunk, None] + torch.arange(n, device=queries.device)
            hidden = decoder(inputs_embeds=queries.expand(len(chunk), -1, -1), attention_mask=mask,
                             position_ids=positions, past_key_values=rows_copy(self.w_cache, chunk, n),
                             use_cache=True).last_hidden_state
            latents[chunk] = mods.to_reasoner(hidden)
            part = rows_copy(self.r_cache, chunk, n, upto=start)
            with self.mg.reasoner():
                logits.append(self.mg.model(inputs_embeds=latents[chunk], attention_mask=mask,
                                            position_ids=positions, past_key_values=part, use_cache=True,
                                            logits_to_keep=1).logits[:, -1])
            write_rows(self.r_cache, part, chunk, start)
        self.mask = torch.cat([self.mask, real[:, None].to(self.mask.dtype).expand(-1, n)], dim=1)
        self.pending.append((latents, self.lengths[:, None] + torch.arange(n, device=latents.device)))
        self.lengths = self.lengths + n * real.long()
        return torch.cat(logits)

    def in_place(self, cache):
        """``cache`` as one that appends in place (:func:`reserve`d once; a no-op when it already is)."""
        if all(type(layer) is ReservedLayer for layer in cache.layers):
            return cache
        return reserve(cache, self.mask.shape[0], self.room)

    def select(self, keep: torch.Tensor) -> None:
        self.r_cache.batch_select_indices(keep)
        self.w_cache.batch_select_indices(keep)
        self.mask, self.lengths = self.mask[keep], self.lengths[keep]
        self.pending = [(e[keep], q[keep]) for e, q in self.pending]


_FORCE_GQA = "TRANSFORMERS_SDPA_FORCE_GQA"


@contextlib.contextmanager
def _grouped_kv_under_masks(device: torch.device):
    """On CPU, let sdpa attend to grouped KV heads under a padding mask. transformers does so only without a
    mask; with one (a batch with holes) every multi-token call copies all cached keys and values once per
    query group, per layer, which dominated batched insertions after a long context. torch's CPU kernel takes
    the mask with ``enable_gqa`` and gives the same outputs; CUDA would fall back to its math kernel, so it is
    left alone there."""
    if device.type != "cpu" or os.environ.get(_FORCE_GQA) is not None:
        yield
        return
    os.environ[_FORCE_GQA] = "1"
    try:
        yield
    finally:
        os.environ.pop(_FORCE_GQA, None)


@torch.inference_mode()
def generate_woven_batch(mg: MemGen, tokenizer, suffixes: Sequence[Sequence[int]], settings: GenerationSettings, *,
                         stop_ids: set[int], pad_id: int, prefix: PrefixCache | None = None,
                         weaver_prefix: PrefixCache | None = None, seeds: Sequence[int] | None = None) -> list[Woven]:
    """:func:`generate_one` for several prompts at once on a shared prefix (the same tokens within fp32 noise):
    each row inserts latents at its own delimiters; rows that do not insert at a step get masked columns there.
    Backbones with sliding-window layers decode one prompt at a time (a hole would take a window slot)."""
    from harness.generation import _has_sliding_window

    seeds = list(seeds) if seeds is not None else [0] * len(suffixes)
    if len(suffixes) == 1 or _has_sliding_window(mg.model):
        return [generate_one(mg, tokenizer, s, settings, stop_ids=stop_ids, prefix=prefix,
                             weaver_prefix=weaver_prefix, seed=sd) for s, sd in zip(suffixes, seeds)]
    with _grouped_kv_under_masks(mg.modules.to_weaver.weight.device):
        return _decode_rows(mg, tokenizer, suffixes, settings, stop_ids=stop_ids, pad_id=pad_id, prefix=prefix,
                            weaver_prefix=weaver_prefix, seeds=seeds)


def _decode_rows(mg: MemGen, tokenizer, suffixes, settings: GenerationSettings, *, stop_ids: set[int], pad_id: int,
                 prefix: PrefixCache | None, weaver_prefix: PrefixCache | None, seeds: list[int]) -> list[Woven]:
    if any(len(s) == 0 for s in suffixes):
        raise ValueError("every prompt needs at least one token after the shared prefix")
    p = prefix.length if prefix else 0
    if (weaver_prefix.length if weaver_prefix else 0) != p:
        raise ValueError("the weaver's prefix must cover the reasoner's")
    cfg = mg.config
    dev = mg.modules.to_weaver.weight.device
    b, width = len(suffixes), max(len(s) for s in suffixes)
    ids = torch.full((b, width), pad_id, dtype=torch.long, device=dev)
    real = torch.zeros((b, width), dtype=torch.long, device=dev)
    for i, s in enumerate(suffixes):  # left-padded between the prefix and the suffix, as generate_batch does
        ids[i, width - len(s):] = torch.tensor(list(s), device=dev)
        real[i, width - len(s):] = 1
    room = width + cfg.prompt_latents + settings.max_new_tokens + cfg.max_inference_aug_num * cfg.inference_latents
    rows = _Rows(mg, reserve(prefix.cache, b, room) if prefix else _new_cache(mg.model),
                 reserve(weaver_prefix.cache, b, room) if weaver_prefix else _new_cache(mg.model),
                 torch.ones((b, p), dtype=torch.long, device=dev), room)
    logits = rows.feed(mg.embed(ids), real, positions=p + (real.cumsum(-1) - 1).clamp(min=0))
    rows.r_cache = rows.in_place(rows.r_cache)  # caches that append in place from here on
    prompt_block = cfg.max_prompt_aug_num > 0
    if prompt_block:
        logits = rows.insert("prompt", torch.arange(b, device=dev))
        rows.w_cache = rows.in_place(rows.w_cache)
    generators = [torch.Generator().manual_seed(int(sd)) for sd in seeds] if settings.do_sample else None
    head = list((prefix.ids if prefix else ())[-_TAIL_TOKENS:])
    tails = [(head + list(s))[-_TAIL_TOKENS:] for s in suffixes]
    out: list[list[int]] = [[] for _ in range(b)]
    stopped, inserted = [False] * b, [0] * b
    order = list(range(b))  # original index of each row still in the batch
    live = torch.ones(b, dtype=torch.bool, device=dev)
    for step in range(settings.max_new_tokens):
        toks = _next_tokens(logits, settings, [generators[i] for i in order] if generators else None)
        for j, row in enumerate(order):
            if live[j] and int(toks[j]) in stop_ids:
                stopped[row], live[j] = True, False
            elif live[j]:
                out[row].append(int(toks[j]))
                tails[row] = (tails[row] + [int(toks[j])])[-_TAIL_TOKENS:]
        if step == settings.max_new_tokens - 1 or not live.any():
            break
        if 4 * int((~live).sum()) >= len(order):  # compacting copies the caches: wait for a quarter to finish
            keep = live.nonzero().flatten()
            rows.select(keep)
            order, toks, live = [order[int(j)] for j in keep], toks[keep], live[keep]
        insert = torch.tensor([bool(live[j]) and inserted[row] < cfg.max_inference_aug_num and
                               ends_with_delimiter(tokenizer.decode(tails[row]), cfg.delimiters)
                               for j, row in enumerate(order)], device=dev)
        for j in insert.nonzero().flatten().tolist():
            inserted[order[j]] += 1
        logits = rows.feed(mg.embed(torch.where(live, toks, torch.full_like(toks, pad_id))[:, None]), live)
        if insert.any():
            which = insert.nonzero().flatten()
            logits[which] = rows.insert("inference", which)
    return [Woven(o, s, n, prompt_block) for o, s, n in zip(out, stopped, inserted)]

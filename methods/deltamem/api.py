"""Helpers for using δ-mem outside the harness: segment ids from a chat, write a history, ask a question.

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from methods.deltamem import DeltaMem
    from methods.deltamem.api import ask, write_history

    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    dm = DeltaMem.from_adapter(model, "adapter_dir")        # or attach(model, DeltaMemConfig.tsw())
    write_history(dm, tok, [{"role": "user", "content": "My cat is called Pixel."}, ...])
    print(ask(dm, tok, [{"role": "user", "content": "What is my cat called?"}]))   # history removed
"""
from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import torch

from methods.deltamem.surgery import DeltaMem

Message = Mapping[str, str]

# deltamem.md §4.3: a blank line, or . ! ? ; : followed by optional closing quotes/brackets and whitespace.
_SENTENCE_END = re.compile(r"\n\s*\n|[.!?;:][\"'”’)\]]*\s+")


def chat_segments(tokenizer: Any, messages: Sequence[Message], *, granularity: str = "message_mean",
                  chat_kwargs: Mapping[str, Any] | None = None) -> tuple[list[int], list[int]]:
    """Token ids of ``messages`` rendered with the chat template, and one SSW segment id per token.

    ``message_mean``: each non-system message is one segment (0, 1, 2, … in order) covering every token the
    template adds for it; system messages and template text outside any message are -1 (never written).
    ``sentence_mean``: the content of each non-system message is split into sentences (one id each,
    numbered across the conversation); template tokens are -1. ``token``: all ids are -1 (unused by TSW).
    """
    from harness.training.episodes import ChatRenderer

    renderer = ChatRenderer(tokenizer, chat_kwargs)
    ids, owner = renderer.encode(messages)
    if granularity == "token":
        return ids, [-1] * len(ids)
    numbering, k = [], 0
    for m in messages:
        numbering.append(-1 if m["role"] == "system" else k)
        k += m["role"] != "system"
    if granularity == "message_mean":
        return ids, [numbering[o] if o >= 0 else -1 for o in owner]
    if granularity != "sentence_mean":
        raise ValueError(f"unknown write granularity {granularity!r}")
    full = renderer.text(messages)
    enc = tokenizer(full, add_special_tokens=not renderer.has_template, return_offsets_mapping=True)
    if list(enc["input_ids"]) != ids:
        raise ValueError("sentence ids need a tokenizer whose offsets re-tokenise the rendered chat identically")
    spans: list[tuple[int, int, int]] = []  # (start, end, sentence id) in characters of `full`
    sid, cursor = 0, 0
    for j, m in enumerate(messages):
        end = len(renderer.text(messages[: j + 1]))
        start = full.find(m["content"], cursor, end) if m["content"] else -1
        cursor = end
        if numbering[j] < 0 or start < 0:
            continue
        content = m["content"]
        pos = 0
        for match in _SENTENCE_END.finditer(content):
            if match.end() > pos:
                spans.append((start + pos, start + match.end(), sid))
                sid += 1
                pos = match.end()
        if pos < len(content):
            spans.append((start + pos, start + len(content), sid))
            sid += 1
    seg = []
    for a, b in enc["offset_mapping"]:
        seg.append(next((s for lo, hi, s in spans if lo <= a < hi), -1) if b > a else -1)
    return ids, seg


@torch.no_grad()
def write_tokens(dm: DeltaMem, ids: Sequence[int], segment_ids: Sequence[int] | None = None, *,
                 chunk_tokens: int | None = None) -> dict[str, Any]:
    """Write ``ids`` (batch 1) into the memory, in chunks of at most ``chunk_tokens`` tokens.

    Chunks share no KV cache — each chunk attends only to itself, so histories longer than the backbone's
    window can be written — and the state carries across chunks. SSW writes one segment mean per id and
    chunk (a message cut by a chunk boundary is written as two means).
    """
    model = dm.model
    device = next(model.parameters()).device
    n = len(ids)
    step = chunk_tokens or n or 1
    chunks = 0
    with dm.writes(True):
        for lo in range(0, n, step):
            x = torch.tensor([list(ids[lo:lo + step])], device=device)
            if segment_ids is not None and dm.config.write_granularity != "token":
                dm.set_segment_ids(torch.tensor([list(segment_ids[lo:lo + step])], device=device))
            model(input_ids=x, attention_mask=torch.ones_like(x), use_cache=False, logits_to_keep=1)
            chunks += 1
    return {"tokens_written": n, "chunks": chunks, "state_bytes": dm.state.nbytes}


def write_history(dm: DeltaMem, tokenizer: Any, messages: Sequence[Message], *, chunk_tokens: int | None = None,
                  chat_kwargs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Render ``messages`` with the chat template and write them (SSW: one segment per message)."""
    ids, seg = chat_segments(tokenizer, messages, granularity=dm.config.write_granularity, chat_kwargs=chat_kwargs)
    return write_tokens(dm, ids, seg, chunk_tokens=chunk_tokens)


@torch.no_grad()
def ask(dm: DeltaMem, tokenizer: Any, messages: Sequence[Message], *, max_new_tokens: int = 64,
        write: bool = False, chat_kwargs: Mapping[str, Any] | None = None, **generate_kwargs: Any) -> str:
    """Greedy answer to ``messages`` from the current memory; with ``write=False`` (default) the memory is
    read only and stays bit-identical."""
    model = dm.model
    device = next(model.parameters()).device
    enc = tokenizer.apply_chat_template(list(map(dict, messages)), add_generation_prompt=True, return_dict=True,
                                        return_tensors="pt", **dict(chat_kwargs or {}))
    x = enc["input_ids"].to(device)
    with dm.writes(write):
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=max_new_tokens,
                             do_sample=False, **generate_kwargs)
    return tokenizer.decode(out[0, x.shape[1]:], skip_special_tokens=True)

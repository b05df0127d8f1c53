"""Helpers shared by the textual-memory baselines (BM25 RAG, LLMLingua, MemoryBank).

These methods put a different context block in front of each question (retrieved chunks,
recalled memories) or one compressed block for the whole episode. Prompts still come
from the task (``task.prompt_messages``), so every method asks the same question.
"""
from __future__ import annotations

import contextlib
import os
import random
from typing import Any, Iterator, Mapping, Sequence

import torch

from harness.backbone import Backbone
from harness.generation import common_prefix_len, prefill_prefix
from harness.types import ContextUnit, Prediction, Query
from methods.prompting import EpisodePrompts, answer_batch, context_budget
from tasks.base import Task


def unit_memory_text(unit: ContextUnit, date_template: str = "[{date}] {text}") -> str:
    """A unit as a stand-alone memory: its text with its date folded in when it has one
    and the task has not already put it there."""
    text = unit.text.strip()
    if unit.date and unit.date not in text:
        return date_template.format(date=unit.date, text=text)
    return text


def budget_for(backbone: Backbone, task: Task, queries: Sequence[Query]) -> int:
    """Tokens left for a context block: window minus answer reserve and question prompt."""
    return context_budget(backbone, task, queries)


def fit_to_budget(texts: Sequence[str], budget: int, count_tokens, *, sep_tokens: int = 2) -> int:
    """How many of ``texts``, taken in order, fit in ``budget`` tokens (each charged
    ``sep_tokens`` for its join); 0 when even the first does not fit."""
    used, n = 0, 0
    for t in texts:
        c = count_tokens(t) + sep_tokens
        if used + c > budget:
            break
        used += c
        n += 1
    return n


def truncate_tokens(backbone: Backbone, text: str, max_tokens: int, *, keep: str = "head") -> tuple[str, bool]:
    """Cut ``text`` to at most ``max_tokens`` backbone tokens."""
    ids = backbone.encode(text)
    if len(ids) <= max_tokens:
        return text, False
    ids = ids[:max_tokens] if keep == "head" else ids[len(ids) - max_tokens:]
    return backbone.decode(ids), True


def answer_with_contexts(backbone: Backbone, task: Task, queries: Sequence[Query],
                         contexts: Mapping[str, str | None], seed: int, *,
                         infos: Mapping[str, dict[str, Any]] | None = None,
                         reuse_prefix: bool = True) -> list[Prediction]:
    """Answer each query with its own context block (batched decoding, shared prefix
    prefilled once when the prompts of the batch begin alike)."""
    ids = {q.id: backbone.chat_ids(task.prompt_messages(q, contexts[q.id])) for q in queries}
    prefix = None
    if reuse_prefix and len(queries) > 1:
        seqs = [ids[q.id] for q in queries]
        n = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1)
        if n > 0:
            prefix = prefill_prefix(backbone.model, seqs[0][:n])
    prompts = EpisodePrompts(ids=ids, prefix=prefix, context=None)
    preds = answer_batch(backbone, task, prompts, queries, seed)
    for q, p in zip(queries, preds):
        ctx = contexts[q.id]
        p.context_tokens = backbone.count_tokens(ctx) if ctx else 0
        if infos and q.id in infos:
            p.info.update(infos[q.id])
    return preds


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restore Python, NumPy and torch RNG state (and cudnn flags, PYTHONHASHSEED) on exit.

    llmlingua reseeds everything globally (``seed_everything(42)``) when it builds an
    LLMLingua-2 compressor; running it inside this block keeps the harness's own random
    streams exactly where they were.
    """
    import numpy as np

    py_state = random.getstate()
    np_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    hashseed = os.environ.get("PYTHONHASHSEED")
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        if hashseed is None:
            os.environ.pop("PYTHONHASHSEED", None)
        else:
            os.environ["PYTHONHASHSEED"] = hashseed
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return value


class DiskCache:
    """JSON results keyed by a hash of what produced them (model, prompt/options, text).

    Files live under ``cache_dir`` (default: the harness cache, ``<namespace>/``), one per
    key, written atomically, so concurrent runs and reruns share finished work.
    """

    def __init__(self, cache_dir: str | os.PathLike | None, *, namespace: str, enabled: bool = True):
        from pathlib import Path

        from harness.embedded import cache_root

        self.enabled = enabled
        self.root = Path(cache_dir).expanduser() if cache_dir else cache_root() / namespace

    @staticmethod
    def key(payload: Any) -> str:
        import hashlib
        import json

        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _path(self, key: str):
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Any | None:
        import json

        if not self.enabled:
            return None
        path = self._path(key)
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, value: Any) -> None:
        import json

        if not self.enabled:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(value, ensure_ascii=False))
        os.replace(tmp, path)


def model_fingerprint(backbone: Backbone) -> str:
    """A digest of every parameter and buffer (name, shape, dtype, whole-tensor sums, a strided sample)
    plus the backbone's name and provenance, so caches never mix two models that share a name."""
    import hashlib
    import itertools

    h = hashlib.sha256()
    h.update(repr((backbone.name, sorted((k, str(v)) for k, v in backbone.source.items()))).encode())
    model = backbone.model
    with torch.no_grad():
        for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
            h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
            h.update(_tensor_digest(t))
    return h.hexdigest()[:20]


def _tensor_digest(t: torch.Tensor) -> bytes:
    """Sum and sum of squares of the tensor's raw 16-bit words (8-bit for 1-byte dtypes), in int64, and up
    to 4096 strided values. Integer sums are exact, so unlike float sums the digest does not depend on the
    device, the thread count or the reduction order; 16-bit words cannot overflow int64 below 2**33 values.
    The reductions run on the tensor's device in bounded chunks; only the small results move to the CPU."""
    flat = t.detach().reshape(-1).contiguous()
    words = flat.view(torch.int16 if flat.element_size() % 2 == 0 else torch.int8)
    sums = torch.zeros(2, dtype=torch.int64, device=flat.device)
    size = 1 << 18 if flat.device.type == "cpu" else 1 << 24  # cache-sized on CPU, few launches elsewhere
    for chunk in words.split(size):
        wide = chunk.long()
        sums[0] += wide.sum()
        sums[1] += (wide * wide).sum()
    sample = flat[:: max(1, flat.numel() // 4096)][:4096].contiguous().view(words.dtype)
    return sums.cpu().numpy().tobytes() + sample.cpu().numpy().tobytes()

"""MLP Memory pre-training: ``python -m harness.train method=mlp_memory train_data=mix [method.pretrain.*=...]``.

The reference pipeline (Binn0/MLPMemory: ``saveEmbedMulti.py``, ``build_index.py``, ``saveKNNMulti.py``,
``train_mlpmem_offline.py``) at a reduced, CPU-sized scale, in five resumable stages under ``out_dir``:

1. **datastore** (``datastore/``): the frozen backbone reads the corpus; keys = the hidden state entering the last
   layer's MLP (the hook the method reads at decoding), values = the next token, plus the backbone's own
   log-probability of that token. Memory-mapped ``.npy`` shards (keys fp16), each written whole or not at all.
2. **held-out cache** (``heldout/``): the same for held-out documents (never in the datastore), for the evidence.
3. **index** (``index/``): FAISS over the keys: exact ``IndexFlatL2`` up to ``index.exact_max`` keys (``auto``), or
   IVF-Flat / IVF-PQ with the settings given; type and parameters recorded.
4. **kNN targets** (``knn/``): for every datastore position its ``k`` nearest keys *excluding itself* (search k+1,
   drop the query's own id), their next tokens and squared L2 distances; ``p_kNN = softmax(−d/T)`` over them.
   ``temperature: auto`` picks T on the datastore alone (leave-one-out CE of the kNN-LM mixture at λ 0.25 on
   ``temperature_probe`` evenly spaced positions, over ``temperature_grid``). Resumable per search batch.
5. **training** (checkpoints, ``train_log.jsonl``, ``loss_curve.png``): offline mode (cached keys, as
   ``train_mlpmem_offline.py``), loss ``α·KL(p_kNN ‖ p_MLP) + (1 − α)·CE(next token)``, AdamW, linear warm-up and
   decay; checkpoints as the episode trainer's (``checkpoints/step-N/`` = weights + optimizer + scheduler + data
   position + RNG, written atomically, the last ``run.keep_checkpoints`` kept), ``resume=true`` continues exactly.

Then the artefact (``mlp_memory.safetensors`` in ``storage_dtype`` + ``mlp_memory.json``) is written to ``out_dir``
and evaluated *as stored* on the held-out cache: next-token CE of the backbone alone vs the mixture (λ 0.25 and
0.5) with 95 % intervals that resample documents, the MLP alone, and the kNN-LM teacher for reference; all of it
goes into ``training.json`` and the artefact's JSON.

Corpus: the documents of the δ-mem training data (``train_data``: its sources' conversations, one document per
group, rendered with the backbone's chat template), the held-out split of ``train_data`` (by document, as δ-mem
training) kept out of the datastore. The sources refuse benchmark data (``refuse_benchmark_data``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness.errors import ConfigError, HarnessError

DATASTORE, HELDOUT, INDEX, KNN = "datastore", "heldout", "index", "knn"
STAGE_FILE = "stage.json"
INDEX_TYPES = ("auto", "flat", "ivf_flat", "ivf_pq")
SCHEDULES = ("linear", "cosine", "constant")
T_SELECT_LAMBDA = 0.25  # the kNN-LM mixture weight the auto temperature is chosen under (the method's default λ)


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class IndexSettings:
    type: str = "auto"            # auto: flat (exact) up to exact_max keys, ivf_flat above
    exact_max: int = 500_000
    nlist: int = 1024             # IVF cells
    nprobe: int = 32              # cells searched per query
    pq_m: int = 64                # IVF-PQ: sub-quantizers (must divide the width)
    pq_bits: int = 8
    train_points: int = 65_536    # keys the IVF quantizer is trained on (evenly spaced)

    def resolved(self, n: int) -> str:
        if self.type != "auto":
            return self.type
        return "flat" if n <= self.exact_max else "ivf_flat"


@dataclass(frozen=True)
class PretrainSettings:
    """What an MLP Memory build computes (all of it is part of each stage's identity)."""

    datastore_tokens: int = 300_000    # (key, next token) pairs in the datastore
    window_tokens: int = 2048          # tokens per backbone forward (a longer document is read in windows)
    document_tokens: int | None = 4096  # tokens kept per document (its beginning); null: all
    shard_tokens: int = 32_768
    index: IndexSettings = field(default_factory=IndexSettings)
    k: int = 128
    temperature: float | str = "auto"
    temperature_grid: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    temperature_probe: int = 8192
    search_batch: int = 1024
    blocks: int | None = 6             # null: the backbone's depth (the reference's full size)
    head: str = "frozen_backbone"      # frozen_backbone (not stored) | trained (untied, the reference)
    storage_dtype: str = "fp16"
    alpha: float = 0.5                 # loss = alpha·KL(p_kNN‖p_MLP) + (1 − alpha)·CE
    epochs: float = 3.0
    max_steps: int | None = None       # overrides epochs
    batch_tokens: int = 512
    lr: float = 5.0e-4
    warmup_ratio: float = 0.05
    schedule: str = "linear"
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1.0e-8
    max_grad_norm: float = 1.0
    eval_documents: int = 48           # held-out documents of the evidence
    eval_document_tokens: int = 1024
    eval_lambdas: tuple[float, ...] = (0.25, 0.5)

    def __post_init__(self) -> None:
        def positive_int(key: str, value: Any, *, allow_none: bool = False, minimum: int = 1) -> None:
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"method mlp_memory: pretrain.{key} must be an integer >= {minimum}"
                                  f"{' or null' if allow_none else ''}, got {value!r}")

        positive_int("datastore_tokens", self.datastore_tokens, minimum=2)
        positive_int("window_tokens", self.window_tokens, minimum=2)
        positive_int("document_tokens", self.document_tokens, allow_none=True, minimum=2)
        positive_int("shard_tokens", self.shard_tokens)
        positive_int("k", self.k)
        positive_int("temperature_probe", self.temperature_probe)
        positive_int("search_batch", self.search_batch)
        positive_int("blocks", self.blocks, allow_none=True, minimum=0)
        positive_int("max_steps", self.max_steps, allow_none=True)
        positive_int("batch_tokens", self.batch_tokens)
        positive_int("eval_documents", self.eval_documents, minimum=0)
        positive_int("eval_document_tokens", self.eval_document_tokens, minimum=2)
        if self.k >= self.datastore_tokens:
            raise ConfigError(f"method mlp_memory: pretrain.k={self.k} needs a datastore of more than k tokens "
                              f"(datastore_tokens={self.datastore_tokens})")
        ix = self.index
        if ix.type not in INDEX_TYPES:
            raise ConfigError(f"method mlp_memory: pretrain.index.type must be one of {INDEX_TYPES}, got {ix.type!r}")
        for key in ("exact_max", "nlist", "nprobe", "pq_m", "pq_bits", "train_points"):
            positive_int(f"index.{key}", getattr(ix, key))
        if ix.nprobe > ix.nlist:
            raise ConfigError(f"method mlp_memory: pretrain.index.nprobe={ix.nprobe} exceeds nlist={ix.nlist}")
        if isinstance(self.temperature, str):
            if self.temperature != "auto":
                raise ConfigError(f"method mlp_memory: pretrain.temperature must be a number > 0 or auto, "
                                  f"got {self.temperature!r}")
        elif isinstance(self.temperature, bool) or not self.temperature > 0:
            raise ConfigError(f"method mlp_memory: pretrain.temperature must be > 0 or auto, got {self.temperature!r}")
        if not self.temperature_grid or any(not t > 0 for t in self.temperature_grid):
            raise ConfigError(f"method mlp_memory: pretrain.temperature_grid must be positive numbers, "
                              f"got {list(self.temperature_grid)}")
        if self.head not in ("frozen_backbone", "trained"):
            raise ConfigError(f"method mlp_memory: pretrain.head must be frozen_backbone or trained, got {self.head!r}")
        if self.storage_dtype not in ("fp16", "bf16", "fp32"):
            raise ConfigError(f"method mlp_memory: pretrain.storage_dtype must be fp16, bf16 or fp32, "
                              f"got {self.storage_dtype!r}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"method mlp_memory: pretrain.alpha must be in [0, 1], got {self.alpha}")
        if not self.epochs > 0:
            raise ConfigError(f"method mlp_memory: pretrain.epochs must be > 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"method mlp_memory: pretrain.lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"method mlp_memory: pretrain.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"method mlp_memory: pretrain.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"method mlp_memory: pretrain.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if any(not 0.0 <= x <= 1.0 for x in self.eval_lambdas):
            raise ConfigError(f"method mlp_memory: pretrain.eval_lambdas must be in [0, 1], got {list(self.eval_lambdas)}")

    @classmethod
    def from_mapping(cls, node: Mapping[str, Any]) -> "PretrainSettings":
        node = dict(node or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(node) - known)
        if unknown:
            raise ConfigError(f"method mlp_memory: unknown pretrain keys {unknown}; known: {sorted(known)}")
        index = dict(node.pop("index", None) or {})
        iknown = {f.name for f in dataclasses.fields(IndexSettings)}
        if set(index) - iknown:
            raise ConfigError(f"method mlp_memory: unknown pretrain.index keys {sorted(set(index) - iknown)}; "
                              f"known: {sorted(iknown)}")
        for key in ("temperature_grid", "eval_lambdas", "adam_betas"):
            if key in node:
                node[key] = tuple(float(x) for x in node[key])
        for key in ("alpha", "epochs", "lr", "warmup_ratio", "weight_decay", "adam_eps", "max_grad_norm"):
            if key in node and isinstance(node[key], int) and not isinstance(node[key], bool):
                node[key] = float(node[key])
        if isinstance(node.get("temperature"), int) and not isinstance(node.get("temperature"), bool):
            node["temperature"] = float(node["temperature"])
        return cls(index=IndexSettings(**index), **node)

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("temperature_grid", "eval_lambdas", "adam_betas"):
            out[key] = list(out[key])
        return out

    def total_steps(self, n: int) -> int:
        if self.max_steps is not None:
            return int(self.max_steps)
        return max(1, math.ceil(n * self.epochs / self.batch_tokens))


# ------------------------------------------------------------------------------------------ corpus
@dataclass(frozen=True)
class Document:
    id: str          # "<source>/<group>"
    source: str
    group: str
    messages: tuple


def _merge(conversations: Sequence[Any]) -> tuple:
    """One document from a group's conversations: the first in full, then of each other one what differs from the
    first, from the last user turn before the difference on (so a repeated question stays with its new answer)."""

    def tail_key(msgs: Sequence[Mapping[str, str]]) -> tuple:
        return tuple((m["role"], m["content"]) for m in msgs)

    first = [dict(m) for m in conversations[0].messages]
    out = list(first)
    last_user = max((i for i, m in enumerate(first) if m["role"] == "user"), default=0)
    seen = {tail_key(first[last_user:])}
    for conv in conversations[1:]:
        msgs = [dict(m) for m in conv.messages]
        common = 0
        while common < min(len(msgs), len(first)) and msgs[common] == first[common]:
            common += 1
        start = min(common, len(msgs) - 1)
        while start > 0 and msgs[start]["role"] != "user":
            start -= 1
        key = tail_key(msgs[start:])
        if msgs[start:] and key not in seen:
            seen.add(key)
            out.extend(msgs[start:])
    return tuple(out)


def corpus_documents(sources: Sequence[Any], *, heldout_fraction: float, split_seed: int,
                     seed: int) -> tuple[dict[str, list[Document]], dict[str, list[Document]]]:
    """``(train, heldout)`` documents per source, each list in a fixed pseudo-random order. The held-out groups are
    those of δ-mem training on the same ``train_data`` (``harness.training.data.heldout_groups``)."""
    from harness.training.data import heldout_groups
    from harness.training.sources import stable_hash

    train: dict[str, list[Document]] = {}
    held: dict[str, list[Document]] = {}
    for src in sources:
        groups: dict[str, list[Any]] = {}
        for conv in src.conversations():
            groups.setdefault(str(conv.group), []).append(conv)
        if not groups:
            raise ConfigError(f"train_data source {src.name!r} produced no conversation")
        out = heldout_groups(groups, fraction=heldout_fraction, seed=split_seed, source=src.name)
        docs = [Document(id=f"{src.name}/{g}", source=src.name, group=g, messages=_merge(convs))
                for g, convs in groups.items()]
        docs.sort(key=lambda d: stable_hash("mlp_memory", seed, d.id))
        train[src.name] = [d for d in docs if d.group not in out]
        held[src.name] = [d for d in docs if d.group in out]
    return train, held


@dataclass(frozen=True)
class Piece:
    """One backbone forward: a window of a document's tokens."""

    doc: str
    source: str
    window: int
    ids: tuple[int, ...]

    @property
    def positions(self) -> int:
        return len(self.ids) - 1


def select_pieces(docs: Mapping[str, Sequence[Document]], tokenize: Callable[[Document], list[int]], *,
                  budget: int, window: int, doc_cap: int | None, max_docs: int | None = None) -> list[Piece]:
    """Windows of documents until ``budget`` (key, value) positions, balanced by tokens across sources: the next
    window always comes from the source with the fewest positions so far (ties: source name). The last window is
    cut so that the total is exactly ``budget`` (when the corpus has that many)."""
    queues = {name: list(ds) for name, ds in docs.items() if ds}
    pending: dict[str, list[Piece]] = {name: [] for name in queues}
    taken = {name: 0 for name in queues}
    used_docs: dict[str, int] = {name: 0 for name in queues}
    pieces: list[Piece] = []
    total, n_docs = 0, 0
    while total < budget and (queues or any(pending.values())):
        live = [n for n in taken if pending.get(n) or queues.get(n)]
        if not live:
            break
        name = min(live, key=lambda n: (taken[n], n))
        if not pending[name]:
            if max_docs is not None and n_docs >= max_docs:
                queues.pop(name, None)
                continue
            doc = queues[name].pop(0)
            if not queues[name]:
                queues.pop(name)
            ids = tokenize(doc)
            if doc_cap is not None:
                ids = ids[:doc_cap]
            if len(ids) < 2:
                continue
            n_docs += 1
            used_docs[name] += 1
            for w, start in enumerate(range(0, len(ids) - 1, window)):
                chunk = ids[start:start + window]
                if len(chunk) >= 2:
                    pending[name].append(Piece(doc=doc.id, source=doc.source, window=w, ids=tuple(chunk)))
            if not pending[name]:
                continue
        piece = pending[name].pop(0)
        room = budget - total
        if piece.positions > room:
            piece = dataclasses.replace(piece, ids=piece.ids[:room + 1])
        pieces.append(piece)
        taken[name] += piece.positions
        total += piece.positions
    return pieces


def _pieces_digest(pieces: Sequence[Piece]) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in pieces:
        h.update(f"{p.doc}\x1f{p.window}\x1f".encode())
        h.update(np.asarray(p.ids, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------------------ helpers
def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _stage_open(folder: Path, name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The stage's state file, created for ``config``; refused when the folder holds a stage built otherwise."""
    from harness.training.trainer import _config_diff

    folder.mkdir(parents=True, exist_ok=True)
    state = _read_json(folder / STAGE_FILE)
    if state is not None:
        diff = _config_diff(state.get("config"), config)
        if diff:
            raise HarnessError(f"{folder}: the {name} stage there was built with other settings ({'; '.join(diff[:4])}); "
                               "use another out_dir, or delete that folder to rebuild it")
        return state
    state = {"stage": name, "config": config, "complete": False, "seconds": 0.0}
    _atomic_json(folder / STAGE_FILE, state)
    return state


def _stage_save(folder: Path, state: dict[str, Any]) -> None:
    _atomic_json(folder / STAGE_FILE, state)


def _log(msg: str) -> None:
    print(f"[mlp_memory] {msg}", file=sys.stderr, flush=True)


class _Clock:
    """The invocation's wall-clock budget (``run.time_limit_min``)."""

    def __init__(self, minutes: float | None) -> None:
        self.start = time.time()
        self.minutes = minutes

    def up(self) -> bool:
        return bool(self.minutes) and time.time() - self.start > 60 * float(self.minutes)


class Paused(Exception):
    def __init__(self, stage: str, detail: str) -> None:
        super().__init__(detail)
        self.stage, self.detail = stage, detail


# ------------------------------------------------------------------------------------------ backbone reads
@torch.inference_mode()
def read_piece(model: Any, capture: Any, ids: Sequence[int], *, chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """``(keys [n, d] fp32, log p_LM(next token) [n] fp32)`` for the n = len(ids) − 1 positions of one window."""
    device = next(model.parameters()).device
    x = torch.tensor([list(ids)], device=device)
    hidden = model.base_model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0, :-1]
    keys = capture.take()[0, :-1].float()
    targets = x[0, 1:]
    head = model.get_output_embeddings()
    cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    out = []
    for s in range(0, hidden.shape[0], chunk):
        logits = head(hidden[s:s + chunk]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        out.append(torch.log_softmax(logits, -1).gather(1, targets[s:s + chunk, None])[:, 0])
    return keys.cpu().numpy(), torch.cat(out).cpu().numpy()


def build_reads(folder: Path, name: str, config: dict[str, Any], pieces: Sequence[Piece], model: Any, *,
                shard_tokens: int, controls: Any, clock: _Clock) -> dict[str, Any]:
    """Stages 1 and 2: the backbone's keys, values and log-probabilities for ``pieces``, in shards."""
    from tqdm import tqdm

    from methods.mlp_memory.model import HiddenCapture

    state = _stage_open(folder, name, config)
    if state["complete"]:
        _log(f"{name}: complete ({state['positions']:,} positions in {len(state['shards'])} shards, "
             f"{state['seconds']:.0f} s), reused")
        return state
    if "shards" not in state:  # the plan: consecutive pieces per shard
        shards, current, count = [], [], 0
        for i, p in enumerate(pieces):
            current.append(i)
            count += p.positions
            if count >= shard_tokens:
                shards.append({"pieces": [current[0], current[-1] + 1], "positions": count})
                current, count = [], 0
        if current:
            shards.append({"pieces": [current[0], current[-1] + 1], "positions": count})
        offset = 0
        for s in shards:
            s["offset"] = offset
            offset += s["positions"]
        state.update(shards=shards, positions=offset, pieces=[{"doc": p.doc, "source": p.source, "window": p.window,
                                                                "tokens": len(p.ids)} for p in pieces])
        _stage_save(folder, state)
    width = int(model.config.get_text_config().hidden_size if hasattr(model.config, "get_text_config")
                else model.config.hidden_size)
    done = [i for i, s in enumerate(state["shards"]) if (folder / f"shard-{i:05d}.done").is_file()]
    _log(f"{name}: {state['positions']:,} positions from {len(pieces)} windows in {len(state['shards'])} shards"
         + (f"; {len(done)} shards already written, continuing" if done else ""))
    capture = HiddenCapture(model)
    bar = tqdm(total=state["positions"], initial=sum(state["shards"][i]["positions"] for i in done), unit="tok",
               desc=f"mlp_memory {name}", disable=not controls.progress, dynamic_ncols=True, file=sys.stderr)
    try:
        for i, shard in enumerate(state["shards"]):
            if (folder / f"shard-{i:05d}.done").is_file():
                continue
            t0 = time.perf_counter()
            n = shard["positions"]
            keys = np.lib.format.open_memmap(folder / f"shard-{i:05d}.keys.tmp.npy", mode="w+", dtype=np.float16,
                                             shape=(n, width))
            vals = np.empty(n, dtype=np.int32)
            lmlp = np.empty(n, dtype=np.float32)
            doc_index = np.empty(n, dtype=np.int32)
            at = 0
            a, b = shard["pieces"]
            for j in range(a, b):
                piece = pieces[j]
                k, lp = read_piece(model, capture, piece.ids)
                if not np.isfinite(k).all() or np.abs(k).max() > 6.0e4:
                    raise HarnessError(f"{name}: hidden states of {piece.doc} overflow fp16 storage")
                m = piece.positions
                keys[at:at + m] = k.astype(np.float16)
                vals[at:at + m] = np.asarray(piece.ids[1:], dtype=np.int32)
                lmlp[at:at + m] = lp
                doc_index[at:at + m] = j
                at += m
                bar.update(m)
            keys.flush()
            del keys
            os.replace(folder / f"shard-{i:05d}.keys.tmp.npy", folder / f"shard-{i:05d}.keys.npy")
            np.save(folder / f"shard-{i:05d}.vals.npy", vals)
            np.save(folder / f"shard-{i:05d}.lmlogp.npy", lmlp)
            np.save(folder / f"shard-{i:05d}.piece.npy", doc_index)
            (folder / f"shard-{i:05d}.done").write_text("ok\n")  # a shard is complete or absent
            state["seconds"] = float(state["seconds"]) + time.perf_counter() - t0
            _stage_save(folder, state)
            if clock.up():
                raise Paused(name, f"time_limit_min={controls.time_limit_min} after shard {i + 1}/{len(state['shards'])}")
    finally:
        bar.close()
        capture.remove()
    state["complete"] = True
    _stage_save(folder, state)
    _log(f"{name}: complete, {state['positions']:,} positions, {state['seconds']:.0f} s")
    return state


class Reads:
    """The arrays of a complete reads stage, concatenated over shards (keys memory-mapped)."""

    def __init__(self, folder: Path, state: Mapping[str, Any]) -> None:
        n = len(state["shards"])
        self.keys_parts = [np.load(folder / f"shard-{i:05d}.keys.npy", mmap_mode="r") for i in range(n)]
        self.vals = np.concatenate([np.load(folder / f"shard-{i:05d}.vals.npy") for i in range(n)])
        self.lm_logp = np.concatenate([np.load(folder / f"shard-{i:05d}.lmlogp.npy") for i in range(n)])
        self.piece = np.concatenate([np.load(folder / f"shard-{i:05d}.piece.npy") for i in range(n)])
        self.docs = [p["doc"] for p in state["pieces"]]
        self.n = int(self.vals.shape[0])
        self.width = int(self.keys_parts[0].shape[1]) if n else 0
        self._offsets = np.cumsum([0] + [p.shape[0] for p in self.keys_parts])

    def keys(self, dtype=np.float32) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate(self.keys_parts).astype(dtype, copy=False))

    def doc_ids(self) -> list[str]:
        return [self.docs[i] for i in self.piece]


# ------------------------------------------------------------------------------------------ index + kNN
def make_index(keys: np.ndarray, ix: IndexSettings, *, seed: int) -> tuple[Any, dict[str, Any]]:
    import faiss

    n, d = keys.shape
    kind = ix.resolved(n)
    if kind == "flat":
        index = faiss.IndexFlatL2(d)
        params: dict[str, Any] = {}
    else:
        nlist = min(ix.nlist, max(1, n // 39))  # faiss wants >= 39 training points per cell
        quantizer = faiss.IndexFlatL2(d)
        if kind == "ivf_flat":
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
            params = {"nlist": nlist, "nprobe": min(ix.nprobe, nlist)}
        else:
            if d % ix.pq_m:
                raise ConfigError(f"method mlp_memory: pretrain.index.pq_m={ix.pq_m} must divide the width {d}")
            index = faiss.IndexIVFPQ(quantizer, d, nlist, ix.pq_m, ix.pq_bits)
            params = {"nlist": nlist, "nprobe": min(ix.nprobe, nlist), "pq_m": ix.pq_m, "pq_bits": ix.pq_bits}
        index.cp.seed = int(seed)
        pick = np.linspace(0, n - 1, num=min(n, ix.train_points)).round().astype(np.int64)
        index.train(np.ascontiguousarray(keys[np.unique(pick)]))
        index.nprobe = params["nprobe"]
        params["train_points"] = int(np.unique(pick).shape[0])
    index.add(keys)
    desc = {"flat": "IndexFlatL2 (exact)", "ivf_flat": "IndexIVFFlat", "ivf_pq": "IndexIVFPQ"}[kind]
    return index, {"type": kind, "faiss": desc, "metric": "squared L2", "params": params, "ntotal": int(index.ntotal),
                   "requested": ix.type}


def search_excluding_self(index: Any, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(distances [b, k], neighbour ids [b, k])``: the k+1 nearest, minus the query's own id (or, if the search
    missed it, minus the farthest). Ids are -1 (distance inf) where the index returned fewer."""
    dist, nbr = index.search(np.ascontiguousarray(queries, dtype=np.float32), k + 1)
    own = nbr == ids[:, None]
    own[~own.any(1), -1] = True
    first = own.argmax(1)  # exactly one dropped per row
    keep = np.ones_like(own)
    keep[np.arange(own.shape[0]), first] = False
    dist = dist[keep].reshape(-1, k)
    nbr = nbr[keep].reshape(-1, k)
    dist = np.where(nbr < 0, np.inf, dist).astype(np.float32)
    return dist, nbr


def knn_probs(dist: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(−d/T) over the neighbours of each row (missing neighbours: 0)."""
    d = torch.from_numpy(np.asarray(dist, dtype=np.float32))
    return torch.softmax(-d / float(temperature), dim=-1).nan_to_num(0.0).numpy()


def knn_target_logp(tokens: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p_kNN(target) per row (−inf when no neighbour has the target token)."""
    p = (probs * (tokens == targets[:, None])).sum(1)
    with np.errstate(divide="ignore"):
        return np.log(p)


def choose_temperature(dist: np.ndarray, tokens: np.ndarray, targets: np.ndarray, lm_logp: np.ndarray,
                       grid: Sequence[float]) -> tuple[float, dict[str, float]]:
    """The T of ``grid`` with the lowest CE of ``(1−λ)·p_LM + λ·p_kNN`` at λ = 0.25 on these positions."""
    table = {}
    for t in grid:
        lk = knn_target_logp(tokens, knn_probs(dist, t), targets)
        mix = np.logaddexp(lm_logp + math.log1p(-T_SELECT_LAMBDA), lk + math.log(T_SELECT_LAMBDA))
        table[f"{t:g}"] = float(-mix.mean())
    best = min(grid, key=lambda t: (table[f"{t:g}"], t))
    return float(best), table


def build_knn(folder: Path, config: dict[str, Any], reads: Reads, index: Any, settings: PretrainSettings, *,
              keys: np.ndarray, controls: Any, clock: _Clock) -> dict[str, Any]:
    """Stage 4: neighbours of every datastore position (resumable per batch), then T and the probabilities."""
    from tqdm import tqdm

    state = _stage_open(folder, KNN, config)
    if state["complete"]:
        _log(f"knn: complete (k={settings.k}, T={state['temperature']:g}, {state['seconds']:.0f} s), reused")
        return state
    n, k = reads.n, settings.k
    paths = {"tokens": folder / "neighbour_tokens.npy", "dist": folder / "neighbour_dist.npy"}
    done = int(state.get("rows_done", 0))
    mode = "r+" if done and all(p.is_file() for p in paths.values()) else "w+"
    if mode == "w+":
        done = 0
    tokens = np.lib.format.open_memmap(paths["tokens"], mode=mode, dtype=np.int32, shape=(n, k))
    dist = np.lib.format.open_memmap(paths["dist"], mode=mode, dtype=np.float32, shape=(n, k))
    _log(f"knn: {n:,} queries, k={k} (+1 for the query itself), batches of {settings.search_batch}"
         + (f"; {done:,} done, continuing" if done else ""))
    bar = tqdm(total=n, initial=done, unit="q", desc="mlp_memory knn", disable=not controls.progress,
               dynamic_ncols=True, file=sys.stderr)
    try:
        while done < n:
            t0 = time.perf_counter()
            end = min(n, done + settings.search_batch)
            ids = np.arange(done, end, dtype=np.int64)
            d, nb = search_excluding_self(index, keys[done:end], ids, k)
            tokens[done:end] = np.where(nb >= 0, reads.vals[np.maximum(nb, 0)], -1)
            dist[done:end] = d
            tokens.flush()
            dist.flush()
            bar.update(end - done)
            done = end
            state["rows_done"] = done
            state["seconds"] = float(state["seconds"]) + time.perf_counter() - t0
            _stage_save(folder, state)
            if clock.up() and done < n:
                raise Paused(KNN, f"time_limit_min={controls.time_limit_min} after {done:,}/{n:,} queries")
    finally:
        bar.close()
    t0 = time.perf_counter()
    tokens_a = np.asarray(tokens)
    dist_a = np.asarray(dist)
    if settings.temperature == "auto":
        probe = np.unique(np.linspace(0, n - 1, num=min(n, settings.temperature_probe)).round().astype(np.int64))
        temp, table = choose_temperature(dist_a[probe], tokens_a[probe], reads.vals[probe], reads.lm_logp[probe],
                                         settings.temperature_grid)
        state["temperature_selection"] = {
            "rule": f"leave-one-out CE of (1-λ)·p_LM + λ·p_kNN at λ={T_SELECT_LAMBDA} on {probe.shape[0]:,} evenly "
                    "spaced datastore positions (training data only)", "ce_by_temperature": table}
        _log(f"knn: temperature auto -> {temp:g} (LOO kNN-LM CE by T: "
             + ", ".join(f"{t}: {v:.4f}" for t, v in table.items()) + ")")
    else:
        temp = float(settings.temperature)
    probs = np.lib.format.open_memmap(folder / "neighbour_probs.tmp.npy", mode="w+", dtype=np.float16, shape=(n, k))
    for s in range(0, n, 65536):
        probs[s:s + 65536] = knn_probs(dist_a[s:s + 65536], temp).astype(np.float16)
    probs.flush()
    del probs
    os.replace(folder / "neighbour_probs.tmp.npy", folder / "neighbour_probs.npy")
    hit = (tokens_a == reads.vals[:, None]).any(1)
    state.update(temperature=temp, complete=True, seconds=float(state["seconds"]) + time.perf_counter() - t0,
                 target_in_neighbours=float(hit.mean()),
                 distance_quantiles={q: float(np.quantile(dist_a[:, 0][np.isfinite(dist_a[:, 0])], float(q)))
                                     for q in ("0.1", "0.5", "0.9")})
    _stage_save(folder, state)
    _log(f"knn: complete, T={temp:g}, next token among the {k} neighbours for {hit.mean():.1%} of positions, "
         f"{state['seconds']:.0f} s")
    return state


# ------------------------------------------------------------------------------------------ training
def kl_ce_loss(logits: torch.Tensor, targets: torch.Tensor, nbr_tokens: torch.Tensor, nbr_probs: torch.Tensor,
               alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(α·KL(p_kNN ‖ p_MLP) + (1−α)·CE, KL, CE)``, batch means; p_kNN given sparsely by (tokens, probs)."""
    logq = F.log_softmax(logits.float(), dim=-1)
    ce = F.nll_loss(logq, targets)
    valid = nbr_tokens >= 0
    w = torch.where(valid, nbr_probs.float(), torch.zeros((), dtype=torch.float32))
    w = w / w.sum(1, keepdim=True).clamp_min(1e-12)
    tok = torch.where(valid, nbr_tokens, torch.zeros_like(nbr_tokens)).long()
    cross = -(w * logq.gather(1, tok)).sum(1)
    dense = torch.zeros_like(logq).scatter_add_(1, tok, w)  # duplicates add up: the entropy of p_kNN
    entropy = -(dense * torch.log(dense.clamp_min(1e-30))).sum(1)
    kl = (cross - entropy).mean()
    return alpha * kl + (1.0 - alpha) * ce, kl, ce


class Order:
    """Position p (samples consumed) → datastore row; epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def rows(self, start: int, count: int) -> np.ndarray:
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, j = divmod(start + i, self.n)
            if epoch != self._epoch:
                self._perm = np.random.default_rng([self.seed, epoch, 7]).permutation(self.n)
                self._epoch = epoch
            out[i] = self._perm[j]
        return out


class MLPTrainer:
    def __init__(self, *, net, settings: PretrainSettings, controls: Any, out_dir: Path, seed: int,
                 semantic: dict[str, Any], keys: np.ndarray, vals: np.ndarray, nbr_tokens: np.ndarray,
                 nbr_probs: np.ndarray, data_fingerprint: str, eval_keys: np.ndarray | None = None,
                 eval_vals: np.ndarray | None = None, eval_lm_logp: np.ndarray | None = None,
                 device: torch.device = torch.device("cpu")) -> None:
        self.net, self.s, self.controls = net, settings, controls
        self.out_dir, self.seed, self.semantic = Path(out_dir), seed, semantic
        self.keys, self.vals, self.nbr_tokens, self.nbr_probs = keys, vals, nbr_tokens, nbr_probs
        self.fingerprint = data_fingerprint
        self.eval = (eval_keys, eval_vals, eval_lm_logp) if eval_keys is not None and len(eval_keys) else None
        self.device = device
        self.params = net.trainable_parameters()
        self.order = Order(int(vals.shape[0]), seed)
        self.total_steps = settings.total_steps(int(vals.shape[0]))
        self.warmup = math.ceil(settings.warmup_ratio * self.total_steps)
        self.optimizer = torch.optim.AdamW(self.params, lr=settings.lr, betas=settings.adam_betas,
                                           eps=settings.adam_eps, weight_decay=settings.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step, self.position, self.elapsed, self.tokens = 0, 0, 0.0, 0

    def _lr_factor(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        if self.s.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup) / max(1, self.total_steps - self.warmup))
        if self.s.schedule == "linear":
            return max(0.0, 1.0 - progress)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    def batch(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        order = np.argsort(rows)  # sorted reads from the memory maps, then back to the drawn order
        inv = np.empty_like(order)
        inv[order] = np.arange(order.shape[0])
        r = rows[order]
        x = torch.from_numpy(np.asarray(self.keys[r], dtype=np.float32)[inv])
        y = torch.from_numpy(np.asarray(self.vals[r], dtype=np.int64)[inv])
        t = torch.from_numpy(np.asarray(self.nbr_tokens[r], dtype=np.int64)[inv])
        p = torch.from_numpy(np.asarray(self.nbr_probs[r], dtype=np.float32)[inv])
        return tuple(v.to(self.device) for v in (x, y, t, p))

    def loss(self, x, y, t, p):
        return kl_ce_loss(self.net(x), y, t, p, self.s.alpha)

    def train_step(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        rows = self.order.rows(self.position, self.s.batch_tokens)
        loss, kl, ce = self.loss(*self.batch(rows))
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.s.max_grad_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position += len(rows)
        seconds = time.perf_counter() - t0
        self.elapsed += seconds
        self.tokens += len(rows)
        return {"kind": "train", "step": self.step, "position": self.position,
                "epoch": round(self.position / self.order.n, 4), "loss": float(loss.detach()), "kl": float(kl.detach()),
                "ce": float(ce.detach()), "lr": lr, "grad_norm": float(grad_norm), "tokens": len(rows),
                "seconds": round(seconds, 4), "tokens_per_s": round(len(rows) / seconds, 1),
                "elapsed_s": round(self.elapsed, 2)}

    @torch.no_grad()
    def eval_row(self) -> dict[str, Any]:
        t0 = time.perf_counter()
        keys, vals, lm = self.eval
        lp = mlp_target_logp(self.net, keys, vals, device=self.device)
        lam = 0.25
        mix = np.logaddexp(lm + math.log1p(-lam), lp + math.log(lam))
        return {"kind": "eval", "step": self.step, "heldout_ce": float(-mix.mean()),
                "heldout_ce_nocontext": float(-lm.mean()), "heldout_ce_mlp": float(-lp.mean()),
                "heldout_lambda": lam, "heldout_positions": int(vals.shape[0]),
                "seconds": round(time.perf_counter() - t0, 2)}

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict[str, Any]:
        from harness.training.trainer import _rng_state

        return {"step": self.step, "position": self.position, "elapsed_s": self.elapsed, "tokens": self.tokens,
                "total_steps": self.total_steps, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": _rng_state(),
                "data_fingerprint": self.fingerprint, "config": self.semantic}

    def save_checkpoint(self) -> Path:
        from safetensors.torch import save_file

        from harness.training.trainer import CHECKPOINTS, STATE_FILE, checkpoint_dirs

        root = self.out_dir / CHECKPOINTS
        root.mkdir(parents=True, exist_ok=True)
        final = root / f"step-{self.step:06d}"
        tmp = root / f".tmp-step-{self.step:06d}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_file(self.net.stored_state(), str(tmp / "weights.safetensors"))
        torch.save(self._state(), tmp / STATE_FILE)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(self.out_dir)[:-max(1, self.controls.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load_checkpoint(self, path: Path) -> None:
        from safetensors.torch import load_file

        from harness.training.trainer import STATE_FILE, _config_diff, _set_rng_state, read_state

        state = read_state(path / STATE_FILE)
        if state["data_fingerprint"] != self.fingerprint:
            raise HarnessError(f"{path}: the datastore or its kNN targets changed since this checkpoint; cannot "
                               "resume exactly")
        diff = _config_diff(state["config"], self.semantic)
        if diff:
            raise HarnessError(f"{path}: the config changed since this checkpoint ({'; '.join(diff[:5])}); "
                               "resume needs the same config (only run.* may change)")
        self.net.load_stored_state(load_file(str(path / "weights.safetensors")))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.position = int(state["step"]), int(state["position"])
        self.elapsed, self.tokens = float(state["elapsed_s"]), int(state["tokens"])

    def run(self, *, resume: bool, clock: _Clock) -> str | None:
        """Train to the end (None) or pause (the reason); checkpoints and the log as the episode trainer's."""
        from harness.training.trainer import CURVE_FILE, LOG_FILE, plot_loss_curve, resume_or_start, train_steps

        log_path = self.out_dir / LOG_FILE
        resume_or_start(self, log_path, resume=resume, say=lambda m: _log(f"train: {m}"))
        stopped = train_steps(
            self, log_path, module=self.net, desc="mlp_memory train", writes=True,
            eval_every=self.controls.eval_every if self.eval is not None else None,
            eval_message=lambda ev: (f"[mlp_memory] step {self.step}: held-out CE backbone "
                                     f"{ev['heldout_ce_nocontext']:.4f}, mixture (λ 0.25) {ev['heldout_ce']:.4f}, "
                                     f"MLP alone {ev['heldout_ce_mlp']:.4f}"),
            time_up=clock.up)
        if stopped:
            path = self.save_checkpoint()
            plot_loss_curve(log_path, self.out_dir / CURVE_FILE)
            _log(f"train: paused at step {self.step}/{self.total_steps} ({stopped}); checkpoint {path}")
            return stopped
        self.save_checkpoint()  # the final state, so a finished run can be audited
        plot_loss_curve(log_path, self.out_dir / CURVE_FILE)
        return None


@torch.no_grad()
def mlp_target_logp(net, keys: np.ndarray, targets: np.ndarray, *, device=torch.device("cpu"),
                    chunk: int = 1024) -> np.ndarray:
    """log p_MLP(target) for every row of ``keys``."""
    out = []
    w = net.lm_head.weight
    for s in range(0, keys.shape[0], chunk):
        x = torch.from_numpy(np.asarray(keys[s:s + chunk], dtype=np.float32)).to(device=device, dtype=w.dtype)
        lp = F.log_softmax(net(x).float(), -1)
        out.append(lp.gather(1, torch.from_numpy(np.asarray(targets[s:s + chunk], dtype=np.int64))[:, None]
                             .to(lp.device))[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


# ------------------------------------------------------------------------------------------ evidence
def evidence(*, lm_logp: np.ndarray, mlp_logp: np.ndarray, knn_logp: np.ndarray | None, doc_ids: Sequence[str],
             lambdas: Sequence[float]) -> dict[str, Any]:
    """Held-out next-token CE: backbone alone vs the mixture (per λ), the MLP alone and the kNN-LM teacher;
    differences paired per document with 95 % intervals that resample documents."""
    from harness.metrics import bootstrap_ci

    docs = sorted(set(doc_ids))
    idx = {d: i for i, d in enumerate(docs)}
    which = np.asarray([idx[d] for d in doc_ids])

    def per_doc(logp: np.ndarray) -> np.ndarray:
        s = np.bincount(which, weights=-logp, minlength=len(docs))
        return s / np.bincount(which, minlength=len(docs))

    base = per_doc(lm_logp)
    out: dict[str, Any] = {
        "documents": len(docs), "positions": int(lm_logp.shape[0]),
        "interval": "95 % percentile bootstrap over documents (harness.metrics.bootstrap_ci, 2,000 draws), on "
                    "per-document mean CE",
        "ce_backbone": float(-lm_logp.mean()), "ce_mlp_alone": float(-mlp_logp.mean()), "mixture": {}}
    for lam in lambdas:
        mix = np.logaddexp(lm_logp + math.log1p(-lam), mlp_logp + math.log(lam)) if 0 < lam < 1 else (
            lm_logp if lam == 0 else mlp_logp)
        diff = per_doc(mix) - base
        lo, hi = bootstrap_ci(list(diff), docs)
        out["mixture"][f"{lam:g}"] = {"ce": float(-mix.mean()), "ce_doc_mean": float(per_doc(mix).mean()),
                                      "diff_vs_backbone_doc_mean": float(diff.mean()), "ci95": [lo, hi],
                                      "documents_better": int((diff < 0).sum())}
    if knn_logp is not None:
        out["knn_lm"] = {}
        for lam in lambdas:
            if not 0 < lam < 1:
                continue
            mix = np.logaddexp(lm_logp + math.log1p(-lam), knn_logp + math.log(lam))
            diff = per_doc(mix) - base
            lo, hi = bootstrap_ci(list(diff), docs)
            out["knn_lm"][f"{lam:g}"] = {"ce": float(-mix.mean()), "diff_vs_backbone_doc_mean": float(diff.mean()),
                                         "ci95": [lo, hi]}
    out["ce_backbone_doc_mean"] = float(base.mean())
    # by source: the corpus mixes very different text (procedural dialogues, stories, papers)
    sources = sorted({d.split("/", 1)[0] for d in docs})
    if len(sources) > 1:
        out["by_source"] = {}
        for src in sources:
            rows = np.asarray([d.split("/", 1)[0] == src for d in doc_ids])
            sub = evidence(lm_logp=lm_logp[rows], mlp_logp=mlp_logp[rows],
                           knn_logp=None if knn_logp is None else knn_logp[rows],
                           doc_ids=[d for d, r in zip(doc_ids, rows) if r], lambdas=lambdas)
            out["by_source"][src] = {k: sub[k] for k in ("documents", "positions", "ce_backbone", "ce_mlp_alone",
                                                          "mixture", "knn_lm") if k in sub}
    lam = f"{lambdas[0]:g}" if lambdas else None
    if lam is not None:
        m = out["mixture"][lam]
        out["summary"] = (f"held-out CE {out['ce_backbone']:.4f} backbone vs {m['ce']:.4f} mixture (λ {lam}); "
                          f"per-document difference {m['diff_vs_backbone_doc_mean']:+.4f} "
                          f"[{m['ci95'][0]:+.4f}, {m['ci95'][1]:+.4f}] over {len(docs)} documents")
    return out


# ------------------------------------------------------------------------------------------ the pipeline
def _controls(cfg) -> Any:
    from omegaconf import OmegaConf

    from harness.training.trainer import RunControls

    run = cfg.get("run") or {}
    node = OmegaConf.to_container(run, resolve=True) if run else {}
    unknown = sorted(set(node) - {f.name for f in dataclasses.fields(RunControls)})
    if unknown:
        raise ConfigError(f"run: unknown keys {unknown}")
    controls = RunControls(**node)
    if controls.save_every < 1:
        raise ConfigError(f"run.save_every must be >= 1, got {controls.save_every}")
    return controls


def run_pretraining(cfg, *, load: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """``python -m harness.train method=mlp_memory``: the five stages, then the artefact and its evidence."""
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone, resolve_device
    from harness.runner import seed_everything
    from harness.training.trainer import CONFIG_FILE, LOG_FILE, SUMMARY_FILE, build_sources, read_log
    from methods.deltamem.signature import backbone_signature
    from methods.mlp_memory.model import MLPMemoryConfig, MLPMemoryNet, load_artefact, resolve_lambda, save_artefact

    # ---- everything that can be refused, before any data or model loads
    method = OmegaConf.to_container(cfg.method, resolve=True)
    settings = PretrainSettings.from_mapping(method.get("pretrain") or {})
    resolve_lambda(method.get("lam", 0.25))  # not used here, but a run of this config would refuse it
    if method.get("adapter") not in (None, "", "null"):
        raise ConfigError("method mlp_memory: pre-training starts from scratch; pass method.adapter=null (the "
                          f"default of harness.train), not {method.get('adapter')!r}")
    controls = _controls(cfg)
    if controls.threads:
        torch.set_num_threads(int(controls.threads))
    resolve_device(str(cfg.backbone.get("device", "auto")))
    td = cfg.train_data
    sources = build_sources(td)
    seed = int(cfg.seed)
    out_dir = Path(str(cfg.out_dir))
    clock = _Clock(controls.time_limit_min)
    import faiss

    faiss.omp_set_num_threads(int(controls.threads or torch.get_num_threads()))
    train_docs, held_docs = corpus_documents(sources, heldout_fraction=float(td.get("heldout_fraction", 0.1)),
                                             split_seed=int(td.get("split_seed", 42)), seed=seed)
    seed_everything(seed)
    backbone = (load or load_backbone)(cfg.backbone)
    model = backbone.model
    signature = backbone_signature(model, backbone.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CONFIG_FILE).write_text(OmegaConf.to_yaml(cfg, resolve=True))
    td_node = OmegaConf.to_container(td, resolve=True)
    _log(f"building MLP Memory for {backbone.name} in {out_dir}: corpus train_data={td.get('name')} "
         f"({', '.join(f'{n}: {len(d)} documents' for n, d in train_docs.items())}; held out: "
         f"{', '.join(f'{n}: {len(d)}' for n, d in held_docs.items())})")

    def tokenize(doc: Document) -> list[int]:
        return backbone.chat_ids(list(doc.messages), add_generation_prompt=False)

    base_cfg = {"backbone": signature, "train_data": td_node, "seed": seed}
    try:
        # ---- 1. datastore
        pieces = select_pieces(train_docs, tokenize, budget=settings.datastore_tokens, window=settings.window_tokens,
                               doc_cap=settings.document_tokens)
        ds_cfg = {**base_cfg, "datastore_tokens": settings.datastore_tokens, "window_tokens": settings.window_tokens,
                  "document_tokens": settings.document_tokens, "shard_tokens": settings.shard_tokens,
                  "pieces": _pieces_digest(pieces)}
        ds_state = build_reads(out_dir / DATASTORE, DATASTORE, ds_cfg, pieces, model,
                               shard_tokens=settings.shard_tokens, controls=controls, clock=clock)
        if ds_state["positions"] <= settings.k:
            raise HarnessError(f"the corpus gave only {ds_state['positions']} datastore positions, not more than "
                               f"k={settings.k}")
        # ---- 2. held-out cache
        ho_pieces = select_pieces(held_docs, tokenize, budget=10**12, window=settings.eval_document_tokens,
                                  doc_cap=settings.eval_document_tokens, max_docs=settings.eval_documents)
        ho_cfg = {**base_cfg, "eval_documents": settings.eval_documents,
                  "eval_document_tokens": settings.eval_document_tokens, "pieces": _pieces_digest(ho_pieces)}
        ho_state = build_reads(out_dir / HELDOUT, HELDOUT, ho_cfg, ho_pieces, model, shard_tokens=10**12,
                               controls=controls, clock=clock) if ho_pieces else None
        reads = Reads(out_dir / DATASTORE, ds_state)
        held = Reads(out_dir / HELDOUT, ho_state) if ho_state else None
        # ---- 3. index
        ix_cfg = {"datastore": ds_cfg, "index": dataclasses.asdict(settings.index), "seed": seed}
        ix_state = _stage_open(out_dir / INDEX, INDEX, ix_cfg)
        index_file = out_dir / INDEX / "index.faiss"
        keys = reads.keys()
        if ix_state["complete"] and ix_state["info"]["type"] != "flat" and index_file.is_file():
            index = faiss.read_index(str(index_file))
            index.nprobe = int(ix_state["info"]["params"]["nprobe"])
            _log(f"index: complete ({ix_state['info']['faiss']}, {ix_state['seconds']:.0f} s), reused")
        elif ix_state["complete"] and ix_state["info"]["type"] == "flat":
            index, _ = make_index(keys, settings.index, seed=seed)  # exact: nothing to train, not stored
            _log(f"index: {ix_state['info']['faiss']} over {index.ntotal:,} keys (rebuilt in memory)")
        else:
            t0 = time.perf_counter()
            index, ix_info = make_index(keys, settings.index, seed=seed)
            if ix_info["type"] != "flat":
                faiss.write_index(index, str(index_file) + ".tmp")
                os.replace(str(index_file) + ".tmp", index_file)
            ix_state.update(complete=True, info=ix_info, seconds=time.perf_counter() - t0)
            _stage_save(out_dir / INDEX, ix_state)
            _log(f"index: {ix_info['faiss']} {ix_info['params']} over {ix_info['ntotal']:,} keys, "
                 f"{ix_state['seconds']:.1f} s")
        # ---- 4. kNN targets
        knn_cfg = {"index": ix_cfg, "k": settings.k, "temperature": settings.temperature,
                   "temperature_grid": list(settings.temperature_grid), "temperature_probe": settings.temperature_probe}
        knn_state = build_knn(out_dir / KNN, knn_cfg, reads, index, settings, keys=keys, controls=controls,
                              clock=clock)
        # ---- 5. training
        nbr_tokens = np.load(out_dir / KNN / "neighbour_tokens.npy", mmap_mode="r")
        nbr_probs = np.load(out_dir / KNN / "neighbour_probs.npy", mmap_mode="r")
        torch.manual_seed(seed)
        net_cfg = MLPMemoryConfig.for_backbone(model, blocks=settings.blocks, head=settings.head)
        head = model.get_output_embeddings().weight.detach().to(device="cpu", dtype=torch.float32).clone()
        net = MLPMemoryNet(net_cfg, head_weight=head if settings.head == "frozen_backbone" else None)
        semantic = OmegaConf.to_container(cfg, resolve=True)
        for key in ("run", "resume", "out_dir"):
            semantic.pop(key, None)
        n_eval = None
        eval_arrays: dict[str, Any] = {}
        if held is not None and controls.eval_every:
            first = sorted(set(held.piece.tolist()))[:controls.eval_episodes]
            rows = np.isin(held.piece, first)
            eval_arrays = {"eval_keys": held.keys()[rows], "eval_vals": held.vals[rows],
                           "eval_lm_logp": held.lm_logp[rows]}
            n_eval = len(first)
        trainer = MLPTrainer(net=net, settings=settings, controls=controls, out_dir=out_dir, seed=seed,
                             semantic=semantic, keys=keys.astype(np.float16),
                             vals=reads.vals, nbr_tokens=nbr_tokens, nbr_probs=nbr_probs,
                             data_fingerprint=f"{ds_cfg['pieces']}-{knn_state['temperature']:g}-{settings.k}",
                             **eval_arrays)
        del keys
        params = net_cfg.parameters()
        _log(f"train: {net_cfg.blocks} SwiGLU blocks ({params['total']:,} parameters, {params['stored']:,} trained and "
             f"stored; head: {net_cfg.head}), {trainer.total_steps} steps x {settings.batch_tokens} positions "
             f"({settings.epochs:g} epochs of {reads.n:,}), α={settings.alpha}, lr {settings.lr:g} {settings.schedule}"
             + (f"; held-out check every {controls.eval_every} steps on {n_eval} documents" if n_eval else ""))
        stopped = trainer.run(resume=bool(cfg.get("resume", False)), clock=clock)
        if stopped:
            return {"status": "paused", "stage": "train", "step": trainer.step, "total_steps": trainer.total_steps,
                    "message": f"[train] mlp_memory paused at step {trainer.step}/{trainer.total_steps} ({stopped}); "
                               "continue with resume=true"}
    except Paused as p:
        return {"status": "paused", "stage": p.stage, "step": 0, "total_steps": None,
                "message": f"[train] mlp_memory paused in stage {p.stage} ({p.detail}); run the same command again "
                           "(resume=true) to continue"}

    # ---- the artefact, evaluated as stored
    t0 = time.perf_counter()
    logged = read_log(out_dir / LOG_FILE)
    rows = [r for r in logged if r.get("kind", "train") == "train"]
    seconds = {"datastore": round(ds_state["seconds"], 1), "heldout_cache": round(ho_state["seconds"], 1) if ho_state
               else 0.0, "index": round(ix_state["seconds"], 1), "knn": round(knn_state["seconds"], 1),
               "train": round(trainer.elapsed, 1)}
    corpus = {"train_data": td.get("name"), "label": f"documents of the δ-mem training data (train_data="
              f"{td.get('name')}: {', '.join(train_docs)}), training split only, chat-rendered",
              "sources": [s.describe() for s in sources],
              "documents": len({p.doc for p in pieces}), "windows": len(pieces),
              "tokens_by_source": {name: int(sum(p.positions for p in pieces if p.source == name))
                                   for name in train_docs}}
    recipe = {"settings": settings.as_dict(), "corpus": corpus, "datastore_tokens": int(reads.n),
              "index": ix_state["info"], "k": settings.k, "temperature": knn_state["temperature"],
              "temperature_selection": knn_state.get("temperature_selection"),
              "target_in_neighbours": knn_state.get("target_in_neighbours"), "alpha": settings.alpha,
              "training": {"steps": trainer.step, "epochs": round(trainer.position / reads.n, 4),
                           "batch_tokens": settings.batch_tokens, "lr": settings.lr, "schedule": settings.schedule,
                           "warmup_ratio": settings.warmup_ratio, "optimizer": "AdamW", "seed": seed,
                           "first_loss": rows[0]["loss"] if rows else None,
                           "last_loss_mean10": (sum(r["loss"] for r in rows[-10:]) / len(rows[-10:])) if rows else None},
              "build_seconds": seconds, "threads": int(controls.threads or torch.get_num_threads()),
              "device": str(backbone.device)}
    full = MLPMemoryConfig.for_backbone(model, blocks=None, head="trained").parameters()["total"]
    extra = {"method": method.get("name"), "recipe": recipe, "full_size_parameters": full,
             "full_size_note": f"the reference design at this backbone's depth ({model.config.num_hidden_layers} "
                               "blocks) with an untied head"}
    save_artefact(out_dir, net, backbone_signature=signature, storage_dtype=settings.storage_dtype, extra=extra)
    ev = None
    if held is not None:
        stored, _ = load_artefact(out_dir, model)
        lp = mlp_target_logp(stored, held.keys(), held.vals, device=backbone.device)
        knn_lp = None
        if held.n:
            d, nb = index.search(held.keys(), settings.k)
            toks = np.where(nb >= 0, reads.vals[np.maximum(nb, 0)], -1)
            knn_lp = knn_target_logp(toks, knn_probs(np.where(nb < 0, np.inf, d), knn_state["temperature"]), held.vals)
        ev = evidence(lm_logp=held.lm_logp, mlp_logp=lp, knn_logp=knn_lp, doc_ids=held.doc_ids(),
                      lambdas=settings.eval_lambdas)
        ev["note"] = ("held-out documents of train_data's held-out split (never in the datastore), first "
                      f"{settings.eval_document_tokens} tokens each; MLP as stored ({settings.storage_dtype})")
        seconds["evidence"] = round(time.perf_counter() - t0, 1)
        _log("evidence: " + ev["summary"])
    extra["evidence"] = ev
    info = save_artefact(out_dir, net, backbone_signature=signature, storage_dtype=settings.storage_dtype, extra=extra)
    size = (out_dir / "mlp_memory.safetensors").stat().st_size
    summary = {"status": "complete", "adapter": str(out_dir), "method": method.get("name"), "kind": "mlp_memory",
               "steps": trainer.step, "total_steps": trainer.total_steps,
               "epochs": recipe["training"]["epochs"], "datastore_tokens": int(reads.n),
               "trainable_parameters": info["parameters"]["stored"], "parameters": info["parameters"],
               "full_size_parameters": full, "artefact_bytes": size, "build_seconds": seconds,
               "train_seconds": round(trainer.elapsed, 1), "tokens": trainer.tokens,
               "first_loss": recipe["training"]["first_loss"], "last_loss_mean10": recipe["training"]["last_loss_mean10"],
               "recipe": recipe, "evidence": ev, "data_name": td.get("name"),
               "heldout_documents": sorted(set(held.doc_ids())) if held is not None else []}
    summary["message"] = (f"[train] complete: {out_dir} (mlp_memory, {trainer.step} steps over {reads.n:,} datastore "
                          f"tokens, {size / 2**20:.1f} MiB; build s: "
                          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
                          + (f"; {ev['summary']}" if ev else "") + ")")
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return summary

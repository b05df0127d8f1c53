"""The online memory of one attached model: per-layer states plus the controls of the next call.

A state tensor per wrapped layer, ``[B, r, r]`` (one state head) or ``[B, H, r, r]`` (MSW), kept in
fp32 whatever the model dtype (it is a few KB; rounding it to bf16 after every token, as the
reference's torch path does, only adds error). Absent layers read as zeros, so ``reset()`` is just
forgetting the tensors.

Per-call inputs (validity from the 2-D attention mask, SSW segment ids) are set by the model-level
hooks installed in ``surgery.py`` and live only for one forward call.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass(frozen=True)
class Snapshot:
    """A detached copy of every layer's state. Cheap: a few KB per sequence."""

    layers: dict[int, torch.Tensor]
    batch_size: int

    def expand(self, batch_size: int) -> "Snapshot":
        """Repeat a batch-1 snapshot for ``batch_size`` sequences (one ingest, many questions)."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ValueError(f"only a batch-1 snapshot can be expanded; this one holds {self.batch_size} sequences")
        return Snapshot({i: s.expand(batch_size, *s.shape[1:]).clone() for i, s in self.layers.items()}, batch_size)

    def select(self, index: int) -> "Snapshot":
        """The batch-1 snapshot of sequence ``index``."""
        return Snapshot({i: s[index:index + 1].clone() for i, s in self.layers.items()}, 1)

    @property
    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.layers.values())


class OnlineState:
    """Per-layer δ-mem states and the write controls shared by all wrapped layers of one model."""

    def __init__(self, *, rank: int, num_state_heads: int, layer_ids: tuple[int, ...]) -> None:
        self.rank = rank
        self.num_state_heads = num_state_heads
        self.layer_ids = layer_ids
        self.write_enabled = True
        self._states: dict[int, torch.Tensor] = {}
        # Layers whose state tensor nobody but the decode fast path has seen since it created it: only
        # those may be updated in place (every accessor below that hands a tensor out drops the layer).
        self.exclusive: set[int] = set()
        self._batch_size: int | None = None
        self._pending_segment_ids: torch.Tensor | None = None
        # set for the duration of one model call by the forward hooks
        self.call_valid: torch.Tensor | None = None
        self.call_segment_ids: torch.Tensor | None = None
        self.call_shape: tuple[int, int] | None = None
        self.call_impl: str | None = None  # the scan implementation, resolved once per call
        self.call_fast = False             # the call takes the compiled decode path (set by the pre-hook)
        self.call_valid_np = None          # call_valid as a numpy array, for that path
        self.call_id = 0                   # bumped by every begin_call: per-call caches in the layers key on it

    # ---------------------------------------------------------------- state tensors
    def _shape(self, batch: int) -> tuple[int, ...]:
        r, h = self.rank, self.num_state_heads
        return (batch, r, r) if h == 1 else (batch, h, r, r)

    @property
    def batch_size(self) -> int | None:
        """Batch size the states were created for; None after a reset."""
        return self._batch_size

    def get(self, layer: int, batch: int, device: torch.device) -> torch.Tensor:
        if self._batch_size is not None and batch != self._batch_size:
            raise ValueError(
                f"δ-mem state holds {self._batch_size} sequence(s) but this call has batch {batch}; "
                "reset() first, or restore(snapshot.expand(batch)) to share one memory across a batch")
        s = self._states.get(layer)
        if s is None:
            s = torch.zeros(self._shape(batch), dtype=torch.float32, device=device)
        self.exclusive.discard(layer)
        return s

    def put(self, layer: int, state: torch.Tensor) -> None:
        self._states[layer] = state
        self._batch_size = state.shape[0]
        self.exclusive.discard(layer)

    def layer_state(self, layer: int) -> torch.Tensor | None:
        self.exclusive.discard(layer)
        return self._states.get(layer)

    def reset(self) -> None:
        """Forget everything written (and pending segment ids); write flag unchanged."""
        self._states = {}
        self.exclusive = set()
        self._batch_size = None
        self._pending_segment_ids = None

    def snapshot(self) -> Snapshot:
        if self._batch_size is None:
            return Snapshot({}, 0)
        return Snapshot({i: s.detach().clone() for i, s in self._states.items()}, self._batch_size)

    def restore(self, snapshot: Snapshot) -> None:
        """Make the states equal to ``snapshot`` (copies, so the snapshot can be restored again)."""
        self._states = {i: s.detach().clone() for i, s in snapshot.layers.items()}
        self.exclusive = set()
        self._batch_size = snapshot.batch_size or None
        self._pending_segment_ids = None

    def expand(self, batch_size: int) -> None:
        """Repeat the current batch-1 memory for ``batch_size`` sequences."""
        if self._batch_size is None:
            return
        self.restore(self.snapshot().expand(batch_size))

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only these batch rows (batched decoding drops finished sequences)."""
        if self._batch_size is None:
            return
        self._states = {i: s[rows] for i, s in self._states.items()}
        self.exclusive = set()
        self._batch_size = int(rows.numel())

    @property
    def nbytes(self) -> int:
        """Size of the memory once every layer has been written (fp32)."""
        per_seq = len(self.layer_ids) * self.num_state_heads * self.rank * self.rank * 4
        return per_seq * (self._batch_size or 1)

    # ---------------------------------------------------------------- controls
    @contextlib.contextmanager
    def writes(self, enabled: bool) -> Iterator[None]:
        """Temporarily switch writing on or off (reads always happen)."""
        before = self.write_enabled
        self.write_enabled = enabled
        try:
            yield
        finally:
            self.write_enabled = before

    def set_segment_ids(self, segment_ids: torch.Tensor | None) -> None:
        """SSW segment ids ``[B, T]`` for the NEXT forward call only (-1 = never written).

        One call = one SSW write per segment at its end; reads in that call see the state from
        before it. A call without ids writes token by token (the reference's fallback, and what a
        one-token decode step with the assistant's id amounts to anyway).
        """
        if segment_ids is not None and segment_ids.dim() != 2:
            raise ValueError(f"segment ids must be [B, T], got {tuple(segment_ids.shape)}")
        self._pending_segment_ids = segment_ids

    # ---------------------------------------------------------------- per-call (hooks)
    def begin_call(self, batch: int, length: int, attention_mask: torch.Tensor | None,
                   impl: str | None = None) -> None:
        self.call_id += 1
        self.call_impl = impl
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                # A 4-D mask's polarity differs across attention implementations (the reference's sdpa
                # bug); padding must be stated the unambiguous way.
                raise ValueError(
                    f"δ-mem derives padding from the 2-D attention mask [B, L]; got shape "
                    f"{tuple(attention_mask.shape)}. Pass the tokenizer's 2-D mask.")
            if attention_mask.shape[0] != batch or attention_mask.shape[1] < length:
                raise ValueError(f"attention mask {tuple(attention_mask.shape)} does not cover a call of "
                                 f"batch {batch} and {length} new tokens")
            tail = attention_mask[:, attention_mask.shape[1] - length:]
            if tail.device.type == "cpu" and not tail.requires_grad:
                # numpy's ops on a one-token decode mask cost a fraction of torch's dispatch
                valid_np = tail.numpy() != 0
                self.call_valid = None if valid_np.all() else torch.from_numpy(valid_np)
            else:
                valid = tail != 0
                self.call_valid = None if bool(valid.all()) else valid
        else:
            self.call_valid = None
        cv = self.call_valid
        self.call_valid_np = cv.contiguous().numpy() if cv is not None and cv.device.type == "cpu" else None
        self.call_fast = False
        ids, self._pending_segment_ids = self._pending_segment_ids, None
        if ids is not None and tuple(ids.shape) != (batch, length):
            raise ValueError(f"segment ids {tuple(ids.shape)} do not match this call's [batch, tokens] = "
                             f"[{batch}, {length}]")
        self.call_segment_ids = ids
        self.call_shape = (batch, length)

    def end_call(self) -> None:
        self.call_valid = None
        self.call_segment_ids = None
        self.call_shape = None
        self.call_impl = None
        self.call_fast = False
        self.call_valid_np = None

    def validity(self, batch: int, length: int) -> torch.Tensor | None:
        """``[B, T]`` bool for the current call, or None when every token is valid."""
        if self.call_shape is not None and self.call_shape != (batch, length):
            raise RuntimeError(f"a wrapped layer saw [batch, tokens] = [{batch}, {length}] inside a model call "
                               f"of {list(self.call_shape)}; δ-mem cannot match padding to these tokens")
        return self.call_valid

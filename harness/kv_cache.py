"""A KV cache that appends in place.

transformers' ``DynamicLayer`` re-concatenates the whole cache on every update, so each
decoded token copies all cached keys and values: with an 8k-token LoCoMo context and 8
questions per batch that is ~3 GB of copying per token on SmolLM2-135M, which dominated
decoding. ``ReservedLayer`` keeps the same interface but writes new tokens into
preallocated room (growing geometrically if needed); ``keys``/``values`` are views of the
filled part, so attention code sees exactly what a ``DynamicLayer`` would hold.
"""
from __future__ import annotations

import copy

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class ReservedLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch_size: int, capacity: int):
        super().__init__()
        b0, heads, n, kd = keys.shape
        if b0 not in (1, batch_size):
            raise ValueError(f"cannot spread a batch of {b0} over {batch_size} rows")
        capacity = max(capacity, n)
        self._k = keys.new_empty((batch_size, heads, capacity, kd))
        self._v = values.new_empty((batch_size, heads, capacity, values.shape[-1]))
        self._k[:, :, :n] = keys  # broadcasts a batch-1 prefix over all rows
        self._v[:, :, :n] = values
        self._n = n
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._refresh()

    def _refresh(self) -> None:
        self.keys = self._k[:, :, : self._n]
        self.values = self._v[:, :, : self._n]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        end = self._n + key_states.shape[-2]
        if end > self._k.shape[2]:
            grow = max(end, 2 * self._k.shape[2])
            k = self._k.new_empty(self._k.shape[:2] + (grow,) + self._k.shape[3:])
            v = self._v.new_empty(self._v.shape[:2] + (grow,) + self._v.shape[3:])
            k[:, :, : self._n] = self.keys
            v[:, :, : self._n] = self.values
            self._k, self._v = k, v
        self._k[:, :, self._n:end] = key_states
        self._v[:, :, self._n:end] = value_states
        self._n = end
        self._refresh()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._n

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        self._n = max(0, self._n + tokens_to_remove)
        self._refresh()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._k, self._v = self._k[indices], self._v[indices]
        self._refresh()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._k = self._k.repeat_interleave(repeats, dim=0)
        self._v = self._v.repeat_interleave(repeats, dim=0)
        self._refresh()

    def reset(self) -> None:
        self._n = 0
        self._refresh()


def reserve(cache: DynamicCache, batch_size: int, extra_tokens: int) -> DynamicCache:
    """A cache for ``batch_size`` rows holding ``cache``'s tokens with room for
    ``extra_tokens`` more. Full-attention layers become :class:`ReservedLayer`s (a batch-1
    cache is spread over the rows without an intermediate copy); other layer kinds (e.g.
    sliding windows, which stay small) are copied and repeated as transformers does."""
    out = copy.copy(cache)
    layers = []
    for layer in cache.layers:
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys.numel():
            n = layer.keys.shape[-2]
            layers.append(ReservedLayer(layer.keys, layer.values, batch_size, n + extra_tokens))
        elif type(layer) is ReservedLayer:
            fresh = ReservedLayer(layer.keys, layer.values, batch_size, layer.get_seq_length() + extra_tokens)
            layers.append(fresh)
        else:
            twin = copy.deepcopy(layer)
            if batch_size > 1 and twin.is_initialized and twin.keys is not None and twin.keys.shape[0] == 1:
                twin.batch_repeat_interleave(batch_size)
            layers.append(twin)
    out.layers = layers
    return out


def rows_copy(cache: DynamicCache, rows: torch.Tensor, extra_tokens: int, upto: int | None = None) -> DynamicCache:
    """A cache of only ``rows`` of ``cache`` and its first ``upto`` columns (default: all), every layer a
    :class:`ReservedLayer` with room for ``extra_tokens`` more: a forward pass for a few rows of a batch without
    computing the others. Copied row by row, so the only new memory is the copy itself."""
    if not all(type(layer) is ReservedLayer for layer in cache.layers):
        raise TypeError("rows_copy needs a cache made by reserve() (every layer a ReservedLayer)")
    out = copy.copy(cache)
    layers = []
    for layer in cache.layers:
        n = layer.get_seq_length() if upto is None else upto
        part = ReservedLayer(layer.keys[:1, :, :0], layer.values[:1, :, :0], len(rows), n + extra_tokens)
        for i, r in enumerate(rows.tolist()):
            part._k[i, :, :n] = layer.keys[r, :, :n]
            part._v[i, :, :n] = layer.values[r, :, :n]
        part._n = n
        part._refresh()
        layers.append(part)
    out.layers = layers
    return out


def extend(cache: DynamicCache, tokens: int) -> None:
    """Append ``tokens`` zero columns to every row (to be filled for some rows by :func:`write_rows`; the other
    rows' attention mask must hide them: zeros keep the masked products finite)."""
    for layer in cache.layers:
        k, v = layer.keys, layer.values
        layer.update(k.new_zeros(k.shape[:2] + (tokens,) + k.shape[3:]),
                     v.new_zeros(v.shape[:2] + (tokens,) + v.shape[3:]))


def write_rows(cache: DynamicCache, part: DynamicCache, rows: torch.Tensor, start: int) -> None:
    """Copy the columns ``part`` (a :func:`rows_copy` of ``rows``, extended since) holds from ``start`` on into
    those rows of ``cache``, which already has the columns (:func:`extend`)."""
    for full, sub in zip(cache.layers, part.layers):
        end = sub.get_seq_length()
        full.keys[rows, :, start:end] = sub.keys[:, :, start:end]
        full.values[rows, :, start:end] = sub.values[:, :, start:end]

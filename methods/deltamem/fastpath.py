"""CPU inference fast path for calls with few tokens (decode steps): compiled projections + scan + corrections.

A one-token decode step does ~20 k multiply-adds of δ-mem work per layer, while each torch op costs
several microseconds of dispatch; chaining the ~15 ops of the generic path costs more than the work
itself (≈ 5 % of a SmolLM2-135M decode step). Here the whole step is two compiled calls on numpy views
of the torch tensors: reads + write + q correction (``reads_q_kernel``, driven by
``DeltaMemLayer.fast_query``), then the o correction. Used only when it is exactly equivalent and cheaper: fp32 CPU tensors, no
autograd, token-level writes or writes off, and at most :data:`MAX_TOKENS` tokens in the call (larger
calls project through torch's BLAS, which wins for long prompts; their corrections are one in-place addmm).
"""
from __future__ import annotations

import numpy as np
import torch

from methods.deltamem.scan import numba_available

MAX_TOKENS = 16  # B·T above this: the generic path's batched BLAS projections are faster

if numba_available():
    import numba

    _jit = numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @_jit
    def _reads_kernel(h, w_in_t, bias, state, valid, all_valid, heads, write, reads, new_state):  # pragma: no cover
        # h [B, T, d]; w_in_t [d, 4R] (q̂, k̂, v, β̂ blocks, head-major); state/new_state [B, H, r, r]
        n_b, n_t, d = h.shape
        four_r = w_in_t.shape[1]
        big_r = four_r // 4
        r = big_r // heads
        pre = np.zeros(four_r, dtype=np.float32)
        s = np.empty((r, r), dtype=np.float32)
        q = np.empty(r, dtype=np.float32)
        k = np.empty(r, dtype=np.float32)
        pres = np.empty((n_b, n_t, four_r), dtype=np.float32)
        for b in range(n_b):
            for t in range(n_t):
                for o in range(four_r):
                    pre[o] = 0.0
                # axpy order (inner loop over outputs) vectorises without reassociating a reduction
                for j in range(d):
                    x = h[b, t, j]
                    for o in range(four_r):
                        pre[o] += w_in_t[j, o] * x
                for o in range(four_r):
                    pres[b, t, o] = pre[o]
        for b in range(n_b):
            for hh in range(heads):
                off = hh * r
                for i in range(r):
                    for j in range(r):
                        s[i, j] = state[b, hh, i, j]
                for t in range(n_t):
                    if not all_valid and not valid[b, t]:
                        for i in range(r):
                            reads[b, t, off + i] = 0.0
                        continue
                    qn = np.float32(0.0)
                    kn = np.float32(0.0)
                    for j in range(r):
                        q[j] = np.tanh(pres[b, t, off + j])
                        k[j] = np.tanh(pres[b, t, big_r + off + j])
                        qn += q[j] * q[j]
                        kn += k[j] * k[j]
                    qn = max(np.sqrt(qn), np.float32(1e-6))
                    kn = max(np.sqrt(kn), np.float32(1e-6))
                    for j in range(r):
                        q[j] = q[j] / qn
                        k[j] = k[j] / kn
                    for i in range(r):
                        rd = np.float32(0.0)
                        dot = np.float32(0.0)
                        for j in range(r):
                            rd += s[i, j] * q[j]
                            dot += s[i, j] * k[j]
                        reads[b, t, off + i] = rd
                        if write:
                            z = pres[b, t, 3 * big_r + off + i] + bias[off + i]
                            beta = np.float32(1.0) / (np.float32(1.0) + np.exp(-z))
                            w = beta * (pres[b, t, 2 * big_r + off + i] - dot)
                            keep = np.float32(1.0) - beta
                            for j in range(r):
                                s[i, j] = keep * s[i, j] + w * k[j]
                for i in range(r):
                    for j in range(r):
                        new_state[b, hh, i, j] = s[i, j]

    @_jit
    def correction_kernel(reads, w_t, scale, out):  # pragma: no cover
        # out[b, t, :] += scale * w_t.T @ reads[b, t]   (w_t [R, D], in place)
        n_b, n_t, big_r = reads.shape
        dim = w_t.shape[1]
        for b in range(n_b):
            for t in range(n_t):
                for i in range(big_r):
                    c = scale * reads[b, t, i]
                    if c != 0.0:
                        for o in range(dim):
                            out[b, t, o] += c * w_t[i, o]

    @_jit
    def reads_q_kernel(h, w_in_t, bias, state, valid, all_valid, heads, write, reads, new_state,
                       w_q_t, scale, out_q):  # pragma: no cover
        # one dispatch per decode step and layer for the reads, the write and the q correction
        _reads_kernel(h, w_in_t, bias, state, valid, all_valid, heads, write, reads, new_state)
        correction_kernel(reads, w_q_t, scale, out_q)


ALL_VALID = np.ones((1, 1), dtype=np.bool_)  # stands for "no padding" (the kernels then skip the mask)


def eligible(hidden: torch.Tensor) -> bool:
    return (numba_available() and hidden.device.type == "cpu" and hidden.dtype == torch.float32
            and hidden.dim() == 3 and hidden.shape[0] * hidden.shape[1] <= MAX_TOKENS
            and not hidden.requires_grad)


def reads(hidden: torch.Tensor, w_in_t: np.ndarray, bias: np.ndarray, *, state: torch.Tensor,
          valid: torch.Tensor | None, heads: int, write: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reads ``[B, T, R]`` and the new state ``[B, H, r, r]`` (fresh tensors, fp32)."""
    b, t, _ = hidden.shape
    r = state.shape[-1]
    st = state.detach().reshape(b, heads, r, r)
    if st.dtype != torch.float32 or not st.is_contiguous():
        st = st.float().contiguous()
    out_reads = np.empty((b, t, heads * r), dtype=np.float32)
    new_state = np.empty((b, heads, r, r), dtype=np.float32)
    h = hidden if hidden.is_contiguous() else hidden.contiguous()
    vmask = ALL_VALID if valid is None else valid.contiguous().numpy()
    _reads_kernel(h.numpy(), w_in_t, bias, st.numpy(), vmask, valid is None, heads, write, out_reads, new_state)
    return torch.from_numpy(out_reads), torch.from_numpy(new_state)


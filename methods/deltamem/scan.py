"""The δ-mem recurrence as pure tensor functions (no module state).

Conventions (FLA-style, keyword-only state arguments):

* ``q, k, v, beta``: ``[N, T, r]`` — N folds batch and MSW state heads together, r is the rank.
  ``q`` and ``k`` are expected unit-norm (the caller applies tanh + L2), ``beta`` ∈ (0, 1) is one gate
  per row of the state.
* ``state``: ``[N, r, r]``, row index = value dimension, column index = key dimension.
* ``valid``: ``[N, T]`` bool or ``None`` (= all valid). Invalid tokens neither read (their read is 0)
  nor write.

For every valid token, rows i of S independently:
``read_t = S_{t-1} q_t`` (read before write), then
``S_t = diag(1-β_t) S_{t-1} + diag(β_t) (v_t - S_{t-1} k_t) k_tᵀ``.

All arithmetic is done in fp32 whatever the input dtype; outputs come back in the dtype of ``q``
(reads) and of ``state`` (final state).

Implementations: :func:`scan_naive` is the per-token torch loop and the oracle. :func:`scan_numba` is a
compiled per-token loop with a hand-written reverse recurrence (deltamem.md §7.5) wrapped in an
autograd Function; it wins on CPU by three orders of magnitude over the loop because the per-token
work (r² = 64 multiply-adds per row block) is far too small for torch's per-op overhead.
:func:`scan_chunked` composes the per-token affine maps in parallel inside chunks (plain torch, any
device; the CUDA path). :func:`scan` picks one.
"""
from __future__ import annotations

import os
from typing import Literal

import torch

ScanImpl = Literal["auto", "numba", "chunked", "naive"]

# Tokens per chunk of :func:`scan_chunked`: log2(C) parallel composition steps inside a chunk, T/C
# sequential steps across chunks.
CHUNK = 64

# The backward recomputes the state history block by block from checkpoints taken every
# CHECKPOINT_EVERY tokens, so training memory is O(T/C · r²) per sequence instead of O(T · r²).
CHECKPOINT_EVERY = 64

try:  # numba is an optional accelerator; the naive loop is always available.
    import numba as _numba
    import numpy as _np
except ImportError:  # pragma: no cover - exercised only where numba is missing
    _numba = None


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
           state: torch.Tensor, valid: torch.Tensor | None) -> None:
    if q.dim() != 3:
        raise ValueError(f"scan expects q of shape [N, T, r], got {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v), ("beta", beta)):
        if t.shape != q.shape:
            raise ValueError(f"scan: {name} has shape {tuple(t.shape)}, q has {tuple(q.shape)}")
    n, _, r = q.shape
    if state.shape != (n, r, r):
        raise ValueError(f"scan: state must be [{n}, {r}, {r}], got {tuple(state.shape)}")
    if valid is not None and valid.shape != q.shape[:2]:
        raise ValueError(f"scan: valid must be {tuple(q.shape[:2])}, got {tuple(valid.shape)}")


# --------------------------------------------------------------------------------------------- oracle
def scan_naive(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
               state: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loop, differentiable through torch autograd. Returns ``(reads, final_state)``."""
    _check(q, k, v, beta, state, valid)
    out_dtype, state_dtype = q.dtype, state.dtype
    q, k, v, beta, s = q.float(), k.float(), v.float(), beta.float(), state.float()
    reads = []
    for t in range(q.shape[1]):
        q_t, k_t, v_t, b_t = q[:, t], k[:, t], v[:, t], beta[:, t]
        read = torch.einsum("nij,nj->ni", s, q_t)
        pred = torch.einsum("nij,nj->ni", s, k_t)
        new = (1 - b_t).unsqueeze(-1) * s + (b_t * (v_t - pred)).unsqueeze(-1) * k_t.unsqueeze(1)
        if valid is not None:
            ok = valid[:, t]
            # where, not multiplication: a padded token's projections may be non-finite.
            read = torch.where(ok.unsqueeze(-1), read, torch.zeros_like(read))
            new = torch.where(ok.view(-1, 1, 1), new, s)
        reads.append(read)
        s = new
    if reads:
        out = torch.stack(reads, 1)
    else:
        out = q.new_zeros(q.shape)
    return out.to(out_dtype), s.to(state_dtype)


def read_state(q: torch.Tensor, *, state: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Reads without writing: ``S q_t`` for every token against one fixed state (writes off, SSW)."""
    reads = torch.einsum("nij,ntj->nti", state.float(), q.float())
    if valid is not None:
        reads = torch.where(valid.unsqueeze(-1), reads, torch.zeros_like(reads))
    return reads.to(q.dtype)


# --------------------------------------------------------------------------------------------- chunked
def _compose(first: tuple[torch.Tensor, torch.Tensor],
             then: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Two affine maps on row vectors, ``s ↦ s P + c``, applied one after the other."""
    (p1, c1), (p2, c2) = first, then
    return p1 @ p2, (c1.unsqueeze(-2) @ p2).squeeze(-2) + c2


def scan_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
                 state: torch.Tensor, valid: torch.Tensor | None = None,
                 chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """The same recurrence in plain batched torch ops, for devices without the compiled loop (CUDA).

    Row i of the state evolves by its own affine map per token,
    ``s ↦ s ((1-β_i) I - β_i k kᵀ) + β_i v_i kᵀ``, so the state after any span of tokens is one r×r
    matrix and one r-vector per row. Inside each chunk the maps are composed in log2(chunk) parallel
    doubling steps (all chunks at once); across chunks only the chunk-end maps are applied, one small
    step per chunk. Work is O(T r⁴) multiply-adds instead of the loop's T sequential launches, and
    autograd differentiates it as it is. Memory is about 2 KB per token and state head per doubling
    step (fp32, r = 8), kept for the backward.
    """
    _check(q, k, v, beta, state, valid)
    if chunk < 1 or chunk & (chunk - 1):
        raise ValueError(f"scan_chunked: chunk must be a power of two, got {chunk}")
    out_dtype, state_dtype = q.dtype, state.dtype
    n, t, r = q.shape
    if t == 0:
        return q.new_zeros(q.shape), state
    q, k, v, beta, s0 = q.float(), k.float(), v.float(), beta.float(), state.float()
    eye = torch.eye(r, device=q.device, dtype=torch.float32)
    kk = k.unsqueeze(-1) * k.unsqueeze(-2)                                      # [n, t, r, r]
    b_ = beta.unsqueeze(-1).unsqueeze(-1)                                       # [n, t, rows, 1, 1]
    maps = (1 - b_) * eye - b_ * kk.unsqueeze(2)                                # [n, t, rows, r, r]
    offs = (beta * v).unsqueeze(-1) * k.unsqueeze(2)                            # [n, t, rows, r]
    if valid is not None:  # padding is the identity map (where: its projections may be non-finite)
        ok = valid.view(n, t, 1, 1, 1)
        maps = torch.where(ok, maps, eye)
        offs = torch.where(ok.squeeze(-1), offs, torch.zeros((), device=q.device))
    c = min(chunk, 1 << (t - 1).bit_length())
    pad = -t % c
    if pad:
        maps = torch.cat([maps, eye.expand(n, pad, r, r, r)], 1)
        offs = torch.cat([offs, offs.new_zeros(n, pad, r, r)], 1)
    m = maps.shape[1] // c
    maps, offs = maps.view(n, m, c, r, r, r), offs.view(n, m, c, r, r)
    # inclusive prefix maps inside each chunk: position j maps the chunk-start state to the state after j
    step = 1
    while step < c:
        head = (maps[:, :, :step], offs[:, :, :step])
        tail = _compose((maps[:, :, :-step], offs[:, :, :-step]), (maps[:, :, step:], offs[:, :, step:]))
        maps, offs = torch.cat([head[0], tail[0]], 2), torch.cat([head[1], tail[1]], 2)
        step *= 2
    starts = []
    cur = s0                                                                    # [n, rows, r]
    for j in range(m):
        starts.append(cur)
        cur = (cur.unsqueeze(-2) @ maps[:, j, -1]).squeeze(-2) + offs[:, j, -1]
    start = torch.stack(starts, 1).unsqueeze(2)                                 # [n, m, 1, rows, r]
    after = (start.unsqueeze(-2) @ maps).squeeze(-2) + offs                     # [n, m, c, rows, r]
    before = torch.cat([start, after[:, :, :-1]], 2).reshape(n, m * c, r, r)[:, :t]
    reads = (before @ q.unsqueeze(-1)).squeeze(-1)                              # read before write
    if valid is not None:
        reads = torch.where(valid.unsqueeze(-1), reads, torch.zeros_like(reads))
    return reads.to(out_dtype), cur.to(state_dtype)


# --------------------------------------------------------------------------------------------- numba
if _numba is not None:
    _jit = _numba.njit(cache=True, nogil=True, fastmath=False, error_model="numpy")

    @_jit
    def _fwd_kernel(q, k, v, beta, valid, state, reads, final, ckpt, every):  # pragma: no cover - compiled
        n_seq, n_tok, r = q.shape
        s = _np.empty((r, r), dtype=_np.float32)
        for n in range(n_seq):
            for i in range(r):
                for j in range(r):
                    s[i, j] = state[n, i, j]
            for t in range(n_tok):
                if ckpt.shape[1] > 0 and t % every == 0:
                    c = t // every
                    for i in range(r):
                        for j in range(r):
                            ckpt[n, c, i, j] = s[i, j]
                if not valid[n, t]:
                    for i in range(r):
                        reads[n, t, i] = 0.0
                    continue
                for i in range(r):
                    rd = _np.float32(0.0)
                    dot = _np.float32(0.0)
                    for j in range(r):
                        rd += s[i, j] * q[n, t, j]
                        dot += s[i, j] * k[n, t, j]
                    reads[n, t, i] = rd
                    b = beta[n, t, i]
                    keep = _np.float32(1.0) - b
                    w = b * (v[n, t, i] - dot)
                    for j in range(r):
                        s[i, j] = keep * s[i, j] + w * k[n, t, j]
            for i in range(r):
                for j in range(r):
                    final[n, i, j] = s[i, j]

    @_jit
    def _bwd_kernel(q, k, v, beta, valid, ckpt, every, g_reads, g_final,
                    dq, dk, dv, dbeta, dstate):  # pragma: no cover - compiled
        n_seq, n_tok, r = q.shape
        hist = _np.empty((every, r, r), dtype=_np.float32)  # S_{t-1} for the tokens of one block
        g = _np.empty((r, r), dtype=_np.float32)
        n_blocks = (n_tok + every - 1) // every
        for n in range(n_seq):
            for i in range(r):
                for j in range(r):
                    g[i, j] = g_final[n, i, j]
            for blk in range(n_blocks - 1, -1, -1):
                t0 = blk * every
                t1 = min(t0 + every, n_tok)
                # recompute the block's state history from its checkpoint
                for i in range(r):
                    for j in range(r):
                        hist[0, i, j] = ckpt[n, blk, i, j]
                for t in range(t0, t1 - 1):
                    h = t - t0
                    if not valid[n, t]:
                        for i in range(r):
                            for j in range(r):
                                hist[h + 1, i, j] = hist[h, i, j]
                        continue
                    for i in range(r):
                        dot = _np.float32(0.0)
                        for j in range(r):
                            dot += hist[h, i, j] * k[n, t, j]
                        b = beta[n, t, i]
                        keep = _np.float32(1.0) - b
                        w = b * (v[n, t, i] - dot)
                        for j in range(r):
                            hist[h + 1, i, j] = keep * hist[h, i, j] + w * k[n, t, j]
                # reverse through the block
                for t in range(t1 - 1, t0 - 1, -1):
                    h = t - t0
                    if not valid[n, t]:
                        for j in range(r):
                            dq[n, t, j] = 0.0
                            dk[n, t, j] = 0.0
                            dv[n, t, j] = 0.0
                            dbeta[n, t, j] = 0.0
                        continue
                    for j in range(r):
                        dq[n, t, j] = 0.0
                        dk[n, t, j] = 0.0
                    for i in range(r):
                        gr = g_reads[n, t, i]
                        b = beta[n, t, i]
                        gk = _np.float32(0.0)
                        dot = _np.float32(0.0)
                        gs = _np.float32(0.0)
                        for j in range(r):
                            gk += g[i, j] * k[n, t, j]
                            dot += hist[h, i, j] * k[n, t, j]
                            gs += g[i, j] * hist[h, i, j]
                        err = v[n, t, i] - dot
                        dv[n, t, i] = b * gk
                        dbeta[n, t, i] = err * gk - gs
                        for j in range(r):
                            sp = hist[h, i, j]
                            dq[n, t, j] += gr * sp
                            dk[n, t, j] += b * err * g[i, j] - b * gk * sp
                            g[i, j] = gr * q[n, t, j] + (_np.float32(1.0) - b) * g[i, j] - b * gk * k[n, t, j]
            for i in range(r):
                for j in range(r):
                    dstate[n, i, j] = g[i, j]


    @_jit
    def _fused_kernel(act, state, valid, heads, write, reads, new_state):  # pragma: no cover - compiled
        # act [B, T, 4R]: tanh(q̂), tanh(k̂), v, β — the transcendental functions are applied beforehand by
        # torch's vectorised kernels (per-element libm calls here cost more than the whole recurrence)
        n_b, n_tok, four_r = act.shape
        big_r = four_r // 4
        r = big_r // heads
        s = _np.empty((r, r), dtype=_np.float32)
        q = _np.empty(r, dtype=_np.float32)
        k = _np.empty(r, dtype=_np.float32)
        for b in range(n_b):
            for hh in range(heads):
                o = hh * r
                for i in range(r):
                    for j in range(r):
                        s[i, j] = state[b, hh, i, j]
                for t in range(n_tok):
                    if not valid[b, t]:
                        for i in range(r):
                            reads[b, t, o + i] = 0.0
                        continue
                    qn = _np.float32(0.0)
                    kn = _np.float32(0.0)
                    for j in range(r):
                        q[j] = act[b, t, o + j]
                        k[j] = act[b, t, big_r + o + j]
                        qn += q[j] * q[j]
                        kn += k[j] * k[j]
                    qn = max(_np.sqrt(qn), _np.float32(1e-6))
                    kn = max(_np.sqrt(kn), _np.float32(1e-6))
                    for j in range(r):
                        q[j] = q[j] / qn
                        k[j] = k[j] / kn
                    for i in range(r):
                        rd = _np.float32(0.0)
                        dot = _np.float32(0.0)
                        for j in range(r):
                            rd += s[i, j] * q[j]
                            dot += s[i, j] * k[j]
                        reads[b, t, o + i] = rd
                        if write:
                            beta = act[b, t, 3 * big_r + o + i]
                            w = beta * (act[b, t, 2 * big_r + o + i] - dot)
                            keep = _np.float32(1.0) - beta
                            for j in range(r):
                                s[i, j] = keep * s[i, j] + w * k[j]
                for i in range(r):
                    for j in range(r):
                        new_state[b, hh, i, j] = s[i, j]


def numba_available() -> bool:
    return _numba is not None


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _np_valid(valid: torch.Tensor | None, n: int, t: int) -> "_np.ndarray":
    if valid is None:
        return _np.ones((n, t), dtype=_np.bool_)
    return valid.detach().to(torch.bool).contiguous().numpy()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, beta, state, valid):  # type: ignore[override]
        n, t, r = q.shape
        qf, kf, vf, bf, sf = (_f32(x) for x in (q, k, v, beta, state))
        vmask = _np_valid(valid, n, t)
        reads = torch.empty(n, t, r, dtype=torch.float32)
        final = torch.empty(n, r, r, dtype=torch.float32)
        # forward runs under no_grad; needs_input_grad says whether a backward can follow
        track = any(ctx.needs_input_grad[:5])
        n_ckpt = -(-t // CHECKPOINT_EVERY) if track else 0
        ckpt = torch.empty(n, n_ckpt, r, r, dtype=torch.float32)
        _fwd_kernel(qf.numpy(), kf.numpy(), vf.numpy(), bf.numpy(), vmask, sf.numpy(),
                    reads.numpy(), final.numpy(), ckpt.numpy(), CHECKPOINT_EVERY)
        ctx.save_for_backward(qf, kf, vf, bf, ckpt)
        ctx.vmask = vmask
        ctx.dtypes = (q.dtype, k.dtype, v.dtype, beta.dtype, state.dtype)
        return reads.to(q.dtype), final.to(state.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_reads, g_final):  # type: ignore[override]
        qf, kf, vf, bf, ckpt = ctx.saved_tensors
        n, t, r = qf.shape
        g_reads = torch.zeros(n, t, r) if g_reads is None else _f32(g_reads)
        g_final = torch.zeros(n, r, r) if g_final is None else _f32(g_final)
        dq, dk, dv, db = (torch.empty(n, t, r, dtype=torch.float32) for _ in range(4))
        ds = torch.empty(n, r, r, dtype=torch.float32)
        _bwd_kernel(qf.numpy(), kf.numpy(), vf.numpy(), bf.numpy(), ctx.vmask, ckpt.numpy(), CHECKPOINT_EVERY,
                    g_reads.numpy(), g_final.numpy(), dq.numpy(), dk.numpy(), dv.numpy(), db.numpy(), ds.numpy())
        grads = [g.to(dt) for g, dt in zip((dq, dk, dv, db, ds), ctx.dtypes)]
        return (*[g if need else None for g, need in zip(grads, ctx.needs_input_grad[:5])], None)


def scan_numba(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
               state: torch.Tensor, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Compiled per-token loop (CPU tensors), forward and backward. Same contract as :func:`scan_naive`."""
    if _numba is None:
        raise RuntimeError("scan_numba needs the numba package (pip install numba)")
    _check(q, k, v, beta, state, valid)
    if any(x.device.type != "cpu" for x in (q, k, v, beta, state)):
        raise ValueError("scan_numba runs on CPU tensors only")
    if q.shape[1] == 0:
        return q.new_zeros(q.shape), state
    return _NumbaScan.apply(q, k, v, beta, state, valid)



def fused_scan_inference(pre: torch.Tensor, bias: torch.Tensor, *, state: torch.Tensor,
                         valid: torch.Tensor | None, write: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """No-grad CPU fast path: gate and squashing functions by torch's vectorised kernels, then the L2
    normalisation and the scan in one compiled call.

    ``pre``: ``[B, T, 4R]`` pre-activations packed as (q̂, k̂, v, β̂), each block head-major
    (``R = H·r``); ``bias``: ``[R]`` gate bias; ``state``: ``[B, H, r, r]``. Returns reads ``[B, T, R]``
    (fp32) and the new state ``[B, H, r, r]`` (fp32; a fresh tensor, equal to ``state`` when
    ``write`` is False). Same maths as the features in ``layer.py`` followed by :func:`scan`, without
    the per-op dispatch cost that dominates a one-token decode step.
    """
    b, t, four_r = pre.shape
    big_r = four_r // 4
    heads, r = state.shape[1], state.shape[2]
    pre = pre.detach().to(torch.float32)
    act = torch.cat([torch.tanh(pre[..., :2 * big_r]), pre[..., 2 * big_r:3 * big_r],
                     torch.sigmoid(pre[..., 3 * big_r:] + bias.detach().to(torch.float32))], -1)
    st = state.detach().to(torch.float32).contiguous()
    reads = torch.empty(b, t, big_r, dtype=torch.float32)
    new_state = torch.empty_like(st)
    vmask = _np_valid(valid, b, t)
    _fused_kernel(act.numpy(), st.numpy(), vmask, heads, write, reads.numpy(), new_state.numpy())
    return reads, new_state

# --------------------------------------------------------------------------------------------- dispatch
def resolve_impl(impl: ScanImpl, device: torch.device) -> Literal["numba", "chunked", "naive"]:
    """``auto``: numba on CPU when importable, else the chunked torch form (CUDA, or CPU without numba)."""
    impl = os.environ.get("DELTAMEM_SCAN_IMPL", impl)  # type: ignore[assignment]
    if impl in ("naive", "chunked"):
        return impl
    if impl == "numba":
        if _numba is None:
            raise RuntimeError("DeltaMem scan_impl='numba' but numba is not installed")
        if device.type != "cpu":
            raise ValueError(f"DeltaMem scan_impl='numba' runs on CPU, tensors are on {device}")
        return "numba"
    if impl != "auto":
        raise ValueError(f"unknown scan implementation {impl!r}; expected auto, numba, chunked or naive")
    return "numba" if _numba is not None and device.type == "cpu" else "chunked"


def scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor, *,
         state: torch.Tensor, valid: torch.Tensor | None = None,
         impl: ScanImpl = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Token-level δ-mem scan; see the module docstring for shapes and semantics."""
    chosen = resolve_impl(impl, q.device)
    if chosen == "numba":
        return scan_numba(q, k, v, beta, state=state, valid=valid)
    if chosen == "chunked":
        return scan_chunked(q, k, v, beta, state=state, valid=valid)
    return scan_naive(q, k, v, beta, state=state, valid=valid)


# --------------------------------------------------------------------------------------------- SSW
def segment_means(x: torch.Tensor, segment_ids: torch.Tensor,
                  valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of ``x [B, T, D]`` over the valid tokens of each segment id ≥ 0 (id -1: never written).

    Returns ``(means [B, S, D], present [B, S])`` with S = max id + 1; slot s holds segment id s, so a
    scan over the slots visits segments in id order (absent ids are marked not present), as the
    reference does.
    """
    if segment_ids.shape != x.shape[:2]:
        raise ValueError(f"segment ids must be {tuple(x.shape[:2])}, got {tuple(segment_ids.shape)}")
    ids = segment_ids.to(device=x.device, dtype=torch.long)
    keep = ids >= 0
    if valid is not None:
        keep = keep & valid
    n_seg = int(ids.max().item()) + 1 if keep.any() else 0
    b, _, d = x.shape
    if n_seg == 0:
        return x.new_zeros(b, 0, d), torch.zeros(b, 0, dtype=torch.bool, device=x.device)
    slot = torch.where(keep, ids, torch.full_like(ids, n_seg))  # dropped tokens go to a spare slot
    xf = torch.where(keep.unsqueeze(-1), x.float(), torch.zeros((), dtype=torch.float32, device=x.device))
    sums = xf.new_zeros(b, n_seg + 1, d).scatter_add(1, slot.unsqueeze(-1).expand(b, -1, d), xf)
    counts = xf.new_zeros(b, n_seg + 1).scatter_add(1, slot, keep.float())
    sums, counts = sums[:, :n_seg], counts[:, :n_seg]
    means = sums / counts.clamp_min(1).unsqueeze(-1)
    return means.to(x.dtype), counts > 0


def unit(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise the last dimension, ``x / max(‖x‖, eps)`` (the reference's normalisation)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


__all__ = ["scan", "scan_naive", "scan_numba", "scan_chunked", "fused_scan_inference", "read_state", "segment_means", "unit", "resolve_impl",
           "numba_available", "CHECKPOINT_EVERY"]

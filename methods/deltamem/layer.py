"""The δ-mem parameters of one attention layer and the computation from hidden states to reads.

Parameter names follow the reference (deltamem.md §3.1, §8) so the official adapter maps one to one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from methods.deltamem import fastpath
from methods.deltamem.config import DeltaMemConfig
from methods.deltamem.scan import fused_scan_inference, read_state, resolve_impl, scan, segment_means, unit
from methods.deltamem.state import OnlineState

HEADS = ("q", "k", "v", "o")


class _Runtime:
    __slots__ = ("state", "cached_input", "cached_reads", "groups", "packed", "numpy", "numpy_key", "numpy_call",
                 "plan", "reads_np", "state_src", "state_np", "scratch", "reads_buf")

    def __init__(self) -> None:
        self.state: OnlineState | None = None
        self.cached_input: torch.Tensor | None = None
        self.cached_reads: torch.Tensor | None = None
        self.groups: dict[str, tuple[nn.Parameter, ...]] = {}
        self.packed: tuple[tuple[int, ...], torch.Tensor] | None = None
        self.numpy: dict[str, object] = {}
        self.numpy_key: tuple[int, ...] | None = None
        self.numpy_call: int | None = None  # the model call whose weights were last checked
        self.plan: tuple | None = None      # decode fast path: weights and shapes bound for the current call
        self.reads_np: np.ndarray | None = None  # reads of the current call from fast_query, for fast_output
        # decode steps: the state tensor last seen and its numpy view, a scratch state for read-only steps,
        # and the (numpy, torch) reads buffer, all re-used from step to step
        self.state_src: torch.Tensor | None = None
        self.state_np: np.ndarray | None = None
        self.scratch: np.ndarray | None = None
        self.reads_buf: tuple[np.ndarray, torch.Tensor] | None = None


def _version_key(params: tuple[nn.Parameter, ...]) -> tuple[int, ...]:
    return tuple(x for p in params for x in (p._version, p.data_ptr()))


def _numpy_layout(group: str, params: tuple[nn.Parameter, ...]):
    w = torch.cat(params, 0) if len(params) > 1 else params[0]
    if group == "bias":
        return w.float().contiguous().numpy().copy()
    # weights are laid out [in, out] so the compiled loops run over contiguous outputs
    return w.float().t().contiguous().numpy()


class DeltaMemLayer(nn.Module):
    """Memory projections, gates and correction heads for one wrapped attention module."""

    def __init__(self, config: DeltaMemConfig, layer_id: int, *, d_model: int, out_features: dict[str, int],
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        R = config.read_dim
        self.config = config
        self.layer_id = layer_id
        self.memory_q_proj = nn.Parameter(torch.empty(R, d_model, **kw))
        self.memory_k_proj = nn.Parameter(torch.empty(R, d_model, **kw))
        self.memory_v_proj = nn.Parameter(torch.empty(R, d_model, **kw))
        self.beta_proj = nn.Parameter(torch.empty(R, d_model, **kw))  # rank-wise gates: one per state row
        self.beta_bias = nn.Parameter(torch.empty(R, **kw))
        for head in HEADS:
            setattr(self, f"delta_{head}_proj", nn.Parameter(torch.empty(out_features[head], R, **kw)))
        # Runtime caches live in a plain object: nn.Module.__setattr__/__getattr__ cost microseconds per
        # access, which matters on the per-token decode path.
        object.__setattr__(self, "_rt", _Runtime())
        self._rt.groups = {"in": (self.memory_q_proj, self.memory_k_proj, self.memory_v_proj, self.beta_proj),
                           "bias": (self.beta_bias,),
                           **{h: (getattr(self, f"delta_{h}_proj"),) for h in HEADS}}

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, base_weights: dict[str, torch.Tensor]) -> None:
        """deltamem.md §3.1/§3.5. ``base_weights`` maps q/k/v/o to the base projection weights."""
        cfg = self.config
        for w in (self.memory_q_proj, self.memory_k_proj, self.memory_v_proj):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        nn.init.zeros_(self.beta_proj)
        nn.init.constant_(self.beta_bias, cfg.beta_bias_init)
        for head in HEADS:
            w = getattr(self, f"delta_{head}_proj")
            w.zero_()
            if head not in cfg.delta_heads or cfg.output_init == "zero":
                continue
            if cfg.output_init == "random":
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
                w.mul_(cfg.online_gain)
                continue
            base = base_weights[head]
            limit = cfg.base_slice_ref_width if cfg.output_init == "base_slice_fixed" else cfg.rank
            width = min(limit, w.shape[1], base.shape[1])
            cols = base[:, :width].float()
            cols = cols / cols.norm(dim=0, keepdim=True).clamp_min(1e-12)
            w[:, :width] = (cfg.online_gain * cols).to(w.dtype)

    def trainable_names(self) -> tuple[str, ...]:
        active = tuple(f"delta_{h}_proj" for h in HEADS if h in self.config.delta_heads)
        return ("memory_q_proj", "memory_k_proj", "memory_v_proj", "beta_proj", "beta_bias", *active)

    # ------------------------------------------------------------------ runtime
    def bind(self, state: OnlineState | None) -> None:
        self._rt.state = state
        self.clear()

    def clear(self) -> None:
        self._rt.cached_input = None
        self._rt.cached_reads = None
        self._rt.reads_np = None

    def reads_for(self, h: torch.Tensor) -> torch.Tensor:
        """Reads ``[B, T, R]`` for the attention input ``h``; computed once per call and shared by q/k/v."""
        rt = self._rt
        if rt.cached_input is not h:
            rt.cached_reads = self._compute_reads(h)
            rt.cached_input = h
        assert rt.cached_reads is not None
        return rt.cached_reads

    # ------------------------------------------------------------------ decode steps
    # Between two layers' δ-mem code the whole transformer layer runs and evicts the caches, so on a decode
    # step every Python operation here costs about a microsecond (measured: ~220 µs of glue per layer for
    # ~30 µs of compiled work on the generic path). The two methods below are the whole per-layer cost of a
    # decode step: the checks that hold for the entire call were made once by the model's pre-hook
    # (``OnlineState.call_fast``) and the weights were bound by :meth:`prepare_fast_call`.
    def prepare_fast_call(self) -> None:
        """Bind the compiled path's weights for this model call (parameter versions are checked here)."""
        cfg = self.config
        self._rt.plan = (self._numpy_weight("in"), self._numpy_weight("bias"), self._numpy_weight("q"),
                         self._numpy_weight("o"), np.float32(cfg.scale), cfg.num_state_heads, cfg.rank)

    def fast_query(self, h: torch.Tensor, out: torch.Tensor) -> bool:
        """Reads, write and q correction of a decode step in one compiled call, ``out`` updated in place;
        False (nothing done) when the call is not eligible, and the generic path takes over."""
        rt = self._rt
        st = rt.state
        if (st is None or not st.call_fast or h.dtype is not torch.float32 or out.dtype is not torch.float32
                or not h.is_contiguous() or not out.is_contiguous()):
            return False
        b, t, _ = h.shape
        if (b, t) != st.call_shape or (st._batch_size is not None and st._batch_size != b):
            return False  # the generic path raises the explanatory error
        w_in, bias, w_q, _, scale, heads, r = rt.plan
        # Every Python-level allocation or torch<->numpy conversion costs microseconds here (cold caches),
        # so the state is updated in place whenever the fast path owns it, and the buffers are re-used.
        lid = self.layer_id
        prev = st._states.get(lid)
        write = st.write_enabled
        if prev is None:
            state_np = np.zeros((b, heads, r, r), dtype=np.float32)
            src = None
        elif prev is rt.state_src:
            state_np = rt.state_np
            src = prev
        elif prev.dtype is torch.float32 and prev.is_contiguous():
            state_np = prev.detach().numpy().reshape(b, heads, r, r)
            src = prev
        else:
            return False
        if not write:
            if rt.scratch is None or rt.scratch.shape != state_np.shape:
                rt.scratch = np.empty_like(state_np)
            new = rt.scratch
        elif src is not None and lid in st.exclusive:
            new = state_np  # nobody else holds this tensor: the kernel updates it in place
        else:  # copy-on-write: a tensor that was handed out (snapshot, generic path, caller) is never mutated
            new = np.empty((b, heads, r, r), dtype=np.float32)
        buf = rt.reads_buf
        if buf is None or buf[0].shape != (b, t, heads * r):
            arr = np.empty((b, t, heads * r), dtype=np.float32)
            buf = rt.reads_buf = (arr, torch.from_numpy(arr))
        reads = buf[0]
        valid = st.call_valid_np
        fastpath.reads_q_kernel(h.numpy(), w_in, bias, state_np, fastpath.ALL_VALID if valid is None else valid,
                                valid is None, heads, write, reads, new, w_q, scale, out.numpy())
        if write and new is not state_np:
            made = torch.from_numpy(new if heads > 1 else new.reshape(b, r, r))
            st.put(lid, made)
            st.exclusive.add(lid)
            rt.state_src, rt.state_np = made, new
        elif src is not None:
            rt.state_src, rt.state_np = src, state_np
        rt.reads_np = reads
        rt.cached_reads = buf[1]  # k/v correction heads, when active, take the generic path
        rt.cached_input = h
        return True

    def fast_output(self, out: torch.Tensor) -> bool:
        """The o correction after :meth:`fast_query`, in place; False when that did not run."""
        rt = self._rt
        reads = rt.reads_np
        if reads is None or out.dtype is not torch.float32 or not out.is_contiguous():
            return False
        fastpath.correction_kernel(reads, rt.plan[3], rt.plan[4], out.numpy())
        rt.cached_input = rt.cached_reads = rt.reads_np = None
        return True

    def take_reads(self) -> torch.Tensor:
        """The reads of the current call, for the o_proj correction (which comes last)."""
        reads = self._rt.cached_reads
        if reads is None:
            raise RuntimeError(f"δ-mem layer {self.layer_id}: o_proj ran before q_proj in this attention call; "
                               "this architecture calls its projections in an unsupported order")
        self.clear()
        return reads

    def _features(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pre-activations ``[B, T, 4R]`` → folded q, k, v, β of shape ``[B·H, T, r]`` in fp32."""
        cfg = self.config
        b, t, _ = pre.shape
        h, r = cfg.num_state_heads, cfg.rank
        pre = pre.float().view(b, t, 4, h, r)
        qk = unit(torch.tanh(pre[:, :, :2]))  # tanh + L2 per state head
        beta = torch.sigmoid(pre[:, :, 3] + self.beta_bias.float().view(h, r))

        def fold(x: torch.Tensor) -> torch.Tensor:  # [B, T, H, r] -> [B*H, T, r]
            return x.transpose(1, 2).reshape(b * h, t, r) if h > 1 else x.view(b, t, r)

        return fold(qk[:, :, 0]), fold(qk[:, :, 1]), fold(pre[:, :, 2]), fold(beta)

    def _packed_weight(self) -> torch.Tensor:
        parts = self._rt.groups["in"]
        if torch.is_grad_enabled():
            return torch.cat(parts, 0)
        # Inference re-uses the concatenation while no parameter has been modified in place
        # (optimizer steps and adapter loads bump the version counters).
        key = _version_key(parts)
        if self._rt.packed is None or self._rt.packed[0] != key:
            self._rt.packed = (key, torch.cat(parts, 0))
        return self._rt.packed[1]

    def _numpy_weight(self, name: str):
        """fp32 numpy copies for the compiled fast path, refreshed when a parameter changes in place.

        Parameters cannot change inside one model call, so the version check runs once per layer and call
        (a decode step would otherwise pay it for every head).
        """
        rt = self._rt
        call = rt.state.call_id if rt.state is not None and rt.state.call_shape is not None else None
        if call is None or rt.numpy_call != call:
            key = _version_key(tuple(p for ps in rt.groups.values() for p in ps))
            if rt.numpy_key != key:
                with torch.no_grad():
                    rt.numpy = {g: _numpy_layout(g, ps) for g, ps in rt.groups.items()}
                rt.numpy_key = key
            rt.numpy_call = call
        return rt.numpy[name]

    def _needs_grad(self, hidden: torch.Tensor) -> bool:
        return torch.is_grad_enabled() and (hidden.requires_grad or any(
            p.requires_grad for ps in self._rt.groups.values() for p in ps))

    def _compute_reads(self, hidden: torch.Tensor) -> torch.Tensor:
        st = self._rt.state
        if st is None:
            raise RuntimeError("δ-mem layer used while detached")
        cfg = self.config
        if hidden.dim() != 3:
            raise ValueError(f"δ-mem expects attention inputs [B, T, d], got {tuple(hidden.shape)}")
        b, t, _ = hidden.shape
        h, r = cfg.num_state_heads, cfg.rank
        valid = st.validity(b, t)
        segmented = st.write_enabled and cfg.write_granularity != "token" and st.call_segment_ids is not None
        state = st.get(self.layer_id, b, hidden.device)
        fast = not segmented and (st.call_impl or resolve_impl(cfg.scan_impl, hidden.device)) == "numba"
        if fast and fastpath.eligible(hidden) and not self._needs_grad(hidden):
            reads, new_state = fastpath.reads(hidden, self._numpy_weight("in"), self._numpy_weight("bias"),
                                              state=state, valid=valid, heads=h, write=st.write_enabled)
            if st.write_enabled:
                st.put(self.layer_id, new_state.view(state.shape))
            return reads
        pre = F.linear(hidden, self._packed_weight())
        if fast and not self._needs_grad(hidden):
            reads, new_state = fused_scan_inference(pre, self.beta_bias, state=state.view(b, h, r, r),
                                                    valid=valid, write=st.write_enabled)
            if st.write_enabled:
                st.put(self.layer_id, new_state.view(state.shape))
            return reads.to(hidden.dtype)
        q, k, v, beta = self._features(pre)
        s = state.reshape(b * h, r, r)
        valid_n = valid.repeat_interleave(h, 0) if (valid is not None and h > 1) else valid
        if not st.write_enabled:
            reads = read_state(q, state=s, valid=valid_n)
        elif segmented:
            reads = read_state(q, state=s, valid=valid_n)
            means, present = segment_means(pre, st.call_segment_ids, valid)
            if means.shape[1] > 0:
                _, sk, sv, sbeta = self._features(means)
                present_n = present.repeat_interleave(h, 0) if h > 1 else present
                _, s_new = scan(torch.zeros_like(sk), sk, sv, sbeta, state=s, valid=present_n, impl=cfg.scan_impl)
                st.put(self.layer_id, s_new.view(state.shape))
        else:
            reads, s_new = scan(q, k, v, beta, state=s, valid=valid_n, impl=cfg.scan_impl)
            st.put(self.layer_id, s_new.view(state.shape))
        if h > 1:
            reads = reads.view(b, h, t, r).transpose(1, 2)
        return reads.reshape(b, t, h * r).to(hidden.dtype)

    def correction(self, head: str, out: torch.Tensor, reads: torch.Tensor) -> torch.Tensor:
        """``out + (α/r) · W_Δhead · reads`` (one fused addmm)."""
        w = self._rt.groups[head][0]
        flat_reads = reads.reshape(-1, reads.shape[-1])
        if not (torch.is_grad_enabled() and (w.requires_grad or out.requires_grad or reads.requires_grad)) \
                and out.is_contiguous() and out.dtype == reads.dtype == w.dtype:
            # ``out`` is the fresh projection output: adding in place spares addmm's copy of it, which on
            # long prompts costs more than the rank-r product (measured 2,048 tokens, R = 32, 2 threads:
            # 0.44 ms in place vs 2.4 ms for the compiled loop that did this before)
            out.view(-1, out.shape[-1]).addmm_(flat_reads, w.t(), alpha=self.config.scale)
            return out
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), flat_reads, w.t(), alpha=self.config.scale)
        return flat.view(out.shape)

"""Attach δ-mem to a Hugging Face decoder by wrapping its attention projections (PEFT-style).

Only ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` are replaced; the family's own attention code
(norms, RoPE, KV cache, eager/sdpa/flash kernels) runs untouched, so any decoder whose attention has
these four linears works:

* the ``q_proj`` wrapper sees exactly the attention input hidden state; it computes the memory
  projections, runs the scan (reads before writes) and adds ``s·W_Δq r_t`` to the query projection —
  before q_norm and RoPE, as the reference does;
* ``k_proj`` / ``v_proj`` wrappers (only for active k/v heads) reuse those reads;
* the ``o_proj`` wrapper adds ``s·W_Δo r_t``.

Padding comes from the 2-D attention mask captured by a forward pre-hook on the model, sliced to the
tokens of the current call — never from a 4-D mask, whose polarity depends on the attention
implementation.
"""
from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _nn_module

from methods.deltamem import fastpath
from methods.deltamem.config import DeltaMemConfig
from methods.deltamem.layer import HEADS, DeltaMemLayer
from methods.deltamem.scan import resolve_impl
from methods.deltamem.state import OnlineState, Snapshot

PARAM_PREFIX = "deltamem"  # submodule name on each attention module: <attn>.deltamem.<param>
_PROJ = {h: f"{h}_proj" for h in HEADS}
_VERSION = operator.attrgetter("_version")


class UnsupportedArchitecture(ValueError):
    """The model has no attention modules δ-mem knows how to wrap."""


def _hookless(module: nn.Module) -> bool:
    """No hook would run if ``module`` were called (its own or global ones)."""
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or _nn_module._global_forward_hooks
                or _nn_module._global_forward_pre_hooks or _nn_module._global_backward_hooks
                or _nn_module._global_backward_pre_hooks)


class DeltaMemProjection(nn.Module):
    """A base projection plus the δ-mem correction of one head. The parameters live on the layer."""

    def __init__(self, base_layer: nn.Linear, layer: DeltaMemLayer, head: str, add_correction: bool) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.head = head
        self.add_correction = add_correction
        object.__setattr__(self, "deltamem_layer", layer)  # not a child: one owner for the parameters

    # Attention code sometimes inspects its projections (dtype checks, quantisation probes).
    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        # A plain nn.Linear without hooks is called as what its forward is: one module dispatch less per
        # projection, which is measurable on one-token decode steps.
        if type(base) is nn.Linear and _hookless(base):
            out = F.linear(x, base.weight, base.bias)
        else:
            out = base(x)
        layer: DeltaMemLayer = self.deltamem_layer  # type: ignore[assignment]
        if self.head == "o":
            if layer.fast_output(out):
                return out
            return layer.correction("o", out, layer.take_reads())
        if self.head == "q" and self.add_correction and layer.fast_query(x, out):
            return out
        reads = layer.reads_for(x)
        return layer.correction(self.head, out, reads) if self.add_correction else out

    def extra_repr(self) -> str:
        return f"head={self.head!r}, correction={self.add_correction}"


@dataclass
class _Site:
    """One wrapped attention module and what was there before."""

    name: str
    attention: nn.Module
    layer: DeltaMemLayer
    originals: dict[str, nn.Module] = field(default_factory=dict)


def find_attention_modules(model: nn.Module, config: DeltaMemConfig) -> list[tuple[str, nn.Module, int]]:
    """``(path, module, layer index)`` of every causal self-attention module δ-mem would wrap."""
    found: list[tuple[str, nn.Module, int]] = []
    named = [(n, m) for n, m in model.named_modules() if n.split(".")[-1] == config.attention_name]
    if not named:
        kinds = sorted({type(m).__name__ for n, m in model.named_modules() if "attn" in n.split(".")[-1].lower()})
        raise UnsupportedArchitecture(
            f"{type(model).__name__}: no module named {config.attention_name!r} found "
            f"(attention-like modules present: {kinds or 'none'}); set attention_name to the decoder layers' "
            "attention attribute")
    for name, module in named:
        if getattr(module, "is_causal", True) is False:  # e.g. a vision tower's bidirectional attention
            continue
        for head in HEADS:
            proj = getattr(module, _PROJ[head], None)
            if not isinstance(proj, nn.Linear):
                children = ", ".join(n for n, _ in module.named_children()) or "none"
                what = "missing" if proj is None else f"a {type(proj).__name__}, not nn.Linear"
                raise UnsupportedArchitecture(
                    f"{type(module).__name__} at {name!r}: module {_PROJ[head]!r} not found ({what}; children: "
                    f"{children}). δ-mem needs separate q_proj/k_proj/v_proj/o_proj linear layers.")
        idx = getattr(module, "layer_idx", None)
        found.append((name, module, int(idx) if idx is not None else len(found)))
    if not found:
        raise UnsupportedArchitecture(f"{type(model).__name__}: every {config.attention_name!r} module is non-causal")
    if config.target_layers:
        missing = sorted(set(config.target_layers) - {i for _, _, i in found})
        if missing:
            raise ValueError(f"target_layers {missing} do not exist (layers 0..{len(found) - 1})")
        found = [f for f in found if f[2] in config.target_layers]
    return found


class DeltaMem:
    """δ-mem attached to one model: parameters, online state, controls, detach.

    Typical use::

        dm = attach(model, DeltaMemConfig.tsw())      # or DeltaMem.from_adapter(model, "path")
        dm.reset()
        model(history_ids, attention_mask=mask)        # writes the history into the state
        with dm.writes(False):
            model.generate(question_ids, ...)          # answers from the state, history removed
    """

    def __init__(self, model: nn.Module, config: DeltaMemConfig, sites: list[_Site], state: OnlineState,
                 requires_grad_before: dict[str, bool]) -> None:
        self.model = model
        self.config = config
        self.state = state
        self._sites = sites
        self._requires_grad_before = requires_grad_before
        self._hooks: list[Any] = []
        # Every δ-mem parameter, and the (version, storage) pairs they had when the decode plans were bound:
        # one check per model call instead of one per layer (in-place updates bump the version, ``.data``
        # reassignment, as in ``model.to()``, moves the storage).
        self._fast_params = tuple(p for s in sites for ps in s.layer._rt.groups.values() for p in ps)
        self._fast_key: tuple[list[int], list[int]] | None = None
        # Hooks go on the decoder body (the module holding the layer list): every call reaches it, whether
        # through the LM head wrapper, generate(), or a direct call of the body.
        body = _decoder_body(model, sites[0].name) if sites else model
        self._forward_params = _forward_parameters(body)
        self._hooks.append(body.register_forward_pre_hook(self._pre_hook, with_kwargs=True))
        self._hooks.append(body.register_forward_hook(self._post_hook, always_call=True))
        self.attached = True

    # ------------------------------------------------------------------ hooks
    def _pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        if module.training and (_checkpointing(module) or _checkpointing(self.model)):
            raise RuntimeError("δ-mem is stateful: gradient checkpointing would write the memory twice; "
                               "disable it (model.gradient_checkpointing_disable())")
        bound = dict(zip(self._forward_params, args))
        bound.update(kwargs)
        ids = bound.get("input_ids")
        ref = ids if ids is not None else bound.get("inputs_embeds")
        if ref is None:
            raise ValueError("δ-mem: the model was called without input_ids or inputs_embeds")
        st = self.state
        impl = resolve_impl(self.config.scan_impl, ref.device)
        st.begin_call(ref.shape[0], ref.shape[1], bound.get("attention_mask"), impl=impl)
        # Decode steps: what holds for the whole call is decided here once, not in every layer.
        st.call_fast = (impl == "numba" and ref.device.type == "cpu" and not torch.is_grad_enabled()
                        and ref.shape[0] * ref.shape[1] <= fastpath.MAX_TOKENS
                        and (st.call_valid is None or st.call_valid_np is not None)
                        and (not st.write_enabled or self.config.write_granularity == "token"
                             or st.call_segment_ids is None))
        if st.call_fast:
            params = self._fast_params
            key = (list(map(_VERSION, params)), list(map(torch.Tensor.data_ptr, params)))
            if key != self._fast_key:
                for site in self._sites:
                    site.layer.prepare_fast_call()
                self._fast_key = key

    def _post_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        self.state.end_call()
        for site in self._sites:
            site.layer.clear()

    # ------------------------------------------------------------------ controls
    def reset(self) -> None:
        """Empty memory (zeros): the next call behaves like a freshly attached model."""
        self.state.reset()

    def writes(self, enabled: bool):  # -> contextmanager
        """``with dm.writes(False): ...`` — reads only, the state stays bit-identical."""
        return self.state.writes(enabled)

    @property
    def write_enabled(self) -> bool:
        return self.state.write_enabled

    @write_enabled.setter
    def write_enabled(self, value: bool) -> None:
        self.state.write_enabled = bool(value)

    def set_segment_ids(self, segment_ids: torch.Tensor | None) -> None:
        self.state.set_segment_ids(segment_ids)

    def snapshot(self) -> Snapshot:
        return self.state.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        self.state.restore(snapshot)

    # ------------------------------------------------------------------ parameters
    @property
    def layers(self) -> dict[str, DeltaMemLayer]:
        return {site.name: site.layer for site in self._sites}

    def named_parameters(self, trainable_only: bool = False) -> Iterator[tuple[str, nn.Parameter]]:
        """``("<attention path>.<param>", p)``: the reference's naming, independent of where we hang them."""
        for site in self._sites:
            names = site.layer.trainable_names() if trainable_only else [n for n, _ in site.layer.named_parameters()]
            for n in names:
                yield f"{site.name}.{n}", getattr(site.layer, n)

    def parameters(self, trainable_only: bool = True) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters(trainable_only)]

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters(trainable_only))

    # ------------------------------------------------------------------ adapters
    def save_adapter(self, path: str) -> None:
        from methods.deltamem.adapter import save_adapter

        save_adapter(self, path)

    def load_adapter(self, path: str) -> None:
        """Load weights (own or official format) into this attachment; the configs must agree on shapes."""
        from methods.deltamem.adapter import load_adapter_weights

        load_adapter_weights(self, path)

    @classmethod
    def from_adapter(cls, model: nn.Module, path: str, **overrides: Any) -> "DeltaMem":
        from methods.deltamem.adapter import attach_from_adapter

        return attach_from_adapter(model, path, **overrides)

    # ------------------------------------------------------------------ detach
    def detach(self) -> nn.Module:
        """Remove every wrapper, parameter and hook; the backbone is exactly what it was before attach."""
        if not self.attached:
            return self.model
        for h in self._hooks:
            h.remove()
        for site in self._sites:
            for attr, original in site.originals.items():
                setattr(site.attention, attr, original)
            delattr(site.attention, PARAM_PREFIX)
            site.layer.bind(None)
        for name, p in self.model.named_parameters():
            if name in self._requires_grad_before:
                p.requires_grad_(self._requires_grad_before[name])
        if getattr(self.model, "_deltamem", None) is self:
            del self.model._deltamem
        self.attached = False
        self.state.reset()
        return self.model

    def __repr__(self) -> str:
        return (f"DeltaMem({self.config.variant}, rank={self.config.rank}, heads={self.config.num_state_heads}, "
                f"layers={len(self._sites)}, trainable={self.num_parameters():,})")


def _decoder_body(model: nn.Module, attention_path: str) -> nn.Module:
    """``model.layers.3.self_attn`` → ``model``: the parent of the numbered layer list."""
    parts = attention_path.split(".")
    numbered = [i for i, p in enumerate(parts) if p.isdigit()]
    if not numbered or numbered[0] < 1:
        return model
    return model.get_submodule(".".join(parts[: numbered[0] - 1]))


def _checkpointing(model: nn.Module) -> bool:
    # transformers 5 renamed the flag; reading the old name warns on every call
    for attr in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attr) or attr in vars(model):
            return bool(getattr(model, attr))
    return False


def _forward_parameters(model: nn.Module) -> list[str]:
    try:
        return list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return ["input_ids", "attention_mask"]


def attach(model: nn.Module, config: DeltaMemConfig | None = None, *, freeze: bool = True) -> DeltaMem:
    """Wrap every causal self-attention of ``model`` with δ-mem and return the controlling handle.

    ``freeze=True`` (default) makes only the active δ-mem parameters trainable, as the reference's
    ``freeze_non_delta_mem_params`` does; inactive correction heads always stay frozen zeros.
    """
    config = config or DeltaMemConfig()
    if getattr(model, "_deltamem", None) is not None:
        raise RuntimeError("δ-mem is already attached to this model; detach() it first")
    targets = find_attention_modules(model, config)
    requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
    state = OnlineState(rank=config.rank, num_state_heads=config.num_state_heads,
                        layer_ids=tuple(i for _, _, i in targets))
    sites: list[_Site] = []
    for name, attn, idx in targets:
        projs = {h: getattr(attn, _PROJ[h]) for h in HEADS}
        ref = projs["q"].weight
        layer = DeltaMemLayer(config, idx, d_model=projs["q"].in_features,
                              out_features={h: projs[h].out_features for h in HEADS},
                              device=ref.device, dtype=ref.dtype)
        layer.reset_parameters({h: projs[h].weight for h in HEADS})
        layer.bind(state)
        site = _Site(name=name, attention=attn, layer=layer)
        attn.add_module(PARAM_PREFIX, layer)
        # q_proj is always wrapped: its input is the hidden state every head's reads come from.
        wrap = {"q"} | {h for h in ("k", "v", "o") if h in config.delta_heads}
        for head in HEADS:
            if head in wrap:
                site.originals[_PROJ[head]] = projs[head]
                setattr(attn, _PROJ[head], DeltaMemProjection(projs[head], layer, head, head in config.delta_heads))
        sites.append(site)
    dm = DeltaMem(model, config, sites, state, requires_grad_before)
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    for site in sites:
        trainable = set(site.layer.trainable_names())
        for n, p in site.layer.named_parameters():
            p.requires_grad_(n in trainable)
    object.__setattr__(model, "_deltamem", dm)
    return dm


def get_deltamem(model: nn.Module) -> DeltaMem:
    dm = getattr(model, "_deltamem", None)
    if dm is None:
        raise ValueError("no δ-mem attached to this model")
    return dm

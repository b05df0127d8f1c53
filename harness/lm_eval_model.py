"""δ-mem as an lm-evaluation-harness model: ``DeltaMemLM``, registered as ``deltamem``.

Importing this module registers the class, so ``lm_eval.simple_evaluate(model="deltamem", model_args=...)``
works after ``import harness.lm_eval_model``; ``python -m harness.lm_eval`` does that import for lm-eval's CLI.

It is lm-eval's own ``HFLM`` (tokenisation, batching, chat templates, stop sequences, every ``model_args`` it
takes) with δ-mem attached to the loaded model and one rule added: **every model call starts from an empty
memory and leaves none behind.** lm-eval packs requests into batch rows and δ-mem keeps one state per row, so
a row never reads another row's writes, and nothing survives from one batch to the next.

Protocols:

* ``context`` (default; the harness's and the reference suite's): the memory is written while the prompt is
  read. Generation: the prompt is written during prefill and every generated token is written as it is fed
  back (the harness's ``write_generated=true``). Log-likelihood: context and continuation go through one
  forward pass with writes on, so each continuation token is scored from the state written by the context
  and the continuation tokens before it — exactly what generating that continuation would have read. Writing
  a token only changes what later tokens read, so single-token continuations (multiple choice) score the
  same either way.
* ``none``: nothing is written; the memory stays empty, reads are zero, and the model is the backbone.

Extra ``model_args`` next to HFLM's: ``adapter`` (``shipped`` — default —, an adapter directory in this
project's format or the official release's, or ``null``), ``variant`` (``msw``/``tsw``/``ssw``: which shipped
adapter, or the shape of an untrained memory), ``protocol``, ``output_init`` (an untrained memory's correction
heads: ``zero`` makes ``adapter=null`` exactly the backbone; ``base_slice_fixed`` is the harness's
``method.adapter=null``), ``seed`` (its initialisation) and ``scan_impl``. ``pretrained`` also takes a
``conf/backbone`` name (default ``smollm2_135m``, the embedded backbone); ``device`` defaults to CUDA when
present, else the CPU.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import lm_eval.models  # noqa: F401  fills the registry's lazy entries: get_model skips that once it is non-empty
import torch
from lm_eval.api.registry import model_registry
from lm_eval.models.huggingface import HFLM

from harness.deltamem_loading import Memory, attach_memory, resolve_pretrained
from methods.deltamem.surgery import DeltaMem

NAME = "deltamem"
PROTOCOLS = ("context", "none")


class DeltaMemLM(HFLM):
    """lm-eval's HFLM with a δ-mem memory that is emptied before every model call."""

    def __init__(self, pretrained: str | Any = "smollm2_135m", adapter: str | None = "shipped",
                 protocol: str = "context", variant: str = "msw", output_init: str = "zero", seed: int = 0,
                 scan_impl: str = "auto", device: str | None = None, **kwargs: Any) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        backbone_name = None
        if isinstance(pretrained, str):
            pretrained, backbone_name = resolve_pretrained(pretrained)
            # HFLM's own default is "cuda", which fails on a machine without one
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        super().__init__(pretrained=pretrained, device=device or "cuda", **kwargs)
        if self.backend != "causal":
            raise ValueError(f"{NAME}: δ-mem attaches to decoder-only models; this one loads as {self.backend}")
        self.protocol = protocol
        self.memory: Memory = attach_memory(self.model, adapter, variant=variant, output_init=output_init,
                                            seed=int(seed), scan_impl=scan_impl, backbone_name=backbone_name)
        self.model.eval()

    @property
    def dm(self) -> DeltaMem:
        return self.memory.dm

    @contextlib.contextmanager
    def _fresh_memory(self) -> Iterator[None]:
        """One model call (a batch of requests) on an empty memory, with the protocol's writes."""
        self.dm.reset()
        try:
            with self.dm.writes(self.protocol == "context"):
                yield
        finally:
            self.dm.reset()

    def _model_call(self, inps: torch.Tensor, attn_mask: torch.Tensor | None = None,
                    labels: torch.Tensor | None = None) -> torch.Tensor:
        # HFLM right-pads log-likelihood batches and passes no mask: padding sits after a row's last real
        # token, so what it writes is never read by a scored token.
        with self._fresh_memory():
            return super()._model_call(inps, attn_mask=attn_mask, labels=labels)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str],
                        **generation_kwargs: Any) -> torch.Tensor:
        # Beam search reorders KV-cache rows behind the model's back; the per-row memory would not follow.
        if int(generation_kwargs.get("num_beams") or 1) > 1:
            raise ValueError(f"{NAME}: beam search is not supported (the memory is per row); use num_beams=1")
        with self._fresh_memory():  # left padding is masked, so it is never written
            return super()._model_generate(context, max_length, stop, **generation_kwargs)

    def get_model_info(self) -> dict:
        return {**super().get_model_info(), "deltamem": {**self.memory.describe(), "protocol": self.protocol}}

    def detach(self) -> None:
        """Remove δ-mem from the model (e.g. before handing the same model object to another LM)."""
        self.dm.detach()


def register() -> None:
    """Register ``DeltaMemLM`` as ``deltamem`` (idempotent: a second import or call is a no-op)."""
    if model_registry.get(NAME, None) is not DeltaMemLM:
        model_registry.register(NAME)(DeltaMemLM)


register()

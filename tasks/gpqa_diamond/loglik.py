"""lm-eval's zero-shot log-likelihood multiple-choice protocol for GPQA-Diamond.

Methods in this harness generate text; none exposes continuation log-probabilities. This
module is therefore a method-independent helper that scores the frozen backbone itself:
:class:`LoglikMC` is a :class:`~methods.base.Method` whose ``answer`` returns the
best-scoring choice as the prediction "(X)" (log-probabilities in the record's
``method_info``), so the ordinary runner, records, resume and aggregation apply.

Run it with the usual Hydra overrides (task and method are set for you)::

    python -m tasks.gpqa_diamond.loglik backbone=smollm2_135m task.limit=20 run.results_dir=/tmp/r

Scoring follows lm-eval's ``loglikelihood`` request: the context is the ``loglik`` prompt
(plain text, or chat-templated with ``task.loglik_chat_template=true``), the continuation
" (A)" … " (D)"; the continuation tokens are the tokens of context+continuation after the
context's tokens, and the score is the sum of their log-probabilities. No BOS token is added
unless the tokenizer adds one by default (Gemma), as lm-eval's HFLM does.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from harness.errors import ConfigError
from harness.types import Episode, Prediction, Query
from methods.base import Method


class LoglikMC(Method):
    protocol = "context"

    def __init__(self, **kw: Any):
        kw.setdefault("name", "loglik_mc")
        super().__init__(**kw)

    def setup(self, backbone, task, *, seed: int) -> None:
        from tasks.gpqa_diamond.task import GPQADiamondTask

        if not isinstance(task, GPQADiamondTask) or task.protocol != "loglik_mc":
            raise ConfigError("LoglikMC scores GPQA-Diamond with task.protocol=loglik_mc only")
        super().setup(backbone, task, seed=seed)
        tok = backbone.tokenizer
        probe = tok("x")["input_ids"]
        self._bos = [tok.bos_token_id] if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id else []

    def ingest(self, episode: Episode) -> dict[str, Any]:
        return {}

    def _context_text(self, query: Query) -> str:
        text = self.task.loglik_context(query)
        if not self.task.loglik_chat_template or not self.backbone.has_chat_template:
            return text
        return self.backbone.tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True,
            **self.backbone.chat_kwargs)

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        # lm-eval moves trailing spaces of the context onto the continuation before encoding.
        n_space = len(context) - len(context.rstrip())
        if n_space:
            continuation, context = context[-n_space:] + continuation, context[:-n_space]
        whole = self._bos + self.backbone.encode(context + continuation)
        ctx = self._bos + self.backbone.encode(context)
        return ctx, whole[len(ctx):]

    @torch.inference_mode()
    def loglikelihoods(self, query: Query) -> list[float]:
        context = self._context_text(query)
        pairs = [self._encode_pair(context, c) for c in self.task.loglik_continuations()]
        seqs = [ctx + cont for ctx, cont in pairs]
        width = max(len(s) for s in seqs)
        device = next(self.backbone.model.parameters()).device
        ids = torch.full((len(seqs), width), self.backbone.pad_id, dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s, device=device)
            mask[i, :len(s)] = 1
        logits = self.backbone.model(input_ids=ids, attention_mask=mask).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        out = []
        for i, (ctx, cont) in enumerate(pairs):
            start = len(ctx)
            positions = torch.arange(start - 1, start - 1 + len(cont), device=device)
            targets = torch.tensor(cont, device=device)
            out.append(float(logprobs[i, positions, targets].sum()))
        return out

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        preds = []
        letters = "ABCD"
        for q in queries:
            lls = self.loglikelihoods(q)
            best = max(range(len(lls)), key=lambda k: lls[k])
            preds.append(Prediction(text=f"({letters[best]})", prompt_tokens=0, new_tokens=0,
                                    info={"loglikelihoods": [round(x, 4) for x in lls]}))
        return preds


def main(argv: Sequence[str] | None = None) -> None:
    from hydra import compose, initialize_config_dir

    from harness.errors import HarnessError
    from harness.runner import run_experiment

    overrides = list(sys.argv[1:] if argv is None else argv)
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("config", overrides=["task=gpqa_diamond", "task.protocol=loglik_mc", *overrides])
    from omegaconf import OmegaConf

    OmegaConf.set_struct(cfg, False)
    cfg.method = OmegaConf.create({"_target_": "tasks.gpqa_diamond.loglik.LoglikMC", "name": "loglik_mc",
                                   "batch_size": 8})
    try:
        outcome = run_experiment(cfg)
    except (HarnessError, ValueError, TypeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    summary = ", ".join(f"{k}={v['mean']:.4f}" for k, v in outcome.metrics.get("overall", {}).items())
    print(f"[gpqa loglik] {outcome.status}: {outcome.path} {summary}")


if __name__ == "__main__":
    main()

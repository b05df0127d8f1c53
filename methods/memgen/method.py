"""MemGen as a harness method: the episode context in the prompt (``context`` protocol), latents woven in at
the end of the prompt and after delimiters while decoding. Runs on every task (the weaver changes what the model
does on IFEval and GPQA too). Decoding follows the task's settings (greedy or seeded sampling) like every other
method here; the official ``generate`` is greedy only. The questions of a batch are decoded together on the
episode's shared prefix (prefilled once for the reasoner and once for the weaver), each inserting latents at its own
points (``weave.generate_woven_batch``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from harness.generation import common_prefix_len, prefill_prefix
from harness.types import Episode, Prediction, Query
from methods.base import Method
from methods.context2lora import check_adapter_backbone
from methods.memgen.model import MemGen, MemGenConfig
from methods.memgen.weave import Woven, generate_woven_batch, weave_prefix
from methods.prompting import build_episode_prompts, context_budget


class MemGenMethod(Method):
    LEARNER = "methods.memgen.learner.MemGenLearner"

    def __init__(self, *, adapter: str | None = None, reuse_prefix: bool = True, use_context: bool = True,
                 max_prompt_aug_num: int | None = None, max_inference_aug_num: int | None = None,
                 **kw: Any) -> None:
        fields = set(MemGenConfig.__dataclass_fields__) - {"extra"}
        weave = {k: kw.pop(k) for k in list(kw) if k in fields}
        kw.setdefault("protocol", "context" if use_context else "memory")
        super().__init__(**kw)
        self.check_training_config({**weave, "max_prompt_aug_num": max_prompt_aug_num or 0,
                                    "max_inference_aug_num": max_inference_aug_num or 0})
        self.weave_settings = weave
        self.caps = {"max_prompt_aug_num": max_prompt_aug_num, "max_inference_aug_num": max_inference_aug_num}
        self.adapter, self.reuse_prefix, self.use_context = adapter, reuse_prefix, use_context
        self.mg: MemGen | None = None

    @classmethod
    def check_training_config(cls, node: Mapping[str, Any]) -> None:
        MemGenConfig.from_mapping({k: v for k, v in node.items() if v is not None})

    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if self.adapter:
            check_adapter_backbone(Path(self.adapter), backbone.model)
            self.mg = MemGen.from_folder(backbone.model, Path(self.adapter), **self.caps)
        else:  # untrained weaver: random latents, not the bare backbone (set both caps to 0 for that)
            config = MemGenConfig.from_mapping({**self.weave_settings,
                                                **{k: v for k, v in self.caps.items() if v is not None}})
            self.mg = MemGen(backbone.model, config, seed=seed)
        self.mg.modules.to(backbone.model.get_input_embeddings().weight.dtype)
        self.mg.peft.eval()
        cfg = self.mg.config
        self._latent_room = cfg.prompt_latents * min(1, cfg.max_prompt_aug_num) + \
            cfg.max_inference_aug_num * cfg.inference_latents

    def ingest(self, episode: Episode) -> dict[str, Any]:
        context = None
        if self.use_context and episode.has_context:
            budget = context_budget(self.backbone, self.task, episode.queries) - self._latent_room
            if budget <= 0:
                raise ValueError(f"{self.task.name}/{episode.id}: no room for context in a "
                                 f"{self.backbone.window}-token window with {self._latent_room} latent tokens")
            context = self.task.render_context(episode, count_tokens=self.backbone.count_tokens, max_tokens=budget)
        prompts = build_episode_prompts(self.backbone, self.task, episode, context, reuse_prefix=False)
        self._ids = prompts.ids
        self._context = context
        self._prefix = self._weaver_prefix = None
        seqs = list(prompts.ids.values())
        n = min(common_prefix_len(seqs), min(len(s) for s in seqs) - 1) if self.reuse_prefix else 0
        if n > 0:
            with self.mg.reasoner():
                self._prefix = prefill_prefix(self.backbone.model, seqs[0][:n])
            self._weaver_prefix = weave_prefix(self.mg, self._prefix, seqs[0][:n])
        if context is None:
            return {}
        return {"context_tokens": context.kept_tokens, "context_total_tokens": context.total_tokens,
                "context_truncated": context.truncated}

    def answer(self, episode: Episode, queries: Sequence[Query]) -> list[Prediction]:
        from dataclasses import replace

        p = self._prefix.length if self._prefix else 0
        plans = []  # (query, settings, capped room or None)
        for q in queries:
            ids = self._ids[q.id]
            settings = self.task.generation_for(q)
            room = self.backbone.window - len(ids) - self._latent_room
            if room <= 0:
                raise ValueError(f"{self.task.name}: a prompt of {len(ids)} tokens and {self._latent_room} latent "
                                 f"tokens leave no room to answer in the {self.backbone.window}-token window")
            capped = settings.max_new_tokens > room
            plans.append((q, replace(settings, max_new_tokens=room) if capped else settings, room if capped else None))
        woven: dict[str, Woven] = {}
        for settings in dict.fromkeys(s for _, s, _ in plans):  # one batch per decoding setting, in query order
            group = [q for q, s, _ in plans if s == settings]
            for q, w in zip(group, generate_woven_batch(
                    self.mg, self.backbone.tokenizer, [self._ids[q.id][p:] for q in group], settings,
                    stop_ids=self.backbone.stop_ids, pad_id=self.backbone.pad_id, prefix=self._prefix,
                    weaver_prefix=self._weaver_prefix, seeds=[self.task.query_seed(q, self.seed) for q in group])):
                woven[q.id] = w
        out = []
        for q, _, capped in plans:
            w, ids = woven[q.id], self._ids[q.id]
            out.append(Prediction(
                text=self.backbone.decode(w.ids).strip(), prompt_tokens=len(ids), new_tokens=len(w.ids),
                context_tokens=self._context.kept_tokens if self._context else 0,
                info={"stopped": w.stopped, "prefix_tokens": p, "prompt_latents": w.prompt_block,
                      "inference_insertions": w.insertions,
                      **({"max_new_tokens_capped_to": capped} if capped is not None else {})}))
        return out

    def close(self) -> None:
        if self.mg is not None:
            self.mg.detach()
            self.mg = None

    def describe(self) -> dict[str, Any]:
        cfg = self.mg.config if self.mg is not None else None
        return {**super().describe(), "adapter": self.adapter, "reuse_prefix": self.reuse_prefix,
                "memgen": cfg.to_dict() if cfg else {**self.weave_settings, **self.caps},
                "label": cfg.label() if cfg else None,
                "trainable_parameters": self.mg.num_parameters() if self.mg is not None else None,
                "decoding_note": "task's decoding settings (the official generate is greedy only); KV caches "
                                 "appended, not re-prefilled, after an insertion"}

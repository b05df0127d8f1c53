"""MLP Memory as a harness method: the frozen backbone, the context in the prompt, the memory mixed into every
next-token distribution (``../shared/spec/baselines.md`` §7).

The memory is static: it was pre-trained once on a corpus (``python -m harness.train method=mlp_memory``, see
:mod:`methods.mlp_memory.pretrain`) and nothing is written from the test context, which stays in the prompt
(protocol ``context``), so the method runs on every task, IFEval and GPQA included. Answering is
:class:`methods.vanilla.Vanilla`'s (shared-prefix KV reuse, batching, greedy or seeded sampling); ``setup``
attaches the mixture hooks to the backbone and ``close`` takes them off again.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Mapping

from harness.adapters import SHIPPED, shipped_adapter
from harness.errors import ConfigError
from methods.mlp_memory.model import MLPMemoryMixer, load_artefact, read_artefact_config, resolve_lambda
from methods.vanilla import Vanilla

REBUILD = "python -m harness.train method=mlp_memory train_data=mix run.threads=1"


class MLPMemory(Vanilla):
    """Frozen backbone + a retriever-pretrained MLP whose distribution is mixed in with weight λ."""

    TRAIN_PIPELINE = "methods.mlp_memory.pretrain.run_pretraining"

    def __init__(self, *, adapter: str | None = None, lam: Any = 0.25, pretrain: Mapping[str, Any] | None = None,
                 **kw: Any) -> None:
        from methods.mlp_memory.pretrain import PretrainSettings

        super().__init__(**kw)
        self.lam, self.lam_name = resolve_lambda(lam)
        self.recipe = PretrainSettings.from_mapping(pretrain or {})  # a bad recipe is refused here too
        if adapter in (None, "", "null"):
            raise ConfigError("method mlp_memory needs a pre-trained artefact: method.adapter=shipped (the one for the "
                              f"run's backbone) or a directory; build one with `{REBUILD}`")
        self.adapter = str(adapter)
        # before any model loads (the runner resolves `shipped` to the folder before it builds the method)
        self.info = None if self.adapter == SHIPPED else read_artefact_config(Path(self.adapter))
        self._net = None
        self._mixer: MLPMemoryMixer | None = None

    def setup(self, backbone, task, *, seed: int) -> None:
        super().setup(backbone, task, seed=seed)
        if self.adapter == SHIPPED:
            self.adapter = str(shipped_adapter(backbone.name, self.name))
        self._net, self.info = load_artefact(Path(self.adapter), backbone.model)
        built = (self.info.get("recipe") or {}).get("settings")
        if built and built != self.recipe.as_dict():
            print(f"[mlp_memory] note: the artefact was built with another recipe than method.pretrain says; the "
                  f"record's method_info gives the artefact's own ({self.adapter}/mlp_memory.json)", file=sys.stderr)
        self._mixer = MLPMemoryMixer(backbone.model, self._net, self.lam)

    def close(self) -> None:
        if self._mixer is not None:
            self._mixer.remove()  # the backbone's forward is the bare one again
            self._mixer = None
        self._net = None

    def describe(self) -> dict[str, Any]:
        info = self.info or {}
        net = info.get("network", {})
        recipe = info.get("recipe") or {}
        params = info.get("parameters", {})
        return {**super().describe(), "adapter": self.adapter, "lambda": self.lam, "lambda_name": self.lam_name,
                "blocks": net.get("blocks"), "head": net.get("head"), "head_note": info.get("head_note"),
                "storage_dtype": info.get("storage_dtype"),
                "parameters": params.get("total"), "stored_parameters": params.get("stored"),
                "trainable_parameters": params.get("trainable"),
                "full_size_parameters": info.get("full_size_parameters"),
                "corpus": recipe.get("corpus"), "datastore_tokens": recipe.get("datastore_tokens"),
                "index": recipe.get("index"), "k": recipe.get("k"), "temperature": recipe.get("temperature"),
                "alpha": recipe.get("alpha"), "training": recipe.get("training"),
                "build_seconds": recipe.get("build_seconds"),
                "heldout_ce": (info.get("evidence") or {}).get("summary"),
                "reduced": "reduced CPU configuration (see the artefact README): fewer blocks, a small datastore and "
                           "k, few epochs" if recipe else None}


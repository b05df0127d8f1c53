"""``model_fingerprint``: the key that keeps the MemoryBank and LLMLingua disk caches from mixing models."""
from __future__ import annotations

import copy

import torch

from harness.backbone import Backbone
from methods.text_memory import model_fingerprint
from tests.conftest import tiny_llama


def backbone_of(model: torch.nn.Module) -> Backbone:
    return Backbone(name="tiny", model=model, tokenizer=None, device=torch.device("cpu"), dtype=torch.float32,
                    window=512)


def test_fingerprint_covers_middle_layers_and_is_stable_for_identical_weights():
    model = tiny_llama(128, num_hidden_layers=4, hidden_size=32, intermediate_size=64)
    twin = copy.deepcopy(model)
    rebuilt = tiny_llama(128, num_hidden_layers=4, hidden_size=32, intermediate_size=64)
    assert model_fingerprint(backbone_of(model)) == model_fingerprint(backbone_of(twin))
    assert model_fingerprint(backbone_of(model)) == model_fingerprint(backbone_of(rebuilt))
    with torch.no_grad():
        twin.model.layers[2].mlp.down_proj.weight[5, 7] += 1e-3
    assert model_fingerprint(backbone_of(model)) != model_fingerprint(backbone_of(twin))

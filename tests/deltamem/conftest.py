"""Tiny random decoders of every supported family, built from configs (no downloads)."""
from __future__ import annotations

import copy

import pytest
import torch

VOCAB = 97
FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma3")


def tiny_decoder(family: str, *, attn: str = "eager", seed: int = 0, layers: int = 2) -> torch.nn.Module:
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    if family == "llama":
        cfg = tf.LlamaConfig(**common)
        cls = tf.LlamaForCausalLM
    elif family == "qwen2":  # q/k/v biases
        cfg = tf.Qwen2Config(**common)
        cls = tf.Qwen2ForCausalLM
    elif family == "qwen3":  # q_norm/k_norm after the projections, explicit head_dim
        cfg = tf.Qwen3Config(**common, head_dim=24)
        cls = tf.Qwen3ForCausalLM
    elif family == "mistral":
        cfg = tf.MistralConfig(**common, sliding_window=None)
        cls = tf.MistralForCausalLM
    elif family == "gemma3":  # q/k norms, sliding-window + global layers, scaled embeddings
        cfg = tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
        cls = tf.Gemma3ForCausalLM
    else:
        raise ValueError(family)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = cls(cfg).float().eval()
    with torch.no_grad():  # random init gives near-flat logits; spread them so differences show
        model.get_output_embeddings().weight.mul_(4.0)
    return model


@pytest.fixture(scope="module")
def qwen3_eager() -> torch.nn.Module:
    return tiny_decoder("qwen3")


@pytest.fixture
def fresh(qwen3_eager):
    """A private deep copy of the module-scoped tiny Qwen3 (attach mutates the model)."""
    return copy.deepcopy(qwen3_eager)


def ids(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, VOCAB, (batch, length), generator=g)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max())


def states(dm) -> dict[int, torch.Tensor]:
    return {i: dm.state.layer_state(i).detach().clone() for i in dm.state.layer_ids
            if dm.state.layer_state(i) is not None}

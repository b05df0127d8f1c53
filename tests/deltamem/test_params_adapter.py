"""Parameter counts (deltamem.md §5.2) and adapter files (own format, official release format)."""
from __future__ import annotations

import json

import pytest
import torch

from methods.deltamem import DeltaMem, DeltaMemConfig, attach
from methods.deltamem.adapter import REF_CONFIG_NAME, REF_WEIGHTS_NAME, AdapterMismatch, adapter_format

from .conftest import ids, max_diff, tiny_decoder


def qwen3_4b_on_meta():
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
    with torch.device("meta"):
        return Qwen3ForCausalLM(cfg)


@pytest.mark.parametrize("variant, heads, trainable, stored", [
    ("tsw", ("q", "o"), 4_866_336, 5_456_160),
    ("ssw", ("q", "o"), 4_866_336, 5_456_160),
    ("msw", ("q", "o"), 19_465_344, 21_824_640),
    ("tsw", ("q", "k", "v", "o"), 5_456_160, 5_456_160),
])
def test_parameter_counts_qwen3_4b(variant, heads, trainable, stored):
    model = qwen3_4b_on_meta()
    dm = attach(model, getattr(DeltaMemConfig, variant)(delta_heads=heads))
    assert len(dm.layers) == 36
    assert dm.num_parameters(trainable_only=True) == trainable
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert dm.num_parameters(trainable_only=False) == stored


def test_own_format_round_trip(tmp_path):
    a = tiny_decoder("llama")
    dm = attach(a, DeltaMemConfig.msw(output_init="random", target_layers=(1,)))
    with torch.no_grad():
        for _, p in dm.named_parameters(trainable_only=True):
            p.add_(torch.randn_like(p) * 0.1)  # "trained" weights
    dm.save_adapter(tmp_path / "ad")
    assert adapter_format(tmp_path / "ad") == "deltamem"
    saved = json.loads((tmp_path / "ad" / "deltamem_config.json").read_text())
    assert saved["format_version"] == 1 and saved["num_state_heads"] == 4 and saved["target_layers"] == [1]
    x = ids(1, 12)
    with torch.no_grad():
        want = a(x).logits
    b = tiny_decoder("llama")
    dm_b = DeltaMem.from_adapter(b, str(tmp_path / "ad"))
    assert dm_b.config == dm.config and list(dm_b.layers) == ["model.layers.1.self_attn"]
    with torch.no_grad():
        assert max_diff(b(x).logits, want) == 0.0


def _write_reference_adapter(folder, dm: DeltaMem, **config_overrides):
    """What the reference's save function writes (deltamem.md §8): 49-key config, flat .pt dict."""
    folder.mkdir()
    cfg = {"rank": dm.config.rank, "alpha": dm.config.alpha, "beta_bias_init": -1.5, "normalize_qk": True,
           "couple_lambda": True, "state_update_mode": "standard", "rankwise_gates": True,
           "output_init": "base_slice_fixed", "base_slice_ref_width": 8, "online_gain": 0.05,
           "num_state_heads": dm.config.num_state_heads, "memory_write_granularity": "token",
           "memory_readout_mode": "delta", "memory_write_source": "learned_hidden", "target_modules": ["self_attn"],
           "target_layers": [], "delta_heads": ["q", "o"], "delta_o_rmsnorm": False, "trainable_delta_scale": False,
           "delta_scale_parameterization": "alpha_over_rank", "num_memory_partitions": 1,
           "memory_partition_top_k": 1, "latent_memory_slots": 0, **config_overrides}
    (folder / REF_CONFIG_NAME).write_text(json.dumps(cfg))
    torch.save({n: p.detach().to(torch.bfloat16) for n, p in dm.named_parameters()}, folder / REF_WEIGHTS_NAME)


def test_official_format_load(tmp_path):
    src = tiny_decoder("qwen3")
    dm_src = attach(src, DeltaMemConfig.tsw(output_init="random"))
    _write_reference_adapter(tmp_path / "ref", dm_src)
    keys = torch.load(tmp_path / "ref" / REF_WEIGHTS_NAME, weights_only=True)
    assert "model.layers.0.self_attn.memory_q_proj" in keys and "model.layers.1.self_attn.delta_k_proj" in keys
    model = tiny_decoder("qwen3")
    dm = DeltaMem.from_adapter(model, str(tmp_path / "ref"))
    assert dm.config.delta_heads == ("q", "o") and dm.config.output_init == "base_slice_fixed"
    for (n, p), (_, q) in zip(dm.named_parameters(), dm_src.named_parameters()):
        assert torch.equal(p, q.to(torch.bfloat16).float()), n
    # an adapter saved from Qwen3ForCausalLM also loads into the bare Qwen3Model (key prefix differs)
    bare = tiny_decoder("qwen3").model
    DeltaMem.from_adapter(bare, str(tmp_path / "ref"))


def test_official_format_unsupported_settings(tmp_path):
    dm = attach(tiny_decoder("qwen3"), DeltaMemConfig.tsw())
    _write_reference_adapter(tmp_path / "ref", dm, state_update_mode="lambda_outside")
    with pytest.raises(ValueError, match="state_update_mode"):
        DeltaMem.from_adapter(tiny_decoder("qwen3"), str(tmp_path / "ref"))


def test_shape_mismatch_names_parameter(tmp_path):
    dm = attach(tiny_decoder("qwen3"), DeltaMemConfig.tsw())
    _write_reference_adapter(tmp_path / "ref", dm)
    other = tiny_decoder("llama")  # head_dim 16 instead of Qwen3's 24: d_kv 32 vs 48
    with pytest.raises(AdapterMismatch,
                       match=r"parameter model\.layers\.0\.self_attn\.delta_k_proj has shape \(48, 8\) in the "
                             r"adapter but \(32, 8\) in the model"):
        DeltaMem.from_adapter(other, str(tmp_path / "ref"))
    dm2 = attach(tiny_decoder("qwen3", layers=3), DeltaMemConfig.tsw())
    with pytest.raises(AdapterMismatch, match="missing"):
        dm2.load_adapter(str(tmp_path / "ref"))
    with pytest.raises(FileNotFoundError):
        adapter_format(tmp_path)


def test_adapter_from_another_backbone_is_refused(tmp_path):
    """Same shapes, other weights (e.g. the base model instead of the instruct one): the signature that
    training stores in the config refuses the adapter on every loading path."""
    from dataclasses import replace

    from methods.deltamem.signature import BackboneMismatch, backbone_signature

    trained_on = tiny_decoder("llama", seed=0)
    config = DeltaMemConfig.tsw()
    config = replace(config, extra={"backbone": backbone_signature(trained_on, "tiny-llama")})
    attach(trained_on, config).save_adapter(tmp_path / "ad")
    DeltaMem.from_adapter(tiny_decoder("llama", seed=0), str(tmp_path / "ad"))  # its own backbone: accepted
    with pytest.raises(BackboneMismatch, match="tiny-llama"):
        DeltaMem.from_adapter(tiny_decoder("llama", seed=1), str(tmp_path / "ad"))
    with pytest.raises(BackboneMismatch):
        attach(tiny_decoder("llama", seed=1), DeltaMemConfig.tsw()).load_adapter(str(tmp_path / "ad"))

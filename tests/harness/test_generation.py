"""The shared-prefix batched decoder against HF ``generate`` run one prompt at a time."""
from __future__ import annotations

import torch

from harness.generation import _filter_logits, common_prefix_len, generate_batch, prefill_prefix
from harness.types import GenerationSettings
from tests.conftest import tiny_llama

PREFIX = [5, 17, 23, 42, 8, 99, 100, 7, 31, 64, 12, 250]
SUFFIXES = [[3, 4], [9, 10, 11, 12, 13, 14, 15], [77], [200, 201, 202, 203]]


def _hf_greedy(model, ids, n):
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_prefix_batched_greedy_equals_hf_generate_unbatched():
    model = tiny_llama(300, seed=1)
    settings = GenerationSettings(max_new_tokens=12)
    prefix = prefill_prefix(model, PREFIX)
    got = generate_batch(model, SUFFIXES, settings, stop_ids=set(), pad_id=0, prefix=prefix)
    for suffix, gen in zip(SUFFIXES, got):
        assert gen.ids == _hf_greedy(model, PREFIX + suffix, 12)
        assert not gen.stopped


def test_without_prefix_equals_with_prefix():
    model = tiny_llama(300, seed=2)
    settings = GenerationSettings(max_new_tokens=8)
    plain = generate_batch(model, [PREFIX + s for s in SUFFIXES], settings, stop_ids=set(), pad_id=0)
    shared = generate_batch(model, SUFFIXES, settings, stop_ids=set(), pad_id=0, prefix=prefill_prefix(model, PREFIX))
    assert [g.ids for g in plain] == [g.ids for g in shared]


def test_stop_tokens_end_rows_independently():
    model = tiny_llama(300, seed=3)
    settings = GenerationSettings(max_new_tokens=10)
    free = generate_batch(model, SUFFIXES, settings, stop_ids=set(), pad_id=0, prefix=prefill_prefix(model, PREFIX))
    stop = free[1].ids[3]  # a token row 1 emits at step 4
    got = generate_batch(model, SUFFIXES, settings, stop_ids={stop}, pad_id=0, prefix=prefill_prefix(model, PREFIX))
    for f, g in zip(free, got):
        expect = f.ids[: f.ids.index(stop)] if stop in f.ids else f.ids
        assert g.ids == expect
        assert g.stopped == (stop in f.ids)


def test_sampling_is_per_row_seeded_and_batch_independent():
    model = tiny_llama(300, seed=4)
    s = GenerationSettings(max_new_tokens=10, do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    prefix = prefill_prefix(model, PREFIX)
    batch = generate_batch(model, SUFFIXES, s, stop_ids=set(), pad_id=0, prefix=prefix, seeds=[1, 2, 3, 4])
    alone = [generate_batch(model, [suf], s, stop_ids=set(), pad_id=0, prefix=prefix, seeds=[sd])[0]
             for suf, sd in zip(SUFFIXES, [1, 2, 3, 4])]
    assert [g.ids for g in batch] == [g.ids for g in alone]
    other = generate_batch(model, SUFFIXES, s, stop_ids=set(), pad_id=0, prefix=prefix, seeds=[5, 6, 7, 8])
    assert [g.ids for g in other] != [g.ids for g in batch]


def test_filter_logits_topk_topp_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    s = GenerationSettings(do_sample=True, temperature=1.0, top_k=4, top_p=0.8)
    kept = torch.isfinite(_filter_logits(logits, s))[0].tolist()
    # top-k keeps 4; renormalised masses 0.526, 0.211, 0.158, 0.105: the cumulative mass
    # before the third token is 0.737 < 0.8, before the fourth 0.895 >= 0.8.
    assert kept == [True, True, True, False, False]
    only_best = _filter_logits(logits, GenerationSettings(do_sample=True, top_p=0.3))
    assert torch.isfinite(only_best)[0].tolist() == [True, False, False, False, False]


def test_common_prefix_len():
    assert common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]]) == 2
    assert common_prefix_len([[1], [2]]) == 0
    assert common_prefix_len([[1, 2]]) == 2


def test_reserved_layer_matches_concatenation_and_grows():
    from harness.kv_cache import ReservedLayer

    torch.manual_seed(0)
    k0, v0 = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    layer = ReservedLayer(k0, v0, batch_size=3, capacity=6)
    ref_k, ref_v = k0.repeat(3, 1, 1, 1), v0.repeat(3, 1, 1, 1)
    for n in (1, 1, 4):  # the third append passes the reserved room
        k, v = torch.randn(3, 2, n, 4), torch.randn(3, 2, n, 4)
        got_k, got_v = layer.update(k, v)
        ref_k, ref_v = torch.cat([ref_k, k], 2), torch.cat([ref_v, v], 2)
        assert torch.equal(got_k, ref_k) and torch.equal(got_v, ref_v)
    assert layer.get_seq_length() == 11
    layer.batch_select_indices(torch.tensor([2, 0]))
    assert torch.equal(layer.keys, ref_k[[2, 0]])


def test_sliding_window_family_matches_hf_generate():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(5)
    cfg = Gemma3TextConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                           layer_types=["sliding_attention", "full_attention"], max_position_embeddings=512,
                           attn_implementation="sdpa")
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    settings = GenerationSettings(max_new_tokens=10)
    got = generate_batch(model, SUFFIXES, settings, stop_ids=set(), pad_id=0, prefix=prefill_prefix(model, PREFIX))
    for suffix, gen in zip(SUFFIXES, got):
        assert gen.ids == _hf_greedy(model, PREFIX + suffix, 10)

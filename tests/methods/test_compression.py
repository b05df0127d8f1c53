"""LLMLingua-2 and the LLMLingua-1 stand-in, with tiny random models (no download)."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest
import torch

from harness.errors import ConfigError
from harness.types import ContextUnit, Episode, Query
from methods.compression import LegacyCacheModel, LLMLingua1Smol, LLMLingua2
from tests.methods.toy import ToyTask

SENTENCES = [
    "Caroline adopted a grey cat called Pixel last week.",
    "The pottery class starts on Tuesday evening at seven.",
    "Melanie's sister moved to Lisbon for a job at a bakery.",
    "They hiked the river trail and saw a heron near the bridge.",
]


def episode(n_segments=3, reps=4) -> Episode:
    units = []
    for s in range(n_segments):
        for j in range(reps):
            units.append(ContextUnit(id=f"D{s}:{j}", text=SENTENCES[(s + j) % 4] + "\n", segment=f"session_{s}",
                                     date=f"day {s}"))
    return Episode("ep", tuple(units), (Query("q0", "What is the cat called?", "Pixel"),
                                        Query("q1", "Where did the sister move?", "Lisbon")))


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-layer BERT token classifier in a folder whose name selects llmlingua's
    bert-base-multilingual-cased code path (the name is how the package dispatches)."""
    from transformers import BertConfig, BertForTokenClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-random-bert-base-multilingual-cased"
    folder.mkdir()
    words = sorted(set(re.findall(r"\w+|[^\w\s]", " ".join(SENTENCES) + " ? ! . , 0 1 2 3 4 5 6 7 8 9")))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *(f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz")]
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)))
    tok = BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=False)
    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                                                  num_attention_heads=2, intermediate_size=64,
                                                  max_position_embeddings=512, num_labels=2))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def rng_fingerprint():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


# ---------------------------------------------------------------- configuration
@pytest.mark.parametrize("rate", [0, -0.1, 1.01, 2, True, "0.5"])
def test_rate_outside_0_1_is_refused(rate):
    with pytest.raises(ValueError, match=r"rate .* must be in \(0, 1\]"):
        LLMLingua1Smol(name="llmlingua1_smol", rate=rate)
    with pytest.raises(ValueError, match=r"rate"):
        LLMLingua2(name="llmlingua2", rate=rate)


def test_rate_one_is_allowed():
    assert LLMLingua1Smol(name="llmlingua1_smol", rate=1.0).rate == 1.0


def test_missing_model_path_is_refused_at_config_time(tmp_path):
    with pytest.raises(ValueError, match="no such directory"):
        LLMLingua2(name="llmlingua2", model_name=str(tmp_path / "llmlingua-2-xlm-roberta-large-meetingbank"))
    with pytest.raises(ValueError, match="empty"):
        LLMLingua2(name="llmlingua2", model_name="")
    with pytest.raises(ValueError, match="must contain one of"):
        LLMLingua2(name="llmlingua2", model_name="someone/roberta-classifier")


def test_absent_released_weights_give_a_clear_error(tiny_backbone, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    m = LLMLingua2(name="llmlingua2", cache=False)
    with pytest.raises(ConfigError) as err:
        m.setup(tiny_backbone, ToyTask(), seed=0)
    msg = str(err.value)
    assert "weights" in msg and "method.model_name=" in msg and "llmlingua1_smol" in msg


# ------------------------------------------------------------------ LLMLingua-2
def test_llmlingua2_compresses_each_segment_and_records_the_ratio(tiny_backbone, tiny_classifier, tmp_path):
    before = rng_fingerprint()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = rng_fingerprint()
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    m = LLMLingua2(name="llmlingua2", model_name=str(tiny_classifier), rate=0.5, cache_dir=str(tmp_path))
    m.setup(tiny_backbone, ToyTask(generation={"max_new_tokens": 2}), seed=0)
    ep = episode()
    info = m.ingest(ep)
    assert rng_fingerprint() == expected, "llmlingua's seed_everything(42) leaked into the harness RNG"
    assert before != expected
    assert info["n_segments"] == 3 and info["cache"] == "miss"
    assert 1.5 < info["compression_ratio"] < 3.0  # rate 0.5 -> about 2x on cl100k tokens
    assert info["compressed_tokens_cl100k"] < info["origin_tokens_cl100k"]
    assert info["context_tokens_compressed"] < info["context_tokens_uncompressed"]
    # Token dropping only: every compressed segment is a word subsequence of the original.
    text = m._prompts.context.text
    source = set(re.findall(r"\w+", " ".join(SENTENCES)))
    assert set(re.findall(r"\w+", text)) <= source | {"day", "0", "1", "2"}
    preds = m.answer(ep, ep.queries)
    assert len(preds) == 2 and all(p.info["compression_ratio"] == info["compression_ratio"] for p in preds)
    assert all(p.context_tokens == m._prompts.context.kept_tokens for p in preds)
    # A second ingest of the same context is served from the cache, also by a new instance.
    assert m.ingest(ep)["cache"] == "memory"
    m2 = LLMLingua2(name="llmlingua2", model_name=str(tiny_classifier), rate=0.5, cache_dir=str(tmp_path))
    m2.setup(tiny_backbone, ToyTask(generation={"max_new_tokens": 2}), seed=0)
    again = m2.ingest(ep)
    assert again["cache"] == "disk" and again["compression_ratio"] == info["compression_ratio"]
    assert m2._prompts.context.text == text


def test_llmlingua2_keeps_force_tokens(tiny_backbone, tiny_classifier, tmp_path):
    m = LLMLingua2(name="llmlingua2", model_name=str(tiny_classifier), rate=0.3, cache_dir=str(tmp_path),
                   force_tokens=["?", "\n"])
    m.setup(tiny_backbone, ToyTask(), seed=0)
    out, stats = m.compress_texts(["Is the cat grey? Pixel is grey.", "", "Where is Lisbon? Lisbon is far."])
    assert out[1] == "" and out[0].count("?") == 1 and out[2].count("?") == 1
    assert stats["compressed"] < stats["origin"]


# --------------------------------------------------------------- KV adapter
def test_legacy_cache_adapter_matches_a_full_forward(tiny_backbone):
    model = tiny_backbone.model
    ids = torch.tensor([list(range(5, 25))])
    with torch.no_grad():
        full = model(ids).logits
        wrapped = LegacyCacheModel(model)
        first = wrapped(ids[:, :12], attention_mask=torch.ones(1, 12, dtype=torch.long), use_cache=True)
        assert isinstance(first.past_key_values, list) and len(first.past_key_values) == model.config.num_hidden_layers
        k, v = first.past_key_values[0]
        assert k.shape[2] == 12
        second = wrapped(ids[:, 12:], attention_mask=torch.ones(1, 20, dtype=torch.long),
                         past_key_values=first.past_key_values, use_cache=True)
    assert torch.allclose(torch.cat([first.logits, second.logits], 1), full, atol=1e-4)
    assert wrapped.config is model.config  # attributes pass through


# ------------------------------------------------------------ LLMLingua-1 stand-in
def long_episode() -> Episode:
    units = []
    for s in range(2):
        for j in range(12):
            units.append(ContextUnit(id=f"D{s}:{j}", text=SENTENCES[(s + j) % 4] + "\n", segment=f"session_{s}"))
    return Episode("long", tuple(units), (Query("q0", "What is the cat called?", "Pixel"),))


def test_llmlingua1_smol_uses_the_backbone_and_compresses(tiny_backbone, tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    expected = rng_fingerprint()
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    m = LLMLingua1Smol(name="llmlingua1_smol", rate=0.33, cache_dir=str(tmp_path), iterative_size=50)
    m.setup(tiny_backbone, ToyTask(generation={"max_new_tokens": 2}), seed=0)
    assert m.compressor.model._model is tiny_backbone.model  # no second copy of the backbone
    assert m.compressor.tokenizer is not tiny_backbone.tokenizer
    ep = long_episode()
    info = m.ingest(ep)
    assert rng_fingerprint() == expected
    assert info["compression_ratio"] > 1.3
    assert info["context_tokens_compressed"] < info["context_tokens_uncompressed"]
    (p,) = m.answer(ep, ep.queries)
    assert p.prompt_tokens > p.context_tokens > 0
    d = m.describe()
    assert "llmlingua-1" in d["kind"] and "2" not in d["kind"].split("(")[0]


def test_the_stand_in_is_never_labelled_llmlingua2():
    from pathlib import Path

    conf = (Path(__file__).resolve().parents[2] / "conf" / "method" / "llmlingua1_smol.yaml").read_text()
    assert "NOT LLMLingua-2" in conf
    assert LLMLingua1Smol.kind.lower().startswith("llmlingua-1")


def test_task_layout_is_kept_around_compressed_segments(tiny_backbone, tmp_path):
    class Headed(ToyTask):
        def render_context(self, episode, *, count_tokens=None, max_tokens=None):
            from harness.types import RenderedContext

            text = "".join(f"DAY {u.date}:\n{u.text}" for u in episode.units)
            n = count_tokens(text) if count_tokens else 0
            return RenderedContext(text=text, kept_tokens=n, total_tokens=n, kept_unit_ids=tuple(u.id for u in episode.units))

    m = LLMLingua1Smol(name="llmlingua1_smol", rate=0.5, cache_dir=str(tmp_path), iterative_size=50)
    m.setup(tiny_backbone, Headed(), seed=0)
    ep = episode(n_segments=2, reps=6)
    m.ingest(ep)
    text = m._prompts.context.text
    assert text.count("DAY day 0:") == 1 and text.count("DAY day 1:") == 1  # one header per segment, uncompressed

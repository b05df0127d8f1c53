"""Shared fixtures: tiny random backbones (no download) and the embedded real one."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, os.cpu_count() or 1))

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Caroline said hello to Melanie and they talked about painting, running and the support group.",
    "Question: what did they talk about? Answer with a few words. The date was 8 May 2023.",
    "Passage 1 - Title: a short text about a city, a river and a bridge built in 1890.",
] * 20


def tiny_tokenizer():
    """A byte-level BPE trained on the spot, wrapped as an HF fast tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def tiny_llama(vocab_size: int, seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               tie_word_embeddings=False, attn_implementation="sdpa")
    cfg.update(overrides)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    # Random init makes logits nearly flat; scaling the head separates the top tokens so
    # greedy comparisons test the code, not float ties.
    with torch.no_grad():
        model.lm_head.weight.mul_(4.0)
    model.generation_config.eos_token_id = 2
    return model


def make_backbone(window: int = 512, seed: int = 0):
    from harness.backbone import Backbone

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=seed)
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(name="tiny", model=model, tokenizer=tok, device=torch.device("cpu"), dtype=torch.float32,
                    window=window)


@pytest.fixture(scope="session")
def tiny_backbone():
    return make_backbone()


@pytest.fixture(scope="session")
def smollm2_backbone():
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone
    from harness.embedded import cache_root
    import transformers

    folder = cache_root() / "models" / f"smollm2-135m-instruct-transformers-{transformers.__version__}"
    if not folder.exists() and os.environ.get("CI"):
        pytest.fail("the embedded backbone is missing: scripts/setup.sh should have cached it")
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / "smollm2_135m.yaml")
    return load_backbone(cfg)

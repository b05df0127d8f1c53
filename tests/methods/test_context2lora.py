"""Context2LoRA: the paper's parameter count, exact equality with the bare backbone before training, the PEFT
folder round trip, learning, exact resume, refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.errors import ConfigError
from harness.training.trainer import run_training
from tests.conftest import make_backbone

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
QUICK = ["train_data=onefact", "train_data.sources.synthetic.conversations=12", "train.write_length=96",
         "train.read_length=64", "train.grad_accum=2", "run.progress=false", "run.eval_episodes=2"]


def train_cfg(tmp_path, method: str, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=[f"method={method}", "method.adapter=null", *QUICK,
                                           f"out_dir={tmp_path}", *extra])


def qwen3_4b_meta():
    from transformers import AutoModelForCausalLM, Qwen3Config

    cfg = Qwen3Config(vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def test_the_papers_parameter_count_at_qwen3_4b_shapes():
    from peft import get_peft_model

    from methods.context2lora import lora_config

    model = get_peft_model(qwen3_4b_meta(), lora_config(8, 16.0, 0.0, ["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 5_898_240  # the paper's 5.90M


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits


def test_an_untrained_adapter_is_the_bare_backbone_and_closing_restores_it():
    from methods.context2lora import Context2LoRA

    bb = make_backbone()
    ids = bb.encode("Caroline said hello to Melanie and they talked about painting.")
    bare = logits(bb.model, ids)
    method = Context2LoRA(name="context2lora", adapter=None)
    method.setup(bb, task=None, seed=0)
    assert torch.equal(logits(bb.model, ids), bare)  # B = 0
    method.close()
    assert type(bb.model).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in bb.model.named_modules())


def test_training_lowers_the_heldout_loss_and_the_folder_round_trips(tmp_path):
    from peft import PeftModel

    from methods.context2lora import Context2LoRA

    bb = make_backbone()
    ids = bb.encode("The code is river. What is the code?")
    bare = logits(bb.model, ids)
    summary = run_training(train_cfg(tmp_path, "context2lora", "train.max_steps=6", "train.lr=0.01"), load=lambda _: bb)
    assert summary["status"] == "complete" and summary["trainable_parameters"] == 2 * 2 * (64 + 64) * 8 + 2 * 2 * (64 + 32) * 8
    assert summary["heldout_ce_last"] < summary["heldout_ce_first"]
    assert summary["heldout_paired"]["vs_start"]["mean_diff"] < 0
    trained = logits(bb.model, ids)
    for f in ("adapter_config.json", "adapter_model.safetensors", "harness_adapter.json", "loss_curve.png"):
        assert (tmp_path / f).is_file(), f
    fresh = make_backbone()
    assert torch.equal(logits(fresh.model, ids), bare)
    method = Context2LoRA(name="context2lora", adapter=str(tmp_path))
    method.setup(fresh, task=None, seed=0)
    assert torch.allclose(logits(fresh.model, ids), trained, atol=1e-5) and not torch.equal(trained, bare)
    method.close()
    outside = PeftModel.from_pretrained(make_backbone().model, str(tmp_path))  # opens outside the harness
    assert torch.allclose(logits(outside, ids), trained, atol=1e-5)


def test_one_step_lowers_the_loss_on_a_fixed_batch(tmp_path):
    from harness.training.data import build_training_data
    from harness.training.learner import make_learner
    from harness.training.synthetic import SyntheticMemory
    from harness.training.trainer import TrainSettings

    bb = make_backbone()
    data = build_training_data([SyntheticMemory(conversations=4, questions=1, items=(1, 1), small_talk=(0, 0))],
                               heldout_fraction=0.0, split_seed=0)
    learner = make_learner(bb, {"_target_": "methods.context2lora.Context2LoRA", "name": "context2lora",
                                "rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]},
                           TrainSettings(write_length=96, read_length=64))
    batch = [learner.tokenize(e) for e in data.train[:2]]
    n = sum(t.num_target_tokens for t in batch)
    opt = torch.optim.SGD(learner.parameters(), lr=0.5)
    before = [learner.backward(t, group_target_tokens=n, group_size=2).ce_sum for t in batch]
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        after = [learner._ce_sum(t)[0].item() for t in batch]
    assert sum(after) < sum(before)


def test_resume_continues_exactly(tmp_path):
    from safetensors.torch import load_file

    whole = run_training(train_cfg(tmp_path / "a", "context2lora", "train.max_steps=4", "train.lr=0.01"),
                         load=lambda _: make_backbone())
    paused = run_training(train_cfg(tmp_path / "b", "context2lora", "train.max_steps=4", "train.lr=0.01",
                                    "run.stop_after_steps=2"), load=lambda _: make_backbone())
    assert paused["status"] == "paused"
    resumed = run_training(train_cfg(tmp_path / "b", "context2lora", "train.max_steps=4", "train.lr=0.01",
                                     "resume=true"), load=lambda _: make_backbone())
    assert whole["status"] == resumed["status"] == "complete"
    a, b = load_file(str(tmp_path / "a" / "adapter_model.safetensors")), load_file(str(tmp_path / "b" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_an_adapter_of_another_backbone_is_refused(tmp_path):
    from harness.errors import HarnessError
    from methods.context2lora import Context2LoRA

    run_training(train_cfg(tmp_path, "context2lora", "train.max_steps=1"), load=lambda _: make_backbone())
    other = make_backbone()
    other.model.model.embed_tokens.weight.data.mul_(1.5)  # same shapes, other weights
    method = Context2LoRA(name="context2lora", adapter=str(tmp_path))
    with pytest.raises(HarnessError, match="adapter"):
        method.setup(other, task=None, seed=0)


@pytest.mark.parametrize("override, message", [
    ("method.rank=0", "rank must be a positive integer"),
    ("method.target_modules=[q_proj,qkv]", r"unknown target module\(s\) \['qkv'\]"),
    ("method.train_context=sometimes", "train_context must be one of"),
])
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, override, message):
    from harness.runner import run_experiment

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["method=context2lora", "method.adapter=null", override, "task=hotpotqa",
                                           "task.limit=1", f"run.results_dir={tmp_path}", "run.progress=false"])
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, load=lambda _: pytest.fail("refused before loading"))
    assert not list(tmp_path.glob("**/header.json"))
    with pytest.raises(ConfigError, match=message):
        run_training(train_cfg(tmp_path / "t", "context2lora", override), load=lambda _: pytest.fail("no load"))


def test_record_and_sidecar_say_the_training_context_is_unverified(tmp_path):
    run_training(train_cfg(tmp_path, "context2lora", "train.max_steps=1"), load=lambda _: make_backbone())
    side = json.loads((tmp_path / "harness_adapter.json").read_text())
    assert side["train_context"] == "visible" and "unverified" in side["train_context_note"]

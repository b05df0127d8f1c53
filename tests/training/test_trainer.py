"""The δ-mem trainer on a tiny random Llama: gradients, a short run, exact resume, adapters, refusals."""
from __future__ import annotations

import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict
from safetensors.torch import load_file

from harness.errors import ConfigError, HarnessError
from harness.training.episodes import ChatRenderer, make_episode, tokenize_episode
from harness.training.synthetic import SyntheticMemory
from harness.training.trainer import (LOG_FILE, STATE_FILE, SUMMARY_FILE, TrainSettings, checkpoint_dirs,
                                      deltamem_config_from_method, episode_backward, run_training)
from tests.conftest import make_backbone

CONF = Path(__file__).resolve().parents[2] / "conf"
SYNTH = ["train_data=synthetic", "train_data.sources.synthetic.conversations=8",
         "train_data.sources.synthetic.questions=2"]
QUICK = ["train.write_length=96", "train.read_length=64", "train.grad_accum=2", "run.progress=false",
         "run.eval_episodes=2"]


def train_cfg(tmp_path: Path, *overrides: str, variant: str = "tsw", data: list[str] = SYNTH):
    """The real conf/train.yaml with a δ-mem method node (independent of conf/method/ files)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["method=vanilla", *data, *QUICK, f"out_dir={tmp_path}", *overrides])
    with open_dict(cfg):
        cfg.method = OmegaConf.create({"name": f"deltamem_{variant}", "variant": variant, "adapter": None})
    return cfg


def tiny(seed: int = 0):
    return make_backbone(seed=seed)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "deltamem_model.safetensors"))


def log_rows(path: Path, kind: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (path / LOG_FILE).read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


# ------------------------------------------------------------------------------------------ one episode
@pytest.mark.parametrize("variant", ["tsw", "ssw", "msw"])
def test_every_trainable_deltamem_parameter_gets_a_gradient(variant):
    from methods.deltamem import DeltaMemConfig, attach

    bb = tiny()
    dm = attach(bb.model, getattr(DeltaMemConfig, variant)())
    ep, _ = make_episode(SyntheticMemory(conversations=1, questions=1).conversations()[0])
    tok = tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=128, read_length=64)
    n_target = sum(1 for x in tok.labels[1:] if x != -100)
    res = episode_backward(bb.model, dm, tok, device=bb.device, write_chunk=128, group_target_tokens=n_target,
                           group_size=1, sparsity_weight=0.0, sparsity_target=0.05, probe=None,
                           autocast=contextlib.nullcontext)
    assert torch.isfinite(torch.tensor(res.ce_sum)) and res.target_tokens == n_target
    for name, p in dm.named_parameters(trainable_only=True):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name
    assert all(p.grad is None for p in bb.model.parameters() if not p.requires_grad)
    dm.detach()


def test_method_config_parsing():
    assert deltamem_config_from_method({"name": "deltamem_msw"}).num_state_heads == 4
    cfg = deltamem_config_from_method({"name": "x", "deltamem": {"variant": "ssw", "rank": 4}})
    assert (cfg.write_granularity, cfg.rank) == ("message_mean", 4)
    with pytest.raises(ConfigError, match="not a δ-mem method"):
        deltamem_config_from_method({"name": "vanilla"})
    with pytest.raises(ConfigError, match="rank"):
        deltamem_config_from_method({"name": "deltamem_tsw", "rank": 0})


def test_schedule_is_linear_warmup_then_cosine_to_zero():
    s = TrainSettings(max_steps=20)
    assert (s.total_steps(999), s.warmup_steps(20)) == (20, 2)
    assert TrainSettings(grad_accum=4).total_steps(70) == 18
    with pytest.raises(ConfigError, match="unknown keys"):
        TrainSettings.from_mapping({"learning_rate": 1e-3})


# ------------------------------------------------------------------------------------------ runs
def test_two_step_run_trains_only_deltamem_and_writes_its_outputs(tmp_path):
    bb = tiny()
    before = [(p, p.detach().clone()) for p in bb.model.parameters()]  # the objects survive the wrapping
    cfg = train_cfg(tmp_path, "train.max_steps=2", "train.sparsity_weight=0.01")
    summary = run_training(cfg, load=lambda _: bb)
    assert summary["status"] == "complete" and summary["steps"] == 2 and summary["episodes"] == 4
    rows = log_rows(tmp_path)
    assert [r["step"] for r in rows] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) and r["grad_norm"] > 0 for r in rows)
    assert rows[0]["lr"] == 0.0 and rows[1]["lr"] == pytest.approx(2e-4)  # warm-up step 0, then the peak
    assert rows[0]["sparsity"] > 0
    evals = log_rows(tmp_path, "eval")  # held-out CE before training and at the end, on the same 2 episodes
    assert [r["step"] for r in evals] == [0, 2] and all(r["heldout_episodes"] == 2 for r in evals)
    assert evals[0]["heldout_ce_nocontext"] == evals[1]["heldout_ce_nocontext"]
    assert all(torch.equal(p, old) for p, old in before)  # the backbone is untouched
    for f in ("deltamem_config.json", "deltamem_model.safetensors", "loss_curve.png", "train_config.yaml",
              SUMMARY_FILE):
        assert (tmp_path / f).is_file(), f
    init = tiny()
    from methods.deltamem import attach

    fresh = dict(attach(init.model, deltamem_config_from_method(cfg.method)).named_parameters())
    trained = weights(tmp_path)
    assert any(not torch.equal(trained[k], fresh[k].detach()) for k in trained)
    data = json.loads((tmp_path / SUMMARY_FILE).read_text())
    trained_ids = {r for r in data["heldout_ids"]}
    assert trained_ids and data["data"]["train_episodes"] == 14 and data["data"]["heldout_episodes"] == 2
    assert json.loads((tmp_path / "deltamem_config.json").read_text())["extra"]["backbone"]["hidden_size"] == 64


def test_resume_continues_exactly(tmp_path):
    straight, paused = tmp_path / "straight", tmp_path / "paused"
    run_training(train_cfg(straight, "train.max_steps=4", "run.save_every=100"), load=lambda _: tiny())
    first = run_training(train_cfg(paused, "train.max_steps=4", "run.stop_after_steps=2", "run.save_every=100"),
                         load=lambda _: tiny())
    assert first == {"status": "paused", "step": 2, "total_steps": 4}
    assert [p.name for p in checkpoint_dirs(paused)] == ["step-000002"]
    assert not (paused / "deltamem_model.safetensors").exists()
    done = run_training(train_cfg(paused, "train.max_steps=4", "resume=true", "run.save_every=100"),
                        load=lambda _: tiny())
    assert done["status"] == "complete" and done["steps"] == 4
    a, b = weights(straight), weights(paused)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("seconds", "cpu_seconds", "tokens_per_s", "elapsed_s", "peak_mem_mb")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in drop} for r in rows]  # noqa: E731
    assert strip(log_rows(straight)) == strip(log_rows(paused))
    assert strip(log_rows(straight, "eval")) == strip(log_rows(paused, "eval"))
    # resume=true on a finished run (scripts/recall_curriculum.sh reruns stages) trains nothing more
    log_before = (paused / LOG_FILE).read_text()
    again = run_training(train_cfg(paused, "train.max_steps=4", "resume=true", "run.save_every=100"),
                         load=lambda _: tiny())
    assert again == done and (paused / LOG_FILE).read_text() == log_before
    c = weights(paused)
    assert all(torch.equal(b[k], c[k]) for k in b)


def test_resume_refuses_a_changed_config_and_a_fresh_run_refuses_existing_checkpoints(tmp_path):
    run_training(train_cfg(tmp_path, "train.max_steps=3", "run.stop_after_steps=1"), load=lambda _: tiny())
    with pytest.raises(HarnessError, match=r"config changed.*train\.lr"):
        run_training(train_cfg(tmp_path, "train.max_steps=3", "train.lr=1e-3", "resume=true"), load=lambda _: tiny())
    with pytest.raises(HarnessError, match="training data changed"):
        run_training(train_cfg(tmp_path, "train.max_steps=3", "train_data.sources.synthetic.conversations=9",
                               "resume=true"), load=lambda _: tiny())
    with pytest.raises(HarnessError, match="already has checkpoints"):
        run_training(train_cfg(tmp_path, "train.max_steps=3"), load=lambda _: tiny())


def test_a_checkpoint_state_loads_with_weights_only(tmp_path):
    import random

    import numpy as np

    from harness.training.trainer import _set_rng_state

    run_training(train_cfg(tmp_path, "train.max_steps=2", "run.stop_after_steps=1"), load=lambda _: tiny())
    state = torch.load(checkpoint_dirs(tmp_path)[-1] / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 1 and {"python", "numpy", "torch"} <= set(state["rng"])
    draw = lambda: (random.random(), np.random.rand(), torch.rand(1).item())  # noqa: E731
    _set_rng_state(state["rng"])
    first = draw()
    _set_rng_state(state["rng"])
    assert draw() == first


class _Planted:
    """Unpickling it writes a file: what any code a full unpickle runs could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_an_old_style_or_planted_state_file_is_refused_without_running_it(tmp_path):
    import numpy as np

    run_training(train_cfg(tmp_path, "train.max_steps=2", "run.stop_after_steps=1"), load=lambda _: tiny())
    state_file = checkpoint_dirs(tmp_path)[-1] / STATE_FILE
    marker = tmp_path / "planted-code-ran"
    old_style = {"step": 1, "rng": {"numpy": np.random.get_state()}}  # a numpy array, as versions before wrote
    for payload in (old_style, {"step": 1, "rng": _Planted(marker)}):
        torch.save(payload, state_file)
        with pytest.raises(HarnessError, match=r"trainer_state\.pt: written by an older version") as err:
            run_training(train_cfg(tmp_path, "train.max_steps=2", "resume=true"), load=lambda _: tiny())
        assert "\n" not in str(err.value)
        assert not marker.exists()


def test_ssw_and_msw_runs(tmp_path):
    for variant in ("ssw", "msw"):
        summary = run_training(train_cfg(tmp_path / variant, "train.max_steps=2", variant=variant),
                               load=lambda _: tiny())
        assert summary["variant"] == variant
        assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log_rows(tmp_path / variant))


def test_bf16_autocast_step_keeps_fp32_deltamem_weights(tmp_path):
    summary = run_training(train_cfg(tmp_path, "train.max_steps=2", "train.precision=bf16"), load=lambda _: tiny())
    assert summary["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log_rows(tmp_path))
    assert all(t.dtype == torch.float32 for t in weights(tmp_path).values())


def test_trained_adapter_loads_on_its_backbone_and_is_refused_on_another(tmp_path):
    from methods.deltamem import DeltaMem
    from methods.deltamem.adapter import read_config

    from methods.deltamem.signature import BackboneMismatch, check_backbone_signature

    bb = tiny()
    run_training(train_cfg(tmp_path, "train.max_steps=2"), load=lambda _: bb)
    config = read_config(tmp_path)
    same = tiny()
    check_backbone_signature(config.extra["backbone"], same.model)
    dm = DeltaMem.from_adapter(same.model, str(tmp_path))
    ids = torch.arange(3, 40).unsqueeze(0)
    with torch.no_grad():
        bb.model._deltamem.reset()
        dm.reset()
        assert torch.equal(bb.model(ids).logits, same.model(ids).logits)
    with pytest.raises(BackboneMismatch, match="different weights"):
        check_backbone_signature(config.extra["backbone"], tiny(seed=1).model)
    wider = copy.deepcopy(config.extra["backbone"])
    wider["hidden_size"] = 128
    with pytest.raises(BackboneMismatch, match="hidden_size=128"):
        check_backbone_signature(wider, same.model)


def test_warm_start_from_an_adapter(tmp_path):
    run_training(train_cfg(tmp_path / "a", "train.max_steps=2"), load=lambda _: tiny())
    cfg = train_cfg(tmp_path / "b", "train.max_steps=1", "train.lr=0.0")
    with open_dict(cfg):
        cfg.method.adapter = str(tmp_path / "a")
    run_training(cfg, load=lambda _: tiny())
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # lr 0: unchanged
    cfg = train_cfg(tmp_path / "c", "train.max_steps=1")
    with open_dict(cfg):
        cfg.method.adapter = str(tmp_path / "a")
    with pytest.raises(HarnessError, match="another backbone"):
        run_training(cfg, load=lambda _: tiny(seed=1))


def test_bad_training_file_fails_with_line_and_field(tmp_path):
    bad = tmp_path / "chats.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "a"}]}\n{"messages": [{"role": "user"}]}\n')
    cfg = train_cfg(tmp_path / "out", data=["train_data=jsonl", f"train_data.sources.jsonl.path={bad}"])
    with pytest.raises(HarnessError, match=r"line 2, messages\[0\]: missing field 'content'"):
        run_training(cfg, load=lambda _: tiny())


def test_learning_goes_through_the_memory(tmp_path):
    """Overfit one episode: the loss falls, and only with the history written (an empty state is inert)."""
    from methods.deltamem import DeltaMem

    from harness.training.data import build_training_data
    from harness.training.trainer import build_sources

    cfg = train_cfg(tmp_path, "train.max_steps=15", "train.lr=1e-2", "train.warmup_ratio=0.0", "train.grad_accum=1",
                    "train_data.sources.synthetic.conversations=1", "train_data.sources.synthetic.questions=1",
                    "train_data.heldout_fraction=0.0")
    run_training(cfg, load=lambda _: tiny())
    losses = [r["loss"] for r in log_rows(tmp_path)]
    assert losses[-1] < 0.7 * losses[0]
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["heldout_ce_last"] is None  # nothing held out in this run: no held-out curve
    bb = tiny()
    ep = build_training_data(build_sources(cfg.train_data), heldout_fraction=0.0, split_seed=0).train[0]
    tok = tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=96, read_length=64)
    read = torch.tensor([tok.read_ids])
    labels = torch.tensor([tok.labels])

    def read_loss() -> float:
        with torch.no_grad():
            return float(bb.model(input_ids=read, labels=labels).loss)

    bare = read_loss()
    dm = DeltaMem.from_adapter(bb.model, str(tmp_path))
    dm.reset()
    with dm.writes(False):
        assert read_loss() == pytest.approx(bare, abs=1e-6)  # nothing written: the backbone exactly
    with torch.no_grad(), dm.writes(True):
        bb.model(input_ids=torch.tensor([tok.write_ids]))
    with dm.writes(False):
        assert read_loss() < 0.7 * bare


def test_ssw_single_call_shortcut_gives_identical_gradients(monkeypatch):
    """SSW's write pass reads an empty state: cutting the backbone out of its backward changes nothing."""
    import harness.training.trainer as trainer
    from methods.deltamem import DeltaMemConfig, attach

    bb = tiny()
    dm = attach(bb.model, DeltaMemConfig.ssw())
    ep, _ = make_episode(SyntheticMemory(conversations=1, questions=1).conversations()[0])
    tok = tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=200, read_length=64)

    def grads() -> dict[str, torch.Tensor]:
        for p in dm.parameters():
            p.grad = None
        episode_backward(bb.model, dm, tok, device=bb.device, write_chunk=512, group_target_tokens=10,
                         group_size=1, sparsity_weight=0.0, sparsity_target=0.05, probe=None,
                         autocast=contextlib.nullcontext)
        return {n: p.grad.clone() for n, p in dm.named_parameters(trainable_only=True)}

    fast = grads()
    monkeypatch.setattr(trainer, "_detached_memory_inputs", lambda model: contextlib.nullcontext())
    full = grads()
    assert all(torch.equal(fast[k], full[k]) and float(full[k].abs().sum()) > 0 for k in full)


def _distilled_setup(variant: str, **flags):
    """A tiny backbone with a random (non-inert) δ-mem, one distilled synthetic episode, its labelled positions,
    read ids and the bare backbone's distributions there (from an untouched copy made before the surgery)."""
    import dataclasses

    import torch.nn.functional as F

    from methods.deltamem import DeltaMemConfig, attach

    bb = tiny()
    bare = copy.deepcopy(bb.model)
    torch.manual_seed(0)
    dm = attach(bb.model, getattr(DeltaMemConfig, variant)(output_init="random"))
    ep, _ = make_episode(SyntheticMemory(conversations=1, questions=1).conversations()[0])
    tok = dataclasses.replace(tokenize_episode(ep, ChatRenderer.for_backbone(bb), write_length=128, read_length=64),
                              distill=True, **flags)
    pos = (torch.tensor(tok.labels)[1:] != -100).nonzero().squeeze(-1)
    read = torch.tensor([tok.read_ids])
    with torch.no_grad():
        p_bare = F.softmax(bare(input_ids=read).logits[0, pos].float(), dim=-1)
    return bb, dm, tok, pos, read, p_bare


def test_a_distilled_episode_is_trained_on_its_kl_to_the_bare_backbone():
    """The loss of a distilled episode is KL(bare ‖ δ-mem) summed over the target positions, computed here from
    an untouched copy of the backbone and the wrapped model read by hand; the parameters get its gradient."""
    import torch.nn.functional as F

    bb, dm, tok, pos, read, p_bare = _distilled_setup("tsw")
    labels = torch.tensor(tok.labels)
    with torch.no_grad():
        dm.reset()
        with dm.writes(True):
            bb.model(input_ids=torch.tensor([tok.write_ids]))
        with dm.writes(False):
            logp = F.log_softmax(bb.model(input_ids=read).logits[0, pos].float(), dim=-1)
    expected = float((p_bare * (p_bare.log() - logp)).sum())
    ce = float(F.nll_loss(logp, labels[pos + 1], reduction="sum"))
    res = episode_backward(bb.model, dm, tok, device=bb.device, write_chunk=128, group_target_tokens=len(pos),
                           group_size=1, sparsity_weight=0.0, sparsity_target=0.05, probe=None,
                           autocast=contextlib.nullcontext)
    assert expected > 1e-4  # the random memory does move the backbone, so the check is not 0 == 0
    assert res.kl_sum == pytest.approx(expected, rel=1e-4, abs=1e-6) and res.objective_sum == res.kl_sum
    assert res.ce_sum == pytest.approx(ce, rel=1e-4)
    grads = [p.grad for p in dm.parameters(trainable_only=True)]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    dm.detach()


@pytest.mark.parametrize("variant", ["tsw", "ssw", "msw"])
def test_an_online_episode_is_read_as_the_context_protocol_decodes(variant):
    """An online distilled episode has no write pass: its loss is the KL from the bare backbone of what the
    memory model predicts when the read sequence is fed token by token with writes on and a KV cache (the
    decoding path of the context protocol, which sets no segment ids, so SSW writes each token too), here
    computed that way by hand from an untouched backbone copy."""
    import torch.nn.functional as F

    bb, dm, tok, pos, read, p_bare = _distilled_setup(variant, online=True)
    with torch.no_grad():
        dm.reset()
        steps, past = [], None
        with dm.writes(True):
            for t in range(read.shape[1]):
                out = bb.model(input_ids=read[:, t:t + 1], past_key_values=past, use_cache=True)
                past = out.past_key_values
                steps.append(out.logits[0, -1].float())
        logp = F.log_softmax(torch.stack(steps)[pos], dim=-1)
    expected = float((p_bare * (p_bare.log() - logp)).sum())
    res = episode_backward(bb.model, dm, tok, device=bb.device, write_chunk=128, group_target_tokens=len(pos),
                           group_size=1, sparsity_weight=0.0, sparsity_target=0.05, probe=None,
                           autocast=contextlib.nullcontext)
    assert expected > 1e-4
    assert res.kl_sum == pytest.approx(expected, rel=1e-3, abs=1e-6)
    assert res.write_tokens == 0 and len(tok.write_ids) > 0  # nothing is written before the read
    grads = [p.grad for p in dm.parameters(trainable_only=True)]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    dm.detach()

"""MemGen: the paper's parameter count, exact equality with the bare backbone at caps 0, cached insertion ==
the official re-prefill, the training path == the decoding path, the folder round trip, learning, exact resume,
refusals."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.errors import ConfigError
from harness.generation import generate_batch, prefill_prefix
from harness.training.trainer import run_training
from harness.types import GenerationSettings
from methods.memgen.model import MemGen, MemGenConfig, target_insertion_points
from methods.memgen.weave import (Stream, _new_cache, generate_one, generate_woven_batch, teacher_forced_logits,
                                  weave_prefix)
from tests.conftest import make_backbone
from tests.methods.test_context2lora import CONF, qwen3_4b_meta, train_cfg

TEXT = "Caroline said hello to Melanie and they talked about painting, running and the support group."


def fitted(bb, **cfg):
    torch.manual_seed(0)
    mg = MemGen(bb.model, MemGenConfig(weaver_dropout=0.0, **cfg))
    mg.peft.eval()
    with torch.no_grad():  # a weaver that differs from the reasoner
        for n, p in mg.peft.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return mg


def test_the_papers_parameter_count_at_qwen3_4b_shapes():
    mg = MemGen(qwen3_4b_meta(), MemGenConfig())
    assert abs(mg.num_parameters() - 46.20e6) / 46.20e6 < 0.005  # 46,193,666 against the paper's 46.20M
    assert mg.num_parameters() == 33_030_144 + 2 * (2560 * 2560 + 2560) + 16 * 2560 + 4 * 2560 + 2


def test_caps_at_zero_are_the_bare_backbone_exactly():
    bb = make_backbone()
    ids = bb.encode(TEXT)
    s = GenerationSettings(max_new_tokens=12)
    bare = generate_batch(bb.model, [ids], s, stop_ids=bb.stop_ids, pad_id=bb.pad_id)[0].ids
    mg = fitted(bb, max_prompt_aug_num=0, max_inference_aug_num=0)
    assert generate_one(mg, bb.tokenizer, ids, s, stop_ids=bb.stop_ids).ids == bare
    mg.detach()


def test_the_reasoner_switch_is_the_bare_backbone_and_the_weaver_comes_back():
    bb = make_backbone()
    x = torch.tensor([bb.encode(TEXT)])
    with torch.no_grad():
        bare = bb.model(input_ids=x).logits
        mg = fitted(bb)
        weaver = mg.model(input_ids=x).logits
        with mg.reasoner():
            inside = mg.model(input_ids=x).logits
        after = mg.model(input_ids=x).logits
    assert torch.equal(inside, bare) and torch.equal(after, weaver) and not torch.allclose(weaver, bare)
    mg.detach()


def test_appending_to_the_caches_equals_the_official_re_prefill():
    """Insertions at fixed points of a fixed continuation: every next-token distribution of the cached path equals
    the one of the re-prefill path (fresh reasoner prefill, weaver over everything) within fp32 noise."""
    bb = make_backbone()
    mg = fitted(bb)
    ids = bb.encode(TEXT)
    follow = bb.encode(" they met again and talked for an hour")
    with torch.no_grad():
        cached = Stream(mg, _new_cache(mg.model), _new_cache(mg.model), 0)
        fresh = Stream(mg, None, None, 0, reprefill=True)
        out = []
        for s in (cached, fresh):
            rows = [s.feed(mg.embed(torch.tensor([ids])))]
            rows.append(s.feed(s.latents("prompt")))
            for k, t in enumerate(follow):
                rows.append(s.feed(mg.embed(torch.tensor([[t]]))))
                if k in (1, 4):
                    rows.append(s.feed(s.latents("inference")))
            out.append(torch.cat(rows))
    assert out[0].shape == out[1].shape and (out[0] - out[1]).abs().max() < 1e-4
    assert not torch.allclose(out[0][0], out[0][1])  # the latents change the prediction


def test_a_shared_prefix_changes_nothing():
    bb = make_backbone()
    mg = fitted(bb, delimiters=("|",), max_inference_aug_num=3)  # a token the tiny model emits
    ids = bb.encode(TEXT)
    s = GenerationSettings(max_new_tokens=16)
    whole = generate_one(mg, bb.tokenizer, ids, s, stop_ids=bb.stop_ids)
    with mg.reasoner():
        pre = prefill_prefix(bb.model, ids[:9])
    split = generate_one(mg, bb.tokenizer, ids[9:], s, stop_ids=bb.stop_ids, prefix=pre,
                         weaver_prefix=weave_prefix(mg, pre, ids[:9]))
    official = generate_one(mg, bb.tokenizer, ids, s, stop_ids=bb.stop_ids, reprefill=True)
    assert whole.ids == split.ids == official.ids and whole.insertions >= 1


@pytest.mark.parametrize("sample", [False, True])
@pytest.mark.parametrize("shared", [0, 7])
def test_a_batch_decodes_each_prompt_as_alone(sample, shared, monkeypatch):
    """Prompts of unequal length decoded together: the same tokens, stops and insertions as one at a time, with
    rows inserting at different steps, rows stopping early (the batch compacts) and others running to the end;
    a few inserting rows are computed on copies of their caches, one row per copy on the sampled runs."""
    from methods.memgen import weave

    if sample:
        monkeypatch.setattr(weave, "ROWS_PER_COPY", 1)
    bb = make_backbone()
    mg = fitted(bb, delimiters=tuple("aeioutnrsl "), max_inference_aug_num=3)
    ids = bb.encode(TEXT)
    prompts = [ids[9:], ids[9:20], ids[12:15] + ids[30:40], ids[9:11], ids[20:24]]
    s = GenerationSettings(max_new_tokens=20, do_sample=sample, temperature=1.0)
    stop = set(range(100, 108)) | {131}
    pre = wpre = None
    if shared:
        with mg.reasoner():
            pre = prefill_prefix(bb.model, ids[:shared])
        wpre = weave_prefix(mg, pre, ids[:shared])
    alone = [generate_one(mg, bb.tokenizer, q, s, stop_ids=stop, prefix=pre, weaver_prefix=wpre, seed=i)
             for i, q in enumerate(prompts)]
    batch = generate_woven_batch(mg, bb.tokenizer, prompts, s, stop_ids=stop, pad_id=bb.pad_id, prefix=pre,
                                 weaver_prefix=wpre, seeds=range(len(prompts)))
    assert [(w.ids, w.stopped, w.insertions) for w in batch] == [(w.ids, w.stopped, w.insertions) for w in alone]
    assert sum(w.stopped for w in alone) >= 2 and not all(w.stopped for w in alone)
    assert len({w.insertions for w in alone}) > 1


def test_batched_latents_and_logits_equal_each_row_alone():
    """The batch's next-token logits per row, through left padding and blocks that only one row inserts (holes in
    the other, computed on copies of that row's caches), equal a single stream's within fp32 noise."""
    from methods.memgen.weave import _Rows

    bb = make_backbone()
    mg = fitted(bb)
    ids = bb.encode(TEXT)
    prompts, follow = [ids[:12], ids[3:8]], [ids[20], ids[25]]
    both, one_row = torch.ones(2, dtype=torch.bool), {0: torch.tensor([0]), 1: torch.tensor([1])}
    with torch.no_grad():
        real = torch.tensor([[1] * 12, [0] * 7 + [1] * 5])
        padded = torch.tensor([prompts[0], [0] * 7 + prompts[1]])
        rows = _Rows(mg, _new_cache(mg.model), _new_cache(mg.model), torch.ones((2, 0), dtype=torch.long), 64)
        got = [rows.feed(mg.embed(padded), real, positions=(real.cumsum(-1) - 1).clamp(min=0))]
        got.append(rows.insert("prompt", torch.arange(2)))
        got.append(rows.feed(mg.embed(torch.tensor([follow]).T), both))
        got.append({0: rows.insert("inference", one_row[0])[0]})  # row 1: a hole
        got.append(rows.feed(mg.embed(torch.tensor([follow]).T), both))
        got.append({1: rows.insert("inference", one_row[1])[0]})  # row 0: a hole
        got.append(rows.feed(mg.embed(torch.tensor([follow]).T), both))
        for r in range(2):
            one = Stream(mg, _new_cache(mg.model), _new_cache(mg.model), 0)
            want = [one.feed(mg.embed(torch.tensor([prompts[r]])))]
            want.append(one.feed(one.latents("prompt")))
            want.append(one.feed(mg.embed(torch.tensor([[follow[r]]]))))
            want.append(one.feed(one.latents("inference")) if r == 0 else None)
            want.append(one.feed(mg.embed(torch.tensor([[follow[r]]]))))
            want.append(one.feed(one.latents("inference")) if r == 1 else None)
            want.append(one.feed(mg.embed(torch.tensor([[follow[r]]]))))
            for g, w in zip(got, want):
                if w is not None:
                    assert (g[r] - w[0]).abs().max() < 1e-4


def test_the_weavers_prefix_holds_no_autograd_graph():
    """The weaver's LoRA is trainable; its cache over an episode's prefix must not keep a graph alive (it did:
    14 GB for an 8k-token LoCoMo context)."""
    bb = make_backbone()
    mg = fitted(bb)
    assert any(p.requires_grad for p in mg.parameters())
    ids = bb.encode(TEXT)
    with mg.reasoner():
        pre = prefill_prefix(bb.model, ids)
    cache = weave_prefix(mg, pre, ids).cache
    assert all(not layer.keys.requires_grad and layer.keys.grad_fn is None for layer in cache.layers)
    mg.detach()


def test_the_training_path_equals_the_decoding_path():
    """Teacher-forced logits with latents at given points equal the logits the decoder sees feeding the same
    tokens and inserting at the same points."""
    bb = make_backbone()
    mg = fitted(bb)
    ids = bb.encode(TEXT)
    points = [(6, "prompt"), (10, "inference"), (14, "inference")]
    with torch.no_grad():
        forced = teacher_forced_logits(mg, ids, points)  # row j predicts token j + 1
        stream = Stream(mg, _new_cache(mg.model), _new_cache(mg.model), 0)
        at = dict(points)
        rows = []
        last = stream.feed(mg.embed(torch.tensor([ids[:1]])))
        for i in range(1, len(ids)):  # the distribution that predicts token i
            rows.append(stream.feed(stream.latents(at[i])) if i in at else last)
            last = stream.feed(mg.embed(torch.tensor([[ids[i]]])))
    decoded = torch.cat(rows)
    assert decoded.shape == forced.shape and (decoded - forced).abs().max() < 1e-4


def test_training_inserts_where_decoding_inserts(monkeypatch):
    """On a chat episode, the learner's insertion points are where the decoder inserts when it is forced along the
    target after the evaluation prompt (the prompt with the generation header): the prompt block right after the
    header, the inference blocks after the same delimiters."""
    from types import SimpleNamespace

    from harness.training.episodes import IGNORE, Episode
    from harness.training.learner import visible_messages
    from methods.memgen import weave
    from methods.memgen.learner import MemGenLearner

    bb = make_backbone()
    ep = Episode(id="e", source="s", group="g",
                 write=({"role": "user", "content": "I painted a lake, a boat and a dog."},
                        {"role": "assistant", "content": "Nice. Tell me more."}),
                 read=({"role": "user", "content": "What did I paint?"},
                       {"role": "assistant", "content": "A lake, a boat, and a dog. Then, nothing."}))
    learner = MemGenLearner(bb, {"weaver_dropout": 0.0, "max_inference_aug_num": 3},
                            SimpleNamespace(write_length=256, read_length=96))
    tok = learner.tokenize(ep)
    points = target_insertion_points(tok.read_ids, tok.labels, bb.tokenizer, learner.mg.config, IGNORE)
    prompt = bb.chat_ids(list(visible_messages(ep)[:-1]))
    assert list(tok.read_ids[:len(prompt)]) == prompt and points[0] == (len(prompt), "prompt")
    n = learner.mg.config.prompt_latents
    trained = [i + n * k for k, (i, _) in enumerate(points)]  # reasoner positions, earlier blocks counted

    target = iter(tok.read_ids[len(prompt):])
    monkeypatch.setattr(weave, "_next_tokens", lambda logits, settings, generators: [next(target)])
    seen, latents = [], weave.Stream.latents
    monkeypatch.setattr(weave.Stream, "latents", lambda self, kind: (seen.append(self.length), latents(self, kind))[1])
    out = generate_one(learner.mg, bb.tokenizer, prompt, GenerationSettings(max_new_tokens=64), stop_ids=bb.stop_ids)
    assert out.stopped and len(points) == 4 and seen == trained
    learner.mg.detach()


def test_insertion_points_follow_the_official_rule():
    bb = make_backbone()
    ids = bb.encode("a, b. c, d, e")
    labels = [-100] * 2 + ids[2:]
    cfg = MemGenConfig(max_inference_aug_num=2, delimiters=(",",))
    points = target_insertion_points(ids, labels, bb.tokenizer, cfg)
    assert points[0] == (2, "prompt") and [k for _, k in points[1:]] == ["inference", "inference"]
    assert all(bb.tokenizer.decode(ids[:i]).endswith(",") for i, _ in points[1:])
    assert target_insertion_points(ids, labels, bb.tokenizer, dataclasses.replace(cfg, max_prompt_aug_num=0,
                                                                                  max_inference_aug_num=0)) == []


def test_training_learns_and_the_folder_round_trips(tmp_path):
    from methods.memgen.method import MemGenMethod

    bb = make_backbone()
    summary = run_training(train_cfg(tmp_path, "memgen", "train.max_steps=6", "train.lr=0.01",
                                     "method.weaver_dropout=0.0"), load=lambda _: bb)
    assert summary["status"] == "complete" and summary["heldout_ce_last"] < summary["heldout_ce_first"]
    for f in ("adapter_config.json", "adapter_model.safetensors", "memgen_modules.safetensors", "memgen_config.json",
              "harness_adapter.json"):
        assert (tmp_path / f).is_file(), f
    ids = bb.encode(TEXT)
    s = GenerationSettings(max_new_tokens=10)
    trained_mg = MemGen.from_folder(make_backbone().model, tmp_path)
    fresh = MemGen(make_backbone().model, trained_mg.config)
    assert trained_mg.num_parameters() == fresh.num_parameters()  # the frozen, loaded LoRA counts too
    a = generate_one(trained_mg, bb.tokenizer, ids, s, stop_ids=bb.stop_ids)
    method = MemGenMethod(name="memgen", adapter=str(tmp_path), max_prompt_aug_num=1, max_inference_aug_num=5)
    other = make_backbone()
    method.setup(other, task=None, seed=0)
    b = generate_one(method.mg, bb.tokenizer, ids, s, stop_ids=bb.stop_ids)
    assert a.ids == b.ids
    method.close()


def test_resume_continues_exactly(tmp_path):
    from safetensors.torch import load_file

    args = ["train.max_steps=4", "train.lr=0.01", "method.weaver_dropout=0.0"]
    run_training(train_cfg(tmp_path / "a", "memgen", *args), load=lambda _: make_backbone())
    assert run_training(train_cfg(tmp_path / "b", "memgen", *args, "run.stop_after_steps=2"),
                        load=lambda _: make_backbone())["status"] == "paused"
    run_training(train_cfg(tmp_path / "b", "memgen", *args, "resume=true"), load=lambda _: make_backbone())
    for f in ("adapter_model.safetensors", "memgen_modules.safetensors"):
        a, b = load_file(str(tmp_path / "a" / f)), load_file(str(tmp_path / "b" / f))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f


def test_an_adapter_of_another_backbone_is_refused(tmp_path):
    from harness.errors import HarnessError
    from methods.memgen.method import MemGenMethod

    run_training(train_cfg(tmp_path, "memgen", "train.max_steps=1"), load=lambda _: make_backbone())
    other = make_backbone()
    other.model.model.embed_tokens.weight.data.mul_(1.5)
    with pytest.raises(HarnessError, match="adapter"):
        MemGenMethod(name="memgen", adapter=str(tmp_path)).setup(other, task=None, seed=0)


@pytest.mark.parametrize("override, message", [
    ("method.max_inference_aug_num=-1", "max_inference_aug_num must be an integer >= 0"),
    ("method.max_prompt_aug_num=-2", "max_prompt_aug_num must be an integer >= 0"),
    ("method.weaver_rank=0", "rank must be a positive integer"),
    ("method.weaver_target_modules=[q_proj,attn]", r"unknown target module\(s\) \['attn'\]"),
    ("method.trigger=on", "only 'off'"),
])
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, override, message):
    from harness.runner import run_experiment

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["method=memgen", "method.adapter=null", override, "task=hotpotqa",
                                           "task.limit=1", f"run.results_dir={tmp_path}", "run.progress=false"])
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, load=lambda _: pytest.fail("refused before loading"))
    with pytest.raises(ConfigError, match=message):
        run_training(train_cfg(tmp_path / "t", "memgen", override), load=lambda _: pytest.fail("no load"))


def test_a_run_records_insertions(tmp_path):
    import json

    from harness.runner import run_experiment

    bb = make_backbone()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["method=memgen", "method.adapter=null", "method.delimiters=[|]",
                                           "task=hotpotqa", "task.limit=2", "task.generation.max_new_tokens=8",
                                           f"run.results_dir={tmp_path}", "run.progress=false"])
    out = run_experiment(cfg, load=lambda _: bb)
    rows = [json.loads(l) for l in (out.path / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["method_info"]["prompt_latents"] for r in rows)
    header = json.loads((out.path / "header.json").read_text())
    assert header["method_info"]["label"].startswith("trigger off")
    assert type(bb.model).__name__ == "LlamaForCausalLM" and not any("lora" in n for n, _ in bb.model.named_modules())


def test_the_batch_benchmark_runs_and_both_paths_agree(tmp_path, monkeypatch):
    import json
    import sys

    from benchmarks import memgen_batch

    out = tmp_path / "b.json"
    monkeypatch.setattr(sys, "argv", ["memgen_batch", "--tiny", "--prefix-tokens", "40", "--questions", "3",
                                      "--new-tokens", "6", "--rounds", "1", "--threads", "1", "--out", str(out)])
    memgen_batch.main()
    got = json.loads(out.read_text())
    assert got["same_tokens_every_round"] is True and got["questions"] == 3

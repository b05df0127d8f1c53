"""MLP Memory: the paper's size at Qwen3-4B shapes, shapes, the hook's input, kNN targets vs brute force, learning,
exact resume (within and across stages), the mixture at λ 0 and 1 through the ordinary generation path, the artefact
round trip, refusals (another backbone, bad settings before any model loads), and a run through the runner."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.errors import ConfigError, HarnessError
from harness.training.trainer import run_training
from methods.mlp_memory.model import (PAPER_PARAMETERS, MLPMemoryConfig, MLPMemoryNet, load_artefact, mix_logprobs,
                                      save_artefact)
from methods.mlp_memory.pretrain import (IndexSettings, PretrainSettings, Paused, build_knn, kl_ce_loss, make_index,
                                         search_excluding_self)
from tests.conftest import make_backbone

ROOT = Path(__file__).resolve().parents[2]
CONF = str(ROOT / "conf")
QUICK = ["train_data=synthetic", "train_data.sources.synthetic.conversations=16", "method.pretrain.datastore_tokens=1500",
         "method.pretrain.window_tokens=256", "method.pretrain.document_tokens=512", "method.pretrain.shard_tokens=500",
         "method.pretrain.k=8", "method.pretrain.blocks=1", "method.pretrain.batch_tokens=64",
         "method.pretrain.max_steps=6", "method.pretrain.eval_documents=2", "method.pretrain.eval_document_tokens=96",
         "method.pretrain.temperature_probe=300", "method.pretrain.search_batch=400", "run.progress=false",
         "run.save_every=2", "run.eval_every=3", "run.threads=1"]


def train_cfg(out, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose("train", overrides=["method=mlp_memory", *QUICK, f"out_dir={out}", *extra])


@pytest.fixture(scope="module")
def artefact(tmp_path_factory) -> Path:
    """A tiny artefact built by the real pipeline on the tiny backbone."""
    out = tmp_path_factory.mktemp("mlp_memory")
    summary = run_training(train_cfg(out), load=lambda _: make_backbone())
    assert summary["status"] == "complete"
    return out


def manual_last_mlp_input(model, ids: torch.Tensor) -> torch.Tensor:
    """The last layer's post-attention-norm output, recomputed by hand from the hidden states entering that layer."""
    with torch.no_grad():
        h_in = model(input_ids=ids, output_hidden_states=True).hidden_states[-2]
        layer = model.model.layers[-1]
        pe = model.model.rotary_emb(h_in, torch.arange(ids.shape[1])[None])
        attn, _ = layer.self_attn(hidden_states=layer.input_layernorm(h_in), position_embeddings=pe, attention_mask=None)
        return layer.post_attention_layernorm(h_in + attn)


def method_on(bb, artefact: Path, lam):
    from methods.mlp_memory import MLPMemory

    m = MLPMemory(name="mlp_memory", adapter=str(artefact), lam=lam)
    m.setup(bb, task=None, seed=0)
    return m


# ------------------------------------------------------------------------------------------ sizes and shapes
def test_the_full_size_formula_gives_the_papers_3078m_at_qwen3_4b_shapes():
    cfg = MLPMemoryConfig(hidden_size=2560, intermediate_size=9728, vocab_size=151936, blocks=36, head="trained")
    with torch.device("meta"):
        net = MLPMemoryNet(cfg)
    total = sum(p.numel() for p in net.parameters())
    assert total == cfg.parameters()["total"] == 3_078_648_320
    assert abs(total - PAPER_PARAMETERS) / PAPER_PARAMETERS < 0.005
    # at the backbone's own shapes (meta Qwen3-4B: its depth, an untied head)
    from tests.methods.test_context2lora import qwen3_4b_meta

    assert MLPMemoryConfig.for_backbone(qwen3_4b_meta(), blocks=None, head="trained").parameters()["total"] == total


def test_shapes_and_what_is_stored():
    bb = make_backbone()
    head = bb.model.get_output_embeddings().weight
    cfg = MLPMemoryConfig.for_backbone(bb.model, blocks=2, head="frozen_backbone")
    net = MLPMemoryNet(cfg, head_weight=head)
    assert net(torch.randn(3, 5, 64)).shape == (3, 5, len(bb.tokenizer))
    assert net(torch.randn(7, 64)).shape == (7, len(bb.tokenizer))
    assert "lm_head.weight" not in net.stored_state() and net.lm_head.weight.data_ptr() == head.data_ptr()
    assert sum(p.numel() for p in net.trainable_parameters()) == cfg.parameters()["stored"] == 2 * (3 * 64 * 128 + 64) + 64
    trained = MLPMemoryNet(MLPMemoryConfig.for_backbone(bb.model, blocks=2, head="trained"))
    assert "lm_head.weight" in trained.stored_state() and trained.lm_head.weight.requires_grad


def test_the_hook_reads_exactly_the_last_layers_mlp_input():
    from methods.mlp_memory.model import HiddenCapture

    bb = make_backbone()
    ids = torch.tensor([bb.encode("Caroline said hello to Melanie and they talked about painting.")])
    cap = HiddenCapture(bb.model)
    with torch.no_grad():
        bb.model(input_ids=ids)
    assert torch.equal(cap.take(), manual_last_mlp_input(bb.model, ids))
    cap.remove()


# ------------------------------------------------------------------------------------------ kNN targets
def brute_force(keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d = ((keys[:, None, :].astype(np.float64) - keys[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)  # a position is never its own neighbour
    nbr = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, nbr, 1), nbr


@pytest.mark.parametrize("kind", ["flat", "ivf_flat"])
def test_knn_targets_of_a_hand_made_datastore_equal_brute_force(tmp_path, kind):
    rng = np.random.default_rng(0)
    n, k, temp = 240, 7, 3.0
    keys = rng.normal(size=(n, 8)).astype(np.float32)
    vals = rng.integers(0, 12, size=n).astype(np.int32)
    # IVF with every cell probed is exact too
    index, info = make_index(keys, IndexSettings(type=kind, nlist=4, nprobe=4, train_points=n), seed=0)
    assert info["type"] == kind
    reads = types.SimpleNamespace(n=n, vals=vals, lm_logp=np.full(n, -2.0, dtype=np.float32))
    settings = PretrainSettings(datastore_tokens=n, k=k, temperature=temp, search_batch=50)
    controls = types.SimpleNamespace(progress=False, time_limit_min=1)
    # paused after the first batch, then resumed: the same as one pass
    stopping = types.SimpleNamespace(up=lambda: True)
    with pytest.raises(Paused):
        build_knn(tmp_path, {"x": 1}, reads, index, settings, keys=keys, controls=controls, clock=stopping)
    assert json.loads((tmp_path / "stage.json").read_text())["rows_done"] == 50
    state = build_knn(tmp_path, {"x": 1}, reads, index, settings, keys=keys, controls=controls,
                      clock=types.SimpleNamespace(up=lambda: False))
    assert state["complete"] and state["temperature"] == temp
    dist, nbr = brute_force(keys, k)
    got_tokens = np.load(tmp_path / "neighbour_tokens.npy")
    got_dist = np.load(tmp_path / "neighbour_dist.npy")
    got_probs = np.load(tmp_path / "neighbour_probs.npy").astype(np.float64)
    assert np.array_equal(got_tokens, vals[nbr])
    assert np.allclose(got_dist, dist, rtol=1e-4, atol=1e-4)
    expect = np.exp(-dist / temp)
    expect /= expect.sum(1, keepdims=True)
    assert np.allclose(got_probs, expect, atol=1e-3)  # stored in fp16
    # the target distribution over the vocabulary, and the loss's KL against a dense computation
    p_dense = np.zeros((n, 12))
    np.add.at(p_dense, (np.arange(n)[:, None].repeat(k, 1), vals[nbr]), expect)
    logits = torch.randn(n, 12, dtype=torch.float64)
    _, kl, ce = kl_ce_loss(logits, torch.from_numpy(vals.astype(np.int64)), torch.from_numpy(vals[nbr]),
                           torch.from_numpy(expect), alpha=0.5)
    ref = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), torch.from_numpy(p_dense), reduction="batchmean")
    assert torch.allclose(kl.double(), ref, atol=1e-5)
    # an already complete stage with other settings is refused, not silently reused
    with pytest.raises(HarnessError, match="other settings"):
        build_knn(tmp_path, {"x": 2}, reads, index, settings, keys=keys, controls=controls,
                  clock=types.SimpleNamespace(up=lambda: False))


def test_search_never_returns_the_query_itself_even_with_duplicates():
    import faiss

    keys = np.zeros((5, 4), dtype=np.float32)  # all identical: every distance is 0
    index = faiss.IndexFlatL2(4)
    index.add(keys)
    dist, nbr = search_excluding_self(index, keys, np.arange(5), 4)
    assert all(i not in row for i, row in enumerate(nbr)) and np.all(dist == 0)


# ------------------------------------------------------------------------------------------ training
def test_one_step_lowers_the_loss_on_a_fixed_batch():
    bb = make_backbone()
    torch.manual_seed(0)
    net = MLPMemoryNet(MLPMemoryConfig.for_backbone(bb.model, blocks=2, head="frozen_backbone"),
                       head_weight=bb.model.get_output_embeddings().weight.detach().clone())
    x = torch.randn(32, 64)
    y = torch.randint(0, 300, (32,))
    t = torch.randint(0, 300, (32, 8))
    p = torch.softmax(torch.randn(32, 8), -1)
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-3)
    before, _, _ = kl_ce_loss(net(x), y, t, p, 0.5)
    before.backward()
    opt.step()
    with torch.no_grad():
        after, _, _ = kl_ce_loss(net(x), y, t, p, 0.5)
    assert float(after) < float(before.detach())


def test_resume_continues_exactly_within_and_across_stages(tmp_path):
    from safetensors.torch import load_file

    whole = run_training(train_cfg(tmp_path / "a"), load=lambda _: make_backbone())
    assert whole["status"] == "complete"
    # one shard / search batch / training step per invocation: every stage is paused and resumed
    stages = []
    for _ in range(60):
        out = run_training(train_cfg(tmp_path / "b", "run.time_limit_min=1e-9", "resume=true"),
                           load=lambda _: make_backbone())
        stages.append(out.get("stage", "done"))
        if out["status"] == "complete":
            break
    assert {"datastore", "knn", "train"} <= set(stages) and stages[-1] == "done"
    a = load_file(str(tmp_path / "a" / "mlp_memory.safetensors"))
    b = load_file(str(tmp_path / "b" / "mlp_memory.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s", "elapsed_s")}
                          for r in rows]
    logs = [strip(json.loads(line) for line in (tmp_path / x / "train_log.jsonl").read_text().splitlines())
            for x in ("a", "b")]
    assert logs[0] == logs[1]
    # checkpoints without resume=true are refused, as in the episode trainer
    with pytest.raises(HarnessError, match="resume=true"):
        run_training(train_cfg(tmp_path / "a"), load=lambda _: make_backbone())


def test_the_build_records_its_recipe_and_evidence(artefact):
    info = json.loads((artefact / "mlp_memory.json").read_text())
    recipe = info["recipe"]
    assert info["kind"] == "mlp_memory" and info["network"]["blocks"] == 1 and info["storage_dtype"] == "fp16"
    assert recipe["datastore_tokens"] == 1500 and recipe["k"] == 8 and recipe["alpha"] == 0.5
    assert recipe["index"]["type"] == "flat" and recipe["temperature"] in (0.5, 1, 2, 4, 8, 16, 32, 64)
    assert recipe["corpus"]["train_data"] == "synthetic" and set(recipe["build_seconds"]) >= {"datastore", "index",
                                                                                               "knn", "train"}
    ev = info["evidence"]
    assert ev["documents"] == 2 and set(ev["mixture"]) == {"0.25", "0.5"} and len(ev["mixture"]["0.25"]["ci95"]) == 2
    summary = json.loads((artefact / "training.json").read_text())
    in_datastore = {p["doc"] for p in json.loads((artefact / "datastore" / "stage.json").read_text())["pieces"]}
    assert summary["evidence"] == ev and summary["heldout_documents"] and in_datastore
    assert not set(summary["heldout_documents"]) & in_datastore  # held-out documents never enter the datastore
    for f in ("train_log.jsonl", "loss_curve.png", "train_config.yaml", "mlp_memory.safetensors"):
        assert (artefact / f).is_file(), f


# ------------------------------------------------------------------------------------------ the mixture
def test_mix_logprobs_is_the_papers_formula():
    lm, mlp = torch.randn(2, 3, 50), torch.randn(2, 3, 50)
    lam = 0.25
    expect = torch.log((1 - lam) * torch.softmax(lm, -1) + lam * torch.softmax(mlp, -1))
    assert torch.allclose(mix_logprobs(lm, mlp, lam), expect, atol=1e-5)
    assert torch.allclose(mix_logprobs(lm, mlp, 1.0), torch.log_softmax(mlp, -1))


def _decode(bb, prompts, settings, seeds):
    from harness.generation import common_prefix_len, generate_batch, prefill_prefix

    n = min(common_prefix_len(prompts), min(len(p) for p in prompts) - 1)
    prefix = prefill_prefix(bb.model, prompts[0][:n])
    return [g.ids for g in generate_batch(bb.model, [p[n:] for p in prompts], settings, stop_ids=set(), pad_id=bb.pad_id,
                                          prefix=prefix, seeds=seeds)]


@pytest.mark.parametrize("do_sample", [False, True])
def test_lambda_zero_decodes_the_bare_backbones_tokens_exactly(artefact, do_sample):
    from harness.types import GenerationSettings

    bb = make_backbone()
    context = bb.chat_ids([{"role": "user", "content": "Caroline said hello to Melanie."}])
    prompts = [context + bb.encode(q) for q in (" What did she say?", " Who", " When was the bridge built in 1890?")]
    settings = GenerationSettings(max_new_tokens=8, do_sample=do_sample, temperature=0.7, top_p=0.9, top_k=20)
    bare = _decode(bb, prompts, settings, [1, 2, 3])
    m = method_on(bb, artefact, 0.0)
    assert _decode(bb, prompts, settings, [1, 2, 3]) == bare
    m.close()
    m = method_on(bb, artefact, 0.5)
    mixed = _decode(bb, prompts, settings, [1, 2, 3])
    m.close()
    assert mixed != bare  # the memory does change something at λ > 0
    assert _decode(bb, prompts, settings, [1, 2, 3]) == bare  # close() detaches it


def test_lambda_one_gives_the_mlps_own_distribution_at_the_kept_positions(artefact):
    from harness.types import GenerationSettings

    bb = make_backbone()
    ids = torch.tensor([bb.encode("Passage 1 - Title: a short text about a city and a river.")])
    hidden = manual_last_mlp_input(bb.model, ids)
    m = method_on(bb, artefact, 1.0)
    net = m._net
    for keep in (0, 1, 3):
        with torch.no_grad():
            out = bb.model(input_ids=ids, logits_to_keep=keep).logits
        h = hidden if keep == 0 else hidden[:, -keep:]
        assert out.shape[1] == h.shape[1]
        assert torch.allclose(out, torch.log_softmax(net(h).float(), -1), atol=1e-5)
    # greedy decoding through the ordinary path = argmax of the MLP's distribution, step by step
    prompt = ids[0].tolist()
    got = _decode(bb, [prompt], GenerationSettings(max_new_tokens=5, do_sample=False), [0])[0]
    seq = list(prompt)
    for _ in range(5):
        h = manual_last_mlp_input(bb.model, torch.tensor([seq]))[:, -1]
        seq.append(int(net(h).argmax(-1)))
    m.close()
    assert got == seq[len(prompt):]


# ------------------------------------------------------------------------------------------ artefact
def test_save_load_round_trip(tmp_path):
    from methods.deltamem.signature import backbone_signature

    bb = make_backbone()
    torch.manual_seed(3)
    for head in ("frozen_backbone", "trained"):
        net = MLPMemoryNet(MLPMemoryConfig.for_backbone(bb.model, blocks=2, head=head),
                           head_weight=bb.model.get_output_embeddings().weight.detach().clone())
        folder = tmp_path / head
        save_artefact(folder, net, backbone_signature=backbone_signature(bb.model, "tiny"), storage_dtype="fp16")
        first = (folder / "mlp_memory.safetensors").read_bytes()
        save_artefact(folder, net, backbone_signature=backbone_signature(bb.model, "tiny"), storage_dtype="fp16")
        assert (folder / "mlp_memory.safetensors").read_bytes() == first  # byte-stable: the record identity
        loaded, info = load_artefact(folder, bb.model)
        assert info["network"]["head"] == head
        stored = net.stored_state(torch.float16)
        again = loaded.stored_state(torch.float16)
        assert stored.keys() == again.keys() and all(torch.equal(stored[k], again[k]) for k in stored)
        if head == "frozen_backbone":
            assert loaded.lm_head.weight.data_ptr() == bb.model.get_output_embeddings().weight.data_ptr()  # shared
        rounded = MLPMemoryNet(net.cfg, head_weight=bb.model.get_output_embeddings().weight)
        rounded.load_stored_state({k: v.float() for k, v in stored.items()})
        x = torch.randn(4, 64)
        with torch.no_grad():
            assert torch.allclose(loaded(x), rounded(x), atol=1e-6)


def test_an_artefact_of_another_backbone_is_refused(artefact):
    from methods.deltamem.signature import BackboneMismatch
    from methods.mlp_memory import MLPMemory
    from tests.conftest import tiny_llama, tiny_tokenizer
    from harness.backbone import Backbone

    other = make_backbone()
    other.model.model.embed_tokens.weight.data.mul_(1.5)  # same shapes, other weights
    with pytest.raises(BackboneMismatch, match="another backbone"):
        MLPMemory(name="mlp_memory", adapter=str(artefact)).setup(other, task=None, seed=0)
    tok = tiny_tokenizer()
    wider = Backbone(name="wide", model=tiny_llama(len(tok), hidden_size=96, num_attention_heads=4), tokenizer=tok,
                     device=torch.device("cpu"), dtype=torch.float32, window=512)
    with pytest.raises(BackboneMismatch, match="hidden_size"):
        MLPMemory(name="mlp_memory", adapter=str(artefact)).setup(wider, task=None, seed=0)


@pytest.mark.parametrize("override, message", [
    ("method.lam=1.5", "lam must be a number in"),
    ("method.lam=often", "lam must be a number in"),
    ("method.pretrain.k=0", "pretrain.k must be an integer"),
    ("method.pretrain.alpha=2", r"pretrain.alpha must be in \[0, 1\]"),
    ("method.pretrain.index.type=hnsw", "pretrain.index.type must be one of"),
    ("+method.pretrain.bogus=1", r"unknown pretrain keys \['bogus'\]"),
    ("method.pretrain.temperature=hot", "temperature must be"),
])
def test_bad_settings_are_refused_before_any_model_loads(tmp_path, artefact, override, message):
    from harness.runner import run_experiment

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["method=mlp_memory", f"method.adapter={artefact}", override, "task=hotpotqa",
                                           "task.limit=1", f"run.results_dir={tmp_path}", "run.progress=false"])
    with pytest.raises(ConfigError, match=message):
        run_experiment(cfg, load=lambda _: pytest.fail("refused before loading"))
    assert not list(tmp_path.glob("**/header.json"))
    with pytest.raises(ConfigError, match=message):
        run_training(train_cfg(tmp_path / "t", override), load=lambda _: pytest.fail("no load"))


def test_a_missing_or_foreign_artefact_is_refused_before_any_model_loads(tmp_path):
    from methods.mlp_memory import MLPMemory
    from methods.mlp_memory.model import ArtefactError

    with pytest.raises(ConfigError, match="harness.train method=mlp_memory"):
        MLPMemory(name="mlp_memory", adapter=None)
    shipped = MLPMemory(name="mlp_memory", adapter="shipped")  # the runner resolves it first; alone: at setup
    with pytest.raises(ConfigError, match="no adapter is shipped for method mlp_memory on backbone tiny"):
        shipped.setup(make_backbone(), task=None, seed=0)
    (tmp_path / "x").mkdir()
    with pytest.raises(ArtefactError, match="expected mlp_memory.json"):
        MLPMemory(name="mlp_memory", adapter=str(tmp_path / "x"))
    (tmp_path / "x" / "mlp_memory.json").write_text(json.dumps({"kind": "context2lora"}))
    (tmp_path / "x" / "mlp_memory.safetensors").write_bytes(b"")
    with pytest.raises(ArtefactError, match="not an MLP Memory artefact"):
        MLPMemory(name="mlp_memory", adapter=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="from scratch"):
        run_training(train_cfg(tmp_path / "t", f"method.adapter={tmp_path}"), load=lambda _: pytest.fail("no load"))


# ------------------------------------------------------------------------------------------ the runner
def test_a_run_through_the_runner_records_the_recipe_and_the_weights(tmp_path, artefact):
    from harness.runner import run_experiment

    bb = make_backbone()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=["method=mlp_memory", f"method.adapter={artefact}", "task=ifeval",
                                           "task.limit=2", "task.generation.max_new_tokens=3",
                                           f"run.results_dir={tmp_path}", "run.progress=false"])
    out = run_experiment(cfg, load=lambda _: bb)
    assert out.status == "complete"
    header = json.loads((out.path / "header.json").read_text())
    info = header["method_info"]
    assert header["protocol"] == "context" and info["lambda"] == 0.25 and info["lambda_name"] == "default"
    for key in ("blocks", "corpus", "datastore_tokens", "index", "k", "temperature", "alpha", "parameters"):
        assert info[key] is not None, key
    assert header["config"]["method"]["adapter_sha256"]
    # close() took the hooks off: the backbone is bare again
    assert not bb.model._forward_hooks and not bb.model.model.layers[-1].mlp._forward_hooks

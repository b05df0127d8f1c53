"""Each text-memory method through the real runner on LoCoMo, with the tiny backbone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness.runner import run_experiment

CONF = str(Path(__file__).resolve().parents[2] / "conf")


@pytest.fixture(scope="module")
def backbone():
    """The tiny random backbone with a 2k window, so LoCoMo's preamble and a few
    retrieved turns fit (512 leaves no room for any context)."""
    import torch

    from harness.backbone import Backbone
    from tests.conftest import tiny_llama, tiny_tokenizer

    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), max_position_embeddings=2048)
    return Backbone(name="tiny", model=model, tokenizer=tok, device=torch.device("cpu"), dtype=torch.float32,
                    window=2048)


def run(tmp_path, backbone, method, *extra):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose("config", overrides=[f"method={method}", "task.episode_ids=[conv-30]", "task.limit=3",
                                           "task.generation.max_new_tokens=2", f"run.results_dir={tmp_path}",
                                           "run.progress=false", *extra])
    out = run_experiment(cfg, load=lambda _: backbone)
    assert out.status == "complete"
    rows = [json.loads(l) for l in (out.path / "samples.jsonl").read_text().splitlines()]
    header = json.loads((out.path / "header.json").read_text())
    return header, rows


def test_bm25_rag_run_records_retrieval(tmp_path, backbone):
    header, rows = run(tmp_path, backbone, "bm25_rag")
    assert header["protocol"] == "memory" and header["method_info"]["top_k"] == 10
    for r in rows:
        info = r["method_info"]
        assert info["retrieved_ids"] and info["top_k"] == 10 and info["ingest"]["n_chunks"] == 369
        assert 0 < r["context_tokens"] < r["prompt_tokens"] <= backbone.window


def test_memorybank_run_writes_summaries_within_the_window(tmp_path, backbone):
    header, rows = run(tmp_path, backbone, "memorybank", "method.retriever=bm25",
                       f"method.cache_dir={tmp_path / 'cache'}", "method.summary_generation.max_new_tokens=2")
    ingest = rows[0]["method_info"]["ingest"]
    assert ingest["n_sessions"] == 19 and ingest["summaries_generated"] == 2 * 19 + 2
    assert header["method_info"]["retriever_used"] == "bm25"
    assert all(r["method_info"]["retrieved_ids"] for r in rows)


def test_llmlingua1_smol_run_records_the_ratio(tmp_path, backbone):
    header, rows = run(tmp_path, backbone, "llmlingua1_smol", f"method.cache_dir={tmp_path / 'cache'}")
    ingest = rows[0]["method_info"]["ingest"]
    assert ingest["rate"] == 0.33 and ingest["compression_ratio"] > 1
    assert ingest["context_tokens_compressed"] < ingest["context_tokens_uncompressed"]
    assert rows[0]["method_info"]["compression_ratio"] == ingest["compression_ratio"]
    assert header["method_info"]["kind"].startswith("llmlingua-1")


def test_llmlingua2_run_without_weights_fails_clearly(tmp_path, backbone, monkeypatch):
    from harness.errors import ConfigError

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match="llmlingua1_smol"):
        run(tmp_path, backbone, "llmlingua2")

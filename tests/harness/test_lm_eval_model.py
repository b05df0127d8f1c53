"""δ-mem as an lm-eval model (``harness.lm_eval_model``): equal to ``hf`` with an untrained zero-head memory,
rows that do not share memory, the documented log-likelihood protocol, and the three ways to run it.

Logic on the tiny random Llama (tests/conftest.py); the end-to-end checks on the embedded SmolLM2-135M."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import make_backbone

ROOT = Path(__file__).resolve().parents[2]
lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from harness.lm_eval_model import DeltaMemLM  # noqa: E402

PAIRS = [("Caroline said hello to", " Melanie and they talked"), ("Question: what did", " they talk about?"),
         ("Passage 1", " - Title: a short text about a city"), ("The date was", " 8")]
PROMPTS = ["Caroline said hello", "Passage 1 - Title: a short text about a city, a river", "Question:"]


@pytest.fixture(scope="module")
def tiny():
    return make_backbone()


def _hf(bb, **kw) -> HFLM:
    return HFLM(pretrained=copy.deepcopy(bb.model), tokenizer=bb.tokenizer, device="cpu", **kw)


def _dm(bb, **kw) -> DeltaMemLM:
    kw.setdefault("adapter", None)
    return DeltaMemLM(pretrained=copy.deepcopy(bb.model), tokenizer=bb.tokenizer, device="cpu", **kw)


def loglik(lm, pairs=PAIRS):
    return lm.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)], disable_tqdm=True)


def generate(lm, prompts=PROMPTS, n=10):
    args = {"until": [], "max_gen_toks": n, "do_sample": False}
    return lm.generate_until([Instance("generate_until", {}, (p, dict(args)), i) for i, p in enumerate(prompts)],
                             disable_tqdm=True)


def generate_ids(lm, prompts, n=10) -> list[list[int]]:
    """New token ids of a left-padded batch, through HFLM's own batch encoding and generate call."""
    ids, mask = lm.tok_batch_encode(prompts)
    out = lm._model_generate(ids, ids.shape[1] + n, [], attention_mask=mask, do_sample=False)
    return [row[ids.shape[1]:] for row in out.tolist()]


# --------------------------------------------------------------------------- tiny model: the model class
@pytest.mark.parametrize("batch_size", [1, 3])
def test_untrained_zero_heads_equal_hf_exactly(tiny, batch_size):
    hf, dm = _hf(tiny, batch_size=batch_size), _dm(tiny, batch_size=batch_size)
    assert loglik(dm) == loglik(hf)
    assert generate(dm) == generate(hf)
    assert generate_ids(dm, PROMPTS) == generate_ids(hf, PROMPTS)
    rolling = [Instance("loglikelihood_rolling", {}, (PROMPTS[1],), 0)]
    assert dm.loglikelihood_rolling(rolling, disable_tqdm=True) == hf.loglikelihood_rolling(rolling, disable_tqdm=True)
    assert dm.get_model_info()["deltamem"]["adapter"] is None


def test_protocol_none_is_the_backbone_whatever_the_heads(tiny):
    """No writes: the state stays zero and reads are zero, so even random correction heads add nothing."""
    hf, dm = _hf(tiny, batch_size=2), _dm(tiny, batch_size=2, output_init="random", protocol="none")
    assert loglik(dm) == loglik(hf)
    assert generate_ids(dm, PROMPTS) == generate_ids(hf, PROMPTS)


def test_memory_changes_scores_when_it_has_heads(tiny):
    """Guard for the tests below: with random heads the written memory moves the scores."""
    hf, dm = _hf(tiny), _dm(tiny, output_init="random")
    diffs = [abs(a[0] - b[0]) for a, b in zip(loglik(dm), loglik(hf))]
    assert max(diffs) > 1e-3


def test_batch_rows_are_independent(tiny):
    """A batch of different requests gives what each request gives alone, and nothing outlives a call."""
    together, alone = _dm(tiny, batch_size=4, output_init="random"), _dm(tiny, batch_size=1, output_init="random")
    a, b = loglik(together), loglik(alone)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert torch.allclose(torch.tensor([x[0] for x in a]), torch.tensor([x[0] for x in b]), atol=1e-4, rtol=0)
    assert generate_ids(together, PROMPTS[:2]) == [generate_ids(alone, [p])[0] for p in PROMPTS[:2]]
    assert generate(together) == generate(alone)
    assert together.dm.state.batch_size is None  # emptied after the call
    again = loglik(together)  # a second pass starts from an empty memory too
    assert again == a


def test_loglikelihood_reads_what_generation_would(tiny):
    """Context protocol: scoring a continuation in one pass equals feeding it token by token after the prompt
    with writes on (what generating it would read), to the backbone's own prefill-vs-decode difference."""
    lm = _dm(tiny, output_init="random")
    ctx, cont = PAIRS[2]
    (score, _), = loglik(lm, [(ctx, cont)])
    ctx_ids, cont_ids = lm._encode_pair(ctx, cont)
    model, dm = lm.model, lm.dm
    dm.reset()
    with torch.no_grad(), dm.writes(True):
        x = torch.tensor([ctx_ids])
        out = model(input_ids=x, use_cache=True)
        cache, logits, total = out.past_key_values, out.logits[0, -1], 0.0
        for t in cont_ids:
            total += float(logits.log_softmax(-1)[t])
            out = model(input_ids=torch.tensor([[t]]), past_key_values=cache, use_cache=True)
            cache, logits = out.past_key_values, out.logits[0, -1]
    dm.reset()
    assert abs(total - score) < 1e-4


def test_beam_search_refused(tiny):
    lm = _dm(tiny)
    ids, mask = lm.tok_batch_encode(PROMPTS[:1])
    with pytest.raises(ValueError, match="beam search"):
        lm._model_generate(ids, ids.shape[1] + 4, [], attention_mask=mask, num_beams=2)


def test_bad_protocol_refused(tiny):
    with pytest.raises(ValueError, match="protocol"):
        _dm(tiny, protocol="memory")


def test_adapter_directories_in_both_formats(tiny, tmp_path):
    """An adapter directory (this project's format or the official one) loads the saved weights."""
    from methods.deltamem import DeltaMemConfig, attach
    from tests.deltamem.test_params_adapter import _write_reference_adapter

    src = copy.deepcopy(tiny.model)
    torch.manual_seed(3)
    dm_src = attach(src, DeltaMemConfig.tsw(output_init="random"))
    dm_src.save_adapter(tmp_path / "own")
    _write_reference_adapter(tmp_path / "ref", dm_src)
    own, ref = _dm(tiny, adapter=str(tmp_path / "own")), _dm(tiny, adapter=str(tmp_path / "ref"))
    for (n, p), (_, q) in zip(own.dm.named_parameters(), dm_src.named_parameters()):
        assert torch.equal(p, q), n
    assert own.dm.config.variant == ref.dm.config.variant == "tsw"
    assert own.get_model_info()["deltamem"]["adapter_sha256"] != ref.get_model_info()["deltamem"]["adapter_sha256"]
    with pytest.raises(Exception, match="not a directory"):
        _dm(tiny, adapter=str(tmp_path / "missing"))


def test_shipped_adapter_found_by_backbone_signature(tiny):
    """``shipped`` on a model no adapter was trained for fails naming what is shipped."""
    with pytest.raises(Exception, match="no shipped deltamem_msw adapter was trained on this backbone"):
        _dm(tiny, adapter="shipped")


# --------------------------------------------------------------------------- tiny model: the three routes
MC = [{"question": "Caroline said hello to", "choices": [" Melanie", " the river", " 1890"], "label": 0},
      {"question": "Passage 1 - Title: a short", "choices": [" text", " bridge"], "label": 0},
      {"question": "The date was 8", "choices": [" May", " painting", " city"], "label": 0}]
GEN = [{"prompt": "Caroline said hello to", "answer": " Melanie"}, {"prompt": "Question: what did", "answer": " they"}]


def write_tiny_tasks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in MC))
    (folder / "gen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GEN))
    (folder / "tiny_mc.yaml").write_text(
        f"task: tiny_mc\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'mc.jsonl'}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\ndoc_to_choice: choices\n"
        "doc_to_target: label\nmetric_list:\n  - metric: acc\n")
    (folder / "tiny_gen.yaml").write_text(
        f"task: tiny_gen\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {folder / 'gen.jsonl'}\n"
        "test_split: test\noutput_type: generate_until\ndoc_to_text: '{{prompt}}'\ndoc_to_target: '{{answer}}'\n"
        "generation_kwargs:\n  until: []\n  max_gen_toks: 6\n  do_sample: false\n"
        "metric_list:\n  - metric: exact_match\n")
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny):
    """The tiny model and tokenizer saved as a folder, for string ``pretrained=`` routes, and two local tasks."""
    root = tmp_path_factory.mktemp("tiny_lm_eval")
    tiny.model.save_pretrained(root / "model")
    tiny.tokenizer.save_pretrained(root / "model")
    write_tiny_tasks(root / "tasks")
    return root


def _evaluate(model, tasks_dir: Path, **kw):
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=["tiny_mc", "tiny_gen"], task_manager=TaskManager(
        include_path=str(tasks_dir)), log_samples=True, **kw)


def _per_sample(results) -> dict[str, list]:
    return {t: [(s["doc_id"], s["resps"]) for s in sorted(rows, key=lambda s: s["doc_id"])]
            for t, rows in results["samples"].items()}


def _metrics(results) -> dict:
    return {t: {k: v for k, v in r.items() if k not in ("alias", "name")} for t, r in results["results"].items()}


def test_routes_instance_and_registered_name_equal_hf(tiny_dir):
    import harness.lm_eval_model  # noqa: F401  route 2 needs only the import
    from lm_eval.api.registry import get_model

    assert get_model("deltamem") is DeltaMemLM and get_model("hf") is HFLM
    model = str(tiny_dir / "model")
    ref = _evaluate("hf", tiny_dir / "tasks", model_args=f"pretrained={model}", device="cpu", batch_size=2)
    by_name = _evaluate("deltamem", tiny_dir / "tasks", model_args=f"pretrained={model},adapter=null", batch_size=2)
    instance = _evaluate(DeltaMemLM(pretrained=model, adapter=None, batch_size=2), tiny_dir / "tasks")
    assert _per_sample(by_name) == _per_sample(ref) == _per_sample(instance)
    assert _metrics(by_name) == _metrics(ref) == _metrics(instance)
    assert by_name["config"]["deltamem"]["protocol"] == "context"


def test_route_cli_hands_argv_to_lm_eval(tiny_dir, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.lm_eval", "--model", "deltamem", "--model_args",
           f"pretrained={tiny_dir / 'model'},adapter=null", "--include_path", str(tiny_dir / "tasks"),
           "--tasks", "tiny_mc,tiny_gen", "--batch_size", "2", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.glob("**/results_*.json")).read_text())
    ref = _evaluate("hf", tiny_dir / "tasks", model_args=f"pretrained={tiny_dir / 'model'}", device="cpu",
                    batch_size=2)
    assert _metrics(results) == json.loads(json.dumps(_metrics(ref)))
    assert results["config"]["model"] == "deltamem"


# --------------------------------------------------------------------------- the embedded backbone
@pytest.mark.real_model
def test_embedded_untrained_memory_equals_hf(smollm2_backbone):
    """SmolLM2-135M: ``adapter=null`` gives exactly the ``hf`` model's log-likelihoods and greedy generations,
    on chat-formatted prompts batched together."""
    from harness.deltamem_loading import resolve_pretrained

    folder, name = resolve_pretrained("smollm2_135m")
    assert name == "smollm2_135m"
    hf = HFLM(pretrained=folder, device="cpu", batch_size=2)
    dm = DeltaMemLM(pretrained="smollm2_135m", adapter=None, batch_size=2)
    chat = [hf.apply_chat_template([{"role": "user", "content": q}]) for q in
            ("Name three colours.", "Write one sentence about the sea.")]
    pairs = [(chat[0], "Red, green and blue."), (chat[1], "The sea is wide."), ("The capital of France is", " Paris")]
    assert loglik(dm, pairs) == loglik(hf, pairs)
    assert generate(dm, chat, n=24) == generate(hf, chat, n=24)
    shipped = DeltaMemLM(pretrained=folder, adapter="shipped", batch_size=2)  # found by signature from a folder
    assert shipped.memory.adapter == "adapters/smollm2_135m/deltamem_msw"
    assert loglik(shipped, pairs) != loglik(hf, pairs)


@pytest.mark.real_model
def test_embedded_cli_shipped_adapter_on_local_ifeval(tmp_path):
    """The README's CLI command, shortened: the shipped MSW adapter on lm-eval's IFEval task read offline."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.lm_eval", "--model", "deltamem", "--model_args", "adapter=shipped",
           "--include_path", "harness/lm_eval_tasks", "--tasks", "ifeval_local", "--apply_chat_template",
           "--limit", "1", "--gen_kwargs", "max_gen_toks=8", "--output_path", str(out), "--log_samples"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(out.glob("**/results_*.json")).read_text())
    assert results["config"]["deltamem"]["adapter"] == "adapters/smollm2_135m/deltamem_msw"
    assert "prompt_level_strict_acc,none" in results["results"]["ifeval_local"]

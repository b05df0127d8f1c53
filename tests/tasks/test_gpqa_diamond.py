"""GPQA-Diamond: encrypted loading, md5 shuffle, extraction cascade, privacy of records, loglik helper."""
from __future__ import annotations

import csv
import io
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.errors import DataError
from harness.types import Episode, Query
from tasks.base import data_root
from tasks.gpqa_diamond.task import (REQUIRED, GPQADiamondTask, extract_letter, lm_eval_preprocess, option_order,
                                     shuffle_options)

ROOT = Path(__file__).resolve().parents[2]
REAL = data_root() / "gpqa" / "dataset.zip"


def make_task(**over):
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/gpqa_diamond.yaml"))
    cfg.pop("_target_")
    cfg.update(over)
    return GPQADiamondTask(**cfg)


def plain_zip(path: Path, rows, columns=REQUIRED, member="dataset/gpqa_diamond.csv") -> Path:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c, "") for c in columns})
    with zipfile.ZipFile(path, "w") as z:  # unencrypted: zipfile ignores the password then
        z.writestr(member, buf.getvalue())
    (path.parent / "PASSWORD").write_text("unused\n")
    return path


def row(rid, domain="Physics", q="What is 1+1?"):
    return {"Record ID": rid, "Question": q, "Correct Answer": " two ", "Incorrect Answer 1": "one",
            "Incorrect Answer 2": "three", "Incorrect Answer 3": "four", "High-level domain": domain,
            "Subdomain": "Arithmetic"}


@pytest.mark.parametrize("text, letter", [
    ('Reasoning...\n```json\n{"answer": "B"}\n```\nActually {"answer": "C"}', "B"),   # family 1 beats 2
    ('{"answer": "c"} then {"answer": "D"}', "D"),                                     # last match wins
    ("so the result is \\boxed{A}.", "A"),
    ("Final Answer: **C**", "C"),
    ("The correct answer： D", "D"),                                                    # full-width colon
    ("I think the correct answer is B because", "B"),
    ("(C)\nbecause it is", "C"),                                                        # first line, bare letter
    ("Let me think.\nIt must be\n*D*", "D"),                                            # last line
    ("B. the second option", "B"),
    ("No idea at all.", ""),
    ("", ""),
])
def test_reference_extraction_cascade(text, letter):
    assert extract_letter(text) == letter


def test_shuffle_is_md5_seeded_and_deterministic():
    opts, gold = shuffle_options("recX", 42, " right ", ["w1", "w2 ", "w3"])
    again = shuffle_options("recX", 42, "right", ["w1", "w2", "w3"])
    assert (opts, gold) == again
    assert opts[ "ABCD".index(gold)] == "right" and sorted(opts) == ["right", "w1", "w2", "w3"]
    orders = {tuple(option_order("recX", s)) for s in range(20)}
    assert len(orders) > 1
    assert lm_eval_preprocess(" An [title] item  here ") == "An. item here"


def test_loading_records_and_scoring(tmp_path):
    path = plain_zip(tmp_path / "dataset.zip", [row("r1"), row("r2", "Chemistry"), row("r3", "Biology")])
    task = make_task(data_path=str(path))
    eps = task.episodes(seed=42)
    assert len(eps) == 1 and [q.category for q in eps[0].queries] == ["Physics", "Chemistry", "Biology"]
    q = eps[0].queries[0]
    assert q.gold == shuffle_options("r1", 42, "two", ["one", "three", "four"])[1]
    content = task.prompt_messages(q, None)[0]["content"]
    assert content.startswith("Answer the following multiple-choice question.\nPlease show your choice in the "
                              '`answer` field with only the choice letter, for example: {"answer": "C"}.\n\n'
                              "Question: What is 1+1?\n\nA. ")
    assert content.count("\n") == 8 and f'{q.gold}. two' in content
    assert task.record_questions is False and task.public_gold(q) == q.gold
    right = task.score(q, f'{{"answer": "{q.gold}"}}')
    assert right.values["accuracy"] == right.values["accuracy_strict"] == right.values["accuracy_reference"] == 1.0
    assert right.values["accuracy_lm_eval"] == 0.0  # lm-eval's filter reads "(X)", option texts and ": X" only
    wrong = "A" if q.gold != "A" else "B"
    s = task.score(q, f"Final answer: {wrong}")
    assert s.values["accuracy"] == 0.0 and s.extracted == wrong and s.extracted_by["lm_eval"] == wrong
    listed = "\n".join(f"{L}. {o}" for L, o in zip("ABCD", q.metadata["options"]))
    s = task.score(q, listed)  # the four options repeated: no choice under the default rule
    assert s.extracted == "" and s.extracted_by["reference"] == "A"
    ref = make_task(data_path=str(path), scoring="reference")
    ref.episodes(seed=42)
    assert ref.score(q, listed).values["accuracy"] == float(q.gold == "A")
    assert task.data_fingerprint()["shuffle_seed"] == 42
    fixed = make_task(data_path=str(path), shuffle_seed=7)
    assert fixed.episodes(seed=42)[0].metadata["shuffle_seed"] == 7


def test_runner_records_never_hold_question_text(tmp_path, tiny_backbone):
    from hydra import compose, initialize_config_dir

    from harness.runner import run_experiment

    path = plain_zip(tmp_path / "dataset.zip", [row("r1", q="SECRET QUESTION TEXT"), row("r2", q="SECRET TWO")])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=gpqa_diamond", f"task.data_path={path}", "task.generation.max_new_tokens=3",
                                           f"run.results_dir={tmp_path / 'r'}", "run.progress=false"])
    out = run_experiment(cfg, load=lambda _: tiny_backbone)
    text = "".join(p.read_text() for p in (tmp_path / "r").glob("**/*") if p.is_file())
    assert "SECRET" not in text and "three" not in text
    assert out.metrics["n_samples"] == 2


def test_loader_errors(tmp_path):
    with pytest.raises(DataError, match="GPQA dataset.zip not found"):
        make_task(data_path=str(tmp_path / "missing.zip")).episodes(seed=0)
    cols = [c for c in REQUIRED if c != "Subdomain"]
    (tmp_path / "a").mkdir()
    bad = plain_zip(tmp_path / "a" / "dataset.zip", [row("r1")], columns=cols)
    with pytest.raises(DataError, match=r"missing columns \['Subdomain'\]"):
        make_task(data_path=str(bad)).episodes(seed=0)
    (tmp_path / "b").mkdir()
    empty = plain_zip(tmp_path / "b" / "dataset.zip", [row("r1"), {**row("r2"), "Correct Answer": " "}])
    with pytest.raises(DataError, match=r"row 2 \(Record ID 'r2'\): empty field 'Correct Answer'"):
        make_task(data_path=str(empty)).episodes(seed=0)
    (tmp_path / "c").mkdir()
    other = plain_zip(tmp_path / "c" / "dataset.zip", [row("r1")], member="dataset/other.csv")
    with pytest.raises(DataError, match="no member 'dataset/gpqa_diamond.csv'"):
        make_task(data_path=str(other)).episodes(seed=0)


@pytest.mark.skipif(not REAL.exists(), reason="shared GPQA zip not present")
def test_real_zip_decrypts_in_memory_with_reference_gold_letters(tmp_path):
    task = make_task()
    qs = task.episodes(seed=42)[0].queries
    assert len(qs) == 198
    assert Counter(q.gold for q in qs) == {"A": 44, "B": 64, "C": 42, "D": 48}
    assert Counter(q.category for q in qs) == {"Chemistry": 93, "Physics": 86, "Biology": 19}
    assert {q.metadata["record_id"]: q.gold for q in qs}["rec06pnAkLOr2t2mp"] == "C"
    with pytest.raises(DataError, match="cannot decrypt"):
        (tmp_path / "PASSWORD").write_text("wrong")
        make_task(password_file=str(tmp_path / "PASSWORD")).episodes(seed=42)


def test_loglik_protocol_helper_matches_a_manual_computation(tmp_path, tiny_backbone):
    from tasks.gpqa_diamond.loglik import LoglikMC

    path = plain_zip(tmp_path / "dataset.zip", [row("r1")])
    task = make_task(data_path=str(path), protocol="loglik_mc")
    ep = task.episodes(seed=42)[0]
    q = ep.queries[0]
    context = task.loglik_context(q)
    assert context.startswith("What is the correct answer to this question:What is 1+1?\nChoices:\n(A) ")
    assert context.endswith("\nAnswer:")
    method = LoglikMC(name="loglik_mc")
    method.setup(tiny_backbone, task, seed=0)
    lls = method.loglikelihoods(q)
    # manual: sum of log-probs of the continuation tokens of " (B)"
    ctx_ids = tiny_backbone.encode(context)
    whole = tiny_backbone.encode(context + " (B)")
    with torch.no_grad():
        logits = tiny_backbone.model(torch.tensor([whole])).logits[0].log_softmax(-1)
    manual = sum(float(logits[i - 1, whole[i]]) for i in range(len(ctx_ids), len(whole)))
    assert lls[1] == pytest.approx(manual, abs=1e-4)
    pred = method.answer(ep, [q])[0]
    assert pred.text == f"({'ABCD'[max(range(4), key=lambda k: lls[k])]})"
    s = task.score(q, pred.text)
    assert s.values["accuracy"] == float(s.extracted == q.gold)
    with pytest.raises(ValueError, match="python -m tasks.gpqa_diamond.loglik"):
        task.score(q, "I think (B) because")
    with pytest.raises(Exception, match="task.protocol=loglik_mc"):
        LoglikMC(name="loglik_mc").setup(tiny_backbone, make_task(data_path=str(path)), seed=0)


def test_loglik_protocol_with_a_generating_method_fails_before_any_model_loads(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.errors import ConfigError
    from harness.runner import run_experiment

    path = plain_zip(tmp_path / "dataset.zip", [row("r1")])
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=gpqa_diamond", "task.protocol=loglik_mc", f"task.data_path={path}",
                                           "method=vanilla", f"run.results_dir={tmp_path / 'results'}"])

    def no_model(_):
        raise AssertionError("the backbone must not be loaded")

    with pytest.raises(ConfigError, match="python -m tasks.gpqa_diamond.loglik"):
        run_experiment(cfg, load=no_model)
    assert make_task(protocol="loglik_mc").runner_problem("tasks.gpqa_diamond.loglik.LoglikMC") is None


@pytest.mark.skipif(not REAL.exists(), reason="shared GPQA zip not present")
def test_a_wrong_password_that_passes_the_check_byte_is_one_clear_error(tmp_path):
    """ZipCrypto checks one byte of the password's key stream: about one wrong password in 256 passes it, and the
    data then fails to inflate. That must read as a wrong password, not as a damaged zip or a zlib traceback."""
    import zipfile as zf

    from tasks.gpqa_diamond.task import MEMBER, read_encrypted_csv

    passing = None
    with zf.ZipFile(REAL) as z:
        for i in range(20000):
            try:
                with z.open(MEMBER, pwd=f"wrong-{i}".encode()):
                    passing = f"wrong-{i}"
                    break
            except RuntimeError:
                continue
    assert passing is not None
    with pytest.raises(DataError, match="password passed the zip's check byte but the data did not decompress"):
        read_encrypted_csv(REAL, MEMBER, passing)

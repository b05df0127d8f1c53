"""No file the harness writes holds a run of 30 or more characters of any GPQA question or option.

The check here is independent of :mod:`tasks.gpqa_diamond.withhold`: it aligns 15-character blocks of the
scanned text with a table of the dataset's 15-grams and confirms each hit against its 30-grams, in the same
two views (whitespace collapsed, whitespace removed), case-folded."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.types import Episode, Prediction
from methods.base import Method
from tasks.base import data_root
from tasks.gpqa_diamond.extract import extract_reference, extract_strict
from tasks.gpqa_diamond.task import REQUIRED, GPQADiamondTask
from tasks.gpqa_diamond.withhold import Withholder

ROOT = Path(__file__).resolve().parents[2]
REAL = data_root() / "gpqa" / "dataset.zip"
RUN = 30
needs_gpqa = pytest.mark.skipif(not REAL.exists(), reason="shared GPQA zip not present")
VIEWS = (lambda t: re.sub(r"\s+", " ", t.casefold()), lambda t: re.sub(r"\s+", "", t.casefold()))


def make_task(**over) -> GPQADiamondTask:
    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf/task/gpqa_diamond.yaml"))
    cfg.pop("_target_")
    cfg.update(over)
    return GPQADiamondTask(**cfg)


class LeakScanner:
    def __init__(self, texts):
        self.blocks = [set(), set()]
        self.runs = [set(), set()]
        for t in texts:
            for k, view in enumerate(VIEWS):
                v = view(t)
                self.blocks[k].update(v[i:i + RUN // 2] for i in range(len(v) - RUN // 2 + 1))
                self.runs[k].update(v[i:i + RUN] for i in range(len(v) - RUN + 1))

    def leaks(self, text: str) -> list[str]:
        found = []
        for k, view in enumerate(VIEWS):
            v = view(text)
            half = RUN // 2
            for i in range(0, len(v) - half + 1, half):
                if v[i:i + half] in self.blocks[k]:
                    found += [v[j:j + RUN] for j in range(max(0, i - half), i + 1) if v[j:j + RUN] in self.runs[k]]
        return found


def strings_of(path: Path):
    """The text a reader of ``path`` sees: the string values of JSON files, else the decoded file."""
    raw = path.read_bytes()
    if b"\x00" in raw[:4096]:
        return  # binary (figures)
    text = raw.decode("utf-8", errors="replace")
    if path.suffix in (".json", ".jsonl"):
        def walk(v):
            if isinstance(v, str):
                yield v
            elif isinstance(v, dict):
                for k, x in v.items():
                    yield k
                    yield from walk(x)
            elif isinstance(v, list):
                for x in v:
                    yield from walk(x)
        for line in text.splitlines() if path.suffix == ".jsonl" else [text]:
            try:
                yield from walk(json.loads(line))
            except ValueError:
                yield line
    else:
        yield text


def gpqa_texts(task: GPQADiamondTask) -> list[str]:
    return [row[c] for row in task.rows() for c in REQUIRED[1:6]]


def scan(folder: Path, scanner: LeakScanner) -> dict[str, list[str]]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and ".git" not in p.parts:
            hits = [h for s in strings_of(p) for h in scanner.leaks(s)]
            if hits:
                out[str(p)] = sorted(set(hits))
    return out


def test_withholder_removes_shared_runs_and_keeps_structure():
    source = ["Which of the following enzymes cleaves the peptide bond after lysine residues?", "trypsin-like serine protease"]
    w = Withholder(source)
    echo = ("A. Which of the following ENZYMES cleaves   the peptide\nbond after lysine residues?\n"
            "B. TRYPSIN-LIKE SERINE PROTEASE\n\nThe answer is B.")
    out = w(echo)
    assert LeakScanner(source).leaks(out) == []
    assert out.startswith("A. [GPQA text withheld: ") and "\nB. " in out and out.endswith("The answer is B.")
    assert extract_strict(out) == extract_strict(echo) == "B" and extract_reference(out) == extract_reference(echo)
    short = "the peptide bond after lysine"  # 29 characters of the question: a common phrase, kept
    assert w(short) == short
    assert w("no overlap here at all, none whatsoever, really") == "no overlap here at all, none whatsoever, really"


class Echo(Method):
    """A method that answers with its whole prompt, as small models often nearly do."""

    protocol = "context"

    def ingest(self, episode: Episode):
        return {"echoed": True}

    def answer(self, episode, queries):
        return [Prediction(text=self.task.prompt_messages(q, None)[0]["content"] + "\n\nThe answer is B.",
                           prompt_tokens=1, new_tokens=1, info={"prompt": self.task.prompt_messages(q, None)})
                for q in queries]


@needs_gpqa
def test_a_gpqa_run_writes_no_gpqa_text(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from harness.runner import run_experiment

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["task=gpqa_diamond", "task.limit=6", f"run.results_dir={tmp_path / 'r'}",
                                           "run.progress=false"])
    with open_dict(cfg):
        cfg.method = {"_target_": f"{__name__}.Echo", "name": "echo"}
    out = run_experiment(cfg, load=lambda _: _NoModel())
    assert out.metrics["n_samples"] == 6
    samples = [json.loads(l) for l in (out.path / "samples.jsonl").read_text().splitlines()]
    assert all(s["extracted"] == "B" and "GPQA text withheld" in s["prediction"] for s in samples)
    assert scan(tmp_path, LeakScanner(gpqa_texts(make_task()))) == {}


class _NoModel:
    def describe(self):
        return {"name": "none"}


@needs_gpqa
def test_committed_gpqa_records_and_reports_hold_no_gpqa_text():
    """Every GPQA record and every report. Records of the other tasks are made without reading GPQA's data, and
    their free text shares common 30-character phrases with it by chance (" had a profound impact on the " in
    IFEval answers), so scanning them would test nothing about GPQA."""
    scanner = LeakScanner(gpqa_texts(make_task()))
    leaks = {**scan(ROOT / "results" / "gpqa_diamond", scanner), **scan(ROOT / "reports", scanner)}
    assert leaks == {}, f"{len(leaks)} files hold GPQA text, e.g. {next(iter(leaks.items()))}"


@needs_gpqa
def test_committed_gpqa_records_score_the_same_from_their_withheld_text():
    """Rescoring a converted record reads its letters from the withheld outputs: the strict and reference rules
    must read what they read from the raw outputs (stored in ``extracted_by`` when the record was converted)."""
    n = 0
    for path in (ROOT / "results" / "gpqa_diamond").rglob("samples.jsonl"):
        for line in path.read_text().splitlines():
            s = json.loads(line)
            assert extract_strict(s["prediction"]) == s["extracted_by"]["strict"], (path, s["sample_id"])
            assert extract_reference(s["prediction"]) == s["extracted_by"]["reference"], (path, s["sample_id"])
            n += 1
    assert n >= 500

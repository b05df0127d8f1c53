"""Records as a DataFrame, their export, and the HTML viewer read back from headless Chromium."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.browser import dump_dom, find_chromium, screenshot
from harness.compare import paired_comparison
from harness.export import main as export_main
from harness.frame import load_frame
from harness.records import RunRecord
from harness.types import SampleRecord
from harness.view import build_viewer, main as view_main

ROOT = Path(__file__).resolve().parents[2]
CATS = ["temporal", "single_hop", "multi_hop"]
# 3 episodes × 5 questions; scores chosen so that every outcome filter has rows
QUESTIONS = [(f"conv-{e}/q{q:04d}", f"conv-{e}", CATS[(e + q) % 3]) for e in range(3) for q in range(5)]
HOSTILE = "<b>bold</b></script><script>document.title='pwned'</script>"


def _score(run: int, k: int) -> float:
    return [1.0, 0.0, 0.5, 0.25, 0.0, 1.0, 0.75][(k * (run + 2) + run) % 7]


def write_record(results: Path, task: str, method: str, protocol: str, run: int, *, skip: set[int] = frozenset(),
                 chash: str | None = None, metric: str = "f1") -> Path:
    chash = chash or f"{run:010d}"
    rec = RunRecord(results / task / method / "tiny" / f"seed-42-{chash}")
    kept = [k for k in range(len(QUESTIONS)) if k not in skip]
    samples = []
    for k in kept:
        sid, ep, cat = QUESTIONS[k]
        info: dict = {"stopped": k % 4 != 0}
        if method == "bm25_rag":
            info.update(retrieved_ids=[f"D{k}:1", f"D{k}:2"], in_prompt_ids=[f"D{k}:1", f"D{k}:2"])
        prediction = HOSTILE if (run, k) == (0, 3) else f"answer {k} by {method}"
        samples.append(SampleRecord(sid, ep, cat, f"Where did person {k} go?", f"gold {k}", prediction,
                                    prediction.lower(), {metric: _score(run, k)}, 100 + k, 5,
                                    80 if protocol == "context" else 0, 0.1, info))
    rec.write_header({"status": "complete", "task": task, "method": method, "backbone": "tiny", "seed": 42,
                      "config_hash": chash, "protocol": protocol, "primary_metric": metric,
                      "config": {"method": {"name": method}, "task": {"name": task}},
                      "n_samples_expected": len(QUESTIONS),
                      "timings": {"sessions": [{"wall_s": 3.0, "samples": len(kept)}], "wall_s_total": 3.0}})
    rec.append(samples)
    return rec.path


@pytest.fixture()
def results(tmp_path: Path) -> dict:
    root = tmp_path / "results"
    paths = {
        "vanilla": write_record(root, "locomo", "vanilla", "context", 0),
        "bm25_rag": write_record(root, "locomo", "bm25_rag", "memory", 1, skip={4, 9}),  # a subset: pairs on shared ids
        "vanilla_nocontext": write_record(root, "locomo", "vanilla_nocontext", "memory", 2),
    }
    broken = write_record(root, "locomo", "memorybank", "memory", 3)
    lines = (broken / "samples.jsonl").read_text().splitlines(keepends=True)
    (broken / "samples.jsonl").write_text(lines[0] + "{not json\n" + "".join(lines[1:]))
    return {"root": root, "paths": paths, "broken": broken}


# ------------------------------------------------------------------ DataFrame and export

def test_frame_has_a_row_per_sample_and_skips_damaged_records(results, capsys):
    df = load_frame(results["root"], task="locomo")
    assert "skipped unreadable record" in capsys.readouterr().err  # the damaged memorybank record, named
    assert str(results["broken"]) not in set(df.record)
    assert len(df) == 15 + 13 + 15
    assert set(df.run) == {"vanilla [context]", "bm25_rag [memory]", "vanilla_nocontext [memory]"}
    for col in ("task", "method", "protocol", "control", "backbone", "seed", "config_hash", "record", "sample_id",
                "category", "question", "gold", "prediction", "score", "score.f1", "correct", "prompt_tokens",
                "retrieved", "compression_ratio", "tokens_written"):
        assert col in df.columns, col
    bm25 = df[df.method == "bm25_rag"]
    assert (bm25.retrieved == 2).all() and df[df.method == "vanilla"].retrieved.isna().all()
    # the README's questions: per-category means of two methods; right in one, wrong in the other
    two = df[df.run.isin(["vanilla [context]", "bm25_rag [memory]"])]
    means = two.pivot_table(index="category", columns="run", values="score")
    assert means.loc["temporal", "vanilla [context]"] == pytest.approx(
        df[(df.method == "vanilla") & (df.category == "temporal")].score.mean())
    wide = two.pivot(index="sample_id", columns="run", values="correct")
    flipped = wide[(wide["vanilla [context]"] == True) & (wide["bm25_rag [memory]"] == False)].index  # noqa: E712
    assert list(flipped) == sorted(sid for k, (sid, _, _) in enumerate(QUESTIONS)
                                   if k not in {4, 9} and _score(0, k) >= 0.5 and _score(1, k) < 0.5)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "sqlite"])
def test_export_writes_the_same_table(results, tmp_path, fmt, capsys):
    out = tmp_path / f"records.{fmt}"
    assert export_main(["--format", fmt, "--results", str(results["root"]), "--out", str(out)]) == 0
    if fmt == "parquet":
        back = pd.read_parquet(out)
    elif fmt == "csv":
        back = pd.read_csv(out)
    else:
        with sqlite3.connect(out) as con:
            back = pd.read_sql("SELECT * FROM samples", con)
    assert len(back) == 43 and {"run", "sample_id", "score.f1", "prediction"} <= set(back.columns)
    assert "43 samples of 3 records" in capsys.readouterr().out


# ------------------------------------------------------------------ the viewer without a browser

def test_viewer_is_self_contained(results, tmp_path):
    out, data = build_viewer([str(p) for p in results["paths"].values()], tmp_path / "v.html")
    html = out.read_text()
    assert re.search(r"<(script|link|img)[^>]+(src|href)=", html) is None  # nothing fetched
    assert "http://" not in html and "https://" not in html
    assert "Content-Security-Policy" in html and "default-src 'none'" in html
    assert HOSTILE not in html and "\\u003c/script>" in html  # record text cannot close the data block
    assert [r["run"] for r in data["runs"]] == ["vanilla [context]", "bm25_rag [memory]", "vanilla_nocontext [memory]"]
    assert data["questions"]["id"] == sorted(q[0] for q in QUESTIONS)


def test_viewer_refuses_several_tasks_without_a_choice(results, capsys):
    write_record(results["root"], "hotpotqa", "vanilla", "context", 0)
    assert view_main(["--results", str(results["root"]), "--out", "/dev/null"]) == 2
    assert "give --task" in capsys.readouterr().err


def test_gpqa_viewer_shows_ids_and_letters_only(tmp_path):
    """GPQA records hold no question text; the viewer must not fetch it either (no GPQA task code imported)."""
    rec = RunRecord(tmp_path / "results" / "gpqa_diamond" / "vanilla" / "tiny" / "seed-42-0000000000")
    rec.write_header({"status": "complete", "task": "gpqa_diamond", "method": "vanilla", "protocol": "context",
                      "primary_metric": "accuracy", "config": {"method": {}, "task": {}}})
    rec.append([SampleRecord(f"gpqa_diamond/rec{k}", "gpqa_diamond", "Physics", None, "B",
                             "B. [GPQA text withheld: 99 characters]", "B", {"accuracy": float(k % 2)}, 170, 20, 0, 1.0,
                             extracted_by={"strict": "B", "reference": "B", "lm_eval": ""}) for k in range(4)])
    script = ("import sys, json; from pathlib import Path; from harness.view import build_viewer; "
              f"out, data = build_viewer([{str(rec.path)!r}], Path({str(tmp_path / 'g.html')!r})); "
              "print(json.dumps({'withheld': data['text_withheld'], 'questions': data['questions']['question'], "
              "'extracted': data['runs'][0]['extracted'], "
              "'task_code': sorted(m for m in sys.modules if m.startswith('tasks'))}))")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    got = json.loads(done.stdout)
    assert got["withheld"] is True and got["questions"] == [None] * 4 and got["task_code"] == []
    assert got["extracted"][0] == "strict B, reference B, lm_eval –"
    assert "gpqa_diamond/rec0" in (tmp_path / "g.html").read_text()


# ------------------------------------------------------------------ in a real browser

@pytest.fixture(scope="module")
def chromium() -> str:
    binary = find_chromium()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI for the viewer's browser test; .ci/run installs the Debian "
                        "package 'chromium' when it is absent (or set HARNESS_CHROMIUM)")
        pytest.skip("no Chromium on this machine (apt-get install chromium, or set HARNESS_CHROMIUM); "
                    "in CI this test fails instead of skipping")
    return binary


def _rows(dom: str) -> list[tuple[str, str]]:
    return re.findall(r'<tr class="q" data-id="([^"]+)" data-category="([^"]*)"', dom)


def _pair(dom: str) -> dict[str, float]:
    tag = re.search(r'<section id="pair"([^>]*)>', dom).group(1)
    return {k: float(v) for k, v in re.findall(r'data-(n|mean|stderr|lo|hi)="([^"]+)"', tag)}


def test_viewer_in_headless_chromium(results, tmp_path, chromium):
    paths = results["paths"]
    html, _ = build_viewer([str(paths["vanilla"]), str(paths["bm25_rag"]), str(paths["vanilla_nocontext"])],
                           tmp_path / "viewer.html")

    dom = dump_dom(chromium, html)
    assert re.search(r'data-ready-ms="[\d.]+"', dom), "the page's script did not finish"
    assert len(re.findall(r'<tr class="shown run" data-run="\d"', dom)) == 3
    for name in ("vanilla [context]", "bm25_rag [memory]", "vanilla_nocontext [memory]"):
        assert f'<td class="label">{name}</td>' in dom
    assert [sid for sid, _ in _rows(dom)] == sorted(q[0] for q in QUESTIONS)  # all 15, in id order
    assert "&lt;b&gt;bold&lt;/b&gt;" in dom and "<b>bold</b>" not in dom  # record text stays text
    assert "<title>locomo: 3 runs" in dom and "pwned" not in re.search(r"<title>.*?</title>", dom).group(0)
    assert "D3:1, D3:2" in dom  # what bm25 put into the prompt

    # the paired difference is harness.compare's, to the last bit, on the 13 questions both hold
    for fragment, (a, b) in (("", ("vanilla", "bm25_rag")), ("a=2&b=1", ("vanilla_nocontext", "bm25_rag"))):
        got = _pair(dump_dom(chromium, html, fragment) if fragment else dom)
        want = paired_comparison(paths[a], paths[b])
        assert got == {"n": want["n"], "mean": want["diff"]["mean"], "stderr": want["diff"]["stderr"],
                       "lo": want["diff"]["ci95"][0], "hi": want["diff"]["ci95"][1]}
        assert want["n"] == 13

    # filters read from the URL fragment: a category, then "A right, B wrong", then a search
    temporal = _rows(dump_dom(chromium, html, "cat=temporal"))
    assert temporal and all(c == "temporal" for _, c in temporal)
    assert len(temporal) == sum(c == "temporal" for *_, c in QUESTIONS)
    flipped = [sid for sid, _ in _rows(dump_dom(chromium, html, "outcome=ab"))]
    df = load_frame(records=[paths["vanilla"], paths["bm25_rag"]])
    wide = df.pivot(index="sample_id", columns="method", values="score")
    assert flipped == sorted(wide[(wide.vanilla >= 0.5) & (wide.bm25_rag < 0.5)].index) and flipped
    assert [sid for sid, _ in _rows(dump_dom(chromium, html, "q=conv-2%2Fq0003"))] == ["conv-2/q0003"]

    png = screenshot(chromium, html, tmp_path / "viewer.png", size=(1280, 900))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000

"""The report reads only records and says why a cell is empty."""
from __future__ import annotations

import csv

from harness.records import RunRecord
from harness.report import build_report
from harness.types import SampleRecord


def write(root, method, task, status, value=None, protocol="context", limit=None, error=None, cats=None,
          sessions=None):
    rec = RunRecord(root / task / method / "tiny" / f"seed-42-{method}{task}")
    header = {"status": status, "task": task, "method": method, "backbone": "tiny", "protocol": protocol,
              "primary_metric": "f1", "config": {"task": {"limit": limit}}, "n_samples_expected": 10,
              "timings": {"sessions": sessions or [{"wall_s": 12.0, "samples": 4}, {"wall_s": 3.0, "samples": 6}]}}
    if status == "complete":
        header["metrics"] = {"overall": {"f1": {"mean": value, "stderr": 0.01, "n": 10}},
                             "by_category": cats or {"a": {"f1": {"mean": value, "stderr": 0.02, "n": 10}}}}
    if error:
        header["error"] = error
    rec.write_header(header)


def write_adapter_run(root, tag, method_cfg, value):
    """A complete δ-mem MSW LoCoMo record (memory protocol) made with the adapter settings ``method_cfg``."""
    rec = RunRecord(root / "locomo" / "deltamem_msw" / "tiny" / f"seed-42-{tag}")
    rec.write_header({"status": "complete", "task": "locomo", "method": "deltamem_msw", "backbone": "tiny",
                      "protocol": "memory", "primary_metric": "f1", "finished": tag,
                      "config": {"task": {}, "method": method_cfg},
                      "metrics": {"overall": {"f1": {"mean": value, "stderr": 0.01, "n": 10}}, "by_category": {}}})


def test_main_table_ratio_and_missing_cells(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    write(res, "vanilla", "hotpotqa", "complete", 0.40)
    write(res, "deltamem_tsw", "locomo", "complete", 0.30)
    write(res, "deltamem_tsw", "hotpotqa", "failed", error="RuntimeError: boom")
    _samples(res, "deltamem_tsw", "hotpotqa", {"q1": 0.5})  # failed after its first answer: shown as failed
    write(res, "vanilla", "memoryagentbench", "failed", error="DataError: x.parquet: not found")
    write(res, "vanilla_nocontext", "locomo", "complete", 0.05, protocol="memory", limit=20)
    write(res, "deltamem_tsw", "ifeval", "running")
    _samples(res, "deltamem_tsw", "ifeval", {"q1": 0.5, "q2": 0.5})
    write(res, "deltamem_tsw", "gpqa_diamond", "failed", error="ConfigError: bad")  # no answer at all: not shown
    build_report(res, out)
    md = (out / "ablations.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| deltamem_tsw"))
    cols = [c.strip() for c in row.strip("|").split("|")]
    assert "30.00 ± 1.00" in row and "failed" in row and "not run" in row and "incomplete (2/10)" in row
    assert cols[2] == "not run"  # gpqa_diamond: the record failed before its first answer
    assert cols[-2] == "1.50×"  # 0.30 / 0.20 on the one shared task
    van = next(l for l in md.splitlines() if l.startswith("| vanilla |"))
    assert "data unavailable" in van and "30.00" in van  # mean of 0.2 and 0.4
    assert "5.00 ± 1.00 †" in md
    # wall time sums the sessions and says how many samples it covers
    assert "| vanilla | locomo | 15 | 10/10 | 1.50 |" in md
    rows = list(csv.DictReader(open(out / "ablations.csv")))
    assert {r["status"] for r in rows} >= {"complete", "failed", "not run", "data unavailable"}
    assert (out / "locomo.md").exists() and (out / "main.md").exists() and (out / "main.tex").exists()
    assert "a" in (out / "locomo.md").read_text()


def test_cost_table_means_over_the_samples(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    # two sessions: (1.0 + 2.0) + (0.5 + 1.5) seconds of ingest + answer over the record's 3 samples
    write(res, "bm25_rag", "locomo", "complete", 0.25,
          sessions=[{"wall_s": 9.0, "samples": 2, "load_s": 6.0, "ingest_s": 1.0, "answer_s": 2.0},
                    {"wall_s": 8.0, "samples": 1, "load_s": 6.0, "ingest_s": 0.5, "answer_s": 1.5}])
    write(res, "llmlingua1_smol", "locomo", "complete", 0.10)  # sessions without the split: no figure
    write(res, "vanilla", "locomo", "running")
    rec = RunRecord(res / "locomo" / "bm25_rag" / "tiny" / "seed-42-bm25_raglocomo")
    rec.append([SampleRecord(f"q{i}", "e", "a", None, "x", "y", None, {"f1": 0.0}, prompt_tokens=100 + 20 * i,
                             new_tokens=4 + i, context_tokens=60, latency_s=0.1,
                             method_info={"retrieved_ids": list(range(i + 1))}) for i in range(3)])
    rec = RunRecord(res / "locomo" / "llmlingua1_smol" / "tiny" / "seed-42-llmlingua1_smollocomo")
    rec.append([SampleRecord(f"q{i}", "e", "a", None, "x", "y", None, {"f1": 0.0}, prompt_tokens=50, new_tokens=2,
                             context_tokens=30, latency_s=0.1, method_info={"compression_ratio": r, "memory_bytes": 1536})
                for i, r in enumerate([2.0, 4.0])])
    build_report(res, out)
    md = (out / "costs.md").read_text()
    # bm25: prompt (100+120+140)/3, context 60, generated (4+5+6)/3, retrieved (1+2+3)/3; no compression
    assert "| tiny | locomo | bm25_rag | 25.00 ± 1.00 | 120.0 | 60.0 | 5.0 | 2.0 | – | – | 60 context tokens (KV cache) | 0 | 1.67 |" in md
    assert "| tiny | locomo | llmlingua1_smol | 10.00 ± 1.00 | 50.0 | 30.0 | 2.0 | – | 3.00 | 1.5 | 30 context tokens (KV cache) | 0 | – |" in md
    assert "| vanilla |" not in md  # only complete runs have a cost
    rows = {r["method"]: r for r in csv.DictReader(open(out / "costs.csv"))}
    assert set(rows) == {"bm25_rag", "llmlingua1_smol"} and float(rows["bm25_rag"]["retrieved"]) == 2.0


def _samples(res, method, task, scores):
    rec = RunRecord(res / task / method / "tiny" / f"seed-42-{method}{task}")
    rec.append([SampleRecord(qid, "e" + qid[-1], "a", None, "x", "y", None, {"f1": v}, prompt_tokens=10, new_tokens=1,
                             context_tokens=0, latency_s=0.1) for qid, v in scores.items()])


def test_one_method_under_two_protocols_gives_two_rows(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    write(res, "deltamem_msw", "locomo", "complete", 0.10, protocol="memory")
    rec = RunRecord(res / "locomo" / "deltamem_msw" / "tiny" / "seed-42-ctx")
    rec.write_header({"status": "complete", "task": "locomo", "method": "deltamem_msw", "backbone": "tiny",
                      "protocol": "context", "primary_metric": "f1", "config": {"task": {}},
                      "metrics": {"overall": {"f1": {"mean": 0.30, "stderr": 0.01, "n": 10}}, "by_category": {}}})
    build_report(res, out)
    md = (out / "ablations.md").read_text()
    assert "| deltamem_msw | context | " in md and "| deltamem_msw | memory | " in md
    ctx = next(l for l in md.splitlines() if l.startswith("| deltamem_msw | context"))
    assert "30.00" in ctx and [c.strip() for c in ctx.strip("|").split("|")][-2] == "1.50×"
    costs = (out / "costs.md").read_text()
    assert "deltamem_msw (context)" in costs and "deltamem_msw (memory)" in costs


def test_subset_ratio_uses_the_baselines_score_on_the_same_questions(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.25)
    _samples(res, "vanilla", "locomo", {"q1": 0.1, "q2": 0.1, "q3": 0.4, "q4": 0.4})  # mean 0.25
    write(res, "bm25_rag", "locomo", "complete", 0.30, protocol="memory", limit=2)
    _samples(res, "bm25_rag", "locomo", {"q1": 0.3, "q2": 0.3})
    build_report(res, out)
    row = next(l for l in (out / "ablations.md").read_text().splitlines() if l.startswith("| bm25_rag"))
    # 0.30 against vanilla's 0.10 on q1, q2 (not its 0.25 over all four)
    assert "30.00 ± 1.00 †" in row and [c.strip() for c in row.strip("|").split("|")][-2] == "3.00×"


def test_many_categories_turn_the_breakdown_table(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    cats = {f"type{i:02d}": {"f1": {"mean": i / 100, "stderr": 0.0, "n": 3}} for i in range(12)}
    write(res, "vanilla", "ifeval", "complete", 0.2, cats=cats)
    write(res, "vanilla", "locomo", "complete", 0.2)
    build_report(res, out)
    md = (out / "ifeval.md").read_text()
    assert "| category | vanilla |" in md and "| type11 | 11.00 (3) |" in md and "| overall | 20.00 (10) |" in md
    assert "| method | a | overall |" in (out / "locomo.md").read_text()  # few categories: methods as rows


def test_an_untrained_or_foreign_adapter_is_its_own_row(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    for tag, adapter, value in [("shipped", "adapters/tiny/deltamem_msw", 0.30), ("none", None, 0.10),
                                ("mine", "/runs/my_adapter", 0.25)]:
        write_adapter_run(res, tag, {"adapter": adapter}, value)
    build_report(res, out)
    md = (out / "ablations.md").read_text()
    shipped = next(l for l in md.splitlines() if l.startswith("| deltamem_msw | memory |"))
    assert "30.00 ± 1.00" in shipped  # the shipped adapter keeps the plain name
    assert "| deltamem_msw (untrained) | memory |" in md and "| deltamem_msw (my_adapter) | memory |" in md
    untrained = next(l for l in md.splitlines() if l.startswith("| deltamem_msw (untrained)"))
    assert "10.00 ± 1.00" in untrained


def adapter_folders(tmp_path, monkeypatch, payloads: dict[str, bytes]) -> dict[str, str]:
    """Fake adapter folders under a temporary ``adapters/`` (folder -> weight bytes); their weights' hashes."""
    import harness.adapters as adapters

    shipped = tmp_path / "adapters"
    monkeypatch.setattr(adapters, "SHIPPED_DIR", shipped)
    for folder, payload in payloads.items():
        (shipped / folder).mkdir(parents=True)
        (shipped / folder / "deltamem_model.safetensors").write_bytes(payload)
    return {folder: adapters.weights_sha256(shipped / folder) for folder in payloads}


def memory_rows(res, out) -> dict[str, str]:
    build_report(res, out)
    return {l.split(" | ")[0].lstrip("| "): l for l in (out / "ablations.md").read_text().splitlines() if "| memory |" in l}


def test_runs_with_a_superseded_shipped_adapter_are_not_shown_as_the_default(tmp_path, monkeypatch):
    sha = adapter_folders(tmp_path, monkeypatch, {"tiny/deltamem_msw": b"recall", "tiny/form_only/deltamem_msw": b"form"})
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    for tag, weights, value in [("now", sha["tiny/deltamem_msw"], 0.30), ("kept", sha["tiny/form_only/deltamem_msw"], 0.25),
                                ("gone", "ab" * 32, 0.15)]:
        write_adapter_run(res, tag, {"adapter": "adapters/tiny/deltamem_msw", "adapter_sha256": weights}, value)
    rows = memory_rows(res, out)
    assert "30.00" in rows["deltamem_msw"]  # the newest record is not what decides the default's cell
    assert "25.00" in rows["deltamem_msw (form_only)"]
    assert "15.00" in rows["deltamem_msw (earlier shipped adapter abababab)"]


def test_superseded_adapters_kept_in_the_experiments_folder_keep_their_label(tmp_path, monkeypatch):
    import harness.adapters as adapters

    sha = adapter_folders(tmp_path, monkeypatch, {"tiny/deltamem_msw": b"new"})
    kept = tmp_path / "experiments" / "adapters"
    monkeypatch.setattr(adapters, "KEPT_DIR", kept)
    (kept / "tiny" / "form_only" / "deltamem_msw").mkdir(parents=True)
    (kept / "tiny" / "form_only" / "deltamem_msw" / "deltamem_model.safetensors").write_bytes(b"form")
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    for tag, weights, value in [("now", sha["tiny/deltamem_msw"], 0.30),
                                ("kept", adapters.weights_sha256(kept / "tiny" / "form_only" / "deltamem_msw"), 0.25)]:
        write_adapter_run(res, tag, {"adapter": "adapters/tiny/deltamem_msw", "adapter_sha256": weights}, value)
    rows = memory_rows(res, out)
    assert "30.00" in rows["deltamem_msw"] and "25.00" in rows["deltamem_msw (form_only)"]


def test_runs_are_labelled_by_their_weights_not_the_path_they_ran_from(tmp_path, monkeypatch):
    """A candidate run before it became the default joins the default's row; a run of weights that are now kept
    as a superseded default is named by that folder; other weights keep their folder's name."""
    sha = adapter_folders(tmp_path, monkeypatch, {"tiny/deltamem_msw": b"new", "tiny/self_replies/deltamem_msw": b"old"})
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    for tag, path, weights, value in [("cand", "adapters/tiny/candidates/msw_online", sha["tiny/deltamem_msw"], 0.30),
                                      ("oldcand", "adapters/tiny/candidates/msw_replies",
                                       sha["tiny/self_replies/deltamem_msw"], 0.25),
                                      ("other", "/runs/my_adapter", "ab" * 32, 0.15)]:
        write_adapter_run(res, tag, {"adapter": path, "adapter_sha256": weights}, value)
    rows = memory_rows(res, out)
    assert set(rows) == {"deltamem_msw", "deltamem_msw (self_replies)", "deltamem_msw (my_adapter)"}
    assert "30.00" in rows["deltamem_msw"] and "25.00" in rows["deltamem_msw (self_replies)"]
    assert "15.00" in rows["deltamem_msw (my_adapter)"]


def test_partial_data_stand_ins_and_unavailable_data_are_said(tmp_path, monkeypatch):
    from harness import report

    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    rec = RunRecord(res / "hotpotqa" / "llmlingua1_smol" / "tiny" / "seed-42-x")
    rec.write_header({"status": "complete", "task": "hotpotqa", "method": "llmlingua1_smol", "backbone": "tiny",
                      "protocol": "memory", "primary_metric": "f1", "data": {"subset": True},
                      "config": {"task": {"limit": None}, "method": {"_target_": "methods.compression.LLMLingua1Smol"}},
                      "metrics": {"overall": {"f1": {"mean": 0.1, "stderr": 0.01, "n": 10}}, "by_category": {}}})
    monkeypatch.setattr(report, "task_data_problem", lambda t: "no parquet here" if t == "memoryagentbench" else None)
    build_report(res, out)
    md = (out / "ablations.md").read_text()
    row = next(l for l in md.splitlines() if l.startswith("| llmlingua1_smol"))
    assert "10.00 ± 1.00 †" in row  # a partial data file is a subset even without task.limit
    assert row.count("data unavailable") == 1 and "Data unavailable: `memoryagentbench`: no parquet here" in md
    for name in ("main.md", "costs.md", "hotpotqa.md"):
        assert "Stand-in: `llmlingua1_smol` is **not LLMLingua-2**" in (out / name).read_text(), name
    assert "Stand-in" not in (out / "locomo.md").read_text()  # only where the stand-in appears


def test_task_data_problem_names_the_missing_file(tmp_path, monkeypatch):
    from harness.report import task_data_problem

    monkeypatch.setenv("HARNESS_MAB", str(tmp_path))
    assert "no parquet file for split" in task_data_problem("memoryagentbench")
    assert task_data_problem("locomo") is None  # the packaged copy loads


def test_a_run_that_did_not_write_its_answers_is_its_own_row(tmp_path):
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20)
    for tag, flag, value in [("written", True, 0.30), ("absent", None, 0.28), ("unwritten", False, 0.25)]:
        cfg = {"adapter": "adapters/tiny/deltamem_msw", **({} if flag is None else {"write_generated": flag})}
        write_adapter_run(res, tag, cfg, value)
    build_report(res, out)
    rows = {l.split(" | ")[0].lstrip("| "): l for l in (out / "ablations.md").read_text().splitlines() if "| memory |" in l}
    assert set(rows) == {"deltamem_msw", "deltamem_msw (generated tokens not written)"}
    assert "25.00" in rows["deltamem_msw (generated tokens not written)"]


def test_breakdown_says_which_subsets_its_dagger_rows_ran_on(tmp_path):
    from harness.report import Cell, subset_notes

    def cell(task_cfg, data=None):
        return Cell("complete", 0.1, subset=True, header={"config": {"task": task_cfg}, "data": data or {}})

    full = Cell("complete", 0.1, subset=False, header={"config": {"task": {"limit": 999}}})
    notes = subset_notes([cell({"limit": 300}), cell({"limit": 100}), cell({"limit": 100}),
                          cell({"episode_ids": ["a", "b"]}), cell({}, {"subset": True}), full])
    assert notes[0] == ("† = run on a subset: `task.limit` = 100, 300 questions, a seeded choice in proportion to "
                        "each category (the same questions for every run with that limit); 2 episodes chosen by id "
                        "(`task.episode_ids`); a partial copy of the task's data.")
    assert subset_notes([full]) == []
    res, out = tmp_path / "results", tmp_path / "reports"
    write(res, "vanilla", "locomo", "complete", 0.20, limit=20)
    build_report(res, out)
    assert "† = run on a subset: `task.limit` = 20 questions" in (out / "locomo.md").read_text()

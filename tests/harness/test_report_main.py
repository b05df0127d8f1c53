"""The paper-layout main table, its LaTeX, the figures (nothing outside the canvas) and the suite."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness import report_main
from harness.records import RunRecord, config_hash
from harness.report import build_report
from harness.types import SampleRecord

CONF = str(Path(__file__).resolve().parents[2] / "conf")


def record(res, method, task, protocol, scores: dict[str, float], metric="f1", extra=None, limit=None):
    rec = RunRecord(res / task / method / "tiny" / f"seed-42-{method}{task}{protocol}")
    values = list(scores.values())
    rec.write_header({"status": "complete", "task": task, "method": method, "backbone": "tiny", "protocol": protocol,
                      "primary_metric": metric, "config": {"task": {"limit": limit}}, "n_samples_expected": len(values),
                      "metrics": {"overall": {metric: {"mean": sum(values) / len(values), "stderr": 0.01,
                                                       "n": len(values)}}, "by_category": {}}})
    rec.append([SampleRecord(q, f"e{int(q[1:]) % 4}", "a", None, "x", "y", None, {metric: v, **(extra or {})},
                             prompt_tokens=100 if method != "vanilla_nocontext" else 10, new_tokens=1,
                             context_tokens=0, latency_s=0.1) for q, v in scores.items()])


@pytest.fixture
def suite_ids(monkeypatch):
    """LoCoMo's suite questions are q0..q19; HotpotQA's q0..q9 (the real data is not needed here)."""
    ids = {"locomo": {f"q{i}" for i in range(20)}, "hotpotqa": {f"q{i}" for i in range(10)}}
    monkeypatch.setattr(report_main, "suite_questions", lambda suite, task, seed=42: ids.get(task))
    return ids


def test_main_table_cuts_records_to_the_suite_and_averages_what_vanilla_has(tmp_path, suite_ids):
    res, out = tmp_path / "results", tmp_path / "reports"
    record(res, "vanilla", "locomo", "context", {f"q{i}": 0.2 for i in range(30)})  # more than the suite's 20
    record(res, "vanilla", "hotpotqa", "context", {f"q{i}": 0.5 for i in range(10)}, metric="f1",
           extra={"em_official": 0.1, "f1_official": 0.5, "f1_reference": 0.6})
    record(res, "deltamem_msw", "locomo", "context", {f"q{i}": 0.3 for i in range(20)})
    record(res, "deltamem_msw", "hotpotqa", "context", {f"q{i}": 0.5 for i in range(10)},
           extra={"em_official": 0.2, "f1_official": 0.7, "f1_reference": 0.8})
    record(res, "deltamem_tsw", "locomo", "context", {f"q{i}": 0.1 for i in range(5)})  # fewer than the suite's
    # all columns, but LoCoMo on part of the suite's questions, there the best value: neither averaged nor bold
    record(res, "deltamem_ssw", "hotpotqa", "context", {f"q{i}": 0.5 for i in range(10)},
           extra={"em_official": 0.1, "f1_official": 0.5, "f1_reference": 0.6})
    record(res, "deltamem_ssw", "locomo", "context", {f"q{i}": 0.8 for i in range(10)})
    record(res, "vanilla_nocontext", "locomo", "memory", {f"q{i}": 0.9 for i in range(20)})
    info = build_report(res, out)
    md = (out / "main.md").read_text()
    rows = {l.split(" | ")[0].lstrip("| "): [c.strip() for c in l.strip("|").split("|")]
            for l in md.splitlines() if l.startswith("| ") and " | " in l and not l.startswith("| method")}
    header = [c.strip() for c in next(l for l in md.splitlines() if l.startswith("| method")).strip("|").split("|")]
    col = {h: i for i, h in enumerate(header)}
    assert rows["vanilla"][col["LoCoMo"]].startswith("20.00")  # 20 of its 30 questions
    assert rows["vanilla"][col["HotpotQA F1"]].startswith("50.00") and "(60.00)" in rows["vanilla"][col["HotpotQA F1"]]
    assert rows["deltamem_msw"][col["HotpotQA EM"]].startswith("**20.00**")  # best, in bold
    assert rows["deltamem_tsw"][col["LoCoMo"]].endswith("[5/20]")
    # the question-only floor is never bold even when it scores highest
    assert not rows["vanilla_nocontext (question only)"][col["LoCoMo"]].startswith("**")
    assert rows["deltamem_msw"][col["LoCoMo"]].startswith("**30.00**")
    assert rows["deltamem_ssw"][col["LoCoMo"]] == "80.00 ± 0.00 [10/20]"
    assert rows["deltamem_ssw"][col["average"]] == "–" and rows["deltamem_ssw"][col["× vanilla [95% CI]"]] == "–"
    # average over HotpotQA EM and LoCoMo (what vanilla has): (0.2 + 0.3) / 2; ratio against (0.1 + 0.2) / 2
    assert rows["deltamem_msw"][col["average"]] == "25.00"
    ratio = rows["deltamem_msw"][col["× vanilla [95% CI]"]]
    assert ratio.startswith("1.67× [") and rows["deltamem_tsw"][col["average"]] == "–"
    assert "over HotpotQA EM, LoCoMo" in md
    assert info["filled"] >= 6
    tex = (out / "main.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\begin{tabular}" in tex
    body = "\n".join(l for l in tex.splitlines() if not l.startswith("%"))
    assert not re.search(r"(?<!\\)[%_]", body)  # escaped for LaTeX
    assert "\\bfseries" in body or "\\textbf" in body  # the best cells stay bold


def test_figures_keep_every_label_inside_the_canvas(tmp_path, suite_ids):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.report import collect
    from harness.report_figures import write_figures

    res = tmp_path / "results"
    for i, m in enumerate(["vanilla", "bm25_rag", "memorybank", "llmlingua1_smol", "context2lora", "memgen",
                           "deltamem_tsw", "deltamem_ssw", "deltamem_msw", "vanilla_nocontext"]):
        protocol = report_main.default_protocol(m)
        record(res, m, "locomo", protocol, {f"q{k}": 0.05 * (i + 1) for k in range(20)})
    outside, checked = [], []
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *a, **kw):
        original(fig, *a, **kw)  # drawn: every artist has its final extent
        renderer = fig.canvas.get_renderer()
        # what matplotlib itself draws (ticks outside the view are not), in inches, against the canvas
        tight, canvas = fig.get_tightbbox(renderer), fig.bbox_inches
        checked.append(fig)
        if not (tight.x0 >= canvas.x0 - 0.01 and tight.y0 >= canvas.y0 - 0.01 and tight.x1 <= canvas.x1 + 0.01
                and tight.y1 <= canvas.y1 + 0.01):
            outside.append(("figure", tight.extents, canvas.extents))
        for text in fig.findobj(lambda a: isinstance(a, matplotlib.text.Text) and a.get_visible() and a.get_text()):
            if text in [t for ax in fig.axes for t in ax.get_xticklabels() + ax.get_yticklabels()] and not \
                    text.get_window_extent(renderer).overlaps(fig.bbox):
                continue  # a tick label matplotlib does not draw
            ext = text.get_window_extent(renderer)
            if not (ext.x0 >= -1 and ext.y0 >= -1 and ext.x1 <= fig.bbox.x1 + 1 and ext.y1 <= fig.bbox.y1 + 1):
                outside.append((text.get_text(), ext.extents))

    matplotlib.figure.Figure.savefig = spy
    try:
        paths = write_figures(collect(res), tmp_path, {"name": "t", "limits": {}})
    finally:
        matplotlib.figure.Figure.savefig = original
    assert [p.name for p in paths] == ["main.png", "cost_quality.png"] and all(p.is_file() for p in paths)
    assert len(checked) == 2 and outside == [], outside[:5]


def test_the_cost_figure_leaves_out_a_task_where_every_method_reads_the_same_prompt(tmp_path, suite_ids, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness import report_figures
    from harness.report import collect

    res = tmp_path / "results"
    for i, m in enumerate(["vanilla", "bm25_rag", "vanilla_nocontext"]):
        record(res, m, "locomo", report_main.default_protocol(m), {f"q{k}": 0.1 * (i + 1) for k in range(20)})
    for i, m in enumerate(["vanilla", "context2lora"]):  # IFEval: no context, the same prompt for both
        record(res, m, "ifeval", report_main.default_protocol(m), {f"q{k}": 0.2 * (i + 1) for k in range(20)},
               metric="prompt_level_strict_acc")
    drawn = []
    original = plt.Figure.savefig

    def spy(fig, path, *a, **kw):
        drawn.append((Path(path).name, [ax.get_title() for ax in fig.axes if ax.get_visible()],
                      fig.get_suptitle()))
        original(fig, path, *a, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    report_figures.write_figures(collect(res), tmp_path, {"name": "t", "limits": {}})
    titles = dict((name, (axes, sup)) for name, axes, sup in drawn)
    assert titles["main.png"][0] == ["IFEval", "LoCoMo"]
    assert titles["cost_quality.png"][0] == ["LoCoMo"]
    assert "not drawn: IFEval" in titles["cost_quality.png"][1]


def test_a_short_record_is_marked_in_the_figure(tmp_path, suite_ids, monkeypatch):
    """A record of fewer questions than the suite asks is not comparable with the full ones: its bar says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness import report_figures
    from harness.report import collect

    res = tmp_path / "results"
    record(res, "vanilla", "locomo", "context", {f"q{k}": 0.2 for k in range(20)})
    record(res, "deltamem_tsw", "locomo", "context", {f"q{k}": 0.4 for k in range(5)})
    seen = {}
    original = plt.Figure.savefig

    def spy(fig, path, *a, **kw):
        if Path(path).name == "main.png":
            ax = fig.axes[0]
            seen.update({t.get_text(): bar.get_hatch() for t, bar in zip(ax.get_yticklabels(), ax.patches)})
        original(fig, path, *a, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    report_figures.write_figures(collect(res), tmp_path, {"name": "t", "limits": {}})
    assert seen == {"vanilla": None, "deltamem_tsw [5/20]": "///"}


def test_the_suite_sets_the_limit_the_record_hash_already_has():
    from harness.runner import apply_suite, semantic_config

    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        suite = compose("config", overrides=["+suite=paper", "task=hotpotqa"])
        by_hand = compose("config", overrides=["task=hotpotqa", "task.limit=300"])
        skipped = compose("config", overrides=["+suite=paper", "method=bm25_rag", "task=ifeval"])
        mine = compose("config", overrides=["+suite=paper", "task=hotpotqa", "task.limit=7"])
    assert apply_suite(suite) is None and suite.task.limit == 300
    assert config_hash(semantic_config(suite)) == config_hash(semantic_config(by_hand))
    assert "bm25_rag does not run on ifeval" in apply_suite(skipped)
    apply_suite(mine)
    assert mine.task.limit == 7  # a limit given by hand wins


def test_a_failed_run_without_answers_never_reaches_a_table(tmp_path, suite_ids):
    res, out = tmp_path / "results", tmp_path / "reports"
    record(res, "vanilla", "locomo", "context", {f"q{i}": 0.2 for i in range(20)})
    build_report(res, out)
    before = {name: (out / name).read_text() for name in ("main.md", "ablations.md", "locomo.md")}
    bad = RunRecord(res / "locomo" / "vanilla" / "local" / "seed-42-broken")
    bad.write_header({"status": "failed", "task": "locomo", "method": "vanilla", "backbone": "local",
                      "protocol": None, "error": "ConfigError: backbone.path missing", "config": {}})
    build_report(res, out)
    for name, text in before.items():
        assert (out / name).read_text() == text, name


def test_a_suite_subset_covered_by_a_complete_full_record_is_not_run_again(tmp_path, monkeypatch, tiny_backbone):
    from harness.runner import run_experiment
    from tests.tasks.test_hotpotqa import record as hotpot_row, write as write_rows

    data = write_rows(tmp_path / "h.jsonl", [hotpot_row(f"q{i}", "bridge") for i in range(4)])
    monkeypatch.setenv("HARNESS_HOTPOTQA", str(data))
    common = ["method=vanilla_nocontext", "task=hotpotqa", "task.generation.max_new_tokens=2",
              f"run.results_dir={tmp_path / 'r'}", "run.progress=false"]
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        full = compose("config", overrides=common)
        suite = compose("config", overrides=[*common, "+suite=paper", "suite.limits.hotpotqa=2", "method.batch_size=3"])
        by_hand = compose("config", overrides=[*common, "task.limit=2", "method.batch_size=3"])
    made = run_experiment(full, load=lambda _: tiny_backbone)
    again = run_experiment(suite, load=lambda _: pytest.fail("covered by the full record: nothing to run"))
    assert again.status == "skipped" and again.path == made.path
    # asked by hand, the subset is its own record
    assert run_experiment(by_hand, load=lambda _: tiny_backbone).path != made.path


def test_compute_note_sums_thread_hours_once_per_run_and_prorates_subsets(tmp_path, suite_ids):
    res, out = tmp_path / "results", tmp_path / "reports"
    record(res, "vanilla", "locomo", "context", {f"q{i}": 0.2 for i in range(30)})  # 20 of its 30 questions used
    record(res, "vanilla", "hotpotqa", "context", {f"q{i}": 0.5 for i in range(10)},
           extra={"em_official": 0.1, "f1_official": 0.5, "f1_reference": 0.6})
    timings = {("vanilla", "locomo"): [{"wall_s": 3600.0, "threads": 2}, {"wall_s": 1800.0, "threads": 1}],
               ("vanilla", "hotpotqa"): [{"wall_s": 7200.0}]}  # an older session: threads not recorded
    for (method, task), sessions in timings.items():
        rec = RunRecord(res / task / method / "tiny" / f"seed-42-{method}{task}context")
        header = rec.header()
        header["timings"] = {"sessions": sessions, "wall_s_total": sum(s["wall_s"] for s in sessions)}
        rec.write_header(header)
    build_report(res, out)
    note = next(l for l in (out / "main.md").read_text().splitlines() if l.startswith("Compute:"))
    # LoCoMo (3600·2 + 1800·1)·20/30 = 6000 s; HotpotQA EM and F1 share one record: 7200 s once -> 3.7 h
    assert "the 2 runs behind the filled cells took 3.7 CPU thread-hours" in note
    assert "1 of them from sessions that did not record their threads" in note

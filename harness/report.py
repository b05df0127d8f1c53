"""``python -m harness.report``: turn the run records under ``results/`` into tables.

Writes to ``reports/``:
* ``main.md`` / ``main.csv`` / ``main.tex``: the paper's layout (:mod:`harness.report_main`): one row per
  registered method at its shipped default, on a suite's questions, with the average and ``× vanilla``;
* ``ablations.md`` / ``ablations.csv``: every record's row (other adapters, protocols, controls, subsets),
  grouped by method and read against its reference row;
* ``<task>.md`` / ``<task>.csv``: the per-category breakdown of every method with counts;
* ``main.png``/``cost_quality.png``: per task, the main rows' scores with intervals, and score against prompt
  cost;
* ``costs.md`` / ``costs.csv``: what each complete run put into the prompt, per question (prompt,
  context and generated tokens, retrieved pieces, achieved compression), next to its score.

Only run records are read, plus the task configs: a cell without a complete record says why
(``not run``, ``failed``, ``interrupted (k/n)`` for a run stopped by a signal, ``incomplete (k/n)`` for
a run still going or killed (rerunning its command resumes either), ``unreadable record`` for a
damaged record (named on stderr), or ``data unavailable`` when the task's data cannot be loaded
here). Records on a subset of a task (``task.limit``, ``episode_ids``, or a data file
that is itself a partial copy) are marked with † and never mixed with full runs. A method whose
class declares itself a stand-in for another (``STAND_IN_FOR``) is footnoted as such wherever it
appears.
"""
from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.adapters import weights_label
from harness.records import RecordError, iter_records

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "vanilla"


@dataclass
class Cell:
    status: str  # complete | failed | interrupted (k/n) | incomplete (k/n) | unreadable record | not run | data unavailable
    value: float | None = None
    stderr: float | None = None
    n: int = 0
    subset: bool = False
    header: dict[str, Any] = field(default_factory=dict)
    record: Any = None  # the RunRecord, for tables that need the samples
    metric: str | None = None  # the metric the value is of (a task's table metric, else the record's primary)
    beside: float | None = None  # the task's second table metric (the reference-suite rule), shown in brackets

    def text(self) -> str:
        if self.status != "complete":
            return self.status
        se = f" ± {100 * self.stderr:.2f}" if self.stderr is not None and not math.isnan(self.stderr) else ""
        beside = f" ({100 * self.beside:.2f})" if self.beside is not None else ""
        return f"{100 * self.value:.2f}{se}{beside}{' †' if self.subset else ''}"


def _is_subset(header: dict[str, Any]) -> bool:
    task_cfg = header.get("config", {}).get("task", {})
    return bool(task_cfg.get("limit") or task_cfg.get("episode_ids") or header.get("data", {}).get("subset"))


def stand_in_for(header: dict[str, Any]) -> tuple[str, str] | None:
    """(what the record's method stands in for, what it is instead), as its class declares
    (``STAND_IN_FOR``, ``STAND_IN_AS``); only this repository's ``methods.*`` classes are imported."""
    import importlib

    target = str(header.get("config", {}).get("method", {}).get("_target_", ""))
    module, _, name = target.rpartition(".")
    if not module.startswith("methods."):
        return None
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None
    what = getattr(cls, "STAND_IN_FOR", None)
    return (what, getattr(cls, "STAND_IN_AS", "")) if what else None


def stand_in_notes(cells) -> list[str]:
    """Markdown footnote lines, one per stand-in method among ``cells``."""
    seen: dict[str, tuple[str, str]] = {}
    for (_, method, _, _), cell in sorted(cells, key=lambda kc: kc[0][1]):
        declared = stand_in_for(cell.header)
        if declared and method not in seen:
            seen[method] = declared
    return [f"Stand-in: `{m}` is **not {what}**; it is {instead}." for m, (what, instead) in seen.items()]


def is_recipe_record(header: dict[str, Any]) -> bool:
    """Whether the record read data built by recipe (``tasks/memoryagentbench/recipe.py``), not the benchmark."""
    data = header.get("data") or {}
    return bool(data.get("recipe") or data.get("not_mab")
                or (header.get("config", {}).get("task", {}) or {}).get("recipe"))


def data_notes(cells) -> list[str]:
    """Markdown footnote lines, one per task whose records read recipe-built data: such scores are not the
    benchmark's and must never be read as if they were."""
    columns: dict[str, set[str]] = defaultdict(set)  # one line per task config, naming each of its columns
    notes: dict[str, str] = {}
    for (_, _, _, column), cell in cells:
        if is_recipe_record(cell.header):
            task = str(cell.header.get("task"))
            columns[task].add(column)
            notes.setdefault(task, str((cell.header.get("data") or {}).get("note") or "data built by recipe"))
    return [", ".join(f"`{c}`" for c in sorted(columns[t], key=natural_order))
            + f": **not MemoryAgentBench.** {notes[t]}. Its scores never enter the main table's MAB column."
            for t in sorted(columns)]


def natural_order(name: str) -> list[Any]:
    """Sort key that puts ``..._8k`` before ``..._32k``."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name)]


def task_data_problem(task: str) -> str | None:
    """Why the task's data cannot be loaded with its default config here (None: it loads)."""
    from omegaconf import OmegaConf

    from harness.errors import DataError
    from harness.runner import build  # the runner imports torch: only when a task has no record at all

    path = ROOT / "conf" / "task" / f"{task}.yaml"
    if not path.is_file():
        return None
    try:
        build(OmegaConf.load(path), "task").load_episodes()
    except DataError as exc:  # paths shown relative to the checkout's parent, not this machine's layout
        return str(exc).replace(f"{ROOT.parent}/", "../")
    return None


def _task_class(header: dict[str, Any]):
    """The record's task class (only this repository's ``tasks.*`` classes are imported), or None."""
    import importlib

    target = str(header.get("config", {}).get("task", {}).get("_target_", ""))
    module, _, name = target.rpartition(".")
    if not module.startswith("tasks."):
        return None
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def table_metrics(header: dict[str, Any]) -> list[tuple[str, str]]:
    """The (metric, label) pairs the record's task puts in a table, those the record holds; else its primary."""
    overall = header.get("metrics", {}).get("overall", {})
    named = [(m, label) for m, label in getattr(_task_class(header), "table_metrics", ()) if m in overall]
    return named or [(header.get("primary_metric"), str(header.get("primary_metric")))]


def report_task(header: dict[str, Any]) -> str | None:
    """The task column the record fills: its task's ``report_name`` (a recipe length is its own column)."""
    if header.get("task") is None:
        return None
    cls = _task_class(header)
    return cls.report_name(header) if cls is not None else str(header["task"])


def _cell_from(header: dict[str, Any], n_done: int) -> Cell:
    status = header.get("status")
    if status == "complete":
        shown = table_metrics(header)
        overall = header.get("metrics", {}).get("overall", {})
        m = overall.get(shown[0][0], {})
        beside = overall.get(shown[1][0], {}).get("mean") if len(shown) > 1 else None
        return Cell("complete", m.get("mean"), m.get("stderr"), int(m.get("n", 0)), _is_subset(header), header,
                    metric=shown[0][0], beside=beside)
    if status == "failed":
        err = header.get("error", "")
        return Cell("data unavailable" if err.startswith("DataError") else "failed", header=header)
    if status == "interrupted":
        return Cell(f"interrupted ({n_done}/{header.get('n_samples_expected', '?')})", header=header)
    # a record left "running" by a killed process looks the same as a live one, so the cell claims neither
    return Cell(f"incomplete ({n_done}/{header.get('n_samples_expected', '?')})", header=header)


def method_label(header: dict[str, Any]) -> str | None:
    """The method's name, qualified when it ran with other weights than its default.

    A method with an ``adapter`` setting (δ-mem) is a different row when that adapter is absent
    (``untrained``) or its weights are not the ones shipped for the backbone now (``weights_label``): an
    untrained memory or a superseded default must never stand in for the current one in a cell.
    A control run (``control``) is its own row too, and so is a δ-mem run that did not write its generated
    tokens (``write_generated: false``, a departure from the reference's context protocol)."""
    method = header.get("method")
    control = header.get("config", {}).get("control")
    method_cfg = header.get("config", {}).get("method", {})
    suffix = " (generated tokens not written)" if method_cfg.get("write_generated") is False else ""
    suffix += f" (control: {control.replace('_', ' ')})" if control else ""
    if method is None or "adapter" not in method_cfg:
        return method if method is None else method + suffix
    adapter = method_cfg.get("adapter")
    if adapter is None:
        return f"{method} (untrained){suffix}"
    label = weights_label(str(header.get("backbone")), method, str(adapter), method_cfg.get("adapter_sha256"))
    return method + suffix if label is None else f"{method} ({label}){suffix}"


def collect(results_dir: Path) -> dict[tuple[str, str, str, str], Cell]:
    """Best record per (backbone, method, protocol, task): complete full runs first, then complete
    subsets (largest first), then whatever else exists. The protocol is part of the key because one
    method can run under both (δ-mem with the context in the prompt, or with the history removed),
    and those are different rows of a comparison, never alternatives for one cell."""
    best: dict[tuple[str, str, str, str], tuple[tuple, Cell]] = {}
    for rec in iter_records(results_dir):
        try:
            h = rec.header() or {}
            key = (h.get("backbone"), method_label(h), h.get("protocol") or "", report_task(h))
            if None in key:
                continue
            samples = rec.samples()  # a damaged samples file must show here, not crash a table later
            if h.get("status") == "complete":
                metric = (h.get("metrics") or {}).get("overall", {}).get(h.get("primary_metric"))
                if not isinstance(metric, dict) or not isinstance(metric.get("mean"), (int, float)):
                    raise RecordError(f"{rec.header_path}: status complete without the primary metric "
                                      f"{h.get('primary_metric')!r} in its metrics")
                tail = rec.samples_path.read_bytes()[-1:] if rec.samples_path.exists() else b"\n"
                if tail not in (b"\n", b""):
                    # only a killed writer leaves a torn last line, and a complete record was not killed
                    raise RecordError(f"{rec.samples_path}: status complete but its last line is cut off")
            cell = _cell_from(h, len(samples))
            if cell.status != "complete" and not samples:
                continue  # failed or stopped before its first answer: nothing to show (its header keeps the error)
        except (RecordError, AttributeError, TypeError, ValueError) as exc:
            print(f"[report] unreadable record {rec.path}: {exc}", file=sys.stderr)
            key = _key_from_path(rec.path, results_dir)
            if key is None:
                continue
            h, cell = {}, Cell("unreadable record")
        cell.record = rec
        rank = (cell.status == "complete", not cell.subset, cell.n, h.get("finished", ""))
        if key not in best or rank > best[key][0]:
            best[key] = (rank, cell)
    return {k: v[1] for k, v in best.items()}


def _key_from_path(path: Path, results_dir: Path) -> tuple[str, str, str, str] | None:
    """(backbone, method, protocol, task) read from ``<task>/<method>/<backbone>/seed-...`` for a record whose
    header cannot say."""
    parts = Path(path).relative_to(results_dir).parts
    if len(parts) != 4:
        return None
    task, method, backbone, _ = parts
    return backbone, method, "", task


def config_choices(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


def main_rows(cells: dict[tuple[str, str, str, str], Cell], tasks: list[str],
              missing_data: dict[str, str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``missing_data``: task -> why its data cannot be loaded; its empty cells say so instead of ``not run``."""
    missing_data = missing_data or {}
    by_backbone: dict[str, list[dict[str, Any]]] = {}
    for backbone in sorted({k[0] for k in cells}):
        row_keys = sorted({(k[1], k[2]) for k in cells if k[0] == backbone}, key=lambda mp: (mp[0] != BASELINE, mp))
        # the baseline is the frozen backbone with the context in the prompt
        baseline_protocol = next((p for m, p in row_keys if m == BASELINE and p == "context"),
                                 next((p for m, p in row_keys if m == BASELINE), "context"))
        rows = []
        for m, protocol in row_keys:
            row_cells = {t: cells.get((backbone, m, protocol, t),
                                      Cell("data unavailable" if t in missing_data else "not run")) for t in tasks}
            done = {t: c for t, c in row_cells.items() if c.status == "complete"}
            base = {t: cells.get((backbone, BASELINE, baseline_protocol, t)) for t in done}
            pairs = {t: _same_questions(done[t], base[t]) for t in done
                     if base[t] is not None and base[t].status == "complete"}
            shared = [t for t, pair in pairs.items() if pair is not None and pair[1]]
            mean = sum(c.value for c in done.values()) / len(done) if done else None
            ratio = None
            if shared:
                ours = sum(pairs[t][0] for t in shared) / len(shared)
                theirs = sum(pairs[t][1] for t in shared) / len(shared)
                ratio = ours / theirs if theirs else None
            rows.append({"method": m, "protocol": protocol or "", "cells": row_cells, "mean": mean,
                         "n_tasks": len(done), "ratio": ratio, "ratio_tasks": shared})
        by_backbone[backbone] = rows
    return by_backbone


def _same_questions(cell: Cell, base: Cell) -> tuple[float, float] | None:
    """(row score, baseline score) on the questions both records answered.

    A subset run (``task.limit``) divided by the baseline's full-task score would mix question sets,
    so then both sides are re-averaged over the shared samples' primary metric. None when the records
    share no sample or a shared sample lacks the metric."""
    if cell.record is None or base.record is None:
        return cell.value, base.value
    ours, theirs = cell.record.samples(), base.record.samples()
    if set(ours) == set(theirs) and cell.metric == base.metric:
        return cell.value, base.value
    metric = cell.metric
    shared = [i for i in set(ours) & set(theirs) if metric in ours[i].scores and metric in theirs[i].scores]
    if not shared:
        return None
    return (sum(float(ours[i].scores[metric]) for i in shared) / len(shared),
            sum(float(theirs[i].scores[metric]) for i in shared) / len(shared))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_all_runs(by_backbone, tasks: list[str], out: Path, notes: list[str] | None = None,
                   missing_data: dict[str, str] | None = None) -> None:
    """``ablations.md``/``.csv``: every record's row (other adapters, protocols, controls, subsets), grouped by
    method, each with its difference to its reference row on the questions both hold."""
    md = ["# All runs and ablations", "",
          "Every record, grouped by method: other adapters (named by their weights), protocols, controls and "
          "subsets. The main table (`main.md`) holds one row per method at its shipped default. "
          "`vs reference` is the row's mean difference to its reference row (named) over the tasks both have, on "
          "the questions both records hold, in points ×100: a control against the same method without it, another "
          "adapter against the shipped one, δ-mem with the history removed against the question-only backbone. "
          "One metric per task ×100 (± standard error clustered by episode; which metric and rule: `Metrics` below, "
          "with a second rule's figure in brackets where a task has one). `mean` averages the tasks a row has; "
          f"`× {BASELINE}` is that mean divided by the frozen backbone's mean on the same tasks. "
          "† = run on a subset of the task (task.limit / episode_ids, or a partial copy of its data); a subset row's ratio compares it with the "
          "baseline on the same questions. Protocol `context`: the episode context is in the "
          "prompt; `memory`: the prompt holds only the question and the context reaches the model only through the method.",
          ""]
    csv_rows = []
    for backbone, rows in by_backbone.items():
        md += [f"## Backbone: {backbone}", ""]
        table = []
        by_key = {(r["method"], r["protocol"]): r for r in rows}
        for r in sorted(rows, key=lambda r: (base_method(r["method"]) != BASELINE, base_method(r["method"]),
                                             reference_of(r["method"], r["protocol"]) is not None, r["method"],
                                             r["protocol"])):
            mean = f"{100 * r['mean']:.2f}" if r["mean"] is not None else "–"
            ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
            table.append([r["method"], r["protocol"], *(r["cells"][t].text() for t in tasks), mean, ratio,
                          _vs_reference(r, by_key, tasks)])
            for t in tasks:
                c = r["cells"][t]
                csv_rows.append({"backbone": backbone, "method": r["method"], "protocol": r["protocol"], "task": t,
                                 "status": c.status, "value": c.value, "stderr": c.stderr, "n": c.n, "subset": c.subset,
                                 "metric": c.metric or "", "beside": c.beside})
        md += [_md_table(["method", "protocol", *tasks, "mean", f"× {BASELINE}", "vs reference"], table), ""]
        md += [f"Data unavailable: `{t}`: {why}" for t, why in sorted((missing_data or {}).items())
               if any(r["cells"][t].status == "data unavailable" for r in rows)]
        if missing_data:
            md.append("")
        wall = [[r["method"], t, *_wall_text(r["cells"][t])]
                for r in rows for t in tasks if r["cells"][t].status == "complete"]
        if wall:
            md += ["Wall time of each complete run (s, summed over the sessions of the run that recorded "
                   "their time; a session cut off before timings were kept in the header is not counted, "
                   "so `timed` says how many samples the figure covers):", "",
                   _md_table(["method", "task", "wall s", "timed samples", "s / timed sample"], wall), ""]
    md += metric_notes([c for rows in by_backbone.values() for r in rows for c in r["cells"].values()])
    if notes:
        md += [*notes, ""]
    (out / "ablations.md").write_text("\n".join(md) + "\n")
    with open(out / "ablations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["backbone", "method", "protocol", "task", "metric", "status", "value", "stderr",
                                          "n", "subset", "beside"])
        w.writeheader()
        w.writerows(csv_rows)


def base_method(label: str) -> str:
    return label.split(" ", 1)[0]


def reference_of(label: str, protocol: str) -> tuple[str, str] | None:
    """The row an ablation row is read against: the same row without its control, the shipped weights for
    other weights, the question-only backbone for a memory method with the history removed; None for a
    method's own default row."""
    from harness.report_main import FLOOR, default_protocol

    method = base_method(label)
    if " (control: " in label:
        return label.split(" (control: ")[0], protocol
    if label != method:
        return method, protocol
    if method in (BASELINE, FLOOR):
        return None
    try:
        default = default_protocol(method)
    except (OSError, KeyError):
        return None
    if protocol == "memory" and default != "memory":
        return FLOOR, "memory"
    return None


def _vs_reference(row: dict[str, Any], by_key: dict, tasks: list[str]) -> str:
    ref_key = reference_of(row["method"], row["protocol"])
    ref = by_key.get(ref_key) if ref_key else None
    if ref is None:
        return "reference" if ref_key is None else f"({ref_key[0]} not run)"
    diffs = []
    for t in tasks:
        a, b = row["cells"][t], ref["cells"][t]
        if a.status == "complete" and b.status == "complete":
            pair = _same_questions(a, b)
            if pair is not None:
                diffs.append(pair[0] - pair[1])
    if not diffs:
        return f"no shared task with {ref_key[0]}"
    return f"{100 * sum(diffs) / len(diffs):+.2f} vs {ref_key[0]} ({len(diffs)} task{'s' * (len(diffs) > 1)})"


def metric_notes(cells: list[Cell]) -> list[str]:
    """One line per task saying which metric, by which rule, its cells show (and what the brackets hold)."""
    said: dict[str, str] = {}
    for c in cells:
        if c.status != "complete" or c.header.get("task") in said:
            continue
        shown = table_metrics(c.header)
        line = f"`{c.header.get('task')}`: {shown[0][1]}"
        if len(shown) > 1:
            line += f"; in brackets: {shown[1][1]}"
        said[c.header.get("task")] = line + "."
    return ["Metrics: " + " ".join(v for _, v in sorted(said.items())), ""] if said else []


def _wall_text(cell: Cell) -> list[str]:
    sessions = cell.header.get("timings", {}).get("sessions", [])
    wall = sum(float(s.get("wall_s", 0.0)) for s in sessions)
    timed = sum(int(s.get("samples", 0)) for s in sessions)
    if not sessions or not timed:
        return ["?", f"0/{cell.n}", "?"]
    return [f"{wall:.0f}", f"{timed}/{cell.n}", f"{wall / timed:.2f}"]


# Beyond this many categories a methods-as-rows table is too wide to read (IFEval has 25 instruction types),
# so the table turns: one row per category, one column per method.
MAX_CATEGORY_COLUMNS = 8


def _row_label(method: str, protocol: str, protocols_of: dict[str, set[str]]) -> str:
    """The method's name, with its protocol when the method has rows under more than one."""
    return f"{method} ({protocol})" if len(protocols_of.get(method, ())) > 1 else method


def _protocols_of(cells: dict[tuple[str, str, str, str], Cell]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for _, m, p, _ in cells:
        out[m].add(p)
    return out


def subset_notes(cells) -> list[str]:
    """What † means in a breakdown: which subsets its rows ran on (rows on different subsets are never mixed)."""
    limits, chosen, partial = set(), set(), False
    for c in cells:
        if c.subset:
            task_cfg = c.header.get("config", {}).get("task", {})
            limits |= {task_cfg["limit"]} if task_cfg.get("limit") else set()
            chosen |= {len(task_cfg["episode_ids"])} if task_cfg.get("episode_ids") else set()
            partial |= bool(c.header.get("data", {}).get("subset"))
    said = []
    if limits:
        said.append(f"`task.limit` = {', '.join(str(n) for n in sorted(limits))} questions, a seeded choice in "
                    "proportion to each category (the same questions for every run with that limit)")
    if chosen:
        said.append(f"{', '.join(str(n) for n in sorted(chosen))} episodes chosen by id (`task.episode_ids`)")
    if partial:
        said.append("a partial copy of the task's data")
    return [f"† = run on a subset: {'; '.join(said)}.", ""] if said else []


def paired_section(cells: dict[tuple[str, str, str, str], Cell], task: str,
                   protocols_of: dict[str, set[str]]) -> list[str]:
    """Every complete row of ``task`` minus the row its task class names as ``paired_reference``, on the
    questions both answered, overall and per category, with 95 % episode-bootstrap intervals (what
    ``python -m harness.compare`` prints). Empty when the task names no reference or it has no complete run."""
    from harness.compare import paired_comparison  # harness.compare reads labels from this module

    lines: list[str] = []
    for backbone in sorted({k[0] for k in cells if k[3] == task}):
        runs = {(m, p): c for (b, m, p, t), c in cells.items()
                if b == backbone and t == task and c.status == "complete" and c.record is not None}
        if not runs:
            continue
        reference = getattr(_task_class(next(iter(runs.values())).header), "paired_reference", None)
        ref = next((c for (m, _), c in sorted(runs.items()) if m == reference), None)
        if ref is None:
            continue
        rows, cats, metric = [], [], None
        for (m, p), c in sorted(runs.items()):
            if c is ref:
                continue
            r = paired_comparison(c.record.path, ref.record.path, metric=ref.header.get("primary_metric"))
            metric, cats = r["metric"], sorted(set(cats) | set(r["by_category"]))
            diff = {"overall": {"diff": r["diff"]["mean"], "ci95": r["diff"]["ci95"], "n": r["n"]}, **r["by_category"]}
            rows.append((_row_label(m, p, protocols_of) + (" †" if c.subset else ""), diff))

        def text(d: dict[str, Any] | None) -> str:
            if not d:
                return "–"
            lo, hi = d["ci95"]
            return f"{100 * d['diff']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}] ({d['n']})"

        lines += [f"## {backbone} — paired against {reference}: {metric} difference ×100 [95% interval] (n)", "",
                  "Each row minus the reference row on the questions both answered; the interval resamples whole "
                  "episodes (`python -m harness.compare ROW REFERENCE` prints the same).", "",
                  _md_table(["method", "overall", *cats], [[label, *(text(d.get(k)) for k in ["overall", *cats])]
                                                          for label, d in rows]), ""]
    return lines


def write_breakdowns(cells: dict[tuple[str, str, str, str], Cell], tasks: list[str], out: Path) -> None:
    protocols_of = _protocols_of(cells)
    for task in tasks:
        done = {(b, _row_label(m, p, protocols_of)): c for (b, m, p, t), c in cells.items()
                if t == task and c.status == "complete"}
        if not done:
            continue
        md = [f"# {task}: per-category breakdown", ""]
        csv_rows = []
        for backbone in sorted({b for b, _ in done}):
            runs = sorted((m, c) for (b, m), c in done.items() if b == backbone)
            metric_names = sorted({name for _, c in runs for name in c.header.get("metrics", {}).get("overall", {})})
            # `f1` beside `f1_official`/`f1_reference` only repeats the rule a record was configured with
            metric_names = [n for n in metric_names if not any(o.startswith(n + "_") for o in metric_names)]
            for metric in metric_names:
                # only the categories that carry this metric (IFEval's prompt-level metrics have none)
                cats = sorted({cat for _, c in runs
                               for cat, row in c.header.get("metrics", {}).get("by_category", {}).items()
                               if metric in row})
                values: dict[str, dict[str, dict | None]] = {}
                for m, c in runs:
                    by_cat = c.header["metrics"].get("by_category", {})
                    overall = c.header["metrics"]["overall"].get(metric, {})
                    values[m] = {cat: by_cat.get(cat, {}).get(metric) for cat in cats}
                    values[m]["overall"] = overall or None
                    for cat in [*cats, "overall"]:
                        v = values[m][cat]
                        if v:
                            csv_rows.append({"backbone": backbone, "method": m, "metric": metric, "category": cat,
                                             "mean": v.get("mean"), "stderr": v.get("stderr"), "n": v.get("n")})

                def cell(v: dict | None) -> str:
                    return f"{100 * v['mean']:.2f} ({v['n']})" if v else "–"

                labels = {m: m + (" †" if c.subset else "") for m, c in runs}
                md += [f"## {backbone} — {metric} (×100, n in brackets)", ""]
                if len(cats) > MAX_CATEGORY_COLUMNS:
                    rows = [[cat, *(cell(values[m][cat]) for m, _ in runs)] for cat in [*cats, "overall"]]
                    md += [_md_table(["category", *(labels[m] for m, _ in runs)], rows), ""]
                else:
                    rows = [[labels[m], *(cell(values[m][cat]) for cat in [*cats, "overall"])] for m, _ in runs]
                    md += [_md_table(["method", *cats, "overall"], rows), ""]
        md += subset_notes(done.values())
        md += paired_section(cells, task, protocols_of)
        md += metric_notes([c for k, c in cells.items() if k[3] == task])
        md += [*stand_in_notes([(k, c) for k, c in cells.items() if k[3] == task and c.status == "complete"]),
               *data_notes([(k, c) for k, c in cells.items() if k[3] == task]), ""]
        (out / f"{task}.md").write_text("\n".join(md) + "\n")
        with open(out / f"{task}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["backbone", "method", "metric", "category", "mean", "stderr", "n"])
            w.writeheader()
            w.writerows(csv_rows)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def cost_of(cell: Cell) -> dict[str, Any]:
    """Per-question means over a complete run's samples. ``retrieved`` counts the pieces a retrieval method put
    into the prompt; ``compression`` is the achieved ratio a compressor recorded (original / compressed)."""
    samples = list(cell.record.samples().values()) if cell.record is not None else []
    retrieved = [len(s.method_info["retrieved_ids"]) for s in samples if "retrieved_ids" in s.method_info]
    ratios = [float(s.method_info["compression_ratio"]) for s in samples
              if s.method_info.get("compression_ratio") is not None]
    memory = [float(s.method_info["memory_bytes"]) for s in samples if s.method_info.get("memory_bytes") is not None]
    return {"n": len(samples), "trainable_parameters": (cell.header.get("method_info") or {}).get("trainable_parameters"),
            "memory_held": memory_held(samples),
            "prompt_tokens": _mean([s.prompt_tokens for s in samples]),
            "context_tokens": _mean([s.context_tokens for s in samples]),
            "new_tokens": _mean([s.new_tokens for s in samples]),
            "retrieved": _mean(retrieved), "compression": _mean(ratios),
            "memory_kb": None if not memory else _mean(memory) / 1024,
            "seconds_per_question": seconds_per_question(cell.header, len(samples))}


def seconds_per_question(header: dict[str, Any], n: int) -> float | None:
    """Ingest + answer wall seconds per sample over the record's sessions (model loading left out)."""
    sessions = (header.get("timings") or {}).get("sessions") or []
    spent = [float(s.get("ingest_s") or 0) + float(s.get("answer_s") or 0) for s in sessions
             if s.get("answer_s") is not None]
    if not n or not spent or len(spent) != len(sessions):
        return None  # a session without a split (older records) would make the figure a guess
    return sum(spent) / n


def memory_held(samples) -> str | None:
    """What a method keeps per episode besides the prompt, in its own unit (the ingest record of the first
    sample of each episode): δ-mem's state bytes, a retriever's indexed pieces, a compressor's kept tokens,
    MemoryBank's stored documents; the in-context methods hold the context itself (as KV cache)."""
    firsts = {}
    for s in samples:
        if s.method_info.get("ingest") and s.episode_id not in firsts:
            firsts[s.episode_id] = s.method_info["ingest"]
    if not firsts:
        ctx = [s.context_tokens for s in samples if s.context_tokens]
        return f"{_mean(ctx):,.0f} context tokens (KV cache)" if ctx else None
    info = list(firsts.values())
    for key, unit in (("state_bytes", "KB state"), ("n_docs", "documents"), ("n_chunks", "pieces indexed"),
                      ("context_tokens_kept", "tokens kept"), ("context_tokens", "context tokens (KV cache)")):
        values = [float(i[key]) for i in info if i.get(key) is not None]
        if values:
            value = _mean(values) / (1024 if key == "state_bytes" else 1)
            return f"{value:,.1f} {unit}" if key == "state_bytes" else f"{value:,.0f} {unit}"
    return None


def training_costs(backbones: list[str]) -> list[str]:
    """A table of the shipped trained weights: parameters, data, steps and CPU time (from their training.json)."""
    import json

    from harness.adapters import SHIPPED_DIR

    rows = []
    for backbone in backbones:
        for folder in sorted((SHIPPED_DIR / backbone).glob("*/training.json")):
            d = json.loads(folder.read_text())
            seconds = d.get("train_seconds")
            stages = d.get("build_seconds")  # MLP Memory: datastore, index, kNN targets... besides training
            build = sum(float(v) for v in stages.values()) if isinstance(stages, dict) else seconds
            rows.append([backbone, folder.parent.name, f"{d.get('trainable_parameters') or 0:,}",
                         str(d.get("data_name") or d.get("corpus") or "–"), str(d.get("steps", "–")),
                         "–" if seconds is None else f"{float(seconds):,.0f}",
                         "–" if build is None else f"{float(build):,.0f}"])
    if not rows:
        return []
    return ["## Shipped trained weights", "",
            "From each adapter's `training.json`: trainable parameters, the training data, optimizer steps and CPU "
            "seconds of the run that produced the shipped weights (δ-mem: its last curriculum stage; the whole "
            "lineage is in `adapters/<backbone>/README.md`); `build s` adds every other stage of the build "
            "(MLP Memory: datastore, held-out cache, index, kNN targets, evidence).", "",
            _md_table(["backbone", "method", "trainable parameters", "data", "steps", "train s", "build s"], rows), ""]


def write_costs(cells: dict[tuple[str, str, str, str], Cell], out: Path) -> None:
    protocols_of = _protocols_of(cells)
    done = sorted(((k, c) for k, c in cells.items() if c.status == "complete"),
                  key=lambda kc: (kc[0][0], kc[0][3], kc[0][1] != BASELINE, kc[0][1], kc[0][2]))
    md = ["# Prompt cost next to quality", "",
          "Means per question over each complete run's samples. `prompt` counts the backbone tokens of the whole "
          "prompt (a prefix reused across an episode's questions counted for every question), `context` the tokens "
          "of the episode context in it (retrieved, compressed or summarised for the text-memory methods; 0 when "
          "the method keeps it out of the prompt), `generated` the new tokens. `retrieved`: pieces put into the "
          "prompt; `compression`: achieved original/compressed ratio recorded by the compressor; `memory KB`: the size "
          "of a method's own memory per sequence (δ-mem's states); `memory held`: what the method keeps per episode "
          "in its own unit (state bytes, indexed pieces, stored documents, kept tokens; the in-context methods hold "
          "the context as KV cache); `trainable`: parameters the method trained (0: none); `s/question`: ingest + "
          "answer wall seconds per question as the run went (threads and machine load differ between runs: "
          "speed ratios measured side by side are in the README's Measured figures).", ""]
    rows, csv_rows = [], []
    fmt = lambda v, d=1: "–" if v is None else f"{v:.{d}f}"  # noqa: E731
    for (backbone, method, protocol, task), cell in done:
        c = cost_of(cell)
        label = _row_label(method, protocol, protocols_of)  # the score cell carries the subset mark
        params = c["trainable_parameters"]
        rows.append([backbone, task, label, cell.text(), fmt(c["prompt_tokens"]), fmt(c["context_tokens"]),
                     fmt(c["new_tokens"]), fmt(c["retrieved"]), fmt(c["compression"], 2), fmt(c["memory_kb"]),
                     c["memory_held"] or "–", "0" if params is None else f"{params:,}",
                     fmt(c["seconds_per_question"], 2)])
        csv_rows.append({"backbone": backbone, "task": task, "method": method, "protocol": protocol,
                         "subset": cell.subset,
                         "metric": cell.metric or "", "value": cell.value, **c})
    md += [_md_table(["backbone", "task", "method", "score ×100", "prompt", "context", "generated", "retrieved",
                      "compression", "memory KB", "memory held", "trainable", "s/question"], rows), ""]
    md += metric_notes([c for _, c in done])
    md += [*stand_in_notes(done), *data_notes(done), ""]
    md += training_costs(sorted({k[0] for k, _ in done}))
    (out / "costs.md").write_text("\n".join(md) + "\n")
    with open(out / "costs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["backbone", "task", "method", "protocol", "subset", "metric", "value", "n",
                                          "prompt_tokens", "context_tokens", "new_tokens", "retrieved", "compression",
                                          "memory_kb", "memory_held", "trainable_parameters",
                                          "seconds_per_question"])
        w.writeheader()
        w.writerows(csv_rows)


def load_suite(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    path = ROOT / "conf" / "suite" / f"{name}.yaml"
    if not path.is_file():
        choices = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"--suite {name}: no {path} (suites: {', '.join(choices)})")
    return OmegaConf.to_container(OmegaConf.load(path)).get("suite", {})


def write_main(cells: dict[tuple[str, str, str, str], Cell], out: Path, suite: dict[str, Any]) -> dict[str, Any]:
    """``main.md``/``.csv``/``.tex``: the paper's layout, one row per registered method at its shipped default."""
    from harness import report_main as rm

    md = ["# Main comparison", "",
          f"Suite `{suite.get('name')}`: every registered method at its shipped default (its own protocol; "
          "δ-mem with its shipped adapter), on the same questions. Metric ×100 ± standard error clustered by "
          "episode. Other adapters, protocols, controls and subsets: `ablations.md`; per category: `<task>.md`; "
          "costs: `costs.md`.", ""]
    csv_rows, tex_parts, filled, total = [], [], 0, 0
    for backbone in sorted({k[0] for k in cells}):
        rows, missing = rm.build_rows(cells, backbone, suite)
        if not rows:
            continue
        cols = rm.summarise_rows(rows)
        header, body = rm.table_lines(rows)
        notes = rm.footnotes(cols, suite, stand_in_notes([(k, c) for k, c in cells.items() if k[0] == backbone]),
                             missing) + data_notes([(k, c) for k, c in cells.items() if k[0] == backbone])
        notes += [n for n in (rm.compute_note(rows),) if n]
        md += [f"## Backbone: {backbone}", "", _md_table(header, body), "", *notes, ""]
        tex_parts.append(f"% Backbone: {backbone}\n" + rm.to_latex(header, body, notes))
        for r in rows:
            for col in rm.COLUMNS:
                c = r["cells"][col.header]
                total += c.status != "–"
                filled += c.status == "complete"
                csv_rows.append({"backbone": backbone, "method": r["method"], "protocol": r["protocol"],
                                 "column": col.header, "task": col.task, "metric": col.metric, "status": c.status,
                                 "value": c.value, "stderr": c.stderr, "n": c.n, "expected": c.expected,
                                 "beside": c.beside, "average": r.get("average"),
                                 "ratio": (r.get("ratio") or (None,))[0]})
    (out / "main.md").write_text("\n".join(md) + "\n")
    (out / "main.tex").write_text("\n".join(tex_parts))
    with open(out / "main.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["backbone", "method", "protocol", "column", "task", "metric", "status",
                                          "value", "stderr", "n", "expected", "beside", "average", "ratio"])
        w.writeheader()
        w.writerows(csv_rows)
    return {"filled": filled, "cells": total}


def build_report(results_dir: Path, out: Path, suite: str = "paper") -> dict[str, Any]:
    cells = collect(results_dir)
    # a task config whose records all fill columns of their own (one per recipe length) has no column itself
    split_up = {c.header.get("task") for k, c in cells.items() if c.header.get("task") not in (None, k[3])}
    split_up -= {k[3] for k in cells}
    tasks = sorted((set(config_choices("task")) - split_up) | {k[3] for k in cells}, key=natural_order)
    out.mkdir(parents=True, exist_ok=True)
    # only tasks without any record are probed: loading a task's data is the only way to know it is there
    missing = {t: why for t in tasks if not any(k[3] == t for k in cells) and (why := task_data_problem(t))}
    by_backbone = main_rows(cells, tasks, missing)
    main = write_main(cells, out, load_suite(suite))
    write_all_runs(by_backbone, tasks, out, stand_in_notes(cells.items()) + data_notes(cells.items()), missing)
    write_breakdowns(cells, tasks, out)
    write_costs(cells, out)
    from harness.report_figures import write_figures

    write_figures(cells, out, load_suite(suite))
    return {"records": len(cells), "backbones": list(by_backbone), "tasks": tasks, **main}


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m harness.report",
        description="Turn run records into tables and figures: main.md/.csv/.tex (the paper's layout: one row per "
                    "registered method at its shipped default, on the suite's questions), ablations.md (every other "
                    "record, each against its reference row), <task>.md (per category), costs.md, main.png and "
                    "cost_quality.png. Only records are read; nothing is run.",
        epilog="Report just your own runs: python -m harness.report --results my_results --out my_reports "
               "(after python -m harness ... run.results_dir=my_results).")
    ap.add_argument("--results", default=str(ROOT / "results"), help="folder of run records (default: results/)")
    ap.add_argument("--out", default=str(ROOT / "reports"), help="folder the tables are written to (default: reports/)")
    ap.add_argument("--suite", default="paper", help="the suite whose questions the main table uses (conf/suite/)")
    args = ap.parse_args()
    if not Path(args.results).is_dir():  # never replace the reports with empty tables
        print(f"error: --results {args.results}: no such folder; nothing written to {args.out}", file=sys.stderr)
        sys.exit(2)
    try:
        info = build_report(Path(args.results), Path(args.out), suite=args.suite)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"[report] read {info['records']} records (best per method, protocol and task) from {args.results}; "
          f"main table: {info['filled']} of {info['cells']} cells filled; backbones {info['backbones']} -> {args.out}")


if __name__ == "__main__":
    main()

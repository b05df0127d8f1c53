"""The paper's main table: one row per registered method at its shipped default, on a suite's questions.

Columns follow the δ-mem paper's Table 3: IFEval, HotpotQA EM and F1, GPQA-Diamond, MemoryAgentBench, LoCoMo and
their average, which, as the paper's "Final avg" does (checked on its rows), averages IFEval, HotpotQA *EM*,
GPQA-D, MAB and LoCoMo. A cell is the row's record restricted to the suite's questions of that task (a record on
more questions is cut down to them; one on fewer is shown on what it has, marked). The average and ``× vanilla``
use only the columns every compared row has, and say which; ``× vanilla`` comes with a 95 % interval that
resamples each task's episodes (paired: both rows on the same questions).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "vanilla"
FLOOR = "vanilla_nocontext"


@dataclass(frozen=True)
class Column:
    task: str
    metric: str
    header: str
    averaged: bool
    beside: str | None = None  # a second rule's metric, shown in brackets


COLUMNS = (
    Column("ifeval", "prompt_level_strict_acc", "IFEval", True),
    Column("hotpotqa", "em_official", "HotpotQA EM", True),
    Column("hotpotqa", "f1_official", "HotpotQA F1", False, beside="f1_reference"),
    Column("gpqa_diamond", "accuracy_strict", "GPQA-D", True, beside="accuracy_reference"),
    Column("memoryagentbench", "score", "MAB", True),
    Column("locomo", "f1", "LoCoMo", True),
)
NOTES = {
    "hotpotqa": "HotpotQA: EM and F1 by hotpot_evaluate_v1's rules; in brackets F1 by the δ-mem reference suite's rule",
    "gpqa_diamond": "GPQA-D: accuracy with the strict letter rule (an option list is no answer); in brackets the "
                    "reference suite's cascade",
    "ifeval": "IFEval: prompt-level strict accuracy",
    "locomo": "LoCoMo: F1 (Porter-stemmed, per-category rules), categories 1-4",
    "memoryagentbench": "MAB: sample-weighted mean of the per-source metrics",
}


@dataclass
class MainCell:
    status: str                      # complete | a reason
    value: float | None = None
    stderr: float | None = None
    n: int = 0
    expected: int | None = None      # the suite's question count for the task
    beside: float | None = None
    subset: bool = False
    samples: dict[str, tuple[float, str]] = field(default_factory=dict)  # id -> (value, episode)
    prompt_tokens: float | None = None  # mean per question over the same samples
    thread_seconds: tuple[float, bool] | None = None  # wall × threads pro-rated; a thread count assumed

    @property
    def short(self) -> bool:
        """Holds fewer of the suite's questions than it asks: shown, but never averaged or ranked."""
        return bool(self.expected and self.n < self.expected)

    @property
    def coverage(self) -> str:
        """`` [k/n]`` for a short cell, the mark the table and the figures share; empty otherwise."""
        return f" [{self.n}/{self.expected}]" if self.short else ""

    def text(self, bold: bool = False) -> str:
        if self.status != "complete":
            return self.status
        v = f"{100 * self.value:.2f}"
        if bold:
            v = f"**{v}**"
        se = f" ± {100 * self.stderr:.2f}" if self.stderr is not None and math.isfinite(self.stderr) else ""
        beside = f" ({100 * self.beside:.2f})" if self.beside is not None else ""
        return f"{v}{se}{beside}{' †' if self.subset else ''}{self.coverage}"


def registered_methods() -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))


@lru_cache(maxsize=None)
def default_protocol(method: str) -> str:
    """The protocol a method runs under with its registered config."""
    import importlib

    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "method" / f"{method}.yaml"))
    if cfg.get("protocol"):
        return str(cfg["protocol"])
    if cfg.get("use_context") is False:
        return "memory"
    module, _, name = str(cfg["_target_"]).rpartition(".")
    try:
        return str(getattr(getattr(importlib.import_module(module), name), "protocol", "context"))
    except (ImportError, AttributeError):
        return "context"


def row_order(method: str) -> tuple:
    groups = {BASELINE: 0, FLOOR: 99}
    if method.startswith("deltamem"):
        return (50, method)
    if method in ("context2lora", "memgen", "mlp_memory"):
        return (30, ("context2lora", "memgen", "mlp_memory").index(method))
    return (groups.get(method, 10), method)


def suite_questions(suite: dict[str, Any], task: str, seed: int = 42) -> set[str] | None:
    """The question ids of ``task`` in the suite (None: the task's data cannot be loaded here)."""
    ids = _task_questions(task, (suite.get("limits") or {}).get(task), seed)
    return None if ids is None else set(ids)


@lru_cache(maxsize=None)
def _task_questions(task: str, limit: int | None, seed: int) -> frozenset[str] | None:
    from omegaconf import OmegaConf

    from harness.errors import HarnessError
    from harness.runner import build

    path = ROOT / "conf" / "task" / f"{task}.yaml"
    if not path.is_file():
        return None
    cfg = OmegaConf.load(path)
    cfg.limit = limit
    try:
        return frozenset(q.id for e in build(cfg, "task").episodes(seed) for q in e.queries)
    except (HarnessError, OSError, ValueError):
        return None


def _stderr(values: Sequence[float], clusters: Sequence[str]) -> float:
    from harness.metrics import clustered_stderr

    return clustered_stderr(values, clusters)


def main_cell(cell, column: Column, wanted: set[str] | None, subset: bool = False) -> MainCell:
    """``cell`` (a report Cell with a complete record) restricted to the suite's questions; ``subset``: those are
    a subset of the task (or the data is a partial copy)."""
    samples = cell.record.samples() if cell.record is not None else {}
    metric = column.metric if any(column.metric in s.scores for s in samples.values()) else \
        cell.header.get("primary_metric")
    keep = [s for i, s in samples.items() if (wanted is None or i in wanted) and metric in s.scores]
    if not keep:
        return MainCell("no shared questions")
    values = [float(s.scores[metric]) for s in keep]
    clusters = [s.episode_id for s in keep]
    beside = None
    if column.beside:
        b = [float(s.scores[column.beside]) for s in keep if column.beside in s.scores]
        beside = sum(b) / len(b) if len(b) == len(keep) else None
    return MainCell("complete", sum(values) / len(values), _stderr(values, clusters), len(values),
                    len(wanted) if wanted else None, beside,
                    subset=subset or bool(cell.header.get("data", {}).get("subset")),
                    samples={s.sample_id: (v, c) for s, v, c in zip(keep, values, clusters)},
                    prompt_tokens=sum(s.prompt_tokens for s in keep) / len(keep),
                    thread_seconds=thread_seconds(cell.header, len(keep), len(samples)))


def thread_seconds(header: dict[str, Any], used: int, held: int) -> tuple[float, bool] | None:
    """Σ wall seconds × threads over a record's sessions, the share of ``used`` of its ``held`` samples (a record
    of the whole task behind a subset cell counts for the subset only), and whether a session's thread count had
    to be taken as 1 (records written before sessions recorded it)."""
    sessions = (header.get("timings") or {}).get("sessions") or []
    if not sessions or not held:
        return None
    total = sum(float(x.get("wall_s") or 0) * int(x.get("threads") or 1) for x in sessions)
    return total * used / held, any("threads" not in x for x in sessions)


def compute_note(rows: list[dict[str, Any]]) -> str | None:
    """The CPU time behind the filled cells (one figure per method × task: EM and F1 share a record)."""
    per_run: dict[tuple[str, str], tuple[float, bool] | None] = {}
    for r in rows:
        for col in COLUMNS:
            c = r["cells"][col.header]
            if c.status == "complete":
                per_run[(r["method"], col.task)] = c.thread_seconds
    if not per_run:
        return None
    known = [v for v in per_run.values() if v is not None]
    assumed = sum(1 for _, one in known if one)
    missing = len(per_run) - len(known)
    return (f"Compute: the {len(per_run)} runs behind the filled cells took {sum(v for v, _ in known) / 3600:,.1f} "
            "CPU thread-hours (wall time × threads of each session; pro-rated where a record holds more questions "
            "than the suite asks)"
            + (f"; {assumed} of them from sessions that did not record their threads, counted as one thread (a lower "
               "bound if they ran on more)" if assumed else "")
            + (f"; {missing} record(s) without timings not counted" if missing else "") + ".")


def _recipe(header: dict[str, Any]) -> bool:
    from harness.report import is_recipe_record

    return is_recipe_record(header)


def build_rows(cells: dict, backbone: str, suite: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Main rows of one backbone, and the reason a task's cells are empty where its data is missing here."""
    wanted = {c.task: suite_questions(suite, c.task) for c in COLUMNS}
    missing = {t: "data unavailable" for t, ids in wanted.items() if ids is None}
    rows = []
    for method in sorted(registered_methods(), key=row_order):
        protocol = default_protocol(method)
        row: dict[str, Any] = {"method": method, "protocol": protocol, "cells": {}}
        for col in COLUMNS:
            cell = cells.get((backbone, method, protocol, col.task))
            if col.task in (suite.get("skip") or {}).get(method, ()):
                row["cells"][col.header] = MainCell("–")
            elif cell is None:
                row["cells"][col.header] = MainCell(missing.get(col.task, "not run"))
            elif cell.status != "complete":
                row["cells"][col.header] = MainCell(cell.status)
            elif _recipe(cell.header):
                # recipe-built data under a benchmark's task name (the task refuses this; a hand-made record
                # could still carry it): never a benchmark score
                row["cells"][col.header] = MainCell("not benchmark data")
            else:
                row["cells"][col.header] = main_cell(cell, col, wanted[col.task],
                                                     subset=bool((suite.get("limits") or {}).get(col.task)))
        rows.append(row)
    return rows, missing


def averaged_columns(rows: list[dict[str, Any]]) -> list[Column]:
    """The averaged columns the baseline row has: rows with all of them get an average and a ratio, as in the
    paper, where only the methods run on every task have a Final avg."""
    base = next((r for r in rows if r["method"] == BASELINE), None)
    if base is None:
        return []
    return [c for c in COLUMNS if c.averaged and base["cells"][c.header].status == "complete"]


def ratio_with_interval(row: dict[str, Any], base: dict[str, Any], columns: list[Column], *, iters: int = 1000,
                        seed: int = 0) -> tuple[float, float, float] | None:
    """Mean over ``columns`` of the row divided by the baseline's, both on each task's shared questions, with a
    percentile interval from resampling each task's episodes (the same draw for both rows)."""
    import numpy as np

    parts = []
    for col in columns:
        a, b = row["cells"][col.header].samples, base["cells"][col.header].samples
        shared = sorted(set(a) & set(b))
        if not shared:
            return None
        episodes: dict[str, list[int]] = {}
        for k, i in enumerate(shared):
            episodes.setdefault(a[i][1], []).append(k)
        parts.append((np.array([a[i][0] for i in shared]), np.array([b[i][0] for i in shared]),
                      [np.array(v) for _, v in sorted(episodes.items())]))
    point = sum(x.mean() for x, _, _ in parts) / sum(y.mean() for _, y, _ in parts)
    rng = random.Random(seed)
    stats = []
    for _ in range(iters):
        num = den = 0.0
        for x, y, groups in parts:
            if len(groups) > 1:
                idx = np.concatenate([groups[rng.randrange(len(groups))] for _ in groups])
            else:  # one episode (IFEval, GPQA): resample the questions
                idx = np.array([rng.randrange(len(x)) for _ in range(len(x))])
            num += x[idx].mean()
            den += y[idx].mean()
        stats.append(num / den if den else float("nan"))
    stats.sort()
    return point, stats[int(0.025 * iters)], stats[min(iters - 1, int(0.975 * iters))]


def summarise_rows(rows: list[dict[str, Any]]) -> list[Column]:
    """Fill each row's average and ratio (in place); returns the averaged columns."""
    cols = averaged_columns(rows)
    base = next((r for r in rows if r["method"] == BASELINE), None)
    for r in rows:
        # a cell on only part of the suite's questions would average other questions than vanilla's
        done = [r["cells"][c.header] for c in cols
                if r["cells"][c.header].status == "complete" and not r["cells"][c.header].short]
        r["average"] = sum(c.value for c in done) / len(done) if cols and len(done) == len(cols) else None
        r["ratio"] = ratio_with_interval(r, base, cols) if base is not None and r["average"] is not None else None
    return cols


def best_values(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The best value of each column among the rows that are methods (the question-only floor and cells on part of
    the suite's questions excluded)."""
    best: dict[str, float] = {}
    for r in rows:
        if r["method"] == FLOOR:
            continue
        for h, c in r["cells"].items():
            if c.status == "complete" and not c.short and c.value is not None and c.value > best.get(h, -1.0):
                best[h] = c.value
    return best


def table_lines(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    best = best_values(rows)
    header = ["method", "protocol", *(c.header for c in COLUMNS), "average", "× vanilla [95% CI]"]
    body = []
    for r in rows:
        cells = [r["cells"][c.header].text(bold=r["method"] != FLOOR and not r["cells"][c.header].short
                                           and r["cells"][c.header].value == best.get(c.header))
                 for c in COLUMNS]
        avg = "–" if r.get("average") is None else f"{100 * r['average']:.2f}"
        ratio = "–" if not r.get("ratio") else f"{r['ratio'][0]:.2f}× [{r['ratio'][1]:.2f}, {r['ratio'][2]:.2f}]"
        name = f"{r['method']} (question only)" if r["method"] == FLOOR else r["method"]
        body.append([name, r["protocol"], *cells, avg, ratio])
    return header, body


def footnotes(cols: list[Column], suite: dict[str, Any], stand_ins: list[str], missing: dict[str, str]) -> list[str]:
    limits = suite.get("limits") or {}
    out = [f"Average and × vanilla over {', '.join(c.header for c in cols) or 'nothing (no vanilla row)'}: the "
           "averaged columns vanilla has (the paper's Final avg averages IFEval, HotpotQA EM, GPQA-D, MAB and "
           "LoCoMo), for the rows that have all of them on all the suite's questions; × vanilla is the row's mean "
           "over those columns divided by vanilla's on the same questions, with a 95 % interval resampling each "
           "task's episodes.",
           "Questions: " + "; ".join(f"{t} {'all' if not limits.get(t) else f'{limits[t]} (fixed subset)'}"
                                     for t in dict.fromkeys(c.task for c in COLUMNS)) +
           ". † a subset of the task or a partial copy of its data (HotpotQA here: 1,354 of 7,405 dev questions); "
           "[k/n] a record holding only k of the suite's n questions (shown, never averaged or bold). – not "
           "applicable (the text baselines do not run on the context-free tasks; MemoryBank not on HotpotQA, as in "
           "the paper's Table 3). Best value per column in bold (the question-only floor excluded).",
           *[NOTES[t] + "." for t in dict.fromkeys(c.task for c in COLUMNS) if t in NOTES]]
    out += [f"`{t}`: {why} here (see its task README)." for t, why in sorted(missing.items())]
    return out + stand_ins


def to_latex(header: list[str], body: list[list[str]], notes: list[str]) -> str:
    """A booktabs table body from pandas' Styler (``\\usepackage{booktabs}``), footnotes as a comment block."""
    import pandas as pd

    clean = [[c.replace("**", "").replace("×", r"$\times$").replace("±", r"$\pm$").replace("†", r"$^\dagger$")
              .replace("_", r"\_").replace("%", r"\%") for c in row] for row in body]
    bold = [[c.startswith("**") for c in row] for row in body]
    frame = pd.DataFrame(clean, columns=[h.replace("×", r"$\times$").replace("%", r"\%") for h in header])

    def style(data):
        return pd.DataFrame([["font-weight: bold" if b else "" for b in row] for row in bold],
                            index=data.index, columns=data.columns)

    styler = frame.style.hide(axis="index").apply(style, axis=None)
    tex = styler.to_latex(hrules=True, convert_css=True, column_format="l" * len(header))
    comments = "".join(f"% {n}\n" for n in notes)
    return comments + tex

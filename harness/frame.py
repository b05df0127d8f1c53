"""Run records as one pandas DataFrame: a row per sample, the run's identity beside it.

    from harness.frame import load_frame
    df = load_frame("results", task="locomo")
    df[df.run.isin(["vanilla [context]", "bm25_rag [memory]"])].pivot_table(
        index="category", columns="run", values="score")

Columns: the run's identity (``task``, ``method`` as the reports label it, ``method_name`` as configured,
``protocol``, ``control``, ``backbone``, ``seed``, ``config_hash``, ``status``, ``subset``, ``record``, and
``run``, a short name unique among the loaded records), the sample (``sample_id``, ``episode_id``,
``category``, ``question``, ``gold``, ``prediction``, ``extracted``, ``extracted.<rule>``), every per-sample
score as ``score.<metric>`` plus ``score`` (the task's primary metric) and ``correct`` (``score`` ≥ 0.5, so
exact for 0/1 metrics and "at least half right" for F1), the token counts and latency, and what the method
put into the prompt (``retrieved``, ``in_prompt_ids``, ``compression_ratio``, ``tokens_written`` for δ-mem's
write length, ``context_truncated``, ``memory_bytes``, ``stopped``).

Only the records are read: GPQA records hold no question text, so neither does the frame. A damaged record is
skipped with a message on stderr, so one bad folder does not hide all the others.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from harness.records import RecordError, RunRecord, iter_records
from harness.report import _is_subset, method_label  # the reports' own rules, so both agree
from harness.types import SampleRecord

CORRECT_AT = 0.5


@dataclass
class Run:
    """One readable record: its header, its samples by id and the identity columns every row repeats."""

    record: RunRecord
    header: dict[str, Any]
    samples: dict[str, SampleRecord]
    identity: dict[str, Any]


def find_records(results_dir: str | Path = "results", task: str | None = None) -> list[RunRecord]:
    """Every record under ``results_dir`` (``<task>/<method>/<backbone>/seed-*``), of one task when given."""
    root = Path(results_dir)
    return list(iter_records(root / task if task else root))


def load_runs(records: Iterable[str | Path | RunRecord]) -> list[Run]:
    """The records that can be read; each one that cannot is named on stderr and left out."""
    runs: list[Run] = []
    for item in records:
        rec = item if isinstance(item, RunRecord) else RunRecord(item)
        try:
            header = rec.header()
            if header is None:
                raise RecordError(f"{rec.header_path}: no header (not a run record folder)")
            samples = rec.samples()
            identity = {
                "task": header.get("task"), "method": method_label(header), "method_name": header.get("method"),
                "protocol": header.get("protocol") or "", "control": header.get("config", {}).get("control") or "",
                "backbone": header.get("backbone"), "seed": header.get("seed"),
                "config_hash": header.get("config_hash"), "status": header.get("status"),
                "subset": _is_subset(header), "record": str(rec.path),
            }
        except (RecordError, AttributeError, TypeError, ValueError) as exc:
            # AttributeError/TypeError: a header that is JSON but not shaped like one
            print(f"[frame] skipped unreadable record {rec.path}: {exc}", file=sys.stderr)
            continue
        runs.append(Run(rec, header, samples, identity))
    _name_runs(runs)
    return runs


def _name_runs(runs: list[Run]) -> None:
    """``run``: "<method> [<protocol>]" (with † for a subset), and the config hash only where that name is
    taken twice within a task, so the common case reads well and no two records of a task share a name."""
    def base(r: Run) -> tuple[Any, str]:
        i = r.identity
        name = f"{i['method']} [{i['protocol']}]" if i["protocol"] else str(i["method"])
        return i["task"], name + (" †" if i["subset"] else "")

    counts: dict[tuple[Any, str], int] = {}
    for r in runs:
        counts[base(r)] = counts.get(base(r), 0) + 1
    for r in runs:
        key = base(r)
        r.identity["run"] = key[1] if counts[key] == 1 else f"{key[1]} #{r.identity['config_hash']}"


def gold_text(gold: Any) -> str | None:
    # gold is a string, a number or a structure (IFEval's instruction list): one type, so every export format holds it
    if gold is None or isinstance(gold, str):
        return gold
    return json.dumps(gold, ensure_ascii=False, sort_keys=True)


def prompt_fields(info: dict[str, Any]) -> dict[str, Any]:
    """The method_info facts worth a column: what went into the prompt, or into the memory instead."""
    ingest = info.get("ingest") if isinstance(info.get("ingest"), dict) else {}
    ids = info.get("in_prompt_ids", info.get("retrieved_ids"))
    ratio = info.get("compression_ratio", ingest.get("compression_ratio"))
    return {
        "retrieved": len(ids) if isinstance(ids, list) else None,
        "in_prompt_ids": ", ".join(map(str, ids)) if isinstance(ids, list) else None,
        "compression_ratio": float(ratio) if isinstance(ratio, (int, float)) else None,
        "tokens_written": ingest.get("tokens_written"),
        "context_truncated": ingest.get("context_truncated"),
        "memory_bytes": info.get("memory_bytes"),
        "stopped": info.get("stopped"),
    }


def sample_row(run: Run, s: SampleRecord) -> dict[str, Any]:
    primary = run.header.get("primary_metric")
    score = s.scores.get(primary) if primary else None
    row: dict[str, Any] = {
        **run.identity,
        "sample_id": s.sample_id, "episode_id": s.episode_id, "category": s.category,
        "question": s.question, "gold": gold_text(s.gold), "prediction": s.prediction, "extracted": s.extracted,
        "primary_metric": primary, "score": score,
        "correct": None if score is None else score >= CORRECT_AT,
        "prompt_tokens": s.prompt_tokens, "context_tokens": s.context_tokens, "new_tokens": s.new_tokens,
        "latency_s": s.latency_s,
    }
    row.update({f"extracted.{rule}": v for rule, v in (s.extracted_by or {}).items()})
    row.update({f"score.{m}": v for m, v in s.scores.items()})
    row.update(prompt_fields(s.method_info or {}))
    return row


def runs_frame(runs: list[Run]):
    import pandas as pd

    rows = [sample_row(r, s) for r in runs for s in r.samples.values()]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    # identity, sample, scores, then the rest: the order a reader scans a row in
    first = [*runs[0].identity, "sample_id", "episode_id", "category", "question", "gold", "prediction",
             "extracted", "primary_metric", "score", "correct"]
    extracted = sorted(c for c in df.columns if c.startswith("extracted."))
    scores = sorted(c for c in df.columns if c.startswith("score."))
    rest = [c for c in df.columns if c not in {*first, *extracted, *scores}]
    return df[[*first, *extracted, *scores, *rest]]


def load_frame(results_dir: str | Path = "results", task: str | None = None,
               records: Iterable[str | Path] | None = None):
    """One DataFrame of the given record folders, or of every record under ``results_dir`` (of ``task``)."""
    chosen = list(records) if records else find_records(results_dir, task)
    return runs_frame([r for r in load_runs(chosen) if task is None or r.identity["task"] == task])

"""``python -m harness.rescore``: recompute the scores of finished records from their predictions.

A scorer that changes (a new rule, a fixed normaliser) must not force a rerun of the model: every
record keeps each sample's prediction, so its scores and aggregate metrics can be recomputed from
``samples.jsonl`` against the task's data. The task's recording rules are applied again as well
(:meth:`tasks.base.Task.withhold`), so a rescored GPQA record holds no echoed question text.

The runner calls :func:`rescore_record` by itself when it finds a record scored by an older
``scorer_version`` of its task, before skipping or resuming it; the command does the same for every
record it is given::

    python -m harness.rescore                       # every record under results/ whose scorer is older
    python -m harness.rescore --task hotpotqa --all # every HotpotQA record, whatever its version
    python -m harness.rescore results/gpqa_diamond/vanilla/smollm2_135m/seed-42-571fb65a98
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from harness.errors import HarnessError
from harness.records import RecordError, RecordLock, RunRecord, data_digest, git_revision, iter_records
from harness.types import Query, SampleRecord


def rescore_record(record: RunRecord, task, queries: dict[str, Query], *,
                   config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Rescore ``record`` with ``task`` (whose data gives ``queries`` by id) in place; returns what changed.

    ``config``: the record's semantic config to store, when rescoring with a task option the record did not
    name (a scoring setting added later). The caller holds the record's lock."""
    header = record.header()
    if header is None:
        raise RecordError(f"{record.path}: no header.json (not a run record folder)")
    samples = list(record.samples().values())
    unknown = [s.sample_id for s in samples if s.sample_id not in queries]
    if unknown:
        raise RecordError(f"{record.path}: {len(unknown)} samples are not questions of the data the task reads "
                          f"(e.g. {unknown[:3]}); it was made from other data")
    scores = task.score_batch([queries[s.sample_id] for s in samples], [s.prediction for s in samples])
    changed: dict[str, int] = {}
    new = []
    for s, sc in zip(samples, scores):
        for key in set(s.scores) & set(sc.values):
            if s.scores[key] != sc.values[key]:
                changed[key] = changed.get(key, 0) + 1
        new.append(dataclasses.replace(s, scores=sc.values, extracted=sc.extracted, extracted_by=sc.extracted_by,
                                       prediction=task.withhold(s.prediction), method_info=task.withhold(s.method_info)))
    withheld = sum(a.prediction != b.prediction for a, b in zip(samples, new))
    record.replace_samples(new)
    before = header.get("metrics", {}).get("overall", {})
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "from_version": header.get("scorer_version", 1),
             "to_version": task.scorer_version, "git": git_revision(), "samples": len(new),
             "changed": dict(sorted(changed.items())),
             "added": sorted({k for sc in scores for k in sc.values} - {k for s in samples for k in s.scores}),
             "dropped": sorted({k for s in samples for k in s.scores} - {k for sc in scores for k in sc.values}),
             "predictions_withheld": withheld}
    if header.get("status") == "complete":
        header["metrics"] = task.aggregate(new)
        header["primary_metric"] = task.primary_metric
        entry["primary_before"] = before.get(header["primary_metric"], {}).get("mean")
        entry["primary_after"] = header["metrics"]["overall"].get(header["primary_metric"], {}).get("mean")
    if config is not None:
        header["config"] = config
    if "task_info" in header:
        header["task_info"] = task.describe()
    if "error" in header:
        header["error"] = task.withhold(header["error"])
    header["scorer_version"] = task.scorer_version
    header["rescored"] = [*header.get("rescored", []), entry]
    header.pop("format_version", None)
    record.write_header(header)
    return entry


def task_for_record(header: dict[str, Any]):
    """The record's task as it was configured (options added since take their defaults), and its queries."""
    from omegaconf import OmegaConf

    from harness.runner import build

    task = build(OmegaConf.create(header["config"]["task"]), "task")
    episodes = task.episodes(int(header["seed"]))
    queries = {q.id: q for e in episodes for q in e.queries}
    digest = data_digest(task.data_fingerprint())
    recorded = data_digest(header.get("data"))
    if digest and recorded and digest != recorded:
        raise RecordError(f"the record was made from other data than the task reads now (data digest "
                          f"{recorded[:12]} vs {digest[:12]}; fingerprints: {header.get('data')} vs "
                          f"{task.data_fingerprint()})")
    return task, queries


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Recompute the scores of run records from their predictions "
                                             "(no model is run).")
    ap.add_argument("records", nargs="*", help="record folders (default: every record under --results)")
    ap.add_argument("--results", default="results", help="folder of records (default: results)")
    ap.add_argument("--task", help="only records of this task")
    ap.add_argument("--all", action="store_true", help="rescore even records scored by the current scorer version")
    args = ap.parse_args(argv)
    if args.records:
        records = [RunRecord(p) for p in args.records]
    else:
        if not Path(args.results).is_dir():
            print(f"error: --results {args.results}: no such folder", file=sys.stderr)
            return 2
        records = list(iter_records(args.results))
    done = 0
    for record in records:
        try:
            header = record.header()
            if header is None:
                raise RecordError(f"{record.path}: no header.json (not a run record folder)")
            if args.task and header.get("task") != args.task:
                continue
            task, queries = task_for_record(header)
            if not args.all and header.get("scorer_version", 1) == task.scorer_version:
                continue
            config = header["config"]
            if "scoring" in task.describe() and "scoring" not in config["task"]:
                config["task"]["scoring"] = task.describe()["scoring"]
            with RecordLock(record.path):
                entry = rescore_record(record, task, queries, config=config)
        except (HarnessError, ValueError) as exc:
            print(f"error: {record.path}: {exc}", file=sys.stderr)
            return 2
        done += 1
        primary = ""
        if "primary_after" in entry:
            b, a = entry["primary_before"], entry["primary_after"]
            primary = f"; primary {b if b is None else round(100 * b, 2)} -> {round(100 * a, 2)}"
        print(f"[rescore] {record.path}: {entry['samples']} samples, changed {entry['changed'] or 'nothing'}, "
              f"added {entry['added'] or 'nothing'}, {entry['predictions_withheld']} predictions withheld{primary}")
    print(f"[rescore] {done} records rescored")
    return 0


if __name__ == "__main__":
    sys.exit(main())

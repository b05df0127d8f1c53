"""One run: compose -> record path -> skip/resume -> episodes -> ingest once -> answer in batches."""
from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from harness.adapters import resolve_adapter
from harness.backbone import Backbone, load_backbone, resolve_device
from harness.controls import apply_control
from harness.errors import ConfigError, HarnessError
from harness.records import (RecordError, RecordLock, RunRecord, config_hash, data_digest, git_revision,
                             package_versions, record_dir)
from harness.rescore import rescore_record
from harness.sharding import assign, merge, world_position, write_rank_header
from harness.types import SampleRecord

# Keys that change where/how a run is displayed but never what it computes (a suite only sets task.limit,
# which is in the hash itself, so a suite's record is the record of the same settings given by hand).
_NON_SEMANTIC = ("run", "suite")
# Settings added after records were made, at the value those records hold (for GPQA's scoring: after the
# runner has rescored them, which it does before using an older record): at that value they are left out of
# the hash, so the older records keep it and still resume or skip. (group, key) -> (only for this task, value)
_ADDED_AT_DEFAULT = {("method", "write_generated"): (None, True), ("task", "scoring"): ("gpqa_diamond", "strict")}


class RunInterrupted(HarnessError):
    """SIGINT or SIGTERM stopped a run; its record is ``interrupted`` and the same command resumes it."""


@dataclass
class RunOutcome:
    path: Path | None
    status: str  # complete | skipped | not applicable (a suite leaves the pair out) | shard done | incomplete
    metrics: dict[str, Any]
    header: dict[str, Any] | None = None


def apply_suite(cfg: DictConfig) -> str | None:
    """A suite's settings for this method × task (``+suite=paper``): its question limit (unless task.limit was
    given), or why the pair is not run."""
    from omegaconf import open_dict

    suite = cfg.get("suite")
    if not suite:
        return None
    method, task = str(cfg.method.name), str(cfg.task.name)
    if task in ((suite.get("skip") or {}).get(method) or ()):
        return f"suite {suite.get('name')}: {method} does not run on {task}"
    limit = (suite.get("limits") or {}).get(task)
    if limit is not None and cfg.task.get("limit") is None:
        with open_dict(cfg):
            cfg.task.limit = int(limit)
            cfg.suite.limited = True  # the suite, not the user, cut the task: a complete full record covers it
    return None


def covering_record(cfg: DictConfig, names: dict[str, str], seed: int, semantic: dict[str, Any],
                    digest: str | None) -> RunRecord | None:
    """A complete record of the same settings on the whole task (any batch size), when a suite asks for a subset
    of it: the report reads the subset's questions from it, so running the subset again would only repeat
    answers."""
    if not (cfg.get("suite") or {}).get("limited"):
        return None

    def comparable(config: dict[str, Any]) -> dict[str, Any]:
        config = without_added_defaults(json.loads(json.dumps(config, default=str)))
        config.get("task", {}).pop("limit", None)
        config.get("method", {}).pop("batch_size", None)
        return config

    want = comparable(semantic)
    folder = record_dir(cfg.run.results_dir, seed=seed, chash="x", **names).parent
    for path in sorted(folder.glob(f"seed-{seed}-*/header.json")):
        try:
            header = RunRecord(path.parent).header() or {}
        except RecordError:
            continue
        if (header.get("status") == "complete" and header.get("config", {}).get("task", {}).get("limit") is None
                and data_digest(header.get("data")) == digest and comparable(header.get("config", {})) == want):
            return RunRecord(path.parent)
    return None


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NON_SEMANTIC:
        data.pop(key, None)
    if data.get("control") is None:  # absent and null are one setting: older records keep their hash
        data.pop("control", None)
    return without_added_defaults(data)


def without_added_defaults(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without the settings added after records were made, where they hold those records' value."""
    task_name = (data.get("task") or {}).get("name")
    for (group, key), (only_task, value) in _ADDED_AT_DEFAULT.items():
        if only_task not in (None, task_name):
            continue
        if isinstance(data.get(group), dict) and key in data[group] and data[group][key] == value:
            del data[group][key]
    return data


def check_run_settings(cfg: DictConfig) -> None:
    """Refuse settings that would otherwise be truncated or fail deep inside torch."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    threads = cfg.run.get("threads")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads <= 0):
        raise ConfigError(f"run.threads must be a positive integer or null (torch's default), got {threads!r}")
    resolve_device(str(cfg.backbone.get("device", "auto")))  # before the data is read and a record is made


def find_record(results_dir: str, names: dict[str, str], seed: int, semantic: dict[str, Any],
                digest: str | None) -> tuple[RunRecord, str]:
    """The record of this config and this data, and its hash.

    The content digest of the data is part of the hash, so data read through another path or variable
    with other bytes is another record. Records made before that keep their data-free hash; one of them is
    this run's record only if the data it recorded has the same digest."""
    legacy_hash = config_hash(semantic)
    if digest is None:
        return RunRecord(record_dir(results_dir, seed=seed, chash=legacy_hash, **names)), legacy_hash
    chash = config_hash({**semantic, "data_sha256": digest})
    current = RunRecord(record_dir(results_dir, seed=seed, chash=chash, **names))
    legacy = RunRecord(record_dir(results_dir, seed=seed, chash=legacy_hash, **names))
    if not current.header_path.exists() and legacy.header_path.exists():
        try:
            made_from = data_digest((legacy.header() or {}).get("data"))
        except RecordError:
            made_from = None
        if made_from == digest:
            return legacy, legacy_hash
    return current, chash


@contextmanager
def _sigterm_interrupts():
    """SIGTERM (a scheduler's stop, ``kill``) ends a run the way Ctrl-C does, so it is recorded as interrupted."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="q", disable=not enabled, dynamic_ncols=True,
                file=sys.stderr)


def build(node: DictConfig, group: str):
    """Instantiate a config group's object; a constructor's complaint becomes a one-line error."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    try:
        return instantiate(node, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"{group}={node.get('name')}: {cause}") from exc


def run_experiment(cfg: DictConfig, *, load: Callable[[Any], Backbone] = load_backbone) -> RunOutcome:
    check_run_settings(cfg)
    not_run = apply_suite(cfg)
    if not_run:
        print(f"[harness] {not_run}; nothing to do", file=sys.stderr)
        return RunOutcome(None, "not applicable", {})
    seed = int(cfg.seed)
    if cfg.run.get("threads"):
        torch.set_num_threads(int(cfg.run.threads))
    task = build(cfg.task, "task")
    problem = task.runner_problem(str(cfg.method.get("_target_", "")))
    if problem:
        raise ConfigError(problem)
    control = cfg.get("control")
    episodes = apply_control(control, task.episodes(seed), history_keys=task.history_keys, task=str(cfg.task.name))
    names = {"task": str(cfg.task.name), "method": str(cfg.method.name), "backbone": str(cfg.backbone.name)}
    adapter = resolve_adapter(cfg)
    semantic = semantic_config(cfg)
    if adapter:  # the record is tied to these weights, wherever the clone lives
        semantic["method"].update(adapter)
    # built before any record or model: a bad method setting fails here and leaves nothing behind
    method = build(cfg.method, "method")
    fingerprint = task.data_fingerprint()
    digest = data_digest(fingerprint)
    record, chash = find_record(cfg.run.results_dir, names, seed, semantic, digest)
    full = None if record.header_path.exists() else covering_record(cfg, names, seed, semantic, digest)
    if full is not None:
        print(f"[harness] skip: the suite's {cfg.task.limit} questions are in the complete record {full.path}",
              file=sys.stderr)
        return RunOutcome(full.path, "skipped", (full.header() or {}).get("metrics", {}))
    rank, world, local_rank = world_position()
    if world > 1 and str(cfg.backbone.get("device", "auto")) == "auto" and torch.cuda.is_available():
        from omegaconf import open_dict

        with open_dict(cfg):  # one GPU per process, as the launcher numbered them (display only: not in the hash)
            cfg.backbone.device = f"cuda:{local_rank % torch.cuda.device_count()}"
    if world == 1:
        with RecordLock(record.path), _sigterm_interrupts():
            return _run_locked(cfg, load, task, method, episodes, names, seed, control, semantic, fingerprint, digest,
                               record, chash)
    if cfg.run.get("force", False):
        raise ConfigError("run.force=true with several processes: set the old record aside with one process first "
                          "(or move it away), then launch the processes")
    with RecordLock(record.path, shared=True), RecordLock(record.path, name=f".lock.rank-{rank}"), \
            _sigterm_interrupts():
        outcome = _run_locked(cfg, load, task, method, episodes, names, seed, control, semantic, fingerprint, digest,
                              record, chash, shard=(rank, world))
    if outcome.status != "shard done":
        return outcome
    # the shared lock is given back: the last rank still here merges the shards into the record
    state = merge(record, [q.id for e in episodes for q in e.queries], task.aggregate,
                  {**outcome.header, "status": "running", "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
    print(f"[harness] rank {rank}/{world}: {state}" + {"busy": " (another rank is still running and merges)",
                                                       "incomplete": " (a rank stopped early; rerun to resume)"}
          .get(state, ""), file=sys.stderr)
    header = record.header() or {}
    return RunOutcome(record.path, state if state != "busy" else "shard done", header.get("metrics", {}))


def _run_locked(cfg, load, task, method, episodes, names, seed, control, semantic, fingerprint, digest,
                record: RunRecord, chash: str, shard: tuple[int, int] | None = None) -> RunOutcome:
    force = bool(cfg.run.get("force", False))
    try:
        previous = record.header()
    except RecordError:
        if not force:
            raise
        previous = None
    if force and (record.header_path.exists() or record.samples_path.exists()):
        aside = record.set_aside()
        print(f"[harness] run.force: the old record is kept in {aside}; starting afresh", file=sys.stderr)
        previous = None
    made_from = data_digest((previous or {}).get("data"))
    if digest and made_from and made_from != digest:
        raise RecordError(f"{record.path} was made from other data (digest {made_from[:12]}, "
                          f"{previous.get('data')}) than this run reads (digest {digest[:12]}, {fingerprint}); "
                          "move the record away or rerun with run.force=true")
    expected = [q.id for e in episodes for q in e.queries]
    if previous and previous.get("scorer_version", 1) != task.scorer_version and record.samples_path.exists():
        if shard is not None:
            raise RecordError(f"{record.path} was scored by an older scorer: rescore it first with one process "
                              f"(python -m harness.rescore {record.path})")
        queries = {q.id: q for e in episodes for q in e.queries}
        entry = rescore_record(record, task, queries, config=semantic)
        print(f"[harness] rescored {record.path} from scorer version {entry['from_version']} to "
              f"{entry['to_version']} ({entry['samples']} samples, no model run)", file=sys.stderr)
        previous = record.header()
    if previous and previous.get("status") == "complete":
        print(f"[harness] skip: {record.path} is complete (a committed or earlier run of these settings); "
              "recompute it with run.force=true, or run into a folder of your own with run.results_dir=DIR",
              file=sys.stderr)
        return RunOutcome(record.path, "skipped", previous.get("metrics", {}))

    done = record.all_samples(own_shard=shard[0]) if shard else record.samples(repair=True)
    resumed_from = len(done)
    stale = set(done) - set(expected)
    if stale:
        # Same config hash but other ids: the data changed under the record. Refuse to mix.
        raise RecordError(f"{record.path}: {len(stale)} finished samples are not in the current data "
                          f"(e.g. {sorted(stale)[:3]}); move the record away or rerun with run.force=true")
    if done:
        print(f"[harness] resuming {record.path} at {len(done)}/{len(expected)}", file=sys.stderr)
    if shard is not None:  # this rank's episodes; the others' are another process's
        episodes = assign(episodes, shard[1])[shard[0]]
    # a rank keeps its timings in its own header; the merge puts them together
    write_header = record.write_header if shard is None else \
        (lambda h: write_rank_header(record, shard[0], {"format_version": 1, **h}))
    previous = previous or {}
    sessions = list(previous.get("timings", {}).get("sessions", []))
    # This session's timings live in the header from the start and are refreshed while the
    # run goes, so a run that is killed still leaves an honest account of its time.
    # threads: the compute a session's wall time stands for (reports sum CPU thread-hours from it)
    session: dict[str, Any] = {"wall_s": 0.0, "samples": 0, "threads": torch.get_num_threads()}
    sessions.append(session)
    header: dict[str, Any] = {
        "status": "running",
        **names,
        "seed": seed,
        "config_hash": chash,
        "protocol": None,
        "control": control,
        "config": semantic,
        "versions": package_versions(),
        "git": git_revision(),
        "data": fingerprint,
        "scorer_version": task.scorer_version,
        "n_samples_expected": len(expected),
        "timings": {"sessions": sessions},
        "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
    }
    if previous.get("rescored"):
        header["rescored"] = previous["rescored"]
    if shard is not None:
        header["shard"] = {"rank": shard[0], "world_size": shard[1]}
        if shard[0] == 0 and not previous:  # a header for reports while the ranks run
            record.write_header({**header, "timings": {"sessions": list(previous.get("timings", {})
                                                                        .get("sessions", []))}})
        sessions[:] = [session]  # the rank header holds this session; the merge adds the record's earlier ones
    write_header(header)
    started = time.time()
    try:
        seed_everything(seed)
        backbone = load(cfg.backbone)
        load_s = time.time() - started
        method.setup(backbone, task, seed=seed)
        header["protocol"] = method.protocol
        header["method"] = names["method"]
        header["method_info"] = method.describe()
        header["task_info"] = task.describe()
        header["backbone_info"] = backbone.describe()
        write_header(header)
        bar = _progress(len(expected), len(done), f"{names['task']}/{names['method']}", bool(cfg.run.progress))
        ingest_s = answer_s = 0.0
        last_saved = time.time()
        for n_ep, episode in enumerate(episodes, 1):
            bar.set_postfix_str(f"episode {n_ep}/{len(episodes)} {episode.id}")
            pending = [q for q in episode.queries if q.id not in done]
            if not pending:
                continue
            t0 = time.time()
            ingest_info = method.ingest(episode)
            ingest_s += time.time() - t0
            for start in range(0, len(pending), method.batch_size):
                batch = pending[start:start + method.batch_size]
                t1 = time.time()
                predictions = method.answer(episode, batch)
                per_q = (time.time() - t1) / len(batch)
                answer_s += time.time() - t1
                scores = task.score_batch(batch, [p.text for p in predictions])
                rows = []
                for q, pred, score in zip(batch, predictions, scores):
                    # scored on the model's own words; written as the task allows (GPQA withholds its text)
                    rows.append(SampleRecord(
                        sample_id=q.id, episode_id=episode.id, category=q.category,
                        question=q.question if task.record_questions else None,
                        gold=q.gold if task.record_questions else task.public_gold(q),
                        prediction=task.withhold(pred.text), extracted=score.extracted, scores=score.values,
                        prompt_tokens=pred.prompt_tokens, new_tokens=pred.new_tokens,
                        context_tokens=pred.context_tokens, latency_s=round(per_q, 4),
                        method_info=task.withhold({**pred.info, **({"ingest": ingest_info} if ingest_info else {})}),
                        extracted_by=score.extracted_by))
                record.append(rows)
                done.update({r.sample_id: r for r in rows})
                bar.update(len(rows))
                if time.time() - last_saved > 30:
                    session.update(wall_s=round(time.time() - started, 2), samples=len(done) - resumed_from)
                    write_header(header)
                    last_saved = time.time()
        bar.close()
        method.close()
        if shard is not None:
            session.update(wall_s=round(time.time() - started, 2), load_s=round(load_s, 2),
                           ingest_s=round(ingest_s, 2), answer_s=round(answer_s, 2), samples=len(done) - resumed_from)
            header["status"] = "shard done"
            write_header(header)
            return RunOutcome(record.path, "shard done", {}, header={k: v for k, v in header.items()
                                                                     if k not in ("shard", "status")})
        ordered = [done[i] for i in expected]
        header["metrics"] = task.aggregate(ordered)
        header["primary_metric"] = task.primary_metric
        session.update(wall_s=round(time.time() - started, 2), load_s=round(load_s, 2), ingest_s=round(ingest_s, 2),
                       answer_s=round(answer_s, 2), samples=len(done) - resumed_from)
        header["timings"] = {"sessions": sessions, "wall_s_total": round(sum(s["wall_s"] for s in sessions), 2)}
        header["status"] = "complete"
        header["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_header(header)
        return RunOutcome(record.path, "complete", header["metrics"])
    except KeyboardInterrupt:
        session.update(wall_s=round(time.time() - started, 2), samples=len(done) - resumed_from)
        header["status"] = "interrupted"
        write_header(header)
        raise RunInterrupted(f"interrupted: {record.path} holds {len(done)}/{len(expected)} samples; rerun the same "
                             "command to resume") from None
    except BaseException as exc:
        error = task.withhold(f"{type(exc).__name__}: {exc}")
        session.update(wall_s=round(time.time() - started, 2), samples=len(done) - resumed_from, error=error)
        header["status"] = "failed"
        header["error"] = task.withhold("".join(traceback.format_exception_only(type(exc), exc)).strip())
        write_header(header)
        raise

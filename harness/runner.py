"""One run: compose -> record path -> skip/resume -> episodes -> ingest once -> answer in batches."""
from __future__ import annotations

import random
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from harness.adapters import resolve_adapter
from harness.backbone import Backbone, load_backbone
from harness.controls import apply_control
from harness.errors import ConfigError
from harness.records import RunRecord, config_hash, git_revision, package_versions, record_dir
from harness.types import SampleRecord

# Keys that change where/how a run is displayed but never what it computes.
_NON_SEMANTIC = ("run",)
# Settings added after records were made, at the value those records ran with: at that value they are
# left out of the hash, so the older records keep it and still resume or skip.
_ADDED_AT_DEFAULT = {("method", "write_generated"): True}


@dataclass
class RunOutcome:
    path: Path
    status: str  # "complete" | "skipped"
    metrics: dict[str, Any]


def semantic_config(cfg: DictConfig) -> dict[str, Any]:
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in _NON_SEMANTIC:
        data.pop(key, None)
    if data.get("control") is None:  # absent and null are one setting: older records keep their hash
        data.pop("control", None)
    for (group, key), value in _ADDED_AT_DEFAULT.items():
        if isinstance(data.get(group), dict) and key in data[group] and data[group][key] == value:
            del data[group][key]
    return data


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
    chash = config_hash(semantic)
    record = RunRecord(record_dir(cfg.run.results_dir, seed=seed, chash=chash, **names))
    if record.is_complete() and not cfg.run.get("force", False):
        print(f"[harness] skip: {record.path} is complete", file=sys.stderr)
        return RunOutcome(record.path, "skipped", record.header().get("metrics", {}))

    done = record.samples(repair=True)
    resumed_from = len(done)
    expected = [q.id for e in episodes for q in e.queries]
    stale = set(done) - set(expected)
    if stale:
        # Same config hash but other ids: the data changed under the record. Refuse to mix.
        raise RuntimeError(f"{record.path}: {len(stale)} finished samples are not in the current data "
                           f"(e.g. {sorted(stale)[:3]}); move the record away to rerun")
    previous = record.header() or {}
    sessions = list(previous.get("timings", {}).get("sessions", []))
    # This session's timings live in the header from the start and are refreshed while the
    # run goes, so a run that is killed still leaves an honest account of its time.
    session: dict[str, Any] = {"wall_s": 0.0, "samples": 0}
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
        "data": task.data_fingerprint(),
        "n_samples_expected": len(expected),
        "timings": {"sessions": sessions},
        "created": previous.get("created", time.strftime("%Y-%m-%dT%H:%M:%S")),
    }
    record.write_header(header)
    started = time.time()
    try:
        seed_everything(seed)
        backbone = load(cfg.backbone)
        load_s = time.time() - started
        method = build(cfg.method, "method")
        method.setup(backbone, task, seed=seed)
        header["protocol"] = method.protocol
        header["method"] = names["method"]
        header["method_info"] = method.describe()
        header["task_info"] = task.describe()
        header["backbone_info"] = backbone.describe()
        record.write_header(header)
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
                rows = []
                for q, pred in zip(batch, predictions):
                    score = task.score(q, pred.text)
                    rows.append(SampleRecord(
                        sample_id=q.id, episode_id=episode.id, category=q.category,
                        question=q.question if task.record_questions else None,
                        gold=q.gold if task.record_questions else task.public_gold(q),
                        prediction=pred.text, extracted=score.extracted, scores=score.values,
                        prompt_tokens=pred.prompt_tokens, new_tokens=pred.new_tokens,
                        context_tokens=pred.context_tokens, latency_s=round(per_q, 4),
                        method_info={**pred.info, **({"ingest": ingest_info} if ingest_info else {})}))
                record.append(rows)
                done.update({r.sample_id: r for r in rows})
                bar.update(len(rows))
                if time.time() - last_saved > 30:
                    session.update(wall_s=round(time.time() - started, 2), samples=len(done) - resumed_from)
                    record.write_header(header)
                    last_saved = time.time()
        bar.close()
        method.close()
        ordered = [done[i] for i in expected]
        header["metrics"] = task.aggregate(ordered)
        header["primary_metric"] = task.primary_metric
        session.update(wall_s=round(time.time() - started, 2), load_s=round(load_s, 2), ingest_s=round(ingest_s, 2),
                       answer_s=round(answer_s, 2), samples=len(done) - resumed_from)
        header["timings"] = {"sessions": sessions, "wall_s_total": round(sum(s["wall_s"] for s in sessions), 2)}
        header["status"] = "complete"
        header["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        record.write_header(header)
        return RunOutcome(record.path, "complete", header["metrics"])
    except BaseException as exc:
        session.update(wall_s=round(time.time() - started, 2), samples=len(done) - resumed_from,
                       error=f"{type(exc).__name__}: {exc}")
        header["status"] = "failed"
        header["error"] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        record.write_header(header)
        raise

"""One run split across processes (``torchrun`` / ``accelerate launch`` set ``RANK`` and ``WORLD_SIZE``).

Episodes are assigned to ranks deterministically (longest first, each to the least loaded rank), so an episode's
questions stay together and decode in the same batches as in a single process: the merged record equals a
single-process run sample for sample. Each rank appends to its own shard (``samples.rank-<r>.jsonl``) and its own
header (``header.rank-<r>.json``) under a shared lock of the record; no process talks to another. A rank that
finishes gives its shared lock back and tries the record's exclusive lock: it gets it only when no other rank is
still running, and then merges every shard into the ordinary ``samples.jsonl`` in the single-process order (and
marks the record complete if every question is in). The unit of resumption is the question: a rerun, with any
number of processes, skips every question any shard or the record already holds.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

from harness.records import RecordBusy, RecordLock, RunRecord, atomic_write_json
from harness.types import Episode, SampleRecord


def world_position() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment; (0, 1, 0) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    local = int(os.environ.get("LOCAL_RANK", str(rank)) or 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is not a rank of WORLD_SIZE={world}")
    return rank, world, local


def assign(episodes: Sequence[Episode], world: int) -> list[list[Episode]]:
    """Episodes per rank: by question count, longest first, each to the rank with the fewest questions so far
    (ties to the lowest rank); each rank keeps the original episode order."""
    load = [0] * world
    owner: dict[str, int] = {}
    for i in sorted(range(len(episodes)), key=lambda i: (-len(episodes[i].queries), i)):
        r = min(range(world), key=lambda k: (load[k], k))
        owner[episodes[i].id] = r
        load[r] += len(episodes[i].queries)
    return [[e for e in episodes if owner[e.id] == r] for r in range(world)]


def rank_header_path(record: RunRecord, rank: int):
    return record.path / f"header.rank-{rank}.json"


def write_rank_header(record: RunRecord, rank: int, header: dict[str, Any]) -> None:
    atomic_write_json(rank_header_path(record, rank), header)


def merge(record: RunRecord, expected: Sequence[str], aggregate, header: dict[str, Any]) -> str:
    """Merge the shards if this is the last rank standing. Returns ``complete``, ``incomplete`` (a rank died with
    questions left: rerunning resumes them) or ``busy`` (another rank is still running and will merge)."""
    try:
        lock = RecordLock(record.path).__enter__()
    except RecordBusy:
        return "busy"
    try:
        current = record.header() or {}
        if current.get("status") == "complete":
            return "complete"
        done = record.all_samples()
        sessions = list(current.get("timings", {}).get("sessions", []))
        rank_headers = sorted(record.path.glob("header.rank-*.json"))
        for path in rank_headers:
            sessions += json.loads(path.read_text()).get("timings", {}).get("sessions", [])
        missing = [i for i in expected if i not in done]
        ordered = [done[i] for i in expected if i in done]
        record.replace_samples(ordered)  # a crash before the shards go leaves both: a rerun merges again
        for path in [*record.shard_paths(), *rank_headers]:
            path.unlink()
        header = {**header, "timings": {"sessions": sessions,
                                        "wall_s_total": round(sum(s.get("wall_s", 0.0) for s in sessions), 2)}}
        if missing:
            header["status"] = "interrupted"
            record.write_header(header)
            return "incomplete"
        header["metrics"] = aggregate(ordered)
        header["status"] = "complete"
        record.write_header(header)
        return "complete"
    finally:
        lock.__exit__(None, None, None)

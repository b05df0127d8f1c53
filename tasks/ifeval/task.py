"""IFEval: 541 prompts with verifiable formatting instructions, scored by lm-eval's checkers.

The prompt (stripped) is the only user message; decoding is greedy with 1,500 new tokens
(the reference suite; lm-eval uses 1,280). Scoring calls
``lm_eval.tasks.ifeval.utils.test_instruction_following_strict`` / ``_loose`` from the
installed lm-eval package, so the instruction registry, kwargs handling and the loose
response variants are lm-eval's own. Before the checkers are imported the offline nltk
``punkt_tab`` data is put in place and ``langdetect`` is seeded (``DetectorFactory.seed = 0``)
so the language checks are reproducible; Python's ``random`` is seeded per prompt around
each check because a few checkers draw random arguments (see :func:`seeded_random`).

Metrics (lm-eval names): prompt_level_{strict,loose}_acc are means over prompts;
inst_level_{strict,loose}_acc are micro-averages over all 834 instructions (per-sample
values in the records are each prompt's fraction; the run aggregate re-weights by the
number of instructions). ``by_category`` breaks instruction-level accuracy down by
instruction id (e.g. ``punctuation:no_comma``), ``by_group`` by its prefix.

All prompts form one episode with no context: nothing is memorised, and one episode lets
methods batch the prompts. Its standard errors are plain (unclustered) prompt-level ones;
instruction-level standard errors cluster the instructions of a prompt.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections import defaultdict
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import DataError
from harness.metrics import summarise
from harness.types import Episode, Query, SampleRecord, Score
from tasks.base import Task
from tasks.data_location import locate, where_to_put
from tasks.hub import HubSource, hub_fingerprint, is_hub_uri, load_hub_rows, parse_hub_uri

DEFAULT_FILE = Path("ifeval") / "input_data.jsonl"
PACKAGED = Path(__file__).parent / "data" / "input_data.jsonl"  # Apache-2.0, shipped
HUB = {"split": "train"}  # defaults of an hf://google/IFEval data_path
EPISODE_ID = "ifeval"
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")


@lru_cache(maxsize=1)
def checkers():
    """lm-eval's IFEval utils module, imported once with offline resources and a seeded langdetect."""
    from harness.offline import ensure_offline_resources

    ensure_offline_resources()
    import langdetect

    langdetect.DetectorFactory.seed = 0
    from lm_eval.tasks.ifeval import instructions_registry, utils

    return utils, instructions_registry


@contextmanager
def seeded_random(prompt: str):
    """Seed Python's global ``random`` from the prompt for the duration of a check.

    A few checkers draw a random argument when the data's value is unusable (e.g.
    ``keywords:letter_frequency`` with letter "#" picks a random ASCII letter), which makes
    lm-eval's own scores vary between runs. Seeding per prompt makes ours reproducible;
    the global state is restored afterwards.
    """
    state = random.getstate()
    random.seed(int(hashlib.sha256(prompt.encode()).hexdigest()[:16], 16))
    try:
        yield
    finally:
        random.setstate(state)


def follow_flags(prompt: str, instruction_ids: Sequence[str], kwargs: Sequence[dict], response: str
                 ) -> tuple[list[bool], list[bool]]:
    """Per-instruction (strict, loose) results from lm-eval's own checker functions."""
    utils, _ = checkers()
    inp = utils.InputExample(key=0, instruction_id_list=list(instruction_ids), prompt=prompt, kwargs=list(kwargs))
    with seeded_random(prompt):
        strict = utils.test_instruction_following_strict(inp, response)
        loose = utils.test_instruction_following_loose(inp, response)
    return list(strict.follow_instruction_list), list(loose.follow_instruction_list)


def validate_row(row: Any, fail: Callable[[str], DataError]) -> dict[str, Any]:
    for key in ("key", "prompt", "instruction_id_list", "kwargs"):
        if not isinstance(row, dict) or key not in row:
            raise fail(f"missing field {key!r}")
    ids, kw = row["instruction_id_list"], row["kwargs"]
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise fail(f"(key {row['key']}): field 'prompt' must be a non-empty string")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise fail(f"(key {row['key']}): field 'instruction_id_list' must be a non-empty list of strings")
    if not isinstance(kw, list) or len(kw) != len(ids) or not all(isinstance(k, dict) for k in kw):
        raise fail(f"(key {row['key']}): field 'kwargs' must be a list of objects, one per instruction")
    return row


def parse_ifeval(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DataError(path, "IFEval input_data.jsonl not found (" + where_to_put("ifeval", "data_path", "HARNESS_IFEVAL", DEFAULT_FILE) + ")")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(path, f"line {n}: not valid JSON ({exc.msg})") from exc
            rows.append(validate_row(row, lambda m, n=n: DataError(path, f"line {n}{'' if m.startswith('(') else ':'} {m}")))
    if not rows:
        raise DataError(path, "no prompts in the file")
    return rows


def hub_ifeval(source: HubSource) -> list[dict[str, Any]]:
    """The prompts from the Hub (``google/IFEval``, split ``train``: the same 541 rows and fields)."""
    rows = [validate_row(r, lambda m, i=i: DataError(source.uri, f"row {i}{'' if m.startswith('(') else ':'} {m}"))
            for i, r in enumerate(load_hub_rows(source))]
    if not rows:
        raise DataError(source.uri, "no prompts in the split")
    return rows


class IFEvalTask(Task):
    name = "ifeval"
    primary_metric = "prompt_level_strict_acc"

    def __init__(self, *, data_path: str | None = None, **kw: Any):
        super().__init__(**kw)
        where = locate(data_path, "HARNESS_IFEVAL", DEFAULT_FILE, packaged=PACKAGED, hub="hf://google/IFEval")
        self.hub = parse_hub_uri(where, **HUB) if is_hub_uri(where) else None
        self.path = Path(where).expanduser()
        self._rows: list[dict[str, Any]] | None = None

    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            self._rows = hub_ifeval(self.hub) if self.hub else parse_ifeval(self.path)
        return self._rows

    def load_episodes(self) -> list[Episode]:
        rows = self.rows()
        where = self.hub.uri if self.hub else self.path
        known = set(checkers()[1].INSTRUCTION_DICT)
        queries, seen = [], set()
        for row in rows:
            unknown = [i for i in row["instruction_id_list"] if i not in known]
            if unknown:
                raise DataError(where, f"key {row['key']}: instruction ids {unknown} are not in lm-eval's registry")
            qid = f"ifeval/{row['key']}"
            if qid in seen:
                raise DataError(where, f"duplicate key {row['key']}")
            seen.add(qid)
            # HF's google/IFEval lists every kwarg with nulls; lm-eval drops falsy values itself.
            gold = {"instruction_id_list": list(row["instruction_id_list"]), "kwargs": [dict(k) for k in row["kwargs"]]}
            queries.append(Query(id=qid, question=row["prompt"], gold=gold, category=None,
                                 metadata={"key": row["key"]}))
        return [Episode(id=EPISODE_ID, units=(), queries=tuple(queries))]

    def data_fingerprint(self) -> dict[str, Any]:
        if self.hub:
            return hub_fingerprint(self.hub, self.rows())
        return {"path": str(self.path), "sha256": hashlib.sha256(self.path.read_bytes()).hexdigest()}

    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        content = query.question.strip()
        if context:
            content = f"{context}\n\n{content}"
        return [{"role": "user", "content": content}]

    def score(self, query: Query, prediction: str) -> Score:
        strict, loose = follow_flags(query.question, query.gold["instruction_id_list"], query.gold["kwargs"], prediction)
        return Score(values={
            "prompt_level_strict_acc": float(all(strict)),
            "inst_level_strict_acc": sum(strict) / len(strict),
            "prompt_level_loose_acc": float(all(loose)),
            "inst_level_loose_acc": sum(loose) / len(loose),
        })

    def aggregate(self, samples: Sequence[SampleRecord]) -> dict[str, Any]:
        """lm-eval's four metrics plus per-instruction and per-group instruction accuracy.

        The instruction-level flags are recomputed from each record's prompt, gold
        (instruction ids and kwargs) and prediction, so the aggregate needs only the records.
        """
        prompt_vals: dict[str, list[float]] = defaultdict(list)
        inst: dict[str, list[tuple[float, str]]] = defaultdict(list)
        by_id: dict[str, dict[str, list[tuple[float, str]]]] = defaultdict(lambda: defaultdict(list))
        by_group: dict[str, dict[str, list[tuple[float, str]]]] = defaultdict(lambda: defaultdict(list))
        for s in samples:
            if s.question is None or not isinstance(s.gold, dict):
                raise ValueError(f"{s.sample_id}: IFEval records need the prompt and gold to aggregate")
            ids = s.gold["instruction_id_list"]
            strict, loose = follow_flags(s.question, ids, s.gold["kwargs"], s.prediction)
            prompt_vals["prompt_level_strict_acc"].append(float(all(strict)))
            prompt_vals["prompt_level_loose_acc"].append(float(all(loose)))
            for iid, st, lo in zip(ids, strict, loose):
                for metric, flag in (("inst_level_strict_acc", st), ("inst_level_loose_acc", lo)):
                    inst[metric].append((float(flag), s.sample_id))
                    by_id[iid][metric].append((float(flag), s.sample_id))
                    by_group[iid.split(":")[0]][metric].append((float(flag), s.sample_id))

        def block(pairs: dict[str, list[tuple[float, str]]]) -> dict[str, dict[str, float]]:
            return {m: summarise([v for v, _ in ps], [c for _, c in ps]) for m, ps in sorted(pairs.items())}

        ids_ = [s.sample_id for s in samples]
        overall = {m: summarise(v, ids_) for m, v in prompt_vals.items()}
        overall.update(block(inst))
        return {
            "overall": {m: overall[m] for m in METRICS if m in overall},
            "by_category": {k: block(v) for k, v in sorted(by_id.items())},
            "by_group": {k: block(v) for k, v in sorted(by_group.items())},
            "n_samples": len(samples),
            "n_instructions": len(inst.get("inst_level_strict_acc", [])),
            "n_episodes": len({s.episode_id for s in samples}),
        }

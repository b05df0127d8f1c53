"""MemoryAgentBench (Hu, Wang, McAuley): memory over long contexts, four competencies.

Data: the official HF parquet files ``<Split>-00000-of-00001.parquet`` (dataset
``ai-hyz/MemoryAgentBench``), one row = one long ``context`` with its ``questions`` and
``answers`` (alias lists) and a ``metadata`` struct whose ``source`` names the sub-dataset.
One row = one episode: the context is ingested once and all its questions are answered
from it. The data is not bundled; see ``tasks/memoryagentbench/README.md``.

Defaults follow the δ-mem reference suite: every row of the four splits, its unified prompt
with the context clipped to 120,000 characters (first third + last two thirds, joined by a
marker), greedy decoding with the official per-source answer lengths, and its scorers
(lenient alias match; token F1 for InfBench-Sum; Recall@5 for RecSys). Options:
``prompt_style: official`` (MAB's system prompt, memorize-wrapped chunks, per-source query
templates, tail truncation to the source's ``context_max_length``), ``scoring: official``
(MAB's substring-exact-match / exact-match; GPT-4o judged sources use a named stand-in),
``rows: official`` (the first ``max_test_samples`` rows per source).

``recipe: true`` reads MAB-recipe data (``tasks/memoryagentbench/recipe.py``: two competencies rebuilt by the
paper's recipe from BANKING77, CLINC150 and HotpotQA; **not MAB**) through the same loader, prompts and scorers,
under its own task name (``task=memoryagentbench_recipe``). The two kinds never mix: a folder with a recipe
manifest or ``recipe_*`` sources is refused as MAB, a folder without them is refused as recipe data, and a
recipe record's data fingerprint carries the manifest (seed, lengths, tokenizer, label maps, source files and
their SHA-256), which the record's data digest covers.

Scores: per question ``score`` is the primary metric of the question's source under the
chosen scoring; category (split) and overall scores are sample-weighted means of
``score``, as in the reference; ``by_dataset`` gives the per-dataset means.
"""
from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from harness.errors import DataError
from harness.metrics import aggregate_scores, summarise
from harness.types import ContextUnit, Episode, GenerationSettings, Query, RenderedContext, SampleRecord, Score
from tasks.base import Task, data_root
from tasks.data_location import locate
from tasks.hub import HubSource, is_hub_uri, load_hub_dataset, parse_hub_uri, rows_sha256
from tasks.memoryagentbench import recipe as recipe_data
from tasks.memoryagentbench.scoring import lenient_correct, lenient_f1, load_catalog, official_scores, parse_output

# the revision others cite (../shared/data/README.md); a fresh online clone reads it when nothing is local
HUB_FALLBACK = "hf://ai-hyz/MemoryAgentBench@7ea066982b140a19337e17e60d45d4076e042faf"
from tasks.memoryagentbench.sources import (CATEGORY, SPLITS, official_metric, recipe_length, reference_metric,
                                            settings_for)
from tasks.qa_metrics import fill_template, first_line

PROMPT_STYLES = ("unified", "official")
SCORINGS = ("reference", "official")
ROWS = ("all", "official")
CLIP_MARKER = "\n\n[... context truncated ...]\n\n"
# metadata children that hold one entry per question
_INDEXED = ("question_ids", "question_types", "question_dates", "previous_events", "qa_pair_ids")
_METADATA_FIELDS = ("demo", "haystack_sessions", "keypoints", "previous_events", "qa_pair_ids",
                    "question_dates", "question_ids", "question_types", "source")


def clip_head_tail(text: str, max_chars: int, marker: str = CLIP_MARKER) -> str:
    """Keep the first third and the last two thirds of ``max_chars`` (marker included)."""
    if len(text) <= max_chars:
        return text
    budget = max(max_chars - len(marker), 0)
    head = budget // 3
    tail = budget - head
    return text[:head] + marker + (text[-tail:] if tail else "")


def split_lossless(text: str, max_chars: int) -> list[str]:
    """Slices of ``text`` of at most ``max_chars`` that concatenate back to ``text``,
    cut after a blank line, a newline, a sentence end or a space where possible."""
    pieces, start = [], 0
    n = len(text)
    while start < n:
        end = min(start + max_chars, n)
        if end < n:
            window = text[start:end]
            for sep in ("\n\n", "\n", ". ", " "):
                cut = window.rfind(sep)
                if cut > max_chars // 2:
                    end = start + cut + len(sep)
                    break
        pieces.append(text[start:end])
        start = end
    return pieces


def find_split_file(root: Path, split: str) -> Path:
    """``<root>/data/<Split>-*.parquet``, ``<root>/<Split>-*.parquet`` or, in an HF cache
    tree, the lexicographically last snapshot that has the file."""
    for folder in (root / "data", root):
        hits = sorted(folder.glob(f"{split}-*.parquet"))
        if hits:
            return hits[-1]
    hits = sorted(root.glob(f"**/{split}-*.parquet"))
    if hits:
        return hits[-1]
    raise DataError(root, f"no parquet file for split {split} (expected data/{split}-00000-of-00001.parquet; "
                          "set task.data_dir or HARNESS_MAB, see tasks/memoryagentbench/README.md)")


def _check_schema(path: Path, schema) -> None:
    import pyarrow as pa

    def is_str(t):
        return pa.types.is_string(t) or pa.types.is_large_string(t)

    def is_list(t):
        return pa.types.is_list(t) or pa.types.is_large_list(t)

    names = schema.names
    for col in ("context", "questions", "answers", "metadata"):
        if col not in names:
            raise DataError(path, f"missing column {col!r} (columns: {names})")
    t = schema.field("context").type
    if not is_str(t):
        raise DataError(path, f"column 'context' has type {t}, expected string")
    t = schema.field("questions").type
    if not (is_list(t) and is_str(t.value_type)):
        raise DataError(path, f"column 'questions' has type {t}, expected list<string>")
    t = schema.field("answers").type
    if not (is_list(t) and is_list(t.value_type) and is_str(t.value_type.value_type)):
        raise DataError(path, f"column 'answers' has type {t}, expected list<list<string>>")
    t = schema.field("metadata").type
    if not pa.types.is_struct(t):
        raise DataError(path, f"column 'metadata' has type {t}, expected struct")
    children = [t.field(i).name for i in range(t.num_fields)]
    if "source" not in children:
        raise DataError(path, f"column 'metadata' has no child 'source' (children: {children})")
    if not is_str(t.field("source").type):
        raise DataError(path, f"metadata.source has type {t.field('source').type}, expected string")


def read_split(path: Path) -> list[dict[str, Any]]:
    """Rows of one split file, schema-checked and validated row by row."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a non-parquet file
        raise DataError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})") from exc
    _check_schema(path, table.schema)
    return validate_rows(table.to_pylist(), path)


def hub_split(source: HubSource, split: str) -> list[dict[str, Any]]:
    """One split from the Hub (``ai-hyz/MemoryAgentBench``: the same parquet schema), checked the same way."""
    ds = load_hub_dataset(source, split=split)
    where = f"{source.uri} split {split}"
    _check_schema(where, ds.data.schema)
    return validate_rows(ds.to_list(), where)


def validate_rows(rows: list[dict[str, Any]], path: Any) -> list[dict[str, Any]]:
    for i, row in enumerate(rows):
        meta = row.get("metadata") or {}
        src = meta.get("source")
        where = f"row {i}" + (f" (source {src!r})" if src else "")
        if not isinstance(src, str) or not src:
            raise DataError(path, f"{where}: metadata.source is empty")
        if not isinstance(row["context"], str) or not row["context"]:
            raise DataError(path, f"{where}: field 'context' is empty")
        qs, ans = row["questions"], row["answers"]
        if not qs:
            raise DataError(path, f"{where}: field 'questions' is empty")
        if any(not isinstance(q, str) or not q.strip() for q in qs):
            raise DataError(path, f"{where}: field 'questions' holds an empty question")
        if not ans or any(not a for a in ans):
            raise DataError(path, f"{where}: field 'answers' is empty or holds an empty alias list")
        if len(qs) != len(ans) and len(qs) != 1:
            raise DataError(path, f"{where}: {len(qs)} questions but {len(ans)} answer lists")
        for key in _INDEXED:
            vals = meta.get(key)
            if vals is not None and len(qs) > 1 and len(vals) != len(qs):
                raise DataError(path, f"{where}: metadata.{key} has {len(vals)} entries for {len(qs)} questions")
    return rows


class MemoryAgentBenchTask(Task):
    name = "memoryagentbench"
    primary_metric = "score"
    paired_reference = "vanilla_nocontext"

    @classmethod
    def report_name(cls, header: dict[str, Any]) -> str:
        # Recipe rows of one length are one column (e.g. memoryagentbench_recipe_8k): 8K and 32K runs of a method
        # ask the same questions with four times the history, so they are two results, never alternatives.
        name = str(header.get("task"))
        task_cfg = (header.get("config") or {}).get("task") or {}
        lengths = {recipe_length(s) for s in task_cfg.get("sources") or []}
        if not task_cfg.get("recipe") or len(lengths) != 1 or None in lengths:
            return name
        length = lengths.pop()
        return f"{name}_{length // 1024}k" if length % 1024 == 0 else f"{name}_{length}"

    def __init__(self, *, data_dir: str | None = None, splits: Sequence[str] = SPLITS,
                 sources: Sequence[str] | None = None, rows: str = "all", prompt_style: str = "unified",
                 scoring: str = "reference", max_context_chars: int | None = 120000, chunk_chars: int = 16000,
                 per_source_lengths: bool = True, entity2id_path: str | None = None,
                 memorize_timestamp: str = "", prompts: dict[str, Any] | None = None, recipe: bool = False,
                 **kw: Any):
        super().__init__(**kw)
        self.recipe = bool(recipe)
        if self.recipe and self.name == MemoryAgentBenchTask.name:
            # scores of recipe data must never be filed, or reported, as MemoryAgentBench
            raise ValueError(f"task.recipe=true needs a task name of its own, not {self.name!r}: run "
                             "task=memoryagentbench_recipe")
        bad = [s for s in splits if s not in SPLITS]
        if bad or not splits:
            raise ValueError(f"task.splits must be a non-empty subset of {list(SPLITS)}, got {list(splits)}")
        for value, allowed, key in ((rows, ROWS, "rows"), (prompt_style, PROMPT_STYLES, "prompt_style"),
                                    (scoring, SCORINGS, "scoring")):
            if value not in allowed:
                raise ValueError(f"task.{key} must be one of {allowed}, got {value!r}")
        if max_context_chars is not None and max_context_chars <= len(CLIP_MARKER):
            raise ValueError(f"task.max_context_chars must exceed {len(CLIP_MARKER)} or be null")
        if chunk_chars <= 0:
            raise ValueError("task.chunk_chars must be > 0")
        prompts = dict(prompts or {})
        missing = [k for k in ("unified", "without_context", "official") if k not in prompts]
        if missing:
            raise ValueError(f"task.prompts is missing {missing}")
        for k in ("system", "memorize", "query"):
            if k not in prompts["official"]:
                raise ValueError(f"task.prompts.official is missing {k!r}")
        if self.recipe:
            where = locate(data_dir, "HARNESS_MAB_RECIPE", recipe_data.KIND)
            if is_hub_uri(where):
                raise ValueError(f"task.data_dir={where}: recipe data is built locally "
                                 "(python -m tasks.memoryagentbench.recipe --out DIR), never read from the Hub")
        else:
            where = locate(data_dir, "HARNESS_MAB", "memoryagentbench", hub=HUB_FALLBACK)
        self.hub = parse_hub_uri(where) if is_hub_uri(where) else None
        self.data_dir = Path(where if not self.hub else data_root() / "memoryagentbench").expanduser()
        self._manifest: dict[str, Any] | None = None
        self.splits, self.sources = list(splits), list(sources) if sources else None
        self.rows, self.prompt_style, self.scoring = rows, prompt_style, scoring
        self.max_context_chars, self.chunk_chars = max_context_chars, chunk_chars
        self.per_source_lengths = per_source_lengths
        self.entity2id_path = Path(entity2id_path or os.environ.get("HARNESS_MAB_ENTITY2ID")
                                   or data_root() / "memoryagentbench_sources" / "redial" / "entity2id.json").expanduser()
        self.memorize_timestamp = memorize_timestamp
        self.prompts = prompts
        self._files: dict[str, Path] = {}
        self._hub_sha: dict[str, str] = {}

    # ------------------------------------------------------------------ data
    def _check_kind(self) -> None:
        """Recipe data only as recipe data, MAB data only as MAB (see the module docstring)."""
        if self.hub:
            return
        manifest = recipe_data.read_manifest(self.data_dir) if self.data_dir.is_dir() else None
        if manifest is not None and not self.recipe:
            raise DataError(self.data_dir, f"holds MAB-recipe data ({recipe_data.MANIFEST}: built by "
                                           "tasks/memoryagentbench/recipe.py), not MemoryAgentBench; run it as "
                                           "task=memoryagentbench_recipe")
        if manifest is None and self.recipe:
            if not self.data_dir.exists():
                raise DataError(self.data_dir, "no MAB-recipe data here; build it with python -m "
                                               "tasks.memoryagentbench.recipe --out DIR, then set task.data_dir=DIR "
                                               "or $HARNESS_MAB_RECIPE")
            raise DataError(self.data_dir, f"no {recipe_data.MANIFEST}: not MAB-recipe data (built by python -m "
                                           "tasks.memoryagentbench.recipe --out DIR)")
        self._manifest = manifest

    def _check_source(self, split: str, source: str) -> None:
        is_recipe = source.startswith(recipe_data.SOURCE_PREFIX)
        if is_recipe != self.recipe:
            where = self.hub.uri if self.hub else self._files.get(split, self.data_dir)
            raise DataError(where, f"metadata.source {source!r}: " + (
                "a MAB-recipe source in data read as MemoryAgentBench; run it as task=memoryagentbench_recipe"
                if is_recipe else f"not a MAB-recipe source (expected the prefix {recipe_data.SOURCE_PREFIX!r}) "
                                  "in data read as recipe data"))

    def _check_against_manifest(self, split: str, path: Path) -> None:
        """The split file is the one the recipe wrote: a replaced file would be scored under the old manifest."""
        want = ((self._manifest or {}).get("files") or {}).get(split, {}).get("sha256")
        have = hashlib.sha256(path.read_bytes()).hexdigest()
        if want != have:
            raise DataError(path, f"SHA-256 {have[:12]}… differs from the one in {recipe_data.MANIFEST} "
                                  f"({str(want)[:12]}…); rebuild the folder with python -m tasks.memoryagentbench.recipe")

    def load_episodes(self) -> list[Episode]:
        episodes: list[Episode] = []
        found_sources: set[str] = set()
        self._check_kind()
        for split in self.splits:
            if self.hub:
                rows = hub_split(self.hub, split)
                self._hub_sha[split] = rows_sha256(rows)
            else:
                self._files[split] = find_split_file(self.data_dir, split)
                if self.recipe:
                    self._check_against_manifest(split, self._files[split])
                rows = read_split(self._files[split])
            per_source: dict[str, int] = defaultdict(int)
            for row in rows:
                meta = row["metadata"] or {}
                source = meta["source"]
                self._check_source(split, source)
                found_sources.add(source)
                k = per_source[source]
                per_source[source] += 1
                if self.sources is not None and source not in self.sources:
                    continue
                st = settings_for(source)
                if self.rows == "official" and st.max_test_samples is not None and k >= st.max_test_samples:
                    continue
                episodes.append(self._episode(split, source, k, row))
        if self.sources is not None:
            unknown = [s for s in self.sources if s not in found_sources]
            if unknown:
                raise DataError(self.hub.uri if self.hub else self.data_dir, f"task.sources {unknown} not in the data (exact names; found: {sorted(found_sources)})")
        return episodes

    def _episode(self, split: str, source: str, k: int, row: dict[str, Any]) -> Episode:
        st = settings_for(source)
        eid = f"{split}/{source}/{k}"
        meta = row["metadata"] or {}
        qs, ans = row["questions"], row["answers"]
        if len(qs) == 1 and len(ans) != 1:
            golds = [[a for lst in ans for a in lst]]  # MAB: one question gets the whole (flattened) answer list
        else:
            golds = [list(a) for a in ans]
        queries = []
        for i, (q, gold) in enumerate(zip(qs, golds)):
            qmeta: dict[str, Any] = {"source": source, "family": st.family, "dataset": st.dataset, "split": split,
                                     "index": i}
            for key in _INDEXED:
                vals = meta.get(key)
                if vals is not None and i < len(vals):
                    qmeta[key[:-1] if key.endswith("s") else key] = vals[i]
            queries.append(Query(id=f"{eid}/q{i:03d}", question=q, gold=gold, category=CATEGORY[split], metadata=qmeta))
        units = tuple(ContextUnit(id=f"{eid}/c{j:04d}", text=piece, segment=f"chunk_{j}", metadata={"chunk": j})
                      for j, piece in enumerate(split_lossless(row["context"], self.chunk_chars)))
        emeta = {"source": source, "family": st.family, "split": split, "context_chars": len(row["context"])}
        for key in ("demo", "keypoints"):
            if meta.get(key) is not None:
                emeta[key] = meta[key]
        return Episode(id=eid, units=units, queries=tuple(queries), metadata=emeta)

    def data_fingerprint(self) -> dict[str, Any]:
        if self.hub:
            if not self._hub_sha:
                self.load_episodes()
            return {"source": self.hub.uri, "revision": self.hub.revision or "unpinned (the Hub's latest)",
                    "splits": {s: {"rows_sha256": self._hub_sha[s]} for s in self.splits}}
        files = self._files or {s: find_split_file(self.data_dir, s) for s in self.splits}
        out = {"data_dir": str(self.data_dir),
               "files": {s: {"path": str(p), "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for s, p in files.items()}}
        if self.recipe:
            if self._manifest is None:
                self._check_kind()
            # the construction's parameters travel with every record; data_digest covers the "recipe" block
            out.update(recipe=self._manifest, not_mab=True, note=recipe_data.NOTE)
        return out

    # ----------------------------------------------------------- generation
    def generation_for(self, query: Query) -> GenerationSettings:
        if not self.per_source_lengths:
            return self.generation
        return replace(self.generation, max_new_tokens=settings_for(query.metadata["source"]).generation_max_length)

    # --------------------------------------------------------------- prompts
    def _memorized(self, family: str, units: Sequence[ContextUnit]) -> list[str]:
        template = self.prompts["official"]["memorize"].get(family) or self.prompts["official"]["memorize"]["default"]
        return [fill_template(template, context=u.text, time_stamp=self.memorize_timestamp) for u in units]

    def render_context(self, episode: Episode, *, count_tokens: Callable[[str], int] | None = None,
                       max_tokens: int | None = None) -> RenderedContext:
        units = list(episode.units)
        if self.prompt_style == "official":
            return self._render_official(episode, units, count_tokens, max_tokens)
        full = "".join(u.text for u in units)
        text = clip_head_tail(full, self.max_context_chars) if self.max_context_chars else full
        if count_tokens is not None and max_tokens is not None and count_tokens(text) > max_tokens:
            # The reference trims again, head third / tail two thirds, to fit the window.
            lo, hi = len(CLIP_MARKER) + 1, len(text)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if count_tokens(clip_head_tail(full, mid)) <= max_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            text = clip_head_tail(full, lo)
        kept = self._kept_units(units, full, text)
        n = count_tokens(text) if count_tokens else 0
        total = count_tokens(full) if count_tokens and text != full else n
        return RenderedContext(text=text, kept_tokens=n, total_tokens=total, kept_unit_ids=kept,
                               truncated=text != full)

    def _render_official(self, episode, units, count_tokens, max_tokens) -> RenderedContext:
        family = episode.metadata.get("family") or settings_for(episode.metadata["source"]).family
        full = "\n".join(self._memorized(family, units))
        text = full
        limit = settings_for(episode.metadata["source"]).context_max_length
        if count_tokens is not None:
            budget = min(x for x in (limit, max_tokens) if x is not None) if (limit or max_tokens) else None
            if budget is not None and count_tokens(text) > budget:
                # MAB keeps the latest tokens; cut from the front (by characters, checked in tokens).
                lo, hi = 0, len(full)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if count_tokens(full[mid:]) <= budget:
                        hi = mid
                    else:
                        lo = mid + 1
                text = full[lo:]
        n = count_tokens(text) if count_tokens else 0
        total = count_tokens(full) if count_tokens and text != full else n
        kept = tuple(u.id for u, m in zip(units, self._memorized(family, units)) if m[-200:] in text) if text != full \
            else tuple(u.id for u in units)
        return RenderedContext(text=text, kept_tokens=n, total_tokens=total, kept_unit_ids=kept, truncated=text != full)

    @staticmethod
    def _kept_units(units: Sequence[ContextUnit], full: str, text: str) -> tuple[str, ...]:
        if text == full:
            return tuple(u.id for u in units)
        head_len = text.index(CLIP_MARKER) if CLIP_MARKER in text else len(text)
        tail_len = len(text) - head_len - len(CLIP_MARKER) if CLIP_MARKER in text else 0
        kept, pos = [], 0
        for u in units:
            start, end = pos, pos + len(u.text)
            if start < head_len or end > len(full) - tail_len:
                kept.append(u.id)
            pos = end
        return tuple(kept)

    def history_messages(self, episode: Episode) -> list[dict[str, str]]:
        """One user message per context chunk; memorize-wrapped under the official style."""
        if self.prompt_style == "official":
            family = episode.metadata.get("family", "default")
            return [{"role": "user", "content": m} for m in self._memorized(family, episode.units)]
        return [{"role": "user", "content": u.text} for u in episode.units]

    def prompt_messages(self, query: Query, context: str | None) -> list[dict[str, str]]:
        if self.prompt_style == "official":
            family = query.metadata["family"]
            queries = self.prompts["official"]["query"]
            q = fill_template(queries.get(family) or queries["default"], question=query.question)
            user = q if context is None else f"{context}\n{q}"
            return [{"role": "system", "content": self.prompts["official"]["system"]}, {"role": "user", "content": user}]
        if context is None:
            return [{"role": "user", "content": fill_template(self.prompts["without_context"], question=query.question)}]
        return [{"role": "user", "content": fill_template(self.prompts["unified"], context=context, question=query.question)}]

    # --------------------------------------------------------------- scoring
    def primary_for(self, family: str) -> str:
        return reference_metric(family) if self.scoring == "reference" else official_metric(family)[0]

    def score(self, query: Query, prediction: str) -> Score:
        family = query.metadata["family"]
        aliases = [str(a) for a in query.gold]
        if family == "recsys":
            values = load_catalog(str(self.entity2id_path)).recall(prediction, aliases)
        else:
            values = {"correct": lenient_correct(prediction, aliases), "f1": lenient_f1(prediction, aliases),
                      **official_scores(prediction, aliases, family)}
        values["score"] = values[self.primary_for(family)]
        extracted = parse_output(prediction) if self.scoring == "official" else first_line(prediction)
        return Score(values=values, extracted=extracted)

    def aggregate(self, samples: Sequence[SampleRecord]) -> dict[str, Any]:
        """Sample-weighted overall and per-category scores, plus per-dataset and per-source means."""
        out = aggregate_scores(samples)
        by_dataset: dict[str, list[SampleRecord]] = defaultdict(list)
        by_source: dict[str, list[SampleRecord]] = defaultdict(list)
        for s in samples:
            source = s.episode_id.split("/")[1]
            by_source[source].append(s)
            by_dataset[settings_for(source).dataset].append(s)

        def block(rows: list[SampleRecord]) -> dict[str, Any]:
            family = settings_for(rows[0].episode_id.split("/")[1]).family
            return {"metric": self.primary_for(family),
                    "score": summarise([r.scores["score"] for r in rows], [r.episode_id for r in rows])}

        out["by_dataset"] = {k: block(v) for k, v in sorted(by_dataset.items())}
        out["by_source"] = {k: block(v) for k, v in sorted(by_source.items())}
        out["category_sample_weights"] = {c: b["score"]["n"] for c, b in out["by_category"].items() if "score" in b}
        return out

    def describe(self) -> dict[str, Any]:
        stand_ins = {f: official_metric(f)[1] for f in ("longmemeval", "infbench_sum")} if self.scoring == "official" else {}
        return {**super().describe(), "recipe": self.recipe, "splits": self.splits, "sources": self.sources,
                "rows": self.rows,
                "prompt_style": self.prompt_style, "scoring": self.scoring, "max_context_chars": self.max_context_chars,
                "chunk_chars": self.chunk_chars, "per_source_lengths": self.per_source_lengths,
                "official_metric_stand_ins": stand_ins}

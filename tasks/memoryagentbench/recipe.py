"""MAB-recipe data: two MemoryAgentBench competencies rebuilt *by recipe* from real staged data.

**This is not MemoryAgentBench.** The official parquet files cannot be obtained here, and MAB publishes no
construction code (``../shared/spec/mab-data.md`` §4), so exact rebuilds are impossible. What this module
writes follows the paper's description (App. A) with upstream data that is available:

* **Test-Time Learning (ICL)**, from BANKING77 (``train.csv`` / ``test.csv``) and CLINC150 "plus"
  (``train`` + ``oos_train`` / ``test`` + ``oos_test``, 151 labels): one shared context per dataset of labelled
  examples, one per line pair ``"{sentence} \\n Label: {label} \\n"`` (the paper's line format), drawn
  label-balanced (round robin over the labels), shuffled; class names are mapped to integers by a seeded random
  permutation (a hidden mapping, as in the paper); then ``questions`` test sentences whose answer is the label
  number. Scored by MAB's ICL metric (exact match on the parsed output).
* **Accurate Retrieval (multi-hop QA)**, from the partial HotpotQA dev copy (1,354 questions): ``questions``
  questions; their gold passages plus de-duplicated distractor passages (first the questions' own HotpotQA
  distractors, then others from the copy), shuffled and concatenated as ``Document i:\\n<title>\\n<text>``
  blocks. MAB packs 100 questions into one 421K-token context; at shorter lengths the gold passages of 100
  questions do not fit, so the questions are packed into as many rows as needed, each row's gold passages
  taking at most ``gold_share`` of its context. Scored by MAB's RULER-QA metric (substring exact match).

Each context is filled to ``length`` tokens of the given tokenizer (the backbone's: contexts are meant to be
read by it) and trimmed until it is at most ``length``; per row it ends within about 1 % below. Everything is
seeded: the label maps, the test questions and the order in which examples and passages are drawn depend on the
seed only, so a longer context holds the same questions with more history; only the final shuffle also depends
on the length.

Rows are written in the official parquet schema, as ``<out>/data/<Split>-00000-of-00001.parquet`` (the layout
the task's loader reads), with ``recipe.json`` beside them: the construction's parameters (source files and
their SHA-256, seed, lengths, tokenizer, label maps, counts, the parquet files' SHA-256). The task refuses
such a folder as ``memoryagentbench`` and reads it only as ``memoryagentbench_recipe``, whose records carry
the manifest in their data fingerprint.

    python -m tasks.memoryagentbench.recipe --out DIR [--length 8192 32768] [--seed 0] [--tokenizer smollm2_135m]
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from harness.errors import DataError

RECIPE_VERSION = 1
MANIFEST = "recipe.json"
KIND = "memoryagentbench_recipe"
SOURCE_PREFIX = "recipe_"
NOTE = ("MAB-recipe data built by this project (tasks/memoryagentbench/recipe.py) from BANKING77, CLINC150 and a "
        "partial HotpotQA dev copy, following the MemoryAgentBench paper's description; NOT MemoryAgentBench: "
        "its scores are not comparable with MAB scores")
ICL_DATASETS = ("banking77", "clinc150")
MIN_LENGTH = 1024  # shorter contexts fall under MAB's own 2,000-character floor for a context
DEFAULT_TOKENIZER = "smollm2_135m"
TRIM_TOLERANCE = 0.01  # a row ends within this share below its length


def source_name(competency: str, length: int) -> str:
    """``metadata.source`` of a recipe row: the prefix marks it as recipe data, the family key (``icl``) and the
    length make it unique (``tasks.memoryagentbench.sources.settings_for`` reads them back)."""
    return f"{SOURCE_PREFIX}{competency}_{length}"


def official_schema():
    """The parquet schema of HF ``ai-hyz/MemoryAgentBench`` (``mab-data.md`` §1): struct children in the card's
    alphabetical order, every child nullable."""
    import pyarrow as pa

    turn = pa.struct([("content", pa.string()), ("has_answer", pa.bool_()), ("role", pa.string())])
    metadata = pa.struct([
        ("demo", pa.string()),
        ("haystack_sessions", pa.list_(pa.list_(pa.list_(turn)))),
        ("keypoints", pa.list_(pa.string())),
        ("previous_events", pa.list_(pa.string())),
        ("qa_pair_ids", pa.list_(pa.string())),
        ("question_dates", pa.list_(pa.string())),
        ("question_ids", pa.list_(pa.string())),
        ("question_types", pa.list_(pa.string())),
        ("source", pa.string()),
    ])
    return pa.schema([("context", pa.string()), ("questions", pa.list_(pa.string())),
                      ("answers", pa.list_(pa.list_(pa.string()))), ("metadata", metadata)])


# ------------------------------------------------------------------------------------------ tokens
@dataclass
class TokenCounter:
    """Token counts of texts with one tokenizer (no special tokens, as the harness counts context tokens)."""
    tokenizer: Any
    identity: dict[str, Any]

    def many(self, texts: Sequence[str]) -> list[int]:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer: no length warnings on long texts, batch-parallel
            return [len(e.ids) for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def one(self, text: str) -> int:
        return self.many([text])[0]


def load_counter(spec: str) -> TokenCounter:
    """``spec``: a backbone config name (``conf/backbone/<name>.yaml``; the embedded default is built offline
    from its cache) or a folder holding a Hugging Face tokenizer."""
    from transformers import AutoTokenizer

    root = Path(__file__).resolve().parents[2]
    folder = Path(spec).expanduser()
    identity: dict[str, Any] = {"spec": spec}
    if not folder.is_dir():
        conf = root / "conf" / "backbone" / f"{spec}.yaml"
        if not conf.is_file():
            choices = sorted(p.stem for p in conf.parent.glob("*.yaml"))
            raise SystemExit(f"--tokenizer {spec}: neither a folder nor a backbone config (choices: {choices})")
        from omegaconf import OmegaConf

        from harness.backbone import resolve_location

        location, provenance = resolve_location(OmegaConf.load(conf))
        identity.update(backbone=spec, **{k: v for k, v in provenance.items() if k != "path"})
        folder = Path(location)
    tok = AutoTokenizer.from_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():  # which tokenizer counted the lengths, wherever its folder lives
            identity[f"{name.split('.')[0]}_sha256"] = _sha256(folder / name)
    identity["class"] = type(tok).__name__
    return TokenCounter(tok, identity)


# ------------------------------------------------------------------------------------------ sources
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean(text: str) -> str:
    # some BANKING77 sentences hold line breaks, which would break the one-example-per-line format
    return " ".join(str(text).split())


@dataclass
class Labelled:
    """An ICL dataset: (sentence, class name) pairs for demonstrations and for test questions."""
    name: str
    train: list[tuple[str, str]]
    test: list[tuple[str, str]]
    files: dict[str, str]  # path relative to the sources root -> SHA-256


def load_banking77(root: Path) -> Labelled:
    files = {}
    parts = []
    for split in ("train", "test"):
        path = root / "banking77" / f"{split}.csv"
        if not path.is_file():
            raise DataError(path, "BANKING77 file missing (staged under memoryagentbench_sources/banking77/)")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames != ["text", "category"]:
                raise DataError(path, f"header {reader.fieldnames}, expected ['text', 'category']")
            rows = []
            for i, r in enumerate(reader):
                text, cat = _clean(r["text"] or ""), (r["category"] or "").strip()
                if not text or not cat:
                    raise DataError(path, f"data row {i + 1}: empty field 'text' or 'category'")
                rows.append((text, cat))
        files[f"banking77/{split}.csv"] = _sha256(path)
        parts.append(rows)
    return Labelled("banking77", parts[0], parts[1], files)


def load_clinc150(root: Path) -> Labelled:
    path = root / "clinc150" / "data_oos_plus.json"
    if not path.is_file():
        raise DataError(path, "CLINC150 file missing (staged under memoryagentbench_sources/clinc150/)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(path, f"not valid JSON ({exc})") from exc

    def items(*keys: str) -> list[tuple[str, str]]:
        out = []
        for key in keys:
            if not isinstance(data.get(key), list):
                raise DataError(path, f"key {key!r} missing or not a list (keys: {sorted(data)})")
            for i, item in enumerate(data[key]):
                if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) and x.strip() for x in item)):
                    raise DataError(path, f"{key}[{i}]: expected [text, intent], got {item!r}")
                out.append((_clean(item[0]), item[1].strip()))
        return out

    # "plus" with its out-of-scope class as the 151st label, as the paper counts CLINC's labels
    return Labelled("clinc150", items("train", "oos_train"), items("test", "oos_test"),
                    {"clinc150/data_oos_plus.json": _sha256(path)})


@dataclass
class HotpotQuestion:
    id: str
    question: str
    answer: str
    gold: list[tuple[str, str]]         # (title, text) of the supporting passages
    distractors: list[tuple[str, str]]  # the question's other passages


def load_hotpotqa(path: Path) -> list[HotpotQuestion]:
    if not path.is_file():
        raise DataError(path, "HotpotQA distractor-dev JSONL missing (staged under hotpotqa/)")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                titles, sentences = row["context"]["title"], row["context"]["sentences"]
                wanted = list(dict.fromkeys(row["supporting_facts"]["title"]))
                qid, question, answer = row["id"], row["question"], row["answer"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DataError(path, f"line {n}: not a HotpotQA distractor record "
                                      f"(id, question, answer, supporting_facts.title, context.title/sentences): {exc}") from exc
            passages = {t: "".join(s).strip() for t, s in zip(titles, sentences)}
            missing = [t for t in wanted if t not in passages]
            if missing:
                raise DataError(path, f"line {n} (id {qid}): supporting titles {missing} not among its passages")
            if not str(answer).strip():
                raise DataError(path, f"line {n} (id {qid}): field 'answer' is empty")
            out.append(HotpotQuestion(qid, question, str(answer), [(t, passages[t]) for t in wanted],
                                      [(t, p) for t, p in passages.items() if t not in wanted]))
    if not out:
        raise DataError(path, "no records")
    return out


# ------------------------------------------------------------------------------------------ filling
def _rng(seed: int, *purpose: Any) -> random.Random:
    # a string seed is hashed with SHA-512 by random.Random: stable across runs and Python's hash randomisation
    return random.Random("/".join(str(p) for p in (seed, *purpose)))


def _fill(candidates: Iterable[tuple[Any, int]], budget: int, *, patience: int = 200) -> list[Any]:
    """First fit: take candidates (item, estimated tokens) in order while they fit into ``budget``; a candidate
    that does not fit is skipped, and the filling stops after ``patience`` skips in a row."""
    taken, used, misses = [], 0, 0
    for item, cost in candidates:
        if used + cost <= budget:
            taken.append(item)
            used += cost
            misses = 0
        else:
            misses += 1
            if misses >= patience or budget - used < 1:
                break
    return taken


def _fit(fixed: list[Any], extra: list[Any], render: Callable[[list[Any]], str], length: int,
         counter: TokenCounter, rng: random.Random, estimate: Callable[[Any], int]) -> tuple[str, list[Any], int]:
    """Shuffle ``fixed + extra`` once, render, and drop ``extra`` items, last drawn first, until the exact token
    count is at most ``length``: the per-item estimates miss merges at the joins and the document numbers.
    Items are compared by identity, so equal items stay distinct draws."""
    order = fixed + extra
    rng.shuffle(order)
    keep = list(extra)
    while True:
        text = render(order)
        n = counter.one(text)
        if n <= length:
            return text, order, n
        if not keep:
            raise DataError("recipe", f"the required part of a context alone takes {n} tokens, more than "
                                      f"--length {length}; raise --length or lower --questions")
        over, drop = n - length, set()
        while over > 0 and keep:
            x = keep.pop()
            drop.add(id(x))
            over -= max(estimate(x), 1)
        order = [y for y in order if id(y) not in drop]


# ------------------------------------------------------------------------------------------ ICL
ICL_LINE = "{text} \n Label: {label} \n"  # the MAB paper's line format for labelled examples


def label_map(data: Labelled, seed: int) -> dict[str, int]:
    """A seeded random permutation of the sorted class names onto 0..K-1 (hidden from the model)."""
    names = sorted({c for _, c in data.train} | {c for _, c in data.test})
    numbers = list(range(len(names)))
    _rng(seed, data.name, "labels").shuffle(numbers)
    return dict(zip(names, numbers))


def build_icl(data: Labelled, *, length: int, seed: int, n_questions: int, counter: TokenCounter) -> tuple[dict, dict]:
    labels = label_map(data, seed)
    unknown = sorted({c for _, c in data.test} - {c for _, c in data.train})
    if unknown:
        raise DataError(data.name, f"test classes {unknown[:5]} have no training example")
    if n_questions > len(data.test):
        raise DataError(data.name, f"--questions {n_questions}: only {len(data.test)} test sentences")
    tests = _rng(seed, data.name, "questions").sample(data.test, n_questions)
    asked = {t for t, _ in tests}
    # label-balanced draw: per class a seeded queue of its examples, taken round robin; the first round starts
    # with the classes of the test questions, so even a short context holds an example of every asked label
    queues: dict[str, list[str]] = {}
    for text, cat in data.train:
        if text not in asked:  # a demonstration that repeats a test sentence would give the answer away
            queues.setdefault(cat, []).append(text)
    order_rng = _rng(seed, data.name, "draw")
    for cat in sorted(queues):
        order_rng.shuffle(queues[cat])
    classes = sorted(queues)
    needed = {c for _, c in tests}
    drawn: list[tuple[str, str]] = []
    depth = 0
    while any(depth < len(q) for q in queues.values()):
        round_order = list(classes)
        order_rng.shuffle(round_order)
        if depth == 0:
            round_order.sort(key=lambda c: c not in needed)  # stable: keeps the shuffle within both groups
        drawn += [(queues[c][depth], c) for c in round_order if depth < len(queues[c])]
        depth += 1
    lines = [ICL_LINE.format(text=t, label=labels[c]) for t, c in drawn]
    costs = counter.many(lines)
    first_round = len([c for c in classes if c in needed])
    if sum(costs[:first_round]) > length:
        raise DataError(data.name, f"--length {length}: one example for each of the {first_round} asked labels "
                                   f"takes {sum(costs[:first_round])} tokens; raise --length or lower --questions")
    if sum(costs) < length * (1 - TRIM_TOLERANCE):
        raise DataError(data.name, f"--length {length}: all {len(lines)} training examples make only {sum(costs)} "
                                   "tokens; lower --length")
    chosen = _fill(list(zip(range(len(lines)), costs)), length)
    fixed = [i for i in chosen if i < first_round]
    extra = [i for i in chosen if i >= first_round]
    rng = _rng(seed, data.name, "shuffle", length)
    boxed = [[i] for i in fixed], [[i] for i in extra]  # distinct objects, so identity marks each draw
    text, order, n = _fit(boxed[0], boxed[1], lambda xs: "".join(lines[x[0]] for x in xs), length, counter, rng,
                          lambda x: costs[x[0]])
    present = {drawn[x[0]][1] for x in order}
    lost = sorted(needed - present)
    if lost:  # only the first round holds some asked labels, and it is never trimmed; this guards that promise
        raise DataError(data.name, f"labels {lost[:5]} of asked questions fell out of the context")
    per_label = {}
    for x in order:
        per_label[drawn[x[0]][1]] = per_label.get(drawn[x[0]][1], 0) + 1
    source = source_name(f"icl_{data.name}", length)
    row = {"context": text, "questions": [t for t, _ in tests], "answers": [[str(labels[c])] for _, c in tests],
           "metadata": _metadata(source, [f"{source}_q{i:03d}" for i in range(len(tests))])}
    stats = {"source": source, "context_tokens": n, "context_chars": len(text), "examples": len(order),
             "labels_in_context": len(per_label), "min_examples_per_label": min(per_label.values()),
             "max_examples_per_label": max(per_label.values()), "questions": len(tests),
             "question_labels": len(needed)}
    return row, stats


# ------------------------------------------------------------------------------------------ AR
def _passage(index: int, title: str, text: str) -> str:
    return f"Document {index}:\n{title}\n{text}"


def build_mhqa(questions_all: list[HotpotQuestion], *, length: int, seed: int, n_questions: int, gold_share: float,
               counter: TokenCounter) -> tuple[list[dict], dict]:
    if n_questions > len(questions_all):
        raise DataError("hotpotqa", f"--questions {n_questions}: only {len(questions_all)} questions in the copy")
    asked = _rng(seed, "hotpotqa", "questions").sample(questions_all, n_questions)
    # one text per title: the first in file order (two titles appear with slightly different texts in the copy)
    pool: dict[str, str] = {}
    for q in questions_all:
        for title, text in q.gold + q.distractors:
            pool.setdefault(title, text)
    pool_order = sorted(pool)
    _rng(seed, "hotpotqa", "pool").shuffle(pool_order)
    # per-passage estimate: its block with a representative document number, plus the blank line between blocks
    sep = counter.one("\n\n")
    cost_of: dict[tuple[str, str], int] = {}

    def estimate(items: list[tuple[str, str]]) -> None:
        todo = [p for p in dict.fromkeys(items) if p not in cost_of]
        for p, c in zip(todo, counter.many([_passage(100, t, x) for t, x in todo])):
            cost_of[p] = c + sep

    for q in asked:
        estimate(q.gold + q.distractors)
    # rows: questions in their drawn order, a new row when the gold passages would pass their share
    rows_q: list[list[HotpotQuestion]] = [[]]
    gold_tokens = 0
    for q in asked:
        new = [p for p in q.gold if p[0] not in {t for r in rows_q[-1] for t, _ in r.gold}]
        cost = sum(cost_of[p] for p in new)
        if cost > gold_share * length:
            raise DataError("hotpotqa", f"--length {length}: the gold passages of question {q.id} take {cost} tokens, "
                                        f"more than --gold-share {gold_share} of the context; raise --length")
        if rows_q[-1] and gold_tokens + cost > gold_share * length:
            rows_q.append([])
            gold_tokens = sum(cost_of[p] for p in q.gold)
        else:
            gold_tokens += cost
        rows_q[-1].append(q)
    out_rows, row_stats = [], []
    source = source_name("mhqa_hotpotqa", length)
    for k, qs in enumerate(rows_q):
        gold = list(dict.fromkeys(p for q in qs for p in q.gold))
        gold_titles = {t for t, _ in gold}
        own = [p for q in qs for p in q.distractors]
        _rng(seed, "hotpotqa", "own", qs[0].id).shuffle(own)
        seen = set(gold_titles)
        candidates = []
        for title, text in own + [(t, pool[t]) for t in pool_order]:
            if title not in seen:
                seen.add(title)
                candidates.append((title, text))
        budget = length - sum(cost_of[p] for p in gold)
        def costed(items=candidates):
            # tokenised lazily and cached: a short context never needs the copy's 13k passages counted
            for i in range(0, len(items), 256):
                estimate(items[i:i + 256])
                yield from ((p, cost_of[p]) for p in items[i:i + 256])

        picked = _fill(costed(), budget)
        used = sum(cost_of[p] for p in picked)
        if len(picked) == len(candidates) and used < budget * (1 - TRIM_TOLERANCE):
            raise DataError("hotpotqa", f"--length {length}: not enough distinct passages to fill row {k}")
        boxed_gold, boxed_extra = [[p] for p in gold], [[p] for p in picked]
        text, order, n = _fit(boxed_gold, boxed_extra,
                              lambda xs: "\n\n".join(_passage(j + 1, *x[0]) for j, x in enumerate(xs)),
                              length, counter, _rng(seed, "hotpotqa", "shuffle", length, k), lambda x: cost_of[x[0]])
        ids = [f"{SOURCE_PREFIX}hotpotqa_{q.id}" for q in qs]
        out_rows.append({"context": text, "questions": [q.question for q in qs], "answers": [[q.answer] for q in qs],
                         "metadata": _metadata(source, ids)})
        row_stats.append({"questions": len(qs), "gold_passages": len(gold), "passages": len(order),
                          "context_tokens": n, "context_chars": len(text)})
    stats = {"source": source, "rows": row_stats, "questions": sum(r["questions"] for r in row_stats),
             "question_ids": [q.id for q in asked]}
    return out_rows, stats


def _metadata(source: str, qa_pair_ids: list[str]) -> dict[str, Any]:
    # as in MAB's RULER-QA and ICL rows: only source and qa_pair_ids are set, the other children are null
    meta = {k: None for k in ("demo", "haystack_sessions", "keypoints", "previous_events", "question_dates",
                              "question_ids", "question_types")}
    return {**meta, "qa_pair_ids": qa_pair_ids, "source": source}


# ------------------------------------------------------------------------------------------ build
def default_sources() -> Path:
    from tasks.base import data_root

    return data_root()  # $HARNESS_DATA, else ../shared/data: where every task finds the staged copies


def build(out: Path, *, lengths: Sequence[int], seed: int, counter: TokenCounter, questions: int = 100,
          gold_share: float = 0.5, data_root: Path | None = None, log: Callable[[str], None] = lambda m: None) -> dict:
    """Write ``out/data/{Accurate_Retrieval,Test_Time_Learning}-00000-of-00001.parquet`` and ``out/recipe.json``;
    returns the manifest."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = sorted(dict.fromkeys(int(x) for x in lengths))
    bad = [x for x in lengths if x < MIN_LENGTH]
    if not lengths or bad:
        raise ValueError(f"--length: every length must be at least {MIN_LENGTH} tokens, got {list(lengths) or 'none'}")
    if questions < 1:
        raise ValueError(f"--questions must be at least 1, got {questions}")
    if not 0 < gold_share <= 1:
        raise ValueError(f"--gold-share must be in (0, 1], got {gold_share}")
    root = Path(data_root) if data_root else default_sources()
    mab_sources = root / "memoryagentbench_sources"
    hotpot_path = root / "hotpotqa" / "hotpotqa_dev_distractor_subset.jsonl"
    icl = [load_banking77(mab_sources), load_clinc150(mab_sources)]
    hotpot = load_hotpotqa(hotpot_path)
    files = {f"memoryagentbench_sources/{k}": {"sha256": v} for d in icl for k, v in d.files.items()}
    files["hotpotqa/hotpotqa_dev_distractor_subset.jsonl"] = {"sha256": _sha256(hotpot_path)}

    split_rows: dict[str, list[dict]] = {"Accurate_Retrieval": [], "Test_Time_Learning": []}
    stats: dict[str, Any] = {}
    for length in lengths:
        t0 = time.perf_counter()
        rows, st = build_mhqa(hotpot, length=length, seed=seed, n_questions=questions, gold_share=gold_share,
                              counter=counter)
        split_rows["Accurate_Retrieval"] += rows
        stats[st["source"]] = st
        for data in icl:
            row, st = build_icl(data, length=length, seed=seed, n_questions=questions, counter=counter)
            split_rows["Test_Time_Learning"].append(row)
            stats[st["source"]] = st
        log(f"[recipe] length {length}: {len(rows)} AR row(s) + {len(icl)} TTL rows in {time.perf_counter() - t0:.1f} s")

    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    schema = official_schema()
    written = {}
    for split, rows in split_rows.items():
        path = data_dir / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
        written[split] = {"path": f"data/{path.name}", "sha256": _sha256(path), "rows": len(rows)}
    manifest = {
        "kind": KIND, "recipe_version": RECIPE_VERSION, "note": NOTE,
        "seed": seed, "lengths": lengths, "questions_per_competency": questions, "gold_share": gold_share,
        "tokenizer": counter.identity, "source_files": files,
        "label_maps": {d.name: label_map(d, seed) for d in icl},
        "pools": {d.name: {"train": len(d.train), "test": len(d.test), "labels": len(label_map(d, seed))} for d in icl}
        | {"hotpotqa": {"questions": len(hotpot)}},
        "sources": stats, "files": written,
    }
    # no timestamps or timings: the same inputs give the same bytes, and so the same data digest in records
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The recipe manifest of a data folder, or None when the folder holds none; a damaged one is a DataError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(path, f"not valid JSON ({exc}); rebuild with python -m tasks.memoryagentbench.recipe") from exc
    if not isinstance(manifest, dict) or manifest.get("kind") != KIND:
        raise DataError(path, f"field 'kind' is {manifest.get('kind') if isinstance(manifest, dict) else manifest!r}, "
                              f"expected {KIND!r}")
    return manifest


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m tasks.memoryagentbench.recipe",
        description="Build MAB-recipe data (NOT MemoryAgentBench): Test-Time Learning (ICL on BANKING77 and "
                    "CLINC150) and Accurate Retrieval (multi-hop QA on the partial HotpotQA dev copy) in the "
                    "official parquet schema, by the MAB paper's recipe. Run it with task=memoryagentbench_recipe "
                    "task.data_dir=OUT.")
    ap.add_argument("--out", required=True, help="folder to write data/*.parquet and recipe.json into")
    ap.add_argument("--length", type=int, nargs="+", default=[8192],
                    help="context length(s) in tokens of --tokenizer; each is its own set of sources (default 8192)")
    ap.add_argument("--seed", type=int, default=0, help="construction seed (default 0)")
    ap.add_argument("--questions", type=int, default=100, help="questions per competency and length (default 100)")
    ap.add_argument("--gold-share", type=float, default=0.5,
                    help="largest share of an AR context taken by gold passages; more questions than fit "
                         "go to further rows (default 0.5)")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="backbone config name (conf/backbone/) or tokenizer folder the lengths are counted with "
                         f"(default {DEFAULT_TOKENIZER}, the embedded backbone)")
    ap.add_argument("--data", default=None, help="staged data root (default: $HARNESS_DATA or ../shared/data)")
    args = ap.parse_args(argv)
    out = Path(args.out).expanduser()
    if (out / "data").is_dir() and any((out / "data").glob("*.parquet")) and not (out / MANIFEST).is_file():
        raise SystemExit(f"--out {out}: holds parquet files but no {MANIFEST}; it may be real MAB data, "
                         "refusing to overwrite it")
    t0 = time.perf_counter()
    try:
        counter = load_counter(args.tokenizer)
        data_root = Path(args.data).expanduser() if args.data else None
        manifest = build(out, lengths=args.length, seed=args.seed, counter=counter, questions=args.questions,
                         gold_share=args.gold_share, data_root=data_root, log=lambda m: print(m, file=sys.stderr))
    except (DataError, ValueError) as exc:
        raise SystemExit(f"error: {exc}") from None
    size = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    print(f"[recipe] wrote {out} ({size / 1e6:.2f} MB parquet) in {time.perf_counter() - t0:.1f} s; "
          f"sources: {', '.join(sorted(manifest['sources']))}", file=sys.stderr)
    print(f"[recipe] run: python -m harness task=memoryagentbench_recipe task.data_dir={out} method=...", file=sys.stderr)


if __name__ == "__main__":
    main()

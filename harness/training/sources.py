"""Data sources for δ-mem training, each a small converter to :class:`Conversation` records.

* :class:`ChatJsonl`: any JSONL of ``{"messages": [{role, content}, ...]}`` (or ``{prompt, response}``, as the
  reference accepts), optional ``id`` and ``group`` per line;
* :class:`QasperHF`: the official Qasper schema (``allenai/qasper`` on the HF hub, a local parquet/JSONL of
  those rows, or the original ``qasper-*-v0.3.json``);
* :class:`LevalQasper`: L-Eval's Qasper-derived ``scientific_qa`` file (``input``/``instructions``/``outputs``);
* :class:`Squality`: SQuALITY v1.3 ``{metadata, document, questions}`` files;
* :class:`~harness.training.synthetic.SyntheticMemory` (in ``synthetic.py``): procedural memory dialogues.

Documents become a conversation of user turns (one per chunk of whole paragraphs), then the question as
the last user turn and the answer as the target, so the §7.2 construction writes the document and reads
only the question. Every source refuses the evaluation data of the harness's benchmarks.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from harness.errors import ConfigError, DataError
from harness.training.episodes import ROLES, Conversation

ROOT = Path(__file__).resolve().parents[2]

# Evaluation data of the harness's benchmarks: never training data.
_BENCHMARK_DIRS = ("locomo", "hotpotqa", "ifeval", "gpqa", "memoryagentbench", "memoryagentbench_sources",
                   "memoryagentbench_recipe")
_BENCHMARK_HUB_IDS = ("locomo", "hotpotqa", "ifeval", "gpqa", "memoryagentbench")


def refuse_benchmark_data(path: str | Path | None = None, *, hub_id: str | None = None) -> None:
    """Raise if ``path`` or ``hub_id`` is evaluation data of a benchmark in this harness.

    Paths: anything under ``tasks/`` or under a folder named after a benchmark (the layout of the shared
    data). Hub ids: any id naming one of the benchmarks.
    """
    if path:
        p = Path(str(path)).expanduser()
        try:
            inside_tasks = p.resolve().is_relative_to((ROOT / "tasks").resolve())
        except (OSError, ValueError):
            inside_tasks = False
        if inside_tasks or {part.lower() for part in p.parts[:-1]} & set(_BENCHMARK_DIRS):
            raise ConfigError(f"{path}: this is evaluation data of a benchmark in this harness (LoCoMo, HotpotQA, "
                              "IFEval, GPQA, MemoryAgentBench); it must never be used for training")
    if hub_id:
        flat = str(hub_id).lower().replace("-", "").replace("_", "")
        if any(h in flat for h in _BENCHMARK_HUB_IDS):
            raise ConfigError(f"{hub_id}: this hub dataset is evaluation data of a benchmark in this harness; "
                              "it must never be used for training")


def data_path(path: str | Path) -> Path:
    """``path`` as given if it exists or is absolute, else relative to the shared data root
    (``$HARNESS_DATA``, default ``../shared/data``)."""
    from tasks.base import data_root

    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return data_root() / p


def stable_hash(*parts: Any) -> str:
    return hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------ documents
_BLANKS = re.compile(r"\n\s*\n+")
_SPACES = re.compile(r"[ \t\u00a0]+")


def paragraphs(text: str) -> list[str]:
    """Whitespace-normalised paragraphs (blank-line separated; single newlines inside become spaces)."""
    out = []
    for block in _BLANKS.split(text.replace("\r\n", "\n")):
        para = _SPACES.sub(" ", " ".join(line.strip() for line in block.split("\n"))).strip()
        if para:
            out.append(para)
    return out


def chunk_paragraphs(paras: Sequence[str], chunk_chars: int) -> list[str]:
    """Greedy packing of whole paragraphs into chunks of about ``chunk_chars`` characters (a paragraph
    longer than that is split at sentence ends, or hard-split as a last resort)."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    pieces: list[str] = []
    for p in paras:
        while len(p) > chunk_chars:
            cut = p.rfind(". ", 0, chunk_chars)
            cut = cut + 1 if cut > chunk_chars // 2 else chunk_chars
            pieces.append(p[:cut].strip())
            p = p[cut:].strip()
        if p:
            pieces.append(p)
    chunks: list[str] = []
    current: list[str] = []
    size = 0
    for p in pieces:
        if current and size + len(p) + 2 > chunk_chars:
            chunks.append("\n\n".join(current))
            current, size = [], 0
        current.append(p)
        size += len(p) + 2
    if current:
        chunks.append("\n\n".join(current))
    return chunks


@dataclass(frozen=True)
class DocumentLayout:
    """How a (document, question, answer) triple becomes chat messages."""

    chunk_chars: int = 2000
    system: str | None = None
    chunk_prefix: str = "Document, part {i} of {n}:\n"
    question_prefix: str = "Question about the document: "

    def messages(self, document_chunks: Sequence[str], question: str, answer: str) -> tuple[dict[str, str], ...]:
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        n = len(document_chunks)
        for i, chunk in enumerate(document_chunks, 1):
            msgs.append({"role": "user", "content": self.chunk_prefix.format(i=i, n=n) + chunk})
        msgs.append({"role": "user", "content": self.question_prefix + question.strip()})
        msgs.append({"role": "assistant", "content": answer.strip()})
        return tuple(msgs)


def _layout(chunk_chars: int, system: str | None) -> DocumentLayout:
    return DocumentLayout(chunk_chars=int(chunk_chars), system=system or None)


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """``(line number, object)`` per non-blank line; a ``.gz`` file is decompressed."""
    if not path.is_file():
        raise DataError(path, "no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        try:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, f"line {n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        except (gzip.BadGzipFile, EOFError) as exc:
            raise DataError(path, f"not a readable gzip file ({exc})") from None


def _require(path: Path, where: str, obj: Any, key: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(path, f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataError(path, f"{where}: field {key!r} must be {names}, got {type(value).__name__}")
    return value


class Source:
    """A named producer of conversations. ``name`` keys the source in logs and the held-out split."""

    name: str = "source"
    repeat: int = 1  # times its training episodes enter an epoch (train_data.sources.NAME.repeat)

    def conversations(self) -> list[Conversation]:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": type(self).__name__}


# ------------------------------------------------------------------------------------------ chat JSONL
class ChatJsonl(Source):
    """User chat data: one JSON object per line.

    ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``, or ``{"prompt", "response"}``
    (a single turn: no history, so it is counted and skipped). Optional ``id`` (default: the line number) and
    ``group`` (the held-out split keeps a group together; default: the conversation's own id).
    """

    def __init__(self, path: str, name: str = "chat_jsonl", limit: int | None = None) -> None:
        if not path:
            raise ConfigError("train_data source chat_jsonl needs path=/file.jsonl")
        self.path = data_path(path)
        refuse_benchmark_data(self.path)
        self.name = name
        self.limit = limit

    def conversations(self) -> list[Conversation]:
        out = []
        for n, row in _read_jsonl(self.path):
            where = f"line {n}"
            if not isinstance(row, dict):
                raise DataError(self.path, f"{where}: expected a JSON object, got {type(row).__name__}")
            if "messages" not in row and ("prompt" in row or "response" in row):
                prompt = _require(self.path, where, row, "prompt", str)
                response = _require(self.path, where, row, "response", str)
                messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            else:
                raw = _require(self.path, where, row, "messages", list)
                messages = []
                for i, m in enumerate(raw):
                    at = f"{where}, messages[{i}]"
                    if not isinstance(m, dict):
                        raise DataError(self.path, f"{at}: expected an object with role and content")
                    role = _require(self.path, at, m, "role", str)
                    content = _require(self.path, at, m, "content", str)
                    if role not in ROLES:
                        raise DataError(self.path, f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
                    messages.append({"role": role, "content": content})
            cid = str(row.get("id", f"line{n}"))
            out.append(Conversation(id=f"{self.name}/{cid}", source=self.name, group=str(row.get("group", cid)),
                                    messages=tuple(messages), metadata={"line": n}))
            if self.limit is not None and len(out) >= self.limit:
                break
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path)}


# ------------------------------------------------------------------------------------------ Qasper
def qasper_answer_text(answer: dict[str, Any]) -> str | None:
    """One annotator's answer as text, by the Qasper evaluation script's precedence."""
    if answer.get("unanswerable"):
        return "Unanswerable"
    yes_no = answer.get("yes_no")
    if yes_no is not None:
        return "Yes" if yes_no else "No"
    if (answer.get("free_form_answer") or "").strip():
        return answer["free_form_answer"].strip()
    spans = [s.strip() for s in answer.get("extractive_spans") or [] if s and s.strip()]
    return ", ".join(spans) if spans else None


def _columns_to_rows(value: Any) -> list[dict[str, Any]]:
    """HF ``Sequence`` of structs is a dict of lists; the original JSON is a list of dicts. Accept both."""
    if isinstance(value, dict):
        keys = list(value)
        n = len(value[keys[0]]) if keys else 0
        return [{k: value[k][i] for k in keys} for i in range(n)]
    return list(value or [])


def qasper_paper(row: dict[str, Any]) -> tuple[str, str, list[tuple[str, list[str]]]]:
    """``(id, text, [(question, [answers…])])`` from one Qasper paper in HF or original layout."""
    paras = [row.get("title", "").strip(), row.get("abstract", "").strip()]
    for section in _columns_to_rows(row.get("full_text")):
        name = (section.get("section_name") or "").strip()
        body = [p.strip() for p in section.get("paragraphs") or [] if p and p.strip()]
        if name and body:
            paras.append(name)
        paras.extend(body)
    qas = []
    for qa in _columns_to_rows(row.get("qas")):
        answers = []
        for ann in _columns_to_rows(qa.get("answers")):
            text = qasper_answer_text(ann.get("answer") or {})
            if text is not None:
                answers.append(text)
        qas.append((qa.get("question", ""), answers))
    return str(row.get("id", "")), "\n\n".join(p for p in paras if p), qas


class QasperHF(Source):
    """The official Qasper schema. ``hub_id`` (online, via ``datasets``) or ``path``: a ``.parquet`` /
    ``.jsonl`` of HF rows, or the original ``qasper-train-v0.3.json`` (``{paper_id: paper}``).

    ``answers: all`` gives one conversation per annotator answer, ``first`` one per question.
    """

    def __init__(self, path: str | None = None, hub_id: str | None = "allenai/qasper", split: str = "train",
                 name: str = "qasper", answers: str = "all", chunk_chars: int = 2000, system: str | None = None,
                 limit: int | None = None, revision: str | None = None) -> None:
        if answers not in ("all", "first"):
            raise ConfigError(f"qasper answers={answers!r}: expected all or first")
        self.path = data_path(path) if path else None
        refuse_benchmark_data(self.path, hub_id=None if path else hub_id)
        self.hub_id = hub_id
        self.split = split
        self.revision = revision
        self.name = name
        self.answers = answers
        self.layout = _layout(chunk_chars, system)
        self.limit = limit

    def rows(self) -> Iterable[dict[str, Any]]:
        if self.path is not None:
            if not self.path.exists():
                raise DataError(self.path, "no such file")
            if self.path.suffix == ".json":
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict):
                    raise DataError(self.path, "expected the original layout {paper_id: paper}")
                return [{"id": pid, **paper} for pid, paper in data.items()]
            if self.path.suffix == ".jsonl":
                return [row for _, row in _read_jsonl(self.path)]
            if self.path.suffix == ".parquet":
                import pandas as pd

                return pd.read_parquet(self.path).to_dict("records")
            raise DataError(self.path, "expected .json (original), .jsonl or .parquet (HF rows)")
        if not self.hub_id:
            raise ConfigError("qasper source needs path= or hub_id=")
        try:
            from datasets import load_dataset

            return load_dataset(self.hub_id, split=self.split, revision=self.revision)
        except Exception as exc:
            raise DataError(self.hub_id, f"could not load split {self.split!r} from the hub "
                                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                         "offline, pass path= to a local copy") from exc

    def conversations(self) -> list[Conversation]:
        out = []
        for i, row in enumerate(self.rows()):
            for key in ("full_text", "qas"):
                if key not in row:
                    raise DataError(self.path or self.hub_id, f"row {i}: missing field {key!r} (not the Qasper schema)")
            pid, text, qas = qasper_paper(row)
            pid = pid or f"row{i}"
            chunks = chunk_paragraphs(paragraphs(text), self.layout.chunk_chars)
            for qi, (question, answers) in enumerate(qas):
                for ai, answer in enumerate(answers[:1] if self.answers == "first" else answers):
                    out.append(Conversation(
                        id=f"{self.name}/{pid}/q{qi}/a{ai}", source=self.name, group=pid,
                        messages=self.layout.messages(chunks, question, answer),
                        metadata={"question": question, "references": list(answers)}))
            if self.limit is not None and len(out) >= self.limit:
                break
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path) if self.path else None, "hub_id": self.hub_id,
                "split": self.split, "answers": self.answers, "chunk_chars": self.layout.chunk_chars}


class LevalQasper(Source):
    """L-Eval ``scientific_qa.jsonl``: ``{input: paper, instructions: [q], outputs: [a]}`` per paper.
    A paper's id is a hash of its text (the file has none), stable under reordering."""

    def __init__(self, path: str, name: str = "qasper_leval", chunk_chars: int = 2000, system: str | None = None,
                 limit: int | None = None) -> None:
        self.path = data_path(path)
        refuse_benchmark_data(self.path)
        self.name = name
        self.layout = _layout(chunk_chars, system)
        self.limit = limit

    def conversations(self) -> list[Conversation]:
        out = []
        for n, row in _read_jsonl(self.path):
            where = f"line {n}"
            doc = _require(self.path, where, row, "input", str)
            questions = _require(self.path, where, row, "instructions", list)
            answers = _require(self.path, where, row, "outputs", list)
            if len(questions) != len(answers):
                raise DataError(self.path, f"{where}: {len(questions)} instructions but {len(answers)} outputs")
            pid = stable_hash(doc)[:12]
            chunks = chunk_paragraphs(paragraphs(doc), self.layout.chunk_chars)
            for qi, (q, a) in enumerate(zip(questions, answers)):
                qid = stable_hash(q, a)[:8]  # the file repeats some papers; a repeat keeps its id
                out.append(Conversation(id=f"{self.name}/{pid}/{qid}", source=self.name, group=pid,
                                        messages=self.layout.messages(chunks, str(q), str(a)),
                                        metadata={"question": str(q), "references": [str(a)], "line": n}))
            if self.limit is not None and len(out) >= self.limit:
                break
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "path": str(self.path), "chunk_chars": self.layout.chunk_chars}


class Squality(Source):
    """SQuALITY v1.3 (txt): ``{metadata: {passage_id}, document, questions: [{question_text, question_number,
    responses: [{response_text}]}]}``. Each question has 4 reference summaries: ``answers: all`` makes one
    conversation per reference, ``first`` one per question. A story is one group."""

    def __init__(self, paths: Sequence[str], name: str = "squality", answers: str = "all", chunk_chars: int = 2000,
                 system: str | None = None, limit: int | None = None) -> None:
        if isinstance(paths, str):
            paths = [paths]
        if not paths:
            raise ConfigError("squality source needs paths=[...]")
        if answers not in ("all", "first"):
            raise ConfigError(f"squality answers={answers!r}: expected all or first")
        self.paths = [data_path(p) for p in paths]
        for p in self.paths:
            refuse_benchmark_data(p)
        self.name = name
        self.answers = answers
        self.layout = _layout(chunk_chars, system)
        self.limit = limit

    def conversations(self) -> list[Conversation]:
        out = []
        for path in self.paths:
            for n, row in _read_jsonl(path):
                where = f"line {n}"
                meta = _require(path, where, row, "metadata", dict)
                pid = str(_require(path, f"{where}, metadata", meta, "passage_id", (str, int)))
                doc = _require(path, where, row, "document", str)
                questions = _require(path, where, row, "questions", list)
                chunks = chunk_paragraphs(paragraphs(doc), self.layout.chunk_chars)
                for qi, q in enumerate(questions):
                    at = f"{where}, questions[{qi}]"
                    text = _require(path, at, q, "question_text", str)
                    responses = _require(path, at, q, "responses", list)
                    refs = [str(_require(path, f"{at}, responses[{ri}]", r, "response_text", str)).strip()
                            for ri, r in enumerate(responses)]
                    refs = [r for r in refs if r]
                    qnum = q.get("question_number", qi)
                    for ai, ref in enumerate(refs[:1] if self.answers == "first" else refs):
                        out.append(Conversation(
                            id=f"{self.name}/{pid}/q{qnum}/a{ai}", source=self.name, group=pid,
                            messages=self.layout.messages(chunks, text, ref),
                            metadata={"question": text, "references": refs, "file": path.name}))
                if self.limit is not None and len(out) >= self.limit:
                    return out
        return out

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "paths": [str(p) for p in self.paths], "answers": self.answers,
                "chunk_chars": self.layout.chunk_chars}

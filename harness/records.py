"""Run records: one folder per (task, method, backbone, seed, config hash).

``header.json`` describes the run (resolved config, versions, commit, data fingerprint,
timings, metrics, status) and is replaced atomically; it is strict JSON (a NaN is written as
``null``). ``samples.jsonl`` is append-only, one finished sample per line, flushed and fsynced
per batch. A record is ``complete`` only when every sample is in and the metrics are written.
A run killed at any point leaves a record that the next run resumes: a torn *last* line is cut
off, duplicates are dropped, and only the missing samples are computed. Any other damage (an
unreadable header, a bad line before the last) is a :class:`RecordError` that names the file
and the way out; ``run.force=true`` sets the damaged record aside (:meth:`RunRecord.set_aside`)
and starts afresh.

One process writes a record at a time: :class:`RecordLock` holds an ``flock`` on ``.lock`` in
the record folder, which the kernel releases when the holder dies, however it dies.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from harness.errors import HarnessError
from harness.types import SampleRecord

FORMAT_VERSION = 1
STATUSES = ("running", "complete", "failed", "interrupted")
LOCK_FILE = ".lock"
# Records set aside by run.force live in folders whose names start with this; they are not records.
SET_ASIDE_PREFIX = ".replaced-"


class RecordError(HarnessError):
    """A record on disk that cannot be read as it is; the message names the file and what to do."""


class RecordBusy(HarnessError):
    """Another live process holds the record's lock."""
_PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "hydra-core", "numba", "nltk", "rank-bm25",
             "llmlingua", "lm-eval", "peft", "sentence-transformers")


def config_hash(config: dict[str, Any]) -> str:
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:10]


def record_dir(results_dir: str | Path, *, task: str, method: str, backbone: str, seed: int, chash: str) -> Path:
    return Path(results_dir) / task / method / backbone / f"seed-{seed}-{chash}"


def package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def git_revision(cwd: Path | None = None) -> dict[str, Any]:
    cwd = cwd or Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                    capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None: JSON has no NaN, and a standard error of one
    question is undefined, not a number."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def data_digest(fingerprint: dict[str, Any] | None) -> str | None:
    """One digest of the content checksums in a task's data fingerprint (every ``*sha256`` value, by its
    key path), so that the same bytes give the same digest wherever they were read from, plus the construction
    parameters of recipe-built data (a ``recipe`` block). None when the fingerprint holds no checksum (a task
    that does not say what it read)."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, str) and str(k).endswith("sha256"):
                    found.append((f"{path}/{k}", v))
                else:
                    walk(v, f"{path}/{k}")

    walk(fingerprint or {}, "")
    if not found:
        return None
    extra: list[tuple[str, Any]] = [("shuffle_seed", (fingerprint or {}).get("shuffle_seed"))]
    if (fingerprint or {}).get("recipe") is not None:
        # data built by recipe: its parameters (seed, lengths, tokenizer, label maps, counts) are part of what was
        # read, beside the files' checksums; only added when present, so every other digest stays as it was
        extra.append(("recipe", json.dumps(fingerprint["recipe"], sort_keys=True, default=str)))
    blob = json.dumps(sorted(found) + extra, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(strict_json(data), f, indent=2, sort_keys=False, default=str, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class RunRecord:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.header_path = self.path / "header.json"
        self.samples_path = self.path / "samples.jsonl"

    # ---------------------------------------------------------------- reading
    def _way_out(self) -> str:
        return (f"move {self.path} away, or rerun with run.force=true to set it aside (kept under "
                f"{self.path / (SET_ASIDE_PREFIX + '<time>')}) and start the record afresh")

    def header(self) -> dict[str, Any] | None:
        """The header, or None when there is none yet; a header that is not a JSON object is a RecordError."""
        if not self.header_path.exists():
            return None
        try:
            data = json.loads(self.header_path.read_bytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RecordError(f"{self.header_path}: not valid JSON ({exc}); {self._way_out()}") from exc
        if not isinstance(data, dict):
            raise RecordError(f"{self.header_path}: expected a JSON object, got {type(data).__name__}; "
                              f"{self._way_out()}")
        return data

    def is_complete(self) -> bool:
        h = self.header()
        return bool(h) and h.get("status") == "complete"

    def shard_path(self, rank: int) -> Path:
        """The samples file rank ``rank`` of a data-parallel run appends to."""
        return self.path / f"samples.rank-{rank}.jsonl"

    def shard_paths(self) -> list[Path]:
        return sorted(self.path.glob("samples.rank-*.jsonl"))

    def all_samples(self, *, own_shard: int | None = None) -> dict[str, SampleRecord]:
        """Finished samples of the record and of every rank's shard (the first of each id). Only this process's own
        shard is repaired: another rank may be writing its last line right now."""
        out = self.samples(repair=own_shard is None)
        for shard in self.shard_paths():
            for sid, rec in self._read(shard, repair=shard == (self.shard_path(own_shard) if own_shard is not None
                                                               else None)).items():
                out.setdefault(sid, rec)
        return out

    def samples(self, *, repair: bool = False) -> dict[str, SampleRecord]:
        return self._read(self.samples_path, repair=repair)

    def _read(self, path: Path, *, repair: bool = False) -> dict[str, SampleRecord]:
        """Finished samples by id, the first of each id.

        Only the last line may be bad: a writer killed mid-batch leaves it torn, and it is dropped
        (with ``repair`` also cut from the file, so later appends start on a clean line). A bad line
        with good lines after it was not made by a crash, so it is a RecordError naming the line."""
        if not path.exists():
            return {}
        raw = path.read_bytes()
        lines = raw.splitlines(keepends=True)
        out: dict[str, SampleRecord] = {}
        good_end = 0
        for number, line in enumerate(lines, start=1):
            try:
                if not line.endswith(b"\n"):
                    raise ValueError("no line end")
                rec = SampleRecord.from_dict(json.loads(line.decode("utf-8")))
            except (ValueError, TypeError, AttributeError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                if number == len(lines):
                    break  # the torn last line of a killed writer
                raise RecordError(f"{path}: line {number} of {len(lines)} is not a sample record "
                                  f"({type(exc).__name__}: {str(exc)[:80]}); {self._way_out()}") from exc
            out.setdefault(rec.sample_id, rec)
            good_end += len(line)
        if repair and good_end < len(raw):
            with open(path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return out

    # ---------------------------------------------------------------- writing
    def set_aside(self) -> Path | None:
        """Move the record's files into ``.replaced-<time>/`` inside its folder (never deleted; reports and
        resumption ignore it) so a fresh record can start. Returns that folder, or None when there was nothing."""
        present = [p for p in (self.header_path, self.samples_path, *self.shard_paths(),
                               *sorted(self.path.glob("header.rank-*.json"))) if p.exists()]
        if not present:
            return None
        stem = self.path / f"{SET_ASIDE_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}"
        target, n = stem, 1
        while target.exists():  # set aside twice within a second
            n += 1
            target = stem.with_name(f"{stem.name}-{n}")
        target.mkdir(parents=True)
        for p in present:
            os.replace(p, target / p.name)
        return target

    def write_header(self, header: dict[str, Any]) -> None:
        if header.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}")
        atomic_write_json(self.header_path, {"format_version": FORMAT_VERSION, **header})

    def replace_samples(self, samples: Iterable[SampleRecord]) -> None:
        """``samples.jsonl`` rewritten whole, atomically: a crash leaves the old file or the new one."""
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".samples.jsonl.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                for s in samples:
                    f.write(json.dumps(s.to_dict(), default=str) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.samples_path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def append(self, records: Iterable[SampleRecord], *, path: Path | None = None) -> None:
        """Append finished samples to ``samples.jsonl`` (or a rank's shard) and fsync."""
        lines = "".join(json.dumps(r.to_dict(), default=str) + "\n" for r in records)
        if not lines:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(path or self.samples_path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


class RecordLock:
    """A lock of one record (``with RecordLock(path): ...``).

    Exclusive by default: one process writes the record. The ranks of a data-parallel run share the record
    (``shared=True`` on ``.lock``: a single-process run and a sharded one exclude each other) and each holds its
    own rank lock (``name=".lock.rank-<r>"``). ``flock`` belongs to the open file, so the kernel drops it when the
    holder exits or is killed; the pid written into the file only serves the message of a process that finds the
    lock taken."""

    def __init__(self, record_path: str | Path, *, shared: bool = False, name: str = LOCK_FILE,
                 blocking: bool = False):
        self.path = Path(record_path) / name
        self.shared, self.blocking = shared, blocking
        self._fd: int | None = None

    def __enter__(self) -> "RecordLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        mode = (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | (0 if self.blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, mode)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RecordBusy(f"{self.path.parent} is being written by another process (pid {holder}); wait for it "
                             "to finish or stop it, then rerun the same command to resume") from None
        if not self.shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def iter_records(results_dir: str | Path) -> Iterable[RunRecord]:
    """Every record folder under ``results_dir`` (set-aside copies and other dot-folders excluded)."""
    root = Path(results_dir)
    if not root.exists():
        return []
    return [RunRecord(p.parent) for p in sorted(root.glob("**/header.json"))
            if not any(part.startswith(".") for part in p.relative_to(root).parts[:-1])]

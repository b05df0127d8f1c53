"""Run records: one folder per (task, method, backbone, seed, config hash).

``header.json`` describes the run (resolved config, versions, commit, data fingerprint,
timings, metrics, status) and is replaced atomically; ``samples.jsonl`` is append-only,
one finished sample per line, flushed and fsynced per batch. A record is ``complete``
only when every sample is in and the metrics are written. A run killed at any point
leaves a record that the next run resumes: a torn last line is cut off, duplicates are
dropped, and only the missing samples are computed.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from harness.types import SampleRecord

FORMAT_VERSION = 1
STATUSES = ("running", "complete", "failed")
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


def atomic_write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str)
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
    def header(self) -> dict[str, Any] | None:
        if not self.header_path.exists():
            return None
        return json.loads(self.header_path.read_text())

    def is_complete(self) -> bool:
        h = self.header()
        return bool(h) and h.get("status") == "complete"

    def samples(self, *, repair: bool = False) -> dict[str, SampleRecord]:
        """Finished samples by id. With ``repair``, a torn trailing line left by a killed
        writer is cut from the file so later appends start on a clean line."""
        if not self.samples_path.exists():
            return {}
        raw = self.samples_path.read_bytes()
        out: dict[str, SampleRecord] = {}
        good_end = 0
        pos = 0
        for line in raw.splitlines(keepends=True):
            pos += len(line)
            if not line.endswith(b"\n"):
                break  # torn final line
            try:
                rec = SampleRecord.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError):
                break
            out.setdefault(rec.sample_id, rec)
            good_end = pos
        if repair and good_end < len(raw):
            with open(self.samples_path, "r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
        return out

    # ---------------------------------------------------------------- writing
    def write_header(self, header: dict[str, Any]) -> None:
        if header.get("status") not in STATUSES:
            raise ValueError(f"record status must be one of {STATUSES}")
        atomic_write_json(self.header_path, {"format_version": FORMAT_VERSION, **header})

    def append(self, records: Iterable[SampleRecord]) -> None:
        lines = "".join(json.dumps(r.to_dict(), default=str) + "\n" for r in records)
        if not lines:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.samples_path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())


def iter_records(results_dir: str | Path) -> Iterable[RunRecord]:
    root = Path(results_dir)
    if not root.exists():
        return []
    return [RunRecord(p.parent) for p in sorted(root.glob("**/header.json"))]

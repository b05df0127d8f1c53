"""Benchmark data read straight from the Hugging Face Hub, for users who are online.

A task's data setting (``task.data_path``, ``task.data_dir`` or the task's environment variable)
may hold ``hf://<owner>/<name>[@<revision>][?name=<config>&split=<split>]`` instead of a local
path: the rows then come from ``datasets.load_dataset`` at that revision (pin a commit hash for a
reproducible run), and the task validates them exactly as it validates its local files. Each task
supplies the official dataset's config name and split as defaults, so ``hf://hotpotqa/hotpot_qa``
alone means the distractor validation split.

The run record gets the URI with the revision asked for and a SHA-256 of the rows as loaded, so two
runs that read different data never look alike.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from harness.errors import DataError

PREFIX = "hf://"


@dataclass(frozen=True)
class HubSource:
    repo_id: str
    revision: str | None = None
    name: str | None = None
    split: str | None = None

    @property
    def uri(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in (("name", self.name), ("split", self.split)) if v)
        return f"{PREFIX}{self.repo_id}{'@' + self.revision if self.revision else ''}{'?' + query if query else ''}"


def is_hub_uri(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def parse_hub_uri(value: str, *, name: str | None = None, split: str | None = None) -> HubSource:
    """``hf://owner/dataset[@revision][?name=..&split=..]``; ``name``/``split`` are the task's defaults."""
    parts = urlsplit(value)
    if parts.scheme != "hf" or parts.fragment:
        raise ValueError(f"{value!r} is not an hf://owner/dataset[@revision][?name=..&split=..] URI")
    path = f"{parts.netloc}{parts.path}"
    repo_id, _, revision = path.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"{value!r}: the dataset must be written owner/dataset, got {repo_id!r}")
    query = parse_qs(parts.query, keep_blank_values=False)
    unknown = sorted(set(query) - {"name", "split"})
    if unknown:
        raise ValueError(f"{value!r}: unknown query keys {unknown} (allowed: name, split)")
    return HubSource(repo_id=repo_id, revision=revision or None, name=query.get("name", [name])[-1],
                     split=query.get("split", [split])[-1])


def load_hub_dataset(source: HubSource, *, split: str | None = None):
    """The ``datasets.Dataset`` of one split; any failure (offline, gated, unknown revision) is a DataError
    that says how to run without the network."""
    split = split or source.split
    try:
        from datasets import load_dataset
    except ImportError as exc:  # pragma: no cover - datasets is a pinned dependency
        raise DataError(source.uri, "reading from the Hub needs the `datasets` package") from exc
    try:
        return load_dataset(source.repo_id, source.name, split=split, revision=source.revision)
    except Exception as exc:  # datasets raises many types (connection, auth, missing config or split)
        reason = (str(exc).strip().splitlines() or [""])[0][:300]
        raise DataError(source.uri, f"cannot load split {split!r} from the Hugging Face Hub "
                                    f"({type(exc).__name__}: {reason}). Without network access, download the "
                                    "files once and point the task's data setting at the local copy") from exc


def load_hub_rows(source: HubSource, *, split: str | None = None) -> list[dict[str, Any]]:
    return [dict(row) for row in load_hub_dataset(source, split=split)]


def rows_sha256(rows: list[dict[str, Any]]) -> str:
    """A checksum of rows as loaded (key order and container types do not matter)."""
    blob = json.dumps(rows, sort_keys=True, ensure_ascii=False, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def hub_fingerprint(source: HubSource, rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"source": source.uri, "revision": source.revision or "unpinned (the Hub's latest)",
            "rows_sha256": rows_sha256(rows), "n_rows": len(rows)}

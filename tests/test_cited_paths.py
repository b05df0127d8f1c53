"""Every repository path the README and the adapter READMEs cite exists (moving the lab notebook must not break the
evidence a shipped adapter cites)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "experiments" / "README.md", *sorted((ROOT / "adapters").glob("**/README.md"))]
TOP = ("adapters/", "experiments/", "reports/", "harness/", "methods/", "tasks/", "conf/", "scripts/", "benchmarks/",
       "results/", "tests/", "requirements/")
CITED = re.compile(r"`([A-Za-z0-9_./{},<>*-]+)`")


def expand(path: str) -> list[str]:
    """``a/{x,y}/b`` -> ``a/x/b``, ``a/y/b``."""
    m = re.search(r"\{([^{}]+)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",") for p in expand(path[:m.start()] + alt + path[m.end():])]


def cited(doc: Path) -> list[str]:
    out = []
    for raw in CITED.findall(doc.read_text()):
        if not raw.startswith(TOP) or any(c in raw for c in "<>*") or raw.endswith("..."):
            continue
        out += expand(raw.split(":")[0])
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_paths_exist(doc):
    # a path is read from the repository root or, for the lab notebook's index, from the document's folder
    missing = [p for p in cited(doc) if not (ROOT / p).exists() and not (doc.parent / p).exists()]
    assert not missing, f"{doc.relative_to(ROOT)} cites paths that do not exist: {missing}"

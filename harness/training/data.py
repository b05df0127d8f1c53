"""Training data assembly: sources → episodes → held-out split by document → a resumable episode order."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from harness.errors import ConfigError
from harness.training.episodes import Episode, EpisodeStats, make_episodes
from harness.training.sources import Source, stable_hash


def heldout_groups(groups: Iterable[str], *, fraction: float, seed: int, source: str) -> set[str]:
    """The held-out groups of one source: the ``ceil(fraction · n)`` groups with the smallest hash of
    ``(seed, source, group)`` (at least one and at most n-1 when n ≥ 2 and fraction > 0).

    Depends only on the set of groups, not on their order; a group is wholly train or wholly held out,
    so no document (or dialogue) is seen in training and asked about in evaluation.
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"heldout_fraction must be in [0, 1), got {fraction}")
    unique = sorted(set(groups))
    if fraction == 0.0 or len(unique) < 2:
        return set()
    k = min(len(unique) - 1, max(1, math.ceil(fraction * len(unique))))
    ranked = sorted(unique, key=lambda g: stable_hash("heldout", seed, source, g))
    return set(ranked[:k])


# A source that decides the split itself (e.g. by template family, recall_diverse.py) sets this metadata key to
# True or False on every conversation; the hash split would mix held-out templates into training.
FIXED_SPLIT_KEY = "heldout"


def _fixed_heldout_groups(source: str, episodes: Sequence[Episode]) -> set[str] | None:
    """The held-out groups a source fixed through ``metadata["heldout"]``, or None when it fixed none."""
    marked = [e for e in episodes if FIXED_SPLIT_KEY in e.metadata]
    if not marked:
        return None
    if len(marked) != len(episodes):
        raise ConfigError(f"train_data source {source!r}: {len(marked)} of {len(episodes)} episodes set "
                          f"metadata[{FIXED_SPLIT_KEY!r}]; a source fixes the side of every episode or of none")
    bad = sorted({repr(e.metadata[FIXED_SPLIT_KEY]) for e in marked
                  if not isinstance(e.metadata[FIXED_SPLIT_KEY], bool)})
    if bad:
        raise ConfigError(f"train_data source {source!r}: metadata[{FIXED_SPLIT_KEY!r}] must be true or false, "
                          f"got {', '.join(bad)}")
    held = {e.group for e in marked if e.metadata[FIXED_SPLIT_KEY]}
    torn = sorted(held & {e.group for e in marked if not e.metadata[FIXED_SPLIT_KEY]})
    if torn:
        raise ConfigError(f"train_data source {source!r}: group {torn[0]!r} has episodes on both sides of the split")
    return held


def split_episodes(episodes: Sequence[Episode], *, fraction: float, seed: int) -> tuple[list[Episode], list[Episode]]:
    """``(train, heldout)``, split per source by group: by the source's own ``metadata["heldout"]`` where it
    sets one, otherwise by :func:`heldout_groups` (``fraction`` of the groups)."""
    if not 0.0 <= fraction < 1.0:  # checked even when every source fixes its own split
        raise ConfigError(f"heldout_fraction must be in [0, 1), got {fraction}")
    by_source: dict[str, list[Episode]] = {}
    for ep in episodes:
        by_source.setdefault(ep.source, []).append(ep)
    held: set[tuple[str, str]] = set()
    for source, eps in by_source.items():
        fixed = _fixed_heldout_groups(source, eps)
        if fixed is None:
            fixed = heldout_groups((e.group for e in eps), fraction=fraction, seed=seed, source=source)
        held |= {(source, g) for g in fixed}
    train = [e for e in episodes if (e.source, e.group) not in held]
    heldout = [e for e in episodes if (e.source, e.group) in held]
    return train, heldout


@dataclass
class TrainingData:
    train: list[Episode]
    heldout: list[Episode]
    sources: list[dict[str, Any]] = field(default_factory=list)  # describe() + counts, per source

    @property
    def fingerprint(self) -> str:
        """Identifies the training episodes and their order before shuffling (resume checks it)."""
        return stable_hash(*(e.id for e in self.train))[:16]

    def describe(self) -> dict[str, Any]:
        return {"train_episodes": len(self.train), "heldout_episodes": len(self.heldout),
                "fingerprint": self.fingerprint, "sources": self.sources}


def build_training_data(sources: Sequence[Source], *, heldout_fraction: float, split_seed: int) -> TrainingData:
    names = [s.name for s in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"train_data: source names must be unique (repeated: {dupes}); set name= on each")
    train: list[Episode] = []
    heldout: list[Episode] = []
    described = []
    for src in sources:
        episodes, stats = make_episodes(src.conversations(), source=src.name)
        if not episodes:
            raise ConfigError(f"train_data source {src.name!r} produced no usable episode ({stats.as_dict()})")
        tr, ho = split_episodes(episodes, fraction=heldout_fraction, seed=split_seed)
        train += tr * src.repeat
        heldout += ho
        described.append({**src.describe(), **_counts(stats, tr, ho),
                          **({"repeat": src.repeat} if src.repeat != 1 else {})})
    return TrainingData(train=train, heldout=heldout, sources=described)


def _counts(stats: EpisodeStats, train: list[Episode], heldout: list[Episode]) -> dict[str, Any]:
    return {**stats.as_dict(), "train_episodes": len(train), "heldout_episodes": len(heldout),
            "train_groups": len({e.group for e in train}), "heldout_groups": len({e.group for e in heldout})}


class EpisodeOrder:
    """Position ``p`` (episodes consumed so far) → index into the training episodes.

    Epoch ``e`` is a permutation seeded by ``(seed, e)``, so the order is a pure function of the position:
    resuming from a saved position replays exactly the same sequence.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n < 1:
            raise ConfigError("no training episodes")
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self._epoch = -1
        self._perm: list[int] = []

    def __getitem__(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        if epoch != self._epoch:
            perm = list(range(self.n))
            if self.shuffle:
                random.Random(stable_hash("order", self.seed, epoch)).shuffle(perm)
            self._epoch, self._perm = epoch, perm
        return self._perm[i]

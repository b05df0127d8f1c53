"""Controls: runs whose only change is what an episode's questions are answered from.

``other_history`` answers every episode's questions from the *next* episode's context (a cyclic shift over
the run's episodes, so no episode keeps its own and the assignment is the same for every method). A memory
method that truly stores and retrieves what it was told must lose, under this control, what it gained over
the question-only floor; what it keeps is answer form or priors, not memory. Sample ids are unchanged, so
``python -m harness.compare`` pairs a control record with the normal one question by question.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from harness.errors import ConfigError
from harness.types import Episode

CONTROLS = ("other_history",)


def other_history(episodes: Sequence[Episode], *, history_keys: Sequence[str] = (), task: str = "task") -> list[Episode]:
    """Each episode keeps its id, questions and metadata but takes the units of the episode after it.

    ``history_keys`` are metadata entries that describe the context (e.g. LoCoMo's speaker names) and
    so travel with it. The donor's id is kept in ``metadata["history_from"]``."""
    with_context = [e for e in episodes if e.has_context]
    if len(with_context) != len(episodes) or len(episodes) < 2:
        raise ConfigError(f"control=other_history needs at least two episodes, all with a context; task {task} has "
                          f"{len(episodes)} episode(s), {len(with_context)} with a context")
    out = []
    for i, episode in enumerate(episodes):
        donor = episodes[(i + 1) % len(episodes)]
        meta = {k: v for k, v in episode.metadata.items() if k not in history_keys}
        meta.update({k: donor.metadata[k] for k in history_keys if k in donor.metadata})
        meta["history_from"] = donor.id
        out.append(replace(episode, units=donor.units, metadata=meta))
    return out


def apply_control(control: str | None, episodes: Sequence[Episode], *, history_keys: Sequence[str] = (),
                  task: str = "task") -> list[Episode]:
    if control is None:
        return list(episodes)
    if control == "other_history":
        return other_history(episodes, history_keys=history_keys, task=task)
    raise ConfigError(f"control={control!r} is not known; expected null or one of {', '.join(CONTROLS)}")

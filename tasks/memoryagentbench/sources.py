"""Per-source settings of MemoryAgentBench (from MAB's ``configs/data_conf``, as the reference
suite copies them) and the reference suite's display names and primary metrics.

``context_max_length`` is in tokens and only used by the official-template prompt (which
keeps the *last* tokens); ``generation_max_length`` is the answer budget in both prompt
styles; ``max_test_samples`` is the number of leading rows the official scripts load
(``task.rows: official``); the reference suite evaluates every row.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

SPLITS = ("Accurate_Retrieval", "Test_Time_Learning", "Long_Range_Understanding", "Conflict_Resolution")
CATEGORY = {
    "Accurate_Retrieval": "accurate_retrieval",
    "Test_Time_Learning": "test_time_learning",
    "Long_Range_Understanding": "long_range_understanding",
    # The reference suite calls this category "Selective Forgetting".
    "Conflict_Resolution": "conflict_resolution",
}
UNKNOWN_GENERATION = 4096  # the reference's answer budget for a source it does not know


@dataclass(frozen=True)
class SourceSettings:
    source: str
    family: str          # template / post-processing family
    dataset: str         # display name; length variants share one
    context_max_length: int | None
    generation_max_length: int
    max_test_samples: int | None


def _s(source, family, dataset, ctx, gen, n):
    return SourceSettings(source, family, dataset, ctx, gen, n)


_TABLE = [
    _s("ruler_qa1_197K", "ruler_qa", "SH-Doc QA", 220000, 50, 100),
    _s("ruler_qa2_421K", "ruler_qa", "MH-Doc QA", 524288, 50, 100),
    _s("longmemeval_s*", "longmemeval", "LongMemEval (S*)", 400000, 50, 5),
    _s("longmemeval_s_-1_500", "longmemeval", "LongMemEval (S*)", 150000, 50, 500),
    _s("eventqa_full", "eventqa", "EventQA", 800000, 40, 5),
    _s("eventqa_131072", "eventqa", "EventQA", 131072, 40, 5),
    _s("eventqa_65536", "eventqa", "EventQA", 65536, 40, 5),
    _s("icl_banking77_5900shot_balance", "icl", "BANKING77", 131072, 20, 100),
    _s("icl_clinic150_7050shot_balance", "icl", "CLINIC150", 131072, 20, 100),
    _s("icl_nlu_8296shot_balance", "icl", "NLU", 131072, 20, 100),
    _s("icl_trec_coarse_6600shot_balance", "icl", "TREC Coarse", 131072, 20, 100),
    _s("icl_trec_fine_6400shot_balance", "icl", "TREC Fine", 131072, 20, 100),
    _s("recsys_redial_full", "recsys", "Movie Recommendation", 1480000, 300, 1),
    _s("infbench_sum_eng_shots2", "infbench_sum", "InfinityBench-Sum", 1200000, 1200, 100),
    _s("detective_qa", "detective_qa", "Detective QA", 200000, 2000, 10),
    *[_s(f"factconsolidation_{h}_{n}", "factconsolidation", f"FactConsolidation-{h.upper()}", ctx, 10, 1)
      for h in ("sh", "mh") for n, ctx in (("6k", 6000), ("32k", 32768), ("64k", 65536), ("262k", 300000))],
]
KNOWN = {s.source: s for s in _TABLE}

# MAB's metric dispatcher keys on substrings of the source name, in this order.
_FAMILY_KEYS = (("icl", "icl"), ("eventqa", "eventqa"), ("infbench_sum", "infbench_sum"), ("longmemeval", "longmemeval"),
                ("ruler", "ruler_qa"), ("recsys", "recsys"), ("detective", "detective_qa"),
                ("factconsolidation", "factconsolidation"))


# MAB-recipe sources (``tasks/memoryagentbench/recipe.py``): ``recipe_<competency>_<length>``, each with the
# family and answer length of the MAB source it imitates and a display name that says it is not that source.
RECIPE_BASES = {
    "icl_banking77": ("icl_banking77_5900shot_balance", "BANKING77 (MAB recipe)"),
    "icl_clinc150": ("icl_clinic150_7050shot_balance", "CLINC150 (MAB recipe)"),
    "mhqa_hotpotqa": ("ruler_qa2_421K", "MH-Doc QA on HotpotQA (MAB recipe)"),
}
_RECIPE_SOURCE = re.compile(r"^recipe_(?P<base>.+)_(?P<length>\d+)$")


def recipe_settings(source: str) -> SourceSettings | None:
    """Settings of a recipe source, or None when ``source`` is not one. ``context_max_length`` is unset: a recipe
    context is built to its length, so only the backbone's window cuts it."""
    m = _RECIPE_SOURCE.match(source)
    if not m or m["base"] not in RECIPE_BASES:
        return None
    imitated, display = RECIPE_BASES[m["base"]]
    base = KNOWN[imitated]
    # lengths share one display name, as MAB's length variants do; ``by_source`` keeps them apart
    return SourceSettings(source, base.family, display, None, base.generation_max_length, None)


def recipe_length(source: str) -> int | None:
    """The context length in a recipe source's name, None for any other source."""
    m = _RECIPE_SOURCE.match(str(source))
    return int(m["length"]) if m and m["base"] in RECIPE_BASES else None


def settings_for(source: str) -> SourceSettings:
    """Known settings, or for an unknown source the family by name and the reference's defaults."""
    if source in KNOWN:
        return KNOWN[source]
    recipe = recipe_settings(source)
    if recipe is not None:
        return recipe
    family = next((f for key, f in _FAMILY_KEYS if key in source), "default")
    return SourceSettings(source, family, source, None, UNKNOWN_GENERATION, None)


def reference_metric(family: str) -> str:
    """The reference suite's primary per-question metric for a source family."""
    if family == "recsys":
        return "recall@5"
    if family == "infbench_sum":
        return "f1"
    return "correct"


def official_metric(family: str) -> tuple[str, str | None]:
    """MAB's official metric, and why a stand-in is used where the official one needs a GPT-4o judge."""
    if family in ("icl", "detective_qa"):
        return "exact_match", None
    if family == "recsys":
        return "recall@5", None
    if family == "longmemeval":
        return "substring_exact_match", "official metric is a GPT-4o yes/no judge (not run); substring_exact_match stands in"
    if family == "infbench_sum":
        return "f1_official", "official metric is a GPT-4o keypoint judge (not run); lexical F1 stands in"
    return "substring_exact_match", None

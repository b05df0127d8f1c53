"""lm-eval's IFEval scoring, imported once the offline nltk data is in place.

lm-eval's checkers download nltk's ``punkt_tab`` at import time when it is missing; the harness builds it
locally (``harness.offline``) so this task, like the harness's ``task=ifeval``, never touches the network.
"""
from harness.offline import ensure_offline_resources

ensure_offline_resources()

from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  # noqa: E402

__all__ = ["agg_inst_level_acc", "process_results"]

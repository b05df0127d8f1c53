"""Reading the chosen letter out of a free-text GPQA answer, by three named rules.

* ``strict`` (the harness's default): an explicit statement of a choice wins ("the answer is D",
  "Answer: (B)", ``{"answer": "C"}``, ``\\boxed{A}``, "(C) is correct", a line holding a lone letter);
  the last such statement is the final choice. Without one, an output whose option lines ("B. …") name
  exactly one letter chose it; an output that lists several options, or none, gave no answer. Echoes of
  the prompt's own format example are ignored.
* ``reference``: the δ-mem reference suite's cascade (``../shared/spec/eval-protocols.md`` §6). Its last
  step reads the first line when it starts with "X.", so an output that merely repeats the four options
  is read as "A".
* ``lm_eval``: lm-eval's ``flexible-extract`` filter of its generative GPQA tasks (``gpqa/*/_gpqa_*_yaml``:
  ``MultiChoiceRegexFilter`` on "(X)", last match, then the option texts, then ": X"), imported from lm-eval
  and fed the question's options in this harness's order.
"""
from __future__ import annotations

import re
from typing import Sequence

LETTERS = "ABCD"
RULES = ("strict", "reference", "lm_eval")

# ------------------------------------------------------------------ reference
_L = r"([ABCD])"
_REFERENCE_FAMILIES = (
    # 1. a fenced ```json block that carries an "answer" field
    re.compile(r"```(?:json)?\s*\{[^`]*?\"answer\"\s*:\s*\"\s*" + _L + r"\s*\"[^`]*?\}\s*```", re.I | re.S),
    # 2. any "answer": "X"
    re.compile(r"\"answer\"\s*:\s*\"\s*" + _L + r"\s*\"", re.I),
    # 3. \boxed{X}
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*" + _L + r"\s*\}?\s*\}", re.I),
    # 4. "final answer" / "correct answer" / "answer" + colon (ASCII or full-width) + optional bold
    re.compile(r"(?:final answer|correct answer|answer)\s*(?:is)?\s*[:：]\s*\**\s*\(?" + _L + r"\b", re.I),
    # 5. "final answer (is)" / "correct answer (is)" + letter
    re.compile(r"(?:final answer|correct answer)\s*(?:is)?\s*\**\s*\(?" + _L + r"\b", re.I),
)
_LINE_ONLY = re.compile(r"^[\*\(\[\s]*" + _L + r"[\s\)\]\.:\*]*$", re.I)
_LINE_START = re.compile(r"^" + _L + r"[\.\):]", re.I)


def extract_reference(text: str) -> str:
    """The reference cascade ("" when nothing matches): the first pattern family that matches gives its last
    match; failing all, the first and then the last non-empty line count when they are a bare letter (optionally
    wrapped in * ( [ and followed by ) ] . :) or start with "X." / "X)" / "X:"."""
    text = str(text)
    for pattern in _REFERENCE_FAMILIES:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for line in (lines[:1] + lines[-1:]) if lines else []:
        m = _LINE_ONLY.match(line) or _LINE_START.match(line)
        if m:
            return m.group(1).upper()
    return ""


# ------------------------------------------------------------------ strict
# The letter of a statement must be a capital standing alone: "the answer is a mixture" states nothing.
_CAP = r"\**\s*[\(\[]?\s*([ABCD])\s*[\)\]]?(?![A-Za-z0-9'’-])"
_STATEMENTS = (
    re.compile(r"\"answer\"\s*:\s*\"\s*([ABCD])\s*\"", re.I),
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*([ABCD])\s*\}?\s*\}"),
    # "answer: C", "the correct answer is (B)", "my final choice would be D", "Option: **A**"
    re.compile(r"\b(?i:answer|choice|option)\**\s*(?i:is|would be|should be|will be)?\s*[:：=]?\s*" + _CAP),
    # "(C) is correct", "B is the right answer", "option D is correct"
    re.compile(r"(?<![A-Za-z0-9])[\(\[]?([ABCD])[\)\]]?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best))\b"),
)
_LONE_LETTER_LINE = re.compile(r"^[\*\(\[\s]*([ABCD])[\s\)\]\.:\*]*$")
_OPTION_LINE = re.compile(r"^[\*\s]*[\(\[]?([ABCD])[\)\]]?\**\s*[\.\):]\s*\S")
# The prompt's format example; a model that repeats the instruction has not chosen "C".
_ECHOED_EXAMPLE = re.compile(r"for\s+example\s*:?\s*\{\s*\"answer\"\s*:\s*\"C\"\s*\}", re.I)


def extract_strict(text: str) -> str:
    """The letter the output commits to, or "" for no answer (see the module docstring)."""
    text = _ECHOED_EXAMPLE.sub(" ", str(text))
    stated = sorted((m.start(), m.group(1).upper()) for p in _STATEMENTS for m in p.finditer(text))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    lone = {m.group(1) for ln in lines if (m := _LONE_LETTER_LINE.match(ln))}
    if len(lone) == 1:  # a line that is just the letter; several different ones are a list of letters
        position = text.rfind("\n" + next(iter(lone)))
        stated.append((max(position, 0), next(iter(lone))))
        stated.sort()
    if stated:
        return stated[-1][1]
    listed = {m.group(1) for ln in lines if (m := _OPTION_LINE.match(ln))}
    return next(iter(listed)) if len(listed) == 1 else ""


# ------------------------------------------------------------------ lm-eval
_LM_EVAL_FILTER = None


def extract_lm_eval(texts: Sequence[str], options: Sequence[Sequence[str]]) -> list[str]:
    """lm-eval's flexible-extract letters ("" for its "[invalid]") of a batch of outputs, ``options[i]`` being the
    four option texts of output ``i`` in the order A-D. Batched because the filter builds a Unicode punctuation
    table on every call."""
    global _LM_EVAL_FILTER
    if _LM_EVAL_FILTER is None:
        from lm_eval.filters.extraction import MultiChoiceRegexFilter

        # the settings of lm-eval's gpqa generative/cot yaml files
        _LM_EVAL_FILTER = MultiChoiceRegexFilter(regex_pattern=r"(\([A-Z]\))", group_select=-1,
                                                 ignore_case=True, ignore_punctuation=True)
    if not texts:
        return []
    out = _LM_EVAL_FILTER.apply([[str(t)] for t in texts], [{"choices": list(o)} for o in options])
    letters = []
    for (picked,) in out:
        m = re.fullmatch(r"\(([A-Z])\)", str(picked).strip())
        letters.append(m.group(1) if m and m.group(1) in LETTERS else "")
    return letters


def extract_all(texts: Sequence[str], options: Sequence[Sequence[str]]) -> list[dict[str, str]]:
    """Every rule's letter for each output."""
    lm = extract_lm_eval(texts, options)
    return [{"strict": extract_strict(t), "reference": extract_reference(t), "lm_eval": x} for t, x in zip(texts, lm)]

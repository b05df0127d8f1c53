"""The out-of-template recall dialogues: disjoint from every training template, deterministic, well-formed,
and scored by a precisely defined match."""
from __future__ import annotations

import ast
import gzip
import json
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tasks.recall_oot import templates
from tasks.recall_oot.generator import generate_dialogue, generate_set
from tasks.recall_oot.scoring import normalise, occurrences, value_hit
from tasks.recall_oot.task import RecallOOTTask

ROOT = Path(__file__).resolve().parents[2]
TRAINING_MODULES = ("harness/training/synthetic.py", "harness/training/self_replies.py", "harness/training/sources.py")
# the curriculum's copy task (stage 1 of scripts/recall_curriculum.sh) is a training source too
COPY_TASK = ROOT / "experiments/training/recall_probe_copy20_msw_lr3e-3/copy20.jsonl.gz"
WINDOW = 20
BUCKETS = (100, 250, 500, 1000, 2000)


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _literals(path: Path) -> list[str]:
    """Every string constant of a module, f-strings included (their literal parts)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _copy_task_messages() -> list[str]:
    if not COPY_TASK.is_file():
        return []
    with gzip.open(COPY_TASK, "rt", encoding="utf-8") as f:
        return sorted({m["content"] for line in f for m in json.loads(line)["messages"]})


@pytest.fixture(scope="module")
def training_strings() -> list[str]:
    out = [s for m in TRAINING_MODULES for s in _literals(ROOT / m)] + _copy_task_messages()
    assert len(out) > 300  # the extraction found the tables (names, templates, small talk, ...)
    return out


@pytest.fixture(scope="module")
def training_windows(training_strings) -> set[str]:
    windows = set()
    for s in training_strings:
        # format placeholders are not text: a template's literal runs are compared piece by piece
        for piece in re.split(r"\{[^{}]*\}", _norm(s)):
            windows.update(piece[i:i + WINDOW] for i in range(len(piece) - WINDOW + 1))
    return windows


def _shared(text: str, windows: set[str]) -> list[str]:
    t = _norm(text)
    return sorted({t[i:i + WINDOW] for i in range(len(t) - WINDOW + 1)} & windows)


def _template_texts() -> list[str]:
    out = list(templates.STATEMENT_FRAMES) + list(templates.QUESTION_FRAMES) + list(templates.FACT_REPLIES)
    out += [s for pair in templates.SMALL_TALK for s in pair]
    for f in templates.FAMILIES:
        out += [f.noun, *f.statements, *f.questions]
    return out


def test_template_tables_share_no_20_char_stretch_with_training(training_windows):
    texts = _template_texts()
    assert len(texts) > 150
    for piece in (p for t in texts for p in re.split(r"\{[^{}]*\}", t)):
        assert not _shared(piece, training_windows), piece


def test_generated_dialogues_share_no_20_char_stretch_with_training(training_windows):
    for d in generate_set(7, BUCKETS, 6):
        for text in [t.text for t in d.turns] + [d.question]:
            assert not _shared(text, training_windows), (d.id, text)


def test_value_pools_and_generated_values_are_not_training_values(training_strings):
    literals = {_norm(s) for s in training_strings}
    words = {w for s in training_strings if len(s) < 40 for w in re.findall(r"[a-z]{4,}", s.lower())}
    pools = list(templates.PERSONS) + list(templates.PLACES) + list(templates.PHRASE_FIRST) + list(
        templates.PHRASE_SECOND)
    short_literals = {_norm(s) for s in training_strings if len(s) < 40}
    for value in pools:
        assert _norm(value) not in literals, value
        # no training value (a name, city, code word, pet, ...) inside ours, e.g. "Porto" in "Porto Alegre"
        assert not any(f" {lit} " in f" {_norm(value)} " for lit in short_literals if len(lit) >= 4), value
    assert words  # the pools are real words
    for d in generate_set(3, BUCKETS, 6):
        for fact in (d.asked, *d.distractors):
            assert _norm(fact.value) not in literals, fact.value
            if fact.kind == "date":  # month names are shared by any date; training's dates carry a year, ours never
                assert not re.search(r"\d{4}", fact.value), fact.value
                continue
            for w in _norm(fact.value).split():
                assert w not in short_literals, (fact.value, w)


def test_each_history_states_the_asked_value_exactly_once_and_the_question_never():
    for d in generate_set(11, BUCKETS, 12):
        assert occurrences(d.history_text, d.asked.aliases) == 1, d.id
        assert occurrences(d.question, d.asked.aliases) == 0, d.id
        assert d.turns[d.fact_turn].role == "user"
        assert occurrences(d.turns[d.fact_turn].text, d.asked.aliases) == 1
        for f in d.distractors:
            assert f.family != d.asked.family
            assert occurrences(d.history_text, f.aliases) == 1


def test_dialogues_vary_and_cover_every_kind_and_fact_count():
    ds = generate_set(0, BUCKETS, 20)
    assert {d.asked.kind for d in ds} == {"digits", "code", "person", "place", "date", "phrase"}
    assert {len(d.distractors) + 1 for d in ds} == {1, 2, 3, 4}
    assert len({d.question for d in ds}) > 60
    for kind, lo, hi in (("digits", 3, 8),):
        lengths = {len(d.asked.value) for d in ds if d.asked.kind == kind}
        assert min(lengths) >= lo and max(lengths) <= hi and len(lengths) >= 4
    roles = [t.role for d in ds for t in d.turns]
    assert roles[::2] == ["user"] * (len(roles) // 2)


def test_lengths_follow_the_target():
    by_bucket = {b: [d.metadata["estimated_tokens"] for d in generate_set(0, [b], 20)] for b in BUCKETS}
    means = {b: sum(v) / len(v) for b, v in by_bucket.items()}
    for b in (250, 500, 1000, 2000):
        assert 0.8 * b <= means[b] <= 1.2 * b, (b, means[b])
    assert means[100] < means[250] < means[500] < means[1000] < means[2000]


def test_generation_is_deterministic_and_prefix_stable():
    a = generate_set(5, [100, 500], 4)
    assert a == generate_set(5, [100, 500], 4)
    assert generate_set(5, [100, 500], 6)[:4] == generate_set(5, [100], 4)  # more dialogues change none
    assert generate_set(6, [100, 500], 4) != a
    assert generate_dialogue(5, 500, 2) == a[6]


def test_fingerprint_does_not_depend_on_the_process_hash_seed():
    code = ("from tasks.recall_oot.task import RecallOOTTask; "
            "print(RecallOOTTask(per_bucket=3).data_fingerprint()['sha256'])")
    outs = {subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout for seed in ("1", "2")}
    assert len(outs) == 1 and len(outs.pop().strip()) == 64


@pytest.mark.parametrize("answer, aliases, hit", [
    ("Your storage unit is 4471.", ["4471"], True),
    ("It is unit 44712.", ["4471"], False),  # whole words only
    ("The reading was 48,213,907.", ["48213907"], True),  # separators inside a number
    ("The reading was 48 213 907", ["48213907"], True),
    ("Reference KX4471, I believe.", ["KX-4471"], True),  # a hyphen inside a code is dropped
    ("reference kx-4471", ["KX4471"], True),
    ("Reference KX 4471", ["KX4471"], False),  # a space between letters and digits is not dropped
    ("The plumber was Barnaby.", ["Barnaby"], True),
    ("The plumber was Barnabys.", ["Barnaby"], False),
    ("Her wedding is on March 19th.", ["9 March", "9th March", "March 9", "March 9th"], False),
    ("Her wedding is on March 9th, I think.", ["9 March", "9th March", "March 9", "March 9th"], True),
    ("It's the 9th of March", ["9th of March"], True),
    ("THE PASSWORD IS MELLOW-KETTLE", ["mellow kettle"], False),  # the hyphen joins the words
    ("The password is 'mellow kettle'.", ["mellow kettle"], True),
    ("Ｂａｒｎａｂｙ", ["Barnaby"], True),  # NFKC folds full-width letters
    ("", ["Barnaby"], False),
])
def test_value_hit(answer, aliases, hit):
    assert value_hit(answer, aliases) is hit


def test_normalise_and_bad_input():
    assert normalise("  Unit  #4,471 -- OK!") == "unit 4471 ok"
    with pytest.raises(ValueError):
        value_hit("x", [])
    with pytest.raises(ValueError):
        occurrences("x", ["--"])
    with pytest.raises(TypeError):
        normalise(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="target_tokens"):
        generate_dialogue(0, 10, 0)
    with pytest.raises(ValueError, match="index"):
        generate_dialogue(0, 100, -1)
    with pytest.raises(ValueError, match="per_bucket"):
        generate_set(0, [100], 0)
    with pytest.raises(ValueError, match="buckets"):
        generate_set(0, [100, 100], 2)
    with pytest.raises(ValueError, match="history"):
        RecallOOTTask(history="other")
    with pytest.raises(ValueError, match="context"):
        RecallOOTTask(with_context="{question}")


def test_task_episodes_history_prompts_and_score():
    task = RecallOOTTask(per_bucket=2, buckets=[250, 1000])
    eps = task.episodes(42)
    dialogues = task.dialogues()
    assert [e.id for e in eps] == [d.id for d in dialogues]
    for e, d in zip(eps, dialogues):
        msgs = task.history_messages(e)
        assert msgs == [{"role": t.role, "content": t.text} for t in d.turns]
        q = e.queries[0]
        assert q.category == str(d.target_tokens) and q.gold == d.asked.value
        assert task.prompt_messages(q, None) == [{"role": "user", "content": d.question}]
        ctx = task.render_context(e).text
        prompt = task.prompt_messages(q, ctx)[0]["content"]
        assert ctx in prompt and prompt.endswith(d.question)
        right = task.score(q, f"It was {d.asked.value}.")
        assert right.values["key_value"] == 1.0
        assert task.score(q, "I don't know.").values == {"key_value": 0.0, "distractor_value": 0.0}
        for f in d.distractors:
            assert task.score(q, f.value).values["distractor_value"] == 1.0
    empty = RecallOOTTask(per_bucket=2, buckets=[250], history="none").episodes(42)
    assert all(not e.has_context for e in empty)
    assert RecallOOTTask(per_bucket=2, buckets=[250]).data_fingerprint() != \
        RecallOOTTask(per_bucket=2, buckets=[250], seed=1).data_fingerprint()


def test_render_context_drops_oldest_turns_over_budget():
    task = RecallOOTTask(per_bucket=1, buckets=[500])
    e = task.episodes(42)[0]
    full = task.render_context(e, count_tokens=len, max_tokens=10 ** 6)
    cut = task.render_context(e, count_tokens=len, max_tokens=len(full.text) // 2)
    assert not full.truncated and cut.truncated
    assert full.text.endswith(cut.text) and cut.kept_tokens <= len(full.text) // 2


def test_other_history_control_moves_the_turns():
    from harness.controls import apply_control

    task = RecallOOTTask(per_bucket=3, buckets=[250])
    eps = task.episodes(42)
    swapped = apply_control("other_history", eps)
    assert task.history_messages(swapped[0]) == task.history_messages(eps[1])
    assert swapped[0].queries == eps[0].queries


def test_benchmark_conditions():
    from benchmarks.recall_out_of_template import condition

    assert condition("msw_other").overrides == ("method.protocol=memory", "control=other_history")
    assert condition("tsw_none").task == (("history", "none"),)
    assert condition("bm25").method == "bm25_rag"
    with pytest.raises(ValueError, match="unknown condition"):
        condition("msw_twice")


def test_benchmark_candidate_adapter_reaches_only_its_variant(tmp_path):
    from benchmarks.recall_out_of_template import adapter_override, compose, condition, main

    cfg = compose(condition("msw_own"), seed=0, buckets=[100], per_bucket=1, results=tmp_path, threads=1,
                  adapters={"msw": str(tmp_path)})
    assert cfg.method.adapter == str(tmp_path.resolve())
    assert adapter_override(condition("tsw_own"), {"msw": str(tmp_path)}) == ()
    assert adapter_override(condition("vanilla"), {"msw": str(tmp_path)}) == ()
    with pytest.raises(SystemExit):  # not an adapter folder
        main(["run", "--adapter", f"msw={tmp_path}"])
    with pytest.raises(SystemExit):  # an unknown variant
        main(["run", "--adapter", f"gru={tmp_path}"])
    from methods.deltamem.adapter import CONFIG_NAME, WEIGHTS_NAME

    (tmp_path / CONFIG_NAME).write_text("{}")
    (tmp_path / WEIGHTS_NAME).write_bytes(b"")
    with pytest.raises(SystemExit):  # a candidate must not overwrite the shipped adapters' report
        main(["report", "--adapter", f"msw={tmp_path}"])


def test_dialogue_records_are_plain_data():
    d = generate_dialogue(0, 250, 0)
    assert json.loads(json.dumps(asdict(d)))["asked"]["value"] == d.asked.value


def test_chat_context_format_gives_the_turns_as_messages():
    task = RecallOOTTask(per_bucket=1, buckets=[250], context_format="chat")
    e = task.episodes(42)[0]
    d = task.dialogues()[0]
    ctx = task.render_context(e, count_tokens=len, max_tokens=10 ** 6)
    msgs = task.prompt_messages(e.queries[0], ctx.text)
    assert msgs == [{"role": t.role, "content": t.text} for t in d.turns] + [{"role": "user", "content": d.question}]
    assert ctx.kept_tokens == len(RecallOOTTask(per_bucket=1, buckets=[250]).render_context(e).text)
    # BM25's own blocks are plain text: the transcript wording
    assert task.prompt_messages(e.queries[0], "Memory 1:\nUser: hi\n")[0]["content"].startswith("Here is")
    with pytest.raises(ValueError, match="context_format"):
        RecallOOTTask(context_format="xml")


def test_filler_holds_no_digits_and_no_pool_value():
    filler = [s for pair in templates.SMALL_TALK for s in pair] + list(templates.FACT_REPLIES)
    # a phrase value is two words together ("sleepy otter") and a date a day with its month: one word of them
    # alone ("sleepy", the verb "may") may occur in filler
    phrases = [f"{a} {b}" for a in templates.PHRASE_FIRST for b in templates.PHRASE_SECOND]
    dates = [f"{m} {d}" for m in templates.MONTH_NAMES for d in range(1, 29)]
    pools = (*templates.PERSONS, *templates.PLACES, *phrases, *dates)
    for text in filler:
        assert not re.search(r"\d", text), text
        assert not occurrences(text, pools), text

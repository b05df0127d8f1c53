"""The diverse recall dialogues: deterministic, well-formed, split by template family, disjoint from the
out-of-template evaluation generator, and loadable as training data."""
from __future__ import annotations

import ast
import re
import statistics
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness.errors import ConfigError
from harness.training import recall_diverse as rd
from harness.training.data import build_training_data, heldout_groups, split_episodes
from harness.training.episodes import ChatRenderer, Conversation, make_episode, make_episodes, tokenize_episode
from harness.training.heldout import evidence_hit
from harness.training.synthetic import SyntheticMemory
from harness.training.trainer import build_sources

ROOT = Path(__file__).resolve().parents[2]
EVAL_TEMPLATES = ROOT / "tasks" / "recall_oot" / "templates.py"
SMOLLM2_TOKENIZER = Path.home() / ".cache" / "deltamem-harness" / "models"
WINDOW = 20
N_TRAIN, N_HELD = 240, 80


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _literals(path: Path, docstrings: bool = True) -> list[str]:
    """Every string constant of a module, the literal parts of f-strings included (docstrings optionally: they
    describe the tables, so two modules about the same task may share prose there, never in the tables)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = set()
    if not docstrings:
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(node, clean=False):
                docs.add(id(node.body[0].value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def _pieces(s: str) -> list[str]:
    """A template's literal runs: its placeholders are not text."""
    return [p for p in re.split(r"\{[^{}]*\}", _norm(s)) if p.strip()]


def _windows(strings) -> set[str]:
    return {p[i:i + WINDOW] for s in strings for p in _pieces(s) for i in range(len(p) - WINDOW + 1)}


def _texts(messages) -> list[str]:
    return [m["content"] for m in messages]


@pytest.fixture(scope="module")
def dialogues():
    train = [rd.generate_dialogue(3, i) for i in range(N_TRAIN)]
    held = [rd.generate_dialogue(3, i, heldout=True) for i in range(N_HELD)]
    return train, held


# ------------------------------------------------------------------------------------------ determinism
def test_dialogue_depends_only_on_seed_side_and_index():
    a = RecallSmall(conversations=6, heldout_conversations=3).conversations()
    b = RecallSmall(conversations=9, heldout_conversations=5).conversations()
    by_id = {c.id: c for c in b}
    for c in a:  # asking for more dialogues changes none of the earlier ones
        assert c.messages == by_id[c.id].messages and c.metadata == by_id[c.id].metadata
    assert rd.generate_dialogue(0, 4) == rd.generate_dialogue(0, 4)
    assert rd.generate_dialogue(0, 4)[0] != rd.generate_dialogue(1, 4)[0]
    assert rd.generate_dialogue(0, 4)[0] != rd.generate_dialogue(0, 4, heldout=True)[0]
    assert len({c.group for c in b}) == len(b) == 14


def RecallSmall(**kw):  # noqa: N802 - reads like the class it builds
    return rd.RecallDiverse(**{"history_tokens": (100, 300), **kw})


# ------------------------------------------------------------------------------------------ well-formed
def test_asked_value_is_stated_once_and_never_in_the_question(dialogues):
    for messages, meta in dialogues[0] + dialogues[1]:
        history, (question, answer) = messages[:-2], messages[-2:]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        text = "\n".join(_texts(history))
        value = meta["evidence"]
        assert rd.count_value(text, value) == 1, (value, text)
        assert rd.count_value(question["content"], value) == 0
        assert question["content"] == meta["question"] and answer["content"] == meta["references"][0]
        assert evidence_hit(answer["content"], value) == 1.0  # the target names it; the heldout metric sees it
        for other in meta["distractors"]:  # distractors are stated once too, and never equal the value
            assert rd.count_value(text, other) == 1 and rd.count_value(other, value) == 0
        assert len(meta["distractors"]) == meta["n_facts"] - 1


def test_filler_text_holds_no_digit_and_no_pool_value():
    filler = [s for pair in rd.SMALL_TALK for s in pair] + list(rd.ACKNOWLEDGEMENTS)
    pools = rd.FIRST_NAMES + rd.SURNAMES + rd.TOWNS  # a date always has its day number, and fillers have none
    for text in filler:
        assert not re.search(r"\d", text), text
        for value in pools:
            assert rd.count_value(text, value) == 0, (value, text)


def test_every_value_format_and_fact_count_occurs(dialogues):
    metas = [meta for _, meta in dialogues[0]]
    assert {m["kind"] for m in metas} == set(rd.KINDS)
    assert {m["n_facts"] for m in metas} == {1, 2, 3, 4}
    values = [m["evidence"] for m in metas] + [v for m in metas for v in m["distractors"]]
    digits = {len(v) for v in values if v.isdigit()}
    assert digits == set(range(3, 9))
    codes = [v for v in values if re.search(r"[A-Z]", v) and re.search(r"\d", v)]
    assert len({re.sub(r"[A-Z]", "L", re.sub(r"\d", "d", c)) for c in codes}) >= 8  # many shapes
    dates = [m["evidence"] for m in metas if m["kind"] == "date"]
    assert any(re.search(r"\d{4}$", d) for d in dates) and any(not re.search(r"\d{4}", d) for d in dates)
    assert any(" of " in d for d in dates) and any(d[0].isalpha() for d in dates)
    persons = [m["evidence"] for m in metas if m["kind"] == "person"]
    assert any(" " in p for p in persons) and any(" " not in p for p in persons)
    assert len({m["question"] for m in metas}) > 0.8 * len(metas)
    assert len({m["fact"] for m in metas}) >= 30


def test_history_lengths_cover_100_to_1000_tokens():
    folders = sorted(SMOLLM2_TOKENIZER.glob("smollm2-135m-instruct-transformers-*"))
    if not folders:
        pytest.skip("the SmolLM2 tokenizer is not cached (scripts/setup.sh caches it)")
    from transformers import AutoTokenizer

    renderer = ChatRenderer(AutoTokenizer.from_pretrained(str(folders[-1])))
    lengths = []
    for i in range(150):
        messages, meta = rd.generate_dialogue(0, i)
        ep, _ = make_episode(Conversation(id=str(i), source="s", group=str(i), messages=tuple(messages)))
        lengths.append(len(renderer.encode(ep.write)[0]))  # what the trainer writes
    assert min(lengths) <= 150 and max(lengths) >= 900, (min(lengths), max(lengths))
    assert 60 <= min(lengths) and max(lengths) <= 1150  # a 1,280-token write never cuts a history
    assert 400 <= statistics.median(lengths) <= 700
    quarters = [sum(lo <= n < lo + 250 for n in lengths) for lo in (100, 350, 600, 850)]
    assert min(quarters) >= 15, quarters  # spread over the range, not bunched


# ------------------------------------------------------------------------------------------ family split
def test_family_split_is_disjoint(dialogues):
    train, held = dialogues
    held_st, held_q = set(rd.DEFAULT_HELDOUT_STATEMENT), set(rd.DEFAULT_HELDOUT_QUESTION)
    for _, meta in train:
        assert meta["statement_family"] not in held_st and meta["question_family"] not in held_q
        assert not set(meta["distractor_families"]) & held_st
        assert meta["heldout"] is False
    for _, meta in held:
        assert meta["statement_family"] in held_st and meta["question_family"] in held_q
        assert not set(meta["distractor_families"]) & held_st
        assert meta["heldout"] is True
    assert {m["statement_family"] for _, m in held} == held_st and {m["question_family"] for _, m in held} == held_q
    # text level: no literal run (12+ characters) of a held-out template in any training dialogue
    held_templates = [t for f in rd.FACTS for fam in held_st for t in rd.statement_templates(f, fam)]
    held_templates += [t for f in rd.FACTS for fam in held_q for t in rd.question_texts(f, fam)]
    train_templates = [t for f in rd.FACTS for fam in rd.STATEMENT_FAMILIES if fam not in held_st
                       for t in rd.statement_templates(f, fam)]
    train_templates += [t for f in rd.FACTS for fam in rd.QUESTION_FAMILIES if fam not in held_q
                        for t in rd.question_texts(f, fam)]
    assert not set(held_templates) & set(train_templates)
    pieces = {p.strip() for t in held_templates for p in _pieces(t) if len(p.strip()) >= 12}
    assert len(pieces) > 150
    train_text = "\n".join(_norm(t) for messages, _ in train for t in _texts(messages))
    leaked = sorted(p for p in pieces if p in train_text)
    assert not leaked, leaked[:5]


def test_split_follows_the_families_not_heldout_fraction():
    src = RecallSmall(conversations=10, heldout_conversations=4)
    eps, _ = make_episodes(src.conversations(), source=src.name)
    for fraction in (0.0, 0.5):
        train, held = split_episodes(eps, fraction=fraction, seed=1)
        assert {e.group for e in held} == {f"s0-heldout-c{i}" for i in range(4)}
        assert len(train) == 10
    none = rd.RecallDiverse(conversations=3, heldout_conversations=0, heldout_statement_families=[],
                            heldout_question_families=[], history_tokens=(100, 200))
    assert not [c for c in none.conversations() if c.metadata["heldout"]]
    assert {c.metadata["statement_family"] for c in rd.RecallDiverse(
        conversations=60, heldout_conversations=0, heldout_statement_families=[], heldout_question_families=[],
        history_tokens=(100, 150)).conversations()} == set(rd.STATEMENT_FAMILIES)


def test_other_sources_keep_the_hash_split():
    eps, _ = make_episodes(SyntheticMemory(conversations=20, questions=1, items=(1, 1), small_talk=(0, 0))
                           .conversations(), source="synthetic")
    _, held = split_episodes(eps, fraction=0.2, seed=42)
    expected = heldout_groups((e.group for e in eps), fraction=0.2, seed=42, source="synthetic")
    assert {e.group for e in held} == expected and len(expected) == 4


def test_a_source_fixes_every_side_or_none():
    def ep(group, **meta):
        conv = Conversation(id=group, source="x", group=group, metadata=meta, messages=(
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}))
        return make_episode(conv)[0]

    with pytest.raises(ConfigError, match="1 of 2 episodes"):
        split_episodes([ep("g1", heldout=True), ep("g2")], fraction=0.1, seed=0)
    with pytest.raises(ConfigError, match="true or false"):
        split_episodes([ep("g1", heldout="yes")], fraction=0.1, seed=0)
    with pytest.raises(ConfigError, match="both sides"):
        split_episodes([ep("g1", heldout=True), ep("g1", heldout=False)], fraction=0.1, seed=0)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        split_episodes([ep("g1", heldout=True)], fraction=1.0, seed=0)


# ------------------------------------------------------------------------------------------ vs the evaluation
@pytest.fixture(scope="module")
def eval_strings() -> list[str]:
    out = _literals(EVAL_TEMPLATES)
    assert len(out) > 200  # the extraction found its tables (frames, families, small talk, pools)
    return out


def test_no_20_character_stretch_shared_with_the_evaluation_templates(eval_strings, dialogues):
    module = ROOT / "harness" / "training" / "recall_diverse.py"
    theirs = _windows(eval_strings)
    mine = _literals(module)
    assert len(mine) > 300
    # our every string (the evaluation's test reads training modules this way) against their tables, and our
    # tables against their every string
    pairs = ((mine, _literals(EVAL_TEMPLATES, docstrings=False)), (_literals(module, docstrings=False), eval_strings))
    for a, b in pairs:
        shared = _windows(a) & _windows(b)
        assert not shared, sorted(shared)[:5]
    generated = [t for messages, _ in dialogues[0] + dialogues[1] for t in _texts(messages)]
    shared = {w for t in generated for w in _windows([t.replace("{", "(").replace("}", ")")])} & theirs
    assert not shared, sorted(shared)[:5]


def test_no_20_character_stretch_of_ours_in_evaluation_dialogues():
    generator = pytest.importorskip("tasks.recall_oot.generator")
    ours = _windows(_literals(ROOT / "harness" / "training" / "recall_diverse.py"))  # docstrings included
    for d in generator.generate_set(7, [100, 500, 1000], 4):
        for text in [t.text for t in d.turns] + [d.question]:
            assert not _windows([text.replace("{", "(").replace("}", ")")]) & ours, (d.id, text)


def test_value_pools_differ_from_the_evaluation_pools(eval_strings):
    from tasks.recall_oot import templates as ev

    mine = _literals(ROOT / "harness" / "training" / "recall_diverse.py")
    my_literals = {_norm(s) for s in mine}
    my_short = {_norm(s) for s in mine if len(s) < 40 and len(_norm(s)) >= 4}
    their_short = {_norm(s) for s in eval_strings if len(s) < 40 and len(_norm(s)) >= 4}
    theirs = [*ev.PERSONS, *ev.PLACES, *ev.PHRASE_FIRST, *ev.PHRASE_SECOND]
    ours = [*rd.FIRST_NAMES, *rd.SURNAMES, *rd.TOWNS, *rd.TITLE_WORDS, *rd.TITLE_NOUNS]
    for value in theirs:  # the evaluation test's rule, applied to this module as a training source
        assert _norm(value) not in my_literals, value
        assert not any(f" {lit} " in f" {_norm(value)} " for lit in my_short), value
    for value in ours:
        assert _norm(value) not in {_norm(s) for s in eval_strings}, value
        assert not any(f" {lit} " in f" {_norm(value)} " for lit in their_short), value
    from tasks.recall_oot.generator import generate_set

    for d in generate_set(3, [100, 500, 1000], 6):  # the evaluation's drawn values (dates share month names)
        for fact in (d.asked, *d.distractors):
            if fact.kind != "date":
                assert not set(_norm(fact.value).split()) & my_short, fact.value
    # different facts, not only different words: no evaluation fact's noun phrase is one of ours
    our_nouns = {_norm(n) for f in rd.FACTS for n in f.nouns}
    assert not {_norm(f.noun) for f in ev.FAMILIES} & our_nouns


# ------------------------------------------------------------------------------------------ loading
def _source_node(stem: str, **overrides):
    node = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "train_data" / f"{stem}.yaml"), resolve=True)
    node["sources"]["recall_diverse"].update(overrides)
    return node


@pytest.mark.parametrize("stem", ["recall_diverse", "recall_diverse_self_distill_online"])
def test_configs_load_and_tokenise_as_the_trainer_does(stem):
    from tests.conftest import tiny_tokenizer

    node = _source_node(stem, conversations=12, heldout_conversations=4, history_tokens=[100, 300])
    assert node["name"] == stem
    if stem.endswith("online") and not (ROOT / node["sources"]["self_replies"]["path"]).is_file():
        pytest.skip("the self-replies file is not in this checkout")
    data = build_training_data(build_sources(node), heldout_fraction=float(node["heldout_fraction"]),
                               split_seed=int(node["split_seed"]))
    diverse = [s for s in data.sources if s["name"] == "recall_diverse"][0]
    assert (diverse["train_episodes"], diverse["heldout_episodes"]) == (12, 4)
    assert diverse["heldout_statement_families"] == list(rd.DEFAULT_HELDOUT_STATEMENT)
    held = [e for e in data.heldout if e.source == "recall_diverse"]
    assert all("-heldout-" in e.group for e in held)
    renderer = ChatRenderer(tiny_tokenizer())
    for ep in [e for e in data.train if e.source == "recall_diverse"][:3] + held[:2]:
        tok = tokenize_episode(ep, renderer, write_length=1280, read_length=256)
        assert tok.write_dropped == 0 and tok.num_target_tokens > 0 and not tok.online
        assert ep.metadata["evidence"] in renderer.tokenizer.decode([t for t in tok.labels if t >= 0])
        assert ep.question == ep.metadata["question"]
    if stem.endswith("online"):
        replies = [e for e in data.train if e.source == "self_replies"]
        assert replies and all(e.metadata.get("online") and e.metadata.get("distill") for e in replies)
        assert [s.get("repeat") for s in data.sources if s["name"] == "self_replies"] == [8]


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown statement families \\['nope'\\]; known: plain"):
        rd.RecallDiverse(heldout_statement_families=["nope"])
    with pytest.raises(ConfigError, match="every question family is held out"):
        rd.RecallDiverse(heldout_question_families=list(rd.QUESTION_FAMILIES))
    with pytest.raises(ConfigError, match="heldout_conversations > 0 needs"):
        rd.RecallDiverse(heldout_statement_families=[])
    with pytest.raises(ConfigError, match="list of family names"):
        rd.RecallDiverse(heldout_question_families="forgot")
    with pytest.raises(ConfigError, match="within \\[1, 4\\]"):
        rd.RecallDiverse(facts=[0, 2])
    with pytest.raises(ConfigError, match="within \\[1, 4\\]"):
        rd.RecallDiverse(facts=[1, 5])
    with pytest.raises(ConfigError, match="min >= 50"):
        rd.RecallDiverse(history_tokens=[10, 20])
    with pytest.raises(ConfigError, match="pairs of integers"):
        rd.RecallDiverse(history_tokens=100)
    with pytest.raises(ConfigError, match="conversations must be >= 1"):
        rd.RecallDiverse(conversations=0)
